/**
 * The outbox relay: turns committed outbox rows into Redis publications and BullMQ jobs, at
 * least once, in commit order per account.
 *
 * One drain is one transaction: take a transaction-scoped advisory lock (so at most one relay in
 * the whole deployment publishes at a time, which keeps each account's messages in version
 * order), DELETE up to `batchSize` of the oldest rows RETURNING them, PUBLISH them (one
 * pipeline), then COMMIT. If Redis refuses or the process dies before COMMIT, the rows come back
 * and are published again later; consumers drop versions they already hold. Per account, ids are
 * assigned while the account's balance row is locked, so id order is commit order.
 *
 * A drain runs when this process commits outbox rows (src/outbox/signal.ts), every
 * `pollIntervalMs` (rows written by other processes, or left behind by a crash), and again at
 * once while a drain finds a full batch. After a failure it backs off (doubling, up to 1 s).
 *
 * A `job` row whose job name this version does not know ({@link LEDGER_JOB_NAMES}: a newer
 * version wrote it during a rolling upgrade) is not enqueued: the drain that takes it moves it
 * to `outbox_unknown_jobs` (same id and payload; one more statement, only in such a drain) and
 * logs one warning naming them; the rows behind it are published as usual. Every relay with a
 * job sink takes back parked rows whose names it knows (in the round trip of its DELETE, at most
 * every TAKE_BACK_INTERVAL_MS) and enqueues them, so the newer relays of the upgrade enqueue them
 * without anyone's help. Failing
 * the batch instead held back every row behind it until a relay that knew the name drained it;
 * leaving the row in the outbox, skipped, would have made every drain read it again.
 *
 * A `job` row of a KNOWN name whose payload cannot be enqueued ({@link outboxJobProblem}: a jobId
 * that is missing, not a string, an integer or with a ":", a runAt that is not a date,
 * data that is not an object; written by a bug or by hand) is a dead letter: BullMQ refused the
 * whole batch on it, at every drain, so every live balance update, alert and job of every account
 * behind it waited forever. The drain that takes it (from the outbox, or from outbox_unknown_jobs
 * when taking back) moves it to `outbox_dead_jobs` (same id, payload exactly as stored,
 * `reason`; in the same extra statement's round trip as parking) and logs one error naming each
 * row (`deadLettered`: `{ id, name, reason }`); the rows behind it are published as usual. No
 * relay reads that table: it may be money work (an auto top-up), so it is never deleted and never
 * retried by itself. An operator inspects it (`SELECT * FROM outbox_dead_jobs`), then re-queues a
 * corrected row by moving it back into the outbox in one statement (`WITH moved AS (DELETE FROM
 * outbox_dead_jobs WHERE id = $1 RETURNING account_id, payload, created_at) INSERT INTO
 * outbox_events (account_id, topic, payload, created_at) SELECT account_id, 'job', <corrected
 * payload>, created_at FROM moved`; a new outbox id), or deletes it if its work is not wanted
 * (README "Workers"). The verdict is taken on the row's content alone, before any Redis call:
 * Redis refusing or not answering fails the drain as always, and every row, a dead letter
 * included, goes back to the outbox for a later drain (a Redis outage never dead-letters). A
 * drain without such rows costs what it did (2 round trips; a job row comes back as one text
 * column instead of its payload).
 *
 * The Redis part of a drain (the jobs and the PUBLISH pipeline) must answer within
 * `redisTimeoutMs`, else the drain fails like a refusal: the transaction, which holds the
 * deployment-wide lock, is never left open waiting for a Redis that is down or silent (a queue
 * connection with an offline queue would wait for it to return), and `close()` (shutdown) never
 * waits longer than one such drain.
 */
import type pg from 'pg';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { assertCommitted, awaitInOrder } from '../db/pg.js';
import { answerWithin } from '../db/redis-close.js';
import { onOutboxCommitted } from './signal.js';
import { accountChannel } from './topics.js';
import { LEDGER_JOB_NAMES, outboxJobProblem, type OutboxJob } from '../queues/names.js';

/**
 * Where the relay puts `job` rows: the ledger-jobs queue (BullMQ addBulk in production). The relay
 * gives it only jobs whose name is one of {@link LEDGER_JOB_NAMES} (others are parked).
 */
export interface JobSink {
  /** Adds the jobs; a jobId already present is not added again. @throws on Redis errors. */
  add(jobs: OutboxJob[]): Promise<void>;
}

/** Advisory lock key of the relay (any constant; "cpoutbox" in ASCII). */
export const OUTBOX_RELAY_LOCK_KEY = 0x63706f7574626f78n;

