/**
 * A subscription whose start is still reading when the instance's Redis subscriber connection
 * drops and comes back (in-process buildServer, real PostgreSQL, the shared Redis behind a TCP
 * relay the test cuts; channels under a prefix of this test's own). A change published while the
 * connection was down is lost to this instance, so after the reconnect every subscription must
 * catch up, including one that had not sent its first value yet: its start may have read the
 * balance before that change.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { parseEnv } from '../../src/config/env.js';
import { ledgerSessionLimits } from '../../src/db/pg.js';
import { createPrismaClient, type PrismaClient } from '../../src/db/prisma.js';
import { createAuthenticator } from '../../src/auth/authenticator.js';
import { buildServer, type CreditpoolServer } from '../../src/server.js';
import { drainOutboxOnce } from '../../src/outbox/relay.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { startSilenceableRelay, type SilenceableRelay } from '../setup/connections.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { createFundedAccount } from '../factories/accounts.js';
import { gid } from '../api/helpers.js';
import { BALANCE_SUB, liveResyncs, waitForResyncs, wsSubscribe, type LiveSub } from './helpers.js';

const ADMIN_KEY = 'test-admin-key-resync-0123456789';
const PREFIX = `test-resync-${process.pid}-${Date.now()}:`;

/**
 * The server's pool, except that the balance read of the account `held` is set to is answered
 * only when `release()` is called: the read has run (its snapshot is taken), its answer waits.
 */
interface HeldReads {
  pool: pg.Pool;
  hold(accountId: string): { reached: Promise<void>; release(): void };
}

function holdingPool(pool: pg.Pool): HeldReads {
  let held: { accountId: string; reached: () => void; released: Promise<void> } | null = null;
  const wrapped = new Proxy(pool, {
    get(target, prop, receiver) {
      if (prop !== 'query') return Reflect.get(target, prop, receiver);
      return async (...args: unknown[]) => {
        const result = await (target.query as (...a: unknown[]) => Promise<unknown>)(...args);
        const h = held;
        if (h && typeof args[0] === 'string' && args[0].includes('balance_figures(') && (args[1] as unknown[])?.[0] === h.accountId) {
          held = null;
          h.reached();
          await h.released;
        }
        return result;
      };
    },
  });
  return {
    pool: wrapped,
    hold(accountId) {
      let reached!: () => void;
      let release!: () => void;
      const reachedP = new Promise<void>((r) => (reached = r));
      const released = new Promise<void>((r) => (release = r));
      held = { accountId, reached, released };
      return { reached: reachedP, release };
    },
  };
}

let direct: TestServices;
let serverServices: TestServices;
let reads: HeldReads;
let relay: SilenceableRelay;
let prisma: PrismaClient;
let redis: Redis;
let publisher: Redis;
let server: CreditpoolServer;
let url: string;
const subs: LiveSub[] = [];

beforeAll(async () => {
  relay = await startSilenceableRelay(TEST_REDIS_URL);
  const env = parseEnv({
    NODE_ENV: 'test',
    DATABASE_URL: TEST_DATABASE_URL,
    REDIS_URL: relay.url,
    ADMIN_API_KEY: ADMIN_KEY,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    LIVE_CHANNEL_PREFIX: PREFIX,
    OUTBOX_RELAY: 'false', // the test publishes (drainOutboxOnce) when it wants to
  });
  direct = createTestServices(3);
  serverServices = createTestServices(5, env.DATABASE_URL, ledgerSessionLimits(env));
  reads = holdingPool(serverServices.pool);
  prisma = createPrismaClient(env.DATABASE_URL, 2, ledgerSessionLimits(env));
  redis = new Redis(TEST_REDIS_URL);
  publisher = new Redis(TEST_REDIS_URL);
  const services = { ...serverServices, pool: reads.pool };
  server = buildServer({ env, log: pino({ level: 'silent' }), pool: reads.pool, prisma, redis, services, authenticator: createAuthenticator({ pool: reads.pool, adminApiKey: ADMIN_KEY }) });
  url = `http://127.0.0.1:${await server.listen(0, '127.0.0.1')}/graphql`;
  await server.live.ready();
});

afterAll(async () => {
  await Promise.allSettled(subs.map((s) => s.dispose()));
  await server?.close();
  await Promise.allSettled([direct?.close(), serverServices?.close(), prisma?.$disconnect(), redis?.quit(), publisher?.quit(), relay?.close()]);
});

describe('a Redis reconnect while a subscription is starting', () => {
  it('balanceChanged catches up after its first value: a change published while the connection was down, after the start read the balance, still reaches the client', async () => {
    const accountId = await createFundedAccount(direct, { paid: 10 });
    await drainOutboxOnce(direct.pool, publisher, PREFIX, 10_000); // nothing of the account left to publish
    const held = reads.hold(accountId);
    const sub = wsSubscribe(url, `Bearer ${ADMIN_KEY}`, BALANCE_SUB, { id: gid('Account', accountId) });
    subs.push(sub);
    await held.reached; // subscribed, and the start read the balance (10); its answer waits

    relay.cut(); // the instance's Redis connections drop and cannot come back yet
    await recordUsage(direct, { accountId, category: 'unit', idempotencyKey: `resync-${accountId}` });
    // Published while this instance is not subscribed: lost to it.
    expect(await drainOutboxOnce(direct.pool, publisher, PREFIX, 10_000)).toBeGreaterThan(0);
    const resyncs = await liveResyncs(url);
    relay.restore();
    await waitForResyncs(url, resyncs + 1); // re-subscribed, every subscription asked to catch up
    held.release();

    await sub.waitFor((s) => s.events.length >= 1, 'the first value');
    expect(sub.events[0].balanceChanged.available).toBe('10');
    // Before the fix the resync was ignored (the stream had not sent its first value yet) and
    // the stream stayed at 10 until the account changed again.
    await sub.waitFor((s) => s.events.at(-1)?.balanceChanged.available === '9', 'the change made while Redis was unreachable', 5_000);
    const versions = sub.events.map((e) => BigInt(e.balanceChanged.version));
    expect(versions[1]! - versions[0]!).toBe(1n);
  });
});
