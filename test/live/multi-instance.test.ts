/**
 * Fan-out across instances: two real server PROCESSES (src/main.ts) on two ports sharing the
 * test PostgreSQL and a private Redis that the test kills and restarts. Also API key revocation
 * by the apikey:create --revoke CLI (a third process): announced on Redis, it is refused by both
 * instances on their next request; with Redis down at revoke time the revocation still stands.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { startServer, type StartedServer } from '../../demo/server-process.js';
import { runScript, type ScriptRun } from '../setup/run-script.js';
import { startPrivateRedis, type PrivateRedis } from '../setup/private-redis.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { BALANCE_SUB, USAGE_SUB, postGraphql, revocationsReceived, sseSubscribe, streamsStarted, waitForResyncs, liveResyncs, waitForRevocationsReceived, waitForStreamsStarted, wsSubscribe, type LiveSub } from './helpers.js';
import { dbId } from '../api/helpers.js';
import { API_KEY_CACHE_TTL_MS, createApiKey } from '../../src/auth/api-keys.js';

const ADMIN_KEY = `cp_admin_${randomBytes(16).toString('hex')}`;
let redis: PrivateRedis;
let a: StartedServer;
let b: StartedServer;
let services: TestServices;
const subs: LiveSub[] = [];
const track = <T extends LiveSub>(s: T): T => (subs.push(s), s);

const gql = (server: StartedServer, query: string, variables?: Record<string, unknown>) => postGraphql(server.graphqlUrl, ADMIN_KEY, query, variables);

let seq = 0;
const key = (p: string) => `${p}-${process.pid}-${Date.now()}-${seq++}`;

async function account(server: StartedServer, paid: string): Promise<string> {
  const id = (await gql(server, `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, { input: { externalId: key('mi'), name: 'multi-instance', kind: 'ORGANIZATION', welcomeBonus: false } })).createAccount.id;
  await gql(server, `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, { input: { accountId: id, amount: paid, type: 'PAID', source: 'PURCHASE', idempotencyKey: key('g') } });
  return id;
}

const charge = (server: StartedServer, accountId: string) =>
  gql(server, `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId, category: 'unit', idempotencyKey: key('u') } });

const httpBalance = async (server: StartedServer, accountId: string) =>
  (await gql(server, `query($id: ID!) { account(id: $id) { balance { accountId available total reserved free paid version updatedAt percentRemaining periodCredits } } }`, { id: accountId })).account.balance;

beforeAll(async () => {
  redis = await startPrivateRedis();
  services = createTestServices(4);
  const env = { DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: redis.url, ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'warn', MIGRATE_ON_BOOT: 'false', OUTBOX_POLL_INTERVAL_MS: '200' };
  [a, b] = await Promise.all([startServer({ name: 'test-live-a', workers: false, env }), startServer({ name: 'test-live-b', workers: false, env })]);
});

afterAll(async () => {
  await Promise.allSettled(subs.map((s) => s.dispose()));
  await Promise.allSettled([a?.stop(), b?.stop()]);
  await services?.close();
  await redis?.stop();
});

describe('two server instances sharing PostgreSQL and Redis', () => {
  it('a subscriber on B receives, in order and without gaps, every balance version of 500 charges committed through A', async () => {
    const id = await account(a, '1000');
    const before = await streamsStarted(b.graphqlUrl);
    const sub = track(wsSubscribe(b.graphqlUrl, `Bearer ${ADMIN_KEY}`, BALANCE_SUB, { id }));
    const usage = track(wsSubscribe(b.graphqlUrl, `Bearer ${ADMIN_KEY}`, USAGE_SUB, { id }));
    await sub.waitFor((s) => s.events.length === 1, 'the snapshot');
    await waitForStreamsStarted(b.graphqlUrl, before + 2); // usageRecorded has no snapshot to wait for
    const start = BigInt(sub.events[0].balanceChanged.version);
    // 500 charges, 8 in flight at a time, all through instance A.
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => { while (next++ < 500) await charge(a, id); }));
    const final = await httpBalance(b, id);
    expect(final.available).toBe('500');
    // Every committed change moves the version by one; concurrent charges may commit as one
    // group (CHARGE_PATH=group), so there are between 1 and 500 changes.
    const changes = BigInt(final.version) - start;
    expect(changes).toBeGreaterThanOrEqual(1n);
    expect(changes).toBeLessThanOrEqual(500n);
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.version === final.version, `version ${final.version}`, 30_000);
    const versions = sub.events.map((e) => BigInt(e.balanceChanged.version));
    expect(versions).toEqual(Array.from({ length: Number(changes) + 1 }, (_, i) => start + BigInt(i)));
    const available = sub.events.map((e) => Number(e.balanceChanged.available));
    for (let i = 1; i < available.length; i++) expect(available[i]!).toBeLessThan(available[i - 1]!);
    expect(sub.events.at(-1).balanceChanged).toEqual(final);
    await usage.waitFor((s) => s.events.length === 500, '500 usage events', 30_000);
    expect(new Set(usage.events.map((e) => e.usageRecorded.id)).size).toBe(500);
  });

  it('each instance holds ONE Redis subscriber connection, however many clients subscribe', async () => {
    const ids = await Promise.all(Array.from({ length: 3 }, () => account(a, '5')));
    const many = ids.flatMap((id) => [a, b, a, b].map((server) => track(wsSubscribe(server.graphqlUrl, `Bearer ${ADMIN_KEY}`, BALANCE_SUB, { id }))));
    await Promise.all(many.map((s) => s.waitFor((x) => x.events.length === 1, 'the snapshot')));
    const admin = new Redis(redis.url);
    try {
      const list = (await admin.client('LIST')) as string;
      const subscribers = list.split('\n').filter((line) => line.includes('name=creditpool-live-subscriber'));
      expect(subscribers).toHaveLength(2);
    } finally {
      admin.disconnect();
    }
  });

  it('a change committed by a process that never publishes (as after a crash between commit and publish) still reaches subscribers', async () => {
    const id = await account(a, '10');
    const sub = track(wsSubscribe(b.graphqlUrl, `Bearer ${ADMIN_KEY}`, BALANCE_SUB, { id }));
    await sub.waitFor((s) => s.events.length === 1, 'the snapshot');
    // This test process runs no relay: its commit leaves the outbox row for the servers' relays.
    await recordUsage(services, { accountId: dbId(id), category: 'unit', idempotencyKey: key('direct') } as never);
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.available === '9', 'the change published by a server relay');
  });

  it('Redis killed and restarted mid-stream: every subscriber holds the database balance within 2 seconds of Redis returning', async () => {
    const ids = await Promise.all(Array.from({ length: 4 }, () => account(a, '1000')));
    const watchers = ids.flatMap((id) => [a, b].map((server) => ({ id, sub: track(wsSubscribe(server.graphqlUrl, `Bearer ${ADMIN_KEY}`, BALANCE_SUB, { id })) })));
    await Promise.all(watchers.map((w) => w.sub.waitFor((s) => s.events.length === 1, 'the snapshot')));
    for (const id of ids) await charge(a, id);
    await Promise.all(watchers.map((w) => w.sub.waitFor((s) => s.events.length === 2, 'the first live update')));

    await redis.kill();
    // Charges keep committing while Redis is gone (the outbox keeps their publications).
    for (let round = 0; round < 5; round++) for (const id of ids) await charge(round % 2 ? a : b, id);
    await redis.start();
    const back = Date.now();

    const dbVersion = async (id: string) => (await services.pool.query(`SELECT version::text AS v FROM balances WHERE account_id = $1`, [dbId(id)])).rows[0].v as string;
    const expected = new Map(await Promise.all(ids.map(async (id) => [id, await dbVersion(id)] as const)));
    await Promise.all(
      watchers.map((w) => w.sub.waitFor((s) => s.events.at(-1)?.balanceChanged.version === expected.get(w.id), `version ${expected.get(w.id)} after the restart`, 2_000)),
    );
    const within = Date.now() - back;
    expect(within).toBeLessThanOrEqual(2_000);
    for (const w of watchers) {
      expect(w.sub.events.at(-1).balanceChanged).toEqual(await httpBalance(a, w.id));
      const versions = w.sub.events.map((e) => BigInt(e.balanceChanged.version));
      for (let i = 1; i < versions.length; i++) expect(versions[i]!).toBeGreaterThan(versions[i - 1]!);
    }
    // And the stream is live again afterwards.
    await charge(b, ids[0]!);
    const after = await dbVersion(ids[0]!);
    await Promise.all(watchers.filter((w) => w.id === ids[0]).map((w) => w.sub.waitFor((s) => s.events.at(-1)?.balanceChanged.version === after, 'a live update after recovery')));
  });
});

/** Runs `scripts/create-api-key.ts` (npm run apikey:create) as its own process, against the test database and this file's Redis. */
function apiKeyCli(args: string[]): Promise<ScriptRun> {
  return runScript('scripts/create-api-key.ts', args, { ...process.env, DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: redis.url });
}

