/**
 * The transactional outbox (real PostgreSQL and Redis): every committed change of a balance
 * leaves exactly one `balance` row whose snapshot equals what readBalance reports at that
 * version; refusals and replays leave none; the relay publishes in order and keeps the rows when
 * Redis refuses.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { startPrivateRedis } from '../setup/private-redis.js';
import { startSilenceableRelay, unreachableDatabaseUrl } from '../setup/connections.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { readBalanceSnapshot } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';
import { balanceFromSnapshot, type BalanceSnapshot } from '../../src/services/balance-figures.js';
import { drainOutboxOnce, startOutboxRelay, OUTBOX_POSTGRES_FAILED_WARNING, OUTBOX_REDIS_FAILED_WARNING } from '../../src/outbox/relay.js';
import { accountChannel } from '../../src/outbox/topics.js';
import { createPgPool, withTransaction } from '../../src/db/pg.js';
import { QueryTimings } from '../../src/db/query-timings.js';
import { AccountTx } from '../../src/services/account-tx.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';

let s: TestServices;

beforeAll(() => {
  s = createTestServices(5);
});

afterAll(async () => {
  await s.close();
});

async function rows(accountId: string) {
  const { rows } = await s.pool.query(`SELECT id::text, topic, payload FROM outbox_events WHERE account_id = $1 ORDER BY outbox_events.id`, [accountId]);
  return rows as Array<{ id: string; topic: string; payload: any }>;
}

/** A pino logger (level info) that keeps each line it writes, parsed. */
function capturingLog() {
  const lines: Array<Record<string, any>> = [];
  return { lines, log: pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) }) };
}

/** A snapshot as the Balance it says (asOf is the instant each was computed for, so it is left out). */
const view = (snap: BalanceSnapshot) => ({ ...balanceFromSnapshot(snap), asOf: null });

/**
 * A publisher and a BullMQ job sink (a queue prefix of its own, obliterated afterwards) for the
 * tests of one describe block; read them inside tests (they exist from its beforeAll on).
 */
function relayConnections() {
  const c = {} as { pub: Redis; connection: Redis; sink: ReturnType<typeof createQueueJobSink> };
  beforeAll(() => {
    c.pub = new Redis(TEST_REDIS_URL);
    c.connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    c.sink = createQueueJobSink(c.connection, `cp-test-${randomUUID()}`);
  });
  afterAll(async () => {
    await c.sink.queue.obliterate({ force: true }).catch(() => undefined);
    await c.sink.close();
    c.connection.disconnect();
    c.pub.disconnect();
  });
  return c;
}

