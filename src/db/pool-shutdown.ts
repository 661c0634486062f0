/**
 * Ending a `pg` pool at shutdown without waiting for work that the grace period already gave up on.
 *
 * `pool.end()` resolves only once every checked-out client is released. A job or a request still
 * waiting in PostgreSQL when SHUTDOWN_GRACE_MS is over (a row lock held elsewhere, a slow
 * statement) keeps its client until its statement ends, which can be PG_STATEMENT_TIMEOUT_MS
 * later (30 s by default, or never without one): the process stayed alive that long after its
 * deadline, and its session kept the locks it held. Here the pool gets {@link STUCK_WORK_WAIT_MS}
 * to end; then the sessions still checked out are terminated (`pg_terminate_backend`: PostgreSQL
 * rolls their transactions back and frees their locks), and the caller exits. Nothing is lost:
 * a cut job is re-run by BullMQ's stalled check and every money-moving write is idempotent and
 * one transaction (test/cycles/worker-shutdown.test.ts); a cut request was never answered, and its
 * client retries it with the same idempotency key.
 */
import pg from 'pg';
import type { Logger } from 'pino';
import { settlesWithin } from './redis-close.js';

/**
 * How long, once the shutdown grace period is over, the database work still running may take to
 * end (commit or roll back) before its sessions are terminated, in milliseconds. Also the bound
 * of the termination itself.
 */
export const STUCK_WORK_WAIT_MS = 2_000;

/** The backend process ids (`pg_backend_pid()`) of the clients of a pool that are checked out now. */
export type CheckedOutSessions = () => number[];

/**
 * Starts following which clients of `pool` are checked out (pg-pool's `acquire`, `release` and
 * `remove` events), so that a shutdown can name and terminate their sessions. Call it right
 * after creating the pool, before any client is checked out.
 * @returns a function listing their backend process ids (node-postgres's `processID` of each).
 */
export function trackCheckedOutSessions(pool: pg.Pool): CheckedOutSessions {
  const out = new Set<pg.PoolClient>();
  pool.on('acquire', (client) => out.add(client));
  pool.on('release', (_err, client) => out.delete(client));
  pool.on('remove', (client) => out.delete(client as pg.PoolClient));
  return () => [...out].map((c) => (c as unknown as { processID: number | null }).processID).filter((pid): pid is number => typeof pid === 'number');
}

/**
 * Ends `pool` for shutdown (module comment): waits up to `waitMs` (default
 * {@link STUCK_WORK_WAIT_MS}) for its clients to be released; then terminates the sessions of the
 * clients still checked out (over one new connection with the pool's own settings, bounded by
 * `waitMs`), logs them, and waits up to `waitMs` more for the pool to end. Never throws; resolves
 * within about 3 × `waitMs` (when the database does not answer, the caller exits anyway and
 * PostgreSQL rolls back a session whose client is gone once it notices).
 * @returns true when the pool ended in time, false when work was still holding a client.
 */
export async function endPoolWithin(pool: pg.Pool, checkedOut: CheckedOutSessions, log: Logger, waitMs = STUCK_WORK_WAIT_MS): Promise<boolean> {
  const ended = pool.end();
  if (await settlesWithin(ended, waitMs)) return true;
  const pids = checkedOut();
  if (pids.length > 0) {
    const client = new pg.Client({ connectionString: pool.options.connectionString, connectionTimeoutMillis: waitMs });
    client.on('error', () => undefined);
    const terminated = client
      .connect()
      .then(() => client.query<{ n: number }>(`SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM unnest($1::int[]) AS pid`, [pids]))
      .then(({ rows }) => rows[0]!.n);
    terminated.catch(() => undefined);
    const answered = await settlesWithin(terminated, waitMs);
    const count = answered ? await terminated.catch((err: Error) => `failed: ${err.message}`) : 'no answer';
    log.warn({ sessions: pids, terminated: count, waitMs }, 'shutdown: database work still running after the grace period; its sessions were terminated (their transactions roll back; cut jobs are re-run by the stalled check)');
    void client.end().catch(() => undefined);
  }
  return settlesWithin(ended, waitMs);
}
