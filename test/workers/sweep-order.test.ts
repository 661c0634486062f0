/**
 * The `sweep-due` maintenance job under a backlog larger than what one run handles
 * (workers/processors/sweep-due.ts, `maxAccountsPerRun`): each run takes the accounts that have
 * waited longest first (expiries: the oldest expiresAt due; rolls: the oldest period granted), and
 * the next run takes the rest. Without an order a run took whichever due accounts the plan
 * returned first, so under a steady backlog an account could wait for any number of runs.
 *
 * The cap is passed to the sweep (2 here instead of the default 5,000), and the accounts live in
 * 2001 on the services' clock, so nothing another test file left behind (dated at the real now)
 * is due at the sweep's now. Each kind's accounts are created newest-due first, with their ids
 * sorted the other way, so neither insertion order nor id order gives the right answer by luck.
 * Each run is judged by this test's own accounts' rows (their EXPIRE entries, their granted period
 * and plan grants), never by the run's counts: the sweep reads the whole shared test database,
 * where an account another file makes due meanwhile (a test-mode account's clock, a roll) is
 * counted too, or fails and counts as failed.
 *
 * Two sweeps at once (a run longer than SWEEP_EVERY_MS, several worker processes) may re-add the
 * same failed job: the one that comes second finds it already re-added and running, which is what
 * it wanted, and goes on (it used to fail its whole run on BullMQ's "locked by another worker").
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { UnrecoverableError, Worker } from 'bullmq';
import { pino } from 'pino';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { parseEnv } from '../../src/config/env.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { LEDGER_JOBS_QUEUE, type OutboxJob } from '../../src/queues/names.js';
import { processSweepDue } from '../../workers/processors/sweep-due.js';
import { createFundedAccount } from '../factories/accounts.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { expectLedgerInvariant } from '../setup/invariant.js';

const DAY_MS = 86_400_000;
const prefix = `cp-test-${randomUUID()}`;
let services: TestServices;
let connection: Redis;
let sink: ReturnType<typeof createQueueJobSink>;

beforeAll(() => {
  services = createTestServices(4);
  connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  sink = createQueueJobSink(connection, prefix);
});

afterAll(async () => {
  await sink.queue.obliterate({ force: true }).catch(() => undefined);
  await sink.close();
  connection.disconnect();
  await services.close();
});

/** One sweep at `now` handling at most `maxAccountsPerRun` accounts per kind. */
async function sweepAt(now: Date, maxAccountsPerRun: number) {
  services.setNow(now);
  try {
    return await processSweepDue({ services, log: pino({ level: 'silent' }), env: parseEnv({}) }, sink, { maxAccountsPerRun });
  } finally {
    services.setNow(null);
  }
}

/** `n` accounts created at `at`, ids in ascending order. */
async function accountsAt(at: Date, n: number): Promise<string[]> {
  services.setNow(at);
  try {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push(await createFundedAccount(services, {}));
    return ids.sort();
  } finally {
    services.setNow(null);
  }
}

/** `accountId`'s plan grants (one at subscribing, one per period rolled). */
async function planGrants(accountId: string): Promise<number> {
  const { rows } = await services.pool.query(`SELECT count(*)::int AS n FROM credit_batches WHERE account_id = $1 AND source = 'SUBSCRIPTION'`, [accountId]);
  return rows[0].n;
}

async function expiredCount(accountId: string): Promise<number> {
  const { rows } = await services.pool.query(`SELECT count(*)::int AS n FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE'`, [accountId]);
  return rows[0].n;
}

