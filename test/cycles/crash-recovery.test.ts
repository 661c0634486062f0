/**
 * Crash safety of the workers (real processes, real PostgreSQL, a private Redis the test
 * flushes): a worker process killed with SIGKILL in the middle of a burst of due expiries and
 * restarted, and a Redis that loses every job and schedule while the workers are down, both end
 * with everything due done exactly once (one EXPIRE entry per batch, the ledger invariant holds).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { startPrivateRedis, type PrivateRedis } from '../setup/private-redis.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { createFundedAccount } from '../factories/accounts.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { ROOT } from '../../demo/server-process.js';

let redis: PrivateRedis;
let services: TestServices;
const children = new Set<ChildProcess>();

/** Starts `workers/main.ts`; resolves once it logged "creditpool workers ready". */
function startWorkerProcess(prefix: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'workers/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: redis.url, QUEUE_PREFIX: prefix, SWEEP_EVERY_MS: '500', OUTBOX_POLL_INTERVAL_MS: '100', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('creditpool workers ready')) resolve(child);
    });
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => reject(new Error(`workers exited (${code}) before ready:\n${out.slice(-3000)}`)));
  });
}

function kill9(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/**
 * Resolves when `done()` holds, checking after every message the workers publish on Redis (each
 * committed change is published), plus a final check; rejects after `timeoutMs`.
 */
async function until(done: () => Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const sub = new Redis(redis.url);
  try {
    await sub.psubscribe('*');
    const deadline = Date.now() + timeoutMs;
    while (!(await done())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 250); // also re-check now and then: a message may precede our subscription
        sub.once('pmessage', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  } finally {
    sub.disconnect();
  }
}

async function dueBatches(accounts: string[], expiresInMs: number): Promise<void> {
  // The grants are made at `now` (the services' clock pinned for them): a past expiresAt is
  // refused, and on a loaded machine the last of the concurrent grants may come after a short
  // `expiresInMs`. The jobs still run in real time (a grant that came late: its job at once).
  const now = new Date();
  const at = new Date(now.getTime() + expiresInMs);
  services.setNow(now);
  try {
    await Promise.all(
      accounts.map((accountId) =>
        grantCredits(services, { accountId, amountMicroCredits: credits(3), type: 'FREE', source: 'PROMO_CODE', expiresAt: at, reference: null, idempotencyKey: `due-${at.getTime()}` }),
      ),
    );
  } finally {
    services.setNow(null);
  }
}

async function expiredCount(accounts: string[]): Promise<{ expired: number; entries: number }> {
  const { rows } = await services.pool.query(
    `SELECT (SELECT count(*) FROM credit_batches WHERE account_id = ANY($1) AND type = 'FREE' AND status = 'EXPIRED')::int AS expired,
            (SELECT count(*) FROM ledger_entries WHERE account_id = ANY($1) AND type = 'EXPIRE')::int AS entries`,
    [accounts],
  );
  return rows[0];
}

beforeAll(async () => {
  redis = await startPrivateRedis();
  services = createTestServices(8);
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await services.close();
  await redis.stop();
});

describe('worker crash safety', () => {
  it('kill -9 of a worker in the middle of 150 due expiries, then a restart: each batch expires exactly once', async () => {
    const prefix = `cp-crash-${randomUUID()}`;
    const accounts = await Promise.all(Array.from({ length: 150 }, () => createFundedAccount(services, { paid: 1 })));
    let worker = await startWorkerProcess(prefix);
    await dueBatches(accounts, 4_000); // due together, 4 s after the grants' instant
    await until(async () => (await expiredCount(accounts)).expired > 0, 'the first expiries');
    await kill9(worker);
    const atKill = await expiredCount(accounts);
    worker = await startWorkerProcess(prefix);
    await until(async () => (await expiredCount(accounts)).expired === accounts.length, 'every batch expired');
    const end = await expiredCount(accounts);
    expect(end).toEqual({ expired: 150, entries: 150 });
    expect(atKill.expired).toBeLessThanOrEqual(150);
    for (const a of accounts.slice(0, 20)) await expectLedgerInvariant(services.pool, a);
    await kill9(worker);
  });

  it('Redis flushed while the workers are down: the boot-time schedulers and the sweep recover everything due', async () => {
    const prefix = `cp-flush-${randomUUID()}`;
    const accounts = await Promise.all(Array.from({ length: 30 }, () => createFundedAccount(services, { paid: 1 })));
    let worker = await startWorkerProcess(prefix);
    await dueBatches(accounts, 60_000); // delayed jobs, one minute away
    const admin = new Redis(redis.url);
    try {
      // The relay has moved every outbox row into delayed jobs on Redis ...
      await until(async () => (await services.pool.query(`SELECT count(*)::int AS n FROM outbox_events WHERE topic = 'job' AND account_id = ANY($1)`, [accounts])).rows[0].n === 0, 'the relay');
      await kill9(worker);
      // ... and Redis loses all of them, with the job schedulers.
      await admin.flushall();
      expect(await admin.dbsize()).toBe(0);
    } finally {
      admin.disconnect();
    }
    // Make the batches due now (as if the minute had passed while everything was down).
    await services.pool.query(`UPDATE credit_batches SET expires_at = added_at + interval '1 millisecond' WHERE account_id = ANY($1) AND type = 'FREE' AND status = 'ACTIVE'`, [accounts]);
    worker = await startWorkerProcess(prefix);
    await until(async () => (await expiredCount(accounts)).expired === accounts.length, 'the sweep to expire everything');
    expect(await expiredCount(accounts)).toEqual({ expired: 30, entries: 30 });
    for (const a of accounts.slice(0, 10)) await expectLedgerInvariant(services.pool, a);
    await kill9(worker);
  });
});
