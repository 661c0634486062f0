/**
 * The `pg` pool behind the ledger's money-moving transactions. Reads and admin writes go
 * through Prisma (src/db/prisma.ts); the charge path uses plain SQL on this pool because one
 * server-side round trip per statement costs far less than an interactive Prisma transaction
 * (see docs/architecture notes: ~4x throughput).
 */
import type { Writable } from 'node:stream';
import pg from 'pg';
import { outboxCommitted, takeOutboxWritten } from '../outbox/signal.js';
import type { Env } from '../config/env.js';

/** A client inside an open transaction. */
export type Tx = pg.PoolClient;

// Every Date this process passes to PostgreSQL through node-postgres (any pool, this module's or
// another's: the setting is the library's) is written in UTC ("…+00:00"). By default
// node-postgres writes it in the process's local time with the offset in whole minutes, so where
// the zone's offset then had seconds (local mean time before ~1900 almost everywhere,
// Africa/Monrovia until 1972: -00:44:30) the instant moved by those seconds, e.g. a usage event's
// occurredAt of 1900-01-31T23:59:55Z was stored as 1900-02-01T00:00:05Z under TZ=Asia/Kolkata.
// The columns are all timestamptz, so UTC is exact (test/integration/usage-rollups.test.ts).
// Prisma's adapter formats its dates in UTC itself.
pg.defaults.parseInputDatesAsUTC = true;

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
 * The planner cost every ledger connection starts with, before the database URL's own options
 * (so an operator's `-c random_page_cost=…` there wins): `random_page_cost = 1.1`, the value the
 * PostgreSQL docs suggest for storage with a low random-read cost such as SSDs, and for data that
 * is mostly cached ("Planner Cost Constants"); the default, 4.0, models spinning disks.
 *
 * Why: the charge path's statements join arrays through `unnest`, which a generic plan estimates
 * at 10 rows (see {@link LEDGER_SESSION_OPTIONS}). With the default cost, 10 index probes look
 * dearer than a sequential scan and hash join of a table of up to a few thousand rows, so in a
 * deployment of 1,000 accounts every charge transaction read the whole `accounts`, `balances` and
 * `credit_batches` tables (twice for the latter two), at 2,000 still `balances`, while it needs
 * 1-4 rows of each (at 3,000 no more). Measured with `bench/charge-profile.ts --batch 4 --events 8000 --accounts 1000` (one
 * account, 4 events per transaction, after ANALYZE): PostgreSQL CPU 0.790 → 0.435 ms per event,
 * wall 1.076 → 0.710 ms; those scans gone (bench/README.md, "Small deployments").
 */
export const LEDGER_PLANNER_OPTIONS = '-c random_page_cost=1.1';

/**
 * Time limits PostgreSQL enforces on every session of a ledger pool (PostgreSQL docs, "Client
 * Connection Defaults"); 0 or absent = no limit. In milliseconds.
 */
export interface LedgerSessionLimits {
  /** `statement_timeout`: a statement (lock waits included) running longer is cancelled (57014). */
  statementTimeoutMs?: number;
  /** `idle_in_transaction_session_timeout`: a transaction idle longer ends its session (25P03), which rolls it back and frees its locks. */
  idleInTransactionTimeoutMs?: number;
  /**
   * Client side (node-postgres `query_timeout`): a statement sent and not answered for this long
   * gives its connection up. In pipeline mode node-postgres then destroys the socket, so the
   * statement and every one pipelined behind it fail with a lost connection (see
   * {@link isDatabaseUnavailable}), PostgreSQL rolls the transaction back when it notices the
   * closed socket, and pg-pool discards the client. For a server or network that went silent,
   * which PostgreSQL's own limits cannot end. Should be longer than `statementTimeoutMs`.
   */
  queryTimeoutMs?: number;
  /** Client side (pg-pool `connectionTimeoutMillis`): longest `pool.connect()` waits for a new connection or a free one. */
  connectTimeoutMs?: number;
}

/**
 * Idle time after which the kernel starts probing a pool connection (SO_KEEPALIVE, node-postgres
 * `keepAlive` / `keepAliveInitialDelayMillis`; milliseconds), for both pools. An idle connection
 * whose peer vanished (a host lost without a reset) or that a NAT or firewall dropped is then
 * found dead by the kernel (Linux: 9 probes 75 s apart, net.ipv4.tcp_keepalive_*) and the pool
 * replaces it, instead of handing it to the next request. PG_QUERY_TIMEOUT_MS covers a
 * connection that goes silent while a statement waits; this covers the idle ones between.
 */
export const TCP_KEEPALIVE_INITIAL_DELAY_MS = 10_000;

/** What the client adds to the statement limit before it gives a silent connection up, when PG_QUERY_TIMEOUT_MS is not set (milliseconds). */
export const QUERY_TIMEOUT_MARGIN_MS = 15_000;

/**
 * The limits the environment sets (PG_STATEMENT_TIMEOUT_MS, PG_IDLE_IN_TRANSACTION_TIMEOUT_MS,
 * PG_QUERY_TIMEOUT_MS: default statement limit + {@link QUERY_TIMEOUT_MARGIN_MS}, or none when
 * there is no statement limit; PG_CONNECT_TIMEOUT_MS), for {@link createPgPool}.
 */
export function ledgerSessionLimits(
  env: Pick<Env, 'PG_STATEMENT_TIMEOUT_MS' | 'PG_IDLE_IN_TRANSACTION_TIMEOUT_MS' | 'PG_QUERY_TIMEOUT_MS' | 'PG_CONNECT_TIMEOUT_MS'>,
): LedgerSessionLimits {
  const queryTimeoutMs = env.PG_QUERY_TIMEOUT_MS ?? (env.PG_STATEMENT_TIMEOUT_MS ? env.PG_STATEMENT_TIMEOUT_MS + QUERY_TIMEOUT_MARGIN_MS : 0);
  return {
    statementTimeoutMs: env.PG_STATEMENT_TIMEOUT_MS,
    idleInTransactionTimeoutMs: env.PG_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    queryTimeoutMs,
    connectTimeoutMs: env.PG_CONNECT_TIMEOUT_MS,
  };
}

/**
 * `databaseUrl` with the session's `limits`, {@link LEDGER_PLANNER_OPTIONS} and
 * {@link LEDGER_SESSION_OPTIONS} in its `options` parameter: the limits and the planner cost
 * first, then the URL's own options (so a limit or cost the URL sets wins: the last `-c` of a
 * setting is the one PostgreSQL applies), then the plan cache mode.
 */
export function withLedgerSessionOptions(databaseUrl: string, limits: LedgerSessionLimits = {}): string {
  const url = new URL(databaseUrl);
  const parts: string[] = [];
  if (limits.statementTimeoutMs) parts.push(`-c statement_timeout=${limits.statementTimeoutMs}`);
  if (limits.idleInTransactionTimeoutMs) parts.push(`-c idle_in_transaction_session_timeout=${limits.idleInTransactionTimeoutMs}`);
  parts.push(LEDGER_PLANNER_OPTIONS);
  const own = url.searchParams.get('options');
  if (own) parts.push(own);
  parts.push(LEDGER_SESSION_OPTIONS);
  url.searchParams.set('options', parts.join(' '));
  return url.toString();
}

/**
 * `databaseUrl` with {@link LEDGER_PLANNER_OPTIONS} in its `options` parameter, before the URL's
 * own options (a cost the URL sets wins, as in {@link withLedgerSessionOptions}): the session of
 * the Prisma client's connections (db/prisma.ts), which keeps PostgreSQL's default plan cache
 * mode and has no session limits.
 *
 * Why: with the default random_page_cost (4.0) the planner served a filtered page of
 * Account.usage by walking usage_events_seq_key (every account's events, newest first) and
 * dropping the rows of other accounts and other values, where the index of the filter
 * ((account_id, agent_id, seq), ...) reads the page itself: it costs each row of that index as a
 * random read, the walk as sequential ones, and takes the matching rows as spread evenly over the
 * walk. For a value last used a year ago (an agent, a user, a retired model) the walk read every
 * event since: 36,768 rows for a page of 50 at 20,000 events of an account holding half the
 * table, 51 at 1.1 (test/api/pagination-cost-audit.test.ts; issue #6).
 */
export function withPlannerOptions(databaseUrl: string): string {
  const url = new URL(databaseUrl);
  const own = url.searchParams.get('options');
  url.searchParams.set('options', own ? `${LEDGER_PLANNER_OPTIONS} ${own}` : LEDGER_PLANNER_OPTIONS);
  return url.toString();
}

/**
 * Creates the ledger's pg pool: `max` connections to `databaseUrl`, each started with
 * {@link LEDGER_SESSION_OPTIONS}, {@link LEDGER_PLANNER_OPTIONS} and the time `limits` (the processes pass
 * {@link ledgerSessionLimits} of their environment; benchmarks and tests may leave them out:
 * PostgreSQL's session limits and the client's query and connect timeouts), in node-postgres's
 * pipeline mode: a query is written to the socket as soon as it is
 * asked for, not when the previous one has been answered
 * (https://node-postgres.com/features/pipelining; PostgreSQL docs, "Pipeline Mode", libpq 34.5).
 * Code that awaits each query before the next behaves exactly as without it; code that asks for
 * several queries before awaiting them gets them executed in order in ONE round trip
 * ({@link withTransaction}: BEGIN goes with the transaction's first statement, and a
 * {@link PipelinedCommit}'s writes go with its COMMIT). Each query keeps its own Sync, so a
 * failed statement does not stop the later ones of the pipeline from being executed: inside a
 * transaction they fail with 25P02 ("current transaction is aborted") and a COMMIT rolls back.
 * Portal-keeping queries (pg-cursor, the `rows` option) are refused in this mode; the ledger
 * pool has none. Each connection writes what it is asked for within one tick in one socket write
 * ({@link coalesceWrites}) and uses TCP keepalive ({@link TCP_KEEPALIVE_INITIAL_DELAY_MS}).
 */
export function createPgPool(databaseUrl: string, max = 20, limits: LedgerSessionLimits = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString: withLedgerSessionOptions(databaseUrl, limits),
    max,
    idleTimeoutMillis: 30_000,
    pipeline: true,
    keepAlive: true,
    keepAliveInitialDelayMillis: TCP_KEEPALIVE_INITIAL_DELAY_MS,
    ...(limits.queryTimeoutMs ? { query_timeout: limits.queryTimeoutMs } : {}),
    ...(limits.connectTimeoutMs ? { connectionTimeoutMillis: limits.connectTimeoutMs } : {}),
  });
  pool.on('connect', (client) => {
    coalesceWrites(client);
    keepClientErrorsOnPool(pool, client);
  });
  // An idle client's error (server restart) must not crash the process; the next query reconnects.
  // The processes log them ({@link logLostConnections}).
  pool.on('error', () => undefined);
  return pool;
}

