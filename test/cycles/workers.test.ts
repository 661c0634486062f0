/**
 * Time-driven work on the wall clock, through the real workers (BullMQ on real Redis, a unique
 * queue prefix): a batch's delayed expire-due job enqueued by the outbox relay removes it at its
 * expiresAt; when the job is lost (queue emptied), the sweep finds and does the work.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { pino } from 'pino';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { startWorkers, UNKNOWN_JOB_RETRY_MS, type RunningWorkers } from '../../workers/start.js';
import { processSweepDue } from '../../workers/processors/sweep-due.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { LEDGER_JOBS_QUEUE } from '../../src/queues/names.js';
import { parseEnv } from '../../src/config/env.js';
import { createFundedAccount } from '../factories/accounts.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits, MAX_ABS_MICRO_CREDITS } from '../../src/ledger/credits.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { createCreditPack } from '../../src/services/credit-packs.js';
import { attachPaymentMethod, purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { createPaymentProvider } from '../../src/payments/index.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { ok, uniq, dbId } from '../api/helpers.js';
import { BALANCE_SUB, wsSubscribe } from '../live/helpers.js';

const prefix = `cp-test-${randomUUID()}`;
let srv: TestServer;
let workers: RunningWorkers;
let services: TestServices;

beforeAll(async () => {
  srv = await startTestServer({ QUEUE_PREFIX: prefix });
  services = createTestServices(4);
  const env = parseEnv({ DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: TEST_REDIS_URL, QUEUE_PREFIX: prefix, LOG_LEVEL: 'silent', SWEEP_EVERY_MS: '60000' });
  workers = await startWorkers({ env, pool: services.pool, log: pino({ level: 'silent' }), services, relay: false });
});

afterAll(async () => {
  await workers.close();
  await workers.ledgerQueue.obliterate({ force: true }).catch(() => undefined);
  await srv.close();
  await services.close();
});

describe('expiry by the workers', () => {
  it("a batch's delayed job expires it at expiresAt, and the live credit bar shows it", async () => {
    const id = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
        input: { externalId: uniq('wall'), name: 'wall clock', kind: 'ORGANIZATION', welcomeBonus: false },
      }),
    ).createAccount.id;
    // The grant is made at `now` (the server's clock pinned for it): a past expiresAt is refused,
    // and a loaded machine can take longer than 1.5 s from here to the grant's transaction. The
    // expiry job still runs in real time: at expiresAt, or at once when the grant came later.
    const now = new Date();
    const expiresAt = new Date(now.getTime() + 1_500).toISOString();
    srv.services.setNow(now);
    try {
      ok(await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, { input: { accountId: id, amount: '5', type: 'FREE', source: 'PROMO_CODE', idempotencyKey: uniq('g'), expiresAt } }));
    } finally {
      srv.services.setNow(null);
    }
    const bar = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, BALANCE_SUB, { id });
    try {
      await bar.waitFor((s) => s.events.length > 0 && s.events.at(-1).balanceChanged.total === '0', 'the expiry on the live bar', 20_000);
      const { rows } = await services.pool.query(`SELECT amount_micro_credits::text AS amount, created_at FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE'`, [dbId(id)]);
      expect(rows).toEqual([{ amount: '-5000000', created_at: new Date(expiresAt) }]);
      await expectLedgerInvariant(services.pool, dbId(id));
    } finally {
      await bar.dispose();
    }
  });

  it('when the jobs are lost (queue emptied, as after a Redis flush), the sweep does what is due, once', async () => {
    const accountId = await createFundedAccount(services, { paid: 1 });
    const now = new Date();
    await grantCredits(services, { accountId, amountMicroCredits: credits(7), type: 'FREE', source: 'PROMO_CODE', expiresAt: new Date(now.getTime() + 3_600_000), reference: null, idempotencyKey: 'soon' });
    await srv.services.pool.query('SELECT 1'); // the server's relay enqueues the job; empty the queue whatever it holds
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const queue = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
    await queue.obliterate({ force: true });
    const sink = createQueueJobSink(connection, prefix);
    const later = createTestServices(2);
    later.setNow(new Date(now.getTime() + 2 * 3_600_000));
    try {
      const deps = { services: later, log: pino({ level: 'silent' }), env: parseEnv({}) };
      const first = await processSweepDue(deps, sink);
      expect(first.expiredAccounts).toBeGreaterThanOrEqual(1);
      await processSweepDue(deps, sink);
      const { rows } = await services.pool.query(`SELECT amount_micro_credits::text AS amount FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE'`, [accountId]);
      expect(rows).toEqual([{ amount: '-7000000' }]);
      await expectLedgerInvariant(services.pool, accountId);
    } finally {
      await later.close();
      await sink.close();
      await queue.close();
      connection.disconnect();
    }
  });

  it('the sweep re-adds a job whose id is kept as failed (a plain add would be ignored), so the work resumes', async () => {
    const accountId = await createFundedAccount(services, { paid: 1 });
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const events = await queueEventsFromNow(LEDGER_JOBS_QUEUE, prefix);
    const sink = createQueueJobSink(connection, prefix);
    try {
      const jobId = `expire-due-test-${randomUUID()}`;
      const failed = new Promise<void>((resolve) => events.on('failed', ({ jobId: id }) => id === jobId && resolve()));
      await sink.add([{ name: 'expire-due', jobId, data: { accountId: 'not-a-uuid' } }]); // a payload the processor refuses for good
      await failed;
      await sink.add([{ name: 'expire-due', jobId, data: { accountId } }]);
      expect(await (await sink.queue.getJob(jobId))!.getState()).toBe('failed');
      const completed = new Promise<void>((resolve) => events.on('completed', ({ jobId: id }) => id === jobId && resolve()));
      await sink.readd([{ name: 'expire-due', jobId, data: { accountId } }]);
      await completed;
      expect((await sink.queue.getJob(jobId))!.data).toEqual({ accountId });
    } finally {
      await events.close();
      await sink.close();
      connection.disconnect();
    }
  });
});

describe('job names this version does not know', () => {
  it("a ledger job of an unknown name (a newer version's, during a rolling upgrade) goes back to the queue delayed, without spending an attempt, instead of failing for good", async () => {
    const events = await queueEventsFromNow(LEDGER_JOBS_QUEUE, prefix);
    try {
      const jobId = `send-invoice-test-${randomUUID()}`;
      // Whichever comes first: put back (delayed) or failed for good.
      const outcome = new Promise<string>((resolve) => {
        events.on('delayed', ({ jobId: id }) => id === jobId && resolve('delayed'));
        events.on('failed', ({ jobId: id }) => id === jobId && resolve('failed'));
      });
      const added = Date.now();
      await workers.ledgerQueue.add('send-invoice', { accountId: randomUUID() }, { jobId, attempts: 3 });
      expect(await outcome).toBe('delayed');
      const job = (await workers.ledgerQueue.getJob(jobId))!;
      expect(await job.getState()).toBe('delayed');
      expect(job.attemptsMade).toBe(0);
      expect(job.timestamp + job.delay).toBeGreaterThanOrEqual(added + UNKNOWN_JOB_RETRY_MS - 5_000);
      await job.remove();
    } finally {
      await events.close();
    }
  });
});

describe('a job of a known name with a payload its processor cannot parse', () => {
  it('fails at its first attempt, not retried (bad payload), instead of spending its attempts or looping', async () => {
    const events = await queueEventsFromNow(LEDGER_JOBS_QUEUE, prefix);
    try {
      const jobId = `auto-top-up-malformed-${randomUUID()}`;
      const failed = new Promise<string>((resolve) => events.on('failed', ({ jobId: id, failedReason }) => id === jobId && resolve(failedReason)));
      await workers.ledgerQueue.add('auto-top-up', { topUpId: 'not-a-uuid' }, { jobId, attempts: 3, backoff: { type: 'exponential', delay: 1 } });
      expect(await failed).toMatch(/^bad payload: /);
      const job = (await workers.ledgerQueue.getJob(jobId))!;
      expect(await job.getState()).toBe('failed');
      expect(job.attemptsMade).toBe(1);
      await job.remove();
    } finally {
      await events.close();
    }
  });
});

describe('the sweep', () => {
  it('an account whose roll fails on every run (its plan grant refused at the 64-bit balance limit) does not stop the sweep: a purchase left pending on another account still gets its resume job', async () => {
    const start = new Date();
    const tag = randomUUID().slice(0, 8);
    // A: a ROLLOVER plan of 1,000 credits on an account 500 credits short of the limit: the next
    // period's grant is refused (BAD_USER_INPUT, BALANCE_LIMIT), by design, on every try.
    const plan = await createPlan(services, { name: `near-limit-${tag}`, monthlyMicroCredits: credits(1_000), rollover: 'ROLLOVER', rolloverCapMicroCredits: null, priceUsd: '0' });
    const full = await createFundedAccount(services, {});
    await subscribeToPlan(services, full, plan.id);
    await grantCredits(services, { accountId: full, amountMicroCredits: MAX_ABS_MICRO_CREDITS - credits(1_500), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'near-limit' });
    // B: a pack purchase whose provider never answered: PENDING, its client never retries.
    const buying = { ...services, payments: createPaymentProvider(parseEnv({})) };
    const buyer = await createFundedAccount(services, {});
    await attachPaymentMethod(buying, buyer, `pm_timeout_${tag}`);
    const pack = await createCreditPack(services, { name: `sweep-pack-${tag}`, microCredits: credits(10), bonusMicroCredits: 0n, priceUsd: '1', expiresAfterDays: null });
    await expect(purchaseCreditPack(buying, { accountId: buyer, packId: pack.id, idempotencyKey: 'never-retried' })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    const { rows: payments } = await services.pool.query(`SELECT id FROM payments WHERE account_id = $1 AND status = 'PENDING'`, [buyer]);
    expect(payments).toHaveLength(1);
    const grantedPeriodStart = async () =>
      ((await services.pool.query(`SELECT granted_period_start FROM plan_subscriptions WHERE account_id = $1`, [full])).rows[0].granted_period_start as Date).getTime();
    const firstPeriodStart = await grantedPeriodStart();
    expect(firstPeriodStart).toBeGreaterThanOrEqual(start.getTime());

    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const sink = createQueueJobSink(connection, prefix);
    const later = createTestServices(2);
    later.setNow(new Date(start.getTime() + 40 * 86_400_000)); // A's next period has begun; B's payment is long overdue
    try {
      const deps = { services: later, log: pino({ level: 'silent' }), env: parseEnv({}) };
      // Before the fix this threw A's BALANCE_LIMIT, before the re-adds, on every run.
      const result = await processSweepDue(deps, sink);
      expect(result.failedAccounts).toBeGreaterThanOrEqual(1);
      const job = await sink.queue.getJob(`resume-payment-${payments[0].id}`);
      expect(job?.name).toBe('resume-payment');
      expect(job?.data).toEqual({ paymentId: payments[0].id, accountId: buyer });
      // A is untouched (the refused roll changed nothing) and is tried again next run.
      // (Compared with its value before the sweep, not with `start` + 1 s: the subscription came
      // some time after `start`, longer than 1 s on a loaded machine.)
      expect(await grantedPeriodStart()).toBe(firstPeriodStart);
      await expectLedgerInvariant(services.pool, full);
    } finally {
      await later.close();
      await sink.close();
      connection.disconnect();
    }
  });
});

