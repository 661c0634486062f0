/**
 * The `sweep-due` job's finders (workers/processors/sweep-due.ts) cost about what is due, not
 * what exists. A platform with a million users, each with a welcome batch expiring in 30 days and
 * many on a plan, has almost nothing due at any sweep (every SWEEP_EVERY_MS, 30 s by default);
 * a finder that reads every account, batch or subscription to find those few reads the whole
 * platform twice a minute.
 *
 * Each test makes NOT_DUE accounts (an ACTIVE welcome batch expiring within 30 days, the
 * current period opened on the balance row, half of them on a plan with the current period
 * granted, a few in test mode with a test clock) and a handful of due ones with SQL, inside a
 * transaction on one connection of a ledger pool (generic plans: db/pg.ts LEDGER_SESSION_OPTIONS)
 * that is rolled back at the end, so no other test file sees them; ANALYZEs them there so the
 * plans are those of a database of that size; runs the finder RUNS times (the sixth execution is
 * on the generic plan) and counts the rows the transaction read from each table
 * (pg_stat_xact_user_tables, before and after: test/setup/rows-read.ts). The bound is per run
 * and a small fraction of NOT_DUE: a finder that reads the not-due accounts reads at least NOT_DUE
 * rows per run. The due accounts found, and their order, are those the finder's docs promise.
 *
 * The sweep's now is in 2001 (as in sweep-order.test.ts), so nothing other files leave behind
 * at the real now is due at it, except test-mode accounts, whose clocks are their own; rows of
 * those (counted before the run) are allowed for.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { findAccountsWithDueExpiries } from '../../src/services/expire-due.js';
import { findAccountsWithDuePeriods } from '../../src/services/plans.js';
import { findAccountsWithUnopenedPeriods } from '../../src/services/open-billing-period.js';
import { findUndeliveredWebhookJobs } from '../../src/services/webhooks.js';

const NOT_DUE = 20_000;
const TEST_MODE = 200;
const RUNS = 6;
const NOW = new Date('2001-03-15T12:00:00.000Z');
const HOUR_MS = 3_600_000;

let admin: TestServices;
/** Test-mode accounts other files left in the database (their rows are read by any finder that looks at test clocks). */
let otherTestMode = 0;

beforeAll(async () => {
  admin = createTestServices(1);
  const { rows } = await admin.pool.query('SELECT count(*)::int AS n FROM accounts WHERE test_mode');
  otherTestMode = rows[0].n as number;
});

afterAll(async () => {
  await admin.close();
});

/**
 * Inserts, on `c` (inside its open transaction), NOT_DUE accounts created over the 29 days
 * before NOW with their welcome batch (expiring 30 days after creation), TEST_MODE of them in
 * test mode with the clock a day after creation, every second one on a plan with the current
 * period granted (and its plan batch), balance rows with the current period opened; then the
 * `due` accounts' rows the test adds; then ANALYZE.
 */
