/**
 * Per-credential rate limit (src/graphql/rate-limit.ts, README "Rate limits") on real servers
 * and the real Redis (a private one where Redis goes away or stalls): an end user past its budget
 * gets HTTP 429 RATE_LIMITED with Retry-After while another is unaffected, instances share one
 * budget, service keys are not counted by default (no Redis key is even written) and are when
 * configured (a refused charge changes nothing), the window refills, and a Redis that is down or
 * does not answer fails open to a per-instance in-memory budget.
 *
 * Every server gets its own key prefix (startTestServer's default, or a shared one passed by the
 * test), so test files running in parallel never spend each other's points. Budgets are sized in
 * multiples of the probe operation's own cost estimate, read from the same estimator the server uses.
 */
import { randomUUID } from 'node:crypto';
import { parse } from 'graphql';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { startPrivateRedis, type PrivateRedis } from '../setup/private-redis.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { wsSubscribe } from '../live/helpers.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { createApiKey } from '../../src/auth/api-keys.js';
import { schema } from '../../src/graphql/schema.js';
import { estimateOperationCost } from '../../src/graphql/cost-limit.js';
import { apiAccount, dbId, expectError, expectUnchanged, gid, ok, uniq } from './helpers.js';
import { createFundedAccount } from '../factories/accounts.js';

