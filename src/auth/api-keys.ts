/**
 * Service API keys: creation, lookup (with a small in-process cache) and revocation (announced
 * to every running server over Redis: ./key-revocation.ts).
 *
 * Token format: `cp_<prefix>_<secret>` where `<prefix>` is 8 base62 characters (shown in
 * listings and logs so operators can tell keys apart) and `<secret>` is 43 base62 characters
 * (~256 bits from crypto.randomBytes). The token is shown once, at creation; the database
 * (`api_keys`, prisma/schema.prisma) stores only its SHA-256 hex digest in the unique `hash`
 * column, so a database leak does not leak usable credentials. Lookup is by that digest: the
 * comparison happens on the hash (an index lookup), never on the secret itself, so response
 * time does not reveal how much of a guessed token was right.
 */
import { createHash, randomBytes } from 'node:crypto';
import type pg from 'pg';

import { LedgerError, badInput } from '../ledger/errors.js';
import { SCOPES, isScope, type Scope } from './principal.js';
import { isUuid } from '../db/uuid.js';
import { BoundedMap } from '../util/bounded-map.js';
import { withTransaction } from '../db/pg.js';
import { actorOf, recordAuditEvent, type AuditActor } from '../audit/audit-log.js';
import { announceKeyRevocation, type KeyRevocationAnnouncer } from './key-revocation.js';

/** Every creditpool API key starts with this; the authenticator routes on it. */
export const API_KEY_TOKEN_PREFIX = 'cp_';

/** Length of the public `<prefix>` part of a token (base62 characters). */
export const API_KEY_PREFIX_LENGTH = 8;

/** Length of the secret part of newly created tokens (base62 characters, ~5.95 bits each). */
export const API_KEY_SECRET_LENGTH = 43;

/**
 * How long a successful lookup is reused without asking the database, in milliseconds: how long
 * a server may accept a revoked key when the revocation's announcement on Redis did not reach it
 * (./key-revocation.ts).
 */
export const API_KEY_CACHE_TTL_MS = 10_000;

/** Most cached keys per pool; the oldest entry is evicted first. */
export const API_KEY_CACHE_MAX_ENTRIES = 1_000;

/** Longest accepted key name, in characters. */
export const API_KEY_NAME_MAX_LENGTH = 200;

/**
 * Shape every accepted token must have: our prefix, 8 base62 characters, `_`, then 32..256
 * base62/base64url characters. Tokens we create always have a 43-character base62 secret; the
 * wider secret alphabet is accepted so the format can evolve without breaking lookups.
 */
const TOKEN_RE = /^cp_([A-Za-z0-9]{8})_[A-Za-z0-9_-]{32,256}$/;

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** Who sees a key's responses: the platform itself (INTERNAL) or public visitors (PUBLIC). */
export type Audience = 'INTERNAL' | 'PUBLIC';

/** An active API key as stored (never includes the token or its hash). */
export interface ApiKeyRecord {
  /** `api_keys.id` (uuid). */
  id: string;
  /** Operator-chosen name, e.g. "billing-service". */
  name: string;
  /** The 8-character public prefix of the token. */
  prefix: string;
  /** Granted scopes, deduplicated, in {@link SCOPES} order. */
  scopes: readonly Scope[];
  /** PUBLIC: the key acts for public visitors; billing details are never shown to it. */
  audience: Audience;
  /** When the key was created. */
  createdAt: Date;
}

/** What {@link createApiKey} returns. `token` is the only time the secret is ever available. */
export interface CreatedApiKey {
  /** `api_keys.id` (uuid). */
  id: string;
  /** The full bearer token `cp_<prefix>_<secret>`; store it, it cannot be recovered. */
  token: string;
  /** The 8-character public prefix (also embedded in `token`). */
  prefix: string;
}

/**
 * SHA-256 hex digest (64 lowercase hex chars) of a token's UTF-8 bytes: the only form in which
 * a token is stored (`api_keys.hash`). A fast hash is sufficient because tokens carry ~256 bits
 * of randomness (no dictionary to brute-force, unlike passwords).
 */
export function hashApiKey(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** True when `token` has the shape of a creditpool API key (see the module comment). */
export function isApiKeyFormat(token: string): boolean {
  return TOKEN_RE.test(token);
}

/** `length` uniformly random base62 characters (rejection sampling: no modulo bias). */
function randomBase62(length: number): string {
  let out = '';
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      // 248 = 62 * 4: bytes >= 248 would favour the first 8 characters, so they are dropped.
      if (byte < 248) out += BASE62[byte % 62];
      if (out.length === length) break;
    }
  }
  return out;
}

/**
 * Validates and normalizes requested scopes: non-empty, each one of {@link SCOPES}, returned
 * deduplicated in SCOPES order.
 * @throws LedgerError BAD_USER_INPUT (field `scopes`) on an empty list or an unknown scope.
 */
