/**
 * Shared checks of account statements (README "Statements") for the statement tests
 * (account-statement.test.ts, statement-audit.test.ts): the reconciliation identity, a statement
 * read from either end of the ledger (which must agree) and every statement of an account in a
 * row, and a test clock moved without running anything due.
 */
import { expect } from 'vitest';
import type pg from 'pg';
import { readAccountStatement, statementMovementsMicroCredits, type AccountStatement } from '../../src/services/account-statement.js';

/** Moves the account's test clock to `at` without running anything due (as if no worker came by). */
export async function setTestClock(pool: pg.Pool, accountId: string, at: Date): Promise<void> {
  await pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, at]);
}

/**
 * Expects the statement's identity (openingTotal + every movement = closingTotal, exactly), its
 * grants by source summing to `granted`, and each movement's sign as the ledger signs it
 * (granted, refunded, debtRepaid ≥ 0; consumed, expired, voided ≤ 0).
 */
export function expectStatementIdentity(s: AccountStatement): void {
  expect({ period: s.periodStart, closing: s.openingTotalMicroCredits + statementMovementsMicroCredits(s) }).toEqual({ period: s.periodStart, closing: s.closingTotalMicroCredits });
  expect(s.grantedBySource.reduce((sum, g) => sum + g.amountMicroCredits, 0n)).toBe(s.grantedMicroCredits);
  expect(s.grantedMicroCredits >= 0n && s.consumedMicroCredits <= 0n && s.expiredMicroCredits <= 0n).toBe(true);
  expect(s.refundedMicroCredits >= 0n && s.voidedMicroCredits <= 0n && s.debtRepaidMicroCredits >= 0n).toBe(true);
}

/**
 * The statement of the period containing `at` (null: the current one), read from the period
 * start on, from the account's first instant on, and as the service chooses: all three must be
 * equal.
 */
export async function readStatementBothWays(pool: pg.Pool, accountId: string, at: Date | null): Promise<AccountStatement> {
  const after = await readAccountStatement(pool, accountId, new Date(), at, { range: 'after' });
  const before = await readAccountStatement(pool, accountId, new Date(), at, { range: 'before' });
  const chosen = await readAccountStatement(pool, accountId, new Date(), at);
  expect(before).toEqual(after);
  expect(chosen).toEqual(after);
  return after;
}

/** Every statement from the one of the period containing `first` to the current one, oldest first, each read both ways. */
export async function readStatementsFrom(pool: pg.Pool, accountId: string, first: Date): Promise<AccountStatement[]> {
  const out: AccountStatement[] = [];
  let at: Date | null = first;
  for (;;) {
    const s = await readStatementBothWays(pool, accountId, at);
    out.push(s);
    if (!s.final) return out;
    at = s.periodEnd;
  }
}
