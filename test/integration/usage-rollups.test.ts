/**
 * The usage rollups (hourly and monthly, kept by triggers on usage_events) give exactly what a
 * full scan of the events gives: usageSummary over random ranges (whole and partial hours) and
 * groupings, and usageHistory, with refunded events left out; also with events from every
 * writer (recordUsage, one recordUsageBatch INSERT spanning month and year boundaries, holds
 * captured and settled, debt), of every cost kind (free, BYOK platform fee, pass-through) and
 * before 1970, for every grouping, and taskCost's scan; and instants stored exactly in a server
 * process that does not run in UTC. Real PostgreSQL; fast-check.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MAX_DATE_TIME, MIN_DATE_TIME } from '../../src/graphql/input-values.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { rowsReadUnderGenericPlans } from '../setup/rows-read.js';
import { createFundedAccount } from '../factories/accounts.js';
import { recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { usageHistory, usageSummary, DIMENSION_COLUMNS, type UsageDimension } from '../../src/services/usage-summary.js';

let s: TestServices;
let accountId: string;
const T0 = Date.UTC(2026, 0, 1);
const SPAN_MS = 100 * 24 * 3_600_000; // about three months

beforeAll(async () => {
  s = createTestServices(8);
  accountId = await createFundedAccount(s, { paid: 1_000_000 });
  const rnd = fc.sample(
    fc.record({
      at: fc.integer({ min: 0, max: SPAN_MS - 1 }),
      kind: fc.constantFrom('unit', 'units', 'llm-mini', 'llm-other', 'free'),
      tier: fc.constantFrom(null, 'fast', 'smart'),
      units: fc.integer({ min: 1, max: 50 }),
    }),
    { numRuns: 400, seed: 4242 },
  );
  const ids: string[] = [];
  for (const [i, e] of rnd.entries()) {
    const base = { accountId, idempotencyKey: `r-${i}`, occurredAt: new Date(T0 + e.at), tier: e.tier };
    const input =
      e.kind === 'units'
        ? { ...base, category: 'units', quantities: { units: String(e.units) } }
        : e.kind.startsWith('llm')
          ? { ...base, category: 'llm', model: e.kind === 'llm-mini' ? 'gpt-4o-mini' : 'some-unknown-model', quantities: { inputTokens: e.units * 100, outputTokens: e.units * 10 } }
          : { ...base, category: e.kind };
    ids.push((await recordUsage(s, input)).eventId);
  }
  for (const id of ids.filter((_, i) => i % 7 === 3)) await refundUsage(s, id, 'test refund');
});

afterAll(async () => {
  await s.close();
});

async function fullScan(from: Date, to: Date, dims: UsageDimension[]) {
  const cols = dims.map((d) => DIMENSION_COLUMNS[d]);
  const { rows } = await s.pool.query(
    `SELECT ${cols.map((c) => c + ', ').join('')} SUM(cost_micro_credits)::text AS credits, COUNT(*)::int AS events
       FROM usage_events WHERE account_id = $1 AND refunded_at IS NULL AND occurred_at >= $2 AND occurred_at < $3
      ${cols.length ? 'GROUP BY ' + cols.join(', ') : ''}`,
    [accountId, from, to],
  );
  return rows
    .filter((r) => r.credits !== null)
    .map((r) => ({ category: r.category ?? null, tier: r.tier ?? null, model: r.model ?? null, credits: BigInt(r.credits), events: r.events }))
    .sort((a, b) => JSON.stringify([a.category, a.tier, a.model]).localeCompare(JSON.stringify([b.category, b.tier, b.model])));
}

describe('usage rollups', () => {
  it('usageSummary equals a full scan for random ranges and groupings', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: -3_600_000, max: SPAN_MS }),
        fc.integer({ min: 0, max: SPAN_MS }),
        fc.subarray(['CATEGORY', 'TIER', 'MODEL'] as UsageDimension[]),
        async (start, length, dims) => {
          const from = new Date(T0 + start);
          const to = new Date(T0 + start + length);
          const got = (await usageSummary(s.pool, accountId, { from, to }, dims))
            .map((r) => ({ category: r.category, tier: r.tier, model: r.model, credits: r.creditsMicroCredits, events: r.events }))
            .sort((a, b) => JSON.stringify([a.category, a.tier, a.model]).localeCompare(JSON.stringify([b.category, b.tier, b.model])));
          expect(got).toEqual(await fullScan(from, to, dims));
        },
      ),
      { numRuns: 60, seed: 7 },
    );
  });

  it('usageHistory equals a full scan month by month', async () => {
    const history = await usageHistory(s.pool, accountId, new Date(T0 + SPAN_MS), 5);
    for (const m of history) {
      const [y, mo] = m.month.split('-').map(Number);
      const from = new Date(Date.UTC(y!, mo! - 1, 1));
      const to = new Date(Date.UTC(y!, mo!, 1));
      const expected = await fullScan(from, to, ['CATEGORY']);
      const got = m.byCategory.map((r) => ({ category: r.category, tier: null, model: null, credits: r.creditsMicroCredits, events: r.events })).sort((a, b) => String(a.category).localeCompare(String(b.category)));
      expect(got).toEqual(expected);
      expect(m.totalMicroCredits).toBe(expected.reduce((x, r) => x + r.credits, 0n));
    }
    expect(history.some((m) => m.byCategory.length > 0)).toBe(true);
  });
});

/**
 * Every way an event reaches usage_events (recordUsage, a recordUsageBatch whose items span a
 * month and a year boundary in one INSERT, usage settled against a hold, usage beyond a hold that
 * becomes debt), every kind of cost (flat, per unit, free, per token, BYOK platform fee, pass
 * through), instants at UTC hour/month/year boundaries and before 1970, and refunds of each: the
 * rollup answers (usageSummary over whole hours, usageHistory) equal a full scan for every
 * grouping, and taskCost equals the task's scan.
 */
