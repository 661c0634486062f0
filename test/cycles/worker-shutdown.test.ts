/**
 * Graceful stop of the workers process (workers/main.ts) as a deploy does it (SIGTERM), with real
 * processes on the test PostgreSQL: during its boot while Redis is unreachable, and while a job is
 * in the middle of its transaction (held there by a row lock the test takes, not by timing).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { exitedWithin, startScript, type TimedExit } from '../setup/run-script.js';
import { startPrivateRedis, type PrivateRedis } from '../setup/private-redis.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { rerunStalledJob, startWorkersProcess } from '../setup/workers-process.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { createFundedAccount } from '../factories/accounts.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';

let redis: PrivateRedis;
let services: TestServices;

beforeAll(async () => {
  redis = await startPrivateRedis();
  services = createTestServices(3);
});

afterAll(async () => {
  await services?.close();
  await redis?.stop();
});

describe('SIGTERM while the workers process boots', () => {
  it('waiting for an unreachable Redis: it logs the stop and exits 0 instead of being killed by the signal', async () => {
    await redis.kill();
    const workers = startScript('workers/main.ts', [], { ...process.env, DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: redis.url, LOG_LEVEL: 'info', QUEUE_PREFIX: 'cp-test-boot-stop' });
    try {
      // Its Redis connection failed at least once: the boot waits for Redis in startWorkers.
      await workers.waitForOutput('workers: redis error');
      expect(workers.stdout()).not.toContain('creditpool workers ready');
      workers.child.kill('SIGTERM');
      const run = await workers.exited;
      // Before the fix: no handler yet, so Node's default action killed it (signal SIGTERM, nothing logged).
      expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
      expect(run.stdout).toContain('stopping workers');
      expect(run.stderr).toBe('');
    } finally {
      if (workers.child.exitCode === null && workers.child.signalCode === null) workers.child.kill('SIGKILL');
      await redis.start();
    }
  });
});

/**
 * A workers process (own queue prefix, SHUTDOWN_GRACE_MS `graceMs`) past its boot's sweep, an
 * account with a FREE batch of 5 credits expiring 1.5 s later, its balance row locked by the test,
 * and the batch's expire-due job (enqueued by the workers' relay) started and waiting for that lock.
 */
async function jobHeldMidway(graceMs: number, env: NodeJS.ProcessEnv = {}) {
  const started = await startWorkersProcess(services.pool, graceMs, env);
  const { workers, queue, prefix } = started;
  let holder: pg.PoolClient | null = null;
  const dispose = async () => {
    holder?.release();
    await started.dispose();
  };
  try {
    return await heldAfterBoot();
  } catch (err) {
    await dispose();
    throw err;
  }

  /** The rest of the set-up (on a failure the caller disposes of what was started). */
  async function heldAfterBoot() {
    const accountId = await createFundedAccount(services, { paid: 1 });
    // Granted at `now` (the services' clock pinned for it): a past expiresAt is refused, and a
    // loaded machine can take longer than 1.5 s to reach the grant's transaction.
    const now = new Date();
    const expiresAt = new Date(now.getTime() + 1_500);
    services.setNow(now);
    try {
      await grantCredits(services, { accountId, amountMicroCredits: credits(5), type: 'FREE', source: 'PROMO_CODE', expiresAt, reference: null, idempotencyKey: `expiring-${randomUUID()}` });
    } finally {
      services.setNow(null);
    }
    const client = await services.pool.connect();
    holder = client;
    await client.query('BEGIN');
    await client.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
    const { rows } = await services.pool.query(`SELECT id FROM credit_batches WHERE account_id = $1 AND type = 'FREE'`, [accountId]);
    const jobId = `expire-due-batch-${rows[0].id}-${expiresAt.getTime()}`;
    // The workers' relay enqueued the job, and at expiresAt a worker took it: it waits for the lock.
    await started.heldByLock();
    expect(await queue.getJobState(jobId)).toBe('active');
    return {
      accountId,
      jobId,
      started,
      prefix,
      queue,
      workers,
      holder: client,
      async expireEntries() {
        const { rows: entries } = await services.pool.query(`SELECT amount_micro_credits::text AS amount FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE'`, [accountId]);
        return entries.map((e) => e.amount as string);
      },
      dispose,
    };
  }
}

