/**
 * The payment providers on their own (issue #4).
 * - Stripe adapter: the official SDK pointed (host/port/protocol options) at a local HTTP server
 *   that records each request and answers like Stripe's API: the request is one off-session,
 *   confirmed PaymentIntent in exact USD cents with the payment id as Idempotency-Key; card
 *   errors map to declined / requires_action; no answer, 5xx and `processing` to
 *   PaymentTimeoutError; the SDK's own retry re-sends the same key. Webhook signatures are checked
 *   with the SDK's test header helper, and chargeEventOf maps events like the charge's own answer.
 * - Simulator: one charge per key, outcomes by prefix and script, key reuse with other parameters refused.
 * - Modes: the factory never gives test-mode accounts a live key; ModeRoutingProvider sends charges
 *   and lookups by the account's mode; a live-key StripeProvider refuses test-mode requests;
 *   verifyWebhookEvent takes an event only under the secret of its own livemode.
 * - usdToCents and the factory.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Stripe from 'stripe';
import { StripeProvider, WebhookLivemodeError, chargeEventOf, verifyWebhookEvent } from '../../src/payments/stripe.js';
import { ModeRoutingProvider, providerNameFor } from '../../src/payments/mode-routing.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import { PaymentTimeoutError, usdToCents, type ChargeRequest } from '../../src/payments/provider.js';
import { createPaymentProvider } from '../../src/payments/index.js';
import { cardErrorAnswer, intentAnswer, paymentIntent, searchAnswer, startFakeStripe, stripeEvent, type FakeStripe, type Planned, type Recorded } from './fake-stripe.js';

let fake: FakeStripe;

beforeAll(async () => {
  fake = await startFakeStripe();
});

afterAll(async () => {
  await fake?.close();
});

function stripeAt(opts: { timeoutMs?: number; maxNetworkRetries?: number } = {}) {
  return fake.provider(opts);
}

function chargeRequest(overrides: Partial<ChargeRequest> = {}): ChargeRequest {
  return {
    idempotencyKey: '6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e',
    amountUsd: '9.99',
    paymentMethodRef: 'pm_card_visa',
    accountId: 'a5a0c3de-0000-4000-8000-000000000001',
    testMode: false,
    description: 'Starter pack (credit pack)',
    metadata: { paymentId: '6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e', packId: 'p1', purpose: 'PURCHASE' },
    ...overrides,
  };
}

/** Runs `fn` with these answers planned; returns its result and the requests it made. */
async function withAnswers<T>(answers: Planned[], fn: () => Promise<T>): Promise<{ result: T; requests: Recorded[] }> {
  fake.planned.length = 0;
  fake.recorded.length = 0;
  fake.planned.push(...answers);
  const result = await fn();
  return { result, requests: [...fake.recorded] };
}

const intent = intentAnswer;
const cardError = cardErrorAnswer;

