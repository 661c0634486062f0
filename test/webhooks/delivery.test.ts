/**
 * Signed webhooks end to end on the real path: recordUsage (real PostgreSQL) -> balances_changed
 * raises credit alerts and writes `deliver-webhook` outbox rows -> the outbox relay enqueues them
 * on BullMQ (real Redis, a unique prefix) -> the ledger-jobs worker POSTs to a real HTTP receiver
 * on 127.0.0.1 -> webhook_deliveries logs every attempt. Retries use the production options
 * (LEDGER_JOB_OPTIONS: 17 attempts, exponential backoff from 1 s), so the retry tests take seconds.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Backoffs, QueueEvents } from 'bullmq';
import { pino } from 'pino';
import type { RunningWorkers } from '../../workers/start.js';
import type { TestServices } from '../setup/services.js';
import { processDeliverWebhook } from '../../workers/processors/deliver-webhook.js';
import type { Env } from '../../src/config/env.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { redactWebhookUrl, verifyWebhookSignature, webhookJobId, WEBHOOK_MAX_LOGGED_ATTEMPTS, WEBHOOK_SWEEP_MAX_AGE_MS, type CreditAlertEventData, type WebhookEvent } from '../../src/services/webhooks.js';
import { tryDecodeId } from '../../src/graphql/ids.js';
import { createFundedAccount } from '../factories/accounts.js';
import { startWebhookPipeline, type Receiver, type ReceivedWebhook, type WebhookPipeline, type collectOutcomes } from './helpers.js';

const SECRET = 'whsec_e2e_0123456789abcdef0123456789abcdef';
const prefix = `cp-test-webhooks-${randomUUID()}`;
const log = pino({ level: 'silent' });
let receiver: Receiver;
let services: TestServices;
let workers: RunningWorkers;
let events: QueueEvents;
let env: Env;
let jobs: ReturnType<typeof collectOutcomes>;

let pipeline: WebhookPipeline | undefined;

beforeAll(async () => {
  pipeline = await startWebhookPipeline(SECRET, prefix);
  ({ receiver, services, env, events, jobs, workers } = pipeline);
});

afterAll(async () => {
  await pipeline?.close();
});

/** Charges `units` credits (category 'units' = 1 credit per unit in the test price book). */
async function charge(accountId: string, units: number): Promise<void> {
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: String(units) } });
}

async function alertsOf(accountId: string): Promise<Array<{ id: string; threshold: number; jobId: string }>> {
  const { rows } = await services.pool.query('SELECT id, threshold FROM credit_alerts WHERE account_id = $1 ORDER BY threshold DESC', [accountId]);
  return rows.map((r) => ({ id: r.id, threshold: r.threshold, jobId: webhookJobId('credit_alert.raised', r.id) }));
}

async function deliveryLog(eventId: string) {
  const { rows } = await services.pool.query(
    'SELECT event_type, account_id, url, attempt, status, response_code, error FROM webhook_deliveries WHERE event_id = $1 ORDER BY attempt, created_at',
    [eventId],
  );
  return rows;
}

function expectSigned(req: ReceivedWebhook): WebhookEvent {
  expect(req.headers['content-type']).toBe('application/json');
  const header = String(req.headers['creditpool-signature']);
  expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
  expect(verifyWebhookSignature(SECRET, req.rawBody, header, { nowSeconds: req.atSeconds })).toMatchObject({ valid: true });
  expect(verifyWebhookSignature('not-the-secret-0123456789abcdef0123456789', req.rawBody, header, { nowSeconds: req.atSeconds }).valid).toBe(false);
  const event = JSON.parse(req.rawBody) as WebhookEvent;
  expect(req.headers['creditpool-event-id']).toBe(event.id);
  expect(req.headers['creditpool-event-type']).toBe(event.type);
  return event;
}

