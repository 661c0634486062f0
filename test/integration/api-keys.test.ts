import { createHash } from 'node:crypto';

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  API_KEY_CACHE_TTL_MS,
  createApiKey,
  findApiKey,
  hashApiKey,
  revokeApiKey,
} from '../../src/auth/api-keys.js';
import { BOOTSTRAP_ADMIN_NAME, createAuthenticator } from '../../src/auth/authenticator.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { SCOPES, hasScope, type Principal } from '../../src/auth/principal.js';
import { createPgPool } from '../../src/db/pg.js';
import { applyMigrations } from '../../src/db/migrate.js';
import { LedgerError } from '../../src/ledger/errors.js';

const DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool_test';
const ADMIN_API_KEY = 'test-bootstrap-admin-key-0123456789';
const JWT_SECRET = 'integration-jwt-secret-0123456789abcdef';
/** Every key this file creates gets this name prefix, so cleanup never touches other rows. */
const NAME = `apikeys-test-${process.pid}-${Date.now()}`;

let pool: pg.Pool;

beforeAll(async () => {
  await applyMigrations(DATABASE_URL);
  pool = createPgPool(DATABASE_URL, 4);
}, 60_000);

afterAll(async () => {
  if (!pool) return;
  await pool.query('DELETE FROM api_keys WHERE name LIKE $1', [`${NAME}%`]);
  await pool.end();
});

async function expectCode(promise: Promise<unknown>, code: string): Promise<LedgerError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LedgerError);
  expect((err as LedgerError).code).toBe(code);
  return err as LedgerError;
}

function scopesOf(p: Principal | null): string[] {
  return p?.kind === 'service' ? [...p.scopes].sort() : [];
}

describe('API key creation and storage', () => {
  it('returns a cp_<prefix>_<secret> token and stores only its sha256', async () => {
    const created = await createApiKey(pool, { name: `${NAME}-storage`, scopes: ['read'] });
    expect(created.token).toMatch(/^cp_[A-Za-z0-9]{8}_[A-Za-z0-9]{43}$/);
    expect(created.token.slice(3, 11)).toBe(created.prefix);
    expect(created.id).toMatch(/^[0-9a-f-]{36}$/);

    const { rows } = await pool.query<Record<string, unknown>>('SELECT * FROM api_keys WHERE id = $1', [created.id]);
    expect(rows).toHaveLength(1);
    const row = rows[0]!;
    const expectedHash = createHash('sha256').update(created.token).digest('hex');
    expect(row['hash']).toBe(expectedHash);
    expect(hashApiKey(created.token)).toBe(expectedHash);
    expect(row['prefix']).toBe(created.prefix);
    expect(row['scopes']).toEqual(['read']);
    expect(row['revoked_at']).toBeNull();
    const secret = created.token.split('_')[2]!;
    expect(JSON.stringify(row)).not.toContain(secret);
  });

  it('creates distinct tokens and prefixes every time', async () => {
    const a = await createApiKey(pool, { name: `${NAME}-distinct`, scopes: ['read'] });
    const b = await createApiKey(pool, { name: `${NAME}-distinct`, scopes: ['read'] });
    expect(a.token).not.toBe(b.token);
    expect(a.prefix).not.toBe(b.prefix);
    expect(a.id).not.toBe(b.id);
  });

  it('rejects unknown, empty and malformed scopes with BAD_USER_INPUT and stores nothing', async () => {
    const name = `${NAME}-badscope`;
    const err = await expectCode(createApiKey(pool, { name, scopes: ['read', 'superuser'] }), 'BAD_USER_INPUT');
    expect(err.details).toEqual({ field: 'scopes' });
    await expectCode(createApiKey(pool, { name, scopes: [] }), 'BAD_USER_INPUT');
    await expectCode(createApiKey(pool, { name, scopes: ['READ'] }), 'BAD_USER_INPUT');
    const { rowCount } = await pool.query('SELECT 1 FROM api_keys WHERE name = $1', [name]);
    expect(rowCount).toBe(0);
  });

  it('rejects an empty or control-character name with BAD_USER_INPUT', async () => {
    await expectCode(createApiKey(pool, { name: '   ', scopes: ['read'] }), 'BAD_USER_INPUT');
    await expectCode(createApiKey(pool, { name: `${NAME}\nx`, scopes: ['read'] }), 'BAD_USER_INPUT');
  });

  it('deduplicates scopes and keeps them in canonical order', async () => {
    const created = await createApiKey(pool, { name: `${NAME}-dedupe`, scopes: ['read', 'usage:write', 'read'] });
    const key = await findApiKey(pool, created.token);
    expect(key?.scopes).toEqual(['usage:write', 'read']);
  });

  it('the database itself refuses unknown scopes (CHECK constraint)', async () => {
    await expect(
      pool.query(
        `INSERT INTO api_keys (id, name, prefix, hash, scopes)
         VALUES (gen_random_uuid(), $1, 'xxxxxxxx', $2, ARRAY['root'])`,
        [`${NAME}-check`, hashApiKey(`check-${Date.now()}`)],
      ),
    ).rejects.toMatchObject({ code: '23514' });
  });
});

