/**
 * Helpers of the payment reversal tests (refunds, disputes, won disputes, failed refunds:
 * payment-reversals, payment-reversals-edges, dispute-won, refund-failures, reversal-audit…): the
 * hooks that start a file's servers (useStripeServers), a server charging through the local fake of
 * Stripe, a bought pack, a purchase whose answer was lost, an auto top-up due, Stripe's refund,
 * dispute and success events, posting them to the webhook endpoint, and the payment's reversal state.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, expect } from 'vitest';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, ok, uniq } from '../api/helpers.js';
import { RECORD_USAGE, SET_AUTO_TOP_UP, attachMethod, billingWorkerDeps, createPack, startBillingServer, startServerWithOwnQueues, topUps, type BillingServer, type QueuedServer } from './billing-helpers.js';
import { API_ERROR_ANSWER, intentAnswer, paymentIntent, postStripeEvent, startFakeStripe, stripeEvent, type FakeStripe } from './fake-stripe.js';

/** The environment of a server whose payment provider is Stripe (the fake), webhook secret `whsec_creditpool`. */
export const STRIPE_ENV = { PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_creditpool', STRIPE_WEBHOOK_SECRET: 'whsec_creditpool' };
/** purchaseCreditPack with an idempotency key, answering the grant's `id` and `amount`. */
export const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id amount } }`;

/** Starts a server on its own queues ({@link STRIPE_ENV}) that charges through `fake`. */
export async function startStripeServer(fake: FakeStripe): Promise<QueuedServer> {
  const server = await startServerWithOwnQueues(STRIPE_ENV);
  server.srv.services.payments = fake.provider();
  return server;
}

/** The servers a payment reversal test file runs against, started by {@link useStripeServers}. */
export interface StripeServers {
  /** The local fake of Stripe's API; its planned answers are emptied before each test. */
  readonly fake: FakeStripe;
  /** A server on its own queues that charges through `fake` ({@link startStripeServer}). */
  readonly main: QueuedServer;
  /** A server on its own queues that charges through the simulator; only with `{ simulator: true }`. */
  readonly sim: BillingServer;
}

/**
 * Registers the vitest hooks of a file's Stripe servers, in this order: beforeAll starts the fake
 * of Stripe, then a server charging through it ({@link startStripeServer}), then (with
 * `simulator: true`) a server charging through the simulator; afterAll closes what was started
 * (the servers, then the fake), also after a failed start; beforeEach empties the fake's planned
 * answers, so that none a test left unused answers the next test.
 * @returns getters of the servers, for use inside tests and later hooks.
 * @throws Error (from a getter) when read before beforeAll started it, or `sim` without `simulator: true`.
 */
export function useStripeServers(opts: { simulator?: boolean } = {}): StripeServers {
  let fake: FakeStripe | undefined;
  let main: QueuedServer | undefined;
  let sim: BillingServer | undefined;
  beforeAll(async () => {
    fake = await startFakeStripe();
    main = await startStripeServer(fake);
    if (opts.simulator) sim = await startBillingServer();
  });
  afterAll(async () => {
    await main?.close();
    await sim?.close();
    await fake?.close();
  });
  beforeEach(() => {
    started('fake', fake).planned.length = 0;
  });
  return {
    get fake() {
      return started('fake', fake);
    },
    get main() {
      return started('main', main);
    },
    get sim() {
      return started('sim', sim);
    },
  };
}

/** `value`, or an Error saying that server `name` of {@link useStripeServers} is not started. */
function started<T>(name: string, value: T | undefined): T {
  if (value === undefined) throw new Error(`useStripeServers: ${name} is not started (read it inside a test or hook; sim needs { simulator: true })`);
  return value;
}

/** The Stripe webhook endpoint (POST /webhooks/stripe) of a test server. */
export function hookUrl(srv: TestServer): string {
  return srv.url.replace(/\/graphql$/, '/webhooks/stripe');
}

/** A new PaymentIntent id (`pi_` and 24 hex digits). */
export function newPi(): string {
  return `pi_${randomUUID().replaceAll('-', '').slice(0, 24)}`;
}

/** A new Dispute id (`du_` and 24 hex digits). */
export function newDu(): string {
  return `du_${randomUUID().replaceAll('-', '').slice(0, 24)}`;
}

/** Posts a signed Stripe event (raw JSON) to `srv`'s webhook, expects 200 and returns the body's `result`. */
export async function post(srv: TestServer, payload: string): Promise<string> {
  const r = await postStripeEvent(hookUrl(srv), payload);
  expect(r.status).toBe(200);
  return r.body.result as string;
}

/** Records `units` units of usage (one credit each) on the account, under a unique key. */
export async function spend(srv: TestServer, accountId: string, units: string): Promise<void> {
  ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units } } }));
}

/** Stripe's `charge.refunded` event (raw JSON) of PaymentIntent `pi`'s charge of `amount` cents ($4), refunded `refundedCents` in all; `extra` overrides Charge fields. */
export function refundEvent(pi: string, refundedCents: number, extra: Record<string, unknown> = {}, amount = 400): string {
  const charge = { id: `ch_${pi.slice(3)}`, object: 'charge', payment_intent: pi, amount, amount_refunded: refundedCents, refunded: refundedCents === amount, currency: 'usd', livemode: false, metadata: {}, ...extra };
  return JSON.stringify(stripeEvent('charge.refunded', charge));
}

/** Stripe's Dispute event `type` (raw JSON) of PaymentIntent `pi`'s charge ($4), a new id and status needs_response unless `fields` (Dispute fields) say otherwise. */
export function disputeEvent(pi: string, fields: Record<string, unknown> = {}, type = 'charge.dispute.created'): string {
  const dispute = { id: newDu(), object: 'dispute', charge: `ch_${pi.slice(3)}`, payment_intent: pi, amount: 400, currency: 'usd', livemode: false, status: 'needs_response', ...fields };
  return JSON.stringify(stripeEvent(type, dispute));
}

/** A purchase of a pack of 40 credits for $4 (expiring after `expiresAfterDays`, if given) that Stripe (`fake`) charged with PaymentIntent `pi`; `grantId` is the grant's database id, `grantGid` its global id. */
export async function boughtPack(srv: TestServer, fake: FakeStripe, expiresAfterDays?: number) {
  const pack = await createPack(srv, { credits: '40', priceUsd: '4', ...(expiresAfterDays ? { expiresAfterDays } : {}) });
  const accountId = await apiAccount(srv);
  await attachMethod(srv, accountId, 'pm_card_visa');
  const pi = newPi();
  fake.planned.push(intentAnswer('succeeded', pi, { amount: 400 }));
  const bought = ok(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') })).purchaseCreditPack;
  const { rows } = await srv.services.pool.query('SELECT id, provider_ref FROM payments WHERE grant_id = $1', [dbId(bought.id)]);
  expect(rows[0].provider_ref).toBe(pi);
  return { pack, accountId, pi, paymentId: rows[0].id as string, grantId: dbId(bought.id), grantGid: bought.id as string };
}

/**
 * A new account that bought pack `packId` on `srv` (a server charging through the simulator)
 * with its default payment method.
 * @returns the account's global id and the database ids of the payment and of the pack's grant.
 */
export async function boughtWithSimulator(srv: TestServer, packId: string): Promise<{ accountId: string; paymentId: string; grantId: string }> {
  const accountId = await apiAccount(srv);
  await attachMethod(srv, accountId);
  const bought = ok(await srv.gql(PURCHASE, { accountId, packId, key: uniq('buy') })).purchaseCreditPack;
  const { rows } = await srv.services.pool.query('SELECT id FROM payments WHERE grant_id = $1', [dbId(bought.id)]);
  return { accountId, paymentId: rows[0].id as string, grantId: dbId(bought.id) };
}

/**
 * A purchase of a pack of 40 credits for $4 whose Stripe answer was lost (`fake` answers 500):
 * the client got UNAVAILABLE, the payment is PENDING with no provider_ref. `succeeded(pi)` is the
 * late `payment_intent.succeeded` (raw JSON) of the PaymentIntent `pi` Stripe made for it;
 * `purchase()` is the client's retry.
 */
export async function lostPurchase(srv: TestServer, fake: FakeStripe) {
  const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
  const accountId = await apiAccount(srv);
  await attachMethod(srv, accountId, 'pm_card_visa');
  const key = uniq('buy');
  fake.planned.push(API_ERROR_ANSWER);
  expectError(await srv.gql(PURCHASE, { accountId, packId: pack.id, key }), 'UNAVAILABLE');
  const { rows } = await srv.services.pool.query('SELECT id, status, provider_ref FROM payments WHERE account_id = $1', [dbId(accountId)]);
  expect(rows).toEqual([{ id: expect.any(String), status: 'PENDING', provider_ref: null }]);
  const paymentId = rows[0].id as string;
  const succeeded = (pi: string) =>
    JSON.stringify(stripeEvent('payment_intent.succeeded', paymentIntent('succeeded', pi, { amount: 400, metadata: { paymentId, packId: pack.id, purpose: 'PURCHASE', accountId: dbId(accountId) } })));
  return { pack, accountId, key, paymentId, succeeded, purchase: () => srv.gql(PURCHASE, { accountId, packId: pack.id, key }) };
}

/**
 * An account with 100 credits and auto top-up set up (pack of 20 credits for $2, threshold 50,
 * card pm_card_visa), crossed by a 60-credit charge: its top-up is due. `run(n)` runs the top-up's
 * job as attempt n + 1 of 3 (processor called directly, over `billing`'s services).
 */
export async function autoTopUpDue(billing: QueuedServer) {
  const { srv } = billing;
  const deps = billingWorkerDeps(billing);
  const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
  const accountId = await apiAccount(srv, { paid: '100' });
  await attachMethod(srv, accountId, 'pm_card_visa');
  ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
  await spend(srv, accountId, '60');
  const [topUp] = await topUps(srv, accountId);
  const topUpId = topUp!.id;
  const run = (attemptsMade: number) => processAutoTopUp(deps, { id: `auto-top-up-${topUpId}`, name: 'auto-top-up', data: { topUpId, accountId: dbId(accountId) }, attemptsMade, attempts: 3 });
  return { accountId, topUpId, run };
}

/** {@link autoTopUpDue}, its job run once and charged by Stripe (`fake`) with PaymentIntent `pi` ($2): the top-up is SUCCEEDED. */
export async function autoTopUpCharged(billing: QueuedServer, fake: FakeStripe) {
  const due = await autoTopUpDue(billing);
  const pi = newPi();
  fake.planned.push(intentAnswer('succeeded', pi, { amount: 200 }));
  await due.run(0);
  expect(await topUps(billing.srv, due.accountId)).toMatchObject([{ status: 'SUCCEEDED' }]);
  return { ...due, pi };
}

/** {@link autoTopUpDue}, its job's first run having lost Stripe's answer (`fake` answers 500; the job will retry): the top-up and its payment are PENDING. */
export async function autoTopUpWithLostAnswer(billing: QueuedServer, fake: FakeStripe) {
  const due = await autoTopUpDue(billing);
  fake.planned.push(API_ERROR_ANSWER);
  await expect(due.run(0)).rejects.toThrow(/will retry/);
  return due;
}

/** The payment row's reversal columns and its grant's void (voided_micro_credits as text), as the tests read them. */
export async function paymentState(srv: TestServer, paymentId: string) {
  const { rows } = await srv.services.pool.query(
    `SELECT p.status, p.refunded_cents::text, p.refunded_at IS NOT NULL AS refunded, p.disputed_at IS NOT NULL AS disputed, p.dispute_ref,
            p.reversed_at IS NOT NULL AS reversed, p.dispute_won_at IS NOT NULL AS won, p.reversed_micro_credits::text, p.refund_taken_micro_credits::text AS refund_taken,
            g.voided_at IS NOT NULL AS grant_voided, g.void_reason, g.voided_micro_credits::text
       FROM payments p JOIN credit_grants g ON g.id = p.grant_id WHERE p.id = $1`,
    [paymentId],
  );
  return rows[0];
}

/** How many audit events of `action` (e.g. `grant.voided`) the account has. */
export async function auditCount(srv: TestServer, accountId: string, action: string): Promise<number> {
  const { rows } = await srv.services.pool.query(`SELECT count(*)::int AS n FROM audit_events WHERE account_id = $1 AND action = $2`, [dbId(accountId), action]);
  return rows[0].n as number;
}
