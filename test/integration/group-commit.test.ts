/**
 * Group commit (CHARGE_PATH=group) on the real PostgreSQL: the same guarantees as one
 * transaction per charge (no overspend, drawdown order, one event per idempotency key, the ledger
 * invariant), one balance version and outbox snapshot per group with one usage update per charge,
 * charges really grouped, and an unexpected failure of one charge isolated from the rest of its
 * group.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import fc from 'fast-check';
import { applyCharge, chargeAccounts, pricerFor, recordUsage, type GroupItem } from '../../src/services/record-usage.js';
import { validateUsageInput } from '../../src/services/usage-command.js';
import { AccountTx } from '../../src/services/account-tx.js';
import { withTransaction } from '../../src/db/pg.js';
import { GroupCommitter, type ApplyCharge, type ChargeAccounts } from '../../src/services/group-commit.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { holdItem, reserveCredits } from '../../src/services/reserve-credits.js';
import { settleItem, settleReservation } from '../../src/services/settle-reservation.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { ReservationOwners } from '../../src/services/reservation-owners.js';

let services: TestServices;
let committer: GroupCommitter;

beforeAll(() => {
  services = createTestServices(20);
  committer = new GroupCommitter(services.pool, services.clock, chargeAccounts, applyCharge);
  services.groupCommit = committer;
});

afterAll(async () => {
  await services.close();
});

/** `client` with the name of every named statement it sends pushed onto `names` (the rest of the client as it is). */
function namesOf(client: pg.PoolClient, names: string[]): pg.PoolClient {
  return new Proxy(client, {
    get(target, prop) {
      if (prop === 'query') {
        return (q: unknown, ...rest: unknown[]) => {
          if (q && typeof q === 'object' && 'name' in q && typeof q.name === 'string') names.push(q.name);
          return (target.query as (...args: unknown[]) => unknown)(q, ...rest);
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

const codeOf = (r: PromiseSettledResult<unknown>) =>
  r.status === 'fulfilled' ? 'OK' : r.reason instanceof LedgerError ? r.reason.code : `UNEXPECTED: ${String(r.reason)}`;

/**
 * A committer of its own with ONE transaction slot (so calls made while it is busy wait together)
 * and the services that charge through it.
 */
function oneSlot(): { committer: GroupCommitter; local: TestServices & { groupCommit: GroupCommitter } } {
  const committer = new GroupCommitter(services.pool, services.clock, chargeAccounts, applyCharge, { maxTransactions: 1 });
  return { committer, local: { ...services, groupCommit: committer } };
}

/**
 * Keeps the committer's only transaction slot busy (an operation on `accountId` that waits), so
 * calls made meanwhile wait together. The returned release(count) waits until `count` items are
 * waiting, frees the slot, and returns the number the transaction that takes them will have.
 */
function occupySlot(committer: GroupCommitter, accountId: string): (count: number) => Promise<number> {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const blocker = committer.withAccount(accountId, () => gate);
  return async (count) => {
    while (committer.stats().waiting < count) await new Promise((resolve) => setImmediate(resolve));
    const shared = committer.stats().transactions + 1;
    open();
    await blocker;
    return shared;
  };
}

describe('group commit', () => {
  it('200 concurrent 1-credit charges on 50 credits: exactly 50 succeed, in groups, FREE first, one version per group', async () => {
    const accountId = await createFundedAccount(services, { free: 20, paid: 30 });
    const { rows: before } = await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [accountId]);
    const groupsBefore = committer.stats();
    const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => recordUsage(services, { accountId, idempotencyKey: `g-${i}`, category: 'unit' })));
    const codes = results.map(codeOf);
    expect(codes.filter((c) => c === 'OK')).toHaveLength(50);
    expect(codes.filter((c) => c === 'INSUFFICIENT_CREDITS')).toHaveLength(150);
    const after = committer.stats();
    expect(after.charges - groupsBefore.charges).toBe(200);
    const groups = after.transactions - groupsBefore.transactions;
    expect(groups).toBeLessThan(200); // they were grouped
    expect(after.retriedAlone - groupsBefore.retriedAlone).toBe(0); // and no group fell back to one transaction per charge
    // The version moves once per group that changed the balance, and each such group wrote one
    // snapshot at its version: contiguous, never more than the groups.
    const { rows } = await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [accountId]);
    const moved = BigInt(rows[0].version) - BigInt(before[0].version);
    expect(moved).toBeGreaterThan(0n);
    expect(moved).toBeLessThanOrEqual(BigInt(groups));
    const { rows: snaps } = await services.pool.query(
      `SELECT (payload->>'version')::bigint AS v FROM outbox_events
        WHERE account_id = $1 AND topic = 'balance' AND (payload->>'version')::bigint > $2 ORDER BY id`,
      [accountId, before[0].version],
    );
    const versions = snaps.map((r) => BigInt(r.v));
    expect(BigInt(versions.length)).toBe(moved);
    for (let i = 1; i < versions.length; i++) expect(versions[i]! - versions[i - 1]!).toBe(1n);
    // No outbox row per charge: the balance snapshots above wake usageRecorded, which then
    // reads every event after the last one it sent.
    const { rows: usage } = await services.pool.query(`SELECT count(*)::int AS n FROM outbox_events WHERE account_id = $1 AND topic = 'usage'`, [accountId]);
    expect(usage[0].n).toBe(0);
    // Drawdown order holds across a group: the first 20 events (in seq order) drew FREE credit.
    const { rows: drawn } = await services.pool.query(
      `SELECT b.type FROM usage_events e JOIN drawdowns d ON d.usage_event_id = e.id JOIN credit_batches b ON b.id = d.batch_id
        WHERE e.account_id = $1 ORDER BY e.seq, d.position`,
      [accountId],
    );
    expect(drawn.map((r) => r.type)).toEqual([...Array(20).fill('FREE'), ...Array(30).fill('PAID')]);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.availableMicroCredits).toBe(0n);
  });

  it('one key with two different requests inside a group: the first recorded, the other refused as a conflict', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => recordUsage(services, { accountId, idempotencyKey: 'dup', category: i % 2 === 0 ? 'unit' : 'free' })),
    );
    const codes = results.map(codeOf);
    expect(codes.filter((c) => c === 'OK')).toHaveLength(10);
    expect(codes.filter((c) => c === 'IDEMPOTENCY_CONFLICT')).toHaveLength(10);
    const { rows } = await services.pool.query('SELECT category FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows).toHaveLength(1);
    // Whichever request won, every OK answer is for that same event and request.
    const winner = rows[0].category as string;
    results.forEach((r, i) => expect(r.status === 'fulfilled').toBe((i % 2 === 0 ? 'unit' : 'free') === winner));
    await expectLedgerInvariant(services.pool, accountId);
  });

  it('one idempotency key sent 50 times at once records one event', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const results = await Promise.all(Array.from({ length: 50 }, () => recordUsage(services, { accountId, idempotencyKey: 'same', category: 'unit' })));
    expect(new Set(results.map((r) => r.eventId)).size).toBe(1);
    expect(results.filter((r) => !r.replayed)).toHaveLength(1);
    const { rows } = await services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows[0].n).toBe(1);
    await expectLedgerInvariant(services.pool, accountId);
  });

  it('an unexpected failure of one charge fails only that charge', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const faulty: ApplyCharge = (atx, cmd, price) => {
      if (cmd.idempotencyKey === 'bad') throw new Error('simulated database failure');
      return applyCharge(atx, cmd, price);
    };
    const local = createTestServices(5);
    const faultyGroup: ChargeAccounts = (tx, groups) => {
      if (groups.some((g) => g.items.some((i) => 'cmd' in i && i.cmd.idempotencyKey === 'bad'))) throw new Error('simulated database failure');
      return chargeAccounts(tx, groups);
    };
    local.groupCommit = new GroupCommitter(local.pool, local.clock, faultyGroup, faulty);
    try {
      const keys = Array.from({ length: 30 }, (_, i) => (i === 15 ? 'bad' : `k-${i}`));
      const results = await Promise.allSettled(keys.map((k) => recordUsage(local, { accountId, idempotencyKey: k, category: 'unit' })));
      const codes = results.map(codeOf);
      expect(codes.filter((c) => c === 'OK')).toHaveLength(29);
      expect(codes[15]).toBe('UNEXPECTED: Error: simulated database failure');
      const balance = await expectLedgerInvariant(services.pool, accountId);
      expect(balance.availableMicroCredits).toBe(71_000_000n);
    } finally {
      await local.close();
    }
  });
});

