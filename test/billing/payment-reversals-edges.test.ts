/**
 * Edges of refunds and disputes of a payment (src/services/payment-reversals.ts) found by an
 * audit, through the Stripe webhook endpoint on a real server (PAYMENT_PROVIDER=stripe against
 * the local fake of Stripe's API, test/billing/fake-stripe.ts):
 * - a signed event whose object is missing or not an object is answered (200, nothing changed),
 *   not dropped with its connection (Stripe would deliver it again for 3 days, and the log
 *   called it an aborted request).
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { TestServer } from '../setup/test-server.js';
import { startServerWithOwnQueues, type QueuedServer } from './billing-helpers.js';
import { postStripeEvent, startFakeStripe, stripeEvent, type FakeStripe } from './fake-stripe.js';

const STRIPE_ENV = { PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_creditpool', STRIPE_WEBHOOK_SECRET: 'whsec_creditpool' };

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
