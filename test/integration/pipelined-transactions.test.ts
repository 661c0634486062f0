/**
 * The ledger pool's pipelined transactions (src/db/pg.ts: pipeline mode, withTransaction,
 * PipelinedCommit) on the real PostgreSQL: BEGIN travels with the first statement and a
 * PipelinedCommit's writes with COMMIT, and a group's state read goes with its lock, so a charge
 * transaction takes 2 round trips instead of 6, each one socket write (coalesceWrites), and none of it weakens the transaction: a failed write commits nothing and is reported as
 * itself, and a transaction that failed is never reported as committed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createPgPool, PipelinedCommit, withTransaction } from '../../src/db/pg.js';
import { QueryTimings } from '../../src/db/query-timings.js';
import { createPricingState } from '../../src/services/pricing-state.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { applyCharge, chargeAccounts, pricerFor, readChargeStates, recordUsageBatch } from '../../src/services/record-usage.js';
import { AccountTx } from '../../src/services/account-tx.js';
import { validateUsageInput } from '../../src/services/usage-command.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { ServiceContext } from '../../src/services/context.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

// ONE connection, so every statement below runs on the same session (its temp table) and the
// round trips counted are those of the code under test.
const pool = createPgPool(TEST_DATABASE_URL, 1);
const timings = new QueryTimings();
timings.instrument(pool);
const services: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool, 60_000) };

// Writes the socket hands to the operating system (one `write`/`writev` each): Node's
// net.Socket calls `_write` for one buffered chunk and `_writev` for several.
let socketWrites = 0;
pool.on('connect', (client) => {
  const stream = (client as unknown as { connection: { stream: Record<'_write' | '_writev', (...a: unknown[]) => unknown> } }).connection.stream;
  for (const method of ['_write', '_writev'] as const) {
    const original = stream[method].bind(stream);
    stream[method] = (...a: unknown[]) => {
      socketWrites++;
      return original(...a);
    };
  }
});

beforeAll(async () => {
  await pool.query('CREATE TEMP TABLE pipeline_probe (id int PRIMARY KEY)');
});

afterAll(async () => {
  await pool.end();
});

/** Round trips and socket writes `fn` made on the pool. */
async function tripsAndWritesOf(fn: () => Promise<unknown>): Promise<{ trips: number; writes: number }> {
  const before = { trips: timings.roundTrips(), writes: socketWrites };
  await fn();
  return { trips: timings.roundTrips() - before.trips, writes: socketWrites - before.writes };
}

const probeIds = async () => (await pool.query('SELECT id FROM pipeline_probe ORDER BY id')).rows.map((r) => r.id as number);

