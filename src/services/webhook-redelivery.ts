/**
 * Operator redelivery of webhooks (the `npm run webhooks` CLI, scripts/webhooks.ts): lists the
 * events the receiver never acknowledged and sends chosen ones again through the normal path.
 *
 * Why: a delivery job gives up after its 17th attempt (about 18 h, LEDGER_JOB_OPTIONS) or at a
 * permanent 4xx, and the sweep re-adds only events younger than 24 h with fewer than 17 logged
 * attempts (src/services/webhooks.ts findUndeliveredWebhookJobs); past that an undelivered event
 * had no way back to the receiver.
 *
 * How a redelivery runs: it re-adds the event's own `deliver-webhook` job (on the
 * webhook-deliveries queue; a job of the event an earlier version left on ledger-jobs counts as
 * its job too, as the ledger-jobs worker still runs it), with its deterministic
 * jobId (webhookJobId) and the normal options (17 attempts, exponential backoff from 1 s), the
 * way the sweep does (createQueueJobSink's `readd`: a failed or completed job BullMQ still keeps
 * under that id is removed first, else the add would be a no-op). A worker then delivers it with
 * deliverWebhook, which builds the same body from the database (same `id`, so receivers
 * de-duplicate) and signs it with the workers' WEBHOOK_SECRET; attempt numbers of the new job
 * start again at 1.
 *
 * An event redelivered after its job gave up (17 attempts or a final 4xx logged) stays outside
 * the sweep: if Redis loses its new job, running the redelivery again re-adds it.
 *
 * Guarantees with several operators (or the sweep) at once:
 * - one job per event: all of them use the one jobId, Redis keeps at most one job under it, an
 *   add whose jobId exists is ignored, and `readd` removes only a finished job (never a waiting,
 *   delayed or running one); so two redeliveries of one event at once add one job;
 * - one POST at a time, none after delivery: deliverWebhook claims each attempt (a SENDING row,
 *   one per event, written under a per-event advisory lock after its DELIVERED check) before the
 *   POST and records the outcome on it after, so even two jobs (or a job and a stale run) never
 *   both send, and nothing is sent once a DELIVERED row is committed. What remains is the
 *   at-least-once case every delivery has (the receiver's 2xx arrives but its outcome is not
 *   recorded): receivers de-duplicate on `creditpool-event-id`.
 */
import type pg from 'pg';
import { isUuid } from '../db/uuid.js';
import type { OutboxJob } from '../queues/names.js';
import { isPermanentStatus, webhookClaimMs, webhookJob, webhookJobId, WEBHOOK_EVENT_TYPES, WEBHOOK_MAX_LOGGED_ATTEMPTS, type WebhookEventType, type WebhookJobData } from './webhooks.js';

/**
 * Where an undelivered event stands, from its last logged attempt:
 * - `in_flight`: that attempt is being sent now (a SENDING claim younger than the claim's
 *   lifetime, WEBHOOK_TIMEOUT_MS + WEBHOOK_CLAIM_MARGIN_MS): its outcome is not known yet;
 * - `retrying`: its job has attempts left (last attempt number below 17, not permanent): BullMQ
 *   retries it, and the sweep re-adds it if lost while it is younger than 24 h (also an attempt
 *   whose run stopped before recording an outcome: a stale claim, recorded FAILED by the next run);
 * - `exhausted`: its job made its 17th attempt: nothing sends it again without a redelivery;
 * - `permanent`: the receiver refused it with a 4xx other than 408/425/429: not retried.
 */
export type FailedWebhookState = 'in_flight' | 'retrying' | 'exhausted' | 'permanent';

/** One undelivered event (at least one logged attempt, none DELIVERED), as {@link listFailedWebhooks} returns it. */
export interface FailedWebhook {
  eventType: WebhookEventType;
  /** The event's own uuid (the credit alert's id, the pausing auto top-up's id). */
  eventId: string;
  /** The body's `id` and the `creditpool-event-id` header: `<eventType>:<eventId>`. */
  id: string;
  accountId: string;
  /** Attempts logged in webhook_deliveries for the event, over all its jobs. */
  attempts: number;
  /** Attempt number of the last attempt within its job (1..17). */
  lastAttempt: number;
  /** HTTP status of the last attempt, null when no response came (timeout, network error). */
  lastResponseCode: number | null;
  /** Error of the last attempt (`HTTP <code>: <start of body>` or the network/timeout error), WEBHOOK_URL's path and query taken out (webhooks.ts redactWebhookUrlIn; rows of earlier releases: migration webhook_url_redacted). */
  lastError: string | null;
  /** First logged attempt: about when the event was raised. */
  firstAttemptAt: Date;
  lastAttemptAt: Date;
  state: FailedWebhookState;
}

