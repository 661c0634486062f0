/**
 * The relay's JobSink on BullMQ: outbox `job` rows become jobs of the ledger-jobs queue with
 * their deterministic jobId (BullMQ ignores an add whose jobId exists), their delay (`runAt`)
 * and the attempts/backoff (and jitter) of LEDGER_JOB_OPTIONS.
 */
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { JobSink } from '../outbox/relay.js';
import { LEDGER_JOBS_QUEUE, LEDGER_JOB_OPTIONS, type OutboxJob } from './names.js';

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

/**
 * A JobSink adding to the ledger-jobs queue; `close()` closes the queue (not the connection).
 * `readd` is for the sweep: a job whose id is still kept as failed or completed would make a
 * plain add a no-op, so it is removed first and the work runs again (processors are idempotent).
 * A job that is locked when removed (another sweep re-added it since its state was read, and a
 * worker took it) is left running, which is what the re-add is for, and its add is a no-op (same
 * jobId); removing it used to throw "locked by another worker" and fail that sweep's whole run.
 */
export function createQueueJobSink(connection: Redis, prefix: string): JobSink & { queue: Queue; readd(jobs: OutboxJob[]): Promise<void>; close(): Promise<void> } {
  const queue = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
  const add = async (jobs: OutboxJob[]) => {
    const now = Date.now();
    await queue.addBulk(jobs.map((j) => ({ name: j.name, data: j.data, opts: jobOptions(j, now) })));
  };
  return {
    queue,
    add,
    async readd(jobs) {
      for (const j of jobs) {
        const existing = await queue.getJob(j.jobId);
        if (!existing) continue;
        const state = await existing.getState();
        // 0: locked (running again already); 1: removed (or gone meanwhile).
        if (state === 'failed' || state === 'completed') await queue.remove(j.jobId);
      }
      await add(jobs);
    },
    close: () => queue.close(),
  };
}
