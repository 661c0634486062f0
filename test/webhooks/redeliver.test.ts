/**
 * The operator's redelivery tool (`npm run webhooks`, scripts/webhooks.ts, over
 * src/services/webhook-redelivery.ts) on the real path: real charges raise credit alerts, the
 * outbox relay and the ledger-jobs worker (real PostgreSQL, real Redis with a unique prefix)
 * deliver them to a real HTTP receiver on 127.0.0.1, and the CLI runs as its own process (as an
 * operator runs it) against the same database and queue prefix.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import type { RunningWorkers } from '../../workers/start.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { verifyWebhookSignature, webhookJob, webhookJobId, type WebhookEvent } from '../../src/services/webhooks.js';
import { listFailedWebhooks, redeliverWebhooks } from '../../src/services/webhook-redelivery.js';
import type { TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { runScript, type ScriptRun } from '../setup/run-script.js';
import { startWebhookPipeline, type Receiver, type ReceivedWebhook, type WebhookPipeline, type collectOutcomes } from './helpers.js';

const SECRET = 'whsec_redeliver_0123456789abcdef0123456789ab';
const prefix = `cp-test-redeliver-${randomUUID()}`;
const fileStart = new Date();
let receiver: Receiver;
let services: TestServices;
let workers: RunningWorkers;
let events: QueueEvents;
let jobs: ReturnType<typeof collectOutcomes>;

let pipeline: WebhookPipeline | undefined;

beforeAll(async () => {
  pipeline = await startWebhookPipeline(SECRET, prefix);
  ({ receiver, services, events, jobs, workers } = pipeline);
});

afterAll(async () => {
  await pipeline?.close();
});

/** Runs the CLI as its own process with this file's database and queue prefix (and, like an operator's shell, no webhook settings). */
function cli(args: string[]): Promise<ScriptRun> {
  return runScript('scripts/webhooks.ts', args, { ...process.env, NODE_ENV: 'test', DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: TEST_REDIS_URL, QUEUE_PREFIX: prefix, WEBHOOK_URL: '', WEBHOOK_SECRET: '' });
}

/** `failed --json` entries of this file (first attempted since the file started). */
async function failedJson(): Promise<Array<Record<string, unknown>>> {
  const r = await cli(['failed', '--since', fileStart.toISOString(), '--limit', '1000', '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Array<Record<string, unknown>>;
}

/** A funded account charged to 20 % (the 25 % alert only); the receiver answers its requests with `steps` first. Resolves with the alert once its first job finished. */
async function alertWith(steps: Array<number>, expected: 'completed' | 'failed'): Promise<{ accountId: string; alertId: string; jobId: string }> {
  const accountId = await createFundedAccount(services, { paid: 100 });
  receiver.script(accountId, steps);
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
  const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId]);
  expect(rows).toHaveLength(1);
  const alertId = rows[0].id as string;
  const jobId = webhookJobId('credit_alert.raised', alertId);
  expect(await jobs.wait(jobId)).toMatchObject({ state: expected });
  jobs.outcomes.delete(jobId); // so that waiting for the redelivery's job waits for its own outcome
  return { accountId, alertId, jobId };
}

async function deliveryLog(eventId: string) {
  const { rows } = await services.pool.query('SELECT attempt, status, response_code, error FROM webhook_deliveries WHERE event_id = $1 ORDER BY created_at, attempt', [eventId]);
  return rows.map((r) => [r.attempt, r.status, r.response_code]);
}

function expectSigned(req: ReceivedWebhook): WebhookEvent {
  expect(verifyWebhookSignature(SECRET, req.rawBody, String(req.headers['creditpool-signature']), { nowSeconds: req.atSeconds })).toMatchObject({ valid: true });
  const event = JSON.parse(req.rawBody) as WebhookEvent;
  expect(req.headers['creditpool-event-id']).toBe(event.id);
  return event;
}

