/**
 * The ledger's refusals that several use cases share, built in one place so their codes, wording
 * and `extensions` stay the same everywhere (contract README: error codes).
 */
import { formatCredits } from './credits.js';
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