/** An end user's credit-bar read of its own USER account. */
const BALANCE = `query($id: ID!) { account(id: $id) { id balance { available version } } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;

/** Points the server weighs `query` at: its cost estimate, rounded up (rate-limit.ts). */
function weightOf(query: string, variables: Record<string, unknown>): number {
  return Math.ceil(estimateOperationCost(schema, parse(query), undefined, variables)!.cost);
}

/** One POST /graphql with its status, Retry-After header and body. */
async function post(srv: TestServer, query: string, variables: Record<string, unknown>, token: string) {
  const res = await fetch(srv.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as any };
}

/** An end user with its own USER account: its external id (`sub`), the account's id and a token. */
async function endUser(srv: TestServer, org?: string) {
  const sub = uniq('rl-user');
  const accountId = await apiAccount(srv, { kind: 'USER', externalId: sub });
  const token = await signUserToken(srv.jwtSecret, { sub, ...(org ? { org } : {}), expiresInSeconds: 600 });
  return { sub, accountId, token };
}

/** Asserts `res` is the limiter's refusal and returns its retryAfterSeconds. */
function expectRateLimited(res: Awaited<ReturnType<typeof post>>): number {
  expect(res.status).toBe(429);
  const error = expectError(res, 'RATE_LIMITED');
  const seconds = error.extensions!.retryAfterSeconds as number;
  expect(Number.isInteger(seconds) && seconds >= 1).toBe(true);
  expect(res.retryAfter).toBe(String(seconds));
  expect(error.extensions).not.toHaveProperty('http');
  expect(res.body.data ?? null).toBeNull();
  return seconds;
}

/** The server's creditpool_rate_limited_total{kind} (GET /metrics). */
async function refusedCount(srv: TestServer, kind: 'user' | 'service'): Promise<number> {
  const text = await (await fetch(new URL('/metrics', srv.url))).text();
  const line = text.split('\n').find((l) => l.startsWith(`creditpool_rate_limited_total{kind="${kind}"} `));
  if (!line) throw new Error(`no creditpool_rate_limited_total{kind="${kind}"} in /metrics`);
  return Number(line.split(' ')[1]);
}

const servers: TestServer[] = [];
const privateRedises: PrivateRedis[] = [];
let redis: Redis;
/** A budget of exactly three balance reads per minute. */
let balanceWeight: number;

beforeAll(() => {
  redis = new Redis(TEST_REDIS_URL);
  balanceWeight = weightOf(BALANCE, { id: 'x' });
  expect(balanceWeight).toBeGreaterThan(1);
});

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.close()));
  await Promise.allSettled(privateRedises.map((r) => r.stop()));
  redis?.disconnect();
});

async function server(env: Record<string, string>): Promise<TestServer> {
  const srv = await startTestServer(env);
  servers.push(srv);
  return srv;
}

describe('end users', () => {
  let srv: TestServer;
  const prefix = `creditpool-test:ratelimit:${randomUUID()}`;
  beforeAll(async () => {
    srv = await server({ RATE_LIMIT_KEY_PREFIX: prefix, RATE_LIMIT_USER_POINTS_PER_MINUTE: String(3 * balanceWeight) });
  });

  it('past its budget, a user gets HTTP 429 RATE_LIMITED with Retry-After; another user is unaffected; a new token of the same sub is no way around it', async () => {
    const alice = await endUser(srv);
    const bob = await endUser(srv);
    for (let i = 0; i < 3; i++) {
      const res = await post(srv, BALANCE, { id: alice.accountId }, alice.token);
      expect(res.status).toBe(200);
      expect(ok(res).account.id).toBe(alice.accountId);
    }
    const refusedBefore = await refusedCount(srv, 'user');
    const seconds = expectRateLimited(await post(srv, BALANCE, { id: alice.accountId }, alice.token));
    expect(seconds).toBeLessThanOrEqual(60);
    // Counted for GET /metrics (creditpool_rate_limited_total), by the credential's kind.
    expect(await refusedCount(srv, 'user')).toBe(refusedBefore + 1);
    expect(await refusedCount(srv, 'service')).toBe(0);
    // The counter lives in Redis under the user's hashed sub, for the rest of the window.
    const keys = await redis.keys(`${prefix}:user:*`);
    expect(keys).toHaveLength(1);
    expect(keys[0]).not.toContain(alice.sub);
    const ttlMs = await redis.pttl(keys[0]!);
    expect(ttlMs).toBeGreaterThan(0);
    expect(ttlMs).toBeLessThanOrEqual(60_000);

    // Another token of the same user (another org claim, issued later) shares the budget.
    const again = await signUserToken(srv.jwtSecret, { sub: alice.sub, org: uniq('rl-org'), expiresInSeconds: 300 });
    expectRateLimited(await post(srv, BALANCE, { id: alice.accountId }, again));
    // Bob spends his own budget.
    for (let i = 0; i < 3; i++) expect((await post(srv, BALANCE, { id: bob.accountId }, bob.token)).status).toBe(200);
    expectRateLimited(await post(srv, BALANCE, { id: bob.accountId }, bob.token));
  });

  it('two server instances share one budget (the counter is in Redis)', async () => {
    const other = await server({ RATE_LIMIT_KEY_PREFIX: prefix, RATE_LIMIT_USER_POINTS_PER_MINUTE: String(3 * balanceWeight) });
    const carol = await endUser(srv);
    expect((await post(srv, BALANCE, { id: carol.accountId }, carol.token)).status).toBe(200);
    expect((await post(other, BALANCE, { id: carol.accountId }, carol.token)).status).toBe(200);
    expect((await post(srv, BALANCE, { id: carol.accountId }, carol.token)).status).toBe(200);
    expectRateLimited(await post(other, BALANCE, { id: carol.accountId }, carol.token));
    expectRateLimited(await post(srv, BALANCE, { id: carol.accountId }, carol.token));
  });

  it('service keys are not counted by default: no refusal and not even a Redis key', async () => {
    const key = await createApiKey(srv.services.pool, { name: uniq('rl-service'), scopes: ['read'] });
    const accountId = await apiAccount(srv);
    for (let i = 0; i < 10; i++) {
      expect((await post(srv, BALANCE, { id: accountId }, key.token)).status).toBe(200);
      expect((await post(srv, BALANCE, { id: accountId }, srv.adminKey)).status).toBe(200);
    }
    expect(await redis.keys(`${prefix}:service:*`)).toEqual([]);
  });
});

describe('subscriptions', () => {
  it('count once, when they start (WebSocket): the updates they push are free, a refusal is RATE_LIMITED without HTTP parts', async () => {
    const BAR = `subscription($id: ID!) { balanceChanged(accountId: $id) { available version } }`;
    const barWeight = weightOf(BAR, { id: 'x' });
    const prefix = `creditpool-test:ratelimit:${randomUUID()}`;
    const srv = await server({ RATE_LIMIT_KEY_PREFIX: prefix, RATE_LIMIT_USER_POINTS_PER_MINUTE: String(barWeight) });
    const gina = await endUser(srv);
    const bar = wsSubscribe(srv.url, `Bearer ${gina.token}`, BAR, { id: gina.accountId });
    try {
      await bar.waitFor((b) => b.events.length >= 1, 'the snapshot');
      const [key] = await redis.keys(`${prefix}:user:*`);
      expect(Number(await redis.get(key!))).toBe(barWeight);
      // Two changes reach the bar; the user's counter does not move.
      for (const amount of ['1', '2']) {
        ok(await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, { input: { accountId: gina.accountId, amount, type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('rl-g') } }));
      }
      await bar.waitFor((b) => b.events.length >= 3, 'two updates');
      expect(Number(await redis.get(key!))).toBe(barWeight);
      // The budget is spent: the next operation on the socket is refused.
      const second = wsSubscribe(srv.url, `Bearer ${gina.token}`, BAR, { id: gina.accountId });
      try {
        await second.waitFor((b) => b.errors.length > 0, 'the refusal');
        expect(second.events).toEqual([]);
        expect(second.errors[0]!.extensions).toEqual({ code: 'RATE_LIMITED', retryAfterSeconds: expect.any(Number) });
      } finally {
        await second.dispose();
      }
    } finally {
      await bar.dispose();
    }
  });
});

describe('the window', () => {
  it('refills: refused with Retry-After 1 in a 1-second window, answered again once it passed', async () => {
    // One balance read per 1-second window (the same rate per minute as 60 reads).
    const srv = await server({ RATE_LIMIT_WINDOW_SECONDS: '1', RATE_LIMIT_USER_POINTS_PER_MINUTE: String(60 * balanceWeight) });
    const dave = await endUser(srv);
    let refusedAt = 0;
    // The first read of a window passes and the next is refused, unless the window turned between
    // them: then the pair is tried again (at most a few times).
    for (let attempt = 0; attempt < 5 && refusedAt === 0; attempt++) {
      expect((await post(srv, BALANCE, { id: dave.accountId }, dave.token)).status).toBe(200);
      const second = await post(srv, BALANCE, { id: dave.accountId }, dave.token);
      if (second.status === 200) continue;
      expect(expectRateLimited(second)).toBe(1);
      refusedAt = Date.now();
    }
    expect(refusedAt).toBeGreaterThan(0);
    // Polled until answered, for at most 3 s: the window of 1 s ends, the budget is back.
    let answered = false;
    while (!answered && Date.now() - refusedAt < 3_000) {
      const res = await post(srv, BALANCE, { id: dave.accountId }, dave.token);
      if (res.status === 200) answered = true;
      else expectRateLimited(res);
    }
    expect(answered).toBe(true);
  });
});

describe('service keys with RATE_LIMIT_SERVICE_POINTS_PER_MINUTE', () => {
  it('are limited per key (the bootstrap admin key by itself), and a refused charge changes nothing', async () => {
    const recordWeight = weightOf(RECORD, {});
    const srv = await server({ RATE_LIMIT_SERVICE_POINTS_PER_MINUTE: String(2 * recordWeight) });
    // Made and read through the services and PostgreSQL, not the admin key, whose budget is counted here.
    const accountId = gid('Account', await createFundedAccount(srv.services, { paid: 100 }));
    const meter = await createApiKey(srv.services.pool, { name: uniq('rl-meter'), scopes: ['usage:write'] });
    const other = await createApiKey(srv.services.pool, { name: uniq('rl-meter'), scopes: ['usage:write'] });
    const use = () => ({ accountId, idempotencyKey: uniq('rl-use'), category: 'unit' });
    for (let i = 0; i < 2; i++) expect(ok(await post(srv, RECORD, { input: use() }, meter.token)).recordUsage.id).toBeTruthy();

    const refused = use();
    await expectUnchanged(srv, [accountId], async () => expectRateLimited(await post(srv, RECORD, { input: refused }, meter.token)));
    const { rows } = await srv.services.pool.query(`SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1 AND idempotency_key = $2`, [dbId(accountId), refused.idempotencyKey]);
    expect(rows[0].n).toBe(0);

    // Other keys have budgets of their own.
    expect(ok(await post(srv, RECORD, { input: use() }, other.token)).recordUsage.id).toBeTruthy();
    for (let i = 0; i < 2; i++) expect(ok(await post(srv, RECORD, { input: use() }, srv.adminKey)).recordUsage.id).toBeTruthy();
    expectRateLimited(await post(srv, RECORD, { input: use() }, srv.adminKey));
  });
});

describe('when Redis is away, the limit fails open to a per-instance budget in memory', () => {
  it('Redis down: answered at once, still limited per instance', async () => {
    const privateRedis = await startPrivateRedis();
    privateRedises.push(privateRedis);
    const prefix = `creditpool-test:ratelimit:${randomUUID()}`;
    const srv = await server({ REDIS_URL: privateRedis.url, RATE_LIMIT_KEY_PREFIX: prefix, RATE_LIMIT_USER_POINTS_PER_MINUTE: String(3 * balanceWeight) });
    const erin = await endUser(srv);
    // Counted in Redis while it is up.
    expect((await post(srv, BALANCE, { id: erin.accountId }, erin.token)).status).toBe(200);
    const probe = new Redis(privateRedis.url);
    expect(await probe.keys(`${prefix}:user:*`)).toHaveLength(1);
    probe.disconnect();

    await privateRedis.kill();
    // The in-memory stand-in starts from a full budget: three reads pass, the fourth is refused.
    for (let i = 0; i < 3; i++) {
      const res = await post(srv, BALANCE, { id: erin.accountId }, erin.token);
      expect(res.status).toBe(200);
      expect(ok(res).account.id).toBe(erin.accountId);
    }
    expectRateLimited(await post(srv, BALANCE, { id: erin.accountId }, erin.token));
  });

  it('Redis that does not answer (CLIENT PAUSE): answered after RATE_LIMIT_REDIS_TIMEOUT_MS, not after the pause', async () => {
    const privateRedis = await startPrivateRedis();
    privateRedises.push(privateRedis);
    const srv = await server({ REDIS_URL: privateRedis.url, RATE_LIMIT_REDIS_TIMEOUT_MS: '100', RATE_LIMIT_USER_POINTS_PER_MINUTE: String(3 * balanceWeight) });
    const frank = await endUser(srv);
    expect((await post(srv, BALANCE, { id: frank.accountId }, frank.token)).status).toBe(200);
    const admin = new Redis(privateRedis.url);
    try {
      // Every client's commands wait for 10 s; the connections stay open and "ready".
      expect(await admin.call('CLIENT', 'PAUSE', '10000', 'ALL')).toBe('OK');
      const started = Date.now();
      const res = await post(srv, BALANCE, { id: frank.accountId }, frank.token);
      const tookMs = Date.now() - started;
      expect(res.status).toBe(200);
      expect(ok(res).account.id).toBe(frank.accountId);
      expect(tookMs).toBeLessThan(5_000);
    } finally {
      admin.disconnect();
      await privateRedis.kill();
    }
  });
});
