/**
 * Retention of the webhook delivery log (src/services/webhook-retention.ts pruneWebhookLog, the
 * `prune-webhook-log` maintenance job) against every reader of the log: the delivery's claim (a
 * DELIVERED row means never send again), the sweep (findUndeliveredWebhookJobs), the operator's
 * redelivery, on real PostgreSQL, real Redis and a real HTTP receiver on 127.0.0.1. No relay runs
 * in this file: the alerts' outbox jobs are taken out and attempts are logged (or delivered) here.
 * Attempts are aged by setting created_at in the past, as time would; alerts get their age from
 * test clocks started in the past (or the future).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import type { Env } from '../../src/config/env.js';
import { createQueueJobSink, type QueueJobSink } from '../../src/queues/job-sink.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { deliverWebhook, findUndeliveredWebhookJobs, WebhookDeliveryError, type WebhookContext } from '../../src/services/webhooks.js';
import { pruneWebhookLog, readWebhookLogPrunedBefore } from '../../src/services/webhook-retention.js';
import { redeliverWebhooks } from '../../src/services/webhook-redelivery.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { receiverEnv, startReceiver, type Receiver } from './helpers.js';

const SECRET = 'whsec_retention_0123456789abcdef0123456789ab';
const DAY_MS = 24 * 3600_000;
const prefix = `cp-test-retention-${randomUUID()}`;
let receiver: Receiver;
let services: TestServices;
let env: Env;
let ctx: WebhookContext;
let redis: Redis;
let sink: QueueJobSink;

beforeAll(async () => {
  receiver = await startReceiver();
  services = createTestServices(4);
  env = receiverEnv(receiver, SECRET);
  ctx = { pool: services.pool, env };
  redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  sink = createQueueJobSink(redis, prefix);
});

afterAll(async () => {
  await sink?.webhookQueue.obliterate({ force: true }).catch(() => undefined);
  await sink?.close();
  redis?.disconnect();
  await receiver?.close();
  await services?.close();
});

interface Alert {
  accountId: string;
  alertId: string;
}

/** A funded account on a test clock started `offsetMs` from now, charged to 20 % (one alert, 25 %); its outbox delivery job taken out. */
async function alertAt(offsetMs: number): Promise<Alert> {
  const accountId = await createFundedAccount(services, { paid: 100, testClockStart: new Date(Date.now() + offsetMs) });
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
  await services.pool.query(`DELETE FROM outbox_events WHERE account_id = $1 AND topic = 'job' AND payload->>'name' = 'deliver-webhook'`, [accountId]);
  const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId]);
  expect(rows).toHaveLength(1);
  return { accountId, alertId: rows[0].id };
}

/** Logs one attempt of the alert's event made `ageMs` ago. */
async function logAttempt(a: Alert, attempt: number, status: 'DELIVERED' | 'FAILED' | 'SENDING', ageMs: number, responseCode: number | null = null): Promise<void> {
  await services.pool.query(
    `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, created_at)
     VALUES (gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://receiver.test/hooks', $3, $4, $5, now() - make_interval(secs => $6::float8 / 1000))`,
    [a.alertId, a.accountId, attempt, status, responseCode, ageMs],
  );
}

async function attemptsOf(a: Alert): Promise<number> {
  const { rows } = await services.pool.query(`SELECT count(*)::int AS n FROM webhook_deliveries WHERE event_id = $1 AND event_type = 'credit_alert.raised'`, [a.alertId]);
  return rows[0].n;
}

/** Ages every logged attempt of the alert's event by `ms`. */
async function age(a: Alert, ms: number): Promise<void> {
  await services.pool.query(`UPDATE webhook_deliveries SET created_at = created_at - make_interval(secs => $2::float8 / 1000) WHERE event_id = $1`, [a.alertId, ms]);
}

const payload = (a: Alert) => ({ eventType: 'credit_alert.raised' as const, eventId: a.alertId, accountId: a.accountId });