describe('group commit across accounts', () => {
  it('charges of 30 accounts waiting for one slot commit together: exact refusals, FREE first, contiguous versions per account', async () => {
    const { local } = oneSlot();
    const accounts = await Promise.all(Array.from({ length: 30 }, () => createFundedAccount(services, { free: 2, paid: 3 })));
    const before = new Map<string, bigint>();
    for (const id of accounts) before.set(id, BigInt((await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [id])).rows[0].version));
    // 8 one-credit charges per account on 5 credits, interleaved across accounts.
    const calls = Array.from({ length: 8 }, (_, k) => accounts.map((accountId) => ({ accountId, idempotencyKey: `x-${k}`, category: 'unit' }))).flat();
    const startedMs = performance.now();
    const results = await Promise.allSettled(calls.map((input) => recordUsage(local, input)));
    const elapsedMs = performance.now() - startedMs;
    const stats = local.groupCommit.stats();
    expect(stats.charges).toBe(240);
    // One slot: the transactions ran one after another within the calls' wall time.
    expect(stats.transactionMs).toBeGreaterThan(0);
    expect(stats.transactionMs).toBeLessThanOrEqual(elapsedMs);
    expect(stats.transactions).toBeLessThan(240);
    expect(stats.largestTransactionAccounts).toBeGreaterThan(1); // really grouped across accounts
    expect(stats.retriedAlone).toBe(0);
    for (const accountId of accounts) {
      const mine = results.filter((_, i) => calls[i]!.accountId === accountId).map(codeOf);
      expect(mine.filter((c) => c === 'OK')).toHaveLength(5);
      expect(mine.filter((c) => c === 'INSUFFICIENT_CREDITS')).toHaveLength(3);
      const { rows: drawn } = await services.pool.query(
        `SELECT b.type FROM usage_events e JOIN drawdowns d ON d.usage_event_id = e.id JOIN credit_batches b ON b.id = d.batch_id
          WHERE e.account_id = $1 ORDER BY e.seq, d.position`,
        [accountId],
      );
      expect(drawn.map((r) => r.type)).toEqual(['FREE', 'FREE', 'PAID', 'PAID', 'PAID']);
      const { rows: snaps } = await services.pool.query(
        `SELECT (payload->>'version')::bigint AS v FROM outbox_events
          WHERE account_id = $1 AND topic = 'balance' AND (payload->>'version')::bigint > $2 ORDER BY id`,
        [accountId, before.get(accountId)],
      );
      const versions = snaps.map((r) => BigInt(r.v));
      expect(versions.length).toBeGreaterThan(0);
      versions.forEach((v, i) => expect(v).toBe(before.get(accountId)! + BigInt(i) + 1n));
      const balance = await expectLedgerInvariant(services.pool, accountId);
      expect(balance.availableMicroCredits).toBe(0n);
    }
  });

  it('an unknown account in a shared transaction answers NOT_FOUND and the other accounts are charged', async () => {
    const { local } = oneSlot();
    const accounts = await Promise.all(Array.from({ length: 5 }, () => createFundedAccount(services, { paid: 10 })));
    const unknown = '00000000-0000-4000-8000-000000000000';
    const ids = [...accounts, unknown, ...accounts, unknown];
    const results = await Promise.allSettled(ids.map((accountId, i) => recordUsage(local, { accountId, idempotencyKey: `u-${i}`, category: 'unit' })));
    expect(results.map(codeOf)).toEqual(ids.map((id) => (id === unknown ? 'NOT_FOUND' : 'OK')));
    expect(local.groupCommit.stats().largestTransactionAccounts).toBeGreaterThan(1);
    for (const accountId of accounts) expect((await expectLedgerInvariant(services.pool, accountId)).availableMicroCredits).toBe(8_000_000n);
  });

  it('an unexpected failure in a shared transaction fails only its charge; the other accounts are charged once', async () => {
    const accounts = await Promise.all(Array.from({ length: 6 }, () => createFundedAccount(services, { paid: 100 })));
    const faultyGroup: ChargeAccounts = (tx, groups) => {
      if (groups.some((g) => g.items.some((i) => 'cmd' in i && i.cmd.idempotencyKey === 'bad'))) throw new Error('simulated database failure');
      return chargeAccounts(tx, groups);
    };
    const faulty: ApplyCharge = (atx, cmd, price) => {
      if (cmd.idempotencyKey === 'bad') throw new Error('simulated database failure');
      return applyCharge(atx, cmd, price);
    };
    const committer = new GroupCommitter(services.pool, services.clock, faultyGroup, faulty, { maxTransactions: 1 });
    const local = { ...services, groupCommit: committer };
    const calls = Array.from({ length: 5 }, (_, k) => accounts.map((accountId, a) => ({ accountId, idempotencyKey: a === 3 && k === 2 ? 'bad' : `f-${k}`, category: 'unit' }))).flat();
    const results = await Promise.allSettled(calls.map((input) => recordUsage(local, input)));
    const codes = results.map(codeOf);
    calls.forEach((c, i) => expect(codes[i]).toBe(c.idempotencyKey === 'bad' ? 'UNEXPECTED: Error: simulated database failure' : 'OK'));
    expect(committer.stats().largestTransactionAccounts).toBeGreaterThan(1);
    for (const [a, accountId] of accounts.entries()) {
      const balance = await expectLedgerInvariant(services.pool, accountId);
      expect(balance.availableMicroCredits).toBe(a === 3 ? 96_000_000n : 95_000_000n);
      const { rows } = await services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
      expect(rows[0].n).toBe(a === 3 ? 4 : 5);
    }
  });
});

