/**
 * The period opening kept on the balance row (migration period_opening_total): the account total
 * at the start of the current billing period, which balance figures (periodCredits,
 * percentRemaining, credit alerts) are computed from. It must always equal the SUM of the
 * total-changing ledger entries dated before the period start plus the EXPIRE entries dated at
 * it, also when an expiry is recorded late (dated in the previous period), when the period
 * rolls, and for balance rows written before the column existed. Real PostgreSQL, test clocks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { expireDue } from '../../src/services/expire-due.js';
import { reconcileAccount } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(4);
});

afterAll(async () => {
  await services.close();
});

/** Moves the account's test clock without running anything due (as if no worker came by). */
async function setClock(accountId: string, at: string): Promise<void> {
  await services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, new Date(at)]);
}

async function opening(accountId: string): Promise<{ start: Date | null; total: bigint | null }> {
  const { rows } = await services.pool.query('SELECT opening_period_start AS start, opening_total_micro_credits::text AS total FROM balances WHERE account_id = $1', [accountId]);
  return { start: rows[0].start, total: rows[0].total === null ? null : BigInt(rows[0].total) };
}

let key = 0;
const charge = (accountId: string) => recordUsage(services, { accountId, idempotencyKey: `po-${++key}`, category: 'unit' }); // 1 credit

describe('period opening', () => {
  it('follows the period roll and a late expiry dated in the previous period; figures equal the ledger sum', async () => {
    // Periods start on the 10th (the anchor). FREE credit (5) expires on Feb 5, in the first period.
    const accountId = await createFundedAccount(services, { free: 5, paid: 10, freeExpiresAt: new Date('2026-02-05T00:00:00Z'), testClockStart: new Date('2026-01-10T00:00:00Z') });
    // The grants are dated at the period start itself, so they are not part of its opening.
    expect(await opening(accountId)).toEqual({ start: new Date('2026-01-10T00:00:00Z'), total: 0n });

    await setClock(accountId, '2026-01-11T00:00:00Z');
    await charge(accountId); // FREE 5 -> 4
    expect((await opening(accountId)).total).toBe(0n);

    // Into the next period (Feb 10) with the FREE batch past its expiry but not yet recorded.
    await setClock(accountId, '2026-02-15T00:00:00Z');
    await charge(accountId); // from PAID: 10 -> 9
    expect(await opening(accountId)).toEqual({ start: new Date('2026-02-10T00:00:00Z'), total: credits(14) }); // 5 + 10 - 1
    expect((await reconcileAccount(services.pool, accountId)).consistent).toBe(true);

    // The expiry worker comes by late: EXPIRE -4 dated Feb 5, before this period's start.
    const expired = await expireDue(services, accountId);
    expect(expired.batches).toBe(1);
    expect(await opening(accountId)).toEqual({ start: new Date('2026-02-10T00:00:00Z'), total: credits(10) });
    const balance = await expectLedgerInvariant(services.pool, accountId, new Date('2026-02-15T00:00:00Z'));
    expect(balance.periodMicroCredits).toBe(credits(10));
    expect(balance.availableMicroCredits).toBe(credits(9));
    expect(balance.percentRemaining).toBe(90);

    // The next period: its opening is the total at its start (9), counted from this period's entries only.
    await setClock(accountId, '2026-03-12T00:00:00Z');
    await charge(accountId);
    expect(await opening(accountId)).toEqual({ start: new Date('2026-03-10T00:00:00Z'), total: credits(9) });
    const next = await expectLedgerInvariant(services.pool, accountId, new Date('2026-03-12T00:00:00Z'));
    expect(next.periodMicroCredits).toBe(credits(9));
    expect(next.availableMicroCredits).toBe(credits(8));
  });

  it('a balance row without a stored opening (written before the column existed) gets it from the total at its next change', async () => {
    const accountId = await createFundedAccount(services, { paid: 20, testClockStart: new Date('2026-05-03T12:00:00Z') });
    await setClock(accountId, '2026-06-04T00:00:00Z'); // period from Jun 3, 12:00
    await charge(accountId);
    await charge(accountId);
    await services.pool.query('UPDATE balances SET opening_period_start = NULL, opening_total_micro_credits = NULL WHERE account_id = $1', [accountId]);
    expect((await reconcileAccount(services.pool, accountId)).consistent).toBe(true); // nothing stored, nothing to check
    await charge(accountId); // total 18 before it, minus the two charges dated after the start: 20
    expect(await opening(accountId)).toEqual({ start: new Date('2026-06-03T12:00:00Z'), total: credits(20) });
    const balance = await expectLedgerInvariant(services.pool, accountId, new Date('2026-06-04T00:00:00Z'));
    expect(balance.periodMicroCredits).toBe(credits(20));
    expect(balance.availableMicroCredits).toBe(credits(17));
  });

  it('a stored opening that disagrees with the ledger is reported inconsistent', async () => {
    const accountId = await createFundedAccount(services, { paid: 3 });
    await charge(accountId);
    expect((await reconcileAccount(services.pool, accountId)).consistent).toBe(true);
    await services.pool.query('UPDATE balances SET opening_total_micro_credits = opening_total_micro_credits + 1 WHERE account_id = $1', [accountId]);
    const rec = await reconcileAccount(services.pool, accountId);
    expect(rec.consistent).toBe(false);
    expect(rec.openingMicroCredits! - rec.openingLedgerSumMicroCredits!).toBe(1n);
  });
});
