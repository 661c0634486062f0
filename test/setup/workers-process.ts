/**
 * A real workers process (workers/main.ts) on the test PostgreSQL and Redis, for tests that stop
 * it with SIGTERM while one of its jobs is held mid-way by a lock the test takes (not by timing),
 * and the stalled-check re-run of a job such a stop left unfinished.
 * Used by test/cycles/worker-shutdown.test.ts and test/cycles/worker-shutdown-jobs.test.ts.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { DelayedError, Queue, Worker } from 'bullmq';
import { pino } from 'pino';
import { expect, vi } from 'vitest';
import type pg from 'pg';
import { startScript, type RunningScript } from './run-script.js';
import { TEST_REDIS_URL } from './env.js';
import { taggedDatabaseUrl } from './connections.js';
import { queueEventsFromNow } from './queue-events.js';
import { parseEnv } from '../../src/config/env.js';
import type { ServiceContext } from '../../src/services/context.js';
import { LEDGER_JOBS_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_DELIVERY_QUEUE, type LedgerJobName } from '../../src/queues/names.js';
import { SWEEP_DUE_JOB } from '../../workers/processors/sweep-due.js';
import { LEDGER_PROCESSORS } from '../../workers/registry.js';
import { runDeliveryJob } from '../../workers/start.js';

/** A workers process started by {@link startWorkersProcess}, and the test's handle on its ledger-jobs queue. */
export interface WorkersProcess {
  workers: RunningScript;
  /** Its QUEUE_PREFIX (a fresh one per process). */
  prefix: string;
  /** The application_name of its database sessions (pg_stat_activity). */
  applicationName: string;
  /** The ledger-jobs queue under that prefix (on a connection of the test's). */
  queue: Queue;
  /** The webhook-deliveries queue under that prefix (on the same connection). */
  webhookQueue: Queue;
  /**
   * Resolves once exactly one session of this process waits for a lock (its job is held by the
   * test's row lock); polls every 50 ms for up to 20 s.
   */
  heldByLock(): Promise<void>;
  /** Kills the process if it still runs (SIGKILL), empties and closes the queue. Never throws. */
  dispose(): Promise<void>;
}

/**
 * Starts workers/main.ts with its own queue prefix and application_name, SHUTDOWN_GRACE_MS
 * `graceMs`, the relay polling every 50 ms and the maintenance sweep 10 min apart, plus `env`
 * (e.g. WEBHOOK_URL), and returns once its boot's sweep-due has completed (so only jobs the test
 * causes run afterwards, until the next sweep 10 min later). `pool`: the test's, to read
 * pg_stat_activity with ({@link WorkersProcess.heldByLock}).
 * @throws when the boot's sweep does not complete within 30 s (the process is disposed of).
 */
export async function startWorkersProcess(pool: pg.Pool, graceMs: number, env: NodeJS.ProcessEnv = {}): Promise<WorkersProcess> {
  const prefix = `cp-test-${randomUUID()}`;
  const { url, name } = taggedDatabaseUrl('cp-workers-stop');
  const workers = startScript('workers/main.ts', [], {
    ...process.env,
    DATABASE_URL: url,
    REDIS_URL: TEST_REDIS_URL,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'info',
    SHUTDOWN_GRACE_MS: String(graceMs),
    OUTBOX_POLL_INTERVAL_MS: '50',
    SWEEP_EVERY_MS: '600000',
    ...env,
  });
  const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  const queue = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
  const webhookQueue = new Queue(WEBHOOK_DELIVERY_QUEUE, { connection, prefix });
  const dispose = async () => {
    if (workers.child.exitCode === null && workers.child.signalCode === null) {
      workers.child.kill('SIGKILL');
      await workers.exited.catch(() => undefined);
    }
    await queue.obliterate({ force: true }).catch(() => undefined);
    await webhookQueue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
    await webhookQueue.close();
    connection.disconnect();
  };
  const heldByLock = async () => {
    await vi.waitFor(async () => {
      const { rows } = await pool.query(`SELECT COUNT(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, [name]);
      expect(rows[0].n, workers.stdout()).toBe(1);
    }, { timeout: 20_000, interval: 50 });
  };
  try {
    const maintenance = new Queue(MAINTENANCE_QUEUE, { connection, prefix });
    try {
      await vi.waitFor(async () => {
        const done = await maintenance.getJobs(['completed']);
        expect(done.map((j) => j.name), workers.stdout()).toContain(SWEEP_DUE_JOB);
      }, { timeout: 30_000, interval: 100 });
    } finally {
      await maintenance.close();
    }
  } catch (err) {
    await dispose();
    throw err;
  }
  return { workers, prefix, applicationName: name, queue, webhookQueue, heldByLock, dispose };
}

/** What {@link rerunStalledJob} resolves with when the re-run put its job back (delayed) without spending an attempt. */
export const PUT_BACK = { putBack: true } as const;

/**
 * What the next worker's stalled check does with job `jobId` under `prefix` (of the
 * webhook-deliveries queue if it is there, else of ledger-jobs), left active by a workers process
 * whose Redis connections were dropped: the job's lock and the gone worker's last stalled check
 * (30 s TTLs each) are deleted instead of waited for, and a Worker in this process
 * (stalledInterval 100 ms, processors of workers/registry.ts, deliveries through
 * workers/start.ts runDeliveryJob, with `services` and the environment `env` as parseEnv reads
 * it) moves the job back to wait and runs it again.
 * @returns the re-run's return value (its `completed` event), or {@link PUT_BACK}.
 * @throws (rejects) with the re-run's error when it fails (a retry of it is then left delayed).
 */
export async function rerunStalledJob(services: ServiceContext, prefix: string, jobId: string, env: Record<string, string> = {}): Promise<unknown> {
  const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  const queueName = (await connection.exists(`${prefix}:${WEBHOOK_DELIVERY_QUEUE}:${jobId}`)) ? WEBHOOK_DELIVERY_QUEUE : LEDGER_JOBS_QUEUE;
  const keys = `${prefix}:${queueName}`;
  await connection.del(`${keys}:${jobId}:lock`, `${keys}:stalled-check`);
  const events = await queueEventsFromNow(queueName, prefix);
  const deps = { services, log: pino({ level: 'silent' }), env: parseEnv(env) };
  let failed!: (err: Error) => void;
  let putBack!: () => void;
  const settled = new Promise<unknown>((resolve, reject) => {
    events.on('completed', ({ jobId: id, returnvalue }) => id === jobId && resolve(returnvalue));
    failed = reject;
    putBack = () => resolve(PUT_BACK);
  });
  const worker = new Worker(
    queueName,
    async (job, token) => {
      if (job.name !== 'deliver-webhook') return LEDGER_PROCESSORS[job.name as LedgerJobName](deps, { id: job.id, name: job.name, data: job.data, attemptsMade: job.attemptsMade, attempts: job.opts.attempts ?? 1 });
      try {
        return await runDeliveryJob(deps, job, token);
      } catch (err) {
        if (err instanceof DelayedError && job.id === jobId) putBack();
        throw err;
      }
    },
    { connection, prefix, stalledInterval: 100 },
  );
  // The worker's own event: it fires for every failed attempt (QueueEvents' `failed` only for the last one).
  worker.on('failed', (job, err) => job?.id === jobId && failed(err));
  try {
    return await settled;
  } finally {
    await worker.close();
    await events.close();
    connection.disconnect();
  }
}
