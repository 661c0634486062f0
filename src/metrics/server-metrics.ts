/**
 * The Prometheus metrics of one API server instance (GET /metrics, src/server.ts): one private
 * prom-client Registry per instance, never prom-client's global one (a test process runs several
 * servers; each must count its own).
 *
 * What it holds (README "Metrics" lists each with what to alert on):
 * - prom-client's default process metrics (collectDefaultMetrics: CPU, RSS, heap, event-loop lag,
 *   GC, handles);
 * - `creditpool_usage_events_total{outcome}`, counted by the resolvers (usage-outcomes.ts);
 * - this instance's live and group-commit counters (what /readyz reports as JSON), read when
 *   scraped;
 * - backlogs read from PostgreSQL and Redis when scraped ({@link ServerMetrics.render}): the
 *   outbox, the BullMQ queues, the webhook events not delivered, and the refunds and disputes of
 *   payments (with the kept early reversals). Each source ("collector")
 *   runs with a timeout of {@link METRICS_COLLECT_TIMEOUT_MS}; one that fails or is late leaves its
 *   gauges out of that scrape (no stale or made-up value) and sets
 *   `creditpool_metrics_collector_up{collector}` to 0, and the scrape still answers.
 * No metric carries tenant data (account ids, external ids, keys): every label value is from a
 * fixed set.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { Queue } from 'bullmq';
import type pg from 'pg';
import type { Redis } from 'ioredis';
import { answerWithin } from '../db/redis-close.js';
import { LEDGER_JOBS_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_DELIVERY_QUEUE } from '../queues/names.js';
import { RETRYABLE_4XX, WEBHOOK_MAX_LOGGED_ATTEMPTS } from '../services/webhooks.js';
import type { GroupCommitStats } from '../services/group-commit.js';
import type { LiveHubStats } from '../live/hub.js';
import type { RateLimitStats } from '../graphql/rate-limit.js';
import { registerUsageOutcomes, type UsageOutcomeCounter } from './usage-outcomes.js';

/** Longest one collector (a PostgreSQL statement, the queue counts) may take in a scrape, in milliseconds. */
export const METRICS_COLLECT_TIMEOUT_MS = 2_000;

/**
 * Most outbox rows counted: a larger backlog reads as this many (counting is a scan of the rows,
 * and a backlog this large already means the relay is not publishing).
 */
export const OUTBOX_ROWS_COUNTED = 100_000;

/** Rows, in id order (the relay's order), among which the oldest outbox row is looked for. */
export const OUTBOX_OLDEST_AMONG = 1_000;

/**
 * How far back the webhook gauges look, in seconds (7 days): events with a delivery attempt since
 * then. A delivery's retries span about 18 hours (LEDGER_JOB_OPTIONS['deliver-webhook']) and the
 * sweep re-adds it for 24 hours (services/webhooks.ts), so an event that failed for good stays
 * counted for about a week, then drops out: the delivery log is not read whole (it keeps
 * WEBHOOK_LOG_RETENTION_DAYS, at least this window: config/env.ts MIN_WEBHOOK_LOG_RETENTION_DAYS).
 */
export const WEBHOOK_METRICS_WINDOW_SECONDS = 7 * 24 * 3600;

/**
 * How far back the payment reversal gauges look, in seconds (7 days, as the webhook gauges): the
 * refunds, disputes and won disputes applied since then, by the payment row's own times
 * (refunded_at, disputed_at, reversed_at, dispute_won_at).
 */
export const PAYMENT_REVERSAL_METRICS_WINDOW_SECONDS = 7 * 24 * 3600;

/** The queues whose job counts are exported (src/queues/names.ts). */
export const METRICS_QUEUES = [MAINTENANCE_QUEUE, LEDGER_JOBS_QUEUE, WEBHOOK_DELIVERY_QUEUE] as const;

/** The BullMQ job states exported per queue. */
export const METRICS_QUEUE_STATES = ['waiting', 'active', 'delayed', 'failed'] as const;

/** The scrape-time collectors (values of the `collector` label). */
export const METRICS_COLLECTORS = ['outbox', 'webhooks', 'queues', 'payments'] as const;

