/**
 * Configuration changing while charges run, on the real PostgreSQL, in deterministic
 * interleavings: a separate connection holds the account's balance row lock, the change and the
 * charges queue behind it in a known order (seen as lock waiters in pg_stat_activity), then the
 * lock is let go. After each race the ledger invariant is checked.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, lockWaiters, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage } from '../../src/services/record-usage.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { credits } from '../../src/ledger/credits.js';
import { LedgerError } from '../../src/ledger/errors.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(20);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
});

/**
 * Runs `queued` in order while a separate connection holds `accountId`'s balance row lock, each
 * one started only once the previous ones wait for that lock, then lets the lock go.
 * @returns the settled results of `queued`, in order.
 */
async function behindLock(accountId: string, queued: (() => Promise<unknown>)[]): Promise<PromiseSettledResult<unknown>[]> {
  const blocker = await s.pool.connect();
  const started: Promise<unknown>[] = [];
  try {
    await blocker.query('BEGIN');
    await blocker.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
    for (const [i, run] of queued.entries()) {
      const p = run();
      p.catch(() => undefined);
      started.push(p);
      await lockWaiters(s.pool, i + 1);
    }
    await blocker.query('COMMIT');
  } finally {
    blocker.release();
  }
  return Promise.allSettled(started);
}

const codeOf = (r: PromiseSettledResult<unknown>) =>
  r.status === 'fulfilled' ? 'OK' : r.reason instanceof LedgerError ? r.reason.code : `UNEXPECTED: ${String(r.reason)}`;

describe('a plan subscription (a new billing anchor) committed while a charge waited for the account', () => {
  const before = new Date(Date.UTC(2026, 4, 2, 9, 0, 0));
  const switched = new Date(Date.UTC(2026, 4, 12, 9, 0, 0));

  for (const path of ['one transaction per charge', 'group commit'] as const) {
    it(`${path}: the charge is decided in the period the subscription started (its budget re-armed), not the old one`, async () => {
      s.setNow(before);
      const accountId = await createFundedAccount(s, { paid: 100 });
      await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'a', limitMicroCredits: credits(5) });
      await recordUsage(s, { accountId, idempotencyKey: 'old', category: 'units', quantities: { units: '4' }, agentId: 'a' });
      const plan = await createPlan(s, { name: `race-anchor-${accountId}`, monthlyMicroCredits: credits(1), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '0' });
      const local = path === 'group commit' ? { ...s, groupCommit: new GroupCommitter(s.pool, s.clock, chargeAccounts, applyCharge) } : s;
      s.setNow(switched);
      const results = await behindLock(accountId, [
        () => subscribeToPlan(s, accountId, plan.id),
        () => recordUsage(local, { accountId, idempotencyKey: 'new', category: 'units', quantities: { units: '3' }, agentId: 'a' }),
      ]);
      // The new period starts at the subscription: the 4 credits before it no longer count.
      expect(results.map(codeOf)).toEqual(['OK', 'OK']);
      const { rows } = await s.pool.query(
        `SELECT period_start, spent_micro_credits::text AS spent FROM budget_spend WHERE account_id = $1 ORDER BY period_start`,
        [accountId],
      );
      expect(rows).toEqual([{ period_start: switched, spent: credits(3).toString() }]);
      s.setNow(new Date(switched.getTime() + 1000));
      await expectLedgerInvariant(s.pool, accountId, new Date(switched.getTime() + 1000));
    });
  }
});
