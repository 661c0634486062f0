/**
 * The relay's JobSink on BullMQ: outbox `job` rows become jobs of their queue (queueOfJob:
 * `deliver-webhook` on webhook-deliveries, the others on ledger-jobs) with their deterministic
 * jobId (BullMQ ignores an add whose jobId exists), their delay (`runAt`) and the attempts/backoff
 * (and jitter) of LEDGER_JOB_OPTIONS.
 */
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { JobSink } from '../outbox/relay.js';
import { LEDGER_JOBS_QUEUE, LEDGER_JOB_OPTIONS, WEBHOOK_DELIVERY_QUEUE, queueOfJob, type OutboxJob } from './names.js';

/** BullMQ options of one outbox job at `nowMs`. */
export function jobOptions(job: OutboxJob, nowMs: number) {
  const o = LEDGER_JOB_OPTIONS[job.name];
  const delay = job.runAt ? Math.max(0, Date.parse(job.runAt) - nowMs) : 0;
  return {
    jobId: job.jobId,
    delay,
    attempts: o.attempts,
    backoff: { type: 'exponential' as const, delay: o.backoffMs, ...(o.jitter ? { jitter: o.jitter } : {}) },
    removeOnComplete: { count: 10_000 },
    removeOnFail: { count: 10_000 },
  };
}

/** BullMQ states of a job that will still run without help. */
const LIVE_STATES = ['waiting', 'delayed', 'active', 'prioritized', 'waiting-children'];

/** The job sink of {@link createQueueJobSink}. */
export interface QueueJobSink extends JobSink {
  /** The ledger-jobs queue. */
  queue: Queue;
  /** The webhook-deliveries queue (`deliver-webhook` jobs). */
  webhookQueue: Queue;
  /** Re-adds jobs the sweep or an operator finds missing (see {@link createQueueJobSink}). */
  readd(jobs: OutboxJob[]): Promise<void>;
  /** Closes both queues (not the connection). */
  close(): Promise<void>;
}

/**
 * A JobSink adding each job to its queue (queueOfJob); `close()` closes the queues (not the
 * connection).
 * `readd` is for the sweep: a job whose id is still kept as failed or completed would make a
 * plain add a no-op, so it is removed first and the work runs again (processors are idempotent).
 * A job that is locked when removed (another sweep re-added it since its state was read, and a
 * worker took it) is left running, which is what the re-add is for, and its add is a no-op (same
 * jobId); removing it used to throw "locked by another worker" and fail that sweep's whole run.
 * A `deliver-webhook` job still live on ledger-jobs under the same jobId (added there before the
 * upgrade that gave deliveries their own queue; the ledger-jobs worker still runs it) is not
 * added again on webhook-deliveries: one job per event.
 */
export function createQueueJobSink(connection: Redis, prefix: string): QueueJobSink {
  const queue = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
  const webhookQueue = new Queue(WEBHOOK_DELIVERY_QUEUE, { connection, prefix });
  const queueFor = (j: OutboxJob) => (queueOfJob(j.name) === WEBHOOK_DELIVERY_QUEUE ? webhookQueue : queue);
  const add = async (jobs: OutboxJob[]) => {
    const now = Date.now();
    for (const q of [queue, webhookQueue]) {
      const mine = jobs.filter((j) => queueFor(j) === q);
      if (mine.length > 0) await q.addBulk(mine.map((j) => ({ name: j.name, data: j.data, opts: jobOptions(j, now) })));
    }
  };
  return {
    queue,
    webhookQueue,
    add,
    async readd(jobs) {
      const toAdd: OutboxJob[] = [];
      for (const j of jobs) {
        if (queueFor(j) === webhookQueue) {
          const legacy = await queue.getJob(j.jobId);
          if (legacy && LIVE_STATES.includes(await legacy.getState())) continue;
        }
        toAdd.push(j);
        const target = queueFor(j);
        const existing = await target.getJob(j.jobId);
        if (!existing) continue;
        const state = await existing.getState();
        // 0: locked (running again already); 1: removed (or gone meanwhile).
        if (state === 'failed' || state === 'completed') await target.remove(j.jobId);
      }
      if (toAdd.length > 0) await add(toAdd);
    },
    close: async () => {
      await Promise.all([queue.close(), webhookQueue.close()]);
    },
  };
}