/** One scrape-time collector. */
export type MetricsCollector = (typeof METRICS_COLLECTORS)[number];

/** What the live counters of /readyz report: the hub's, open WebSockets, and the relay's. */
export interface LiveCounters extends LiveHubStats {
  webSockets: number;
  outboxPublished: number;
  outboxDrains: number;
}

/** Where the metrics read from. */
export interface ServerMetricsSources {
  /** The ledger pool: the outbox and webhook statements run on it (one connection, a few ms per scrape). */
  pool: pg.Pool;
  /**
   * A Redis connection for the queue counts, failing fast while Redis is away
   * (`enableOfflineQueue: false`); owned by the caller (not closed here).
   */
  queueRedis: Redis;
  /** BullMQ key prefix (QUEUE_PREFIX). */
  queuePrefix: string;
  /** This instance's live counters, read when scraped. */
  live(): LiveCounters;
  /** The group committer's counters (null with CHARGE_PATH=naive). */
  groupCommit(): GroupCommitStats | null;
  /** The per-credential rate limit's counters (src/graphql/rate-limit.ts). */
  rateLimit(): RateLimitStats;
}

/** The metrics of one server (see the module comment). */
export interface ServerMetrics {
  /** The private registry. */
  registry: Registry;
  /** Where the resolvers count charge outcomes. */
  usageOutcomes: UsageOutcomeCounter;
  /** Content type of {@link render}'s text (Prometheus text format 0.0.4). */
  contentType: string;
  /**
   * Runs the scrape-time collectors (concurrent scrapes share one run) and returns every metric
   * in Prometheus text format. Never rejects for a collector's failure (see the module comment).
   */
  render(): Promise<string>;
  /** Closes the queue handles (not the Redis connection). */
  close(): Promise<void>;
}

/** A counter whose value is read from `read` at every scrape (a monotonic count kept elsewhere). */
function readCounter(registry: Registry, name: string, help: string, read: () => number | null): void {
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const value = read();
      this.reset();
      if (value === null) this.remove();
      else this.inc(value);
    },
  });
}

/** A gauge whose value is read from `read` at every scrape. */
function readGauge(registry: Registry, name: string, help: string, read: () => number | null): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      const value = read();
      if (value === null) this.remove();
      else this.set(value);
    },
  });
}

/** Removes every series of `gauge` (a labelled gauge's all; an unlabelled gauge's one), so the scrape leaves it out. */
function clear(gauge: Gauge): void {
  gauge.reset();
  if ((gauge as unknown as { labelNames: string[] }).labelNames.length === 0) gauge.remove();
}

/** Outbox statement: rows (counted up to OUTBOX_ROWS_COUNTED) and the age of the oldest of the next OUTBOX_OLDEST_AMONG, by the server's clock. */
const OUTBOX_SQL = `SET LOCAL statement_timeout = ${METRICS_COLLECT_TIMEOUT_MS};
SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox_events LIMIT ${OUTBOX_ROWS_COUNTED}) r)::int AS rows,
       (SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM (SELECT created_at FROM outbox_events ORDER BY id LIMIT ${OUTBOX_OLDEST_AMONG}) h)::float8 AS oldest_age_seconds`;

/**
 * Webhook statement: the events with a delivery attempt in the window, none DELIVERED (every
 * logged attempt FAILED), and how many of those nothing retries any more, judged by the last
 * attempt (newest created_at, then highest attempt number), as `npm run webhooks -- failed` does
 * (services/webhook-redelivery.ts listFailedWebhooks: `permanent`, `exhausted`): it was refused
 * with a permanent 4xx (other than 408/425/429: services/webhooks.ts isPermanentStatus) or it was
 * its job's WEBHOOK_MAX_LOGGED_ATTEMPTS-th attempt. Not the whole log's: an event redelivered
 * after such an end has a new job (attempt numbers from 1) that is retrying it.
 * Reads the window's attempts through webhook_deliveries_created_at_idx.
 */
