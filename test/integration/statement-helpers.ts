/**
 * Shared checks of account statements (README "Statements") for the statement tests
 * (account-statement.test.ts, statement-audit.test.ts, reset-roll-audit.test.ts): the
 * reconciliation identity, a statement read from either end of the ledger (which must agree) and
 * every statement of an account in a row, the account's clock, anchor and creation, and a test
 * clock moved without running anything due.
 */
import { expect } from 'vitest';
import type pg from 'pg';
import { readAccountStatement, statementMovementsMicroCredits, type AccountStatement } from '../../src/services/account-statement.js';
import { periodOfGridAt } from '../../src/ledger/billing-period.js';

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

/**
 * Expects every total-changing ledger entry of the account in exactly one of `statements` (all
 * its periods, oldest first): their movements summed by kind equal the ledger's sums by type,
 * with the credit past its expiresAt at the account's `clock` whose EXPIRE is not written yet
 * counted as EXPIRE (README "Statements"), and their entry counts the ledger's count.
 */
export async function expectStatementsCoverLedger(pool: pg.Pool, accountId: string, statements: AccountStatement[], clock: Date): Promise<void> {
  const { rows } = await pool.query(
    `SELECT type::text AS type, SUM(amount_micro_credits)::text AS amount, COUNT(*)::int AS n FROM ledger_entries
      WHERE account_id = $1 AND type NOT IN ('RESERVE', 'RELEASE') GROUP BY type`,
    [accountId],
  );
  const due = await pool.query(
    `SELECT COALESCE(SUM(remaining_micro_credits), 0)::text AS due FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at <= $2`,
    [accountId, clock],
  );
  const ledger = new Map<string, bigint>(rows.map((r) => [r.type as string, BigInt(r.amount as string)]));
  ledger.set('EXPIRE', (ledger.get('EXPIRE') ?? 0n) - BigInt(due.rows[0].due as string));
  const sum = (f: (s: AccountStatement) => bigint) => statements.reduce((acc, s) => acc + f(s), 0n);
  expect({
    GRANT: sum((s) => s.grantedMicroCredits),
    CONSUME: sum((s) => s.consumedMicroCredits),
    EXPIRE: sum((s) => s.expiredMicroCredits),
    REFUND: sum((s) => s.refundedMicroCredits),
    VOID: sum((s) => s.voidedMicroCredits),
    DEBT_REPAY: sum((s) => s.debtRepaidMicroCredits),
    ADJUST: sum((s) => s.adjustedMicroCredits),
    entries: statements.reduce((acc, s) => acc + s.entryCount, 0),
  }).toEqual({
    GRANT: ledger.get('GRANT') ?? 0n,
    CONSUME: ledger.get('CONSUME') ?? 0n,
    EXPIRE: ledger.get('EXPIRE') ?? 0n,
    REFUND: ledger.get('REFUND') ?? 0n,
    VOID: ledger.get('VOID') ?? 0n,
    DEBT_REPAY: ledger.get('DEBT_REPAY') ?? 0n,
    ADJUST: ledger.get('ADJUST') ?? 0n,
    entries: rows.reduce((acc, r) => acc + (r.n as number), 0),
  });
}

/** The account's test clock, billing anchor and creation instant. */
export async function readAccountRow(pool: pg.Pool, accountId: string): Promise<{ clock: Date; anchor: Date; createdAt: Date }> {
  const { rows } = await pool.query('SELECT test_clock_at, billing_anchor_at, created_at FROM accounts WHERE id = $1', [accountId]);
  return { clock: rows[0].test_clock_at as Date, anchor: rows[0].billing_anchor_at as Date, createdAt: rows[0].created_at as Date };
}

/** Every statement of the account: its first period (of its current grid) to the current one, oldest first. */
export async function readAllStatements(pool: pg.Pool, accountId: string): Promise<AccountStatement[]> {
  const { anchor, createdAt } = await readAccountRow(pool, accountId);
  return readStatementsFrom(pool, accountId, periodOfGridAt(anchor, new Date(Math.min(anchor.getTime(), createdAt.getTime()))).start);
}
