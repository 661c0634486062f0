/**
 * The ledger pool's session setting (src/db/pg.ts LEDGER_SESSION_OPTIONS): every connection uses
 * cached generic plans, so the charge path's prepared statements are planned once per
 * connection instead of on every execution. Real PostgreSQL: the plan counts come from
 * pg_prepared_statements of the very connection that charged.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { createPgPool, withLedgerSessionOptions } from '../../src/db/pg.js';
import { recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(1); // one connection: the charges and the checks share it
});

afterAll(async () => {
  await services.close();
});

describe('ledger pool', () => {
  it('charges with generic plans only: no prepared statement of the connection was planned per execution', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const other = await createFundedAccount(services, { paid: 100 });
    for (let i = 0; i < 8; i++) await recordUsage(services, { accountId, idempotencyKey: `lp-${i}`, category: 'unit' });
    const batch = await recordUsageBatch(
      services,
      [0, 1, 2, 3, 4, 5].map((i) => ({ accountId: i % 2 ? accountId : other, idempotencyKey: `lp-b-${i}`, category: 'unit' })),
      { maxItems: 10 },
    );
    expect(batch.every((r) => r.ok)).toBe(true);
    const { rows: setting } = await services.pool.query('SHOW plan_cache_mode');
    expect(setting[0].plan_cache_mode).toBe('force_generic_plan');
    const { rows } = await services.pool.query(
      `SELECT name, generic_plans::int AS generic, custom_plans::int AS custom FROM pg_prepared_statements WHERE name LIKE 'cp-%' ORDER BY name`,
    );
    const byName = Object.fromEntries(rows.map((r) => [r.name as string, { generic: r.generic as number, custom: r.custom as number }]));
    // The statements of a single charge ran 8 times (more than the 5 custom plans PostgreSQL tries
    // by default before it compares costs) and the batch's at least once, all with generic plans.
    for (const name of ['cp-account-lock', 'cp-account-state', 'cp-charge-insert', 'cp-account-finish']) {
      expect(byName[name], name).toBeDefined();
      expect(byName[name]!.custom, name).toBe(0);
      expect(byName[name]!.generic, name).toBeGreaterThanOrEqual(8);
    }
    for (const name of ['cp-account-lock-many', 'cp-account-charge-states']) {
      expect(byName[name], name).toBeDefined();
      expect(byName[name]!.custom, name).toBe(0);
      expect(byName[name]!.generic, name).toBeGreaterThanOrEqual(1);
    }
    expect(rows.filter((r) => r.custom !== 0)).toEqual([]);
  });

  it("keeps a database URL's own options and adds the ledger's", async () => {
    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('options', '-c statement_timeout=12345');
    expect(new URL(withLedgerSessionOptions(url.toString())).searchParams.get('options')).toBe(
      '-c random_page_cost=1.1 -c statement_timeout=12345 -c plan_cache_mode=force_generic_plan',
    );
    const pool = createPgPool(url.toString(), 1);
    try {
      const { rows } = await pool.query(`SELECT current_setting('statement_timeout') AS timeout, current_setting('plan_cache_mode') AS mode`);
      expect(rows[0]).toEqual({ timeout: '12345ms', mode: 'force_generic_plan' });
    } finally {
      await pool.end();
    }
  });

  it('starts every session with the time limits it is given; a limit set in the URL wins', async () => {
    const limits = { statementTimeoutMs: 30_000, idleInTransactionTimeoutMs: 60_000 };
    const settings = `SELECT current_setting('statement_timeout') AS statement, current_setting('idle_in_transaction_session_timeout') AS idle, current_setting('plan_cache_mode') AS mode`;
    const pool = createPgPool(TEST_DATABASE_URL, 1, limits);
    try {
      expect((await pool.query(settings)).rows[0]).toEqual({ statement: '30s', idle: '1min', mode: 'force_generic_plan' });
    } finally {
      await pool.end();
    }
    const url = new URL(TEST_DATABASE_URL);
    url.searchParams.set('options', '-c statement_timeout=12345');
    expect(new URL(withLedgerSessionOptions(url.toString(), limits)).searchParams.get('options')).toBe(
      '-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000 -c random_page_cost=1.1 -c statement_timeout=12345 -c plan_cache_mode=force_generic_plan',
    );
    const own = createPgPool(url.toString(), 1, limits);
    try {
      expect((await own.query(settings)).rows[0]).toEqual({ statement: '12345ms', idle: '1min', mode: 'force_generic_plan' });
    } finally {
      await own.end();
    }
  });

  describe('planner cost (LEDGER_PLANNER_OPTIONS)', () => {
    // A table shaped like `balances` of a deployment with 1,000 accounts, in a schema of its own,
    // analyzed with its rows: the ledger's writes join an array through unnest to such tables.
    const schema = `planner_cost_${randomBytes(4).toString('hex')}`;
    const options = `-c search_path=${schema}`;

    /** The generic plan a ledger pool on `url` caches for an `UPDATE … FROM unnest($1)` of the probe table. */
    async function cachedPlan(url: string): Promise<string> {
      const pool = createPgPool(url, 1);
      try {
        const client = await pool.connect();
        try {
          await client.query('PREPARE probe_update(uuid[]) AS UPDATE probe p SET v = p.v + 1 FROM unnest($1::uuid[]) AS u(k) WHERE p.k = u.k');
          const { rows } = await client.query(`EXPLAIN (COSTS OFF) EXECUTE probe_update('{00000000-0000-0000-0000-000000000001}')`);
          return rows.map((r) => r['QUERY PLAN']).join('\n');
        } finally {
          client.release(true);
        }
      } finally {
        await pool.end();
      }
    }

    function urlWith(extraOptions: string): string {
      const url = new URL(TEST_DATABASE_URL);
      url.searchParams.set('options', `${options}${extraOptions}`);
      return url.toString();
    }

    beforeAll(async () => {
      const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await admin.connect();
      try {
        await admin.query(`CREATE SCHEMA ${schema}`);
        await admin.query(`CREATE TABLE ${schema}.probe (k uuid PRIMARY KEY, v bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false)`);
        await admin.query(`INSERT INTO ${schema}.probe (k, v) SELECT gen_random_uuid(), g FROM generate_series(1, 1000) g`);
        await admin.query(`ANALYZE ${schema}.probe`);
      } finally {
        await admin.end();
      }
    });

    afterAll(async () => {
      const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await admin.connect();
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin.end();
    });

    it('plans the write of a few rows of a 1,000-row table as primary-key probes, not a scan of the table', async () => {
      const plan = await cachedPlan(urlWith(''));
      expect(plan).toMatch(/Index Scan using probe_pkey on probe p/);
      expect(plan).not.toMatch(/Seq Scan on probe/);
    });

    it("lets the URL's own options set another cost (with PostgreSQL's default, 4, the same plan scans the table)", async () => {
      const plan = await cachedPlan(urlWith(' -c random_page_cost=4'));
      expect(plan).toMatch(/Seq Scan on probe p/);
    });
  });
});
