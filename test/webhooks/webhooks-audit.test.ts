/**
 * Adversarial checks of the outgoing webhooks' promises (README "Webhooks"), on the real path:
 * real charges raise credit alerts, the outbox relay and the webhook-deliveries worker (real
 * PostgreSQL, real Redis with a unique prefix) deliver them to real HTTP receivers on 127.0.0.1.
 * Each scenario is one the other files in test/webhooks do not cover: the sweep, `redeliver` and
 * a second job meeting one delivery in flight; a receiver answering 2xx after the timeout; a 307
 * to another receiver; 410; a secret rotation and URL change between attempts; two tenants
 * charged at once; the log's prune running while an old event's redelivery is in flight; an alert
 * whose transaction rolled back. Waiting is event-driven (requests, job outcomes).
 */
import { createHmac, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { recordUsage } from '../../src/services/record-usage.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { deliverWebhook, findUndeliveredWebhookJobs, verifyWebhookSignature, webhookJobId, type WebhookEvent } from '../../src/services/webhooks.js';
import { listFailedWebhooks, parseWebhookEventRef, redeliverWebhooks } from '../../src/services/webhook-redelivery.js';
import { pruneWebhookLog } from '../../src/services/webhook-retention.js';
import { createFundedAccount } from '../factories/accounts.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { receiverEnv, startReceiver, startWebhookPipeline, type ReceivedWebhook, type WebhookPipeline } from './helpers.js';

const SECRET = 'whsec_audit_0123456789abcdef0123456789abcdef';
const prefix = `cp-test-webhook-audit-${randomUUID()}`;
/** The POST timeout of this file's workers: short enough for a test to wait it out, long enough for a loaded machine's 200. */
const TIMEOUT_MS = 2_000;
let pipeline: WebhookPipeline;

beforeAll(async () => {
  pipeline = await startWebhookPipeline(SECRET, prefix, { WEBHOOK_TIMEOUT_MS: String(TIMEOUT_MS) });
});

afterAll(async () => {
  await pipeline?.close();
});

/** A funded account (100 credits) charged to 20 %: one credit alert, delivered by the workers. `before(accountId)` runs before the charge. */
async function chargedTo20(before: (accountId: string) => void = () => undefined): Promise<{ accountId: string; alertId: string; jobId: string }> {
  const { services } = pipeline;
  const accountId = await createFundedAccount(services, { paid: 100, externalId: `audit-${randomUUID()}` });
  before(accountId);
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
  const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId]);
  expect(rows).toHaveLength(1);
  return { accountId, alertId: rows[0].id, jobId: webhookJobId('credit_alert.raised', rows[0].id) };
}

/**
 * A funded account with a credit alert (25 %) written directly, without an outbox job: the workers
 * of this file relay every outbox row at once, so an alert of a charge would be delivered before
 * a test could deliver it itself.
 */
async function quietAlert(externalId = `quiet-${randomUUID()}`): Promise<{ accountId: string; alertId: string }> {
  const { services } = pipeline;
  const accountId = await createFundedAccount(services, { paid: 100, externalId });
  const { rows } = await services.pool.query(
    `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start)
     VALUES (gen_random_uuid(), $1, 25, 20, 20000000, date_trunc('month', now())) RETURNING id`,
    [accountId],
  );
  return { accountId, alertId: rows[0].id };
}

async function logOf(eventId: string): Promise<Array<[number, string, number | null]>> {
  const { rows } = await pipeline.services.pool.query('SELECT attempt, status, response_code FROM webhook_deliveries WHERE event_id = $1 ORDER BY created_at, attempt', [eventId]);
  return rows.map((r) => [r.attempt, r.status, r.response_code]);
}