describe('StripeProvider.charge', () => {
  it('sends one confirmed off-session PaymentIntent in exact cents, with the payment id as Idempotency-Key', async () => {
    const { result, requests } = await withAnswers([intent('succeeded')], () =>
      stripeAt().charge(chargeRequest({ paymentMethodRef: 'cus_42/pm_card_visa' })),
    );
    expect(result).toEqual({ status: 'succeeded', providerRef: 'pi_123' });
    expect(requests).toHaveLength(1);
    const [r] = requests;
    expect(r).toMatchObject({ method: 'POST', path: '/v1/payment_intents' });
    expect(r!.headers['idempotency-key']).toBe('6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e');
    expect(r!.headers.authorization).toBe('Bearer sk_test_creditpool');
    expect(Object.fromEntries(r!.form)).toEqual({
      amount: '999',
      currency: 'usd',
      payment_method: 'pm_card_visa',
      customer: 'cus_42',
      confirm: 'true',
      off_session: 'true',
      description: 'Starter pack (credit pack)',
      'metadata[paymentId]': '6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e',
      'metadata[packId]': 'p1',
      'metadata[purpose]': 'PURCHASE',
      'metadata[accountId]': 'a5a0c3de-0000-4000-8000-000000000001',
    });
  });

  it('a reference without a customer sends no customer; amounts are exact cents', async () => {
    for (const [usd, cents] of [['5', '500'], ['0.1', '10'], ['1234.56', '123456']] as const) {
      const { requests } = await withAnswers([intent('succeeded')], () => stripeAt().charge(chargeRequest({ amountUsd: usd })));
      expect(requests[0]!.form.get('amount')).toBe(cents);
      expect(requests[0]!.form.has('customer')).toBe(false);
    }
  });

  it('maps card_declined to declined (the decline_code as reason) and authentication_required to requires_action', async () => {
    const declined = await withAnswers([cardError('card_declined', { decline_code: 'insufficient_funds' })], () => stripeAt().charge(chargeRequest()));
    expect(declined.result).toEqual({ status: 'declined', code: 'insufficient_funds', message: 'card error card_declined' });
    const auth = await withAnswers([cardError('authentication_required')], () => stripeAt().charge(chargeRequest()));
    expect(auth.result).toEqual({ status: 'requires_action', providerRef: 'pi_err', message: 'card error authentication_required' });
    const action = await withAnswers([intent('requires_action', 'pi_3ds')], () => stripeAt().charge(chargeRequest()));
    expect(action.result).toMatchObject({ status: 'requires_action', providerRef: 'pi_3ds' });
  });

  it('no answer in time, a 5xx and a PaymentIntent still processing are PaymentTimeoutError (outcome unknown)', async () => {
    await expect(withAnswers(['hang'], () => stripeAt({ timeoutMs: 300 }).charge(chargeRequest()))).rejects.toBeInstanceOf(PaymentTimeoutError);
    await expect(withAnswers([{ status: 500, body: { error: { type: 'api_error', message: 'boom' } } }], () => stripeAt().charge(chargeRequest()))).rejects.toBeInstanceOf(
      PaymentTimeoutError,
    );
    await expect(withAnswers([intent('processing')], () => stripeAt().charge(chargeRequest()))).rejects.toBeInstanceOf(PaymentTimeoutError);
  });

  it("the SDK's own retry after a retryable error re-sends the same Idempotency-Key", async () => {
    const { result, requests } = await withAnswers(
      [{ status: 500, body: { error: { type: 'api_error', message: 'try again' } }, headers: { 'stripe-should-retry': 'true' } }, intent('succeeded', 'pi_retry')],
      () => stripeAt({ maxNetworkRetries: 1 }).charge(chargeRequest()),
    );
    expect(result).toEqual({ status: 'succeeded', providerRef: 'pi_retry' });
    expect(requests.map((r) => r.headers['idempotency-key'])).toEqual(['6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e', '6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e']);
  });

  it('an invalid request is not a decline: Stripe\'s error is thrown as is', async () => {
    const answer = { status: 400, body: { error: { type: 'invalid_request_error', code: 'resource_missing', param: 'payment_method', message: 'No such PaymentMethod' } } };
    await expect(withAnswers([answer], () => stripeAt().charge(chargeRequest()))).rejects.toBeInstanceOf(Stripe.errors.StripeInvalidRequestError);
  });
});

