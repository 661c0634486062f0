/**
 * Signed webhooks (issue #4): credit alerts (`credit_alert.raised`; the 0 % alert is the
 * depletion notice) and auto top-up pauses (`auto_top_up.paused`) POSTed to the one configured
 * WEBHOOK_URL, signed with HMAC-SHA256, retried with exponential backoff by BullMQ, one row per
 * attempt in `webhook_deliveries` (the delivery log; old events are pruned after
 * WEBHOOK_LOG_RETENTION_DAYS by src/services/webhook-retention.ts).
 *
 * Flow: the transaction that raises the event writes an outbox `job` row
 * (`deliver-webhook`, jobId `webhook-<kind>-<event id>`); the relay enqueues it on webhook-deliveries
 * (17 attempts, exponential backoff from 1 s less up to 20 % jitter, the last retry at most about 18 h after the first attempt:
 * src/queues/names.ts); the processor
 * (workers/processors/deliver-webhook.ts, on the webhook-deliveries worker) calls {@link deliverWebhook}; the sweep re-adds jobs
 * lost with Redis ({@link findUndeliveredWebhookJobs}); past that, an operator lists and re-adds
 * undelivered events with `npm run webhooks` (src/services/webhook-redelivery.ts).
 *
 * Wire format (every delivery of one event carries the same body; only the signature timestamp
 * changes between attempts):
 *   POST <WEBHOOK_URL>
 *   content-type: application/json
 *   creditpool-event-id: <eventType>:<eventId>       (receivers de-duplicate on it)
 *   creditpool-event-type: credit_alert.raised | auto_top_up.paused
 *   creditpool-delivery-attempt: <n>                  (1-based attempt of the job)
 *   creditpool-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *   body: {"id": "<eventType>:<eventId>", "type": ..., "createdAt": ISO-8601, "data": {...}}
 * The signature scheme is Stripe's (https://docs.stripe.com/webhooks#verify-manually); HMAC is
 * RFC 2104 with SHA-256.
 *
 * Failures: 2xx is DELIVERED. A 4xx other than 408, 425 and 429 is PERMANENT (RFC 9110 §15.5: the
 * receiver understood and refused this request; sending the same bytes again cannot change
 * that; 408 Request Timeout, 425 Too Early (RFC 8470) and 429 Too Many Requests (RFC 6585) ask
 * for a retry). Everything else (3xx: redirects are never followed; 5xx; timeouts; network
 * errors) is retried. Each attempt is logged either way.
 *
 * Secrets of the URL: the POST goes to WEBHOOK_URL whole, read from the configuration at each
 * attempt (never from the log); what is logged, stored and thrown shows it as
 * {@link redactWebhookUrl} does and has it taken out of error texts ({@link redactWebhookUrlIn}),
 * since receivers commonly take their token in the path or the query. The database redacts the
 * log's `url` column as well (migration webhook_url_redacted: webhook_url_redacted()).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { Env } from '../config/env.js';
import { LEDGER_JOB_OPTIONS, type OutboxJob } from '../queues/names.js';
import { formatCredits } from '../ledger/credits.js';
import { toGlobalId } from '../graphql/ids.js';
import { PAUSE_AFTER_FAILURES } from './auto-top-up.js';
import { REDACTED, redactUrlCredentials } from '../logging.js';

/** The webhook event types. */
export const WEBHOOK_EVENT_TYPES = ['credit_alert.raised', 'auto_top_up.paused'] as const;

/** One webhook event type. */
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/** The data of a `deliver-webhook` job (as written by the SQL function balances_changed and the auto top-up service). */
export interface WebhookJobData {
  eventType: WebhookEventType;
  /** The event's own uuid: the credit alert's id, or the auto top-up's id. */
  eventId: string;
  /** The account the event belongs to (the body is read from the database, which wins). */
  accountId: string;
}

/**
 * The condition "this attempt's row is still SENDING", for statements that find the row by its
 * id: `COALESCE(status, '')` is the status (the column is NOT NULL), written so that only the
 * primary key can serve the statement. A plain `status = 'SENDING'` also matches the partial
 * unique index of SENDING attempts (webhook_deliveries_one_sending), which SENDING rows only
 * pass through, so the statistics nearly always count it empty; the workers' generic plans then
 * read that index whole instead of the primary key, and recording each attempt's outcome read
 * every attempt in flight: 50,001 rows per delivery with 50,000 in flight
 * (test/integration/neighbour-growth-audit.test.ts), a cost that grows with the square of a
 * burst.
 */
const SENDING_BY_ID = `COALESCE(status, '') = 'SENDING'`;

/** HTTP statuses in 4xx that still ask for a retry (see the module comment). */
export const RETRYABLE_4XX = [408, 425, 429] as const;

/** Attempts of one job (LEDGER_JOB_OPTIONS['deliver-webhook'].attempts); the sweep stops re-adding an event after this many logged attempts. */
export const WEBHOOK_MAX_LOGGED_ATTEMPTS = LEDGER_JOB_OPTIONS['deliver-webhook'].attempts;

