import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { SignJWT, decodeJwt, exportJWK, generateKeyPair, type CryptoKey } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { DEFAULT_JWT_MAX_TTL_SECONDS, createUserTokenVerifier, jwksUrlProblem, signUserToken } from '../../src/auth/jwt.js';
import { parseEnv } from '../../src/config/env.js';
import { LedgerError } from '../../src/ledger/errors.js';

const SECRET = 'unit-test-secret-0123456789abcdef-0123456789';
const OTHER_SECRET = 'another-secret-0123456789abcdef-0123456789ab';
const key = new TextEncoder().encode(SECRET);
/** The identity provider's issuer and this API's audience, required with a JWKS. */
const ISS = 'https://id.example/';
const AUD = 'creditpool-api';
const nowSeconds = () => Math.floor(Date.now() / 1000);

function b64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** Asserts the generic UNAUTHENTICATED rejection (exact message: it never echoes the token). */
async function expectRejected(promise: Promise<unknown>, token: string): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LedgerError);
  expect(err).toMatchObject({ code: 'UNAUTHENTICATED', message: 'invalid or expired token' });
  if (token.length > 0) expect(JSON.stringify((err as LedgerError).details ?? {})).not.toContain(token);
}

describe('HS256 end-user tokens', () => {
  const verify = createUserTokenVerifier({ secret: SECRET });

  it('accepts a valid token with an org claim and returns the user principal', async () => {
    const token = await signUserToken(SECRET, { sub: 'user-42', org: 'org-7', expiresInSeconds: 600 });
    const principal = await verify(token);
    const exp = decodeJwt(token).exp;
    expect(exp).toBeTypeOf('number');
    expect(principal).toEqual({ kind: 'user', userId: 'user-42', orgId: 'org-7', expiresAt: new Date(exp! * 1000) });
    expect(exp! - nowSeconds()).toBeGreaterThan(590);
    expect(exp! - nowSeconds()).toBeLessThanOrEqual(600);
  });

  it('accepts a valid token without org (orgId null)', async () => {
    const token = await signUserToken(SECRET, { sub: 'solo-user', expiresInSeconds: 60 });
    const principal = await verify(token);
    expect(principal).toMatchObject({ kind: 'user', userId: 'solo-user', orgId: null });
    expect(principal.expiresAt).toBeInstanceOf(Date);
  });

  it('rejects a token without exp (it would never end), with or without iat', async () => {
    const bare = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('no-exp').sign(key);
    const epoch = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('no-exp').setIssuedAt(0).sign(key);
    await expectRejected(verify(bare), bare);
    await expectRejected(verify(epoch), epoch);
  });

  it('rejects a lifetime longer than maxTtlSeconds (default 24 h) after iat or after now, and accepts one at the limit', async () => {
    const sign = (claims: { iat?: number; exp: number }) => {
      const jwt = new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('u').setExpirationTime(claims.exp);
      if (claims.iat !== undefined) jwt.setIssuedAt(claims.iat);
      return jwt.sign(key);
    };
    const now = nowSeconds();
    expect(DEFAULT_JWT_MAX_TTL_SECONDS).toBe(86_400);
    expect((await verify(await sign({ iat: now, exp: now + 86_400 }))).userId).toBe('u');
    expect((await verify(await sign({ exp: now + 86_400 }))).userId).toBe('u');
    // A year-long token, whether or not it says when it was issued.
    for (const token of [await sign({ iat: now, exp: now + 365 * 86_400 }), await sign({ exp: now + 365 * 86_400 })]) await expectRejected(verify(token), token);
    // Issued 30 days ago for 31 days: one day left, but its lifetime is over the cap.
    const old = await sign({ iat: now - 30 * 86_400, exp: now + 86_400 });
    await expectRejected(verify(old), old);
    // A shorter configured cap.
    const hourly = createUserTokenVerifier({ secret: SECRET, maxTtlSeconds: 3600 });
    const twoHours = await signUserToken(SECRET, { sub: 'u', expiresInSeconds: 7200 });
    await expectRejected(hourly(twoHours), twoHours);
    expect((await hourly(await signUserToken(SECRET, { sub: 'u', expiresInSeconds: 3600 }))).userId).toBe('u');
    expect(() => createUserTokenVerifier({ secret: SECRET, maxTtlSeconds: 0 })).toThrow(/maxTtlSeconds/);
  });

  it('rejects an expired token', async () => {
    const token = await signUserToken(SECRET, { sub: 'user-42', expiresInSeconds: -3600 });
    await expectRejected(verify(token), token);
  });

  it('rejects a token that is not yet valid (nbf in the future)', async () => {
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('user-42')
      .setNotBefore(nowSeconds() + 3600)
      .setExpirationTime(nowSeconds() + 7200)
      .sign(key);
    await expectRejected(verify(token), token);
  });

  it('rejects a token signed with another secret', async () => {
    const token = await signUserToken(OTHER_SECRET, { sub: 'user-42', expiresInSeconds: 600 });
    await expectRejected(verify(token), token);
  });

  it('rejects a tampered payload (signature no longer matches)', async () => {
    const token = await signUserToken(SECRET, { sub: 'user-42', expiresInSeconds: 600 });
    const [header, , signature] = token.split('.');
    const forged = `${header}.${b64url({ sub: 'admin-user', exp: nowSeconds() + 600 })}.${signature}`;
    await expectRejected(verify(forged), forged);
  });

  it('rejects a hand-crafted alg "none" token, with or without a signature part', async () => {
    const payload = b64url({ sub: 'user-42', exp: nowSeconds() + 600 });
    for (const alg of ['none', 'None', 'NONE']) {
      const unsigned = `${b64url({ alg, typ: 'JWT' })}.${payload}.`;
      await expectRejected(verify(unsigned), unsigned);
    }
    // The real HS256 signature of the same payload does not help a header that says "none".
    const genuine = await signUserToken(SECRET, { sub: 'user-42', expiresInSeconds: 600 });
    const withSig = `${b64url({ alg: 'none', typ: 'JWT' })}.${genuine.split('.')[1]}.${genuine.split('.')[2]}`;
    await expectRejected(verify(withSig), withSig);
  });

  it('rejects HS512 even with the right secret (only HS256 is allowed)', async () => {
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS512' })
      .setSubject('user-42')
      .setExpirationTime(nowSeconds() + 600)
      .sign(key);
    await expectRejected(verify(token), token);
  });

  it('rejects a missing, empty, non-string or over-long sub', async () => {
    const sign = (payload: Record<string, unknown>) =>
      new SignJWT(payload).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(nowSeconds() + 600).sign(key);
    for (const payload of [{}, { sub: '' }, { sub: 42 }, { sub: 'u'.repeat(201) }]) {
      const token = await sign(payload);
      await expectRejected(verify(token), token);
    }
    // The upper bound itself is accepted.
    expect((await verify(await sign({ sub: 'u'.repeat(200) }))).userId).toHaveLength(200);
  });

  it('rejects a non-string or empty org claim', async () => {
    for (const org of [17, '', ['org-1'], { id: 'org-1' }]) {
      const token = await new SignJWT({ org })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject('user-42')
        .setExpirationTime(nowSeconds() + 600)
        .sign(key);
      await expectRejected(verify(token), token);
    }
  });

  it('rejects garbage that is not a JWT', async () => {
    for (const token of ['', 'abc', 'a.b.c', 'eyJhbGciOiJIUzI1NiJ9..', 'x'.repeat(9000)]) {
      await expectRejected(verify(token), token);
    }
  });
});

