/**
 * deliverWebhook called directly (no relay runs in this file, so the outbox `job` rows written
 * by real charges stay put; deleting them is exactly "the job was lost", e.g. Redis flushed
 * before it ran), and findUndeliveredWebhookJobs, the sweep's way to find and re-add lost jobs.
 * Real PostgreSQL, real Redis/BullMQ for the recovery, a real HTTP receiver on 127.0.0.1.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { startWorkers } from '../../workers/start.js';
import type { Env } from '../../src/config/env.js';
import { WEBHOOK_DELIVERY_QUEUE, type OutboxJob } from '../../src/queues/names.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { settleTopUpPayment } from '../../src/services/auto-top-up.js';
import { findPayment } from '../../src/services/purchase-pack.js';
import {
  buildWebhookEvent,
  deliverWebhook,
  findUndeliveredWebhookJobs,
  verifyWebhookSignature,
  WebhookDeliveryError,
  WEBHOOK_CLAIM_MARGIN_MS,
  WEBHOOK_MAX_LOGGED_ATTEMPTS,
  type WebhookContext,
  type WebhookJobData,
} from '../../src/services/webhooks.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import type pg from 'pg';
import { collectOutcomes, receiverEnv, startReceiver, type Receiver } from './helpers.js';

const SECRET = 'whsec_sweep_0123456789abcdef0123456789abcdef';
let receiver: Receiver;
let services: TestServices;
let env: Env;
let ctx: WebhookContext;

beforeAll(async () => {
  receiver = await startReceiver();
  services = createTestServices(8);
  env = receiverEnv(receiver, SECRET);
  ctx = { pool: services.pool, env };
});

afterAll(async () => {
  await receiver?.close();
  await services?.close();
});

/**
 * Where this file's alerts are stamped: its accounts run on test clocks that start here, so the
 * sweep's window (at most WEBHOOK_SWEEP_LIMIT alerts, oldest first) holds this file's alerts
 * only, however many alerts the test files before it raised on the wall clock.
 */
const FILE_CLOCK_START = new Date(Date.UTC(2099, 0, 1));

/**
 * A funded account charged down to `leftPercent` % through recordUsage. Its `deliver-webhook`
 * outbox rows are taken out of the outbox (the jobs are "lost") and returned with the alerts.
 */
async function lostAlerts(leftPercent: number): Promise<{ accountId: string; alerts: Array<{ id: string; threshold: number; createdAt: Date }>; lostJobs: OutboxJob[] }> {
  const accountId = await createFundedAccount(services, { paid: 100, testClockStart: FILE_CLOCK_START });
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: String(100 - leftPercent) } });
  const { rows } = await services.pool.query(
    `DELETE FROM outbox_events WHERE account_id = $1 AND topic = 'job' AND payload->>'name' = 'deliver-webhook' RETURNING payload`,
    [accountId],
  );
  const alerts = await services.pool.query('SELECT id, threshold, created_at FROM credit_alerts WHERE account_id = $1 ORDER BY threshold DESC', [accountId]);
  return {
    accountId,
    alerts: alerts.rows.map((r) => ({ id: r.id, threshold: r.threshold, createdAt: r.created_at })),
    lostJobs: rows.map((r) => r.payload as OutboxJob),
  };
}

const payloadOf = (accountId: string, alertId: string): WebhookJobData => ({ eventType: 'credit_alert.raised', eventId: alertId, accountId });
const later = (d: Date, ms: number) => new Date(d.getTime() + ms);

async function logOf(eventId: string) {
  const { rows } = await services.pool.query('SELECT attempt, status, response_code, error FROM webhook_deliveries WHERE event_id = $1 ORDER BY created_at, attempt', [eventId]);
  return rows;
}

function freeClosedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

