/**
 * Agent and user budgets on the real PostgreSQL (issue #5): concurrency under the account lock,
 * holds counted while they hold, and re-arming at the next billing period (moving the clock).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { rowsReadUnderGenericPlans } from '../setup/rows-read.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
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

/**
 * Usage captured against a hold belongs to the hold's agent and user (README "Budgets inside a
 * pool"): the hold was checked against their budgets, so its captures count there, whatever the
 * capture names. Found by an audit: a capture without agentId freed the hold's share of the
 * budget at settle and counted nowhere (reserve, capture unlabelled, reserve again: past the
 * budget), and a capture naming another agent counted under that agent without its budget being
 * checked. On both charge paths: one transaction per call, and group commit (decided in memory by
 * chargeAccounts, here with its own committer of 2 slots).
 */
describe.each([
  ['one transaction per call', false],
  ['group commit', true],
])('captures belong to the hold\'s subjects (%s)', (_path, grouped) => {
  const ctx = () => (grouped ? { ...s, groupCommit: new GroupCommitter(s.pool, s.clock, chargeAccounts, applyCharge, { maxTransactions: 2 }) } : s);
  /** The agent and user stored on a usage event. */
  const subjectsOf = async (eventId: string) =>
    (await s.pool.query('SELECT agent_id, user_id FROM usage_events WHERE id = $1', [eventId])).rows[0] as { agent_id: string | null; user_id: string | null };
  /** Expects `op` refused with BAD_USER_INPUT naming `field` (the hold's subject must be used or omitted), with nothing of the account changed. */
  const refusedUnchanged = async (accountId: string, op: () => Promise<unknown>, field: string) => {
    const before = await expectLedgerInvariant(s.pool, accountId);
    const counts = () => s.pool.query('SELECT (SELECT count(*) FROM usage_events WHERE account_id = $1)::int AS events, (SELECT count(*) FROM ledger_entries WHERE account_id = $1)::int AS entries', [accountId]);
    const countsBefore = (await counts()).rows[0];
    const keptBefore = await keptSpending(accountId);
    const error = await op().then(
      () => expect.unreachable('expected BAD_USER_INPUT'),
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: 'BAD_USER_INPUT', details: { field } });
    expect((error as Error).message).toMatch(new RegExp(`^${field}: .*(omit|the reservation's)`));
    expect((await counts()).rows[0]).toEqual(countsBefore);
    expect(await keptSpending(accountId)).toEqual(keptBefore);
    const after = await expectLedgerInvariant(s.pool, accountId);
    expect(after.version).toBe(before.version);
  };

  it("a capture without agentId counts under the hold's agent: reserve, capture unlabelled, reserve again cannot pass the budget", async () => {
    s.setNow(null);
    const c = ctx();
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-h', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h1', agentId: 'agent-h' });
    const ev = await recordUsage(c, { accountId, idempotencyKey: 'c1', category: 'units', quantities: { units: '6' }, reservationId: hold.reservationId });
    await settleReservation(c, hold.reservationId, []);
    expect((await listBudgets(s.pool, accountId, new Date(), 'AGENT'))[0]?.spentMicroCredits).toBe(credits(6));
    // 6 spent: another hold of 6 would pass the budget of 10.
    await overBudget(reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h2', agentId: 'agent-h' }));
    await overBudget(recordUsage(c, { accountId, idempotencyKey: 'c2', category: 'units', quantities: { units: '5' }, agentId: 'agent-h' }));
    await recordUsage(c, { accountId, idempotencyKey: 'c3', category: 'units', quantities: { units: '4' }, agentId: 'agent-h' });
    expect(await subjectsOf(ev.eventId)).toEqual({ agent_id: 'agent-h', user_id: null }); // stored on the event: usage views see it
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:agent-h', kept: credits(10), sum: credits(10) }]);
    // A refund of the unlabelled capture gives its cost back to the hold's agent.
    await refundUsage(s, ev.eventId, 'test refund');
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:agent-h', kept: credits(4), sum: credits(4) }]);
    await expectLedgerInvariant(s.pool, accountId);
  });

  it("a capture without userId, and the usage of a settle without agentId or userId, count under the hold's user and agent", async () => {
    s.setNow(null);
    const c = ctx();
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'member-h', limitMicroCredits: credits(10) });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-s', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(c, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'h1', agentId: 'agent-s', userId: 'member-h' });
    // The agent named (the hold's own) and the user left out: the event gets both.
    const ev = await recordUsage(c, { accountId, idempotencyKey: 'c1', category: 'units', quantities: { units: '2' }, agentId: 'agent-s', reservationId: hold.reservationId });
    expect(await subjectsOf(ev.eventId)).toEqual({ agent_id: 'agent-s', user_id: 'member-h' });
    await settleReservation(c, hold.reservationId, [{ accountId, idempotencyKey: 's1', category: 'units', quantities: { units: '3' } }]);
    const settled = (await s.pool.query('SELECT agent_id, user_id FROM usage_events WHERE account_id = $1 AND idempotency_key = $2', [accountId, 's1'])).rows[0];
    expect(settled).toEqual({ agent_id: 'agent-s', user_id: 'member-h' });
    expect(await keptSpending(accountId)).toEqual([
      { subject: 'AGENT:agent-s', kept: credits(5), sum: credits(5) },
      { subject: 'USER:member-h', kept: credits(5), sum: credits(5) },
    ]);
    await overBudget(reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h2', userId: 'member-h' }));
    await overBudget(reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h3', agentId: 'agent-s' }));
    await expectLedgerInvariant(s.pool, accountId);
  });

  it("a capture or settle naming another agent or user than the hold's is BAD_USER_INPUT and changes nothing", async () => {
    s.setNow(null);
    const c = ctx();
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-b', limitMicroCredits: credits(1) });
    const hold = await reserveCredits(c, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'h1', agentId: 'agent-a', userId: 'member-a' });
    const capture = (key: string, extra: Record<string, string>) =>
      recordUsage(c, { accountId, idempotencyKey: key, category: 'units', quantities: { units: '3' }, reservationId: hold.reservationId, ...extra });
    await refusedUnchanged(accountId, () => capture('x1', { agentId: 'agent-b' }), 'agentId');
    await refusedUnchanged(accountId, () => capture('x2', { agentId: 'agent-c' }), 'agentId'); // an agent without a budget too
    await refusedUnchanged(accountId, () => capture('x3', { agentId: 'agent-a', userId: 'member-b' }), 'userId');
    await refusedUnchanged(accountId, () => settleReservation(c, hold.reservationId, [{ accountId, idempotencyKey: 'x4', category: 'units', quantities: { units: '3' }, agentId: 'agent-b' }]), 'agentId');
    expect((await s.pool.query('SELECT status FROM reservations WHERE id = $1', [hold.reservationId])).rows[0].status).toBe('ACTIVE');
    // The hold's own subjects, or none, are accepted.
    await capture('ok1', { agentId: 'agent-a', userId: 'member-a' });
    await capture('ok2', {});
    await expectLedgerInvariant(s.pool, accountId);
  });

  it("a hold without an agent: usage naming an agent with a budget is checked against it like a charge without a hold, and counts under it", async () => {
    s.setNow(null);
    const c = ctx();
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-b', limitMicroCredits: credits(2) });
    // The hold is the user's (no budget) and names no agent: agent-b's budget was not checked by it.
    const hold = await reserveCredits(c, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'h1', userId: 'member-x' });
    await overBudget(recordUsage(c, { accountId, idempotencyKey: 'c1', category: 'units', quantities: { units: '3' }, agentId: 'agent-b', reservationId: hold.reservationId }));
    const ev = await recordUsage(c, { accountId, idempotencyKey: 'c2', category: 'units', quantities: { units: '2' }, agentId: 'agent-b', reservationId: hold.reservationId });
    expect(await subjectsOf(ev.eventId)).toEqual({ agent_id: 'agent-b', user_id: 'member-x' });
    await overBudget(settleReservation(c, hold.reservationId, [{ accountId, idempotencyKey: 's1', category: 'unit', agentId: 'agent-b' }]));
    // An agent without a budget is free to be named; the hold's rest is then settled.
    await settleReservation(c, hold.reservationId, [{ accountId, idempotencyKey: 's2', category: 'unit', agentId: 'agent-free' }]);
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:agent-b', kept: credits(2), sum: credits(2) }]);
    const b = await expectLedgerInvariant(s.pool, accountId);
    expect(b.totalMicroCredits).toBe(credits(97));
    expect(b.reservedMicroCredits).toBe(0n);
  });

  it('a retried capture replays, even one recorded with another agent than its hold has (before captures took the hold\'s subjects)', async () => {
    s.setNow(null);
    const c = ctx();
    const accountId = await createFundedAccount(s, { paid: 100 });
    const hold = await reserveCredits(c, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'h1', agentId: 'agent-a' });
    const unlabelled = { accountId, idempotencyKey: 'c1', category: 'units', quantities: { units: '1' }, reservationId: hold.reservationId };
    const first = await recordUsage(c, unlabelled);
    expect(await recordUsage(c, unlabelled)).toMatchObject({ eventId: first.eventId, replayed: true });
    // A capture of another agent, as recorded before the rule: its request hash is of the input as sent.
    const other = { accountId, idempotencyKey: 'c2', category: 'units', quantities: { units: '1' }, agentId: 'agent-z', reservationId: hold.reservationId };
    await s.pool.query("UPDATE reservations SET agent_id = NULL WHERE id = $1", [hold.reservationId]);
    const old = await recordUsage(c, other);
    await s.pool.query("UPDATE reservations SET agent_id = 'agent-a' WHERE id = $1", [hold.reservationId]);
    expect(await recordUsage(c, other)).toMatchObject({ eventId: old.eventId, replayed: true });
    await expect(recordUsage(c, { ...unlabelled, quantities: { units: '2' } })).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
  });

  it("recordUsageBatch: captures take their hold's subjects, a capture naming another agent is refused alone", async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-h', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(ctx(), { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h1', agentId: 'agent-h' });
    const item = (key: string, extra: Record<string, unknown> = {}) => ({ accountId, idempotencyKey: key, category: 'units', quantities: { units: '2' }, reservationId: hold.reservationId, ...extra });
    const results = await recordUsageBatch(ctx(), [item('b1'), item('b2', { agentId: 'agent-other' }), item('b3', { agentId: 'agent-h' })], { maxItems: 10 });
    expect(results.map((r) => (r.ok ? 'OK' : (r.error as LedgerError).code))).toEqual(['OK', 'BAD_USER_INPUT', 'OK']);
    expect(results[1]).toMatchObject({ ok: false, error: { details: { field: 'agentId' } } });
    const { rows } = await s.pool.query('SELECT idempotency_key, agent_id FROM usage_events WHERE account_id = $1 ORDER BY idempotency_key', [accountId]);
    expect(rows).toEqual([
      { idempotency_key: 'b1', agent_id: 'agent-h' },
      { idempotency_key: 'b3', agent_id: 'agent-h' },
    ]);
    await settleReservation(ctx(), hold.reservationId, []);
    expect(await keptSpending(accountId)).toEqual([{ subject: 'AGENT:agent-h', kept: credits(4), sum: credits(4) }]);
    await overBudget(reserveCredits(ctx(), { accountId, amountMicroCredits: credits(7), ttlSeconds: 600, idempotencyKey: 'h2', agentId: 'agent-h' }));
    await expectLedgerInvariant(s.pool, accountId);
  });
});