/** Default number of events {@link listFailedWebhooks} returns. */
export const FAILED_WEBHOOKS_DEFAULT_LIMIT = 50;

/** Most events one {@link listFailedWebhooks} call returns when a limit is given. */
export const FAILED_WEBHOOKS_MAX_LIMIT = 1_000;

/** Options of {@link listFailedWebhooks}. */
export interface ListFailedWebhooksOptions {
  /** Only events whose first attempt is at or after this instant. */
  since?: Date;
  /** At most this many (1..FAILED_WEBHOOKS_MAX_LIMIT, default 50); null: all of them (redelivery of every failed event). */
  limit?: number | null;
  /** The workers' WEBHOOK_TIMEOUT_MS (default 5000, the environment's default): a SENDING attempt younger than webhookClaimMs(it) is `in_flight`. */
  webhookTimeoutMs?: number;
}

/**
 * The undelivered events: every (event type, event id) with at least one logged attempt and no
 * DELIVERED one, newest first (by first attempt, then event id), with the count of attempts and
 * the last attempt's attempt number, status code, error and time. Events never attempted (raised
 * while WEBHOOK_URL was unset) have no log and are not listed. Reads the whole delivery log
 * (one grouping over webhook_deliveries): an operator's query, not for a request path.
 * @throws RangeError when `limit` is not an integer in 1..FAILED_WEBHOOKS_MAX_LIMIT (or null);
 *   the database error otherwise.
 */
export async function listFailedWebhooks(pool: pg.Pool, opts: ListFailedWebhooksOptions = {}): Promise<FailedWebhook[]> {
  const limit = opts.limit === undefined ? FAILED_WEBHOOKS_DEFAULT_LIMIT : opts.limit;
  if (limit !== null && (!Number.isSafeInteger(limit) || limit < 1 || limit > FAILED_WEBHOOKS_MAX_LIMIT)) {
    throw new RangeError(`limit must be an integer from 1 to ${FAILED_WEBHOOKS_MAX_LIMIT}`);
  }
  const { rows } = await pool.query(
    `WITH ev AS (
       SELECT event_type, event_id, count(*)::int AS attempts, min(created_at) AS first_attempt_at
         FROM webhook_deliveries
        GROUP BY event_type, event_id
       HAVING NOT bool_or(status = 'DELIVERED')
          AND ($1::timestamptz IS NULL OR min(created_at) >= $1::timestamptz)
     )
     SELECT ev.event_type, ev.event_id, ev.attempts, ev.first_attempt_at,
            l.account_id, l.attempt, l.response_code, l.error, l.created_at AS last_attempt_at,
            l.status = 'SENDING' AND l.created_at >= now() - $3::interval AS in_flight
       FROM ev
       JOIN LATERAL (SELECT d.account_id, d.attempt, d.response_code, d.error, d.created_at, d.status
                       FROM webhook_deliveries d
                      WHERE d.event_id = ev.event_id AND d.event_type = ev.event_type
                      ORDER BY d.created_at DESC, d.attempt DESC LIMIT 1) l ON true
      ORDER BY ev.first_attempt_at DESC, ev.event_id DESC
      LIMIT $2`,
    [opts.since ?? null, limit, `${webhookClaimMs(opts.webhookTimeoutMs ?? 5_000)} milliseconds`],
  );
  return rows
    .filter((r) => (WEBHOOK_EVENT_TYPES as readonly string[]).includes(r.event_type))
    .map((r) => {
      const code: number | null = r.response_code;
      const state: FailedWebhookState = r.in_flight ? 'in_flight' : code !== null && isPermanentStatus(code) ? 'permanent' : r.attempt >= WEBHOOK_MAX_LOGGED_ATTEMPTS ? 'exhausted' : 'retrying';
      return {
        eventType: r.event_type,
        eventId: r.event_id,
        id: `${r.event_type}:${r.event_id}`,
        accountId: r.account_id,
        attempts: r.attempts,
        lastAttempt: r.attempt,
        lastResponseCode: code,
        lastError: r.error,
        firstAttemptAt: r.first_attempt_at,
        lastAttemptAt: r.last_attempt_at,
        state,
      };
    });
}

/** An event named by an operator: its uuid, with its type when given as `<eventType>:<uuid>`. */
export interface WebhookEventRef {
  eventType?: WebhookEventType;
  eventId: string;
}

/**
 * Parses an event reference: a bare event uuid, or the body's `id` / `creditpool-event-id`
 * (`credit_alert.raised:<uuid>`, `auto_top_up.paused:<uuid>`), which is what receivers log.
 * @returns the reference (uuid lowercased), or null when `text` is neither form.
 */