describe('findUndeliveredWebhookJobs', () => {
  it('returns a lost job, byte for byte the payload the outbox had, once it is a minute old; re-adding it delivers it once', async () => {
    const { accountId, alerts, lostJobs } = await lostAlerts(20);
    expect(alerts.map((a) => a.threshold)).toEqual([25]);
    const alert = alerts[0]!;
    expect(lostJobs).toEqual([
      { name: 'deliver-webhook', jobId: `webhook-credit_alert-${alert.id}`, data: { eventType: 'credit_alert.raised', eventId: alert.id, accountId } },
    ]);
    // Younger than a minute: still its own job's business.
    expect((await findUndeliveredWebhookJobs(services.pool, later(alert.createdAt, 30_000))).map((j) => j.jobId)).not.toContain(lostJobs[0]!.jobId);
    const found = (await findUndeliveredWebhookJobs(services.pool, later(alert.createdAt, 61_000))).filter((j) => j.data.accountId === accountId);
    expect(found).toEqual(lostJobs);
    // Past the 24 h window: given up.
    expect((await findUndeliveredWebhookJobs(services.pool, later(alert.createdAt, 25 * 3_600_000))).map((j) => j.jobId)).not.toContain(lostJobs[0]!.jobId);

    // Recovery the way the sweep does it: the jobs go back on their queue (webhook-deliveries) through the same sink.
    const prefix = `cp-test-webhooks-sweep-${randomUUID()}`;
    const events = await queueEventsFromNow(WEBHOOK_DELIVERY_QUEUE, prefix);
    const outcomes = collectOutcomes(events);
    const workers = await startWorkers({ env, pool: services.pool, log: pino({ level: 'silent' }), prefix, services, relay: false });
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const sink = createQueueJobSink(connection, prefix);
    try {
      await sink.add(found);
      expect(await outcomes.wait(lostJobs[0]!.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
      // The next sweep finds nothing to do for it, and adding it again is a no-op (same jobId).
      expect((await findUndeliveredWebhookJobs(services.pool, later(alert.createdAt, 61_000))).map((j) => j.jobId)).not.toContain(lostJobs[0]!.jobId);
      await sink.add(lostJobs);
      expect(await sink.webhookQueue.getJobCounts('completed', 'waiting', 'delayed', 'active')).toMatchObject({ completed: 1, waiting: 0, delayed: 0 });
      expect(await sink.queue.getJobCounts('completed', 'waiting', 'delayed', 'active')).toMatchObject({ completed: 0, waiting: 0, delayed: 0 });
      const got = receiver.forAccount(accountId);
      expect(got).toHaveLength(1);
      expect(verifyWebhookSignature(SECRET, got[0]!.rawBody, String(got[0]!.headers['creditpool-signature']), { nowSeconds: got[0]!.atSeconds }).valid).toBe(true);
      expect((await logOf(alert.id)).map((r) => r.status)).toEqual(['DELIVERED']);
    } finally {
      await workers.close();
      await sink.queue.obliterate({ force: true }).catch(() => undefined);
      await sink.webhookQueue.obliterate({ force: true }).catch(() => undefined);
      await sink.close();
      connection.disconnect();
      await events.close();
    }
  });

  it('skips events delivered, failed permanently or tried as often as a job tries (WEBHOOK_MAX_LOGGED_ATTEMPTS); keeps those with fewer retryable failures', async () => {
    const a = await lostAlerts(10); // 25 and 15
    const b = await lostAlerts(10);
    const at = later(b.alerts[0]!.createdAt, 61_000);
    const insert = (eventId: string, accountId: string, attempt: number, status: string, code: number | null) =>
      services.pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code) VALUES (gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://x', $3, $4, $5)`,
        [eventId, accountId, attempt, status, code],
      );
    const [a25, a15] = a.alerts;
    const [b25, b15] = b.alerts;
    for (let i = 1; i <= WEBHOOK_MAX_LOGGED_ATTEMPTS; i++) await insert(a25!.id, a.accountId, i, 'FAILED', 503); // exhausted
    await insert(a15!.id, a.accountId, 1, 'FAILED', 404); // permanent
    for (let i = 1; i < WEBHOOK_MAX_LOGGED_ATTEMPTS; i++) await insert(b25!.id, b.accountId, i, 'FAILED', i % 2 ? 429 : null); // one retryable failure fewer: still due
    await insert(b15!.id, b.accountId, 1, 'FAILED', 500);
    await insert(b15!.id, b.accountId, 2, 'DELIVERED', 200); // delivered
    const ids = (await findUndeliveredWebhookJobs(services.pool, at)).map((j) => j.data.eventId);
    expect(ids).toContain(b25!.id);
    for (const gone of [a25!.id, a15!.id, b15!.id]) expect(ids).not.toContain(gone);
  });

  it("reads only the alerts of its window (the created_at index), not every alert ever raised, under the ledger pool's generic plans", async () => {
    // 20,000 alerts older than the window and 3 in it, on one account, inside one transaction of a
    // fresh ledger-pool connection (plan_cache_mode=force_generic_plan, rolled back: nothing stays),
    // with PostgreSQL's own count of the blocks that transaction read of credit_alerts and its
    // indexes. Alerts are never pruned, so a sweep that reads them all costs more every period.
    const accountId = await createFundedAccount(services, { paid: 10 });
    const now = new Date(FILE_CLOCK_START.getTime() - 5 * 86_400_000); // a window no other alert of the database is in
    const fresh = createTestServices(1);
    const client = await fresh.pool.connect();
    try {
      expect((await client.query('SHOW plan_cache_mode')).rows[0].plan_cache_mode).toBe('force_generic_plan');
      await client.query('BEGIN');
      await client.query(
        `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
         SELECT gen_random_uuid(), $1::uuid, 25, 20, 1, t, t
           FROM generate_series(1, 20000) i, LATERAL (SELECT $2::timestamptz - interval '2 days' - i * interval '1 minute' AS t) x
         UNION ALL
         SELECT gen_random_uuid(), $1::uuid, 25, 20, 1, t, t
           FROM generate_series(1, 3) i, LATERAL (SELECT $2::timestamptz - i * interval '1 hour' AS t) x`,
        [accountId, now],
      );
      await client.query('ANALYZE credit_alerts');
      const blocks = async () =>
        Number(
          (
            await client.query(
              `SELECT sum(pg_stat_get_xact_blocks_fetched(c.oid)) AS n FROM pg_class c
                WHERE c.oid = 'credit_alerts'::regclass OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'credit_alerts'::regclass)`,
            )
          ).rows[0].n,
        );
      const before = await blocks();
      // 6 times: a named or unnamed statement gets its generic plan by the sixth.
      for (let i = 0; i < 6; i++) {
        const jobs = (await findUndeliveredWebhookJobs(client as unknown as pg.Pool, now)).filter((j) => j.data.accountId === accountId);
        expect(jobs).toHaveLength(3);
      }
      // A few blocks per sweep (the index's path to the window and the 3 alerts' rows); reading
      // them all is ~100 index or ~300 table blocks per sweep.
      expect((await blocks()) - before).toBeLessThanOrEqual(6 * 10);
      await client.query('ROLLBACK');
    } finally {
      client.release();
      await fresh.close();
    }
  });

  it('returns the job of a paused auto top-up (the failed top-up that paused it)', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const pack = await services.pool.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), $1, 1000000, 1) RETURNING id`, [`pack-${randomUUID()}`]);
    const pausedAt = new Date(Date.now() - 120_000);
    const older = await services.pool.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at) VALUES (gen_random_uuid(), $1, now(), 'FAILED', 3, 'card declined', $2) RETURNING id`,
      [accountId, new Date(pausedAt.getTime() - 60_000)],
    );
    const top = await services.pool.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at, finished_at) VALUES (gen_random_uuid(), $1, now(), 'FAILED', 3, 'card expired', $2, $3) RETURNING id`,
      [accountId, new Date(pausedAt.getTime() - 10_000), pausedAt],
    );
    await services.pool.query(
      `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period, consecutive_failures, last_error, paused_at)
       VALUES ($1, false, 1000000, $2, 3, 3, 'card expired', $3)`,
      [accountId, pack.rows[0].id, pausedAt],
    );
    const topUpId = top.rows[0].id as string;
    const found = (await findUndeliveredWebhookJobs(services.pool, new Date())).filter((j) => j.data.accountId === accountId);
    expect(found).toEqual([{ name: 'deliver-webhook', jobId: `webhook-auto_top_up_paused-${topUpId}`, data: { eventType: 'auto_top_up.paused', eventId: topUpId, accountId } }]);
    expect(found[0]!.data.eventId).not.toBe(older.rows[0].id);

    const result = await deliverWebhook(ctx, { eventType: 'auto_top_up.paused', eventId: topUpId, accountId }, 1);
    expect(result).toMatchObject({ status: 'DELIVERED' });
    const body = JSON.parse(receiver.forAccount(accountId)[0]!.rawBody);
    expect(body).toMatchObject({
      id: `auto_top_up.paused:${topUpId}`,
      type: 'auto_top_up.paused',
      createdAt: pausedAt.toISOString(),
      data: { topUpId, accountId, error: 'card expired', consecutiveFailures: 3, pausedAt: pausedAt.toISOString() },
    });
    // A retry after the account resumed auto top-up (setAutoTopUp clears paused_at and the
    // failure count, a success clears last_error) sends the same body: it describes the pause,
    // not the settings as they are now (a receiver sorting on createdAt saw the pause move).
    await services.pool.query(`UPDATE auto_top_up_settings SET enabled = true, consecutive_failures = 0, paused_at = NULL, last_error = NULL WHERE account_id = $1`, [accountId]);
    expect(JSON.stringify((await buildWebhookEvent(services.pool, 'auto_top_up.paused', topUpId))!.event)).toBe(receiver.forAccount(accountId)[0]!.rawBody);
    expect((await findUndeliveredWebhookJobs(services.pool, new Date())).filter((j) => j.data.accountId === accountId)).toEqual([]);
  });
});

describe('a late success of the charge that paused auto top-up', () => {
  it('leaves the pause event as it was: the same body on its retries, and the sweep still finds it', async () => {
    // The pausing failure was "no charge found" (a lookup after 23 h); the provider's success
    // arrives afterwards (settleTopUpPayment: granted, the top-up revived SUCCEEDED). That rewrote
    // the top-up's error and finished_at, which the pause's body is built from, and took it out of
    // the sweep's "latest FAILED top-up before the pause".
    const accountId = await createFundedAccount(services, { paid: 10 });
    const pack = await services.pool.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), $1, 1000000, 1) RETURNING id`, [`pack-${randomUUID()}`]);
    const pausedAt = new Date(Date.now() - 120_000);
    const error = 'no_charge_found: the provider has no charge for this payment';
    const top = await services.pool.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at, finished_at) VALUES (gen_random_uuid(), $1, now(), 'FAILED', 3, $2, $3, $4) RETURNING id`,
      [accountId, error, new Date(pausedAt.getTime() - 10_000), pausedAt],
    );
    const topUpId = top.rows[0].id as string;
    const pay = await services.pool.query(
      `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, payment_method_ref, status, error, created_at, updated_at)
       VALUES (gen_random_uuid(), $1, 'AUTO_TOP_UP', $2, $3, 1, 'pm_card', 'FAILED', $4, $5, $5) RETURNING id`,
      [accountId, `auto-top-up:${topUpId}:3`, pack.rows[0].id, error, pausedAt],
    );
    await services.pool.query('UPDATE auto_top_ups SET payment_id = $2 WHERE id = $1', [topUpId, pay.rows[0].id]);
    await services.pool.query(
      `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period, consecutive_failures, last_error, paused_at)
       VALUES ($1, false, 1000000, $2, 3, 3, $3, $4)`,
      [accountId, pack.rows[0].id, error, pausedAt],
    );
    const p = { eventType: 'auto_top_up.paused' as const, eventId: topUpId, accountId };
    receiver.script(accountId, [500]);
    await expect(deliverWebhook(ctx, p, 1)).rejects.toMatchObject({ permanent: false });
    const first = receiver.forAccount(accountId)[0]!.rawBody;

    const settled = await settleTopUpPayment(services, (await findPayment(services.pool, pay.rows[0].id))!, { status: 'succeeded', providerRef: 'pi_late' });
    expect(settled.settledNow).toBe(true);
    const after = await services.pool.query('SELECT s.enabled, s.paused_at, t.status FROM auto_top_up_settings s JOIN auto_top_ups t ON t.id = $2 WHERE s.account_id = $1', [accountId, topUpId]);
    expect(after.rows[0]).toMatchObject({ enabled: false, paused_at: pausedAt, status: 'SUCCEEDED' }); // granted, still paused

    expect(JSON.stringify((await buildWebhookEvent(services.pool, 'auto_top_up.paused', topUpId))!.event)).toBe(first);
    const found = (await findUndeliveredWebhookJobs(services.pool, new Date())).filter((j) => j.data.accountId === accountId);
    expect(found.map((j) => j.data.eventId)).toEqual([topUpId]);
    expect(await deliverWebhook(ctx, p, 2)).toMatchObject({ status: 'DELIVERED' });
    expect(receiver.forAccount(accountId)[1]!.rawBody).toBe(first);
  });
});

describe('deliverWebhook', () => {
  it('concurrent runs of one job POST once: a run meeting an attempt in flight backs off (retryable) without sending', async () => {
    const { accountId, alerts } = await lostAlerts(20);
    const alert = alerts[0]!;
    const p = payloadOf(accountId, alert.id);
    // While the first POST is held open by the receiver, a second run of the same event.
    let second: unknown = null;
    receiver.beforeAnswer = async (req) => {
      if (req.accountId !== accountId) return;
      second = await deliverWebhook(ctx, p, 1).catch((e: unknown) => e);
    };
    try {
      expect(await deliverWebhook(ctx, p, 1)).toMatchObject({ status: 'DELIVERED' });
    } finally {
      receiver.beforeAnswer = null;
    }
    expect(second).toBeInstanceOf(WebhookDeliveryError);
    expect(second).toMatchObject({ permanent: false, message: expect.stringMatching(/in flight/) });
    // Its retry (the job's backoff) finds the outcome.
    expect(await deliverWebhook(ctx, p, 2)).toEqual({ status: 'ALREADY_DELIVERED', skipped: false });
    expect(receiver.forAccount(accountId)).toHaveLength(1);
    expect((await logOf(alert.id)).map((r) => r.status)).toEqual(['DELIVERED']);
  });

  it('an attempt whose run stopped mid-POST (SENDING past its claim) is recorded FAILED, and the next run sends', async () => {
    const { accountId, alerts } = await lostAlerts(20);
    const p = payloadOf(accountId, alerts[0]!.id);
    const claimMs = env.WEBHOOK_TIMEOUT_MS + WEBHOOK_CLAIM_MARGIN_MS;
    await services.pool.query(
      `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, created_at)
       VALUES (gen_random_uuid(), $1, $2, $3, $4, 1, 'SENDING', now() - $5::interval)`,
      [p.eventType, p.eventId, accountId, receiver.url, `${claimMs + 1_000} milliseconds`],
    );
    expect(await deliverWebhook(ctx, p, 2)).toMatchObject({ status: 'DELIVERED', attempt: 2 });
    const log = await logOf(p.eventId);
    expect(log.map((r) => [r.attempt, r.status])).toEqual([
      [1, 'FAILED'],
      [2, 'DELIVERED'],
    ]);
    expect(log[0].error).toMatch(/no outcome recorded/);
    expect(receiver.forAccount(accountId)).toHaveLength(1);
  });

  it('an outcome arriving after its claim was taken over as stale leaves the takeover\'s FAILED row as it is and logs the delivery as a row of its own', async () => {
    // Only when recording the outcome is delayed past WEBHOOK_TIMEOUT_MS + the margin (a stalled
    // database): another run has then recorded the claim FAILED and may send again. Overwriting
    // that row would log one attempt twice over; the 2xx still happened, so it is logged on its own.
    const { accountId, alerts } = await lostAlerts(20);
    const p = payloadOf(accountId, alerts[0]!.id);
    receiver.beforeAnswer = async (req) => {
      if (req.accountId !== accountId) return;
      await services.pool.query(`UPDATE webhook_deliveries SET status = 'FAILED', error = 'taken over' WHERE event_id = $1 AND status = 'SENDING'`, [p.eventId]);
    };
    try {
      expect(await deliverWebhook(ctx, p, 1)).toMatchObject({ status: 'DELIVERED', attempt: 1 });
    } finally {
      receiver.beforeAnswer = null;
    }
    expect((await logOf(p.eventId)).map((r) => [r.attempt, r.status, r.error])).toEqual([
      [1, 'FAILED', 'taken over'],
      [1, 'DELIVERED', null],
    ]);
    // Delivered now: a later run sends nothing.
    expect(await deliverWebhook(ctx, p, 2)).toEqual({ status: 'ALREADY_DELIVERED', skipped: false });
    expect(receiver.forAccount(accountId)).toHaveLength(1);
  });

  it('holds no database connection while the POST is in flight (a slow receiver cannot drain the pool)', async () => {
    // Before: the attempt ran in one transaction around the POST, so each delivery waiting on a
    // slow receiver (up to WEBHOOK_TIMEOUT_MS) held a connection of the workers' pool (5) and
    // starved the expiry, roll and top-up jobs sharing it.
    const { accountId, alerts } = await lostAlerts(20);
    const p = payloadOf(accountId, alerts[0]!.id);
    const own = createTestServices(1); // its own pool: nothing else uses it
    const seen: Array<{ busy: number; log: unknown[] }> = [];
    receiver.beforeAnswer = async (req) => {
      if (req.accountId !== accountId) return;
      const { rows } = await services.pool.query('SELECT attempt, status FROM webhook_deliveries WHERE event_id = $1', [p.eventId]);
      seen.push({ busy: own.pool.totalCount - own.pool.idleCount, log: rows });
    };
    try {
      expect(await deliverWebhook({ ...ctx, pool: own.pool }, p, 1)).toMatchObject({ status: 'DELIVERED', attempt: 1 });
    } finally {
      receiver.beforeAnswer = null;
      await own.close();
    }
    // During the POST: no connection checked out, and the attempt is claimed (SENDING) so no
    // other run of the event sends meanwhile; after it, the same row holds the outcome.
    expect(seen).toEqual([{ busy: 0, log: [{ attempt: 1, status: 'SENDING' }] }]);
    expect((await logOf(p.eventId)).map((r) => [r.attempt, r.status, r.response_code])).toEqual([[1, 'DELIVERED', 200]]);
  });

  it('logs a timeout, a refused connection and an unfollowed redirect as retryable FAILED attempts', async () => {
    const { accountId, alerts } = await lostAlerts(20);
    const p = payloadOf(accountId, alerts[0]!.id);
    receiver.script(accountId, ['hang', { status: 302, location: 'http://127.0.0.1:1/elsewhere' }]);
    const short = { ...ctx, env: { ...env, WEBHOOK_TIMEOUT_MS: 1_000 } };
    const e1 = await deliverWebhook(short, p, 1).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(WebhookDeliveryError);
    expect(e1).toMatchObject({ permanent: false, responseCode: null });
    const e2 = await deliverWebhook(ctx, p, 2).catch((e: unknown) => e);
    expect(e2).toMatchObject({ permanent: false, responseCode: 302 });
    const closed = `http://127.0.0.1:${await freeClosedPort()}/hook`;
    const e3 = await deliverWebhook({ ...ctx, env: { ...env, WEBHOOK_URL: closed } }, p, 3).catch((e: unknown) => e);
    expect(e3).toMatchObject({ permanent: false, responseCode: null });
    const log = await logOf(p.eventId);
    expect(log.map((r) => [r.attempt, r.status, r.response_code])).toEqual([
      [1, 'FAILED', null],
      [2, 'FAILED', 302],
      [3, 'FAILED', null],
    ]);
    expect(log[0].error).toBe('timeout after 1000 ms');
    expect(log[2].error).toMatch(/ECONNREFUSED/);
    expect(receiver.forAccount(accountId)).toHaveLength(2); // the redirect was not followed
    expect(await deliverWebhook(ctx, p, 4)).toMatchObject({ status: 'DELIVERED', attempt: 4 });
  });

  it('without WEBHOOK_URL sends and logs nothing; without WEBHOOK_SECRET or for a missing event it fails permanently', async () => {
    const { accountId, alerts } = await lostAlerts(20);
    const p = payloadOf(accountId, alerts[0]!.id);
    expect(await deliverWebhook({ ...ctx, env: { ...env, WEBHOOK_URL: undefined } }, p, 1)).toEqual({ status: 'SKIPPED', skipped: true });
    await expect(deliverWebhook({ ...ctx, env: { ...env, WEBHOOK_SECRET: undefined } }, p, 1)).rejects.toMatchObject({ permanent: true });
    await expect(deliverWebhook(ctx, { ...p, eventId: randomUUID() }, 1)).rejects.toMatchObject({ permanent: true, message: expect.stringMatching(/not found/) });
    expect(await logOf(p.eventId)).toEqual([]);
    expect(receiver.forAccount(accountId)).toHaveLength(0);
  });
});