describe('operations in shared transactions (reserve, settle)', () => {
  it('jobs on 10 accounts (reserve, 3 captures, settle) sharing transactions: every step succeeds once, holds settle, balances exact', async () => {
    const { committer, local } = oneSlot();
    const accounts = await Promise.all(Array.from({ length: 10 }, () => createFundedAccount(services, { paid: 10 })));
    await Promise.all(
      accounts.map(async (accountId) => {
        const { reservationId } = await reserveCredits(local, { accountId, amountMicroCredits: credits(3), ttlSeconds: 300, idempotencyKey: 'job' });
        for (let k = 0; k < 3; k++) await recordUsage(local, { accountId, idempotencyKey: `cap-${k}`, category: 'unit', reservationId });
        await settleReservation(local, reservationId, []);
      }),
    );
    expect(committer.stats().largestTransactionAccounts).toBeGreaterThan(1);
    for (const accountId of accounts) {
      const balance = await expectLedgerInvariant(services.pool, accountId);
      expect(balance.availableMicroCredits).toBe(7_000_000n);
      expect(balance.reservedMicroCredits).toBe(0n);
      const { rows } = await services.pool.query('SELECT status, consumed_micro_credits::text AS consumed FROM reservations WHERE account_id = $1', [accountId]);
      expect(rows).toEqual([{ status: 'SETTLED', consumed: '3000000' }]);
    }
  });

  it('a settle refused inside a shared transaction leaves no trace, and the charges around it commit', async () => {
    const { committer, local } = oneSlot();
    const a = await createFundedAccount(services, { paid: 10 });
    const b = await createFundedAccount(services, { paid: 10 });
    const { reservationId } = await reserveCredits(local, { accountId: a, amountMicroCredits: credits(2), ttlSeconds: 300, idempotencyKey: 'hold' });
    const { rows: before } = await services.pool.query('SELECT count(*)::int AS n FROM outbox_events WHERE account_id = $1', [a]);
    const release = occupySlot(committer, b); // the three calls below wait together
    const settle = settleReservation(local, reservationId, [
      { accountId: a, idempotencyKey: 's-1', category: 'unit' }, // 1 credit of the 2 held: written, then rolled back
      { accountId: a, idempotencyKey: 's-2', category: 'nope' }, // no price rule: refused after s-1 was written
    ]);
    const chargeA = recordUsage(local, { accountId: a, idempotencyKey: 'after', category: 'unit' });
    const chargeB = recordUsage(local, { accountId: b, idempotencyKey: 'b-1', category: 'unit' });
    const shared = await release(3);
    await expect(settle).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
    expect((await chargeA).replayed).toBe(false);
    expect((await chargeB).replayed).toBe(false);
    const stats = committer.stats();
    expect(stats.transactions).toBe(shared); // all three in ONE transaction
    expect(stats.largestTransactionAccounts).toBe(2);
    expect(stats.retriedAlone).toBe(0);
    const { rows: events } = await services.pool.query('SELECT idempotency_key FROM usage_events WHERE account_id = $1 ORDER BY seq', [a]);
    expect(events.map((r) => r.idempotency_key)).toEqual(['after']);
    const { rows: hold } = await services.pool.query('SELECT status, consumed_micro_credits::text AS consumed FROM reservations WHERE id = $1', [reservationId]);
    expect(hold).toEqual([{ status: 'ACTIVE', consumed: '0' }]);
    // The outbox has the charge's one balance snapshot: nothing of the settle.
    const { rows: outbox } = await services.pool.query('SELECT topic FROM outbox_events WHERE account_id = $1 ORDER BY id OFFSET $2', [a, before[0].n]);
    expect(outbox.map((r) => r.topic)).toEqual(['balance']);
    const balanceA = await expectLedgerInvariant(services.pool, a);
    expect(balanceA.totalMicroCredits).toBe(9_000_000n);
    expect(balanceA.reservedMicroCredits).toBe(2_000_000n);
    expect((await expectLedgerInvariant(services.pool, b)).totalMicroCredits).toBe(9_000_000n);
  });
});

describe('the owner of a hold this process made', () => {
  it('is remembered by reserveCredits, so its settle reads no owner from the database; holds made elsewhere are looked up; settled and released holds are forgotten', async () => {
    const owners = new ReservationOwners();
    const local = { ...services, reservationOwners: owners };
    const a = await createFundedAccount(services, { paid: 10 });
    const mine = await reserveCredits(local, { accountId: a, amountMicroCredits: credits(2), ttlSeconds: 300, idempotencyKey: 'mine' });
    const elsewhere = await reserveCredits(services, { accountId: a, amountMicroCredits: credits(1), ttlSeconds: 300, idempotencyKey: 'elsewhere' });
    expect(owners.ownerOf(mine.reservationId)).toBe(a);
    expect(owners.ownerOf(elsewhere.reservationId)).toBeUndefined();
    const lookups = vi.spyOn(services.pool, 'query');
    const ownerLookups = () => lookups.mock.calls.filter(([text]) => typeof text === 'string' && text.startsWith('SELECT account_id FROM reservations')).length;
    try {
      await recordUsage(local, { accountId: a, idempotencyKey: 'cap', category: 'unit', reservationId: mine.reservationId });
      await settleReservation(local, mine.reservationId, []);
      expect(ownerLookups()).toBe(0);
      expect(owners.size).toBe(0);
      await settleReservation(local, elsewhere.reservationId, []);
      expect(ownerLookups()).toBe(1);
      await expect(settleReservation(local, randomUUID(), [])).rejects.toMatchObject({ code: 'NOT_FOUND' });
    } finally {
      lookups.mockRestore();
    }
    const released = await reserveCredits(local, { accountId: a, amountMicroCredits: credits(1), ttlSeconds: 300, idempotencyKey: 'released' });
    expect(owners.size).toBe(1);
    await releaseReservation(local, released.reservationId);
    expect(owners.size).toBe(0);
    const { rows } = await services.pool.query('SELECT idempotency_key, status, consumed_micro_credits::text AS consumed FROM reservations WHERE account_id = $1 ORDER BY idempotency_key', [a]);
    expect(rows).toEqual([
      { idempotency_key: 'elsewhere', status: 'SETTLED', consumed: '0' },
      { idempotency_key: 'mine', status: 'SETTLED', consumed: '1000000' },
      { idempotency_key: 'released', status: 'RELEASED', consumed: '0' },
    ]);
    expect((await expectLedgerInvariant(services.pool, a)).totalMicroCredits).toBe(9_000_000n);
  });
});

describe('a refused hold in a shared transaction', () => {
  it('writes nothing (decided in memory before anything is written), and the hold and the charge beside it commit', async () => {
    const { committer, local } = oneSlot();
    const a = await createFundedAccount(services, { paid: 10 });
    const b = await createFundedAccount(services, { paid: 10 });
    const release = occupySlot(committer, b); // the three calls below wait together
    const tooBig = reserveCredits(local, { accountId: a, amountMicroCredits: credits(11), ttlSeconds: 300, idempotencyKey: 'big' });
    const fits = reserveCredits(local, { accountId: a, amountMicroCredits: credits(4), ttlSeconds: 300, idempotencyKey: 'fits' });
    const chargeB = recordUsage(local, { accountId: b, idempotencyKey: 'b-1', category: 'unit' });
    const shared = await release(3);
    await expect(tooBig).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect((await fits).replayed).toBe(false);
    expect((await chargeB).replayed).toBe(false);
    expect(committer.stats().transactions).toBe(shared);
    const { rows } = await services.pool.query('SELECT idempotency_key FROM reservations WHERE account_id = $1', [a]);
    expect(rows.map((r) => r.idempotency_key)).toEqual(['fits']);
    const balanceA = await expectLedgerInvariant(services.pool, a);
    expect(balanceA.reservedMicroCredits).toBe(4_000_000n);
    expect(balanceA.totalMicroCredits).toBe(10_000_000n);
  });
});

