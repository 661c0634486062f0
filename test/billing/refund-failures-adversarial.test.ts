/**
 * Adversarial tests of failed and canceled refunds (src/services/refund-failures.ts, README
 * "Refunds and disputes of a payment"), on top of test/billing/refund-failures.test.ts:
 * - a property test over random sequences of partial refunds, refund failures, spending and
 *   redelivered events on one payment (simulator events, applied by applyReversalEvent), against a
 *   reference model of the documented rules, with rule-independent bounds: the credit the refunds
 *   hold is never negative, never more than floor(G × R / C) of what stays refunded (G while it is
 *   the whole charge), exactly that when nothing was spent, and the ledger invariant holds after
 *   every step;
 * - failures delivered out of order with newer refund events (simulator and the Stripe webhook);
 * - failures combined with disputes and won disputes, expired credit, the other mode, concurrent
 *   deliveries, and a refund kept before its payment was settled on a test-mode account.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { readBalance } from '../../src/services/read-balance.js';
import type { ChargeReversalEvent } from '../../src/payments/provider.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { dbId, expectUnchanged, ok, uniq } from '../api/helpers.js';
import { attachMethod, createPack, topUps } from './billing-helpers.js';
import { postStripeEvent, stripeEvent } from './fake-stripe.js';
import { PURCHASE, autoTopUpCharged, boughtPack, boughtWithSimulator, hookUrl, lostPurchase, newPi, post, refundEvent, spend, useStripeServers } from './reversal-helpers.js';

const servers = useStripeServers({ simulator: true });

/** Stripe times (Unix seconds) in the recent past, so the events' order is explicit. */
const T0 = Math.floor(Date.now() / 1000) - 3600;

/** `charge.refunded` of PaymentIntent `pi` ($4), `refundedCents` in all, made at `created` (Unix seconds). */
const refunded = (pi: string, refundedCents: number, created: number) => JSON.stringify({ ...JSON.parse(refundEvent(pi, refundedCents)), created });

/** `charge.refund.updated` (status failed) of Refund `re` of `pi`, `amount` cents, created at `refundCreated`, the event made at `created`. */
function failedEvent(pi: string, re: string, amount: number, refundCreated: number, created: number): string {
  const refund = { id: re, object: 'refund', amount, charge: `ch_${pi.slice(3)}`, payment_intent: pi, currency: 'usd', created: refundCreated, status: 'failed' };
  return JSON.stringify({ ...stripeEvent('charge.refund.updated', refund), created });
}

/** Live accounts' charges are live-mode, test-mode accounts' are not (the simulator's rule). */
const chargeLivemode = (testMode: boolean) => !testMode;

/** Applies a simulator event as the webhook would; returns its result. */
async function apply(event: ChargeReversalEvent) {
  return applyReversalEvent(servers.sim.srv.services, event, chargeLivemode);
}

/** Buys `pack` for a new account through the simulator; returns the account and its payment. */
function buy(pack: { id: string }) {
  return boughtWithSimulator(servers.sim.srv, pack.id);
}

/** The account's total balance in micro-credits. */
async function totalOf(accountId: string): Promise<bigint> {
  return (await readBalance(servers.sim.srv.services.pool, dbId(accountId), new Date())).totalMicroCredits;
}

async function refundedCentsOf(paymentId: string): Promise<bigint> {
  const { rows } = await servers.sim.srv.services.pool.query('SELECT refunded_cents FROM payments WHERE id = $1', [paymentId]);
  return BigInt(rows[0].refunded_cents as string);
}

type Op = { t: 'refund'; cents: number } | { t: 'fail'; pick: number } | { t: 'spend'; credits: number } | { t: 'redeliver'; pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ t: fc.constant('refund' as const), cents: fc.oneof(fc.integer({ min: 1, max: 120 }), fc.constant(300)) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('fail' as const), pick: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('spend' as const), credits: fc.integer({ min: 1, max: 37 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('redeliver' as const), pick: fc.nat(40) }) },
);

