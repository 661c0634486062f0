/**
 * CLI: computes the SQL that brings prisma/migrations/ up to prisma/schema.prisma (with the wasm
 * schema engine and a temporary shadow database on the $DATABASE_URL server).
 *
 * Usage:
 *   tsx scripts/db-diff.ts <name>    write prisma/migrations/<UTC yyyymmddHHMMSS>_<name>/migration.sql
 *                                    when there is a diff, and print it
 *   tsx scripts/db-diff.ts --check   exit 1 when the migrations lag behind the schema (CI)
 *   tsx scripts/db-diff.ts           only print the diff
 *   --help says what it does; unknown options or more than one name: exit 2, nothing done
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { diffMigration } from '../src/db/migrate.js';

const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';
const ROOT = fileURLToPath(new URL('../', import.meta.url));
const MIGRATIONS_DIR = path.join(ROOT, 'prisma', 'migrations');

const USAGE = 'usage: tsx scripts/db-diff.ts [<migration_name> | --check]   (or: npm run db:diff -- ...)';
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log(`Computes the SQL that brings prisma/migrations/ up to prisma/schema.prisma (a shadow database on the $DATABASE_URL server); prints it, writes it as a new migration when given a name, or with --check exits 1 when the migrations lag behind.\n${USAGE}`);
  process.exit(0);
}
const check = args.includes('--check');
const names = args.filter((a) => !a.startsWith('-'));
const rawName = names[0];
const unknown = args.filter((a) => a.startsWith('-') && a !== '--check');
/** Prints what is wrong (one line) and the usage, exits 2: nothing computed or written. */
function usageError(message: string): never {
  console.error(`db:diff: ${message}\n${USAGE}`);
  process.exit(2);
}
if (unknown.length > 0) usageError(`unknown option ${unknown.join(' ')}`);
if (check && rawName) usageError('give a migration name or --check, not both');
// A second word used to be ignored: `db:diff add user index` wrote a migration named "add".
if (names.length > 1) usageError(`one migration name, got ${names.length}: ${names.join(' ')} (join words with _)`);

const databaseUrl = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;

try {
  const sql = await diffMigration(databaseUrl);
  if (sql === '') {
    console.log('db:diff: migrations are in sync with prisma/schema.prisma');
  } else if (check) {
    process.stdout.write(sql);
    console.error('db:diff --check: prisma/schema.prisma has changes without a migration (run npm run db:diff <name>)');
    process.exitCode = 1;
  } else if (rawName) {
    const name = rawName.replace(/[^A-Za-z0-9_]+/g, '_').replace(/^_+|_+$/g, '').toLowerCase();
    if (!name) throw new Error(`invalid migration name: ${rawName}`);
    const dir = path.join(MIGRATIONS_DIR, `${nextTimestamp()}_${name}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'migration.sql'), sql);
    const lock = path.join(MIGRATIONS_DIR, 'migration_lock.toml');
    if (!existsSync(lock)) writeFileSync(lock, 'provider = "postgresql"\n');
    process.stdout.write(sql);
    console.log(`db:diff: wrote ${path.relative(ROOT, path.join(dir, 'migration.sql'))}`);
  } else {
    process.stdout.write(sql);
    console.log('db:diff: (not written; pass a migration name to write it)');
  }
} catch (error) {
  console.error('db:diff failed:', error instanceof Error ? error.message : error);
  process.exitCode = 1;
}

// The wasm schema engine (@prisma/schema-engine-wasm) leaves a 10-second timer of its own behind,
// which kept this process alive that long after its work was done: exit now.
process.exit(process.exitCode ?? 0);

/** UTC yyyymmddHHMMSS, bumped past the newest existing migration so the order is kept. */
function nextTimestamp(): string {
  const now = new Date().toISOString().replace(/\D/g, '').slice(0, 14);
  const existing = existsSync(MIGRATIONS_DIR)
    ? readdirSync(MIGRATIONS_DIR).map((d) => /^(\d{14})_/.exec(d)?.[1]).filter((t): t is string => !!t)
    : [];
  const newest = existing.sort().at(-1);
  return newest && newest >= now ? String(BigInt(newest) + 1n) : now;
}
