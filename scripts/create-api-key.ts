/**
 * CLI: creates or revokes a service API key in $DATABASE_URL
 * (default postgresql://postgres@127.0.0.1:5432/creditpool).
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
 * Exits 1 on bad arguments or failure (2 for usage errors).
 */
import { parseArgs } from 'node:util';

import { createApiKey, revokeApiKey } from '../src/auth/api-keys.js';
import { SCOPES } from '../src/auth/principal.js';
import { createPgPool } from '../src/db/pg.js';
import { LedgerError } from '../src/ledger/errors.js';

const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';

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

const pool = createPgPool(process.env.DATABASE_URL || DEFAULT_DATABASE_URL, 1);
try {
  if (values.revoke !== undefined) {
    const newly = await revokeApiKey(pool, values.revoke);
    console.log(newly ? `revoked API key ${values.revoke}` : `API key ${values.revoke} was already revoked`);
  } else {
    const scopes = (values.scopes ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');
    const key = await createApiKey(pool, { name: values.name ?? '', scopes, audience: values.public ? 'PUBLIC' : 'INTERNAL' });
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
