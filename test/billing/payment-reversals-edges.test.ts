/**
 * Edges of refunds and disputes of a payment (src/services/payment-reversals.ts) found by an
 * audit, through the Stripe webhook endpoint on a real server (PAYMENT_PROVIDER=stripe against
 * the local fake of Stripe's API, test/billing/fake-stripe.ts):
 * - a signed event whose object is missing or not an object is answered (200, nothing changed),
 *   not dropped with its connection (Stripe would deliver it again for 3 days, and the log
 *   called it an aborted request);
 * - an auto top-up settled by its job after a full refund of its charge keeps the refund as the
 *   reason its auto top-up is paused (`lastError`), as the README says;
 * - an auto top-up paused by a refund or dispute is not taken for one paused by failed charges
 *   by the webhook sweep (sweep-due's findUndeliveredWebhookJobs): no `auto_top_up.paused`
 *   ("paused after 3 failed charges", the body of the account's last top-up) is sent for it;
 * - a full refund of a payment whose grant an operator had voided before records the refund and
 *   takes nothing more, without warning that the whole grant was spent (the operator's void took
 *   it back).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { WEBHOOK_SWEEP_MIN_AGE_MS, findUndeliveredWebhookJobs } from '../../src/services/webhooks.js';
import type { ServiceContext } from '../../src/services/context.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, ok, readAccount, uniq } from '../api/helpers.js';
import { RECORD_USAGE, SET_AUTO_TOP_UP, attachMethod, billingWorkerDeps, createPack, startServerWithOwnQueues, topUps, type QueuedServer } from './billing-helpers.js';
import { API_ERROR_ANSWER, cardErrorAnswer, intentAnswer, postStripeEvent, startFakeStripe, stripeEvent, type FakeStripe } from './fake-stripe.js';

const STRIPE_ENV = { PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_creditpool', STRIPE_WEBHOOK_SECRET: 'whsec_creditpool' };
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id amount } }`;
const SETTINGS = `query($id: ID!) { account(id: $id) { autoTopUp { enabled pausedAt lastError } } }`;

let fake: FakeStripe;
let main: QueuedServer;

beforeAll(async () => {
  fake = await startFakeStripe();
  main = await startServerWithOwnQueues(STRIPE_ENV);
  main.srv.services.payments = fake.provider();
});

afterAll(async () => {
  await main?.close();
  await fake?.close();
});

beforeEach(() => {
  fake.planned.length = 0;
});

function hookUrl(srv: TestServer): string {
  return srv.url.replace(/\/graphql$/, '/webhooks/stripe');
}

function newPi(): string {
  return `pi_${randomUUID().replaceAll('-', '').slice(0, 24)}`;
}

describe('a signed event whose object is not a usable object', () => {
  it('is answered 200 and changes nothing (refund, dispute, payment intent)', async () => {
    const { srv } = main;
    const before = await srv.services.pool.query('SELECT count(*)::int AS n FROM early_payment_reversals');
    const bodies = [
      { ...stripeEvent('charge.refunded', {}), data: { object: null } },
      { ...stripeEvent('charge.dispute.created', {}), data: null },
      { ...stripeEvent('charge.refunded', {}), data: { object: 'ch_1' } },
      { ...stripeEvent('payment_intent.succeeded', {}), data: { object: null } },
      { ...stripeEvent('payment_intent.payment_failed', {}), data: {} },
    ];
    for (const body of bodies) {
      const r = await postStripeEvent(hookUrl(srv), JSON.stringify(body));
      expect([body.type, r.status, r.body.result]).toEqual([body.type, 200, 'unknown_payment']);
    }
    const after = await srv.services.pool.query('SELECT count(*)::int AS n FROM early_payment_reversals');
    expect(after.rows[0].n).toBeLessThanOrEqual(before.rows[0].n); // nothing kept (sweep-due of another file may prune)
  });
});

describe('an auto top-up refunded in full before its job settled it', () => {
  it("keeps the refund as the paused auto top-up's lastError", async () => {
    const { srv } = main;
    const deps = billingWorkerDeps(main);
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const accountId = await apiAccount(srv, { paid: '100' });
    await attachMethod(srv, accountId, 'pm_card_visa');
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
    ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '60' } } }));
    const [topUp] = await topUps(srv, accountId);
    const run = (attemptsMade: number) =>
      processAutoTopUp(deps, { id: `auto-top-up-${topUp!.id}`, name: 'auto-top-up', data: { topUpId: topUp!.id, accountId: dbId(accountId) }, attemptsMade, attempts: 3 });
    fake.planned.push(API_ERROR_ANSWER);
    await expect(run(0)).rejects.toThrow(/will retry/);
    const pi = newPi();
    const charge = { id: `ch_${pi.slice(3)}`, object: 'charge', payment_intent: pi, amount: 200, amount_refunded: 200, refunded: true, currency: 'usd', livemode: false, metadata: {} };
    const refunded = await postStripeEvent(hookUrl(srv), JSON.stringify(stripeEvent('charge.refunded', charge)));
    expect([refunded.status, refunded.body.result]).toEqual([200, 'kept']);
    fake.planned.push(intentAnswer('succeeded', pi, { amount: 200 }));
    await run(1);
    expect(await topUps(srv, accountId)).toMatchObject([{ status: 'SUCCEEDED' }]);
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({
      enabled: false,
      pausedAt: expect.any(String),
      lastError: expect.stringContaining('refunded in full'),
    });
    expect(await sweptPauses(srv, accountId)).toEqual([]); // paused by the refund in the transaction that finished the top-up
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('a full refund of a payment whose grant an operator voided before', () => {
  it('records the refund, takes nothing more and does not report the voided credit as spent', async () => {
    const { srv } = main;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const accountId = await apiAccount(srv);
    await attachMethod(srv, accountId, 'pm_card_visa');
    const pi = newPi();
    fake.planned.push(intentAnswer('succeeded', pi, { amount: 400 }));
    const bought = ok(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') })).purchaseCreditPack;
    const { rows } = await srv.services.pool.query('SELECT id, grant_id FROM payments WHERE provider_ref = $1', [pi]);
    expect(rows[0].grant_id).toBe(dbId(bought.id));
    await voidGrant(srv.services, rows[0].grant_id as string, 'operator: taken back by hand');
    const logged: { obj: Record<string, unknown>; msg: string }[] = [];
    const keep = (obj: unknown, msg?: string) => void logged.push({ obj: obj as Record<string, unknown>, msg: msg ?? '' });
    const ctx: ServiceContext = { ...srv.services, log: { warn: keep, error: keep, info: keep } as unknown as NonNullable<ServiceContext['log']> };
    const event = { eventId: 'evt_refund', eventType: 'charge.refunded', kind: 'refund' as const, providerRef: pi, amountCents: 400n, refundedCents: 400n, disputeRef: null, currency: 'usd', livemode: false };
    expect(await applyReversalEvent(ctx, event, () => false)).toMatchObject({ result: 'recorded', voidedMicroCredits: 0n });
    const { rows: after } = await srv.services.pool.query('SELECT refunded_cents::text, reversed_at IS NOT NULL AS reversed FROM payments WHERE id = $1', [rows[0].id]);
    expect(after[0]).toEqual({ refunded_cents: '400', reversed: true });
    expect(logged.filter((l) => l.obj.unrecoveredMicroCredits !== undefined)).toEqual([]);
    expect((await readAccount(srv, accountId)).balance.total).toBe('0');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('an inquiry (a pre-dispute request for information: no money taken)', () => {
  /** A purchase of 40 credits for $4 settled SUCCEEDED with PaymentIntent `pi`. */
  async function bought() {
    const { srv } = main;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const accountId = await apiAccount(srv);
    await attachMethod(srv, accountId, 'pm_card_visa');
    const pi = newPi();
    fake.planned.push(intentAnswer('succeeded', pi, { amount: 400 }));
    ok(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') }));
    return { accountId, pi };
  }
  const dispute = (pi: string, type: string, status: string, id = `du_${pi.slice(3)}`) =>
    JSON.stringify(stripeEvent(type, { id, object: 'dispute', charge: `ch_${pi.slice(3)}`, payment_intent: pi, amount: 400, currency: 'usd', livemode: false, status }));
  const post = async (body: string) => {
    const r = await postStripeEvent(hookUrl(main.srv), body);
    expect(r.status).toBe(200);
    return r.body.result as string;
  };

  it('takes nothing back; once it escalates (funds withdrawn) the credit is taken back, once', async () => {
    const { srv } = main;
    const { accountId, pi } = await bought();
    expect(await post(dispute(pi, 'charge.dispute.created', 'warning_needs_response'))).toBe('ignored');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    expect(await post(dispute(pi, 'charge.dispute.closed', 'warning_closed'))).toBe('ignored');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');

    const { accountId: escalated, pi: pi2 } = await bought();
    expect(await post(dispute(pi2, 'charge.dispute.created', 'warning_under_review'))).toBe('ignored');
    expect(await post(dispute(pi2, 'charge.dispute.funds_withdrawn', 'needs_response'))).toBe('reversed');
    expect((await readAccount(srv, escalated)).balance.paid).toBe('0');
    expect(await post(dispute(pi2, 'charge.dispute.funds_withdrawn', 'needs_response'))).toBe('unchanged');
    await expectLedgerInvariant(srv.services.pool, dbId(escalated));
  });

  it('a chargeback reported by both charge.dispute.created and charge.dispute.funds_withdrawn is applied once', async () => {
    const { srv } = main;
    const { accountId, pi } = await bought();
    expect(await post(dispute(pi, 'charge.dispute.funds_withdrawn', 'needs_response'))).toBe('reversed');
    expect(await post(dispute(pi, 'charge.dispute.created', 'needs_response'))).toBe('unchanged');
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '0', total: '0', debt: '0' });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

/** The `auto_top_up.paused` jobs the webhook sweep would send for `accountId` once the sweep's minimum age has passed. */
async function sweptPauses(srv: TestServer, accountId: string) {
  const jobs = await findUndeliveredWebhookJobs(srv.services.pool, new Date(Date.now() + WEBHOOK_SWEEP_MIN_AGE_MS + 60_000));
  return jobs.filter((j) => j.name === 'deliver-webhook' && (j.data as { accountId: string }).accountId === dbId(accountId) && (j.data as { eventType: string }).eventType === 'auto_top_up.paused');
}

describe('an auto top-up paused by a refund or dispute, seen by the webhook sweep', () => {
  it('is not sent as auto_top_up.paused (a pause by failed charges) for the account\'s last top-up', async () => {
    const { srv } = main;
    const deps = billingWorkerDeps(main);
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const accountId = await apiAccount(srv, { paid: '100' });
    await attachMethod(srv, accountId, 'pm_card_visa');
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
    ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '60' } } }));
    const [topUp] = await topUps(srv, accountId);
    const pi = newPi();
    fake.planned.push(intentAnswer('succeeded', pi, { amount: 200 }));
    await processAutoTopUp(deps, { id: `auto-top-up-${topUp!.id}`, name: 'auto-top-up', data: { topUpId: topUp!.id, accountId: dbId(accountId) }, attemptsMade: 0, attempts: 3 });
    expect(await topUps(srv, accountId)).toMatchObject([{ status: 'SUCCEEDED' }]);
    const charge = { id: `ch_${pi.slice(3)}`, object: 'charge', payment_intent: pi, amount: 200, amount_refunded: 200, refunded: true, currency: 'usd', livemode: false, metadata: {} };
    const refunded = await postStripeEvent(hookUrl(srv), JSON.stringify(stripeEvent('charge.refunded', charge)));
    expect([refunded.status, refunded.body.result]).toEqual([200, 'reversed']);
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect(await sweptPauses(srv, accountId)).toEqual([]);
  });

  it('still finds a pause by three declined charges (the real path: paused_at is the failed top-up\'s finished_at)', async () => {
    const { srv } = main;
    const deps = billingWorkerDeps(main);
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const accountId = await apiAccount(srv, { paid: '100' });
    await attachMethod(srv, accountId, 'pm_card_visa');
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
    ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '60' } } }));
    const [topUp] = await topUps(srv, accountId);
    for (let attemptsMade = 0; attemptsMade < 3; attemptsMade++) {
      fake.planned.push(cardErrorAnswer('card_declined'));
      await processAutoTopUp(deps, { id: `auto-top-up-${topUp!.id}`, name: 'auto-top-up', data: { topUpId: topUp!.id, accountId: dbId(accountId) }, attemptsMade, attempts: 3 }).catch(() => undefined);
    }
    expect(await topUps(srv, accountId)).toMatchObject([{ status: 'FAILED' }]);
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect((await sweptPauses(srv, accountId)).map((j) => (j.data as { eventId: string }).eventId)).toEqual([topUp!.id]);
  });
});
