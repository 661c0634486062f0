/**
 * Credentials and tenancy over HTTP: anonymous and invalid credentials, API key scopes, end-user
 * JWTs that read only their own USER account and their organization, foreign ids that answer
 * exactly like missing ones, and end users that can never write. Every refused write is proven
 * to change nothing.
 */
import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { TEST_PRICE_BOOK } from '../setup/test-price-book.js';
import { createApiKey, revokeApiKey } from '../../src/auth/api-keys.js';
import { SignJWT } from 'jose';
import { signUserToken } from '../../src/auth/jwt.js';
import { sseSubscribe, wsSubscribe } from '../live/helpers.js';
import { print } from 'graphql';
import { RecordUsageBatchDocument, RecordUsageDocument } from '../../src/generated/graphql.js';
import { apiAccount, expectError, expectUnchanged, gid, globalCounts, ok, readAccount, uniq, type GqlResponse } from './helpers.js';

const NAME = `api-auth-test-${process.pid}-${Date.now()}`;

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id amount } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
const REFUND = `mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "r") { id } }`;
const PUBLISH = `mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`;
const UPDATE_SETTINGS = `mutation($input: SettingsInput!) { updateSettings(input: $input) { welcomeBonusCredits } }`;
const SETTINGS = `{ settings { creditUsdValue welcomeBonusCredits welcomeBonusExpiresAfterDays referralRewardCredits referralMaxRewardsPerAccount alertThresholds } }`;
const ACCOUNT = `query($id: ID!) { account(id: $id) { id externalId kind balance { total } } }`;
const BY_EXTERNAL = `query($e: String!) { accountByExternalId(externalId: $e) { id externalId kind } }`;
const NODE = `query($id: ID!) { node(id: $id) { id ... on Account { externalId } } }`;
const TASK_COST = `query($id: ID!) { taskCost(accountId: $id, taskId: "t1") { taskId credits events } }`;
const QUOTE = `query($input: RecordUsageInput!) { quote(input: $input) { cost } }`;
const USAGE_EVENT = `query($id: ID!) { usageEvent(id: $id) { id cost } }`;

let srv: TestServer;
const userExt = uniq('user');
const orgExt = uniq('org');
const otherUserExt = uniq('other-user');
const otherOrgExt = uniq('other-org');
let userAcct: string;
let orgAcct: string;
let otherUser: string;
let otherOrg: string;
/** Objects of the caller's organization. */
const own = { event: '', grant: '', batch: '', hold: '', entry: '' };
/** The same kinds of objects in another tenant. */
const foreign = { event: '', grant: '', batch: '', hold: '', entry: '' };
let userToken: string;
const keys = { read: '', usageWrite: '', creditsWrite: '', publicUsageWrite: '', usageWriteRead: '' };

