/**
 * A long ledger history made with SQL, for the benches that measure what an account's past costs
 * its present (bench/long-history.ts, bench/reconcile-pass.ts).
 */
import type pg from 'pg';

/**
 * Inserts `entries` ADJUST ledger entries of +1000 and -1000 micro-credits in turn (an even count
 * sums to zero, so the account's total and the ledger invariant stay as they were), note 'bench
 * history', dated evenly over `spanDays` days from `from`, each carrying the account's current
 * total as its balance-after; in statements of at most 250,000 rows.
 * @param pool a pool or client of the bench's database
 * @param accountId the account (uuid); its balance row must exist
 * @param from the first entry's instant
 * @param entries how many entries (0 inserts none)
 * @param spanDays the days the entries are spread over
 * @throws the database error
 */
export async function insertLedgerHistory(pool: pg.Pool, accountId: string, from: Date, entries: number, spanDays: number): Promise<void> {
  const chunk = 250_000;
  for (let done = 0; done < entries; done += chunk) {
    const n = Math.min(chunk, entries - done);
    await pool.query(
      `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, note, created_at)
       SELECT gen_random_uuid(), $1, 'ADJUST', CASE WHEN (g % 2) = 0 THEN 1000 ELSE -1000 END, b.total_micro_credits, 'bench history',
              $2::timestamptz + (($3::bigint + g) * interval '1 second' * ($6::numeric * 86400.0 / $4::bigint))
         FROM generate_series(0, $5::bigint - 1) AS g, balances b WHERE b.account_id = $1`,
      [accountId, from, done, Math.max(entries, 1), n, spanDays],
    );
  }
}
