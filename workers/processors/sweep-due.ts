/**
 * Processor of the `sweep-due` maintenance job: the safety net behind the per-item jobs. Finds,
 * by each account's own clock, what is due and was not done (a delayed job lost when Redis was
 * flushed, a worker that was down) and does it or re-enqueues it:
 * - batches and holds past expiresAt -> expireDue per account, oldest expiresAt first;
 * - plans whose billing period has moved on -> rollBillingPeriods per account, the oldest
 *   period granted first (each kind bounded per run: MAX_ACCOUNTS_PER_RUN; the next run goes on);
 * - accounts without a plan (not in test mode) whose billing period has moved on since their last
 *   change -> openBillingPeriod per account, the oldest stored period first: a balance version
 *   with no money moved, so the live credit bar shows the new period (services/open-billing-period.ts);
 * - PENDING auto top-ups older than a minute and (when WEBHOOK_URL is set) undelivered webhooks
 *   -> their jobs again (same jobId: a job still waiting is not duplicated; one kept as failed or
 *   completed is replaced, so a top-up whose last attempt timed out is resumed);
 * - PURCHASE payments PENDING longer than PAYMENT_RESUME_AFTER_SECONDS -> `resume-payment` jobs
 *   (jobId `resume-payment-<payment id>`, same re-add rule), so a purchase whose client never
 *   retried is still settled: granted once if it was charged, FAILED if declined;
 * - refunds and disputes kept for a charge no payment was settled with, first received more than
 *   EARLY_REVERSAL_RETENTION_MS ago -> deleted (services/payment-reversals.ts pruneEarlyReversals:
 *   charges of other applications on the same provider account), at most 10,000 per run.
 *
 * One account whose expiry, roll or period opening fails (a plan's grant refused because the balance would pass
 * the 64-bit limit, a lock it waited on too long, a bug) is logged and counted, and the sweep goes
 * on with the other accounts and the re-adds: it used to stop at the first such account, and as it
 * fails again on every run, nothing after it was ever swept again (other accounts' lost rolls,
 * stuck top-ups, purchases charged but never granted, undelivered webhooks). A database that is
 * unreachable still ends the run at once.
 */
import type { WorkerDeps } from '../deps.js';
import { isDatabaseUnavailable, isStatementTimeout } from '../../src/db/pg.js';
import type { ServiceContext } from '../../src/services/context.js';
import type { JobSink } from '../../src/outbox/relay.js';
import type { OutboxJob } from '../../src/queues/names.js';
import { findAccountsWithDueExpiries, expireDue } from '../../src/services/expire-due.js';
import { findAccountsWithDuePeriods, rollBillingPeriods } from '../../src/services/plans.js';
import { findAccountsWithUnopenedPeriods, openBillingPeriod } from '../../src/services/open-billing-period.js';
import { findUndeliveredWebhookJobs } from '../../src/services/webhooks.js';
import { findPaymentsToResume } from '../../src/services/resume-payment.js';
import { pruneEarlyReversals } from '../../src/services/payment-reversals.js';

/** The maintenance job's name. */
export const SWEEP_DUE_JOB = 'sweep-due';

/**
 * Accounts handled per kind (expiries, plan rolls, periods opened) and run by default: under a
 * larger backlog a run takes those that have waited longest (findAccountsWithDueExpiries,
 * findAccountsWithDuePeriods, findAccountsWithUnopenedPeriods) and the next run continues.
 */
export const MAX_ACCOUNTS_PER_RUN = 5_000;

/** Bounds of one sweep run. */
export interface SweepLimits {
  /** Accounts handled per kind and run (default MAX_ACCOUNTS_PER_RUN). */
  maxAccountsPerRun: number;
}

