/**
 * The maintenance worker on real Redis (BullMQ, a unique queue prefix per run) and the real
 * database: a reconcile-ledger job finds an account whose ledger no longer sums to its balance;
 * the analyze-stale-tables job is scheduled (or not) as STATISTICS_UPKEEP_EVERY_MS says and runs.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Queue, QueueEvents } from 'bullmq';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { startWorkers, type RunningWorkers } from '../../workers/start.js';
import { parseEnv } from '../../src/config/env.js';
import { ANALYZE_STALE_TABLES_JOB, MAINTENANCE_QUEUE, RECONCILE_LEDGER_JOB } from '../../src/queues/names.js';
import { readStatisticsSettings, type StatisticsUpkeep } from '../../src/db/statistics.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import type { ReconcileJobResult } from '../../workers/processors/reconcile-ledger.js';

const prefix = `cp-test-${randomUUID()}`;
let services: TestServices;
let workers: RunningWorkers;
let connection: Redis;
let queue: Queue;
let events: QueueEvents;

beforeAll(async () => {
  services = createTestServices(4);
  workers = await startWorkers({ env: parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: 'postgresql://unused/unused' }), pool: services.pool, log: pino({ level: 'silent' }), prefix, services, relay: false });
  connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix });
  events = await queueEventsFromNow(MAINTENANCE_QUEUE, prefix);
});

afterAll(async () => {
  await workers.close();
  await queue.obliterate({ force: true });
  await queue.close();
  await events.close();
  connection.disconnect();
  await services.close();
});

async function runReconcile(): Promise<ReconcileJobResult> {
  const job = await queue.add(RECONCILE_LEDGER_JOB, { lookbackSeconds: 3600 });
  return (await job.waitUntilFinished(events, 30_000)) as ReconcileJobResult;
}

describe('analyze-stale-tables job', () => {
  it('is scheduled at boot, runs on the worker by the server\'s settings, and is unscheduled with STATISTICS_UPKEEP_EVERY_MS=0', async () => {
    expect((await queue.getJobSchedulers()).find((s) => s.key === ANALYZE_STALE_TABLES_JOB)).toMatchObject({ every: 15_000 });
    const job = await queue.add(ANALYZE_STALE_TABLES_JOB, {});
    const upkeep = (await job.waitUntilFinished(events, 30_000)) as StatisticsUpkeep;
    const settings = await readStatisticsSettings(services.pool);
    expect(upkeep.outcome).toBe(settings.trackCounts !== 'on' ? 'no-track-counts' : settings.autovacuum === 'on' ? 'autovacuum-on' : 'analyzed');
    const off = await startWorkers({
      env: parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: 'postgresql://unused/unused', STATISTICS_UPKEEP_EVERY_MS: '0' }),
      pool: services.pool,
      log: pino({ level: 'silent' }),
      prefix,
      services,
      relay: false,
    });
    await off.close();
    const keys = (await queue.getJobSchedulers()).map((s) => s.key);
    expect(keys).toContain(RECONCILE_LEDGER_JOB);
    expect(keys).not.toContain(ANALYZE_STALE_TABLES_JOB);
  });
});

describe('reconcile-ledger worker', () => {
  it('re-creates its job scheduler at boot', async () => {
    const schedulers = await queue.getJobSchedulers();
    expect(schedulers.map((s) => s.key)).toContain(RECONCILE_LEDGER_JOB);
  });

  it('reports consistent accounts as such, and an account whose ledger was tampered with as inconsistent', async () => {
    const good = await createFundedAccount(services, { paid: 5 });
    const bad = await createFundedAccount(services, { paid: 5 });
    let report = await runReconcile();
    expect(report.checked).toBeGreaterThanOrEqual(2);
    expect(report.inconsistent.map((r) => r.accountId)).not.toContain(good);
    expect(report.inconsistent.map((r) => r.accountId)).not.toContain(bad);
    // Tamper with the journal behind the ledger's back (no balance change, so the trigger is not involved).
    await services.pool.query(
      `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, note)
       VALUES (gen_random_uuid(), $1, 'ADJUST', 1, 5000001, 'tampered')`,
      [bad],
    );
    // Changed last of all accounts: the job checks the 1,000 changed most recently, and other test
    // files leave accounts whose changes are dated ahead of now (test clocks, a server clock ahead).
    await services.pool.query(
      `UPDATE balances SET updated_at = GREATEST(now(), (SELECT max(updated_at) FROM balances)) + interval '1 millisecond' WHERE account_id = $1`,
      [bad],
    );
    report = await runReconcile();
    const found = report.inconsistent.find((r) => r.accountId === bad);
    expect(found).toMatchObject({ total: '5', batchRemaining: '5', ledgerSum: '5.000001' });
    expect(report.inconsistent.map((r) => r.accountId)).not.toContain(good);
  });
});
