/**
 * A credential that cannot be checked right now (the API key lookup's database or the JWKS
 * endpoint unreachable) is the server's problem, not the caller's: over HTTP it answers
 * UNAVAILABLE with status 503 (both outages alike), and a WebSocket's connection_init must not be refused as an invalid credential
 * (4403, which a client takes as "this key/token is bad") but with 1013 "try again later", which
 * graphql-ws clients retry. A server whose authenticator's pool points at a closed port and whose
 * JWKS URL at a closed port is exactly that outage, with real connections.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Redis } from 'ioredis';
import pg from 'pg';
import { SignJWT, generateKeyPair } from 'jose';
import { parseEnv } from '../../src/config/env.js';
import { ledgerSessionLimits } from '../../src/db/pg.js';
import { createPrismaClient } from '../../src/db/prisma.js';
import { createAuthenticator } from '../../src/auth/authenticator.js';
import { buildServer, WS_CLOSE } from '../../src/server.js';
import { createTestServices } from '../setup/services.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { BALANCE_SUB, wsSubscribe, type LiveSub } from './helpers.js';

const ISS = 'https://id.example/';
const AUD = 'creditpool-api';
let url = '';
let close: () => Promise<void> = async () => undefined;
const subs: LiveSub[] = [];

beforeAll(async () => {
  const env = parseEnv({ NODE_ENV: 'test', DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: TEST_REDIS_URL, HOST: '127.0.0.1', LOG_LEVEL: 'silent' });
  const services = createTestServices(2, env.DATABASE_URL, ledgerSessionLimits(env));
  const prisma = createPrismaClient(env.DATABASE_URL, 2, ledgerSessionLimits(env));
  const redis = new Redis(TEST_REDIS_URL);
  // Port 1 on loopback: nothing listens, every connection is refused at once.
  const unreachable = new pg.Pool({ connectionString: 'postgresql://postgres@127.0.0.1:1/creditpool', connectionTimeoutMillis: 2_000 });
  const authenticator = createAuthenticator({ pool: unreachable, jwksUrl: 'http://127.0.0.1:1/jwks.json', issuer: ISS, audience: AUD });
  const server = buildServer({ env, log: pino({ level: 'silent' }), pool: services.pool, prisma, redis, services, authenticator });
  url = `http://127.0.0.1:${await server.listen(0, '127.0.0.1')}/graphql`;
  close = async () => {
    await server.close();
    await Promise.allSettled([services.close(), prisma.$disconnect(), redis.quit(), unreachable.end()]);
  };
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
});

afterAll(async () => close());

async function credentials() {
  const { privateKey } = await generateKeyPair('ES256');
  const jwt = await new SignJWT({})
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setSubject('u1')
    .setIssuer(ISS)
    .setAudience(AUD)
    .setExpirationTime(Math.floor(Date.now() / 1000) + 600)
    .sign(privateKey);
  return { apiKey: `cp_ABCDEFGH_${'a'.repeat(43)}`, jwt };
}

describe('credentials that cannot be checked right now', () => {
  it('answer HTTP 503 with UNAVAILABLE over HTTP, the database outage (API key) exactly like the JWKS one (JWT)', async () => {
    const answers: Record<string, unknown> = {};
    for (const [kind, token] of Object.entries(await credentials())) {
      const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{"query":"{ settings { creditUsdValue } }"}' });
      const body = (await res.json()) as { data?: unknown; errors?: Array<{ extensions?: { code?: string } }> };
      answers[kind] = { status: res.status, retryAfter: res.headers.get('retry-after'), data: body.data ?? null, codes: body.errors?.map((e) => e.extensions?.code) };
    }
    const unavailable = { status: 503, retryAfter: null, data: null, codes: ['UNAVAILABLE'] };
    expect(answers).toEqual({ apiKey: unavailable, jwt: unavailable });
  });

  it('close a WebSocket at connection_init with 1013 (try again later), not 4403 (invalid credential)', async () => {
    for (const token of Object.values(await credentials())) {
      const ws = wsSubscribe(url, `Bearer ${token}`, BALANCE_SUB, { id: 'QWNjb3VudDox' });
      subs.push(ws);
      await ws.waitFor((s) => s.closedWith !== null, 'the connection to be closed');
      expect(ws.closedWith).toEqual({ code: WS_CLOSE.tryAgainLater, reason: 'Try again later: the credential cannot be checked right now' });
      expect(ws.events).toEqual([]);
    }
  });
});