/**
 * The `statement_timeout` a session of `pool` really runs with, in milliseconds (0 = none), as
 * PostgreSQL reports it (`pg_settings`, unit ms): the environment's PG_STATEMENT_TIMEOUT_MS, unless
 * DATABASE_URL's own `options` set another (the URL's `-c` comes later and wins, see
 * {@link withLedgerSessionOptions}); without either, the role's, the database's or the server's.
 * @throws the driver's error when the query fails (the database unreachable, for one).
 */
export async function readSessionStatementTimeoutMs(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ setting: string }>(`SELECT setting FROM pg_settings WHERE name = 'statement_timeout'`);
  return Number(rows[0]!.setting);
}

/**
 * The warning a process logs at start when the client's query timeout (`queryTimeoutMs`,
 * PG_QUERY_TIMEOUT_MS or its default; 0 = none) would give up a statement PostgreSQL is still
 * allowed to run: the session's `statement_timeout` (`statementTimeoutMs`, from
 * {@link readSessionStatementTimeoutMs}) is 0 or not shorter. parseEnv refuses that combination
 * for PG_STATEMENT_TIMEOUT_MS itself; this catches a limit set elsewhere (DATABASE_URL's options,
 * ALTER ROLE / ALTER DATABASE ... SET statement_timeout). Then a charge that waits on a locked
 * account longer than the query timeout loses its connection (the client answers
 * DATABASE_UNAVAILABLE while PostgreSQL may still commit it; a retry with the same idempotency key
 * returns that result), instead of PostgreSQL cancelling it cleanly first.
 * @returns one sentence, or null when the limits are consistent (or the client has none).
 */
