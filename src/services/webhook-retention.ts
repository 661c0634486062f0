/**
 * Retention of the webhook delivery log (webhook_deliveries: one row per attempt, src/services/webhooks.ts).
 * The `prune-webhook-log` maintenance job (workers/start.ts) calls {@link pruneWebhookLog}, which
 * deletes events whole (every attempt of one event in the same statement, never some of them)
 * once nothing can read them as "not delivered yet" any more.
 *
 * Who reads the log, and why an event whose attempts are gone stays correct for each
 * (WEBHOOK_LOG_RETENTION_DAYS is 0 or at least MIN_WEBHOOK_LOG_RETENTION_DAYS, 7 days; the
 * cutoff C is now - that many days):
 * - the delivery itself (claimAttempt: a DELIVERED row means never send again; a SENDING row is a
 *   claim in flight): only events whose newest attempt is older than C are pruned. A delivery
 *   job runs only within its retries (17 attempts, the longest gap 2^15 s ≈ 9.1 h, all of them
 *   within about 18 h of the first) and a claim lives WEBHOOK_TIMEOUT_MS + 60 s, so no job of a
 *   pruned event is still waiting to run, and none is in flight. Beyond that timing argument
 *   (workers stopped for longer than the retention), a delivery job made before
 *   {@link readWebhookLogPrunedBefore} finding no attempt of its event sends nothing
 *   (deliverWebhook's `jobCreatedAt`).
 * - the sweep (findUndeliveredWebhookJobs) re-adds events raised in the last 24 h without a
 *   DELIVERED row: only events raised before C are pruned (the credit alert's created_at; for
 *   `auto_top_up.paused`, the top-up's finished_at and the account's current paused_at), so a
 *   pruned event is never in the sweep's window again. This is checked on the event's own time,
 *   not only its attempts': an account on a test clock ahead of the wall clock stamps its alerts
 *   in the future, and they would enter the sweep's window long after their delivery.
 * - `npm run webhooks -- failed | redeliver` (services/webhook-redelivery.ts): a pruned event is
 *   not listed; redelivering one is refused (LOG_PRUNED) because whether it was delivered can no
 *   longer be known: every batch records C in webhook_log_retention.pruned_before, in the same
 *   statement as its deletes.
 * - /metrics counts events with an attempt in the last 7 days: the minimum retention.
 *
 * Batches: each statement reads at most `batchRows` attempts older than C, oldest first (through
 * webhook_deliveries_created_at_idx), keyset-paged on (created_at, id) so events kept (a recent
 * attempt, a recent event) are passed over, not read again, and deletes the events among them
 * that may go with all their attempts: about batchRows rows per statement (plus, at most, the rest
 * of the attempts of the events the page's end cuts through), each its own short transaction.
 * When nothing is due it is one index range scan that finds nothing.
 */
import type pg from 'pg';
import { MIN_WEBHOOK_LOG_RETENTION_DAYS } from '../config/env.js';
import { UUID_PATTERN } from '../db/uuid.js';

/** Default most attempts one prune statement reads (and about as many it deletes). */
export const WEBHOOK_LOG_PRUNE_BATCH_ROWS = 5_000;

/** Largest `batchRows` accepted. */
export const WEBHOOK_LOG_PRUNE_MAX_BATCH_ROWS = 50_000;

/** Every how many milliseconds the workers schedule `prune-webhook-log` (hourly: the log ages in days). */
export const WEBHOOK_LOG_PRUNE_EVERY_MS = 60 * 60_000;

/** Options of {@link pruneWebhookLog}. */
export interface PruneWebhookLogOptions {
  /** WEBHOOK_LOG_RETENTION_DAYS: 0 keeps everything (nothing is read or deleted); else at least MIN_WEBHOOK_LOG_RETENTION_DAYS. */
  retentionDays: number;
  /** Most attempts one statement reads (default {@link WEBHOOK_LOG_PRUNE_BATCH_ROWS}; 1..{@link WEBHOOK_LOG_PRUNE_MAX_BATCH_ROWS}). */
  batchRows?: number;
}

/** What one {@link pruneWebhookLog} run did. */
export interface WebhookLogPrune {
  /** now() - retentionDays (the database's clock); null when retentionDays is 0. */
  cutoff: Date | null;
  /** Statements run (each one transaction). */
  batches: number;
  /** Events whose attempts were deleted. */
  events: number;
  /** Attempts (rows) deleted. */
  rows: number;
  /** Most rows one statement deleted. */
  largestBatchRows: number;
}


/**
 * One batch: $1 cutoff, $2/$3 the keyset cursor (created_at, id) of the last attempt read
 * ({@link BEFORE_FIRST_ATTEMPT} first), $4 batchRows, $5 UUID_PATTERN (db/uuid.ts, matched with ~*).
 * Returns what it read, deleted and where it stopped. The cursor is always given, never `$2 IS NULL
 * OR ...`: under the workers' generic plans (plan_cache_mode=force_generic_plan) that made the
 * cursor a filter, not a bound of the index range, so every batch read again from the oldest
 * attempt everything its predecessors had passed over (and the index entries of what they deleted).
 */
/** The keyset cursor before every attempt: no attempt was made at -infinity. */
const BEFORE_FIRST_ATTEMPT: [string, string] = ['-infinity', '00000000-0000-0000-0000-000000000000'];