/** Events younger than this are left to their own job by the sweep (the relay has not had its chance yet). */
export const WEBHOOK_SWEEP_MIN_AGE_MS = 60_000;

/** Events older than this are no longer re-added by the sweep (bounds the sweep when WEBHOOK_URL is unset). */
export const WEBHOOK_SWEEP_MAX_AGE_MS = 24 * 60 * 60_000;

/** Most jobs one sweep returns. */
export const WEBHOOK_SWEEP_LIMIT = 1_000;

/** Default replay window of {@link verifyWebhookSignature}: 5 minutes, Stripe's default tolerance. */
export const DEFAULT_SIGNATURE_TOLERANCE_SECONDS = 300;

const JOB_ID_KIND: Record<WebhookEventType, string> = {
  'credit_alert.raised': 'credit_alert',
  'auto_top_up.paused': 'auto_top_up_paused',
};

/** The deterministic BullMQ jobId of an event's delivery job (`webhook-credit_alert-<id>`, `webhook-auto_top_up_paused-<id>`; BullMQ forbids ":"). */
export function webhookJobId(eventType: WebhookEventType, eventId: string): string {
  return `webhook-${JOB_ID_KIND[eventType]}-${eventId}`;
}

/** The outbox/queue job that delivers one event (the same payload balances_changed writes). */
export function webhookJob(data: WebhookJobData): OutboxJob {
  return { name: 'deliver-webhook', jobId: webhookJobId(data.eventType, data.eventId), data: { eventType: data.eventType, eventId: data.eventId, accountId: data.accountId } };
}

/** Whether an HTTP status is a permanent failure (4xx other than 408, 425, 429; see the module comment). */
export function isPermanentStatus(status: number): boolean {
  return status >= 400 && status <= 499 && !(RETRYABLE_4XX as readonly number[]).includes(status);
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

function hmacHex(secret: string, timestampSeconds: number, body: string): string {
  return createHmac('sha256', secret).update(`${timestampSeconds}.${body}`, 'utf8').digest('hex');
}

/**
 * The `creditpool-signature` header value for `body` sent at `timestampSeconds`:
 * `t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<body>")>`. The scheme is
 * Stripe's (https://docs.stripe.com/webhooks#verify-manually); HMAC per RFC 2104. The timestamp
 * is inside the signed bytes, so a captured request cannot be replayed with a fresh timestamp.
 * @param secret the shared secret (WEBHOOK_SECRET), used as UTF-8 key bytes.
 * @param body the exact raw request body (sign and send the same string).
 * @param timestampSeconds whole seconds since the Unix epoch.
 * @throws RangeError when timestampSeconds is not a non-negative integer.
 */
export function signWebhook(secret: string, body: string, timestampSeconds: number): string {
  if (!Number.isSafeInteger(timestampSeconds) || timestampSeconds < 0) throw new RangeError('timestampSeconds must be a non-negative integer');
  return `t=${timestampSeconds},v1=${hmacHex(secret, timestampSeconds, body)}`;
}

/** Outcome of {@link verifyWebhookSignature}. */
export type WebhookSignatureCheck =
  | { valid: true; timestampSeconds: number }
  | {
      valid: false;
      /** `malformed`: no `t=` or no `v1=`; `timestamp_out_of_tolerance`: replay window exceeded; `signature_mismatch`: no v1 matches. */
      reason: 'malformed' | 'timestamp_out_of_tolerance' | 'signature_mismatch';
    };

/**
 * Verifies a `creditpool-signature` header for the raw `body`, as a receiver should (Stripe's
 * manual verification steps, https://docs.stripe.com/webhooks#verify-manually): parse `t` and
 * every `v1` (several are allowed, e.g. while a secret is rotated), reject a timestamp more than
 * `toleranceSeconds` away from `nowSeconds` (replay protection, in both directions), recompute
 * HMAC-SHA256 (RFC 2104) over `"<t>.<body>"` and compare in constant time (crypto.timingSafeEqual).
 * @param body the raw body bytes as received, decoded as UTF-8 (not re-serialized JSON).
 * @param opts.toleranceSeconds default 300; opts.nowSeconds default the wall clock.
 * @returns `{ valid: true, timestampSeconds }` or `{ valid: false, reason }`; never throws.
 */
export function verifyWebhookSignature(
  secret: string,
  body: string,
  header: string | null | undefined,
  opts: { toleranceSeconds?: number; nowSeconds?: number } = {},
): WebhookSignatureCheck {
  const tolerance = opts.toleranceSeconds ?? DEFAULT_SIGNATURE_TOLERANCE_SECONDS;
  const now = opts.nowSeconds ?? Math.floor(Date.now() / 1000);
  if (typeof header !== 'string' || header.length > 4096) return { valid: false, reason: 'malformed' };
  let timestamp: number | null = null;
  const candidates: string[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't') {
      if (!/^\d{1,15}$/.test(value) || timestamp !== null) return { valid: false, reason: 'malformed' };
      timestamp = Number(value);
    } else if (key === 'v1') candidates.push(value);
  }
  if (timestamp === null || candidates.length === 0) return { valid: false, reason: 'malformed' };
  if (Math.abs(now - timestamp) > tolerance) return { valid: false, reason: 'timestamp_out_of_tolerance' };
  const expected = Buffer.from(hmacHex(secret, timestamp, body), 'hex');
  let match = false;
  for (const c of candidates) {
    if (!/^[0-9a-f]{64}$/i.test(c)) continue;
    const given = Buffer.from(c, 'hex');
    if (given.length === expected.length && timingSafeEqual(given, expected)) match = true;
  }
  return match ? { valid: true, timestampSeconds: timestamp } : { valid: false, reason: 'signature_mismatch' };
}