export function sessionTimeoutWarning(statementTimeoutMs: number, queryTimeoutMs: number): string | null {
  if (!queryTimeoutMs || (statementTimeoutMs > 0 && statementTimeoutMs < queryTimeoutMs)) return null;
  return (
    `PostgreSQL's statement_timeout for the ledger's sessions is ${statementTimeoutMs ? `${statementTimeoutMs} ms` : '0 (no limit)'}, ` +
    `not shorter than the client's query timeout of ${queryTimeoutMs} ms (PG_QUERY_TIMEOUT_MS, or PG_STATEMENT_TIMEOUT_MS + ${QUERY_TIMEOUT_MARGIN_MS} ms): ` +
    `a statement PostgreSQL still runs (a charge waiting on a locked account) loses its connection instead of being cancelled. ` +
    `It is set by DATABASE_URL's options, the role or the database: remove it there, or set PG_QUERY_TIMEOUT_MS above it (0: no client limit).`
  );
}

/**
 * For the process entry points (src/main.ts, workers/main.ts): reads the session's
 * statement_timeout through `pool` and logs {@link sessionTimeoutWarning} for `limits` as a
 * warning; a failed read is logged as a warning too (the process starts either way).
 */
export async function warnAboutSessionTimeouts(pool: pg.Pool, limits: LedgerSessionLimits, log: { warn(obj: object, msg: string): void }): Promise<void> {
  try {
    const warning = sessionTimeoutWarning(await readSessionStatementTimeoutMs(pool), limits.queryTimeoutMs ?? 0);
    if (warning) log.warn({ queryTimeoutMs: limits.queryTimeoutMs }, warning);
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not read PostgreSQL statement_timeout');
  }
}

