/**
 * Regressions the plan commands of the ledger model (ledger-model.test.ts) stand for: the
 * ROLLOVER cap (README "Plans and billing cycles", "Refunds and voids") holds after a cancel, after
 * a switch to another plan, and for a late roll. Carried plan credit is trimmed as it stood at the
 * period start, and a refund after the roll (or after the switch) gives the balance a refund
 * before it gives.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { cancelSubscription, createPlan, rollBillingPeriods, subscribeToPlan, type PlanRecord } from '../../src/services/plans.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;
let capped: PlanRecord;
let reset: PlanRecord;
let uncapped: PlanRecord;
beforeAll(async () => {
  services = createTestServices(3);
  capped = await createPlan(services, { name: `rollover cap ${randomUUID()}`, monthlyMicroCredits: credits(100), rollover: 'ROLLOVER', rolloverCapMicroCredits: credits(50), priceUsd: '1' });
  reset = await createPlan(services, { name: `reset ${randomUUID()}`, monthlyMicroCredits: credits(10), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '1' });
  uncapped = await createPlan(services, { name: `rollover uncapped ${randomUUID()}`, monthlyMicroCredits: credits(10), rollover: 'ROLLOVER', rolloverCapMicroCredits: null, priceUsd: '1' });
});
afterEach(() => services.setNow(null));
afterAll(async () => {
  await services.close();
});

const spend = async (accountId: string, units: number) =>
  (await recordUsage(services, { accountId, idempotencyKey: randomUUID(), category: 'units', quantities: { units: String(units) } })).eventId;

describe('the ROLLOVER cap', () => {
  it('a refund after the roll and a cancel gives back only what the cap leaves room for, as a refund before the roll', async () => {
    const start = new Date('2026-09-01T00:00:00.000Z');
    const rollAt = new Date('2026-10-01T00:00:00.000Z');
    const [first, then] = [await createFundedAccount(services, { testClockStart: start }), await createFundedAccount(services, { testClockStart: start })];
    const events = new Map<string, string>();
    for (const id of [first, then]) {
      await subscribeToPlan(services, id, capped.id);
      events.set(id, await spend(id, 30)); // 70 left of the period's 100
    }
    await refundUsage(services, events.get(first)!, 'before the roll'); // 100, trimmed to 50 at the roll
    for (const id of [first, then]) {
      await advanceTestClock(services, id, rollAt); // 50 carried + 100 granted
      await cancelSubscription(services, id); // the credit stays, nothing rolls any more
    }
    await refundUsage(services, events.get(then)!, 'after the roll'); // the roll carried the cap already: no room
    const [a, b] = [await expectLedgerInvariant(services.pool, first, rollAt), await expectLedgerInvariant(services.pool, then, rollAt)];
    expect(a.availableMicroCredits).toBe(credits(150));
    expect(b.availableMicroCredits).toBe(a.availableMicroCredits);
  });

  it('a SUBSCRIPTION grant after the period start runs the late roll first: the roll trims only the credit that stood at the period start, not the grant', async () => {
    const start = new Date('2026-05-05T00:00:00.000Z');
    const late = new Date('2026-06-05T01:00:00.000Z'); // the period began at 06-05T00:00
    services.setNow(start);
    const [stepped, lagging] = [await createFundedAccount(services), await createFundedAccount(services)];
    for (const id of [stepped, lagging]) await subscribeToPlan(services, id, capped.id); // 100, above the cap of 50
    services.setNow(new Date('2026-06-05T00:00:00.000Z'));
    await rollBillingPeriods(services, stepped); // on time: 100 trimmed to 50, + 100
    services.setNow(late);
    for (const id of [stepped, lagging]) {
      await grantCredits(services, { accountId: id, amountMicroCredits: credits(40), type: 'PAID', source: 'SUBSCRIPTION', expiresAt: null, reference: null, idempotencyKey: randomUUID() });
    }
    // The grant ran the roll that was due first (grant-credits.ts), as on time: the job, an hour
    // late, finds nothing to do.
    expect(await rollBillingPeriods(services, lagging)).toEqual({ periodsRolled: 0 });
    const [a, b] = [await expectLedgerInvariant(services.pool, stepped, late), await expectLedgerInvariant(services.pool, lagging, late)];
    expect(a.availableMicroCredits).toBe(credits(190));
    expect(b.availableMicroCredits).toBe(a.availableMicroCredits);
  });

  // A switch starts a new period at its instant and the subscription row then describes the new
  // plan; the old plan's last roll still carried its credit over since the event, within its cap.
  it.each([
    { to: 'a RESET plan', plan: () => reset, grantedCredits: 10 },
    { to: 'a ROLLOVER plan without a cap', plan: () => uncapped, grantedCredits: 10 },
    { to: 'the same capped plan again after a cancel', plan: () => capped, grantedCredits: 100, cancelFirst: true },
  ])('a refund after switching to $to gives back only what the old plan\'s last roll left room for, as a refund before the roll or the switch', async ({ plan, grantedCredits, cancelFirst }) => {
    const start = new Date('2026-09-01T00:00:00.000Z');
    const rollAt = new Date('2026-10-01T00:00:00.000Z');
    const switchAt = new Date('2026-10-10T00:00:00.000Z');
    const accounts = { beforeRoll: '', beforeSwitch: '', afterSwitch: '' };
    const events = new Map<string, string>();
    for (const key of Object.keys(accounts) as (keyof typeof accounts)[]) {
      const id = await createFundedAccount(services, { testClockStart: start });
      accounts[key] = id;
      await subscribeToPlan(services, id, capped.id);
      events.set(id, await spend(id, 30)); // 70 left of the period's 100
    }
    await refundUsage(services, events.get(accounts.beforeRoll)!, 'before the roll'); // 100, trimmed to 50 at the roll
    for (const id of Object.values(accounts)) await advanceTestClock(services, id, rollAt); // 50 carried + 100 granted
    await refundUsage(services, events.get(accounts.beforeSwitch)!, 'before the switch'); // the roll carried the cap already: no room
    for (const id of Object.values(accounts)) {
      await advanceTestClock(services, id, switchAt);
      if (cancelFirst) await cancelSubscription(services, id);
      const view = await subscribeToPlan(services, id, plan().id); // a new period from switchAt, its credit granted
      expect(view.currentPeriodStart).toEqual(switchAt);
    }
    await refundUsage(services, events.get(accounts.afterSwitch)!, 'after the switch'); // still no room
    // The old plan's credit stays after the switch (it never expires by itself): 50 carried + 100.
    const expected = credits(150 + grantedCredits);
    for (const id of Object.values(accounts)) {
      expect((await expectLedgerInvariant(services.pool, id, switchAt)).availableMicroCredits).toBe(expected);
    }
  });
});