/** What one sweep did. */
export interface SweepResult {
  /** Accounts whose due expiries were done. */
  expiredAccounts: number;
  /** Accounts whose due billing periods were rolled. */
  rolledAccounts: number;
  /**
   * Accounts without a plan whose new billing period was due to be opened and was handled (a
   * balance version each, unless a change of the account opened it since it was found).
   */
  openedAccounts: number;
  /** Jobs re-added to the queue (pending top-ups, payments to resume, undelivered webhooks). */
  requeuedJobs: number;
  /** Accounts whose expiry, roll or period opening failed this run (each logged; tried again next run). */
  failedAccounts: number;
  /** Kept refunds and disputes of charges no payment was settled with, deleted past their retention. */
  prunedEarlyReversals: number;
}

/**
 * Runs `work` for each account; an account whose work fails is logged and skipped (tried again
 * next run), unless the database itself failed (db/pg.ts isDatabaseUnavailable: unreachable or the
 * connection lost; a statement timeout is the account's, e.g. its row locked), which ends the run.
 * @returns how many accounts succeeded and failed.
 * @throws the account's error when the database cannot be reached.
 */
async function eachAccount(deps: WorkerDeps, what: string, accountIds: readonly string[], work: (services: ServiceContext, accountId: string) => Promise<unknown>): Promise<{ done: number; failed: number }> {
  let done = 0;
  let failed = 0;
  for (const accountId of accountIds) {
    try {
      await work(deps.services, accountId);
      done++;
    } catch (err) {
      if (isDatabaseUnavailable(err) && !isStatementTimeout(err)) throw err;
      failed++;
      deps.log.error({ err, accountId }, `sweep-due: ${what} failed for one account; going on with the others (tried again next run)`);
    }
  }
  return { done, failed };
}

/**
 * Runs one sweep: at most `limits.maxAccountsPerRun` accounts with due expiries, as many with
 * due plan rolls and as many plan-less accounts with a billing period to open, those waiting
 * longest first.
 * @throws the database error when the database cannot be reached, or the Redis error of the
 *   re-adds (the job is retried next run).
 */
export async function processSweepDue(
  deps: WorkerDeps,
  sink: JobSink & { readd?(jobs: OutboxJob[]): Promise<void> },
  limits: SweepLimits = { maxAccountsPerRun: MAX_ACCOUNTS_PER_RUN },
): Promise<SweepResult> {
  const { services, log } = deps;
  const now = services.clock();
  const expiring = await findAccountsWithDueExpiries(services.pool, now, limits.maxAccountsPerRun);
  const expired = await eachAccount(deps, 'expiring what is due', expiring, expireDue);
  const rolling = await findAccountsWithDuePeriods(services.pool, now, limits.maxAccountsPerRun);
  const rolled = await eachAccount(deps, 'rolling the billing period', rolling, rollBillingPeriods);
  const opening = await findAccountsWithUnopenedPeriods(services.pool, now, limits.maxAccountsPerRun);
  const opened = await eachAccount(deps, 'opening the billing period', opening, openBillingPeriod);
  const { rows } = await services.pool.query(
    `SELECT id, account_id FROM auto_top_ups WHERE status = 'PENDING' AND created_at < $1::timestamptz - interval '1 minute' LIMIT 1000`,
    [now],
  );
  const jobs = [
    ...rows.map((r) => ({ name: 'auto-top-up' as const, jobId: `auto-top-up-${r.id}`, data: { topUpId: r.id as string, accountId: r.account_id as string } })),
    ...(await findPaymentsToResume(services.pool, now, deps.env.PAYMENT_RESUME_AFTER_SECONDS)),
    ...(deps.env.WEBHOOK_URL ? await findUndeliveredWebhookJobs(services.pool, now) : []),
  ];
  if (jobs.length > 0) await (sink.readd ?? sink.add)(jobs);
  const prunedEarlyReversals = await pruneEarlyReversals(services.pool, now);
  const result = {
    expiredAccounts: expired.done,
    rolledAccounts: rolled.done,
    openedAccounts: opened.done,
    requeuedJobs: jobs.length,
    failedAccounts: expired.failed + rolled.failed + opened.failed,
    prunedEarlyReversals,
  };
  if (expiring.length + rolling.length + opening.length + jobs.length + prunedEarlyReversals > 0) log.info(result, 'sweep-due did overdue work');
  return result;
}