describe('StripeProvider.lookupCharge', () => {
  const search = searchAnswer;
  const pi = paymentIntent;

  it("searches PaymentIntents by metadata['paymentId'] with a GET (nothing is charged) and maps what it finds", async () => {
    const { result, requests } = await withAnswers([search(pi('succeeded', 'pi_found'))], () => stripeAt().lookupCharge('6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e', false));
    expect(result).toEqual({ status: 'succeeded', providerRef: 'pi_found' });
    expect(requests).toHaveLength(1);
    expect(requests[0]!.method).toBe('GET');
    const url = new URL(requests[0]!.path, 'http://stripe.test');
    expect(url.pathname).toBe('/v1/payment_intents/search');
    expect(url.searchParams.get('query')).toBe("metadata['paymentId']:'6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e'");
  });

  it('a succeeded PaymentIntent wins over a failed one; a failed one alone is declined; none is null', async () => {
    const both = await withAnswers([search(pi('requires_payment_method', 'pi_a'), pi('succeeded', 'pi_b'))], () => stripeAt().lookupCharge('p1', false));
    expect(both.result).toEqual({ status: 'succeeded', providerRef: 'pi_b' });
    const failed = await withAnswers([search(pi('requires_payment_method', 'pi_a', { last_payment_error: { code: 'card_declined', decline_code: 'insufficient_funds', message: 'no funds' } }))], () =>
      stripeAt().lookupCharge('p1', false),
    );
    expect(failed.result).toEqual({ status: 'declined', code: 'insufficient_funds', message: 'no funds' });
    expect((await withAnswers([search()], () => stripeAt().lookupCharge('p1', false))).result).toBeNull();
  });

  it('no definite answer, or a PaymentIntent still processing, is PaymentTimeoutError', async () => {
    await expect(withAnswers([{ status: 500, body: { error: { type: 'api_error', message: 'boom' } } }], () => stripeAt().lookupCharge('p1', false))).rejects.toBeInstanceOf(PaymentTimeoutError);
    await expect(withAnswers([search(pi('processing', 'pi_p'))], () => stripeAt().lookupCharge('p1', false))).rejects.toBeInstanceOf(PaymentTimeoutError);
  });
});

describe('verifyWebhookEvent: Stripe\'s signature scheme', () => {
  const payload = JSON.stringify({ id: 'evt_1', object: 'event', livemode: false, type: 'payment_intent.succeeded', data: { object: { id: 'pi_1', object: 'payment_intent' } } });
  // A test-mode endpoint's secret.
  const secrets = [{ secret: 'whsec_creditpool', livemode: false }];

  it('accepts a correctly signed body and returns the event', () => {
    const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: 'whsec_creditpool' });
    const event = verifyWebhookEvent(payload, header, secrets);
    expect(event).toMatchObject({ id: 'evt_1', type: 'payment_intent.succeeded' });
    expect(verifyWebhookEvent(Buffer.from(payload), header, secrets).id).toBe('evt_1');
  });

  it('refuses a tampered body, another secret and an old signature', () => {
    const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: 'whsec_creditpool' });
    expect(() => verifyWebhookEvent(payload.replace('pi_1', 'pi_2'), header, secrets)).toThrow(Stripe.errors.StripeSignatureVerificationError);
    expect(() => verifyWebhookEvent(payload, header, [{ secret: 'whsec_other', livemode: false }])).toThrow(Stripe.errors.StripeSignatureVerificationError);
    const old = Stripe.webhooks.generateTestHeaderString({ payload, secret: 'whsec_creditpool', timestamp: Math.floor(Date.now() / 1000) - 3600 });
    expect(() => verifyWebhookEvent(payload, old, secrets)).toThrow(Stripe.errors.StripeSignatureVerificationError);
  });
});

describe('verifyWebhookEvent (the live and the test endpoint\'s secrets)', () => {
  const secrets = [
    { secret: 'whsec_live', livemode: true },
    { secret: 'whsec_test', livemode: false },
  ];
  const body = (livemode: boolean) => JSON.stringify({ id: 'evt_m', object: 'event', livemode, type: 'payment_intent.succeeded', data: { object: { id: 'pi_1' } } });
  const signed = (payload: string, secret: string) => Stripe.webhooks.generateTestHeaderString({ payload, secret });

  it('accepts an event signed with the secret of its own mode', () => {
    expect(verifyWebhookEvent(body(true), signed(body(true), 'whsec_live'), secrets).livemode).toBe(true);
    expect(verifyWebhookEvent(body(false), signed(body(false), 'whsec_test'), secrets).livemode).toBe(false);
  });

  it('refuses an event signed with the other mode\'s secret (WebhookLivemodeError), and a signature valid under neither', () => {
    expect(() => verifyWebhookEvent(body(false), signed(body(false), 'whsec_live'), secrets)).toThrow(WebhookLivemodeError);
    expect(() => verifyWebhookEvent(body(true), signed(body(true), 'whsec_test'), secrets)).toThrow(WebhookLivemodeError);
    const noLivemode = JSON.stringify({ id: 'evt_n', object: 'event', type: 'payment_intent.succeeded', data: { object: {} } });
    expect(() => verifyWebhookEvent(noLivemode, signed(noLivemode, 'whsec_test'), secrets)).toThrow(WebhookLivemodeError);
    expect(() => verifyWebhookEvent(body(true), signed(body(true), 'whsec_other'), secrets)).toThrow(Stripe.errors.StripeSignatureVerificationError);
    expect(() => verifyWebhookEvent(body(true), signed(body(true), 'whsec_live'), [])).toThrow(Stripe.errors.StripeSignatureVerificationError);
  });
});