const WEBHOOK_SQL = `SET LOCAL statement_timeout = ${METRICS_COLLECT_TIMEOUT_MS};
SELECT count(*)::int AS undelivered, count(*) FILTER (WHERE final)::int AS failed_final
  FROM (SELECT (array_agg(attempt ORDER BY created_at DESC, attempt DESC))[1] >= ${WEBHOOK_MAX_LOGGED_ATTEMPTS}
               OR coalesce((array_agg(response_code BETWEEN 400 AND 499 AND response_code <> ALL ('{${RETRYABLE_4XX.join(',')}}'::int[])
                                      ORDER BY created_at DESC, attempt DESC))[1], false) AS final
          FROM webhook_deliveries
         WHERE created_at >= now() - interval '${WEBHOOK_METRICS_WINDOW_SECONDS} seconds'
         GROUP BY event_type, event_id
        HAVING bool_and(status = 'FAILED')) e`;

/** The start of the payment reversal window, by PostgreSQL's clock (now() is the statement's start: one instant). */
const REVERSAL_SINCE = `now() - interval '${PAYMENT_REVERSAL_METRICS_WINDOW_SECONDS} seconds'`;

/**
 * Payment reversal statement (services/payment-reversals.ts writes these columns; README
 * "Refunds and disputes of a payment"): over the window, the payments whose refunded amount grew
 * (by whether it is now the full amount: refunded_cents = amount_usd * 100, the rule of CHECK
 * payments_reversed_why), disputed, whose dispute was won, the micro-credits the reversals took
 * back (reversed_micro_credits of full refunds and disputes, by reversed_at, plus the partial
 * refunds' refund_taken_micro_credits of payments refunded in the window) and the won disputes
 * gave back (their give-back grant's amount); the failed (or canceled) refunds received in the
 * window (payment_refund_failures, by received_at: applied, and recorded only) and the
 * micro-credits they gave back (restored_micro_credits);
 * and every kept early reversal (early_payment_reversals: refunds and disputes of a charge no
 * payment was settled SUCCEEDED with yet; pruned 30 days after received).
 * The payments are read as they are now: a failed refund lowered refunded_cents (refunded_at
 * cleared at 0), cleared reversed_at and lowered refund_taken_micro_credits
 * (services/refund-failures.ts), so a payment refunded in full whose refund failed counts by what
 * stays refunded (not at all, or as partial), and what its refund took is no longer in the
 * taken-back sum; what came back is in the failed-refund sum instead.
 * Live accounts only: a test-mode account's times are its test clock's (AccountTx.now), which a
 * window on PostgreSQL's clock does not fit, and it moves no real money.
 * Reads only the payments ever refunded or disputed with an event in the window, through the
 * partial index payments_reversal_activity (migration 20261214100000_payment_reversal_metrics;
 * the expression and predicate below are the index's), never the whole payments table; the
 * failures of the window through payment_refund_failures_received_at (migration
 * 20261215100000_refund_failure_metrics), each joined to its payment by primary key; the early
 * reversals table is small (one row per unsettled charge reference, kept 30 days at most).
 */
const PAYMENTS_SQL = `SET LOCAL statement_timeout = ${METRICS_COLLECT_TIMEOUT_MS};
WITH reversals AS (
SELECT count(*) FILTER (WHERE p.refunded_at >= ${REVERSAL_SINCE} AND p.refunded_cents = p.amount_usd * 100)::int AS refunded_full,
       count(*) FILTER (WHERE p.refunded_at >= ${REVERSAL_SINCE} AND p.refunded_cents < p.amount_usd * 100)::int AS refunded_partially,
       count(*) FILTER (WHERE p.disputed_at >= ${REVERSAL_SINCE})::int AS disputed,
       count(*) FILTER (WHERE p.dispute_won_at >= ${REVERSAL_SINCE})::int AS disputes_won,
       (COALESCE(sum(p.reversed_micro_credits) FILTER (WHERE p.reversed_at >= ${REVERSAL_SINCE}), 0)
         + COALESCE(sum(p.refund_taken_micro_credits) FILTER (WHERE p.refunded_at >= ${REVERSAL_SINCE}), 0))::float8 AS taken_back_micro_credits,
       COALESCE(sum(g.amount_micro_credits) FILTER (WHERE p.dispute_won_at >= ${REVERSAL_SINCE}), 0)::float8 AS given_back_micro_credits,
       (SELECT count(*) FROM early_payment_reversals)::int AS early_kept
  FROM payments p
  JOIN accounts a ON a.id = p.account_id AND NOT a.test_mode
  LEFT JOIN credit_grants g ON g.id = p.dispute_won_grant_id
 WHERE (p.refunded_at IS NOT NULL OR p.disputed_at IS NOT NULL)
   AND GREATEST(p.refunded_at, p.disputed_at, p.reversed_at, p.dispute_won_at) >= ${REVERSAL_SINCE}
), failures AS (
SELECT count(*) FILTER (WHERE f.applied)::int AS refunds_failed,
       count(*) FILTER (WHERE NOT f.applied)::int AS refunds_failed_not_applied,
       COALESCE(sum(f.restored_micro_credits), 0)::float8 AS refund_failed_micro_credits
  FROM payment_refund_failures f
  JOIN payments p ON p.id = f.payment_id
  JOIN accounts a ON a.id = p.account_id AND NOT a.test_mode
 WHERE f.received_at >= ${REVERSAL_SINCE}
)
SELECT * FROM reversals, failures`;

