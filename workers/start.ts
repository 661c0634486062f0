/**
 * Starts the BullMQ workers of this process and re-creates their job schedulers at every boot
 * (idempotent: upsertJobScheduler keeps one schedule per id; each keeps at most
 * MAINTENANCE_JOBS_KEPT completed and failed jobs):
 * - queue `maintenance`: `reconcile-ledger` every minute (each changed account incrementally since its
 *   last consistent check, in full every RECONCILE_FULL_EVERY_HOURS), `sweep-due` every SWEEP_EVERY_MS (the
 *   safety net: runs whatever is due that no job took care of, e.g. after Redis was flushed),
 *   `analyze-stale-tables` every STATISTICS_UPKEEP_EVERY_MS (autovacuum's ANALYZE where
 *   autovacuum is off; its schedule is removed when that is 0), `prune-webhook-log` every hour
 *   (WEBHOOK_LOG_PRUNE_EVERY_MS: deletes the webhook delivery log's events older than
 *   WEBHOOK_LOG_RETENTION_DAYS; its schedule is removed when that is 0, keep for ever),
 *   `prune-budget-spend` every hour (BUDGET_SPEND_PRUNE_EVERY_MS: deletes the kept budget
 *   spending rows of periods that ended more than BUDGET_SPEND_RETENTION_DAYS ago; its schedule
 *   is removed when that is 0, keep for ever);
 * - queue `ledger-jobs`: the money jobs the outbox relay enqueues (expire-due, roll-period,
 *   auto-top-up, resume-payment; workers/registry.ts), `concurrency` at once;
 * - queue `webhook-deliveries`: the `deliver-webhook` jobs, with a worker of their own
 *   (WEBHOOK_CONCURRENCY at once), so a slow or dead receiver (each delivery waiting up to
 *   WEBHOOK_TIMEOUT_MS) never holds the slots the money jobs need, and no delivery is put back to
 *   wait for a slot. `deliver-webhook` jobs left on ledger-jobs by an earlier version (they ran
 *   there until this queue existed) are still handled by the ledger-jobs worker
 *   ({@link LEGACY_DELIVERY});
 * - an outbox relay (unless `relay: false`), so jobs are enqueued even when no API runs.
 */