describe('chargeEventOf (what a verified Stripe event settles)', () => {
  const event = (type: string, object: Record<string, unknown>) => stripeEvent(type, object, 'evt_1') as unknown as Stripe.Event;
  const metadata = { paymentId: '6f0c1c9e-8a34-4c1c-9a55-1f1b2f3c4d5e', packId: 'p1', purpose: 'PURCHASE', accountId: 'a5a0c3de-0000-4000-8000-000000000001' };

  it('maps succeeded, payment_failed (decline_code, else code), authentication_required, requires_action and canceled like the charge\'s own answer', () => {
    expect(chargeEventOf(event('payment_intent.succeeded', paymentIntent('succeeded', 'pi_1', { metadata })))).toEqual({
      eventId: 'evt_1',
      eventType: 'payment_intent.succeeded',
      paymentId: metadata.paymentId,
      accountId: metadata.accountId,
      outcome: { status: 'succeeded', providerRef: 'pi_1' },
      amountCents: 999n,
      currency: 'usd',
      livemode: false,
    });
    const live = { ...stripeEvent('payment_intent.succeeded', paymentIntent('succeeded', 'pi_1', { metadata }), 'evt_1'), livemode: true } as unknown as Stripe.Event;
    expect(chargeEventOf(live)?.livemode).toBe(true);
    const failed = (last_payment_error: unknown, type = 'payment_intent.payment_failed') =>
      chargeEventOf(event(type, paymentIntent('requires_payment_method', 'pi_2', { metadata, last_payment_error })))?.outcome;
    expect(failed({ code: 'card_declined', decline_code: 'insufficient_funds', message: 'no funds' })).toEqual({ status: 'declined', code: 'insufficient_funds', message: 'no funds' });
    expect(failed({ code: 'expired_card', message: 'expired' })).toEqual({ status: 'declined', code: 'expired_card', message: 'expired' });
    expect(failed(null)).toMatchObject({ status: 'declined', code: 'payment_failed' });
    expect(failed({ code: 'authentication_required', message: 'authenticate' })).toEqual({ status: 'requires_action', providerRef: 'pi_2', message: 'authenticate' });
    expect(failed(null, 'payment_intent.canceled')).toMatchObject({ status: 'declined', code: 'canceled' });
    expect(chargeEventOf(event('payment_intent.requires_action', paymentIntent('requires_action', 'pi_3', { metadata })))?.outcome).toMatchObject({ status: 'requires_action', providerRef: 'pi_3' });
  });

  it('follows the event type, not the snapshot\'s status; other types and missing metadata settle nothing', () => {
    expect(chargeEventOf(event('payment_intent.succeeded', paymentIntent('requires_payment_method', 'pi_4', { metadata })))?.outcome.status).toBe('succeeded');
    for (const type of ['payment_intent.created', 'payment_intent.processing', 'charge.succeeded']) expect(chargeEventOf(event(type, paymentIntent('processing', 'pi_5', { metadata })))).toBeNull();
    expect(chargeEventOf(event('payment_intent.succeeded', paymentIntent('succeeded', 'pi_6')))).toMatchObject({ paymentId: null, accountId: null });
  });

  it('lookupCharge reads a PaymentIntent that failed with authentication_required as requires_action, as charge() does', async () => {
    const pi = paymentIntent('requires_payment_method', 'pi_auth', { last_payment_error: { code: 'authentication_required', message: 'authenticate' } });
    expect((await withAnswers([searchAnswer(pi)], () => stripeAt().lookupCharge('p1', false))).result).toEqual({ status: 'requires_action', providerRef: 'pi_auth', message: 'authenticate' });
  });
});

