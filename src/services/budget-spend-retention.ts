/**
 * Retention of the kept budget spending (`budget_spend`: one row per account, budgeted agent or
 * user and billing period start; migration budget_spend, src/services/spending-budgets.ts). The
 * `prune-budget-spend` maintenance job (workers/start.ts) calls {@link pruneBudgetSpend}, which
 * deletes the rows of periods that ended, by the account's own clock, more than
 * BUDGET_SPEND_RETENTION_DAYS ago. Without it every budgeted subject left one row per period for
 * ever (an organization with 1,000 budgeted agents: 12,000 rows a year that nothing reads).
 *
 * Who reads or writes a row, by the period it names (the account's "now" is account-clock.ts's:
 * its test clock, which only moves forward, else the wall clock but never before its last change,
 * so per account it never goes back; every row's period_start is a period start of the account's
 * current billing anchor, since a change of anchor, plans.ts subscribeToPlan, deletes the
 * account's rows under its lock):
 * - a budget check (assertWithinBudgets, a charge or hold on the statement path, CHARGE_PATH
 *   naive or group commit's `alone`): the row of the period holding the account's now, read or
 *   started from the SUM;
 * - a budget read (listBudgets: Account.budgets / userBudgets, setSpendingBudget's answer): the
 *   row of the period holding the account's now, else the SUM (reads only);
 * - group commit's state read (budget_states): the subject's newest row, used only when it is of
 *   the current period (record-usage.ts budgetTracks), else the statement path; carried state
 *   (AccountTx.lockCarried) holds that figure in memory and never reads the row again;
 * - a charge or capture (applyCharge, chargeAccounts): moves the current period's row;
 * - a refund (refundUsage): moves the row of the period the event was recorded in, an earlier one
 *   for usage of an earlier period, by an UPDATE that changes nothing when the row is gone.
 * So a row of a period that ended by the account's now is never read again: only a refund's
 * UPDATE may still find it. Deleting it is safe, and even a row that is read later (the current
 * period's, should the pruning server's clock run ahead of the charging servers' by more than the
 * retention) costs nothing but exactness-preserving work: the rule "a row, while it exists,
 * equals the SUM of its subject's non-refunded usage in its period" holds whether or not the row
 * exists (writers only UPDATE existing rows, and a row is only ever created from the SUM under the
 * account's lock), so the next check starts it again from the SUM, the first check of a period's
 * way, and carried state, exact in memory, stays exact (test/integration/budget-spend-retention.test.ts
 * races the prune, with such a clock, against charges on both charge paths).
 *
 * Batches: each statement reads at most `batchRows` rows old enough by the wall clock (period start
 * at least retention + 28 days, the shortest billing period, before the worker's wall clock),
 * oldest period first through budget_spend_period_start_idx, keyset-paged on the whole key, so
 * rows kept (an account whose test clock is behind) are passed over, not read again, and deletes
 * those whose period ended `retentionDays` before their own account's now. The deleted rows are
 * locked with SKIP LOCKED: a row a refund is moving at that instant is left for the next run, so
 * the prune never waits for a money transaction nor deadlocks with one. Each statement is its own
 * short transaction. A test-mode account whose clock is ahead of the wall clock keeps its rows
 * until the wall clock too is past them (README "Limits").
 */
import type pg from 'pg';
import { accountNowSql } from './account-clock.js';

/** Default most rows one prune statement reads (and at most as many it deletes). */
export const BUDGET_SPEND_PRUNE_BATCH_ROWS = 5_000;

/** Largest `batchRows` accepted. */
export const BUDGET_SPEND_PRUNE_MAX_BATCH_ROWS = 50_000;

/** Every how many milliseconds the workers schedule `prune-budget-spend` (hourly: rows age by billing periods). */
export const BUDGET_SPEND_PRUNE_EVERY_MS = 60 * 60_000;

/**
 * The shortest billing period, in days: calendar months from the anchor, clamped to a shorter
 * month's end (src/ledger/billing-period.ts), so a February of 28 days. A period that ended
 * before instant X started at least this long before X: the bound of the index range a prune reads.
 */
export const SHORTEST_BILLING_PERIOD_DAYS = 28;

/** The keyset cursor before every row of budget_spend: no period starts at -infinity, and any key is after ('', ''). */
const BEFORE_FIRST_ROW: [string, string, string, string] = ['-infinity', '00000000-0000-0000-0000-000000000000', '', ''];

/** Options of {@link pruneBudgetSpend}. */
export interface PruneBudgetSpendOptions {
  /** BUDGET_SPEND_RETENTION_DAYS: 0 keeps everything (nothing is read or deleted); else a whole number of days. */
  retentionDays: number;
  /** The worker's wall clock: the now of accounts without a test clock (never before their last change). */
  wallNow: Date;
  /** Most rows one statement reads (default {@link BUDGET_SPEND_PRUNE_BATCH_ROWS}; 1..{@link BUDGET_SPEND_PRUNE_MAX_BATCH_ROWS}). */
  batchRows?: number;
}

/** What one {@link pruneBudgetSpend} run did. */
export interface BudgetSpendPrune {
  /** `wallNow` - retentionDays: for an account on the wall clock, rows of periods that ended before it went; null when retentionDays is 0. */
  cutoff: Date | null;
  /** Statements run (each one transaction). */
  batches: number;
  /** Rows read (old enough by the wall clock), deleted or passed over. */
  scanned: number;
  /** Rows deleted. */
  rows: number;
  /** Most rows one statement deleted. */
  largestBatchRows: number;
}

