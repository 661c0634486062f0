/**
 * Vitest global setup: a fresh test database with every migration applied (the same code path
 * as `npm run serve`), the settings at known values, and the test price book in force.
 */
import { TEST_DATABASE_URL } from './env.js';
import { createTestDatabase } from './test-database.js';

/**
 * Runs once before all test files: makes the database of TEST_DATABASE_URL afresh
 * (test-database.ts createTestDatabase: dropped, every migration applied, a 100-credit welcome
 * bonus that expires after 30 days, 1 credit = $0.01, TEST_PRICE_BOOK published).
 */
export default async function setup(): Promise<void> {
  await createTestDatabase(TEST_DATABASE_URL);
}
