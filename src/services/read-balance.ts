/**
 * Reads an account's Balance as the contract defines it, at the account's "now" (its test
 * clock or the wall clock). Batches past expiresAt and holds past expiresAt are already left
 * out here even before the expiry jobs have recorded them.
 */
import type pg from 'pg';
import { toBigInt } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import { maxBig } from '../ledger/credits.js';
import { monthlyPeriodAt, percentRemaining } from '../ledger/billing-period.js';

/** The contract's Balance, amounts in micro-credits. */
export interface BalanceView {
  accountId: string;
  availableMicroCredits: bigint;
  totalMicroCredits: bigint;
  reservedMicroCredits: bigint;
  freeMicroCredits: bigint;
  paidMicroCredits: bigint;
  debtMicroCredits: bigint;
  periodStart: Date;
  periodEnd: Date;
  periodMicroCredits: bigint;
  percentRemaining: number;
  planName: string | null;
  depleted: boolean;
  nextExpiry: { amountMicroCredits: bigint; at: Date } | null;
  version: bigint;
  updatedAt: Date;
  /** The instant the balance was computed for. */
  asOf: Date;
}

/**
 * Computes the balance of one account in a single query.
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
export async function readBalance(db: pg.Pool | pg.PoolClient, accountId: string, wallNow: Date): Promise<BalanceView> {
  const head = await db.query(
    `SELECT a.created_at, CASE WHEN a.test_mode AND a.test_clock_at IS NOT NULL THEN a.test_clock_at ELSE $2::timestamptz END AS now,
            b.debt_micro_credits, b.version, b.updated_at
       FROM accounts a JOIN balances b ON b.account_id = a.id WHERE a.id = $1`,
    [accountId, wallNow],
  );
  const h = head.rows[0];
  if (!h) throw new LedgerError('NOT_FOUND', 'account not found');
  const now = h.now as Date;
  const period = monthlyPeriodAt(h.created_at as Date, now);
  const { rows } = await db.query(
    `WITH spendable AS (
       SELECT type, remaining_micro_credits AS remaining, expires_at FROM credit_batches
        WHERE account_id = $1 AND status = 'ACTIVE' AND (expires_at IS NULL OR expires_at > $2)
     ), next_exp AS (
       SELECT MIN(expires_at) AS at FROM spendable WHERE expires_at IS NOT NULL
     )
     SELECT
       (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'FREE') AS free,
       (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'PAID') AS paid,
       (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) FROM reservations
         WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at > $2) AS reserved,
       (SELECT at FROM next_exp) AS next_at,
       (SELECT COALESCE(SUM(remaining), 0) FROM spendable, next_exp WHERE spendable.expires_at = next_exp.at) AS next_amount,
       (SELECT balance_after_micro_credits FROM ledger_entries WHERE account_id = $1 AND created_at < $3 ORDER BY seq DESC LIMIT 1) AS total_at_start,
       (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM credit_grants WHERE account_id = $1 AND created_at >= $3 AND created_at <= $2) AS granted`,
    [accountId, now, period.start],
  );
  const r = rows[0];
  const free = toBigInt(r.free);
  const paid = toBigInt(r.paid);
  const debt = toBigInt(h.debt_micro_credits);
  const reserved = toBigInt(r.reserved);
  const total = free + paid - debt;
  const available = total - reserved;
  const periodCredits = maxBig(toBigInt(r.total_at_start ?? 0), 0n) + toBigInt(r.granted);
  return {
    accountId,
    availableMicroCredits: available,
    totalMicroCredits: total,
    reservedMicroCredits: reserved,
    freeMicroCredits: free,
    paidMicroCredits: paid,
    debtMicroCredits: debt,
    periodStart: period.start,
    periodEnd: period.end,
    periodMicroCredits: periodCredits,
    percentRemaining: percentRemaining(available, periodCredits),
    planName: null,
    depleted: available <= 0n,
    nextExpiry: r.next_at ? { amountMicroCredits: toBigInt(r.next_amount), at: r.next_at as Date } : null,
    version: toBigInt(h.version),
    updatedAt: h.updated_at as Date,
    asOf: now,
  };
}

/** Ledger reconciliation of one account (the invariant the demo and tests check). */
export interface Reconciliation {
  consistent: boolean;
  totalMicroCredits: bigint;
  batchRemainingMicroCredits: bigint;
  debtMicroCredits: bigint;
  ledgerSumMicroCredits: bigint;
}

/**
 * Checks the ledger invariant: sum(remaining of ACTIVE batches) - debt = stored total =
 * sum of the total-changing ledger entries (all but RESERVE/RELEASE).
 * @throws LedgerError NOT_FOUND.
 */
export async function reconcileAccount(db: pg.Pool | pg.PoolClient, accountId: string): Promise<Reconciliation> {
  const { rows } = await db.query(
    `SELECT b.total_micro_credits AS total, b.debt_micro_credits AS debt,
            (SELECT COALESCE(SUM(remaining_micro_credits), 0) FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE') AS batches,
            (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM ledger_entries WHERE account_id = $1 AND type NOT IN ('RESERVE', 'RELEASE')) AS ledger
       FROM balances b WHERE b.account_id = $1`,
    [accountId],
  );
  const r = rows[0];
  if (!r) throw new LedgerError('NOT_FOUND', 'account not found');
  const total = toBigInt(r.total);
  const debt = toBigInt(r.debt);
  const batches = toBigInt(r.batches);
  const ledger = toBigInt(r.ledger);
  return {
    consistent: batches - debt === total && ledger === total,
    totalMicroCredits: total,
    batchRemainingMicroCredits: batches,
    debtMicroCredits: debt,
    ledgerSumMicroCredits: ledger,
  };
}