/** Default of how long the Redis part of one drain may take before the drain fails, in milliseconds. */
const OUTBOX_REDIS_TIMEOUT_MS = 5_000;

/** Options of {@link startOutboxRelay}. */
export interface OutboxRelayOptions {
  pool: pg.Pool;
  /** A Redis connection used only to publish (not in subscriber mode). */
  redis: Redis;
  log: Logger;
  /** Prefix of live channels (env LIVE_CHANNEL_PREFIX). */
  channelPrefix: string;
  /** Safety-net poll interval in milliseconds. */
  pollIntervalMs: number;
  /** Rows per drain transaction. */
  batchSize?: number;
  /**
   * Where `job` rows go; without a sink they stay in the outbox for a relay that has one (and
   * such a relay neither parks nor takes back rows of unknown job names).
   */
  jobs?: JobSink;
  /** Longest the Redis part of one drain may take, in milliseconds (default {@link OUTBOX_REDIS_TIMEOUT_MS}). */
  redisTimeoutMs?: number;
}

/** A running relay. */
export interface OutboxRelay {
  /** Asks for a drain as soon as possible (coalesced with one already running). */
  kick(): void;
  /**
   * Rows this relay has taken since it started: published or enqueued, job rows of a name it
   * does not know, parked, and job rows it cannot enqueue, dead-lettered (see the module comment).
   */
  published(): number;
  /** Drain transactions this relay has run since it started (failed ones included). */
  drains(): number;
  /** Stops polling and waits for a running drain (at most its `redisTimeoutMs` on Redis). */
  close(): Promise<void>;
}

/**
 * How often, at most, the running relay looks for parked rows whose names it knows, in
 * milliseconds: once a relay knows a parked row's name, the row waits about this long or one
 * poll interval, whichever is longer.
 */
export const TAKE_BACK_INTERVAL_MS = 1_000;

/** The error a drain logs when it dead-lettered job rows (see the module comment). */
const DEAD_JOBS_ERROR =
  'outbox relay: job rows whose payload cannot be enqueued were moved to outbox_dead_jobs; no relay takes them back: inspect them, then re-queue a corrected row or delete it (README "Workers")';

/**
 * The relay's warning after a drain that failed on PostgreSQL's side (the outbox could not be
 * read, locked or committed: PostgreSQL unreachable, a connection lost); logged with `side:
 * 'postgres'`. The rows stay in the outbox (nothing was taken) and the drain is retried with
 * backoff. It used to say "publish failed", which sent operators to look at Redis.
 */
export const OUTBOX_POSTGRES_FAILED_WARNING = 'outbox relay: PostgreSQL failed (the outbox could not be read or committed), will retry';

/**
 * The relay's warning after a drain that failed on Redis's side (enqueuing the jobs or the
 * PUBLISH pipeline refused or not answered within `redisTimeoutMs`); logged with `side: 'redis'`.
 * The drain's transaction is rolled back, so its rows stay in the outbox for the retry.
 */
export const OUTBOX_REDIS_FAILED_WARNING = 'outbox relay: Redis failed (publish or enqueue), will retry';

/** Errors thrown by the Redis part of a drain (see {@link drainOutboxOnce}); the rest came from PostgreSQL. */
const redisSideErrors = new WeakSet<object>();

/** The warning a drain logs when it parked job rows (see the module comment). */
const UNKNOWN_JOBS_PARKED_WARNING =
  'outbox relay: job rows of names this version does not know were moved to outbox_unknown_jobs; a relay that knows them takes them back';

/**
 * Publishes one batch of outbox rows in one transaction: up to `batchSize` of the oldest rows
 * (not `job` rows without a sink), and with a sink up to `batchSize` rows of outbox_unknown_jobs
 * whose names it knows. `job` rows whose name is not one of {@link LEDGER_JOB_NAMES} are moved to
 * outbox_unknown_jobs instead of being enqueued, and `log` gets one warning per drain that moved
 * any ({@link UNKNOWN_JOBS_PARKED_WARNING}: `parked` rows, `names` with the rows of each name),
 * after commit. `job` rows of a known name (taken from the outbox or taken back) whose payload
 * {@link outboxJobProblem} refuses are moved to outbox_dead_jobs with that reason, and `log` gets
 * one error per drain that moved any ({@link DEAD_JOBS_ERROR}: `deadLettered`, one `{ id, name,
 * reason }` per row), after commit.
 * @param redisTimeoutMs longest the jobs and the PUBLISH pipeline may take together (ms).
 * @param takeBack whether this drain looks for parked rows it knows (the running relay does at
 *   most every {@link TAKE_BACK_INTERVAL_MS}: a drain follows nearly every charge transaction, and
 *   parked rows are rare).
 * @returns the number of rows taken: published, enqueued, parked or dead-lettered; `batchSize`
 *   or more means more may be waiting.
 * @throws the database or Redis error, or the Redis part taking longer than `redisTimeoutMs`
 *   (the transaction is rolled back, the rows stay where they were).
 */