describe('outbox rows', () => {
  it('one balance snapshot per committed change, equal to readBalance at that version', async () => {
    const accountId = await createFundedAccount(s, { free: 5, paid: 20 });
    const check = async () => {
      const list = (await rows(accountId)).filter((r) => r.topic === 'balance');
      expect(view(list.at(-1)!.payload)).toEqual(view(await readBalanceSnapshot(s.pool, accountId, new Date())));
      return list.length;
    };
    const start = await check();
    const steps: Array<() => Promise<unknown>> = [
      () => recordUsage(s, { accountId, idempotencyKey: 'o1', category: 'units', quantities: { units: '7' } }),
      () => reserveCredits(s, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'h1' }),
      async () => {
        const { rows: r } = await s.pool.query(`SELECT id FROM reservations WHERE account_id = $1`, [accountId]);
        return settleReservation(s, r[0].id, [{ accountId, idempotencyKey: 'o2', category: 'unit', reservationId: r[0].id } as never]);
      },
      async () => {
        const { rows: r } = await s.pool.query(`SELECT id FROM usage_events WHERE account_id = $1 AND idempotency_key = 'o1'`, [accountId]);
        return refundUsage(s, r[0].id, 'test');
      },
      () => grantCredits(s, { accountId, amountMicroCredits: credits(3), type: 'PAID', source: 'ADJUSTMENT', expiresAt: null, reference: null, idempotencyKey: 'g3' }),
      async () => {
        const { rows: r } = await s.pool.query(`SELECT id FROM credit_grants WHERE account_id = $1 AND idempotency_key = 'g3'`, [accountId]);
        return voidGrant(s, r[0].id, 'test');
      },
    ];
    let expected = start;
    for (const step of steps) {
      await step();
      expected++;
      expect(await check()).toBe(expected);
    }
    const balances = (await rows(accountId)).filter((r) => r.topic === 'balance').map((r) => BigInt(r.payload.version));
    for (let i = 1; i < balances.length; i++) expect(balances[i]! - balances[i - 1]!).toBe(1n);
    // Usage events have no row of their own: each of the two charges wrote its balance row
    // (counted above), which is what wakes usageRecorded.
    expect((await rows(accountId)).map((r) => r.topic)).not.toContain('usage');
  });

  it('a balance read is ONE snapshot: a grant that commits while it reads (repaying debt) is in all of its figures or in none, never labelled with the version before it', async () => {
    const accountId = await createFundedAccount(s, { paid: 5 });
    const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'd-hold' });
    await recordUsage(s, { accountId, idempotencyKey: 'd-over', category: 'units', quantities: { units: '8' }, reservationId }); // 3 credits of debt
    const grant = () => grantCredits(s, { accountId, amountMicroCredits: credits(100), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'd-grant' });
    // The pool, except that the grant commits right after the read's first statement answers:
    // what a busy account does to a read (a subscription's start or resync, Account.balance).
    let first = true;
    const racing = new Proxy(s.pool, {
      get(target, prop, receiver) {
        if (prop !== 'query') return Reflect.get(target, prop, receiver);
        return async (...args: unknown[]) => {
          const result = await (target.query as (...a: unknown[]) => Promise<unknown>)(...args);
          if (first) {
            first = false;
            await grant();
          }
          return result;
        };
      },
    }) as typeof s.pool;
    const read = await readBalanceSnapshot(racing, accountId, new Date());
    expect(first).toBe(false);
    const recorded = (await rows(accountId)).filter((r) => r.topic === 'balance' && r.payload.version === read.version);
    expect(recorded).toHaveLength(1);
    // Before the fix: version before the grant (total -3), batches after it (97): total 94, a
    // balance the account never had.
    expect(view(read)).toEqual(view(recorded[0]!.payload));
  });

  it('a refused charge and a replayed one write no outbox row', async () => {
    const accountId = await createFundedAccount(s, { paid: 1 });
    await recordUsage(s, { accountId, idempotencyKey: 'r1', category: 'unit' });
    const before = await rows(accountId);
    await expect(recordUsage(s, { accountId, idempotencyKey: 'r2', category: 'unit' })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    await recordUsage(s, { accountId, idempotencyKey: 'r1', category: 'unit' });
    expect(await rows(accountId)).toEqual(before);
  });

  it('one statement changing several accounts writes, per account and in order, its snapshot, the alerts it crossed and its top-up', async () => {
    // Settings' thresholds are 25, 15 and 0 %; each account's period credit is what it was granted.
    const [a, b, c] = [await createFundedAccount(s, { paid: 100 }), await createFundedAccount(s, { paid: 100 }), await createFundedAccount(s, { paid: 100 })];
    const { rows: pack } = await s.pool.query(
      `INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), $1, $2, 5) RETURNING id`,
      [`outbox-${randomUUID()}`, credits(50).toString()],
    );
    await s.pool.query(
      `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period) VALUES ($1, true, $2, $3, 2)`,
      [b, credits(50).toString(), pack[0].id],
    );
    const before = new Map(await Promise.all([a, b, c].map(async (id) => [id, (await rows(id)).length] as const)));
    const use = (accountId: string, units: number) => ({ accountId, idempotencyKey: `multi-${randomUUID()}`, category: 'units', quantities: { units: String(units) } });
    // One chunk, so ONE transaction and one finish statement for the three accounts:
    // a falls to 10 % (crosses 25 and 15), b to 40 credits (below its top-up threshold, no alert),
    // c to 95 % (nothing).
    const results = await recordUsageBatch(s, [use(a, 90), use(b, 60), use(c, 5)], { maxItems: 10 });
    expect(results.map((r) => r.ok)).toEqual([true, true, true]);
    const added = async (id: string) => (await rows(id)).slice(before.get(id));

    const alerts = (await s.pool.query(`SELECT id::text, threshold FROM credit_alerts WHERE account_id = $1 ORDER BY seq`, [a])).rows;
    expect(alerts.map((x) => x.threshold)).toEqual([25, 15]);
    expect((await added(a)).map((r) => [r.topic, r.payload.alertId ?? r.payload.jobId ?? 'snapshot'])).toEqual([
      ['balance', 'snapshot'],
      ['alert', alerts[0].id],
      ['job', `webhook-credit_alert-${alerts[0].id}`],
      ['alert', alerts[1].id],
      ['job', `webhook-credit_alert-${alerts[1].id}`],
    ]);
    const topUp = (await s.pool.query(`SELECT id::text, status FROM auto_top_ups WHERE account_id = $1`, [b])).rows;
    expect(topUp).toEqual([{ id: expect.any(String), status: 'PENDING' }]);
    expect((await added(b)).map((r) => [r.topic, r.payload.jobId ?? 'snapshot'])).toEqual([
      ['balance', 'snapshot'],
      ['job', `auto-top-up-${topUp[0].id}`],
    ]);
    expect((await s.pool.query(`SELECT count(*)::int AS n FROM credit_alerts WHERE account_id = ANY($1)`, [[b, c]])).rows[0].n).toBe(0);
    expect((await added(c)).map((r) => r.topic)).toEqual(['balance']);
    for (const id of [a, b, c]) {
      expect(view((await added(id))[0]!.payload)).toEqual(view(await readBalanceSnapshot(s.pool, id, new Date())));
    }
  });

  it('balance_changed, the one-account form an earlier server version calls, writes what balances_changed writes', async () => {
    const accountId = await createFundedAccount(s, { paid: 100 });
    await recordUsage(s, { accountId, idempotencyKey: `one-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
    const all = await rows(accountId);
    const written = all.filter((r) => r.topic === 'balance').at(-1)!;
    expect(all.slice(-3).map((r) => r.topic)).toEqual(['balance', 'alert', 'job']); // 20 % left: the 25 % alert
    const client = await s.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`DELETE FROM credit_alerts WHERE account_id = $1`, [accountId]);
      const { rows: v } = await client.query(`SELECT version::text, updated_at, debt_micro_credits::text AS debt FROM balances WHERE account_id = $1`, [accountId]);
      await client.query(`SELECT balance_changed($1, $2, $3, $4, $5)`, [accountId, written.payload.asOf, v[0].version, v[0].updated_at, v[0].debt]);
      const { rows: again } = await client.query(`SELECT topic, payload FROM outbox_events WHERE account_id = $1 AND id > $2 ORDER BY id`, [accountId, all.at(-1)!.id]);
      expect(again.map((r) => r.topic)).toEqual(['balance', 'alert', 'job']);
      expect(again[0].payload).toEqual(written.payload);
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  });
});

describe('relay', () => {
  it("its warning after a failed drain says which side failed: PostgreSQL (the outbox could not be read) or Redis (nothing could be published)", async () => {
    const accountId = await createFundedAccount(s, { paid: 1 }); // a balance row in the outbox, so a drain reaches Redis
    expect((await rows(accountId)).length).toBeGreaterThan(0);
    const pgDown = createPgPool(await unreachableDatabaseUrl(), 1);
    const redisUp = new Redis(TEST_REDIS_URL);
    const gone = await startPrivateRedis();
    const redisDown = new Redis(gone.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    await new Promise<void>((resolve) => redisDown.once('ready', () => resolve()));
    await gone.kill();
    const cases = [
      { side: 'postgres', pool: pgDown, redis: redisUp },
      { side: 'redis', pool: s.pool, redis: redisDown },
    ] as const;
    try {
      for (const c of cases) {
        const { log, lines } = capturingLog();
        const relay = startOutboxRelay({ pool: c.pool, redis: c.redis, log, channelPrefix: `test-relay-side-${process.pid}:`, pollIntervalMs: 60_000 });
        try {
          await vi.waitFor(() => expect(lines.filter((l) => l.level === 40).length).toBeGreaterThan(0), { timeout: 10_000, interval: 20 });
        } finally {
          await relay.close();
        }
        const warning = lines.find((l) => l.level === 40)!;
        // Before the fix both said "outbox relay: publish failed, will retry".
        expect(warning).toMatchObject({ side: c.side, msg: c.side === 'postgres' ? OUTBOX_POSTGRES_FAILED_WARNING : OUTBOX_REDIS_FAILED_WARNING });
      }
      // Neither drain took the rows.
      expect((await rows(accountId)).length).toBeGreaterThan(0);
    } finally {
      await pgDown.end();
      redisUp.disconnect();
      redisDown.disconnect();
    }
  });

  it('publishes rows in id order on the account channel and deletes them; keeps them when Redis refuses', async () => {
    const accountId = await createFundedAccount(s, { paid: 10 });
    for (let i = 0; i < 3; i++) await recordUsage(s, { accountId, idempotencyKey: `p${i}`, category: 'unit' });
    const prefix = `test-relay-${process.pid}:`;
    const sub = new Redis(TEST_REDIS_URL);
    const got: any[] = [];
    const three = new Promise<void>((resolve) =>
      sub.on('message', (_c: string, m: string) => {
        const msg = JSON.parse(m);
        if (msg.topic === 'balance') got.push(msg.payload.version);
        if (got.length === 3 + 1) resolve(); // funding grant + three charges
      }),
    );
    await sub.subscribe(accountChannel(prefix, accountId));

    // A Redis that is gone: the drain fails and every row stays.
    const gone = await startPrivateRedis();
    const dead = new Redis(gone.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
    await new Promise<void>((resolve) => dead.once('ready', () => resolve()));
    await gone.kill();
    await new Promise<void>((resolve) => (dead.status === 'end' ? resolve() : dead.once('end', () => resolve())));
    const before = (await rows(accountId)).length;
    await expect(drainOutboxOnce(s.pool, dead, prefix, 10_000)).rejects.toThrow();
    expect((await rows(accountId)).length).toBe(before);

    const pub = new Redis(TEST_REDIS_URL);
    let published = 0;
    for (let n = await drainOutboxOnce(s.pool, pub, prefix, 100); n > 0; n = await drainOutboxOnce(s.pool, pub, prefix, 100)) published += n;
    expect(published).toBeGreaterThanOrEqual(before);
    await three;
    const versions = got.map((v) => BigInt(v));
    for (let i = 1; i < versions.length; i++) expect(versions[i]! - versions[i - 1]!).toBe(1n);
    expect(await rows(accountId)).toEqual([]);
    sub.disconnect();
    pub.disconnect();
    dead.disconnect();
  });

  it('a Redis that goes silent (no answer, no reset) fails the drain after redisTimeoutMs instead of holding its transaction and the relay lock; the rows stay for the next drain', async () => {
    const accountId = await createFundedAccount(s, { paid: 3 });
    await recordUsage(s, { accountId, idempotencyKey: 'silent-1', category: 'unit' });
    const prefix = `test-relay-silent-${process.pid}:`;
    const silent = await startSilenceableRelay(TEST_REDIS_URL);
    const quiet = new Redis(silent.url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    quiet.on('error', () => undefined);
    const healthy = new Redis(TEST_REDIS_URL);
    try {
      await new Promise<void>((resolve) => (quiet.status === 'ready' ? resolve() : quiet.once('ready', () => resolve())));
      silent.silence();
      const before = await rows(accountId);
      expect(before.length).toBeGreaterThan(0);
      // Before the fix this waited for Redis forever, holding the transaction (and the lock every
      // relay of the deployment takes), so shutdown waited too.
      await expect(drainOutboxOnce(s.pool, quiet, prefix, 10_000, undefined, 300)).rejects.toThrow('outbox relay: Redis did not answer within 300 ms');
      expect(await rows(accountId)).toEqual(before);
      // The lock is free again: another relay publishes the rows.
      let published = 0;
      for (let n = await drainOutboxOnce(s.pool, healthy, prefix, 100); n > 0; n = await drainOutboxOnce(s.pool, healthy, prefix, 100)) published += n;
      expect(published).toBeGreaterThanOrEqual(before.length);
      expect(await rows(accountId)).toEqual([]);
    } finally {
      quiet.disconnect();
      healthy.disconnect();
      await silent.close();
    }
  });

  describe('a job row of a name this version does not know (a newer version wrote it during a rolling upgrade)', () => {
    const prefix = `test-relay-unknown-${process.pid}:`;
    const c = relayConnections();

    /** Writes a job row the way a service does: queued on the locked account, written by finish() with the balance it moved. */
    async function writeJob(accountId: string, job: Record<string, unknown>) {
      await withTransaction(s.pool, async (tx) => {
        const atx = await AccountTx.lock(tx, accountId, new Date());
        atx.touch();
        atx.publish('job', job);
        return atx.finish();
      });
      return (await rows(accountId)).filter((r) => r.topic === 'job' && r.payload.jobId === job.jobId);
    }

    it('does not hold back the rows behind it: they are published and enqueued in order, it is parked in outbox_unknown_jobs (not lost, not enqueued), with one warning naming it', async () => {
      // The outbox is one table for the whole database, and test files that run no relay leave
      // their rows in it (a property test leaves thousands): drain those first, so that the small
      // batches below reach this test's rows (its loop of at most 1,000 drains of 3 rows did not,
      // after reset-roll-audit.test.ts).
      for (let i = 0; i < 10_000 && (await drainOutboxOnce(s.pool, c.pub, prefix, 1_000, c.sink)) > 0; i++);
      const [a, b] = [await createFundedAccount(s, { paid: 10 }), await createFundedAccount(s, { paid: 10 })];
      const newer = { name: 'send-invoice', jobId: `send-invoice-${a}`, data: { accountId: a } };
      const [unknown] = await writeJob(a, newer);
      expect(unknown).toBeDefined();
      // Ordinary rows behind it: charges of both accounts, a grant with an expiry (and its expire-due job).
      await recordUsage(s, { accountId: a, idempotencyKey: 'unknown-after-1', category: 'unit' });
      await grantCredits(s, { accountId: a, amountMicroCredits: credits(2), type: 'PAID', source: 'ADJUSTMENT', expiresAt: new Date(Date.now() + 3_600_000), reference: null, idempotencyKey: 'unknown-after-g' });
      await recordUsage(s, { accountId: b, idempotencyKey: 'unknown-after-2', category: 'unit' });
      const expireJobId = (await rows(a)).find((r) => r.topic === 'job' && r.payload.name === 'expire-due')!.payload.jobId as string;
      const written = { [a]: await rows(a), [b]: await rows(b) };
      expect(written[a]!.filter((r) => BigInt(r.id) > BigInt(unknown!.id)).map((r) => r.topic)).toEqual(['balance', 'balance', 'job']);
      const versions = (id: string) => written[id]!.filter((r) => r.topic === 'balance').map((r) => String(r.payload.version));

      const sub = new Redis(TEST_REDIS_URL);
      const got: Record<string, string[]> = { [a]: [], [b]: [] };
      const all = new Promise<void>((resolve) =>
        sub.on('message', (channel: string, m: string) => {
          const msg = JSON.parse(m);
          const id = channel === accountChannel(prefix, a) ? a : b;
          if (msg.topic === 'balance') got[id]!.push(String(msg.payload.version));
          if (got[a]!.length === versions(a).length && got[b]!.length === versions(b).length) resolve();
        }),
      );
      await sub.subscribe(accountChannel(prefix, a), accountChannel(prefix, b));
      const { log, lines } = capturingLog();
      try {
        // Small batches, so that one of them holds the unknown row and ordinary rows together.
        for (let i = 0; i < 1_000 && (await rows(a)).length + (await rows(b)).length > 0; i++) {
          await drainOutboxOnce(s.pool, c.pub, prefix, 3, c.sink, undefined, log);
        }
        expect(await rows(a)).toEqual([]);
        expect(await rows(b)).toEqual([]);
        await all;
        expect(got).toEqual({ [a]: versions(a), [b]: versions(b) });
        expect((await c.sink.queue.getJob(expireJobId))?.name).toBe('expire-due');
        expect(await c.sink.queue.getJob(newer.jobId)).toBeUndefined();
        const { rows: parked } = await s.pool.query(`SELECT id::text, account_id, name, payload FROM outbox_unknown_jobs WHERE account_id = $1`, [a]);
        expect(parked).toEqual([{ id: unknown!.id, account_id: a, name: 'send-invoice', payload: newer }]);
        const warnings = lines.filter((l) => l.level === 40);
        expect(warnings).toHaveLength(1);
        expect(warnings[0]).toMatchObject({ parked: 1, names: { 'send-invoice': 1 } });

        // Parked, it is not read again: the next drain finds nothing (so the relay does not drain
        // again at once) and says nothing.
        expect(await drainOutboxOnce(s.pool, c.pub, prefix, 3, c.sink, undefined, log)).toBe(0);
        expect(lines.filter((l) => l.level === 40)).toHaveLength(1);
        expect((await s.pool.query(`SELECT count(*)::int AS n FROM outbox_unknown_jobs WHERE account_id = $1`, [a])).rows[0].n).toBe(1);
      } finally {
        sub.disconnect();
        await s.pool.query(`DELETE FROM outbox_events WHERE account_id = ANY($1) AND topic = 'job' AND payload->>'name' = 'send-invoice'`, [[a, b]]);
      }
    });

    it('a parked row whose name this relay knows (parked by an older relay) is taken back and enqueued; one it does not know stays parked', async () => {
      const a = await createFundedAccount(s, { paid: 1 });
      const known = { name: 'expire-due', jobId: `expire-due-parked-${randomUUID()}`, data: { accountId: a }, runAt: new Date(Date.now() + 3_600_000).toISOString() };
      const newer = { name: 'send-invoice', jobId: `send-invoice-parked-${randomUUID()}`, data: { accountId: a } };
      for (const job of [known, newer]) {
        await s.pool.query(
          `INSERT INTO outbox_unknown_jobs (id, account_id, name, payload, created_at) VALUES (nextval('outbox_events_id_seq'), $1, $2, $3, now())`,
          [a, job.name, job],
        );
      }
      const { log, lines } = capturingLog();
      try {
        // A drain not asked to take back (the running relay asks at most every TAKE_BACK_INTERVAL_MS) leaves both parked.
        while ((await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink, undefined, log, false)) > 0);
        expect((await s.pool.query(`SELECT count(*)::int AS n FROM outbox_unknown_jobs WHERE account_id = $1`, [a])).rows[0].n).toBe(2);
        expect(await c.sink.queue.getJob(known.jobId)).toBeUndefined();
        let published = 0;
        for (let n = await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink, undefined, log); n > 0; n = await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink, undefined, log)) published += n;
        expect(published).toBeGreaterThanOrEqual(1);
        expect((await c.sink.queue.getJob(known.jobId))?.name).toBe('expire-due');
        expect(await c.sink.queue.getJob(newer.jobId)).toBeUndefined();
        const { rows: parked } = await s.pool.query(`SELECT name, payload FROM outbox_unknown_jobs WHERE account_id = $1`, [a]);
        expect(parked).toEqual([{ name: 'send-invoice', payload: newer }]);
        expect(lines.filter((l) => l.level === 40)).toEqual([]);
        expect(lines.filter((l) => l.level === 30)).toMatchObject([{ takenBack: 1 }]);
      } finally {
        await s.pool.query(`DELETE FROM outbox_unknown_jobs WHERE account_id = $1`, [a]).catch(() => undefined);
      }
    });

    it('costs no round trip on the normal path: a drain is 2 round trips (the take-back rides with the DELETE), 3 only when it parks rows', async () => {
      const pool = createPgPool(TEST_DATABASE_URL, 1);
      const timings = new QueryTimings();
      timings.instrument(pool);
      const a = await createFundedAccount(s, { paid: 5 });
      const { log } = capturingLog();
      const tripsOf = async (fn: () => Promise<unknown>) => {
        const before = timings.roundTrips();
        await fn();
        return timings.roundTrips() - before;
      };
      try {
        await recordUsage(s, { accountId: a, idempotencyKey: 'trips-1', category: 'unit' });
        expect(await tripsOf(() => drainOutboxOnce(pool, c.pub, prefix, 10_000, c.sink, undefined, log))).toBe(2);
        expect(await rows(a)).toEqual([]);
        await writeJob(a, { name: 'send-invoice', jobId: `send-invoice-trips-${a}`, data: { accountId: a } });
        expect(await tripsOf(() => drainOutboxOnce(pool, c.pub, prefix, 10_000, c.sink, undefined, log))).toBe(3);
        expect(await rows(a)).toEqual([]);
      } finally {
        await s.pool.query(`DELETE FROM outbox_events WHERE account_id = $1 AND topic = 'job' AND payload->>'name' = 'send-invoice'`, [a]);
        await s.pool.query(`DELETE FROM outbox_unknown_jobs WHERE account_id = $1`, [a]);
        await pool.end();
      }
    });

    it('a relay without a job sink leaves every job row in the outbox, parks none', async () => {
      const a = await createFundedAccount(s, { paid: 1 });
      const [unknown] = await writeJob(a, { name: 'send-invoice', jobId: `send-invoice-nosink-${a}`, data: { accountId: a } });
      try {
        for (let n = await drainOutboxOnce(s.pool, c.pub, prefix, 100); n > 0; n = await drainOutboxOnce(s.pool, c.pub, prefix, 100));
        expect((await rows(a)).map((r) => r.id)).toContain(unknown!.id);
        expect((await rows(a)).map((r) => r.topic)).toEqual(['job']);
        expect((await s.pool.query(`SELECT count(*)::int AS n FROM outbox_unknown_jobs WHERE account_id = $1`, [a])).rows[0].n).toBe(0);
      } finally {
        await s.pool.query(`DELETE FROM outbox_events WHERE account_id = $1 AND topic = 'job'`, [a]);
      }
    });
  });

  describe('a job row of a known name whose payload cannot be enqueued (a poison row: a bug, a hand-written row)', () => {
    const prefix = `test-relay-malformed-${process.pid}:`;
    const c = relayConnections();

    /**
     * Known-name payloads that do not fit OutboxJob, as JSON text (inserted as written, so the
     * 20-digit number shows that the dead-letter table keeps the payload exactly). `refused`: BullMQ's
     * addBulk itself throws on it (checked below), so before the fix it failed every drain.
     */
    const poison = (accountId: string, tag: string) => [
      { refused: true, text: `{"name": "auto-top-up", "jobId": 12345678901234567890, "data": {"topUpId": "${randomUUID()}", "accountId": "${accountId}"}}` },
      { refused: true, text: JSON.stringify({ name: 'expire-due', jobId: '4711', data: { accountId } }) },
      { refused: true, text: JSON.stringify({ name: 'expire-due', jobId: `expire-due:${tag}`, data: { accountId } }) },
      // A runAt that is not a date: the delay is NaN, which Redis refuses (a script error, not an outage).
      { refused: true, text: JSON.stringify({ name: 'roll-period', jobId: `roll-period-${tag}`, data: { accountId }, runAt: 'next tuesday' }) },
      // Accepted by BullMQ, but no processor could take it / BullMQ would give it a new id at each delivery.
      { refused: false, text: JSON.stringify({ name: 'deliver-webhook', jobId: `webhook-${tag}`, data: 'not an object' }) },
      { refused: false, text: JSON.stringify({ name: 'auto-top-up', data: { topUpId: randomUUID(), accountId } }) },
    ];

    /** Inserts a job row straight into outbox_events (no service writes such a row; a bug or a hand-written row can). */
    async function insertJobRow(accountId: string, text: string): Promise<string> {
      const { rows: r } = await s.pool.query(`INSERT INTO outbox_events (account_id, topic, payload) VALUES ($1, 'job', $2::jsonb) RETURNING id::text`, [accountId, text]);
      return r[0].id as string;
    }

    /** The account's rows in outbox_dead_jobs, payload as text (exact). */
    async function deadJobs(accountId: string) {
      const { rows: r } = await s.pool.query(
        `SELECT id::text, account_id, name, payload::text AS payload, reason FROM outbox_dead_jobs WHERE account_id = $1 ORDER BY id`,
        [accountId],
      );
      return r as Array<{ id: string; account_id: string; name: string; payload: string; reason: string }>;
    }

    const asJsonb = async (text: string) => (await s.pool.query(`SELECT $1::jsonb::text AS t`, [text])).rows[0].t as string;

    it('does not hold back the balance updates and jobs behind it: they are published and enqueued, it is kept in outbox_dead_jobs (not enqueued, not taken back), logged once with its id', async () => {
      const a = await createFundedAccount(s, { paid: 10 });
      const bad = poison(a, randomUUID());
      // What BullMQ itself does with them (so the rows above are real poison for a drain, not a guess).
      for (const p of bad) {
        const job = JSON.parse(p.text);
        if (p.refused) await expect(c.sink.add([job])).rejects.toThrow();
      }
      const badIds: string[] = [];
      for (const p of bad) badIds.push(await insertJobRow(a, p.text));
      // Behind them: a charge (its live balance update) and a grant with an expiry (its expire-due job).
      await recordUsage(s, { accountId: a, idempotencyKey: 'poison-after-1', category: 'unit' });
      await grantCredits(s, { accountId: a, amountMicroCredits: credits(2), type: 'PAID', source: 'ADJUSTMENT', expiresAt: new Date(Date.now() + 3_600_000), reference: null, idempotencyKey: 'poison-after-g' });
      const written = await rows(a);
      const expireJobId = written.find((r) => r.topic === 'job' && r.payload.name === 'expire-due' && !badIds.includes(r.id))!.payload.jobId as string;
      const lastVersion = String(written.filter((r) => r.topic === 'balance').at(-1)!.payload.version);

      const sub = new Redis(TEST_REDIS_URL);
      const published = new Promise<void>((resolve) =>
        sub.on('message', (_c: string, m: string) => {
          const msg = JSON.parse(m);
          if (msg.topic === 'balance' && String(msg.payload.version) === lastVersion) resolve();
        }),
      );
      await sub.subscribe(accountChannel(prefix, a));
      const { log, lines } = capturingLog();
      try {
        // Before the fix every one of these drains failed (BullMQ refused the batch), so the
        // update was never published, for this account or any other.
        for (let i = 0; i < 100 && (await rows(a)).length > 0; i++) await drainOutboxOnce(s.pool, c.pub, prefix, 3, c.sink, undefined, log);
        expect(await rows(a)).toEqual([]);
        await published;
        expect((await c.sink.queue.getJob(expireJobId))?.name).toBe('expire-due');
        // None of the bad rows was enqueued (the one without a jobId would have got a random id).
        const queued = await c.sink.queue.getJobs(['waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed']);
        expect(queued.filter((j) => JSON.stringify(j.data).includes(a)).map((j) => j.id)).toEqual([expireJobId]);

        const dead = await deadJobs(a);
        expect(dead.map((d) => d.id)).toEqual(badIds);
        for (const [i, d] of dead.entries()) {
          expect(d.payload).toBe(await asJsonb(bad[i]!.text));
          expect(d.name).toBe(JSON.parse(bad[i]!.text).name);
          expect(d.reason).not.toBe('');
        }
        expect(dead[0]!.payload).toContain('12345678901234567890');
        expect(dead.map((d) => d.reason)).toEqual([
          'jobId is not a string',
          'jobId is an integer (BullMQ refuses it)',
          'jobId contains ":" (BullMQ refuses it)',
          'runAt is not a date string',
          'data is not an object',
          'jobId is not a string',
        ]);
        const errors = lines.filter((l) => l.level === 50);
        expect(errors.flatMap((l) => l.deadLettered.map((d: { id: string }) => d.id)).sort()).toEqual([...badIds].sort());
        for (const e of errors) expect(e.msg).toContain('outbox_dead_jobs');

        // Dead-lettered, they are not read again (nor taken back like an unknown name).
        expect(await drainOutboxOnce(s.pool, c.pub, prefix, 3, c.sink, undefined, log)).toBe(0);
        expect(lines.filter((l) => l.level === 50)).toHaveLength(errors.length);
        expect(await deadJobs(a)).toEqual(dead);
        expect((await s.pool.query(`SELECT count(*)::int AS n FROM outbox_unknown_jobs WHERE account_id = $1`, [a])).rows[0].n).toBe(0);
      } finally {
        sub.disconnect();
        await s.pool.query(`DELETE FROM outbox_events WHERE id = ANY($1::bigint[])`, [badIds]);
      }
    });

    it('an operator re-queues a dead row by moving its corrected payload back into outbox_events (README): it is enqueued', async () => {
      const a = await createFundedAccount(s, { paid: 1 });
      const jobId = `expire-due-requeued-${randomUUID()}`;
      const id = await insertJobRow(a, JSON.stringify({ name: 'expire-due', jobId, data: { accountId: a }, runAt: 'soon' }));
      while ((await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink)) > 0);
      expect((await deadJobs(a)).map((d) => d.id)).toEqual([id]);
      // The statement the README gives (one row, by id; its payload corrected on the way).
      await s.pool.query(
        `WITH moved AS (DELETE FROM outbox_dead_jobs WHERE id = $1 RETURNING account_id, payload, created_at)
         INSERT INTO outbox_events (account_id, topic, payload, created_at)
         SELECT account_id, 'job', payload - 'runAt', created_at FROM moved`,
        [id],
      );
      while ((await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink)) > 0);
      expect((await c.sink.queue.getJob(jobId))?.name).toBe('expire-due');
      expect(await deadJobs(a)).toEqual([]);
      expect(await rows(a)).toEqual([]);
    });

    it('a parked row of a name this relay knows but a payload it cannot enqueue is moved to outbox_dead_jobs when taken back, not taken back at every drain', async () => {
      const a = await createFundedAccount(s, { paid: 1 });
      const text = JSON.stringify({ name: 'resume-payment', jobId: 'resume-payment:parked', data: { paymentId: randomUUID(), accountId: a } });
      const { rows: ins } = await s.pool.query(
        `INSERT INTO outbox_unknown_jobs (id, account_id, name, payload, created_at) VALUES (nextval('outbox_events_id_seq'), $1, 'resume-payment', $2::jsonb, now() - interval '1 hour') RETURNING id::text, created_at`,
        [a, text],
      );
      await recordUsage(s, { accountId: a, idempotencyKey: 'parked-poison-1', category: 'unit' });
      const { log, lines } = capturingLog();
      try {
        // Before the fix the take-back failed the drain, and with it the charge's update.
        for (let n = await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink, undefined, log); n > 0; n = await drainOutboxOnce(s.pool, c.pub, prefix, 100, c.sink, undefined, log));
        expect(await rows(a)).toEqual([]);
        expect((await s.pool.query(`SELECT count(*)::int AS n FROM outbox_unknown_jobs WHERE account_id = $1`, [a])).rows[0].n).toBe(0);
        const dead = await deadJobs(a);
        expect(dead).toEqual([{ id: ins[0].id, account_id: a, name: 'resume-payment', payload: await asJsonb(text), reason: 'jobId contains ":" (BullMQ refuses it)' }]);
        const { rows: at } = await s.pool.query(`SELECT created_at FROM outbox_dead_jobs WHERE id = $1`, [ins[0].id]);
        expect(at[0].created_at).toEqual(ins[0].created_at);
        expect(lines.filter((l) => l.level === 50)).toMatchObject([{ deadLettered: [{ id: ins[0].id, name: 'resume-payment' }] }]);
      } finally {
        await s.pool.query(`DELETE FROM outbox_unknown_jobs WHERE account_id = $1`, [a]);
      }
    });

    it('Redis being down dead-letters nothing: the drain fails, every row (the poison one included) stays, and all is delivered once Redis is back', async () => {
      const a = await createFundedAccount(s, { paid: 5 });
      const private_ = await startPrivateRedis();
      const fragile = new Redis(private_.url, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
      fragile.on('error', () => undefined);
      const fragileSink = createQueueJobSink(fragile, `cp-test-${randomUUID()}`);
      fragileSink.queue.on('error', () => undefined);
      const badId = await insertJobRow(a, JSON.stringify({ name: 'expire-due', jobId: '17', data: { accountId: a } }));
      try {
        await new Promise<void>((resolve) => (fragile.status === 'ready' ? resolve() : fragile.once('ready', () => resolve())));
        await recordUsage(s, { accountId: a, idempotencyKey: 'outage-1', category: 'unit' });
        await grantCredits(s, { accountId: a, amountMicroCredits: credits(1), type: 'PAID', source: 'ADJUSTMENT', expiresAt: new Date(Date.now() + 3_600_000), reference: null, idempotencyKey: 'outage-g' });
        const before = await rows(a);
        const expireJobId = before.find((r) => r.topic === 'job' && r.payload.name === 'expire-due' && r.id !== badId)!.payload.jobId as string;
        await private_.kill();
        for (let i = 0; i < 3; i++) await expect(drainOutboxOnce(s.pool, fragile, prefix, 100, fragileSink, 1_000)).rejects.toThrow();
        expect(await rows(a)).toEqual(before);
        expect(await deadJobs(a)).toEqual([]);

        await private_.start();
        await new Promise<void>((resolve) => (fragile.status === 'ready' ? resolve() : fragile.once('ready', () => resolve())));
        while ((await drainOutboxOnce(s.pool, fragile, prefix, 100, fragileSink, 1_000)) > 0);
        expect(await rows(a)).toEqual([]);
        expect((await fragileSink.queue.getJob(expireJobId))?.name).toBe('expire-due');
        expect((await deadJobs(a)).map((d) => d.id)).toEqual([badId]);
      } finally {
        await fragileSink.close().catch(() => undefined);
        fragile.disconnect();
        await private_.stop();
        await s.pool.query(`DELETE FROM outbox_events WHERE id = $1`, [badId]);
      }
    });

    it('costs a round trip only in a drain that dead-letters rows: 2 otherwise, 3 then', async () => {
      const pool = createPgPool(TEST_DATABASE_URL, 1);
      const timings = new QueryTimings();
      timings.instrument(pool);
      const a = await createFundedAccount(s, { paid: 5 });
      const tripsOf = async (fn: () => Promise<unknown>) => {
        const before = timings.roundTrips();
        await fn();
        return timings.roundTrips() - before;
      };
      let badId = '';
      try {
        // A job row that can be enqueued costs nothing more.
        await grantCredits(s, { accountId: a, amountMicroCredits: credits(1), type: 'PAID', source: 'ADJUSTMENT', expiresAt: new Date(Date.now() + 3_600_000), reference: null, idempotencyKey: 'trips-g' });
        expect(await tripsOf(() => drainOutboxOnce(pool, c.pub, prefix, 10_000, c.sink))).toBe(2);
        expect(await rows(a)).toEqual([]);
        badId = await insertJobRow(a, JSON.stringify({ name: 'roll-period', jobId: `roll-period-trips-${a}`, data: { accountId: a }, runAt: 42 }));
        await recordUsage(s, { accountId: a, idempotencyKey: 'trips-poison', category: 'unit' });
        expect(await tripsOf(() => drainOutboxOnce(pool, c.pub, prefix, 10_000, c.sink))).toBe(3);
        expect(await rows(a)).toEqual([]);
        expect((await deadJobs(a)).map((d) => [d.id, d.reason])).toEqual([[badId, 'runAt is not a date string']]);
      } finally {
        if (badId) await s.pool.query(`DELETE FROM outbox_events WHERE id = $1`, [badId]);
        await pool.end();
      }
    });
  });
});