async function seed(c: pg.PoolClient, due: () => Promise<void>): Promise<void> {
  await c.query(
    `INSERT INTO plans (id, name, monthly_micro_credits, rollover, price_usd)
     VALUES ('00000000-0000-4000-8000-00000000a5a5', 'sweep-scale-' || gen_random_uuid(), 1000000000, 'RESET', 10)`,
  );
  await c.query(
    `CREATE TEMP TABLE scale_accounts ON COMMIT DROP AS
     SELECT i, gen_random_uuid() AS id, $1::timestamptz - make_interval(secs => 3600 + (i * 2503) % (29 * 86400)) AS created,
            i % 2 = 0 AS planned, i <= $3 AS tmode
       FROM generate_series(1, $2::int) i`,
    [NOW, NOT_DUE, TEST_MODE],
  );
  await c.query(
    `INSERT INTO accounts (id, external_id, name, kind, test_mode, test_clock_at, created_at, billing_anchor_at, referral_code)
     SELECT id, 'sweep-scale-' || id, 'scale', 'USER', tmode, CASE WHEN tmode THEN created + interval '1 day' END, created, created, 'SS-' || id
       FROM scale_accounts`,
  );
  await c.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
     SELECT gen_random_uuid(), id, 'WELCOME_BONUS', 'FREE', 100000000, 'welcome', 'h', created FROM scale_accounts`,
  );
  await c.query(
    `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start)
     SELECT s.id, '00000000-0000-4000-8000-00000000a5a5', true, s.created, p.period_start
       FROM scale_accounts s, billing_period(s.created, CASE WHEN s.tmode THEN s.created + interval '1 day' ELSE $1::timestamptz END) p
      WHERE s.planned`,
    [NOW],
  );
  await c.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
     SELECT gen_random_uuid(), ps.account_id, 'SUBSCRIPTION', 'FREE', 1000000000, 'plan', 'h', ps.granted_period_start
       FROM plan_subscriptions ps JOIN scale_accounts s ON s.id = ps.account_id`,
  );
  await c.query(
    `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status, updated_at)
     SELECT gen_random_uuid(), g.account_id, g.id, g.type, g.source, g.amount_micro_credits, g.amount_micro_credits, g.created_at,
            CASE WHEN g.source = 'WELCOME_BONUS' THEN g.created_at + interval '30 days' ELSE p.period_end END, 'ACTIVE', g.created_at
       FROM credit_grants g JOIN scale_accounts s ON s.id = g.account_id,
            billing_period(s.created, CASE WHEN s.tmode THEN s.created + interval '1 day' ELSE $1::timestamptz END) p`,
    [NOW],
  );
  await c.query(
    `INSERT INTO balances (account_id, total_micro_credits, version, updated_at, opening_period_start, opening_total_micro_credits)
     SELECT s.id, (SELECT sum(remaining_micro_credits) FROM credit_batches b WHERE b.account_id = s.id), 1, s.created, p.period_start, 0
       FROM scale_accounts s, billing_period(s.created, CASE WHEN s.tmode THEN s.created + interval '1 day' ELSE $1::timestamptz END) p`,
    [NOW],
  );
  await due();
  await c.query('ANALYZE accounts, balances, credit_grants, credit_batches, plan_subscriptions, reservations');
}

/** Rows read so far by this transaction (and any unflushed earlier ones of the connection), by table. */
async function rowsRead(c: pg.PoolClient): Promise<Map<string, number>> {
  const { rows } = await c.query(`SELECT relname, COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) AS n FROM pg_stat_xact_user_tables`);
  return new Map(rows.map((r) => [r.relname as string, Number(r.n)]));
}

/**
 * Seeds (see {@link seed}) on a fresh connection of a one-connection ledger pool inside a
 * transaction, runs `find` RUNS times, and rolls back.
 * @returns what the last run found and the rows the runs read per table (per run, rounded up).
 */
async function measure(due: (c: pg.PoolClient) => Promise<void>, find: (db: pg.Pool) => Promise<string[]>): Promise<{ found: string[]; perRun: Record<string, number> }> {
  const fresh = createTestServices(1);
  const c = await fresh.pool.connect();
  try {
    expect((await c.query('SHOW plan_cache_mode')).rows[0].plan_cache_mode).toBe('force_generic_plan');
    await c.query('BEGIN');
    await seed(c, () => due(c));
    const before = await rowsRead(c);
    let found: string[] = [];
    for (let i = 0; i < RUNS; i++) found = await find(c as unknown as pg.Pool);
    const after = await rowsRead(c);
    await c.query('ROLLBACK');
    const perRun: Record<string, number> = {};
    for (const [table, n] of after) {
      const read = n - (before.get(table) ?? 0);
      if (read > 0) perRun[table] = Math.ceil(read / RUNS);
    }
    return { found, perRun };
  } finally {
    c.release();
    await fresh.close();
  }
}

