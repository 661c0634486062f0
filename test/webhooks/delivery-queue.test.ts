/**
 * Webhook deliveries run on a queue of their own (webhook-deliveries, WEBHOOK_CONCURRENCY at
 * once), apart from the money jobs of ledger-jobs: a dead receiver must never take those jobs'
 * slots, no delivery is put back to wait for a slot, and a run that meets another run's attempt in
 * flight waits without spending an attempt. Real path: credit alerts raised by recordUsage,
 * relayed from the outbox, delivered to a real HTTP receiver that holds requests on demand.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { recordUsage } from '../../src/services/record-usage.js';
import { webhookJobId } from '../../src/services/webhooks.js';
import { createFundedAccount } from '../factories/accounts.js';
import { startWebhookPipeline, type WebhookPipeline } from './helpers.js';

const prefix = `cp-test-webhook-queue-${randomUUID()}`;
let pipeline: WebhookPipeline;
/** jobIds that went to the delayed set (put back or retried), on either queue. */
const delayedJobIds = new Set<string>();

beforeAll(async () => {
  // Held requests time out only after 30 s: far longer than the expire-due job may take, so the
  // test does not depend on the machine's speed.
  pipeline = await startWebhookPipeline('whsec_queue_0123456789abcdef0123456789abcdef', prefix, { WEBHOOK_TIMEOUT_MS: '30000' });
  for (const events of [pipeline.events, pipeline.webhookEvents]) events.on('delayed', ({ jobId }) => delayedJobIds.add(jobId));
});

afterAll(async () => {
  await pipeline?.close();
});

/**
 * A funded account charged from 100 to 10 credits: the 25 % and 15 % alerts, two deliveries.
 * `created(accountId)` runs before the charge (e.g. to hold the account's requests before any can arrive).
 * Resolves with the alerts' ids, 25 % first.
 */
async function twoAlerts(created: (accountId: string) => void = () => undefined): Promise<{ accountId: string; eventIds: string[] }> {
  const { services } = pipeline;
  const accountId = await createFundedAccount(services, { paid: 100, externalId: `queue-${randomUUID()}` });
  created(accountId);
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '90' } });
  const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1 ORDER BY threshold DESC', [accountId]);
  return { accountId, eventIds: rows.map((r) => r.id as string) };
}

describe('webhook deliveries on their own queue', () => {
  it('six deliveries hang at once on a receiver that never answers while an expire-due job completes; none is put back, each is delivered at its first attempt', async () => {
    const { receiver, services, workers, jobs } = pipeline;
    // The pipeline's relay drains the whole outbox of the shared test database, so deliveries of
    // other test files running meanwhile reach this receiver too: the assertions count this
    // test's own events and the requests held for them.
    const accounts = new Set<string>();
    const held: Array<() => void> = [];
    receiver.beforeAnswer = (req) => (req.accountId !== null && accounts.has(req.accountId) ? new Promise<void>((resolve) => held.push(resolve)) : Promise.resolve());
    const eventIds: string[] = [];
    for (let i = 0; i < 3; i++) eventIds.push(...(await twoAlerts((id) => accounts.add(id))).eventIds);
    expect(eventIds).toHaveLength(6);
    const ours = new Set(eventIds.map((id) => `credit_alert.raised:${id}`));
    const deliveryJobIds = eventIds.map((id) => webhookJobId('credit_alert.raised', id));
    // All six are in flight at once, held by the receiver (WEBHOOK_CONCURRENCY 8; the ledger-jobs worker's former cap let two).
    await receiver.waitFor(() => receiver.requests.filter((r) => r.accountId !== null && accounts.has(r.accountId)).length === 6, 'six deliveries to reach the receiver', 20_000);

    const moneyAccount = await createFundedAccount(services, { paid: 5 });
    const jobId = `expire-due-queue-${randomUUID()}`;
    await workers.ledgerQueue.add('expire-due', { accountId: moneyAccount }, { jobId });
    expect(await jobs.wait(jobId, 45_000)).toMatchObject({ state: 'completed' });
    // It ran while every delivery still hung: no attempt of ours has an outcome yet.
    const { rows } = await services.pool.query(`SELECT status, count(*)::int AS n FROM webhook_deliveries WHERE event_id = ANY($1::text[]) GROUP BY status`, [eventIds]);
    expect(rows).toEqual([{ status: 'SENDING', n: 6 }]);
    expect(deliveryJobIds.filter((id) => jobs.outcomes.has(id))).toEqual([]);

    receiver.beforeAnswer = null;
    for (const release of held) release();
    for (const id of deliveryJobIds) expect(await jobs.wait(id, 30_000)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
    expect(receiver.requests.filter((r) => ours.has(r.eventId))).toHaveLength(6);
    // Nothing went through the delayed set: no delivery was put back for a slot.
    expect(deliveryJobIds.filter((id) => delayedJobIds.has(id))).toEqual([]);
    // They ran on the deliveries' own queue.
    for (const id of deliveryJobIds) expect(await workers.webhookQueue.getJobState(id)).toBe('completed');
  });

  it('a run meeting another attempt of its event in flight waits (delayed) without spending an attempt or logging one; then the event is delivered once', async () => {
    const { receiver, services, workers, jobs } = pipeline;
    let ourAccount = '';
    const held: Array<() => void> = [];
    receiver.beforeAnswer = (req) => (req.accountId === ourAccount ? new Promise<void>((resolve) => held.push(resolve)) : Promise.resolve());
    // 100 -> 20 credits: the 25 % alert only, one delivery (held by the receiver).
    const accountId = (ourAccount = await createFundedAccount(services, { paid: 100 }));
    await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
    const eventId = (await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId])).rows[0].id as string;
    await receiver.waitFor(() => receiver.forAccount(accountId).length === 1, 'the first attempt to reach the receiver');
    // A second job for the same event (another jobId: a duplicate add).
    const dupId = `${webhookJobId('credit_alert.raised', eventId)}-dup`;
    await workers.webhookQueue.add('deliver-webhook', { eventType: 'credit_alert.raised', eventId, accountId }, { jobId: dupId, attempts: 17, backoff: { type: 'exponential', delay: 1_000 } });
    await vi.waitFor(async () => expect(delayedJobIds.has(dupId)).toBe(true), { timeout: 20_000, interval: 50 });
    const dup = (await workers.webhookQueue.getJob(dupId))!;
    expect(await dup.getState()).toBe('delayed');
    expect(dup.attemptsMade).toBe(0);
    const { rows } = await services.pool.query('SELECT attempt, status FROM webhook_deliveries WHERE event_id = $1', [eventId]);
    expect(rows).toEqual([{ attempt: 1, status: 'SENDING' }]);

    receiver.beforeAnswer = null;
    for (const release of held) release();
    expect(await jobs.wait(webhookJobId('credit_alert.raised', eventId))).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
    await (await workers.webhookQueue.getJob(dupId))!.promote().catch(() => undefined); // may have come back by itself already
    expect(await jobs.wait(dupId)).toMatchObject({ state: 'completed', returnvalue: { status: 'ALREADY_DELIVERED' } });
    expect(receiver.requests.filter((r) => r.eventId === `credit_alert.raised:${eventId}`)).toHaveLength(1);
  });
});
