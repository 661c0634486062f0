/**
 * Upgrade safety of the webhook-deliveries queue: `deliver-webhook` jobs an earlier version put
 * on ledger-jobs (its relay and sweep added deliveries there) and left waiting or delayed at the
 * upgrade are still delivered exactly as before (workers/start.ts LEGACY_DELIVERY): a job never
 * attempted is moved to webhook-deliveries with the same jobId and options and delivered at its
 * first attempt there; a job waiting out a retry's backoff runs on ledger-jobs as before, its
 * attempt numbers going on. Meanwhile the sweep's re-add adds no second job for such an event.
 * Real path: alerts raised by recordUsage (their outbox rows taken out, so that the jobs come
 * only from the old queue), a stand-in for the earlier version's ledger-jobs worker, then the
 * real workers, a real HTTP receiver.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { LEDGER_JOBS_QUEUE, LEDGER_JOB_OPTIONS, WEBHOOK_DELIVERY_QUEUE, type OutboxJob } from '../../src/queues/names.js';
import { createQueueJobSink, jobOptions } from '../../src/queues/job-sink.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { startWorkers, type RunningWorkers } from '../../workers/start.js';
import { processDeliverWebhook } from '../../workers/processors/deliver-webhook.js';
import { createFundedAccount } from '../factories/accounts.js';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { collectOutcomes, receiverEnv, startReceiver, type Receiver } from './helpers.js';

const prefix = `cp-test-webhook-upgrade-${randomUUID()}`;
let receiver: Receiver;
let services: TestServices;
let connection: Redis;
let workers: RunningWorkers | undefined;
const log = pino({ level: 'silent' });

beforeAll(async () => {
  receiver = await startReceiver();
  services = createTestServices(8);
  connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
});

afterAll(async () => {
  await workers?.close();
  for (const name of [LEDGER_JOBS_QUEUE, WEBHOOK_DELIVERY_QUEUE]) {
    const q = new Queue(name, { connection, prefix });
    await q.obliterate({ force: true }).catch(() => undefined);
    await q.close();
  }
  connection?.disconnect();
  await receiver?.close();
  await services?.close();
});

/** A funded account charged to 20 % (the 25 % alert only); its outbox job row is taken out and returned (the old version's relay had enqueued it). */
async function alertJob(): Promise<{ accountId: string; eventId: string; job: OutboxJob }> {
  const accountId = await createFundedAccount(services, { paid: 100 });
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
  const { rows } = await services.pool.query(`DELETE FROM outbox_events WHERE account_id = $1 AND topic = 'job' AND payload->>'name' = 'deliver-webhook' RETURNING payload`, [accountId]);
  expect(rows).toHaveLength(1);
  const job = rows[0].payload as OutboxJob;
  return { accountId, eventId: (job.data as { eventId: string }).eventId, job };
}

