/** parseEnv's cross-variable checks (src/config/env.ts). */
import { describe, expect, it } from 'vitest';
import { ENV_VARIABLE_NAMES, MIN_WEBHOOK_LOG_RETENTION_DAYS, parseEnv } from '../../src/config/env.js';
import { WEBHOOK_METRICS_WINDOW_SECONDS } from '../../src/metrics/server-metrics.js';
import { WEBHOOK_SWEEP_MAX_AGE_MS } from '../../src/services/webhooks.js';
import { bearerToken } from '../../src/auth/authenticator.js';

describe('parseEnv', () => {
  it('refuses WEBHOOK_URL without WEBHOOK_SECRET: no delivery could be signed', () => {
    expect(() => parseEnv({ WEBHOOK_URL: 'https://hooks.example/creditpool' })).toThrow(/WEBHOOK_SECRET: is required when WEBHOOK_URL is set/);
    const secret = 'x'.repeat(32);
    const env = parseEnv({ WEBHOOK_URL: 'https://hooks.example/creditpool', WEBHOOK_SECRET: secret });
    expect([env.WEBHOOK_URL, env.WEBHOOK_SECRET]).toEqual(['https://hooks.example/creditpool', secret]);
    expect(parseEnv({}).WEBHOOK_URL).toBeUndefined();
  });

  it('refuses a WEBHOOK_URL carrying user:password (fetch would refuse every delivery), without echoing it', () => {
    const secret = 'whsec_0123456789abcdef0123456789abcdef';
    for (const url of ['https://hook-user:hook-pass-5e1d@hooks.example/creditpool', 'https://hook-user@hooks.example/creditpool']) {
      let message = '';
      try {
        parseEnv({ WEBHOOK_URL: url, WEBHOOK_SECRET: secret });
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).toMatch(/WEBHOOK_URL must not carry a user:password/);
      expect(message).not.toContain('hook-pass-5e1d');
      expect(message).not.toContain('hook-user');
    }
  });

  it('refuses a live Stripe key (or anything not a test key) as STRIPE_TEST_SECRET_KEY: test-mode accounts would charge real cards', () => {
    for (const key of ['sk_live_abc', 'rk_live_abc', 'abc', 'pk_test_abc']) {
      expect(() => parseEnv({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_live_x', STRIPE_TEST_SECRET_KEY: key })).toThrow(
        /STRIPE_TEST_SECRET_KEY: must be a Stripe test-mode secret key/,
      );
    }
    for (const key of ['sk_test_abc', 'rk_test_abc']) {
      expect(parseEnv({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_live_x', STRIPE_TEST_SECRET_KEY: key }).STRIPE_TEST_SECRET_KEY).toBe(key);
    }
    expect(parseEnv({}).STRIPE_TEST_SECRET_KEY).toBeUndefined();
  });

  it('refuses the same signing secret for the live and the test Stripe webhook endpoint (each endpoint has its own)', () => {
    expect(() => parseEnv({ STRIPE_WEBHOOK_SECRET: 'whsec_a', STRIPE_TEST_WEBHOOK_SECRET: 'whsec_a' })).toThrow(/STRIPE_TEST_WEBHOOK_SECRET: must differ from STRIPE_WEBHOOK_SECRET/);
    expect(parseEnv({ STRIPE_WEBHOOK_SECRET: 'whsec_a', STRIPE_TEST_WEBHOOK_SECRET: 'whsec_b' }).STRIPE_TEST_WEBHOOK_SECRET).toBe('whsec_b');
  });

  it('refuses an ADMIN_API_KEY that no Authorization header could carry (a space, a control or non-ASCII character)', () => {
    // The authenticator reads one Bearer token of visible ASCII (authenticator.ts bearerToken):
    // such a key booted fine and then refused every request made with it as UNAUTHENTICATED.
    for (const bad of ['my admin key 0123456789', 'admin-key-0123456789\n', 'admin-key-0123456789\t', 'clé-admin-0123456789abcdef']) {
      expect(() => parseEnv({ ADMIN_API_KEY: bad }), JSON.stringify(bad)).toThrow(/ADMIN_API_KEY: must be visible ASCII/);
    }
    const good = 'Adm1n_key-~!0123456789';
    expect(parseEnv({ ADMIN_API_KEY: good }).ADMIN_API_KEY).toBe(good);
    expect(bearerToken(`Bearer ${good}`)).toBe(good);
  });

  it('refuses one secret reused for two of ADMIN_API_KEY, JWT_SECRET and WEBHOOK_SECRET (whoever holds one would hold the other power)', () => {
    const shared = 'one-secret-for-everything-0123456789';
    const other = 'another-secret-0123456789abcdef-xyz';
    const third = 'a-third-secret-0123456789abcdef-xyz';
    expect(() => parseEnv({ ADMIN_API_KEY: shared, JWT_SECRET: shared })).toThrow(/JWT_SECRET: must differ from ADMIN_API_KEY/);
    expect(() => parseEnv({ WEBHOOK_URL: 'https://hooks.example/x', WEBHOOK_SECRET: shared, JWT_SECRET: shared })).toThrow(/WEBHOOK_SECRET: must differ from JWT_SECRET/);
    expect(() => parseEnv({ WEBHOOK_URL: 'https://hooks.example/x', WEBHOOK_SECRET: shared, ADMIN_API_KEY: shared })).toThrow(/WEBHOOK_SECRET: must differ from ADMIN_API_KEY/);
    expect(parseEnv({ ADMIN_API_KEY: shared, JWT_SECRET: other, WEBHOOK_URL: 'https://hooks.example/x', WEBHOOK_SECRET: third }).JWT_SECRET).toBe(other);
  });

  it('refuses PAYMENT_PROVIDER=stripe without STRIPE_SECRET_KEY at parse time, with the other cross-variable problems (not later, alone, when the provider is built)', () => {
    expect(() => parseEnv({ PAYMENT_PROVIDER: 'stripe', WEBHOOK_URL: 'https://hooks.example/creditpool' })).toThrow(
      /WEBHOOK_SECRET: is required[^]*STRIPE_SECRET_KEY: is required when PAYMENT_PROVIDER=stripe|STRIPE_SECRET_KEY: is required when PAYMENT_PROVIDER=stripe[^]*WEBHOOK_SECRET: is required/,
    );
    expect(parseEnv({ PAYMENT_PROVIDER: 'stripe', STRIPE_SECRET_KEY: 'sk_test_x' }).STRIPE_SECRET_KEY).toBe('sk_test_x');
    expect(parseEnv({}).PAYMENT_PROVIDER).toBe('simulator');
  });

  it('WEBHOOK_LOG_RETENTION_DAYS defaults to 30; 0 keeps the log for ever; 1..6 days are refused (shorter than what /metrics, the sweep and a retrying delivery read back)', () => {
    expect(parseEnv({}).WEBHOOK_LOG_RETENTION_DAYS).toBe(30);
    expect(parseEnv({ WEBHOOK_LOG_RETENTION_DAYS: '0' }).WEBHOOK_LOG_RETENTION_DAYS).toBe(0);
    expect(parseEnv({ WEBHOOK_LOG_RETENTION_DAYS: '7' }).WEBHOOK_LOG_RETENTION_DAYS).toBe(7);
    for (const bad of ['1', '6']) {
      expect(() => parseEnv({ WEBHOOK_LOG_RETENTION_DAYS: bad }), bad).toThrow(/WEBHOOK_LOG_RETENTION_DAYS: must be 0 \(keep the delivery log for ever\) or at least 7 days/);
    }
    expect(() => parseEnv({ WEBHOOK_LOG_RETENTION_DAYS: '-1' })).toThrow(/WEBHOOK_LOG_RETENTION_DAYS/);
    expect(() => parseEnv({ WEBHOOK_LOG_RETENTION_DAYS: '7.5' })).toThrow(/WEBHOOK_LOG_RETENTION_DAYS/);
    // The minimum covers every look-back of the log's readers.
    expect(MIN_WEBHOOK_LOG_RETENTION_DAYS * 86_400).toBeGreaterThanOrEqual(WEBHOOK_METRICS_WINDOW_SECONDS);
    expect(MIN_WEBHOOK_LOG_RETENTION_DAYS * 86_400_000).toBeGreaterThan(WEBHOOK_SWEEP_MAX_AGE_MS);
  });

  it('RECONCILE_FULL_EVERY_HOURS defaults to 24; 0 makes every reconcile pass full; negative or above a year is refused', () => {
    expect(parseEnv({}).RECONCILE_FULL_EVERY_HOURS).toBe(24);
    expect(parseEnv({ RECONCILE_FULL_EVERY_HOURS: '0' }).RECONCILE_FULL_EVERY_HOURS).toBe(0);
    expect(parseEnv({ RECONCILE_FULL_EVERY_HOURS: '0.5' }).RECONCILE_FULL_EVERY_HOURS).toBe(0.5);
    for (const bad of ['-1', 'x', '8761']) expect(() => parseEnv({ RECONCILE_FULL_EVERY_HOURS: bad }), bad).toThrow(/RECONCILE_FULL_EVERY_HOURS/);
  });

  it('BUDGET_SPEND_RETENTION_DAYS defaults to 30; 0 keeps the kept budget spending for ever; negative or fractional days are refused', () => {
    expect(parseEnv({}).BUDGET_SPEND_RETENTION_DAYS).toBe(30);
    expect(parseEnv({ BUDGET_SPEND_RETENTION_DAYS: '0' }).BUDGET_SPEND_RETENTION_DAYS).toBe(0);
    expect(parseEnv({ BUDGET_SPEND_RETENTION_DAYS: '1' }).BUDGET_SPEND_RETENTION_DAYS).toBe(1);
    for (const bad of ['-1', '1.5', 'x', '36501']) expect(() => parseEnv({ BUDGET_SPEND_RETENTION_DAYS: bad }), bad).toThrow(/BUDGET_SPEND_RETENTION_DAYS/);
  });

  it('METRICS_ENABLED defaults to true; METRICS_TOKEN must be a visible-ASCII token of 16+ characters that is none of the other secrets', () => {
    expect(parseEnv({}).METRICS_ENABLED).toBe(true);
    expect(parseEnv({ METRICS_ENABLED: 'false' }).METRICS_ENABLED).toBe(false);
    expect(parseEnv({}).METRICS_TOKEN).toBeUndefined();
    expect(parseEnv({ METRICS_TOKEN: 'metrics-token-0123456789' }).METRICS_TOKEN).toBe('metrics-token-0123456789');
    expect(() => parseEnv({ METRICS_TOKEN: 'short' })).toThrow(/METRICS_TOKEN: METRICS_TOKEN must be at least 16 characters/);
    expect(() => parseEnv({ METRICS_TOKEN: 'has a space 0123456789' })).toThrow(/METRICS_TOKEN: must be visible ASCII/);
    const shared = 'one-secret-for-everything-0123456789';
    expect(() => parseEnv({ ADMIN_API_KEY: shared, METRICS_TOKEN: shared })).toThrow(/METRICS_TOKEN: must differ from ADMIN_API_KEY/);
    expect(() => parseEnv({ JWT_SECRET: shared, METRICS_TOKEN: shared })).toThrow(/METRICS_TOKEN: must differ from JWT_SECRET/);
    expect(() => parseEnv({ WEBHOOK_URL: 'https://hooks.example/x', WEBHOOK_SECRET: shared, METRICS_TOKEN: shared })).toThrow(/METRICS_TOKEN: must differ from WEBHOOK_SECRET/);
  });

  it('WORKERS_REDIS_WAIT_MS defaults to 30 s; 0 (no limit) up to an hour; a negative or fractional wait is refused', () => {
    expect(parseEnv({}).WORKERS_REDIS_WAIT_MS).toBe(30_000);
    expect(parseEnv({ WORKERS_REDIS_WAIT_MS: '0' }).WORKERS_REDIS_WAIT_MS).toBe(0);
    expect(parseEnv({ WORKERS_REDIS_WAIT_MS: '3600000' }).WORKERS_REDIS_WAIT_MS).toBe(3_600_000);
    for (const bad of ['-1', '1.5', '3600001', 'soon']) expect(() => parseEnv({ WORKERS_REDIS_WAIT_MS: bad })).toThrow(/WORKERS_REDIS_WAIT_MS/);
  });

  it('ENV_VARIABLE_NAMES lists the variables it reads (serve and workers name them for a mistaken --option)', () => {
    expect(ENV_VARIABLE_NAMES).toEqual(expect.arrayContaining(['PORT', 'REDIS_URL', 'DATABASE_URL', 'WORKERS_REDIS_WAIT_MS']));
    expect(Object.keys(parseEnv({})).every((k) => ENV_VARIABLE_NAMES.includes(k))).toBe(true);
  });

  it('refuses a client-side query timeout not longer than the statement timeout', () => {
    expect(() => parseEnv({ PG_QUERY_TIMEOUT_MS: '30000', PG_STATEMENT_TIMEOUT_MS: '30000' })).toThrow(/PG_QUERY_TIMEOUT_MS: must be longer than PG_STATEMENT_TIMEOUT_MS/);
  });

  it('refuses an SSE stall timeout not longer than the 12 s SSE heartbeat (idle streams would be closed), except under NODE_ENV=test', () => {
    expect(() => parseEnv({ LIVE_SSE_STALL_TIMEOUT_MS: '12000' })).toThrow(/LIVE_SSE_STALL_TIMEOUT_MS: must be longer than the 12000 ms SSE heartbeat/);
    expect(parseEnv({ LIVE_SSE_STALL_TIMEOUT_MS: '12001' }).LIVE_SSE_STALL_TIMEOUT_MS).toBe(12_001);
    expect(parseEnv({ NODE_ENV: 'test', LIVE_SSE_STALL_TIMEOUT_MS: '1500' }).LIVE_SSE_STALL_TIMEOUT_MS).toBe(1_500);
    expect(parseEnv({}).LIVE_SSE_STALL_TIMEOUT_MS).toBe(30_000);
  });

  it('names every invalid variable without echoing its value (the message is printed at boot and shipped with the logs)', () => {
    const values: Record<string, string> = {
      ADMIN_API_KEY: 'admin key with spaces 0123456789',
      JWT_SECRET: 'short-jwt-secret-value',
      WEBHOOK_SECRET: 'short-webhook-secret',
      METRICS_TOKEN: 'metrics token spaced',
      STRIPE_TEST_SECRET_KEY: 'sk_live_echoed_key_value',
      WEBHOOK_URL: 'ftp://hook-user:hook-password@hooks.example/x',
      JWKS_URL: 'http://jwks-user:jwks-password@idp.example/jwks',
      PAYMENT_PROVIDER: 'stripe-echoed-provider',
      LOG_LEVEL: 'echoed-level',
    };
    let message = '';
    try {
      parseEnv({ ...values, STRIPE_SECRET_KEY: 'sk_live_x' });
    } catch (err) {
      message = (err as Error).message;
    }
    for (const name of Object.keys(values)) expect(message).toContain(`${name}:`);
    for (const value of Object.values(values)) expect(message).not.toContain(value);
    for (const part of ['hook-password', 'jwks-password', 'echoed']) expect(message).not.toContain(part);
  });
});
