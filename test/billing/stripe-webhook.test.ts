/**
 * The Stripe webhook endpoint, POST /webhooks/stripe (src/http/stripe-webhook.ts), on a real
 * server (PAYMENT_PROVIDER=stripe, STRIPE_WEBHOOK_SECRET set) against the real PostgreSQL and
 * Redis. Charges go through the real Stripe adapter to a local fake of Stripe's API
 * (test/billing/fake-stripe.ts), which loses answers (a 500) or holds them in flight on demand;
 * events are signed with the SDK's `generateTestHeaderString` and POSTed to the server.
 * - a bad, missing, foreign or stale signature, or a tampered body: 400, nothing changed;
 * - payment_intent.succeeded for a PENDING purchase grants it once: replayed, replayed
 *   concurrently, or racing the charge's own answer, still once; for a PENDING auto top-up
 *   payment it ends the top-up SUCCEEDED and the next run charges nothing;
 * - payment_intent.payment_failed settles a PENDING payment FAILED (the provider's reason;
 *   authentication_required is requires_action), and for a top-up counts one failure;
 * - events for unknown payments, unhandled types, or a charge that is not the payment's: 2xx,
 *   nothing changed;
 * - the late success whose grant failed (the database went away at that moment): the payment is
 *   stuck FAILED `no_charge_found` with the money taken (a retry answers PAYMENT_FAILED, the resume
 *   leaves it), until the webhook grants it, once;
 * - the database unreachable, or a grant over the balance limit: 503 (Stripe delivers the event
 *   again), nothing changed; the redelivery after the database is back settles it; an unexpected
 *   error: 500, masked, with the request id.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import Stripe from 'stripe';
import { resumePayment } from '../../src/services/resume-payment.js';
import { IDEMPOTENCY_KEY_SAFE_WINDOW_MS, LOOKUP_SETTLE_DELAY_MS, usdToCents } from '../../src/payments/provider.js';
import type { ServiceContext } from '../../src/services/context.js';
import { startSilenceableRelay, type SilenceableRelay } from '../setup/connections.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectUnchanged, globalCounts, grant, ok, readAccount, uniq } from '../api/helpers.js';
import { attachMethod, billingCounts, createPack, startServerWithOwnQueues, topUps, type QueuedServer } from './billing-helpers.js';
import { heldAnswer, intentAnswer, paymentIntent, postStripeEvent, searchAnswer, startFakeStripe, stripeEvent, type FakeStripe } from './fake-stripe.js';
import { autoTopUpWithLostAnswer, lostPurchase as lostStripePurchase } from './reversal-helpers.js';

const SECRET = 'whsec_creditpool';
const STRIPE_ENV = { PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_creditpool', STRIPE_WEBHOOK_SECRET: SECRET };
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id amount } }`;
const MAX_CREDITS = '9223372036854.775807';

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

/** The webhook endpoint of a test server. */
function hookUrl(srv: TestServer): string {
  return srv.url.replace(/\/graphql$/, '/webhooks/stripe');
}

/** A payment row as the tests read it. */
interface PaymentView {
  id: string;
  account_id: string;
  purpose: string;
  pack_id: string;
  amount_usd: string;
  status: string;
  grant_id: string | null;
  provider_ref: string | null;
  error: string | null;
}

/** The account's payments, oldest first. */
async function payments(srv: TestServer, accountId: string): Promise<PaymentView[]> {
  const { rows } = await srv.services.pool.query(
    'SELECT id, account_id, purpose, pack_id, amount_usd::text, status, grant_id, provider_ref, error FROM payments WHERE account_id = $1 ORDER BY created_at, id',
    [dbId(accountId)],
  );
  return rows;
}

/** Payments by status, platform-wide (for events that name no payment of any test account). */
async function paymentTotals(srv: TestServer) {
  const { rows } = await srv.services.pool.query(`SELECT status, count(*)::int AS n FROM payments GROUP BY status ORDER BY status`);
  return rows;
}

/** The PaymentIntent Stripe made for `payment` (the adapter's metadata, the payment's amount in cents), in `status`. */
function intentOf(payment: PaymentView, status: string, extra: Record<string, unknown> = {}) {
  return paymentIntent(status, `pi_${payment.id.replaceAll('-', '').slice(0, 24)}`, {
    amount: Number(usdToCents(payment.amount_usd)),
    metadata: { paymentId: payment.id, packId: payment.pack_id, purpose: payment.purpose, accountId: payment.account_id },
    ...extra,
  });
}