import { DelayedError, Queue, Worker, UnrecoverableError, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import type pg from 'pg';
import type { Logger } from 'pino';
import { ZodError } from 'zod';
import type { Env } from '../src/config/env.js';
import { ANALYZE_STALE_TABLES_JOB, PRUNE_BUDGET_SPEND_JOB, PRUNE_WEBHOOK_LOG_JOB, LEDGER_JOBS_QUEUE, MAINTENANCE_QUEUE, RECONCILE_EVERY_MS, RECONCILE_LEDGER_JOB, LEDGER_JOB_NAMES, WEBHOOK_DELIVERY_QUEUE, type LedgerJobName } from '../src/queues/names.js';
import { WebhookAttemptInFlightError } from '../src/services/webhooks.js';
import { createPricingState } from '../src/services/pricing-state.js';
import type { ServiceContext } from '../src/services/context.js';
import { createQueueJobSink, jobOptions } from '../src/queues/job-sink.js';
import { createPaymentProvider } from '../src/payments/index.js';
import { startOutboxRelay } from '../src/outbox/relay.js';
import { closeRedis, settlesWithin, REDIS_QUIT_WAIT_MS } from '../src/db/redis-close.js';
import { processAnalyzeStaleTables } from './processors/analyze-stale-tables.js';
import { processPruneWebhookLog } from './processors/prune-webhook-log.js';
import { WEBHOOK_LOG_PRUNE_EVERY_MS } from '../src/services/webhook-retention.js';
import { processPruneBudgetSpend } from './processors/prune-budget-spend.js';
import { BUDGET_SPEND_PRUNE_EVERY_MS } from '../src/services/budget-spend-retention.js';
import { processReconcileLedger } from './processors/reconcile-ledger.js';
import { processSweepDue, SWEEP_DUE_JOB } from './processors/sweep-due.js';
import { LEDGER_PROCESSORS } from './registry.js';
import type { JobView, WorkerDeps } from './deps.js';

/** Running workers. */
export interface RunningWorkers {
  /** Enqueues directly on the ledger-jobs queue (tests, sweeps). */
  ledgerQueue: Queue;
  /** Enqueues directly on the webhook-deliveries queue (tests). */
  webhookQueue: Queue;
  /**
   * Stops the relay, waits for the jobs in progress (at most SHUTDOWN_GRACE_MS), then closes the
   * Redis connections. When that time passes (a job still running, or Redis unreachable, where
   * BullMQ's close would wait for Redis to return) the connections are dropped instead, with one
   * warning naming the jobs still running (`jobs`: queue, name, id, runningMs): their completion
   * is never recorded, so BullMQ's stalled check re-runs them (processors are idempotent). Their
   * database work is the caller's to end: it ends the pool with db/pool-shutdown.ts
   * endPoolWithin, which terminates their sessions after STUCK_WORK_WAIT_MS.
   */
  close(): Promise<void>;
}

/** Options of {@link startWorkers}. */
export interface StartWorkersOptions {
  env: Env;
  pool: pg.Pool;
  log: Logger;
  /** BullMQ key prefix (default env.QUEUE_PREFIX; tests use a unique one). */
  prefix?: string;
  /** Services to use (default: built from the pool with the wall clock). */
  services?: ServiceContext;
  /** Run an outbox relay in this process (default true). */
  relay?: boolean;
  /** Jobs of the ledger-jobs queue processed at once (default 4). */
  concurrency?: number;
  /** `deliver-webhook` jobs of the webhook-deliveries queue processed at once (default env.WEBHOOK_CONCURRENCY). */
  webhookConcurrency?: number;
}

/**
 * What the ledger-jobs worker does with a `deliver-webhook` job it finds there (added by an
 * earlier version, whose relay and sweep put deliveries on ledger-jobs):
 * - never attempted (attemptsMade 0; waiting, or delayed by `runAt`): moved, i.e. added to
 *   webhook-deliveries with the same jobId, data and options (jobOptions, the relay's), and
 *   completed here with `{ movedTo: 'webhook-deliveries' }`; its attempts there run exactly as
 *   they would have here (the same attempt numbers from 1, backoff and jitter). If that jobId is
 *   already there (the sweep re-added it), the add is a no-op and that job delivers it.
 * - already attempted (a retry waiting out its backoff at the upgrade): run here, as before, so
 *   its attempt numbers and retry schedule go on unchanged (BullMQ cannot move a job's attempt
 *   count to another queue). These may still hold ledger-jobs slots for up to WEBHOOK_TIMEOUT_MS
 *   each, until the last of them finishes (at most about 18 h after the upgrade).
 */
export const LEGACY_DELIVERY = { movedTo: WEBHOOK_DELIVERY_QUEUE } as const;

/**
 * How long a ledger job of a name this version does not know waits before a worker looks at it
 * again, in milliseconds: during a rolling upgrade a newer version's relay may enqueue a job an
 * older worker does not know; it goes back to the queue (delayed, no attempt spent) for a worker
 * that knows it instead of failing for good (its jobId is fixed, so neither the relay nor the
 * sweep could add it again).
 */
export const UNKNOWN_JOB_RETRY_MS = 60_000;

/**
 * Completed and, separately, failed jobs of each maintenance job that Redis keeps (the newest;
 * BullMQ removes older ones as each job finishes). The schedulers make a job every 15 s to 1 min
 * for as long as the deployment runs: kept without a bound (BullMQ's default) they filled Redis
 * by ~9,000 job hashes a day. A thousand keeps hours of history of each for inspection.
 */
export const MAINTENANCE_JOBS_KEPT = 1_000;

function view(job: Job): JobView {
  return { id: job.id, name: job.name, data: job.data, attemptsMade: job.attemptsMade, attempts: job.opts.attempts ?? 1, createdAtMs: job.timestamp };
}

/** Puts a running job back in its queue, delayed by `delayMs`, without spending an attempt (BullMQ's moveToDelayed + DelayedError). */
async function putBack(job: Job, token: string | undefined, delayMs: number): Promise<never> {
  await job.moveToDelayed(Date.now() + delayMs, token);
  throw new DelayedError();
}

/**
 * Runs a `deliver-webhook` job (the processor of workers/registry.ts). A run that meets another
 * attempt of its event in flight (WebhookAttemptInFlightError: nothing sent or logged) is put
 * back for the time that attempt may still take, without spending an attempt: the job's
 * attempts, and so its retry schedule and the logged attempt numbers, count real POSTs only.
 * Used by both workers (ledger-jobs for jobs an earlier version left there) and by tests.
 * @throws DelayedError when put back; else what the processor throws.
 */
export async function runDeliveryJob(deps: WorkerDeps, job: Job, token: string | undefined): Promise<unknown> {
  try {
    return await LEDGER_PROCESSORS['deliver-webhook'](deps, view(job));
  } catch (err) {
    if (!(err instanceof WebhookAttemptInFlightError)) throw err;
    deps.log.info({ id: job.id, retryInMs: err.retryInMs }, 'webhook delivery: another attempt of the event is in flight; put back without spending an attempt');
    return putBack(job, token, err.retryInMs);
  }
}

async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ZodError) throw new UnrecoverableError(`bad payload: ${err.message}`);
    throw err;
  }
}

