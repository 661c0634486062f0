/**
 * Seeds a database: applies pending migrations, then publishes the default price book
 * (src/pricing/default-price-book.ts) when no price book exists yet. Idempotent.
 * Usage: DATABASE_URL=... tsx prisma/seed.ts
 */
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { cliActor } from '../src/audit/audit-log.js';
import { DEFAULT_PRICE_BOOK_INPUT } from '../src/pricing/default-price-book.js';

const databaseUrl = process.env.DATABASE_URL || 'postgresql://postgres@127.0.0.1:5432/creditpool';
const { applied } = await applyMigrations(databaseUrl);
if (applied.length) console.log(`seed: applied migrations ${applied.join(', ')}`);
const pool = createPgPool(databaseUrl, 2);
try {
  const pricing = createPricingState(pool, 0);
  const current = await pricing.priceBook();
  if (current) console.log(`seed: price book v${current.version} "${current.stored.name}" already in force`);
  else {
    const { version } = await publishPriceBook({ pool, clock: () => new Date(), pricing, actor: cliActor('seed') }, DEFAULT_PRICE_BOOK_INPUT);
    console.log(`seed: published the default price book as v${version}`);
  }
} finally {
  await pool.end();
}