describe('pipelined transactions', () => {
  it('BEGIN goes with the first statement and the writes with COMMIT: 2 round trips of one socket write each, committed, result read after the writes', async () => {
    let seen: number[] = [];
    const { trips, writes } = await tripsAndWritesOf(async () => {
      const out = await withTransaction(pool, async (tx) => {
        await tx.query('INSERT INTO pipeline_probe VALUES (1)');
        const writes = [
          tx.query('INSERT INTO pipeline_probe VALUES (2)'),
          tx.query('INSERT INTO pipeline_probe VALUES (3) RETURNING id').then((r) => (seen = r.rows.map((x) => x.id as number))),
        ];
        return new PipelinedCommit(writes, () => seen.length);
      });
      expect(out).toBe(1); // result() ran after the RETURNING was read
    });
    expect(trips).toBe(2);
    // BEGIN + the first INSERT in one write, the two INSERTs + COMMIT in another (coalesceWrites;
    // node-postgres alone writes each statement on its own: 5 writes).
    expect(writes).toBe(2);
    expect(await probeIds()).toEqual([1, 2, 3]);
    await pool.query('TRUNCATE pipeline_probe');
  });

  it('a failed write commits nothing, and the error is its own, not the 25P02 of the statements behind it', async () => {
    await pool.query('INSERT INTO pipeline_probe VALUES (10)');
    const attempt = withTransaction(pool, async (tx) => {
      await tx.query('INSERT INTO pipeline_probe VALUES (11)');
      const writes = [tx.query('INSERT INTO pipeline_probe VALUES (10)'), tx.query('INSERT INTO pipeline_probe VALUES (12)')];
      for (const w of writes) w.catch(() => undefined);
      return new PipelinedCommit(writes, () => 'committed');
    });
    await expect(attempt).rejects.toMatchObject({ code: '23505' }); // unique_violation of the duplicate 10
    expect(await probeIds()).toEqual([10]); // neither 11 nor 12
    expect((await pool.query('SELECT 1 AS ok')).rows[0].ok).toBe(1); // the connection is clean again
    await pool.query('TRUNCATE pipeline_probe');
  });

  it('a transaction whose statement failed is not reported as committed, even when the function swallowed the error', async () => {
    const attempt = withTransaction(pool, async (tx) => {
      await tx.query('INSERT INTO pipeline_probe VALUES (20)');
      await tx.query('INSERT INTO pipeline_probe VALUES (20)').catch(() => undefined);
      return 'looked fine';
    });
    await expect(attempt).rejects.toThrow(/COMMIT was answered with ROLLBACK/);
    expect(await probeIds()).toEqual([]);
  });

  it('a group-commit charge transaction takes 2 round trips of one socket write each (BEGIN + lock + state read, writes + COMMIT), single or multi-account', async () => {
    const committer = new GroupCommitter(pool, services.clock, chargeAccounts, applyCharge, { maxTransactions: 1 });
    const a = await createFundedAccount(services, { paid: 100 });
    const b = await createFundedAccount(services, { paid: 100 });
    const charge = async (accountId: string, key: string) => {
      const cmd = validateUsageInput({ accountId, idempotencyKey: key, category: 'unit' });
      const price = await pricerFor(services, cmd); // the price book is cached after the first call
      return () => committer.charge(cmd, price);
    };
    await (await charge(a, 'warm'))(); // parses the named statements and loads the price book
    const one = await charge(a, 'one');
    expect(await tripsAndWritesOf(one)).toEqual({ trips: 2, writes: 2 });
    // recordUsageBatch over two accounts: one transaction, the same 2 round trips.
    await recordUsageBatch(services, [{ accountId: a, idempotencyKey: 'warm-batch', category: 'unit' }], { maxItems: 10 });
    const { trips, writes } = await tripsAndWritesOf(async () => {
      const results = await recordUsageBatch(services, [
        { accountId: a, idempotencyKey: `batch-${randomUUID()}`, category: 'unit' },
        { accountId: b, idempotencyKey: `batch-${randomUUID()}`, category: 'unit' },
        { accountId: b, idempotencyKey: `batch-${randomUUID()}`, category: 'unit' },
      ], { maxItems: 10 });
      expect(results.map((r) => r.ok)).toEqual([true, true, true]);
    });
    expect({ trips, writes }).toEqual({ trips: 2, writes: 2 }); // the price book and settings come from the pricing cache
    const { rows } = await pool.query('SELECT account_id, count(*)::int AS n FROM usage_events WHERE account_id = ANY($1) GROUP BY 1', [[a, b]]);
    expect(Object.fromEntries(rows.map((r) => [r.account_id, r.n]))).toEqual({ [a]: 4, [b]: 2 });
    await expectLedgerInvariant(pool, a);
    await expectLedgerInvariant(pool, b);
  });

  it('a state read issued with the lock at another instant than the locked account\'s now is read again', async () => {
    // As when a test clock moves between the lock statement and the state read behind it: the
    // read issued with the lock judged expiries at `later`, the account is locked at `now`.
    const now = new Date();
    const later = new Date(now.getTime() + 2 * 3600_000);
    const accountId = await createFundedAccount(services, { free: 10, freeExpiresAt: new Date(now.getTime() + 3600_000), paid: 10 });
    const cmd = validateUsageInput({ accountId, idempotencyKey: `moved-${randomUUID()}`, category: 'unit' });
    const items = [{ cmd, price: await pricerFor(services, cmd) }];
    const out = await withTransaction(pool, async (tx) => {
      const locking = AccountTx.lockMany(tx, [accountId], now);
      const statesRead = readChargeStates(tx, [{ accountId, items }], later);
      const locked = await locking;
      expect((await statesRead).get(accountId)!.now).toEqual(later); // the FREE batch had expired at that instant
      const pending: Promise<unknown>[] = [];
      const charged = await chargeAccounts(tx, [{ atx: locked.get(accountId)!, items }], pending, statesRead);
      await AccountTx.finishMany(tx, [...locked.values()], pending);
      return new PipelinedCommit(pending, () => charged[0]![0]!);
    });
    expect(out.ok).toBe(true);
    // Decided on the state at `now`: the FREE batch, not yet expired then, paid (FREE is drawn first).
    const { rows } = await pool.query(
      `SELECT b.type FROM drawdowns d JOIN credit_batches b ON b.id = d.batch_id JOIN usage_events e ON e.id = d.usage_event_id
        WHERE e.account_id = $1`,
      [accountId],
    );
    expect(rows.map((r) => r.type)).toEqual(['FREE']);
    await expectLedgerInvariant(pool, accountId);
  });
});