describe('credit alert webhooks', () => {
  it('a charge crossing 25 % and 15 % at once raises two alerts, delivered signed; the 0 % alert is the depletion notice', async () => {
    const externalId = `wh-${randomUUID()}`;
    const accountId = await createFundedAccount(services, { paid: 100, externalId });
    await charge(accountId, 90); // 100 -> 10 credits: 10 % remaining
    const alerts = await alertsOf(accountId);
    expect(alerts.map((a) => a.threshold)).toEqual([25, 15]);
    for (const a of alerts) expect(await jobs.wait(a.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', responseCode: 200, attempt: 1 } });

    const got = receiver.forAccount(accountId);
    expect(got).toHaveLength(2);
    const bodies = got.map(expectSigned).sort((x, y) => (x.data as CreditAlertEventData).threshold - (y.data as CreditAlertEventData).threshold);
    for (const [i, threshold] of [15, 25].entries()) {
      const alert = alerts.find((a) => a.threshold === threshold)!;
      const event = bodies[i]!;
      expect(event).toMatchObject({ id: `credit_alert.raised:${alert.id}`, type: 'credit_alert.raised' });
      expect(event.data).toMatchObject({
        alertId: alert.id,
        accountId,
        accountExternalId: externalId,
        threshold,
        percentRemaining: 10,
        available: '10',
        depleted: false,
      });
      const data = event.data as CreditAlertEventData;
      expect(tryDecodeId(data.alertGlobalId)).toEqual({ typename: 'CreditAlert', id: alert.id });
      expect(tryDecodeId(data.accountGlobalId)).toEqual({ typename: 'Account', id: accountId });
      expect(event.createdAt).toBe(data.createdAt);
      expect(Number.isNaN(Date.parse(data.periodStart))).toBe(false);
      expect(await deliveryLog(alert.id)).toEqual([
        { event_type: 'credit_alert.raised', account_id: accountId, url: redactWebhookUrl(receiver.url), attempt: 1, status: 'DELIVERED', response_code: 200, error: null },
      ]);
    }

    await charge(accountId, 10); // -> 0 credits
    const depleted = (await alertsOf(accountId)).find((a) => a.threshold === 0)!;
    expect(await jobs.wait(depleted.jobId)).toMatchObject({ state: 'completed' });
    const notice = expectSigned(receiver.forAccount(accountId).find((r) => r.eventId === `credit_alert.raised:${depleted.id}`)!);
    expect(notice.data).toMatchObject({ threshold: 0, percentRemaining: 0, available: '0', depleted: true });
    expect(receiver.forAccount(accountId)).toHaveLength(3);
  });

  it('a receiver failing twice (500) then answering 200 gets 3 attempts, logged FAILED, FAILED, DELIVERED, with growing delays', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    receiver.script(accountId, [500, 500, 200]);
    await charge(accountId, 80); // 20 %: only the 25 % alert
    const [alert] = await alertsOf(accountId);
    expect(alert?.threshold).toBe(25);
    expect(await jobs.wait(alert!.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 3 } });

    const log = await deliveryLog(alert!.id);
    expect(log.map((r) => [r.attempt, r.status, r.response_code])).toEqual([
      [1, 'FAILED', 500],
      [2, 'FAILED', 500],
      [3, 'DELIVERED', 200],
    ]);
    expect(log[0].error).toBe('HTTP 500: refused with 500');
    expect(log[2].error).toBeNull();

    const got = receiver.forAccount(accountId);
    expect(got.map((r) => r.headers['creditpool-delivery-attempt'])).toEqual(['1', '2', '3']);
    // Same event, same body every time; each attempt signed afresh and valid.
    expect(new Set(got.map((r) => r.rawBody)).size).toBe(1);
    got.forEach(expectSigned);
    // Exponential backoff from 1 s, less up to 20 % jitter: the retries wait at least 0.8 s, then
    // at least 1.6 s. Only lower bounds: BullMQ never runs a delayed job early, but may run it late
    // on a busy machine (a fresh-clone CI run saw the first retry 1.1 s late, longer than the second wait).
    const gap1 = got[1]!.atMs - got[0]!.atMs;
    const gap2 = got[2]!.atMs - got[1]!.atMs;
    expect(gap1).toBeGreaterThanOrEqual(800);
    expect(gap2).toBeGreaterThanOrEqual(1_600);
  });

  it('a receiver down for hours still gets the event: the retries, as the relay schedules them, span at least 12 h (and stay within the sweep window)', async () => {
    // Stripe retries for up to three days, Standard Webhooks' schedule spans about a day and a
    // half: a receiver's deploy or outage of a few minutes must not lose a depletion notice.
    // With 8 attempts from 1 s the last retry came 127 s after the first attempt, and the sweep
    // re-adds nothing tried that often, so a 3-minute outage lost the event for good.
    const accountId = await createFundedAccount(services, { paid: 100 });
    await charge(accountId, 80);
    const [alert] = await alertsOf(accountId);
    expect(await jobs.wait(alert!.jobId)).toMatchObject({ state: 'completed' });
    const job = (await workers.webhookQueue.getJob(alert!.jobId))!;
    const attempts = job.opts.attempts!;
    const backoff = Backoffs.normalize(job.opts.backoff!)!;
    const delays: number[] = [];
    for (let made = 1; made < attempts; made++) delays.push(Number(await Backoffs.calculate(backoff, made, new Error('x'), job)));
    // Each retry waits 2^(n-1) s less up to 20 % (jitter), never more: quick first retries (the
    // retry test above relies on them), and the window never longer than without jitter.
    delays.forEach((d, i) => {
      expect(d).toBeLessThanOrEqual(1_000 * 2 ** i);
      expect(d).toBeGreaterThanOrEqual(800 * 2 ** i);
    });
    const spanMs = delays.reduce((a, b) => a + b, 0);
    expect(spanMs).toBeGreaterThanOrEqual(12 * 3_600_000);
    expect(spanMs).toBeLessThanOrEqual((2 ** 16 - 1) * 1_000); // about 18.2 h, as documented
    expect(spanMs).toBeLessThan(WEBHOOK_SWEEP_MAX_AGE_MS); // the sweep still covers a job lost with Redis mid-schedule
    expect(WEBHOOK_MAX_LOGGED_ATTEMPTS).toBe(attempts); // the sweep stops exactly where the job does
  });

  it('retries are jittered: events failing together do not retry in lockstep', async () => {
    // Many accounts' alerts failing at one moment (a receiver outage) were all retried at the
    // same instants (1 s, 2 s, 4 s ... exactly), hammering a recovering receiver in waves.
    const accountId = await createFundedAccount(services, { paid: 100 });
    await charge(accountId, 80);
    const [alert] = await alertsOf(accountId);
    expect(await jobs.wait(alert!.jobId)).toMatchObject({ state: 'completed' });
    const job = (await workers.webhookQueue.getJob(alert!.jobId))!;
    const backoff = Backoffs.normalize(job.opts.backoff!)!;
    for (const made of [1, 8, 16]) {
      const samples = await Promise.all(Array.from({ length: 50 }, () => Backoffs.calculate(backoff, made, new Error('x'), job)));
      expect(new Set(samples).size).toBeGreaterThan(25); // spread, not one instant
    }
  });

  it('a 4xx other than 408/425/429 is permanent: one FAILED attempt, the job fails without retrying', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    receiver.script(accountId, [400]);
    await charge(accountId, 80);
    const [alert] = await alertsOf(accountId);
    const outcome = await jobs.wait(alert!.jobId);
    expect(outcome).toMatchObject({ state: 'failed' });
    expect((outcome as { failedReason: string }).failedReason).toMatch(/HTTP 400/);
    const job = await workers.webhookQueue.getJob(alert!.jobId);
    expect(job?.attemptsMade).toBe(1);
    expect((await deliveryLog(alert!.id)).map((r) => [r.attempt, r.status, r.response_code])).toEqual([[1, 'FAILED', 400]]);
    expect(receiver.forAccount(accountId)).toHaveLength(1);
  });

  it('429 (too many requests) is retried', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    receiver.script(accountId, [429]);
    await charge(accountId, 80);
    const [alert] = await alertsOf(accountId);
    expect(await jobs.wait(alert!.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 2 } });
    expect((await deliveryLog(alert!.id)).map((r) => [r.attempt, r.status, r.response_code])).toEqual([
      [1, 'FAILED', 429],
      [2, 'DELIVERED', 200],
    ]);
  });

  it('running a delivered job again, by hand or as a second queue job, sends nothing more', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    await charge(accountId, 80);
    const [alert] = await alertsOf(accountId);
    expect(await jobs.wait(alert!.jobId)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED' } });
    const data = { eventType: 'credit_alert.raised', eventId: alert!.id, accountId };

    // The processor again (a retry after a lost acknowledgement, a stalled job run twice).
    const again = await processDeliverWebhook({ services, log, env }, { id: alert!.jobId, name: 'deliver-webhook', data, attemptsMade: 0, attempts: 8 });
    expect(again).toEqual({ status: 'ALREADY_DELIVERED', skipped: false });
    // The same jobId again: BullMQ keeps one job. Another jobId (a duplicate add): it runs and sends nothing.
    await workers.webhookQueue.add('deliver-webhook', data, { jobId: alert!.jobId });
    const dupId = `${alert!.jobId}-dup`;
    await workers.webhookQueue.add('deliver-webhook', data, { jobId: dupId });
    expect(await jobs.wait(dupId)).toMatchObject({ state: 'completed', returnvalue: { status: 'ALREADY_DELIVERED' } });

    expect(receiver.forAccount(accountId)).toHaveLength(1);
    expect((await deliveryLog(alert!.id)).map((r) => r.status)).toEqual(['DELIVERED']);
  });
});
