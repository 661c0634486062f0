/**
 * SIGTERM on the workers process (workers/main.ts) past SHUTDOWN_GRACE_MS while a `roll-period`,
 * an `auto-top-up` (payment simulator) or a `deliver-webhook` job is in the middle of its work:
 * its Redis connections are dropped with the job unfinished, and the next worker's stalled check
 * runs it again (test/setup/workers-process.ts). Each re-run must change nothing the cut run
 * already did: one subscription grant per period, one charge and one grant per top-up, and the
 * webhook sent at most once more with a delivery log that says what happened. The jobs are held
 * mid-way by locks the test takes, or by a receiver that does not answer, never by timing.
 * (worker-shutdown.test.ts does the same for `expire-due`.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { PUT_BACK, rerunStalledJob, startWorkersProcess, type WorkersProcess } from '../setup/workers-process.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { createFundedAccount } from '../factories/accounts.js';
import { credits } from '../../src/ledger/credits.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { createCreditPack } from '../../src/services/credit-packs.js';
import { attachPaymentMethod } from '../../src/services/purchase-pack.js';
import { runAutoTopUp, setAutoTopUp } from '../../src/services/auto-top-up.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import { deliverWebhook, webhookJobId } from '../../src/services/webhooks.js';
import { parseEnv } from '../../src/config/env.js';
import { purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { resumePayment } from '../../src/services/resume-payment.js';
import { startAccountHoldingReceiver } from '../webhooks/helpers.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { MAINTENANCE_QUEUE } from '../../src/queues/names.js';
import { processSweepDue, SWEEP_DUE_JOB } from '../../workers/processors/sweep-due.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';

/** The grace period of every workers process here: shorter than any hold, so the stop gives up on the job. */
const GRACE_MS = 500;

let services: TestServices;

beforeAll(() => {
  services = createTestServices(3);
});

afterAll(async () => {
  await services?.close();
});

/**
 * SIGTERMs the workers process, waits for it to give up on its jobs in progress, runs `release`
 * (the test lets the held job go on: it may finish its transaction before the process exits),
 * and expects a clean exit.
 */
async function stopPastGrace(started: WorkersProcess, release: () => Promise<void>): Promise<void> {
  started.workers.child.kill('SIGTERM');
  await started.workers.waitForOutput('did not let the workers close in time');
  await release();
  const run = await started.workers.exited;
  expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
}

/** The job of `name` the workers process left active (exactly one). */
async function theActiveJob(started: WorkersProcess, name: string): Promise<string> {
  const active = (await started.queue.getJobs(['active'])).filter((j) => j.name === name);
  expect(active.map((j) => j.name)).toEqual([name]);
  return active[0]!.id!;
}

