/**
 * Announcing API key revocations on Redis, so every running server stops accepting a revoked
 * key at once instead of after its lookup cache expires (API_KEY_CACHE_TTL_MS, ./api-keys.ts).
 *
 * Whoever revokes (the `apikey:create --revoke` CLI, scripts/create-api-key.ts, through
 * revokeApiKey) publishes, after the UPDATE has committed, `{"keyId":"<uuid>"}` on the channel
 * {@link keyRevocationChannel}. Each server's LiveHub (src/live/hub.ts) is subscribed to it on its
 * one subscriber connection: it drops the key from the lookup cache and asks the key's open live
 * streams to re-check it now (src/graphql/subscriptions.ts), which end with UNAUTHENTICATED exactly
 * as at their periodic re-check.
 *
 * The message only says "look again": a server decides from the database, so a forged or replayed
 * message can cost a lookup, never refuse a valid key. The announcement is best effort: the
 * revocation in the database is what counts. When Redis cannot take it (down, silent past
 * {@link KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS}), the lookup cache's TTL and the streams' 1 s re-check
 * remain the fallback; a server whose subscriber connection was down (and so may have missed an
 * announcement) drops its whole lookup cache when it is back.
 */
import { Redis } from 'ioredis';

import { answerWithin, closeRedis } from '../db/redis-close.js';
import { isUuid } from '../db/uuid.js';

/** Longest an announcement may take (connecting to Redis and PUBLISH), in milliseconds. */
export const KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS = 3_000;

/**
 * The Redis channel of revocation announcements: `<prefix>api-key-revoked`, where `prefix` is
 * LIVE_CHANNEL_PREFIX (the same prefix as the account channels, src/outbox/topics.ts, so
 * deployments sharing one Redis with different prefixes do not hear each other).
 */
export function keyRevocationChannel(prefix: string): string {
  return `${prefix}api-key-revoked`;
}

/** The message announcing that key `keyId` (`api_keys.id`, a uuid) was revoked: JSON `{"keyId": ...}`. */
export function keyRevokedMessage(keyId: string): string {
  return JSON.stringify({ keyId });
}

/**
 * The key id of an announcement ({@link keyRevokedMessage}), or null when `raw` is not one
 * (not JSON, no `keyId`, or a `keyId` that is not a uuid).
 */
export function parseKeyRevokedMessage(raw: string): string | null {
  try {
    const keyId = (JSON.parse(raw) as { keyId?: unknown } | null)?.keyId;
    return typeof keyId === 'string' && isUuid(keyId) ? keyId.toLowerCase() : null;
  } catch {
    return null;
  }
}

/** Where and how {@link announceKeyRevocation} publishes. */
export interface KeyRevocationAnnouncer {
  /** REDIS_URL (src/config/env.ts). */
  redisUrl: string;
  /** LIVE_CHANNEL_PREFIX (src/config/env.ts): see {@link keyRevocationChannel}. */
  channelPrefix: string;
  /** Longest the announcement may take in milliseconds (default {@link KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS}). */
  timeoutMs?: number;
}

/**
 * Publishes that key `keyId` was revoked, on a connection of its own that it opens and closes
 * (no retries, no offline queue: a Redis that is down fails it at once, a silent one after
 * `timeoutMs`). Call it only after the revocation has committed.
 * @returns how many subscriber connections received it (Redis PUBLISH: one per running server
 *   instance; 0 when none is subscribed).
 * @throws Error when Redis refused, could not be reached, or did not answer within `timeoutMs`.
 */
export async function announceKeyRevocation(announcer: KeyRevocationAnnouncer, keyId: string): Promise<number> {
  const timeoutMs = announcer.timeoutMs ?? KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS;
  const client = new Redis(announcer.redisUrl, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: timeoutMs,
    connectionName: 'creditpool-key-revocation',
  });
  client.on('error', () => undefined); // reported through the rejected promise below
  try {
    return await answerWithin(
      (async () => {
        await client.connect();
        return client.publish(keyRevocationChannel(announcer.channelPrefix), keyRevokedMessage(keyId));
      })(),
      timeoutMs,
      'Redis',
    );
  } finally {
    await closeRedis(client);
  }
}