/** A read-only query with `token`: HTTP status and error codes. */
async function asKey(server: StartedServer, token: string) {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: '{ settings { creditUsdValue } }' }),
  });
  const body = (await res.json()) as { errors?: Array<{ extensions?: { code?: string } }> };
  return { status: res.status, codes: (body.errors ?? []).map((e) => e.extensions?.code) };
}

describe('revoking an API key with the CLI while two instances serve it', () => {
  it('both instances refuse the key on their very next request, and its open streams on both end with UNAUTHENTICATED', async () => {
    const id = await account(a, '5');
    const created = await createApiKey(services.pool, { name: key('revoke-broadcast'), scopes: ['read'] });
    // Used on both: each instance's lookup cache now holds the key (for API_KEY_CACHE_TTL_MS).
    for (const server of [a, b]) expect(await asKey(server, created.token)).toEqual({ status: 200, codes: [] });
    const ws = track(wsSubscribe(a.graphqlUrl, `Bearer ${created.token}`, BALANCE_SUB, { id }));
    const sse = track(sseSubscribe(b.graphqlUrl, `Bearer ${created.token}`, BALANCE_SUB, { id }));
    await ws.waitFor((s) => s.events.length === 1, 'the WebSocket snapshot on A');
    await sse.waitFor((s) => s.events.length === 1, 'the SSE snapshot on B');
    const heardBefore = await Promise.all([a, b].map((server) => revocationsReceived(server.graphqlUrl)));

    const cli = await apiKeyCli(['--revoke', created.id]);
    expect(cli.stdout).toContain(`revoked API key ${created.id}`);
    expect(cli.code).toBe(0);
    const revokedAt = Date.now();
    // The announcement reached each instance (its subscriber connection counted it)...
    await Promise.all([a, b].map((server, i) => waitForRevocationsReceived(server.graphqlUrl, heardBefore[i]! + 1)));
    // ...so the very next request is refused: no waiting for the lookup cache to expire.
    for (const server of [a, b]) expect(await asKey(server, created.token)).toEqual({ status: 401, codes: ['UNAUTHENTICATED'] });
    // The open streams end like at the periodic re-check: one UNAUTHENTICATED error, then complete.
    const bound = API_KEY_CACHE_TTL_MS / 2; // far beyond what the announcement takes, far below the cache's fallback
    await ws.waitFor((s) => s.completed, 'the WebSocket stream on A to end', bound);
    await sse.waitFor((s) => s.completed, 'the SSE stream on B to end', bound);
    expect(Date.now() - revokedAt).toBeLessThan(bound);
    for (const sub of [ws, sse]) expect(sub.errors.map((e) => e.extensions?.code ?? e.message)).toEqual(['UNAUTHENTICATED']);
  });

  it('with Redis down at revoke time the revocation still stands (a warning, exit 0), and each instance forgets its cached keys once its subscriber is back', async () => {
    const created = await createApiKey(services.pool, { name: key('revoke-no-redis'), scopes: ['read'] });
    for (const server of [a, b]) expect(await asKey(server, created.token)).toEqual({ status: 200, codes: [] });
    const resyncsBefore = await Promise.all([a, b].map((server) => liveResyncs(server.graphqlUrl)));

    await redis.kill();
    const cli = await apiKeyCli(['--revoke', created.id]);
    expect(cli.stdout).toContain(`revoked API key ${created.id}`);
    expect(cli.stderr).toMatch(/warning: .*could not announce the revocation on Redis/);
    expect(cli.code).toBe(0);
    const { rows } = await services.pool.query<{ revoked_at: Date | null }>('SELECT revoked_at FROM api_keys WHERE id = $1', [created.id]);
    expect(rows[0]?.revoked_at).toBeInstanceOf(Date);

    await redis.start();
    // A subscriber that was disconnected may have missed announcements: once back, it drops the
    // whole lookup cache, so the revocation shows without waiting for the cache to expire.
    await Promise.all([a, b].map((server, i) => waitForResyncs(server.graphqlUrl, resyncsBefore[i]! + 1)));
    for (const server of [a, b]) expect(await asKey(server, created.token)).toEqual({ status: 401, codes: ['UNAUTHENTICATED'] });
  });
});
