/**
 * recordUsageBatch: one transaction per chunk of accounts, yet each item succeeds or fails on its
 * own; concurrent batches over the same accounts neither deadlock nor overspend (real PostgreSQL).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { BATCH_ACCOUNTS_PER_TRANSACTION, recordUsageBatch } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';
import type { UsageInput } from '../../src/services/usage-command.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(10);
});
afterAll(async () => {
  await s.close();
});

const codeOf = (r: Awaited<ReturnType<typeof recordUsageBatch>>[number]) =>
  r.ok ? 'OK' : r.error instanceof LedgerError ? r.error.code : `UNEXPECTED ${String(r.error)}`;

describe('recordUsageBatch', () => {
  it('refused items leave no trace while the rest of their group is charged, in input order', async () => {
    const a = await createFundedAccount(s, { paid: 5 });
    const b = await createFundedAccount(s, { paid: 100 });
    const { reservationId } = await reserveCredits(s, { accountId: a, amountMicroCredits: credits(2), ttlSeconds: 600, idempotencyKey: 'h' });
    const inputs: UsageInput[] = [
      { accountId: a, idempotencyKey: 'a1', category: 'unit' }, // 1 of the 3 available
      { accountId: b, idempotencyKey: 'b1', category: 'units', quantities: { units: '40' } },
      { accountId: a, idempotencyKey: 'a2', category: 'units', quantities: { units: '5' } }, // 5 > 2 available: refused
      { accountId: a, idempotencyKey: 'a3', category: 'no-such-category' }, // no price rule: refused
      { accountId: a, idempotencyKey: 'a1', category: 'unit' }, // same key again in the same batch: the first event
      { accountId: a, idempotencyKey: 'a4', category: 'units', quantities: { units: '3' }, reservationId }, // 2 from the hold, 1 available
      { accountId: a, idempotencyKey: 'a5', category: 'units', quantities: { units: '1' } }, // 1 left
      { accountId: a, idempotencyKey: 'a6', category: 'unit' }, // nothing left
      { accountId: b, idempotencyKey: 'b2', category: 'unit', reservationId: '00000000-0000-4000-8000-000000000000' }, // unknown hold
    ];
    const results = await recordUsageBatch(s, inputs, { maxItems: 100 });
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'INSUFFICIENT_CREDITS', 'BAD_USER_INPUT', 'OK', 'OK', 'OK', 'INSUFFICIENT_CREDITS', 'NOT_FOUND']);
    const first = results[0]!;
    const replay = results[4]!;
    expect(first.ok && replay.ok && replay.result.eventId === first.result.eventId && replay.result.replayed).toBe(true);
    const ba = await expectLedgerInvariant(s.pool, a);
    const bb = await expectLedgerInvariant(s.pool, b);
    expect([ba.totalMicroCredits, ba.reservedMicroCredits, bb.totalMicroCredits]).toEqual([0n, 0n, credits(60)]);
    const { rows } = await s.pool.query('SELECT idempotency_key FROM usage_events WHERE account_id = $1 ORDER BY seq', [a]);
    expect(rows.map((r) => r.idempotency_key)).toEqual(['a1', 'a4', 'a5']);
  });

  it('1,000 one-credit events on an account holding 600: exactly 600 charged', async () => {
    const a = await createFundedAccount(s, { free: 100, paid: 500 });
    const inputs = Array.from({ length: 1000 }, (_, i): UsageInput => ({ accountId: a, idempotencyKey: `k${i}`, category: 'unit' }));
    const results = await recordUsageBatch(s, inputs, { maxItems: 1000 });
    expect(results.filter((r) => r.ok)).toHaveLength(600);
    expect(results.slice(0, 600).every((r) => r.ok)).toBe(true);
    const b = await expectLedgerInvariant(s.pool, a);
    expect(b.totalMicroCredits).toBe(0n);
  });

  it('a batch over more accounts than one transaction takes: every account charged exactly, its version moved once, unknown accounts NOT_FOUND', async () => {
    const n = BATCH_ACCOUNTS_PER_TRANSACTION + 30;
    const accounts = await Promise.all(Array.from({ length: n }, () => createFundedAccount(s, { free: 1, paid: 2 })));
    const versionOf = async (ids: string[]) =>
      new Map((await s.pool.query('SELECT account_id, version FROM balances WHERE account_id = ANY($1)', [ids])).rows.map((r) => [r.account_id as string, BigInt(r.version)]));
    const before = await versionOf(accounts);
    const missing = '00000000-0000-4000-8000-00000000beef';
    // Per account: 2 units (FREE 1 then PAID 1), 1 unit (PAID), then 1 unit more than is left.
    const inputs: UsageInput[] = [
      ...accounts.map((a) => ({ accountId: a, idempotencyKey: 'x1', category: 'units', quantities: { units: '2' } })),
      { accountId: missing, idempotencyKey: 'm', category: 'unit' },
      ...accounts.map((a) => ({ accountId: a, idempotencyKey: 'x2', category: 'unit' })),
      ...accounts.map((a) => ({ accountId: a, idempotencyKey: 'x3', category: 'unit' })),
    ];
    const results = await recordUsageBatch(s, inputs, { maxItems: 1000 });
    const codes = results.map(codeOf);
    expect(codes.slice(0, n)).toEqual(Array(n).fill('OK'));
    expect(codes[n]).toBe('NOT_FOUND');
    expect(codes.slice(n + 1, 2 * n + 1)).toEqual(Array(n).fill('OK'));
    expect(codes.slice(2 * n + 1)).toEqual(Array(n).fill('INSUFFICIENT_CREDITS'));
    const after = await versionOf(accounts);
    for (const a of accounts) {
      expect(after.get(a)! - before.get(a)!).toBe(1n);
      const balance = await expectLedgerInvariant(s.pool, a);
      expect(balance.totalMicroCredits).toBe(0n);
    }
    const { rows } = await s.pool.query(
      `SELECT e.idempotency_key AS key, b.type, d.amount_micro_credits::text AS amount FROM usage_events e
         JOIN drawdowns d ON d.usage_event_id = e.id JOIN credit_batches b ON b.id = d.batch_id
        WHERE e.account_id = $1 ORDER BY e.seq, d.position`,
      [accounts[7]],
    );
    expect(rows).toEqual([
      { key: 'x1', type: 'FREE', amount: '1000000' },
      { key: 'x1', type: 'PAID', amount: '1000000' },
      { key: 'x2', type: 'PAID', amount: '1000000' },
    ]);
  });

  it('concurrent batches over the same accounts in different orders all complete: no overspend, every success recorded once', async () => {
    const accounts = await Promise.all(Array.from({ length: 40 }, () => createFundedAccount(s, { paid: 3 })));
    // 6 batches, each charging every account 1 credit, in a different order: 3 of 6 per account succeed.
    const batches = Array.from({ length: 6 }, (_, b) => {
      const order = accounts.map((a, i) => ({ a, k: (i * (b + 3) + b * 7) % accounts.length })).sort((x, y) => x.k - y.k);
      return order.map(({ a }) => ({ accountId: a, idempotencyKey: `c-${b}`, category: 'unit' }));
    });
    const results = await Promise.all(batches.map((inputs) => recordUsageBatch(s, inputs, { maxItems: 1000, concurrency: 2 })));
    const codes = results.flat().map(codeOf);
    expect(codes.filter((c) => c === 'OK')).toHaveLength(3 * accounts.length);
    expect(codes.filter((c) => c === 'INSUFFICIENT_CREDITS')).toHaveLength(3 * accounts.length);
    const { rows } = await s.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = ANY($1)', [accounts]);
    expect(rows[0].n).toBe(3 * accounts.length);
    for (const a of accounts) expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(0n);
  });
});
