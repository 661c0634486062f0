/**
 * How many rows a read path takes from one table under the ledger pool's generic plans
 * (db/pg.ts LEDGER_SESSION_OPTIONS: plan_cache_mode=force_generic_plan), counted by PostgreSQL
 * itself: the checks that a statement is bounded by its index, not by reading an account's rows.
 * rowsReadUnderGenericPlans counts one read path on a fresh connection; OneTransactionPool and
 * rowsReadInTransaction count each of many operations run by the services inside one transaction
 * (history-growth-audit.test.ts, neighbour-growth-audit.test.ts).
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

/**
 * A pg.Pool of one connection, all of whose transactions are savepoints of one transaction of
 * `client` (BEGIN, COMMIT and ROLLBACK become SAVEPOINT, RELEASE SAVEPOINT and ROLLBACK TO
 * SAVEPOINT; a COMMIT answers with its usual command tag, as withTransaction checks). Connections
 * are handed out one at a time, as a pool of 1. The services run on it unchanged while one
 * transaction's statistics ({@link rowsReadInTransaction}) count everything they read, and a
 * ROLLBACK of `client` at the end takes every row they wrote away.
 */
export class OneTransactionPool {
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly client: pg.PoolClient) {}

  /** The one connection, once the previous holder released it; its BEGIN/COMMIT/ROLLBACK are savepoints. */
  async connect(): Promise<pg.PoolClient> {
    const prev = this.queue;
    let free!: () => void;
    this.queue = new Promise<void>((resolve) => (free = resolve));
    await prev;
    const c = this.client;
    const query = (q: unknown, ...rest: unknown[]): Promise<unknown> => {
      const text = typeof q === 'string' ? q : (q as { text?: string } | null)?.text;
      if (text === 'BEGIN') return c.query('SAVEPOINT op');
      if (text === 'COMMIT') return c.query('RELEASE SAVEPOINT op').then((r) => ({ ...r, command: 'COMMIT' }));
      if (text === 'ROLLBACK') return c.query('ROLLBACK TO SAVEPOINT op');
      return (c.query as (...a: unknown[]) => Promise<unknown>)(q, ...rest);
    };
    return new Proxy(c, {
      get(target, prop) {
        if (prop === 'query') return query;
        if (prop === 'release') return () => free();
        const v = Reflect.get(target, prop) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  }

  /** One query on the connection, as pg.Pool#query. */
  async query(...args: unknown[]): Promise<unknown> {
    const c = await this.connect();
    try {
      return await (c.query as (...a: unknown[]) => Promise<unknown>)(...args);
    } finally {
      c.release();
    }
  }
}

/**
 * What `c`'s open transaction has read so far from each of `tables`, as PostgreSQL counted it:
 * key `<table>` the heap rows (pg_stat_xact_user_tables seq_tup_read + idx_tup_fetch), `<table>
 * (index entries)` the entries its indexes returned (pg_stat_get_xact_tuples_returned: index-only
 * scans read no heap row), `<table> (blocks)` the heap and index pages touched
 * (pg_stat_get_xact_blocks_fetched). The deferred constraints of the changes so far (the balance
 * invariant) run first, so they are counted with the changes. Subtract two calls' maps for what
 * happened between them.
 */
export async function rowsReadInTransaction(c: pg.PoolClient, tables: readonly string[]): Promise<Map<string, number>> {
  await c.query('SET CONSTRAINTS ALL IMMEDIATE');
  await c.query('SET CONSTRAINTS ALL DEFERRED');
  const { rows } = await c.query(
    `SELECT t.relname, COALESCE(t.seq_tup_read, 0) + COALESCE(t.idx_tup_fetch, 0) AS t,
            (SELECT COALESCE(sum(pg_stat_get_xact_tuples_returned(x.indexrelid)), 0) FROM pg_index x WHERE x.indrelid = t.relid) AS i,
            pg_stat_get_xact_blocks_fetched(t.relid)
              + (SELECT COALESCE(sum(pg_stat_get_xact_blocks_fetched(x.indexrelid)), 0) FROM pg_index x WHERE x.indrelid = t.relid) AS b
       FROM pg_stat_xact_user_tables t WHERE t.relname = ANY($1)`,
    [tables],
  );
  const out = new Map<string, number>();
  for (const r of rows) {
    out.set(`${r.relname}`, Number(r.t));
    out.set(`${r.relname} (index entries)`, Number(r.i));
    out.set(`${r.relname} (blocks)`, Number(r.b));
  }
  return out;
}

/**
 * Updates of `c`'s open transaction so far that were not HOT, per table of `tables`
 * (pg_stat_xact_user_tables n_tup_upd - n_tup_hot_upd). Each such update leaves the row's old
 * version with entries of its own in every index of the table, and within one transaction they
 * are not pruned: an index scan over the row returns one entry per version
 * (pg_stat_get_xact_tuples_returned counts them before the visibility check). Whether an update
 * is HOT depends on the free space left on the row's page, so on where the row landed. Subtract
 * two calls' maps for what happened between them.
 */
export async function nonHotUpdatesInTransaction(c: pg.PoolClient, tables: readonly string[]): Promise<Map<string, number>> {
  const { rows } = await c.query(
    `SELECT relname, COALESCE(n_tup_upd, 0) - COALESCE(n_tup_hot_upd, 0) AS n FROM pg_stat_xact_user_tables WHERE relname = ANY($1)`,
    [tables],
  );
  return new Map(rows.map((r: { relname: string; n: string }) => [r.relname, Number(r.n)]));
}