describe('issuer and audience', () => {
  const verify = createUserTokenVerifier({ secret: SECRET, issuer: 'https://id.example', audience: 'creditpool' });

  it('accepts matching iss and aud', async () => {
    const token = await signUserToken(SECRET, {
      sub: 'user-1',
      expiresInSeconds: 600,
      issuer: 'https://id.example',
      audience: 'creditpool',
    });
    expect((await verify(token)).userId).toBe('user-1');
  });

  it('rejects a wrong or missing issuer', async () => {
    const wrong = await signUserToken(SECRET, { sub: 'u', expiresInSeconds: 600, issuer: 'https://evil.example', audience: 'creditpool' });
    const missing = await signUserToken(SECRET, { sub: 'u', expiresInSeconds: 600, audience: 'creditpool' });
    await expectRejected(verify(wrong), wrong);
    await expectRejected(verify(missing), missing);
  });

  it('rejects a wrong or missing audience', async () => {
    const wrong = await signUserToken(SECRET, { sub: 'u', expiresInSeconds: 600, issuer: 'https://id.example', audience: 'other-app' });
    const missing = await signUserToken(SECRET, { sub: 'u', expiresInSeconds: 600, issuer: 'https://id.example' });
    await expectRejected(verify(wrong), wrong);
    await expectRejected(verify(missing), missing);
  });
});

