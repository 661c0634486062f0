/**
 * Billing cycles audit: what a charge sees in the instants after a plan's period boundary, before
 * any worker has rolled the plan (its `roll-period` job not run yet: BullMQ's delay, a busy or
 * stopped workers process). The new period has begun for every rule (a RESET allowance stops
 * paying at its expiresAt, alerts and budgets count the new period), so the charge must see the
 * new period's allowance too: it rolls the due period first, in its own transaction, as
 * subscribeToPlan and cancelSubscription do. Both charge paths (a transaction per charge, and
 * the group committer with its carried state). Real PostgreSQL, services called directly, the
 * wall clock set by the test (no worker runs).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { createPlan, subscribeToPlan, rollBillingPeriods } from '../../src/services/plans.js';
import { applyCharge, chargeAccounts, recordUsage } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { readBalance, reconcileAccount } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';
import { monthlyPeriodAt } from '../../src/ledger/billing-period.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(4);
});

afterAll(async () => {
  await services.close();
});

const MINUTE = 60_000;

async function plan(rollover: 'RESET' | 'ROLLOVER', monthly: number, cap: number | null = null) {
  return createPlan(services, { name: `audit-${randomUUID()}`, monthlyMicroCredits: credits(monthly), rollover, rolloverCapMicroCredits: cap === null ? null : credits(cap), priceUsd: '10' });
}

function spend(ctx: ServiceContext, accountId: string, units: number) {
  return recordUsage(ctx, { accountId, idempotencyKey: `u-${randomUUID()}`, category: 'units', quantities: { units: String(units) } });
}

async function batches(accountId: string) {
  const { rows } = await services.pool.query(
    `SELECT source::text, status::text, remaining_micro_credits::text AS remaining, expires_at FROM credit_batches WHERE account_id = $1 ORDER BY added_at, source`,
    [accountId],
  );
  return rows as Array<{ source: string; status: string; remaining: string; expires_at: Date | null }>;
}

async function alerts(accountId: string) {
  const { rows } = await services.pool.query(`SELECT period_start, threshold FROM credit_alerts WHERE account_id = $1 ORDER BY period_start, threshold DESC`, [accountId]);
  return rows as Array<{ period_start: Date; threshold: number }>;
}

/** The two charge paths: a transaction per charge, and the group committer (carried state on). */
const paths: Array<{ path: string; ctx: () => ServiceContext }> = [
  { path: 'naive', ctx: () => services },
  { path: 'group', ctx: () => ({ ...services, groupCommit: new GroupCommitter(services.pool, services.clock, chargeAccounts, applyCharge, { maxTransactions: 1 }) }) },
];

describe('a charge just after a period boundary, before the roll job ran', () => {
  it.each(paths)('$path: a RESET plan\'s new allowance pays (not refused, not taken from a purchased pack)', async ({ ctx: makeCtx }) => {
    const ctx = makeCtx();
    const anchor = new Date('2026-01-31T10:00:00.000Z'); // month-end anchor: the boundary is Feb 28
    services.setNow(new Date(anchor.getTime() - MINUTE));
    try {
      const p = await plan('RESET', 50);
      const id = await createFundedAccount(services, { paid: 100 }); // a purchased, never-expiring pack
      services.setNow(anchor);
      await subscribeToPlan(services, id, p.id);
      await spend(ctx, id, 10); // from the plan's credit (it expires first)
      // One minute after the boundary; no worker ran.
      const boundary = new Date('2026-02-28T10:00:00.000Z');
      services.setNow(new Date(boundary.getTime() + MINUTE));
      await spend(ctx, id, 30);
      const after = await batches(id);
      // The pack is untouched: the new period's allowance paid.
      expect(after.filter((b) => b.source === 'PURCHASE')).toEqual([{ source: 'PURCHASE', status: 'ACTIVE', remaining: String(credits(100)), expires_at: null }]);
      expect(after.filter((b) => b.source === 'SUBSCRIPTION').map((b) => [b.status, b.remaining, b.expires_at])).toEqual([
        ['EXPIRED', '0', boundary],
        ['ACTIVE', String(credits(20)), new Date('2026-03-31T10:00:00.000Z')],
      ]);
      // The job, when it runs, finds nothing left to roll: one grant per period.
      expect(await rollBillingPeriods(services, id)).toEqual({ periodsRolled: 0 });
      const { rows } = await services.pool.query(`SELECT count(*)::int AS n FROM credit_grants WHERE account_id = $1 AND source = 'SUBSCRIPTION'`, [id]);
      expect(rows[0].n).toBe(2);
      expect((await reconcileAccount(services.pool, id)).consistent).toBe(true);
    } finally {
      services.setNow(null);
    }
  });

  it.each(paths)('$path: a RESET plan alone: the first charge of the new period is not refused', async ({ ctx: makeCtx }) => {
    const ctx = makeCtx();
    const anchor = new Date('2028-01-29T00:00:00.000Z'); // leap year: the boundary is Feb 29
    services.setNow(anchor);
    try {
      const p = await plan('RESET', 50);
      const id = await createFundedAccount(services, {});
      await subscribeToPlan(services, id, p.id);
      await spend(ctx, id, 50); // the whole first allowance
      services.setNow(new Date('2028-02-29T00:00:00.001Z'));
      await spend(ctx, id, 5);
      const bal = await readBalance(services.pool, id, services.clock());
      expect(bal.periodStart).toEqual(new Date('2028-02-29T00:00:00.000Z'));
      expect(bal.availableMicroCredits).toBe(credits(45));
      expect(bal.periodMicroCredits).toBe(credits(50));
      // So is a hold.
      await reserveCredits(ctx, { accountId: id, amountMicroCredits: credits(40), ttlSeconds: 60, idempotencyKey: `h-${randomUUID()}` });
      expect((await reconcileAccount(services.pool, id)).consistent).toBe(true);
    } finally {
      services.setNow(null);
    }
  });

  it.each(paths)('$path: a capped ROLLOVER plan: no credit alert from a period that has not been granted yet', async ({ ctx: makeCtx }) => {
    const ctx = makeCtx();
    const anchor = new Date('2026-03-15T12:00:00.000Z');
    services.setNow(anchor);
    try {
      const p = await plan('ROLLOVER', 100, 40);
      const id = await createFundedAccount(services, {});
      await subscribeToPlan(services, id, p.id);
      await spend(ctx, id, 80); // 20 left: the first period's 25 % alert
      // The first charge carries its state to the next; the boundary passes between them.
      services.setNow(new Date('2026-04-15T12:00:00.000Z'));
      await spend(ctx, id, 15); // 5 + 100 of 120 in the new period: no alert there
      const bal = await readBalance(services.pool, id, services.clock());
      expect(bal.availableMicroCredits).toBe(credits(105));
      expect(bal.periodMicroCredits).toBe(credits(120));
      expect(await alerts(id)).toEqual([{ period_start: anchor, threshold: 25 }]);
      expect((await reconcileAccount(services.pool, id)).consistent).toBe(true);
    } finally {
      services.setNow(null);
    }
  });
});

