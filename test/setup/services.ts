/**
 * A real ServiceContext on the test database, with a controllable clock.
 */
import type pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { createPgPool, type LedgerSessionLimits } from '../../src/db/pg.js';
import { createPricingState } from '../../src/services/pricing-state.js';
import type { ServiceContext } from '../../src/services/context.js';
import { TEST_DATABASE_URL } from './env.js';
import { LedgerError } from '../../src/ledger/errors.js';

/** A service context plus the handle to move its clock. */
export interface TestServices extends ServiceContext {
  /** Sets the wall clock the services see (null: real time). */
  setNow(at: Date | null): void;
  close(): Promise<void>;
}

/** Creates services on the test database, or on `databaseUrl` (pool of `max` connections, with the session `limits`). */
export function createTestServices(max = 20, databaseUrl = TEST_DATABASE_URL, limits: LedgerSessionLimits = {}): TestServices {
  const pool: pg.Pool = createPgPool(databaseUrl, max, limits);
  let fixed: Date | null = null;
  return {
    pool,
    clock: () => fixed ?? new Date(),
    pricing: createPricingState(pool, 0),
    setNow(at) {
      fixed = at;
    },
    close: () => pool.end(),
  };
}

/**
 * Registers the vitest hooks of a test file's services: beforeAll creates them
 * ({@link createTestServices}, a pool of `max` connections on the test database); afterAll sets
 * their clock back to real time and closes the pool (nothing when beforeAll failed).
 * @returns services for the file's tests, made at once: each member reads or calls those of the
 * services beforeAll created (so they can be spread into another ServiceContext, passed to
 * services, or have their clock moved, as the created ones).
 * @throws Error (from a member) when used before beforeAll ran, e.g. at the top of the file.
 */
export function useTestServices(max = 20): TestServices {
  let current: TestServices | undefined;
  beforeAll(() => {
    current = createTestServices(max);
  });
  afterAll(async () => {
    current?.setNow(null);
    await current?.close();
  });
  const made = (): TestServices => {
    if (!current) throw new Error('useTestServices: the services are created in beforeAll; use them inside a test or hook');
    return current;
  };
  return {
    get pool() {
      return made().pool;
    },
    get pricing() {
      return made().pricing;
    },
    clock: () => made().clock(),
    setNow: (at) => made().setNow(at),
    close: () => made().close(),
  };
}

/**
 * The outcome of one of several concurrent calls (Promise.allSettled), as a code to count:
 * 'OK' when it resolved, the LedgerError's code when it was refused, and 'UNEXPECTED: …' for any
 * other error (which a test then sees in its expected counts).
 */
export function settledCode(result: PromiseSettledResult<unknown>): string {
  if (result.status === 'fulfilled') return 'OK';
  return result.reason instanceof LedgerError ? result.reason.code : `UNEXPECTED: ${String(result.reason)}`;
}

/**
 * Resolves once at least `n` sessions of the test database wait for a lock
 * (`pg_stat_activity.wait_event_type = 'Lock'`), polling between turns of the event loop: how a
 * race test knows its queued changes are waiting behind a held row lock, without sleeps.
 * @throws Error when they never show up (`maxPolls` polls).
 */
export async function lockWaiters(pool: pg.Pool, n: number, maxPolls = 2000): Promise<void> {
  for (let i = 0; i < maxPolls; i++) {
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`);
    if (rows[0].n >= n) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  throw new Error(`${n} lock waiters never showed up`);
}
