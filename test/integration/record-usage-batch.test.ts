/**
 * recordUsageBatch: one transaction per account group, yet each item succeeds or fails on its
 * own (real PostgreSQL).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsageBatch } from '../../src/services/record-usage.js';
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
});