describe('SIGTERM past SHUTDOWN_GRACE_MS, then the stalled check re-runs the job', () => {
  it('roll-period: the cut run rolls the period (its transaction commits); the re-run rolls nothing: one SUBSCRIPTION grant per period', async () => {
    const started = await startWorkersProcess(services.pool, GRACE_MS);
    const holder = await services.pool.connect();
    try {
      const start = new Date('2026-01-15T00:00:00.000Z');
      const accountId = await createFundedAccount(services, { testClockStart: start });
      const plan = await createPlan(services, { name: `sigterm-roll-${randomUUID()}`, monthlyMicroCredits: credits(10), rollover: 'ROLLOVER', rolloverCapMicroCredits: null, priceUsd: '1' });
      await subscribeToPlan(services, accountId, plan.id);
      // Its scheduled roll (due at Feb 15 on the wall clock, long past) runs at once and rolls nothing: the account's clock is at Jan 15.
      const scheduled = `roll-period-${accountId}-${Date.parse('2026-02-15T00:00:00.000Z')}`;
      await expect.poll(() => started.queue.getJobState(scheduled), { timeout: 20_000, interval: 50 }).toBe('completed');
      const grants = async () =>
        (await services.pool.query(`SELECT idempotency_key, amount_micro_credits::text AS amount FROM credit_grants WHERE account_id = $1 AND source = 'SUBSCRIPTION' ORDER BY created_at`, [accountId])).rows;
      const periodGrant = (startIso: string) => ({ idempotency_key: `plan-period:${plan.id}:${startIso}`, amount: '10000000' });
      expect(await grants()).toEqual([periodGrant('2026-01-15T00:00:00.000Z')]);

      // The next period begins (the account's clock moves past Feb 15); its roll waits for the test's lock.
      await services.pool.query(`UPDATE accounts SET test_clock_at = '2026-02-16T00:00:00.000Z' WHERE id = $1`, [accountId]);
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
      const jobId = `roll-period-sigterm-${randomUUID()}`;
      await started.queue.add('roll-period', { accountId }, { jobId });
      await started.heldByLock();
      expect(await started.queue.getJobState(jobId)).toBe('active');

      await stopPastGrace(started, async () => void (await holder.query('ROLLBACK')));
      expect(await grants()).toEqual([periodGrant('2026-01-15T00:00:00.000Z'), periodGrant('2026-02-15T00:00:00.000Z')]);
      expect(await started.queue.getJobState(jobId)).toBe('active');

      expect(await rerunStalledJob(services, started.prefix, jobId)).toEqual({ periodsRolled: 0 });
      expect(await grants()).toEqual([periodGrant('2026-01-15T00:00:00.000Z'), periodGrant('2026-02-15T00:00:00.000Z')]);
      await expectLedgerInvariant(services.pool, accountId);
    } finally {
      holder.release();
      await started.dispose();
    }
  });

  it('auto-top-up: the cut run charges and grants (held after the charge, before its outcome is recorded); the re-run charges nothing and grants nothing', async () => {
    // Set up before the workers start: a PENDING top-up whose first charge timed out (nothing
    // charged), so its payment row exists and the test can hold the one step that locks it
    // FOR UPDATE (settlePayment, after the charge). FOR KEY SHARE lets the send mark through.
    const accountId = await createFundedAccount(services, { paid: 100 });
    const pack = await createCreditPack(services, { name: `sigterm-pack-${randomUUID()}`, microCredits: credits(50), bonusMicroCredits: 0n, priceUsd: '5', expiresAfterDays: null });
    const methodRef = `pm_card_sigterm_${randomUUID().slice(0, 8)}`;
    const first = new PaymentSimulator();
    await attachPaymentMethod({ ...services, payments: first }, accountId, methodRef);
    await setAutoTopUp(services, { accountId, enabled: true, thresholdMicroCredits: credits(50), packId: pack.id, maxPerPeriod: 2 });
    await recordUsage(services, { accountId, idempotencyKey: `sigterm-${randomUUID()}`, category: 'units', quantities: { units: '60' } });
    const topUps = async () => (await services.pool.query(`SELECT id::text, status, attempts FROM auto_top_ups WHERE account_id = $1`, [accountId])).rows;
    const [topUp] = await topUps();
    expect(topUp).toMatchObject({ status: 'PENDING', attempts: 0 });
    first.script(methodRef, ['timeout']);
    expect(await runAutoTopUp({ ...services, payments: first }, { topUpId: topUp.id, accountId }, { attemptsMade: 0, attempts: 3 })).toMatchObject({ status: 'PENDING' });
    const payments = async () =>
      (await services.pool.query(`SELECT id::text, status FROM payments WHERE account_id = $1 AND purpose = 'AUTO_TOP_UP'`, [accountId])).rows as { id: string; status: string }[];
    const [payment] = await payments();
    expect(payment).toMatchObject({ status: 'PENDING' });
    const topUpGrants = async () =>
      (await services.pool.query(`SELECT amount_micro_credits::text AS amount, reference FROM credit_grants WHERE account_id = $1 AND source = 'AUTO_TOP_UP'`, [accountId])).rows;
    expect(await topUpGrants()).toEqual([]);

    const holder = await services.pool.connect();
    await holder.query('BEGIN');
    await holder.query('SELECT 1 FROM payments WHERE id = $1 FOR KEY SHARE', [payment!.id]);
    let started: WorkersProcess | null = null;
    try {
      // The workers' relay enqueues the top-up's job; its run charges the payment (its own
      // simulator: a success) and waits for the payment's row lock to record that.
      started = await startWorkersProcess(services.pool, GRACE_MS);
      await started.heldByLock();
      const jobId = await theActiveJob(started, 'auto-top-up');
      const { rows: sent } = await services.pool.query(`SELECT last_sent_at > created_at AS resent FROM payments WHERE id = $1`, [payment!.id]);
      expect(sent[0].resent).toBe(true);

      await stopPastGrace(started, async () => void (await holder.query('ROLLBACK')));
      // The cut run's transaction committed: the charge is recorded and granted once.
      expect(await payments()).toEqual([{ id: payment!.id, status: 'SUCCEEDED' }]);
      expect(await topUpGrants()).toEqual([{ amount: '50000000', reference: payment!.id }]);
      expect(await topUps()).toEqual([{ id: topUp.id, status: 'SUCCEEDED', attempts: 1 }]);
      expect(await started.queue.getJobState(jobId)).toBe('active');

      const rerunProvider = new PaymentSimulator();
      expect(await rerunStalledJob({ ...services, payments: rerunProvider }, started.prefix, jobId)).toEqual({ topUpId: topUp.id, status: 'SUCCEEDED', reason: null });
      expect(rerunProvider.chargeCount()).toBe(0);
      expect(await payments()).toEqual([{ id: payment!.id, status: 'SUCCEEDED' }]);
      expect(await topUpGrants()).toEqual([{ amount: '50000000', reference: payment!.id }]);
      expect(await topUps()).toEqual([{ id: topUp.id, status: 'SUCCEEDED', attempts: 1 }]);
      await expectLedgerInvariant(services.pool, accountId);
    } finally {
      holder.release();
      await started?.dispose();
    }
  });

  it('deliver-webhook: the cut run leaves its SENDING claim; a re-run sends nothing while it is fresh (put back, no attempt spent), and once it is stale records it FAILED and sends once more; nothing after DELIVERED', async () => {
    // A receiver that keeps the first POST of this test's account unanswered and answers every
    // later one 200.
    const receiver = await startAccountHoldingReceiver({ holdFirstOnly: true });
    const received = receiver.received;
    const webhookEnv = { WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: `whsec-sigterm-${randomUUID()}` };
    let started: WorkersProcess | null = null;
    try {
      started = await startWorkersProcess(services.pool, GRACE_MS, webhookEnv);
      // 100 credits, 80 used: 20 % left crosses the 25 % alert threshold (one alert, one webhook).
      const accountId = await createFundedAccount(services, { paid: 100 });
      receiver.follow(accountId);
      await recordUsage(services, { accountId, idempotencyKey: `sigterm-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
      const { rows: alerts } = await services.pool.query(`SELECT id::text FROM credit_alerts WHERE account_id = $1`, [accountId]);
      expect(alerts).toHaveLength(1);
      const eventId = alerts[0].id as string;
      const jobId = webhookJobId('credit_alert.raised', eventId);
      const deliveries = async () =>
        (await services.pool.query(`SELECT attempt, status, response_code, error FROM webhook_deliveries WHERE event_id = $1 ORDER BY created_at, status DESC`, [eventId])).rows;

      await receiver.first;
      expect(await started.webhookQueue.getJobState(jobId)).toBe('active');
      await stopPastGrace(started, async () => undefined);
      expect(await deliveries()).toEqual([{ attempt: 1, status: 'SENDING', response_code: null, error: null }]);
      expect(await started.webhookQueue.getJobState(jobId)).toBe('active');

      // Re-run while the claim is fresh (the cut POST may still reach the receiver): nothing sent,
      // nothing logged, put back for later without spending an attempt.
      expect(await rerunStalledJob(services, started.prefix, jobId, webhookEnv)).toEqual(PUT_BACK);
      expect(received).toHaveLength(1);
      expect(await deliveries()).toEqual([{ attempt: 1, status: 'SENDING', response_code: null, error: null }]);

      expect(await started.webhookQueue.getJobState(jobId)).toBe('delayed');
      expect((await started.webhookQueue.getJob(jobId))!.attemptsMade).toBe(0);

      // The claim is stale once WEBHOOK_TIMEOUT_MS + WEBHOOK_CLAIM_MARGIN_MS have passed: backdated here instead of waited for.
      // The job's next run (its wait cut short) records it FAILED and sends once more. The stalled
      // re-run spent no attempt (BullMQ counts none for a stall) and the put-back none either, so
      // the job is still at its first attempt: the number the cut run sent is sent again.
      await services.pool.query(`UPDATE webhook_deliveries SET created_at = created_at - interval '10 minutes' WHERE event_id = $1`, [eventId]);
      await (await started.webhookQueue.getJob(jobId))!.promote();
      expect(await rerunStalledJob(services, started.prefix, jobId, webhookEnv)).toEqual({ status: 'DELIVERED', skipped: false, responseCode: 200, attempt: 1 });
      expect(await deliveries()).toEqual([
        { attempt: 1, status: 'FAILED', response_code: null, error: 'no outcome recorded: the worker stopped during the attempt' },
        { attempt: 1, status: 'DELIVERED', response_code: 200, error: null },
      ]);
      expect(received.map((r) => [r.eventId, r.attempt])).toEqual([
        [`credit_alert.raised:${eventId}`, '1'],
        [`credit_alert.raised:${eventId}`, '1'],
      ]);
      expect(received[1]!.body).toBe(received[0]!.body);

      // Any later run (a duplicate job, the sweep) sends nothing more.
      expect(await deliverWebhook({ pool: services.pool, env: parseEnv(webhookEnv) }, { eventType: 'credit_alert.raised', eventId, accountId }, 3)).toEqual({ status: 'ALREADY_DELIVERED', skipped: false });
      expect(received).toHaveLength(2);
      expect(await deliveries()).toHaveLength(2);
    } finally {
      await receiver.close();
      await started?.dispose();
    }
  });

  /**
   * A PURCHASE payment left PENDING by a charge that timed out (nothing charged, nothing granted),
   * its payment row locked FOR KEY SHARE by `holder` (the send mark passes; settlePurchase's FOR
   * UPDATE waits), and a workers process whose `resume-payment` job charged it (its own
   * simulator: a success) and waits for that lock to record it.
   */
  async function resumeHeldAfterCharge(holder: pg.PoolClient) {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const pack = await createCreditPack(services, { name: `sigterm-resume-${randomUUID()}`, microCredits: credits(50), bonusMicroCredits: 0n, priceUsd: '5', expiresAfterDays: null });
    const methodRef = `pm_card_resume_${randomUUID().slice(0, 8)}`;
    const first = new PaymentSimulator();
    await attachPaymentMethod({ ...services, payments: first }, accountId, methodRef);
    first.script(methodRef, ['timeout']);
    await expect(purchaseCreditPack({ ...services, payments: first }, { accountId, packId: pack.id, idempotencyKey: `resume-${randomUUID()}` })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    const payments = async () => (await services.pool.query(`SELECT id::text, status FROM payments WHERE account_id = $1`, [accountId])).rows as { id: string; status: string }[];
    const [payment] = await payments();
    expect(payment).toMatchObject({ status: 'PENDING' });
    // The pack's grant (the account's opening funds are a PURCHASE grant too, of no payment).
    const grants = async () => (await services.pool.query(`SELECT amount_micro_credits::text AS amount, reference FROM credit_grants WHERE account_id = $1 AND source = 'PURCHASE' AND reference = $2`, [accountId, payment!.id])).rows;
    expect(await grants()).toEqual([]);
    await holder.query('BEGIN');
    await holder.query('SELECT 1 FROM payments WHERE id = $1 FOR KEY SHARE', [payment!.id]);
    const started = await startWorkersProcess(services.pool, GRACE_MS);
    const jobId = `resume-payment-${payment!.id}`;
    await started.queue.add('resume-payment', { paymentId: payment!.id, accountId }, { jobId });
    await started.heldByLock();
    expect(await started.queue.getJobState(jobId)).toBe('active');
    return { accountId, payment: payment!, payments, grants, started, jobId };
  }

  it('resume-payment released within the stop: the cut run settles the charge (one grant); the re-run charges nothing and grants nothing', async () => {
    const holder = await services.pool.connect();
    let started: WorkersProcess | null = null;
    try {
      const held = await resumeHeldAfterCharge(holder);
      started = held.started;
      await stopPastGrace(started, async () => void (await holder.query('ROLLBACK')));
      expect(await held.payments()).toEqual([{ id: held.payment.id, status: 'SUCCEEDED' }]);
      expect(await held.grants()).toEqual([{ amount: '50000000', reference: held.payment.id }]);
      expect(await started.queue.getJobState(held.jobId)).toBe('active');

      const rerunProvider = new PaymentSimulator();
      expect(await rerunStalledJob({ ...services, payments: rerunProvider }, started.prefix, held.jobId)).toEqual({ paymentId: held.payment.id, status: 'SUCCEEDED', reason: null });
      expect(rerunProvider.chargeCount()).toBe(0);
      expect(await held.payments()).toEqual([{ id: held.payment.id, status: 'SUCCEEDED' }]);
      expect(await held.grants()).toEqual([{ amount: '50000000', reference: held.payment.id }]);
      await expectLedgerInvariant(services.pool, held.accountId);
    } finally {
      holder.release();
      await started?.dispose();
    }
  });

  it('resume-payment stuck past the stop (the lock never released): its session is terminated, nothing is settled; the re-run sends the charge again under the payment id (the provider answers the first charge) and grants once', async () => {
    const holder = await services.pool.connect();
    let started: WorkersProcess | null = null;
    try {
      const held = await resumeHeldAfterCharge(holder);
      started = held.started;
      started.workers.child.kill('SIGTERM');
      const run = await started.workers.exited;
      expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
      expect(run.stdout).toContain('sessions were terminated');
      await holder.query('ROLLBACK');
      // Charged by the cut run's provider, never recorded: still PENDING, nothing granted.
      expect(await held.payments()).toEqual([{ id: held.payment.id, status: 'PENDING' }]);
      expect(await held.grants()).toEqual([]);

      // The re-run sends the recorded request again with the payment id as idempotency key (a real
      // provider answers the charge the cut run made; this fresh simulator charges it once) and grants once.
      const rerunProvider = new PaymentSimulator();
      expect(await rerunStalledJob({ ...services, payments: rerunProvider }, started.prefix, held.jobId)).toEqual({ paymentId: held.payment.id, status: 'SUCCEEDED', reason: null });
      expect(rerunProvider.chargeCount()).toBe(1);
      expect(await held.payments()).toEqual([{ id: held.payment.id, status: 'SUCCEEDED' }]);
      expect(await held.grants()).toEqual([{ amount: '50000000', reference: held.payment.id }]);
      // Any later run (a re-add by the sweep) charges and grants nothing.
      expect(await resumePayment({ ...services, payments: rerunProvider }, held.payment.id)).toEqual({ paymentId: held.payment.id, status: 'SUCCEEDED', reason: null });
      expect(rerunProvider.chargeCount()).toBe(1);
      expect(await held.grants()).toEqual([{ amount: '50000000', reference: held.payment.id }]);
      await expectLedgerInvariant(services.pool, held.accountId);
    } finally {
      holder.release();
      await started?.dispose();
    }
  });

  it('sweep-due (maintenance) cut mid-way: its expiry of an account commits or is rolled back, and the next sweep expires nothing more: one EXPIRE entry', async () => {
    const started = await startWorkersProcess(services.pool, GRACE_MS);
    const holder = await services.pool.connect();
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const maintenance = new Queue(MAINTENANCE_QUEUE, { connection, prefix: started.prefix });
    try {
      // A test-clock account: its batch is due by its own clock, which the test moves; its
      // expire-due job (due on the wall clock at once) runs first and finds nothing due.
      const start = new Date('2026-01-15T00:00:00.000Z');
      const accountId = await createFundedAccount(services, { testClockStart: start });
      const expiresAt = new Date('2026-01-16T00:00:00.000Z');
      await grantCredits(services, { accountId, amountMicroCredits: credits(5), type: 'FREE', source: 'PROMO_CODE', expiresAt, reference: null, idempotencyKey: `sweep-${randomUUID()}` });
      const { rows: batches } = await services.pool.query(`SELECT id FROM credit_batches WHERE account_id = $1 AND type = 'FREE'`, [accountId]);
      const expireJob = `expire-due-batch-${batches[0].id}-${expiresAt.getTime()}`;
      await expect.poll(() => started.queue.getJobState(expireJob), { timeout: 20_000, interval: 50 }).toBe('completed');
      const expireEntries = async () => (await services.pool.query(`SELECT amount_micro_credits::text AS amount FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE'`, [accountId])).rows.map((r) => r.amount as string);
      expect(await expireEntries()).toEqual([]);

      // Its clock passes the expiry; a sweep-due run takes the account and waits for the test's lock.
      await services.pool.query(`UPDATE accounts SET test_clock_at = '2026-01-17T00:00:00.000Z' WHERE id = $1`, [accountId]);
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
      const jobId = `sweep-sigterm-${randomUUID()}`;
      await maintenance.add(SWEEP_DUE_JOB, {}, { jobId });
      await started.heldByLock();
      expect(await maintenance.getJobState(jobId)).toBe('active');

      await stopPastGrace(started, async () => void (await holder.query('ROLLBACK')));
      expect((await expireEntries()).length).toBeLessThanOrEqual(1);
      expect(await maintenance.getJobState(jobId)).toBe('active');

      // The next sweep (the stalled check's re-run, or the next scheduled one) is the same processor.
      const sink = createQueueJobSink(connection, started.prefix);
      try {
        await processSweepDue({ services, log: pino({ level: 'silent' }), env: parseEnv({}) }, sink);
        await processSweepDue({ services, log: pino({ level: 'silent' }), env: parseEnv({}) }, sink);
      } finally {
        await sink.close();
      }
      expect(await expireEntries()).toEqual(['-5000000']);
      await expectLedgerInvariant(services.pool, accountId);
    } finally {
      holder.release();
      await maintenance.obliterate({ force: true }).catch(() => undefined);
      await maintenance.close();
      connection.disconnect();
      await started.dispose();
    }
  });
});