// ---------------------------------------------------------------------------------------------
// Event bodies
// ---------------------------------------------------------------------------------------------

/** `data` of `credit_alert.raised`. Amounts are decimal credit strings; instants ISO-8601 UTC. */
export interface CreditAlertEventData {
  alertId: string;
  /** Relay global id of the CreditAlert (the GraphQL API's id). */
  alertGlobalId: string;
  accountId: string;
  /** Relay global id of the Account. */
  accountGlobalId: string;
  accountExternalId: string;
  /** The Settings.alertThresholds value crossed, in percent (0..100). */
  threshold: number;
  /** percentRemaining when the alert was raised (0..100, two decimals). */
  percentRemaining: number;
  /** Available credit then (may be negative with debt), e.g. "12.5". */
  available: string;
  /** Start of the billing period the alert belongs to (one alert per threshold per period). */
  periodStart: string;
  createdAt: string;
  /** threshold === 0: the depletion notice. */
  depleted: boolean;
}

/** `data` of `auto_top_up.paused` (auto top-up turned itself off after repeated failed charges). */
export interface AutoTopUpPausedEventData {
  topUpId: string;
  accountId: string;
  accountGlobalId: string;
  accountExternalId: string;
  /** The failed charge's error that paused it (the top-up's error, which auto_top_up_settings.last_error was set to then), or null. */
  error: string | null;
  /** Failed charges in a row when it paused: always PAUSE_AFTER_FAILURES (services/auto-top-up.ts), the count that pauses. */
  consecutiveFailures: number;
  /** When auto top-up paused: the pausing top-up's finished_at (auto_top_up_settings.paused_at was set to it then). */
  pausedAt: string;
}

/** The JSON body of one webhook. `id` = `<type>:<eventId>` is stable across attempts (de-duplicate on it). */
export interface WebhookEvent {
  id: string;
  type: WebhookEventType;
  /** When the event happened (the alert's createdAt; the pause's time), ISO-8601. */
  createdAt: string;
  data: CreditAlertEventData | AutoTopUpPausedEventData;
}

const iso = (d: Date | null | undefined): string | null => (d ? new Date(d).toISOString() : null);

/**
 * Builds the event body of (eventType, eventId) from the database, from rows that do not change
 * once the event is raised (the credit alert; the pausing top-up), so every attempt sends the same body.
 * @returns the event and its account id, or null when the alert / top-up no longer exists.
 * @throws the database error.
 */
