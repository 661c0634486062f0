/**
 * Turns an `Authorization` header value (HTTP) or `connectionParams.authorization` (WebSocket)
 * into a {@link Principal}. The rules come from the contract README ("Credentials"):
 * `Bearer <token>` where the token is the bootstrap ADMIN_API_KEY, a service API key
 * (`cp_...`, see ./api-keys.ts) or an end-user JWT (see ./jwt.ts).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type pg from 'pg';

import { LedgerError } from '../ledger/errors.js';
import { API_KEY_TOKEN_PREFIX, clearApiKeyCache, findApiKey } from './api-keys.js';
import { createUserTokenVerifier, type UserTokenVerifier } from './jwt.js';
import { BOOTSTRAP_ADMIN_NAME, SCOPES, type Principal, type ServicePrincipal } from './principal.js';

export { BOOTSTRAP_ADMIN_NAME };

/** `Bearer`, case-insensitively, then one token of visible non-space characters. */
const BEARER_RE = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i;

/**
 * Configuration of {@link createAuthenticator}; mirrors the environment (src/config/env.ts).
 * - `pool`: pg pool of the database holding `api_keys`.
 * - `adminApiKey`: ADMIN_API_KEY, the bootstrap key with every scope (unset/empty: none).
 * - `jwtSecret` / `jwksUrl` / `issuer` / `audience` / `jwtMaxTtlSeconds`: end-user JWT settings
 *   (see {@link createUserTokenVerifier}); with neither secret nor JWKS, every JWT is rejected.
 */
export interface AuthenticatorOptions {
  pool: pg.Pool;
  adminApiKey?: string | undefined;
  jwtSecret?: string | undefined;
  jwksUrl?: string | undefined;
  issuer?: string | undefined;
  audience?: string | undefined;
  jwtMaxTtlSeconds?: number | undefined;
}

/** See {@link createAuthenticator}. */
export interface Authenticator {
  /**
   * Authenticates one credential.
   * - null / undefined / blank: anonymous, returns null.
   * - not `Bearer <token>`: UNAUTHENTICATED.
   * - the bootstrap admin key: a service principal named {@link BOOTSTRAP_ADMIN_NAME} with
   *   every scope.
   * - a token starting with `cp_`: the active API key's service principal; unknown or revoked:
   *   UNAUTHENTICATED.
   * - anything else: an end-user JWT (UNAUTHENTICATED when invalid or when no JWT key is
   *   configured; UNAVAILABLE when the JWKS cannot be fetched).
   * @throws LedgerError UNAUTHENTICATED / UNAVAILABLE as above; database errors as thrown by pg.
   */
  authenticate(authorization: string | null | undefined): Promise<Principal | null>;
  /**
   * Drops API key lookups from the cache this authenticator reads (the one of its `pool`,
   * ./api-keys.ts clearApiKeyCache): only key `keyId`'s (`api_keys.id`), or every one when
   * `keyId` is undefined. The next use of such a key asks the database again. The server calls it
   * when a revocation is announced on Redis, or may have been missed (src/live/hub.ts).
   */
  forgetApiKey(keyId?: string): void;
}

/**
 * The bearer token inside an `Authorization` value (HTTP header or WebSocket
 * `connectionParams.authorization`), exactly as {@link Authenticator.authenticate} reads it:
 * `Bearer` in any case, spaces or tabs, surrounding blanks ignored. Values that spell the same
 * token differently ("bearer x", " Bearer  x") give the same token, so limits counted per
 * credential (src/server.ts, LIVE_MAX_CONNECTIONS_PER_TOKEN) count it once.
 * @returns the token, or null when `authorization` is not a string of that form.
 */
export function bearerToken(authorization: unknown): string | null {
  if (typeof authorization !== 'string') return null;
  return BEARER_RE.exec(authorization.trim())?.[1] ?? null;
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

function unauthenticated(message = 'invalid credentials'): LedgerError {
  return new LedgerError('UNAUTHENTICATED', message);
}

/**
 * Builds the request authenticator (create once per process: it holds the JWKS cache and uses
 * the API key lookup cache of `pool`).
 * The bootstrap key is compared with crypto.timingSafeEqual on SHA-256 digests (equal lengths
 * whatever the input, so neither content nor length leaks through timing).
 * @throws Error (configuration bug) when the JWT settings are invalid (see createUserTokenVerifier).
 */
export function createAuthenticator(options: AuthenticatorOptions): Authenticator {
  const { pool } = options;
  const adminDigest = options.adminApiKey ? sha256(options.adminApiKey) : undefined;
  const verifyJwt: UserTokenVerifier | undefined =
    options.jwtSecret || options.jwksUrl
      ? createUserTokenVerifier({
          secret: options.jwtSecret,
          jwksUrl: options.jwksUrl,
          issuer: options.issuer,
          audience: options.audience,
          maxTtlSeconds: options.jwtMaxTtlSeconds,
        })
      : undefined;
  const bootstrapPrincipal: ServicePrincipal = Object.freeze({
    kind: 'service',
    keyId: BOOTSTRAP_ADMIN_NAME,
    name: BOOTSTRAP_ADMIN_NAME,
    scopes: new Set(SCOPES),
  });

  return {
    async authenticate(authorization) {
      if (authorization === null || authorization === undefined) return null;
      // connectionParams come from the client as arbitrary JSON: reject non-strings explicitly.
      if (typeof authorization !== 'string') throw unauthenticated();
      if (authorization.trim() === '') return null;
      const token = bearerToken(authorization);
      if (token === null) throw unauthenticated('expected "Authorization: Bearer <token>"');

      if (adminDigest && timingSafeEqual(sha256(token), adminDigest)) return bootstrapPrincipal;

      if (token.startsWith(API_KEY_TOKEN_PREFIX)) {
        const key = await findApiKey(pool, token);
        if (!key) throw unauthenticated();
        return { kind: 'service', keyId: key.id, name: key.name, scopes: new Set(key.scopes), publicAudience: key.audience === 'PUBLIC' };
      }

      if (!verifyJwt) throw unauthenticated();
      return verifyJwt(token);
    },
    forgetApiKey(keyId) {
      clearApiKeyCache(pool, keyId);
    },
  };
}