describe('usage rollups: every writer, cost kind and boundary', () => {
  let acct: string;
  /** Instants on and around UTC boundaries (ms), and ordinary ones in between. */
  const BOUNDARIES = [
    Date.UTC(2025, 11, 31, 23, 59, 59, 999), // last ms of a year
    Date.UTC(2026, 0, 1, 0, 0, 0, 0), // first ms of the next
    Date.UTC(2026, 0, 31, 23, 59, 59, 999),
    Date.UTC(2026, 1, 1, 0, 0, 0, 0),
    Date.UTC(2026, 1, 28, 23, 30),
    Date.UTC(2026, 2, 1, 0, 0, 0, 1),
    Date.UTC(1969, 11, 31, 23, 59, 59, 999), // before the epoch
    Date.UTC(1970, 0, 1, 0, 0, 0, 0),
    Date.UTC(2026, 0, 15, 12, 0, 0, 0), // on the hour
    Date.UTC(2026, 0, 15, 12, 59, 59, 999),
  ];
  const kinds = [
    (at: Date) => ({ category: 'unit', occurredAt: at }),
    (at: Date) => ({ category: 'unit', sku: 'half', occurredAt: at }),
    (at: Date) => ({ category: 'units', quantities: { units: '3.5' }, occurredAt: at }),
    (at: Date) => ({ category: 'free', occurredAt: at }),
    (at: Date) => ({ category: 'llm', model: 'gpt-4o-mini', tier: 'fast', quantities: { inputTokens: 1234, outputTokens: 56 }, occurredAt: at }),
    (at: Date) => ({ category: 'llm', model: 'gpt-4o-mini', tier: 'fast', byok: true, quantities: { inputTokens: 1234, outputTokens: 56 }, occurredAt: at }),
    (at: Date) => ({ category: 'passthrough', providerCostUsd: '0.0123', occurredAt: at }),
  ];
  const labels = (i: number) => ({ agentId: i % 3 === 0 ? null : `agent-${i % 3}`, userId: i % 4 === 0 ? null : `user-${i % 2}`, taskId: i % 5 === 0 ? null : `task-${i % 3}` });

  beforeAll(async () => {
    acct = await createFundedAccount(s, { paid: 10_000 });
    const refund: string[] = [];
    let n = 0;
    // One by one.
    for (const [i, at] of BOUNDARIES.entries()) {
      const r = await recordUsage(s, { accountId: acct, idempotencyKey: `one-${i}`, ...kinds[i % kinds.length]!(new Date(at)), ...labels(n++) });
      if (i % 3 === 1) refund.push(r.eventId);
    }
    // One batch (one INSERT) whose items span every boundary.
    const items = BOUNDARIES.flatMap((at, i) => kinds.map((k, j) => ({ accountId: acct, idempotencyKey: `batch-${i}-${j}`, ...k(new Date(at)), ...labels(n++) })));
    const results = await recordUsageBatch(s, items, { maxItems: 1000 });
    results.forEach((r, i) => {
      if (!r.ok) throw r.error;
      if (i % 4 === 2) refund.push(r.result.eventId);
    });
    // Usage captured against a hold, then settled with more usage than the hold (debt on a small account).
    const { reservationId } = await reserveCredits(s, { accountId: acct, amountMicroCredits: 5_000_000n, ttlSeconds: 600, idempotencyKey: 'hold-1' });
    await recordUsage(s, { accountId: acct, idempotencyKey: 'capture-1', reservationId, category: 'units', quantities: { units: '2' }, occurredAt: new Date(BOUNDARIES[0]!), ...labels(n++) });
    await settleReservation(s, reservationId, [
      { accountId: acct, idempotencyKey: 'settle-1', category: 'units', quantities: { units: '4' }, occurredAt: new Date(BOUNDARIES[1]!), ...labels(n++) },
    ]);
    const poor = await createFundedAccount(s, { paid: 1 });
    const hold = await reserveCredits(s, { accountId: poor, amountMicroCredits: 1_000_000n, ttlSeconds: 600, idempotencyKey: 'hold-poor' });
    const debt = await recordUsage(s, { accountId: poor, idempotencyKey: 'debt-1', reservationId: hold.reservationId, category: 'units', quantities: { units: '7' }, occurredAt: new Date(BOUNDARIES[3]!) });
    await refundUsage(s, debt.eventId, 'debt refund');
    for (const id of refund) await refundUsage(s, id, 'test refund');
  });

  async function scan(account: string, from: Date, to: Date, dims: UsageDimension[], taskId: string | null = null) {
    const cols = dims.map((d) => DIMENSION_COLUMNS[d]);
    const { rows } = await s.pool.query(
      `SELECT ${cols.map((c) => c + ', ').join('')} SUM(cost_micro_credits)::text AS credits, COUNT(*)::int AS events
         FROM usage_events WHERE account_id = $1 AND refunded_at IS NULL AND occurred_at >= $2 AND occurred_at < $3
          AND ($4::text IS NULL OR task_id = $4)
        ${cols.length ? 'GROUP BY ' + cols.join(', ') : ''}`,
      [account, from, to, taskId],
    );
    return normalize(rows.filter((r) => r.credits !== null).map((r) => ({ category: r.category ?? null, tier: r.tier ?? null, model: r.model ?? null, agentId: r.agent_id ?? null, userId: r.user_id ?? null, taskId: r.task_id ?? null, credits: BigInt(r.credits), events: r.events })));
  }
  type Row = { category: string | null; tier: string | null; model: string | null; agentId: string | null; userId: string | null; taskId: string | null; credits: bigint; events: number };
  const normalize = (rows: Row[]) => rows.sort((a, b) => JSON.stringify([a.category, a.tier, a.model, a.agentId, a.userId, a.taskId]).localeCompare(JSON.stringify([b.category, b.tier, b.model, b.agentId, b.userId, b.taskId])));
  const fromService = (rows: Awaited<ReturnType<typeof usageSummary>>) =>
    normalize(rows.map((r) => ({ category: r.category, tier: r.tier, model: r.model, agentId: r.agentId, userId: r.userId, taskId: r.taskId, credits: r.creditsMicroCredits, events: r.events })));

  it('usageSummary equals a full scan for ranges around each boundary and every grouping', async () => {
    const edges = [...BOUNDARIES, Date.UTC(1969, 0, 1), Date.UTC(2027, 0, 1)].flatMap((t) => [t - 3_600_000, t - 1, t, t + 1, t + 3_600_000]);
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...edges), fc.constantFrom(...edges), fc.subarray(Object.keys(DIMENSION_COLUMNS) as UsageDimension[]), async (a, b, dims) => {
        const from = new Date(Math.min(a, b));
        const to = new Date(Math.max(a, b));
        expect(fromService(await usageSummary(s.pool, acct, { from, to }, dims))).toEqual(await scan(acct, from, to, dims));
      }),
      { numRuns: 150, seed: 11 },
    );
  });

  it('the whole history in one range, by category, tier and model, equals a full scan', async () => {
    const from = new Date(Date.UTC(1960, 0, 1));
    const to = new Date(Date.UTC(2030, 0, 1));
    const dims: UsageDimension[] = ['CATEGORY', 'TIER', 'MODEL'];
    const got = fromService(await usageSummary(s.pool, acct, { from, to }, dims));
    expect(got).toEqual(await scan(acct, from, to, dims));
    expect(got.some((r) => r.credits === 0n && r.events > 0)).toBe(true); // free actions are counted
  });

  it('usageHistory equals a full scan month by month across a year boundary and before 1970', async () => {
    for (const [now, months] of [[new Date(Date.UTC(2026, 2, 10)), 4], [new Date(Date.UTC(1970, 0, 20)), 2]] as const) {
      const history = await usageHistory(s.pool, acct, now, months);
      expect(history.map((m) => m.month)).toEqual(
        Array.from({ length: months }, (_, i) => new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i, 1)).toISOString().slice(0, 7)),
      );
      for (const m of history) {
        const [y, mo] = m.month.split('-').map(Number);
        const expected = await scan(acct, new Date(Date.UTC(y!, mo! - 1, 1)), new Date(Date.UTC(y!, mo!, 1)), ['CATEGORY']);
        expect(fromService(m.byCategory)).toEqual(expected);
        expect(m.totalMicroCredits).toBe(expected.reduce((x, r) => x + r.credits, 0n));
        expect(expected.length).toBeGreaterThan(0);
      }
    }
  });

  it('the rollup tables hold no row that a scan does not give, and no refunded credit', async () => {
    const { rows } = await s.pool.query(
      `SELECT count(*)::int AS n FROM (
         SELECT hour, category, tier, model, credits_micro_credits, events FROM usage_rollups_hourly WHERE account_id = $1 AND events > 0
         EXCEPT
         SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', category, COALESCE(tier, ''), COALESCE(model, ''), SUM(cost_micro_credits), COUNT(*)
           FROM usage_events WHERE account_id = $1 AND refunded_at IS NULL GROUP BY 1, 2, 3, 4) x`,
      [acct],
    );
    expect(rows[0].n).toBe(0);
    const zero = await s.pool.query(`SELECT count(*)::int AS n FROM usage_rollups_hourly WHERE account_id = $1 AND events = 0 AND credits_micro_credits <> 0`, [acct]);
    expect(zero.rows[0].n).toBe(0);
  });
});