/** Checks the request's signature under `secret` at its arrival and its id header against its body; returns the body. */
function signedBody(req: ReceivedWebhook, secret = SECRET): WebhookEvent {
  const header = String(req.headers['creditpool-signature']);
  expect(verifyWebhookSignature(secret, req.rawBody, header, { nowSeconds: req.atSeconds })).toMatchObject({ valid: true });
  // And by hand, as a receiver in another language would (README: HMAC-SHA256 over "<t>.<raw body>" bytes).
  const [, t, v1] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header) ?? [];
  expect(v1).toBe(createHmac('sha256', secret).update(Buffer.concat([Buffer.from(`${t}.`), Buffer.from(req.rawBody, 'utf8')])).digest('hex'));
  const event = JSON.parse(req.rawBody) as WebhookEvent;
  expect(req.headers['creditpool-event-id']).toBe(event.id);
  expect(req.headers['creditpool-event-type']).toBe(event.type);
  return event;
}

describe('one event in flight', () => {
  it('the sweep re-adding it, `redeliver` naming it and a second job of it (a stalled run\'s re-run) send nothing more: the receiver sees one POST, the log one attempt', async () => {
    const { receiver, services, workers, jobs } = pipeline;
    let held: (() => void) | null = null;
    let ours = '';
    receiver.beforeAnswer = (req) => (req.accountId === ours ? new Promise<void>((resolve) => (held = resolve)) : Promise.resolve());
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const sink = createQueueJobSink(connection, prefix);
    try {
      const { accountId, alertId, jobId } = await chargedTo20((id) => (ours = id));
      await receiver.waitFor(() => receiver.forAccount(accountId).length === 1, 'the first attempt to be held');
      expect(held).not.toBeNull();
      // The sweep (its clock past the minute it leaves a new event to its job) finds the event
      // undelivered (a SENDING claim only) and re-adds its job: the job is running, nothing added.
      const swept = (await findUndeliveredWebhookJobs(services.pool, new Date(Date.now() + 120_000))).filter((j) => j.data.accountId === accountId);
      expect(swept.map((j) => j.jobId)).toEqual([jobId]);
      await sink.readd(swept);
      // `redeliver`: its job is running, nothing changes.
      const [out] = await redeliverWebhooks(services.pool, sink, [parseWebhookEventRef(`credit_alert.raised:${alertId}`)!]);
      expect(out).toMatchObject({ status: 'PENDING', jobState: 'active' });
      // `failed` shows it in flight.
      expect((await listFailedWebhooks(services.pool, { limit: null, webhookTimeoutMs: TIMEOUT_MS })).find((f) => f.eventId === alertId)).toMatchObject({ state: 'in_flight', attempts: 1 });
      // A second job of the event under another id (what a stalled job's re-run or a duplicate add is): it runs, meets the claim, sends nothing.
      const dupId = `${jobId}-rerun`;
      await workers.webhookQueue.add('deliver-webhook', { eventType: 'credit_alert.raised', eventId: alertId, accountId }, { jobId: dupId, attempts: 17, backoff: { type: 'exponential', delay: 1_000 } });
      const dup = await workers.webhookQueue.getJob(dupId);
      await new Promise<void>((resolve, reject) => {
        const onDelayed = ({ jobId: id }: { jobId: string }) => {
          if (id !== dupId) return;
          pipeline.webhookEvents.off('delayed', onDelayed);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => reject(new Error('the second job was never put back')), 20_000);
        pipeline.webhookEvents.on('delayed', onDelayed);
        void dup?.getState().then((s) => s === 'delayed' && onDelayed({ jobId: dupId }));
      });
      // Put back without spending an attempt (README "Worker slots"), nothing sent or logged.
      expect((await workers.webhookQueue.getJob(dupId))!.attemptsMade).toBe(0);
      expect(receiver.forAccount(accountId)).toHaveLength(1);
      expect(await logOf(alertId)).toEqual([[1, 'SENDING', null]]);

      receiver.beforeAnswer = null;
      held!();
      expect(await jobs.wait(jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
      await (await workers.webhookQueue.getJob(dupId))?.promote().catch(() => undefined);
      expect(await jobs.wait(dupId)).toMatchObject({ state: 'completed', returnvalue: { status: 'ALREADY_DELIVERED' } });
      // After delivery: the sweep no longer finds it, `redeliver` refuses it.
      expect((await findUndeliveredWebhookJobs(services.pool, new Date(Date.now() + 120_000))).filter((j) => j.data.accountId === accountId)).toEqual([]);
      expect((await redeliverWebhooks(services.pool, sink, [{ eventId: alertId }]))[0]).toMatchObject({ status: 'ALREADY_DELIVERED' });
      const got = receiver.requests.filter((r) => r.eventId === `credit_alert.raised:${alertId}`);
      expect(got).toHaveLength(1);
      expect(got[0]!.headers['creditpool-delivery-attempt']).toBe('1');
      signedBody(got[0]!);
      expect(await logOf(alertId)).toEqual([[1, 'DELIVERED', 200]]);
    } finally {
      receiver.beforeAnswer = null;
      await sink.close();
      connection.disconnect();
    }
  });
});

describe('receiver answers', () => {
  it('a 2xx arriving after WEBHOOK_TIMEOUT_MS is a failed attempt: retried with the same body and id, attempt 2 delivers; both signatures verify', async () => {
    const { receiver, jobs } = pipeline;
    let ours = '';
    // The first POST is answered only once the second has arrived: its 200 comes long after the
    // client's timeout, whatever the machine's speed.
    receiver.beforeAnswer = (req) =>
      req.accountId === ours && req.headers['creditpool-delivery-attempt'] === '1'
        ? receiver.waitFor(() => receiver.forAccount(ours).length >= 2, 'the retry', 30_000)
        : Promise.resolve();
    try {
      const { accountId, alertId, jobId } = await chargedTo20((id) => (ours = id));
      expect(await jobs.wait(jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 2 } });
      const got = receiver.forAccount(accountId);
      expect(got.map((r) => r.headers['creditpool-delivery-attempt'])).toEqual(['1', '2']);
      const [a, b] = got.map((r) => signedBody(r));
      expect(got[1]!.rawBody).toBe(got[0]!.rawBody);
      expect(a!.id).toBe(`credit_alert.raised:${alertId}`);
      expect(b!.id).toBe(a!.id);
      expect(await logOf(alertId)).toEqual([
        [1, 'FAILED', null],
        [2, 'DELIVERED', 200],
      ]);
      const { rows } = await pipeline.services.pool.query(`SELECT error FROM webhook_deliveries WHERE event_id = $1 AND attempt = 1`, [alertId]);
      expect(rows[0].error).toBe(`timeout after ${TIMEOUT_MS} ms`);
    } finally {
      receiver.beforeAnswer = null;
    }
  });

  it('a 307 to another receiver is not followed (that receiver gets nothing), logged FAILED 307 and retried to WEBHOOK_URL', async () => {
    const { receiver, jobs } = pipeline;
    const elsewhere = await startReceiver();
    try {
      const { accountId, alertId, jobId } = await chargedTo20((id) => receiver.script(id, [{ status: 307, location: elsewhere.url }, { status: 308, location: elsewhere.url }]));
      expect(await jobs.wait(jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 3 } });
      expect(elsewhere.requests).toHaveLength(0);
      expect(receiver.forAccount(accountId)).toHaveLength(3);
      expect(await logOf(alertId)).toEqual([
        [1, 'FAILED', 307],
        [2, 'FAILED', 308],
        [3, 'DELIVERED', 200],
      ]);
    } finally {
      await elsewhere.close();
    }
  });

  it('410 Gone is final: one attempt, the job fails, the sweep does not re-add it, `failed` lists it as permanent', async () => {
    const { receiver, services, jobs } = pipeline;
    const { accountId, alertId, jobId } = await chargedTo20((id) => receiver.script(id, [410]));
    expect(await jobs.wait(jobId)).toMatchObject({ state: 'failed' });
    expect(receiver.forAccount(accountId)).toHaveLength(1);
    expect(await logOf(alertId)).toEqual([[1, 'FAILED', 410]]);
    expect((await findUndeliveredWebhookJobs(services.pool, new Date(Date.now() + 120_000))).filter((j) => j.data.accountId === accountId)).toEqual([]);
    expect((await listFailedWebhooks(services.pool, { limit: null })).find((f) => f.eventId === alertId)).toMatchObject({ state: 'permanent', lastResponseCode: 410 });
  });
});

