/**
 * Processor of the `prune-budget-spend` maintenance job: deletes, in bounded batches, the kept
 * budget spending rows (budget_spend) of billing periods that ended, by their account's clock,
 * more than BUDGET_SPEND_RETENTION_DAYS ago (src/services/budget-spend-retention.ts
 * pruneBudgetSpend, which says why no budget check or read is misled). Scheduled hourly by
 * workers/start.ts while BUDGET_SPEND_RETENTION_DAYS > 0.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { pruneBudgetSpend, type BudgetSpendPrune } from '../../src/services/budget-spend-retention.js';

/**
 * Runs one prune; logs what it deleted (info) when it deleted anything.
 * @param retentionDays BUDGET_SPEND_RETENTION_DAYS (0: nothing is done).
 * @param wallNow the worker's wall clock (the now of accounts without a test clock).
 * @returns what pruneBudgetSpend did (the job's result as BullMQ stores it).
 * @throws the database error (the job fails; batches already committed stay done and the next
 *   scheduled run goes on).
 */
export async function processPruneBudgetSpend(pool: pg.Pool, log: Logger, retentionDays: number, wallNow: Date): Promise<BudgetSpendPrune> {
  const prune = await pruneBudgetSpend(pool, { retentionDays, wallNow });
  if (prune.rows > 0) log.info({ rows: prune.rows, scanned: prune.scanned, batches: prune.batches, cutoff: prune.cutoff }, 'prune-budget-spend: deleted kept budget spending of periods that ended more than BUDGET_SPEND_RETENTION_DAYS ago');
  return prune;
}