async function seedTenant(acct: string, into: typeof own) {
  const g = ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id batch { id } } }`, {
      input: { accountId: acct, amount: '10', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
    }),
  ).grantCredits;
  into.grant = g.id;
  into.batch = g.batch.id;
  into.event = ok(await srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit', taskId: 't1' } })).recordUsage.id;
  into.hold = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '1', idempotencyKey: uniq('h') } })).reserveCredits.id;
  into.entry = ok(await srv.gql(`query($id: ID!) { account(id: $id) { ledger(first: 1) { edges { node { id } } } } }`, { id: acct })).account.ledger.edges[0]
    .node.id;
}

beforeAll(async () => {
  srv = await startTestServer();
  userAcct = await apiAccount(srv, { kind: 'USER', externalId: userExt, paid: '3' });
  orgAcct = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt });
  otherUser = await apiAccount(srv, { kind: 'USER', externalId: otherUserExt, paid: '3' });
  otherOrg = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: otherOrgExt });
  await seedTenant(orgAcct, own);
  await seedTenant(otherOrg, foreign);
  userToken = await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 600 });
  const pool = srv.services.pool;
  keys.read = (await createApiKey(pool, { name: `${NAME}-read`, scopes: ['read'] })).token;
  keys.usageWrite = (await createApiKey(pool, { name: `${NAME}-usage`, scopes: ['usage:write'] })).token;
  keys.creditsWrite = (await createApiKey(pool, { name: `${NAME}-credits`, scopes: ['credits:write'] })).token;
});

afterAll(async () => {
  if (!srv) return;
  await srv.services.pool.query('DELETE FROM api_keys WHERE name LIKE $1', [`${NAME}%`]);
  await srv.close();
});

async function rawPost(headers: Record<string, string>, query: string): Promise<GqlResponse> {
  const res = await fetch(srv.url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ query }) });
  return { status: res.status, body: (await res.json()) as GqlResponse['body'] };
}

/** POSTs `body` with one Authorization line per value (fetch would join them into one). */
function twoAuthorizationHeaders(values: string[], body: string): Promise<GqlResponse> {
  const { hostname, port } = new URL(srv.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: hostname, port, path: '/graphql', method: 'POST', headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } });
    for (const value of values) req.appendHeader('authorization', value);
    req.on('error', reject);
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as GqlResponse['body'] }));
    });
    req.end(body);
  });
}

/** Asserts a refused write: the code, and no change to the given accounts or anywhere else. */
async function expectRefused(accounts: string[], send: () => Promise<GqlResponse>, code: string) {
  const counts = await globalCounts(srv);
  const res = await expectUnchanged(srv, accounts, send);
  expectError(res, code);
  expect(res.body.data ?? null).toBeNull();
  expect(await globalCounts(srv)).toEqual(counts);
  return res;
}

describe('missing or invalid credentials', () => {
  it('a query without a token is UNAUTHENTICATED', async () => {
    expectError(await srv.gql(SETTINGS, {}, null), 'UNAUTHENTICATED');
    const res = await srv.gql(ACCOUNT, { id: orgAcct }, null);
    expectError(res, 'UNAUTHENTICATED');
    expect(res.body.data?.account ?? null).toBeNull();
  });

  it('a mutation without a token is UNAUTHENTICATED and changes nothing', async () => {
    await expectRefused([orgAcct], () => srv.gql(RECORD, { input: { accountId: orgAcct, idempotencyKey: uniq('u'), category: 'unit' } }, null), 'UNAUTHENTICATED');
  });

  it('a garbage token, an unknown cp_ key, a JWT signed with another secret and a non-Bearer scheme are UNAUTHENTICATED', async () => {
    const forged = await signUserToken('another-secret-0123456789abcdef0123456789', { sub: userExt, org: orgExt, expiresInSeconds: 600 });
    for (const token of ['garbage', `cp_ABCDEFGH_${'x'.repeat(43)}`, forged]) {
      const res = await srv.gql(ACCOUNT, { id: userAcct }, token);
      expectError(res, 'UNAUTHENTICATED');
      expect(res.status).toBe(401);
      expect(res.body.data?.account ?? null).toBeNull();
    }
    expectError(await rawPost({ authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }, '{ settings { creditUsdValue } }'), 'UNAUTHENTICATED');
  });

  it('two Authorization headers are UNAUTHENTICATED (401) whichever comes first, and change nothing', async () => {
    // Node keeps the first of repeated Authorization lines; a proxy in front may read the last.
    // A singleton field sent twice is ambiguous: refused, not resolved by position.
    const grant = JSON.stringify({ query: GRANT, variables: { input: { accountId: orgAcct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } } });
    for (const pair of [[`Bearer ${userToken}`, `Bearer ${srv.adminKey}`], [`Bearer ${srv.adminKey}`, 'Bearer garbage'], [`Bearer ${srv.adminKey}`, `Bearer ${srv.adminKey}`]]) {
      const res = await expectRefused([orgAcct], () => twoAuthorizationHeaders(pair, grant), 'UNAUTHENTICATED');
      expect(res.status).toBe(401);
    }
  });

  it('an expired end-user token is UNAUTHENTICATED', async () => {
    const expired = await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: -60 });
    const res = await srv.gql(ACCOUNT, { id: userAcct }, expired);
    expectError(res, 'UNAUTHENTICATED');
    expect(res.status).toBe(401);
    expect(res.body.data?.account ?? null).toBeNull();
  });

  it('an end-user token without exp, or living longer than JWT_MAX_TTL_SECONDS, is UNAUTHENTICATED', async () => {
    const key = new TextEncoder().encode(srv.jwtSecret);
    const now = Math.floor(Date.now() / 1000);
    const noExp = await new SignJWT({ org: orgExt }).setProtectedHeader({ alg: 'HS256' }).setSubject(userExt).setIssuedAt(0).sign(key);
    const yearLong = await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 365 * 86_400 });
    const backdated = await new SignJWT({ org: orgExt }).setProtectedHeader({ alg: 'HS256' }).setSubject(userExt).setIssuedAt(now - 7 * 86_400).setExpirationTime(now + 600).sign(key);
    for (const token of [noExp, yearLong, backdated]) {
      const res = await srv.gql(ACCOUNT, { id: userAcct }, token);
      expectError(res, 'UNAUTHENTICATED');
      expect(res.status).toBe(401);
    }
    expect(ok(await srv.gql(ACCOUNT, { id: userAcct }, await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 86_400 }))).account).toMatchObject({ id: userAcct });
  });

  it('an end-user token of another kind signed with the same secret (typ logout+jwt) is UNAUTHENTICATED; typ JWT, at+jwt and none are accepted (RFC 8725 §3.11)', async () => {
    const key = new TextEncoder().encode(srv.jwtSecret);
    const now = Math.floor(Date.now() / 1000);
    const sign = (typ: string | undefined) =>
      new SignJWT({ org: orgExt }).setProtectedHeader(typ === undefined ? { alg: 'HS256' } : { alg: 'HS256', typ }).setSubject(userExt).setIssuedAt(now).setExpirationTime(now + 600).sign(key);
    const res = await srv.gql(ACCOUNT, { id: userAcct }, await sign('logout+jwt'));
    expectError(res, 'UNAUTHENTICATED');
    expect(res.status).toBe(401);
    expect(res.body.data?.account ?? null).toBeNull();
    for (const typ of ['JWT', 'at+jwt', 'application/at+jwt', undefined]) {
      expect(ok(await srv.gql(ACCOUNT, { id: userAcct }, await sign(typ))).account, String(typ)).toMatchObject({ id: userAcct });
    }
  });

  it('a revoked API key is UNAUTHENTICATED', async () => {
    const key = await createApiKey(srv.services.pool, { name: `${NAME}-revoked`, scopes: ['admin'] });
    expect(await revokeApiKey(srv.services.pool, key.id)).toBe(true);
    expectError(await srv.gql(SETTINGS, {}, key.token), 'UNAUTHENTICATED');
  });
});

describe('API key scopes', () => {
  it('a read key reads any account but recordUsage, reserveCredits and grantCredits are FORBIDDEN and record nothing', async () => {
    const a = ok(await srv.gql(ACCOUNT, { id: otherOrg }, keys.read)).account;
    expect(a).toMatchObject({ id: otherOrg, externalId: otherOrgExt });
    await expectRefused([orgAcct], () => srv.gql(RECORD, { input: { accountId: orgAcct, idempotencyKey: uniq('u'), category: 'unit' } }, keys.read), 'FORBIDDEN');
    await expectRefused([orgAcct], () => srv.gql(RESERVE, { input: { accountId: orgAcct, amount: '1', idempotencyKey: uniq('h') } }, keys.read), 'FORBIDDEN');
    await expectRefused(
      [orgAcct],
      () => srv.gql(GRANT, { input: { accountId: orgAcct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }, keys.read),
      'FORBIDDEN',
    );
  });

  it('a usage:write key records usage but may not publish a price book, change settings, grant or refund', async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const ev = ok(await srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, keys.usageWrite)).recordUsage;
    expect(ev.cost).toBe('1');
    expect((await readAccount(srv, acct)).balance.total).toBe('4');
    ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '1', idempotencyKey: uniq('h') } }, keys.usageWrite));

    const settings = ok(await srv.gql(SETTINGS)).settings;
    await expectRefused([acct], () => srv.gql(PUBLISH, { input: { ...TEST_PRICE_BOOK, name: 'not allowed' } }, keys.usageWrite), 'FORBIDDEN');
    await expectRefused([acct], () => srv.gql(UPDATE_SETTINGS, { input: { welcomeBonusCredits: '1' } }, keys.usageWrite), 'FORBIDDEN');
    expect(ok(await srv.gql(SETTINGS)).settings).toEqual(settings);
    await expectRefused(
      [acct],
      () => srv.gql(GRANT, { input: { accountId: acct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }, keys.usageWrite),
      'FORBIDDEN',
    );
    await expectRefused([acct], () => srv.gql(REFUND, { id: ev.id }, keys.usageWrite), 'FORBIDDEN');
  });

  it('a credits:write key grants credit but may not record usage or publish a price book', async () => {
    const acct = await apiAccount(srv);
    const g = ok(await srv.gql(GRANT, { input: { accountId: acct, amount: '2', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }, keys.creditsWrite));
    expect(g.grantCredits.amount).toBe('2');
    await expectRefused([acct], () => srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, keys.creditsWrite), 'FORBIDDEN');
    await expectRefused([acct], () => srv.gql(PUBLISH, { input: TEST_PRICE_BOOK }, keys.creditsWrite), 'FORBIDDEN');
  });
});

describe('end users (JWT)', () => {
  it('read their own USER account and their organization by id, external id, viewer and node', async () => {
    for (const [id, ext, kind] of [
      [userAcct, userExt, 'USER'],
      [orgAcct, orgExt, 'ORGANIZATION'],
    ] as const) {
      expect(ok(await srv.gql(ACCOUNT, { id }, userToken)).account).toMatchObject({ id, externalId: ext, kind });
      expect(ok(await srv.gql(BY_EXTERNAL, { e: ext }, userToken)).accountByExternalId).toEqual({ id, externalId: ext, kind });
      expect(ok(await srv.gql(NODE, { id }, userToken)).node).toEqual({ id, externalId: ext });
    }
    const viewer = ok(await srv.gql(`{ viewer { userId accounts { id kind externalId } } }`, {}, userToken)).viewer;
    expect(viewer.userId).toBe(userExt);
    expect([...viewer.accounts].sort((a: any, b: any) => a.kind.localeCompare(b.kind))).toEqual([
      { id: orgAcct, kind: 'ORGANIZATION', externalId: orgExt },
      { id: userAcct, kind: 'USER', externalId: userExt },
    ]);
    expect(ok(await srv.gql(TASK_COST, { id: orgAcct }, userToken)).taskCost).toEqual({ taskId: 't1', credits: '1', events: 1 });
    expect(ok(await srv.gql(USAGE_EVENT, { id: own.event }, userToken)).usageEvent).toEqual({ id: own.event, cost: '1' });
  });

  it("another tenant's account answers exactly like a random missing id", async () => {
    const missing = gid('Account', randomUUID());
    // Control: the foreign account exists and has usage under task t1.
    expect(ok(await srv.gql(TASK_COST, { id: otherOrg })).taskCost).toMatchObject({ credits: '1', events: 1 });

    for (const query of [ACCOUNT, NODE]) {
      const foreignRes = await srv.gql(query, { id: otherOrg }, userToken);
      const missingRes = await srv.gql(query, { id: missing }, userToken);
      expect(foreignRes.body.errors).toBeUndefined();
      expect(Object.values(foreignRes.body.data)).toEqual([null]);
      expect(foreignRes.body).toEqual(missingRes.body);
    }
    for (const id of [otherUser, otherOrg]) {
      expect(ok(await srv.gql(ACCOUNT, { id }, userToken)).account).toBeNull();
    }
    const byExt = await srv.gql(BY_EXTERNAL, { e: otherOrgExt }, userToken);
    expect(byExt.body).toEqual((await srv.gql(BY_EXTERNAL, { e: uniq('nobody') }, userToken)).body);
    expect(byExt.body.data.accountByExternalId).toBeNull();

    const taskForeign = await srv.gql(TASK_COST, { id: otherOrg }, userToken);
    const taskMissing = await srv.gql(TASK_COST, { id: missing }, userToken);
    expectError(taskForeign, 'NOT_FOUND');
    expect(taskForeign.body).toEqual(taskMissing.body);

    const quote = (id: string) => srv.gql(QUOTE, { input: { accountId: id, idempotencyKey: 'q', category: 'unit' } }, userToken);
    const quoteForeign = await quote(otherOrg);
    expectError(quoteForeign, 'NOT_FOUND');
    expect(quoteForeign.body).toEqual((await quote(missing)).body);
  });

  it('the org claim opens only an ORGANIZATION and sub only a USER account', async () => {
    // sub names another tenant's organization, org names another tenant's user: neither is readable.
    const crossed = await signUserToken(srv.jwtSecret, { sub: otherOrgExt, org: otherUserExt, expiresInSeconds: 600 });
    expect(ok(await srv.gql(ACCOUNT, { id: otherOrg }, crossed)).account).toBeNull();
    expect(ok(await srv.gql(ACCOUNT, { id: otherUser }, crossed)).account).toBeNull();
    expect(ok(await srv.gql(`{ viewer { userId accounts { id } } }`, {}, crossed)).viewer).toEqual({ userId: otherOrgExt, accounts: [] });
    // Without an org claim the user reads only its USER account.
    const noOrg = await signUserToken(srv.jwtSecret, { sub: userExt, expiresInSeconds: 600 });
    expect(ok(await srv.gql(ACCOUNT, { id: orgAcct }, noOrg)).account).toBeNull();
    expect(ok(await srv.gql(ACCOUNT, { id: userAcct }, noOrg)).account).toMatchObject({ id: userAcct });
  });

  it("another tenant's usage event, grant, batch, hold and ledger entry are null via usageEvent(id) and node(id)", async () => {
    expect(ok(await srv.gql(USAGE_EVENT, { id: foreign.event }, userToken)).usageEvent).toBeNull();
    expect(ok(await srv.gql(USAGE_EVENT, { id: foreign.event })).usageEvent).toEqual({ id: foreign.event, cost: '1' }); // exists (admin)
    for (const kind of ['event', 'grant', 'batch', 'hold', 'entry'] as const) {
      expect(ok(await srv.gql(NODE, { id: foreign[kind] }, userToken)).node, `foreign ${kind}`).toBeNull();
      expect(ok(await srv.gql(NODE, { id: own[kind] }, userToken)).node, `own ${kind}`).toEqual({ id: own[kind] });
    }
  });

  it('cannot run any mutation (FORBIDDEN) and change nothing', async () => {
    const usage = () => ({ accountId: orgAcct, idempotencyKey: uniq('u'), category: 'unit' });
    const settings = ok(await srv.gql(SETTINGS)).settings;
    const mutations: Array<[string, string, Record<string, unknown>]> = [
      ['createAccount', `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, { input: { externalId: uniq('x'), name: 'x', kind: 'USER' } }],
      ['grantCredits', GRANT, { input: { accountId: userAcct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }],
      ['voidGrant', `mutation($id: ID!) { voidGrant(grantId: $id, reason: "r") { id } }`, { id: own.grant }],
      ['recordUsage', RECORD, { input: usage() }],
      ['recordUsageBatch', `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode } }`, { inputs: [usage()] }],
      ['reserveCredits', RESERVE, { input: { accountId: orgAcct, amount: '1', idempotencyKey: uniq('h') } }],
      ['settleReservation', `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`, { input: { reservationId: own.hold, usage: [] } }],
      ['releaseReservation', `mutation($id: ID!) { releaseReservation(reservationId: $id) { id } }`, { id: own.hold }],
      ['extendReservation', `mutation($id: ID!) { extendReservation(reservationId: $id, ttlSeconds: 60) { id } }`, { id: own.hold }],
      ['refundUsage', REFUND, { id: own.event }],
      ['publishPriceBook', PUBLISH, { input: TEST_PRICE_BOOK }],
      ['updateSettings', UPDATE_SETTINGS, { input: { welcomeBonusCredits: '1' } }],
    ];
    for (const [name, doc, vars] of mutations) {
      const res = await expectRefused([userAcct, orgAcct], () => srv.gql(doc, vars, userToken), 'FORBIDDEN');
      expect(res.body.errors![0]!.path, name).toEqual([name]);
    }
    expect(ok(await srv.gql(SETTINGS)).settings).toEqual(settings);
  });
});

