/**
 * Agent and user budgets on the real PostgreSQL (issue #5): concurrency under the account lock,
 * holds counted while they hold, and re-arming at the next billing period (moving the clock).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { listBudgets, setSpendingBudget } from '../../src/services/spending-budgets.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(20);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
});

const codes = (results: PromiseSettledResult<unknown>[]) =>
  results.map((r) => (r.status === 'fulfilled' ? 'OK' : r.reason instanceof LedgerError ? r.reason.code : String(r.reason)));

describe('spending budgets', () => {
  it('100 concurrent 1-credit charges against a budget of 30: exactly 30 succeed', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 1000 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-x', limitMicroCredits: credits(30) });
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) => recordUsage(s, { accountId, idempotencyKey: `b-${i}`, category: 'unit', agentId: 'agent-x' })),
    );
    const c = codes(results);
    expect(c.filter((x) => x === 'OK')).toHaveLength(30);
    expect(c.filter((x) => x === 'BUDGET_EXCEEDED')).toHaveLength(70);
    const [budget] = await listBudgets(s.pool, accountId, new Date(), 'AGENT');
    expect(budget?.spentMicroCredits).toBe(credits(30));
    // Another agent of the same pool is not limited by agent-x's budget.
    await recordUsage(s, { accountId, idempotencyKey: 'other', category: 'unit', agentId: 'agent-y' });
    const b = await expectLedgerInvariant(s.pool, accountId);
    expect(b.totalMicroCredits).toBe(credits(1000 - 31));
  });

  it('a hold counts against the budget while it holds, and frees it when released', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'member-1', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(s, { accountId, amountMicroCredits: credits(8), ttlSeconds: 600, idempotencyKey: 'h1', userId: 'member-1' });
    await expect(reserveCredits(s, { accountId, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: 'h2', userId: 'member-1' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    await expect(recordUsage(s, { accountId, idempotencyKey: 'u1', category: 'units', quantities: { units: '3' }, userId: 'member-1' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    await recordUsage(s, { accountId, idempotencyKey: 'u2', category: 'units', quantities: { units: '2' }, userId: 'member-1' });
    await releaseReservation(s, hold.reservationId);
    await recordUsage(s, { accountId, idempotencyKey: 'u3', category: 'units', quantities: { units: '8' }, userId: 'member-1' });
    const [budget] = await listBudgets(s.pool, accountId, new Date(), 'USER');
    expect(budget?.spentMicroCredits).toBe(credits(10));
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('re-arms at the next billing period', async () => {
    const created = new Date(Date.UTC(2026, 0, 31, 10, 0, 0));
    s.setNow(created);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: credits(5) });
    await recordUsage(s, { accountId, idempotencyKey: 'p1', category: 'units', quantities: { units: '5' }, agentId: 'a' });
    // The period that started Jan 31 10:00 ends Feb 28 10:00 (the month is shorter): one ms before, still spent.
    s.setNow(new Date(Date.UTC(2026, 1, 28, 9, 59, 59, 999)));
    await expect(recordUsage(s, { accountId, idempotencyKey: 'p2', category: 'unit', agentId: 'a' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    const nextPeriod = new Date(Date.UTC(2026, 1, 28, 10, 0, 0));
    s.setNow(nextPeriod);
    expect((await listBudgets(s.pool, accountId, nextPeriod, 'AGENT'))[0]?.spentMicroCredits).toBe(0n);
    await recordUsage(s, { accountId, idempotencyKey: 'p3', category: 'units', quantities: { units: '5' }, agentId: 'a' });
    await expect(recordUsage(s, { accountId, idempotencyKey: 'p4', category: 'unit', agentId: 'a' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    await expectLedgerInvariant(s.pool, accountId, nextPeriod);
  });

  it('removing a budget (null limit) lifts the limit', async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, { paid: 10 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: 0n });
    await expect(recordUsage(s, { accountId, idempotencyKey: 'x1', category: 'unit', agentId: 'a' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    expect(await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: null })).toBeNull();
    await recordUsage(s, { accountId, idempotencyKey: 'x2', category: 'unit', agentId: 'a' });
    expect(await listBudgets(s.pool, accountId, new Date())).toEqual([]);
  });
});
