/**
 * Second audit of authentication and authorization (after test/api/auth.test.ts and the tenancy
 * audits): the scope every root field requires, pinned so that a new query, mutation or
 * subscription cannot be added without one; JWKS tokens naming an unknown key id or confusing
 * algorithms; `nbf` and the clock tolerance; what NODE_ENV=production hides (GraphiQL,
 * introspection, suggestions that would rebuild the schema); and CORS for a service that uses no
 * cookies.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import WebSocket from 'ws';
import { createClient as createWsClient } from 'graphql-ws';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createUserTokenVerifier, signUserToken } from '../../src/auth/jwt.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { schema } from '../../src/graphql/schema.js';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { wsUrl } from '../live/helpers.js';
import type { GqlResponse } from './helpers.js';

/**
 * The `authScopes` of every root field, as README "Who may do what" states them: `authenticated`
 * for the reads whose resolvers check account access themselves (src/graphql/access.ts) and the
 * public catalog; `usageWrite` for usage and reservations; `creditsWrite` for accounts, grants,
 * voids, refunds, payment methods, packs, auto top-up, promo codes and referrals, budgets, plans
 * and test clocks; `admin` alone for the catalog and the rules; `admin` or `read` for the audit
 * trail. A field added without an entry here fails the test: decide its scope, then list it.
 */
const ROOT_FIELD_SCOPES: Record<string, Record<string, Record<string, true>>> = {
  Query: {
    plans: { authenticated: true },
    creditPacks: { authenticated: true },
    node: { authenticated: true },
    account: { authenticated: true },
    accountByExternalId: { authenticated: true },
    viewer: { authenticated: true },
    usageEvent: { authenticated: true },
    taskCost: { authenticated: true },
    quote: { authenticated: true },
    priceBook: { authenticated: true },
    modelPrices: { authenticated: true },
    settings: { authenticated: true },
    promoCode: { creditsWrite: true },
    auditEvents: { admin: true, read: true },
  },
  Mutation: {
    createPlan: { admin: true },
    subscribeToPlan: { creditsWrite: true },
    cancelSubscription: { creditsWrite: true },
    advanceTestClock: { creditsWrite: true },
    createCreditPack: { admin: true },
    attachPaymentMethod: { creditsWrite: true },
    purchaseCreditPack: { creditsWrite: true },
    setAutoTopUp: { creditsWrite: true },
    createAccount: { creditsWrite: true },
    grantCredits: { creditsWrite: true },
    voidGrant: { creditsWrite: true },
    recordUsage: { usageWrite: true },
    recordUsageBatch: { usageWrite: true },
    reserveCredits: { usageWrite: true },
    settleReservation: { usageWrite: true },
    releaseReservation: { usageWrite: true },
    extendReservation: { usageWrite: true },
    refundUsage: { creditsWrite: true },
    publishPriceBook: { admin: true },
    updateSettings: { admin: true },
    createPromoCode: { admin: true },
    redeemPromoCode: { creditsWrite: true },
    redeemReferral: { creditsWrite: true },
    setAgentBudget: { creditsWrite: true },
    setUserBudget: { creditsWrite: true },
  },
  Subscription: {
    balanceChanged: { authenticated: true },
    creditAlerts: { authenticated: true },
    usageRecorded: { authenticated: true },
  },
};

describe('every root field requires a scope', () => {
  it('each query, mutation and subscription has the authScopes README names, and no field is added without one', () => {
    const actual: Record<string, Record<string, unknown>> = {};
    for (const type of [schema.getQueryType(), schema.getMutationType(), schema.getSubscriptionType()]) {
      if (!type) continue;
      actual[type.name] = {};
      for (const [name, field] of Object.entries(type.getFields())) {
        const scopes = (field.extensions as { pothosOptions?: { authScopes?: unknown } } | undefined)?.pothosOptions?.authScopes;
        // A function or an empty object would let the field run for anyone: only a literal map of
        // scopes, each `true`, is accepted here.
        expect(typeof scopes === 'object' && scopes !== null && Object.keys(scopes).length > 0, `${type.name}.${name} has no authScopes`).toBe(true);
        actual[type.name]![name] = scopes;
      }
    }
    expect(actual).toEqual(ROOT_FIELD_SCOPES);
  });

  it('end users hold no write scope: every mutation requires a service scope', () => {
    for (const [name, scopes] of Object.entries(ROOT_FIELD_SCOPES.Mutation!)) {
      expect(Object.keys(scopes).some((s) => s === 'authenticated' || s === 'user' || s === 'accountData'), name).toBe(false);
    }
  });
});

