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
 * Exits 1 on bad arguments or failure (2 for usage errors).
 */
import { parseArgs } from 'node:util';

import { API_KEY_CACHE_TTL_MS, createApiKey, revokeApiKey } from '../src/auth/api-keys.js';
import { SCOPES } from '../src/auth/principal.js';
import { cliActor } from '../src/audit/audit-log.js';
import { loadEnvOrExit } from '../src/config/env.js';
import { createPgPool } from '../src/db/pg.js';
import { LedgerError } from '../src/ledger/errors.js';

const USAGE = `usage:
  tsx scripts/create-api-key.ts --name <name> --scopes <scope,scope,...> [--public]
  tsx scripts/create-api-key.ts --revoke <id>
scopes: ${SCOPES.join(', ')}`;

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
  console.error(`${(err as Error).message}\n${USAGE}`);
  process.exit(2);
}

if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const creating = values.name !== undefined || values.scopes !== undefined;
if (creating === (values.revoke !== undefined) || (creating && (values.name === undefined || values.scopes === undefined))) {
  console.error(USAGE);
  process.exit(2);
}

const env = loadEnvOrExit();
const pool = createPgPool(env.DATABASE_URL, 1);
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
