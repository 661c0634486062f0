/**
 * The start-up check of the planner's statistics (src/db/statistics.ts): the settings are read
 * from the real server (the same values `SHOW` gives), and the warning names exactly the settings
 * that are off.
 */
import { describe, expect, it } from 'vitest';
import { readStatisticsSettings, statisticsWarnings } from '../../src/db/statistics.js';
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
    expect(statisticsWarnings({ autovacuum: 'on', trackCounts: 'on' })).toEqual([]);
  });

  it('names the setting that is off, and what to do', () => {
    const [w] = statisticsWarnings({ autovacuum: 'off', trackCounts: 'on' });
    expect(w).toMatch(/^PostgreSQL autovacuum is off: /);
    expect(w).toContain('run ANALYZE regularly');
    expect(statisticsWarnings({ autovacuum: 'on', trackCounts: 'off' })[0]).toMatch(/^PostgreSQL track_counts is off: /);
    expect(statisticsWarnings({ autovacuum: 'off', trackCounts: 'off' })).toEqual([expect.stringMatching(/^PostgreSQL autovacuum and track_counts are off: /)]);
  });
});
