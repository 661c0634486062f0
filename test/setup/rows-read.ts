/**
 * How many rows a read path takes from one table under the ledger pool's generic plans
 * (db/pg.ts LEDGER_SESSION_OPTIONS: plan_cache_mode=force_generic_plan), counted by PostgreSQL
 * itself: the checks that a statement is bounded by its index, not by reading an account's rows.
 */
import type pg from 'pg';
import { expect } from 'vitest';
import { createTestServices } from './services.js';

/**
 * Runs `read` `times` times (default 6: a named or unnamed statement is on its generic plan by the
 * sixth execution) on a fresh connection of a one-connection ledger pool, inside one transaction
 * rolled back at the end, and returns the rows that transaction read from `table`
 * (pg_stat_xact_user_tables: seq_tup_read + idx_tup_fetch). A connection of its own because
 * PostgreSQL 15's pg_stat_xact_* also count the backend's earlier transactions whose statistics
 * were not flushed yet: the connection must have read nothing else.
 * @param read gets the connection, as the pool most read services take and as the client
 *   (db/pg.ts Tx) the in-transaction ones take, and the run's index; its own expectations check
 *   what it read.
 * @throws when the connection does not plan generically, or what `read` throws.
 */
export async function rowsReadUnderGenericPlans(table: string, read: (db: pg.Pool, client: pg.PoolClient, run: number) => Promise<void>, times = 6): Promise<number> {
  const fresh = createTestServices(1);
  const client = await fresh.pool.connect();
  try {
    expect((await client.query('SHOW plan_cache_mode')).rows[0].plan_cache_mode).toBe('force_generic_plan');
    await client.query('BEGIN');
    for (let i = 0; i < times; i++) await read(client as unknown as pg.Pool, client, i);
    const { rows } = await client.query(
      'SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) AS rows_read FROM pg_stat_xact_user_tables WHERE relname = $1',
      [table],
    );
    await client.query('ROLLBACK');
    return Number(rows[0]?.rows_read ?? 0);
  } finally {
    client.release();
    await fresh.close();
  }
}
