/**
 * The planner's statistics (src/db/statistics.ts): the start-up check reads the settings from the
 * real server (the same values `SHOW` gives) and names exactly the settings that are off; where
 * autovacuum is off, analyzeStaleTables does its ANALYZE by its rule, and a plan a connection
 * cached while a table was empty is made again from the new statistics.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ANALYZE_LIMITS, analyzeStaleTables, readStatisticsSettings, statisticsWarnings, type StatisticsSettings } from '../../src/db/statistics.js';
import { createPgPool } from '../../src/db/pg.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

describe('readStatisticsSettings', () => {
  it('reads autovacuum and track_counts as the server reports them, through the ledger pool', async () => {
    const pool = createPgPool(TEST_DATABASE_URL, 1);
    try {
      const settings = await readStatisticsSettings(pool);
      const autovacuum = (await pool.query<{ autovacuum: string }>('SHOW autovacuum')).rows[0]!.autovacuum;
      const trackCounts = (await pool.query<{ track_counts: string }>('SHOW track_counts')).rows[0]!.track_counts;
      expect(settings).toEqual({ autovacuum, trackCounts });
      expect(['on', 'off']).toContain(settings.autovacuum);
    } finally {
      await pool.end();
    }
  });
});

describe('statisticsWarnings', () => {
  it('says nothing when both are on', () => {
    expect(statisticsWarnings({ autovacuum: 'on', trackCounts: 'on' }, 15_000)).toEqual([]);
  });

  it('names the setting that is off, and what to do', () => {
    const [w] = statisticsWarnings({ autovacuum: 'off', trackCounts: 'on' }, 15_000);
    expect(w).toMatch(/^PostgreSQL autovacuum is off: /);
    expect(w).toContain("analyze-stale-tables job (every STATISTICS_UPKEEP_EVERY_MS = 15000 ms)");
    expect(statisticsWarnings({ autovacuum: 'off', trackCounts: 'on' }, 0)[0]).toContain('run ANALYZE regularly');
    expect(statisticsWarnings({ autovacuum: 'on', trackCounts: 'off' }, 15_000)[0]).toMatch(/^PostgreSQL track_counts is off: .*run ANALYZE regularly/);
    expect(statisticsWarnings({ autovacuum: 'off', trackCounts: 'off' }, 15_000)).toEqual([expect.stringMatching(/^PostgreSQL autovacuum and track_counts are off: /)]);
  });
});

describe('analyzeStaleTables', () => {
  const OFF: StatisticsSettings = { autovacuum: 'off', trackCounts: 'on' };
  // A table of its own, out of autovacuum's reach (so the test means the same with autovacuum on),
  // in a schema of its own: analyzeStaleTables works on the current schema, and the workers of
  // other test files (their analyze-stale-tables job) on `public`, so they never analyze it.
  const schema = `stats_upkeep_${randomBytes(4).toString('hex')}`;
  const table = 'probe';
  const options = `-c search_path=${schema}`;
  let pool: pg.Pool;
  let session: pg.Client;

  /** The plan `session` has cached for its prepared lookup (generic: plan_cache_mode = force_generic_plan, as the ledger's connections). */
  async function cachedPlan(): Promise<string> {
    const { rows } = await session.query('EXPLAIN (COSTS OFF) EXECUTE probe_lookup(7)');
    return rows.map((r) => r['QUERY PLAN']).join('\n');
  }

  /** Inserts `n` rows on `session` and makes it report its table statistics at once (PostgreSQL 15 otherwise batches them up to a second or more). */
  async function insertRows(from: number, n: number): Promise<void> {
    await session.query(`INSERT INTO ${table} (k, v) SELECT g, g FROM generate_series($1::int, $2::int) g`, [from, from + n - 1]);
    await session.query('SELECT pg_stat_force_next_flush()');
    await session.query('SELECT 1');
  }

  async function changedRows(): Promise<number> {
    const { rows } = await pool.query<{ n: string }>('SELECT n_mod_since_analyze AS n FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2', [schema, table]);
    return Number(rows[0]!.n);
  }

  beforeAll(async () => {
    const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE SCHEMA ${schema}`);
    await admin.end();
    pool = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 2, options });
    session = new pg.Client({ connectionString: TEST_DATABASE_URL, options });
    await session.connect();
    await session.query(`CREATE TABLE ${table} (k int PRIMARY KEY, v int NOT NULL) WITH (autovacuum_enabled = false)`);
    await session.query(`ANALYZE ${table}`); // analyzed while empty, as the migrations leave usage_events
    await session.query('SET plan_cache_mode = force_generic_plan');
    await session.query(`PREPARE probe_lookup(int) AS SELECT v FROM ${table} WHERE k = $1`);
  });

  afterAll(async () => {
    await session?.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await session?.end();
    await pool?.end();
  });

  it("does nothing where autovacuum is on or track_counts is off", async () => {
    expect(await cachedPlan()).toMatch(/Seq Scan/);
    await insertRows(1, 20_000);
    expect(await changedRows()).toBe(20_000);
    expect(await analyzeStaleTables(pool, { autovacuum: 'on', trackCounts: 'on' })).toEqual({ outcome: 'autovacuum-on', tables: [], busy: [] });
    expect(await analyzeStaleTables(pool, { autovacuum: 'off', trackCounts: 'off' })).toEqual({ outcome: 'no-track-counts', tables: [], busy: [] });
    expect(await changedRows()).toBe(20_000);
    // The plan cached while the table was empty is still the one used, 20,000 rows later.
    expect(await cachedPlan()).toMatch(/Seq Scan/);
  });

  it("with autovacuum off, ANALYZEs the table past autovacuum's threshold, and the cached plan is made again (an index scan)", async () => {
    const upkeep = await analyzeStaleTables(pool, OFF);
    expect(upkeep.outcome).toBe('analyzed');
    // Analyzed while empty: threshold = autovacuum_analyze_threshold + scale factor x 0 rows.
    const base = Number((await pool.query<{ t: string }>(`SELECT current_setting('autovacuum_analyze_threshold') AS t`)).rows[0]!.t);
    expect(upkeep.tables).toContainEqual({ table: `${schema}.${table}`, changedRows: 20_000, thresholdRows: base });
    expect(await changedRows()).toBe(0);
    expect(await cachedPlan()).toMatch(/Index (Only )?Scan using \w+_pkey/);
  });

  it('leaves a table whose changes stay under the threshold', async () => {
    await insertRows(20_001, 100); // threshold now 50 + 0.1 x 20,000 rows (defaults)
    expect(await changedRows()).toBe(100);
    const upkeep = await analyzeStaleTables(pool, OFF);
    expect(upkeep.tables.map((t) => t.table)).not.toContain(`${schema}.${table}`);
    expect(await changedRows()).toBe(100);
  });

  it("uses the table's own analyze threshold and scale factor where its storage parameters set them", async () => {
    // The same 100 changed rows, under the server's threshold (above), over the table's own.
    await session.query(`ALTER TABLE ${table} SET (autovacuum_analyze_threshold = 10, autovacuum_analyze_scale_factor = 0)`);
    try {
      const upkeep = await analyzeStaleTables(pool, OFF);
      expect(upkeep.tables).toContainEqual({ table: `${schema}.${table}`, changedRows: 100, thresholdRows: 10 });
      expect(await changedRows()).toBe(0);
    } finally {
      await session.query(`ALTER TABLE ${table} RESET (autovacuum_analyze_threshold, autovacuum_analyze_scale_factor)`);
    }
  });

  describe('while another session holds a lock that conflicts with ANALYZE', () => {
    let holder: pg.Client;
    let shortTimeoutPool: pg.Pool;

    beforeAll(async () => {
      await insertRows(30_001, 10_000); // over the threshold again: 50 + 0.1 x 20,100 rows
      // The ledger pool's statement_timeout, made shorter than the job's lock timeout: the job's
      // own timeouts must apply to its statements, not the pool's.
      shortTimeoutPool = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 1, options: `${options} -c statement_timeout=200` });
      holder = new pg.Client({ connectionString: TEST_DATABASE_URL, options });
      await holder.connect();
      await holder.query('BEGIN');
      await holder.query(`LOCK TABLE ${table} IN SHARE UPDATE EXCLUSIVE MODE`); // what a concurrent ANALYZE or VACUUM holds
    });

    afterAll(async () => {
      await holder?.query('ROLLBACK');
      await holder?.end();
      await shortTimeoutPool?.end();
    });

    it('leaves the table for the next run after the lock timeout, under its own timeouts rather than the pool\'s', async () => {
      const upkeep = await analyzeStaleTables(shortTimeoutPool, OFF, { statementTimeoutMs: 600_000, lockTimeoutMs: 1_000 });
      expect(upkeep.outcome).toBe('analyzed');
      expect(upkeep.busy).toEqual([{ table: `${schema}.${table}`, changedRows: 10_000, thresholdRows: expect.any(Number) }]);
      expect(upkeep.tables.map((t) => t.table)).not.toContain(`${schema}.${table}`);
      expect(await changedRows()).toBe(10_000);
      // The connection went back to the pool with the pool's own statement_timeout.
      expect((await shortTimeoutPool.query<{ statement_timeout: string }>('SHOW statement_timeout')).rows[0]!.statement_timeout).toBe('200ms');
    });

    it('fails the run when the statement timeout ends an ANALYZE first', async () => {
      await expect(analyzeStaleTables(pool, OFF, { statementTimeoutMs: 300, lockTimeoutMs: 600_000 })).rejects.toMatchObject({ code: '57014' });
      expect(await changedRows()).toBe(10_000);
    });
  });

  it('analyzes the table once the lock is gone', async () => {
    const upkeep = await analyzeStaleTables(pool, OFF, DEFAULT_ANALYZE_LIMITS);
    expect(upkeep.busy).toEqual([]);
    expect(upkeep.tables.map((t) => t.table)).toContain(`${schema}.${table}`);
    expect(await changedRows()).toBe(0);
  });
});