describe('npm run webhooks', () => {
  it('an event whose job gave up is listed by `failed`; `redeliver` sends it once, signed, with the same id and body, logs it, and it leaves `failed`', async () => {
    // 400 is a permanent refusal: the job fails after one attempt and BullMQ keeps it as failed,
    // as it keeps a job that spent all 17 attempts.
    const { accountId, alertId, jobId } = await alertWith([400], 'failed');
    expect((await workers.webhookQueue.getJob(jobId))?.finishedOn).toBeDefined();

    const listed = (await failedJson()).find((e) => e.eventId === alertId);
    expect(listed).toMatchObject({
      eventType: 'credit_alert.raised',
      id: `credit_alert.raised:${alertId}`,
      accountId,
      attempts: 1,
      lastAttempt: 1,
      lastResponseCode: 400,
      lastError: 'HTTP 400: refused with 400',
      state: 'permanent',
    });
    const human = await cli(['failed', '--since', fileStart.toISOString()]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/LAST ATTEMPT\s+TYPE\s+EVENT ID\s+ACCOUNT ID\s+ATTEMPTS\s+STATE\s+LAST RESULT/);
    expect(human.stdout).toMatch(new RegExp(`credit_alert\\.raised\\s+${alertId}\\s+${accountId}\\s+1\\s+permanent\\s+HTTP 400: refused with 400`));

    const r = await cli(['redeliver', alertId]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`credit_alert.raised:${alertId}  queued`);
    expect(await jobs.wait(jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });

    const got = receiver.forAccount(accountId);
    expect(got).toHaveLength(2);
    const [original, redelivered] = got.map(expectSigned);
    expect(redelivered!.id).toBe(`credit_alert.raised:${alertId}`);
    expect(got[1]!.rawBody).toBe(got[0]!.rawBody); // the same body the original carried
    expect(original).toEqual(redelivered);
    expect(await deliveryLog(alertId)).toEqual([
      [1, 'FAILED', 400],
      [1, 'DELIVERED', 200],
    ]);
    expect((await failedJson()).some((e) => e.eventId === alertId)).toBe(false);
  });

  it('a delivered event is refused, by uuid or by its id: nothing is queued or sent, exit 1', async () => {
    const { accountId, alertId, jobId } = await alertWith([], 'completed');
    const finishedOn = (await workers.webhookQueue.getJob(jobId))?.finishedOn;
    expect(finishedOn).toBeDefined();
    for (const ref of [alertId, `credit_alert.raised:${alertId}`]) {
      const r = await cli(['redeliver', ref]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`credit_alert.raised:${alertId}  refused: already delivered (never sent twice)`);
    }
    const all = await cli(['redeliver', '--all-failed', '--since', fileStart.toISOString(), '--json']);
    expect(all.code, all.stderr).toBe(0);
    expect((JSON.parse(all.stdout) as Array<{ id: string }>).some((o) => o.id.endsWith(alertId))).toBe(false);
    // The completed job was not removed and re-added: same job, same finish.
    const job = await workers.webhookQueue.getJob(jobId);
    expect(job?.finishedOn).toBe(finishedOn);
    expect(await job?.getState()).toBe('completed');
    expect(receiver.forAccount(accountId)).toHaveLength(1);
    expect(await deliveryLog(alertId)).toEqual([[1, 'DELIVERED', 200]]);
  });

  it('two redeliveries of one event at the same moment add one job: its attempts go 1, 2, 3 and it is delivered once', async () => {
    const { accountId, alertId, jobId } = await alertWith([400, 500, 500], 'failed');
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const sinks = [createQueueJobSink(connection, prefix), createQueueJobSink(connection, prefix)];
    try {
      const ref = { eventId: alertId };
      const [a, b] = await Promise.all(sinks.map((sink) => redeliverWebhooks(services.pool, sink, [ref])));
      for (const outcome of [...a!, ...b!]) expect(['QUEUED', 'PENDING', 'PROMOTED']).toContain(outcome.status);
    } finally {
      await Promise.all(sinks.map((s) => s.close()));
      connection.disconnect();
    }
    // The original 400, then 500, 500 and a 200: with one job its attempts 1, 2, 3; two jobs
    // would each have started at attempt 1 (1, 1, then 2 answered 200, the other sending nothing).
    await receiver.waitFor(() => receiver.forAccount(accountId).length >= 4, 'the redelivered event to be answered 200');
    const again = receiver.forAccount(accountId).slice(1);
    expect(again.map((r) => r.headers['creditpool-delivery-attempt'])).toEqual(['1', '2', '3']);
    expect(await jobs.wait(jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 3 } });
    expect(receiver.forAccount(accountId)).toHaveLength(4);
    expect(await deliveryLog(alertId)).toEqual([
      [1, 'FAILED', 400],
      [1, 'FAILED', 500],
      [2, 'FAILED', 500],
      [3, 'DELIVERED', 200],
    ]);
  });

  it('an event whose job waits for a retry is promoted: delivered now, not at the end of the backoff', async () => {
    const { accountId, alertId, jobId } = await alertWith([400], 'failed');
    // Its job as it stands hours into an outage: waiting out a long backoff.
    await workers.webhookQueue.remove(jobId);
    const job = webhookJob({ eventType: 'credit_alert.raised', eventId: alertId, accountId });
    await workers.webhookQueue.add(job.name, job.data, { jobId, delay: 3_600_000, attempts: 17 });
    expect(await (await workers.webhookQueue.getJob(jobId))?.getState()).toBe('delayed');

    const r = await cli(['redeliver', `credit_alert.raised:${alertId}`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([{ id: `credit_alert.raised:${alertId}`, status: 'PROMOTED', accountId, jobId, jobState: 'delayed' }]);
    expect(await jobs.wait(jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED' } });
    expect(receiver.forAccount(accountId)).toHaveLength(2);
  });

  it('`failed` tells exhausted from retrying events, newest first, and honours --since and --limit', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const [older, newer] = [randomUUID(), randomUUID()];
    const t0 = new Date(Date.now() + 3_600_000); // after every real attempt of this run
    // `older`: all 17 attempts failed (503); `newer`: two attempts so far, the last a timeout.
    for (let attempt = 1; attempt <= 17; attempt++) {
      await services.pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, error, created_at)
         VALUES (gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://x', $3, 'FAILED', 503, 'HTTP 503', $4)`,
        [older, accountId, attempt, new Date(t0.getTime() + attempt * 1000)],
      );
    }
    for (let attempt = 1; attempt <= 2; attempt++) {
      await services.pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, error, created_at)
         VALUES (gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://x', $3, 'FAILED', NULL, 'timeout after 5000 ms', $4)`,
        [newer, accountId, attempt, new Date(t0.getTime() + 60_000 + attempt * 1000)],
      );
    }
    onTestFinished(async () => void (await services.pool.query('DELETE FROM webhook_deliveries WHERE event_id = ANY($1)', [[older, newer]])));
    const listed = await listFailedWebhooks(services.pool, { since: t0 });
    expect(listed.map((e) => [e.eventId, e.attempts, e.lastAttempt, e.lastResponseCode, e.lastError, e.state])).toEqual([
      [newer, 2, 2, null, 'timeout after 5000 ms', 'retrying'],
      [older, 17, 17, 503, 'HTTP 503', 'exhausted'],
    ]);
    expect(listed[1]!.lastAttemptAt.getTime()).toBe(t0.getTime() + 17_000);
    expect((await listFailedWebhooks(services.pool, { since: new Date(t0.getTime() + 30_000) })).map((e) => e.eventId)).toEqual([newer]);
    const r = await cli(['failed', '--since', t0.toISOString(), '--limit', '1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as Array<{ eventId: string }>).map((e) => e.eventId)).toEqual([newer]);
  });

  it('`failed` shows an event whose attempt is in flight (a fresh SENDING claim) as in_flight, not retrying; a claim whose run stopped (stale) as retrying', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const [sending, stale] = [randomUUID(), randomUUID()];
    const now = Date.now();
    // `sending`: attempt 1 failed (503), attempt 2 claimed just now and not answered yet.
    // `stale`: attempt 1 claimed 10 minutes ago (past WEBHOOK_TIMEOUT_MS + WEBHOOK_CLAIM_MARGIN_MS) with no outcome.
    const rows: Array<[string, number, string, number | null, Date]> = [
      [sending, 1, 'FAILED', 503, new Date(now - 2_000)],
      [sending, 2, 'SENDING', null, new Date(now - 1_000)],
      [stale, 1, 'SENDING', null, new Date(now - 600_000)],
    ];
    for (const [eventId, attempt, status, code, at] of rows) {
      await services.pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, created_at)
         VALUES (gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://x', $3, $4, $5, $6)`,
        [eventId, accountId, attempt, status, code, at],
      );
    }
    onTestFinished(async () => void (await services.pool.query('DELETE FROM webhook_deliveries WHERE event_id = ANY($1)', [[sending, stale]])));
    const since = new Date(now - 700_000);
    const ours = (list: Array<{ eventId: unknown; state: unknown; lastAttempt: unknown }>) =>
      list.filter((e) => e.eventId === sending || e.eventId === stale).map((e) => [e.eventId, e.lastAttempt, e.state]);
    const expected = [
      [sending, 2, 'in_flight'],
      [stale, 1, 'retrying'],
    ];
    expect(ours(await listFailedWebhooks(services.pool, { since, limit: null }))).toEqual(expected);
    const r = await cli(['failed', '--since', since.toISOString(), '--limit', '1000', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(ours(JSON.parse(r.stdout) as Array<{ eventId: unknown; state: unknown; lastAttempt: unknown }>)).toEqual(expected);
    const table = await cli(['failed', '--since', since.toISOString(), '--limit', '1000']);
    expect(table.stdout.split('\n').find((line) => line.includes(sending))).toMatch(/\bin_flight\b/);
  });

  it('bad arguments exit 2 with a clear message and change nothing', async () => {
    const { alertId, jobId } = await alertWith([400], 'failed');
    const cases: Array<[string[], RegExp]> = [
      [[], /missing command/],
      [['resend', alertId], /unknown command "resend"/],
      [['redeliver'], /redeliver needs event ids or --all-failed/],
      [['redeliver', alertId, '--all-failed'], /give event ids or --all-failed, not both/],
      [['redeliver', 'not-an-id', alertId], /not an event id \(a uuid or <eventType>:<uuid>\): not-an-id/],
      [['redeliver', `credit_alert.paused:${alertId}`], /not an event id/],
      [['redeliver', alertId, '--since', '2026-01-01T00:00:00Z'], /--since goes with --all-failed/],
      [['redeliver', alertId, '--limit', '3'], /--limit goes with failed/],
      [['failed', '--since', 'yesterday'], /--since must be an ISO-8601 instant/],
      [['failed', '--limit', '0'], /--limit must be an integer from 1 to 1000, got "0"/],
      [['failed', '--limit', '5000'], /--limit must be an integer from 1 to 1000/],
      [['failed', '--bogus'], /Unknown option '--bogus'/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toContain('usage:');
    }
    // The refused redeliveries of alertId above queued nothing: its job is still the failed one.
    expect(await (await workers.webhookQueue.getJob(jobId))?.getState()).toBe('failed');

    const unknown = randomUUID();
    const r = await cli(['redeliver', unknown]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${unknown}  refused: no such webhook event`);
  });
});
