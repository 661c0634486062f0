/**
 * Retention of the kept budget spending (budget_spend, src/services/budget-spend-retention.ts) on
 * the real PostgreSQL: the prune deletes the rows of periods that ended more than the retention
 * before their account's own now (a live account's wall clock, a test clock behind or ahead of
 * it), nothing else, in bounded batches that pass over the rows kept and skip a row a refund is
 * moving; budgets stay exact across it (each kept row equals the SUM of its period's usage, the
 * budget read and the checks count the period's usage, before and after further charges), also
 * when a prune whose clock runs ahead deletes the current period's rows while a budgeted agent
 * charges, on both charge paths.
 */
import { describe, expect, it } from 'vitest';
import { settledCode, useTestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage } from '../../src/services/record-usage.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { listBudgets, setSpendingBudget, type BudgetSubjectKind } from '../../src/services/spending-budgets.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { pruneBudgetSpend, type BudgetSpendPrune } from '../../src/services/budget-spend-retention.js';
import type { ServiceContext } from '../../src/services/context.js';
import { credits } from '../../src/ledger/credits.js';

const s = useTestServices(20);

const DAY_MS = 86_400_000;
const at = (iso: string) => new Date(iso);
const before = (d: Date) => new Date(d.getTime() - 1);

/** A charge of `units` credits (category `units`) by agent `agentId` and user `userId`. */
const charge = (ctx: ServiceContext, accountId: string, idempotencyKey: string, units: number, agentId: string | null, userId: string | null = null) =>
  recordUsage(ctx, { accountId, idempotencyKey, category: 'units', quantities: { units: String(units) }, agentId, userId });
const overBudget = (p: Promise<unknown>) => expect(p).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });

/** The account's kept rows as `KIND:subject@periodStart` = kept amount, each checked against the SUM of its period (billing_period of the account's anchor). */
async function keptRows(accountId: string): Promise<Record<string, bigint>> {
  const { rows } = await s.pool.query(
    `SELECT k.subject_kind || ':' || k.subject_id || '@' || to_char(k.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI') AS key,
            k.spent_micro_credits AS kept,
            (SELECT COALESCE(SUM(e.cost_micro_credits), 0) FROM usage_events e
              WHERE e.account_id = k.account_id AND e.refunded_at IS NULL
                AND e.recorded_at >= p.period_start AND e.recorded_at < p.period_end
                AND CASE WHEN k.subject_kind = 'AGENT' THEN e.agent_id = k.subject_id ELSE e.user_id = k.subject_id END) AS sum
       FROM budget_spend k JOIN accounts a ON a.id = k.account_id
       CROSS JOIN LATERAL billing_period(a.billing_anchor_at, k.period_start) p
      WHERE k.account_id = $1 ORDER BY 1`,
    [accountId],
  );
  for (const r of rows) expect(BigInt(r.kept), `${r.key} equals the SUM of its period`).toBe(BigInt(r.sum));
  return Object.fromEntries(rows.map((r) => [r.key as string, BigInt(r.kept)]));
}

/**
 * The subject's budget as Account.budgets reads it at `wallNow`, checked against the SUM of its
 * usage in the account's current period (no holds in these tests); returns the spent amount.
 */
async function spentNow(accountId: string, kind: BudgetSubjectKind, subjectId: string, wallNow: Date): Promise<bigint> {
  const [budget] = await listBudgets(s.pool, accountId, wallNow, kind, { subjectId });
  const { rows } = await s.pool.query(
    `SELECT COALESCE(SUM(e.cost_micro_credits), 0) AS sum
       FROM accounts a JOIN balances b ON b.account_id = a.id
       CROSS JOIN LATERAL billing_period(a.billing_anchor_at,
         CASE WHEN a.test_mode AND a.test_clock_at IS NOT NULL THEN a.test_clock_at ELSE GREATEST($2::timestamptz, b.updated_at) END) p
       JOIN usage_events e ON e.account_id = a.id AND e.refunded_at IS NULL AND e.recorded_at >= p.period_start AND e.recorded_at < p.period_end
                          AND CASE WHEN $3 = 'AGENT' THEN e.agent_id = $4 ELSE e.user_id = $4 END
      WHERE a.id = $1`,
    [accountId, wallNow, kind, subjectId],
  );
  expect(budget?.spentMicroCredits, `${kind}:${subjectId} spent = the SUM of its current period`).toBe(BigInt(rows[0].sum));
  return budget!.spentMicroCredits;
}

