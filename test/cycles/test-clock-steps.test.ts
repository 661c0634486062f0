/**
 * advanceTestClock over many billing periods in one call equals the same span in many small
 * steps: the same ledger (types, amounts, dates), the same plan grants (one per period, each
 * starting where the previous ended), the same alerts (once per threshold and period), the same
 * batch states. Anchors on the 29th, 30th and 31st across February of a leap year (2028) and of
 * others, RESET and capped ROLLOVER plans, a FREE batch expiring exactly at a period boundary and
 * usage at the same instants on every account. Real PostgreSQL, services called directly.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { readBalance, reconcileAccount } from '../../src/services/read-balance.js';
import { addMonthsClamped, monthlyPeriodAt } from '../../src/ledger/billing-period.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(4);
});

afterAll(async () => {
  await services.close();
});

/** What must be the same however the clock was advanced (ids and wall-clock columns left out). */
async function history(accountId: string) {
  const q = async (sql: string) => (await services.pool.query(sql, [accountId])).rows;
  return {
    ledger: await q(`SELECT type::text, amount_micro_credits::text AS amount, created_at FROM ledger_entries WHERE account_id = $1 AND type NOT IN ('RESERVE', 'RELEASE') ORDER BY created_at, type, amount_micro_credits`),
    grants: await q(`SELECT g.source::text, g.amount_micro_credits::text AS amount, g.created_at, b.expires_at FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.account_id = $1 ORDER BY g.created_at, g.source, g.amount_micro_credits`),
    batches: await q(`SELECT source::text, status::text, remaining_micro_credits::text AS remaining, expires_at FROM credit_batches WHERE account_id = $1 ORDER BY added_at, source, expires_at`),
    alerts: await q(`SELECT period_start, threshold, percent_remaining::text AS pct, available_micro_credits::text AS available FROM credit_alerts WHERE account_id = $1 ORDER BY period_start, threshold DESC`),
    balance: (await q(`SELECT total_micro_credits::text AS total, debt_micro_credits::text AS debt FROM balances WHERE account_id = $1`))[0],
    figures: await readBalance(services.pool, accountId, new Date()).then((b) => [b.periodStart, b.periodEnd, b.periodMicroCredits, b.percentRemaining, b.availableMicroCredits]),
  };
}

type History = Awaited<ReturnType<typeof history>>;

/** Spends `percent` % of what is available now (the test price book's `units`: 1 credit per unit). */
async function spendPercent(accountId: string, percent: bigint) {
  const available = (await readBalance(services.pool, accountId, new Date())).availableMicroCredits;
  const micro = (available * percent) / 100n;
  const units = `${micro / 1_000_000n}.${String(micro % 1_000_000n).padStart(6, '0')}`;
  await recordUsage(services, { accountId, idempotencyKey: `s-${randomUUID()}`, category: 'units', quantities: { units } });
}

describe('advanceTestClock: one call over 14 months equals many small steps', () => {
  const cases: Array<{ anchor: string; rollover: 'RESET' | 'ROLLOVER' }> = [];
  for (const anchor of ['2028-01-29T10:00:00.000Z', '2028-01-30T10:00:00.000Z', '2028-01-31T10:00:00.000Z', '2027-01-29T10:00:00.000Z', '2027-01-31T10:00:00.000Z', '2027-12-31T23:59:59.999Z']) {
    for (const rollover of ['RESET', 'ROLLOVER'] as const) cases.push({ anchor, rollover });
  }

  it.each(cases)('anchor $anchor, $rollover', async ({ anchor, rollover }) => {
    const start = new Date(anchor);
    const plan = await createPlan(services, {
      name: `steps-${randomUUID()}`,
      monthlyMicroCredits: credits(100),
      rollover,
      rolloverCapMicroCredits: rollover === 'ROLLOVER' ? credits(40) : null,
      priceUsd: '10',
    });
    // FREE credit expiring exactly at the end of the second period (a boundary).
    const freeExpiresAt = addMonthsClamped(start, 2);
    // Funded an hour before the anchor: batches added at one instant are drawn in id order, which
    // would differ between the accounts.
    const ids = await Promise.all(['one', 'monthly', 'daily'].map(() => createFundedAccount(services, { free: 30, freeExpiresAt, paid: 20, testClockStart: new Date(start.getTime() - 3_600_000) })));
    for (const id of ids) {
      await advanceTestClock(services, id, start);
      await subscribeToPlan(services, id, plan.id);
    }
    // The same usage at the same instants on every account; between them each advances its own way.
    const stops = [addMonthsClamped(start, 5), new Date(addMonthsClamped(start, 9).getTime() + 3 * 86_400_000), addMonthsClamped(start, 14)];
    const spends = [80n, 90n, 100n]; // down to 20 % (the 25 % alert), 10 % (25, 15), 0 (all three)
    let from = start;
    for (let s = 0; s < stops.length; s++) {
      const to = stops[s]!;
      for (const id of ids) await spendPercent(id, spends[s]!);
      await advanceTestClock(services, ids[0]!, to);
      // Month by month: to each period end (the roll instants), then `to`.
      for (let at = monthlyPeriodAt(start, from).end; at.getTime() <= to.getTime(); at = monthlyPeriodAt(start, at).end) await advanceTestClock(services, ids[1]!, at);
      await advanceTestClock(services, ids[1]!, to);
      // Every 5 days, past and around the boundaries.
      for (let t = from.getTime() + 5 * 86_400_000; t < to.getTime(); t += 5 * 86_400_000) await advanceTestClock(services, ids[2]!, new Date(t));
      await advanceTestClock(services, ids[2]!, to);
      from = to;
    }
    const [one, monthly, daily] = (await Promise.all(ids.map(history))) as [History, History, History];
    expect(monthly).toEqual(one);
    expect(daily).toEqual(one);
    // Fourteen periods after the first, each granted once, each starting where the previous ended.
    const planGrants = one.grants.filter((g: any) => g.source === 'SUBSCRIPTION');
    expect(planGrants).toHaveLength(15);
    planGrants.forEach((g: any, i: number) => {
      expect(g.created_at).toEqual(addMonthsClamped(start, i));
      if (rollover === 'RESET') expect(g.expires_at).toEqual(addMonthsClamped(start, i + 1));
    });
    // Alerts: once per threshold reached, in the period of the usage that reached it.
    expect(one.alerts.map((a: any) => [a.period_start, a.threshold])).toEqual([
      [start, 25],
      [addMonthsClamped(start, 5), 25],
      [addMonthsClamped(start, 5), 15],
      [addMonthsClamped(start, 9), 25],
      [addMonthsClamped(start, 9), 15],
      [addMonthsClamped(start, 9), 0],
    ]);
    for (const id of ids) expect((await reconcileAccount(services.pool, id)).consistent).toBe(true);
  });
});