/**
 * Logs, as a warning through `log` (pino's `warn(object, message)`), every connection error
 * `pool` reports ({@link keepClientErrorsOnPool}; an idle client's failure): such a loss is the
 * database's, not a bug, and the pool reconnects on the next query. For the process entry points
 * (src/main.ts, workers/main.ts).
 */
export function logLostConnections(pool: pg.Pool, log: { warn(obj: object, msg: string): void }): void {
  pool.on('error', (err) => log.warn({ err: err.message, code: (err as { code?: string }).code }, 'postgres connection lost; the pool reconnects on the next query'));
}

/**
 * Gives `client` an 'error' listener for its whole life that re-emits the error on `pool`.
 *
 * Why: node-postgres emits 'error' on a client whose connection fails while no statement of it
 * is running (PostgreSQL's FATAL 57P01 "terminating connection due to administrator command"
 * after `pg_terminate_backend`, a restart or a failover, or a reset socket), and pg-pool listens
 * for that only while the client is idle in the pool: it removes its listener when the client
 * is checked out (pg-pool `_acquireClient`). An 'error' event without a listener throws
 * (Node.js docs, events: "Error events"), so a connection that died under a checked-out client
 * between two statements (a transaction deciding in memory, the outbox relay, a webhook
 * delivery) killed the whole process (test/cycles/server-faults.test.ts). The statements of
 * that client fail on their own with the same error (node-postgres `_errorAllQueries`), and
 * pg-pool discards a client that is no longer queryable when it is released, so this listener
 * only has to keep the process alive and let the pool's 'error' listeners log it.
 */
export function keepClientErrorsOnPool(pool: pg.Pool, client: pg.PoolClient): void {
  client.on('error', (err) => {
    pool.emit('error', err, client);
  });
}

/**
 * SQLSTATEs that mean the connection or the server is gone, refusing or out of time, not that the
 * statement was wrong (PostgreSQL docs, Appendix A): admin_shutdown, crash_shutdown,
 * cannot_connect_now, too_many_connections, configuration_limit_exceeded and
 * idle_in_transaction_session_timeout; with STATEMENT_TIMEOUT_SQLSTATES below (query_canceled by a
 * statement_timeout, since the ledger never cancels its own statements; lock_not_available).
 */
const CONNECTION_SQLSTATES = new Set(['57P01', '57P02', '57P03', '53300', '53400', '25P03']);

/** The SQLSTATEs of PostgreSQL giving up on a statement that ran or waited too long: 57014 (statement_timeout), 55P03 (lock_timeout). */
const STATEMENT_TIMEOUT_SQLSTATES = new Set(['57014', '55P03']);

