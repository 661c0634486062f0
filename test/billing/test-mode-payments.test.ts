/**
 * Test-mode accounts never charge through a live Stripe key (README "Test clocks" and "Stripe
 * webhook endpoint"), on real servers with PAYMENT_PROVIDER=stripe and a LIVE STRIPE_SECRET_KEY
 * against the real PostgreSQL and Redis. The payment provider is the environment's own choice
 * (createPaymentProvider), its Stripe requests sent to a local fake of Stripe's API
 * (test/billing/fake-stripe.ts), which records each request with its Authorization header (the key).
 * - without STRIPE_TEST_SECRET_KEY a test-mode account's purchase and auto top-up are charged by
 *   the built-in simulator: the fake sees no request at all; a live account's uses the live key;
 * - with STRIPE_TEST_SECRET_KEY a test-mode account's purchase, its resume and its lookup (past the
 *   idempotency window) use the test key, never the live one;
 * - webhooks: an event signed under one endpoint's secret whose `livemode` is not that endpoint's
 *   mode is 400 (LIVEMODE_MISMATCH); a correctly signed event whose `livemode` is not the mode its
 *   payment's account is charged in is 200 `mismatch`; both change nothing.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import { parseEnv } from '../../src/config/env.js';
import { createPaymentProvider } from '../../src/payments/index.js';
import { usdToCents } from '../../src/payments/provider.js';
import { resumePayment } from '../../src/services/resume-payment.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectUnchanged, grant, ok, readAccount, uniq } from '../api/helpers.js';
import { RECORD_USAGE, SET_AUTO_TOP_UP, billingCounts, billingWorkerDeps, createPack, startServerWithOwnQueues, topUps, type QueuedServer } from './billing-helpers.js';
import { API_ERROR_ANSWER, intentAnswer, paymentIntent, postStripeEvent, searchAnswer, startFakeStripe, stripeEvent, type FakeStripe } from './fake-stripe.js';

const LIVE_KEY = 'sk_live_creditpool';
const TEST_KEY = 'sk_test_creditpool';
const LIVE_HOOK_SECRET = 'whsec_live_endpoint';
const TEST_HOOK_SECRET = 'whsec_test_endpoint';
/** A live deployment: live key, a live and a test webhook endpoint, no test key. */
const LIVE_ENV = { PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: LIVE_KEY, STRIPE_WEBHOOK_SECRET: LIVE_HOOK_SECRET, STRIPE_TEST_WEBHOOK_SECRET: TEST_HOOK_SECRET };
/** The same with STRIPE_TEST_SECRET_KEY. */
const LIVE_AND_TEST_ENV = { ...LIVE_ENV, STRIPE_TEST_SECRET_KEY: TEST_KEY };
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id amount } }`;
const ATTACH = `mutation($accountId: ID!, $reference: String!) { attachPaymentMethod(accountId: $accountId, reference: $reference) { provider } }`;

let fake: FakeStripe;
/** LIVE_ENV. */
let liveOnly: QueuedServer;
/** LIVE_AND_TEST_ENV. */
let withTestKey: QueuedServer;

/** Starts a server on `env` whose payment provider is the one createPaymentProvider makes of it, Stripe being the fake. */
async function stripeServer(env: Record<string, string>): Promise<QueuedServer> {
  const server = await startServerWithOwnQueues(env);
  server.srv.services.payments = createPaymentProvider(parseEnv(env), fake.connection);
  return server;
}

beforeAll(async () => {
  fake = await startFakeStripe();
  liveOnly = await stripeServer(LIVE_ENV);
  withTestKey = await stripeServer(LIVE_AND_TEST_ENV);
});

afterAll(async () => {
  await liveOnly?.close();
  await withTestKey?.close();
  await fake?.close();
});

beforeEach(() => {
  fake.planned.length = 0;
});

/** Creates a test-mode account over the API (no welcome bonus); returns its global id. */
async function testModeAccount(srv: TestServer): Promise<string> {
  const data = ok(
    await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id testMode } }`, {
      input: { externalId: uniq('test-acct'), name: 'test-mode account', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true },
    }),
  );
  expect(data.createAccount.testMode).toBe(true);
  return data.createAccount.id as string;
}

/** Attaches `reference`; returns the provider the API says will charge it. */
async function attach(srv: TestServer, accountId: string, reference = 'pm_card_visa'): Promise<string> {
  return ok(await srv.gql(ATTACH, { accountId, reference })).attachPaymentMethod.provider;
}

/** The API keys (Authorization headers) of the fake's requests from index `since` on. */
function keysSince(since: number): string[] {
  return fake.recorded.slice(since).map((r) => String(r.headers.authorization));
}