describe('write-only API keys read no account (only what their own mutations return)', () => {
  /** The audit's probe: everything an account shows, by external id. */
  const PROBE = `query($e: String!) { accountByExternalId(externalId: $e) { name balance { available total paid } paymentMethod { reference } ledger(first: 3) { edges { node { id amount } } } } }`;
  const BALANCE_SUB = `subscription ($id: ID!) { balanceChanged(accountId: $id) { available total version } }`;
  const USAGE_SUB = `subscription ($id: ID!) { usageRecorded(accountId: $id) { id cost } }`;
  const writeOnly = () => [
    { name: 'usage:write', token: keys.usageWrite },
    { name: 'credits:write', token: keys.creditsWrite },
    { name: 'PUBLIC usage:write', token: keys.publicUsageWrite },
  ];

  beforeAll(async () => {
    const pool = srv.services.pool;
    keys.publicUsageWrite = (await createApiKey(pool, { name: `${NAME}-public`, scopes: ['usage:write'], audience: 'PUBLIC' })).token;
    keys.usageWriteRead = (await createApiKey(pool, { name: `${NAME}-usage-read`, scopes: ['usage:write', 'read'] })).token;
  });

  it('another account by id, external id and node answers like a missing one; its objects are null; taskCost and quote are NOT_FOUND', async () => {
    const missing = gid('Account', randomUUID());
    for (const { name, token } of writeOnly()) {
      expect(ok(await srv.gql(ACCOUNT.replace(' balance { total }', ''), { id: otherOrg }, token)).account, name).toBeNull();
      expect(ok(await srv.gql(BY_EXTERNAL, { e: otherOrgExt }, token)).accountByExternalId, name).toBeNull();
      expect(ok(await srv.gql(NODE, { id: otherOrg }, token)).node, name).toBeNull();
      expect(ok(await srv.gql(USAGE_EVENT, { id: foreign.event }, token)).usageEvent, name).toBeNull();
      for (const kind of ['event', 'grant', 'batch', 'hold', 'entry'] as const) {
        expect(ok(await srv.gql(`query($id: ID!) { node(id: $id) { id } }`, { id: foreign[kind] }, token)).node, `${name} ${kind}`).toBeNull();
      }
      const task = await srv.gql(TASK_COST, { id: otherOrg }, token);
      expectError(task, 'NOT_FOUND');
      expect(task.body).toEqual((await srv.gql(TASK_COST, { id: missing }, token)).body);
      expectError(await srv.gql(QUOTE, { input: { accountId: otherOrg, idempotencyKey: 'q', category: 'unit' } }, token), 'NOT_FOUND');
    }
    // Control: a key with read (and usage:write) reads it all.
    expect(ok(await srv.gql(BY_EXTERNAL, { e: otherOrgExt }, keys.usageWriteRead)).accountByExternalId).toMatchObject({ id: otherOrg });
    expect(ok(await srv.gql(TASK_COST, { id: otherOrg }, keys.usageWriteRead)).taskCost).toMatchObject({ credits: '1', events: 1 });
  });

  it("the audit's probe (name, balance, payment method, ledger by external id) is FORBIDDEN with no data; a read key gets it", async () => {
    for (const { name, token } of writeOnly()) {
      const res = await srv.gql(PROBE, { e: otherOrgExt }, token);
      expectError(res, 'FORBIDDEN');
      expect(res.body.data ?? null, name).toBeNull();
      // The same answer for an external id that exists and one that does not.
      expect(res.body.errors!.map((e) => e.extensions?.code)).toEqual((await srv.gql(PROBE, { e: uniq('nobody') }, token)).body.errors!.map((e) => e.extensions?.code));
    }
    const read = ok(await srv.gql(PROBE, { e: otherOrgExt }, keys.usageWriteRead)).accountByExternalId;
    expect(read.balance.total).toBe('9');
    expect(read.ledger.edges.length).toBeGreaterThan(0);
  });

  it('cannot subscribe to another account over WebSocket or SSE; a usage:write,read key can', async () => {
    for (const { name, token } of writeOnly()) {
      const ws = wsSubscribe(srv.url, `Bearer ${token}`, BALANCE_SUB, { id: otherOrg });
      const sse = sseSubscribe(srv.url, `Bearer ${token}`, BALANCE_SUB, { id: otherOrg });
      const usage = wsSubscribe(srv.url, `Bearer ${token}`, USAGE_SUB, { id: otherOrg });
      try {
        await ws.waitFor((s) => s.errors.length > 0, `${name}: the WebSocket refusal`);
        await sse.waitFor((s) => s.errors.length > 0 || s.completed, `${name}: the SSE refusal`);
        await usage.waitFor((s) => s.errors.length > 0, `${name}: the usageRecorded refusal`);
        expect(ws.errors.map((e) => e.extensions?.code), name).toEqual(['FORBIDDEN']);
        expect(usage.errors.map((e) => e.extensions?.code), name).toEqual(['NOT_FOUND']);
        expect(JSON.stringify(sse.errors), name).toContain('FORBIDDEN');
        expect([...ws.events, ...sse.events, ...usage.events], name).toEqual([]);
      } finally {
        await Promise.all([ws.dispose(), sse.dispose(), usage.dispose()]);
      }
    }
    const allowed = wsSubscribe(srv.url, `Bearer ${keys.usageWriteRead}`, BALANCE_SUB, { id: otherOrg });
    try {
      await allowed.waitFor((s) => s.events.length === 1, 'the snapshot');
      expect(allowed.events[0].balanceChanged.total).toBe('9');
    } finally {
      await allowed.dispose();
    }
  });

  it("a usage:write key gets the usage event and hold it made, but not the account's balance, batches or ledger through them; refused selections record nothing", async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const own = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost debt lines { item amount } drawdowns { amount } account { id externalId kind } } }`;
    for (const token of [keys.usageWrite, keys.publicUsageWrite]) {
      const ev = ok(await srv.gql(own, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, token)).recordUsage;
      expect(ev).toMatchObject({ cost: '1', debt: '0', drawdowns: [{ amount: '1' }], account: { id: acct, kind: 'ORGANIZATION' } });
      const hold = ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id amount consumed status accountId } }`, {
        input: { accountId: acct, amount: '1', idempotencyKey: uniq('h') },
      }, token)).reserveCredits;
      expect(hold).toMatchObject({ amount: '1', consumed: '0', status: 'ACTIVE', accountId: acct });
    }
    const reaching = [
      `account { balance { total } }`,
      `account { ledger(first: 5) { edges { node { amount } } } }`,
      `account { batches { remaining } }`,
      `account { paymentMethod { reference } autoTopUp { enabled } }`,
      `account { referralCode }`,
      `drawdowns { batch { remaining } }`,
      `...on UsageEvent { account { usage(first: 5) { edges { node { cost } } } } }`,
    ];
    for (const token of [keys.usageWrite, keys.publicUsageWrite]) {
      for (const selection of reaching) {
        const doc = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id ${selection} } }`;
        await expectRefused([acct], () => srv.gql(doc, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, token), 'FORBIDDEN');
        const batch = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { event { id ${selection} } } }`;
        await expectRefused([acct], () => srv.gql(batch, { inputs: [{ accountId: acct, idempotencyKey: uniq('u'), category: 'unit' }] }, token), 'FORBIDDEN');
      }
    }
    // The same selections with read: allowed.
    const doc = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id account { balance { total } } drawdowns { batch { remaining } } } }`;
    const full = ok(await srv.gql(doc, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, keys.usageWriteRead)).recordUsage;
    expect(full.account.balance.total).toBe('2'); // 5 - 3 events of 1 (holds do not change the total)
    expect(full.drawdowns).toEqual([{ batch: { remaining: '2' } }]);
  });

  it("write-only keys run the project's own RecordUsage / RecordUsageBatch operations (a drawdown's batch id); fragments on Node or on CreditBatch cannot reach batch data, and only the operation that runs is judged", async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    for (const token of [keys.usageWrite, keys.publicUsageWrite]) {
      const one = ok(await srv.gql(print(RecordUsageDocument), { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, token)).recordUsage;
      expect(one.drawdowns).toEqual([{ amount: '1', batch: { id: expect.any(String) } }]);
      const batch = ok(await srv.gql(print(RecordUsageBatchDocument), { inputs: [{ accountId: acct, idempotencyKey: uniq('u'), category: 'unit' }] }, token)).recordUsageBatch;
      expect(batch[0].event.drawdowns).toEqual([{ amount: '1', batch: { id: expect.any(String) } }]);
    }
    // Batch data through inline fragments and named fragments, on the interface and on the type:
    // refused before the mutation runs, so nothing is recorded.
    const charge = (selection: string) => `mutation Charge($input: RecordUsageInput!) { recordUsage(input: $input) { id ${selection} } }`;
    const reaching = [
      charge(`drawdowns { batch { ... on Node { id ... on CreditBatch { remaining } } } }`),
      `${charge(`drawdowns { batch { ...BatchData } }`)} fragment BatchData on Node { ... on CreditBatch { remaining } }`,
      charge(`drawdowns { batch { __typename ... on CreditBatch { status } } }`),
    ];
    for (const doc of reaching) {
      await expectRefused([acct], () => srv.gql(doc, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } }, keys.usageWrite), 'FORBIDDEN');
    }
    // A document with two operations: the one that runs is judged, not the other.
    const twoOps = `mutation Charge($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }
      query Peek($id: ID!) { account(id: $id) { balance { total } } }`;
    const post = async (operationName: string, variables: Record<string, unknown>) => {
      const res = await fetch(srv.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${keys.usageWrite}` },
        body: JSON.stringify({ query: twoOps, operationName, variables }),
      });
      return { status: res.status, body: (await res.json()) as GqlResponse['body'] };
    };
    expect(ok(await post('Charge', { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } })).recordUsage.cost).toBe('1');
    expectError(await post('Peek', { id: acct }), 'FORBIDDEN');
  });

  it("a credits:write key gets the account, grant and payment method it made, but not the account's data; refused selections change nothing", async () => {
    const externalId = uniq('made-by-credits');
    const created = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id externalId name kind testMode createdAt } }`, {
        input: { externalId, name: 'made', kind: 'USER', welcomeBonus: false, testMode: true, testClockStart: '2026-01-01T00:00:00Z' },
      }, keys.creditsWrite),
    ).createAccount;
    expect(created).toMatchObject({ externalId, name: 'made', kind: 'USER', testMode: true });
    const g = ok(await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id amount type source reference voidedAt } }`, {
      input: { accountId: created.id, amount: '2', type: 'PAID', source: 'PURCHASE', reference: 'r1', idempotencyKey: uniq('g') },
    }, keys.creditsWrite)).grantCredits;
    expect(g).toMatchObject({ amount: '2', type: 'PAID', source: 'PURCHASE', reference: 'r1', voidedAt: null });
    const method = ok(await srv.gql(`mutation($id: ID!) { attachPaymentMethod(accountId: $id, reference: "pm_card_visa_4242") { provider reference } }`, { id: created.id }, keys.creditsWrite));
    expect(method.attachPaymentMethod).toEqual({ provider: 'simulator', reference: 'pm_…4242' });
    const budget = ok(await srv.gql(`mutation($id: ID!) { setAgentBudget(accountId: $id, agentId: "a1", limit: "3") { agentId limit spent } }`, { id: created.id }, keys.creditsWrite));
    expect(budget.setAgentBudget).toEqual({ agentId: 'a1', limit: '3', spent: '0' });
    const clock = ok(await srv.gql(`mutation($id: ID!) { advanceTestClock(accountId: $id, to: "2026-01-02T00:00:00Z") { id testMode } }`, { id: created.id }, keys.creditsWrite));
    expect(clock.advanceTestClock).toEqual({ id: created.id, testMode: true });

    const counts = await globalCounts(srv);
    const refusedCreate = await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id balance { total } } }`, {
      input: { externalId: uniq('never'), name: 'x', kind: 'USER' },
    }, keys.creditsWrite);
    expectError(refusedCreate, 'FORBIDDEN');
    expect(await globalCounts(srv)).toEqual(counts);
    await expectRefused([created.id], () => srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id batch { remaining } } }`, {
      input: { accountId: created.id, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
    }, keys.creditsWrite), 'FORBIDDEN');
    await expectRefused([created.id], () => srv.gql(`mutation($id: ID!) { advanceTestClock(accountId: $id, to: "2026-01-03T00:00:00Z") { id balance { total } } }`, { id: created.id }, keys.creditsWrite), 'FORBIDDEN');
    // Replaying createAccount of an existing account shows no more than its identity either.
    expectError(await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id grants(first: 5) { edges { node { amount } } } } }`, {
      input: { externalId: otherOrgExt, name: 'API test account', kind: 'ORGANIZATION', welcomeBonus: false },
    }, keys.creditsWrite), 'FORBIDDEN');
    // An admin (read implied) sees the account's data.
    expect(ok(await srv.gql(ACCOUNT, { id: created.id })).account.balance.total).toBe('2');
  });
});