describe('authenticating with API keys', () => {
  const auth = () => createAuthenticator({ pool, adminApiKey: ADMIN_API_KEY, jwtSecret: JWT_SECRET });

  it('returns a service principal with the key scopes', async () => {
    const created = await createApiKey(pool, { name: `${NAME}-billing`, scopes: ['usage:write', 'read'] });
    const principal = await auth().authenticate(`Bearer ${created.token}`);
    expect(principal).toMatchObject({ kind: 'service', keyId: created.id, name: `${NAME}-billing` });
    expect(scopesOf(principal)).toEqual(['read', 'usage:write']);
    expect(hasScope(principal, 'usage:write')).toBe(true);
    expect(hasScope(principal, 'read')).toBe(true);
    expect(hasScope(principal, 'credits:write')).toBe(false);
    expect(hasScope(principal, 'admin')).toBe(false);
  });

  it('an admin key holds every scope', async () => {
    const created = await createApiKey(pool, { name: `${NAME}-admin`, scopes: ['admin'] });
    const principal = await auth().authenticate(`bearer ${created.token}`);
    for (const scope of SCOPES) expect(hasScope(principal, scope)).toBe(true);
  });

  it('rejects an unknown token of valid shape and a malformed cp_ token', async () => {
    const unknown = `cp_AAAAAAAA_${'B'.repeat(43)}`;
    await expectCode(auth().authenticate(`Bearer ${unknown}`), 'UNAUTHENTICATED');
    await expectCode(auth().authenticate('Bearer cp_short'), 'UNAUTHENTICATED');
  });

  it('revoking stops the key immediately, even after it was cached', async () => {
    const authenticator = auth();
    const created = await createApiKey(pool, { name: `${NAME}-revoke`, scopes: ['read'] });
    expect((await authenticator.authenticate(`Bearer ${created.token}`))?.kind).toBe('service');

    expect(await revokeApiKey(pool, created.id)).toBe(true);
    await expectCode(authenticator.authenticate(`Bearer ${created.token}`), 'UNAUTHENTICATED');
    expect(await findApiKey(pool, created.token)).toBeNull();

    const { rows } = await pool.query<{ revoked_at: Date | null }>('SELECT revoked_at FROM api_keys WHERE id = $1', [created.id]);
    expect(rows[0]?.revoked_at).toBeInstanceOf(Date);
    // Idempotent: a second revoke reports it was already revoked.
    expect(await revokeApiKey(pool, created.id)).toBe(false);
  });

  it('revoke rejects a non-uuid id and an unknown id', async () => {
    await expectCode(revokeApiKey(pool, 'not-a-uuid'), 'BAD_USER_INPUT');
    await expectCode(revokeApiKey(pool, '00000000-0000-4000-8000-000000000000'), 'NOT_FOUND');
  });

  it('caches lookups for the TTL: a revocation made elsewhere shows up after expiry', async () => {
    const created = await createApiKey(pool, { name: `${NAME}-cache`, scopes: ['read'] });
    const t0 = Date.now();
    expect((await findApiKey(pool, created.token, { now: t0 }))?.id).toBe(created.id);

    // Revoked by "another process": straight SQL, so this process's cache is not cleared.
    await pool.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1', [created.id]);

    // Still served from the cache (no database round trip) within the TTL...
    expect((await findApiKey(pool, created.token, { now: t0 + API_KEY_CACHE_TTL_MS - 1 }))?.id).toBe(created.id);
    // ...and re-read from the database, now revoked, once the TTL has passed.
    expect(await findApiKey(pool, created.token, { now: t0 + API_KEY_CACHE_TTL_MS + 1 })).toBeNull();
  });
});