describe('pruneBudgetSpend: what it deletes', () => {
  it("deletes the rows of periods that ended more than the retention before their account's now, and nothing else; budgets stay exact through refunds and charges", async () => {
    // A: a live account whose periods start on the 31st (clamped): Jan 31 - Feb 28 (28 days, the
    // shortest), Feb 28 - Mar 31, Mar 31 - Apr 30 (10:00 UTC).
    s.setNow(at('2026-01-31T10:00:00Z'));
    const a = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId: a, subjectKind: 'AGENT', subjectId: 'agent-a', limitMicroCredits: credits(10) });
    await setSpendingBudget(s, { accountId: a, subjectKind: 'USER', subjectId: 'user-a', limitMicroCredits: credits(10) });
    s.setNow(at('2026-01-31T11:00:00Z'));
    const e1 = await charge(s, a, 'a-p1', 3, 'agent-a', 'user-a');
    s.setNow(at('2026-02-28T11:00:00Z'));
    const e2 = await charge(s, a, 'a-p2', 2, 'agent-a', 'user-a');
    // B: a test-mode account whose clock (Dec 1, 2025) is far behind every wall clock below: its
    // row is the oldest of the table, first in the prune's order, and its period has not ended.
    const b = await createFundedAccount(s, { paid: 100, testClockStart: at('2025-12-01T00:00:00Z') });
    await setSpendingBudget(s, { accountId: b, subjectKind: 'AGENT', subjectId: 'agent-b', limitMicroCredits: credits(5) });
    await charge(s, b, 'b-p1', 1, 'agent-b');
    // C: a test-mode account whose clock (Jun 1, 2026) is ahead of the walls below.
    const c = await createFundedAccount(s, { paid: 100, testClockStart: at('2026-06-01T00:00:00Z') });
    await setSpendingBudget(s, { accountId: c, subjectKind: 'AGENT', subjectId: 'agent-c', limitMicroCredits: credits(5) });
    await charge(s, c, 'c-p1', 1, 'agent-c');
    await advanceTestClock(s, c, at('2026-07-10T00:00:00Z')); // its first period ended on Jul 1, 9 days ago by its clock
    const aRows = {
      'AGENT:agent-a@2026-01-31T10:00': credits(3),
      'USER:user-a@2026-01-31T10:00': credits(3),
      'AGENT:agent-a@2026-02-28T10:00': credits(2),
      'USER:user-a@2026-02-28T10:00': credits(2),
    };
    expect(await keptRows(a)).toEqual(aRows);
    expect(await keptRows(b)).toEqual({ 'AGENT:agent-b@2025-12-01T00:00': credits(1) });
    expect(await keptRows(c)).toEqual({ 'AGENT:agent-c@2026-06-01T00:00': credits(1) });

    // Retention 2 days. A's first period ended Feb 28 10:00: one ms before Mar 2 10:00 it stays.
    const prune = (wallNow: Date, batchRows?: number) => pruneBudgetSpend(s.pool, { retentionDays: 2, wallNow, batchRows });
    await prune(before(at('2026-03-02T10:00:00Z')));
    expect(await keptRows(a)).toEqual(aRows);
    // At Mar 2 10:00 it goes, both subjects' rows; one row per statement: B's row, first in the
    // order and kept, is passed over, not read again.
    const run = await prune(at('2026-03-02T10:00:00Z'), 1);
    expect(run.largestBatchRows).toBe(1);
    expect(run.batches).toBeGreaterThanOrEqual(4); // B's row, A's two rows, and the statement that finds no more
    expect(run.cutoff).toEqual(at('2026-02-28T10:00:00Z'));
    const p2Rows = { 'AGENT:agent-a@2026-02-28T10:00': credits(2), 'USER:user-a@2026-02-28T10:00': credits(2) };
    expect(await keptRows(a)).toEqual(p2Rows);
    expect(await keptRows(b)).toEqual({ 'AGENT:agent-b@2025-12-01T00:00': credits(1) });
    expect(await keptRows(c)).toEqual({ 'AGENT:agent-c@2026-06-01T00:00': credits(1) });

    // The budgets of A's current period are untouched and exact: 8 more pass, 1 more is refused.
    s.setNow(at('2026-03-02T10:00:00Z'));
    expect(await spentNow(a, 'AGENT', 'agent-a', s.clock())).toBe(credits(2));
    await charge(s, a, 'a-p2-b', 8, 'agent-a', 'user-a');
    await overBudget(charge(s, a, 'a-p2-c', 1, 'agent-a'));
    await overBudget(charge(s, a, 'a-p2-d', 1, null, 'user-a'));
    // Refunding usage of the pruned period: its row is not started again, this period's stays.
    await refundUsage(s, e1.eventId, 'refund of a pruned period');
    expect(await keptRows(a)).toEqual({ 'AGENT:agent-a@2026-02-28T10:00': credits(10), 'USER:user-a@2026-02-28T10:00': credits(10) });
    expect(await spentNow(a, 'USER', 'user-a', s.clock())).toBe(credits(10));

    // Into A's third period; a refund of the second period's usage moves that period's row (not pruned yet).
    s.setNow(at('2026-03-31T11:00:00Z'));
    await charge(s, a, 'a-p3', 1, 'agent-a', 'user-a');
    await refundUsage(s, e2.eventId, 'refund of the previous period');
    const p3Rows = { 'AGENT:agent-a@2026-03-31T10:00': credits(1), 'USER:user-a@2026-03-31T10:00': credits(1) };
    expect(await keptRows(a)).toEqual({ 'AGENT:agent-a@2026-02-28T10:00': credits(8), 'USER:user-a@2026-02-28T10:00': credits(8), ...p3Rows });
    await prune(before(at('2026-04-02T10:00:00Z')));
    expect(Object.keys(await keptRows(a))).toHaveLength(4);
    await prune(at('2026-04-02T10:00:00Z'));
    expect(await keptRows(a)).toEqual(p3Rows);
    // B (its clock in Dec 2025) and C (its rows in the wall clock's future) keep theirs.
    expect(Object.keys(await keptRows(b))).toHaveLength(1);
    expect(Object.keys(await keptRows(c))).toHaveLength(1);
    s.setNow(at('2026-04-02T10:00:00Z'));
    expect(await spentNow(a, 'AGENT', 'agent-a', s.clock())).toBe(credits(1));
    await charge(s, a, 'a-p3-b', 9, 'agent-a', 'user-a');
    await overBudget(charge(s, a, 'a-p3-c', 1, 'agent-a'));
    expect(await keptRows(a)).toEqual({ 'AGENT:agent-a@2026-03-31T10:00': credits(10), 'USER:user-a@2026-03-31T10:00': credits(10) });

    // B's clock moves to Jan 3, 2026: its Dec period ended 2 days ago by its clock, whatever the wall says.
    await advanceTestClock(s, b, at('2026-01-03T00:00:00Z'));
    await prune(at('2026-04-02T10:00:00Z'));
    expect(await keptRows(b)).toEqual({});
    expect(await spentNow(b, 'AGENT', 'agent-b', s.clock())).toBe(0n);
    await charge(s, b, 'b-p2', 5, 'agent-b');
    await overBudget(charge(s, b, 'b-p2-b', 1, 'agent-b'));
    expect(await keptRows(b)).toEqual({ 'AGENT:agent-b@2026-01-01T00:00': credits(5) });

    // C's row goes once the wall clock too is past the retention after its period (Aug 1); so do
    // A's third period's rows (its period ended Apr 30 by that wall), not B's current one.
    await prune(at('2026-08-01T00:00:00Z'));
    expect(await keptRows(c)).toEqual({});
    expect(await keptRows(a)).toEqual({});
    expect(Object.keys(await keptRows(b))).toHaveLength(1);
    expect(await spentNow(c, 'AGENT', 'agent-c', s.clock())).toBe(0n);
    for (const id of [a, b, c]) await expectLedgerInvariant(s.pool, id, s.clock());
  });

  it('retention 0 keeps everything (nothing read); a row a refund is moving is skipped, not waited for, and goes at the next run', async () => {
    s.setNow(at('2026-05-05T10:00:00Z'));
    const a = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId: a, subjectKind: 'AGENT', subjectId: 'agent-r', limitMicroCredits: credits(10) });
    const e = await charge(s, a, 'r-1', 2, 'agent-r');
    const later = at('2026-08-01T00:00:00Z'); // the May period ended Jun 5, more than 2 days before
    expect(await pruneBudgetSpend(s.pool, { retentionDays: 0, wallNow: later })).toEqual({ cutoff: null, batches: 0, scanned: 0, rows: 0, largestBatchRows: 0 } satisfies BudgetSpendPrune);
    expect(await keptRows(a)).toEqual({ 'AGENT:agent-r@2026-05-05T10:00': credits(2) });
    // A refund of that period's usage holds the row's lock (its UPDATE done, not committed).
    s.setNow(at('2026-06-20T10:00:00Z'));
    const client = await s.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`UPDATE budget_spend SET spent_micro_credits = spent_micro_credits WHERE account_id = $1`, [a]);
      const run = await pruneBudgetSpend(s.pool, { retentionDays: 2, wallNow: later });
      expect(run.scanned).toBeGreaterThanOrEqual(1);
      expect(await keptRows(a)).toEqual({ 'AGENT:agent-r@2026-05-05T10:00': credits(2) });
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await refundUsage(s, e.eventId, 'refund of an ended period');
    expect(await keptRows(a)).toEqual({ 'AGENT:agent-r@2026-05-05T10:00': 0n });
    await pruneBudgetSpend(s.pool, { retentionDays: 2, wallNow: later });
    expect(await keptRows(a)).toEqual({});
    await expect(pruneBudgetSpend(s.pool, { retentionDays: -1, wallNow: later })).rejects.toThrow(RangeError);
    await expect(pruneBudgetSpend(s.pool, { retentionDays: 1.5, wallNow: later })).rejects.toThrow(RangeError);
    await expect(pruneBudgetSpend(s.pool, { retentionDays: 2, wallNow: new Date(Number.NaN) })).rejects.toThrow(RangeError);
    await expect(pruneBudgetSpend(s.pool, { retentionDays: 2, wallNow: later, batchRows: 0 })).rejects.toThrow(RangeError);
    await expectLedgerInvariant(s.pool, a, s.clock());
  });
});

