/**
 * CLI: creates or revokes a service API key in $DATABASE_URL. The environment is read and
 * validated like the server's (src/config/env.ts: DATABASE_URL, REDIS_URL, LIVE_CHANNEL_PREFIX
 * and their defaults); an invalid one exits 1 listing every problem.
 *
 * Usage:
 *   tsx scripts/create-api-key.ts --name billing-service --scopes usage:write,read
 *   tsx scripts/create-api-key.ts --name storefront --scopes usage:write --public
 *   tsx scripts/create-api-key.ts --revoke <id>
 *   --public: the key acts for public visitors; refusals never show billing details.
 *   (or: npm run apikey:create -- --name ... --scopes ...)
 *
 * Creation prints the token exactly once (only its SHA-256 is stored, it cannot be shown
 * again), plus the key's id and public prefix. Scopes: admin, usage:write, credits:write, read.
 *
 * Revocation commits in the database, then announces it on $REDIS_URL
 * (src/auth/key-revocation.ts), so every running server refuses the key from its next request
 * and ends its open live streams. When Redis cannot be reached it prints a warning on stderr and
 * still exits 0: the key is revoked, and servers stop accepting it within their lookup cache's
 * TTL (API_KEY_CACHE_TTL_MS); running the command again re-announces it.
 * Both are recorded in the audit trail (`api_key.created` / `api_key.revoked`, actor kind `cli`,
 * named after the command and the OS user; never the token), in the same transaction.
 * PostgreSQL connections wait at most PG_CONNECT_TIMEOUT_MS (then: exit 1). `--help` says what it
 * does. Exits 1 on values the service refuses (a bad scope or name, an id that is not a uuid or
 * names no key) or failure, with the error's code; 2 for usage errors (a wrong combination of
 * options, named on the first line of stderr; nothing read or changed).
 */
import { parseArgs } from 'node:util';

import { API_KEY_CACHE_TTL_MS, createApiKey, revokeApiKey } from '../src/auth/api-keys.js';
import { SCOPES } from '../src/auth/principal.js';
import { cliActor } from '../src/audit/audit-log.js';
import { loadEnvOrExit } from '../src/config/env.js';
import { createPgPool, ledgerSessionLimits } from '../src/db/pg.js';
import { LedgerError } from '../src/ledger/errors.js';

const USAGE = `usage:
  tsx scripts/create-api-key.ts --name <name> --scopes <scope,scope,...> [--public]
  tsx scripts/create-api-key.ts --revoke <id>
scopes: ${SCOPES.join(', ')}`;
const HELP = `Creates a service API key in $DATABASE_URL and prints its token once, or revokes one
(and announces the revocation to the running servers on $REDIS_URL).
${USAGE}
--public: the key acts for public visitors; refusals never show billing details.`;

/** Prints `message` (what is wrong, one line) and the usage on stderr, and exits 2: nothing was read or changed. */
function usageError(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

let values: { name?: string; scopes?: string; revoke?: string; public?: boolean; help?: boolean };
try {
  ({ values } = parseArgs({
    options: {
      name: { type: 'string' },
      scopes: { type: 'string' },
      revoke: { type: 'string' },
      public: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usageError((err as Error).message);
}

if (values.help) {
  console.log(HELP);
  process.exit(0);
}
// Each wrong combination says what is wrong: `--public --revoke <id>` used to revoke and ignore
// --public, and a missing --scopes printed the usage alone.
const creating = values.name !== undefined || values.scopes !== undefined;
if (creating && values.revoke !== undefined) usageError('give --name and --scopes, or --revoke, not both');
if (values.public && !creating) usageError(`--public goes with --name and --scopes${values.revoke !== undefined ? ', not --revoke' : ''}`);
if (!creating && values.revoke === undefined) usageError('give --name and --scopes to create a key, or --revoke <id>');
if (creating && values.scopes === undefined) usageError('--scopes is required with --name');
if (creating && values.name === undefined) usageError('--name is required with --scopes');

const env = loadEnvOrExit();
// The server's connection limits: without PG_CONNECT_TIMEOUT_MS a PostgreSQL that accepts the
// connection and never answers kept the command waiting for ever.
const pool = createPgPool(env.DATABASE_URL, 1, ledgerSessionLimits(env));
try {
  if (values.revoke !== undefined) {
    let announced: { announcedTo: number } | { failed: string } | undefined;
    const newly = await revokeApiKey(pool, values.revoke, {
      actor: cliActor('apikey:create --revoke'),
      announce: { redisUrl: env.REDIS_URL, channelPrefix: env.LIVE_CHANNEL_PREFIX, onOutcome: (outcome) => (announced = outcome) },
    });
    console.log(newly ? `revoked API key ${values.revoke}` : `API key ${values.revoke} was already revoked`);
    if (announced && 'announcedTo' in announced) {
      console.log(`announced on Redis to ${announced.announcedTo} server instance(s): they refuse the key from their next request`);
    } else if (announced) {
      console.error(
        `warning: the key is revoked, but could not announce the revocation on Redis (${announced.failed}); ` +
          `running servers stop accepting it within ${API_KEY_CACHE_TTL_MS / 1000} s (their lookup cache). Run this again to re-announce.`,
      );
    }
  } else {
    const scopes = (values.scopes ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');
    const key = await createApiKey(pool, { name: values.name ?? '', scopes, audience: values.public ? 'PUBLIC' : 'INTERNAL', actor: cliActor('apikey:create') });
    console.log(`id:     ${key.id}`);
    console.log(`prefix: ${key.prefix}`);
    console.log(`token:  ${key.token}`);
    console.error('Store the token now: it is not stored anywhere and cannot be shown again.');
  }
} catch (err) {
  console.error(err instanceof LedgerError ? `${err.code}: ${err.message}` : `failed: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  await pool.end();
}
