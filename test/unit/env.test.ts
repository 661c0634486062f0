/** parseEnv's cross-variable checks (src/config/env.ts). */
import { describe, expect, it } from 'vitest';
import { parseEnv } from '../../src/config/env.js';

describe('parseEnv', () => {
  it('refuses WEBHOOK_URL without WEBHOOK_SECRET: no delivery could be signed', () => {
    expect(() => parseEnv({ WEBHOOK_URL: 'https://hooks.example/creditpool' })).toThrow(/WEBHOOK_SECRET: is required when WEBHOOK_URL is set/);
    const secret = 'x'.repeat(32);
    const env = parseEnv({ WEBHOOK_URL: 'https://hooks.example/creditpool', WEBHOOK_SECRET: secret });
    expect([env.WEBHOOK_URL, env.WEBHOOK_SECRET]).toEqual(['https://hooks.example/creditpool', secret]);
    expect(parseEnv({}).WEBHOOK_URL).toBeUndefined();
  });

  it('refuses a client-side query timeout not longer than the statement timeout', () => {
    expect(() => parseEnv({ PG_QUERY_TIMEOUT_MS: '30000', PG_STATEMENT_TIMEOUT_MS: '30000' })).toThrow(/PG_QUERY_TIMEOUT_MS: must be longer than PG_STATEMENT_TIMEOUT_MS/);
  });
});
