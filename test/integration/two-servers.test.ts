/**
 * Two API servers on one database, as two deployments of the same version run them: each
 * server has its own pg pool, Prisma client, Redis connections, GroupCommitter (with its
 * carried state of hot accounts), ReservationOwners, DepletionAlerts, RefusalTopUps and pricing
 * state (test/setup/test-server.ts startTestServer, called twice). A randomized soak drives a
 * few shared accounts through both, alternately and concurrently: bursts of recordUsage on one
 * server (which keeps carried state of the hot account) while the other makes a hold of nearly
 * all the available credit or charges the same account and keys, recordUsageBatch items with repeated idempotency keys retried on the
 * OTHER server, holds made on one server and captured, settled, released (or settled and
 * released at once) on the other, grants and voids, refundUsage sent to both at once.
 *
 * After each run it checks that money is exact, from PostgreSQL and from both servers:
 * - each idempotency key (usage events, holds, grants) made exactly one row when any of its
 *   calls succeeded and none otherwise, and every success named that row;
 * - each usage event has exactly one CONSUME entry of minus its cost; refunded iff a refund of
 *   it succeeded, its REFUND entries give back at most its cost, at most one per batch; each
 *   grant has one GRANT entry and at most one VOID, and is voided iff a void of it succeeded;
 * - every hold is closed at the end (the soak releases what it left open), Balance.reserved is
 *   0 and each hold has one RESERVE entry and at most one RELEASE entry;
 * - the ledger invariant of every account (expectLedgerInvariant), and the Balance read
 *   through server A equals the one read through server B;
 * - every committed balance version was published on the accounts' Redis channels exactly once,
 *   in order (versions move by one per transaction, so the committed ones are the range up to
 *   the final version), the last one with the final figures;
 * - on the accounts without voids, no published version has less batch credit than its holds
 *   hold (free + paid >= reserved): a charge decided from stale carried state on one server
 *   would spend credit a hold made through the other server sets aside (the guard's version
 *   check is what prevents it; the deferred ledger trigger does not see holds).
 *
 * Module-level state the two in-process servers share (two deployments would not): the outbox
 * commit signal (src/outbox/signal.ts: a commit on either wakes both relays; a separate process
 * would see the other's rows only at its poll), and the pricing catalog's per-model memo
 * (src/pricing/catalog.ts, immutable catalog data). The API key cache is per pool, so it is not
 * shared. startTestServer gives no ReservationOwners (src/main.ts does); the soak adds one per
 * server, so a settle on the server that did not make the hold looks its owner up.
 *
 * TWO_SERVERS_RUNS (default 3) and TWO_SERVERS_SEED replay or widen the fast-check runs.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { dbId } from '../api/helpers.js';
import { ReservationOwners } from '../../src/services/reservation-owners.js';
import { parseCredits } from '../../src/ledger/credits.js';

const RUNS = Number(process.env.TWO_SERVERS_RUNS || 3);
const SEED = Number(process.env.TWO_SERVERS_SEED || 20261207);

const CHANNEL_PREFIX = `creditpool-test:two-servers:${randomUUID()}:`;
/** The servers' BullMQ prefix: the jobs their relays enqueue (alerts, expiries, webhooks) stay out of other runs' queues, and are deleted after. */
const QUEUE_PREFIX = `cp-test-two-servers-${randomUUID().slice(0, 8)}`;
let servers: [TestServer, TestServer];
let subscriber: Redis;
/** Balance snapshots published per account (db uuid), in arrival order (payload of topic `balance`). */
const published = new Map<string, Record<string, string | null>[]>();
const publishWaiters = new Set<() => void>();

beforeAll(async () => {
  const env = {
    LIVE_CHANNEL_PREFIX: CHANNEL_PREFIX,
    QUEUE_PREFIX,
    OUTBOX_POLL_INTERVAL_MS: '50',
  };
  subscriber = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 3 });
  subscriber.on('pmessage', (_pattern, channel: string, message: string) => {
    const msg = JSON.parse(message) as { topic: string; payload: Record<string, string | null> };
    if (msg.topic !== 'balance') return;
    const accountId = channel.slice(`${CHANNEL_PREFIX}account:`.length);
    published.set(accountId, [...(published.get(accountId) ?? []), msg.payload]);
    for (const wake of publishWaiters) wake();
  });
  await subscriber.psubscribe(`${CHANNEL_PREFIX}account:*`);
  servers = await Promise.all([startTestServer(env), startTestServer(env)]);
  for (const s of servers) s.services.reservationOwners = new ReservationOwners(); // as src/main.ts
});