describe('holds and settles on an account with a spending budget', () => {
  it('are decided with the other items of the shared transaction (the first hold started the kept spending row): the budget still refuses, the rest commits', async () => {
    const { committer, local } = oneSlot();
    const a = await createFundedAccount(services, { paid: 100 });
    const b = await createFundedAccount(services, { paid: 10 });
    await setSpendingBudget(services, { accountId: a, subjectKind: 'USER', subjectId: 'member-1', limitMicroCredits: credits(10) });
    const first = await reserveCredits(local, { accountId: a, amountMicroCredits: credits(2), ttlSeconds: 600, idempotencyKey: 'first', userId: 'member-1' });
    const release = occupySlot(committer, b); // the four calls below wait together
    const settle = settleReservation(local, first.reservationId, []);
    const fits = reserveCredits(local, { accountId: a, amountMicroCredits: credits(8), ttlSeconds: 600, idempotencyKey: 'fits', userId: 'member-1' });
    const over = reserveCredits(local, { accountId: a, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: 'over', userId: 'member-1' });
    const holdB = reserveCredits(local, { accountId: b, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'b' });
    const shared = await release(4);
    expect((await settle).reservationId).toBe(first.reservationId);
    expect((await fits).replayed).toBe(false);
    await expect(over).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    expect((await holdB).replayed).toBe(false);
    expect(committer.stats().transactions).toBe(shared);
    const { rows } = await services.pool.query('SELECT idempotency_key, status FROM reservations WHERE account_id = $1 ORDER BY idempotency_key', [a]);
    expect(rows).toEqual([
      { idempotency_key: 'first', status: 'SETTLED' },
      { idempotency_key: 'fits', status: 'ACTIVE' },
    ]);
    expect((await expectLedgerInvariant(services.pool, a)).reservedMicroCredits).toBe(credits(8));
    expect((await expectLedgerInvariant(services.pool, b)).reservedMicroCredits).toBe(credits(4));
  });
});

