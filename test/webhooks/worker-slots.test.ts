/**
 * A dead webhook receiver must not take the ledger-jobs worker's slots from the money jobs:
 * deliveries share that worker with expire-due, roll-period, auto-top-up and resume-payment, and
 * each may wait up to WEBHOOK_TIMEOUT_MS on a receiver that never answers. Real path: credit
 * alerts raised by recordUsage, relayed from the outbox, delivered to a real HTTP receiver that
 * holds every request; an expire-due job added meanwhile must finish while they all still hang.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recordUsage } from '../../src/services/record-usage.js';
import { webhookJobId } from '../../src/services/webhooks.js';
import { createFundedAccount } from '../factories/accounts.js';
import { defaultWebhookSlots } from '../../workers/start.js';
import { startWebhookPipeline, type WebhookPipeline } from './helpers.js';

const prefix = `cp-test-webhook-slots-${randomUUID()}`;
let pipeline: WebhookPipeline;

beforeAll(async () => {
  // Held requests time out only after 30 s: far longer than the expire-due job may take, so the
  // test does not depend on the machine's speed (before the fix it fails after those 30 s).
  pipeline = await startWebhookPipeline('whsec_slots_0123456789abcdef0123456789abcdef', prefix, { WEBHOOK_TIMEOUT_MS: '30000' });
});

afterAll(async () => {
  await pipeline?.close();
});

describe('webhook deliveries and the ledger-jobs worker slots', () => {
  it('with every delivery hanging on a receiver that never answers, an expire-due job still runs at once', async () => {
    const { receiver, services, workers, jobs } = pipeline;
    // The pipeline's relay drains the whole outbox of the shared test database, so deliveries of
    // other test files running meanwhile reach this receiver too (and share the cap): the
    // assertions count the requests held here and this test's own events.
    const held: Array<() => void> = [];
    const answeredBefore = receiver.requests.length;
    receiver.beforeAnswer = () => new Promise<void>((resolve) => held.push(resolve)); // holds every request until released
    const eventIds: string[] = [];
    for (let i = 0; i < 3; i++) {
      const accountId = await createFundedAccount(services, { paid: 100, externalId: `slots-${randomUUID()}` });
      // 100 -> 10 credits: the 25 % and 15 % alerts, two deliveries per account.
      await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '90' } });
      const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId]);
      eventIds.push(...rows.map((r) => r.id as string));
    }
    expect(eventIds).toHaveLength(6);
    const deliveryJobIds = eventIds.map((id) => webhookJobId('credit_alert.raised', id));
    // At least two deliveries are in flight, held by the receiver (before the fix all four slots).
    await receiver.waitFor(() => receiver.requests.length - answeredBefore >= 2, 'deliveries to reach the receiver');
    /** Logged attempts of these events that have an outcome (a timed-out attempt is logged FAILED). */
    const finishedAttempts = async () =>
      (await services.pool.query(`SELECT count(*)::int AS n FROM webhook_deliveries WHERE event_id = ANY($1::text[]) AND status <> 'SENDING'`, [eventIds])).rows[0].n;
    expect(await finishedAttempts()).toBe(0);

    const moneyAccount = await createFundedAccount(services, { paid: 5 });
    const jobId = `expire-due-slots-${randomUUID()}`;
    await workers.ledgerQueue.add('expire-due', { accountId: moneyAccount }, { jobId });
    expect(await jobs.wait(jobId, 45_000)).toMatchObject({ state: 'completed' });
    // It ran while every delivery still hung: no attempt has ended (not even by timing out).
    expect(await finishedAttempts()).toBe(0);
    expect(deliveryJobIds.filter((id) => jobs.outcomes.has(id))).toEqual([]);
    // Only the capped number of deliveries reached the receiver while it held them; the others gave their slot back.
    expect(held).toHaveLength(defaultWebhookSlots(4));
    for (const id of deliveryJobIds) expect((await workers.ledgerQueue.getJob(id))!.attemptsMade).toBe(0);

    // The receiver answers again: every event is delivered, each at its first attempt (putting a
    // job back spent none).
    receiver.beforeAnswer = null;
    for (const release of held) release();
    for (const id of deliveryJobIds) expect(await jobs.wait(id, 30_000)).toMatchObject({ state: 'completed', returnvalue: { status: 'DELIVERED', attempt: 1 } });
    const ours = new Set(eventIds.map((id) => `credit_alert.raised:${id}`));
    const ourRequests = receiver.requests.filter((r) => ours.has(r.eventId));
    expect(new Set(ourRequests.map((r) => r.eventId))).toEqual(ours);
    expect(ourRequests).toHaveLength(6);
  });
});
