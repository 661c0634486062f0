/**
 * The start-up check of the ledger sessions' statement_timeout against the client's query timeout
 * (src/db/pg.ts readSessionStatementTimeoutMs, sessionTimeoutWarning, warnAboutSessionTimeouts):
 * parseEnv can only compare PG_STATEMENT_TIMEOUT_MS with PG_QUERY_TIMEOUT_MS, while a
 * `statement_timeout` in DATABASE_URL's own options wins over the environment's; the check reads
 * what the real server applies to a session of the pool.
 */
import { describe, expect, it } from 'vitest';
import { createPgPool, ledgerSessionLimits, readSessionStatementTimeoutMs, sessionTimeoutWarning, warnAboutSessionTimeouts } from '../../src/db/pg.js';
import { parseEnv } from '../../src/config/env.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

/** TEST_DATABASE_URL with `options` set to `options`. */
function urlWithOptions(options: string): string {
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('options', options);
  return url.toString();
}

/** What warnAboutSessionTimeouts logs for a pool of `databaseUrl` under the environment `vars`. */
async function warningsAtStart(databaseUrl: string, vars: Record<string, string> = {}): Promise<{ statementTimeoutMs: number; warnings: string[] }> {
  const env = parseEnv({ DATABASE_URL: databaseUrl, ADMIN_API_KEY: 'k'.repeat(32), JWT_SECRET: 's'.repeat(40), ...vars });
  const limits = ledgerSessionLimits(env);
  const pool = createPgPool(env.DATABASE_URL, 1, limits);
  const warnings: string[] = [];
  try {
    await warnAboutSessionTimeouts(pool, limits, { warn: (_obj, msg) => warnings.push(msg) });
    return { statementTimeoutMs: await readSessionStatementTimeoutMs(pool), warnings };
  } finally {
    await pool.end();
  }
}

describe('the ledger sessions statement_timeout at start', () => {
  it('the environment alone: 30 s statements under a 45 s client limit, no warning', async () => {
    expect(await warningsAtStart(TEST_DATABASE_URL)).toEqual({ statementTimeoutMs: 30_000, warnings: [] });
  });

  it('DATABASE_URL options setting a longer statement_timeout win over the environment and are reported', async () => {
    const { statementTimeoutMs, warnings } = await warningsAtStart(urlWithOptions('-c statement_timeout=60s'));
    expect(statementTimeoutMs).toBe(60_000);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^PostgreSQL's statement_timeout for the ledger's sessions is 60000 ms, not shorter than the client's query timeout of 45000 ms/);
  });

  it('DATABASE_URL options turning the limit off are reported; a matching PG_QUERY_TIMEOUT_MS=0 is not', async () => {
    expect((await warningsAtStart(urlWithOptions('-c statement_timeout=0'))).warnings).toEqual([expect.stringContaining('is 0 (no limit)')]);
    expect(await warningsAtStart(urlWithOptions('-c statement_timeout=0'), { PG_QUERY_TIMEOUT_MS: '0' })).toEqual({ statementTimeoutMs: 0, warnings: [] });
  });

  it('a shorter statement_timeout in the URL is consistent', async () => {
    expect(await warningsAtStart(urlWithOptions('-c statement_timeout=5000'))).toEqual({ statementTimeoutMs: 5_000, warnings: [] });
  });
});

describe('sessionTimeoutWarning', () => {
  it('warns exactly when the statement limit is off or not shorter than a client limit', () => {
    expect(sessionTimeoutWarning(30_000, 45_000)).toBeNull();
    expect(sessionTimeoutWarning(45_000, 45_000)).toMatch(/45000 ms, not shorter than the client's query timeout of 45000 ms/);
    expect(sessionTimeoutWarning(0, 45_000)).toMatch(/0 \(no limit\)/);
    expect(sessionTimeoutWarning(0, 0)).toBeNull();
    expect(sessionTimeoutWarning(60_000, 0)).toBeNull();
  });
});