const ISS = 'https://id.example/';
const AUD = 'creditpool-api';
const SECRET = 'audit-2-secret-0123456789abcdef-0123456789';
const nowSeconds = () => Math.floor(Date.now() / 1000);

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (e: unknown) => e,
  );
}

describe('JWKS tokens: unknown key ids and algorithm confusion', () => {
  let server: Server;
  let jwksUrl: string;
  let fetches = 0;
  let privateKey: CryptoKey;
  let strangerKey: CryptoKey;
  let publicJwk: Record<string, unknown>;

  beforeAll(async () => {
    const pair = await generateKeyPair('ES256');
    privateKey = pair.privateKey;
    strangerKey = (await generateKeyPair('ES256')).privateKey;
    publicJwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    server = createServer((_req, res) => {
      fetches++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [publicJwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const sign = (key: CryptoKey, kid: string | undefined) =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', ...(kid === undefined ? {} : { kid }) })
      .setSubject('victim')
      .setIssuer(ISS)
      .setAudience(AUD)
      .setExpirationTime(nowSeconds() + 600)
      .sign(key);

  it('a kid the set does not hold, or a key outside the set, is UNAUTHENTICATED (not UNAVAILABLE), and a flood of unknown kids refetches the set at most once', async () => {
    const verify = createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD });
    expect((await verify(await sign(privateKey, 'k1'))).userId).toBe('victim');
    const before = fetches;
    for (let i = 0; i < 20; i++) {
      const err = await rejection(verify(await sign(strangerKey, `unknown-${i}`)));
      expect(err).toBeInstanceOf(LedgerError);
      expect(err).toMatchObject({ code: 'UNAUTHENTICATED' });
    }
    // jose's cooldown (30 s) between refetches: unknown kids cannot make us hammer the provider.
    expect(fetches - before).toBeLessThanOrEqual(1);
    for (const token of [await sign(strangerKey, undefined), await sign(strangerKey, 'k1')]) {
      expect(await rejection(verify(token))).toMatchObject({ code: 'UNAUTHENTICATED' });
    }
  });

  it('an HS256 token keyed with the public JWK (the classic RS/HS confusion) is UNAUTHENTICATED, with or without JWT_SECRET', async () => {
    const publicAsSecret = new TextEncoder().encode(JSON.stringify(publicJwk));
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256', kid: 'k1' })
      .setSubject('victim')
      .setIssuer(ISS)
      .setAudience(AUD)
      .setExpirationTime(nowSeconds() + 600)
      .sign(publicAsSecret);
    for (const verify of [createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD }), createUserTokenVerifier({ jwksUrl, secret: SECRET, issuer: ISS, audience: AUD })]) {
      expect(await rejection(verify(forged))).toMatchObject({ code: 'UNAUTHENTICATED' });
    }
  });
});

describe('clock tolerance', () => {
  const verify = createUserTokenVerifier({ secret: SECRET });
  const withTimes = (nbf: number, exp: number) =>
    new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject('u').setIssuedAt().setNotBefore(nbf).setExpirationTime(exp).sign(new TextEncoder().encode(SECRET));

  it('accepts nbf up to 5 s ahead and exp up to 5 s behind (clocks differ), refuses beyond', async () => {
    const now = nowSeconds();
    expect((await verify(await withTimes(now + 3, now + 600))).userId).toBe('u');
    expect((await verify(await withTimes(now - 60, now - 2))).userId).toBe('u');
    expect(await rejection(verify(await withTimes(now + 30, now + 600)))).toMatchObject({ code: 'UNAUTHENTICATED' });
    expect(await rejection(verify(await withTimes(now - 60, now - 30)))).toMatchObject({ code: 'UNAUTHENTICATED' });
  });
});

describe('NODE_ENV=production', () => {
  let srv: TestServer;

  beforeAll(async () => {
    srv = await startTestServer({ NODE_ENV: 'production' });
  });

  afterAll(async () => {
    await srv?.close();
  });

  const messages = (res: GqlResponse) => (res.body.errors ?? []).map((e) => e.message).join('\n');

  it('serves no GraphiQL', async () => {
    const res = await fetch(srv.url, { headers: { accept: 'text/html' } });
    expect(res.headers.get('content-type') ?? '').not.toMatch(/text\/html/);
    expect(await res.text()).not.toMatch(/graphiql/i);
  });

  it('refuses introspection (__schema and __type), even to the admin key; __typename still answers', async () => {
    for (const query of ['{ __schema { types { name } } }', '{ __type(name: "Account") { fields { name } } }']) {
      const res = await srv.gql(query);
      expect(res.body.data ?? null).toBeNull();
      expect(res.body.errors?.[0]?.extensions?.code).toBe('BAD_USER_INPUT');
    }
    expect((await srv.gql('{ __typename }')).body.data).toEqual({ __typename: 'Query' });
  });

  it('names no field, argument, type or enum value a caller did not send ("Did you mean …"), in the document or in its variables', async () => {
    const cases: Array<[string, Record<string, unknown>]> = [
      ['{ acount(id: "x") { id } }', {}],
      ['{ account(id: "x", frist: 1) { id } }', {}],
      ['query($a: Acount) { __typename }', {}],
      ['query($id: ID!) { account(id: $id) { batches(status: [ACTIV]) { id } } }', { id: 'x' }],
      ['mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }', { input: { acountId: 'x', category: 'c', idempotencyKey: 'k' } }],
      ['query($id: ID!, $s: [BatchStatus!]) { account(id: $id) { batches(status: $s) { id } } }', { id: 'x', s: ['ACTIV'] }],
    ];
    const leaks: string[] = [];
    for (const [query, variables] of cases) {
      const res = await srv.gql(query, variables);
      expect(res.body.errors?.length, query).toBeGreaterThan(0);
      expect(res.body.errors?.[0]?.extensions?.code, query).toBe('BAD_USER_INPUT');
      // (A required field the caller left out is named, as it must be: that is no suggestion.)
      if (/did you mean|"(first|Account|ACTIVE|agentId)"/i.test(messages(res))) leaks.push(messages(res));
    }
    expect(leaks).toEqual([]);
  });

  it('hides the same hints over a WebSocket (document and variables)', async () => {
    const client = createWsClient({ url: wsUrl(srv.url), webSocketImpl: WebSocket, connectionParams: { authorization: `Bearer ${srv.adminKey}` }, retryAttempts: 0 });
    try {
      const run = (query: string, variables: Record<string, unknown>) =>
        new Promise<string>((resolve) => {
          client.subscribe(
            { query, variables },
            {
              next: (result) => resolve(JSON.stringify(result.errors ?? [])),
              error: (err) => resolve(JSON.stringify(err)),
              complete: () => resolve(''),
            },
          );
        });
      for (const [query, variables] of [
        ['query($id: ID!) { account(id: $id) { batches(status: [ACTIV]) { id } } }', { id: 'x' }],
        ['query($id: ID!, $s: [BatchStatus!]) { account(id: $id) { batches(status: $s) { id } } }', { id: 'x', s: ['ACTIV'] }],
      ] as const) {
        const errors = await run(query, variables);
        expect(errors, query).toMatch(/ACTIV/);
        expect(errors, query).not.toMatch(/did you mean|"ACTIVE"/i);
      }
    } finally {
      await client.dispose();
    }
  });
});

describe('CORS without cookies', () => {
  let srv: TestServer;

  beforeAll(async () => {
    srv = await startTestServer();
  });

  afterAll(async () => {
    await srv?.close();
  });

  it('a browser on any origin may send a Bearer token, but no origin is told it may send cookies or other ambient credentials', async () => {
    const origin = 'https://evil.example';
    const preflight = await fetch(srv.url, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
    });
    expect(preflight.status).toBeLessThan(300);
    expect(preflight.headers.get('access-control-allow-origin')).toBe(origin);
    expect((preflight.headers.get('access-control-allow-headers') ?? '').toLowerCase()).toContain('authorization');
    expect(preflight.headers.get('access-control-allow-credentials')).toBeNull();

    const token = await signUserToken(srv.jwtSecret, { sub: 'cors-user', expiresInSeconds: 600 });
    const res = await fetch(srv.url, {
      method: 'POST',
      headers: { origin, 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: '{ __typename }' }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('access-control-allow-origin')).toBe(origin);
    expect(res.headers.get('access-control-allow-credentials')).toBeNull();
  });

  it('no request sets a cookie: credentials travel only in the Authorization header', async () => {
    const res = await fetch(srv.url, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${srv.adminKey}` }, body: JSON.stringify({ query: '{ __typename }' }) });
    expect(res.headers.get('set-cookie')).toBeNull();
  });
});
