/**
 * What the API server writes to its log (operators ship it to third parties) and answers to its
 * clients on the paths where a secret or a customer's details are at hand: refused credentials,
 * a refused Stripe webhook, a refused metrics scrape, and an unexpected error of the payment
 * provider that carries the card holder's details. The real server (buildServer) with the
 * process's logger (src/logging.ts) writing to memory at level debug, real PostgreSQL and Redis,
 * the official Stripe SDK against a local fake of Stripe's API (test/billing/fake-stripe.ts).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { startFakeStripe, postStripeEvent, stripeEvent, paymentIntent, type FakeStripe } from '../billing/fake-stripe.js';
import { attachMethod, createPack } from '../billing/billing-helpers.js';
import { apiAccount, expectError, uniq } from './helpers.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { parseEnv } from '../../src/config/env.js';
import { createPaymentProvider } from '../../src/payments/index.js';

const STRIPE_SECRET_KEY = 'sk_test_logsecrets_4b1d9e';
const STRIPE_WEBHOOK_SECRET = 'whsec_logsecrets_77aa01';
const METRICS_TOKEN = 'metrics-token-logsecrets-5c3e';
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id amount } }`;

let fake: FakeStripe;
let srv: TestServer;
const lines: string[] = [];

/** Everything logged since the test began. */
const logged = () => lines.join('');

beforeAll(async () => {
  fake = await startFakeStripe();
  const env = { PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, METRICS_TOKEN, OUTBOX_RELAY: 'false', LOG_LEVEL: 'debug' };
  srv = await startTestServer(env, { logDestination: { write: (line: string) => void lines.push(line) } });
  // The Stripe provider of this environment (its secret key), reaching the fake.
  srv.services.payments = createPaymentProvider(parseEnv({ ...env, NODE_ENV: 'test' }), fake.connection);
});

afterAll(async () => {
  await srv?.close();
  await fake?.close();
});

beforeEach(() => {
  lines.length = 0;
  fake.planned.length = 0;
});

/** The server's secrets, none of which may ever be logged. */
const SERVER_SECRETS = () => [srv.adminKey, srv.jwtSecret, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, METRICS_TOKEN];

describe('log lines and answers carry no secret', () => {
  it('refused credentials (garbage, a forged JWT, an unknown API key, Basic): neither the header nor a secret is logged or answered', async () => {
    const forged = await signUserToken('a-different-secret-0123456789abcdef0123', { sub: 'user-logsecrets', expiresInSeconds: 600 });
    const presented = [`garbage-token-${uniq()}`, forged, `cp_unknownkeylogsecrets${'x'.repeat(30)}`];
    for (const token of presented) {
      const res = await srv.gql('{ __typename }', {}, token);
      expectError(res, 'UNAUTHENTICATED');
      expect(JSON.stringify(res.body)).not.toContain(token);
    }
    const basic = `Basic ${Buffer.from('someone:basic-password-logsecrets').toString('base64')}`;
    const res = await fetch(srv.url, { method: 'POST', headers: { 'content-type': 'application/json', authorization: basic }, body: '{"query":"{ __typename }"}' });
    expect(res.status).toBe(401);
    expect(await res.text()).not.toContain(basic);
    for (const s of [...presented, basic, 'basic-password-logsecrets', ...SERVER_SECRETS()]) expect(logged()).not.toContain(s);
  });

  it('a Stripe webhook with a bad signature: 400 INVALID_SIGNATURE, logged without the Stripe-Signature header or the signing secret', async () => {
    const payload = JSON.stringify(stripeEvent('payment_intent.succeeded', paymentIntent('succeeded')));
    const forgedSignature = `t=${Math.floor(Date.now() / 1000)},v1=${'ab'.repeat(32)}`;
    const refused = await postStripeEvent(srv.url.replace(/\/graphql$/, '/webhooks/stripe'), payload, { signature: forgedSignature });
    expect(refused.status).toBe(400);
    expect(refused.body.errors[0].extensions).toMatchObject({ code: 'BAD_USER_INPUT', reason: 'INVALID_SIGNATURE' });
    expect(logged()).toContain('stripe webhook refused');
    expect(logged()).not.toContain('ab'.repeat(32));
    for (const s of SERVER_SECRETS()) {
      expect(logged()).not.toContain(s);
      expect(JSON.stringify(refused.body)).not.toContain(s);
    }
  });

  it('a metrics scrape with a wrong token: 401, the token presented is neither logged nor answered', async () => {
    const wrong = `wrong-metrics-token-${uniq()}`;
    const res = await fetch(srv.url.replace(/\/graphql$/, '/metrics'), { headers: { authorization: `Bearer ${wrong}` } });
    expect(res.status).toBe(401);
    const body = await res.text();
    for (const s of [wrong, METRICS_TOKEN]) {
      expect(body).not.toContain(s);
      expect(logged()).not.toContain(s);
    }
  });

  it("a payment provider's unexpected error: the client gets INTERNAL_SERVER_ERROR with a request id only; the log keeps the error but the card holder's details only as Stripe's ids", async () => {
    const accountId = await apiAccount(srv);
    const reference = `pm_logsecrets_${uniq().slice(-8)}`;
    await attachMethod(srv, accountId, reference);
    const pack = await createPack(srv, { credits: '100', priceUsd: '5.00' });
    const holder = { email: 'card.holder.logsecrets@example.com', name: 'Card Holder Logsecrets', address: { line1: '1 Logsecrets Street' } };
    fake.planned.push({
      status: 400,
      body: {
        error: {
          type: 'invalid_request_error',
          code: 'payment_intent_unexpected_state',
          message: 'This PaymentIntent could not be confirmed.',
          payment_method: { id: 'pm_logsecrets_obj', object: 'payment_method', type: 'card', billing_details: holder, card: { brand: 'visa', last4: '4242' } },
          payment_intent: { id: 'pi_logsecrets_obj', object: 'payment_intent', status: 'requires_payment_method', last_payment_error: { payment_method: { billing_details: holder } } },
        },
      },
    });
    const res = await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') });
    const error = expectError(res, 'INTERNAL_SERVER_ERROR');
    expect(error.extensions).toEqual({ code: 'INTERNAL_SERVER_ERROR', requestId: expect.any(String) });
    expect(error.message).toBe('Unexpected error.');

    const line = lines.map((l) => JSON.parse(l)).find((l) => l.msg === 'unexpected error while executing GraphQL');
    expect(line, logged()).toBeDefined();
    // Still useful: the request id, Stripe's error type, message and the objects' ids.
    expect(line.requestId).toBe((error.extensions as { requestId: string }).requestId);
    expect(line.err).toMatchObject({ type: 'StripeInvalidRequestError', message: 'This PaymentIntent could not be confirmed.', code: 'payment_intent_unexpected_state', payment_method: 'pm_logsecrets_obj', payment_intent: 'pi_logsecrets_obj' });
    for (const s of [holder.email, holder.name, holder.address.line1, ...SERVER_SECRETS()]) expect(logged()).not.toContain(s);
    // The request carried the secret key to Stripe; nothing of it came back into the log.
    expect(fake.recorded.at(-1)?.headers.authorization).toBe(`Bearer ${STRIPE_SECRET_KEY}`);
  });
});