export async function buildWebhookEvent(db: pg.Pool | pg.PoolClient, eventType: WebhookEventType, eventId: string): Promise<{ event: WebhookEvent; accountId: string } | null> {
  if (eventType === 'credit_alert.raised') {
    const { rows } = await db.query(
      `SELECT c.id, c.account_id, c.threshold, c.percent_remaining, c.available_micro_credits::text AS available,
              c.period_start, c.created_at, a.external_id
         FROM credit_alerts c JOIN accounts a ON a.id = c.account_id
        WHERE c.id = $1`,
      [eventId],
    );
    const r = rows[0];
    if (!r) return null;
    const data: CreditAlertEventData = {
      alertId: r.id,
      alertGlobalId: toGlobalId('CreditAlert', r.id),
      accountId: r.account_id,
      accountGlobalId: toGlobalId('Account', r.account_id),
      accountExternalId: r.external_id,
      threshold: r.threshold,
      percentRemaining: Number(r.percent_remaining),
      available: formatCredits(BigInt(r.available)),
      periodStart: iso(r.period_start)!,
      createdAt: iso(r.created_at)!,
      depleted: r.threshold === 0,
    };
    return { accountId: r.account_id, event: { id: `${eventType}:${r.id}`, type: eventType, createdAt: data.createdAt, data } };
  }
  const { rows } = await db.query(
    `SELECT t.id, t.account_id, t.error, t.created_at, t.finished_at, a.external_id
       FROM auto_top_ups t JOIN accounts a ON a.id = t.account_id
      WHERE t.id = $1`,
    [eventId],
  );
  const r = rows[0];
  if (!r) return null;
  const data: AutoTopUpPausedEventData = {
    topUpId: r.id,
    accountId: r.account_id,
    accountGlobalId: toGlobalId('Account', r.account_id),
    accountExternalId: r.external_id,
    error: r.error ?? null,
    consecutiveFailures: PAUSE_AFTER_FAILURES,
    pausedAt: iso(r.finished_at ?? r.created_at)!,
  };
  // Only the top-up's own row, never auto_top_up_settings: a retry after the account resumed
  // auto top-up (paused_at, the failure count and last_error cleared) or paused again (a later
  // paused_at) must send the same body, describing this pause.
  const createdAt = data.pausedAt;
  return { accountId: r.account_id, event: { id: `${eventType}:${r.id}`, type: eventType, createdAt, data } };
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

/** What {@link deliverWebhook} needs: the pool, the webhook settings, optionally a logger and a wall clock (ms) for the signature timestamp. */
export interface WebhookContext {
  pool: pg.Pool;
  env: Pick<Env, 'WEBHOOK_URL' | 'WEBHOOK_SECRET' | 'WEBHOOK_TIMEOUT_MS'>;
  log?: Logger;
  /** Wall clock in ms for `t=` (default Date.now; never an account's test clock: receivers compare it with theirs). */
  nowMs?: () => number;
}

/** Outcome of {@link deliverWebhook} when it does not throw. */
export type WebhookDeliveryResult =
  /** WEBHOOK_URL unset: nothing sent, nothing logged. */
  | { status: 'SKIPPED'; skipped: true }
  /** A DELIVERED row already existed for the event: nothing sent, nothing logged. */
  | { status: 'ALREADY_DELIVERED'; skipped: false }
  /** The receiver answered 2xx; one DELIVERED row was logged. */
  | { status: 'DELIVERED'; skipped: false; responseCode: number; attempt: number };

/**
 * A failed attempt (already logged as a FAILED row unless nothing was sent). `permanent`:
 * retrying cannot help (a 4xx other than 408/425/429, the event no longer exists, or
 * WEBHOOK_SECRET is missing); the processor turns it into BullMQ's UnrecoverableError.
 */
export class WebhookDeliveryError extends Error {
  constructor(
    message: string,
    readonly permanent: boolean,
    readonly responseCode: number | null = null,
  ) {
    super(message);
    this.name = 'WebhookDeliveryError';
  }
}

/**
 * Another run's attempt of the event is in flight (its SENDING claim is younger than the claim's
 * lifetime): nothing was sent or logged. Retryable (`permanent` false); the workers put the job
 * back for {@link retryInMs} without spending an attempt (workers/start.ts), so a run that meets
 * an attempt in flight leaves the job's attempt count, and so its retry schedule and the logged
 * attempt numbers, to real POSTs.
 */
export class WebhookAttemptInFlightError extends WebhookDeliveryError {
  constructor(
    message: string,
    /** Milliseconds until the claim in flight has an outcome: the end of its POST's timeout, or once that has passed (its run stopped mid-attempt?), the end of its lifetime, when the next run may take it over; plus a second. */
    readonly retryInMs: number,
  ) {
    super(message, false);
    this.name = 'WebhookAttemptInFlightError';
  }
}

/** Advisory lock namespace of deliveries ("whk1"); the key is (namespace, hashtext(event)). */
const DELIVERY_LOCK_CLASS = 0x77686b31;

/** What {@link redactWebhookUrl} puts in place of a URL's path and query, and {@link redactWebhookUrlIn} in place of their parts. */
export const WEBHOOK_URL_ELIDED = '…';

/**
 * Parts of WEBHOOK_URL's path and query shorter than this are not searched for on their own by
 * {@link redactWebhookUrlIn} (the whole path and query always are): a token is longer, and
 * replacing every `v1` or `id` of an error text would make it unreadable.
 */
export const WEBHOOK_URL_MIN_SECRET_PART_LENGTH = 6;

/**
 * WEBHOOK_URL as the delivery log, the log lines, job errors and `npm run webhooks` show it:
 * `<scheme>://<host>[:<port>]/…` when the URL has a path other than `/` or a query, else
 * `<scheme>://<host>[:<port>]/`. User:password, path, query and fragment are left out: receivers
 * commonly take their credential in the path (Slack's `/services/T…/B…/<token>`, Zapier's
 * `/hooks/catch/<id>/<token>`) or in the query (`?token=…`), any segment may be the token (the
 * first one included), and the query's names may be too, so nothing of them is kept; the host
 * (which fetch's own errors name) says which receiver it was. Deterministic: every attempt to one
 * URL shows the same text. The delivery itself always uses the full URL from the configuration.
 * @param url the configured URL (any text).
 * @returns the redacted form, or `[redacted]` (REDACTED) when `url` does not parse.
 */
export function redactWebhookUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return REDACTED;
  }
  const bare = (u.pathname === '' || u.pathname === '/') && u.search === '';
  return `${u.protocol}//${u.host}/${bare ? '' : WEBHOOK_URL_ELIDED}`;
}