describe('the roll made by a charge and by the job at once', () => {
  it.each(paths)('$path: concurrent charges, holds and roll jobs after the boundary grant the period once; a replay rolls nothing', async ({ ctx: makeCtx }) => {
    const ctx = makeCtx();
    const anchor = new Date('2027-01-31T23:59:59.999Z');
    services.setNow(anchor);
    try {
      const p = await plan('RESET', 100);
      const id = await createFundedAccount(services, {});
      await subscribeToPlan(services, id, p.id);
      const first = { accountId: id, idempotencyKey: `u-${randomUUID()}`, category: 'units', quantities: { units: '1' } };
      await recordUsage(ctx, first);
      services.setNow(new Date('2027-02-28T23:59:59.999Z')); // the boundary itself (clamped month end)
      // A replay of an event recorded before the boundary answers as first and rolls nothing.
      const versionBefore = (await readBalance(services.pool, id, services.clock())).version;
      expect((await recordUsage(ctx, first)).replayed).toBe(true);
      expect((await readBalance(services.pool, id, services.clock())).version).toBe(versionBefore);
      const outcomes = await Promise.allSettled([
        ...Array.from({ length: 6 }, () => spend(ctx, id, 10)),
        reserveCredits(ctx, { accountId: id, amountMicroCredits: credits(20), ttlSeconds: 60, idempotencyKey: `h-${randomUUID()}` }),
        rollBillingPeriods(services, id),
        rollBillingPeriods(services, id),
      ]);
      expect(outcomes.map((o) => o.status)).toEqual(Array(9).fill('fulfilled'));
      const { rows } = await services.pool.query(
        `SELECT created_at, amount_micro_credits::text AS amount FROM credit_grants WHERE account_id = $1 AND source = 'SUBSCRIPTION' ORDER BY created_at`,
        [id],
      );
      expect(rows.map((r) => r.created_at)).toEqual([anchor, new Date('2027-02-28T23:59:59.999Z')]);
      const bal = await readBalance(services.pool, id, services.clock());
      expect(bal.availableMicroCredits).toBe(credits(100 - 60 - 20));
      expect((await reconcileAccount(services.pool, id)).consistent).toBe(true);
    } finally {
      services.setNow(null);
    }
  });
});

describe('billing periods of anchors in years 0001..0099 (a test clock may start there)', () => {
  it('TS monthlyPeriodAt names the period SQL billing_period names, and it contains now', async () => {
    const pairs: Array<[Date, Date]> = [];
    for (const anchor of ['0001-01-31T10:00:00.000Z', '0004-01-30T00:00:00.000Z', '0050-03-31T23:59:59.999Z', '0099-12-31T12:00:00.000Z']) {
      const a = new Date(anchor);
      for (const days of [0, 1, 29, 31, 45, 400]) pairs.push([a, new Date(a.getTime() + days * 86_400_000)]);
    }
    const { rows } = await services.pool.query(
      `SELECT p.period_start AS start, p.period_end AS "end"
         FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS x(anchor, now, i), LATERAL billing_period(x.anchor, x.now) p ORDER BY x.i`,
      [pairs.map((p) => p[0]), pairs.map((p) => p[1])],
    );
    pairs.forEach(([anchor, now], i) => {
      const ts = monthlyPeriodAt(anchor, now);
      expect({ anchor, now, ...ts }).toEqual({ anchor, now, start: rows[i].start, end: rows[i].end });
      expect(ts.start.getTime() <= now.getTime() && now.getTime() < ts.end.getTime()).toBe(true);
    });
  });
});