/** The account's payments, oldest first. */
async function payments(srv: TestServer, accountId: string) {
  const { rows } = await srv.services.pool.query(
    'SELECT id, account_id, purpose, pack_id, amount_usd::text, status, grant_id, error FROM payments WHERE account_id = $1 ORDER BY created_at, id',
    [dbId(accountId)],
  );
  return rows as Array<{ id: string; account_id: string; purpose: string; pack_id: string; amount_usd: string; status: string; grant_id: string | null; error: string | null }>;
}

describe('purchases', () => {
  it('without STRIPE_TEST_SECRET_KEY a test-mode account is charged by the simulator: Stripe sees no request; a live account uses the live key', async () => {
    const { srv } = liveOnly;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const testAccount = await testModeAccount(srv);
    expect(await attach(srv, testAccount)).toBe('simulator');
    const sent = fake.recorded.length;
    const bought = ok(await srv.gql(PURCHASE, { accountId: testAccount, packId: pack.id, key: uniq('buy') })).purchaseCreditPack;
    expect(bought.amount).toBe('40');
    expect(fake.recorded.length).toBe(sent);
    expect(await payments(srv, testAccount)).toMatchObject([{ status: 'SUCCEEDED', grant_id: dbId(bought.id) }]);
    expect((await readAccount(srv, testAccount)).balance.paid).toBe('40');
    await expectLedgerInvariant(srv.services.pool, dbId(testAccount));

    const liveAccount = await apiAccount(srv);
    expect(await attach(srv, liveAccount)).toBe('stripe');
    fake.planned.push(intentAnswer('succeeded', 'pi_live', { amount: 400 }));
    ok(await srv.gql(PURCHASE, { accountId: liveAccount, packId: pack.id, key: uniq('buy') }));
    expect(keysSince(sent)).toEqual([`Bearer ${LIVE_KEY}`]);
  });

  it('with STRIPE_TEST_SECRET_KEY a test-mode account\'s charge, resume and lookup use the test key, never the live one; a live account uses the live key', async () => {
    const { srv } = withTestKey;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const testAccount = await testModeAccount(srv);
    expect(await attach(srv, testAccount)).toBe('stripe');
    const sent = fake.recorded.length;
    fake.planned.push(intentAnswer('succeeded', 'pi_test_1', { amount: 400 }));
    ok(await srv.gql(PURCHASE, { accountId: testAccount, packId: pack.id, key: uniq('buy') }));
    expect(keysSince(sent)).toEqual([`Bearer ${TEST_KEY}`]);

    // A purchase whose answer was lost, resumed by the resume-payment job's service.
    fake.planned.push(API_ERROR_ANSWER);
    expectError(await srv.gql(PURCHASE, { accountId: testAccount, packId: pack.id, key: uniq('buy') }), 'UNAVAILABLE');
    const lost = (await payments(srv, testAccount))[1]!;
    expect(lost.status).toBe('PENDING');
    fake.planned.push(intentAnswer('succeeded', 'pi_test_2', { amount: 400 }));
    expect(await resumePayment(srv.services, lost.id)).toMatchObject({ status: 'SUCCEEDED' });

    // One lost again and older than the idempotency window: only looked up (a search), with the test key.
    fake.planned.push(API_ERROR_ANSWER);
    expectError(await srv.gql(PURCHASE, { accountId: testAccount, packId: pack.id, key: uniq('buy') }), 'UNAVAILABLE');
    const old = (await payments(srv, testAccount))[2]!;
    await srv.services.pool.query(`UPDATE payments SET created_at = now() - interval '24 hours', last_sent_at = now() - interval '24 hours' WHERE id = $1`, [old.id]);
    const searched = fake.recorded.length;
    fake.planned.push(searchAnswer(paymentIntent('succeeded', 'pi_test_3', { amount: 400, metadata: { paymentId: old.id } })));
    expect(await resumePayment(srv.services, old.id)).toMatchObject({ status: 'SUCCEEDED' });
    expect(fake.recorded.slice(searched).map((r) => r.path)).toEqual([expect.stringMatching(/^\/v1\/payment_intents\/search/)]);
    expect(keysSince(sent)).toEqual(Array.from({ length: 5 }, () => `Bearer ${TEST_KEY}`));
    expect(await billingCounts(srv, testAccount)).toMatchObject({ payments: 3, succeeded: 3, pack_grants: 3 });

    const liveAccount = await apiAccount(srv);
    await attach(srv, liveAccount);
    const liveSent = fake.recorded.length;
    fake.planned.push(intentAnswer('succeeded', 'pi_live_2', { amount: 400 }));
    ok(await srv.gql(PURCHASE, { accountId: liveAccount, packId: pack.id, key: uniq('buy') }));
    expect(keysSince(liveSent)).toEqual([`Bearer ${LIVE_KEY}`]);
  });
});