describe('PaymentSimulator', () => {
  it('charges once per key: a replay answers the first outcome without charging again', async () => {
    const sim = new PaymentSimulator();
    const first = await sim.charge(chargeRequest({ idempotencyKey: 'k1', paymentMethodRef: 'pm_a' }));
    expect(first).toMatchObject({ status: 'succeeded' });
    expect(await sim.charge(chargeRequest({ idempotencyKey: 'k1', paymentMethodRef: 'pm_a' }))).toEqual(first);
    expect(sim.chargeCount('pm_a')).toBe(1);
    await expect(sim.charge(chargeRequest({ idempotencyKey: 'k1', paymentMethodRef: 'pm_a', amountUsd: '1' }))).rejects.toThrow(/other parameters/);
  });

  it('chooses outcomes by reference prefix', async () => {
    const sim = new PaymentSimulator();
    expect(await sim.charge(chargeRequest({ idempotencyKey: 'd', paymentMethodRef: 'pm_decline_x' }))).toMatchObject({ status: 'declined', code: 'card_declined' });
    expect(await sim.charge(chargeRequest({ idempotencyKey: 'r', paymentMethodRef: 'pm_requires_action_x' }))).toMatchObject({ status: 'requires_action' });
    await expect(sim.charge(chargeRequest({ idempotencyKey: 't', paymentMethodRef: 'pm_timeout_x' }))).rejects.toBeInstanceOf(PaymentTimeoutError);
    expect(sim.chargeCount()).toBe(0);
  });

  it('follows a script: a timeout charges nothing, a timeout after the charge replays as succeeded', async () => {
    const sim = new PaymentSimulator();
    sim.script('pm_s', ['timeout', 'timeout_after_charge', 'decline']);
    await expect(sim.charge(chargeRequest({ idempotencyKey: 'a', paymentMethodRef: 'pm_s' }))).rejects.toBeInstanceOf(PaymentTimeoutError);
    expect(sim.chargeCount('pm_s')).toBe(0);
    await expect(sim.charge(chargeRequest({ idempotencyKey: 'a', paymentMethodRef: 'pm_s' }))).rejects.toBeInstanceOf(PaymentTimeoutError);
    expect(sim.chargeCount('pm_s')).toBe(1);
    expect(await sim.charge(chargeRequest({ idempotencyKey: 'a', paymentMethodRef: 'pm_s' }))).toMatchObject({ status: 'succeeded' });
    expect(await sim.charge(chargeRequest({ idempotencyKey: 'b', paymentMethodRef: 'pm_s' }))).toMatchObject({ status: 'declined' });
    expect(await sim.charge(chargeRequest({ idempotencyKey: 'c', paymentMethodRef: 'pm_s' }))).toMatchObject({ status: 'succeeded' });
    expect(sim.chargeCount('pm_s')).toBe(2);
  });

  it('forgets keys when pruned (a resend then charges again, like Stripe after 24 hours), while lookupCharge still finds the charge', async () => {
    const sim = new PaymentSimulator();
    const req = chargeRequest({ idempotencyKey: 'pay-1', paymentMethodRef: 'pm_p', metadata: { paymentId: 'pay-1' } });
    const first = await sim.charge(req);
    expect(await sim.lookupCharge('pay-1')).toEqual(first);
    expect(await sim.lookupCharge('pay-unknown')).toBeNull();
    sim.pruneIdempotencyKeys();
    expect(await sim.lookupCharge('pay-1')).toEqual(first);
    await sim.charge(req);
    expect(sim.chargeCount('pm_p')).toBe(2);
  });
});

