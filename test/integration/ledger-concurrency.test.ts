/**
 * Concurrency on the real PostgreSQL: charges racing for the last credits, and one idempotency
 * key sent many times at once. (Checked once by hand: without the balance row lock
 * (`FOR UPDATE OF b` in AccountTx.lock) these tests fail.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, settledCode as codeOf, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;
beforeAll(() => {
  services = createTestServices(20);
});
afterAll(async () => {
  await services.close();
});

describe('concurrent charges', () => {
  it('200 concurrent 1-credit charges on 50 credits: exactly 50 succeed, 150 INSUFFICIENT_CREDITS, balance 0', async () => {
    const accountId = await createFundedAccount(services, { free: 20, paid: 30 });
    const results = await Promise.allSettled(
      Array.from({ length: 200 }, (_, i) => recordUsage(services, { accountId, idempotencyKey: `c-${i}`, category: 'unit' })),
    );
    const codes = results.map(codeOf);
    expect(codes.filter((c) => c === 'OK')).toHaveLength(50);
    expect(codes.filter((c) => c === 'INSUFFICIENT_CREDITS')).toHaveLength(150);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.availableMicroCredits).toBe(0n);
    expect(balance.totalMicroCredits).toBe(0n);
    const { rows } = await services.pool.query(
      `SELECT COUNT(*)::int AS events, COALESCE(SUM(cost_micro_credits), 0)::text AS spent FROM usage_events WHERE account_id = $1`,
      [accountId],
    );
    expect(rows[0]).toEqual({ events: 50, spent: credits(50).toString() });
    const batches = await services.pool.query(`SELECT status FROM credit_batches WHERE account_id = $1`, [accountId]);
    expect(batches.rows.map((r) => r.status).sort()).toEqual(['EXHAUSTED', 'EXHAUSTED']);
  });

  it('one idempotency key sent 50 times at once gives one event and one charge', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const results = await Promise.all(
      Array.from({ length: 50 }, () => recordUsage(services, { accountId, idempotencyKey: 'same-key', category: 'unit', agentId: 'a1' })),
    );
    expect(new Set(results.map((r) => r.eventId)).size).toBe(1);
    expect(results.filter((r) => !r.replayed)).toHaveLength(1);
    const { rows } = await services.pool.query('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows[0].n).toBe(1);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.totalMicroCredits).toBe(credits(9));
  });

  it('one grant idempotency key sent 30 times at once grants once', async () => {
    const accountId = await createFundedAccount(services, {});
    const results = await Promise.all(
      Array.from({ length: 30 }, () =>
        grantCredits(services, { accountId, amountMicroCredits: credits(7), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: 'pay_1', idempotencyKey: 'grant-once' }),
      ),
    );
    expect(new Set(results.map((r) => r.grantId)).size).toBe(1);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.totalMicroCredits).toBe(credits(7));
  });

  it('holds and charges racing: no more is held or spent than there is', async () => {
    const accountId = await createFundedAccount(services, { paid: 20 });
    const results = await Promise.allSettled([
      ...Array.from({ length: 20 }, (_, i) => reserveCredits(services, { accountId, amountMicroCredits: credits(2), ttlSeconds: 600, idempotencyKey: `r-${i}` })),
      ...Array.from({ length: 20 }, (_, i) => recordUsage(services, { accountId, idempotencyKey: `u-${i}`, category: 'unit' })),
    ]);
    const held = results.slice(0, 20).filter((r) => r.status === 'fulfilled').length * 2;
    const spent = results.slice(20).filter((r) => r.status === 'fulfilled').length;
    expect(results.map(codeOf).every((c) => c === 'OK' || c === 'INSUFFICIENT_CREDITS')).toBe(true);
    expect(held + spent).toBe(20);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.reservedMicroCredits).toBe(credits(held));
    expect(balance.availableMicroCredits).toBe(0n);
  });
});
