/**
 * Queue and job names shared by producers and workers. The same name runs through every room:
 * service -> outbox row (topic `job`) -> relay -> queue -> processor workers/processors/<job>.ts.
 */

/** The maintenance queue: periodic sweeps and checks (job schedulers, re-created at every boot). */
export const MAINTENANCE_QUEUE = 'maintenance';

/** The ledger-jobs queue: one job per thing due (an expiry, a period roll, a top-up, a pending payment). */
export const LEDGER_JOBS_QUEUE = 'ledger-jobs';

/**
 * The webhook-deliveries queue: the `deliver-webhook` jobs, with a worker of their own
 * (WEBHOOK_CONCURRENCY at once; workers/start.ts), so deliveries waiting on a slow receiver never
 * hold the slots of the ledger-jobs worker's money jobs. Until this queue existed they ran on
 * ledger-jobs; the ledger-jobs worker still handles any left there (workers/start.ts).
 */
export const WEBHOOK_DELIVERY_QUEUE = 'webhook-deliveries';

/** The queue a job of `name` is added to: {@link WEBHOOK_DELIVERY_QUEUE} for `deliver-webhook`, else {@link LEDGER_JOBS_QUEUE}. */
export function queueOfJob(name: LedgerJobName): typeof LEDGER_JOBS_QUEUE | typeof WEBHOOK_DELIVERY_QUEUE {
  return name === 'deliver-webhook' ? WEBHOOK_DELIVERY_QUEUE : LEDGER_JOBS_QUEUE;
}

/** Job: reconcile the ledger of recently changed accounts (see services/reconcile-ledger.ts). */
export const RECONCILE_LEDGER_JOB = 'reconcile-ledger';

/** Every how many milliseconds the reconcile job is scheduled. */
export const RECONCILE_EVERY_MS = 60_000;

/** Job: ANALYZE the tables that changed enough, where autovacuum is off (see db/statistics.ts analyzeStaleTables). */
export const ANALYZE_STALE_TABLES_JOB = 'analyze-stale-tables';

/** Job: delete the webhook delivery log's events older than WEBHOOK_LOG_RETENTION_DAYS (see services/webhook-retention.ts pruneWebhookLog). */
export const PRUNE_WEBHOOK_LOG_JOB = 'prune-webhook-log';

/** Job: delete the kept budget spending rows of periods that ended more than BUDGET_SPEND_RETENTION_DAYS ago (see services/budget-spend-retention.ts pruneBudgetSpend). */
export const PRUNE_BUDGET_SPEND_JOB = 'prune-budget-spend';

/**
 * A job as written to the outbox (topic `job`) and turned into a BullMQ job by the relay.
 * - `name`: one of {@link LEDGER_JOB_NAMES}.
 * - `jobId`: deterministic (e.g. `expire-due-<batch id>`; BullMQ forbids ":"), so enqueueing
 *   twice adds it once.
 * - `runAt`: ISO instant before which it must not run (a delayed job), or absent for now.
 */
export interface OutboxJob {
  name: LedgerJobName;
  jobId: string;
  data: Record<string, unknown>;
  runAt?: string;
}

/**
 * Why a `job` outbox payload of a known name is not an {@link OutboxJob} the relay can enqueue,
 * or null when it is one. The rules are the contract above, and what BullMQ's addBulk does with
 * anything else (seen with BullMQ 6.7, test/integration/outbox.test.ts):
 * - `jobId` not a string: addBulk throws a TypeError; missing: BullMQ gives it a new random id at
 *   each delivery, so an outbox row delivered twice (at least once) would run twice;
 * - `jobId` an integer ("4711"), or with a ":": addBulk throws ("Custom Id cannot ...");
 * - `runAt` not a string Date.parse reads: the delay is NaN, which Redis refuses (a script error);
 * - `data` not an object (null, an array, a string): no processor could take it.
 * `runAt` null counts as absent (no delay), as the job sink's jobOptions reads it.
 * @param job the payload (a JSON object whose `name` is one of {@link LEDGER_JOB_NAMES}).
 * @returns a short reason (stored in outbox_dead_jobs.reason), or null.
 */
export function outboxJobProblem(job: Record<string, unknown>): string | null {
  const { jobId, data, runAt } = job;
  if (typeof jobId !== 'string' || jobId === '') return 'jobId is not a string';
  if (`${parseInt(jobId, 10)}` === jobId) return 'jobId is an integer (BullMQ refuses it)';
  if (jobId.includes(':')) return 'jobId contains ":" (BullMQ refuses it)';
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return 'data is not an object';
  if (runAt !== undefined && runAt !== null && (typeof runAt !== 'string' || !Number.isFinite(Date.parse(runAt)))) return 'runAt is not a date string';
  return null;
}

/** The jobs the outbox carries: those of the ledger-jobs queue, and `deliver-webhook` (on the webhook-deliveries queue: {@link queueOfJob}). */
export const LEDGER_JOB_NAMES = ['expire-due', 'roll-period', 'auto-top-up', 'deliver-webhook', 'resume-payment'] as const;

/** One ledger job name. */
export type LedgerJobName = (typeof LEDGER_JOB_NAMES)[number];

/**
 * BullMQ options per job: attempts and exponential backoff (ms), and optionally `jitter`, a
 * fraction in (0, 1): BullMQ's built-in exponential strategy then waits a random time in
 * [(1 - jitter) × d, d] instead of d = backoffMs × 2^(attempt - 1) (never longer, so the
 * schedule's maximum span stays what it was; a built-in option, not a named custom strategy,
 * so every worker version computes it). A failed attempt is retried with the same jobId;
 * processors are idempotent, so a retry or a duplicate is a no-op.
 */
export const LEDGER_JOB_OPTIONS: Record<LedgerJobName, { attempts: number; backoffMs: number; jitter?: number }> = {
  'expire-due': { attempts: 5, backoffMs: 1_000 },
  'roll-period': { attempts: 5, backoffMs: 1_000 },
  // Three failed charges in a row pause auto top-up (services/auto-top-up.ts).
  'auto-top-up': { attempts: 3, backoffMs: 2_000 },
  // 1 s, 2 s, 4 s, ... 2^15 s (9.1 h), each less up to 20 % at random: the last retry 14.6 h
  // to 18.2 h after the first attempt, so a receiver down for hours still gets the event (Stripe
  // retries for three days, Standard Webhooks for about a day and a half); within the sweep's
  // 24 h window (services/webhooks.ts). The jitter spreads the retries of events that failed
  // together (a receiver outage) instead of sending them back in waves at the same instants.
  'deliver-webhook': { attempts: 17, backoffMs: 1_000, jitter: 0.2 },
  // A purchase payment left PENDING (services/resume-payment.ts); the sweep re-adds it after the last attempt.
  'resume-payment': { attempts: 5, backoffMs: 5_000 },
};
