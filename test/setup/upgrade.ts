/**
 * Upgrade-path helpers: a throw-away database migrated only up to a given migration, as an
 * operator's database of an older release is, so that a test can write rows the older code could
 * have written (raw SQL) and then apply the remaining migrations exactly as a boot does
 * (src/db/migrate.ts applyMigrations).
 */
import { copyFile, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { applyMigrations } from '../../src/db/migrate.js';
import { createPgPool } from '../../src/db/pg.js';
import { TEST_DATABASE_URL } from './env.js';

/** prisma/migrations of this checkout. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../prisma/migrations/', import.meta.url));

/** The migration directory names, in the order they are applied. */
export async function migrationNames(): Promise<string[]> {
  const entries = await readdir(MIGRATIONS_DIR, { withFileTypes: true });
  return entries.filter((e) => e.isDirectory()).map((e) => e.name).sort();
}

/** The SQL text of one migration. */
export async function migrationSql(name: string): Promise<string> {
  return readFile(path.join(MIGRATIONS_DIR, name, 'migration.sql'), 'utf8');
}

/**
 * Applies the migrations up to and including `last` (a directory name) to `databaseUrl`, through
 * applyMigrations on a temporary copy of prisma/migrations holding only those (same files, so the
 * checksums recorded in _prisma_migrations are the ones a later full run expects).
 * @returns the names applied by this call.
 * @throws Error when `last` is not a migration of this checkout; whatever applyMigrations throws.
 */
export async function migrateThrough(databaseUrl: string, last: string): Promise<string[]> {
  const names = await migrationNames();
  if (!names.includes(last)) throw new Error(`no migration named ${last}`);
  const root = await mkdtemp(path.join(os.tmpdir(), 'cp-upgrade-'));
  try {
    const dir = path.join(root, 'prisma', 'migrations');
    await mkdir(dir, { recursive: true });
    await copyFile(path.join(MIGRATIONS_DIR, 'migration_lock.toml'), path.join(dir, 'migration_lock.toml'));
    for (const name of names.filter((n) => n <= last)) await cp(path.join(MIGRATIONS_DIR, name), path.join(dir, name), { recursive: true });
    return (await applyMigrations(databaseUrl, { rootDir: root })).applied;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/**
 * Applies the migrations that come before `name` (not `name` itself): the schema an older
 * release that did not have it ran on.
 */
export async function migrateBefore(databaseUrl: string, name: string): Promise<string[]> {
  const names = await migrationNames();
  const i = names.indexOf(name);
  if (i <= 0) throw new Error(`no migration before ${name}`);
  return migrateThrough(databaseUrl, names[i - 1]!);
}

/** A database of its own next to the test database, dropped by `drop`. */
export interface ScratchDatabase {
  url: string;
  /** A small pool on it (opened lazily by `pool()`, closed by `drop`). */
  pool(): pg.Pool;
  drop(): Promise<void>;
}

async function onServer(sql: string): Promise<void> {
  const admin = new URL(TEST_DATABASE_URL);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/**
 * Names (and drops if left over) a database `<test database>_up_<tag>`; it is not created, so
 * applyMigrations creates it as a boot on an empty server does.
 */
export async function scratchDatabase(tag: string): Promise<ScratchDatabase> {
  const base = new URL(TEST_DATABASE_URL);
  const name = `${base.pathname.slice(1)}_up_${tag}`;
  const quoted = `"${name.replace(/"/g, '""')}"`;
  await onServer(`DROP DATABASE IF EXISTS ${quoted} WITH (FORCE)`);
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${name}`;
  let pool: pg.Pool | undefined;
  return {
    url: url.toString(),
    pool: () => (pool ??= createPgPool(url.toString(), 3)),
    drop: async () => {
      await pool?.end();
      pool = undefined;
      await onServer(`DROP DATABASE IF EXISTS ${quoted} WITH (FORCE)`);
    },
  };
}

/** A temporary project root holding prisma/migrations of this checkout plus extra migrations. */
export interface MigrationsRoot {
  /** The directory to pass as applyMigrations' `rootDir`. */
  root: string;
  remove(): Promise<void>;
}

/**
 * Copies prisma/migrations of this checkout into a temporary root and adds `extra` (directory
 * name → migration.sql text) after them: a release whose next migration is under test.
 * @throws Error when an extra name does not sort after every migration of this checkout.
 */
export async function migrationsRootWith(extra: Record<string, string>): Promise<MigrationsRoot> {
  const names = await migrationNames();
  const root = await mkdtemp(path.join(os.tmpdir(), 'cp-migrations-'));
  const dir = path.join(root, 'prisma', 'migrations');
  await cp(MIGRATIONS_DIR, dir, { recursive: true });
  for (const [name, sql] of Object.entries(extra)) {
    if (name <= names[names.length - 1]!) throw new Error(`${name} would not be the last migration`);
    await mkdir(path.join(dir, name));
    await writeFile(path.join(dir, name, 'migration.sql'), sql);
  }
  return { root, remove: () => rm(root, { recursive: true, force: true }) };
}
