/**
 * Live subscriptions on one real server (in-process buildServer, real PostgreSQL and Redis):
 * snapshot-then-updates, usage events and alerts, both transports (graphql-ws and SSE),
 * authorization and tenant isolation, limits, graceful shutdown.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, ok, uniq } from '../api/helpers.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { createApiKey } from '../../src/auth/api-keys.js';
import { withTransaction } from '../../src/db/pg.js';
import { AccountTx } from '../../src/services/account-tx.js';
import { recordCreditAlert } from '../../src/services/credit-alerts.js';
import { ALERTS_SUB, BALANCE_SUB, USAGE_SUB, sseSubscribe, streamsStarted, waitForStreamsStarted, wsSubscribe, wsUrl, type LiveSub } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;

let srv: TestServer;
const subs: LiveSub[] = [];
const track = <T extends LiveSub>(s: T): T => (subs.push(s), s);
const bearer = () => `Bearer ${srv.adminKey}`;

async function charge(accountId: string, category = 'unit', idempotencyKey = uniq('use')) {
  return ok(await srv.gql(RECORD, { input: { accountId, category, idempotencyKey } })).recordUsage as { id: string; cost: string };
}

async function httpBalance(accountId: string) {
  return ok(await srv.gql(`query($id: ID!) { account(id: $id) { balance { available total reserved free paid version updatedAt percentRemaining periodCredits accountId } } }`, { id: accountId }))
    .account.balance;
}

beforeAll(async () => {
  srv = await startTestServer({ LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION: '3', LIVE_MAX_CONNECTIONS_PER_TOKEN: '4' });
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
});

afterAll(async () => {
  await srv.close();
});

describe('balanceChanged', () => {
  it('sends the current balance at once, then one event per committed change, versions strictly increasing', async () => {
    const account = await apiAccount(srv, { paid: '100' });
    const sub = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await sub.waitFor((s) => s.events.length === 1, 'the snapshot');
    const first = sub.events[0].balanceChanged;
    expect(first).toEqual(await httpBalance(account));
    expect(first.available).toBe('100');

    for (let i = 0; i < 5; i++) await charge(account);
    await sub.waitFor((s) => s.events.length === 6, 'five updates');
    const versions = sub.events.map((e) => BigInt(e.balanceChanged.version));
    for (let i = 1; i < versions.length; i++) expect(versions[i]! - versions[i - 1]!).toBe(1n);
    expect(sub.events.map((e) => e.balanceChanged.available)).toEqual(['100', '99', '98', '97', '96', '95']);
    expect(sub.events.at(-1).balanceChanged).toEqual(await httpBalance(account));
  });

  it('reports grants, holds and releases too (every change of the balance)', async () => {
    const account = await apiAccount(srv, { paid: '10' });
    const sub = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await sub.waitFor((s) => s.events.length === 1, 'the snapshot');
    const hold = ok(
      await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, {
        input: { accountId: account, amount: '4', idempotencyKey: uniq('hold'), ttlSeconds: 600 },
      }),
    ).reserveCredits.id;
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.reserved === '4', 'the hold');
    expect(sub.events.at(-1).balanceChanged.available).toBe('6');
    ok(await srv.gql(`mutation($id: ID!) { releaseReservation(reservationId: $id) { id } }`, { id: hold }));
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.reserved === '0', 'the release');
    ok(
      await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
        input: { accountId: account, amount: '5', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
      }),
    );
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.available === '15', 'the grant');
    expect(sub.events.at(-1).balanceChanged).toEqual(await httpBalance(account));
  });

  it('subscribe-then-snapshot: charges landing while subscribing are never lost and versions never go backwards', async () => {
    const account = await apiAccount(srv, { paid: '1000' });
    const charging = Promise.all(Array.from({ length: 40 }, () => charge(account)));
    const sub = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await charging;
    const final = await httpBalance(account);
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.version === final.version, `version ${final.version}`);
    const versions = sub.events.map((e) => BigInt(e.balanceChanged.version));
    for (let i = 1; i < versions.length; i++) expect(versions[i]!).toBeGreaterThan(versions[i - 1]!);
    // After the first event (the snapshot), there are no gaps.
    for (let i = 2; i < versions.length; i++) expect(versions[i]! - versions[i - 1]!).toBe(1n);
    expect(sub.events.at(-1).balanceChanged).toEqual(final);
    expect(final.available).toBe('960');
  });

  it('works over SSE (graphql-sse client) with the same events', async () => {
    const account = await apiAccount(srv, { paid: '20' });
    const sub = track(sseSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await sub.waitFor((s) => s.events.length === 1, 'the SSE snapshot');
    await charge(account);
    await charge(account);
    await sub.waitFor((s) => s.events.length === 3, 'two SSE updates');
    expect(sub.events.map((e) => e.balanceChanged.available)).toEqual(['20', '19', '18']);
  });
});

describe('usageRecorded and creditAlerts', () => {
  it('delivers each new usage event (the per-message cost view), in order', async () => {
    const account = await apiAccount(srv, { paid: '50' });
    const before = await streamsStarted(srv.url);
    const sub = track(wsSubscribe(srv.url, bearer(), USAGE_SUB, { id: account }));
    const balance = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await balance.waitFor((s) => s.events.length === 1, 'the balance snapshot');
    // usageRecorded has no snapshot: wait until the server has started both streams (read the
    // starting point), so every charge below is recorded after the subscription started.
    await waitForStreamsStarted(srv.url, before + 2);
    const keys = [uniq('u'), uniq('u'), uniq('u')];
    const ids: string[] = [];
    for (const k of keys) ids.push((await charge(account, 'unit', k)).id);
    await sub.waitFor((s) => s.events.length === 3, 'three usage events');
    expect(sub.events.map((e) => e.usageRecorded.idempotencyKey)).toEqual(keys);
    expect(sub.events.map((e) => e.usageRecorded.id)).toEqual(ids);
    expect(sub.events.map((e) => e.usageRecorded.cost)).toEqual(['1', '1', '1']);
    // A retry with the same key records nothing new, so nothing is delivered for it.
    await charge(account, 'unit', keys[0]);
    await charge(account, 'unit', uniq('u'));
    await sub.waitFor((s) => s.events.length === 4, 'the next new event');
    expect(sub.events[3].usageRecorded.idempotencyKey).not.toBe(keys[0]);
    // A batch commits its events in one transaction, which publishes one balance message: that
    // one wake-up delivers all of them, in order.
    const batchKeys = [uniq('b'), uniq('b'), uniq('b')];
    const recorded = ok(
      await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { event { id } errorCode } }`, {
        inputs: batchKeys.map((idempotencyKey) => ({ accountId: account, category: 'unit', idempotencyKey })),
      }),
    ).recordUsageBatch;
    await sub.waitFor((s) => s.events.length === 7, "the batch's three events");
    expect(sub.events.slice(4).map((e) => e.usageRecorded.idempotencyKey)).toEqual(batchKeys);
    expect(sub.events.slice(4).map((e) => e.usageRecorded.id)).toEqual(recorded.map((r: any) => r.event.id));
  });

  it('delivers every event of a batch larger than one read (600 events, one transaction, one wake-up), in order', async () => {
    const account = await apiAccount(srv, { paid: '1000' });
    const before = await streamsStarted(srv.url);
    const sub = track(wsSubscribe(srv.url, bearer(), USAGE_SUB, { id: account }));
    await waitForStreamsStarted(srv.url, before + 1);
    const keys = Array.from({ length: 600 }, () => uniq('big'));
    const recorded = ok(
      await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { event { id } errorCode } }`, {
        inputs: keys.map((idempotencyKey) => ({ accountId: account, category: 'unit', idempotencyKey })),
      }),
    ).recordUsageBatch;
    expect(recorded.every((r: any) => r.errorCode === null)).toBe(true);
    // No later change wakes the stream: the batch's one wake-up must deliver all 600 (a stream
    // reading one page of 500 per wake-up stops at 500 and this wait times out).
    await sub.waitFor((s) => s.events.length === 600, "all 600 of the batch's events");
    expect(sub.events.map((e) => e.usageRecorded.idempotencyKey)).toEqual(keys);
  });

  it('delivers credit alerts recorded for the account, once per threshold per period', async () => {
    const account = await apiAccount(srv, { paid: '10' });
    const before = await streamsStarted(srv.url);
    const sub = track(wsSubscribe(srv.url, bearer(), ALERTS_SUB, { id: account }));
    const balance = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await balance.waitFor((s) => s.events.length === 1, 'the balance snapshot');
    await waitForStreamsStarted(srv.url, before + 2); // creditAlerts has no snapshot either
    const raise = (threshold: number) =>
      withTransaction(srv.services.pool, async (tx) => {
        const atx = await AccountTx.lock(tx, dbId(account), new Date());
        const id = await recordCreditAlert(atx, { threshold, percentRemaining: threshold, availableMicroCredits: 2_500_000n, periodStart: new Date('2026-11-01T00:00:00Z') });
        await atx.finish();
        return id;
      });
    expect(await raise(25)).not.toBeNull();
    expect(await raise(25)).toBeNull(); // same threshold, same period: nothing new
    expect(await raise(15)).not.toBeNull();
    await sub.waitFor((s) => s.events.length === 2, 'two alerts');
    expect(sub.events.map((e) => e.creditAlerts.threshold)).toEqual([25, 15]);
    expect(sub.events[0].creditAlerts).toMatchObject({ accountId: account, available: '2.5', percentRemaining: 25 });
    const listed = ok(await srv.gql(`query($id: ID!) { account(id: $id) { alerts(first: 10) { edges { node { threshold } } } } }`, { id: account }));
    expect(listed.account.alerts.edges.map((e: any) => e.node.threshold)).toEqual([15, 25]);
  });
});

describe('authorization', () => {
  let userExt: string;
  let orgExt: string;
  let own: string;
  let foreign: string;

  beforeAll(async () => {
    userExt = uniq('user');
    orgExt = uniq('org');
    own = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt, paid: '10' });
    foreign = await apiAccount(srv, { paid: '10' });
  });

  it('refuses a WebSocket without a token with close code 4401, and a bad token with 4403', async () => {
    const none = track(wsSubscribe(srv.url, null, BALANCE_SUB, { id: own }));
    await none.waitFor((s) => s.closedWith !== null, 'the close');
    expect(none.closedWith!.code).toBe(4401);
    const bad = track(wsSubscribe(srv.url, 'Bearer cp_not_a_real_key', BALANCE_SUB, { id: own }));
    await bad.waitFor((s) => s.closedWith !== null, 'the close');
    expect(bad.closedWith!.code).toBe(4403);
    const forged = await signUserToken('another-secret-0123456789abcdef0123456789', { sub: userExt, org: orgExt, expiresInSeconds: 600 });
    const badJwt = track(wsSubscribe(srv.url, `Bearer ${forged}`, BALANCE_SUB, { id: own }));
    await badJwt.waitFor((s) => s.closedWith !== null, 'the close');
    expect(badJwt.closedWith!.code).toBe(4403);
    expect([...none.events, ...bad.events, ...badJwt.events]).toEqual([]);
  });

  it('refuses SSE without a token (401) and with a bad token', async () => {
    const res = await fetch(srv.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ query: BALANCE_SUB, variables: { id: own } }),
    });
    expect(res.status).toBe(401);
    expect((await res.json()).errors[0].extensions.code).toBe('UNAUTHENTICATED');
    const bad = await fetch(srv.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: 'Bearer cp_not_a_real_key' },
      body: JSON.stringify({ query: BALANCE_SUB, variables: { id: own } }),
    });
    const text = await bad.text();
    expect(text).toContain('UNAUTHENTICATED');
    expect(text).not.toContain('"available"');
  });

  it('lets an end user subscribe to its own organization, and refuses another tenant exactly like a missing account', async () => {
    const token = `Bearer ${await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 600 })}`;
    const mine = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: own }));
    await mine.waitFor((s) => s.events.length === 1, 'own snapshot');
    expect(mine.events[0].balanceChanged.available).toBe('10');

    const theirs = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: foreign }));
    const missing = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: Buffer.from('Account:00000000-0000-4000-8000-000000000000').toString('base64') }));
    await theirs.waitFor((s) => s.errors.length > 0, 'the refusal');
    await missing.waitFor((s) => s.errors.length > 0, 'the refusal');
    expect(theirs.errors).toEqual(missing.errors);
    expect(theirs.errors[0]!.extensions?.code).toBe('NOT_FOUND');
    // Activity on the foreign account is never delivered to anyone on this connection set.
    await charge(foreign);
    await charge(own);
    await mine.waitFor((s) => s.events.length === 2, 'own update');
    expect(theirs.events).toEqual([]);
    expect(mine.events.every((e) => e.balanceChanged.accountId === own)).toBe(true);
  });

  it('ends the connection (4403) when the token expires while connected, and SSE streams end with UNAUTHENTICATED', async () => {
    // exp is in whole seconds: 6 leaves both snapshots 5-6 s before the end even on a loaded machine.
    const token = `Bearer ${await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 6 })}`;
    const ws = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: own }));
    const sse = track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: own }));
    await ws.waitFor((s) => s.events.length === 1, 'snapshot before expiry');
    await sse.waitFor((s) => s.events.length === 1, 'SSE snapshot before expiry');
    await ws.waitFor((s) => s.closedWith !== null, 'the close at expiry', 15_000);
    expect(ws.closedWith).toEqual({ code: 4403, reason: 'Forbidden: token expired' });
    await sse.waitFor((s) => s.completed, 'the SSE stream to end at expiry', 15_000);
    expect(sse.errors.map((e) => e.extensions?.code)).toEqual(['UNAUTHENTICATED']); // not a bare complete (live-audit-2)
    // After expiry the same token cannot connect again.
    const again = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: own }));
    await again.waitFor((s) => s.closedWith !== null, 'the refusal');
    expect(again.closedWith!.code).toBe(4403);
  });
});

describe('limits and shutdown', () => {
  it('refuses more subscriptions per connection than LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION with RATE_LIMITED', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const first = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await first.waitFor((s) => s.events.length === 1, 'first');
    // Three more subscriptions on the SAME connection: the fourth one is refused.
    const got: Array<{ data?: unknown; errors?: unknown }> = [];
    const waiters: Promise<void>[] = [];
    for (let i = 0; i < 3; i++) {
      waiters.push(
        new Promise<void>((resolve) => {
          first.client.subscribe(
            { query: BALANCE_SUB, variables: { id: account } },
            {
              next: (r) => {
                got.push(r);
                resolve();
              },
              error: (e) => {
                got.push({ errors: e });
                resolve();
              },
              complete: () => resolve(),
            },
          );
        }),
      );
    }
    await Promise.all(waiters);
    const refused = got.filter((r) => r.errors);
    expect(refused).toHaveLength(1);
    expect(JSON.stringify(refused[0])).toContain('RATE_LIMITED');
    expect(got.filter((r) => r.data)).toHaveLength(2);
  });

  it('refuses more connections per credential than LIVE_MAX_CONNECTIONS_PER_TOKEN with 4429', async () => {
    const { token: key } = await createApiKey(srv.services.pool, { name: uniq('live-limit'), scopes: ['read'] });
    const token = `Bearer ${key}`;
    const account = await apiAccount(srv, { paid: '1' });
    const open: LiveSub[] = [];
    for (let i = 0; i < 4; i++) {
      const s = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account }));
      await s.waitFor((x) => x.events.length === 1, `connection ${i + 1}`);
      open.push(s);
    }
    const fifth = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account }));
    await fifth.waitFor((s) => s.closedWith !== null, 'the refusal');
    expect(fifth.closedWith!.code).toBe(4429);
    await open[0]!.dispose();
    await open[0]!.waitFor((s) => s.closedWith !== null, 'the first connection closed');
    // The server frees the slot in its own close handler, which may run just after the client
    // saw the close: a bounded number of attempts, each waiting for its answer.
    let again: LiveSub | null = null;
    for (let attempt = 0; attempt < 20 && !again?.events.length; attempt++) {
      again = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account }));
      await again.waitFor((s) => s.events.length === 1 || s.closedWith !== null, 'a free slot');
      if (!again.events.length) expect(again.closedWith!.code).toBe(4429);
    }
    expect(again!.events).toHaveLength(1);
  });

  it('counts connections per credential however its Authorization value is spelled (case of Bearer, spaces)', async () => {
    // The authenticator accepts "bearer", "BEARER", several spaces or a tab before the token and
    // surrounding blanks: each spelling is the same credential and must use the same slots.
    const { token: key } = await createApiKey(srv.services.pool, { name: uniq('live-spelling'), scopes: ['read'] });
    const account = await apiAccount(srv, { paid: '1' });
    const spellings = [`Bearer ${key}`, `bearer ${key}`, `Bearer  ${key}`, ` Bearer\t${key} `];
    for (const [i, authorization] of spellings.entries()) {
      const s = track(wsSubscribe(srv.url, authorization, BALANCE_SUB, { id: account }));
      await s.waitFor((x) => x.events.length === 1, `connection ${i + 1}`);
    }
    const fifth = track(wsSubscribe(srv.url, `BEARER ${key}`, BALANCE_SUB, { id: account }));
    await fifth.waitFor((s) => s.closedWith !== null || s.events.length > 0, 'the refusal');
    expect(fifth.events).toHaveLength(0);
    expect(fifth.closedWith!.code).toBe(4429);
  });

  it('counts SSE streams with WebSockets against LIVE_MAX_CONNECTIONS_PER_TOKEN (more: HTTP 429, RATE_LIMITED)', async () => {
    const { token: key } = await createApiKey(srv.services.pool, { name: uniq('live-sse-limit'), scopes: ['read'] });
    const token = `Bearer ${key}`;
    const account = await apiAccount(srv, { paid: '1' });
    const sse = [track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: account })), track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: account }))];
    const ws = [track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account })), track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account }))];
    for (const [i, s] of [...sse, ...ws].entries()) await s.waitFor((x) => x.events.length === 1, `stream ${i + 1}`);
    // A fifth stream of the same credential, over SSE (another spelling of it too) or WebSocket, is refused.
    const fifthSse = await fetch(srv.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `bearer  ${key}` },
      body: JSON.stringify({ query: BALANCE_SUB, variables: { id: account } }),
    });
    expect(fifthSse.status).toBe(429);
    expect((await fifthSse.json()).errors.map((e: { extensions: { code: string } }) => e.extensions.code)).toEqual(['RATE_LIMITED']);
    const fifthWs = track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account }));
    await fifthWs.waitFor((s) => s.closedWith !== null || s.events.length > 0, 'the WebSocket refusal');
    expect(fifthWs.closedWith?.code).toBe(4429);
    // Another credential is not affected (control).
    const other = track(sseSubscribe(srv.url, bearer(), BALANCE_SUB, { id: account }));
    await other.waitFor((s) => s.events.length === 1, 'another credential');
    // An ended stream frees its slot. The server frees it when it sees the connection close, which
    // may be just after the client did: a bounded number of attempts, each waiting for its answer.
    await sse[0]!.dispose();
    let again: LiveSub | null = null;
    for (let attempt = 0; attempt < 20 && !again?.events.length; attempt++) {
      again = track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: account }));
      await again.waitFor((s) => s.events.length === 1 || s.closedWith !== null, 'a free slot');
    }
    expect(again!.events).toHaveLength(1);
  });

  it('takes a live slot only for a response that streams: a query or mutation sent with Accept: text/event-stream, application/json is answered while the slots are full; a subscription is counted whatever its Accept', async () => {
    const { token: key } = await createApiKey(srv.services.pool, { name: uniq('live-accept'), scopes: ['read', 'usage:write'] });
    const token = `Bearer ${key}`;
    const account = await apiAccount(srv, { paid: '5' });
    const post = (accept: string, query: string, variables: Record<string, unknown>) =>
      fetch(srv.url, { method: 'POST', headers: { 'content-type': 'application/json', accept, authorization: token }, body: JSON.stringify({ query, variables }) });
    const full = [track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: account })), track(sseSubscribe(srv.url, token, BALANCE_SUB, { id: account }))];
    full.push(track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account })), track(wsSubscribe(srv.url, token, BALANCE_SUB, { id: account })));
    for (const [i, s] of full.entries()) await s.waitFor((x) => x.events.length === 1, `stream ${i + 1}`);
    // What some GraphQL clients send for every operation. Before the fix both were refused with 429.
    const sent = 'text/event-stream, application/json';
    const read = await post(sent, `query($id: ID!) { account(id: $id) { balance { available } } }`, { id: account });
    expect(read.status).toBe(200);
    expect(read.headers.get('content-type')).toMatch(/^application\/json/);
    expect((await read.json()).data.account.balance.available).toBe('5');
    const charged = await post(sent, RECORD, { input: { accountId: account, category: 'unit', idempotencyKey: uniq('use') } });
    expect(charged.status).toBe(200);
    expect((await charged.json()).data.recordUsage.cost).toBe('1');
    // A subscription is a stream over SSE whatever its Accept lists (yoga streams it for a
    // wildcard too; before the fix that one took no slot and was served): refused past the limit.
    for (const accept of ['text/event-stream', sent, '*/*']) {
      const refused = await post(accept, BALANCE_SUB, { id: account });
      expect(refused.status, accept).toBe(429);
      expect((await refused.json()).errors.map((e: { extensions: { code: string } }) => e.extensions.code)).toEqual(['RATE_LIMITED']);
    }
    // Closing one stream frees its slot for a subscription with a wildcard Accept, which then
    // holds it: the next SSE stream is refused again. The server frees a slot when it sees the
    // close, maybe just after the client did: a bounded number of attempts, each awaited.
    await full[0]!.dispose();
    let wildcard: Response | null = null;
    for (let attempt = 0; attempt < 20 && wildcard?.status !== 200; attempt++) {
      await wildcard?.body?.cancel();
      wildcard = await post('*/*', BALANCE_SUB, { id: account });
    }
    expect(wildcard!.status).toBe(200);
    expect(wildcard!.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const reader = wildcard!.body!.getReader();
    let text = '';
    while (!text.includes('balanceChanged')) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += new TextDecoder().decode(chunk.value);
    }
    expect(text).toContain('"available":"4"');
    const refused = await post('text/event-stream', BALANCE_SUB, { id: account });
    expect(refused.status).toBe(429);
    await reader.cancel();
  });

  it('applies the same GraphQL limits and masking over WebSocket as over HTTP', async () => {
    const account = await apiAccount(srv, { paid: '1' });
    const aliases = Array.from({ length: 40 }, (_, i) => `a${i}: viewer { userId }`).join(" ");
    const tooMany = track(wsSubscribe(srv.url, bearer(), `query { ${aliases} }`));
    await tooMany.waitFor((s) => s.errors.length > 0, 'the armor refusal');
    expect(tooMany.errors[0]!.message).toMatch(/alias/i);
    const invalid = track(wsSubscribe(srv.url, bearer(), `subscription { balanceChanged(accountId: 1, nope: 2) { version } }`));
    await invalid.waitFor((s) => s.errors.length > 0, 'the validation error');
    expect(invalid.errors.every((e) => e.extensions?.code === 'BAD_USER_INPUT')).toBe(true);
    const deep = track(wsSubscribe(srv.url, bearer(), `{ plans(x: ${'['.repeat(2450)}${']'.repeat(2450)}) { id } }`));
    await deep.waitFor((s) => s.errors.length > 0 || s.closedWith !== null, 'the nesting refusal');
    expect(deep.errors.map((e) => e.extensions?.code)).toEqual(['BAD_USER_INPUT']);
    expect(deep.errors[0]!.message).toMatch(/nests brackets/);
    const malformed = track(wsSubscribe(srv.url, bearer(), BALANCE_SUB, { id: 'not-an-id' }));
    await malformed.waitFor((s) => s.errors.length > 0, 'the refusal');
    expect(malformed.errors[0]!.extensions?.code).toBe('NOT_FOUND');
    expect(tooMany.events.length + invalid.events.length + deep.events.length + malformed.events.length).toBe(0);
    expect(account).toBeTruthy();
  });

  it('closes a client that sends a message larger than LIVE_MAX_MESSAGE_BYTES (1009)', async () => {
    const socket = new WebSocket(wsUrl(srv.url), 'graphql-transport-ws');
    await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
    const closed = new Promise<number>((resolve) => socket.once('close', (code) => resolve(code)));
    socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: bearer(), pad: 'x'.repeat(70_000) } }));
    expect(await closed).toBe(1009);
  });

  it('graceful shutdown closes WebSockets with 1001 and a reason, and ends SSE streams without waiting for its grace period', async () => {
    const other = await startTestServer({ SHUTDOWN_GRACE_MS: '60000' });
    try {
      const account = await apiAccount(other, { paid: '1' });
      const sub = wsSubscribe(other.url, `Bearer ${other.adminKey}`, BALANCE_SUB, { id: account });
      const sse = sseSubscribe(other.url, `Bearer ${other.adminKey}`, BALANCE_SUB, { id: account });
      await sub.waitFor((s) => s.events.length === 1, 'snapshot');
      await sse.waitFor((s) => s.events.length === 1, 'SSE snapshot');
      // close() resolves although the SSE stream never finishes by itself (the test would time out at 60 s).
      await other.close();
      await sub.waitFor((s) => s.closedWith !== null, 'the close');
      expect(sub.closedWith).toEqual({ code: 1001, reason: 'server shutting down' });
      await sse.waitFor((s) => s.closedWith !== null, 'the SSE stream ended');
      await sub.dispose();
      await sse.dispose();
    } finally {
      await other.close();
    }
  });
});
