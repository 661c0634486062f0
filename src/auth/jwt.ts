/**
 * End-user JWTs (contract README, "Credentials"): HS256 tokens signed with JWT_SECRET, or
 * asymmetric tokens verified against a JWKS URL (JWKS_URL). `sub` is the user's external id;
 * the optional `org` claim is their organization's external id.
 *
 * Every verification failure (malformed token, alg `none` or any algorithm not allowed for the
 * configured key, bad signature, expired, not yet valid, wrong issuer/audience, a `typ` header
 * other than none, `JWT` or `at+jwt` (RFC 8725 §3.11), missing or bad `sub`/`org`) becomes one generic LedgerError UNAUTHENTICATED; the message never echoes the
 * token or says which check failed. A JWKS endpoint that cannot be reached is the server's
 * problem, not the caller's, and is reported as UNAVAILABLE.
 */
import { SignJWT, createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose';
import type { JWTHeaderParameters, JWTPayload } from 'jose';

import { LedgerError } from '../ledger/errors.js';
import type { UserPrincipal } from './principal.js';

/** Shortest accepted HS256 secret, in characters (same rule as JWT_SECRET in src/config/env.ts). */
export const JWT_SECRET_MIN_LENGTH = 32;

/** Longest accepted `sub` / `org` claim, in characters. */
export const JWT_ID_CLAIM_MAX_LENGTH = 200;

/** Longest token we try to parse, in characters; longer ones are rejected unparsed. */
const MAX_TOKEN_LENGTH = 8192;

/** Default allowed clock skew for `exp` / `nbf`, in seconds. */
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 5;

/**
 * Default longest accepted token lifetime (JWT_MAX_TTL_SECONDS), in seconds: 24 hours. A token
 * is a bearer credential that cannot be revoked, so it must end: `exp` is required and may lie at
 * most this far after `iat` (when present) and after now.
 */
export const DEFAULT_JWT_MAX_TTL_SECONDS = 86_400;

/** Hosts a plain-http JWKS URL may name (the key set never crosses a network unencrypted). */
const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

/**
 * Why `url` is not an acceptable JWKS URL, or null when it is: it must parse as a URL and use
 * https, except on a loopback host (localhost, 127.0.0.1, ::1) where http is allowed (tests,
 * a sidecar). A key set fetched over plain http from elsewhere could be replaced in transit, and
 * whoever replaces it can sign any user's token. Used by src/config/env.ts (JWKS_URL) and
 * {@link createUserTokenVerifier}.
 */
export function jwksUrlProblem(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'must be a URL';
  }
  if (parsed.protocol === 'https:') return null;
  if (parsed.protocol === 'http:' && LOOPBACK_HOSTS.has(parsed.hostname)) return null;
  return 'must be an https URL (plain http only on a loopback host: localhost, 127.0.0.1, ::1)';
}

/** The only algorithm accepted with a shared secret. */
const HMAC_ALGORITHMS = ['HS256'];

/** Algorithms accepted with JWKS keys (never HMAC, never `none`). */
const JWKS_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];

/**
 * `typ` header values (lower case, without the optional `application/` prefix) of a token that
 * may be an end-user credential: `jwt` (RFC 7519 §5.1, what most identity providers put on ID and
 * access tokens) and `at+jwt` (RFC 9068 §2.1, OAuth 2.0 JWT access tokens). A token without
 * `typ` is accepted too (many providers send none). See {@link isAcceptedTokenType}.
 */
const ACCEPTED_TOKEN_TYPES = new Set(['jwt', 'at+jwt']);

/**
 * Whether a verified token's `typ` header allows it as an end-user credential: absent, or a
 * string naming `JWT` or `at+jwt`, compared case-insensitively and with an optional
 * `application/` prefix (RFC 7515 §4.1.9: media types are case-insensitive and the prefix may be
 * omitted). Any other value (a string of another kind, a number, null) is refused.
 * Why (RFC 8725 §3.11 "Use Explicit Typing", §2.8 "Cross-JWT Confusion"): the same key may sign
 * JWTs of other kinds whose claims look like ours (`sub`, `iss`, `aud`, `exp`): an OpenID Connect
 * back-channel logout token (`logout+jwt`, OIDC Back-Channel Logout §2.4), a Security Event Token
 * (`secevent+jwt`, RFC 8417 §2.3), a DPoP proof (`dpop+jwt`, RFC 9449 §4.2). Those kinds declare
 * their type precisely so that a token of one kind is not taken for another.
 */
function isAcceptedTokenType(typ: unknown): boolean {
  if (typ === undefined) return true;
  if (typeof typ !== 'string') return false;
  const lower = typ.toLowerCase();
  return ACCEPTED_TOKEN_TYPES.has(lower.startsWith('application/') ? lower.slice('application/'.length) : lower);
}

/** The generic message of every rejected token. */
const INVALID_TOKEN_MESSAGE = 'invalid or expired token';

