/**
 * Agent and user budgets on the real PostgreSQL (issue #5): concurrency under the account lock,
 * holds counted while they hold, and re-arming at the next billing period (moving the clock).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage } from '../../src/services/record-usage.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { listBudgets, setSpendingBudget } from '../../src/services/spending-budgets.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { reconcileAccount } from '../../src/services/read-balance.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(20);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
});

/** A 1-credit charge (category `unit`) of agent `agentId` on `accountId`, one transaction per call. */
const unit = (accountId: string, idempotencyKey: string, agentId: string) => recordUsage(s, { accountId, idempotencyKey, category: 'unit', agentId });
/** Expects `charge` to be refused with BUDGET_EXCEEDED. */
const overBudget = (charge: Promise<unknown>) => expect(charge).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });

const codes = (results: PromiseSettledResult<unknown>[]) =>
  results.map((r) => (r.status === 'fulfilled' ? 'OK' : r.reason instanceof LedgerError ? r.reason.code : String(r.reason)));

describe('spending budgets', () => {
  it('100 concurrent 1-credit charges against a budget of 30: exactly 30 succeed', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 1000 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-x', limitMicroCredits: credits(30) });
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) => unit(accountId, `b-${i}`, 'agent-x')),
    );
    const c = codes(results);
    expect(c.filter((x) => x === 'OK')).toHaveLength(30);
    expect(c.filter((x) => x === 'BUDGET_EXCEEDED')).toHaveLength(70);
    const [budget] = await listBudgets(s.pool, accountId, new Date(), 'AGENT');
    expect(budget?.spentMicroCredits).toBe(credits(30));
    // Another agent of the same pool is not limited by agent-x's budget.
    await unit(accountId, 'other', 'agent-y');
    const b = await expectLedgerInvariant(s.pool, accountId);
    expect(b.totalMicroCredits).toBe(credits(1000 - 31));
  });

  it('a hold counts against the budget while it holds, and frees it when released', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'member-1', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(s, { accountId, amountMicroCredits: credits(8), ttlSeconds: 600, idempotencyKey: 'h1', userId: 'member-1' });
    await expect(reserveCredits(s, { accountId, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: 'h2', userId: 'member-1' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    await expect(recordUsage(s, { accountId, idempotencyKey: 'u1', category: 'units', quantities: { units: '3' }, userId: 'member-1' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    await recordUsage(s, { accountId, idempotencyKey: 'u2', category: 'units', quantities: { units: '2' }, userId: 'member-1' });
    await releaseReservation(s, hold.reservationId);
    await recordUsage(s, { accountId, idempotencyKey: 'u3', category: 'units', quantities: { units: '8' }, userId: 'member-1' });
    const [budget] = await listBudgets(s.pool, accountId, new Date(), 'USER');
    expect(budget?.spentMicroCredits).toBe(credits(10));
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('re-arms at the next billing period', async () => {
    const created = new Date(Date.UTC(2026, 0, 31, 10, 0, 0));
    s.setNow(created);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: credits(5) });
    await recordUsage(s, { accountId, idempotencyKey: 'p1', category: 'units', quantities: { units: '5' }, agentId: 'a' });
    // The period that started Jan 31 10:00 ends Feb 28 10:00 (the month is shorter): one ms before, still spent.
    s.setNow(new Date(Date.UTC(2026, 1, 28, 9, 59, 59, 999)));
    await overBudget(unit(accountId, 'p2', 'a'));
    const nextPeriod = new Date(Date.UTC(2026, 1, 28, 10, 0, 0));
    s.setNow(nextPeriod);
    expect((await listBudgets(s.pool, accountId, nextPeriod, 'AGENT'))[0]?.spentMicroCredits).toBe(0n);
    await recordUsage(s, { accountId, idempotencyKey: 'p3', category: 'units', quantities: { units: '5' }, agentId: 'a' });
    await overBudget(unit(accountId, 'p4', 'a'));
    await expectLedgerInvariant(s.pool, accountId, nextPeriod);
  });

  it('removing a budget (null limit) lifts the limit', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 10 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: 0n });
    await overBudget(unit(accountId, 'x1', 'a'));
    expect(await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: null })).toBeNull();
    await unit(accountId, 'x2', 'a');
    expect(await listBudgets(s.pool, accountId, new Date())).toEqual([]);
  });
});

