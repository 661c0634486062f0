/**
 * The database time limits the environment sets (src/config/env.ts, db/pg.ts
 * `ledgerSessionLimits`): the defaults, PG_QUERY_TIMEOUT_MS derived from the statement limit,
 * and the refusal of a query timeout that would give up a statement PostgreSQL still runs.
 */
import { describe, expect, it } from 'vitest';
import { parseEnv } from '../../src/config/env.js';
import { QUERY_TIMEOUT_MARGIN_MS, ledgerSessionLimits } from '../../src/db/pg.js';

const base = { DATABASE_URL: 'postgresql://postgres@db.invalid:5432/x', ADMIN_API_KEY: 'k'.repeat(32), JWT_SECRET: 's'.repeat(40) };

describe('ledgerSessionLimits(parseEnv(...))', () => {
  it('defaults: 30 s statements, 60 s idle transactions, 45 s for an answer, 10 s for a connection', () => {
    expect(ledgerSessionLimits(parseEnv(base))).toEqual({ statementTimeoutMs: 30_000, idleInTransactionTimeoutMs: 60_000, queryTimeoutMs: 45_000, connectTimeoutMs: 10_000 });
  });

  it('the query timeout follows the statement limit unless set; 0 turns either off', () => {
    expect(ledgerSessionLimits(parseEnv({ ...base, PG_STATEMENT_TIMEOUT_MS: '5000' })).queryTimeoutMs).toBe(5_000 + QUERY_TIMEOUT_MARGIN_MS);
    expect(ledgerSessionLimits(parseEnv({ ...base, PG_STATEMENT_TIMEOUT_MS: '0' })).queryTimeoutMs).toBe(0);
    expect(ledgerSessionLimits(parseEnv({ ...base, PG_QUERY_TIMEOUT_MS: '31000' })).queryTimeoutMs).toBe(31_000);
    expect(ledgerSessionLimits(parseEnv({ ...base, PG_QUERY_TIMEOUT_MS: '0', PG_CONNECT_TIMEOUT_MS: '0' }))).toMatchObject({ queryTimeoutMs: 0, connectTimeoutMs: 0 });
  });

  it('refuses a query timeout no longer than the statement limit', () => {
    expect(() => parseEnv({ ...base, PG_QUERY_TIMEOUT_MS: '30000' })).toThrow(/PG_QUERY_TIMEOUT_MS: must be longer than PG_STATEMENT_TIMEOUT_MS \(30000\)/);
    expect(() => parseEnv({ ...base, PG_STATEMENT_TIMEOUT_MS: '60000', PG_QUERY_TIMEOUT_MS: '45000' })).toThrow(/PG_QUERY_TIMEOUT_MS/);
  });
});