/** A plain (not test-mode) account created at `created` with one ACTIVE FREE batch expiring at `expiresAt`; its id. */
async function accountWithBatch(c: pg.PoolClient, created: Date, expiresAt: Date, testClockAt: Date | null = null): Promise<string> {
  const { rows } = await c.query(
    `WITH a AS (
       INSERT INTO accounts (id, external_id, name, kind, test_mode, test_clock_at, created_at, billing_anchor_at, referral_code)
       VALUES (gen_random_uuid(), 'sweep-scale-due-' || gen_random_uuid(), 'due', 'USER', $3::timestamptz IS NOT NULL, $3, $1, $1, 'SSD-' || gen_random_uuid())
       RETURNING id),
     g AS (
       INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
       SELECT gen_random_uuid(), a.id, 'ADJUSTMENT', 'FREE', 5000000, 'due', 'h', $1 FROM a RETURNING id, account_id),
     b AS (
       INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status, updated_at)
       SELECT gen_random_uuid(), g.account_id, g.id, 'FREE', 'ADJUSTMENT', 5000000, 5000000, $1, $2, 'ACTIVE', $1 FROM g RETURNING account_id)
     INSERT INTO balances (account_id, total_micro_credits, version, updated_at, opening_period_start, opening_total_micro_credits)
     SELECT b.account_id, 5000000, 1, $1, $1, 0 FROM b RETURNING account_id`,
    [created, expiresAt, testClockAt],
  );
  return rows[0].account_id as string;
}

/** Bound on rows read per run from a table: a few per due account and per test-mode account, far below NOT_DUE. */
function bound(due: number): number {
  return 4 * (due + TEST_MODE + otherTestMode) + 50;
}