/** A signed-to-be event body (raw JSON) of `type` about `payment`'s PaymentIntent. */
function eventFor(type: string, payment: PaymentView, extra: Record<string, unknown> = {}): string {
  const status = type === 'payment_intent.succeeded' ? 'succeeded' : type === 'payment_intent.requires_action' ? 'requires_action' : 'requires_payment_method';
  return JSON.stringify(stripeEvent(type, intentOf(payment, status, extra)));
}

/**
 * A purchase (pack of 40 credits for $4) whose Stripe answer was lost (a 500): the client got
 * UNAVAILABLE and the payment is PENDING.
 */
async function lostPurchase(srv: TestServer) {
  const lost = await lostStripePurchase(srv, fake);
  const [payment] = await payments(srv, lost.accountId);
  expect(payment).toMatchObject({ status: 'PENDING', purpose: 'PURCHASE' });
  return { ...lost, payment: payment! };
}

/**
 * An auto top-up (pack of 20 credits for $2, threshold 50) crossed by a 60-credit charge, whose
 * first run lost Stripe's answer (a 500): the top-up and its payment are PENDING. `run(n)` runs
 * its auto-top-up job as attempt n + 1 of 3.
 */
async function topUpWithLostAnswer(billing: QueuedServer) {
  const { accountId, topUpId, run } = await autoTopUpWithLostAnswer(billing, fake);
  const [payment] = await payments(billing.srv, accountId);
  return { accountId, topUpId, run, payment };
}

describe('signature', () => {
  it('a wrong secret, no header, a garbled or stale signature, or a tampered body: 400, nothing changed', async () => {
    const { srv } = main;
    const { accountId, payment } = await lostPurchase(srv);
    const payload = eventFor('payment_intent.succeeded', payment);
    const validHeader = Stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET });
    const before = await payments(srv, accountId);
    await expectUnchanged(srv, [accountId], async () => {
      const refusals = [
        await postStripeEvent(hookUrl(srv), payload, { secret: 'whsec_another_endpoint' }),
        await postStripeEvent(hookUrl(srv), payload, { signature: null }),
        await postStripeEvent(hookUrl(srv), payload, { signature: 't=1,v1=00' }),
        await postStripeEvent(hookUrl(srv), payload, { timestamp: Math.floor(Date.now() / 1000) - 3_600 }),
        // Signed for one body, sent with another (the amount changed).
        await postStripeEvent(hookUrl(srv), payload.replace('"amount":400', '"amount":1'), { signature: validHeader }),
      ];
      for (const r of refusals) {
        expect(r.status).toBe(400);
        expect(r.body.errors[0].extensions).toEqual({ code: 'BAD_USER_INPUT', reason: 'INVALID_SIGNATURE', requestId: expect.any(String) });
      }
      expect((await fetch(hookUrl(srv))).status).toBe(405);
    });
    expect(await payments(srv, accountId)).toEqual(before);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, pack_grants: 0 });
    // The same event, correctly signed, is taken.
    expect(await postStripeEvent(hookUrl(srv), payload)).toMatchObject({ status: 200, body: { received: true, result: 'settled' } });
  });
});

