/**
 * Refunds and disputes of a SUCCEEDED payment take back its unused credit
 * (src/services/payment-reversals.ts), through the Stripe webhook endpoint on a real server
 * (PAYMENT_PROVIDER=stripe against the local fake of Stripe's API, test/billing/fake-stripe.ts;
 * events signed with the SDK's test header helper), and through the simulator's refund/dispute:
 * - `charge.refunded` in full voids what remains of the payment's grant (VOID entry, grant voided,
 *   audit `grant.voided`), once; what was spent before stays spent (no debt) and is logged;
 * - a partial refund takes back the pack's refunded share (floor(credits x refunded / amount),
 *   less what earlier partial refunds took; at most what remains): the grant is voided and its
 *   rest granted again as a new PAID grant; redelivered and older events change nothing; the
 *   period's credit and its alerts follow; auto top-up is not paused;
 * - `charge.dispute.created` voids the same way and pauses auto top-up; a refund after it, or
 *   at the same moment, takes nothing more; auto top-up payments are handled like purchases;
 * - a charge whose amount, currency or mode is not the payment's, and a stale or unverified event
 *   change nothing;
 * - a refund or dispute that comes before its payment is settled (answer lost: PENDING; FAILED
 *   no_charge_found) is kept, and the settlement (the late payment_intent.succeeded, the resume
 *   job, the auto top-up job; also racing the refund) grants and voids (or takes a partial
 *   refund's share) in one transaction; a kept
 *   event of a PaymentIntent that never becomes a payment is pruned by sweep-due.
 */
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { processResumePayment } from '../../workers/processors/resume-payment.js';
import { processSweepDue } from '../../workers/processors/sweep-due.js';
import { EARLY_REVERSAL_RETENTION_MS, applyReversalEvent, pruneEarlyReversals } from '../../src/services/payment-reversals.js';
import type { ServiceContext } from '../../src/services/context.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectUnchanged, ok, readAccount, uniq } from '../api/helpers.js';
import { SET_AUTO_TOP_UP, attachMethod, billingWorkerDeps, createPack, topUps } from './billing-helpers.js';
import { intentAnswer, postStripeEvent, stripeEvent } from './fake-stripe.js';
import { PURCHASE, auditCount, autoTopUpCharged, autoTopUpWithLostAnswer, boughtPack, boughtWithSimulator, disputeEvent, hookUrl, lostPurchase, newPi, paymentState, post, refundEvent, spend, useStripeServers } from './reversal-helpers.js';

const SETTINGS = `query($id: ID!) { account(id: $id) { autoTopUp { enabled pausedAt } } }`;

const servers = useStripeServers({ simulator: true });
/** What the services logged (warn and error) since the test began. */
let logged: { level: 'warn' | 'error'; obj: Record<string, unknown>; msg: string }[] = [];

/** A logger that keeps what it is given (ServiceContext.log). */
function capturingLog(): NonNullable<ServiceContext['log']> {
  const keep = (level: 'warn' | 'error') => (obj: unknown, msg?: string) => void logged.push({ level, obj: obj as Record<string, unknown>, msg: msg ?? '' });
  return { warn: keep('warn'), error: keep('error') } as NonNullable<ServiceContext['log']>;
}

beforeAll(() => {
  servers.main.srv.services.log = capturingLog();
  servers.sim.srv.services.log = capturingLog();
});

beforeEach(() => {
  logged = [];
});

/** The account's grants in the order made: amount, what a void took back, key, source, type, expiry. */
async function paymentGrants(srv: TestServer, accountId: string) {
  const { rows } = await srv.services.pool.query(
    `SELECT g.amount_micro_credits::text AS amount, g.voided_micro_credits::text AS voided, g.idempotency_key AS key, g.source::text, g.type::text, b.expires_at
       FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.account_id = $1 ORDER BY g.seq`,
    [dbId(accountId)],
  );
  return rows;
}

/** The account's VOID entries (amounts in micro-credits, as text). */
async function voidEntries(srv: TestServer, accountId: string): Promise<string[]> {
  const { rows } = await srv.services.pool.query(`SELECT amount_micro_credits::text AS a FROM ledger_entries WHERE account_id = $1 AND type = 'VOID' ORDER BY seq`, [dbId(accountId)]);
  return rows.map((r) => r.a as string);
}