describe('between attempts', () => {
  it('a rotated WEBHOOK_SECRET and a changed WEBHOOK_URL apply to the next attempt; the body and id stay byte for byte', async () => {
    const { services } = pipeline;
    const first = await startReceiver();
    const second = await startReceiver();
    const rotated = 'whsec_audit_rotated_abcdef0123456789abcdef0123';
    try {
      // Outside ASCII: the signature covers the body's UTF-8 bytes, as sent.
      const externalId = `zoë-Łódź-😀-${randomUUID()}`;
      const { accountId, alertId } = await quietAlert(externalId);
      const payload = { eventType: 'credit_alert.raised' as const, eventId: alertId, accountId };
      first.script(accountId, [503]);
      await expect(deliverWebhook({ pool: services.pool, env: receiverEnv(first, SECRET) }, payload, 1)).rejects.toMatchObject({ permanent: false, responseCode: 503 });
      expect(await deliverWebhook({ pool: services.pool, env: receiverEnv(second, rotated) }, payload, 2)).toMatchObject({ status: 'DELIVERED', attempt: 2 });
      const [a] = first.forAccount(accountId);
      const [b] = second.forAccount(accountId);
      expect(first.forAccount(accountId)).toHaveLength(1);
      expect(second.forAccount(accountId)).toHaveLength(1);
      signedBody(a!, SECRET);
      signedBody(b!, rotated);
      // The second attempt is signed with the new secret only (a receiver still on the old one rejects it).
      expect(verifyWebhookSignature(SECRET, b!.rawBody, String(b!.headers['creditpool-signature']), { nowSeconds: b!.atSeconds })).toEqual({ valid: false, reason: 'signature_mismatch' });
      expect(b!.rawBody).toBe(a!.rawBody);
      expect(b!.eventId).toBe(`credit_alert.raised:${alertId}`);
      expect((JSON.parse(b!.rawBody) as WebhookEvent).data).toMatchObject({ accountExternalId: externalId });
      // The log's url column shows each receiver's host, never its path.
      const { rows } = await services.pool.query('SELECT url FROM webhook_deliveries WHERE event_id = $1 ORDER BY attempt', [alertId]);
      expect(rows.map((r) => r.url)).toEqual([first.url, second.url].map((u) => `${new URL(u).origin}/…`));
    } finally {
      await first.close();
      await second.close();
    }
  });
});