describe('groups decided in memory equal one transaction per charge (property)', () => {
  const itemArb = fc.record({
    // A usage charge, a hold (reserveCredits) or a settle without usage.
    kind: fc.constantFrom('charge', 'charge', 'charge', 'reserve', 'settle'),
    account: fc.integer({ min: 0, max: 2 }),
    key: fc.integer({ min: 0, max: 7 }).map((k) => `k-${k}`),
    category: fc.constantFrom('unit', 'units', 'free', 'nope'),
    units: fc.integer({ min: 0, max: 600 }).map((n) => (n / 100).toString()), // 0 .. 6 credits
    // A plain charge, a capture against one of the account's two open holds, against its settled
    // hold, or against another account's hold.
    hold: fc.constantFrom('none', 'none', 'open', 'open', 'open2', 'settled', 'other'),
    // A hold of 0.01 .. 4 credits under one of three keys (the same key with another amount conflicts).
    holdKey: fc.integer({ min: 0, max: 2 }).map((k) => `h-${k}`),
    holdCents: fc.integer({ min: 1, max: 400 }),
    // Whose work it is: agent a1 and user u1 have budgets (4 and 2 credits a period), a2 none.
    agent: fc.constantFrom(null, 'a1', 'a1', 'a2'),
    user: fc.constantFrom(null, null, 'u1'),
  });

  it('same outcomes, drawdowns, holds, debt, ledger entries, balances and budget spending on 3 accounts in one transaction for random lists of charges, holds and settles (repeated keys, refusals, unknown categories, captures against open, settled and foreign holds, agent and user budgets)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(itemArb, { minLength: 1, maxLength: 30 }), async (items) => {
        const freeExpiresAt = new Date(Date.now() + 3_600_000);
        const fund = () => createFundedAccount(services, { free: 2, paid: 4, freeExpiresAt });
        const seqAccounts = [await fund(), await fund(), await fund()];
        const grpAccounts = [await fund(), await fund(), await fund()];
        // Every account (6 credits): open holds of 3 and 1 credits and a settled one (one
        // transaction each, no group commit); small, so captures run past their hold into debt
        // and must not draw what the other open hold keeps.
        // The open holds are a1's and u1's, so they count against those budgets (and the holds
        // made this way start both budgets' kept spending rows of the period: the grouped
        // transaction decides them in memory).
        const holdsOf = new Map<string, { open: string; open2: string; settled: string }>();
        for (const accountId of [...seqAccounts, ...grpAccounts]) {
          const plain = { ...services, groupCommit: undefined };
          await setSpendingBudget(plain, { accountId, subjectKind: 'AGENT', subjectId: 'a1', limitMicroCredits: credits(4) });
          await setSpendingBudget(plain, { accountId, subjectKind: 'USER', subjectId: 'u1', limitMicroCredits: credits(2) });
          const open = (await reserveCredits(plain, { accountId, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: 'open', agentId: 'a1' })).reservationId;
          const open2 = (await reserveCredits(plain, { accountId, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: 'open2', userId: 'u1' })).reservationId;
          const settled = (await reserveCredits(plain, { accountId, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: 'settled' })).reservationId;
          await settleReservation(plain, settled, []);
          holdsOf.set(accountId, { open, open2, settled });
        }
        const entries = async (accountId: string) =>
          (
            await services.pool.query(
              'SELECT id, type, amount_micro_credits::text AS amount, note FROM ledger_entries WHERE account_id = $1 ORDER BY type, amount_micro_credits, note',
              [accountId],
            )
          ).rows as { id: string; type: string; amount: string; note: string | null }[];
        const setupEntries = new Set((await Promise.all([...seqAccounts, ...grpAccounts].map(entries))).flat().map((e) => e.id));
        const listEntries = async (accountId: string) => (await entries(accountId)).filter((e) => !setupEntries.has(e.id)).map(({ id: _id, ...e }) => e);
        const input = (accountId: string, it: (typeof items)[number], others: string[]) => ({
          accountId,
          idempotencyKey: it.key,
          category: it.category,
          quantities: it.category === 'units' ? { units: it.units } : null,
          agentId: it.agent,
          userId: it.user,
          reservationId:
            it.hold === 'open' || it.hold === 'open2'
              ? holdsOf.get(accountId)![it.hold]
              : it.hold === 'settled'
                ? holdsOf.get(accountId)!.settled
                : it.hold === 'other'
                  ? holdsOf.get(others[(it.account + 1) % 3]!)!.open
                  : null,
        });
        const holdCmd = (accountId: string, it: (typeof items)[number]) => ({
          accountId,
          amountMicroCredits: BigInt(it.holdCents) * 10_000n,
          ttlSeconds: 600,
          idempotencyKey: it.holdKey,
          agentId: it.agent,
          userId: it.user,
        });
        // A settle names one of the account's holds, or a hold that does not exist.
        const missingHold = '00000000-0000-4000-8000-000000000000';
        const settleTarget = (accountId: string, it: (typeof items)[number]) =>
          it.hold === 'open' || it.hold === 'open2' || it.hold === 'settled' ? holdsOf.get(accountId)![it.hold] : missingHold;
        const code = (r: { ok: boolean; result?: unknown; error?: unknown }) =>
          r.ok
            ? (r.result as { replayed?: boolean } | undefined)?.replayed
              ? 'REPLAYED'
              : 'OK'
            : r.error instanceof LedgerError
              ? r.error.code
              : `UNEXPECTED ${String(r.error)}`;
        const sequential: string[] = [];
        const plain = { ...services, groupCommit: undefined };
        for (const it of items) {
          const accountId = seqAccounts[it.account]!;
          try {
            const result =
              it.kind === 'reserve'
                ? await reserveCredits(plain, holdCmd(accountId, it))
                : it.kind === 'settle'
                  ? await settleReservation(plain, settleTarget(accountId, it), [])
                  : await recordUsage(plain, input(accountId, it, seqAccounts));
            sequential.push(code({ ok: true, result }));
          } catch (error) {
            sequential.push(code({ ok: false, error }));
          }
        }
        // chargeAccounts itself, all three accounts in one transaction: an unexpected error fails
        // the test instead of falling back to smaller transactions as recordUsageBatch would.
        const statements: string[] = [];
        const grouped = await withTransaction(services.pool, async (client) => {
          const tx = namesOf(client, statements);
          const locked = await AccountTx.lockMany(tx, grpAccounts, services.clock());
          const groups = await Promise.all(
            grpAccounts.map(async (id, a) => ({
              atx: locked.get(id)!,
              items: await Promise.all(
                items
                  .filter((it) => it.account === a)
                  .map(async (it): Promise<GroupItem> => {
                    if (it.kind === 'reserve') return holdItem(holdCmd(id, it));
                    if (it.kind === 'settle') return settleItem(settleTarget(id, it));
                    const cmd = validateUsageInput(input(id, it, grpAccounts));
                    return { cmd, price: await pricerFor(services, cmd) };
                  }),
              ),
            })),
          );
          const out = await chargeAccounts(tx, groups);
          await AccountTx.finishMany(tx, [...locked.values()]);
          return out;
        });
        const next = [0, 0, 0];
        expect(items.map((it) => code(grouped[it.account]![next[it.account]!++]!))).toEqual(sequential);
        // Decided in memory, budgets included: no charge's or hold's own state read or budget check.
        expect(statements.filter((n) => n === 'cp-account-state' || n === 'cp-budget-check')).toEqual([]);
        const drawn = async (accountId: string) =>
          (
            await services.pool.query(
              `SELECT e.idempotency_key, e.cost_micro_credits::text AS cost, b.type, d.amount_micro_credits::text AS amount
                 FROM usage_events e LEFT JOIN drawdowns d ON d.usage_event_id = e.id LEFT JOIN credit_batches b ON b.id = d.batch_id
                WHERE e.account_id = $1 ORDER BY e.seq, d.position`,
              [accountId],
            )
          ).rows;
        for (let a = 0; a < 3; a++) {
          expect(await drawn(grpAccounts[a]!)).toEqual(await drawn(seqAccounts[a]!));
          const x = await expectLedgerInvariant(services.pool, seqAccounts[a]!);
          const y = await expectLedgerInvariant(services.pool, grpAccounts[a]!);
          expect(y.totalMicroCredits).toBe(x.totalMicroCredits);
          expect(y.reservedMicroCredits).toBe(x.reservedMicroCredits);
          const holdAndDebt = async (accountId: string) =>
            (
              await services.pool.query(
                `SELECT r.idempotency_key, r.status, r.amount_micro_credits::text AS amount, r.consumed_micro_credits::text AS consumed,
                        b.debt_micro_credits::text AS debt
                   FROM reservations r JOIN balances b ON b.account_id = r.account_id WHERE r.account_id = $1 ORDER BY r.idempotency_key`,
                [accountId],
              )
            ).rows;
          expect(await holdAndDebt(grpAccounts[a]!)).toEqual(await holdAndDebt(seqAccounts[a]!));
          const budgetSpend = async (accountId: string) =>
            (
              await services.pool.query(
                'SELECT subject_kind, subject_id, spent_micro_credits::text AS spent FROM budget_spend WHERE account_id = $1 ORDER BY subject_kind, subject_id',
                [accountId],
              )
            ).rows;
          expect(await budgetSpend(grpAccounts[a]!)).toEqual(await budgetSpend(seqAccounts[a]!));
          // The list's ledger entries as a multiset: the sequential account's come from one
          // transaction each, the grouped account's from one.
          expect(await listEntries(grpAccounts[a]!)).toEqual(await listEntries(seqAccounts[a]!));
        }
      }),
      {
        numRuns: 50,
        examples: [
          // Two captures past the 3-credit hold, then plain charges at the edge of what is left:
          // the hold's consumed and the credit still held must move with each capture.
          [
            [
              { kind: 'charge', account: 0, key: 'k-0', category: 'units', units: '2', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'charge', account: 0, key: 'k-1', category: 'units', units: '2', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'charge', account: 0, key: 'k-2', category: 'units', units: '3', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'charge', account: 0, key: 'k-3', category: 'unit', units: '0', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'charge', account: 0, key: 'k-4', category: 'units', units: '4', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
            ],
          ],
          // A hold, a capture, a settle that releases the rest, a capture refused after it, a hold
          // replayed and one in conflict, then charges and holds against what the settle freed.
          [
            [
              { kind: 'reserve', account: 1, key: 'k-0', category: 'unit', units: '0', hold: 'none', holdKey: 'h-0', holdCents: 100, agent: null, user: null },
              { kind: 'charge', account: 1, key: 'k-0', category: 'units', units: '1', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'settle', account: 1, key: 'k-0', category: 'unit', units: '0', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'charge', account: 1, key: 'k-1', category: 'unit', units: '0', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'settle', account: 1, key: 'k-1', category: 'unit', units: '0', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'reserve', account: 1, key: 'k-1', category: 'unit', units: '0', hold: 'none', holdKey: 'h-0', holdCents: 100, agent: null, user: null },
              { kind: 'reserve', account: 1, key: 'k-1', category: 'unit', units: '0', hold: 'none', holdKey: 'h-0', holdCents: 200, agent: null, user: null },
              { kind: 'charge', account: 1, key: 'k-2', category: 'units', units: '3', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'reserve', account: 1, key: 'k-2', category: 'unit', units: '0', hold: 'none', holdKey: 'h-1', holdCents: 150, agent: null, user: null },
              { kind: 'settle', account: 1, key: 'k-2', category: 'unit', units: '0', hold: 'settled', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'settle', account: 1, key: 'k-2', category: 'unit', units: '0', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
            ],
          ],
          // Budgets (a1: 4 credits, holding 3 in 'open'; u1: 2, holding 1 in 'open2'; 2 credits
          // available): a1 fits 1 credit, then not 0.01; a2's capture of 1 from 'open' frees 1 of
          // a1's, so a1 fits 1 more; the settle of 'open' frees a1's last 2, so a1 fits 2. u1 is
          // refused a hold of 1.01 by its budget (before the credit check); a1 and u1's capture of
          // 0.5 from 'open2' counts as both their usage; the settle of 'open2' frees u1's rest,
          // a hold of 0.5 fits, and then holds u1's budget: 1.01 more is refused.
          [
            [
              { kind: 'charge', account: 2, key: 'k-0', category: 'units', units: '1', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: 'a1', user: null },
              { kind: 'charge', account: 2, key: 'k-1', category: 'units', units: '0.01', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: 'a1', user: null },
              { kind: 'charge', account: 2, key: 'k-2', category: 'units', units: '1', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: 'a2', user: null },
              { kind: 'charge', account: 2, key: 'k-3', category: 'units', units: '1', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: 'a1', user: null },
              { kind: 'settle', account: 2, key: 'k-4', category: 'unit', units: '0', hold: 'open', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'charge', account: 2, key: 'k-4', category: 'units', units: '2', hold: 'none', holdKey: 'h-0', holdCents: 1, agent: 'a1', user: null },
              { kind: 'reserve', account: 2, key: 'k-5', category: 'unit', units: '0', hold: 'none', holdKey: 'h-0', holdCents: 101, agent: null, user: 'u1' },
              { kind: 'charge', account: 2, key: 'k-5', category: 'units', units: '0.5', hold: 'open2', holdKey: 'h-0', holdCents: 1, agent: 'a1', user: 'u1' },
              { kind: 'settle', account: 2, key: 'k-6', category: 'unit', units: '0', hold: 'open2', holdKey: 'h-0', holdCents: 1, agent: null, user: null },
              { kind: 'reserve', account: 2, key: 'k-6', category: 'unit', units: '0', hold: 'none', holdKey: 'h-1', holdCents: 50, agent: null, user: 'u1' },
              { kind: 'reserve', account: 2, key: 'k-6', category: 'unit', units: '0', hold: 'none', holdKey: 'h-2', holdCents: 101, agent: null, user: 'u1' },
            ],
          ],
        ],
      },
    );
  });
});

