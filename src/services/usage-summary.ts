/**
 * Usage reports: credits spent grouped by category / tier / model / agent / user / task, per
 * month, and per task. Refunded events are left out (their credit came back). Reads only; the
 * hourly and monthly rollups they read are kept exact by triggers on usage_events (migration
 * 20261122015816_usage_rollups), so the cost of a report does not grow with the event count.
 */
import type pg from 'pg';
import { toBigInt } from '../db/pg.js';

/** Grouping dimensions (contract enum UsageDimension) and their columns. */
export const DIMENSION_COLUMNS = {
  CATEGORY: 'category',
  TIER: 'tier',
  MODEL: 'model',
  AGENT: 'agent_id',
  USER: 'user_id',
  TASK: 'task_id',
} as const;

/** One of the grouping dimensions. */
export type UsageDimension = keyof typeof DIMENSION_COLUMNS;

/** One row of a summary: the group's labels (null where not grouped or absent) and totals. */
export interface UsageSummaryRow {
  category: string | null;
  tier: string | null;
  model: string | null;
  agentId: string | null;
  userId: string | null;
  taskId: string | null;
  creditsMicroCredits: bigint;
  events: number;
}

function toRow(r: Record<string, unknown>): UsageSummaryRow {
  return {
    category: (r.category as string | null) ?? null,
    tier: (r.tier as string | null) ?? null,
    model: (r.model as string | null) ?? null,
    agentId: (r.agent_id as string | null) ?? null,
    userId: (r.user_id as string | null) ?? null,
    taskId: (r.task_id as string | null) ?? null,
    creditsMicroCredits: toBigInt(r.credits),
    events: Number(r.events),
  };
}

/**
 * Most rows usageSummary returns (the biggest groups; README "Limits"). Account.usageSummary
 * declares it as its cap for the query cost estimate (src/graphql/cost-limit.ts cappedList).
 */
export const USAGE_SUMMARY_MAX_ROWS = 1000;

/** The dimensions the hourly rollup keeps (usage_rollups_hourly). */
const ROLLUP_DIMENSIONS: ReadonlySet<UsageDimension> = new Set(['CATEGORY', 'TIER', 'MODEL']);

const HOUR_MS = 3_600_000;

/**
 * Credits spent by `accountId` with occurredAt in [from, to), grouped by `groupBy` (in that
 * order), biggest spend first, at most USAGE_SUMMARY_MAX_ROWS rows. Extra filters narrow the events.
 *
 * When every dimension is one the hourly rollup keeps (category, tier, model) and there is no
 * task filter, the whole hours of the range are read from usage_rollups_hourly and only the
 * partial hours at its two ends from usage_events (so the cost does not grow with the number of
 * events); otherwise the events are scanned. Both give the same rows (a test checks it).
 */
