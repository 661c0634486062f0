/**
 * Billing periods: the TypeScript definition (src/ledger/billing-period.ts monthlyPeriodAt, used
 * by plan rolls, subscriptions and Balance) and the SQL one (function billing_period, used by
 * balances_changed for alerts and top-ups, by the roll sweep and by test clocks) must name the
 * same period for every anchor and instant, and consecutive periods must tile time: each starts
 * exactly where the previous ended, for anchors on the 29th, 30th and 31st across February of
 * leap (2028) and other years. Real PostgreSQL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createTestServices, type TestServices } from '../setup/services.js';
import { monthlyPeriodAt } from '../../src/ledger/billing-period.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(2);
});

afterAll(async () => {
  await services.close();
});

/** billing_period(anchor, now) for many pairs in one round trip. */
async function sqlPeriods(pairs: Array<[Date, Date]>): Promise<Array<{ start: Date; end: Date }>> {
  const { rows } = await services.pool.query(
    `SELECT p.period_start AS start, p.period_end AS "end"
       FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS x(anchor, now, i),
            LATERAL billing_period(x.anchor, x.now) p
      ORDER BY x.i`,
    [pairs.map((p) => p[0]), pairs.map((p) => p[1])],
  );
  return rows as Array<{ start: Date; end: Date }>;
}

const MIN = Date.UTC(2024, 0, 1);
const MAX = Date.UTC(2032, 0, 1);
/** Instants biased to month ends and the 28th..31st (where clamping happens), at any time of day. */
const instant = fc.oneof(
  fc.integer({ min: MIN, max: MAX }).map((t) => new Date(t)),
  fc
    .record({ y: fc.integer({ min: 2024, max: 2031 }), m: fc.integer({ min: 0, max: 11 }), d: fc.integer({ min: 27, max: 31 }), ms: fc.integer({ min: 0, max: 86_400_000 - 1 }) })
    .map(({ y, m, d, ms }) => new Date(Date.UTC(y, m, Math.min(d, new Date(Date.UTC(y, m + 1, 0)).getUTCDate())) + ms)),
  fc.record({ y: fc.integer({ min: 2024, max: 2031 }), m: fc.integer({ min: 0, max: 11 }) }).map(({ y, m }) => new Date(Date.UTC(y, m, 1))),
);

describe('billing periods', () => {
  it('TS monthlyPeriodAt and SQL billing_period agree, and the period contains now (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(instant, instant), { minLength: 1, maxLength: 200 }), async (pairs) => {
        const sql = await sqlPeriods(pairs);
        pairs.forEach(([anchor, now], i) => {
          const ts = monthlyPeriodAt(anchor, now);
          expect({ anchor, now, start: sql[i]!.start, end: sql[i]!.end }).toEqual({ anchor, now, start: ts.start, end: ts.end });
          if (now.getTime() >= anchor.getTime()) {
            expect(ts.start.getTime()).toBeLessThanOrEqual(now.getTime());
            expect(now.getTime()).toBeLessThan(ts.end.getTime());
          }
        });
      }),
      { numRuns: 60 },
    );
  });

  it('periods of anchors on the 28th..31st tile four years without gap, overlap or drift (leap 2028 and not)', async () => {
    const anchors: Date[] = [];
    for (const y of [2026, 2027, 2028]) for (const m of [0, 1, 2, 7, 11]) for (const d of [28, 29, 30, 31]) {
      const last = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
      if (d <= last) anchors.push(new Date(Date.UTC(y, m, d, 13, 7, 5, 250)));
    }
    for (const anchor of anchors) {
      let period = monthlyPeriodAt(anchor, anchor);
      expect(period.start).toEqual(anchor);
      const walk: Array<{ start: Date; end: Date }> = [period];
      for (let i = 1; i <= 48; i++) {
        const next = monthlyPeriodAt(anchor, period.end);
        expect(next.start).toEqual(period.end); // no gap, no overlap
        // No drift: each start is the anchor's day of month, or the month's last day when shorter.
        const last = new Date(Date.UTC(next.start.getUTCFullYear(), next.start.getUTCMonth() + 1, 0)).getUTCDate();
        expect(next.start.getUTCDate()).toBe(Math.min(anchor.getUTCDate(), last));
        expect(next.start.getUTCHours() * 3_600_000 + next.start.getUTCMinutes() * 60_000 + next.start.getUTCSeconds() * 1000 + next.start.getUTCMilliseconds())
          .toBe(anchor.getUTCHours() * 3_600_000 + anchor.getUTCMinutes() * 60_000 + anchor.getUTCSeconds() * 1000 + anchor.getUTCMilliseconds());
        // The instant just before a boundary is in the previous period.
        expect(monthlyPeriodAt(anchor, new Date(period.end.getTime() - 1))).toEqual(period);
        walk.push(next);
        period = next;
      }
      // SQL names the same periods at each start and at the last millisecond of each.
      const probes: Array<[Date, Date]> = walk.flatMap((p) => [[anchor, p.start], [anchor, new Date(p.end.getTime() - 1)]] as Array<[Date, Date]>);
      const sql = await sqlPeriods(probes);
      walk.forEach((p, i) => {
        expect(sql[2 * i]).toEqual(p);
        expect(sql[2 * i + 1]).toEqual(p);
      });
    }
  });
});