describe('explicit typing: the `typ` header (RFC 8725 §3.11, §2.8)', () => {
  const verify = createUserTokenVerifier({ secret: SECRET });
  const withTyp = (typ: unknown) =>
    new SignJWT({ org: 'org-1' })
      .setProtectedHeader(typ === undefined ? { alg: 'HS256' } : ({ alg: 'HS256', typ } as { alg: string; typ: string }))
      .setSubject('typed-user')
      .setIssuedAt()
      .setExpirationTime(nowSeconds() + 600)
      .sign(key);

  it('accepts no typ, JWT and RFC 9068 at+jwt, case-insensitively and with or without the application/ prefix (RFC 7515 §4.1.9)', async () => {
    for (const typ of [undefined, 'JWT', 'jwt', 'Jwt', 'application/jwt', 'at+jwt', 'AT+JWT', 'application/at+jwt', 'Application/AT+JWT']) {
      expect((await verify(await withTyp(typ))).userId, String(typ)).toBe('typed-user');
    }
  });

  it('refuses a token of another kind signed by the same key: logout token, Security Event Token, DPoP proof, anything else', async () => {
    for (const typ of ['logout+jwt', 'application/logout+jwt', 'secevent+jwt', 'dpop+jwt', 'JOSE', 'JOSE+JSON', 'jwt ', 'at+jwt+x', 'application/', 'x/jwt', '', 17, null, ['JWT']]) {
      const token = await withTyp(typ);
      await expectRejected(verify(token), token);
    }
  });
});

describe('verifier configuration', () => {
  it('refuses to build without a secret or JWKS URL, or with a short secret', () => {
    expect(() => createUserTokenVerifier({})).toThrow(/secret or a JWKS URL/);
    expect(() => createUserTokenVerifier({ secret: 'too-short' })).toThrow(/at least 32/);
  });

  it('refuses a JWKS URL without an issuer and an audience (any app of the identity provider could mint tokens it accepts)', () => {
    const jwksUrl = 'https://id.example/.well-known/jwks.json';
    expect(() => createUserTokenVerifier({ jwksUrl })).toThrow(/JWKS URL needs an issuer and an audience/);
    expect(() => createUserTokenVerifier({ jwksUrl, issuer: ISS })).toThrow(/JWKS URL needs an issuer and an audience/);
    expect(() => createUserTokenVerifier({ jwksUrl, audience: AUD })).toThrow(/JWKS URL needs an issuer and an audience/);
    expect(() => createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD })).not.toThrow();
    expect(() => parseEnv({ JWKS_URL: jwksUrl })).toThrow(/JWT_ISSUER: is required when JWKS_URL is set[\s\S]*JWT_AUDIENCE: is required when JWKS_URL is set/);
    expect(() => parseEnv({ JWKS_URL: jwksUrl, JWT_ISSUER: ISS })).toThrow(/JWT_AUDIENCE: is required when JWKS_URL is set/);
    expect(parseEnv({ JWKS_URL: jwksUrl, JWT_ISSUER: ISS, JWT_AUDIENCE: AUD }).JWT_AUDIENCE).toBe(AUD);
    expect(parseEnv({ JWT_SECRET: SECRET }).JWT_AUDIENCE).toBeUndefined(); // a shared secret is the platform's own
  });

  it('refuses a plain-http JWKS URL unless its host is loopback', () => {
    for (const url of ['http://id.example/jwks.json', 'http://10.0.0.5/jwks.json', 'ftp://id.example/jwks.json', 'not a url']) {
      expect(jwksUrlProblem(url), url).not.toBeNull();
      expect(() => createUserTokenVerifier({ jwksUrl: url, issuer: ISS, audience: AUD }), url).toThrow(/JWKS URL/);
    }
    for (const url of ['https://id.example/.well-known/jwks.json', 'http://127.0.0.1:8080/jwks.json', 'http://localhost/jwks.json', 'http://[::1]:9/jwks.json']) {
      expect(jwksUrlProblem(url), url).toBeNull();
      expect(() => createUserTokenVerifier({ jwksUrl: url, issuer: ISS, audience: AUD }), url).not.toThrow();
    }
  });

  it('the environment refuses a non-https JWKS_URL at boot with a clear message, and validates JWT_MAX_TTL_SECONDS', () => {
    expect(() => parseEnv({ JWKS_URL: 'http://id.example/jwks.json', JWT_ISSUER: ISS, JWT_AUDIENCE: AUD })).toThrow(/JWKS_URL: JWKS_URL must be an https URL/);
    expect(parseEnv({ JWKS_URL: 'http://127.0.0.1:9000/jwks.json', JWT_ISSUER: ISS, JWT_AUDIENCE: AUD }).JWKS_URL).toBe('http://127.0.0.1:9000/jwks.json');
    expect(parseEnv({ JWKS_URL: 'https://id.example/jwks.json', JWT_ISSUER: ISS, JWT_AUDIENCE: AUD }).JWKS_URL).toBe('https://id.example/jwks.json');
    expect(parseEnv({}).JWT_MAX_TTL_SECONDS).toBe(86_400);
    expect(parseEnv({ JWT_MAX_TTL_SECONDS: '3600' }).JWT_MAX_TTL_SECONDS).toBe(3600);
    for (const bad of ['0', '-5', '1.5', 'day', '99999999']) expect(() => parseEnv({ JWT_MAX_TTL_SECONDS: bad }), bad).toThrow(/JWT_MAX_TTL_SECONDS/);
    expect(parseEnv({ JWT_MAX_TTL_SECONDS: '2592000' }).JWT_MAX_TTL_SECONDS).toBe(2_592_000); // 30 days
    expect(() => parseEnv({ JWT_MAX_TTL_SECONDS: '2592001' })).toThrow(/JWT_MAX_TTL_SECONDS/);
  });

  it('signUserToken refuses a short secret', async () => {
    await expect(signUserToken('short', { sub: 'u', expiresInSeconds: 60 })).rejects.toThrow(/at least 32/);
  });
});