describe('random sequences of partial refunds, failures, spending and redeliveries on one payment', () => {
  /** The pack: G = 37 credits for C = 300 cents, so shares round. */
  const G = 37_000_000n;
  const C = 300n;

  async function run(ops: Op[], allowSpend: boolean) {
    const pack = await createPack(servers.sim.srv, { credits: '37', priceUsd: '3' });
    const { accountId, paymentId } = await buy(pack);
    // The reference model (README rules): R refunded, L the payment's unused credit, Tp what partial
    // refunds hold, V what a full refund's void took, spent in micro-credits.
    const m = { R: 0n, L: G, Tp: 0n, V: 0n, reversed: false, spent: 0n };
    const refunds: { ref: string; cents: bigint; failed: boolean }[] = [];
    const past: ChargeReversalEvent[] = [];
    for (const op of ops) {
      if (op.t === 'refund') {
        const cents = BigInt(Math.min(op.cents, Number(C - m.R)));
        if (cents <= 0n) continue;
        const event = servers.sim.simulator.refund(paymentId, cents);
        refunds.push({ ref: event.refundRef!, cents, failed: false });
        past.push(event);
        m.R += cents;
        let took: bigint;
        if (m.R < C) {
          const owed = G * m.R / C - m.Tp;
          took = owed > 0n ? (owed < m.L ? owed : m.L) : 0n;
          m.L -= took;
          m.Tp += took;
        } else {
          took = m.L;
          m.V = m.L;
          m.L = 0n;
          m.reversed = true;
        }
        const res = await apply(event);
        // A full refund that finds nothing left is `reversed` (a spent grant voided) or `recorded` (the grant was voided whole before).
        if (took > 0n) expect(res.result, `refund of ${cents}`).toBe('reversed');
        else expect(res.result, `refund of ${cents}`).toMatch(m.R >= C ? /^(reversed|recorded)$/ : /^recorded$/);
      } else if (op.t === 'fail') {
        const live = refunds.filter((r) => !r.failed);
        if (live.length === 0) continue;
        const refund = live[op.pick % live.length]!;
        const event = servers.sim.simulator.refundFailed(paymentId, refund.ref);
        refund.failed = true;
        past.push(event);
        const T = m.Tp + (m.reversed ? m.V : 0n);
        m.R -= refund.cents;
        const share = G * m.R / C;
        const K = share < T ? share : T;
        const give = T - K;
        m.L += give;
        m.Tp = K;
        m.V = 0n;
        m.reversed = false;
        const res = await apply(event);
        expect(res.result, `failure of ${refund.cents}`).toBe(give > 0n ? 'restored' : 'recorded');
        expect(res.restoredMicroCredits).toBe(give);
      } else if (op.t === 'spend') {
        if (!allowSpend) continue;
        const credits = BigInt(Math.min(op.credits, Number(m.L / 1_000_000n)));
        if (credits <= 0n) continue;
        await spend(servers.sim.srv, accountId, credits.toString());
        m.L -= credits * 1_000_000n;
        m.spent += credits * 1_000_000n;
      } else {
        if (past.length === 0) continue;
        const event = past[op.pick % past.length]!;
        expect((await apply(event)).result, `redelivered ${event.kind}`).toBe('unchanged');
      }
      // The model, and bounds that do not depend on it.
      const total = await totalOf(accountId);
      expect(total, `balance after ${JSON.stringify(op)}`).toBe(m.L);
      expect(await refundedCentsOf(paymentId)).toBe(m.R);
      const held = G - m.spent - total; // what the refunds hold of the payment's credit now
      const cap = m.R >= C ? G : G * m.R / C;
      expect(held >= 0n, 'the refunds never hold a negative amount').toBe(true);
      expect(held <= cap, `the refunds hold ${held}, at most the share ${cap} of ${m.R} refunded`).toBe(true);
      if (m.spent === 0n) expect(held).toBe(cap);
      await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
    }
  }

  it('without spending: the refunds hold exactly floor(G × R / C) of what stays refunded (all of it when R = C)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 10 }), (ops) => run(ops, false)),
      { numRuns: 25 },
    );
  }, 120_000);

  it('with spending: the model holds, the refunds never hold more than the share nor less than 0', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 12 }), (ops) => run(ops, true)),
      { numRuns: 25 },
    );
  }, 120_000);
});

