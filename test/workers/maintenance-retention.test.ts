/**
 * The maintenance queue's scheduled jobs (sweep-due, reconcile-ledger, analyze-stale-tables,
 * prune-webhook-log, prune-budget-spend) on
 * real Redis, with two worker processes' worth of workers on one prefix: the jobs each scheduler
 * makes carry a retention, so the completed and failed jobs Redis keeps are bounded (a run every
 * 30 s, 1 min and 15 s used to leave ~9,000 job hashes a day in Redis, forever), and two
 * processes booting on one Redis keep one schedule per job. prune-webhook-log runs (the webhook
 * delivery log's retention) and its schedule goes when WEBHOOK_LOG_RETENTION_DAYS is 0; so do
 * prune-budget-spend (the kept budget spending's retention) and BUDGET_SPEND_RETENTION_DAYS.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue, QueueEvents } from 'bullmq';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { startWorkers, MAINTENANCE_JOBS_KEPT, type RunningWorkers } from '../../workers/start.js';
import { parseEnv } from '../../src/config/env.js';
import { ANALYZE_STALE_TABLES_JOB, MAINTENANCE_QUEUE, PRUNE_BUDGET_SPEND_JOB, PRUNE_WEBHOOK_LOG_JOB, RECONCILE_LEDGER_JOB } from '../../src/queues/names.js';
import { WEBHOOK_LOG_PRUNE_EVERY_MS, type WebhookLogPrune } from '../../src/services/webhook-retention.js';
import { BUDGET_SPEND_PRUNE_EVERY_MS, type BudgetSpendPrune } from '../../src/services/budget-spend-retention.js';
import { SWEEP_DUE_JOB } from '../../workers/processors/sweep-due.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_REDIS_URL } from '../setup/env.js';

const prefix = `cp-test-${randomUUID()}`;
let services: TestServices;
const running: RunningWorkers[] = [];
let connection: Redis;
let queue: Queue;
let events: QueueEvents;
/** prune-webhook-log runs finished, with their results or failures (attached before the workers start: the first run is made at once). */
const pruneRuns: Array<{ jobId: string; returnvalue?: unknown; failedReason?: string }> = [];
/** prune-budget-spend runs finished, likewise. */
const budgetPruneRuns: Array<{ jobId: string; returnvalue?: unknown; failedReason?: string }> = [];

beforeAll(async () => {
  services = createTestServices(4);
  const env = parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: 'postgresql://unused/unused', SWEEP_EVERY_MS: '100' });
  connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix });
  events = await queueEventsFromNow(MAINTENANCE_QUEUE, prefix);
  events.on('completed', ({ jobId, returnvalue }) => {
    if (jobId.startsWith(`repeat:${PRUNE_WEBHOOK_LOG_JOB}:`)) pruneRuns.push({ jobId, returnvalue });
    if (jobId.startsWith(`repeat:${PRUNE_BUDGET_SPEND_JOB}:`)) budgetPruneRuns.push({ jobId, returnvalue });
  });
  events.on('failed', ({ jobId, failedReason }) => {
    if (jobId.startsWith(`repeat:${PRUNE_WEBHOOK_LOG_JOB}:`)) pruneRuns.push({ jobId, failedReason });
    if (jobId.startsWith(`repeat:${PRUNE_BUDGET_SPEND_JOB}:`)) budgetPruneRuns.push({ jobId, failedReason });
  });
  // Two workers processes on one Redis (each re-creates the schedulers at boot).
  for (let i = 0; i < 2; i++) running.push(await startWorkers({ env, pool: services.pool, log: pino({ level: 'silent' }), prefix, services, relay: false }));
});

afterAll(async () => {
  for (const w of running) await w.close();
  await queue.obliterate({ force: true });
  await queue.close();
  await events.close();
  connection.disconnect();
  await services.close();
});