describe('charge.refunded', () => {
  it('a full refund voids the unused credit once; redelivered, it changes nothing', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    const payload = refundEvent(pi, 400);
    expect(await post(srv, payload)).toBe('reversed');
    expect(await paymentState(srv, paymentId)).toMatchObject({
      status: 'SUCCEEDED',
      refunded_cents: '400',
      refunded: true,
      disputed: false,
      reversed: true,
      grant_voided: true,
      void_reason: expect.stringContaining('refunded in full'),
      voided_micro_credits: '40000000',
    });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '0', total: '0', debt: '0' });
    expect(await voidEntries(srv, accountId)).toEqual(['-40000000']);
    expect(await auditCount(srv, accountId, 'grant.voided')).toBe(1);
    expect(logged.filter((l) => l.obj.paymentId === paymentId)).toEqual([]); // nothing was spent: nothing to warn about
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, payload)).toBe('unchanged');
      const concurrent = await Promise.all(Array.from({ length: 3 }, () => postStripeEvent(hookUrl(srv), refundEvent(pi, 400))));
      expect(concurrent.map((r) => [r.status, r.body.result])).toEqual(Array.from({ length: 3 }, () => [200, 'unchanged']));
    });
    expect(await voidEntries(srv, accountId)).toEqual(['-40000000']);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('after part was spent: only the rest is voided, no debt, and the unrecovered part is logged', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    await spend(srv, accountId, '15');
    expect(await post(srv, refundEvent(pi, 400))).toBe('reversed');
    expect(await paymentState(srv, paymentId)).toMatchObject({ reversed: true, voided_micro_credits: '25000000' });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ total: '0', debt: '0' });
    expect(await voidEntries(srv, accountId)).toEqual(['-25000000']);
    expect(logged).toContainEqual({
      level: 'warn',
      obj: expect.objectContaining({ paymentId, accountId: dbId(accountId), unrecoveredMicroCredits: '15000000', voidedMicroCredits: '25000000' }),
      msg: expect.stringContaining('already spent'),
    });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a partial refund takes back the refunded share (void, then the rest granted again); a growing one the difference; older or redelivered ones nothing', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, pack } = await boughtPack(srv, servers.fake);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '5', packId: pack.id } }));
    // Stripe stamps each event with when it was made (`created`); a late delivery keeps that stamp.
    const refund100 = refundEvent(pi, 100);
    expect(await post(srv, refund100)).toBe('reversed'); // 25 % of 40
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '30', total: '30', debt: '0' });
    expect(await paymentGrants(srv, accountId)).toEqual([
      { amount: '40000000', voided: '40000000', key: `payment:${paymentId}`, source: 'PURCHASE', type: 'PAID', expires_at: null },
      { amount: '30000000', voided: null, key: `payment:${paymentId}:refund:100`, source: 'PURCHASE', type: 'PAID', expires_at: null },
    ]);
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '100', reversed: false, refund_taken: '10000000' });
    expect(await post(srv, refundEvent(pi, 250))).toBe('reversed'); // 25 of 40 in all: 15 more
    expect((await readAccount(srv, accountId)).balance.paid).toBe('15');
    await expectUnchanged(srv, [accountId], async () => {
      // Older, delivered late. Made again now it would be NEWER than the 250 one with less refunded (a
      // refund failure not received yet: 503 retry_later, refund-failures.test.ts), which is what this
      // line met whenever a second boundary fell between the two posts.
      expect(await post(srv, refund100)).toBe('unchanged');
      expect(await post(srv, refundEvent(pi, 250))).toBe('unchanged'); // redelivered
      const concurrent = await Promise.all(Array.from({ length: 3 }, () => postStripeEvent(hookUrl(srv), refundEvent(pi, 250))));
      expect(concurrent.map((r) => [r.status, r.body.result])).toEqual(Array.from({ length: 3 }, () => [200, 'unchanged']));
    });
    expect(await post(srv, refundEvent(pi, 251))).toBe('reversed'); // floor(40 x 251 / 400) = 25.1: 0.1 more
    expect((await readAccount(srv, accountId)).balance.paid).toBe('14.9');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '251', reversed: false, refund_taken: '25100000' });
    expect(await voidEntries(srv, accountId)).toEqual(['-40000000', '-30000000', '-15000000']);
    expect(await auditCount(srv, accountId, 'grant.voided')).toBe(3);
    // A partial refund does not pause auto top-up.
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: true, pausedAt: null });
    expect(logged.filter((l) => l.obj.paymentId === paymentId)).toEqual([]); // nothing spent: nothing unrecovered
    const balance = await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    expect(balance).toMatchObject({ periodMicroCredits: 14_900_000n, percentRemaining: 100 });
  });

  it('a partial refund after part was spent takes at most what remains (no debt, the rest logged); a later one finds nothing left', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    await spend(srv, accountId, '25');
    expect(await post(srv, refundEvent(pi, 200))).toBe('reversed'); // share 20, 15 left
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ total: '0', debt: '0' });
    expect(await paymentGrants(srv, accountId)).toEqual([expect.objectContaining({ amount: '40000000', voided: '15000000' })]); // nothing to grant again
    expect(logged).toContainEqual({
      level: 'warn',
      obj: expect.objectContaining({ paymentId, refundedCents: '200', refundedShareMicroCredits: '20000000', voidedMicroCredits: '15000000', unrecoveredMicroCredits: '5000000' }),
      msg: expect.stringContaining('partial refund'),
    });
    await expectUnchanged(srv, [accountId], async () => expect(await post(srv, refundEvent(pi, 300))).toBe('recorded'));
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '300', refund_taken: '15000000' });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a partial then a full refund: the full one takes the rest and pauses auto top-up', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, pack } = await boughtPack(srv, servers.fake);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '5', packId: pack.id } }));
    expect(await post(srv, refundEvent(pi, 100))).toBe('reversed');
    await spend(srv, accountId, '5');
    expect(await post(srv, refundEvent(pi, 400))).toBe('reversed');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '400', reversed: true, refund_taken: '10000000' });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ total: '0', debt: '0' });
    expect(await paymentGrants(srv, accountId)).toEqual([
      expect.objectContaining({ amount: '40000000', voided: '40000000' }),
      expect.objectContaining({ amount: '30000000', voided: '25000000', key: `payment:${paymentId}:refund:100` }),
    ]);
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect(await topUps(srv, accountId)).toEqual([]);
    // 40 bought, 10 taken by the partial refund, 25 by the full one: the 5 spent are not recovered.
    expect(logged).toContainEqual({ level: 'warn', obj: expect.objectContaining({ paymentId, unrecoveredMicroCredits: '5000000', voidedMicroCredits: '25000000' }), msg: expect.stringContaining('already spent') });
    await expectUnchanged(srv, [accountId], async () => expect(await post(srv, refundEvent(pi, 400))).toBe('unchanged'));
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a partial refund then a dispute: the dispute takes the rest', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    expect(await post(srv, refundEvent(pi, 100))).toBe('reversed');
    expect(await post(srv, disputeEvent(pi, { amount: 300 }))).toBe('reversed');
    expect(await paymentState(srv, paymentId)).toMatchObject({ disputed: true, reversed: true, reversed_micro_credits: '30000000' });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ total: '0', debt: '0' });
    expect(logged.filter((l) => l.obj.paymentId === paymentId && l.obj.unrecoveredMicroCredits !== undefined)).toEqual([]); // nothing spent
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it("the void and the new grant keep the period's credit right: no false 25 % / 15 % alerts", async () => {
    const { srv } = servers.main;
    const { accountId, pi } = await boughtPack(srv, servers.fake);
    await spend(srv, accountId, '8'); // 32 of 40 left: 80 %
    expect(await post(srv, refundEvent(pi, 200))).toBe('reversed'); // half the money back: 20 of the credit, 12 left of 20
    const balance = await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    expect(balance).toMatchObject({ availableMicroCredits: 12_000_000n, periodMicroCredits: 20_000_000n, percentRemaining: 60 });
    const { rows } = await srv.services.pool.query('SELECT threshold FROM credit_alerts WHERE account_id = $1', [dbId(accountId)]);
    expect(rows).toEqual([]);
  });

  it('an unknown PaymentIntent, or a charge whose amount or currency is not the payment\'s: nothing changed; another account is untouched', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    const other = await boughtPack(srv, servers.fake);
    await expectUnchanged(srv, [accountId, other.accountId], async () => {
      expect(await post(srv, refundEvent(newPi(), 400))).toBe('kept'); // see below
      expect(await post(srv, refundEvent(pi, 400, { payment_intent: null }))).toBe('unknown_payment');
      expect(await post(srv, refundEvent(pi, 999, {}, 999))).toBe('mismatch');
      expect(await post(srv, refundEvent(pi, 400, { currency: 'eur' }))).toBe('mismatch');
      expect(await post(srv, disputeEvent(pi, { amount: 401 }))).toBe('mismatch');
    });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', disputed: false, reversed: false });
    expect(logged.filter((l) => l.level === 'error' && l.obj.paymentId === paymentId)).toHaveLength(3);
    // The refund of one account's payment leaves the other's alone.
    await expectUnchanged(srv, [other.accountId], async () => expect(await post(srv, refundEvent(pi, 400))).toBe('reversed'));
    expect((await readAccount(srv, other.accountId)).balance.paid).toBe('40');
  });

  it('a charge of the other mode than the account\'s: mismatch (service); an event signed for the other mode: 400; a stale or unsigned one: 400; nothing changed', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    await expectUnchanged(srv, [accountId], async () => {
      const event = { eventId: 'evt_x', eventType: 'charge.refunded', kind: 'refund' as const, providerRef: pi, amountCents: 400n, refundedCents: 400n, disputeRef: null, currency: 'usd', livemode: true };
      expect((await applyReversalEvent(srv.services, event, () => false)).result).toBe('mismatch');
      const live = JSON.stringify({ ...JSON.parse(refundEvent(pi, 400)), livemode: true });
      expect(await postStripeEvent(hookUrl(srv), live)).toMatchObject({ status: 400, body: { errors: [{ extensions: { reason: 'LIVEMODE_MISMATCH' } }] } });
      const stale = await postStripeEvent(hookUrl(srv), refundEvent(pi, 400), { timestamp: Math.floor(Date.now() / 1000) - 3_600 });
      expect(stale).toMatchObject({ status: 400, body: { errors: [{ extensions: { reason: 'INVALID_SIGNATURE' } }] } });
      expect((await postStripeEvent(hookUrl(srv), refundEvent(pi, 400), { signature: null })).status).toBe(400);
      expect((await postStripeEvent(hookUrl(srv), disputeEvent(pi), { secret: 'whsec_another' })).status).toBe(400);
    });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', disputed: false, reversed: false, grant_voided: false });
  });
});

