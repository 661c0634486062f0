/**
 * The ledger pool's session setting (src/db/pg.ts LEDGER_SESSION_OPTIONS): every connection uses
 * cached generic plans, so the charge path's prepared statements are planned once per
 * connection instead of on every execution. Real PostgreSQL: the plan counts come from
 * pg_prepared_statements of the very connection that charged.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
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
      '-c statement_timeout=12345 -c plan_cache_mode=force_generic_plan',
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
      '-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000 -c statement_timeout=12345 -c plan_cache_mode=force_generic_plan',
    );
    const own = createPgPool(url.toString(), 1, limits);
    try {
      expect((await own.query(settings)).rows[0]).toEqual({ statement: '12345ms', idle: '1min', mode: 'force_generic_plan' });
    } finally {
      await own.end();
    }
  });
});
