/**
 * Starts the BullMQ workers of this process (one Worker per queue) and re-creates their job
 * schedulers (idempotent: upsertJobScheduler keeps one schedule per id).
 */
import { Queue, Worker, UnrecoverableError } from 'bullmq';
import { Redis } from 'ioredis';
import type pg from 'pg';
import type { Logger } from 'pino';
import { ZodError } from 'zod';
import { MAINTENANCE_QUEUE, RECONCILE_EVERY_MS, RECONCILE_LEDGER_JOB } from '../src/queues/names.js';
import { processReconcileLedger } from './processors/reconcile-ledger.js';

/** Running workers; `close()` waits for jobs in progress, then disconnects. */
export interface RunningWorkers {
  close(): Promise<void>;
}

/**
 * Starts the workers.
 * @param opts.prefix BullMQ key prefix (tests use a unique one).
 */
export async function startWorkers(opts: { redisUrl: string; pool: pg.Pool; log: Logger; prefix?: string }): Promise<RunningWorkers> {
  const connection = new Redis(opts.redisUrl, { maxRetriesPerRequest: null });
  const prefix = opts.prefix ?? 'creditpool';
  const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix });
  await queue.upsertJobScheduler(RECONCILE_LEDGER_JOB, { every: RECONCILE_EVERY_MS }, { name: RECONCILE_LEDGER_JOB, data: { lookbackSeconds: 900 } });
  const worker = new Worker(
    MAINTENANCE_QUEUE,
    async (job) => {
      try {
        if (job.name === RECONCILE_LEDGER_JOB) return await processReconcileLedger(opts.pool, opts.log, job.data, new Date());
        throw new UnrecoverableError(`unknown job ${job.name}`);
      } catch (err) {
        if (err instanceof ZodError) throw new UnrecoverableError(`bad payload: ${err.message}`);
        throw err;
      }
    },
    { connection, prefix, concurrency: 1 },
  );
  worker.on('failed', (job, err) => opts.log.error({ err, job: job?.name, id: job?.id }, 'job failed'));
  opts.log.info({ queues: [MAINTENANCE_QUEUE] }, 'workers started');
  return {
    async close() {
      await worker.close();
      await queue.close();
      connection.disconnect();
    },
  };
}