describe('payment_intent.succeeded', () => {
  it('settles a PENDING purchase: granted once, however often the event is delivered; the client\'s retry gets that grant without a charge', async () => {
    const { srv } = main;
    const { accountId, payment, purchase } = await lostPurchase(srv);
    const payload = eventFor('payment_intent.succeeded', payment);
    expect(await postStripeEvent(hookUrl(srv), payload)).toEqual({ status: 200, body: { received: true, eventId: expect.stringMatching(/^evt_/), result: 'settled' } });
    for (let i = 0; i < 2; i++) expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('unchanged');
    const concurrent = await Promise.all(Array.from({ length: 5 }, () => postStripeEvent(hookUrl(srv), payload)));
    expect(concurrent.map((r) => [r.status, r.body.result])).toEqual(Array.from({ length: 5 }, () => [200, 'unchanged']));

    const [settled] = await payments(srv, accountId);
    expect(settled).toMatchObject({ status: 'SUCCEEDED', provider_ref: intentOf(payment, 'succeeded').id, error: null, grant_id: expect.any(String) });
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');

    const sent = fake.recorded.length;
    const retried = ok(await purchase()).purchaseCreditPack;
    expect(dbId(retried.id)).toBe(settled!.grant_id);
    expect(fake.recorded.length).toBe(sent); // nothing sent to Stripe again
    // A failure delivered after the success (out of order) changes nothing.
    expect((await postStripeEvent(hookUrl(srv), eventFor('payment_intent.payment_failed', payment))).body.result).toBe('unchanged');
    expect((await payments(srv, accountId))[0]!.status).toBe('SUCCEEDED');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('arriving while the charge\'s own answer is in flight, or at the same moment as it: granted once, the client gets that grant', async () => {
    const { srv } = main;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    for (const race of ['webhook first', 'together'] as const) {
      const accountId = await apiAccount(srv);
      await attachMethod(srv, accountId, 'pm_card_visa');
      const held = heldAnswer(intentAnswer('succeeded', `pi_${randomUUID().slice(0, 8)}`, { amount: 400 }));
      fake.planned.push(held.planned);
      const sync = srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') });
      await held.started; // Stripe has the request; its answer is held
      const [payment] = await payments(srv, accountId);
      const payload = eventFor('payment_intent.succeeded', payment!);
      let hook;
      try {
        if (race === 'webhook first') {
          hook = await postStripeEvent(hookUrl(srv), payload);
          expect(hook.body.result).toBe('settled');
          held.release();
        } else {
          held.release();
          hook = await postStripeEvent(hookUrl(srv), payload);
        }
      } finally {
        held.release(); // a failed assertion must not leave the charge hanging
      }
      expect(hook.status).toBe(200);
      const bought = ok(await sync).purchaseCreditPack;
      expect(bought.amount).toBe('40');
      const [settled] = await payments(srv, accountId);
      expect(settled).toMatchObject({ status: 'SUCCEEDED', grant_id: dbId(bought.id) });
      expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
      expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
      await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    }
  });

  it('settles a PENDING auto top-up payment: the top-up ends SUCCEEDED, granted once, and its next run charges nothing', async () => {
    const { srv } = main;
    const { accountId, topUpId, run, payment } = await topUpWithLostAnswer(main);
    expect(payment).toMatchObject({ purpose: 'AUTO_TOP_UP', status: 'PENDING' });

    const payload = eventFor('payment_intent.succeeded', payment!);
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('settled');
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('unchanged');
    expect(await topUps(srv, accountId)).toMatchObject([{ id: topUpId, status: 'SUCCEEDED', attempts: 1, payment_id: payment!.id }]);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    const sent = fake.recorded.length;
    expect(await run(1)).toMatchObject({ status: 'SUCCEEDED' });
    expect(fake.recorded.length).toBe(sent);
    expect((await readAccount(srv, accountId)).balance.paid).toBe('60');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('payment_intent.payment_failed', () => {
  it('settles a PENDING purchase FAILED with Stripe\'s reason; the retry answers PAYMENT_FAILED without a charge; a success after it is not granted', async () => {
    const { srv } = main;
    const { accountId, payment, purchase } = await lostPurchase(srv);
    const failure = { last_payment_error: { type: 'card_error', code: 'card_declined', decline_code: 'insufficient_funds', message: 'Your card has insufficient funds.' } };
    expect((await postStripeEvent(hookUrl(srv), eventFor('payment_intent.payment_failed', payment, failure))).body.result).toBe('settled');
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'FAILED', grant_id: null, error: 'insufficient_funds: Your card has insufficient funds.' }]);
    const sent = fake.recorded.length;
    expect(expectError(await purchase(), 'PAYMENT_FAILED').extensions?.reason).toBe('insufficient_funds');
    expect(fake.recorded.length).toBe(sent);
    // A success for a payment Stripe declined cannot happen (one PaymentIntent per payment, never
    // confirmed again): it is logged for an operator and changes nothing.
    expect((await postStripeEvent(hookUrl(srv), eventFor('payment_intent.succeeded', payment))).body.result).toBe('unchanged');
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, failed: 1, pack_grants: 0 });
  });

  it('authentication_required (the bank wants the absent customer) is FAILED requires_action, as the synchronous answer', async () => {
    const { srv } = main;
    const { accountId, payment, purchase } = await lostPurchase(srv);
    const failure = { last_payment_error: { type: 'card_error', code: 'authentication_required', message: 'This payment requires authentication.' } };
    expect((await postStripeEvent(hookUrl(srv), eventFor('payment_intent.payment_failed', payment, failure))).body.result).toBe('settled');
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'FAILED', error: 'requires_action: This payment requires authentication.' }]);
    expect(expectError(await purchase(), 'PAYMENT_FAILED').extensions?.reason).toBe('requires_action');
  });

  it('auto top-up: counts one failure (once, replayed or not) and the next run charges a new attempt', async () => {
    const { srv } = main;
    const { accountId, topUpId, run, payment } = await topUpWithLostAnswer(main);
    const payload = eventFor('payment_intent.payment_failed', payment!, { last_payment_error: { type: 'card_error', code: 'card_declined', decline_code: 'do_not_honor', message: 'Declined.' } });
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('settled');
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('unchanged');
    const { rows } = await srv.services.pool.query('SELECT enabled, consecutive_failures, last_error FROM auto_top_up_settings WHERE account_id = $1', [dbId(accountId)]);
    expect(rows[0]).toEqual({ enabled: true, consecutive_failures: 1, last_error: 'do_not_honor: Declined.' });
    expect(await topUps(srv, accountId)).toMatchObject([{ status: 'PENDING', attempts: 1 }]);

    fake.planned.push(intentAnswer('succeeded', 'pi_second', { amount: 200 }));
    expect(await run(1)).toMatchObject({ status: 'SUCCEEDED' });
    expect(await topUps(srv, accountId)).toMatchObject([{ status: 'SUCCEEDED', attempts: 2 }]);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 2, succeeded: 1, failed: 1, pack_grants: 1, top_ups: 1 });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('events that settle nothing', () => {
  it('an unknown payment, a malformed or missing paymentId, an unhandled type: 200, nothing changed', async () => {
    const { srv } = main;
    const before = [await globalCounts(srv), await paymentTotals(srv)];
    const foreign = (metadata: Record<string, unknown>) => JSON.stringify(stripeEvent('payment_intent.succeeded', paymentIntent('succeeded', 'pi_foreign', { amount: 400, metadata })));
    for (const [payload, result] of [
      [foreign({ paymentId: randomUUID() }), 'unknown_payment'],
      [foreign({ paymentId: "x' OR 1=1" }), 'unknown_payment'],
      [foreign({}), 'unknown_payment'],
      [JSON.stringify(stripeEvent('payment_intent.created', paymentIntent('requires_payment_method', 'pi_new', { metadata: { paymentId: randomUUID() } }))), 'ignored'],
      // A refund is handled (test/billing/payment-reversals.test.ts), but one of no creditpool charge changes nothing.
      [JSON.stringify(stripeEvent('charge.refunded', { id: 'ch_1', object: 'charge', amount: 400 })), 'unknown_payment'],
      // A won dispute is handled (test/billing/dispute-won.test.ts); a lost one changes nothing, and a won one without an amount is no usable event.
      [JSON.stringify(stripeEvent('charge.dispute.closed', { id: 'du_1', object: 'dispute', payment_intent: 'pi_foreign', status: 'lost' })), 'ignored'],
      [JSON.stringify(stripeEvent('charge.dispute.closed', { id: 'du_1', object: 'dispute', payment_intent: 'pi_foreign', status: 'won' })), 'unknown_payment'],
    ] as const) {
      expect(await postStripeEvent(hookUrl(srv), payload)).toMatchObject({ status: 200, body: { received: true, result } });
    }
    expect([await globalCounts(srv), await paymentTotals(srv)]).toEqual(before);
  });

  it('a charge whose amount, currency or account is not the payment\'s: 200 mismatch, the payment stays PENDING', async () => {
    const { srv } = main;
    const { accountId, payment } = await lostPurchase(srv);
    await expectUnchanged(srv, [accountId], async () => {
      for (const extra of [{ amount: 1 }, { currency: 'eur' }, { metadata: { paymentId: payment.id, accountId: randomUUID() } }]) {
        expect((await postStripeEvent(hookUrl(srv), eventFor('payment_intent.succeeded', payment, extra))).body.result).toBe('mismatch');
      }
    });
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'PENDING', grant_id: null }]);
  });

  it('a grant over the balance limit: 503 (Stripe delivers it again), nothing changed', async () => {
    const { srv } = main;
    const { accountId, payment } = await lostPurchase(srv);
    await grant(srv, accountId, MAX_CREDITS, 'PAID');
    await expectUnchanged(srv, [accountId], async () => {
      const r = await postStripeEvent(hookUrl(srv), eventFor('payment_intent.succeeded', payment));
      expect(r.status).toBe(503);
      expect(r.body.errors[0].extensions).toEqual({ code: 'UNAVAILABLE', reason: 'BALANCE_LIMIT', requestId: expect.any(String) });
    });
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'PENDING', grant_id: null }]);
  });
});