/** Both the raw and the percent-decoded form of `part` (a receiver may echo either). */
function withDecoded(part: string): string[] {
  try {
    const decoded = decodeURIComponent(part.replace(/\+/g, ' '));
    return decoded === part ? [part] : [part, decoded];
  } catch {
    return [part];
  }
}

/**
 * `text` (an attempt's error: fetch's message, or `HTTP <code>: <start of the receiver's body>`,
 * which often echoes the request's path, e.g. Express's `Cannot POST /<path>`) with WEBHOOK_URL's
 * secrets taken out: the URL itself (as configured and as normalized) becomes
 * {@link redactWebhookUrl}'s form; its path with its query, its path, its query, and each path
 * segment and query value of at least {@link WEBHOOK_URL_MIN_SECRET_PART_LENGTH} characters (raw
 * and percent-decoded) become `…` (`/…` for a path); the user:password of any URL in it becomes
 * `[redacted]` (src/logging.ts). Never throws.
 */
export function redactWebhookUrlIn(text: string, url: string): string {
  const replacements: Array<[string, string]> = [];
  let u: URL | null = null;
  try {
    u = new URL(url);
  } catch {
    u = null;
  }
  const redacted = redactWebhookUrl(url);
  for (const whole of new Set([url, u?.href ?? url])) replacements.push([whole, redacted]);
  if (u) {
    const noUserinfo = new URL(u.href);
    noUserinfo.username = '';
    noUserinfo.password = '';
    replacements.push([noUserinfo.href, redacted]);
    const path = u.pathname === '/' ? '' : u.pathname;
    for (const tail of [path + u.search, path, u.search]) for (const t of withDecoded(tail)) replacements.push([t, t.startsWith('/') ? `/${WEBHOOK_URL_ELIDED}` : WEBHOOK_URL_ELIDED]);
    const parts = [...u.pathname.split('/'), ...u.search.replace(/^\?/, '').split('&').map((kv) => (kv.includes('=') ? kv.slice(kv.indexOf('=') + 1) : kv))];
    for (const part of parts) for (const t of withDecoded(part)) if (t.length >= WEBHOOK_URL_MIN_SECRET_PART_LENGTH) replacements.push([t, WEBHOOK_URL_ELIDED]);
  }
  let out = text;
  // Longest first, so a path is replaced whole before its segments are.
  for (const [secret, by] of replacements.filter(([s]) => s.length > 0).sort((a, b) => b[0].length - a[0].length)) out = out.split(secret).join(by);
  return redactUrlCredentials(out);
}

/** How much of a refusing receiver's body an attempt's error keeps (characters, after {@link redactWebhookUrlIn}). */
const BODY_SNIPPET_CHARS = 512;

/** Reads at most `max` bytes of a response body as text, then cancels the rest. Never throws. */
async function bodySnippet(res: Response, max = 512): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < max) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    // a timeout or reset while reading: keep what arrived
  } finally {
    reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(chunks).subarray(0, max).toString('utf8');
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return `timeout after ${timeoutMs} ms`;
  const cause = e?.cause?.code ?? e?.cause?.message;
  return cause ? `${e?.message ?? 'fetch failed'}: ${cause}` : (e?.message ?? String(err));
}

/** An attempt's SENDING claim's lifetime for a POST timeout of `timeoutMs`: timeoutMs + {@link WEBHOOK_CLAIM_MARGIN_MS} (an older claim's run stopped mid-attempt). */
export function webhookClaimMs(timeoutMs: number): number {
  return timeoutMs + WEBHOOK_CLAIM_MARGIN_MS;
}

/**
 * How long an attempt's SENDING claim keeps other runs of its event from sending, beyond
 * WEBHOOK_TIMEOUT_MS (the POST's own bound): room for recording the outcome on a slow database.
 * A claim older than WEBHOOK_TIMEOUT_MS + this belongs to a run that stopped mid-attempt (a crash,
 * a killed worker): the next run records it FAILED and sends.
 */
export const WEBHOOK_CLAIM_MARGIN_MS = 60_000;

/** What the claim transaction of {@link deliverWebhook} decided. */
type Claim =
  | { kind: 'delivered' }
  /** `ageMs`: how long ago the claim in flight was made. */
  | { kind: 'in_flight'; ageMs: number }
  | { kind: 'gone' }
  /** No attempt of the event is logged, yet the job was made before the log was pruned (see deliverWebhook's jobCreatedAt). */
  | { kind: 'pruned'; prunedBefore: Date }
  | { kind: 'claimed'; rowId: string; event: WebhookEvent; accountId: string };

/**
 * Step 1 of a delivery, one short transaction under a transaction-scoped advisory lock on the
 * event (so two runs decide one after the other): a DELIVERED row ends it; a SENDING row older
 * than the claim's lifetime is recorded FAILED (its run stopped mid-attempt); a younger one is
 * another run's attempt in flight; else the body is built and this attempt is logged SENDING.
 */
