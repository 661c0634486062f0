/**
 * The refunds and disputes the payment provider reports (src/services/payment-reversals.ts,
 * applied through the Stripe webhook endpoint on a real server, PAYMENT_PROVIDER=stripe against the
 * local fake of Stripe's API) are in the account's audit trail as an operator reads it
 * (`auditEvents(accountId)`, README "Audit trail"): the void of a dispute or a full refund
 * (`grant.voided`), the pause of auto top-up (`auto_top_up.updated`) and the give-back of a won
 * dispute (`grant.created`), each by the actor `SYSTEM` named `stripe-webhook` with the webhook
 * request's id, and a reason that names the payment and the refund or dispute.
 */
import { describe, expect, it } from 'vitest';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, ok, uniq } from '../api/helpers.js';
import { SET_AUTO_TOP_UP, attachMethod, createPack } from './billing-helpers.js';
import { PURCHASE, boughtPack, newDu, newPi, post, useStripeServers } from './reversal-helpers.js';
import { API_ERROR_ANSWER, paymentIntent, stripeEvent } from './fake-stripe.js';

const AUDIT = `query($accountId: ID) { auditEvents(accountId: $accountId, first: 50) {
  edges { node { actorKind actorKeyId actorName action subjectType subjectId requestId details } }
} }`;

const servers = useStripeServers();

/** An account with auto top-up on that bought a pack of 40 credits for $4 (reversal-helpers boughtPack), charged by Stripe as PaymentIntent `pi`. */
async function boughtPackWithAutoTopUp(srv: TestServer) {
  const bought = await boughtPack(srv, servers.fake);
  ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId: bought.accountId, enabled: true, thresholdCredits: '5', packId: bought.pack.id } }));
  return bought;
}

/** Posts a signed Stripe event of `type` carrying `object`; returns its `result` (reversal-helpers post). */
const postEvent = (srv: TestServer, type: string, object: Record<string, unknown>) => post(srv, JSON.stringify(stripeEvent(type, object)));

const dispute = (pi: string, id: string, status: string) => ({ id, object: 'dispute', charge: `ch_${pi.slice(3)}`, payment_intent: pi, amount: 400, currency: 'usd', livemode: false, status });

/** The account's audit rows as an operator reads them (admin key), oldest first. */
async function trail(srv: TestServer, accountId: string) {
  const edges = ok(await srv.gql(AUDIT, { accountId })).auditEvents.edges as Array<{ node: Record<string, any> }>;
  return edges.map((e) => e.node).reverse();
}

/** What every row the webhook wrote shares: the Stripe webhook as the actor, with its request id. */
const byStripeWebhook = { actorKind: 'SYSTEM', actorKeyId: null, actorName: 'stripe-webhook', requestId: expect.stringMatching(/\S/) };

