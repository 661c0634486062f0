/**
 * One definition of the contract's Balance, shared by `readBalance` (queries) and by the balance
 * snapshot every money-moving transaction writes to the outbox (`AccountTx.finish`, delivered by
 * the balanceChanged subscription). The database computes the figures that come from batches,
 * holds, grants and the ledger with the SQL function `balance_figures` (migration
 * 20261122003235_live_outbox); `balanceFromSnapshot` turns them into a BalanceView with the same
 * arithmetic in both cases, so a live credit bar and a query can never disagree.
 */
import { maxBig } from '../ledger/credits.js';
import { percentRemaining } from '../ledger/billing-period.js';
import type { BalanceView } from './read-balance.js';

/**
 * A balance at one version, as JSON (the outbox payload of topic `balance` and the Redis message
 * body). Amounts are decimal strings of micro-credits; instants are ISO-8601 strings.
 */
export interface BalanceSnapshot {
  accountId: string;
  /** balances.version after the change (decimal string). */
  version: string;
  updatedAt: string;
  /** The account's "now" the figures were computed for (its test clock or the wall clock). */
  asOf: string;
  periodStart: string;
  periodEnd: string;
  free: string;
  paid: string;
  reserved: string;
  debt: string;
  /** Soonest expiry of a spendable batch, or null. */
  nextAt: string | null;
  nextAmount: string;
  /** Total after the last ledger entry before periodStart, or null when there is none. */
  totalAtStart: string | null;
  /**
   * Credit granted in [periodStart, asOf], less what grants voided in it took back (migration
   * period_credits_voids), plus what refunds in it gave back into batches of credit that had left
   * them before periodStart (refund_credits, migration period_credits_refund_rows).
   */
  granted: string;
  /** The active plan's name, or null. */
  planName?: string | null;
}

/** Builds a BalanceSnapshot from a `balance_figures` row (pg values) and the balance head. */
export function snapshotFromRow(
  head: { accountId: string; version: bigint | string; updatedAt: Date; asOf: Date; periodStart: Date; periodEnd: Date; debt: bigint | string; planName: string | null },
  f: Record<string, unknown>,
): BalanceSnapshot {
  const s = (v: unknown): string => String(v);
  return {
    accountId: head.accountId,
    version: s(head.version),
    updatedAt: head.updatedAt.toISOString(),
    asOf: head.asOf.toISOString(),
    periodStart: head.periodStart.toISOString(),
    periodEnd: head.periodEnd.toISOString(),
    free: s(f.free),
    paid: s(f.paid),
    reserved: s(f.reserved),
    debt: s(head.debt),
    nextAt: f.next_at ? (f.next_at as Date).toISOString() : null,
    nextAmount: s(f.next_amount),
    totalAtStart: f.total_at_start === null || f.total_at_start === undefined ? null : s(f.total_at_start),
    granted: s(f.granted),
    planName: head.planName,
  };
}

/**
 * The contract's Balance from a snapshot: total = free + paid - debt; available = total -
 * reserved; periodCredits = max(max(totalAtStart, 0) + granted, 0); percentRemaining and depleted as the
 * contract defines them (src/ledger/billing-period.ts).
 * @throws SyntaxError / RangeError when the snapshot is malformed (not produced by this code).
 */
export function balanceFromSnapshot(s: BalanceSnapshot): BalanceView {
  const free = BigInt(s.free);
  const paid = BigInt(s.paid);
  const debt = BigInt(s.debt);
  const reserved = BigInt(s.reserved);
  const total = free + paid - debt;
  const available = total - reserved;
  // At least 0: `granted` is net of voids, which may take back credit of a period that began in debt.
  const periodCredits = maxBig(maxBig(BigInt(s.totalAtStart ?? '0'), 0n) + BigInt(s.granted), 0n);
  return {
    accountId: s.accountId,
    availableMicroCredits: available,
    totalMicroCredits: total,
    reservedMicroCredits: reserved,
    freeMicroCredits: free,
    paidMicroCredits: paid,
    debtMicroCredits: debt,
    periodStart: new Date(s.periodStart),
    periodEnd: new Date(s.periodEnd),
    periodMicroCredits: periodCredits,
    percentRemaining: percentRemaining(available, periodCredits),
    planName: s.planName ?? null,
    depleted: available <= 0n,
    nextExpiry: s.nextAt ? { amountMicroCredits: BigInt(s.nextAmount), at: new Date(s.nextAt) } : null,
    version: BigInt(s.version),
    updatedAt: new Date(s.updatedAt),
    asOf: new Date(s.asOf),
  };
}
