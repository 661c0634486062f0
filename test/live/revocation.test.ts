/**
 * Revoking an API key ends what it holds open (src/auth/api-keys.ts revokeApiKey: "stops
 * authenticating here immediately, elsewhere within API_KEY_CACHE_TTL_MS"): its open
 * subscription streams over WebSocket and SSE end with one UNAUTHENTICATED error and deliver
 * nothing recorded after the revocation, and a new operation on an already open WebSocket is
 * refused (UNAUTHENTICATED, then close 4403). A revocation made by another process that is not
 * announced on Redis (only the row changes: Redis was unreachable for the revoker) is seen through
 * the lookup cache within its TTL; the announced case is in multi-instance.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, ok, uniq } from '../api/helpers.js';
import { API_KEY_CACHE_TTL_MS, createApiKey, revokeApiKey } from '../../src/auth/api-keys.js';
import { CREDENTIAL_RECHECK_INTERVAL_MS } from '../../src/graphql/subscriptions.js';
import { announceKeyRevocation } from '../../src/auth/key-revocation.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { BALANCE_SUB, USAGE_SUB, revocationsReceived, sseSubscribe, waitForRevocationsReceived, waitForStreamsStarted, streamsStarted, wsSubscribe, type LiveSub } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;

let srv: TestServer;
const subs: LiveSub[] = [];
const track = <T extends LiveSub>(s: T): T => (subs.push(s), s);

/** This file's own revocation channel, so announcements here reach only this file's server. */
const CHANNEL_PREFIX = `revocation-test-${process.pid}-`;
const announce = { redisUrl: TEST_REDIS_URL, channelPrefix: CHANNEL_PREFIX };

beforeAll(async () => {
  srv = await startTestServer({ LIVE_CHANNEL_PREFIX: CHANNEL_PREFIX });
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
});

afterAll(async () => {
  await srv?.close();
});

async function readKey() {
  return createApiKey(srv.services.pool, { name: uniq('live-revoked'), scopes: ['read'] });
}

async function charge(accountId: string) {
  return ok(await srv.gql(RECORD, { input: { accountId, category: 'unit', idempotencyKey: uniq('use') } })).recordUsage;
}

/** The stream ended with exactly one UNAUTHENTICATED error. */
function expectEndedUnauthenticated(sub: LiveSub) {
  expect(sub.errors.map((e) => e.extensions?.code ?? e.message)).toEqual(['UNAUTHENTICATED']);
}

