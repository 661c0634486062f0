/**
 * The ledger invariant as a test assertion: for the account, the remaining credit of ACTIVE
 * batches minus debt equals the stored total, the ledger entries sum to it, nothing is negative,
 * and the Balance read agrees (available = total - reserved).
 */
import { expect } from 'vitest';
import type pg from 'pg';
import { reconcileAccount, readBalance } from '../../src/services/read-balance.js';

/** Asserts the invariant of one account and returns its balance view. */
export async function expectLedgerInvariant(pool: pg.Pool, accountId: string, now = new Date()) {
  const rec = await reconcileAccount(pool, accountId);
  expect(rec.batchRemainingMicroCredits - rec.debtMicroCredits).toBe(rec.totalMicroCredits);
  expect(rec.ledgerSumMicroCredits).toBe(rec.totalMicroCredits);
  expect(rec.budgetSpendMismatches).toBe(0); // kept budget spending equals the SUM it stands for
  expect(rec.refundCreditMismatches).toBe(0); // kept refund credit equals the REFUND entries into batches
  expect(rec.consistent).toBe(true);
  const { rows } = await pool.query(
    `SELECT COUNT(*)::int AS bad FROM credit_batches WHERE account_id = $1 AND (remaining_micro_credits < 0 OR remaining_micro_credits > allocated_micro_credits)`,
    [accountId],
  );
  expect(rows[0].bad).toBe(0);
  const balance = await readBalance(pool, accountId, now);
  expect(balance.availableMicroCredits).toBe(balance.totalMicroCredits - balance.reservedMicroCredits);
  expect(balance.reservedMicroCredits >= 0n).toBe(true);
  return balance;
}
