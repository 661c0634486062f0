/**
 * CLI: applies pending Prisma migrations (prisma/migrations/) to $DATABASE_URL with the wasm
 * schema engine — the offline equivalent of `prisma migrate deploy`. Creates the database when
 * missing. Prints each applied migration; exits 1 on failure (a failed migration: the message
 * says how to resolve it).
 *
 * With `--rolled-back <name>` / `--applied <name>` it resolves a migration recorded as failed
 * instead — the offline `prisma migrate resolve` (src/db/migrate.ts markMigrationRolledBack /
 * markMigrationApplied) — and applies nothing; exits 1, changing nothing, for a name that is not
 * a failed migration.
 *
 * Wrong arguments (an unknown option, a missing name, both --rolled-back and --applied) print
 * what is wrong and the usage on stderr and exit 2, before anything is read or changed, as the
 * other operator commands do (it used to exit 1, like a failed migration). `--help` says what it does.
 *
 * Usage: tsx scripts/db-migrate.ts [--rolled-back <name> | --applied <name> | --help]
 *        (or: npm run db:migrate [-- --rolled-back <name>])
 */
import { parseArgs } from 'node:util';
import {
  applyMigrations,
  markMigrationApplied,
  markMigrationRolledBack,
  redactDatabaseUrl as redact,
} from '../src/db/migrate.js';
import { USAGE_ERROR_EXIT_CODE } from '../src/util/command-args.js';

const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';
const USAGE = 'usage: npm run db:migrate [-- --rolled-back <migration name> | -- --applied <migration name> | -- --help]';

const databaseUrl = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;

/** What this run does: apply, or resolve one failed migration. */
type Command = { kind: 'help' } | { kind: 'apply' } | { kind: 'resolve'; as: 'rolled-back' | 'applied'; name: string };

function parseCommand(argv: string[]): Command {
  const { values } = parseArgs({
    args: argv,
    options: { 'rolled-back': { type: 'string' }, applied: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return { kind: 'help' };
  const rolledBack = values['rolled-back'];
  const applied = values.applied;
  if (rolledBack !== undefined && applied !== undefined) throw new Error('give only one of --rolled-back and --applied');
  const name = rolledBack ?? applied;
  if (name === undefined) return { kind: 'apply' };
  if (name.trim() === '' || name.startsWith('-')) throw new Error(`--${rolledBack !== undefined ? 'rolled-back' : 'applied'} needs a migration name`);
  return { kind: 'resolve', as: rolledBack !== undefined ? 'rolled-back' : 'applied', name };
}

let command: Command;
try {
  command = parseCommand(process.argv.slice(2));
} catch (error) {
  console.error(`db:migrate: ${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  process.exit(USAGE_ERROR_EXIT_CODE);
}

const log = (msg: string) => console.log(msg);
if (command.kind === 'help') {
  console.log(
    'Applies pending migrations (prisma/migrations/) to $DATABASE_URL, creating the database when missing; ' +
      'or, with --rolled-back / --applied <migration name>, resolves a migration recorded as failed and applies nothing.\n' +
      USAGE,
  );
} else if (command.kind === 'apply') {
  try {
    const { applied } = await applyMigrations(databaseUrl, { log });
    console.log(
      applied.length === 0
        ? `db:migrate: ${redact(databaseUrl)} already up to date`
        : `db:migrate: applied ${applied.length} migration(s) to ${redact(databaseUrl)}`,
    );
  } catch (error) {
    console.error(`db:migrate failed on ${redact(databaseUrl)}:`, error instanceof Error ? error.message : error);
    process.exitCode = 1;
  }
} else {
  const { as, name } = command;
  try {
    if (as === 'rolled-back') await markMigrationRolledBack(databaseUrl, name, { log });
    else await markMigrationApplied(databaseUrl, name, { log });
    console.log(
      as === 'rolled-back'
        ? `db:migrate: marked ${name} rolled back on ${redact(databaseUrl)}; \`npm run db:migrate\` (or the next boot) runs it again`
        : `db:migrate: marked ${name} applied on ${redact(databaseUrl)} (its SQL was not run)`,
    );
  } catch (error) {
    console.error(`db:migrate: cannot mark ${name} ${as === 'rolled-back' ? 'rolled back' : 'applied'} on ${redact(databaseUrl)}:`, error instanceof Error ? error.message : error);
    process.exitCode = 1;
  }
}

// The wasm schema engine (@prisma/schema-engine-wasm) leaves a 10-second timer of its own behind,
// which kept this process alive that long after its work was done: exit now.
process.exit(process.exitCode ?? 0);
