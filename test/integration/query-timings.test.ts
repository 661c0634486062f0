/**
 * Client-side statement timings (PG_QUERY_TIMINGS, src/db/query-timings.ts) on a real pool: every
 * query of every pooled client is counted under its statement's label, transactions included.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createPgPool, withTransaction } from '../../src/db/pg.js';
import { QueryTimings, statementLabel } from '../../src/db/query-timings.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

const pool = createPgPool(TEST_DATABASE_URL, 2);
const timings = new QueryTimings();
timings.instrument(pool);

afterAll(async () => {
  await pool.end();
});

describe('QueryTimings', () => {
  it('labels a named statement by its name and any other by its first three words', () => {
    expect(statementLabel({ name: 'cp-account-lock', text: 'SELECT 1' })).toBe('cp-account-lock');
    expect(statementLabel({ text: '  DELETE FROM outbox_events WHERE id = ANY($1)' })).toBe('DELETE FROM outbox_events');
    expect(statementLabel('BEGIN')).toBe('BEGIN');
    expect(statementLabel(42)).toBe('(other)');
  });

  it('counts every query of the pool (pool.query and transactions) with its wall time', async () => {
    await pool.query('SELECT pg_sleep(0.02)');
    const value = await withTransaction(pool, async (tx) => {
      await tx.query({ name: 'qt-test-named', text: 'SELECT $1::int AS v', values: [7] });
      const { rows } = await tx.query({ name: 'qt-test-named', text: 'SELECT $1::int AS v', values: [8] });
      return rows[0].v as number;
    });
    expect(value).toBe(8); // results pass through unchanged
    const t = timings.snapshot();
    expect(t['SELECT pg_sleep(0.02)']!.count).toBe(1);
    expect(t['SELECT pg_sleep(0.02)']!.totalMs).toBeGreaterThanOrEqual(20);
    expect(t['qt-test-named']!.count).toBe(2);
    expect(t['BEGIN']!.count).toBe(1);
    expect(t['COMMIT']!.count).toBe(1);
  });

  it('counts a failed query too, and the error reaches the caller unchanged', async () => {
    await expect(pool.query('SELECT * FROM no_such_table_qt')).rejects.toMatchObject({ code: '42P01' });
    expect(timings.snapshot()['SELECT * FROM']!.count).toBe(1);
  });
});