afterAll(async () => {
  await Promise.allSettled((servers ?? []).map((s) => s.close()));
  await subscriber?.quit();
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 3 });
  try {
    for await (const keys of redis.scanStream({ match: `${QUEUE_PREFIX}:*`, count: 1000 }) as AsyncIterable<string[]>) if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

// ---------------------------------------------------------------------------------------------
// GraphQL documents and calls

const EVENT = `id cost`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { ${EVENT} } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { ${EVENT} } } }`;
const RESERVATION = `id status amount consumed`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { ${RESERVATION} } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { ${RESERVATION} } }`;
const RELEASE = `mutation($id: ID!) { releaseReservation(reservationId: $id) { ${RESERVATION} } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const VOID = `mutation($id: ID!, $reason: String!) { voidGrant(grantId: $id, reason: $reason) { id voidedAt } }`;
const REFUND = `mutation($id: ID!, $reason: String!) { refundUsage(usageEventId: $id, reason: $reason) { id refunded } }`;
const BALANCE = `query($id: ID!) { account(id: $id) { balance { version total available reserved free paid debt } } }`;

/** What one call answered: its data, or the extensions.code of its one error. */
type Answer = { ok: true; data: any } | { ok: false; code: string };

async function call(srv: TestServer, query: string, variables: Record<string, unknown>): Promise<Answer> {
  const res = await srv.gql(query, variables);
  const errors = res.body.errors;
  if (errors?.length) return { ok: false, code: errors.map((e) => e.extensions?.code ?? `NO_CODE: ${e.message}`).join(',') };
  return { ok: true, data: res.body.data };
}

// ---------------------------------------------------------------------------------------------
// What the soak sent and was answered

/** A deterministic PRNG (mulberry32) so that a fast-check seed replays one soak. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    chance: (p: number) => next() < p,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  };
}

/** One idempotency key of one kind on one account: every answer its calls got. */
interface KeyRecord {
  accountId: string; // global id
  key: string;
  /** The input every call with this key sends (the same, so no answer may be IDEMPOTENCY_CONFLICT). */
  input: Record<string, unknown>;
  /** Ids (global) the successful calls named. */
  ids: Set<string>;
  /** Codes of the refused calls. */
  codes: string[];
  /** A settle's item: recorded against the hold, so recordUsage with its key alone is another input. */
  settleItem?: boolean;
}

interface Hold {
  id: string; // global id
  accountId: string;
  /** The server that made it (0 or 1): its captures, settles and releases go to the other. */
  madeOn: number;
  open: boolean;
}

interface Soak {
  usage: Map<string, KeyRecord>;
  holds: Map<string, KeyRecord>;
  grants: Map<string, KeyRecord>;
  openHolds: Hold[];
  /** Usage events answered OK (global ids) by account: candidates for refunds. */
  events: { id: string; accountId: string }[];
  refundsOk: Set<string>;
  grantIds: { id: string; accountId: string }[];
  voidsOk: Set<string>;
  /** Codes every call answered, by kind of call (for the allow-lists below). */
  codes: Map<string, Map<string, number>>;
}

function tally(soak: Soak, kind: string, answer: Answer | string): void {
  const code = typeof answer === 'string' ? answer : answer.ok ? 'OK' : answer.code;
  const m = soak.codes.get(kind) ?? new Map<string, number>();
  m.set(code, (m.get(code) ?? 0) + 1);
  soak.codes.set(kind, m);
}

function keyRecord(map: Map<string, KeyRecord>, accountId: string, key: string, input: Record<string, unknown>): KeyRecord {
  const k = `${accountId}|${key}`;
  let rec = map.get(k);
  if (!rec) map.set(k, (rec = { accountId, key, input, ids: new Set(), codes: [] }));
  return rec;
}

function noteUsage(soak: Soak, rec: KeyRecord, kind: string, answer: { ok: true; id: string } | { ok: false; code: string }): void {
  tally(soak, kind, answer.ok ? 'OK' : answer.code);
  if (answer.ok) {
    if (rec.ids.size === 0) soak.events.push({ id: answer.id, accountId: rec.accountId });
    rec.ids.add(answer.id);
  } else rec.codes.push(answer.code);
}

// ---------------------------------------------------------------------------------------------
// The operations (each sends to one server and, where it is a retry, to the other)

let seq = 0;
const fresh = (p: string) => `${p}-${++seq}-${randomUUID().slice(0, 8)}`;

async function charge(soak: Soak, srv: TestServer, rec: KeyRecord, kind = 'recordUsage'): Promise<void> {
  const a = await call(srv, RECORD, { input: rec.input });
  noteUsage(soak, rec, kind, a.ok ? { ok: true, id: a.data.recordUsage.id } : a);
}

async function batch(soak: Soak, srv: TestServer, recs: KeyRecord[]): Promise<void> {
  const a = await call(srv, BATCH, { inputs: recs.map((r) => r.input) });
  if (!a.ok) {
    tally(soak, 'recordUsageBatch(call)', a);
    for (const r of recs) r.codes.push(a.code);
    return;
  }
  (a.data.recordUsageBatch as { errorCode: string | null; event: { id: string } | null }[]).forEach((item, i) =>
    noteUsage(soak, recs[i]!, 'recordUsageBatch', item.event ? { ok: true, id: item.event.id } : { ok: false, code: item.errorCode ?? 'NO_CODE' }),
  );
}

async function reserve(soak: Soak, srv: TestServer, rec: KeyRecord, madeOn: number): Promise<void> {
  const a = await call(srv, RESERVE, { input: rec.input });
  tally(soak, 'reserveCredits', a);
  if (!a.ok) {
    rec.codes.push(a.code);
    return;
  }
  const id = a.data.reserveCredits.id as string;
  if (rec.ids.size === 0) soak.openHolds.push({ id, accountId: rec.accountId, madeOn, open: true });
  rec.ids.add(id);
}

async function grant(soak: Soak, srv: TestServer, rec: KeyRecord): Promise<void> {
  const a = await call(srv, GRANT, { input: rec.input });
  tally(soak, 'grantCredits', a);
  if (!a.ok) {
    rec.codes.push(a.code);
    return;
  }
  const id = a.data.grantCredits.id as string;
  if (rec.ids.size === 0) soak.grantIds.push({ id, accountId: rec.accountId });
  rec.ids.add(id);
}

function usageInput(accountId: string, r: ReturnType<typeof prng>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { accountId, category: 'unit', idempotencyKey: fresh('u'), ...(r.chance(0.3) ? { sku: 'half' } : {}), ...extra };
}

/** A usage key of `accountId`: mostly new, sometimes one sent before (a retry, possibly to the other server). */
function usageKey(soak: Soak, accountId: string, r: ReturnType<typeof prng>): KeyRecord {
  const earlier = [...soak.usage.values()].filter((k) => k.accountId === accountId && !('reservationId' in k.input) && !k.settleItem);
  if (earlier.length > 0 && r.chance(0.2)) return r.pick(earlier);
  const input = usageInput(accountId, r);
  return keyRecord(soak.usage, accountId, input.idempotencyKey as string, input);
}

/**
 * Resolves once charges wait in `srv`'s group committer (a transaction of it is in flight), or
 * once `done` settled; checked between turns of the event loop (this shapes the load: no
 * assertion depends on when it resolves).
 */
async function whenChargesWait(srv: TestServer, done: Promise<unknown>): Promise<void> {
  let finished = false;
  void done.then(() => (finished = true));
  while (!finished && srv.services.groupCommit!.stats().waiting === 0) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** One randomized soak on fresh accounts; returns what it sent and was answered. */
async function soakRun(seed: number): Promise<{ soak: Soak; accounts: string[] }> {
  const r = prng(seed);
  const soak: Soak = { usage: new Map(), holds: new Map(), grants: new Map(), openHolds: [], events: [], refundsOk: new Set(), grantIds: [], voidsOk: new Set(), codes: new Map() };
  const other = (i: number) => 1 - i;

  const accounts: string[] = [];
  for (let i = 0; i < 3; i++) {
    const a = await call(servers[i % 2]!, `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: fresh('two-servers'), name: 'two servers', kind: 'ORGANIZATION', welcomeBonus: false },
    });
    expect(a.ok, JSON.stringify(a)).toBe(true);
    accounts.push((a as { data: any }).data.createAccount.id);
  }
  // Funding: each grant sent to both servers at once.
  await Promise.all(
    accounts.flatMap((accountId) =>
      [
        { type: 'FREE', source: 'PROMO_CODE', amount: String(r.int(2, 6)) },
        { type: 'PAID', source: 'PURCHASE', amount: String(r.int(8, 16)) },
      ].map((g) => {
        const rec = keyRecord(soak.grants, accountId, fresh('g'), { accountId, ...g, idempotencyKey: '' });
        rec.input.idempotencyKey = rec.key;
        return Promise.all(servers.map((s) => grant(soak, s, rec)));
      }),
    ),
  );

  const waves = 5;
  for (let w = 0; w < waves; w++) {
    const ops: Promise<void>[] = [];
    // First what earlier waves left, concurrently. Their holds: captured, settled (and the
    // settle retried), released twice at once, or settled and released at once, on the server
    // that did not make them (and the other).
    for (const hold of soak.openHolds.filter((h) => h.open)) {
      const there = servers[other(hold.madeOn)]!;
      const here = servers[hold.madeOn]!;
      const action = r.int(0, 3);
      if (action === 0) {
        const input = usageInput(hold.accountId, r, { reservationId: hold.id });
        const rec = keyRecord(soak.usage, hold.accountId, input.idempotencyKey as string, input);
        ops.push(charge(soak, there, rec, 'capture').then(() => charge(soak, here, rec, 'capture')));
      } else if (action === 1 || action === 3) {
        const items = Array.from({ length: r.int(0, 2) }, () => usageInput(hold.accountId, r));
        const recs = items.map((input) => ({ ...keyRecord(soak.usage, hold.accountId, input.idempotencyKey as string, input), settleItem: true }));
        for (const rec of recs) soak.usage.set(`${rec.accountId}|${rec.key}`, rec);
        const settle = async (srv: TestServer, kind: string) => {
          const a = await call(srv, SETTLE, { input: { reservationId: hold.id, usage: items } });
          tally(soak, kind, a);
          // Its items' events are read back from the database by key (the answer is the hold).
          for (const rec of recs) rec.codes.push(a.ok ? 'SETTLED' : a.code);
        };
        const release = async (srv: TestServer) => tally(soak, 'releaseReservation(racing a settle)', await call(srv, RELEASE, { id: hold.id }));
        hold.open = false; // closed by one of them
        ops.push(
          action === 1
            ? settle(there, 'settleReservation').then(() => settle(here, 'settleReservation(retry)'))
            : Promise.all([settle(there, 'settleReservation(racing a release)'), release(here)]).then(() => undefined),
        );
      } else if (action === 2) {
        hold.open = false;
        ops.push(
          Promise.all(
            [there, here].map(async (srv) => {
              tally(soak, 'releaseReservation', await call(srv, RELEASE, { id: hold.id }));
            }),
          ).then(() => undefined),
        );
      }
    }
    // Refunds of earlier events, sent to both servers at once.
    for (const ev of soak.events.filter(() => r.chance(0.08))) {
      ops.push(
        Promise.all(
          servers.map(async (srv) => {
            const a = await call(srv, REFUND, { id: ev.id, reason: 'soak' });
            tally(soak, 'refundUsage', a);
            if (a.ok) soak.refundsOk.add(ev.id);
          }),
        ).then(() => undefined),
      );
    }
    // A void of an earlier grant of the first account (the others keep the rule below), on both servers at once.
    const voidable = soak.grantIds.filter((g) => g.accountId === accounts[0]);
    if (voidable.length > 0 && r.chance(0.5)) {
      const g = r.pick(voidable);
      ops.push(
        Promise.all(
          servers.map(async (srv) => {
            const a = await call(srv, VOID, { id: g.id, reason: 'soak' });
            tally(soak, 'voidGrant', a);
            if (a.ok) soak.voidsOk.add(g.id);
          }),
        ).then(() => undefined),
      );
    }
    await Promise.all(ops.splice(0));
    // Then bursts on accounts whose holds are mostly closed, so the servers carry state of them.
    // What each account has available now, read through either server (holds are sized from it).
    const available = await Promise.all(
      accounts.map(async (accountId, i) => {
        const a = await call(servers[(w + i) % 2]!, BALANCE, { id: accountId });
        return a.ok ? parseCredits(a.data.account.balance.available) : 0n;
      }),
    );
    for (const [index, accountId] of accounts.entries()) {
      // A burst of charges through the "hot" server, which then keeps carried state of the
      // account. Mostly (holdRace) all of it, while the other server makes a hold of nearly all
      // that is available: the hot one then decides from carried state that the hold made
      // stale, which its guard must notice. Otherwise some charges go through the other server
      // too, and keys are repeated at once on the other server. Either way some keys are
      // retried on the other server after their answer.
      const hot = r.int(0, 1);
      const holdRace = r.chance(0.7);
      const n = holdRace ? r.int(4, 9) : r.int(3, 8);
      const burst: (() => Promise<void>)[] = [];
      for (let i = 0; i < n; i++) {
        const rec = usageKey(soak, accountId, r);
        const s = holdRace || r.chance(0.8) ? hot : other(hot);
        burst.push(() => charge(soak, servers[s]!, rec));
        if (!holdRace && r.chance(0.3)) burst.push(() => charge(soak, servers[other(s)]!, rec)); // the same key, at once, on the other server
        else if (r.chance(0.2)) burst.push(() => charge(soak, servers[s]!, rec).then(() => charge(soak, servers[other(s)]!, rec))); // a retry on the other one
      }
      // A new hold through the other server while the burst runs (often nearly all that is
      // available, so the burst meets it), its key sent again (at once, or after it answered).
      if (holdRace || r.chance(0.5)) {
        const most = available[index]! / 1_000_000n - BigInt(r.int(1, 2));
        const amount = most > 0n && (holdRace || r.chance(0.5)) ? String(most) : String(r.int(1, 4));
        const input = { accountId, amount, idempotencyKey: fresh('h'), ttlSeconds: 600 };
        const rec = keyRecord(soak.holds, accountId, input.idempotencyKey, input);
        const s = other(hot);
        const again = r.int(0, 2);
        const hold = () =>
          again === 0
            ? Promise.all([reserve(soak, servers[s]!, rec, s), reserve(soak, servers[hot]!, rec, hot)]).then(() => undefined)
            : again === 1
              ? reserve(soak, servers[s]!, rec, s).then(() => reserve(soak, servers[hot]!, rec, hot))
              : reserve(soak, servers[s]!, rec, s);
        if (holdRace) {
          // Sent once charges wait behind the hot server's transaction in flight (it will leave
          // its state to the next one), so the hold's lock often queues between the two.
          const charged = burst.map((f) => f());
          ops.push(...charged, whenChargesWait(servers[hot]!, Promise.allSettled(charged)).then(hold));
          continue;
        }
        burst.splice(Math.min(2, burst.length), 0, hold);
      }
      ops.push(...burst.map((f) => f()));
      // A grant, retried on the other server (not during a hold race: it would make room for the burst).
      if (r.chance(0.6)) {
        const type = r.pick(['FREE', 'PAID'] as const);
        const input: Record<string, unknown> = { accountId, type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', amount: String(r.int(2, 8)), idempotencyKey: fresh('g') };
        if (r.chance(0.5)) input.expiresAt = new Date(Date.now() + 86_400_000 * r.int(1, 30)).toISOString();
        const rec = keyRecord(soak.grants, accountId, input.idempotencyKey as string, input);
        const s = r.int(0, 1);
        ops.push(grant(soak, servers[s]!, rec).then(() => grant(soak, servers[other(s)]!, rec)));
      }
    }
    // A batch with items of every account, new keys and keys sent before; retried whole on the other server.
    {
      const recs: KeyRecord[] = [];
      const n = r.int(3, 7);
      for (let i = 0; i < n; i++) recs.push(usageKey(soak, r.pick(accounts), r));
      const s = r.int(0, 1);
      ops.push(r.chance(0.5) ? batch(soak, servers[s]!, recs).then(() => batch(soak, servers[other(s)]!, recs)) : Promise.all([batch(soak, servers[s]!, recs), batch(soak, servers[other(s)]!, recs)]).then(() => undefined));
    }
    await Promise.all(ops);
  }
  // Close what is still open: every hold released through the server that did not make it.
  await Promise.all(
    soak.openHolds.map(async (hold) => {
      const a = await call(servers[other(hold.madeOn)]!, RELEASE, { id: hold.id });
      tally(soak, 'releaseReservation(final)', a);
    }),
  );
  return { soak, accounts };
}