describe('a refund failure delivered after a newer charge.refunded (Stripe delivers in any order)', () => {
  it('when the newer refund raised the refunded amount: its cumulative amount already leaves the failed refund out, so the failure gives nothing more back', async () => {
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await buy(pack);
    expect((await apply(servers.sim.simulator.refund(paymentId, 200n))).result).toBe('reversed'); // share 20: 20 left
    const failed = servers.sim.simulator.refundFailed(paymentId); // Stripe: 0 refunded now
    const newer = servers.sim.simulator.refund(paymentId, 300n); // made after the failure: 300 in all
    expect(newer.refundedCents).toBe(300n);
    // The new refund's event arrives first: 300 refunded, share 30, so 10 more are taken.
    expect((await apply(newer)).result).toBe('reversed');
    expect(await totalOf(accountId)).toBe(10_000_000n);
    // Then the failure: Stripe's 300 already left it out. Nothing comes back.
    expect((await apply(failed)).result).toBe('recorded');
    expect(await refundedCentsOf(paymentId)).toBe(300n);
    expect(await totalOf(accountId)).toBe(10_000_000n);
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
  });

  it('when the newer refund is smaller than the failed one: it is not dropped; it is applied once the failure is', async () => {
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await buy(pack);
    expect((await apply(servers.sim.simulator.refund(paymentId, 300n))).result).toBe('reversed'); // share 30: 10 left
    const failed = servers.sim.simulator.refundFailed(paymentId); // Stripe: 0 refunded now
    const newer = servers.sim.simulator.refund(paymentId, 100n); // made after the failure: 100 in all
    // The new refund's event first: its amount (100) is below the 300 recorded, yet it is newer
    // than the refund event applied: a failure not received yet explains it. Not acknowledged.
    expect((await apply(newer)).result).toBe('retry_later');
    expect(await refundedCentsOf(paymentId)).toBe(300n);
    expect((await apply(failed)).result).toBe('restored');
    expect(await totalOf(accountId)).toBe(40_000_000n);
    // Delivered again (Stripe retries what was not acknowledged): its share (10) is taken.
    expect((await apply(newer)).result).toBe('reversed');
    expect(await refundedCentsOf(paymentId)).toBe(100n);
    expect(await totalOf(accountId)).toBe(30_000_000n);
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
  });
});

describe('the Stripe webhook, events of one charge out of order', () => {
  it('answers 503 to a newer charge.refunded whose amount dropped before its failure came, and applies it when delivered again; a failure older than an applied refund event is recorded only', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    const re1 = `re_${uniq('a').replace(/[^a-zA-Z0-9]/g, '')}`;
    expect(await post(srv, refunded(pi, 300, T0))).toBe('reversed'); // share 30: 10 left
    // re1 (300) failed at T0+60; a refund of 100 made at T0+120: Stripe's cumulative is 100.
    const newer = refunded(pi, 100, T0 + 120);
    const r = await postStripeEvent(hookUrl(srv), newer);
    expect(r.status).toBe(503);
    expect(r.body.errors[0].extensions).toMatchObject({ code: 'UNAVAILABLE', reason: 'REFUND_FAILURE_PENDING' });
    expect(await refundedCentsOf(paymentId)).toBe(300n);
    expect(await post(srv, failedEvent(pi, re1, 300, T0, T0 + 60))).toBe('restored');
    expect(await post(srv, newer)).toBe('reversed');
    expect(await totalOf(accountId)).toBe(30_000_000n);
    // A refund re2 of 200 at T0+200 (300 in all) fails at T0+300 (Stripe: 100), then a refund of
    // 250 is made at T0+400 (350 in all), whose event comes before re2's failure.
    const re2 = `re_${uniq('b').replace(/[^a-zA-Z0-9]/g, '')}`;
    expect(await post(srv, refunded(pi, 300, T0 + 200))).toBe('reversed'); // share 30: 10 left
    expect(await post(srv, refunded(pi, 350, T0 + 400))).toBe('reversed'); // share 35: 5 left
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, failedEvent(pi, re2, 200, T0 + 200, T0 + 300))).toBe('recorded');
    });
    expect(await refundedCentsOf(paymentId)).toBe(350n);
    expect(await totalOf(accountId)).toBe(5_000_000n);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