/**
 * Starts the workers (see the module comment): (re)creates the maintenance job schedulers, then
 * starts the maintenance worker (one job at a time), the ledger-jobs worker (`concurrency`,
 * default 4) and the webhook-deliveries worker (`webhookConcurrency`, default
 * WEBHOOK_CONCURRENCY) on one Redis connection (env.REDIS_URL, key prefix `prefix`, default
 * QUEUE_PREFIX), and, unless `relay: false`, an outbox relay on a connection of its own.
 * A job whose payload fails its zod schema, or a maintenance job of an unknown name, fails for
 * good (BullMQ UnrecoverableError); a ledger or delivery job of an unknown name is put back
 * (UNKNOWN_JOB_RETRY_MS).
 * @returns the ledger-jobs and webhook-deliveries queues and `close` (RunningWorkers).
 * @throws RangeError when `concurrency` or `webhookConcurrency` (or WEBHOOK_CONCURRENCY) is not a
 *   positive integer, before anything is opened;
 *   what Redis answers the scheduler commands with an error; while Redis is unreachable
 *   those commands wait for it instead (the connection retries without a limit:
 *   `maxRetriesPerRequest: null`, which BullMQ workers require).
 */
export async function startWorkers(opts: StartWorkersOptions): Promise<RunningWorkers> {
  const { env, pool, log } = opts;
  // Checked before anything is opened: a refusal after the connection, the schedulers and the
  // maintenance worker had started left them running in the caller's process.
  const concurrency = opts.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
  const webhookConcurrency = opts.webhookConcurrency ?? env.WEBHOOK_CONCURRENCY;
  if (!Number.isInteger(webhookConcurrency) || webhookConcurrency < 1) throw new RangeError(`webhookConcurrency must be a positive integer, got ${webhookConcurrency}`);
  const connection = new Redis(env.REDIS_URL, { maxRetriesPerRequest: null, connectionName: 'creditpool-workers' });
  connection.on('error', (err) => log.warn({ err: err.message }, 'workers: redis error'));
  const prefix = opts.prefix ?? env.QUEUE_PREFIX;
  const services: ServiceContext = opts.services ?? { pool, clock: () => new Date(), pricing: createPricingState(pool), payments: createPaymentProvider(env), log };
  const deps: WorkerDeps = { services, log, env };
  const sink = createQueueJobSink(connection, prefix);

  const maintenance = new Queue(MAINTENANCE_QUEUE, { connection, prefix });
  for (const q of [maintenance, sink.queue, sink.webhookQueue]) q.on('error', (err) => log.warn({ err: err.message, queue: q.name }, 'workers: queue error'));
  const kept = { removeOnComplete: { count: MAINTENANCE_JOBS_KEPT }, removeOnFail: { count: MAINTENANCE_JOBS_KEPT } };
  await maintenance.upsertJobScheduler(RECONCILE_LEDGER_JOB, { every: RECONCILE_EVERY_MS }, { name: RECONCILE_LEDGER_JOB, data: { lookbackSeconds: 900 }, opts: kept });
  await maintenance.upsertJobScheduler(SWEEP_DUE_JOB, { every: env.SWEEP_EVERY_MS }, { name: SWEEP_DUE_JOB, data: {}, opts: kept });
  if (env.STATISTICS_UPKEEP_EVERY_MS > 0) {
    await maintenance.upsertJobScheduler(ANALYZE_STALE_TABLES_JOB, { every: env.STATISTICS_UPKEEP_EVERY_MS }, { name: ANALYZE_STALE_TABLES_JOB, data: {}, opts: kept });
  } else {
    await maintenance.removeJobScheduler(ANALYZE_STALE_TABLES_JOB);
  }
  if (env.WEBHOOK_LOG_RETENTION_DAYS > 0) {
    await maintenance.upsertJobScheduler(PRUNE_WEBHOOK_LOG_JOB, { every: WEBHOOK_LOG_PRUNE_EVERY_MS }, { name: PRUNE_WEBHOOK_LOG_JOB, data: {}, opts: kept });
  } else {
    await maintenance.removeJobScheduler(PRUNE_WEBHOOK_LOG_JOB);
  }
  if (env.BUDGET_SPEND_RETENTION_DAYS > 0) {
    await maintenance.upsertJobScheduler(PRUNE_BUDGET_SPEND_JOB, { every: BUDGET_SPEND_PRUNE_EVERY_MS }, { name: PRUNE_BUDGET_SPEND_JOB, data: {}, opts: kept });
  } else {
    await maintenance.removeJobScheduler(PRUNE_BUDGET_SPEND_JOB);
  }

  // The jobs this process is running, by queue and id: named in the log line of a stop whose
  // grace period they outlived.
  const inProgress = new Map<string, { queue: string; name: string; id: string | undefined; startedAt: number }>();
  const following = <T>(queue: string, job: Job, run: () => Promise<T>): Promise<T> => {
    const key = `${queue}:${job.id}`;
    inProgress.set(key, { queue, name: job.name, id: job.id, startedAt: Date.now() });
    return run().finally(() => inProgress.delete(key));
  };

  const maintenanceWorker = new Worker(
    MAINTENANCE_QUEUE,
    (job) =>
      following(MAINTENANCE_QUEUE, job, () => guarded(async () => {
        if (job.name === RECONCILE_LEDGER_JOB) return processReconcileLedger(pool, log, job.data, new Date(), env.RECONCILE_FULL_EVERY_HOURS * 3_600_000);
        if (job.name === SWEEP_DUE_JOB) return processSweepDue(deps, sink);
        if (job.name === ANALYZE_STALE_TABLES_JOB) return processAnalyzeStaleTables(pool, log);
        if (job.name === PRUNE_WEBHOOK_LOG_JOB) return processPruneWebhookLog(pool, log, env.WEBHOOK_LOG_RETENTION_DAYS);
        if (job.name === PRUNE_BUDGET_SPEND_JOB) return processPruneBudgetSpend(pool, log, env.BUDGET_SPEND_RETENTION_DAYS, new Date());
        throw new UnrecoverableError(`unknown job ${job.name}`);
      })),
    { connection, prefix, concurrency: 1 },
  );
  const unknownJob = (job: Job, token: string | undefined) => {
    log.warn({ job: job.name, id: job.id, queue: job.queueName, retryInMs: UNKNOWN_JOB_RETRY_MS }, 'job of a name this version does not know (a newer version?): put back for a worker that knows it');
    return putBack(job, token, UNKNOWN_JOB_RETRY_MS);
  };
  const ledgerWorker = new Worker(
    LEDGER_JOBS_QUEUE,
    (job, token) =>
      following(LEDGER_JOBS_QUEUE, job, () => guarded(async () => {
        if (!(LEDGER_JOB_NAMES as readonly string[]).includes(job.name)) return unknownJob(job, token);
        if (job.name !== 'deliver-webhook') return LEDGER_PROCESSORS[job.name as LedgerJobName](deps, view(job));
        // Left here by an earlier version (see LEGACY_DELIVERY).
        if (job.attemptsMade > 0) return runDeliveryJob(deps, job, token);
        const opts = jobOptions({ name: 'deliver-webhook', jobId: job.id!, data: job.data }, Date.now());
        await sink.webhookQueue.add(job.name, job.data, opts);
        return LEGACY_DELIVERY;
      })),
    { connection, prefix, concurrency },
  );
  const webhookWorker = new Worker(
    WEBHOOK_DELIVERY_QUEUE,
    (job, token) =>
      following(WEBHOOK_DELIVERY_QUEUE, job, () => guarded(async () => {
        if (job.name !== 'deliver-webhook') return unknownJob(job, token);
        return runDeliveryJob(deps, job, token);
      })),
    { connection, prefix, concurrency: webhookConcurrency },
  );
  for (const w of [maintenanceWorker, ledgerWorker, webhookWorker]) {
    w.on('failed', (job, err) => log.warn({ err: err.message, job: job?.name, id: job?.id, attempt: job?.attemptsMade }, 'job attempt failed'));
    // Without a listener BullMQ prints connection errors with console.error (a stack trace per
    // reconnect attempt while Redis is away), bypassing the log.
    w.on('error', (err) => log.warn({ err: err.message }, 'workers: worker error'));
  }

  let relay: ReturnType<typeof startOutboxRelay> | null = null;
  let publisher: Redis | null = null;
  let relaySink: ReturnType<typeof createQueueJobSink> | null = null;
  if (opts.relay !== false) {
    publisher = new Redis(env.REDIS_URL, { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectionName: 'creditpool-workers-relay' });
    publisher.on('error', (err) => log.warn({ err: err.message }, 'workers relay: redis error'));
    // The relay adds its jobs over its own fail-fast connection, not the workers' (whose offline
    // queue would keep one batch per failed drain while Redis is away).
    relaySink = createQueueJobSink(publisher, prefix);
    for (const q of [relaySink.queue, relaySink.webhookQueue]) q.on('error', (err) => log.warn({ err: err.message, queue: q.name }, 'workers relay: queue error'));
    relay = startOutboxRelay({ pool, redis: publisher, log, channelPrefix: env.LIVE_CHANNEL_PREFIX, pollIntervalMs: env.OUTBOX_POLL_INTERVAL_MS, jobs: relaySink });
  }
  log.info({ queues: [MAINTENANCE_QUEUE, LEDGER_JOBS_QUEUE, WEBHOOK_DELIVERY_QUEUE], prefix, concurrency, webhookConcurrency }, 'workers started');
  return {
    ledgerQueue: sink.queue,
    webhookQueue: sink.webhookQueue,
    async close() {
      await relay?.close();
      const workersClosed = Promise.all([maintenanceWorker.close(), ledgerWorker.close(), webhookWorker.close()]);
      if (!(await settlesWithin(workersClosed, env.SHUTDOWN_GRACE_MS))) {
        const now = Date.now();
        const jobs = [...inProgress.values()].map((j) => ({ queue: j.queue, name: j.name, id: j.id, runningMs: now - j.startedAt }));
        log.warn({ graceMs: env.SHUTDOWN_GRACE_MS, redis: connection.status, jobs }, 'workers: jobs in progress or Redis did not let the workers close in time; dropping the Redis connections (unfinished jobs are re-run by the stalled check)');
        connection.disconnect();
        await settlesWithin(Promise.allSettled([maintenanceWorker.disconnect(), ledgerWorker.disconnect(), webhookWorker.disconnect()]), REDIS_QUIT_WAIT_MS);
      }
      await settlesWithin(Promise.allSettled([maintenance.close(), sink.close(), relaySink?.close()]), REDIS_QUIT_WAIT_MS);
      await Promise.allSettled([publisher && closeRedis(publisher), closeRedis(connection)]);
    },
  };
}
