/**
 * The `pg` pool behind the ledger's money-moving transactions. Reads and admin writes go
 * through Prisma (src/db/prisma.ts); the charge path uses plain SQL on this pool because one
 * server-side round trip per statement costs far less than an interactive Prisma transaction
 * (see docs/architecture notes: ~4x throughput).
 */
import pg from 'pg';
import { outboxCommitted, takeOutboxWritten } from '../outbox/signal.js';

/** A client inside an open transaction. */
export type Tx = pg.PoolClient;

/**
 * The session setting every ledger connection starts with (PostgreSQL's `options` startup
 * parameter): cached generic plans for its prepared statements.
 *
 * Why: PostgreSQL's plan cache re-plans a prepared statement on every execution while its
 * generic plan is estimated dearer than the custom plans (PostgreSQL docs, PREPARE, "plan_cache_mode").
 * The charge path's statements pass their rows as arrays joined through `unnest`, which a
 * generic plan estimates at 10 rows and a custom plan at the array's length, so PostgreSQL kept
 * planning them afresh: pg_stat_statements (bench/pg-stat-statements.sh) showed ~0.8 ms of
 * planning per execution of the charge-state read alone, seven times its execution, and planning
 * was about 40 % of PostgreSQL's time per spread charge. The statements were written for generic
 * plans (primary-key and unique-index probes per array element; `bench/charge-profile.ts
 * --plans` audits every charge path's generic plans for sequential scans and wasteful filters).
 */
export const LEDGER_SESSION_OPTIONS = '-c plan_cache_mode=force_generic_plan';

/**
 * `databaseUrl` with {@link LEDGER_SESSION_OPTIONS} appended to its `options` parameter (a URL's
 * own options are kept, before ours).
 */
export function withLedgerSessionOptions(databaseUrl: string): string {
  const url = new URL(databaseUrl);
  const own = url.searchParams.get('options');
  url.searchParams.set('options', own ? `${own} ${LEDGER_SESSION_OPTIONS}` : LEDGER_SESSION_OPTIONS);
  return url.toString();
}

/**
 * Creates the ledger's pg pool: `max` connections to `databaseUrl`, each started with
 * {@link LEDGER_SESSION_OPTIONS}.
 */
export function createPgPool(databaseUrl: string, max = 20): pg.Pool {
  const pool = new pg.Pool({ connectionString: withLedgerSessionOptions(databaseUrl), max, idleTimeoutMillis: 30_000 });
  // An idle client's error (server restart) must not crash the process; the next query reconnects.
  pool.on('error', () => undefined);
  return pool;
}

const RETRYABLE = new Set(['40001', '40P01']); // serialization_failure, deadlock_detected

/**
 * Runs `fn` inside one READ COMMITTED transaction: COMMIT when it resolves, ROLLBACK when it
 * throws (the error is rethrown unchanged). Retries the whole function up to 3 times on a
 * serialization failure or deadlock, which PostgreSQL reports before anything was committed.
 * After a COMMIT of a transaction that wrote outbox rows it signals the outbox relay
 * (src/outbox/signal.ts).
 * @throws whatever `fn` throws, or the database error.
 */
export async function withTransaction<T>(pool: pg.Pool, fn: (tx: Tx) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken = false;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      if (takeOutboxWritten(client)) outboxCommitted();
      return result;
    } catch (err) {
      takeOutboxWritten(client);
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true;
      }
      const code = (err as { code?: string }).code;
      if (code && RETRYABLE.has(code) && attempt < 3) continue;
      throw err;
    } finally {
      client.release(broken);
    }
  }
}

/** Converts a pg int8/numeric text value (or null) to bigint (or null). */
export function toBigIntOrNull(v: unknown): bigint | null {
  if (v === null || v === undefined) return null;
  return BigInt(v as string | number | bigint);
}

/** Converts a pg int8 text value to bigint. @throws Error when null. */
export function toBigInt(v: unknown): bigint {
  if (v === null || v === undefined) throw new Error('expected a bigint value, got null');
  return BigInt(v as string | number | bigint);
}