describe('tenants', () => {
  it('two accounts charged at the same moment each get only their own data in their events', async () => {
    const { receiver, services, jobs } = pipeline;
    const accounts = await Promise.all([0, 1].map(() => createFundedAccount(services, { paid: 100, externalId: `tenant-${randomUUID()}` })));
    // 100 -> 10: the 25 % and 15 % alerts on each.
    await Promise.all(accounts.map((accountId) => recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '90' } })));
    const { rows } = await services.pool.query(
      `SELECT c.id, c.account_id, a.external_id FROM credit_alerts c JOIN accounts a ON a.id = c.account_id WHERE c.account_id = ANY($1::uuid[])`,
      [accounts],
    );
    expect(rows).toHaveLength(4);
    for (const r of rows) expect(await jobs.wait(webhookJobId('credit_alert.raised', r.id))).toMatchObject({ state: 'completed' });
    const externalOf = new Map<string, string>(rows.map((r) => [r.account_id, r.external_id]));
    for (const r of rows) {
      const got = receiver.requests.filter((q) => q.eventId === `credit_alert.raised:${r.id}`);
      expect(got).toHaveLength(1);
      const event = signedBody(got[0]!);
      expect(event.data).toMatchObject({ alertId: r.id, accountId: r.account_id, accountExternalId: r.external_id });
      const other = accounts.find((id) => id !== r.account_id)!;
      expect(got[0]!.rawBody).not.toContain(other);
      expect(got[0]!.rawBody).not.toContain(externalOf.get(other)!);
    }
  });
});