describe('sweep-due under a backlog larger than one run', () => {
  it('expiries: the accounts whose credit expired longest ago go first, the next run takes the rest', async () => {
    const created = new Date('2001-01-01T00:00:00.000Z');
    // ids ascending; the lowest id gets the latest expiry, and is granted first.
    const ids = await accountsAt(created, 4);
    const expiresAt = (i: number) => new Date(created.getTime() + (10 - i) * DAY_MS); // ids[3] expires first
    services.setNow(created);
    try {
      for (let i = 0; i < ids.length; i++) {
        await grantCredits(services, { accountId: ids[i]!, amountMicroCredits: credits(3), type: 'FREE', source: 'PROMO_CODE', expiresAt: expiresAt(i), reference: null, idempotencyKey: 'due' });
      }
    } finally {
      services.setNow(null);
    }
    const sweepNow = new Date(created.getTime() + 20 * DAY_MS);

    await sweepAt(sweepNow, 2);
    expect(await Promise.all(ids.map(expiredCount))).toEqual([0, 0, 1, 1]);

    await sweepAt(sweepNow, 2);
    expect(await Promise.all(ids.map(expiredCount))).toEqual([1, 1, 1, 1]);
    // Each expiry is dated at its batch's expiresAt, however late the sweep ran.
    for (let i = 0; i < ids.length; i++) {
      const { rows } = await services.pool.query(`SELECT created_at FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE'`, [ids[i]]);
      expect(rows[0].created_at).toEqual(expiresAt(i));
      await expectLedgerInvariant(services.pool, ids[i]!);
    }
    // A third run has nothing of this test's left: none of its accounts is expired again.
    await sweepAt(sweepNow, 2);
    expect(await Promise.all(ids.map(expiredCount))).toEqual([1, 1, 1, 1]);
  });

  it('billing periods: the subscriptions whose roll has waited longest go first, the next run takes the rest', async () => {
    const plan = await createPlan(services, { name: `sweep-order-${randomUUID().slice(0, 8)}`, monthlyMicroCredits: credits(10), rollover: 'ROLLOVER', rolloverCapMicroCredits: null, priceUsd: '0' });
    const base = new Date('2001-03-01T00:00:00.000Z');
    const ids = await accountsAt(base, 3);
    const subscribedAt = (i: number) => new Date(base.getTime() + (3 - i) * DAY_MS); // ids[2] subscribed first
    // Subscribed newest first, so the subscriptions' insertion order is the wrong one too.
    for (const i of [0, 1, 2]) {
      services.setNow(subscribedAt(i));
      try {
        await subscribeToPlan(services, ids[i]!, plan.id);
      } finally {
        services.setNow(null);
      }
    }
    const granted = async () =>
      Promise.all(
        ids.map(async (id) => {
          const { rows } = await services.pool.query('SELECT granted_period_start FROM plan_subscriptions WHERE account_id = $1', [id]);
          return (rows[0].granted_period_start as Date).toISOString();
        }),
      );
    const sweepNow = new Date('2001-04-10T00:00:00.000Z'); // every account's second period has begun
    const rolledTo = (i: number) => new Date(Date.UTC(2001, 3, subscribedAt(i).getUTCDate())).toISOString();

    await sweepAt(sweepNow, 2);
    expect(await granted()).toEqual([subscribedAt(0).toISOString(), rolledTo(1), rolledTo(2)]);
    expect(await Promise.all(ids.map(planGrants))).toEqual([1, 2, 2]);

    await sweepAt(sweepNow, 2);
    expect(await granted()).toEqual([rolledTo(0), rolledTo(1), rolledTo(2)]);
    expect(await Promise.all(ids.map(planGrants))).toEqual([2, 2, 2]); // each rolled once, none twice
    for (const id of ids) await expectLedgerInvariant(services.pool, id);
  });
});

describe('two sweeps re-adding the same job', () => {
  it('the second finds the job the first re-added already running (locked): it leaves it and re-adds the rest, instead of failing its run', async () => {
    const jobId = `auto-top-up-${randomUUID()}`;
    const other = { name: 'auto-top-up', jobId: `auto-top-up-${randomUUID()}`, data: { topUpId: randomUUID(), accountId: randomUUID() } } as OutboxJob;
    const job = { name: 'auto-top-up', jobId, data: { topUpId: randomUUID(), accountId: randomUUID() } } as OutboxJob;
    let runs = 0;
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    // The job's first run fails for good (kept as failed, as a top-up whose attempts ran out);
    // its re-added run holds until released, so it is active (locked) while the second sweep acts.
    const workerConnection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const worker: Worker = new Worker(
      LEDGER_JOBS_QUEUE,
      async (j) => {
        if (j.id !== jobId) return;
        runs++;
        if (runs === 1) throw new UnrecoverableError('first run fails');
        started();
        await gate;
      },
      { connection: workerConnection, prefix },
    );
    const failedOnce = new Promise<void>((resolve) => worker.on('failed', (j) => j?.id === jobId && resolve()));
    const completed = new Promise<void>((resolve) => worker.on('completed', (j) => j.id === jobId && resolve()));
    const firstConnection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const first = createQueueJobSink(firstConnection, prefix);
    try {
      await sink.add([job]);
      await failedOnce;
      // Sweep B reads the job's state ('failed'); right then sweep A re-adds it and a worker takes
      // it. The hook only orders these real Redis operations: B's read returns what Redis said.
      const getJob = sink.queue.getJob.bind(sink.queue);
      sink.queue.getJob = async (id: string) => {
        const found = await getJob(id);
        if (found && id === jobId) {
          const getState = found.getState.bind(found);
          found.getState = async () => {
            const state = await getState();
            await first.readd([job]);
            await running;
            return state;
          };
        }
        return found;
      };
      try {
        await sink.readd([job, other]); // used to throw: Job … could not be removed because it is locked by another worker
      } finally {
        sink.queue.getJob = getJob;
      }
      expect(await (await sink.queue.getJob(jobId))!.getState()).toBe('active');
      expect(await (await sink.queue.getJob(other.jobId))!.getState()).not.toBe('unknown'); // the rest was re-added
      release();
      await completed;
      expect(runs).toBe(2); // the job ran once after its failure, not twice
    } finally {
      release();
      await worker.close();
      await first.close();
      firstConnection.disconnect();
      workerConnection.disconnect();
    }
  });
});