/**
 * The kept spending rows of an account (budget_spend), each next to the SUM that defines it: the
 * cost of the subject's non-refunded usage events recorded in the period starting at the row's
 * period_start (the account's billing period, one calendar month on from its start).
 */
async function keptSpending(accountId: string): Promise<{ subject: string; kept: bigint; sum: bigint }[]> {
  const { rows } = await s.pool.query(
    `SELECT k.subject_kind || ':' || k.subject_id AS subject, k.spent_micro_credits AS kept,
            (SELECT COALESCE(SUM(e.cost_micro_credits), 0) FROM usage_events e
              WHERE e.account_id = k.account_id AND e.refunded_at IS NULL
                AND e.recorded_at >= k.period_start AND e.recorded_at < k.period_start + interval '1 month'
                AND CASE WHEN k.subject_kind = 'AGENT' THEN e.agent_id = k.subject_id ELSE e.user_id = k.subject_id END) AS sum
       FROM budget_spend k WHERE k.account_id = $1 ORDER BY 1`,
    [accountId],
  );
  return rows.map((r) => ({ subject: r.subject as string, kept: BigInt(r.kept), sum: BigInt(r.sum) }));
}

describe('kept budget spending (budget_spend: one row read per check instead of a SUM over the period)', () => {
  it("keeps each budgeted subject's period spending equal to its SUM through charges, captures and refunds", async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-k', limitMicroCredits: credits(50) });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'user-k', limitMicroCredits: credits(50) });
    expect(await keptSpending(accountId)).toEqual([]); // started by the first check of the period
    await recordUsage(s, { accountId, idempotencyKey: 'k1', category: 'units', quantities: { units: '3' }, agentId: 'agent-k' });
    await recordUsage(s, { accountId, idempotencyKey: 'k2', category: 'units', quantities: { units: '2' }, agentId: 'agent-k', userId: 'user-k' });
    const ev = await recordUsage(s, { accountId, idempotencyKey: 'k3', category: 'units', quantities: { units: '4' }, userId: 'user-k' });
    const hold = await reserveCredits(s, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'kh', agentId: 'agent-k' });
    await recordUsage(s, { accountId, idempotencyKey: 'k4', category: 'units', quantities: { units: '1' }, agentId: 'agent-k', reservationId: hold.reservationId });
    await refundUsage(s, ev.eventId, 'test refund');
    const kept = await keptSpending(accountId);
    expect(kept).toEqual([
      { subject: 'AGENT:agent-k', kept: credits(6), sum: credits(6) },
      { subject: 'USER:user-k', kept: credits(2), sum: credits(2) },
    ]);
    await expectLedgerInvariant(s.pool, accountId);
    // The reconciliation (reconcile worker, expectLedgerInvariant) sees a row that drifted.
    await s.pool.query(`UPDATE budget_spend SET spent_micro_credits = spent_micro_credits + 1 WHERE account_id = $1 AND subject_kind = 'USER'`, [accountId]);
    expect(await reconcileAccount(s.pool, accountId)).toMatchObject({ consistent: false, budgetSpendMismatches: 1 });
    // listBudgets (Account.budgets) reads the kept row too, instead of summing the period.
    expect((await listBudgets(s.pool, accountId, new Date(), 'USER'))[0]?.spentMicroCredits).toBe(credits(2) + 1n);
    await s.pool.query(`UPDATE budget_spend SET spent_micro_credits = spent_micro_credits - 1 WHERE account_id = $1 AND subject_kind = 'USER'`, [accountId]);
  });

  it('a refund gives the budget back', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: credits(3) });
    const events = [];
    for (let i = 0; i < 3; i++) events.push(await unit(accountId, `r${i}`, 'a'));
    await overBudget(unit(accountId, 'r3', 'a'));
    await refundUsage(s, events[0]!.eventId, 'test refund');
    await unit(accountId, 'r4', 'a');
    await overBudget(unit(accountId, 'r5', 'a'));
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:a', kept: credits(3), sum: credits(3) }]);
  });

  it('a budget set after usage without one counts that usage; changing it starts again from the SUM', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    // Usage of agent b while nobody has a budget (the in-memory charge path, no kept spending).
    for (let i = 0; i < 4; i++) await unit(accountId, `n${i}`, 'b');
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'b', limitMicroCredits: credits(5) });
    await unit(accountId, 'n4', 'b');
    await overBudget(unit(accountId, 'n5', 'b'));
    // Removed: its usage goes on without kept spending; set again, it counts all of it.
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'b', limitMicroCredits: null });
    expect(await keptSpending(accountId)).toEqual([]);
    await unit(accountId, 'n6', 'b');
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'b', limitMicroCredits: credits(7) });
    await unit(accountId, 'n7', 'b');
    await overBudget(unit(accountId, 'n8', 'b'));
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:b', kept: credits(7), sum: credits(7) }]);
  });

  it("a new billing anchor (a plan subscription) drops the account's kept spending; the check starts it from the new period's SUM", async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'c', limitMicroCredits: credits(3) });
    await recordUsage(s, { accountId, idempotencyKey: 'c1', category: 'units', quantities: { units: '2' }, agentId: 'c' });
    expect(await keptSpending(accountId)).toHaveLength(1);
    const plan = await createPlan(s, { name: `kept-${accountId}`, monthlyMicroCredits: credits(1), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '0' });
    await subscribeToPlan(s, accountId, plan.id);
    expect(await keptSpending(accountId)).toEqual([]);
    // The new period starts now: the 2 credits before it no longer count.
    await recordUsage(s, { accountId, idempotencyKey: 'c2', category: 'units', quantities: { units: '3' }, agentId: 'c' });
    await overBudget(unit(accountId, 'c3', 'c'));
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:c', kept: credits(3), sum: credits(3) }]);
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('refunding an event recorded before a plan switch gives nothing back to the budget of the period the switch started', async () => {
    const before = new Date(Date.UTC(2026, 2, 10, 9, 0, 0));
    const switched = new Date(Date.UTC(2026, 2, 20, 9, 0, 0));
    s.setNow(before);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'd', limitMicroCredits: credits(5) });
    const old = await recordUsage(s, { accountId, idempotencyKey: 'd1', category: 'units', quantities: { units: '4' }, agentId: 'd' });
    const plan = await createPlan(s, { name: `switch-refund-${accountId}`, monthlyMicroCredits: credits(1), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '0' });
    s.setNow(switched);
    await subscribeToPlan(s, accountId, plan.id);
    s.setNow(new Date(switched.getTime() + 60_000));
    await recordUsage(s, { accountId, idempotencyKey: 'd2', category: 'units', quantities: { units: '5' }, agentId: 'd' });
    await overBudget(unit(accountId, 'd3', 'd'));
    // The refunded event was charged in the period before the switch: the new period's spending
    // stays 5 (its own event), and the agent is still at its limit.
    s.setNow(new Date(switched.getTime() + 120_000));
    await refundUsage(s, old.eventId, 'refund of an event before the switch');
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:d', kept: credits(5), sum: credits(5) }]);
    await overBudget(unit(accountId, 'd4', 'd'));
    await expectLedgerInvariant(s.pool, accountId);
    s.setNow(null);
  });

  it('refunding an event recorded before a plan switch, when the new period has spent less than its cost, is not an error', async () => {
    const before = new Date(Date.UTC(2026, 3, 10, 9, 0, 0));
    const switched = new Date(Date.UTC(2026, 3, 20, 9, 0, 0));
    s.setNow(before);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'e', limitMicroCredits: credits(10) });
    const old = await recordUsage(s, { accountId, idempotencyKey: 'e1', category: 'units', quantities: { units: '4' }, agentId: 'e' });
    const plan = await createPlan(s, { name: `switch-refund-small-${accountId}`, monthlyMicroCredits: credits(1), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '0' });
    s.setNow(switched);
    await subscribeToPlan(s, accountId, plan.id);
    s.setNow(new Date(switched.getTime() + 60_000));
    await recordUsage(s, { accountId, idempotencyKey: 'e2', category: 'units', quantities: { units: '1' }, agentId: 'e' });
    await refundUsage(s, old.eventId, 'refund of an event before the switch');
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:e', kept: credits(1), sum: credits(1) }]);
    await expectLedgerInvariant(s.pool, accountId);
    s.setNow(null);
  });
});

