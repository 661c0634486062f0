/**
 * Seeds a database: applies pending migrations, then publishes the default price book
 * (src/pricing/default-price-book.ts) when no price book exists yet. Idempotent.
 * Usage: DATABASE_URL=... tsx prisma/seed.ts   (or: npm run seed; --help says what it does)
 * Takes no arguments (exit 2 on any). On failure (PostgreSQL unreachable or not answering within
 * the migrations' connect timeout, src/db/migrate.ts MIGRATE_CONNECT_TIMEOUT_MS, or a migration
 * failing) prints one line naming $DATABASE_URL without its password and exits 1.
 */
import { parseArgs } from 'node:util';
import { applyMigrations, MIGRATE_CONNECT_TIMEOUT_MS, redactDatabaseUrl } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { cliActor } from '../src/audit/audit-log.js';
import { DEFAULT_PRICE_BOOK_INPUT } from '../src/pricing/default-price-book.js';

const USAGE = 'usage: npm run seed   (DATABASE_URL=... tsx prisma/seed.ts; no arguments)';
try {
  const { values } = parseArgs({ options: { help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
  if (values.help) {
    console.log(`Seeds $DATABASE_URL: applies pending migrations (creating the database when missing), then publishes the default price book when none is published yet. Safe to run again.\n${USAGE}`);
    process.exit(0);
  }
} catch (err) {
  // It used to ignore its arguments (a mistyped `npm run seed -- --something` seeded anyway).
  console.error(`seed: ${(err as Error).message}\n${USAGE}`);
  process.exit(2);
}

const databaseUrl = process.env.DATABASE_URL || 'postgresql://postgres@127.0.0.1:5432/creditpool';
try {
  const { applied } = await applyMigrations(databaseUrl);
  if (applied.length) console.log(`seed: applied migrations ${applied.join(', ')}`);
  const pool = createPgPool(databaseUrl, 2, { connectTimeoutMs: MIGRATE_CONNECT_TIMEOUT_MS });
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
} catch (err) {
  // One line instead of Node's dump of an uncaught rejection (a stack, and pg's error fields).
  console.error(`seed failed on ${redactDatabaseUrl(databaseUrl)}: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}

// The wasm schema engine (@prisma/schema-engine-wasm) leaves a 10-second timer of its own behind,
// which kept this process alive that long after its work was done: exit now.
process.exit(process.exitCode ?? 0);