describe.each(['group', 'naive'] as const)('a prune racing charges of a budgeted agent (CHARGE_PATH=%s)', (chargePath) => {
  it("a prune whose clock runs 60 days ahead deletes the current period's row again and again while 120 charges run against a budget of 100 (moving it through 5 rounds, refused in the 6th): exactly 100 pass, and the budget stays exact", async () => {
    s.setNow(null);
    const committer = chargePath === 'group' ? new GroupCommitter(s.pool, s.clock, chargeAccounts, applyCharge, { maxTransactions: 2, maxChargesPerAccount: 4 }) : undefined;
    const ctx: ServiceContext = committer ? { ...s, groupCommit: committer } : s;
    const accountId = await createFundedAccount(s, { paid: 1000 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-race', limitMicroCredits: credits(100) });
    // Such a clock judges every row of the table ended: clear the other tests' rows first, so
    // what the prune deletes below is this account's.
    const ahead = () => new Date(Date.now() + 60 * DAY_MS);
    await pruneBudgetSpend(s.pool, { retentionDays: 1, wallNow: ahead() });
    await charge(ctx, accountId, 'race-0', 1, 'agent-race'); // the period's row exists
    let pruned = 0;
    const results: PromiseSettledResult<unknown>[] = [];
    for (let round = 0; round < 6; round++) {
      let done = false;
      const charges = Promise.allSettled(Array.from({ length: 20 }, (_, i) => charge(ctx, accountId, `race-${round}-${i}`, 1, 'agent-race'))).finally(() => {
        done = true;
      });
      const pruning = (async () => {
        do pruned += (await pruneBudgetSpend(s.pool, { retentionDays: 1, wallNow: ahead(), batchRows: 1 })).rows;
        while (!done);
      })();
      const [settled] = await Promise.all([charges, pruning]);
      results.push(...settled);
    }
    const codes = results.map(settledCode);
    expect(codes.filter((x) => x === 'OK')).toHaveLength(99); // with race-0: 100
    expect(codes.filter((x) => x === 'BUDGET_EXCEEDED')).toHaveLength(21);
    expect(pruned).toBeGreaterThan(0); // the current period's row was deleted while charges ran
    if (committer) expect(committer.stats().carriedState).toBeGreaterThan(0); // transactions decided from carried state
    expect(await spentNow(accountId, 'AGENT', 'agent-race', new Date())).toBe(credits(100));
    for (const kept of Object.values(await keptRows(accountId))) expect(kept).toBe(credits(100)); // a row, if there is one, is the SUM
    await expectLedgerInvariant(s.pool, accountId);
    // After the prune and after further charges: the row is gone, the next check starts it from the SUM.
    await pruneBudgetSpend(s.pool, { retentionDays: 1, wallNow: ahead() });
    expect(await keptRows(accountId)).toEqual({});
    await overBudget(charge(ctx, accountId, 'after-1', 1, 'agent-race'));
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-race', limitMicroCredits: credits(105) });
    const more = (await Promise.allSettled(Array.from({ length: 10 }, (_, i) => charge(ctx, accountId, `after-more-${i}`, 1, 'agent-race')))).map(settledCode);
    expect(more.filter((x) => x === 'OK')).toHaveLength(5);
    expect(Object.values(await keptRows(accountId))).toEqual([credits(105)]);
    expect(await spentNow(accountId, 'AGENT', 'agent-race', new Date())).toBe(credits(105));
    // A prune on the same wall clock as the charges deletes nothing of the current period.
    await pruneBudgetSpend(s.pool, { retentionDays: 1, wallNow: new Date() });
    expect(Object.values(await keptRows(accountId))).toEqual([credits(105)]);
    await expectLedgerInvariant(s.pool, accountId);
  });
});