async function claimAttempt(pool: pg.Pool, payload: WebhookJobData, attempt: number, url: string, claimMs: number, jobCreatedAt: Date | null): Promise<Claim> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [DELIVERY_LOCK_CLASS, `${payload.eventType}:${payload.eventId}`]);
    const { rows } = await client.query(
      `SELECT id, status, created_at < now() - $3::interval AS stale,
              greatest(0, extract(epoch FROM now() - created_at) * 1000)::float8 AS age_ms
         FROM webhook_deliveries
        WHERE event_id = $1 AND event_type = $2 AND status IN ('DELIVERED', 'SENDING')`,
      [payload.eventId, payload.eventType, `${claimMs} milliseconds`],
    );
    let claim: Claim | null = null;
    if (rows.some((r) => r.status === 'DELIVERED')) claim = { kind: 'delivered' };
    else if (rows.some((r) => !r.stale)) claim = { kind: 'in_flight', ageMs: Math.min(...rows.filter((r) => !r.stale).map((r) => Number(r.age_ms))) };
    for (const r of rows.filter((x) => x.status === 'SENDING' && x.stale)) {
      // COALESCE: see SENDING_BY_ID below.
      await client.query(`UPDATE webhook_deliveries SET status = 'FAILED', error = $2 WHERE id = $1 AND ${SENDING_BY_ID}`, [
        r.id,
        'no outcome recorded: the worker stopped during the attempt',
      ]);
    }
    if (!claim && jobCreatedAt) {
      // A job made before the log's latest prune cutoff whose event has no attempt logged: its
      // attempts, a DELIVERED one among them perhaps, were pruned (services/webhook-retention.ts).
      const pruned = await client.query(
        `SELECT r.pruned_before FROM webhook_log_retention r
          WHERE r.id AND r.pruned_before > $3::timestamptz
            AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = $1 AND d.event_type = $2)`,
        [payload.eventId, payload.eventType, jobCreatedAt],
      );
      if (pruned.rows[0]) claim = { kind: 'pruned', prunedBefore: pruned.rows[0].pruned_before };
    }
    if (!claim) {
      const built = await buildWebhookEvent(client, payload.eventType, payload.eventId);
      if (!built) claim = { kind: 'gone' };
      else {
        const inserted = await client.query(
          `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status)
           VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, 'SENDING') RETURNING id`,
          [payload.eventType, payload.eventId, built.accountId, redactWebhookUrl(url), attempt],
        );
        claim = { kind: 'claimed', rowId: inserted.rows[0].id, event: built.event, accountId: built.accountId };
      }
    }
    await client.query('COMMIT');
    return claim;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true;
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/** Step 2: one signed POST to the full `url` (timeout, no redirects followed). Never throws: the outcome is the status or the error, with the URL's secrets taken out ({@link redactWebhookUrlIn}). */
async function postEvent(url: string, secret: string, event: WebhookEvent, attempt: number, timestampSeconds: number, timeoutMs: number): Promise<{ responseCode: number | null; error: string | null }> {
  const body = JSON.stringify(event);
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'user-agent': 'creditpool-webhooks',
        'creditpool-event-id': event.id,
        'creditpool-event-type': event.type,
        'creditpool-delivery-attempt': String(attempt),
        'creditpool-signature': signWebhook(secret, body, timestampSeconds),
      },
      body,
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (res.status >= 200 && res.status <= 299) {
      res.body?.cancel().catch(() => undefined);
      return { responseCode: res.status, error: null };
    }
    // Read past the kept length by more than the URL could take, and redact before cutting: a
    // cut through an echoed path would keep the start of its token out of the redaction's reach.
    const snippet = redactWebhookUrlIn(await bodySnippet(res, BODY_SNIPPET_CHARS + 4 * url.length), url).slice(0, BODY_SNIPPET_CHARS).trim();
    return { responseCode: res.status, error: `HTTP ${res.status}${snippet ? `: ${snippet}` : ''}` };
  } catch (err) {
    // fetch names the URL whole in some of its messages (one with user:password, one it cannot
    // parse): the outcome is stored in the delivery log, logged and thrown (BullMQ keeps it), so
    // never with the URL's secrets.
    return { responseCode: null, error: redactWebhookUrlIn(describeFetchError(err, timeoutMs), url) };
  }
}