describe('pruneWebhookLog', () => {
  it('deletes old delivered, exhausted and permanently refused events whole; keeps recent, retrying, in-flight and re-attempted ones', async () => {
    const old = -60 * DAY_MS;
    const delivered = await alertAt(old);
    await logAttempt(delivered, 1, 'FAILED', 41 * DAY_MS, 503);
    await logAttempt(delivered, 2, 'DELIVERED', 40 * DAY_MS, 200);
    const exhausted = await alertAt(old);
    for (let n = 1; n <= 17; n++) await logAttempt(exhausted, n, 'FAILED', 41 * DAY_MS - n * 3600_000, 503);
    const permanent = await alertAt(old);
    await logAttempt(permanent, 1, 'FAILED', 40 * DAY_MS, 410);
    // Kept: an attempt within the retention (an operator's redelivery a day ago) keeps the event's older ones too.
    const reattempted = await alertAt(old);
    await logAttempt(reattempted, 17, 'FAILED', 40 * DAY_MS, 503);
    await logAttempt(reattempted, 1, 'FAILED', DAY_MS, 503);
    const retrying = await alertAt(old);
    await logAttempt(retrying, 3, 'FAILED', 3600_000, 503);
    const inFlight = await alertAt(old);
    await logAttempt(inFlight, 1, 'SENDING', 1_000);
    const recent = await alertAt(0);
    await logAttempt(recent, 1, 'DELIVERED', 0, 200);

    const prune = await pruneWebhookLog(services.pool, { retentionDays: 30 });
    expect(prune.cutoff).toBeInstanceOf(Date);
    expect(prune.rows).toBeGreaterThanOrEqual(2 + 17 + 1);
    for (const a of [delivered, exhausted, permanent]) expect(await attemptsOf(a), a.alertId).toBe(0);
    expect(await attemptsOf(reattempted)).toBe(2);
    expect(await attemptsOf(retrying)).toBe(1);
    expect(await attemptsOf(inFlight)).toBe(1);
    expect(await attemptsOf(recent)).toBe(1);
    // The cutoff applied is recorded with the deletes (redelivery and stale jobs read it).
    expect((await readWebhookLogPrunedBefore(services.pool))?.getTime()).toBe(prune.cutoff!.getTime());

    // Idempotent: a second run deletes nothing of these.
    await pruneWebhookLog(services.pool, { retentionDays: 30 });
    expect([await attemptsOf(reattempted), await attemptsOf(retrying), await attemptsOf(inFlight), await attemptsOf(recent)]).toEqual([2, 1, 1, 1]);
  });

  it('deletes in batches of about batchRows rows, one statement each, never splitting an event across statements', async () => {
    // The oldest: one event of 5 attempts, which the first page (4 rows) cuts; it goes whole, in the first statement.
    const long = await alertAt(-60 * DAY_MS);
    for (let n = 1; n <= 5; n++) await logAttempt(long, n, 'FAILED', 50 * DAY_MS - n * 1_000, 503);
    const events: Alert[] = [];
    for (let i = 0; i < 12; i++) {
      const a = await alertAt(-60 * DAY_MS);
      // Two attempts 1 ms apart, events 1 s apart: pages of 4 rows cut some events in two.
      await logAttempt(a, 1, 'FAILED', 40 * DAY_MS + (20 - i) * 1_000 + 1, 503);
      await logAttempt(a, 2, 'DELIVERED', 40 * DAY_MS + (20 - i) * 1_000, 200);
      events.push(a);
    }
    const prune = await pruneWebhookLog(services.pool, { retentionDays: 30, batchRows: 4 });
    expect(prune.batches).toBeGreaterThanOrEqual(Math.ceil((5 + 24) / 4));
    // At most a page (4) plus the rest of the event its end cuts through; 5 = the long event, whole.
    expect(prune.largestBatchRows).toBe(5);
    expect(prune.rows).toBeGreaterThanOrEqual(5 + 24);
    for (const a of [long, ...events]) expect(await attemptsOf(a)).toBe(0);
  });

  it('keeps an event the sweep could still re-add (raised within the retention, e.g. on a test clock ahead), whatever the age of its attempts', async () => {
    // Delivered 40 days ago (wall clock), stamped by its account's clock 2 h ago / 5 days ahead.
    const twoHoursAgo = await alertAt(-2 * 3600_000);
    const ahead = await alertAt(5 * DAY_MS);
    for (const a of [twoHoursAgo, ahead]) await logAttempt(a, 1, 'DELIVERED', 40 * DAY_MS, 200);
    await pruneWebhookLog(services.pool, { retentionDays: 30 });
    expect(await attemptsOf(twoHoursAgo)).toBe(1);
    expect(await attemptsOf(ahead)).toBe(1);
    // The sweep sees their DELIVERED rows and re-adds neither, now or once the one ahead is in its window.
    const ids = (jobs: Awaited<ReturnType<typeof findUndeliveredWebhookJobs>>) => jobs.map((j) => (j.data as { eventId: string }).eventId);
    expect(ids(await findUndeliveredWebhookJobs(services.pool, new Date()))).not.toContain(twoHoursAgo.alertId);
    expect(ids(await findUndeliveredWebhookJobs(services.pool, new Date(Date.now() + 5 * DAY_MS + 3600_000)))).not.toContain(ahead.alertId);
  });

  it('with retentionDays 0 reads and deletes nothing; refuses 1..6 days', async () => {
    const a = await alertAt(-400 * DAY_MS);
    await logAttempt(a, 1, 'DELIVERED', 365 * DAY_MS, 200);
    expect(await pruneWebhookLog(services.pool, { retentionDays: 0 })).toEqual({ cutoff: null, batches: 0, events: 0, rows: 0, largestBatchRows: 0 });
    expect(await attemptsOf(a)).toBe(1);
    await expect(pruneWebhookLog(services.pool, { retentionDays: 6 })).rejects.toThrow(RangeError);
    await expect(pruneWebhookLog(services.pool, { retentionDays: 30, batchRows: 0 })).rejects.toThrow(RangeError);
    expect(await attemptsOf(a)).toBe(1);
    await pruneWebhookLog(services.pool, { retentionDays: 30 }); // leave no old row to the next tests
  });
});

