/**
 * Processor of the `reconcile-ledger` job: parse payload -> call reconcileLedger -> report.
 * Inconsistencies are logged at error level (they are bugs) and returned as the job result.
 */
import { z } from 'zod';
import type pg from 'pg';
import type { Logger } from 'pino';
import { DEFAULT_RECONCILE_FULL_EVERY_MS, reconcileLedger } from '../../src/services/reconcile-ledger.js';
import { formatCredits } from '../../src/ledger/credits.js';

/** Payload: how far back to look, in seconds (default 15 minutes). */
export const ReconcileLedgerPayload = z.object({ lookbackSeconds: z.number().int().min(1).max(86_400 * 31).default(900) });

/** The job's result as stored by BullMQ (JSON: amounts as Credits strings; fullyChecked: accounts checked over their whole history). */
export interface ReconcileJobResult {
  checked: number;
  fullyChecked: number;
  inconsistent: Array<{ accountId: string; total: string; batchRemaining: string; debt: string; ledgerSum: string }>;
}

/**
 * Runs one reconcile pass at `now`: each account in full every `fullEveryMs` (RECONCILE_FULL_EVERY_HOURS),
 * incrementally in between (reconcileLedger). @throws ZodError for a malformed payload (not retried).
 */
export async function processReconcileLedger(pool: pg.Pool, log: Logger, data: unknown, now: Date, fullEveryMs = DEFAULT_RECONCILE_FULL_EVERY_MS): Promise<ReconcileJobResult> {
  const { lookbackSeconds } = ReconcileLedgerPayload.parse(data ?? {});
  const report = await reconcileLedger(pool, new Date(now.getTime() - lookbackSeconds * 1000), { now, fullEveryMs });
  for (const bad of report.inconsistent) {
    log.error({ accountId: bad.accountId, total: String(bad.totalMicroCredits), batches: String(bad.batchRemainingMicroCredits), ledger: String(bad.ledgerSumMicroCredits), budgetSpendMismatches: bad.budgetSpendMismatches, refundCreditMismatches: bad.refundCreditMismatches }, 'ledger invariant violated');
  }
  log.info({ checked: report.checked, fullyChecked: report.fullyChecked, inconsistent: report.inconsistent.length }, 'reconcile-ledger pass done');
  return {
    checked: report.checked,
    fullyChecked: report.fullyChecked,
    inconsistent: report.inconsistent.map((r) => ({
      accountId: r.accountId,
      total: formatCredits(r.totalMicroCredits),
      batchRemaining: formatCredits(r.batchRemainingMicroCredits),
      debt: formatCredits(r.debtMicroCredits),
      ledgerSum: formatCredits(r.ledgerSumMicroCredits),
    })),
  };
}
