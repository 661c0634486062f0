/**
 * Processor of the `deliver-webhook` job (issue #4): delivers one signed webhook
 * (src/services/webhooks.ts). BullMQ retries a thrown attempt with the exponential backoff of
 * LEDGER_JOB_OPTIONS['deliver-webhook'] (17 attempts, 1 s, 2 s, 4 s, ... 2^15 s, each less up to 20 % jitter: at most about 18 h); a permanent failure is
 * thrown as UnrecoverableError so it is not retried; WebhookAttemptInFlightError (another run's
 * attempt in flight) is passed on for workers/start.ts runDeliveryJob to put the job back without
 * spending an attempt. Runs on the webhook-deliveries queue's own worker. Idempotent: once the
 * event is DELIVERED, running the job again sends nothing.
 */
import { UnrecoverableError } from 'bullmq';
import { z } from 'zod';
import type { Processor } from '../deps.js';
import { deliverWebhook, WEBHOOK_EVENT_TYPES, WebhookDeliveryError } from '../../src/services/webhooks.js';

/** Payload, as written by balance_changed (credit alerts) and the auto top-up service (pauses). */
export const DeliverWebhookPayload = z.object({
  eventType: z.enum(WEBHOOK_EVENT_TYPES),
  eventId: z.string().uuid(),
  accountId: z.string().uuid(),
});

/**
 * Delivers one webhook with attempt = job.attemptsMade + 1 and the job's creation time (a job made
 * before the delivery log was pruned sends nothing for an event whose attempts are gone).
 * @returns the WebhookDeliveryResult (SKIPPED when WEBHOOK_URL is unset, ALREADY_DELIVERED, DELIVERED).
 * @throws ZodError for a malformed payload (not retried); UnrecoverableError for a permanent
 *   failure (4xx other than 408/425/429, event gone, its log pruned after the job was made, WEBHOOK_SECRET missing);
 *   WebhookAttemptInFlightError when another attempt is in flight (put back by the worker);
 *   WebhookDeliveryError or a database error otherwise (retried).
 */
export const processDeliverWebhook: Processor = async (deps, job) => {
  const payload = DeliverWebhookPayload.parse(job.data);
  try {
    const jobCreatedAt = job.createdAtMs !== undefined && Number.isFinite(job.createdAtMs) ? new Date(job.createdAtMs) : undefined;
    return await deliverWebhook({ pool: deps.services.pool, env: deps.env, log: deps.log }, payload, job.attemptsMade + 1, { jobCreatedAt });
  } catch (err) {
    if (err instanceof WebhookDeliveryError && err.permanent) throw new UnrecoverableError(err.message);
    throw err;
  }
};