/**
 * How end-user tokens are verified. At least one of `secret` / `jwksUrl` is required.
 * - `secret`: HS256 shared secret, at least {@link JWT_SECRET_MIN_LENGTH} characters (JWT_SECRET).
 * - `jwksUrl`: http(s) URL of a JSON Web Key Set (JWKS_URL), fetched and cached by jose's
 *   createRemoteJWKSet; tokens must be signed with an asymmetric algorithm.
 *   With both configured, an `HS256` header selects the secret and anything else the JWKS.
 * - `issuer` / `audience`: when set, the `iss` / `aud` claims must match (JWT_ISSUER, JWT_AUDIENCE).
 *   Both are required with `jwksUrl`: the identity provider signs every application's tokens
 *   with that key set, so without them a token it issued to another application (or, with a
 *   provider shared by many tenants such as Firebase, one minted in the attacker's own project
 *   for any `sub` and `org`) would be accepted here.
 * - `clockToleranceSeconds`: allowed skew for `exp` / `nbf` (default
 *   {@link DEFAULT_CLOCK_TOLERANCE_SECONDS}).
 * - `maxTtlSeconds`: longest accepted lifetime, `exp - iat` and `exp - now` (JWT_MAX_TTL_SECONDS,
 *   default {@link DEFAULT_JWT_MAX_TTL_SECONDS}).
 */
export interface UserTokenVerifierOptions {
  secret?: string | undefined;
  jwksUrl?: string | undefined;
  issuer?: string | undefined;
  audience?: string | undefined;
  clockToleranceSeconds?: number | undefined;
  maxTtlSeconds?: number | undefined;
}

/**
 * Verifies one end-user token and returns its principal.
 * @throws LedgerError UNAUTHENTICATED when the token is not acceptable;
 *   LedgerError UNAVAILABLE when the JWKS cannot be fetched.
 */
export type UserTokenVerifier = (token: string) => Promise<UserPrincipal>;

function unauthenticated(): LedgerError {
  return new LedgerError('UNAUTHENTICATED', INVALID_TOKEN_MESSAGE);
}

function checkSecret(secret: string): Uint8Array {
  if (typeof secret !== 'string' || secret.length < JWT_SECRET_MIN_LENGTH) {
    throw new Error(`JWT secret must be at least ${JWT_SECRET_MIN_LENGTH} characters`);
  }
  return new TextEncoder().encode(secret);
}

/** A string claim of 1..JWT_ID_CLAIM_MAX_LENGTH characters, or undefined when it is not one. */
function idClaim(value: unknown): string | undefined {
  return typeof value === 'string' && value.length >= 1 && value.length <= JWT_ID_CLAIM_MAX_LENGTH
    ? value
    : undefined;
}

/**
 * Maps a verified payload to the user principal, enforcing the `sub` / `org` rules and the
 * lifetime cap: `exp` must be at most `maxTtlSeconds` (+ the clock tolerance) after now and, when
 * the token has `iat`, after `iat`.
 */
function toPrincipal(payload: JWTPayload, maxTtlSeconds: number, clockToleranceSeconds: number): UserPrincipal {
  const exp = payload.exp;
  if (typeof exp !== 'number') throw unauthenticated();
  const nowSeconds = Math.floor(Date.now() / 1000);
  const longest = maxTtlSeconds + clockToleranceSeconds;
  if (exp - nowSeconds > longest) throw unauthenticated();
  if (typeof payload.iat === 'number' && exp - payload.iat > longest) throw unauthenticated();
  const userId = idClaim(payload.sub);
  if (userId === undefined) throw unauthenticated();
  const rawOrg: unknown = payload['org'];
  let orgId: string | null = null;
  if (rawOrg !== undefined && rawOrg !== null) {
    const org = idClaim(rawOrg);
    if (org === undefined) throw unauthenticated();
    orgId = org;
  }
  return { kind: 'user', userId, orgId, expiresAt: new Date(exp * 1000) };
}

/** True for JWKS failures that are about reaching/reading the key set, not about the token. */
function isJwksUnavailable(err: unknown): boolean {
  if (!(err instanceof joseErrors.JOSEError)) return true; // network error from fetch
  return (
    err instanceof joseErrors.JWKSTimeout ||
    err instanceof joseErrors.JWKSInvalid ||
    err.code === 'ERR_JOSE_GENERIC' // non-200 response or non-JSON body
  );
}