export function parseWebhookEventRef(text: string): WebhookEventRef | null {
  const colon = text.lastIndexOf(':');
  const type = colon < 0 ? undefined : text.slice(0, colon);
  const id = colon < 0 ? text : text.slice(colon + 1);
  if (!isUuid(id)) return null;
  if (type !== undefined && !(WEBHOOK_EVENT_TYPES as readonly string[]).includes(type)) return null;
  return { eventType: type as WebhookEventType | undefined, eventId: id.toLowerCase() };
}

/**
 * Outcome of one redelivery:
 * - `QUEUED`: a fresh delivery job was added (an earlier finished one removed first);
 * - `PROMOTED`: its job was waiting out a retry delay (state delayed): it runs now instead;
 * - `PENDING`: its job is already waiting or running: nothing changed;
 * - `ALREADY_DELIVERED`: a DELIVERED attempt is logged: refused, nothing is sent again;
 * - `LOG_PRUNED`: no attempt is logged and the event was raised before the delivery log's latest
 *   prune cutoff (webhook_log_retention, services/webhook-retention.ts): its attempts, a
 *   DELIVERED one among them perhaps, may have been deleted after WEBHOOK_LOG_RETENTION_DAYS;
 *   whether it was delivered is unknown: refused, nothing is sent;
 * - `NOT_FOUND`: no logged attempt and no such credit alert (or, for `auto_top_up.paused:<id>`,
 *   no auto top-up of that id that paused its account, which is still paused by it: see
 *   {@link resolveWebhookEvent}): refused.
 */
export type RedeliveryStatus = 'QUEUED' | 'PROMOTED' | 'PENDING' | 'ALREADY_DELIVERED' | 'LOG_PRUNED' | 'NOT_FOUND';

/** One event's result of {@link redeliverWebhooks}. */
export interface RedeliveryOutcome {
  ref: WebhookEventRef;
  status: RedeliveryStatus;
  /** The resolved event (absent when NOT_FOUND). */
  event?: WebhookJobData;
  /** The delivery job's id (absent when NOT_FOUND, ALREADY_DELIVERED or LOG_PRUNED). */
  jobId?: string;
  /** The BullMQ state the job was found in (PENDING, PROMOTED). */
  jobState?: string;
}

/** A BullMQ queue as {@link redeliverWebhooks} reads it. */
interface JobLookup {
  getJob(jobId: string): Promise<{ getState(): Promise<string>; promote(): Promise<void> } | undefined>;
}

/** What {@link redeliverWebhooks} adds jobs through (createQueueJobSink). */
export interface RedeliveryQueue {
  /** The webhook-deliveries queue, where delivery jobs are. */
  webhookQueue: JobLookup;
  /** The ledger-jobs queue, where an earlier version put them (still run there: workers/start.ts LEGACY_DELIVERY). */
  queue: JobLookup;
  /** Removes a finished job kept under the same jobId, then adds (createQueueJobSink's readd). */
  readd(jobs: OutboxJob[]): Promise<void>;
}

/**
 * Finds the event a reference names: the delivery log first (its type and account), else a
 * credit alert with that id, else (only when typed `auto_top_up.paused:<id>`) the auto top-up with
 * that id when its failure paused the account's auto top-up and the account is still paused by
 * it (the sweep's rule; a failed top-up that paused nothing is no pause event, and a pause since
 * resumed, never attempted, can no longer be told from one).
 * @returns the job payload, or null when nothing matches.
 * @throws the database error.
 */
export async function resolveWebhookEvent(pool: pg.Pool, ref: WebhookEventRef): Promise<WebhookJobData | null> {
  const logged = await pool.query(
    `SELECT event_type, account_id FROM webhook_deliveries
      WHERE event_id = $1 AND ($2::text IS NULL OR event_type = $2) AND event_type = ANY($3::text[])
      ORDER BY created_at DESC LIMIT 1`,
    [ref.eventId, ref.eventType ?? null, WEBHOOK_EVENT_TYPES],
  );
  if (logged.rows[0]) return { eventType: logged.rows[0].event_type, eventId: ref.eventId, accountId: logged.rows[0].account_id };
  if (ref.eventType === undefined || ref.eventType === 'credit_alert.raised') {
    const alert = await pool.query('SELECT account_id FROM credit_alerts WHERE id = $1::uuid', [ref.eventId]);
    if (alert.rows[0]) return { eventType: 'credit_alert.raised', eventId: ref.eventId, accountId: alert.rows[0].account_id };
  }
  if (ref.eventType === 'auto_top_up.paused') {
    // Only the top-up whose failure paused the account's auto top-up, by the sweep's rule
    // (webhooks.ts findUndeliveredWebhookJobs): the account's latest FAILED top-up created at or
    // before the pause, or SUCCEEDED when a late success of its charge revived it, finished at the
    // pause's time with its error kept. Any other failed top-up paused nothing: its
    // `auto_top_up.paused` would tell the receiver auto top-up paused when it did not.
    const topUp = await pool.query(
      `SELECT t.account_id FROM auto_top_up_settings s
         JOIN LATERAL (SELECT x.id, x.account_id, x.finished_at, x.error FROM auto_top_ups x
                        WHERE x.account_id = s.account_id AND x.status IN ('FAILED', 'SUCCEEDED') AND x.created_at <= s.paused_at
                        ORDER BY x.created_at DESC, x.id DESC LIMIT 1) t ON true
        WHERE s.account_id = (SELECT account_id FROM auto_top_ups WHERE id = $1::uuid)
          AND s.paused_at IS NOT NULL AND t.id = $1::uuid AND t.finished_at = s.paused_at AND t.error IS NOT NULL`,
      [ref.eventId],
    );
    if (topUp.rows[0]) return { eventType: 'auto_top_up.paused', eventId: ref.eventId, accountId: topUp.rows[0].account_id };
  }
  return null;
}

