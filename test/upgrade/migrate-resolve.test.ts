/**
 * A migration that fails on the operator's data, and the way out without the Prisma CLI: the
 * engine rolls the failed migration's transaction back but records it as failed in
 * `_prisma_migrations`, every later run (and every boot) refuses with P3009, and
 * `npm run db:migrate -- --rolled-back <name>` (src/db/migrate.ts markMigrationRolledBack, the
 * offline `prisma migrate resolve --rolled-back`) lets the next run apply it once the data is
 * fixed. Each case has its own scratch database and its own copy of prisma/migrations with one
 * extra migration that adds a CHECK a row violates.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import {
  applyMigrations,
  markMigrationApplied,
  markMigrationRolledBack,
  MigrationFailedError,
  MIGRATE_LOCK_KEY,
  NotAFailedMigrationError,
} from '../../src/db/migrate.js';
import { migrationNames, migrationsRootWith, scratchDatabase, type MigrationsRoot, type ScratchDatabase } from '../setup/upgrade.js';
import { runScript } from '../setup/run-script.js';
import { TEST_REDIS_URL } from '../setup/env.js';

/** The extra migration: sorts after every shipped one; fails while an account has a blank name. */
const NAME = '29991231000000_accounts_name_not_blank';
const CHECK_SQL = `ALTER TABLE "accounts" ADD CONSTRAINT "accounts_name_not_blank" CHECK (btrim("name") <> '');\n`;
const RESOLVE_HINT = `npm run db:migrate -- --rolled-back ${NAME}`;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function scratch(tag: string): Promise<ScratchDatabase> {
  const db = await scratchDatabase(`${tag}_${process.pid}`);
  cleanups.push(() => db.drop());
  return db;
}

async function rootWithCheck(): Promise<MigrationsRoot> {
  const root = await migrationsRootWith({ [NAME]: CHECK_SQL });
  cleanups.push(() => root.remove());
  return root;
}

/**
 * A database on this checkout's migrations holding an account whose name the extra migration's
 * CHECK rejects, after one applyMigrations with the extra migration has failed on it.
 */
async function databaseWithFailedMigration(tag: string): Promise<{ db: ScratchDatabase; root: MigrationsRoot; accountId: string; firstError: unknown }> {
  const db = await scratch(tag);
  const root = await rootWithCheck();
  await applyMigrations(db.url);
  const accountId = randomUUID();
  await db.pool().query(
    `INSERT INTO accounts (id, external_id, name, kind, test_mode, created_at, referral_code)
     VALUES ($1, $2, '  ', 'ORGANIZATION', false, now(), $3)`,
    [accountId, `blank-${accountId}`, `R${accountId.slice(0, 8)}`],
  );
  const firstError = await applyMigrations(db.url, { rootDir: root.root }).then(
    () => new Error('applyMigrations succeeded on a row its CHECK rejects'),
    (e: unknown) => e,
  );
  return { db, root, accountId, firstError };
}

interface MigrationRow {
  migration_name: string;
  finished: boolean;
  rolled_back: boolean;
}

async function recordsOf(db: ScratchDatabase, name: string): Promise<MigrationRow[]> {
  const { rows } = await db.pool().query<MigrationRow>(
    `SELECT migration_name, finished_at IS NOT NULL AS finished, rolled_back_at IS NOT NULL AS rolled_back
       FROM _prisma_migrations WHERE migration_name = $1 ORDER BY started_at`,
    [name],
  );
  return rows;
}

async function allRecords(db: ScratchDatabase): Promise<unknown[]> {
  const { rows } = await db.pool().query(`SELECT * FROM _prisma_migrations ORDER BY started_at, id`);
  return rows;
}

async function hasCheck(db: ScratchDatabase): Promise<boolean> {
  const { rows } = await db.pool().query(`SELECT 1 FROM pg_constraint WHERE conname = 'accounts_name_not_blank'`);
  return rows.length === 1;
}

function dbMigrate(db: ScratchDatabase, args: string[]) {
  return runScript('scripts/db-migrate.ts', args, { ...process.env, DATABASE_URL: db.url });
}

