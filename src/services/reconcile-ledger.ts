/**
 * reconcileLedger: checks the ledger invariant (batches - debt = total = sum of ledger
 * entries) of the accounts whose balance changed since `since`. A mismatch is a bug; it is
 * reported, never "fixed" silently.
 */
import type pg from 'pg';
import { reconcileAccount, type Reconciliation } from './read-balance.js';

/** Result of one pass. */
export interface ReconcileReport {
  checked: number;
  inconsistent: Array<{ accountId: string } & Reconciliation>;
}

/**
 * Checks up to `limit` accounts changed at or after `since`, most recent first.
 */
export async function reconcileLedger(pool: pg.Pool, since: Date, limit = 1000): Promise<ReconcileReport> {
  const { rows } = await pool.query('SELECT account_id FROM balances WHERE updated_at >= $1 ORDER BY updated_at DESC LIMIT $2', [since, limit]);
  const inconsistent: ReconcileReport['inconsistent'] = [];
  for (const r of rows) {
    const rec = await reconcileAccount(pool, r.account_id as string);
    if (!rec.consistent) inconsistent.push({ accountId: r.account_id as string, ...rec });
  }
  return { checked: rows.length, inconsistent };
}