describe('the log\'s prune during a delivery', () => {
  it('an old event redelivered while the prune runs keeps its whole log and its DELIVERED attempt; it is never sent again', async () => {
    const { receiver, services, jobs } = pipeline;
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const sink = createQueueJobSink(connection, prefix);
    let held: (() => void) | null = null;
    let ours = '';
    receiver.beforeAnswer = (req) => (req.accountId === ours ? new Promise<void>((resolve) => (held = resolve)) : Promise.resolve());
    try {
      // An alert raised 40 days ago whose 17 attempts all failed then (a receiver gone for a day).
      const { accountId, alertId } = await quietAlert();
      await services.pool.query(`UPDATE credit_alerts SET created_at = now() - interval '40 days' WHERE id = $1`, [alertId]);
      await services.pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, error, created_at)
         SELECT gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://127.0.0.1/…', n, 'FAILED', 503, 'HTTP 503', now() - interval '40 days' + n * interval '1 hour'
           FROM generate_series(1, 17) n`,
        [alertId, accountId],
      );
      ours = accountId;
      const [out] = await redeliverWebhooks(services.pool, sink, [{ eventId: alertId }]);
      expect(out).toMatchObject({ status: 'QUEUED' });
      await receiver.waitFor(() => receiver.forAccount(accountId).length === 1, 'the redelivery to be held');
      expect(held).not.toBeNull();
      // The hourly prune (30 days) runs while the POST is in flight: the event has an attempt
      // newer than the cutoff (the claim), so none of its attempts goes.
      await pruneWebhookLog(services.pool, { retentionDays: 30 });
      expect((await logOf(alertId)).length).toBe(18);
      receiver.beforeAnswer = null;
      held!();
      expect(await jobs.wait(webhookJobId('credit_alert.raised', alertId))).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
      const log = await logOf(alertId);
      expect(log).toHaveLength(18);
      expect(log.at(-1)).toEqual([1, 'DELIVERED', 200]);
      await pruneWebhookLog(services.pool, { retentionDays: 30 });
      expect((await logOf(alertId)).length).toBe(18);
      expect((await redeliverWebhooks(services.pool, sink, [{ eventId: alertId }]))[0]).toMatchObject({ status: 'ALREADY_DELIVERED' });
      expect(receiver.forAccount(accountId)).toHaveLength(1);
    } finally {
      receiver.beforeAnswer = null;
      await sink.close();
      connection.disconnect();
    }
  });
});

describe('an alert whose transaction rolled back', () => {
  it('is never delivered: no alert, no outbox job, nothing for the sweep, nothing at the receiver (a later alert is)', async () => {
    const { receiver, services, jobs } = pipeline;
    const accountId = await createFundedAccount(services, { paid: 100, externalId: `rollback-${randomUUID()}` });
    // A deferred trigger that fails this account's commits once a credit alert is in them: the
    // charge, its alert and its outbox rows are written, then the COMMIT fails.
    const fn = `audit_fail_commit_${randomUUID().replace(/-/g, '')}`;
    await services.pool.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        IF NEW.account_id = '${accountId}'::uuid THEN RAISE EXCEPTION 'audit: this commit fails'; END IF; RETURN NULL; END $$`);
    await services.pool.query(`CREATE CONSTRAINT TRIGGER ${fn} AFTER INSERT ON credit_alerts DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
    try {
      await expect(recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } })).rejects.toThrow(/this commit fails/);
    } finally {
      await services.pool.query(`DROP TRIGGER ${fn} ON credit_alerts`);
      await services.pool.query(`DROP FUNCTION ${fn}()`);
    }
    expect((await services.pool.query('SELECT 1 FROM credit_alerts WHERE account_id = $1', [accountId])).rows).toEqual([]);
    expect((await services.pool.query(`SELECT 1 FROM outbox_events WHERE account_id = $1 AND topic = 'job'`, [accountId])).rows).toEqual([]);
    // The same charge again, committed: its alert is delivered, after anything the relay had.
    await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
    const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId]);
    expect(rows).toHaveLength(1);
    expect(await jobs.wait(webhookJobId('credit_alert.raised', rows[0].id))).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
    expect(receiver.forAccount(accountId).map((r) => r.eventId)).toEqual([`credit_alert.raised:${rows[0].id}`]);
    expect((await findUndeliveredWebhookJobs(services.pool, new Date(Date.now() + 120_000))).filter((j) => j.data.accountId === accountId)).toEqual([]);
  });
});

describe('`redeliver auto_top_up.paused:<top-up id>` of an event never attempted', () => {
  /**
   * An account whose auto top-up paused at the failure of `pausing` (its finished_at, as
   * auto-top-up.ts writes it), after an earlier failed top-up `earlier` that paused nothing; with
   * `revived`, the pausing charge's late success made that top-up SUCCEEDED afterwards (its error
   * and finished_at kept). Nothing was attempted (WEBHOOK_URL unset then): no log rows.
   */
  async function pausedAccount(revived: boolean): Promise<{ accountId: string; earlier: string; pausing: string }> {
    const { services } = pipeline;
    const accountId = await createFundedAccount(services, { paid: 10, externalId: `paused-${randomUUID()}` });
    const pack = await services.pool.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), $1, 1000000, 1) RETURNING id`, [`pack-${randomUUID()}`]);
    const pausedAt = new Date(Date.now() - 120_000);
    const earlier = await services.pool.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at, finished_at) VALUES (gen_random_uuid(), $1, now(), 'FAILED', 1, 'card declined', $2, $2) RETURNING id`,
      [accountId, new Date(pausedAt.getTime() - 60_000)],
    );
    const pausing = await services.pool.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at, finished_at) VALUES (gen_random_uuid(), $1, now(), $2, 2, 'card expired', $3, $4) RETURNING id`,
      [accountId, revived ? 'SUCCEEDED' : 'FAILED', new Date(pausedAt.getTime() - 10_000), pausedAt],
    );
    await services.pool.query(
      `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period, consecutive_failures, last_error, paused_at)
       VALUES ($1, false, 1000000, $2, 3, 3, 'card expired', $3)`,
      [accountId, pack.rows[0].id, pausedAt],
    );
    return { accountId, earlier: earlier.rows[0].id, pausing: pausing.rows[0].id };
  }

  it('sends the pause of the top-up that paused it (also once a late success revived that top-up), and refuses a failed top-up that paused nothing', async () => {
    const { receiver, services, jobs } = pipeline;
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const sink = createQueueJobSink(connection, prefix);
    try {
      for (const revived of [false, true]) {
        const { accountId, earlier, pausing } = await pausedAccount(revived);
        // A failed top-up that did not pause auto top-up is no `auto_top_up.paused` event: sending
        // one would tell the customer auto top-up paused "after 3 failed charges" when it did not.
        const [wrong] = await redeliverWebhooks(services.pool, sink, [parseWebhookEventRef(`auto_top_up.paused:${earlier}`)!]);
        expect(wrong).toMatchObject({ status: 'NOT_FOUND' });
        expect(await sink.webhookQueue.getJob(webhookJobId('auto_top_up.paused', earlier))).toBeUndefined();
        // The pause itself is sent (the sweep finds the same event).
        expect((await findUndeliveredWebhookJobs(services.pool, new Date())).filter((j) => j.data.accountId === accountId).map((j) => j.data.eventId)).toEqual([pausing]);
        const [right] = await redeliverWebhooks(services.pool, sink, [parseWebhookEventRef(`auto_top_up.paused:${pausing}`)!]);
        expect(right, `revived: ${revived}`).toMatchObject({ status: 'QUEUED' });
        expect(await jobs.wait(webhookJobId('auto_top_up.paused', pausing))).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
        const got = receiver.forAccount(accountId);
        expect(got.map((r) => r.eventId)).toEqual([`auto_top_up.paused:${pausing}`]);
        expect(signedBody(got[0]!).data).toMatchObject({ topUpId: pausing, error: 'card expired' });
      }
    } finally {
      await sink.close();
      connection.disconnect();
    }
  });
});