/**
 * Instants reach PostgreSQL exactly whatever the server process's time zone (TZ). node-postgres
 * writes a Date in the process's local time with its offset in whole minutes, so in a zone whose
 * offset then had seconds (local mean time before ~1900 almost everywhere; Africa/Monrovia until
 * 1972) the instant moved by those seconds: an event could land in another hour or month than
 * the one the client sent, and every range bound moved with it.
 */
describe('usage instants in a server process that does not run in UTC', () => {
  const zones: Array<[string, Date]> = [
    ['Asia/Kolkata', new Date(Date.UTC(1900, 0, 31, 23, 59, 55))], // +05:21:10 then: 10 s later, into February
    ['Africa/Monrovia', new Date(Date.UTC(1970, 0, 31, 23, 59, 50))], // -00:44:30 then: 30 s off
    ['America/New_York', new Date(Date.UTC(1850, 5, 30, 23, 59, 59))], // -04:56:02 then
    ['Europe/Dublin', new Date(Date.UTC(1900, 11, 31, 23, 59, 59, 999))], // -00:25:21 then
  ];
  for (const [zone, at] of zones) {
    it(`${zone}: an event keeps the occurredAt it was sent with, and its month and hour`, async () => {
      const account = await createFundedAccount(s, { paid: 10 });
      const before = process.env.TZ;
      process.env.TZ = zone;
      try {
        expect(at.getTimezoneOffset()).not.toBe(0); // the process really runs in that zone now
        const { eventId } = await recordUsage(s, { accountId: account, idempotencyKey: `tz-${zone}`, category: 'unit', occurredAt: at });
        const { rows } = await s.pool.query(`SELECT occurred_at, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') AS utc FROM usage_events WHERE id = $1`, [eventId]);
        expect(rows[0].utc).toBe(at.toISOString().slice(0, 23));
        expect((rows[0].occurred_at as Date).getTime()).toBe(at.getTime());
        const month = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1));
        const nextMonth = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1));
        const [history] = await usageHistory(s.pool, account, at, 1);
        expect(history!.totalMicroCredits).toBe(1_000_000n);
        // Whole hours from the rollup, the rest scanned: the event is in its month, and not after it.
        expect((await usageSummary(s.pool, account, { from: month, to: nextMonth }, ['CATEGORY']))[0]?.events).toBe(1);
        expect(await usageSummary(s.pool, account, { from: nextMonth, to: new Date(nextMonth.getTime() + 86_400_000) }, [])).toEqual([]);
      } finally {
        if (before === undefined) delete process.env.TZ;
        else process.env.TZ = before;
      }
    });
  }
});