describe('bootstrap admin key, JWTs and malformed headers', () => {
  it('the bootstrap admin key authenticates as bootstrap-admin with every scope', async () => {
    const authenticator = createAuthenticator({ pool, adminApiKey: ADMIN_API_KEY });
    for (const header of [`Bearer ${ADMIN_API_KEY}`, `BEARER ${ADMIN_API_KEY}`, `  bearer   ${ADMIN_API_KEY}  `]) {
      const principal = await authenticator.authenticate(header);
      expect(principal).toMatchObject({ kind: 'service', keyId: BOOTSTRAP_ADMIN_NAME, name: BOOTSTRAP_ADMIN_NAME });
      expect(scopesOf(principal)).toEqual([...SCOPES].sort());
    }
  });

  it('a near miss of the bootstrap key is rejected', async () => {
    const authenticator = createAuthenticator({ pool, adminApiKey: ADMIN_API_KEY });
    await expectCode(authenticator.authenticate(`Bearer ${ADMIN_API_KEY}x`), 'UNAUTHENTICATED');
    await expectCode(authenticator.authenticate(`Bearer ${ADMIN_API_KEY.slice(0, -1)}`), 'UNAUTHENTICATED');
    // Without a configured admin key, the same token is just an invalid credential.
    const noAdmin = createAuthenticator({ pool });
    await expectCode(noAdmin.authenticate(`Bearer ${ADMIN_API_KEY}`), 'UNAUTHENTICATED');
  });

  it('no header means anonymous (null)', async () => {
    const authenticator = createAuthenticator({ pool, adminApiKey: ADMIN_API_KEY });
    expect(await authenticator.authenticate(undefined)).toBeNull();
    expect(await authenticator.authenticate(null)).toBeNull();
    expect(await authenticator.authenticate('')).toBeNull();
  });

  it('garbage Authorization headers are UNAUTHENTICATED', async () => {
    const authenticator = createAuthenticator({ pool, adminApiKey: ADMIN_API_KEY, jwtSecret: JWT_SECRET });
    const created = await createApiKey(pool, { name: `${NAME}-garbage`, scopes: ['read'] });
    for (const header of [
      'Basic dXNlcjpwYXNz',
      'Bearer',
      'Bearer ',
      `Bearer ${created.token} extra`,
      created.token, // no scheme
      `Token ${created.token}`,
      `Bearer${created.token}`,
      'Bearer not-a-jwt',
      'Bearer \u00e9\u00e9\u00e9',
    ]) {
      await expectCode(authenticator.authenticate(header), 'UNAUTHENTICATED');
    }
    await expectCode(authenticator.authenticate(42 as unknown as string), 'UNAUTHENTICATED');
  });

  it('end-user JWTs authenticate as users with no service scopes', async () => {
    const authenticator = createAuthenticator({ pool, jwtSecret: JWT_SECRET });
    const token = await signUserToken(JWT_SECRET, { sub: 'user-1', org: 'org-1', expiresInSeconds: 300 });
    const principal = await authenticator.authenticate(`Bearer ${token}`);
    expect(principal).toMatchObject({ kind: 'user', userId: 'user-1', orgId: 'org-1' });
    for (const scope of SCOPES) expect(hasScope(principal, scope)).toBe(false);
  });

  it('JWTs are rejected when neither a secret nor a JWKS URL is configured', async () => {
    const authenticator = createAuthenticator({ pool, adminApiKey: ADMIN_API_KEY });
    const token = await signUserToken(JWT_SECRET, { sub: 'user-1', expiresInSeconds: 300 });
    await expectCode(authenticator.authenticate(`Bearer ${token}`), 'UNAUTHENTICATED');
  });
});