describe('JWKS end-user tokens', () => {
  let server: Server;
  let jwksUrl: string;
  let privateKey: CryptoKey;

  beforeAll(async () => {
    const pair = await generateKeyPair('ES256');
    privateKey = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('accepts an ES256 token signed by a key of the set', async () => {
    const verify = createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD });
    const token = await new SignJWT({ org: 'org-9' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setSubject('jwks-user')
      .setIssuer(ISS)
      .setAudience(AUD)
      .setExpirationTime(nowSeconds() + 600)
      .sign(privateKey);
    expect(await verify(token)).toMatchObject({ kind: 'user', userId: 'jwks-user', orgId: 'org-9' });
  });

  it("rejects a token the same key set signed for another application (other aud or iss): a JWKS is the identity provider's, shared by every app it serves", async () => {
    const verify = createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD });
    const sign = (iss: string, aud: string) =>
      new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setSubject('victim').setIssuer(iss).setAudience(aud).setExpirationTime(nowSeconds() + 600).sign(privateKey);
    expect((await verify(await sign(ISS, AUD))).userId).toBe('victim');
    for (const token of [await sign(ISS, 'another-app'), await sign('https://another-tenant.example/', AUD)]) await expectRejected(verify(token), token);
  });

  it('refuses a token of another kind (typ logout+jwt) signed by a key of the set, and accepts typ at+jwt', async () => {
    const verify = createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD });
    const sign = (typ: string) =>
      new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'k1', typ }).setSubject('victim').setIssuer(ISS).setAudience(AUD).setIssuedAt().setExpirationTime(nowSeconds() + 600).sign(privateKey);
    expect((await verify(await sign('at+jwt'))).userId).toBe('victim');
    const logout = await sign('logout+jwt');
    await expectRejected(verify(logout), logout);
  });

  it('rejects an HS256 token when only the JWKS is configured', async () => {
    const verify = createUserTokenVerifier({ jwksUrl, issuer: ISS, audience: AUD });
    const token = await signUserToken(SECRET, { sub: 'user-42', expiresInSeconds: 600, issuer: ISS, audience: AUD });
    await expectRejected(verify(token), token);
  });

  it('with both configured, routes HS256 to the secret and ES256 to the JWKS', async () => {
    const verify = createUserTokenVerifier({ jwksUrl, secret: SECRET, issuer: ISS, audience: AUD });
    const hs = await signUserToken(SECRET, { sub: 'hs-user', expiresInSeconds: 600, issuer: ISS, audience: AUD });
    const es = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setSubject('es-user')
      .setIssuer(ISS)
      .setAudience(AUD)
      .setExpirationTime(nowSeconds() + 600)
      .sign(privateKey);
    expect((await verify(hs)).userId).toBe('hs-user');
    expect((await verify(es)).userId).toBe('es-user');
    const wrongSecret = await signUserToken(OTHER_SECRET, { sub: 'hs-user', expiresInSeconds: 600, issuer: ISS, audience: AUD });
    await expectRejected(verify(wrongSecret), wrongSecret);
  });

  it('reports an unreachable JWKS as UNAVAILABLE, not as a bad token', async () => {
    const verify = createUserTokenVerifier({ jwksUrl: 'http://127.0.0.1:1/jwks.json', issuer: ISS, audience: AUD });
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setSubject('jwks-user')
      .setIssuer(ISS)
      .setAudience(AUD)
      .setExpirationTime(nowSeconds() + 600)
      .sign(privateKey);
    await expect(verify(token)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });
});
