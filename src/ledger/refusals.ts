/**
 * The ledger's refusals that several use cases share, built in one place so their codes, wording
 * and `extensions` stay the same everywhere (contract README: error codes).
 */
import { MAX_ABS_MICRO_CREDITS, formatCredits } from './credits.js';
import { LedgerError } from './errors.js';

/**
 * INSUFFICIENT_CREDITS: `needed` micro-credits (a charge's cost, or a hold's amount) exceed
 * `available` micro-credits; both are shown as Credits in the message and in
 * extensions.neededCredits / availableCredits.
 */
export function insufficientCredits(what: 'cost' | 'hold', neededMicroCredits: bigint, availableMicroCredits: bigint): LedgerError {
  const needed = formatCredits(neededMicroCredits);
  const available = formatCredits(availableMicroCredits);
  return new LedgerError('INSUFFICIENT_CREDITS', `insufficient credits: ${what} ${needed}, available ${available}`, {
    neededCredits: needed,
    availableCredits: available,
  });
}

/** IDEMPOTENCY_CONFLICT: the idempotency key was already used for a different `what` (usage event, reservation, grant). */
export function idempotencyConflict(what: 'usage event' | 'reservation' | 'grant'): LedgerError {
  return new LedgerError('IDEMPOTENCY_CONFLICT', `idempotencyKey was already used for a different ${what}`);
}

/**
 * `extensions.reason` of a BAD_USER_INPUT that refuses to take a kept figure (an account's total
 * or debt, the credit granted in a period, what a hold has consumed) above MAX_ABS_MICRO_CREDITS:
 * every such figure is a signed 64-bit column (src/ledger/credits.ts).
 */
export const BALANCE_LIMIT_REASON = 'BALANCE_LIMIT';

/**
 * True when `err` is a BALANCE_LIMIT refusal (a LedgerError whose `details.reason` is
 * {@link BALANCE_LIMIT_REASON}): nothing was written, and the same work may succeed later, once
 * the account's balance has room (a paid charge's grant is retried, not dropped).
 */
export function isBalanceLimitRefusal(err: unknown): err is LedgerError {
  return err instanceof LedgerError && err.details?.reason === BALANCE_LIMIT_REASON;
}

/**
 * The BAD_USER_INPUT refusal (reason BALANCE_LIMIT) of a charge whose running sums would pass
 * MAX_ABS_MICRO_CREDITS, else null: `debtAfterMicroCredits` is the account's debt once the charge
 * is recorded, `consumedAfterMicroCredits` what its hold has consumed then (null for a charge
 * without a hold). An event's own cost is capped when it is priced (pricing/price-book.ts), but
 * captures against a hold go on as debt, and their sums have no other bound; the grant path
 * refuses its totals the same way (services/grant-credits.ts balanceRoomError). Pure: the charge
 * paths call it with the figures they hold in memory, before their first write.
 */
export function chargeLimitRefusal(debtAfterMicroCredits: bigint, consumedAfterMicroCredits: bigint | null): LedgerError | null {
  const over =
    debtAfterMicroCredits > MAX_ABS_MICRO_CREDITS
      ? { what: "the account's debt", after: debtAfterMicroCredits }
      : consumedAfterMicroCredits !== null && consumedAfterMicroCredits > MAX_ABS_MICRO_CREDITS
        ? { what: "what the reservation has consumed", after: consumedAfterMicroCredits }
        : null;
  if (!over) return null;
  return new LedgerError(
    'BAD_USER_INPUT',
    `quantities: recording this charge would take ${over.what} to ${formatCredits(over.after)} credits, above the largest amount kept (${formatCredits(MAX_ABS_MICRO_CREDITS)} credits); nothing was recorded`,
    { field: 'quantities', reason: BALANCE_LIMIT_REASON },
  );
}