/**
 * The last result of a multi-statement simple query (`SET LOCAL ...; SELECT ...`, one round trip
 * and one implicit transaction, so the statement timeout ends with it).
 */
async function lastRow(pool: pg.Pool, sql: string): Promise<Record<string, unknown>> {
  const results = (await pool.query(sql)) as unknown as pg.QueryResult[];
  return results[results.length - 1]!.rows[0] as Record<string, unknown>;
}

/**
 * Creates the metrics of one server on a registry of its own (see the module comment).
 * @param sources where the scrape-time values come from.
 */
export function createServerMetrics(sources: ServerMetricsSources): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const usageOutcomes = registerUsageOutcomes(registry);

  // --- in-process counters (what /readyz reports) ----------------------------------------------
  // Read at every scrape, once per metric (each read is a few field reads).
  const fromLive = (key: keyof LiveCounters) => () => sources.live()[key];
  const fromGroup = (key: keyof GroupCommitStats) => () => sources.groupCommit()?.[key] ?? null;
  readGauge(registry, 'creditpool_live_websockets', 'Open WebSocket connections of this instance.', fromLive('webSockets'));
  readGauge(registry, 'creditpool_live_channels', 'Account channels this instance is subscribed to on Redis.', fromLive('channels'));
  readGauge(registry, 'creditpool_live_subscriptions', 'Live subscriptions (WebSocket and SSE) open on this instance.', fromLive('listeners'));
  readCounter(registry, 'creditpool_live_messages_received_total', 'Live update messages received from Redis since boot.', fromLive('messagesReceived'));
  readCounter(registry, 'creditpool_live_resyncs_total', 'Resyncs of every subscription after the Redis subscriber connection came back.', fromLive('resyncs'));
  readCounter(registry, 'creditpool_live_streams_started_total', 'Live streams started since boot.', fromLive('streamsStarted'));
  readCounter(registry, 'creditpool_api_key_revocations_received_total', 'API key revocation announcements received since boot.', fromLive('revocationsReceived'));
  readCounter(registry, 'creditpool_outbox_published_total', "Outbox rows this instance's relay published since boot.", fromLive('outboxPublished'));
  readCounter(registry, 'creditpool_outbox_drains_total', "Drain transactions of this instance's relay since boot (failed ones included).", fromLive('outboxDrains'));
  readCounter(registry, 'creditpool_group_commit_transactions_total', 'Charge transactions of the group committer (absent with CHARGE_PATH=naive).', fromGroup('transactions'));
  readCounter(registry, 'creditpool_group_commit_charges_total', 'Charges and account operations taken into those transactions.', fromGroup('charges'));
  readCounter(registry, 'creditpool_group_commit_retried_alone_total', 'Charges retried one transaction each after their transaction failed unexpectedly.', fromGroup('retriedAlone'));
  readCounter(registry, 'creditpool_group_commit_transaction_seconds_total', 'Wall time of the charge transactions, summed.', () => {
    const ms = fromGroup('transactionMs')();
    return ms === null ? null : ms / 1000;
  });
  new Counter({
    name: 'creditpool_rate_limited_total',
    help: 'Operations refused with RATE_LIMITED since boot, by the credential kind (user: end-user token, service: API key).',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      const { refused } = sources.rateLimit();
      this.reset();
      this.labels('user').inc(refused.user);
      this.labels('service').inc(refused.service);
    },
  });
  readCounter(registry, 'creditpool_rate_limit_fallbacks_total', "Rate limit decisions taken in this instance's memory because Redis did not answer (fail open).", () => sources.rateLimit().fallbacks);
  readGauge(registry, 'creditpool_group_commit_waiting', 'Charges and operations waiting for a charge transaction now.', fromGroup('waiting'));
  readGauge(registry, 'creditpool_group_commit_largest_group', 'Most charges of one account in one transaction since boot.', fromGroup('largestGroup'));

  // --- scrape-time collectors -------------------------------------------------------------------
  const up = new Gauge({
    name: 'creditpool_metrics_collector_up',
    help: 'Whether the collector answered within its timeout in the last scrape (1) or not (0: its metrics are left out).',
    labelNames: ['collector'] as const,
    registers: [registry],
  });
  const outboxRows = new Gauge({
    name: 'creditpool_outbox_rows',
    help: `Outbox rows not yet published (counted up to ${OUTBOX_ROWS_COUNTED}).`,
    registers: [registry],
  });
  const outboxOldestAge = new Gauge({
    name: 'creditpool_outbox_oldest_age_seconds',
    help: `Age of the oldest of the next ${OUTBOX_OLDEST_AMONG} outbox rows the relay takes (0 when empty).`,
    registers: [registry],
  });
  const webhooksUndelivered = new Gauge({
    name: 'creditpool_webhook_events_undelivered',
    help: `Webhook events with a delivery attempt in the last ${WEBHOOK_METRICS_WINDOW_SECONDS / 86400} days and no DELIVERED attempt.`,
    registers: [registry],
  });
  const webhooksFailedFinal = new Gauge({
    name: 'creditpool_webhook_events_failed_final',
    help: `Of those, the events nothing retries any more: their last attempt was refused with a permanent failure (4xx other than ${RETRYABLE_4XX.join('/')}) or was their job's ${WEBHOOK_MAX_LOGGED_ATTEMPTS}th.`,
    registers: [registry],
  });
  const reversalDays = PAYMENT_REVERSAL_METRICS_WINDOW_SECONDS / 86400;
  const reversalGauge = (name: string, help: string) => new Gauge({ name, help: `${help} (live accounts).`, registers: [registry] });
  const paymentsRefundedFull = reversalGauge('creditpool_payments_refunded_full', `Payments refunded in full by the payment provider in the last ${reversalDays} days`);
  const paymentsRefundedPartially = reversalGauge('creditpool_payments_refunded_partially', `Payments whose refunded amount grew in the last ${reversalDays} days and is short of the full amount`);
  const paymentsDisputed = reversalGauge('creditpool_payments_disputed', `Payments disputed (chargeback) in the last ${reversalDays} days`);
  const paymentsDisputesWon = reversalGauge('creditpool_payments_disputes_won', `Payments whose dispute was won in the last ${reversalDays} days`);
  const reversedMicroCredits = reversalGauge('creditpool_payments_reversed_micro_credits', `Micro-credits taken back by the refunds (full and partial) and disputes of the last ${reversalDays} days`);
  const disputeWonMicroCredits = reversalGauge('creditpool_payments_dispute_won_micro_credits', `Micro-credits given back by the disputes won in the last ${reversalDays} days`);
  const refundsFailed = reversalGauge('creditpool_payments_refunds_failed', `Refunds that failed or were canceled (the money came back) applied to their payment in the last ${reversalDays} days`);
  const refundsFailedNotApplied = reversalGauge(
    'creditpool_payments_refunds_failed_not_applied',
    `Refunds that failed or were canceled in the last ${reversalDays} days and were recorded only (a disputed payment, or a refund never applied): an operator checks them`,
  );
  const refundFailedMicroCredits = reversalGauge('creditpool_payments_refund_failed_micro_credits', `Micro-credits given back by the refunds that failed or were canceled in the last ${reversalDays} days`);
  const earlyReversals = new Gauge({
    name: 'creditpool_early_payment_reversals',
    help: 'Refunds and disputes kept for a charge no payment was settled SUCCEEDED with yet (applied when one is; pruned after 30 days). Growing: refunds of charges creditpool never settled.',
    registers: [registry],
  });
  const queueJobs = new Gauge({
    name: 'creditpool_queue_jobs',
    help: 'BullMQ jobs per queue and state.',
    labelNames: ['queue', 'state'] as const,
    registers: [registry],
  });
  // The precreated series of the fixed label values.
  const upOf = {} as Record<MetricsCollector, { set(value: number): void }>;
  for (const c of METRICS_COLLECTORS) upOf[c] = up.labels(c);
  const queues = METRICS_QUEUES.map((name) => new Queue(name, { connection: sources.queueRedis, prefix: sources.queuePrefix }));
  for (const q of queues) q.on('error', () => undefined); // a Redis outage shows as up=0, not as an unhandled error

  // Each collector reads, then returns what to set: a run that answers after its timeout is
  // discarded, so a late answer never lands in a later scrape.
  const collectors: Record<MetricsCollector, { gauges: Gauge[]; run(): Promise<() => void> }> = {
    outbox: {
      gauges: [outboxRows, outboxOldestAge],
      async run() {
        const row = await lastRow(sources.pool, OUTBOX_SQL);
        return () => {
          outboxRows.set(row.rows as number);
          outboxOldestAge.set(Math.max(0, (row.oldest_age_seconds as number | null) ?? 0));
        };
      },
    },
    webhooks: {
      gauges: [webhooksUndelivered, webhooksFailedFinal],
      async run() {
        const row = await lastRow(sources.pool, WEBHOOK_SQL);
        return () => {
          webhooksUndelivered.set(row.undelivered as number);
          webhooksFailedFinal.set(row.failed_final as number);
        };
      },
    },
    payments: {
      gauges: [
        paymentsRefundedFull,
        paymentsRefundedPartially,
        paymentsDisputed,
        paymentsDisputesWon,
        reversedMicroCredits,
        disputeWonMicroCredits,
        refundsFailed,
        refundsFailedNotApplied,
        refundFailedMicroCredits,
        earlyReversals,
      ],
      async run() {
        const row = await lastRow(sources.pool, PAYMENTS_SQL);
        return () => {
          paymentsRefundedFull.set(row.refunded_full as number);
          paymentsRefundedPartially.set(row.refunded_partially as number);
          paymentsDisputed.set(row.disputed as number);
          paymentsDisputesWon.set(row.disputes_won as number);
          reversedMicroCredits.set(row.taken_back_micro_credits as number);
          disputeWonMicroCredits.set(row.given_back_micro_credits as number);
          refundsFailed.set(row.refunds_failed as number);
          refundsFailedNotApplied.set(row.refunds_failed_not_applied as number);
          refundFailedMicroCredits.set(row.refund_failed_micro_credits as number);
          earlyReversals.set(row.early_kept as number);
        };
      },
    },
    queues: {
      gauges: [queueJobs],
      async run() {
        const counts = await Promise.all(queues.map((q) => q.getJobCounts(...METRICS_QUEUE_STATES)));
        return () => {
          queues.forEach((q, i) => {
            for (const state of METRICS_QUEUE_STATES) queueJobs.labels(q.name, state).set(counts[i]![state] ?? 0);
          });
        };
      },
    },
  };

  const collectAll = () =>
    Promise.all(
      METRICS_COLLECTORS.map(async (name) => {
        const c = collectors[name];
        try {
          const apply = await answerWithin(c.run(), METRICS_COLLECT_TIMEOUT_MS, `metrics collector ${name}`);
          apply();
          upOf[name].set(1);
        } catch {
          for (const g of c.gauges) clear(g);
          upOf[name].set(0);
        }
      }),
    ).then(() => undefined);

  let running: Promise<void> | null = null;
  return {
    registry,
    usageOutcomes,
    contentType: registry.contentType,
    async render() {
      running ??= collectAll().finally(() => {
        running = null;
      });
      await running;
      return registry.metrics();
    },
    async close() {
      await Promise.allSettled(queues.map((q) => q.close()));
    },
  };
}
