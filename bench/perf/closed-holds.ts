/**
 * History of closed holds for the benchmarks (issue #6, scenario 4).
 *
 * A ledger in use has a reservations table full of RELEASED holds; a fresh bench database has
 * none, so the plans PostgreSQL caches for the hold lookups (generic plans of named statements
 * and of `balances_changed`) are built on an empty table and stay sequential scans while the
 * table grows during the measurement (4.7 scans reading ~1,300 rows per operation in a 600-job
 * profile). Seeding closed holds before the ANALYZE gives the planner the statistics of a ledger
 * in use, exactly as the warm-up does for usage events.
 *
 * RELEASED holds with nothing consumed move no credit: the balances and the ledger invariant are
 * unchanged (holds are not part of `total`, and RESERVE/RELEASE entries are not needed for it).
 */
import type pg from 'pg';

/**
 * Inserts `perAccount` RELEASED 1-credit holds, created 1 to `perAccount` days ago, for every
 * account of the database that has none yet.
 * @returns the number of holds inserted.
 */
export async function seedClosedHolds(db: pg.Pool | pg.Client, perAccount: number): Promise<number> {
  const { rowCount } = await db.query(
    `INSERT INTO reservations (id, account_id, amount_micro_credits, consumed_micro_credits, status, expires_at, created_at, closed_at, idempotency_key, request_hash)
     SELECT gen_random_uuid(), a.id, 1000000, 0, 'RELEASED', now() - (d || ' days')::interval + interval '5 minutes',
            now() - (d || ' days')::interval, now() - (d || ' days')::interval + interval '1 minute', 'bench-closed-hold-' || d, 'bench'
       FROM accounts a CROSS JOIN generate_series(1, $1::int) AS d
      WHERE NOT EXISTS (SELECT 1 FROM reservations r WHERE r.account_id = a.id)`,
    [perAccount],
  );
  return rowCount ?? 0;
}
