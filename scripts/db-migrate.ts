/**
 * CLI: applies pending Prisma migrations (prisma/migrations/) to $DATABASE_URL with the wasm
 * schema engine — the offline equivalent of `prisma migrate deploy`. Creates the database when
 * missing. Prints each applied migration; exits 1 on failure.
 *
 * Usage: tsx scripts/db-migrate.ts   (or: npm run db:migrate)
 */
import { applyMigrations, redactDatabaseUrl as redact } from '../src/db/migrate.js';

const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';

const databaseUrl = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;

try {
  const { applied } = await applyMigrations(databaseUrl, { log: (msg) => console.log(msg) });
  console.log(
    applied.length === 0
      ? `db:migrate: ${redact(databaseUrl)} already up to date`
      : `db:migrate: applied ${applied.length} migration(s) to ${redact(databaseUrl)}`,
  );
} catch (error) {
  console.error(`db:migrate failed on ${redact(databaseUrl)}:`, error instanceof Error ? error.message : error);
  process.exitCode = 1;
}