describe('usdToCents and createPaymentProvider', () => {
  it('converts exactly and refuses sub-cent, negative and oversized amounts', () => {
    expect(usdToCents('19.99')).toBe(1999n);
    expect(usdToCents('0.07')).toBe(7n);
    expect(usdToCents('999999.99')).toBe(99_999_999n);
    for (const bad of ['0.001', '-1', '1000000', '1e3', 'abc']) expect(() => usdToCents(bad)).toThrow();
  });

  it('builds the simulator by default and Stripe only with a secret key', () => {
    expect(createPaymentProvider({ PAYMENT_PROVIDER: 'simulator', STRIPE_SECRET_KEY: undefined, STRIPE_WEBHOOK_SECRET: undefined }).name).toBe('simulator');
    expect(createPaymentProvider({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_x', STRIPE_WEBHOOK_SECRET: undefined }).name).toBe('stripe');
    expect(() => createPaymentProvider({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: undefined, STRIPE_WEBHOOK_SECRET: undefined })).toThrow(/STRIPE_SECRET_KEY/);
  });

  it('never gives test-mode accounts a live key: the simulator for both, a test key for both, or live Stripe routed with the test key or the simulator', () => {
    const simulator = createPaymentProvider({ PAYMENT_PROVIDER: 'simulator', STRIPE_SECRET_KEY: 'sk_live_x' });
    expect(simulator).toBeInstanceOf(PaymentSimulator);
    expect(createPaymentProvider({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_x' })).toBeInstanceOf(StripeProvider);
    const liveOnly = createPaymentProvider({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_live_x' });
    expect(liveOnly).toBeInstanceOf(ModeRoutingProvider);
    expect((liveOnly as ModeRoutingProvider).providerFor(false)).toBeInstanceOf(StripeProvider);
    expect((liveOnly as ModeRoutingProvider).providerFor(true)).toBeInstanceOf(PaymentSimulator);
    expect([providerNameFor(liveOnly, false), providerNameFor(liveOnly, true)]).toEqual(['stripe', 'simulator']);
    const both = createPaymentProvider({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'rk_live_x', STRIPE_TEST_SECRET_KEY: 'sk_test_y' });
    expect((both as ModeRoutingProvider).providerFor(true)).toBeInstanceOf(StripeProvider);
    expect([providerNameFor(both, false), providerNameFor(both, true)]).toEqual(['stripe', 'stripe']);
  });
});

describe('ModeRoutingProvider and the live-key guard', () => {
  it('sends charges and lookups to the provider of the account\'s mode', async () => {
    const live = new PaymentSimulator();
    const test = new PaymentSimulator();
    const routed = new ModeRoutingProvider(live, test);
    await routed.charge(chargeRequest({ idempotencyKey: 't1', paymentMethodRef: 'pm_t', testMode: true, metadata: { paymentId: 'pay-t' } }));
    await routed.charge(chargeRequest({ idempotencyKey: 'l1', paymentMethodRef: 'pm_l', testMode: false, metadata: { paymentId: 'pay-l' } }));
    expect([test.chargeCount(), test.chargeCount('pm_t'), live.chargeCount(), live.chargeCount('pm_l')]).toEqual([1, 1, 1, 1]);
    expect(await routed.lookupCharge('pay-t', true)).toMatchObject({ status: 'succeeded' });
    expect(await routed.lookupCharge('pay-t', false)).toBeNull();
    expect(await routed.lookupCharge('pay-l', false)).toMatchObject({ status: 'succeeded' });
    expect(await routed.lookupCharge('pay-l', true)).toBeNull();
  });

  it('a StripeProvider with a live key refuses a test-mode account\'s charge and lookup without sending anything; a test key serves both modes', async () => {
    const liveKey = new StripeProvider({ ...fake.connection, secretKey: 'sk_live_x' });
    const { requests } = await withAnswers([], async () => {
      await expect(liveKey.charge(chargeRequest({ testMode: true }))).rejects.toThrow(/live key/);
      await expect(liveKey.lookupCharge('p1', true)).rejects.toThrow(/live key/);
    });
    expect(requests).toEqual([]);
    const testKey = await withAnswers([intent('succeeded')], () => stripeAt().charge(chargeRequest({ testMode: true })));
    expect(testKey.result).toMatchObject({ status: 'succeeded' });
    expect(testKey.requests.map((r) => r.headers.authorization)).toEqual(['Bearer sk_test_creditpool']);
  });
});