describe('taskCost reads only the task\'s events', () => {
  it("a task filter is bounded by the (account, task) index under the ledger pool's generic plans, not by reading the account's events", async () => {
    // 1,200 events over 300 tasks on one account, then the filtered summaries of taskCost run on a
    // fresh ledger-pool connection, with PostgreSQL's own count of the rows read (rows-read.ts).
    const acct = await createFundedAccount(s, { paid: 1_000_000 });
    const inputs = Array.from({ length: 1200 }, (_, i) => ({ accountId: acct, idempotencyKey: `task-${i}`, category: 'unit', taskId: `t-${i % 300}` }));
    for (let i = 0; i < inputs.length; i += 400) {
      const results = await recordUsageBatch(s, inputs.slice(i, i + 400), { maxItems: 1000 });
      expect(results.every((r) => r.ok)).toBe(true);
    }
    await s.pool.query('ANALYZE usage_events');
    const all = { from: MIN_DATE_TIME, to: MAX_DATE_TIME }; // taskCost's range
    const read = await rowsReadUnderGenericPlans('usage_events', async (db) => {
      const [total] = await usageSummary(db, acct, all, [], { taskId: 't-7' });
      expect(total?.events).toBe(4);
      const byCategory = await usageSummary(db, acct, all, ['CATEGORY'], { taskId: 't-7' });
      expect(byCategory.map((r) => [r.category, r.events])).toEqual([['unit', 4]]);
    });
    // 12 statements of 4 rows each: 48 rows; reading the account's events would be 12 × 1,200.
    expect(read).toBeLessThanOrEqual(12 * 4 * 2);
  });
});
