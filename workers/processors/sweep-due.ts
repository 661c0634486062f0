/**
 * Processor of the `sweep-due` maintenance job: the safety net behind the per-item jobs. Finds,
 * by each account's own clock, what is due and was not done (a delayed job lost when Redis was
 * flushed, a worker that was down) and does it or re-enqueues it:
 * - batches and holds past expiresAt -> expireDue per account (bounded per run);
 * - plans whose billing period has moved on -> rollBillingPeriods per account;
 * - PENDING auto top-ups older than a minute and (when WEBHOOK_URL is set) undelivered webhooks
 *   -> their jobs again (same jobId: a job still waiting is not duplicated; one kept as failed or
 *   completed is replaced, so a top-up whose last attempt timed out is resumed);
 * - PURCHASE payments PENDING longer than PAYMENT_RESUME_AFTER_SECONDS -> `resume-payment` jobs
 *   (jobId `resume-payment-<payment id>`, same re-add rule), so a purchase whose client never
 *   retried is still settled: granted once if it was charged, FAILED if declined.
 */
import type { WorkerDeps } from '../deps.js';
import type { JobSink } from '../../src/outbox/relay.js';
import type { OutboxJob } from '../../src/queues/names.js';
import { findAccountsWithDueExpiries, expireDue } from '../../src/services/expire-due.js';
import { findAccountsWithDuePeriods, rollBillingPeriods } from '../../src/services/plans.js';
import { findUndeliveredWebhookJobs } from '../../src/services/webhooks.js';
import { findPaymentsToResume } from '../../src/services/resume-payment.js';

/** The maintenance job's name. */
export const SWEEP_DUE_JOB = 'sweep-due';

/** Accounts handled per kind and run (the next run continues). */
const MAX_ACCOUNTS_PER_RUN = 5_000;

/** What one sweep did. */
export interface SweepResult {
  expiredAccounts: number;
  rolledAccounts: number;
  requeuedJobs: number;
}

/** Runs one sweep. @throws the first database or Redis error (the job is retried next run). */
export async function processSweepDue(deps: WorkerDeps, sink: JobSink & { readd?(jobs: OutboxJob[]): Promise<void> }): Promise<SweepResult> {
  const { services, log } = deps;
  const now = services.clock();
  const expiring = await findAccountsWithDueExpiries(services.pool, now, MAX_ACCOUNTS_PER_RUN);
  for (const accountId of expiring) await expireDue(services, accountId);
  const rolling = await findAccountsWithDuePeriods(services.pool, now, MAX_ACCOUNTS_PER_RUN);
  for (const accountId of rolling) await rollBillingPeriods(services, accountId);
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
  const result = { expiredAccounts: expiring.length, rolledAccounts: rolling.length, requeuedJobs: jobs.length };
  if (expiring.length + rolling.length + jobs.length > 0) log.info(result, 'sweep-due did overdue work');
  return result;
}