/**
 * Whether `err` is PostgreSQL giving up on a statement that waited or ran too long
 * (statement_timeout: 57014 query_canceled; lock_timeout: 55P03 lock_not_available): the
 * database is up, so running the same work again at once would most likely wait as long again.
 */
export function isStatementTimeout(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && STATEMENT_TIMEOUT_SQLSTATES.has(code);
}

/** Socket errors (Node.js docs, "Common system errors") of a database connection. */
const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

/** Messages node-postgres and pg-pool throw when a connection is lost or cannot be had. */
const CONNECTION_MESSAGES = [
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
  'timeout exceeded when trying to connect',
  'Client was closed and is not queryable',
  'Query read timeout', // query_timeout (LedgerSessionLimits.queryTimeoutMs): no answer, connection given up
];

/** Prisma's codes for an unreachable, closed or exhausted database (Prisma docs, "Error message reference"). */
const PRISMA_CONNECTION_CODES = new Set(['P1001', 'P1002', 'P1008', 'P1017', 'P2024']);

/**
 * Whether `err` (or an error it wraps in `cause`, up to 5 deep) says the database could not be
 * reached, dropped the connection or ran out of time (a session limit of
 * {@link LedgerSessionLimits}), rather than that a statement was wrong: SQLSTATE class 08
 * (connection exception), one of CONNECTION_SQLSTATES or STATEMENT_TIMEOUT_SQLSTATES, a socket error, node-postgres' and
 * pg-pool's lost-connection messages, or Prisma's connection error codes.
 *
 * Such a failure is the database's, not the caller's and not a bug: the API answers it as
 * UNAVAILABLE (src/graphql/errors.ts), and the caller retries with the same idempotency key,
 * which replays a charge that did commit (the COMMIT's answer may be what was lost) and charges
 * one that did not exactly once.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 5 && e && typeof e === 'object'; depth++) {
    const { code, message, cause } = e as { code?: unknown; message?: unknown; cause?: unknown };
    if (typeof code === 'string') {
      if (code.startsWith('08') && code.length === 5) return true;
      if (CONNECTION_SQLSTATES.has(code) || STATEMENT_TIMEOUT_SQLSTATES.has(code) || CONNECTION_ERRNOS.has(code) || PRISMA_CONNECTION_CODES.has(code)) return true;
    }
    if (typeof message === 'string' && CONNECTION_MESSAGES.some((m) => message.startsWith(m))) return true;
    e = cause;
  }
  return false;
}

/** The part of a pooled client this module reaches into: node-postgres's connection and its socket. */
interface ClientWithSocket {
  connection?: { stream?: Writable & { write: (...args: never[]) => boolean } };
}

/**
 * Makes `client`'s socket write everything node-postgres asks for within one tick of the event
 * loop (the current macrotask and the promise continuations it triggers) as ONE write: the first
 * write of a tick corks the socket and a `process.nextTick` uncorks it (Node.js docs,
 * `writable.cork()`: "uncork in process.nextTick" to batch the writes of one tick).
 *
 * Why: in pipeline mode a transaction asks for several statements before it awaits any, but
 * node-postgres corks only each statement's own Parse/Bind/Execute/Sync, so each statement was
 * its own `writev` system call and its own TCP segment for PostgreSQL to read: a server CPU
 * profile of spread charges (bench/HISTORY.md) spent ~11 % of all samples in those `writev`
 * calls. Nothing waits longer: an answer can only arrive in a later tick, after the uncork.
 * Measured (bench/HISTORY.md, "Earlier results (medians of f394077)"): a group or batch transaction is 2 writes instead of
 * 5-7, but neither throughput nor the server's time in `writev` moved beyond this machine's noise.
 * A client without a socket (none in practice) is left as it is.
 */
export function coalesceWrites(client: pg.PoolClient): void {
  const stream = (client as unknown as ClientWithSocket).connection?.stream;
  if (!stream || typeof stream.cork !== 'function') return;
  const write = stream.write;
  let corked = false;
  const uncork = () => {
    corked = false;
    stream.uncork();
  };
  stream.write = (...args: never[]): boolean => {
    if (!corked) {
      corked = true;
      stream.cork();
      process.nextTick(uncork);
    }
    return write.apply(stream, args);
  };
}

