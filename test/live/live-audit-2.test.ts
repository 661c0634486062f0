/**
 * Second audit of the live transport (balanceChanged, usageRecorded, creditAlerts over graphql-ws
 * and SSE) on one real server (in-process buildServer, real PostgreSQL and Redis): what a credit
 * bar in production hits that the earlier tests did not pin down.
 * - An end user's SSE stream at its token's `exp` ends with UNAUTHENTICATED (as a revoked key's
 *   does), not with a bare `complete` a client takes for a normal end and never renews.
 * - SSE responses tell buffering proxies (nginx) not to buffer them.
 * - Many usageRecorded subscribers of one account cost one database read per update on an
 *   instance, not one per subscriber.
 * - Every live field refuses another tenant's account exactly like a missing one, on both
 *   transports.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, ok, uniq } from '../api/helpers.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { ALERTS_SUB, BALANCE_SUB, USAGE_SUB, sseSubscribe, streamsStarted, waitForStreamsStarted, wsSubscribe, type LiveSub } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;

let srv: TestServer;
/** usageEvent.findMany calls of the server's read layer since boot. */
let usageReads = 0;
const subs: LiveSub[] = [];
const track = <T extends LiveSub>(s: T): T => (subs.push(s), s);
const bearer = () => `Bearer ${srv.adminKey}`;

async function charge(accountId: string) {
  return ok(await srv.gql(RECORD, { input: { accountId, category: 'unit', idempotencyKey: uniq('use') } })).recordUsage as { id: string; cost: string };
}

beforeAll(async () => {
  srv = await startTestServer({ LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION: '20' }, {
    onPrismaQuery: (model, operation) => {
      if (model === 'UsageEvent' && operation === 'findMany') usageReads++;
    },
  });
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
});

afterAll(async () => {
  await srv.close();
});

describe('an end user token that expires while a stream is open', () => {
  it('SSE: the stream ends with UNAUTHENTICATED at exp (not a bare complete), after delivering what came before', async () => {
    const orgExt = uniq('org');
    const org = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt, paid: '10' });
    // exp is in whole seconds: 6 leaves the snapshot 5-6 s before the end even on a loaded machine.
    const token = `Bearer ${await signUserToken(srv.jwtSecret, { sub: uniq('user'), org: orgExt, expiresInSeconds: 6 })}`;
    const sse = track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: org }));
    await sse.waitFor((s) => s.events.length === 1, 'the snapshot');
    await sse.waitFor((s) => s.completed || s.errors.length > 0 || s.closedWith !== null, 'the end at exp', 15_000);
    expect(sse.errors.map((e) => e.extensions?.code)).toEqual(['UNAUTHENTICATED']);
    expect(sse.events).toHaveLength(1);
  });
});

describe('SSE through proxies', () => {
  it('a streamed subscription tells buffering proxies not to buffer it, and starts with a heartbeat', async () => {
    const account = await apiAccount(srv, { paid: '10' });
    const controller = new AbortController();
    const res = await fetch(srv.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: bearer() },
      body: JSON.stringify({ query: BALANCE_SUB, variables: { id: account } }),
      signal: controller.signal,
    });
    try {
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(res.headers.get('x-accel-buffering')).toBe('no');
      expect(res.headers.get('cache-control')).toMatch(/no-cache/);
      const reader = res.body!.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      expect(first.startsWith(':')).toBe(true);
    } finally {
      controller.abort();
    }
  });

  it('a query sent with Accept: text/event-stream, application/json is answered as JSON, without the streaming header', async () => {
    const res = await fetch(srv.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream, application/json', authorization: bearer() },
      body: JSON.stringify({ query: '{ __typename }' }),
    });
    expect(res.headers.get('content-type')).toMatch(/^application\/(graphql-response\+)?json/);
    expect(res.headers.get('x-accel-buffering')).toBeNull();
    await res.text();
  });
});

describe('many subscribers on one hot account', () => {
  it('usageRecorded: one database read per update on this instance, however many subscribers, and each gets every event', async () => {
    const account = await apiAccount(srv, { paid: '1000' });
    const n = 20;
    const before = await streamsStarted(srv.url);
    for (let i = 0; i < n; i++) track(wsSubscribe(srv.url, bearer(), USAGE_SUB, { id: account }));
    await waitForStreamsStarted(srv.url, before + n);
    const readsBefore = usageReads;
    const charges = 5;
    const ids: string[] = [];
    for (let i = 0; i < charges; i++) {
      ids.push((await charge(account)).id);
      // One update at a time: each wakes every subscriber once.
      await Promise.all(subs.map((s) => s.waitFor((x) => x.events.length === i + 1, `event ${i + 1}`)));
    }
    for (const s of subs) expect(s.events.map((e) => e.usageRecorded.id)).toEqual(ids);
    // Without sharing: n reads per update (100 here). Shared: one per update.
    expect(usageReads - readsBefore).toBeLessThanOrEqual(charges);
  });
});

describe('another tenant\'s account vs a missing one', () => {
  const missingId = Buffer.from('Account:00000000-0000-4000-8000-000000000000').toString('base64');
  let foreign: string;
  let token: string;

  beforeAll(async () => {
    const orgExt = uniq('org');
    await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt, paid: '10' });
    foreign = await apiAccount(srv, { paid: '10' });
    token = `Bearer ${await signUserToken(srv.jwtSecret, { sub: uniq('user'), org: orgExt, expiresInSeconds: 600 })}`;
  });

  for (const [field, doc] of [['balanceChanged', BALANCE_SUB], ['usageRecorded', USAGE_SUB], ['creditAlerts', ALERTS_SUB]] as const) {
    it(`${field}: the same NOT_FOUND over WebSocket and SSE, and nothing of the account is sent`, async () => {
      const seen: Array<Array<{ message: string; code?: string }>> = [];
      for (const subscribe of [wsSubscribe, sseSubscribe]) {
        for (const id of [foreign, missingId]) {
          const s = track(subscribe(srv.url, token, doc, { id }));
          await s.waitFor((x) => x.errors.length > 0, `${field} refusal`);
          expect(s.events).toEqual([]);
          seen.push(s.errors.map((e) => ({ message: e.message, code: e.extensions?.code })));
        }
      }
      expect(seen[0]![0]!.code).toBe('NOT_FOUND');
      for (const errors of seen) expect(errors).toEqual(seen[0]);
    });
  }
});