export async function usageSummary(
  db: pg.Pool,
  accountId: string,
  range: { from: Date; to: Date },
  groupBy: readonly UsageDimension[],
  filter: { taskId?: string } = {},
): Promise<UsageSummaryRow[]> {
  const dims = [...new Set(groupBy)];
  const cols = dims.map((d) => DIMENSION_COLUMNS[d]);
  const select = cols.length ? `${cols.join(', ')}, ` : '';
  const group = cols.length ? `GROUP BY ${cols.join(', ')}` : '';
  const order = `ORDER BY credits DESC${cols.length ? ', ' + cols.join(', ') : ''} LIMIT ${USAGE_SUMMARY_MAX_ROWS}`;
  const hourFrom = new Date(Math.ceil(range.from.getTime() / HOUR_MS) * HOUR_MS);
  const hourTo = new Date(Math.floor(range.to.getTime() / HOUR_MS) * HOUR_MS);
  const useRollup = filter.taskId === undefined && dims.every((d) => ROLLUP_DIMENSIONS.has(d)) && hourFrom.getTime() < hourTo.getTime();
  if (!useRollup) {
    // The task filter is in the statement only when asked for, never as `($4 IS NULL OR task_id =
    // $4)`: the ledger pool plans generically (db/pg.ts LEDGER_SESSION_OPTIONS), and a generic plan
    // cannot bound an index scan by a condition that may be switched off, so `taskCost` read every
    // event of the account (812 ms at 2,000,000 events) instead of the task's through
    // usage_events_account_id_task_id_seq_idx (0.06 ms).
    const byTask = filter.taskId !== undefined;
    const { rows } = await db.query(
      `SELECT ${select} SUM(cost_micro_credits) AS credits, COUNT(*) AS events
         FROM usage_events
        WHERE account_id = $1 AND refunded_at IS NULL AND occurred_at >= $2 AND occurred_at < $3
          ${byTask ? 'AND task_id = $4' : ''}
        ${group} ${order}`,
      byTask ? [accountId, range.from, range.to, filter.taskId] : [accountId, range.from, range.to],
    );
    return rows.filter((r) => r.credits !== null).map(toRow);
  }
  const rollupCols = cols.map((c) => (c === 'category' ? c : `NULLIF(${c}, '') AS ${c}`));
  const { rows } = await db.query(
    `SELECT ${select} SUM(credits) AS credits, SUM(events) AS events FROM (
       SELECT ${rollupCols.length ? rollupCols.join(', ') + ', ' : ''}credits_micro_credits AS credits, events
         FROM usage_rollups_hourly
        WHERE account_id = $1 AND hour >= $4 AND hour < $5
       UNION ALL
       SELECT ${select}cost_micro_credits, 1
         FROM usage_events
        WHERE account_id = $1 AND refunded_at IS NULL
          AND ((occurred_at >= $2 AND occurred_at < $4) OR (occurred_at >= $5 AND occurred_at < $3))
     ) parts
     ${group} HAVING SUM(events) > 0 ${order}`,
    [accountId, range.from, range.to, hourFrom, hourTo],
  );
  return rows.filter((r) => r.credits !== null).map(toRow);
}

/**
 * The first instant of the UTC calendar month `offset` months from `at`'s. Built with
 * setUTCFullYear, not Date.UTC, which reads years 0-99 as 1900-1999 (a test clock may run there).
 */
function utcMonthStart(at: Date, offset: number): Date {
  const d = new Date(0);
  d.setUTCFullYear(at.getUTCFullYear(), at.getUTCMonth() + offset, 1);
  return d;
}

/** A year as PostgreSQL's to_char 'YYYY' writes it: at least 4 digits ("0050"), as the contract's YYYY-MM asks. */
function yearLabel(year: number): string {
  return year < 0 ? `-${String(-year).padStart(4, '0')}` : String(year).padStart(4, '0');
}

/** One month of consumption (UTC calendar month), with its category breakdown. */
export interface UsageMonth {
  month: string;
  totalMicroCredits: bigint;
  byCategory: UsageSummaryRow[];
}

/**
 * Month-by-month consumption for the `months` months up to and including the month of `now`,
 * newest first (months without usage included with 0).
 */
export async function usageHistory(db: pg.Pool, accountId: string, now: Date, months: number): Promise<UsageMonth[]> {
  const startOfMonth = utcMonthStart(now, -(months - 1));
  // The monthly rollup (usage_rollups_monthly, kept by triggers) holds exactly these sums.
  const { rows } = await db.query(
    `SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM') AS month, category,
            SUM(credits_micro_credits) AS credits, SUM(events) AS events
       FROM usage_rollups_monthly
      WHERE account_id = $1 AND month >= $2
      GROUP BY 1, 2 HAVING SUM(events) > 0 ORDER BY 1 DESC, credits DESC, category`,
    [accountId, startOfMonth],
  );
  const result: UsageMonth[] = [];
  for (let i = 0; i < months; i++) {
    const d = utcMonthStart(now, -i);
    const month = `${yearLabel(d.getUTCFullYear())}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
    const byCategory = rows.filter((r) => r.month === month).map(toRow);
    result.push({ month, totalMicroCredits: byCategory.reduce((s, r) => s + r.creditsMicroCredits, 0n), byCategory });
  }
  return result;
}