export function parseScopes(scopes: readonly string[]): Scope[] {
  if (!Array.isArray(scopes) || scopes.length === 0) {
    throw badInput('scopes', `at least one scope is required (one of: ${SCOPES.join(', ')})`);
  }
  for (const s of scopes) {
    if (!isScope(s)) {
      throw badInput('scopes', `unknown scope ${JSON.stringify(String(s)).slice(0, 60)} (expected: ${SCOPES.join(', ')})`);
    }
  }
  return SCOPES.filter((s) => scopes.includes(s));
}

/**
 * Creates an API key and returns its token (once).
 * - `name`: 1..200 characters after trimming, no control characters.
 * - `scopes`: non-empty subset of {@link SCOPES} (duplicates ignored).
 * The row gets `id = gen_random_uuid()` (the table has no default) and stores only
 * {@link hashApiKey}(token).
 * - `actor`: who creates it, for the audit row (`api_key.created`, same transaction; never the
 *   token or its hash); absent: `system`. The CLI passes a `cli` actor.
 * @throws LedgerError BAD_USER_INPUT for a bad name or scopes; database errors as thrown by pg.
 */
export async function createApiKey(
  pool: pg.Pool,
  input: { name: string; scopes: readonly string[]; audience?: Audience; actor?: AuditActor },
): Promise<CreatedApiKey> {
  const name = typeof input.name === 'string' ? input.name.trim() : '';
  if (name.length === 0 || name.length > API_KEY_NAME_MAX_LENGTH) {
    throw badInput('name', `must be 1..${API_KEY_NAME_MAX_LENGTH} characters`);
  }
  if (/[\u0000-\u001f\u007f]/.test(name)) throw badInput('name', 'must not contain control characters');
  const scopes = parseScopes(input.scopes);
  const audience = input.audience ?? 'INTERNAL';
  if (audience !== 'INTERNAL' && audience !== 'PUBLIC') throw badInput('audience', 'must be INTERNAL or PUBLIC');

  const prefix = randomBase62(API_KEY_PREFIX_LENGTH);
  const token = `${API_KEY_TOKEN_PREFIX}${prefix}_${randomBase62(API_KEY_SECRET_LENGTH)}`;
  const id = await withTransaction(pool, async (tx) => {
    const { rows } = await tx.query<{ id: string }>(
      `INSERT INTO api_keys (id, name, prefix, hash, scopes, audience)
       VALUES (gen_random_uuid(), $1, $2, $3, $4::text[], $5)
       RETURNING id`,
      [name, prefix, hashApiKey(token), scopes, audience],
    );
    const created = rows[0]?.id;
    if (created === undefined) throw new Error('api_keys insert returned no row');
    await recordAuditEvent(tx, actorOf({ actor: input.actor }), { action: 'api_key.created', subjectType: 'api_key', subjectId: created, details: { name, prefix, scopes, audience } });
    return created;
  });
  return { id, token, prefix };
}

interface CacheEntry {
  key: ApiKeyRecord;
  /** Epoch milliseconds after which the entry must not be used. */
  expiresAt: number;
}

interface KeyCache {
  /** By token hash; at most API_KEY_CACHE_MAX_ENTRIES, the one cached longest ago forgotten first. */
  entries: BoundedMap<string, CacheEntry>;
  /** Bumped by every revocation; a lookup that started before a bump must not be cached. */
  generation: number;
}

/** One cache per pool, so two databases (e.g. tests) never share entries. */
const caches = new WeakMap<pg.Pool, KeyCache>();

function cacheFor(pool: pg.Pool): KeyCache {
  let cache = caches.get(pool);
  if (!cache) {
    cache = { entries: new BoundedMap(API_KEY_CACHE_MAX_ENTRIES), generation: 0 };
    caches.set(pool, cache);
  }
  return cache;
}

/**
 * Forgets cached lookups: all of them for `pool`'s cache, or, with `keyId` (`api_keys.id`,
 * lowercase as PostgreSQL prints it), only that key's. Either way a lookup already in flight is
 * not cached. {@link revokeApiKey} calls it, and the authenticator's `forgetApiKey` when a
 * revocation is announced (src/live/hub.ts); tests may too.
 */
export function clearApiKeyCache(pool: pg.Pool, keyId?: string): void {
  const cache = cacheFor(pool);
  cache.generation++;
  if (keyId === undefined) {
    cache.entries.clear();
    return;
  }
  for (const [hash, entry] of cache.entries) if (entry.key.id === keyId) cache.entries.delete(hash);
}

/**
 * Finds the active (not revoked) key whose token is `token`, or null.
 * - Tokens that do not have the API key shape return null without a query.
 * - Lookup is by {@link hashApiKey}(token) on the unique `hash` index.
 * - Hits are cached per pool for {@link API_KEY_CACHE_TTL_MS} (at most
 *   {@link API_KEY_CACHE_MAX_ENTRIES} entries, oldest evicted first) so the request hot path
 *   does not query the database each time. Misses are not cached (a flood of bad tokens must
 *   not evict good entries). {@link revokeApiKey} clears the entry in this process at once;
 *   a server clears it when the revocation is announced on Redis (./key-revocation.ts, through
 *   its LiveHub), and otherwise notices it within the TTL.
 * - `options.now`: the current time in epoch milliseconds (default Date.now(); tests).
 * @throws database errors as thrown by pg.
 */