describe('auto top-up', () => {
  it('of a test-mode account without STRIPE_TEST_SECRET_KEY: charged by the simulator and granted, Stripe sees no request', async () => {
    const { srv } = liveOnly;
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const accountId = await testModeAccount(srv);
    await attach(srv, accountId);
    await grant(srv, accountId, '100', 'PAID');
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
    ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '60' } } }));
    const [topUp] = await topUps(srv, accountId);
    expect(topUp).toMatchObject({ status: 'PENDING' });
    const sent = fake.recorded.length;
    const done = await processAutoTopUp(billingWorkerDeps(liveOnly), {
      id: `auto-top-up-${topUp!.id}`,
      name: 'auto-top-up',
      data: { topUpId: topUp!.id, accountId: dbId(accountId) },
      attemptsMade: 0,
      attempts: 3,
    });
    expect(done).toMatchObject({ status: 'SUCCEEDED' });
    expect(fake.recorded.length).toBe(sent);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('60');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('webhook livemode', () => {
  /** The webhook endpoint of a test server. */
  const hookUrl = (srv: TestServer) => srv.url.replace(/\/graphql$/, '/webhooks/stripe');

  /** A `payment_intent.succeeded` event (raw JSON) for `payment`, with `livemode`. */
  function succeededEvent(payment: Awaited<ReturnType<typeof payments>>[number], livemode: boolean): string {
    const intent = paymentIntent('succeeded', `pi_${payment.id.replaceAll('-', '').slice(0, 24)}`, {
      amount: Number(usdToCents(payment.amount_usd)),
      metadata: { paymentId: payment.id, packId: payment.pack_id, purpose: payment.purpose, accountId: payment.account_id },
    });
    return JSON.stringify({ ...stripeEvent('payment_intent.succeeded', intent), livemode });
  }

  /** A purchase of a 40-credit pack whose Stripe answer was lost (PENDING), for `accountId`. */
  async function lostPurchase(srv: TestServer, accountId: string) {
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    await attach(srv, accountId);
    fake.planned.push(API_ERROR_ANSWER);
    expectError(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') }), 'UNAVAILABLE');
    const [payment] = await payments(srv, accountId);
    expect(payment).toMatchObject({ status: 'PENDING' });
    return payment!;
  }

  it('an event whose livemode is not its signing endpoint\'s mode: 400 LIVEMODE_MISMATCH, nothing changed', async () => {
    const { srv } = liveOnly;
    const accountId = await apiAccount(srv);
    const payment = await lostPurchase(srv, accountId);
    await expectUnchanged(srv, [accountId], async () => {
      for (const [livemode, secret] of [
        [false, LIVE_HOOK_SECRET],
        [true, TEST_HOOK_SECRET],
      ] as const) {
        const r = await postStripeEvent(hookUrl(srv), succeededEvent(payment, livemode), { secret });
        expect(r.status).toBe(400);
        expect(r.body.errors[0].extensions).toEqual({ code: 'BAD_USER_INPUT', reason: 'LIVEMODE_MISMATCH', requestId: expect.any(String) });
      }
    });
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'PENDING', grant_id: null }]);
    // The live event from the live endpoint settles it.
    expect((await postStripeEvent(hookUrl(srv), succeededEvent(payment, true), { secret: LIVE_HOOK_SECRET })).body.result).toBe('settled');
    expect(await payments(srv, accountId)).toMatchObject([{ status: 'SUCCEEDED' }]);
  });

  it('a test-mode event for a live account\'s payment, or a live event for a test-mode account\'s: 200 mismatch, nothing changed', async () => {
    for (const { server, testMode } of [
      { server: liveOnly, testMode: false },
      { server: withTestKey, testMode: true },
    ]) {
      const { srv } = server;
      const accountId = testMode ? await testModeAccount(srv) : await apiAccount(srv);
      const payment = await lostPurchase(srv, accountId);
      await expectUnchanged(srv, [accountId], async () => {
        const wrong = testMode ? { livemode: true, secret: LIVE_HOOK_SECRET } : { livemode: false, secret: TEST_HOOK_SECRET };
        const r = await postStripeEvent(hookUrl(srv), succeededEvent(payment, wrong.livemode), { secret: wrong.secret });
        expect(r).toMatchObject({ status: 200, body: { received: true, result: 'mismatch' } });
      });
      expect(await payments(srv, accountId)).toMatchObject([{ status: 'PENDING', grant_id: null }]);
      // The event of the account's own mode settles it.
      const right = testMode ? { livemode: false, secret: TEST_HOOK_SECRET } : { livemode: true, secret: LIVE_HOOK_SECRET };
      expect((await postStripeEvent(hookUrl(srv), succeededEvent(payment, right.livemode), { secret: right.secret })).body.result).toBe('settled');
      expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
    }
  });
});