// ---------------------------------------------------------------------------------------------
// The checks

/** Codes each kind of call may answer besides OK (every key keeps one input, so never IDEMPOTENCY_CONFLICT). */
const ALLOWED: Record<string, string[]> = {
  recordUsage: ['INSUFFICIENT_CREDITS'],
  recordUsageBatch: ['INSUFFICIENT_CREDITS'],
  capture: [], // of an open hold: beyond the hold it is debt, never refused
  reserveCredits: ['INSUFFICIENT_CREDITS'],
  settleReservation: [],
  'settleReservation(retry)': [], // replays (README "Settle")
  'settleReservation(racing a release)': ['RESERVATION_NOT_ACTIVE'],
  'releaseReservation(racing a settle)': ['RESERVATION_NOT_ACTIVE'],
  releaseReservation: [], // releasing a released hold returns it unchanged
  'releaseReservation(final)': ['RESERVATION_NOT_ACTIVE'],
  grantCredits: [],
  voidGrant: [],
  refundUsage: [],
};

async function expectMoneyExact(soak: Soak, accounts: string[]): Promise<void> {
  const pool = servers[0].services.pool;
  const ids = accounts.map(dbId);

  for (const [kind, codes] of soak.codes) {
    for (const code of codes.keys()) if (code !== 'OK') expect(ALLOWED[kind] ?? [], `${kind} answered ${code} ${codes.get(code)} times`).toContain(code);
  }

  // Usage: one event per key that any call recorded, none for keys only ever refused; every
  // success named that event; one CONSUME of minus its cost; one REFUND iff a refund succeeded.
  const { rows: events } = await pool.query(
    `SELECT e.account_id, e.idempotency_key, e.id, e.cost_micro_credits::text AS cost, e.refunded_at IS NOT NULL AS refunded,
            (SELECT count(*) FROM ledger_entries l WHERE l.usage_event_id = e.id AND l.type = 'CONSUME')::int AS consumes,
            (SELECT coalesce(sum(amount_micro_credits), 0)::text FROM ledger_entries l WHERE l.usage_event_id = e.id AND l.type = 'CONSUME') AS consumed,
            (SELECT count(*) FROM ledger_entries l WHERE l.usage_event_id = e.id AND l.type = 'REFUND')::int AS refunds,
            (SELECT coalesce(sum(amount_micro_credits), 0)::text FROM ledger_entries l WHERE l.usage_event_id = e.id AND l.type = 'REFUND') AS refunded_amount,
            (SELECT coalesce(max(n), 0)::int FROM (SELECT count(*) AS n FROM ledger_entries l WHERE l.usage_event_id = e.id AND l.type = 'REFUND' GROUP BY l.batch_id) x) AS refunds_per_batch
       FROM usage_events e WHERE e.account_id = ANY($1::uuid[])`,
    [ids],
  );
  const byKey = new Map<string, (typeof events)[number][]>();
  for (const e of events) byKey.set(`${e.account_id}|${e.idempotency_key}`, [...(byKey.get(`${e.account_id}|${e.idempotency_key}`) ?? []), e]);
  let keysRecorded = 0;
  for (const rec of soak.usage.values()) {
    const rows = byKey.get(`${dbId(rec.accountId)}|${rec.key}`) ?? [];
    const settledItem = rec.codes.includes('SETTLED');
    const what = `usage key ${rec.key}: answers ${JSON.stringify({ ids: [...rec.ids], codes: rec.codes })}`;
    expect(rec.ids.size, what).toBeLessThanOrEqual(1);
    if (rec.ids.size === 1 || settledItem) {
      expect(rows, what).toHaveLength(1);
      keysRecorded++;
      if (rec.ids.size === 1) expect(dbId([...rec.ids][0]!), what).toBe(rows[0].id);
    } else {
      // Only refusals: a settle's items are recorded only if it succeeded (all or none).
      expect(rows, what).toHaveLength(0);
    }
  }
  expect(events).toHaveLength(keysRecorded); // no event the soak was not told of
  for (const e of events) {
    expect(e.consumes, `event ${e.id}`).toBe(1);
    expect(BigInt(e.consumed), `event ${e.id}`).toBe(-BigInt(e.cost));
    // A refund gives back what it can (one REFUND entry per batch it returns to, none into a
    // voided batch), once: never more than the cost, never twice into one batch.
    if (!e.refunded) expect(e.refunds, `event ${e.id}`).toBe(0);
    expect(BigInt(e.refunded_amount) <= BigInt(e.cost), `event ${e.id} refunded ${e.refunded_amount} of ${e.cost}`).toBe(true);
    expect(e.refunds_per_batch, `event ${e.id}`).toBeLessThanOrEqual(1);
  }
  for (const id of soak.refundsOk) expect(events.find((e) => e.id === dbId(id))?.refunded, `refunded ${id}`).toBe(true);

  // Holds: one per key that any call made; all closed; one RESERVE, at most one RELEASE each.
  const { rows: holds } = await pool.query(
    `SELECT r.account_id, r.idempotency_key, r.id, r.status,
            (SELECT count(*) FROM ledger_entries l WHERE l.reservation_id = r.id AND l.type = 'RESERVE')::int AS reserves,
            (SELECT count(*) FROM ledger_entries l WHERE l.reservation_id = r.id AND l.type = 'RELEASE')::int AS releases
       FROM reservations r WHERE r.account_id = ANY($1::uuid[])`,
    [ids],
  );
  for (const rec of soak.holds.values()) {
    const rows = holds.filter((h) => h.account_id === dbId(rec.accountId) && h.idempotency_key === rec.key);
    const what = `hold key ${rec.key}: answers ${JSON.stringify({ ids: [...rec.ids], codes: rec.codes })}`;
    expect(rec.ids.size, what).toBeLessThanOrEqual(1);
    expect(rows, what).toHaveLength(rec.ids.size);
    if (rows[0]) expect(rows[0].id, what).toBe(dbId([...rec.ids][0]!));
  }
  expect(holds).toHaveLength([...soak.holds.values()].filter((k) => k.ids.size > 0).length);
  for (const h of holds) {
    expect(h.status, `hold ${h.id}`).not.toBe('ACTIVE');
    expect(h.reserves, `hold ${h.id}`).toBe(1);
    expect(h.releases, `hold ${h.id}`).toBeLessThanOrEqual(1);
  }

  // Grants: one per key; one GRANT entry each; at most one VOID; voided iff a void succeeded.
  const { rows: grants } = await pool.query(
    `SELECT g.account_id, g.idempotency_key, g.id, g.voided_at IS NOT NULL AS voided,
            (SELECT count(*) FROM ledger_entries l WHERE l.batch_id = b.id AND l.type = 'GRANT')::int AS grant_entries,
            (SELECT count(*) FROM ledger_entries l WHERE l.batch_id = b.id AND l.type = 'VOID')::int AS void_entries
       FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.account_id = ANY($1::uuid[])`,
    [ids],
  );
  for (const rec of soak.grants.values()) {
    const rows = grants.filter((g) => g.account_id === dbId(rec.accountId) && g.idempotency_key === rec.key);
    const what = `grant key ${rec.key}: answers ${JSON.stringify({ ids: [...rec.ids], codes: rec.codes })}`;
    expect(rec.ids.size, what).toBe(1);
    expect(rows, what).toHaveLength(1);
    expect(rows[0].id, what).toBe(dbId([...rec.ids][0]!));
  }
  expect(grants).toHaveLength(soak.grants.size);
  for (const g of grants) {
    expect(g.grant_entries, `grant ${g.id}`).toBe(1);
    expect(g.void_entries, `grant ${g.id}`).toBeLessThanOrEqual(1);
    expect(g.voided, `grant ${g.id}`).toBe([...soak.voidsOk].some((v) => dbId(v) === g.id));
  }

  // Per account: the invariant, nothing reserved, and the same Balance through both servers.
  const finals = new Map<string, { version: string; free: string; paid: string; reserved: string; debt: string }>();
  for (const accountId of accounts) {
    const balance = await expectLedgerInvariant(pool, dbId(accountId));
    expect(balance.reservedMicroCredits).toBe(0n);
    const [viaA, viaB] = await Promise.all(servers.map((s) => call(s, BALANCE, { id: accountId })));
    expect(viaA?.ok && viaB?.ok, JSON.stringify([viaA, viaB])).toBe(true);
    const a = (viaA as { data: any }).data.account.balance;
    const b = (viaB as { data: any }).data.account.balance;
    expect(b).toEqual(a);
    expect(a.reserved).toBe('0');
    expect(parseCredits(a.total)).toBe(balance.totalMicroCredits);
    finals.set(dbId(accountId), a);
  }

  // Every committed balance version published exactly once, the last one with the final figures.
  await publishedUpTo(finals);
  const { rows: pending } = await pool.query(`SELECT count(*)::int AS n FROM outbox_events WHERE account_id = ANY($1::uuid[])`, [ids]);
  expect(pending[0].n).toBe(0);
  for (const [id, final] of finals) {
    const seen = published.get(id)!;
    const versions = seen.map((p) => Number(p.version));
    expect(new Set(versions).size, `versions of ${id} published more than once: ${versions.join(',')}`).toBe(versions.length);
    const lowest = Math.min(...versions);
    // In commit order (one relay at a time drains the outbox: README "Live updates"), without gaps.
    expect(versions, `versions of ${id}`).toEqual(Array.from({ length: Number(final.version) - lowest + 1 }, (_, i) => lowest + i));
    expect(lowest, `the first version of ${id} published`).toBeLessThanOrEqual(2); // createAccount's, or the first grant's
    const last = seen[seen.length - 1]!;
    expect({ version: last.version, reserved: last.reserved, debt: last.debt }).toEqual({
      version: final.version,
      reserved: String(parseCredits(final.reserved)),
      debt: String(parseCredits(final.debt)),
    });
    // A hold sets credit aside: without voids (or expiries), no committed version ever had less
    // batch credit than its holds hold (free + paid >= reserved), whichever server charged.
    if (id !== dbId(accounts[0]!)) {
      for (const p of seen) expect(BigInt(p.free!) + BigInt(p.paid!) >= BigInt(p.reserved!), `version ${p.version} of ${id}: ${JSON.stringify(p)}`).toBe(true);
    }
  }
}

