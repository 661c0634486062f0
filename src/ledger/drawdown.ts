/**
 * Drawdown: which credit batches pay for a charge, and in what order.
 *
 * Rule (issue #2, contract `CreditType`): FREE before PAID; within a type the soonest
 * `expiresAt` first (never-expiring last), then the oldest `addedAt`, then the id.
 * A batch is spendable only while `now < expiresAt`: at its expiry instant it no longer pays,
 * even before the expiry job has removed its credit.
 */
import { assert } from './errors.js';

/** Credit type of a batch (contract enum CreditType). */
export type CreditType = 'FREE' | 'PAID';

/** What drawdown needs to know about one batch. */
export interface DrawableBatch {
  id: string;
  type: CreditType;
  /** Credit left in the batch, micro-credits, >= 0. */
  remainingMicroCredits: bigint;
  /** Null: never expires. */
  expiresAt: Date | null;
  addedAt: Date;
}

/** One batch's share of a charge. */
export interface DrawdownPart {
  batchId: string;
  /** Micro-credits taken from the batch, > 0. */
  amountMicroCredits: bigint;
}

/** Result of planning a charge. */
export interface DrawdownPlan {
  /** Parts in drawdown order; their sum is the drawn amount. */
  parts: DrawdownPart[];
  /** Micro-credits drawn from batches (<= requested). */
  drawnMicroCredits: bigint;
  /** Requested minus drawn: what the batches could not cover (>= 0). */
  shortfallMicroCredits: bigint;
}

/** True when the batch may still pay at `now` (not expired: now < expiresAt). */
export function isSpendable(batch: Pick<DrawableBatch, 'expiresAt'>, now: Date): boolean {
  return batch.expiresAt === null || now.getTime() < batch.expiresAt.getTime();
}

/**
 * Compares two batches in drawdown order (negative: `a` pays before `b`).
 * FREE < PAID; then expiresAt ascending with null last; then addedAt ascending; then id.
 */
export function compareDrawdownOrder(a: DrawableBatch, b: DrawableBatch): number {
  if (a.type !== b.type) return a.type === 'FREE' ? -1 : 1;
  const ae = a.expiresAt?.getTime() ?? Number.POSITIVE_INFINITY;
  const be = b.expiresAt?.getTime() ?? Number.POSITIVE_INFINITY;
  if (ae !== be) return ae < be ? -1 : 1;
  const aa = a.addedAt.getTime();
  const ba = b.addedAt.getTime();
  if (aa !== ba) return aa < ba ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/**
 * The batches that can pay at `now` (spendable, remaining > 0), in drawdown order.
 * Does not mutate its input.
 */
export function drawdownOrder<T extends DrawableBatch>(batches: readonly T[], now: Date): T[] {
  return batches
    .filter((b) => b.remainingMicroCredits > 0n && isSpendable(b, now))
    .sort(compareDrawdownOrder);
}

/**
 * Plans a charge of `amountMicroCredits` against `batches` at `now`: takes from each batch
 * in drawdown order until the amount is covered or the batches run out.
 * @param amountMicroCredits micro-credits to draw, >= 0.
 * @returns the parts (each > 0), the drawn total and the shortfall.
 * @throws Error (assertion) when the amount is negative or a batch has negative remaining.
 */
export function planDrawdown(batches: readonly DrawableBatch[], amountMicroCredits: bigint, now: Date): DrawdownPlan {
  assert(amountMicroCredits >= 0n, 'drawdown amount must be >= 0');
  const parts: DrawdownPart[] = [];
  let left = amountMicroCredits;
  for (const batch of drawdownOrder(batches, now)) {
    if (left === 0n) break;
    assert(batch.remainingMicroCredits >= 0n, `batch ${batch.id} has negative remaining`);
    const take = batch.remainingMicroCredits < left ? batch.remainingMicroCredits : left;
    parts.push({ batchId: batch.id, amountMicroCredits: take });
    left -= take;
  }
  return { parts, drawnMicroCredits: amountMicroCredits - left, shortfallMicroCredits: left };
}