describe("one subject's budget reads only that budget", () => {
  it("listBudgets with a subject (setSpendingBudget's read) is bounded by the (account, kind, subject) index under the ledger pool's generic plans, not by reading the account's budgets", async () => {
    // 400 budgets on one account (200 agents, 200 users), then one agent's budget is read on a
    // fresh ledger-pool connection, with PostgreSQL's own count of the rows read (rows-read.ts).
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 1000 });
    for (let i = 0; i < 200; i++) {
      await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: `agent-${i}`, limitMicroCredits: credits(10 + i) });
      await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: `user-${i}`, limitMicroCredits: credits(10 + i) });
    }
    await unit(accountId, 'one-1', 'agent-7');
    await s.pool.query('ANALYZE spending_budgets');
    const read = await rowsReadUnderGenericPlans('spending_budgets', async (db) => {
      const budgets = await listBudgets(db, accountId, new Date(), 'AGENT', { subjectId: 'agent-7' });
      expect(budgets).toEqual([{ subjectKind: 'AGENT', subjectId: 'agent-7', limitMicroCredits: credits(17), spentMicroCredits: credits(1) }]);
    });
    // 6 reads of 1 budget; reading the account's budgets would be 6 × 400.
    expect(read).toBeLessThanOrEqual(6 * 2);
  });

  it('the filters keep their meaning: kind, subject, after (byte order) and limit, alone and together', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 1000 });
    for (const id of ['b', 'B', 'a', 'é', 'c']) await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: id, limitMicroCredits: credits(5) });
    for (const id of ['b', 'z']) await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: id, limitMicroCredits: credits(5) });
    const ids = async (kind?: 'AGENT' | 'USER', filter?: Parameters<typeof listBudgets>[4]) =>
      (await listBudgets(s.pool, accountId, new Date(), kind, filter)).map((b) => `${b.subjectKind}:${b.subjectId}`);
    expect(await ids()).toEqual(['AGENT:B', 'AGENT:a', 'AGENT:b', 'AGENT:c', 'AGENT:é', 'USER:b', 'USER:z']);
    expect(await ids('AGENT')).toEqual(['AGENT:B', 'AGENT:a', 'AGENT:b', 'AGENT:c', 'AGENT:é']);
    expect(await ids('USER', { subjectId: 'b' })).toEqual(['USER:b']);
    expect(await ids(undefined, { subjectId: 'b' })).toEqual(['AGENT:b', 'USER:b']);
    expect(await ids('AGENT', { subjectId: 'z' })).toEqual([]);
    expect(await ids('AGENT', { after: 'a', limit: 2 })).toEqual(['AGENT:b', 'AGENT:c']);
    expect(await ids('AGENT', { after: 'c' })).toEqual(['AGENT:é']);
    expect(await ids('AGENT', { after: null, limit: 1 })).toEqual(['AGENT:B']);
    expect(await ids('AGENT', { after: 'a', subjectId: 'c' })).toEqual(['AGENT:c']);
    expect(await ids('AGENT', { after: 'c', subjectId: 'b' })).toEqual([]);
    await expect(listBudgets(s.pool, '00000000-0000-4000-8000-000000000000', new Date(), 'AGENT', { subjectId: 'b' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