describe('the audit trail of refunds and disputes', () => {
  it('a dispute (void and pause) and its win (give-back) are there, by the Stripe webhook, naming the payment and the dispute', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, grantId } = await boughtPackWithAutoTopUp(srv);
    const du = newDu();
    const before = (await trail(srv, accountId)).length;
    expect(await postEvent(srv, 'charge.dispute.created', dispute(pi, du, 'needs_response'))).toBe('reversed');
    expect(await postEvent(srv, 'charge.dispute.closed', dispute(pi, du, 'won'))).toBe('restored');
    const { rows } = await srv.services.pool.query('SELECT dispute_won_grant_id FROM payments WHERE id = $1', [paymentId]);
    const webhookRows = (await trail(srv, accountId)).slice(before);
    expect(webhookRows).toEqual([
      {
        ...byStripeWebhook,
        action: 'auto_top_up.updated',
        subjectType: 'auto_top_up',
        subjectId: dbId(accountId),
        details: { enabled: false, reason: expect.stringMatching(new RegExp(`dispute.*${paymentId}`)) },
      },
      {
        ...byStripeWebhook,
        action: 'grant.voided',
        subjectType: 'grant',
        subjectId: grantId,
        details: { voidedAmount: '40', reason: expect.stringMatching(new RegExp(`payment ${paymentId} disputed by the card holder \\(dispute ${du}, charge ${pi}\\)`)) },
      },
      {
        ...byStripeWebhook,
        action: 'grant.created',
        subjectType: 'grant',
        subjectId: rows[0].dispute_won_grant_id,
        details: expect.objectContaining({ amount: '40', type: 'PAID', source: 'PURCHASE', reference: paymentId, reason: expect.stringMatching(new RegExp(`dispute ${du} of payment ${paymentId} won`)) }),
      },
    ]);
    // One webhook request per event: the void and the pause share the dispute's request.
    expect(webhookRows[0]!.requestId).toBe(webhookRows[1]!.requestId);
    expect(webhookRows[2]!.requestId).not.toBe(webhookRows[1]!.requestId);
  });

  it('a partial refund (void of the pack, grant of its rest) and then the full refund (void of that rest, pause) are there, by the Stripe webhook, naming the payment and the refund', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, grantId } = await boughtPackWithAutoTopUp(srv);
    const charge = (refunded: number) => ({ id: `ch_${pi.slice(3)}`, object: 'charge', payment_intent: pi, amount: 400, amount_refunded: refunded, currency: 'usd', livemode: false, metadata: {} });
    const before = (await trail(srv, accountId)).length;
    expect(await postEvent(srv, 'charge.refunded', charge(100))).toBe('reversed'); // a quarter: 10 of the 40 credits
    const { rows } = await srv.services.pool.query('SELECT live_grant_id FROM payments WHERE id = $1', [paymentId]);
    const restGrantId = rows[0].live_grant_id as string;
    expect(restGrantId).not.toBe(grantId);
    const afterPartial = await trail(srv, accountId);
    expect(afterPartial.slice(before)).toEqual([
      { ...byStripeWebhook, action: 'grant.voided', subjectType: 'grant', subjectId: grantId, details: expect.objectContaining({ voidedAmount: '40', reason: expect.stringContaining(paymentId) }) },
      { ...byStripeWebhook, action: 'grant.created', subjectType: 'grant', subjectId: restGrantId, details: expect.objectContaining({ amount: '30', type: 'PAID', source: 'PURCHASE', reference: paymentId }) },
    ]);
    expect(await postEvent(srv, 'charge.refunded', charge(400))).toBe('reversed');
    expect((await trail(srv, accountId)).slice(afterPartial.length)).toEqual([
      { ...byStripeWebhook, action: 'auto_top_up.updated', subjectType: 'auto_top_up', subjectId: dbId(accountId), details: { enabled: false, reason: `refund: payment ${paymentId} was refunded in full` } },
      {
        ...byStripeWebhook,
        action: 'grant.voided',
        subjectType: 'grant',
        subjectId: restGrantId,
        details: { voidedAmount: '30', reason: expect.stringMatching(new RegExp(`payment ${paymentId} refunded in full by the payment provider \\(charge ${pi}, event evt_`)) },
      },
    ]);
  });
  it('a full refund kept before its payment was settled is applied by the settlement, and audited as whoever settled it (here the Stripe webhook\'s payment_intent.succeeded), not as the workers', async () => {
    const { srv } = servers.main;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const accountId = await apiAccount(srv);
    await attachMethod(srv, accountId, 'pm_card_visa');
    servers.fake.planned.push(API_ERROR_ANSWER);
    expectError(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') }), 'UNAVAILABLE');
    const { rows } = await srv.services.pool.query('SELECT id FROM payments WHERE account_id = $1', [dbId(accountId)]);
    const paymentId = rows[0].id as string;
    const pi = newPi();
    expect(await postEvent(srv, 'charge.refunded', { id: `ch_${pi.slice(3)}`, object: 'charge', payment_intent: pi, amount: 400, amount_refunded: 400, currency: 'usd', livemode: false, metadata: {} })).toBe('kept');
    const before = (await trail(srv, accountId)).length;
    const settled = paymentIntent('succeeded', pi, { amount: 400, metadata: { paymentId, packId: pack.id, purpose: 'PURCHASE', accountId: dbId(accountId) } });
    expect(await postEvent(srv, 'payment_intent.succeeded', settled)).toBe('settled');
    const written = (await trail(srv, accountId)).slice(before);
    expect(written.find((r) => r.action === 'grant.voided')).toMatchObject({ ...byStripeWebhook, details: expect.objectContaining({ voidedAmount: '40' }) });
  });
});