describe('a migration that fails on the data, resolved offline', () => {
  it('fails and stays failed (P3009 on every later run and at boot, each saying what to do) until the operator fixes the row and runs db:migrate --rolled-back; the next run applies it', async () => {
    const { db, root, accountId, firstError } = await databaseWithFailedMigration('story');

    // The failure: the engine's error, the migration named, the way out spelled out.
    expect(firstError).toBeInstanceOf(MigrationFailedError);
    const first = firstError as MigrationFailedError;
    expect(first.failedMigrations).toEqual([NAME]);
    expect(first.message).toContain('accounts_name_not_blank');
    expect(first.message).toContain(RESOLVE_HINT);
    // Rolled back (no constraint), but recorded as failed.
    expect(await hasCheck(db)).toBe(false);
    expect(await recordsOf(db, NAME)).toEqual([{ migration_name: NAME, finished: false, rolled_back: false }]);

    // Every later run refuses, even once the data is fixed.
    await db.pool().query(`UPDATE accounts SET name = 'fixed' WHERE id = $1`, [accountId]);
    const second = await applyMigrations(db.url, { rootDir: root.root }).then(() => undefined, (e: unknown) => e);
    expect(second).toBeInstanceOf(MigrationFailedError);
    expect((second as MigrationFailedError).code).toBe('P3009');
    expect((second as MigrationFailedError).failedMigrations).toEqual([NAME]);
    expect((second as MigrationFailedError).message).toContain(RESOLVE_HINT);

    // So does the API's boot, in one fatal line that names the migration and the command.
    const boot = await runScript('src/main.ts', [], {
      ...process.env,
      DATABASE_URL: db.url,
      REDIS_URL: TEST_REDIS_URL,
      ADMIN_API_KEY: `cp_admin_${randomBytes(16).toString('hex')}`,
      LOG_LEVEL: 'info',
      MIGRATE_ON_BOOT: 'true',
      RUN_WORKERS: 'false',
      PORT: '0',
    });
    expect(boot.code).toBe(1);
    const fatal = boot.stdout.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; failedMigrations?: string[] }).filter((l) => l.level === 60);
    expect(fatal).toHaveLength(1);
    expect(fatal[0]!.failedMigrations).toEqual([NAME]);
    expect(fatal[0]!.msg).toContain(RESOLVE_HINT);

    // The operator marks it rolled back (the data was fixed above) ...
    const resolve = await dbMigrate(db, ['--rolled-back', NAME]);
    expect(resolve.stderr).toBe('');
    expect(resolve.code).toBe(0);
    expect(resolve.stdout).toContain(`marked ${NAME} rolled back`);
    expect(await recordsOf(db, NAME)).toEqual([{ migration_name: NAME, finished: false, rolled_back: true }]);

    // ... and the next run applies it, once; the failed attempt stays as the audit trail.
    expect(await applyMigrations(db.url, { rootDir: root.root })).toEqual({ applied: [NAME] });
    expect(await hasCheck(db)).toBe(true);
    expect(await recordsOf(db, NAME)).toEqual([
      { migration_name: NAME, finished: false, rolled_back: true },
      { migration_name: NAME, finished: true, rolled_back: false },
    ]);
    expect(await applyMigrations(db.url, { rootDir: root.root })).toEqual({ applied: [] });

    // Resolving it again is refused: it is applied now.
    const again = await dbMigrate(db, ['--rolled-back', NAME]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(NAME);
    expect(again.stderr).toMatch(/is applied, not failed/);
  });

  it('--applied: a failed migration the operator completed by hand is recorded as applied (with its checksum), and the next run applies nothing', async () => {
    const { db, root, accountId, firstError } = await databaseWithFailedMigration('applied');
    expect(firstError).toBeInstanceOf(MigrationFailedError);
    await db.pool().query(`UPDATE accounts SET name = 'fixed' WHERE id = $1`, [accountId]);
    await db.pool().query(CHECK_SQL);

    await markMigrationApplied(db.url, NAME, { rootDir: root.root });
    expect(await recordsOf(db, NAME)).toEqual([
      { migration_name: NAME, finished: false, rolled_back: true },
      { migration_name: NAME, finished: true, rolled_back: false },
    ]);
    const { rows: checksums } = await db.pool().query<{ checksum: string }>(`SELECT checksum FROM _prisma_migrations WHERE migration_name = $1`, [NAME]);
    expect(new Set(checksums.map((r) => r.checksum)).size).toBe(1); // the failed run's checksum of the same file
    expect(await applyMigrations(db.url, { rootDir: root.root })).toEqual({ applied: [] });
    await expect(markMigrationApplied(db.url, NAME, { rootDir: root.root })).rejects.toBeInstanceOf(NotAFailedMigrationError);
  });

  it('refuses (a message naming the problem, _prisma_migrations unchanged) a name that is not a failed migration (exit 1), and bad arguments (exit 2, as the other commands)', async () => {
    const db = await scratch('refuse');
    await applyMigrations(db.url);
    const applied = (await migrationNames())[0]!;
    const before = await allRecords(db);

    const cases: Array<[string[], number, RegExp]> = [
      [['--rolled-back', applied], 1, new RegExp(`${applied} is applied, not failed`)],
      [['--applied', applied], 1, new RegExp(`${applied} is applied, not failed`)],
      [['--rolled-back', 'init'], 1, /no migration named init was ever run on this database/],
      [['--rolled-back'], 2, /--rolled-back/],
      [['--rolled-back', applied, '--applied', applied], 2, /only one of --rolled-back and --applied/],
      [['--roll-back', applied], 2, /--roll-back/],
    ];
    for (const [args, code, message] of cases) {
      const run = await dbMigrate(db, args);
      expect({ args, code: run.code }).toEqual({ args, code });
      expect(run.stderr).toMatch(message);
    }
    expect(await allRecords(db)).toEqual(before);

    // The library refuses the same way, with a type the caller can test.
    const refused = await markMigrationRolledBack(db.url, applied).then(() => undefined, (e: unknown) => e);
    expect(refused).toBeInstanceOf(NotAFailedMigrationError);
    expect(refused).toMatchObject({ migrationName: applied, state: 'applied' });
  });

  it('waits for the migrations lock: marking does not run while an applyMigrations (or another mark) holds it', async () => {
    const { db, firstError } = await databaseWithFailedMigration('lock');
    expect(firstError).toBeInstanceOf(MigrationFailedError);
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    cleanups.push(() => holder.end());
    await holder.query('SELECT pg_advisory_lock($1)', [MIGRATE_LOCK_KEY]);

    const marking = markMigrationRolledBack(db.url, NAME);
    marking.catch(() => undefined);
    // Wait (bounded by the test timeout) until the mark is queued on the lock.
    for (;;) {
      const { rows } = await holder.query(
        `SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
          WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database() AND l.objid = $1`,
        [MIGRATE_LOCK_KEY],
      );
      if (rows.length > 0) break;
      await new Promise((r) => setImmediate(r));
    }
    expect(await recordsOf(db, NAME)).toEqual([{ migration_name: NAME, finished: false, rolled_back: false }]);
    await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATE_LOCK_KEY]);
    await marking;
    expect(await recordsOf(db, NAME)).toEqual([{ migration_name: NAME, finished: false, rolled_back: true }]);
  });
});