describe('a pruned event is never sent again', () => {
  it('a delivery job made before the prune sends nothing for an event whose log is gone; a job made after it delivers an event never attempted', async () => {
    const a = await alertAt(-60 * DAY_MS);
    // Its job's first run delivers it; then 40 days pass (its job, made then, is 40 days old).
    expect(await deliverWebhook(ctx, payload(a), 1, { jobCreatedAt: new Date() })).toMatchObject({ status: 'DELIVERED' });
    const jobMadeAt = new Date(Date.now() - 40 * DAY_MS - 60_000);
    expect(receiver.forAccount(a.accountId)).toHaveLength(1);
    await age(a, 40 * DAY_MS);
    await pruneWebhookLog(services.pool, { retentionDays: 30 });
    expect(await attemptsOf(a)).toBe(0);

    // A late run of that job (its creation time kept by BullMQ across retries): refused, permanently, unsent.
    const late = deliverWebhook(ctx, payload(a), 2, { jobCreatedAt: jobMadeAt });
    await expect(late).rejects.toThrow(WebhookDeliveryError);
    await expect(late).rejects.toMatchObject({ permanent: true, message: expect.stringMatching(/delivery log was pruned/) });
    expect(receiver.forAccount(a.accountId)).toHaveLength(1);
    expect(await attemptsOf(a)).toBe(0);

    // An event raised on a test clock long in the past but never attempted: its job, made now, delivers it.
    const backdated = await alertAt(-60 * DAY_MS);
    expect(await deliverWebhook(ctx, payload(backdated), 1, { jobCreatedAt: new Date() })).toMatchObject({ status: 'DELIVERED' });
    expect(receiver.forAccount(backdated.accountId)).toHaveLength(1);
  });

  it('redelivery refuses an event raised before the prune with no attempt logged (LOG_PRUNED), and still re-adds one whose log is there or that is newer', async () => {
    const pruned = await alertAt(-60 * DAY_MS);
    await logAttempt(pruned, 1, 'DELIVERED', 40 * DAY_MS, 200);
    const failedOld = await alertAt(-60 * DAY_MS);
    await logAttempt(failedOld, 17, 'FAILED', 2 * DAY_MS, 503);
    const neverAttempted = await alertAt(0);
    await pruneWebhookLog(services.pool, { retentionDays: 30 });
    expect(await attemptsOf(pruned)).toBe(0);

    const out = await redeliverWebhooks(services.pool, sink, [pruned, failedOld, neverAttempted].map((a) => ({ eventId: a.alertId })));
    expect(out.map((o) => o.status)).toEqual(['LOG_PRUNED', 'QUEUED', 'QUEUED']);
    expect(await sink.webhookQueue.getJob(`webhook-credit_alert-${pruned.alertId}`)).toBeUndefined();
  });
});