describe('charge.dispute.created', () => {
  it('voids the unused credit and pauses auto top-up; a refund or the dispute delivered again takes nothing more', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, pack } = await boughtPack(srv, servers.fake);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '5', packId: pack.id } }));
    await spend(srv, accountId, '10');
    const payload = disputeEvent(pi);
    expect(await post(srv, payload)).toBe('reversed');
    const state = await paymentState(srv, paymentId);
    expect(state).toMatchObject({ disputed: true, dispute_ref: expect.stringMatching(/^du_/), reversed: true, voided_micro_credits: '30000000', void_reason: expect.stringContaining('disputed') });
    const { account } = ok(await srv.gql(SETTINGS, { id: accountId }));
    expect(account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    // The void took the balance below the threshold, but the paused auto top-up started nothing.
    expect(await topUps(srv, accountId)).toEqual([]);
    expect(logged).toContainEqual({ level: 'warn', obj: expect.objectContaining({ paymentId, unrecoveredMicroCredits: '10000000' }), msg: expect.any(String) });
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, payload)).toBe('unchanged');
      expect(await post(srv, disputeEvent(pi))).toBe('unchanged'); // a second dispute of the same charge
    });
    // A refund after the dispute (out of order, or both) is recorded on the payment only.
    await expectUnchanged(srv, [accountId], async () => expect(await post(srv, refundEvent(pi, 400))).toBe('recorded'));
    expect(await voidEntries(srv, accountId)).toEqual(['-30000000']);
    expect(await auditCount(srv, accountId, 'grant.voided')).toBe(1);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a refund and a dispute of the same charge at the same moment: the credit is taken back once', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    const results = await Promise.all([post(srv, refundEvent(pi, 400)), post(srv, disputeEvent(pi)), post(srv, refundEvent(pi, 400))]);
    expect(results.filter((r) => r === 'reversed')).toHaveLength(1);
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '400', disputed: true, reversed: true, voided_micro_credits: '40000000' });
    expect(await voidEntries(srv, accountId)).toEqual(['-40000000']);
    expect(await auditCount(srv, accountId, 'grant.voided')).toBe(1);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('an auto top-up payment refunded in full, then disputed: voided once and auto top-up paused by the refund (no second top-up); the dispute records only', async () => {
    const { srv } = servers.main;
    const { accountId, pi } = await autoTopUpCharged(servers.main, servers.fake);
    expect((await readAccount(srv, accountId)).balance.paid).toBe('60');
    const paymentId = (await topUps(srv, accountId))[0]!.payment_id!;

    expect(await post(srv, refundEvent(pi, 200, {}, 200))).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    // The void took the balance under the threshold (50), but the full refund paused auto top-up
    // in the same transaction: the refunded card is not charged again, no second top-up started.
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect(await post(srv, JSON.stringify(stripeEvent('charge.dispute.created', { id: 'du_1', object: 'dispute', payment_intent: pi, amount: 200, currency: 'usd' })))).toBe('recorded');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '200', disputed: true, reversed: true, voided_micro_credits: '20000000' });
    const { account } = ok(await srv.gql(SETTINGS, { id: accountId }));
    expect(account.autoTopUp.enabled).toBe(false);
    expect(await voidEntries(srv, accountId)).toEqual(['-20000000']);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('the simulator\'s refund and dispute', () => {
  it('reach the same code as Stripe\'s events: a partial then a full refund, and a dispute', async () => {
    const { srv, simulator } = servers.sim;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const chargeLivemode = (testMode: boolean) => !testMode;
    const buy = () => boughtWithSimulator(srv, pack.id);
    const a = await buy();
    // $1 of $4 refunded: 10 of the 40 credits taken back; the full refund takes the other 30.
    expect(await applyReversalEvent(srv.services, simulator.refund(a.paymentId, 100n), chargeLivemode)).toMatchObject({ result: 'reversed', voidedMicroCredits: 10_000_000n });
    expect((await applyReversalEvent(srv.services, simulator.refund(a.paymentId), chargeLivemode))).toMatchObject({ result: 'reversed', voidedMicroCredits: 30_000_000n });
    expect(() => simulator.refund(a.paymentId)).toThrow(/cannot refund/);
    expect((await readAccount(srv, a.accountId)).balance.total).toBe('0');
    const b = await buy();
    const dispute = simulator.dispute(b.paymentId);
    expect((await applyReversalEvent(srv.services, dispute, chargeLivemode)).result).toBe('reversed');
    expect((await applyReversalEvent(srv.services, dispute, chargeLivemode)).result).toBe('unchanged');
    expect(await paymentState(srv, b.paymentId)).toMatchObject({ disputed: true, reversed: true, voided_micro_credits: '40000000' });
    await expectLedgerInvariant(srv.services.pool, dbId(a.accountId));
    await expectLedgerInvariant(srv.services.pool, dbId(b.accountId));
  });
});

