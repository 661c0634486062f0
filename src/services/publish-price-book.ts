/**
 * publishPriceBook: validates a price book and stores it as the next version; it is in force
 * for events priced from then on (events keep the version they were priced with).
 */
import { formatPriceRule, validatePriceBook, type PriceBookInput } from '../pricing/price-book.js';
import type { ServiceContext } from './context.js';

/**
 * Publishes a new price book version. The stored form is the validated book with canonical
 * decimals, so it re-validates identically when loaded.
 * @returns the new version number.
 * @throws LedgerError BAD_USER_INPUT for an invalid book (see validatePriceBook).
 */
export async function publishPriceBook(ctx: ServiceContext, input: PriceBookInput): Promise<number> {
  const draft = validatePriceBook(input);
  const { rows } = await ctx.pool.query(
    'INSERT INTO price_books (name, byok_fee_percent, rules, published_at) VALUES ($1, $2, $3, $4) RETURNING version',
    [draft.name, draft.byokFeePercent, JSON.stringify(draft.rules.map(formatPriceRule)), ctx.clock()],
  );
  ctx.pricing.invalidate();
  return rows[0].version as number;
}
