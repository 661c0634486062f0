/**
 * Vitest global setup: a fresh test database with every migration applied (the same code path
 * as `npm run serve`), the settings at known values, and the test price book in force.
 */
import pg from 'pg';
import { applyMigrations } from '../../src/db/migrate.js';
import { createPgPool } from '../../src/db/pg.js';
import { createPricingState } from '../../src/services/pricing-state.js';
import { publishPriceBook } from '../../src/services/publish-price-book.js';
import { TEST_DATABASE_URL } from './env.js';
import { TEST_PRICE_BOOK } from './test-price-book.js';

/**
 * Runs once before all test files: drops the database of TEST_DATABASE_URL, applies every
 * migration to a new one, sets the settings the tests count on (a 100-credit welcome bonus that
 * expires after 30 days, 1 credit = $0.01) and publishes TEST_PRICE_BOOK.
 */
export default async function setup(): Promise<void> {
  const url = new URL(TEST_DATABASE_URL);
  const dbName = url.pathname.slice(1);
  const admin = new URL(TEST_DATABASE_URL);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${dbName.replace(/"/g, '""')}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
  await applyMigrations(TEST_DATABASE_URL);
  const pool = createPgPool(TEST_DATABASE_URL, 2);
  try {
    await pool.query(
      `UPDATE settings SET welcome_bonus_micro_credits = 100000000, welcome_bonus_expires_after_days = 30, credit_usd_value = 0.01 WHERE id = 1`,
    );
    await publishPriceBook({ pool, clock: () => new Date(), pricing: createPricingState(pool, 0) }, TEST_PRICE_BOOK);
  } finally {
    await pool.end();
  }
}