describe('a refund or dispute that arrives before creditpool settled its payment', () => {
  /** A purchase ($4, 40 credits) whose Stripe answer was lost: PENDING, no provider_ref; `pi` is the PaymentIntent Stripe made, `succeeded` its late event. */
  async function lostStripePurchase(srv: TestServer) {
    const lost = await lostPurchase(srv, servers.fake);
    const pi = newPi();
    return { ...lost, pi, succeeded: lost.succeeded(pi) };
  }

  async function keptReversals(srv: TestServer, providerRef: string) {
    const { rows } = await srv.services.pool.query('SELECT kind, refunded_cents::text, dispute_ref FROM early_payment_reversals WHERE provider_ref = $1 ORDER BY kind', [providerRef]);
    return rows;
  }

  it('a full refund, then the late payment_intent.succeeded: the grant is voided in the same transaction, the payment shows the refund; redelivery changes nothing', async () => {
    const { srv } = servers.main;
    const { accountId, paymentId, pi, succeeded, purchase } = await lostStripePurchase(srv);
    const refund = refundEvent(pi, 400);
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, refund)).toBe('kept');
      expect(await post(srv, refund)).toBe('unchanged'); // redelivered while kept
    });
    expect(await keptReversals(srv, pi)).toEqual([{ kind: 'refund', refunded_cents: '400', dispute_ref: null }]);
    expect(await post(srv, succeeded)).toBe('settled');
    expect(await paymentState(srv, paymentId)).toMatchObject({
      status: 'SUCCEEDED',
      refunded_cents: '400',
      reversed: true,
      grant_voided: true,
      voided_micro_credits: '40000000',
      void_reason: expect.stringContaining('refunded in full'),
    });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '0', total: '0', debt: '0' });
    expect(await voidEntries(srv, accountId)).toEqual(['-40000000']);
    expect(await auditCount(srv, accountId, 'grant.voided')).toBe(1);
    expect(await keptReversals(srv, pi)).toEqual([]);
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, succeeded)).toBe('unchanged');
      expect(await post(srv, refund)).toBe('unchanged');
      ok(await purchase()); // the client's retry answers the (voided) grant, charges nothing
    });
    expect(await voidEntries(srv, accountId)).toEqual(['-40000000']);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a partial refund before the settlement: its share is taken back when the payment settles; a full one later takes the rest', async () => {
    const { srv } = servers.main;
    const { accountId, paymentId, pi, succeeded } = await lostStripePurchase(srv);
    expect(await post(srv, refundEvent(pi, 100))).toBe('kept');
    expect(await post(srv, refundEvent(pi, 250))).toBe('kept'); // grew
    expect(await post(srv, refundEvent(pi, 100))).toBe('unchanged'); // older
    expect(await post(srv, succeeded)).toBe('settled');
    expect(await paymentState(srv, paymentId)).toMatchObject({ status: 'SUCCEEDED', refunded_cents: '250', reversed: false, refund_taken: '25000000' });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '15', total: '15' });
    expect(await paymentGrants(srv, accountId)).toEqual([
      expect.objectContaining({ amount: '40000000', voided: '40000000' }),
      expect.objectContaining({ amount: '15000000', voided: null, key: `payment:${paymentId}:refund:250` }),
    ]);
    expect(await keptReversals(srv, pi)).toEqual([]);
    expect(logged).toContainEqual({ level: 'warn', obj: expect.objectContaining({ paymentId, result: 'reversed', voidedMicroCredits: '25000000' }), msg: expect.stringContaining('before its payment was settled') });
    const balance = await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    expect(balance).toMatchObject({ periodMicroCredits: 15_000_000n, percentRemaining: 100 });
    expect(await post(srv, refundEvent(pi, 400))).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.total).toBe('0');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a refund of a payment settled no_charge_found, then its late success: granted and voided at once', async () => {
    const { srv } = servers.main;
    const { accountId, paymentId, pi, succeeded } = await lostStripePurchase(srv);
    await srv.services.pool.query(`UPDATE payments SET status = 'FAILED', error = 'no_charge_found: no charge was found' WHERE id = $1`, [paymentId]);
    expect(await post(srv, refundEvent(pi, 400))).toBe('kept');
    expect(await post(srv, succeeded)).toBe('settled');
    expect(await paymentState(srv, paymentId)).toMatchObject({ status: 'SUCCEEDED', refunded_cents: '400', reversed: true, voided_micro_credits: '40000000' });
    expect((await readAccount(srv, accountId)).balance.total).toBe('0');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a dispute, then the resume job settles the payment (simulator): voided at once, auto top-up paused', async () => {
    const { srv, simulator } = servers.sim;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const accountId = await apiAccount(srv, { paid: '10' }); // above the threshold: setting auto top-up starts none
    const method = await attachMethod(srv, accountId);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '5', packId: pack.id } }));
    simulator.script(method, ['timeout_after_charge']);
    expectError(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') }), 'UNAVAILABLE');
    const { rows } = await srv.services.pool.query(`SELECT id FROM payments WHERE account_id = $1 AND status = 'PENDING'`, [dbId(accountId)]);
    const paymentId = rows[0].id as string;
    const dispute = simulator.dispute(paymentId);
    const chargeLivemode = (testMode: boolean) => !testMode;
    expect((await applyReversalEvent(srv.services, dispute, chargeLivemode)).result).toBe('kept');
    expect((await applyReversalEvent(srv.services, dispute, chargeLivemode)).result).toBe('unchanged');
    const deps = billingWorkerDeps(servers.sim);
    await processResumePayment(deps, { id: `resume-payment-${paymentId}`, name: 'resume-payment', data: { paymentId, accountId: dbId(accountId) }, attemptsMade: 0, attempts: 3 });
    expect(await paymentState(srv, paymentId)).toMatchObject({ status: 'SUCCEEDED', disputed: true, dispute_ref: dispute.disputeRef, reversed: true, voided_micro_credits: '40000000' });
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '10', total: '10' });
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect(await topUps(srv, accountId)).toEqual([]);
    expect((await applyReversalEvent(srv.services, dispute, chargeLivemode)).result).toBe('unchanged');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a refund for a PaymentIntent that is no creditpool payment: kept, nothing granted, pruned after the retention', async () => {
    const { srv } = servers.main;
    const pi = newPi();
    const received = Date.now();
    expect(await post(srv, refundEvent(pi, 400))).toBe('kept');
    expect(await post(srv, disputeEvent(pi))).toBe('kept');
    expect(await keptReversals(srv, pi)).toHaveLength(2);
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM payments WHERE provider_ref = $1', [pi]);
    expect(rows[0].n).toBe(0);
    await pruneEarlyReversals(srv.services.pool, new Date(received + EARLY_REVERSAL_RETENTION_MS - 60_000));
    expect(await keptReversals(srv, pi)).toHaveLength(2);
    await pruneEarlyReversals(srv.services.pool, new Date(received + EARLY_REVERSAL_RETENTION_MS + 60_000));
    expect(await keptReversals(srv, pi)).toEqual([]);
    // The sweep-due job prunes them: a kept refund first received past the retention is deleted.
    expect(await post(srv, refundEvent(pi, 400))).toBe('kept');
    await srv.services.pool.query(`UPDATE early_payment_reversals SET received_at = received_at - make_interval(secs => $2) WHERE provider_ref = $1`, [pi, EARLY_REVERSAL_RETENTION_MS / 1000 + 60]);
    const result = await processSweepDue(billingWorkerDeps(servers.main), { add: async () => {} });
    expect(result.prunedEarlyReversals).toBeGreaterThanOrEqual(1);
    expect(await keptReversals(srv, pi)).toEqual([]);
  });

  it('a refund and the success delivered at the same moment: the credit is taken back either way', async () => {
    const { srv } = servers.main;
    for (let i = 0; i < 20; i++) {
      const { accountId, paymentId, pi, succeeded } = await lostStripePurchase(srv);
      const refund = refundEvent(pi, 400);
      const results = await Promise.all(i % 2 === 0 ? [post(srv, refund), post(srv, succeeded)] : [post(srv, succeeded), post(srv, refund)]);
      expect(results).toContain('settled');
      expect(await paymentState(srv, paymentId)).toMatchObject({ status: 'SUCCEEDED', refunded_cents: '400', reversed: true, voided_micro_credits: '40000000' });
      expect((await readAccount(srv, accountId)).balance.total).toBe('0');
      expect(await voidEntries(srv, accountId)).toEqual(['-40000000']);
      expect(await keptReversals(srv, pi)).toEqual([]);
      await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    }
  });

  it('an auto top-up whose answer was lost, refunded, then settled by its job: granted and voided at once, auto top-up paused, no second top-up', async () => {
    const { srv } = servers.main;
    const { accountId, run } = await autoTopUpWithLostAnswer(servers.main, servers.fake);
    const pi = newPi();
    expect(await post(srv, refundEvent(pi, 200, {}, 200))).toBe('kept');
    servers.fake.planned.push(intentAnswer('succeeded', pi, { amount: 200 }));
    await run(1);
    const [settled] = await topUps(srv, accountId);
    expect(settled).toMatchObject({ status: 'SUCCEEDED' });
    expect(await paymentState(srv, settled!.payment_id!)).toMatchObject({ status: 'SUCCEEDED', refunded_cents: '200', reversed: true, voided_micro_credits: '20000000' });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, pausedAt: expect.any(String) });
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect(logged).toContainEqual({ level: 'warn', obj: expect.objectContaining({ paymentId: settled!.payment_id, result: 'reversed' }), msg: expect.stringContaining('before its payment was settled') });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});