describe('budgets in group commit (decided in memory with the account\'s other charges and holds)', () => {
  /** The services with a group committer of 2 transaction slots, so concurrent calls wait and form groups. */
  const grouped = () => {
    const groupCommit = new GroupCommitter(s.pool, s.clock, chargeAccounts, applyCharge, { maxTransactions: 2 });
    return { ctx: { ...s, groupCommit }, groupCommit };
  };

  it('100 concurrent 1-credit charges and 20 holds of 1 credit of one agent against a budget of 30: exactly 30 succeed, in far fewer transactions', async () => {
    s.setNow(null);
    const { ctx, groupCommit } = grouped();
    const accountId = await createFundedAccount(s, { paid: 1000 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-g', limitMicroCredits: credits(30) });
    const results = await Promise.allSettled([
      ...Array.from({ length: 100 }, (_, i) => recordUsage(ctx, { accountId, idempotencyKey: `g-${i}`, category: 'unit', agentId: 'agent-g' })),
      ...Array.from({ length: 20 }, (_, i) =>
        reserveCredits(ctx, { accountId, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: `gh-${i}`, agentId: 'agent-g' }),
      ),
    ]);
    const c = codes(results);
    expect(c.filter((x) => x === 'OK')).toHaveLength(30);
    expect(c.filter((x) => x === 'BUDGET_EXCEEDED')).toHaveLength(90);
    expect(groupCommit.stats().transactions).toBeLessThan(60);
    const held = c.slice(100).filter((x) => x === 'OK').length;
    const [budget] = await listBudgets(s.pool, accountId, new Date(), 'AGENT');
    expect(budget?.spentMicroCredits).toBe(credits(30));
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:agent-g', kept: credits(30 - held), sum: credits(30 - held) }]);
    const b = await expectLedgerInvariant(s.pool, accountId);
    expect(b.totalMicroCredits).toBe(credits(1000 - (30 - held)));
    expect(b.reservedMicroCredits).toBe(credits(held));
  });

  it('re-arms at the next billing period: the first check of the period starts its kept row, the groups after it decide from that row', async () => {
    const created = new Date(Date.UTC(2026, 0, 31, 10, 0, 0));
    s.setNow(created);
    const { ctx } = grouped();
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: credits(5) });
    const burst = (prefix: string) =>
      Promise.allSettled(Array.from({ length: 12 }, (_, i) => recordUsage(ctx, { accountId, idempotencyKey: `${prefix}-${i}`, category: 'unit', agentId: 'a' })));
    expect(codes(await burst('jan')).filter((x) => x === 'OK')).toHaveLength(5);
    s.setNow(new Date(Date.UTC(2026, 1, 28, 9, 59, 59, 999))); // the period's last millisecond: still spent
    expect(codes(await burst('jan-end')).filter((x) => x === 'OK')).toHaveLength(0);
    const nextPeriod = new Date(Date.UTC(2026, 1, 28, 10, 0, 0));
    s.setNow(nextPeriod);
    expect(codes(await burst('feb')).filter((x) => x === 'OK')).toHaveLength(5);
    expect(await keptSpending(accountId)).toEqual([
      { subject: 'AGENT:a', kept: credits(5), sum: credits(5) },
      { subject: 'AGENT:a', kept: credits(5), sum: credits(5) },
    ]);
    await expectLedgerInvariant(s.pool, accountId, nextPeriod);
  });
});
