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
import { describe, expect, it } from 'vitest';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { WEBHOOK_SWEEP_MIN_AGE_MS, findUndeliveredWebhookJobs } from '../../src/services/webhooks.js';
import type { ServiceContext } from '../../src/services/context.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { dbId, ok, readAccount } from '../api/helpers.js';
import { topUps } from './billing-helpers.js';
import { cardErrorAnswer, intentAnswer, postStripeEvent, stripeEvent } from './fake-stripe.js';
import { autoTopUpCharged, autoTopUpDue, autoTopUpWithLostAnswer, boughtPack, disputeEvent, hookUrl, newPi, post, refundEvent, useStripeServers } from './reversal-helpers.js';

const SETTINGS = `query($id: ID!) { account(id: $id) { autoTopUp { enabled pausedAt lastError } } }`;

const servers = useStripeServers();

describe('a signed event whose object is not a usable object', () => {
  it('is answered 200 and changes nothing (refund, dispute, payment intent)', async () => {
    const { srv } = servers.main;
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
    const { srv } = servers.main;
    const { accountId, run } = await autoTopUpWithLostAnswer(servers.main, servers.fake);
    const pi = newPi();
    const refunded = await postStripeEvent(hookUrl(srv), refundEvent(pi, 200, {}, 200));
    expect([refunded.status, refunded.body.result]).toEqual([200, 'kept']);
    servers.fake.planned.push(intentAnswer('succeeded', pi, { amount: 200 }));
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
    const { srv } = servers.main;
    const { accountId, pi, paymentId, grantId } = await boughtPack(srv, servers.fake); // checks that the payment of `pi` has that grant
    await voidGrant(srv.services, grantId, 'operator: taken back by hand');
    const logged: { obj: Record<string, unknown>; msg: string }[] = [];
    const keep = (obj: unknown, msg?: string) => void logged.push({ obj: obj as Record<string, unknown>, msg: msg ?? '' });
    const ctx: ServiceContext = { ...srv.services, log: { warn: keep, error: keep, info: keep } as unknown as NonNullable<ServiceContext['log']> };
    const event = { eventId: 'evt_refund', eventType: 'charge.refunded', kind: 'refund' as const, providerRef: pi, amountCents: 400n, refundedCents: 400n, disputeRef: null, currency: 'usd', livemode: false };
    expect(await applyReversalEvent(ctx, event, () => false)).toMatchObject({ result: 'recorded', voidedMicroCredits: 0n });
    const { rows: after } = await srv.services.pool.query('SELECT refunded_cents::text, reversed_at IS NOT NULL AS reversed FROM payments WHERE id = $1', [paymentId]);
    expect(after[0]).toEqual({ refunded_cents: '400', reversed: true });
    expect(logged.filter((l) => l.obj.unrecoveredMicroCredits !== undefined)).toEqual([]);
    expect((await readAccount(srv, accountId)).balance.total).toBe('0');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('an inquiry (a pre-dispute request for information: no money taken)', () => {
  /** A purchase of 40 credits for $4 settled SUCCEEDED with PaymentIntent `pi`. */
  const bought = () => boughtPack(servers.main.srv, servers.fake);
  /** Stripe's Dispute event `type` in `status`, of the one dispute (`du_` + the PaymentIntent's digits) of `pi`'s charge. */
  const dispute = (pi: string, type: string, status: string) => disputeEvent(pi, { id: `du_${pi.slice(3)}`, status }, type);

  it('takes nothing back; once it escalates (funds withdrawn) the credit is taken back, once', async () => {
    const { srv } = servers.main;
    const { accountId, pi } = await bought();
    expect(await post(srv, dispute(pi, 'charge.dispute.created', 'warning_needs_response'))).toBe('ignored');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    expect(await post(srv, dispute(pi, 'charge.dispute.closed', 'warning_closed'))).toBe('ignored');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');

    const { accountId: escalated, pi: pi2 } = await bought();
    expect(await post(srv, dispute(pi2, 'charge.dispute.created', 'warning_under_review'))).toBe('ignored');
    expect(await post(srv, dispute(pi2, 'charge.dispute.funds_withdrawn', 'needs_response'))).toBe('reversed');
    expect((await readAccount(srv, escalated)).balance.paid).toBe('0');
    expect(await post(srv, dispute(pi2, 'charge.dispute.funds_withdrawn', 'needs_response'))).toBe('unchanged');
    await expectLedgerInvariant(srv.services.pool, dbId(escalated));
  });

  it('a chargeback reported by both charge.dispute.created and charge.dispute.funds_withdrawn is applied once', async () => {
    const { srv } = servers.main;
    const { accountId, pi } = await bought();
    expect(await post(srv, dispute(pi, 'charge.dispute.funds_withdrawn', 'needs_response'))).toBe('reversed');
    expect(await post(srv, dispute(pi, 'charge.dispute.created', 'needs_response'))).toBe('unchanged');
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
    const { srv } = servers.main;
    const { accountId, pi } = await autoTopUpCharged(servers.main, servers.fake);
    const refunded = await postStripeEvent(hookUrl(srv), refundEvent(pi, 200, {}, 200));
    expect([refunded.status, refunded.body.result]).toEqual([200, 'reversed']);
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect(await sweptPauses(srv, accountId)).toEqual([]);
  });

  it('still finds a pause by three declined charges (the real path: paused_at is the failed top-up\'s finished_at)', async () => {
    const { srv } = servers.main;
    const { accountId, topUpId, run } = await autoTopUpDue(servers.main);
    for (let attemptsMade = 0; attemptsMade < 3; attemptsMade++) {
      servers.fake.planned.push(cardErrorAnswer('card_declined'));
      await run(attemptsMade).catch(() => undefined);
    }
    expect(await topUps(srv, accountId)).toMatchObject([{ status: 'FAILED' }]);
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect((await sweptPauses(srv, accountId)).map((j) => (j.data as { eventId: string }).eventId)).toEqual([topUpId]);
  });
});
