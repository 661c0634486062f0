/**
 * A database of the test run, made as the global setup makes the shared one: every migration
 * applied (the same code path as `npm run serve`), the settings at known values and the test price
 * book in force.
 */
import pg from 'pg';
import { applyMigrations } from '../../src/db/migrate.js';
import { createPgPool } from '../../src/db/pg.js';
import { createPricingState } from '../../src/services/pricing-state.js';
import { publishPriceBook } from '../../src/services/publish-price-book.js';
import { TEST_PRICE_BOOK } from './test-price-book.js';

/** `databaseUrl` with its database name replaced by `name`. */
export function withDatabaseName(databaseUrl: string, name: string): string {
  const url = new URL(databaseUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** The database name of `databaseUrl`. */
export function databaseNameOf(databaseUrl: string): string {
  return decodeURIComponent(new URL(databaseUrl).pathname.slice(1));
}

/**
 * Drops the database of `databaseUrl` when it exists (disconnecting its sessions: PostgreSQL 13+
 * `WITH (FORCE)`), through the server's `postgres` database.
 * @throws the driver's error when the server refuses.
 */
export async function dropTestDatabase(databaseUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: withDatabaseName(databaseUrl, 'postgres') });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${databaseNameOf(databaseUrl).replace(/"/g, '""')}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/**
 * Makes the database of `databaseUrl` afresh: drops it ({@link dropTestDatabase}), applies every
 * migration to a new one, sets the settings the tests count on (a 100-credit welcome bonus that
 * expires after 30 days, 1 credit = $0.01) and publishes TEST_PRICE_BOOK.
 * @throws what the drop, applyMigrations or publishPriceBook throw.
 */
export async function createTestDatabase(databaseUrl: string): Promise<void> {
  await dropTestDatabase(databaseUrl);
  await applyMigrations(databaseUrl);
  const pool = createPgPool(databaseUrl, 2);
  try {
    await pool.query(
      `UPDATE settings SET welcome_bonus_micro_credits = 100000000, welcome_bonus_expires_after_days = 30, credit_usd_value = 0.01 WHERE id = 1`,
    );
    await publishPriceBook({ pool, clock: () => new Date(), pricing: createPricingState(pool, 0) }, TEST_PRICE_BOOK);
  } finally {
    await pool.end();
  }
}