/** BullMQ states of a job that will still run without help. */
const LIVE_JOB_STATES = ['waiting', 'active', 'prioritized', 'waiting-children'];

/**
 * Sends events again through the normal delivery path (see the module comment), one after
 * another: resolves each reference ({@link resolveWebhookEvent}); refuses one with a DELIVERED
 * attempt logged; promotes its job when it is delayed (waiting for a retry); leaves it when it is
 * waiting or running; else re-adds its `deliver-webhook` job (same jobId, normal attempts and
 * backoff). Refuses (LOG_PRUNED) one with no attempt logged that was raised before the delivery
 * log's latest prune cutoff: whether it was delivered is unknown. Nothing is sent here: a worker delivers the job, with its own WEBHOOK_URL and secret.
 * A DELIVERED row committed after the check is still honoured: the job then sends nothing.
 * @returns one outcome per reference, in order.
 * @throws the database or Redis error (outcomes of earlier references are lost with it; running
 *   again is safe: every step is idempotent).
 */
export async function redeliverWebhooks(pool: pg.Pool, jobs: RedeliveryQueue, refs: WebhookEventRef[]): Promise<RedeliveryOutcome[]> {
  const out: RedeliveryOutcome[] = [];
  for (const ref of refs) {
    const event = await resolveWebhookEvent(pool, ref);
    if (!event) {
      out.push({ ref, status: 'NOT_FOUND' });
      continue;
    }
    // One statement: the event's attempts are pruned whole and atomically with the prune cutoff
    // (services/webhook-retention.ts), so it sees either its whole log or none of it and the cutoff.
    const done = await pool.query(
      `SELECT coalesce(bool_or(d.status = 'DELIVERED'), false) AS delivered, count(d.*)::int AS attempts,
              (SELECT r.pruned_before FROM webhook_log_retention r WHERE r.id) AS pruned_before,
              CASE WHEN $2 = 'credit_alert.raised' THEN (SELECT c.created_at FROM credit_alerts c WHERE c.id = $3::uuid)
                   ELSE (SELECT coalesce(t.finished_at, t.created_at) FROM auto_top_ups t WHERE t.id = $3::uuid) END AS event_at
         FROM webhook_deliveries d WHERE d.event_id = $1 AND d.event_type = $2`,
      [event.eventId, event.eventType, event.eventId],
    );
    const log = done.rows[0];
    if (log.delivered) {
      out.push({ ref, status: 'ALREADY_DELIVERED', event });
      continue;
    }
    if (log.attempts === 0 && log.pruned_before !== null && (log.event_at === null || log.event_at < log.pruned_before)) {
      out.push({ ref, status: 'LOG_PRUNED', event });
      continue;
    }
    const jobId = webhookJobId(event.eventType, event.eventId);
    // Its job on webhook-deliveries, else one an earlier version left on ledger-jobs that is still live.
    let existing = await jobs.webhookQueue.getJob(jobId);
    if (!existing) {
      const legacy = await jobs.queue.getJob(jobId);
      if (legacy && ['delayed', ...LIVE_JOB_STATES].includes(await legacy.getState())) existing = legacy;
    }
    let jobState = existing ? await existing.getState() : undefined;
    if (existing && jobState === 'delayed') {
      try {
        await existing.promote();
        out.push({ ref, status: 'PROMOTED', event, jobId, jobState });
        continue;
      } catch {
        // No longer delayed (it started meanwhile, or finished): handled below as it is now.
        jobState = await existing.getState();
      }
    }
    if (jobState !== undefined && LIVE_JOB_STATES.includes(jobState)) {
      out.push({ ref, status: 'PENDING', event, jobId, jobState });
      continue;
    }
    await jobs.readd([webhookJob(event)]);
    out.push({ ref, status: 'QUEUED', event, jobId });
  }
  return out;
}