/**
 * Delivers one event to WEBHOOK_URL, once per call at most, and logs the attempt.
 *
 * - WEBHOOK_URL unset: returns `{ status: 'SKIPPED', skipped: true }`; nothing is sent or logged
 *   (the sweep may offer the job again later; it is skipped again).
 * - Three steps, and no database connection is held while the receiver answers (a slow one
 *   would otherwise hold a connection of the workers' pool for up to WEBHOOK_TIMEOUT_MS per job):
 *   1. one short transaction under a per-event advisory lock: if a DELIVERED row exists, returns
 *      ALREADY_DELIVERED without sending; if another run's attempt is in flight (a SENDING row
 *      younger than WEBHOOK_TIMEOUT_MS + {@link WEBHOOK_CLAIM_MARGIN_MS}), throws
 *      {@link WebhookAttemptInFlightError} (retryable) without sending or logging (the workers
 *      put the job back without spending an attempt; its next run finds the outcome);
 *      else builds the body from the database and logs this attempt as SENDING (the claim; a
 *      partial unique index allows one per event), with the URL as {@link redactWebhookUrl} shows it. An older SENDING row (its run stopped
 *      mid-attempt) is recorded FAILED first.
 *   2. the POST, signed ({@link signWebhook}, timestamp = now), with a timeout of
 *      WEBHOOK_TIMEOUT_MS (AbortSignal.timeout), without following redirects.
 *   3. one UPDATE of the attempt's row: DELIVERED on 2xx, else FAILED with the response code and
 *      the start of the response body, or the network/timeout error, the URL's secrets taken out
 *      ({@link redactWebhookUrlIn}; so in the log line and the thrown error too). Only while the row is still
 *      SENDING: one another run already recorded FAILED as stale stays so, and a 2xx is then
 *      logged DELIVERED in a row of its own.
 * - `opts.jobCreatedAt` (the BullMQ job's creation time): when it is before the delivery log's
 *   latest prune cutoff (webhook_log_retention, services/webhook-retention.ts) and no attempt of
 *   the event is logged, the event's attempts were pruned after this job made them (a job older
 *   than WEBHOOK_LOG_RETENTION_DAYS: workers stopped that long): nothing is sent (permanent
 *   WebhookDeliveryError), since a DELIVERED attempt may have been among them.
 * - Delivery stays at-least-once towards the receiver (a crash between its 2xx and step 3 sends
 *   again once the claim is stale); receivers de-duplicate on `creditpool-event-id`.
 * @param attempt 1-based attempt number logged in the row (the job's attemptsMade + 1).
 * @throws WebhookDeliveryError after logging a FAILED attempt (`permanent` as in the module
 *   comment); without logging when the event no longer exists, its log was pruned after the job
 *   was made, or WEBHOOK_SECRET is unset (all permanent) or another attempt of the event is in flight (WebhookAttemptInFlightError,
 *   retryable); the database error
 *   otherwise (retried; a failure in step 3 leaves the row SENDING until its claim is stale).
 */
export async function deliverWebhook(ctx: WebhookContext, payload: WebhookJobData, attempt: number, opts: { jobCreatedAt?: Date } = {}): Promise<WebhookDeliveryResult> {
  const { env, log } = ctx;
  const url = env.WEBHOOK_URL;
  if (!url) return { status: 'SKIPPED', skipped: true };
  const secret = env.WEBHOOK_SECRET;
  if (!secret) throw new WebhookDeliveryError('WEBHOOK_SECRET is required to deliver webhooks when WEBHOOK_URL is set', true);
  const claimMs = webhookClaimMs(env.WEBHOOK_TIMEOUT_MS);
  const claim = await claimAttempt(ctx.pool, payload, attempt, url, claimMs, opts.jobCreatedAt ?? null);
  if (claim.kind === 'delivered') return { status: 'ALREADY_DELIVERED', skipped: false };
  if (claim.kind === 'gone') throw new WebhookDeliveryError(`${payload.eventType} ${payload.eventId} not found`, true);
  if (claim.kind === 'pruned') {
    throw new WebhookDeliveryError(
      `${payload.eventType}:${payload.eventId}: its delivery log was pruned (attempts before ${claim.prunedBefore.toISOString()}, WEBHOOK_LOG_RETENTION_DAYS) after this job was made; whether it was delivered is unknown, so it is not sent again`,
      true,
    );
  }
  if (claim.kind === 'in_flight') {
    const until = claim.ageMs < env.WEBHOOK_TIMEOUT_MS ? env.WEBHOOK_TIMEOUT_MS : claimMs;
    throw new WebhookAttemptInFlightError(`${payload.eventType}:${payload.eventId}: another attempt is in flight`, Math.ceil(until - claim.ageMs) + 1_000);
  }
  const { event } = claim;
  const t = Math.floor((ctx.nowMs ?? Date.now)() / 1000);
  const { responseCode, error } = await postEvent(url, secret, event, attempt, t, env.WEBHOOK_TIMEOUT_MS);
  const delivered = error === null;
  // The outcome goes on the claim while it is still SENDING. Recorded later than the claim's
  // lifetime (a stalled database), another run may have logged the claim FAILED already and may
  // send again: that row stays, and a 2xx is logged as a row of its own (it did reach the
  // receiver, so nothing is sent after it); a failure then adds nothing to the takeover's row.
  await ctx.pool.query(
    `WITH outcome AS (
       UPDATE webhook_deliveries SET status = $2, response_code = $3, error = $4 WHERE id = $1 AND ${SENDING_BY_ID} RETURNING id
     )
     INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code)
     SELECT gen_random_uuid(), d.event_type, d.event_id, d.account_id, d.url, d.attempt, 'DELIVERED', $3
       FROM webhook_deliveries d
      WHERE d.id = $1 AND $2 = 'DELIVERED' AND NOT EXISTS (SELECT 1 FROM outcome)`,
    [claim.rowId, delivered ? 'DELIVERED' : 'FAILED', responseCode, error?.slice(0, 1000) ?? null],
  );
  if (delivered) {
    log?.info({ event: event.id, attempt, status: responseCode }, 'webhook delivered');
    return { status: 'DELIVERED', skipped: false, responseCode: responseCode!, attempt };
  }
  const permanent = responseCode !== null && isPermanentStatus(responseCode);
  log?.warn({ event: event.id, attempt, status: responseCode, error, permanent }, 'webhook delivery failed');
  throw new WebhookDeliveryError(`webhook ${event.id} attempt ${attempt} failed: ${error}`, permanent, responseCode);
}

