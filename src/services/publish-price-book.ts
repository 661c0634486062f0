/**
 * publishPriceBook: validates a price book and stores it as the next version; it is in force
 * for events priced from then on (events keep the version they were priced with).
 */
import { formatPriceRule, validatePriceBook, type PriceBookInput } from '../pricing/price-book.js';
import type { ServiceContext } from './context.js';
import { withTransaction } from '../db/pg.js';
import { actorOf, recordAuditEvent, type AuditDetail } from '../audit/audit-log.js';
import type { ActivePriceBook } from './pricing-state.js';

/** Advisory lock key ("cpprbook") serializing publishPriceBook's transactions. */
const PUBLISH_LOCK_KEY = 0x63707072626f6f6bn;

/**
 * Publishes a new price book version. The stored form is the validated book with canonical
 * decimals, so it re-validates identically when loaded.
 * @returns the version this call stored, as readActivePriceBook would read it back (version,
 *   publication time, validated book, stored form). It is built from this call's own INSERT,
 *   not by reading "the newest version": a concurrent publish may already have stored a newer
 *   one, and the caller must still be told what it published.
 * Publishes run one at a time (an advisory lock), so versions follow commit order.
 * @throws LedgerError BAD_USER_INPUT for an invalid book (see validatePriceBook).
 */
export async function publishPriceBook(ctx: ServiceContext, input: PriceBookInput): Promise<ActivePriceBook> {
  const draft = validatePriceBook(input);
  const rules = draft.rules.map(formatPriceRule);
  // The book and its audit row commit together.
  const row = await withTransaction(ctx.pool, async (tx) => {
    // One publish at a time: the version (a sequence) is taken only once the publish before it has
    // committed, so versions follow commit order and the book committed last is the one in force
    // (readActivePriceBook reads the highest version). Without it, a publish could take version
    // n + 1 while version n was uncommitted, commit first, and n, committed last, never be in force.
    await tx.query('SELECT pg_advisory_xact_lock($1)', [PUBLISH_LOCK_KEY.toString()]);
    const { rows } = await tx.query(
      'INSERT INTO price_books (name, byok_fee_percent, rules, published_at) VALUES ($1, $2, $3, $4) RETURNING version, published_at',
      [draft.name, draft.byokFeePercent, JSON.stringify(rules), ctx.clock()],
    );
    const stored = rows[0]!;
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'price_book.published',
      subjectType: 'price_book',
      subjectId: String(stored.version),
      // The rules as stored (canonical decimal strings), the same JSON as price_books.rules.
      details: { name: draft.name, byokFeePercent: draft.byokFeePercent, rules: rules as unknown as AuditDetail[] },
    });
    return stored;
  });
  ctx.pricing.invalidate();
  return {
    version: row.version as number,
    publishedAt: row.published_at as Date,
    book: draft,
    stored: { name: draft.name, byokFeePercent: draft.byokFeePercent, rules },
  };
}