describe('carried state (a hot account decides from what its previous transaction left)', () => {
  /**
   * A committer with one slot and at most 2 charges of an account per transaction, whose charge
   * function is `charge`; the slot is held by an operation on another account until all the
   * charges wait, so they run two by two in transactions in a row (6 charges: 3 transactions).
   */
  async function inPairs(
    accountId: string,
    keys: string[],
    opts: {
      charge?: ChargeAccounts;
      agentId?: string;
      agentOf?: (key: string) => string;
      /** Input fields of the i-th charge that differ from the others' (e.g. another category under a key sent before). */
      inputAt?: (i: number) => Record<string, unknown>;
      carryState?: boolean;
      pool?: pg.Pool;
    } = {},
  ) {
    const { charge = chargeAccounts, agentId, agentOf = () => agentId, inputAt = () => ({}), carryState, pool = services.pool } = opts;
    const committer = new GroupCommitter(pool, services.clock, charge, applyCharge, { maxTransactions: 1, maxChargesPerAccount: 2, carryState });
    const local = { ...services, groupCommit: committer };
    const other = await createFundedAccount(services, { paid: 1 });
    const release = occupySlot(committer, other);
    // Priced first, then queued in this order (recordUsage would queue each when its pricing
    // finished), so the transactions take them two by two in the order given.
    const priced = [];
    for (const [i, idempotencyKey] of keys.entries()) {
      const cmd = validateUsageInput({ accountId, idempotencyKey, category: 'unit', agentId: agentOf(idempotencyKey), ...inputAt(i) });
      priced.push({ cmd, price: await pricerFor(local, cmd) });
    }
    const calls = priced.map(({ cmd, price }) => committer.charge(cmd, price));
    await release(keys.length);
    const results = await Promise.allSettled(calls);
    return { committer, results };
  }

  it('skips the state read of the next transaction while charges wait, with the outcomes of a fresh read', async () => {
    const accountId = await createFundedAccount(services, { free: 2, paid: 3 });
    const { rows: before } = await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [accountId]);
    const { committer, results } = await inPairs(accountId, ['c1', 'c2', 'c3', 'c4', 'c5', 'c6']);
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK', 'OK', 'INSUFFICIENT_CREDITS']);
    // Transaction 1 read its state and left it to 2 (4 charges waiting), 2 left it to 3.
    expect(committer.stats()).toMatchObject({ carriedState: 2, carriedStateMisses: 0, retriedAlone: 0 });
    const { rows: drawn } = await services.pool.query(
      `SELECT b.type FROM usage_events e JOIN drawdowns d ON d.usage_event_id = e.id JOIN credit_batches b ON b.id = d.batch_id
        WHERE e.account_id = $1 ORDER BY e.seq, d.position`,
      [accountId],
    );
    expect(drawn.map((r) => r.type)).toEqual(['FREE', 'FREE', 'PAID', 'PAID', 'PAID']);
    const { rows: after } = await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [accountId]);
    expect(BigInt(after[0].version) - BigInt(before[0].version)).toBe(3n); // one version per transaction
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(0n);
  });

  it('runs the transaction again from a fresh read when the account changed after the state was left', async () => {
    const accountId = await createFundedAccount(services, { paid: 2 });
    const elsewhere = { ...services, groupCommit: undefined }; // as another process would
    const { charge, pool, changed } = changeDuringFirstTransaction(() =>
      grantCredits(elsewhere, { accountId, amountMicroCredits: credits(10), type: 'PAID', source: 'ADJUSTMENT', expiresAt: null, reference: null, idempotencyKey: `g-${randomUUID()}` }),
    );
    const { committer, results } = await inPairs(accountId, ['d1', 'd2', 'd3', 'd4', 'd5', 'd6'], { charge, pool });
    await changed();
    // From the state the first transaction left (0 credits), d3 and d4 would be refused.
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK', 'OK', 'OK']);
    expect(committer.stats()).toMatchObject({ carriedState: 1, carriedStateMisses: 1, retriedAlone: 0 });
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(6));
  });

  it('a hold made elsewhere after the state was left (it moves neither the batches nor the total) is not spent by the next transaction', async () => {
    // The hold changes only the balance version and `reserved`: the commit-time ledger check
    // cannot see a charge that spends the credit it sets aside, so the version check of the
    // carried state is what refuses d3..d6 (a two-server soak found it untested step by step).
    const accountId = await createFundedAccount(services, { paid: 10 });
    const elsewhere = { ...services, groupCommit: undefined };
    const { charge, pool, changed } = changeDuringFirstTransaction(() =>
      reserveCredits(elsewhere, { accountId, amountMicroCredits: credits(8), ttlSeconds: 600, idempotencyKey: `hold-${randomUUID()}` }),
    );
    const { committer, results } = await inPairs(accountId, ['r1', 'r2', 'r3', 'r4', 'r5', 'r6'], { charge, pool });
    await changed();
    // From the state the first transaction left (8 credits), r3..r6 would be charged out of the hold.
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS']);
    expect(committer.stats()).toMatchObject({ carriedStateMisses: 1 });
    const { rows } = await services.pool.query(`SELECT count(*)::int AS n FROM reservations WHERE account_id = $1 AND status = 'ACTIVE'`, [accountId]);
    expect(rows[0].n).toBe(1);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(8));
  });

  it.each([
    ['set', null],
    ['changed', credits(100)],
  ])('a spending budget %s after the state was left (budgets do not move the balance version) is enforced', async (_what, initialLimit) => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const elsewhere = { ...services, groupCommit: undefined };
    let spentBefore = 0n;
    if (initialLimit !== null) {
      // A budget with its kept spending row of the period (started by a check), so the account's
      // transactions are decided in memory and carried over, budgets included.
      await setSpendingBudget(elsewhere, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: initialLimit });
      await recordUsage(elsewhere, { accountId, idempotencyKey: 'before', category: 'unit', agentId: 'agent-1' });
      spentBefore = credits(1);
    }
    const { charge, pool, changed } = changeDuringFirstTransaction(() =>
      setSpendingBudget(elsewhere, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(2) }),
    );
    const { committer, results } = await inPairs(accountId, ['h1', 'h2', 'h3', 'h4', 'h5', 'h6'], { charge, agentId: 'agent-1', pool });
    await changed();
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED']);
    expect(committer.stats()).toMatchObject({ carriedStateMisses: 1 });
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(8) - spentBefore);
  });

  it('a plan subscription committed after the state was left (a new billing anchor) re-arms the budget for the transactions after it', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const elsewhere = { ...services, groupCommit: undefined };
    await setSpendingBudget(elsewhere, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(3) });
    await recordUsage(elsewhere, { accountId, idempotencyKey: 'before', category: 'unit', agentId: 'agent-1' }); // starts the kept row: spent 1
    const plan = await createPlan(services, { name: `carried-anchor-${accountId}`, monthlyMicroCredits: credits(1), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '0' });
    const { charge, pool, changed } = changeDuringFirstTransaction(() => subscribeToPlan(elsewhere, accountId, plan.id));
    const { committer, results } = await inPairs(accountId, ['s1', 's2', 's3', 's4', 's5', 's6'], { charge, agentId: 'agent-1', pool });
    await changed();
    // s1, s2 spend the old period's budget (3 of 3); the subscription starts a new period, so s3-s5
    // fit its budget and s6 does not. From the state the first transaction left, s3-s6 would be refused.
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK', 'OK', 'BUDGET_EXCEEDED']);
    expect(committer.stats()).toMatchObject({ carriedStateMisses: 1, retriedAlone: 0 });
    const { rows } = await services.pool.query('SELECT spent_micro_credits::text AS spent FROM budget_spend WHERE account_id = $1', [accountId]);
    expect(rows).toEqual([{ spent: String(credits(3)) }]);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(10 + 1 - 6));
  });

  it('an account with a budget starts from the state left too, its kept spending included: the budget holds exactly', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const plain = { ...services, groupCommit: undefined };
    await setSpendingBudget(plain, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(4) });
    await recordUsage(plain, { accountId, idempotencyKey: 'before', category: 'unit', agentId: 'agent-1' }); // starts the kept row: spent 1
    const { committer, results } = await inPairs(accountId, ['b1', 'b2', 'b3', 'b4', 'b5', 'b6'], { agentId: 'agent-1' });
    // b1, b2 from a fresh read (spent 3), b3 from what that left (4), then the budget is spent.
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED']);
    expect(committer.stats()).toMatchObject({ carriedState: 2, carriedStateMisses: 0, retriedAlone: 0 });
    const { rows } = await services.pool.query('SELECT spent_micro_credits::text AS spent FROM budget_spend WHERE account_id = $1', [accountId]);
    expect(rows).toEqual([{ spent: String(credits(4)) }]);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(6));
  });

  it('a transaction naming an agent whose budget the state left was not read for reads its state', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const plain = { ...services, groupCommit: undefined };
    await setSpendingBudget(plain, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(100) });
    await setSpendingBudget(plain, { accountId, subjectKind: 'AGENT', subjectId: 'agent-2', limitMicroCredits: 0n });
    await recordUsage(plain, { accountId, idempotencyKey: 'before', category: 'unit', agentId: 'agent-1' });
    const { committer, results } = await inPairs(accountId, ['n1', 'n2', 'n3', 'n4', 'x5', 'x6'], { agentOf: (key) => (key.startsWith('x') ? 'agent-2' : 'agent-1') });
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED']);
    expect(committer.stats()).toMatchObject({ carriedState: 1, carriedStateMisses: 0 });
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(5));
  });

  it('a key recorded by an earlier transaction is replayed, not charged again', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const { committer, results } = await inPairs(accountId, ['e1', 'e2', 'e1', 'e3', 'e4', 'e5']);
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK', 'OK', 'OK']);
    const value = (i: number) => (results[i] as PromiseFulfilledResult<{ eventId: string; replayed: boolean }>).value;
    expect(value(2)).toMatchObject({ eventId: value(0).eventId, replayed: true });
    expect(committer.stats()).toMatchObject({ carriedState: 1, carriedStateMisses: 1 });
    const { rows } = await services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows[0].n).toBe(5);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(5));
  });

  it('a recorded key sent again once the credit ran out is replayed, not refused as INSUFFICIENT_CREDITS (its transaction refuses nothing it did not look up)', async () => {
    const accountId = await createFundedAccount(services, { paid: 2 });
    // k1, k2 spend the 2 credits; the second transaction decides k1, k2 again from what the first
    // left (0 credits), without having read their keys.
    const { committer, results } = await inPairs(accountId, ['k1', 'k2', 'k1', 'k2']);
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK']);
    const value = (i: number) => (results[i] as PromiseFulfilledResult<{ eventId: string; replayed: boolean }>).value;
    expect(value(2)).toMatchObject({ eventId: value(0).eventId, replayed: true });
    expect(value(3)).toMatchObject({ eventId: value(1).eventId, replayed: true });
    expect(committer.stats()).toMatchObject({ carriedState: 1, carriedStateMisses: 0 });
    const { rows } = await services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows[0].n).toBe(2);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(0n);
  });

  it('a recorded key sent again with another request once the credit ran out is IDEMPOTENCY_CONFLICT; an unrecorded key is still refused', async () => {
    const accountId = await createFundedAccount(services, { paid: 2 });
    const { committer, results } = await inPairs(accountId, ['m1', 'm2', 'm1', 'm3'], { inputAt: (i) => (i === 2 ? { userId: 'someone-else' } : {}) });
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'IDEMPOTENCY_CONFLICT', 'INSUFFICIENT_CREDITS']);
    expect(committer.stats()).toMatchObject({ carriedState: 1, carriedStateMisses: 0 });
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(0n);
  });

  it("a recorded key sent again once its agent's budget is spent is replayed, not refused as BUDGET_EXCEEDED", async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const plain = { ...services, groupCommit: undefined };
    await setSpendingBudget(plain, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(3) });
    await recordUsage(plain, { accountId, idempotencyKey: 'before', category: 'unit', agentId: 'agent-1' }); // starts the kept row: spent 1
    const { committer, results } = await inPairs(accountId, ['r1', 'r2', 'r1', 'r3'], { agentId: 'agent-1' });
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'BUDGET_EXCEEDED']);
    expect((results[2] as PromiseFulfilledResult<{ replayed: boolean }>).value.replayed).toBe(true);
    expect(committer.stats()).toMatchObject({ carriedState: 1, carriedStateMisses: 0 });
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(7));
  });

  it('decides like one transaction per charge for random lists of charges (repeated keys, refusals for credit and budget): carried state changes no outcome (property)', async () => {
    const chargeArb = fc.record({
      key: fc.integer({ min: 0, max: 4 }).map((k) => `p-${k}`),
      units: fc.integer({ min: 0, max: 3 }).map(String), // 0 .. 3 credits
      agent: fc.constantFrom('a1', 'a1', 'a2'), // a1 has a budget of 3 credits a period
    });
    let runsFromCarriedState = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(chargeArb, { minLength: 3, maxLength: 10 }), fc.integer({ min: 0, max: 6 }), async (charges, paid) => {
        const plain = { ...services, groupCommit: undefined };
        const prepare = async () => {
          const accountId = await createFundedAccount(services, { paid });
          await setSpendingBudget(plain, { accountId, subjectKind: 'AGENT', subjectId: 'a1', limitMicroCredits: credits(3) });
          await recordUsage(plain, { accountId, idempotencyKey: 'start', category: 'free', agentId: 'a1' }); // starts a1's kept row
          return accountId;
        };
        const input = (i: number) => ({ category: 'units', quantities: { units: charges[i]!.units }, agentId: charges[i]!.agent });
        // One transaction per charge, in order (the naive path's rules).
        const seqAccount = await prepare();
        const seq: string[] = [];
        const seqIds: (string | null)[] = [];
        for (let i = 0; i < charges.length; i++) {
          try {
            const r = await recordUsage(plain, { accountId: seqAccount, idempotencyKey: charges[i]!.key, ...input(i) });
            seq.push(r.replayed ? 'REPLAYED' : 'OK');
            seqIds.push(r.eventId);
          } catch (error) {
            seq.push(codeOf({ status: 'rejected', reason: error } as PromiseSettledResult<unknown>));
            seqIds.push(null);
          }
        }
        // Two charges per transaction, each transaction after the first from carried state.
        const grpAccount = await prepare();
        const { committer, results } = await inPairs(grpAccount, charges.map((c) => c.key), { inputAt: input });
        const grp = results.map((r) => (r.status === 'fulfilled' && (r.value as { replayed: boolean }).replayed ? 'REPLAYED' : codeOf(r)));
        expect(grp).toEqual(seq);
        // Replays name the event their key recorded, as in the sequential run (by position).
        const grpIds = results.map((r) => (r.status === 'fulfilled' ? (r.value as { eventId: string }).eventId : null));
        const firstIndex = (ids: (string | null)[]) => ids.map((id) => (id === null ? -1 : ids.indexOf(id)));
        expect(firstIndex(grpIds)).toEqual(firstIndex(seqIds));
        if (committer.stats().carriedState > 0) runsFromCarriedState++;
        const seqTotal = (await expectLedgerInvariant(services.pool, seqAccount)).totalMicroCredits;
        expect((await expectLedgerInvariant(services.pool, grpAccount)).totalMicroCredits).toBe(seqTotal);
        // (A kept row of 0 and no row say the same: which path starts the row first differs.)
        const spent = async (accountId: string) =>
          (await services.pool.query('SELECT COALESCE(sum(spent_micro_credits), 0)::text AS s FROM budget_spend WHERE account_id = $1', [accountId])).rows[0].s;
        expect(await spent(grpAccount)).toEqual(await spent(seqAccount));
      }),
      { numRuns: 40 },
    );
    // The property is about carried state, so it must have been exercised. Not every run carries:
    // a list of 2 is one transaction, and a transaction naming an agent the last one did not read a
    // budget for decides from a fresh read (carriedCovers). With lists of 3 or more, 15-16 of 40
    // runs carried in three runs here, so the earlier bound (> 10 of 40, with lists of 2 or more)
    // could fail by chance, a few runs in a hundred by a binomial estimate (it failed once on a
    // loaded machine). At least 5 of 40 still fails when carrying stops, and not by chance.
    expect(runsFromCarriedState).toBeGreaterThanOrEqual(5);
  });

  it('is not used with carryState: false', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const { committer, results } = await inPairs(accountId, ['f1', 'f2', 'f3', 'f4'], { carryState: false });
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'OK']);
    expect(committer.stats()).toMatchObject({ carriedState: 0, carriedStateMisses: 0 });
  });
});

