/**
 * Billing refusals for public visitors (issue #5): internal callers get INSUFFICIENT_CREDITS /
 * BUDGET_EXCEEDED with exact amounts, while requests for public visitors (a PUBLIC-audience API
 * key, or an internal key sending `x-creditpool-audience: public` over HTTP, or on a WebSocket
 * upgrade request or in its connectionParams) get extensions.code
 * UNAVAILABLE with a generic message (no digits, no "credit", no amounts in extensions), also per
 * item in recordUsageBatch. Nothing is recorded in those cases. Other errors keep their code.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { createApiKey } from '../../../src/auth/api-keys.js';
import { expectError, expectUnchanged, grant, ok, uniq, type GqlResponse } from '../helpers.js';
import { createAccount, expectNeutral, gqlWithHeaders, growthCounts } from './growth-helpers.js';
import { wsSubscribe } from '../../live/helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id amount } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { id cost } } }`;
const SET_AGENT = `mutation($accountId: ID!, $agentId: String!, $limit: Credits) { setAgentBudget(accountId: $accountId, agentId: $agentId, limit: $limit) { agentId } }`;
const SET_USER = `mutation($accountId: ID!, $userId: String!, $limit: Credits) { setUserBudget(accountId: $accountId, userId: $userId, limit: $limit) { userId } }`;

let srv: TestServer;
let publicKey: string;

beforeAll(async () => {
  srv = await startTestServer();
  publicKey = (await createApiKey(srv.services.pool, { name: 'growth-public-widget', scopes: ['usage:write'], audience: 'PUBLIC' })).token;
});

afterAll(async () => {
  await srv?.close();
});

/** The two ways a request is made on behalf of public visitors. */
const AUDIENCES: Array<{ name: string; send: (query: string, variables: Record<string, unknown>) => Promise<GqlResponse> }> = [
  { name: 'a PUBLIC-audience API key (usage:write)', send: (q, v) => srv.gql(q, v, publicKey) },
  { name: 'an internal key with x-creditpool-audience: public', send: (q, v) => gqlWithHeaders(srv, q, v, srv.adminKey, { 'x-creditpool-audience': 'public' }) },
];

/** An account with `paid` credit (admin key). */
async function funded(paid: string): Promise<string> {
  const id = (await createAccount(srv)).id;
  if (paid !== '0') await grant(srv, id, paid, 'PAID');
  return id;
}

function use(accountId: string, units: string, extra: Record<string, unknown> = {}) {
  return { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units }, ...extra };
}

/** The neutral refusal: UNAVAILABLE, generic message, nothing about amounts in extensions. */
function expectUnavailable(res: GqlResponse) {
  const err = expectError(res, 'UNAVAILABLE');
  expect(res.body.data ?? null).toBeNull();
  expectNeutral(err.message);
  const ext = err.extensions ?? {};
  expect(ext).not.toHaveProperty('neededCredits');
  expect(ext).not.toHaveProperty('availableCredits');
  // Only the code and a request id for support: no subject, limit or spent either.
  expect(Object.keys(ext).filter((k) => k !== 'requestId')).toEqual(['code']);
  return err;
}

/** Runs `op` and asserts the accounts did not change (balance version, ledger, events, holds). */
async function unchanged<T>(accounts: string[], op: () => Promise<T>): Promise<T> {
  const before = await Promise.all(accounts.map((a) => growthCounts(srv, a)));
  const res = await expectUnchanged(srv, accounts, op);
  expect(await Promise.all(accounts.map((a) => growthCounts(srv, a)))).toEqual(before);
  return res;
}

describe('internal callers see the billing reason', () => {
  it('INSUFFICIENT_CREDITS carries exact neededCredits and availableCredits', async () => {
    const acct = await funded('1.75');
    const res = await unchanged([acct], () => srv.gql(RECORD, { input: use(acct, '2.000001') }));
    const err = expectError(res, 'INSUFFICIENT_CREDITS');
    expect(err.extensions).toMatchObject({ neededCredits: '2.000001', availableCredits: '1.75' });
  });

  it('an audience header other than "public" changes nothing', async () => {
    const acct = await funded('1');
    const res = await unchanged([acct], () => gqlWithHeaders(srv, RECORD, { input: use(acct, '3') }, srv.adminKey, { 'x-creditpool-audience': 'internal' }));
    expect(expectError(res, 'INSUFFICIENT_CREDITS').extensions).toMatchObject({ neededCredits: '3', availableCredits: '1' });
  });
});