export async function findApiKey(
  pool: pg.Pool,
  token: string,
  options: { now?: number } = {},
): Promise<ApiKeyRecord | null> {
  if (typeof token !== 'string' || !TOKEN_RE.test(token)) return null;
  const now = options.now ?? Date.now();
  const hash = hashApiKey(token);
  const cache = cacheFor(pool);

  const hit = cache.entries.get(hash);
  if (hit) {
    if (hit.expiresAt > now) return hit.key;
    cache.entries.delete(hash);
  }

  const generation = cache.generation;
  const { rows } = await pool.query<{
    id: string;
    name: string;
    prefix: string;
    scopes: string[] | null;
    audience: string;
    created_at: Date;
  }>(
    `SELECT id, name, prefix, scopes, audience, created_at
       FROM api_keys
      WHERE hash = $1 AND revoked_at IS NULL`,
    [hash],
  );
  const row = rows[0];
  if (!row) return null;
  const key: ApiKeyRecord = {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    // The CHECK constraint already limits scopes to SCOPES; filtering keeps the type honest.
    scopes: SCOPES.filter((s) => (row.scopes ?? []).includes(s)),
    audience: row.audience === 'PUBLIC' ? 'PUBLIC' : 'INTERNAL',
    createdAt: row.created_at,
  };

  if (cache.generation === generation) cache.entries.set(hash, { key, expiresAt: now + API_KEY_CACHE_TTL_MS });
  return key;
}

/** How {@link revokeApiKey} tells every running server, and what it reports. */
export interface RevocationAnnouncement extends KeyRevocationAnnouncer {
  /**
   * Told the announcement's outcome: how many server instances heard it (Redis PUBLISH's count of
   * subscriber connections), or why it failed (the revocation stands either way).
   */
  onOutcome(outcome: { announcedTo: number } | { failed: string }): void;
}

/**
 * Revokes key `id` (sets `revoked_at = now()`) and drops it from this process's lookup cache,
 * so it stops authenticating here immediately.
 * With `options.announce`, it then, once the UPDATE has committed (also when the key was revoked
 * already, so running it again re-announces), publishes the revocation on Redis
 * (./key-revocation.ts announceKeyRevocation): every running server drops the key from its
 * cache and ends its open live streams at once. Without it, or when the announcement fails
 * (Redis down or silent: reported to `onOutcome`, never thrown), other processes notice within
 * {@link API_KEY_CACHE_TTL_MS}. Either way that covers connections opened before: a WebSocket
 * re-authenticates every new operation, and open subscription streams re-check their key
 * before each update and every CREDENTIAL_RECHECK_INTERVAL_MS (src/graphql/subscriptions.ts),
 * ending with UNAUTHENTICATED.
 * Idempotent: returns true when this call revoked it, false when it was already revoked.
 * `options.actor`: who revokes it, for the audit row (`api_key.revoked`, written in the
 * revocation's transaction, only when this call revoked it); absent: `system`.
 * @throws LedgerError BAD_USER_INPUT (field `id`) when `id` is not a uuid;
 *   LedgerError NOT_FOUND when no key has that id (nothing is announced); database errors as
 *   thrown by pg (nothing is announced).
 */
export async function revokeApiKey(pool: pg.Pool, id: string, options: { announce?: RevocationAnnouncement; actor?: AuditActor } = {}): Promise<boolean> {
  if (typeof id !== 'string' || !isUuid(id)) throw badInput('id', 'must be a uuid');
  // The form PostgreSQL prints, which cached entries and live streams hold.
  const keyId = id.toLowerCase();
  let newly: boolean;
  try {
    newly = await withTransaction(pool, async (tx) => {
      const revoked = await tx.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING name, prefix', [keyId]);
      if (revoked.rowCount !== 1) return false;
      await recordAuditEvent(tx, actorOf({ actor: options.actor }), {
        action: 'api_key.revoked',
        subjectType: 'api_key',
        subjectId: keyId,
        details: { name: revoked.rows[0].name as string, prefix: revoked.rows[0].prefix as string },
      });
      return true;
    });
    if (!newly) {
      const existing = await pool.query('SELECT 1 FROM api_keys WHERE id = $1', [keyId]);
      if (existing.rowCount === 0) throw new LedgerError('NOT_FOUND', 'API key not found', { id });
    }
  } finally {
    clearApiKeyCache(pool, keyId);
  }
  const { announce } = options;
  if (announce) {
    try {
      announce.onOutcome({ announcedTo: await announceKeyRevocation(announce, keyId) });
    } catch (err) {
      announce.onOutcome({ failed: (err as Error).message || String(err) });
    }
  }
  return newly;
}