describe('SIGTERM while a job is in the middle of its transaction', () => {
  it('within SHUTDOWN_GRACE_MS: the stop waits for the job, which expires the batch once and is recorded completed, then exits 0', async () => {
    const held = await jobHeldMidway(20_000);
    try {
      held.workers.child.kill('SIGTERM');
      await held.workers.waitForOutput('stopping workers');
      expect(await held.queue.getJobState(held.jobId)).toBe('active');
      await held.holder.query('ROLLBACK');
      const run = await held.workers.exited;
      expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
      expect(run.stdout).not.toContain('did not let the workers close in time');
      expect(await held.queue.getJobState(held.jobId)).toBe('completed');
      expect(await held.expireEntries()).toEqual(['-5000000']);
      await expectLedgerInvariant(services.pool, held.accountId);
    } finally {
      await held.dispose();
    }
  });

  it('past SHUTDOWN_GRACE_MS: the Redis connections are dropped with the job unfinished; its transaction still commits, and the re-run by the stalled check expires nothing more', async () => {
    const held = await jobHeldMidway(500);
    try {
      held.workers.child.kill('SIGTERM');
      await held.workers.waitForOutput('did not let the workers close in time');
      await held.holder.query('ROLLBACK');
      const run = await held.workers.exited;
      expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
      // The job's transaction committed (the pool was ended after it) but its completion never reached Redis.
      expect(await held.expireEntries()).toEqual(['-5000000']);
      expect(await held.queue.getJobState(held.jobId)).toBe('active');

      // The stalled check of the next worker re-runs it (workers-process.ts rerunStalledJob).
      expect(await rerunStalledJob(services, held.prefix, held.jobId)).toEqual({ batches: 0, holds: 0, expiredMicroCredits: '0' });
      expect(await held.expireEntries()).toEqual(['-5000000']);
      await expectLedgerInvariant(services.pool, held.accountId);
    } finally {
      await held.dispose();
    }
  });

  it('stuck past SHUTDOWN_GRACE_MS (its lock never released): the process exits at the deadline, not at the statement timeout, with a log line naming the job; its transaction is rolled back and the stalled-check re-run expires the batch once', async () => {
    const graceMs = 1_000;
    // A statement timeout far beyond the test: before the fix the stop waited for it (the pool's end
    // waits for the job's session, which waits for the test's lock).
    const held = await jobHeldMidway(graceMs, { PG_STATEMENT_TIMEOUT_MS: '120000' });
    try {
      const sent = Date.now();
      held.workers.child.kill('SIGTERM');
      // The grace period, then at most STUCK_WORK_WAIT_MS (2 s) for the cut work to end, and the
      // bounded Redis closes: far less than grace + 8 s. Raced against that bound, not slept.
      const outcome = await exitedWithin(held.workers, sent, graceMs + 8_000);
      expect(outcome, held.workers.stdout()).not.toBe('still running');
      const { run, elapsedMs } = outcome as TimedExit;
      expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
      expect(elapsedMs).toBeGreaterThanOrEqual(graceMs);
      const line = run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; jobs?: { queue: string; name: string; id: string }[] }).find((l) => l.msg.includes('did not let the workers close in time'));
      expect(line?.jobs).toEqual([{ queue: 'ledger-jobs', name: 'expire-due', id: held.jobId, runningMs: expect.any(Number) }]);
      // Its session was ended with the process (not left waiting for the lock, holding what it had
      // locked, until the statement timeout) ...
      const { rows } = await services.pool.query(`SELECT COUNT(*)::int AS n FROM pg_stat_activity WHERE application_name = $1`, [held.started.applicationName]);
      expect(rows[0].n).toBe(0);
      await held.holder.query('ROLLBACK');
      // ... so its transaction was rolled back: nothing expired, and the job is left active.
      expect(await held.expireEntries()).toEqual([]);
      expect(await held.queue.getJobState(held.jobId)).toBe('active');

      expect(await rerunStalledJob(services, held.prefix, held.jobId)).toEqual({ batches: 1, holds: 0, expiredMicroCredits: '5000000' });
      expect(await held.expireEntries()).toEqual(['-5000000']);
      await expectLedgerInvariant(services.pool, held.accountId);
    } finally {
      await held.dispose();
    }
  });
});