/**
 * Builds a token verifier (create it once: the JWKS is fetched lazily and cached inside).
 * Rules: `alg` must be HS256 for the secret or an asymmetric algorithm for the JWKS (so `none`
 * and algorithm-confusion tokens fail); signature, `exp` and `nbf` are checked by jose (with the
 * clock tolerance); the `typ` header must be absent, `JWT` or `at+jwt` (case-insensitive, optional
 * `application/` prefix; RFC 8725 §3.11, see isAcceptedTokenType), so a logout token, Security
 * Event Token or DPoP proof signed by the same key is refused; `exp` is required (a token without one would never end) and may lie at most
 * `maxTtlSeconds` after `iat` and after now; `iss` / `aud` when configured; `sub` must be a
 * string of 1..200 characters; `org`, when present and not null, must be a string of 1..200
 * characters. The returned principal's `expiresAt` is `exp`.
 * @throws Error (configuration bug, at creation) when neither `secret` nor `jwksUrl` is given,
 *   the secret is too short, the JWKS URL is not https (http only on a loopback host, see
 *   {@link jwksUrlProblem}) or comes without both `issuer` and `audience`, or `maxTtlSeconds` is
 *   not a positive integer.
 */
export function createUserTokenVerifier(options: UserTokenVerifierOptions): UserTokenVerifier {
  const secret = options.secret ? checkSecret(options.secret) : undefined;
  let jwks: ReturnType<typeof createRemoteJWKSet> | undefined;
  if (options.jwksUrl) {
    const problem = jwksUrlProblem(options.jwksUrl);
    if (problem) throw new Error(`JWKS URL ${problem}`);
    // A key set is the identity provider's, not ours: it signs the tokens of every application
    // (and, e.g. Firebase's, of every tenant) it serves. Only `iss` and `aud` tell ours apart.
    if (!options.issuer || !options.audience) throw new Error('JWKS URL needs an issuer and an audience (JWT_ISSUER, JWT_AUDIENCE)');
    jwks = createRemoteJWKSet(new URL(options.jwksUrl));
  }
  const maxTtlSeconds = options.maxTtlSeconds ?? DEFAULT_JWT_MAX_TTL_SECONDS;
  if (!Number.isSafeInteger(maxTtlSeconds) || maxTtlSeconds <= 0) throw new Error('maxTtlSeconds must be a positive integer');
  if (!secret && !jwks) throw new Error('end-user JWT verification needs a secret or a JWKS URL');
  const clockTolerance = options.clockToleranceSeconds ?? DEFAULT_CLOCK_TOLERANCE_SECONDS;
  const claimChecks = {
    clockTolerance,
    requiredClaims: ['sub', 'exp'],
    ...(options.issuer ? { issuer: options.issuer } : {}),
    ...(options.audience ? { audience: options.audience } : {}),
  };

  return async (token: string): Promise<UserPrincipal> => {
    if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
      throw unauthenticated();
    }
    let useSecret: boolean;
    try {
      useSecret = secret !== undefined && (jwks === undefined || decodeProtectedHeader(token).alg === 'HS256');
    } catch {
      throw unauthenticated();
    }
    let payload: JWTPayload;
    let protectedHeader: JWTHeaderParameters;
    try {
      if (useSecret && secret) {
        ({ payload, protectedHeader } = await jwtVerify(token, secret, { ...claimChecks, algorithms: HMAC_ALGORITHMS }));
      } else if (jwks) {
        ({ payload, protectedHeader } = await jwtVerify(token, jwks, { ...claimChecks, algorithms: JWKS_ALGORITHMS }));
      } else {
        throw unauthenticated();
      }
    } catch (err) {
      if (err instanceof LedgerError) throw err;
      if (!useSecret && isJwksUnavailable(err)) {
        throw new LedgerError('UNAVAILABLE', 'end-user token keys are temporarily unavailable');
      }
      throw unauthenticated();
    }
    // The header the signature covers: a token of another kind (logout token, SET, DPoP proof)
    // signed by the same key is refused like any other invalid token.
    if (!isAcceptedTokenType(protectedHeader.typ)) throw unauthenticated();
    return toPrincipal(payload, maxTtlSeconds, clockTolerance);
  };
}

/**
 * Signs an HS256 end-user token (for tests, the demo and the docs; production tokens usually
 * come from the platform's own identity provider).
 * - `sub`: the user's external id; `org`: optional organization external id.
 * - `expiresInSeconds`: lifetime from now in seconds (`exp = iat + expiresInSeconds`); a
 *   negative value yields an already-expired token (tests).
 * - `issuer` / `audience`: optional `iss` / `aud` claims.
 * Returns the compact JWS string.
 * @throws Error when the secret is shorter than {@link JWT_SECRET_MIN_LENGTH} characters or
 *   `expiresInSeconds` is not a finite number.
 */
export async function signUserToken(
  secret: string,
  claims: { sub: string; org?: string; expiresInSeconds: number; issuer?: string; audience?: string },
): Promise<string> {
  const key = checkSecret(secret);
  if (!Number.isFinite(claims.expiresInSeconds)) throw new Error('expiresInSeconds must be a finite number');
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT(claims.org === undefined ? {} : { org: claims.org })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.sub)
    .setIssuedAt(now)
    .setExpirationTime(now + Math.trunc(claims.expiresInSeconds));
  if (claims.issuer !== undefined) jwt.setIssuer(claims.issuer);
  if (claims.audience !== undefined) jwt.setAudience(claims.audience);
  return jwt.sign(key);
}