const CREATE_TEST_ACCOUNT = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`;
const ADVANCE = `mutation($accountId: ID!, $to: DateTime!) { advanceTestClock(accountId: $accountId, to: $to) { id } }`;

/** A test-mode account on the simulator server whose clock starts at `start`, with a payment method. */
async function testModeAccount(start: string) {
  const accountId = ok(
    await servers.sim.srv.gql(CREATE_TEST_ACCOUNT, { input: { externalId: uniq('tm'), name: 'test mode', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: start } }),
  ).createAccount.id as string;
  return accountId;
}

describe('refund failures with disputes', () => {
  it('a dispute after a failure voids the given-back credit; the won dispute gives it back; a failure after that is recorded only', async () => {
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await buy(pack);
    const refund = servers.sim.simulator.refund(paymentId, 200n);
    expect((await apply(refund)).result).toBe('reversed'); // 20 left
    expect((await apply(servers.sim.simulator.refundFailed(paymentId))).result).toBe('restored'); // 40
    expect((await apply(servers.sim.simulator.dispute(paymentId))).result).toBe('reversed');
    expect(await totalOf(accountId)).toBe(0n);
    expect((await apply(servers.sim.simulator.disputeWon(paymentId))).result).toBe('restored');
    expect(await totalOf(accountId)).toBe(40_000_000n);
    // A refund after the won dispute takes its share from the give-back; its failure is recorded only (disputed).
    expect((await apply(servers.sim.simulator.refund(paymentId, 100n))).result).toBe('reversed');
    expect(await totalOf(accountId)).toBe(30_000_000n);
    await expectUnchanged(servers.sim.srv, [accountId], async () => {
      expect((await apply(servers.sim.simulator.refundFailed(paymentId))).result).toBe('recorded');
    });
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
  });

  it('a failure of a refund whose payment was disputed after it gives nothing back; the won dispute gives back only what the dispute took', async () => {
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await buy(pack);
    expect((await apply(servers.sim.simulator.refund(paymentId, 100n))).result).toBe('reversed'); // 30 left
    expect((await apply(servers.sim.simulator.dispute(paymentId))).result).toBe('reversed'); // 30 voided
    expect((await apply(servers.sim.simulator.refundFailed(paymentId))).result).toBe('recorded');
    expect((await apply(servers.sim.simulator.disputeWon(paymentId))).result).toBe('restored');
    expect(await totalOf(accountId)).toBe(30_000_000n);
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
  });
});

describe('refund failures: modes, concurrency', () => {
  it('the same failure delivered twice at once gives back once; a failure of the other mode is a mismatch', async () => {
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await buy(pack);
    expect((await apply(servers.sim.simulator.refund(paymentId, 200n))).result).toBe('reversed');
    const failed = servers.sim.simulator.refundFailed(paymentId);
    await expectUnchanged(servers.sim.srv, [accountId], async () => {
      expect((await apply({ ...failed, livemode: false })).result).toBe('mismatch');
    });
    const results = (await Promise.all([apply(failed), apply({ ...failed, eventId: `${failed.eventId}-2`, eventType: 'refund.failed' })])).map((r) => r.result).sort();
    expect(results).toEqual(['restored', 'unchanged']);
    expect(await totalOf(accountId)).toBe(40_000_000n);
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
  });

  it('a failure racing a new refund made after it: the same end state whichever is applied first', async () => {
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await buy(pack);
    expect((await apply(servers.sim.simulator.refund(paymentId, 100n))).result).toBe('reversed'); // 30 left
    const failed = servers.sim.simulator.refundFailed(paymentId);
    const newer = servers.sim.simulator.refund(paymentId, 200n); // 200 in all
    const results = await Promise.all([apply(failed), apply(newer)]);
    // Either order ends at 200 refunded, share 20.
    expect(await refundedCentsOf(paymentId)).toBe(200n);
    expect(await totalOf(accountId)).toBe(20_000_000n);
    expect(results.map((r) => r.result)).not.toContain('retry_later');
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId));
  });
});

describe('refund failures of test-mode accounts, expired credit, payments settled late', () => {
  it("a failure after the payment's credit expired gives nothing back (recorded); the refunded amount drops", async () => {
    const accountId = await testModeAccount('2026-01-01T00:00:00.000Z');
    await attachMethod(servers.sim.srv, accountId);
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4', expiresAfterDays: 10 });
    const bought = ok(await servers.sim.srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') })).purchaseCreditPack;
    const paymentId = (await servers.sim.srv.services.pool.query('SELECT id FROM payments WHERE grant_id = $1', [dbId(bought.id)])).rows[0].id as string;
    expect((await apply(servers.sim.simulator.refund(paymentId, 200n))).result).toBe('reversed');
    ok(await servers.sim.srv.gql(ADVANCE, { accountId, to: '2026-01-20T00:00:00.000Z' }));
    expect(await totalOf(accountId)).toBe(0n);
    const done = await apply(servers.sim.simulator.refundFailed(paymentId));
    expect(done).toMatchObject({ result: 'recorded', restoredMicroCredits: 0n });
    expect(await refundedCentsOf(paymentId)).toBe(0n);
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId), new Date('2026-01-20T00:00:00.000Z'));
  });

  it("a refund kept before its payment was settled, on a test-mode account whose clock is behind the provider's, gives its credit back when it fails", async () => {
    const accountId = await testModeAccount('2025-06-01T00:00:00.000Z');
    const reference = await attachMethod(servers.sim.srv, accountId);
    servers.sim.simulator.script(reference, ['timeout_after_charge']);
    const pack = await createPack(servers.sim.srv, { credits: '40', priceUsd: '4' });
    const key = uniq('buy');
    const first = await servers.sim.srv.gql(PURCHASE, { accountId, packId: pack.id, key });
    expect(first.body.errors?.[0]?.extensions?.code).toBe('UNAVAILABLE');
    const paymentId = (await servers.sim.srv.services.pool.query('SELECT id FROM payments WHERE account_id = $1', [dbId(accountId)])).rows[0].id as string;
    // Refunded in part at the provider before creditpool learnt the charge succeeded: kept.
    expect((await apply(servers.sim.simulator.refund(paymentId, 200n))).result).toBe('kept');
    ok(await servers.sim.srv.gql(PURCHASE, { accountId, packId: pack.id, key })); // the retry settles it and applies the refund
    expect(await totalOf(accountId)).toBe(20_000_000n);
    expect(await refundedCentsOf(paymentId)).toBe(200n);
    const done = await apply(servers.sim.simulator.refundFailed(paymentId));
    expect(done.result).toBe('restored');
    expect(await totalOf(accountId)).toBe(40_000_000n);
    await expectLedgerInvariant(servers.sim.srv.services.pool, dbId(accountId), new Date('2025-06-01T00:00:00.000Z'));
  });
});

describe('a refund kept before its payment was settled, then failed (Stripe webhook)', () => {
  it('the failure, made after the refund event but before the settlement and delivered after it, gives the credit back', async () => {
    const { srv } = servers.main;
    const lost = await lostPurchase(srv, servers.fake);
    const pi = newPi();
    expect(await post(srv, refunded(pi, 200, T0))).toBe('kept');
    await postStripeEvent(hookUrl(srv), lost.succeeded(pi)); // settled now, the kept refund applied: 20 left
    expect(await totalOf(lost.accountId)).toBe(20_000_000n);
    const re = `re_${uniq('k').replace(/[^a-zA-Z0-9]/g, '')}`;
    expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 60))).toBe('restored');
    expect(await totalOf(lost.accountId)).toBe(40_000_000n);
    expect(await refundedCentsOf(lost.paymentId)).toBe(0n);
    await expectLedgerInvariant(srv.services.pool, dbId(lost.accountId));
  });
});

describe('an auto top-up payment refunded in full, then the refund failed', () => {
  it('gives back its credit as an AUTO_TOP_UP grant; auto top-up stays paused and buys nothing though the balance is under its threshold', async () => {
    const { srv } = servers.main;
    const { accountId, pi } = await autoTopUpCharged(servers.main, servers.fake); // 40 left + 20 bought for $2
    expect(await totalOf(accountId)).toBe(60_000_000n);
    expect(await post(srv, JSON.stringify({ ...JSON.parse(refundEvent(pi, 200, {}, 200)), created: T0 }))).toBe('reversed');
    expect(await totalOf(accountId)).toBe(40_000_000n); // under the threshold (50), paused
    const re = `re_${uniq('t').replace(/[^a-zA-Z0-9]/g, '')}`;
    const refund = { id: re, object: 'refund', amount: 200, payment_intent: pi, currency: 'usd', created: T0, status: 'failed' };
    expect(await post(srv, JSON.stringify({ ...stripeEvent('refund.failed', refund), created: T0 + 60 }))).toBe('restored');
    expect(await totalOf(accountId)).toBe(60_000_000n);
    const { rows } = await srv.services.pool.query(
      `SELECT g.source::text FROM credit_grants g JOIN payment_refund_failures f ON f.grant_id = g.id WHERE f.refund_ref = $1`,
      [re],
    );
    expect(rows).toEqual([{ source: 'AUTO_TOP_UP' }]);
    const settings = await srv.services.pool.query('SELECT enabled FROM auto_top_up_settings WHERE account_id = $1', [dbId(accountId)]);
    expect(settings.rows[0].enabled).toBe(false);
    expect(await topUps(srv, accountId)).toHaveLength(1);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});