describe.each(AUDIENCES)('public visitors via $name', ({ send }) => {
  it('INSUFFICIENT_CREDITS on recordUsage is UNAVAILABLE with the generic message, and nothing is recorded', async () => {
    const acct = await funded('1');
    const res = await unchanged([acct], () => send(RECORD, { input: use(acct, '2.5') }));
    expectUnavailable(res);
  });

  it('BUDGET_EXCEEDED on recordUsage is the same UNAVAILABLE, and nothing is recorded', async () => {
    const acct = await funded('100');
    ok(await srv.gql(SET_AGENT, { accountId: acct, agentId: 'agent-pub', limit: '1' }));
    ok(await srv.gql(SET_USER, { accountId: acct, userId: 'visitor-1', limit: '1' }));
    const a = expectUnavailable(await unchanged([acct], () => send(RECORD, { input: use(acct, '2', { agentId: 'agent-pub' }) })));
    const u = expectUnavailable(await unchanged([acct], () => send(RECORD, { input: use(acct, '2', { userId: 'visitor-1' }) })));
    expect(a.message).not.toContain('agent-pub');
    expect(u.message).not.toContain('visitor-1');
    // The same refusal text whatever the reason, so it tells nothing.
    const poor = await funded('0');
    const i = expectUnavailable(await unchanged([poor], () => send(RECORD, { input: use(poor, '1') })));
    expect(new Set([a.message, u.message, i.message]).size).toBe(1);
  });

  it('reserveCredits refusals (insufficient credit, budget) are UNAVAILABLE and hold nothing', async () => {
    const poor = await funded('1');
    expectUnavailable(await unchanged([poor], () => send(RESERVE, { input: { accountId: poor, amount: '5', idempotencyKey: uniq('h') } })));
    const rich = await funded('100');
    ok(await srv.gql(SET_AGENT, { accountId: rich, agentId: 'agent-hold', limit: '2' }));
    expectUnavailable(await unchanged([rich], () => send(RESERVE, { input: { accountId: rich, amount: '3', agentId: 'agent-hold', idempotencyKey: uniq('h') } })));
  });

  it('recordUsageBatch: a refused item has errorCode UNAVAILABLE and the generic message; the others are unaffected', async () => {
    const good = await funded('10');
    const poor = await funded('0.5');
    const capped = await funded('100');
    ok(await srv.gql(SET_AGENT, { accountId: capped, agentId: 'agent-b', limit: '1' }));
    const goodBefore = await growthCounts(srv, good);
    const res = await unchanged([poor, capped], () => send(BATCH, { inputs: [use(good, '2'), use(poor, '1'), use(capped, '1.5', { agentId: 'agent-b' })] }));
    const items = ok(res).recordUsageBatch;
    expect(items).toHaveLength(3);
    expect(items[0]).toMatchObject({ errorCode: null, errorMessage: null, event: { cost: '2' } });
    for (const item of items.slice(1)) {
      expect(item).toMatchObject({ errorCode: 'UNAVAILABLE', event: null });
      expectNeutral(item.errorMessage);
    }
    expect(items[1].errorMessage).toBe(items[2].errorMessage);
    expect((await growthCounts(srv, good)).events).toBe(goodBefore.events + 1);
  });

  it('errors that are not billing refusals keep their code (unknown category is BAD_USER_INPUT)', async () => {
    const acct = await funded('10');
    const res = await unchanged([acct], () => send(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'no-such-category' } }));
    expectError(res, 'BAD_USER_INPUT');
  });
});

describe('audience does not leak between concurrent requests', () => {
  it('interleaved public and internal requests each get their own form of the refusal', async () => {
    const acct = await funded('1');
    const kinds = Array.from({ length: 30 }, (_, i) => (['publicKey', 'header', 'internal'] as const)[i % 3]!);
    const results = await unchanged([acct], () =>
      Promise.all(
        kinds.map(async (kind) => {
          const vars = { input: use(acct, '2') };
          if (kind === 'publicKey') return { kind, res: await srv.gql(RECORD, vars, publicKey) };
          if (kind === 'header') return { kind, res: await gqlWithHeaders(srv, RECORD, vars, srv.adminKey, { 'x-creditpool-audience': 'public' }) };
          return { kind, res: await srv.gql(RECORD, vars) };
        }),
      ),
    );
    for (const { kind, res } of results) {
      if (kind === 'internal') expect(expectError(res, 'INSUFFICIENT_CREDITS').extensions).toMatchObject({ neededCredits: '2', availableCredits: '1' });
      else expectUnavailable(res);
    }
  });
});