/** Resolves once each account's final version was published (woken by each message; fails after 10 s). */
function publishedUpTo(finals: Map<string, { version: string }>): Promise<void> {
  const done = () => [...finals].every(([id, f]) => (published.get(id) ?? []).some((p) => p.version === f.version));
  if (done()) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      publishWaiters.delete(wake);
      reject(new Error(`final balance versions not published: ${JSON.stringify([...finals].map(([id, f]) => [id, f.version, published.get(id)?.map((p) => p.version)]))}`));
    }, 10_000);
    const wake = () => {
      if (!done()) return;
      clearTimeout(timer);
      publishWaiters.delete(wake);
      resolve();
    };
    publishWaiters.add(wake);
  });
}

describe('two API servers on one database (randomized soak)', () => {
  it('charges, batches, holds, grants, voids and refunds sent to both servers at once: every key once, exact ledgers, equal balances, every version published once', async () => {
    const carriedBefore = servers.map((s) => s.services.groupCommit!.stats());
    await fc.assert(
      fc.asyncProperty(fc.integer(), async (seed) => {
        const { soak, accounts } = await soakRun(seed);
        await expectMoneyExact(soak, accounts);
      }),
      { numRuns: RUNS, seed: SEED, endOnFailure: true },
    );
    // The soak reached the path it is about: transactions decided from carried state, and
    // carried state the other server's commits made stale.
    const after = servers.map((s) => s.services.groupCommit!.stats());
    const carried = after.reduce((n, s, i) => n + s.carriedState - carriedBefore[i]!.carriedState, 0);
    const misses = after.reduce((n, s, i) => n + s.carriedStateMisses - carriedBefore[i]!.carriedStateMisses, 0);
    expect(carried).toBeGreaterThan(0);
    expect(misses).toBeGreaterThan(0);
  });
});