describe('deliver-webhook jobs left on ledger-jobs at the upgrade', () => {
  it('a waiting one is moved and delivered at its first attempt; a retrying one runs on as before (attempt 2); the sweep adds no second job', async () => {
    const env = receiverEnv(receiver, `whsec-upgrade-${randomUUID()}`);
    const ledger = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
    const ledgerEvents = await queueEventsFromNow(LEDGER_JOBS_QUEUE, prefix);
    const webhookEvents = await queueEventsFromNow(WEBHOOK_DELIVERY_QUEUE, prefix);
    const onLedger = collectOutcomes(ledgerEvents);
    const onWebhooks = collectOutcomes(webhookEvents);
    const sink = createQueueJobSink(connection, prefix);
    try {
      const waiting = await alertJob();
      const retrying = await alertJob();
      receiver.script(retrying.accountId, [503]);
      // The earlier version's relay: both on ledger-jobs, with the options it used (LEDGER_JOB_OPTIONS).
      const now = Date.now();
      await ledger.addBulk([waiting.job, retrying.job].map((j) => ({ name: j.name, data: j.data, opts: jobOptions(j, now) })));
      // The earlier version's worker makes the retrying one's first attempt (503, logged FAILED;
      // BullMQ delays its retry), then stops (the upgrade) before it runs anything else.
      const oldConnection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
      let failedOnce!: () => void;
      const firstFailed = new Promise<void>((resolve) => (failedOnce = resolve));
      const old = new Worker(
        LEDGER_JOBS_QUEUE,
        async (job) => {
          if (job.id !== retrying.job.jobId) throw new Error('not this one (the test runs only the retrying job on the old worker)');
          return processDeliverWebhook({ services, log, env }, { id: job.id, name: job.name, data: job.data, attemptsMade: job.attemptsMade, attempts: job.opts.attempts ?? 1 });
        },
        { connection: oldConnection, prefix, autorun: false },
      );
      old.on('failed', (job) => job?.id === retrying.job.jobId && failedOnce());
      // Only the retrying job may reach the stand-in: the waiting one is taken out of its way until the stand-in has stopped.
      await ledger.remove(waiting.job.jobId);
      void old.run();
      await firstFailed;
      await old.close();
      oldConnection.disconnect();
      await ledger.add(waiting.job.name, waiting.job.data, jobOptions(waiting.job, now));
      expect(await ledger.getJobState(retrying.job.jobId)).toBe('delayed');
      expect((await ledger.getJob(retrying.job.jobId))!.attemptsMade).toBe(1);
      expect(await ledger.getJobState(waiting.job.jobId)).toBe('waiting');

      // The new version's sweep (or an operator's redelivery) re-adds both events' jobs: no second job on webhook-deliveries for either.
      await sink.readd([waiting.job, retrying.job]);
      expect(await sink.webhookQueue.getJob(waiting.job.jobId)).toBeUndefined();
      expect(await sink.webhookQueue.getJob(retrying.job.jobId)).toBeUndefined();

      workers = await startWorkers({ env, pool: services.pool, log, prefix, services, relay: false });
      // The waiting one: moved, then delivered on webhook-deliveries at its first attempt, with the same options.
      expect(await onLedger.wait(waiting.job.jobId)).toEqual({ state: 'completed', returnvalue: { movedTo: WEBHOOK_DELIVERY_QUEUE } });
      expect(await onWebhooks.wait(waiting.job.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
      const moved = (await workers.webhookQueue.getJob(waiting.job.jobId))!;
      const o = LEDGER_JOB_OPTIONS['deliver-webhook'];
      expect(moved.opts).toMatchObject({ attempts: o.attempts, backoff: { type: 'exponential', delay: o.backoffMs, jitter: o.jitter } });
      expect(moved.data).toEqual(waiting.job.data);
      // The retrying one: its second attempt, on ledger-jobs, as before.
      expect(await onLedger.wait(retrying.job.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 2 } });
      expect(await workers.webhookQueue.getJob(retrying.job.jobId)).toBeUndefined();

      const log_ = async (eventId: string) => (await services.pool.query('SELECT attempt, status, response_code FROM webhook_deliveries WHERE event_id = $1 ORDER BY created_at', [eventId])).rows.map((r) => [r.attempt, r.status, r.response_code]);
      expect(await log_(waiting.eventId)).toEqual([[1, 'DELIVERED', 200]]);
      expect(await log_(retrying.eventId)).toEqual([
        [1, 'FAILED', 503],
        [2, 'DELIVERED', 200],
      ]);
      expect(receiver.forAccount(waiting.accountId).map((r) => r.headers['creditpool-delivery-attempt'])).toEqual(['1']);
      expect(receiver.forAccount(retrying.accountId).map((r) => r.headers['creditpool-delivery-attempt'])).toEqual(['1', '2']);
    } finally {
      await sink.close();
      await ledger.close();
      await ledgerEvents.close();
      await webhookEvents.close();
    }
  });
});