const PRUNE_BATCH_SQL = `
WITH page AS (
  SELECT id, created_at, event_type, event_id, account_id
    FROM webhook_deliveries
   WHERE created_at < $1::timestamptz
     AND (created_at, id) > ($2::timestamptz, $3::uuid)
   ORDER BY created_at, id
   LIMIT $4
), ev AS (
  SELECT DISTINCT p.event_type, p.event_id
    FROM page p
   WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries n
                      WHERE n.event_id = p.event_id AND n.event_type = p.event_type AND n.created_at >= $1::timestamptz)
     AND CASE p.event_type
           WHEN 'credit_alert.raised' THEN
             NOT EXISTS (SELECT 1 FROM credit_alerts c
                          WHERE c.id = CASE WHEN p.event_id ~* $5 THEN p.event_id::uuid END AND c.created_at >= $1::timestamptz)
           WHEN 'auto_top_up.paused' THEN
             NOT EXISTS (SELECT 1 FROM auto_top_ups t
                          WHERE t.id = CASE WHEN p.event_id ~* $5 THEN p.event_id::uuid END
                            AND coalesce(t.finished_at, t.created_at) >= $1::timestamptz)
             AND NOT EXISTS (SELECT 1 FROM auto_top_up_settings s WHERE s.account_id = p.account_id AND s.paused_at >= $1::timestamptz)
           ELSE true
         END
), mark AS (
  INSERT INTO webhook_log_retention (id, pruned_before)
  SELECT true, $1::timestamptz WHERE EXISTS (SELECT 1 FROM ev)
  ON CONFLICT (id) DO UPDATE SET pruned_before = greatest(webhook_log_retention.pruned_before, EXCLUDED.pruned_before)
  RETURNING 1
), gone AS (
  DELETE FROM webhook_deliveries d USING ev
   WHERE d.event_id = ev.event_id AND d.event_type = ev.event_type
  RETURNING 1
)
SELECT (SELECT count(*) FROM page)::int AS scanned,
       (SELECT count(*) FROM ev)::int AS events,
       (SELECT count(*) FROM gone)::int AS deleted,
       (SELECT count(*) FROM mark)::int AS marked,
       last.created_at AS last_at, last.id AS last_id
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT created_at, id FROM page ORDER BY created_at DESC, id DESC LIMIT 1) last ON true`;

/**
 * Deletes, in batches, the attempts of the webhook events raised and last attempted more than
 * `retentionDays` days ago (see the module comment for why each reader stays correct), and
 * records the cutoff in webhook_log_retention. Idempotent: a second run finds nothing; two runs
 * at once delete each row once. Meant for the `prune-webhook-log` maintenance job.
 * @param opts.retentionDays WEBHOOK_LOG_RETENTION_DAYS (0: returns at once, nothing read).
 * @param opts.batchRows most attempts read per statement (default 5,000).
 * @returns counts of what was done (batches, events, rows, the largest batch's rows).
 * @throws RangeError when retentionDays is neither 0 nor an integer of at least
 *   MIN_WEBHOOK_LOG_RETENTION_DAYS, or batchRows is out of range; the database error otherwise
 *   (batches already committed stay done; the next run goes on).
 */
export async function pruneWebhookLog(pool: pg.Pool, opts: PruneWebhookLogOptions): Promise<WebhookLogPrune> {
  const { retentionDays } = opts;
  const batchRows = opts.batchRows ?? WEBHOOK_LOG_PRUNE_BATCH_ROWS;
  if (!Number.isSafeInteger(retentionDays) || (retentionDays !== 0 && retentionDays < MIN_WEBHOOK_LOG_RETENTION_DAYS)) {
    throw new RangeError(`retentionDays must be 0 or an integer of at least ${MIN_WEBHOOK_LOG_RETENTION_DAYS}, got ${retentionDays}`);
  }
  if (!Number.isSafeInteger(batchRows) || batchRows < 1 || batchRows > WEBHOOK_LOG_PRUNE_MAX_BATCH_ROWS) {
    throw new RangeError(`batchRows must be an integer from 1 to ${WEBHOOK_LOG_PRUNE_MAX_BATCH_ROWS}, got ${batchRows}`);
  }
  const result: WebhookLogPrune = { cutoff: null, batches: 0, events: 0, rows: 0, largestBatchRows: 0 };
  if (retentionDays === 0) return result;
  const { rows } = await pool.query('SELECT now() - make_interval(days => $1) AS cutoff', [retentionDays]);
  const cutoff: Date = rows[0].cutoff;
  result.cutoff = cutoff;
  let [afterAt, afterId]: [Date | string, string] = BEFORE_FIRST_ATTEMPT;
  for (;;) {
    const batch: pg.QueryResult<{ scanned: number; events: number; deleted: number; last_at: Date | null; last_id: string | null }> = await pool.query(PRUNE_BATCH_SQL, [cutoff, afterAt, afterId, batchRows, UUID_PATTERN]);
    const r = batch.rows[0]!;
    result.batches += 1;
    result.events += r.events;
    result.rows += r.deleted;
    result.largestBatchRows = Math.max(result.largestBatchRows, r.deleted);
    if (r.scanned < batchRows) return result;
    afterAt = r.last_at!;
    afterId = r.last_id!;
  }
}

/**
 * The latest cutoff {@link pruneWebhookLog} applied (webhook_log_retention.pruned_before), or null
 * when the log was never pruned: an event raised before it without a logged attempt may have been
 * delivered and pruned.
 * @throws the database error.
 */
export async function readWebhookLogPrunedBefore(db: pg.Pool | pg.PoolClient): Promise<Date | null> {
  const { rows } = await db.query('SELECT pruned_before FROM webhook_log_retention WHERE id');
  return rows[0]?.pruned_before ?? null;
}