describe('sweep-due finders at scale, almost nothing due', () => {
  it('findAccountsWithDueExpiries reads the due batches and the test-mode accounts, not every account', async () => {
    const due: string[] = [];
    const { found, perRun } = await measure(
      async (c) => {
        const created = new Date(NOW.getTime() - 40 * 24 * HOUR_MS);
        // Oldest expiry first, test-mode ones by their own clock's instant among the others.
        due.push(await accountWithBatch(c, created, new Date(NOW.getTime() - 3 * HOUR_MS)));
        due.push(await accountWithBatch(c, created, new Date(NOW.getTime() - 2 * HOUR_MS), new Date(NOW.getTime() + 24 * HOUR_MS)));
        due.push(await accountWithBatch(c, created, new Date(NOW.getTime() - HOUR_MS)));
        // Not due: its clock stands before its batch's expiry, though NOW is after it.
        await accountWithBatch(c, created, new Date(NOW.getTime() - 30 * 60_000), new Date(NOW.getTime() - 24 * HOUR_MS));
      },
      (db) => findAccountsWithDueExpiries(db, NOW, 5_000),
    );
    expect(found.filter((id) => due.includes(id))).toEqual(due);
    expect(found).not.toContain(undefined);
    expect(perRun.accounts ?? 0).toBeLessThan(bound(due.length));
    expect(perRun.credit_batches ?? 0).toBeLessThan(bound(due.length));
  });

  it('findAccountsWithDuePeriods reads the due subscriptions and the test-mode accounts, not every subscription', async () => {
    const due: string[] = [];
    const { found, perRun } = await measure(
      async (c) => {
        // Plans whose granted period ended: granted 62, 61 and 31 days before NOW (oldest granted first);
        // the second in test mode, due by its clock; a test-mode one whose clock stands before its period end is not.
        const sub = async (grantedDaysAgo: number, testClockAt: Date | null) => {
          const granted = new Date(NOW.getTime() - grantedDaysAgo * 24 * HOUR_MS);
          const id = await accountWithBatch(c, granted, new Date(NOW.getTime() + 30 * 24 * HOUR_MS), testClockAt);
          await c.query(
            `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start)
             VALUES ($1, '00000000-0000-4000-8000-00000000a5a5', true, $2, $2)`,
            [id, granted],
          );
          return id;
        };
        due.push(await sub(62, null));
        due.push(await sub(61, new Date(NOW.getTime() + 24 * HOUR_MS)));
        due.push(await sub(31, null));
        await sub(63, new Date(NOW.getTime() - 40 * 24 * HOUR_MS));
      },
      (db) => findAccountsWithDuePeriods(db, NOW, 5_000),
    );
    expect(found.filter((id) => due.includes(id))).toEqual(due);
    expect(perRun.plan_subscriptions ?? 0).toBeLessThan(bound(due.length));
    expect(perRun.accounts ?? 0).toBeLessThan(bound(due.length));
  });

  it('findAccountsWithUnopenedPeriods reads the accounts whose period is to open, not every balance row', async () => {
    const due: string[] = [];
    const { found, perRun } = await measure(
      async (c) => {
        // Plan-less accounts whose stored opening is for an ended period (oldest opening first), one
        // never opened (first); a test-mode one and a plan account with an ended opening are not theirs.
        const opened = async (openedDaysAgo: number | null, testClockAt: Date | null = null) => {
          const created = new Date(NOW.getTime() - (openedDaysAgo ?? 40) * 24 * HOUR_MS);
          const id = await accountWithBatch(c, created, new Date(NOW.getTime() + 30 * 24 * HOUR_MS), testClockAt);
          await c.query(
            `UPDATE balances SET opening_period_start = $2, opening_total_micro_credits = CASE WHEN $2::timestamptz IS NULL THEN NULL ELSE 0 END WHERE account_id = $1`,
            [id, openedDaysAgo === null ? null : created],
          );
          return id;
        };
        due.push(await opened(null));
        due.push(await opened(65));
        due.push(await opened(33));
        await opened(70, new Date(NOW.getTime() - 69 * 24 * HOUR_MS));
        const planned = await opened(50);
        await c.query(
          `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start)
           VALUES ($1, '00000000-0000-4000-8000-00000000a5a5', true, $2, $2)`,
          [planned, new Date(NOW.getTime() - 50 * 24 * HOUR_MS)],
        );
      },
      (db) => findAccountsWithUnopenedPeriods(db, NOW, 5_000),
    );
    expect(found.filter((id) => due.includes(id))).toEqual(due);
    expect(perRun.balances ?? 0).toBeLessThan(bound(due.length));
    expect(perRun.accounts ?? 0).toBeLessThan(bound(due.length));
  });

  it('findUndeliveredWebhookJobs reads the paused auto top-ups, not every account with auto top-up', async () => {
    let pausedTopUp = '';
    const { found, perRun } = await measure(
      async (c) => {
        // Every second account on auto top-up, none paused; then one paused 10 minutes before NOW
        // after its last attempt failed (its auto_top_up.paused event is undelivered).
        await c.query(
          `INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES ('00000000-0000-4000-8000-00000000b6b6', 'sweep-scale-' || gen_random_uuid(), 1000000000, 10)`,
        );
        await c.query(
          `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period)
           SELECT id, true, 1000000, '00000000-0000-4000-8000-00000000b6b6', 3 FROM scale_accounts WHERE i % 2 = 1`,
        );
        const paused = new Date(NOW.getTime() - 10 * 60_000);
        const id = await accountWithBatch(c, new Date(NOW.getTime() - 5 * 24 * HOUR_MS), new Date(NOW.getTime() + 30 * 24 * HOUR_MS));
        await c.query(
          `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period, consecutive_failures, last_attempt_at, last_error, paused_at)
           VALUES ($1, false, 1000000, '00000000-0000-4000-8000-00000000b6b6', 3, 3, $2, 'declined', $2)`,
          [id, paused],
        );
        const { rows } = await c.query(
          `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at, finished_at)
           VALUES (gen_random_uuid(), $1, $2, 'FAILED', 3, 'declined', $3, $3) RETURNING id`,
          [id, new Date(NOW.getTime() - 5 * 24 * HOUR_MS), paused],
        );
        pausedTopUp = rows[0].id as string;
        await c.query('ANALYZE auto_top_up_settings, auto_top_ups, credit_packs');
      },
      async (db) => (await findUndeliveredWebhookJobs(db, NOW)).map((j) => j.jobId),
    );
    expect(found.filter((jobId) => jobId.includes(pausedTopUp))).toHaveLength(1);
    expect(perRun.auto_top_up_settings ?? 0).toBeLessThan(bound(1));
  });
});
