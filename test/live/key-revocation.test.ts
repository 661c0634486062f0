/**
 * API key revocation announcements (src/auth/key-revocation.ts) through a real Redis: a LiveHub
 * hears them on its subscriber connection and calls its owner (who drops the key from the lookup
 * cache) and then the key's watchers (its live streams); a message naming no key is dropped; and
 * revokeApiKey's announcement failing (Redis down) does not undo or fail the revocation.
 * The end-to-end case (the CLI, two server processes, HTTP and live streams) is in
 * multi-instance.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { Redis } from 'ioredis';
import { LiveHub } from '../../src/live/hub.js';
import { announceKeyRevocation, keyRevocationChannel } from '../../src/auth/key-revocation.js';
import { createApiKey, revokeApiKey } from '../../src/auth/api-keys.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { startPrivateRedis } from '../setup/private-redis.js';

const prefix = `test:revocation:${randomUUID()}:`;
let hub: LiveHub;
let services: TestServices;
const heard: Array<string | null> = [];
let waiters: Array<() => void> = [];
/** Resolves once the hub has called onKeyRevoked `n` times in all (checked on every call; no sleeping). */
const heardCount = (n: number) => new Promise<void>((resolve) => {
  const check = () => (heard.length >= n ? (resolve(), true) : false);
  if (!check()) waiters.push(() => void check());
});

beforeAll(async () => {
  services = createTestServices(2);
  hub = new LiveHub(TEST_REDIS_URL, prefix, pino({ level: 'silent' }), {
    onKeyRevoked: (keyId) => {
      heard.push(keyId);
      const pending = waiters;
      waiters = [];
      for (const w of pending) w();
    },
  });
  await hub.ready();
  // The hub subscribes to the channel as it connects: wait until Redis counts its subscriber.
  const admin = new Redis(TEST_REDIS_URL);
  try {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const [, subscribers] = (await admin.pubsub('NUMSUB', keyRevocationChannel(prefix))) as [string, number];
      if (Number(subscribers) >= 1) break;
      if (Date.now() > deadline) throw new Error('the hub never subscribed to the revocation channel');
    }
  } finally {
    admin.disconnect();
  }
});

afterAll(async () => {
  await hub?.close();
  await services?.close();
});

describe('revocation announcements on Redis', () => {
  it('reach the hub: its owner hears the key first, then the key\'s watchers; other keys\' watchers are not called', async () => {
    const keyId = randomUUID();
    const order: string[] = [];
    const stopWatching = hub.watchKey(keyId, () => order.push(`watcher saw onKeyRevoked ${heard.at(-1)}`));
    const other = hub.watchKey(randomUUID(), () => order.push('other key'));
    const before = hub.stats().revocationsReceived;
    const heardBefore = heard.length;
    expect(await announceKeyRevocation({ redisUrl: TEST_REDIS_URL, channelPrefix: prefix }, keyId.toUpperCase())).toBe(1);
    await heardCount(heardBefore + 1);
    expect(heard.at(-1)).toBe(keyId); // uuids compared as PostgreSQL prints them
    expect(order).toEqual([`watcher saw onKeyRevoked ${keyId}`]);
    expect(hub.stats().revocationsReceived).toBe(before + 1);
    stopWatching();
    other();
  });

  it('a message naming no key id is dropped (not counted, nobody called)', async () => {
    const before = { heard: heard.length, received: hub.stats().revocationsReceived };
    const pub = new Redis(TEST_REDIS_URL);
    try {
      // One connection: Redis delivers its messages on a channel in order, so once the good one
      // is heard the bad ones have been handled.
      for (const bad of ['not json', '{"keyId":"1; DROP"}', '{}', 'null']) await pub.publish(keyRevocationChannel(prefix), bad);
      const good = randomUUID();
      await pub.publish(keyRevocationChannel(prefix), JSON.stringify({ keyId: good }));
      await heardCount(before.heard + 1);
      expect(heard.slice(before.heard)).toEqual([good]);
      expect(hub.stats().revocationsReceived).toBe(before.received + 1);
    } finally {
      pub.disconnect();
    }
  });

  it('Redis down when announcing: revokeApiKey still revokes and reports the failure, within the announcement timeout', async () => {
    const down = await startPrivateRedis();
    await down.kill();
    const created = await createApiKey(services.pool, { name: `announce-down-${randomUUID()}`, scopes: ['read'] });
    const outcomes: unknown[] = [];
    const started = Date.now();
    const newly = await revokeApiKey(services.pool, created.id, {
      announce: { redisUrl: down.url, channelPrefix: prefix, timeoutMs: 2_000, onOutcome: (o) => outcomes.push(o) },
    });
    expect(Date.now() - started).toBeLessThan(2_000 + 1_000);
    expect(newly).toBe(true);
    expect(outcomes).toEqual([{ failed: expect.any(String) }]);
    const { rows } = await services.pool.query<{ revoked_at: Date | null }>('SELECT revoked_at FROM api_keys WHERE id = $1', [created.id]);
    expect(rows[0]?.revoked_at).toBeInstanceOf(Date);
    await down.stop();
  });

  it('nothing is announced for a key that does not exist (NOT_FOUND)', async () => {
    const outcomes: unknown[] = [];
    await expect(
      revokeApiKey(services.pool, randomUUID(), { announce: { redisUrl: TEST_REDIS_URL, channelPrefix: prefix, onOutcome: (o) => outcomes.push(o) } }),
    ).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(outcomes).toEqual([]);
  });
});
