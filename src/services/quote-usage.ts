/**
 * quote: what a usage event would cost now, without recording it, and whether the account's
 * credit covers it (contract Query.quote, Quote.affordable). Reads only; no lock is taken, so a
 * charge racing with it may decide on other figures, but the figures it decides on are those of
 * one committed moment: the balance and the hold are read in one statement (one snapshot).
 */
import { maxBig } from '../ledger/credits.js';
import type { PricedUsage } from '../pricing/price-book.js';
import type { ServiceContext } from './context.js';
import { readBalance, readBalanceWithHold } from './read-balance.js';
import { priceCommand } from './record-usage.js';
import { isHolding } from './reservation-tx.js';
import { validateUsageInput, type UsageInput } from './usage-command.js';

/** A quote: the priced event and whether credit covers it. */
export interface QuoteResult {
  priced: PricedUsage;
  affordable: boolean;
}

/**
 * Whether credit covers a charge of `costMicroCredits` the way recordUsage draws it, without
 * debt (micro-credits throughout; pure). Without a hold (`holdLeftMicroCredits` undefined) the
 * available credit must cover a non-zero cost, else recordUsage refuses it with
 * INSUFFICIENT_CREDITS. A capture (`holdLeftMicroCredits`: what is left of its ACTIVE hold) draws
 * that first and then the available credit, and what neither covers becomes debt
 * (contract RecordUsageInput.reservationId; record-usage.ts applyCharge): it is covered when
 * the two together cover it. A capture against a hold that does not hold (null: not ACTIVE,
 * expired, or not the account's) is refused by recordUsage, so nothing covers it.
 */
function creditCovers(costMicroCredits: bigint, availableMicroCredits: bigint, holdLeftMicroCredits?: bigint | null): boolean {
  if (holdLeftMicroCredits === null) return false;
  if (holdLeftMicroCredits === undefined) return costMicroCredits === 0n || costMicroCredits <= availableMicroCredits;
  return costMicroCredits <= holdLeftMicroCredits + maxBig(availableMicroCredits, 0n);
}

/**
 * Prices `input` at the account's now (its test clock for a test-mode account), as recordUsage
 * prices it, and says whether credit covers it now (creditCovers), with what is left of the hold
 * its reservationId names when it names one, the balance and the hold as of one snapshot.
 * @throws LedgerError NOT_FOUND (account), BAD_USER_INPUT (as validateUsageInput and priceCommand).
 */
export async function quoteUsage(ctx: ServiceContext, input: UsageInput): Promise<QuoteResult> {
  const cmd = validateUsageInput(input);
  // The balance and the hold in ONE statement (readBalanceWithHold): read apart, each in its own
  // snapshot, a settle or release committing between them gave the hold from before it and the
  // balance from after it, counting the released credit twice (test/integration/quote-snapshot.test.ts).
  const reservationId = cmd.reservationId;
  const [book, settings, { balance, hold }] = await Promise.all([
    ctx.pricing.priceBook(),
    ctx.pricing.settings(),
    reservationId
      ? readBalanceWithHold(ctx.pool, cmd.accountId, reservationId, ctx.clock())
      : readBalance(ctx.pool, cmd.accountId, ctx.clock()).then((b) => ({ balance: b, hold: null })),
  ]);
  const priced = priceCommand(cmd, book, settings, balance.asOf);
  let holdLeftMicroCredits: bigint | null | undefined;
  if (reservationId) {
    holdLeftMicroCredits = hold && isHolding(hold, balance.asOf) ? maxBig(hold.amountMicroCredits - hold.consumedMicroCredits, 0n) : null;
  }
  return { priced, affordable: creditCovers(priced.costMicroCredits, balance.availableMicroCredits, holdLeftMicroCredits) };
}
