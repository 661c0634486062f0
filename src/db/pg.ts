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

/** Creates the ledger's pg pool. `max` is the number of connections. */
export function createPgPool(databaseUrl: string, max = 20): pg.Pool {
  const pool = new pg.Pool({ connectionString: databaseUrl, max, idleTimeoutMillis: 30_000 });
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