/**
 * One batch: $1 the wall clock, $2 retention days, $3..$6 the keyset cursor (period_start,
 * account_id, subject_kind, subject_id) of the last row read ({@link BEFORE_FIRST_ROW} first), $7
 * batchRows. The cursor is always given, never `$3 IS NULL OR ...`: the ledger pool's generic plans
 * (plan_cache_mode=force_generic_plan) then made the row comparison a filter instead of the index
 * range's start, and every batch read again the rows its predecessors passed over. Hours, not days,
 * in the intervals: 24 h each whatever the session's time zone.
 */
const PRUNE_BATCH_SQL = `
WITH page AS (
  SELECT k.period_start, k.account_id, k.subject_kind, k.subject_id
    FROM budget_spend k
   WHERE k.period_start <= $1::timestamptz - make_interval(hours => 24 * ($2::int + ${SHORTEST_BILLING_PERIOD_DAYS}))
     AND (k.period_start, k.account_id, k.subject_kind, k.subject_id) > ($3::timestamptz, $4::uuid, $5::text, $6::text)
   ORDER BY k.period_start, k.account_id, k.subject_kind, k.subject_id
   LIMIT $7
), dead AS (
  SELECT k.account_id, k.subject_kind, k.subject_id, k.period_start
    FROM page p
    JOIN accounts a ON a.id = p.account_id
    JOIN balances bal ON bal.account_id = p.account_id
    CROSS JOIN LATERAL billing_period(a.billing_anchor_at, p.period_start) per
    JOIN budget_spend k ON k.account_id = p.account_id AND k.subject_kind = p.subject_kind AND k.subject_id = p.subject_id AND k.period_start = p.period_start
   WHERE per.period_end <= ${accountNowSql('a', 'bal', '$1')} - make_interval(hours => 24 * $2::int)
     FOR UPDATE OF k SKIP LOCKED
), gone AS (
  DELETE FROM budget_spend k USING dead d
   WHERE k.account_id = d.account_id AND k.subject_kind = d.subject_kind AND k.subject_id = d.subject_id AND k.period_start = d.period_start
  RETURNING 1
)
SELECT (SELECT count(*) FROM page)::int AS scanned,
       (SELECT count(*) FROM gone)::int AS deleted,
       last.period_start AS last_period_start, last.account_id AS last_account_id, last.subject_kind AS last_subject_kind, last.subject_id AS last_subject_id
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT * FROM page ORDER BY period_start DESC, account_id DESC, subject_kind DESC, subject_id DESC LIMIT 1) last ON true`;

/**
 * Deletes, in batches (oldest period first, each its own short transaction), the kept budget
 * spending rows whose billing period ended more than `retentionDays` days before their account's
 * now (see the module comment for why no budget check or read is misled). Idempotent: a second
 * run finds nothing; two runs at once delete each row once. Meant for the `prune-budget-spend`
 * maintenance job.
 * @param opts.retentionDays BUDGET_SPEND_RETENTION_DAYS (0: returns at once, nothing read).
 * @param opts.wallNow the worker's wall clock.
 * @param opts.batchRows most rows read per statement (default 5,000).
 * @returns counts of what was done (batches, rows read and deleted, the largest batch's rows).
 * @throws RangeError when retentionDays is not a whole number of days from 0 to 36,500, wallNow
 *   is not a valid instant, or batchRows is out of range; the database error otherwise (batches
 *   already committed stay done; the next run goes on).
 */
export async function pruneBudgetSpend(pool: pg.Pool, opts: PruneBudgetSpendOptions): Promise<BudgetSpendPrune> {
  const { retentionDays, wallNow } = opts;
  const batchRows = opts.batchRows ?? BUDGET_SPEND_PRUNE_BATCH_ROWS;
  if (!Number.isSafeInteger(retentionDays) || retentionDays < 0 || retentionDays > 36_500) {
    throw new RangeError(`retentionDays must be an integer from 0 to 36500, got ${retentionDays}`);
  }
  if (!(wallNow instanceof Date) || Number.isNaN(wallNow.getTime())) throw new RangeError('wallNow must be a valid instant');
  if (!Number.isSafeInteger(batchRows) || batchRows < 1 || batchRows > BUDGET_SPEND_PRUNE_MAX_BATCH_ROWS) {
    throw new RangeError(`batchRows must be an integer from 1 to ${BUDGET_SPEND_PRUNE_MAX_BATCH_ROWS}, got ${batchRows}`);
  }
  const result: BudgetSpendPrune = { cutoff: null, batches: 0, scanned: 0, rows: 0, largestBatchRows: 0 };
  if (retentionDays === 0) return result;
  result.cutoff = new Date(wallNow.getTime() - retentionDays * 86_400_000);
  let after: [Date | string, string, string, string] = BEFORE_FIRST_ROW;
  for (;;) {
    const batch: pg.QueryResult<{
      scanned: number;
      deleted: number;
      last_period_start: Date | null;
      last_account_id: string | null;
      last_subject_kind: string | null;
      last_subject_id: string | null;
    }> = await pool.query(PRUNE_BATCH_SQL, [wallNow, retentionDays, ...after, batchRows]);
    const r = batch.rows[0]!;
    result.batches += 1;
    result.scanned += r.scanned;
    result.rows += r.deleted;
    result.largestBatchRows = Math.max(result.largestBatchRows, r.deleted);
    if (r.scanned < batchRows) return result;
    after = [r.last_period_start!, r.last_account_id!, r.last_subject_kind!, r.last_subject_id!];
  }
}