describe('over WebSocket (graphql-ws) as over HTTP', () => {
  it('a PUBLIC-audience key running recordUsage gets the neutral UNAVAILABLE with its operation id, an internal key the exact refusal; nothing is recorded', async () => {
    const acct = await funded('1');
    const results = await unchanged([acct], async () => {
      const pub = wsSubscribe(srv.url, `Bearer ${publicKey}`, RECORD, { input: use(acct, '2') });
      const internal = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') });
      try {
        await Promise.all([pub, internal].map((s) => s.waitFor((x) => x.completed, 'the mutation to complete')));
        return { pub: [...pub.errors], internal: [...internal.errors] };
      } finally {
        await Promise.all([pub.dispose(), internal.dispose()]);
      }
    });
    expect(results.pub).toHaveLength(1);
    const neutral = results.pub[0]!;
    expect(neutral.extensions?.code).toBe('UNAVAILABLE');
    expectNeutral(neutral.message);
    // The request id of a WebSocket operation: its connection's id and the operation's id.
    expect(Object.keys(neutral.extensions ?? {}).sort()).toEqual(['code', 'requestId']);
    expect(String((neutral.extensions as { requestId?: string }).requestId)).toMatch(/^[0-9a-f-]{36}:.+$/);
    expect(results.internal.map((e) => e.extensions)).toMatchObject([{ code: 'INSUFFICIENT_CREDITS', neededCredits: '2', availableCredits: '1' }]);
  });

  it('an internal key whose upgrade request carries x-creditpool-audience: public (a server-side proxy sets it) gets the neutral UNAVAILABLE; the same key without it the exact refusal; nothing is recorded', async () => {
    const acct = await funded('1');
    const results = await unchanged([acct], async () => {
      const flagged = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') }, { headers: { 'x-creditpool-audience': 'Public' } });
      const other = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') }, { headers: { 'x-creditpool-audience': 'internal' } });
      const plain = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') });
      try {
        await Promise.all([flagged, other, plain].map((s) => s.waitFor((x) => x.completed, 'the mutation to complete')));
        return { flagged: [...flagged.errors], other: [...other.errors], plain: [...plain.errors] };
      } finally {
        await Promise.all([flagged.dispose(), other.dispose(), plain.dispose()]);
      }
    });
    expect(results.flagged).toHaveLength(1);
    expect(results.flagged[0]!.extensions?.code).toBe('UNAVAILABLE');
    expectNeutral(results.flagged[0]!.message);
    expect(Object.keys(results.flagged[0]!.extensions ?? {}).sort()).toEqual(['code', 'requestId']);
    for (const errors of [results.other, results.plain]) {
      expect(errors.map((e) => e.extensions)).toMatchObject([{ code: 'INSUFFICIENT_CREDITS', neededCredits: '2', availableCredits: '1' }]);
    }
  });

  it("connectionParams['x-creditpool-audience']: 'public' does the same (the flag only hides a billing refusal's details from the caller, it grants nothing); other values and types change nothing", async () => {
    const acct = await funded('1');
    const params = [{ 'x-creditpool-audience': 'public' }, { 'x-creditpool-audience': 'no' }, { 'x-creditpool-audience': ['public'] }, { 'x-creditpool-audience': true }];
    const results = await unchanged([acct], async () => {
      const subs = params.map((connectionParams) => wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') }, { connectionParams }));
      try {
        await Promise.all(subs.map((s) => s.waitFor((x) => x.completed, 'the mutation to complete')));
        return subs.map((s) => [...s.errors]);
      } finally {
        await Promise.all(subs.map((s) => s.dispose()));
      }
    });
    const [flagged, ...others] = results;
    expect(flagged!.map((e) => e.extensions?.code)).toEqual(['UNAVAILABLE']);
    expectNeutral(flagged![0]!.message);
    for (const errors of others) expect(errors.map((e) => e.extensions)).toMatchObject([{ code: 'INSUFFICIENT_CREDITS', neededCredits: '2', availableCredits: '1' }]);
  });

  it('the flag holds for every operation of the connection, and does not reach another connection of the same key', async () => {
    const acct = await funded('1');
    const results = await unchanged([acct], async () => {
      const flagged = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') }, { headers: { 'x-creditpool-audience': 'public' } });
      await flagged.waitFor((x) => x.completed, 'the first mutation to complete');
      const second = await new Promise<unknown[]>((resolve, reject) => {
        const errors: unknown[] = [];
        flagged.client.subscribe({ query: RECORD, variables: { input: use(acct, '3') } }, { next: (r) => errors.push(...(r.errors ?? [])), error: reject, complete: () => resolve(errors) });
      });
      const plain = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, RECORD, { input: use(acct, '2') });
      try {
        await plain.waitFor((x) => x.completed, 'the other connection\'s mutation to complete');
        return { first: [...flagged.errors], second, plain: [...plain.errors] };
      } finally {
        await Promise.all([flagged.dispose(), plain.dispose()]);
      }
    });
    expect(results.first.map((e) => e.extensions?.code)).toEqual(['UNAVAILABLE']);
    expect((results.second as Array<{ extensions?: { code?: string } }>).map((e) => e.extensions?.code)).toEqual(['UNAVAILABLE']);
    expect(results.plain.map((e) => e.extensions)).toMatchObject([{ code: 'INSUFFICIENT_CREDITS', neededCredits: '2', availableCredits: '1' }]);
  });
});