/**
 * A charge hook and a gated pool for a GroupCommitter that run `change` (another session's
 * write, e.g. a grant) during the committer's first transaction: the change is started once that
 * transaction has decided its charges, is seen waiting for its lock (waitForBlockedBy), and the
 * committer's next transaction is held back until the change committed. Once a COMMIT frees the
 * row, a waiter and a newcomer race for it (the waiter follows the row to its new version first),
 * so without the gate the next transaction could lock it before the change.
 * @returns `charge` and `pool` for inPairs, and `changed()`: the change's promise (after the run).
 */
function changeDuringFirstTransaction(change: () => Promise<unknown>): { charge: ChargeAccounts; pool: pg.Pool; changed: () => Promise<unknown> } {
  const { pool, holdConnectsUntil } = gatedPool(services.pool);
  let started: Promise<unknown> | undefined;
  const charge: ChargeAccounts = async (tx, groups, pending, statesRead, carry) => {
    const out = await chargeAccounts(tx, groups, pending, statesRead, carry);
    if (!started) {
      const { rows } = await tx.query('SELECT pg_backend_pid() AS pid');
      started = change();
      await waitForBlockedBy(rows[0].pid);
      holdConnectsUntil(started);
    }
    return out;
  };
  return { charge, pool, changed: () => started ?? Promise.resolve() };
}

/**
 * The real pool behind a gate: `pool` is `real` except that, once `holdConnectsUntil(p)` was
 * called, each `connect()` first waits for `p` to settle. Lets a test put another session's
 * commit between two transactions of a GroupCommitter (which takes a connection per transaction).
 */
function gatedPool(real: pg.Pool): { pool: pg.Pool; holdConnectsUntil: (p: Promise<unknown>) => void } {
  let gate: Promise<unknown> = Promise.resolve();
  const pool = new Proxy(real, {
    get(target, prop) {
      if (prop === 'connect') {
        return async () => {
          await gate.catch(() => undefined);
          return target.connect();
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { pool, holdConnectsUntil: (p) => void (gate = p) };
}

/** Resolves once some backend waits for a lock held by backend `pid` (polls pg_blocking_pids). */
async function waitForBlockedBy(pid: number): Promise<void> {
  for (;;) {
    const { rows } = await services.pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid))`, [pid]);
    if (rows[0].n > 0) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
}