// ---------------------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------------------

/**
 * The deliver-webhook jobs that should exist but may have been lost (e.g. Redis flushed): the
 * sweep re-adds them (same jobId, so an existing job, even a finished one BullMQ still keeps, is
 * not duplicated). Returns, oldest first, at most {@link WEBHOOK_SWEEP_LIMIT} jobs for
 * - credit alerts created between 24 h and 1 minute before `now` (read through their `created_at`
 *   index, migration credit_alerts_created_at: alerts are never pruned, so not the whole table),
 * - auto top-up pauses (auto_top_up_settings.paused_at) in that window; the event id is the
 *   account's latest FAILED top-up created at or before the pause (the one whose failure paused
 *   it), or SUCCEEDED when a late success of its charge revived it after the pause; only when
 *   that top-up paused it (its finished_at is the pause's time and it kept its error): a pause by
 *   a refund or dispute of a charge (services/charge-reversal.ts) sends no `auto_top_up.paused`,
 *   whose body ("paused after 3 failed charges") would describe the account's last top-up,
 * with no DELIVERED row, no permanent failure logged (a 4xx other than 408/425/429), and fewer
 * than {@link WEBHOOK_MAX_LOGGED_ATTEMPTS} attempts logged. It does not know the configuration:
 * with WEBHOOK_URL unset it still returns them (each such job completes as SKIPPED without
 * logging, so they keep being offered until they leave the 24 h window).
 * Cost: the alerts created in the window (credit_alerts_created_at) and the settings paused in
 * it (partial index auto_top_up_settings_paused_at, migration auto_top_up_paused_at), each with
 * its delivery log; not every account with auto top-up.
 * @param now the sweep's clock (alerts are stamped with the account's clock).
 * @returns OutboxJob payloads identical to the ones the outbox wrote (see {@link webhookJob}).
 * @throws the database error.
 */
export async function findUndeliveredWebhookJobs(pool: pg.Pool, now: Date): Promise<OutboxJob[]> {
  const params = [now, `${WEBHOOK_SWEEP_MIN_AGE_MS} milliseconds`, `${WEBHOOK_SWEEP_MAX_AGE_MS} milliseconds`, RETRYABLE_4XX, WEBHOOK_MAX_LOGGED_ATTEMPTS, WEBHOOK_SWEEP_LIMIT];
  const settled = (eventType: string, eventIdSql: string) => `
    NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                 WHERE d.event_id = ${eventIdSql} AND d.event_type = '${eventType}'
                   AND (d.status = 'DELIVERED' OR (d.response_code BETWEEN 400 AND 499 AND NOT d.response_code = ANY($4::int[]))))
    AND (SELECT count(*) FROM webhook_deliveries d WHERE d.event_id = ${eventIdSql} AND d.event_type = '${eventType}') < $5`;
  const alerts = await pool.query(
    `SELECT c.id, c.account_id FROM credit_alerts c
      WHERE c.created_at < $1::timestamptz - $2::interval AND c.created_at >= $1::timestamptz - $3::interval
        AND ${settled('credit_alert.raised', 'c.id::text')}
      ORDER BY c.created_at, c.id LIMIT $6`,
    params,
  );
  const paused = await pool.query(
    `SELECT t.id, t.account_id FROM auto_top_up_settings s
       JOIN LATERAL (SELECT x.id, x.account_id, x.finished_at, x.error FROM auto_top_ups x
                      WHERE x.account_id = s.account_id AND x.status IN ('FAILED', 'SUCCEEDED') AND x.created_at <= s.paused_at
                      ORDER BY x.created_at DESC, x.id DESC LIMIT 1) t ON true
      WHERE s.paused_at IS NOT NULL AND t.finished_at = s.paused_at AND t.error IS NOT NULL
        AND s.paused_at < $1::timestamptz - $2::interval AND s.paused_at >= $1::timestamptz - $3::interval
        AND ${settled('auto_top_up.paused', 't.id::text')}
      ORDER BY s.paused_at, t.id LIMIT $6`,
    params,
  );
  return [
    ...alerts.rows.map((r) => webhookJob({ eventType: 'credit_alert.raised', eventId: r.id, accountId: r.account_id })),
    ...paused.rows.map((r) => webhookJob({ eventType: 'auto_top_up.paused', eventId: r.id, accountId: r.account_id })),
  ].slice(0, WEBHOOK_SWEEP_LIMIT);
}