const RETRYABLE = new Set(['40001', '40P01']); // serialization_failure, deadlock_detected

/**
 * What a transaction function returns when it has asked for its last writes without awaiting
 * them: {@link withTransaction} sends COMMIT right behind them (pipeline mode: writes and COMMIT
 * in one round trip), waits for all of them, and only then calls `result()`.
 *
 * `writes` must hold every statement the function issued and did not await (the promise chained
 * with whatever reads its rows, so `result()` sees them); each should already carry a `.catch`
 * (the transaction function may throw after issuing them, and their rejection must not go
 * unhandled). Statements issued after a failed one fail with 25P02 and the COMMIT becomes a
 * ROLLBACK, so nothing of a transaction with a failed write is committed.
 */
export class PipelinedCommit<T> {
  /**
   * @param writes the un-awaited statements, in the order they were issued
   * @param result the transaction's result, called once every write and the COMMIT succeeded
   */
  constructor(
    readonly writes: readonly Promise<unknown>[],
    readonly result: () => T,
  ) {}
}

/**
 * Runs `fn` inside one READ COMMITTED transaction: COMMIT when it resolves, ROLLBACK when it
 * throws (the error is rethrown unchanged). Retries the whole function up to 3 times on a
 * serialization failure or deadlock, which PostgreSQL reports before anything was committed.
 * After a COMMIT of a transaction that wrote outbox rows it signals the outbox relay
 * (src/outbox/signal.ts).
 *
 * Round trips (the ledger pool runs in pipeline mode, see {@link createPgPool}): BEGIN is not
 * awaited on its own but goes out with `fn`'s first statement; when `fn` returns a
 * {@link PipelinedCommit}, COMMIT goes out with its un-awaited writes. A BEGIN on an idle pooled
 * connection can only fail with the connection itself, which fails the statements behind it too;
 * its result is still checked before COMMIT. A COMMIT that PostgreSQL answers with ROLLBACK (the
 * transaction had failed: a statement's error that `fn` swallowed) is an error, not a success.
 * @throws whatever `fn` throws, the first failed statement's error, or the database error.
 */
export async function withTransaction<T>(pool: pg.Pool, fn: (tx: Tx) => Promise<T | PipelinedCommit<T>>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken = false;
    try {
      const begun = client.query('BEGIN');
      begun.catch(() => undefined); // reported by the await below, if fn throws first
      const out = await fn(client);
      let result: T;
      if (out instanceof PipelinedCommit) {
        const answers = await awaitInOrder<unknown[]>([begun, ...out.writes, client.query('COMMIT')]);
        assertCommitted(answers[answers.length - 1] as pg.QueryResult);
        result = out.result();
      } else {
        await begun;
        assertCommitted(await client.query('COMMIT'));
        result = out;
      }
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

/**
 * Waits for every one of `statements` (pipelined on one connection, in the order they were
 * issued) and returns their results in that order.
 * @throws the first failure in that order: the cause, since the statements behind a failed one
 *   in a transaction fail with 25P02 ("current transaction is aborted").
 */
export async function awaitInOrder<T extends readonly unknown[]>(statements: readonly [...{ [K in keyof T]: Promise<T[K]> }]): Promise<T> {
  const settled = await Promise.allSettled(statements);
  const failed = settled.find((s) => s.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/**
 * Adds `statement`, issued and not awaited, to the `pending` writes of a {@link PipelinedCommit},
 * with a `.catch` attached so that its rejection is not unhandled while the transaction function
 * still runs (withTransaction awaits it, and reports it, with the COMMIT).
 */
export function deferStatement(pending: Promise<unknown>[], statement: Promise<unknown>): void {
  statement.catch(() => undefined);
  pending.push(statement);
}

/**
 * Checks PostgreSQL's answer to a COMMIT.
 * @throws Error when PostgreSQL answered a COMMIT with ROLLBACK: the transaction had already
 *   failed (PostgreSQL ends a failed transaction block on COMMIT by rolling it back and
 *   answers with the ROLLBACK command tag: EndTransactionBlock in src/backend/access/transam/xact.c).
 */
export function assertCommitted(answer: pg.QueryResult): void {
  if (answer.command !== 'COMMIT') throw new Error(`COMMIT was answered with ${answer.command}: the transaction had failed and was rolled back`);
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