describe('maintenance jobs made by the schedulers', () => {
  it('carry a bounded retention of completed and failed jobs; two processes keep one schedule per job', async () => {
    const keys = (await queue.getJobSchedulers()).map((s) => s.key).sort();
    expect(keys).toEqual([ANALYZE_STALE_TABLES_JOB, PRUNE_BUDGET_SPEND_JOB, PRUNE_WEBHOOK_LOG_JOB, RECONCILE_LEDGER_JOB, SWEEP_DUE_JOB].sort());
    // Three sweeps completed (one every 100 ms), whichever process ran them.
    const completed: string[] = [];
    await new Promise<void>((resolve) => {
      events.on('completed', ({ jobId }) => {
        if (jobId.startsWith(`repeat:${SWEEP_DUE_JOB}:`) && !completed.includes(jobId) && completed.push(jobId) >= 3) resolve();
      });
    });
    for (const id of completed) {
      // Kept: three runs are far inside the retention (without one, every run is kept too).
      const job = await queue.getJob(id);
      expect(job, id).toBeDefined();
      if (!job) throw new Error(`job ${id} not found`);
      expect(job.opts.removeOnComplete).toEqual({ count: MAINTENANCE_JOBS_KEPT });
      expect(job.opts.removeOnFail).toEqual({ count: MAINTENANCE_JOBS_KEPT });
    }
    // The job waiting for each scheduler's next run carries it as well.
    for (const key of [ANALYZE_STALE_TABLES_JOB, RECONCILE_LEDGER_JOB, PRUNE_WEBHOOK_LOG_JOB, PRUNE_BUDGET_SPEND_JOB]) {
      const next = (await queue.getDelayed()).concat(await queue.getWaiting()).filter((j) => j.name === key);
      expect(next.length).toBe(1);
      expect(next[0]!.opts.removeOnComplete).toEqual({ count: MAINTENANCE_JOBS_KEPT });
    }
  });

  it('prune-webhook-log is scheduled hourly (WEBHOOK_LOG_RETENTION_DAYS 30 by default) and runs pruneWebhookLog; a process booted with 0 removes its schedule', async () => {
    const scheduler = (await queue.getJobSchedulers()).find((s) => s.key === PRUNE_WEBHOOK_LOG_JOB);
    expect(scheduler?.every).toBe(WEBHOOK_LOG_PRUNE_EVERY_MS);
    // Its first run is made at once: wait for it, whichever process ran it.
    if (pruneRuns.length === 0) {
      await new Promise<void>((resolve) => {
        const done = ({ jobId }: { jobId: string }) => jobId.startsWith(`repeat:${PRUNE_WEBHOOK_LOG_JOB}:`) && resolve();
        events.on('completed', done);
        events.on('failed', done);
      });
    }
    const run = pruneRuns[0]!;
    expect(run.failedReason).toBeUndefined();
    const result = (typeof run.returnvalue === 'string' ? JSON.parse(run.returnvalue) : run.returnvalue) as WebhookLogPrune;
    expect(result.batches).toBeGreaterThanOrEqual(1);
    expect(typeof result.cutoff).toBe('string');

    const env = parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: 'postgresql://unused/unused', WEBHOOK_LOG_RETENTION_DAYS: '0' });
    running.push(await startWorkers({ env, pool: services.pool, log: pino({ level: 'silent' }), prefix, services, relay: false }));
    const keys = (await queue.getJobSchedulers()).map((s) => s.key).sort();
    expect(keys).toEqual([ANALYZE_STALE_TABLES_JOB, PRUNE_BUDGET_SPEND_JOB, RECONCILE_LEDGER_JOB, SWEEP_DUE_JOB].sort());
    const next = (await queue.getDelayed()).concat(await queue.getWaiting()).filter((j) => j.name === PRUNE_WEBHOOK_LOG_JOB);
    expect(next).toEqual([]);
  });

  it('prune-budget-spend is scheduled hourly (BUDGET_SPEND_RETENTION_DAYS 30 by default) and runs pruneBudgetSpend; a process booted with 0 removes its schedule', async () => {
    const scheduler = (await queue.getJobSchedulers()).find((s) => s.key === PRUNE_BUDGET_SPEND_JOB);
    expect(scheduler?.every).toBe(BUDGET_SPEND_PRUNE_EVERY_MS);
    if (budgetPruneRuns.length === 0) {
      await new Promise<void>((resolve) => {
        const done = ({ jobId }: { jobId: string }) => jobId.startsWith(`repeat:${PRUNE_BUDGET_SPEND_JOB}:`) && resolve();
        events.on('completed', done);
        events.on('failed', done);
      });
    }
    const run = budgetPruneRuns[0]!;
    expect(run.failedReason).toBeUndefined();
    const result = (typeof run.returnvalue === 'string' ? JSON.parse(run.returnvalue) : run.returnvalue) as BudgetSpendPrune;
    expect(result.batches).toBeGreaterThanOrEqual(1);
    // The cutoff is 30 days before the worker's clock when it ran.
    expect(Date.now() - Date.parse(result.cutoff as unknown as string)).toBeGreaterThanOrEqual(30 * 86_400_000);
    expect(Date.now() - Date.parse(result.cutoff as unknown as string)).toBeLessThan(31 * 86_400_000);

    const env = parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: 'postgresql://unused/unused', BUDGET_SPEND_RETENTION_DAYS: '0' });
    running.push(await startWorkers({ env, pool: services.pool, log: pino({ level: 'silent' }), prefix, services, relay: false }));
    expect((await queue.getJobSchedulers()).map((s) => s.key)).not.toContain(PRUNE_BUDGET_SPEND_JOB);
    const next = (await queue.getDelayed()).concat(await queue.getWaiting()).filter((j) => j.name === PRUNE_BUDGET_SPEND_JOB);
    expect(next).toEqual([]);
  });
});

describe('startWorkers refusing its options', () => {
  it('a concurrency that is not a positive integer is refused before anything is opened: no scheduler or queue key is written', async () => {
    const fresh = `cp-test-${randomUUID()}`;
    const env = parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: 'postgresql://unused/unused' });
    const log = pino({ level: 'silent' });
    await expect(startWorkers({ env, pool: services.pool, log, prefix: fresh, services, relay: false, webhookConcurrency: 0 })).rejects.toThrow(RangeError);
    await expect(startWorkers({ env, pool: services.pool, log, prefix: fresh, services, relay: false, concurrency: 1.5 })).rejects.toThrow(RangeError);
    // The schedulers are written first when the workers start: a refusal after them wrote these.
    expect(await connection.keys(`${fresh}:*`)).toEqual([]);
  });
});