export async function drainOutboxOnce(
  pool: pg.Pool,
  redis: Redis,
  channelPrefix: string,
  batchSize: number,
  jobs?: JobSink,
  redisTimeoutMs = OUTBOX_REDIS_TIMEOUT_MS,
  log?: Pick<Logger, 'warn' | 'info' | 'error'>,
  takeBack = true,
): Promise<number> {
  const client = await pool.connect();
  let broken = false;
  try {
    // BEGIN, the lock, the DELETE and the take-back (when asked) go out in one round trip (the ledger pool
    // pipelines, db/pg.ts createPgPool); PostgreSQL runs them once the lock is granted.
    const known = jobs !== undefined ? LEDGER_JOB_NAMES : [];
    const begun = client.query('BEGIN');
    const locked = client.query('SELECT pg_advisory_xact_lock($1)', [OUTBOX_RELAY_LOCK_KEY.toString()]);
    const deleted = client.query(
      // `= ANY(ARRAY(...))`: primary-key probes for the batch; `IN (subquery)` was planned as a
      // hash join over the whole table, so each drain cost as much as the backlog (11 ms vs 1.1 ms
      // per 500 rows at a 50,000-row backlog), and a relay that fell behind fell further behind.
      // A `job` row comes back whole, as text (`job_row`: payload numbers kept exact, for parking
      // or dead-lettering it as written), instead of its payload: the same bytes on the wire.
      `DELETE FROM outbox_events WHERE id = ANY (ARRAY(
         SELECT id FROM outbox_events WHERE $2 OR topic <> 'job' ORDER BY id LIMIT $1))
       RETURNING id, account_id, topic, CASE WHEN topic <> 'job' THEN payload END AS payload,
                 CASE WHEN topic = 'job' THEN to_jsonb(outbox_events)::text END AS job_row`,
      [batchSize, jobs !== undefined],
    );
    // Parked rows this relay knows (by the name index; an empty table on the normal path).
    const back = jobs && takeBack
      ? client.query(
          `DELETE FROM outbox_unknown_jobs WHERE id = ANY (ARRAY(
             SELECT id FROM outbox_unknown_jobs WHERE name = ANY ($2::text[]) LIMIT $1))
           RETURNING id, account_id, 'job' AS topic, NULL::jsonb AS payload, to_jsonb(outbox_unknown_jobs)::text AS job_row`,
          [batchSize, known],
        )
      : Promise.resolve({ rows: [] as Array<Record<string, unknown>> });
    const [, , { rows: taken }, { rows: takenBack }] = await awaitInOrder([begun, locked, deleted, back]);
    // Each job row: enqueued, parked (a name this version does not know) or dead-lettered (a
    // known name, a payload it cannot enqueue). Decided here, on the row alone, never on a Redis
    // error: Redis being down fails the drain and every row stays.
    const rows: Array<Record<string, unknown>> = [];
    const unknown: string[] = [];
    const dead: Array<{ id: string; name: string; reason: string; row: string }> = [];
    let enqueuedBack = 0;
    for (const [i, r] of [...taken, ...takenBack].entries()) {
      if (r.job_row === null) {
        rows.push(r);
        continue;
      }
      const row = r.job_row as string;
      const payload = (JSON.parse(row) as { payload: unknown }).payload;
      const job = typeof payload === 'object' && payload !== null && !Array.isArray(payload) ? (payload as Record<string, unknown>) : {};
      if (typeof job.name !== 'string' || !(known as readonly string[]).includes(job.name)) {
        unknown.push(row);
        continue;
      }
      const reason = outboxJobProblem(job);
      if (reason !== null) dead.push({ id: r.id as string, name: job.name, reason, row });
      else {
        rows.push({ ...r, payload });
        if (i >= taken.length) enqueuedBack++;
      }
    }
    // Only when there are such rows: one more round trip, in the same transaction.
    const parking = unknown.length > 0
      ? client.query(
          `INSERT INTO outbox_unknown_jobs (id, account_id, name, payload, created_at)
           SELECT (r->>'id')::bigint, (r->>'account_id')::uuid, coalesce(r->'payload'->>'name', ''), r->'payload', (r->>'created_at')::timestamptz
             FROM unnest($1::jsonb[]) AS r
           RETURNING name`,
          [unknown],
        )
      : Promise.resolve({ rows: [] as Array<{ name: string }> });
    const deadLettering = dead.length > 0
      ? client.query(
          `INSERT INTO outbox_dead_jobs (id, account_id, name, payload, reason, created_at)
           SELECT (d.r->>'id')::bigint, (d.r->>'account_id')::uuid, d.r->'payload'->>'name', d.r->'payload', d.reason, (d.r->>'created_at')::timestamptz
             FROM unnest($1::jsonb[], $2::text[]) AS d(r, reason)`,
          [dead.map((d) => d.row), dead.map((d) => d.reason)],
        )
      : Promise.resolve(null);
    const [{ rows: parked }] = await awaitInOrder([parking, deadLettering]);
    if (rows.length > 0) {
      rows.sort((a, b) => (BigInt(a.id as string) < BigInt(b.id as string) ? -1 : 1));
      const send = async () => {
        const jobRows = rows.filter((r) => r.topic === 'job');
        if (jobs && jobRows.length > 0) await jobs.add(jobRows.map((r) => r.payload as OutboxJob));
        const pipeline = redis.pipeline();
        for (const r of rows) {
          if (r.topic === 'job') continue;
          pipeline.publish(accountChannel(channelPrefix, r.account_id as string), JSON.stringify({ topic: r.topic, payload: r.payload }));
        }
        const results = await pipeline.exec();
        const failed = results?.find(([err]) => err);
        if (!results || failed) throw failed?.[0] ?? new Error('redis pipeline returned nothing');
      };
      try {
        await answerWithin(send(), redisTimeoutMs, 'outbox relay: Redis');
      } catch (err) {
        if (typeof err === 'object' && err !== null) redisSideErrors.add(err);
        throw err;
      }
    }
    assertCommitted(await client.query('COMMIT'));
    if (parked.length > 0) {
      const names: Record<string, number> = {};
      for (const { name } of parked) names[name] = (names[name] ?? 0) + 1;
      log?.warn({ parked: parked.length, names }, UNKNOWN_JOBS_PARKED_WARNING);
    }
    if (dead.length > 0) log?.error({ deadLettered: dead.map(({ id, name, reason }) => ({ id, name, reason })) }, DEAD_JOBS_ERROR);
    if (enqueuedBack > 0) log?.info({ takenBack: enqueuedBack }, 'outbox relay: took back job rows from outbox_unknown_jobs and enqueued them');
    return taken.length + takenBack.length;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true;
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/** Starts the relay of this process (see the module comment). */
export function startOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const batchSize = opts.batchSize ?? 500;
  let running: Promise<void> | null = null;
  let again = false;
  let closed = false;
  let backoffMs = 0;
  let retryTimer: NodeJS.Timeout | null = null;
  let published = 0;
  let drains = 0;
  let lastTakeBackMs = -Infinity;

  const loop = async (): Promise<void> => {
    do {
      again = false;
      try {
        drains++;
        const takeBack = Date.now() - lastTakeBackMs >= TAKE_BACK_INTERVAL_MS;
        if (takeBack) lastTakeBackMs = Date.now();
        const n = await drainOutboxOnce(opts.pool, opts.redis, opts.channelPrefix, batchSize, opts.jobs, opts.redisTimeoutMs, opts.log, takeBack);
        published += n;
        backoffMs = 0;
        if (n >= batchSize) again = true;
      } catch (err) {
        backoffMs = Math.min(backoffMs === 0 ? 50 : backoffMs * 2, 1_000);
        const side = typeof err === 'object' && err !== null && redisSideErrors.has(err) ? 'redis' : 'postgres';
        opts.log.warn({ side, err: (err as Error).message, retryInMs: backoffMs }, side === 'redis' ? OUTBOX_REDIS_FAILED_WARNING : OUTBOX_POSTGRES_FAILED_WARNING);
        if (!closed && !retryTimer) {
          retryTimer = setTimeout(() => {
            retryTimer = null;
            kick();
          }, backoffMs);
          retryTimer.unref();
        }
        return;
      }
    } while (again && !closed);
  };

  const kick = (): void => {
    if (closed) return;
    if (running) {
      again = true;
      return;
    }
    if (retryTimer) return; // backing off after a failure
    running = loop().finally(() => {
      running = null;
      if (again && !closed) kick();
    });
  };

  const unsubscribe = onOutboxCommitted(kick);
  const poll = setInterval(kick, opts.pollIntervalMs);
  poll.unref();
  kick();

  return {
    kick,
    published: () => published,
    drains: () => drains,
    async close() {
      closed = true;
      unsubscribe();
      clearInterval(poll);
      if (retryTimer) clearTimeout(retryTimer);
      if (running) await running.catch(() => undefined);
    },
  };
}