describe('unexpected errors', () => {
  it('a payment the code cannot settle (an auto top-up payment whose key names no top-up): 500, masked, with the request id; nothing changed', async () => {
    const { srv } = main;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const accountId = await apiAccount(srv);
    const { rows } = await srv.services.pool.query(
      `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, payment_method_ref, status, created_at, updated_at)
       VALUES (gen_random_uuid(), $1, 'AUTO_TOP_UP', $2, $3, 4, 'pm_card_visa', 'PENDING', now(), now()) RETURNING id`,
      [dbId(accountId), uniq('not-a-top-up-key'), dbId(pack.id)],
    );
    const [payment] = await payments(srv, accountId);
    expect(payment!.id).toBe(rows[0].id);
    await expectUnchanged(srv, [accountId], async () => {
      const r = await postStripeEvent(hookUrl(srv), eventFor('payment_intent.succeeded', payment!));
      expect(r.status).toBe(500);
      expect(r.body).toEqual({ errors: [{ message: 'Unexpected error.', extensions: { code: 'INTERNAL_SERVER_ERROR', requestId: expect.any(String) } }] });
    });
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'PENDING', grant_id: null }]);
  });
});

describe('database failures (a server whose PostgreSQL goes through a relay the test cuts)', () => {
  let relay: SilenceableRelay;
  let cut: QueuedServer;

  beforeAll(async () => {
    relay = await startSilenceableRelay();
    cut = await startServerWithOwnQueues({ ...STRIPE_ENV, DATABASE_URL: relay.url });
    cut.srv.services.payments = fake.provider();
  });

  afterAll(async () => {
    relay?.restore();
    await cut?.close();
    await relay?.close();
  });

  it('the database is unreachable: 503 and nothing settled; the redelivery once it is back grants once', async () => {
    const { srv } = cut;
    const { accountId, payment } = await lostPurchase(srv);
    const payload = eventFor('payment_intent.succeeded', payment);
    relay.cut();
    let refused;
    try {
      refused = await postStripeEvent(hookUrl(srv), payload);
    } finally {
      relay.restore();
    }
    expect(refused.status).toBe(503);
    expect(refused.body.errors[0].extensions).toEqual({ code: 'UNAVAILABLE', requestId: expect.any(String) });
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'PENDING', grant_id: null }]);
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('settled');
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('late success whose grant failed (database lost at that moment): stuck FAILED no_charge_found until the webhook grants it, once', async () => {
    const { srv } = cut;
    const { accountId, payment, purchase } = await lostPurchase(srv);
    // Its first attempt is 10 s from the end of the idempotency window: the client's retry is still sent.
    await srv.services.pool.query(
      `UPDATE payments SET created_at = created_at - make_interval(secs => $2), last_sent_at = last_sent_at - make_interval(secs => $2) WHERE id = $1`,
      [payment.id, (IDEMPOTENCY_KEY_SAFE_WINDOW_MS - 10_000) / 1000],
    );
    const held = heldAnswer(intentAnswer('succeeded', intentOf(payment, 'succeeded').id, { amount: 400 }));
    fake.planned.push(held.planned, searchAnswer());
    const retry = purchase();
    let answered;
    try {
      await held.started; // the retry's charge is in flight
      // A resume past the window and the settle delay looks the charge up, finds nothing yet, and settles it no_charge_found.
      const later: ServiceContext = { ...srv.services, clock: () => new Date(Date.now() + LOOKUP_SETTLE_DELAY_MS + 60_000) };
      expect(await resumePayment(later, payment.id)).toMatchObject({ status: 'FAILED', reason: expect.stringMatching(/^no_charge_found: /) });
      // The charge's success arrives (the late success) while the database is gone: its grant fails.
      relay.cut();
      held.release();
      answered = await retry;
    } finally {
      held.release();
      relay.restore();
    }
    expectError(answered, 'UNAVAILABLE');

    // Stuck: the money was taken, the payment says FAILED, and nothing polls FAILED payments.
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'FAILED', grant_id: null, error: expect.stringMatching(/^no_charge_found: /) }]);
    expect(expectError(await purchase(), 'PAYMENT_FAILED').extensions?.reason).toBe('no_charge_found');
    expect(await resumePayment(srv.services, payment.id)).toMatchObject({ status: 'FAILED' });
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, pack_grants: 0 });

    // Stripe's payment_intent.succeeded settles it: granted once, the client's retry gets the grant.
    const payload = eventFor('payment_intent.succeeded', payment);
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('settled');
    expect((await postStripeEvent(hookUrl(srv), payload)).body.result).toBe('unchanged');
    const [settled] = await payments(srv, accountId);
    expect(settled).toMatchObject({ status: 'SUCCEEDED', error: null, grant_id: expect.any(String) });
    expect(dbId(ok(await purchase()).purchaseCreditPack.id)).toBe(settled!.grant_id);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});