describe('revoking an API key', () => {
  it('ends its open WebSocket and SSE streams with UNAUTHENTICATED and delivers nothing recorded after the revocation', async () => {
    const account = await apiAccount(srv, { paid: '10' });
    const key = await readKey();
    const before = await streamsStarted(srv.url);
    const ws = track(wsSubscribe(srv.url, `Bearer ${key.token}`, BALANCE_SUB, { id: account }));
    const sse = track(sseSubscribe(srv.url, `Bearer ${key.token}`, BALANCE_SUB, { id: account }));
    const usage = track(wsSubscribe(srv.url, `Bearer ${key.token}`, USAGE_SUB, { id: account }));
    await ws.waitFor((s) => s.events.length === 1, 'the WebSocket snapshot');
    await sse.waitFor((s) => s.events.length === 1, 'the SSE snapshot');
    await waitForStreamsStarted(srv.url, before + 3);
    await charge(account);
    await ws.waitFor((s) => s.events.length === 2, 'an update before the revocation');
    await sse.waitFor((s) => s.events.length === 2, 'an SSE update before the revocation');
    await usage.waitFor((s) => s.events.length === 1, 'a usage event before the revocation');

    expect(await revokeApiKey(srv.services.pool, key.id)).toBe(true);
    const http = await srv.gql(`{ settings { creditUsdValue } }`, {}, key.token);
    expect(http.status).toBe(401);
    await charge(account);

    await ws.waitFor((s) => s.errors.length > 0 && s.completed, 'the WebSocket stream to end');
    await sse.waitFor((s) => s.errors.length > 0 && s.completed, 'the SSE stream to end');
    await usage.waitFor((s) => s.errors.length > 0 && s.completed, 'the usageRecorded stream to end');
    for (const sub of [ws, sse, usage]) expectEndedUnauthenticated(sub);
    // Nothing recorded after the revocation reached the revoked key.
    expect(ws.events.map((e) => e.balanceChanged.available)).toEqual(['10', '9']);
    expect(sse.events.map((e) => e.balanceChanged.available)).toEqual(['10', '9']);
    expect(usage.events).toHaveLength(1);
  });

  it('ends a stream on an account with no activity (the periodic re-check)', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const key = await readKey();
    const ws = track(wsSubscribe(srv.url, `Bearer ${key.token}`, BALANCE_SUB, { id: account }));
    const sse = track(sseSubscribe(srv.url, `Bearer ${key.token}`, BALANCE_SUB, { id: account }));
    await ws.waitFor((s) => s.events.length === 1, 'the snapshot');
    await sse.waitFor((s) => s.events.length === 1, 'the SSE snapshot');
    expect(await revokeApiKey(srv.services.pool, key.id)).toBe(true);
    await ws.waitFor((s) => s.completed, 'the WebSocket stream to end', 5 * CREDENTIAL_RECHECK_INTERVAL_MS + 5_000);
    await sse.waitFor((s) => s.completed, 'the SSE stream to end', 5 * CREDENTIAL_RECHECK_INTERVAL_MS + 5_000);
    expectEndedUnauthenticated(ws);
    expectEndedUnauthenticated(sse);
    expect(ws.events).toHaveLength(1);
  });

  it('refuses a new operation on an open WebSocket (UNAUTHENTICATED) and closes it with 4403', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const key = await readKey();
    const ws = track(wsSubscribe(srv.url, `Bearer ${key.token}`, `query($id: ID!) { account(id: $id) { id } }`, { id: account }));
    await ws.waitFor((s) => s.completed, 'the first query');
    expect(ws.events).toEqual([{ account: { id: account } }]);
    expect(await revokeApiKey(srv.services.pool, key.id)).toBe(true);
    const second = await new Promise<{ data?: unknown; errors?: unknown }>((resolve) => {
      ws.client.subscribe(
        { query: `query($id: ID!) { account(id: $id) { id } }`, variables: { id: account } },
        { next: (r) => resolve(r as never), error: (e) => resolve({ errors: e }), complete: () => undefined },
      );
    });
    expect(second.data ?? null).toBeNull();
    expect(JSON.stringify(second.errors)).toContain('UNAUTHENTICATED');
    await ws.waitFor((s) => s.closedWith !== null, 'the close');
    expect(ws.closedWith).toEqual({ code: 4403, reason: 'Forbidden: credential revoked or expired' });
  });

  it('an announced revocation closes an idle WebSocket of the key (4403) without waiting for its next operation', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const key = await readKey();
    const ws = track(wsSubscribe(srv.url, `Bearer ${key.token}`, `query($id: ID!) { account(id: $id) { id } }`, { id: account }));
    await ws.waitFor((s) => s.completed, 'the first query');
    expect(ws.closedWith).toBeNull();
    const outcomes: unknown[] = [];
    expect(await revokeApiKey(srv.services.pool, key.id, { announce: { ...announce, onOutcome: (o) => outcomes.push(o) } })).toBe(true);
    expect(outcomes).toEqual([{ announcedTo: 1 }]);
    await ws.waitFor((s) => s.closedWith !== null, 'the idle socket to close');
    expect(ws.closedWith).toEqual({ code: 4403, reason: 'Forbidden: credential revoked or expired' });
  });

  it('an announced revocation ends the socket\'s open stream with UNAUTHENTICATED first, then closes the socket (4403)', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const key = await readKey();
    const ws = track(wsSubscribe(srv.url, `Bearer ${key.token}`, BALANCE_SUB, { id: account }));
    await ws.waitFor((s) => s.events.length === 1, 'the snapshot');
    await revokeApiKey(srv.services.pool, key.id, { announce: { ...announce, onOutcome: () => undefined } });
    await ws.waitFor((s) => s.closedWith !== null, 'the socket to close');
    expectEndedUnauthenticated(ws);
    expect(ws.completed).toBe(true);
    expect(ws.closedWith).toEqual({ code: 4403, reason: 'Forbidden: credential revoked or expired' });
  });

  it('an announcement naming a key that still authenticates closes nothing (it only makes the server look again)', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const key = await readKey();
    const ws = track(wsSubscribe(srv.url, `Bearer ${key.token}`, `query($id: ID!) { account(id: $id) { id } }`, { id: account }));
    await ws.waitFor((s) => s.completed, 'the first query');
    const heard = await revocationsReceived(srv.url);
    expect(await announceKeyRevocation(announce, key.id)).toBe(1);
    await waitForRevocationsReceived(srv.url, heard + 1);
    const second = await new Promise<{ data?: unknown; errors?: unknown }>((resolve) => {
      ws.client.subscribe(
        { query: `query($id: ID!) { account(id: $id) { id } }`, variables: { id: account } },
        { next: (r) => resolve(r as never), error: (e) => resolve({ errors: e }), complete: () => undefined },
      );
    });
    expect(second).toEqual({ data: { account: { id: account } } });
    expect(ws.closedWith).toBeNull();
  });

  it('a revocation by another process (no cache cleared here) ends the stream within the lookup cache TTL', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const key = await readKey();
    const sse = track(sseSubscribe(srv.url, `Bearer ${key.token}`, BALANCE_SUB, { id: account }));
    await sse.waitFor((s) => s.events.length === 1, 'the snapshot');
    // What scripts/create-api-key.ts --revoke does from its own process when Redis is down: only the row changes.
    await srv.services.pool.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1', [key.id]);
    const revokedAt = Date.now();
    await sse.waitFor((s) => s.completed, 'the stream to end', API_KEY_CACHE_TTL_MS + CREDENTIAL_RECHECK_INTERVAL_MS + 10_000);
    expect(Date.now() - revokedAt).toBeLessThanOrEqual(API_KEY_CACHE_TTL_MS + CREDENTIAL_RECHECK_INTERVAL_MS + 2_000);
    expectEndedUnauthenticated(sse);
  }, 40_000);
});
