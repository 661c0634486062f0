/**
 * The usage rollups (hourly and monthly, kept by triggers on usage_events) give exactly what a
 * full scan of the events gives: usageSummary over random ranges (whole and partial hours) and
 * groupings, and usageHistory, with refunded events left out. Real PostgreSQL; fast-check.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { recordUsage } from '../../src/services/record-usage.js';
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
