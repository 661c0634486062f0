/**
 * CLI: computes the SQL that brings prisma/migrations/ up to prisma/schema.prisma (with the wasm
 * schema engine and a temporary shadow database on the $DATABASE_URL server).
 *
 * Usage:
 *   tsx scripts/db-diff.ts <name>    write prisma/migrations/<UTC yyyymmddHHMMSS>_<name>/migration.sql
 *                                    when there is a diff, and print it
 *   tsx scripts/db-diff.ts --check   exit 1 when the migrations lag behind the schema (CI)
 *   tsx scripts/db-diff.ts           only print the diff
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { diffMigration } from '../src/db/migrate.js';

const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';
const ROOT = fileURLToPath(new URL('../', import.meta.url));
const MIGRATIONS_DIR = path.join(ROOT, 'prisma', 'migrations');

const args = process.argv.slice(2);
const check = args.includes('--check');
const rawName = args.find((a) => !a.startsWith('--'));
const unknown = args.filter((a) => a.startsWith('--') && a !== '--check');
if (unknown.length > 0 || (check && rawName)) {
  console.error('usage: tsx scripts/db-diff.ts [<migration_name> | --check]');
  process.exit(2);
}

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

/** UTC yyyymmddHHMMSS, bumped past the newest existing migration so the order is kept. */
function nextTimestamp(): string {
  const now = new Date().toISOString().replace(/\D/g, '').slice(0, 14);
  const existing = existsSync(MIGRATIONS_DIR)
    ? readdirSync(MIGRATIONS_DIR).map((d) => /^(\d{14})_/.exec(d)?.[1]).filter((t): t is string => !!t)
    : [];
  const newest = existing.sort().at(-1);
  return newest && newest >= now ? String(BigInt(newest) + 1n) : now;
}
