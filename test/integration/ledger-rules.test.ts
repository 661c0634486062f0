/**
 * The ledger's rules, one by one, through the services on the real PostgreSQL (issue #2 §3).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { extendReservation } from '../../src/services/extend-reservation.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { expireDue } from '../../src/services/expire-due.js';
import { readBalance } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';
import { readActivePriceBook, type PricingState } from '../../src/services/pricing-state.js';
import { validatePriceBook } from '../../src/pricing/price-book.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(5);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
});

const T0 = new Date(Date.UTC(2026, 5, 1, 0, 0, 0));
const at = (ms: number) => new Date(T0.getTime() + ms);

async function drawdownsOf(eventId: string) {
  const { rows } = await s.pool.query(
    `SELECT b.type, b.source, d.amount_micro_credits::text AS amount FROM drawdowns d JOIN credit_batches b ON b.id = d.batch_id
      WHERE d.usage_event_id = $1 ORDER BY d.position`,
    [eventId],
  );
  return rows;
}

async function grant(accountId: string, key: string, amount: number, type: 'FREE' | 'PAID', expiresAt: Date | null = null) {
  return grantCredits(s, { accountId, amountMicroCredits: credits(amount), type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', expiresAt, reference: null, idempotencyKey: key });
}

/** Reserves `holdCredits` and captures `costCredits` units against it: what the hold and available credit do not cover becomes debt. */
async function overage(accountId: string, key: string, holdCredits: number, costCredits: number) {
  const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: credits(holdCredits), ttlSeconds: 600, idempotencyKey: `hold-${key}` });
  return { ...(await capture(accountId, reservationId, key, costCredits)), reservationId };
}

/** Captures `costCredits` units against a hold (once it is used up, all of it becomes debt). */
async function capture(accountId: string, reservationId: string, key: string, costCredits: number) {
  return recordUsage(s, { accountId, idempotencyKey: key, category: 'units', quantities: { units: String(costCredits) }, reservationId });
}

/** The batch of the grant given under `key` (its grant id, remaining credit as a string, status). */
async function batchOf(accountId: string, key: string) {
  const { rows } = await s.pool.query(
    `SELECT b.grant_id, b.remaining_micro_credits::text AS remaining, b.status FROM credit_batches b JOIN credit_grants g ON g.id = b.grant_id
      WHERE g.account_id = $1 AND g.idempotency_key = $2`,
    [accountId, key],
  );
  return rows[0] as { grant_id: string; remaining: string; status: string };
}

/** An event's REFUND entries in order: amount and the grant of the batch it went to (null: debt forgiven). */
async function refundEntries(eventId: string) {
  const { rows } = await s.pool.query(
    `SELECT l.amount_micro_credits::text AS amount, b.grant_id AS grant FROM ledger_entries l LEFT JOIN credit_batches b ON b.id = l.batch_id
      WHERE l.usage_event_id = $1 AND l.type = 'REFUND' ORDER BY l.seq`,
    [eventId],
  );
  return rows;
}

/** How many ADJUSTMENT grants the account has. */
async function adjustmentGrants(accountId: string): Promise<number> {
  const { rows } = await s.pool.query(`SELECT COUNT(*)::int AS n FROM credit_grants WHERE account_id = $1 AND source = 'ADJUSTMENT'`, [accountId]);
  return rows[0].n as number;
}

describe('drawdown order', () => {
  it('draws FREE before PAID, soonest expiry first, never-expiring last', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    await grant(accountId, 'paid-never', 5, 'PAID');
    await grant(accountId, 'paid-soon', 5, 'PAID', at(3_600_000));
    await grant(accountId, 'free-late', 2, 'FREE', at(7_200_000));
    await grant(accountId, 'free-soon', 2, 'FREE', at(3_600_000));
    const r = await recordUsage(s, { accountId, idempotencyKey: 'u1', category: 'units', quantities: { units: '12' } });
    const parts = await drawdownsOf(r.eventId);
    expect(parts.map((p) => `${p.type}:${p.amount}`)).toEqual(['FREE:2000000', 'FREE:2000000', 'PAID:5000000', 'PAID:3000000']);
    const { rows } = await s.pool.query(
      `SELECT b.expires_at FROM drawdowns d JOIN credit_batches b ON b.id = d.batch_id WHERE d.usage_event_id = $1 ORDER BY d.position`,
      [r.eventId],
    );
    expect(rows.map((x) => x.expires_at?.toISOString() ?? null)).toEqual([at(3_600_000).toISOString(), at(7_200_000).toISOString(), at(3_600_000).toISOString(), null]);
    await expectLedgerInvariant(s.pool, accountId, T0);
  });

  it('a batch pays 1 ms before its expiresAt and never at or after it, even before any expiry job', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    await grant(accountId, 'free', 3, 'FREE', at(60_000));
    s.setNow(at(59_999));
    await recordUsage(s, { accountId, idempotencyKey: 'before', category: 'unit' });
    s.setNow(at(60_000));
    await expect(recordUsage(s, { accountId, idempotencyKey: 'at', category: 'unit' })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    const b = await readBalance(s.pool, accountId, at(60_000));
    expect(b.availableMicroCredits).toBe(0n);
    expect(b.freeMicroCredits).toBe(0n);
    const { rows } = await s.pool.query('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows[0].n).toBe(1);
    await expectLedgerInvariant(s.pool, accountId, at(60_000));
  });
});

describe('reservations and debt', () => {
  it('takes cost from the hold first, then available credit, then leaves debt that the next grant repays first', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 10 });
    const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'h' });
    expect((await readBalance(s.pool, accountId, T0)).availableMicroCredits).toBe(credits(6));
    // Partial captures while streaming: 3 + 3 (1 beyond the hold comes from available credit).
    await recordUsage(s, { accountId, idempotencyKey: 'p1', category: 'units', quantities: { units: '3' }, reservationId });
    await recordUsage(s, { accountId, idempotencyKey: 'p2', category: 'units', quantities: { units: '3' }, reservationId });
    let b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.reservedMicroCredits, b.availableMicroCredits]).toEqual([credits(4), 0n, credits(4)]);
    // Settle with 7 more: 4 from available credit, 3 become debt.
    await settleReservation(s, reservationId, [{ accountId, idempotencyKey: 'final', category: 'units', quantities: { units: '7' } }]);
    b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.debtMicroCredits, b.availableMicroCredits, b.depleted]).toEqual([-credits(3), credits(3), -credits(3), true]);
    await expect(recordUsage(s, { accountId, idempotencyKey: 'refused', category: 'unit' })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    const g = await grant(accountId, 'top-up', 5, 'PAID');
    b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.debtMicroCredits, b.paidMicroCredits]).toEqual([credits(2), 0n, credits(2)]);
    const { rows } = await s.pool.query(
      `SELECT type, amount_micro_credits::text AS amount FROM ledger_entries WHERE account_id = $1 AND batch_id = (SELECT id FROM credit_batches WHERE grant_id = $2) ORDER BY seq`,
      [accountId, g.grantId],
    );
    expect(rows).toEqual([
      { type: 'GRANT', amount: credits(2).toString() },
      { type: 'DEBT_REPAY', amount: credits(3).toString() },
    ]);
    await expectLedgerInvariant(s.pool, accountId, T0);
  });

  it("a settle prices all its items with the price book of one load, though a publish lands (or the cache turns over) while it prices them", async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 20 });
    const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: credits(2), ttlSeconds: 600, idempotencyKey: 'h' });
    // Every load after the first gives "the next book": the same rules with `units` at 2 credits
    // each (the same version row, so the events may reference it).
    const active = (await readActivePriceBook(s.pool))!;
    const doubled = {
      ...active,
      book: validatePriceBook({
        ...active.stored,
        rules: active.stored.rules.map((r) => ((r as { category: string }).category === 'units' ? { ...(r as object), credits: '2' } : r)),
      }),
    };
    let loads = 0;
    const pricing: PricingState = { priceBook: async () => (loads++ === 0 ? active : doubled), settings: () => s.pricing.settings(), invalidate: () => undefined };
    await settleReservation({ ...s, pricing }, reservationId, [
      { accountId, idempotencyKey: 'item-1', category: 'units', quantities: { units: '1' } },
      { accountId, idempotencyKey: 'item-2', category: 'units', quantities: { units: '1' } },
    ]);
    const { rows } = await s.pool.query('SELECT idempotency_key AS key, cost_micro_credits::text AS cost FROM usage_events WHERE reservation_id = $1 ORDER BY idempotency_key', [reservationId]);
    expect(rows).toEqual([
      { key: 'item-1', cost: credits(1).toString() },
      { key: 'item-2', cost: credits(1).toString() },
    ]);
    await expectLedgerInvariant(s.pool, accountId, T0);
  });

  it('an expired hold no longer holds; it can be neither captured nor extended; release closes it as EXPIRED', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 10 });
    const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: credits(8), ttlSeconds: 60, idempotencyKey: 'h' });
    await extendReservation(s, reservationId, 120);
    s.setNow(at(119_999));
    expect((await readBalance(s.pool, accountId, at(119_999))).reservedMicroCredits).toBe(credits(8));
    s.setNow(at(120_000));
    const b = await readBalance(s.pool, accountId, at(120_000));
    expect([b.reservedMicroCredits, b.availableMicroCredits]).toEqual([0n, credits(10)]);
    await expect(recordUsage(s, { accountId, idempotencyKey: 'late', category: 'unit', reservationId })).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
    await expect(extendReservation(s, reservationId, 60)).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
    await releaseReservation(s, reservationId);
    const { rows } = await s.pool.query('SELECT status FROM reservations WHERE id = $1', [reservationId]);
    expect(rows[0].status).toBe('EXPIRED');
    await expectLedgerInvariant(s.pool, accountId, at(120_000));
  });
});

describe('refunds and voids', () => {
  it('refundUsage returns credit to the batches it came from, except expired ones, once', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    await grant(accountId, 'free', 2, 'FREE', at(60_000));
    await grant(accountId, 'paid', 5, 'PAID');
    const ev = await recordUsage(s, { accountId, idempotencyKey: 'u', category: 'units', quantities: { units: '4' } });
    s.setNow(at(60_000)); // the FREE batch (2 drawn) has expired meanwhile
    await refundUsage(s, ev.eventId, 'bad answer');
    let b = await readBalance(s.pool, accountId, at(60_000));
    expect([b.freeMicroCredits, b.paidMicroCredits]).toEqual([0n, credits(5)]);
    const refunds = await s.pool.query(
      `SELECT COALESCE(SUM(amount_micro_credits), 0)::text AS sum FROM ledger_entries WHERE account_id = $1 AND type = 'REFUND'`,
      [accountId],
    );
    expect(refunds.rows[0].sum).toBe(credits(2).toString());
    const free = await s.pool.query(`SELECT remaining_micro_credits::text AS r FROM credit_batches WHERE account_id = $1 AND type = 'FREE'`, [accountId]);
    expect(free.rows[0].r).toBe('0');
    await refundUsage(s, ev.eventId, 'bad answer');
    b = await readBalance(s.pool, accountId, at(60_000));
    expect(b.paidMicroCredits).toBe(credits(5));
    const { rows } = await s.pool.query('SELECT refunded_at IS NOT NULL AS refunded FROM usage_events WHERE id = $1', [ev.eventId]);
    expect(rows[0].refunded).toBe(true);
    await expectLedgerInvariant(s.pool, accountId, at(60_000));
  });

  it("refunding an event whose debt a later grant repaid gives its whole cost back (the unpaid part forgiven, the repaid part into the repaying grant's batch), once", async () => {
    s.setNow(T0);
    for (const [repayCredits, forgivenCredits] of [
      [10, 0], // the grant repaid all 3 of the event's debt
      [1, 2], // it repaid 1; 2 are still owed and forgiven
    ] as const) {
      const accountId = await createFundedAccount(s, { paid: 5 });
      // 8 against a hold of 5 on 5 credits: 5 drawn, 3 become debt.
      const ev = await overage(accountId, 'over', 5, 8);
      expect((await readBalance(s.pool, accountId, T0)).debtMicroCredits).toBe(credits(3));
      const topUp = await grant(accountId, 'top-up', repayCredits, 'PAID');
      await refundUsage(s, ev.eventId, 'bad answer');
      // Everything the account was given (5 + the grant), nothing charged any more.
      const b = await readBalance(s.pool, accountId, T0);
      expect([b.totalMicroCredits, b.debtMicroCredits]).toEqual([credits(5 + repayCredits), 0n]);
      const repaid = 3 - forgivenCredits;
      expect(await refundEntries(ev.eventId)).toEqual([
        { amount: credits(5).toString(), grant: (await batchOf(accountId, 'factory-paid')).grant_id },
        ...(forgivenCredits > 0 ? [{ amount: credits(forgivenCredits).toString(), grant: null }] : []),
        { amount: credits(repaid).toString(), grant: topUp.grantId },
      ]);
      expect(await batchOf(accountId, 'top-up')).toMatchObject({ remaining: credits(repayCredits).toString(), status: 'ACTIVE' });
      await refundUsage(s, ev.eventId, 'bad answer'); // once
      expect((await readBalance(s.pool, accountId, T0)).totalMicroCredits).toBe(credits(5 + repayCredits));
      expect(await adjustmentGrants(accountId)).toBe(0);
      await expectLedgerInvariant(s.pool, accountId, T0);
    }
  });

  it("an event's repaid debt goes back to the grants that repaid it, first debt repaid first, not to the latest repayment: a voided later repayment does not lose it", async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 5 });
    const e1 = await overage(accountId, 'e1', 5, 8); // 5 drawn, 3 debt
    await grant(accountId, 'purchase', 3, 'PAID'); // repays e1's 3
    await grant(accountId, 'more', 2, 'PAID');
    const e2 = await overage(accountId, 'e2', 2, 5); // 2 drawn, 3 debt
    const promo = await grant(accountId, 'promo', 3, 'FREE'); // repays e2's 3
    await voidGrant(s, promo.grantId, 'abuse');
    expect(await readBalance(s.pool, accountId, T0)).toMatchObject({ totalMicroCredits: 0n, debtMicroCredits: 0n });
    await refundUsage(s, e1.eventId, 'bad answer');
    // e1's whole cost: 5 into the factory's batch, 3 into the purchase that repaid its debt (PAID).
    let b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.paidMicroCredits, b.freeMicroCredits, b.debtMicroCredits]).toEqual([credits(8), credits(8), 0n, 0n]);
    expect(await batchOf(accountId, 'purchase')).toMatchObject({ remaining: credits(3).toString(), status: 'ACTIVE' });
    await refundUsage(s, e1.eventId, 'bad answer'); // once
    // e2: its drawn 2 come back; the 3 the voided promo repaid do not (as credit drawn from a voided batch).
    await refundUsage(s, e2.eventId, 'bad answer');
    b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.debtMicroCredits]).toEqual([credits(10), 0n]);
    expect((await refundEntries(e2.eventId)).map((r) => r.amount)).toEqual([credits(2).toString()]);
    expect(await batchOf(accountId, 'promo')).toMatchObject({ remaining: '0', status: 'VOIDED' });
    expect(await adjustmentGrants(accountId)).toBe(0);
    await expectLedgerInvariant(s.pool, accountId, T0);
  });

  it('debt a FREE grant repaid comes back as that grant\'s FREE credit with its expiry, even when a PAID grant repaid later debt', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 5 });
    const e1 = await overage(accountId, 'e1', 5, 8); // 5 drawn, 3 debt
    await grant(accountId, 'promo', 3, 'FREE', at(3_600_000)); // repays e1's 3
    await grant(accountId, 'more', 2, 'PAID');
    await overage(accountId, 'e2', 2, 5); // 3 debt
    await grant(accountId, 'purchase', 3, 'PAID'); // repays e2's 3 (the latest repayment)
    await refundUsage(s, e1.eventId, 'bad answer');
    const b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.freeMicroCredits, b.paidMicroCredits]).toEqual([credits(8), credits(3), credits(5)]);
    expect(await batchOf(accountId, 'promo')).toMatchObject({ remaining: credits(3).toString(), status: 'ACTIVE' });
    expect(await batchOf(accountId, 'purchase')).toMatchObject({ remaining: '0' });
    // It expires with the promo.
    s.setNow(at(3_600_000));
    await expireDue(s, accountId);
    expect(await readBalance(s.pool, accountId, at(3_600_000))).toMatchObject({ totalMicroCredits: credits(5), freeMicroCredits: 0n });
    await expectLedgerInvariant(s.pool, accountId, at(3_600_000));
  });

  it('a refund forgives only its own unpaid debt: with two debts and one grant repaying the first and part of the second, each refund gives its own share back', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 5 });
    const e1 = await overage(accountId, 'e1', 5, 8); // 5 drawn, 3 debt
    const e2 = await capture(accountId, e1.reservationId, 'e2', 3); // the hold is used up: 3 more debt, 6
    const g = await grant(accountId, 'purchase', 4, 'PAID'); // repays e1's 3, then 1 of e2's
    expect((await readBalance(s.pool, accountId, T0)).debtMicroCredits).toBe(credits(2));
    await refundUsage(s, e1.eventId, 'bad answer');
    // e1 was repaid in full: its 3 go back into the purchase; e2's 2 are still owed.
    let b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.debtMicroCredits]).toEqual([credits(6), credits(2)]);
    expect(await refundEntries(e1.eventId)).toEqual([
      { amount: credits(5).toString(), grant: (await batchOf(accountId, 'factory-paid')).grant_id },
      { amount: credits(3).toString(), grant: g.grantId },
    ]);
    await refundUsage(s, e2.eventId, 'bad answer');
    // e2: the 2 still owed forgiven, the 1 the purchase repaid back into it.
    b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.debtMicroCredits]).toEqual([credits(9), 0n]);
    expect(await refundEntries(e2.eventId)).toEqual([
      { amount: credits(2).toString(), grant: null },
      { amount: credits(1).toString(), grant: g.grantId },
    ]);
    expect(await batchOf(accountId, 'purchase')).toMatchObject({ remaining: credits(4).toString(), status: 'ACTIVE' });
    await expectLedgerInvariant(s.pool, accountId, T0);
  });

  it('two debts one grant repaid: each refund returns its own share into the grant, once', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 5 });
    const e1 = await overage(accountId, 'e1', 5, 8); // 5 drawn, 3 debt
    const e2 = await capture(accountId, e1.reservationId, 'e2', 2); // 2 debt
    await grant(accountId, 'promo', 10, 'FREE', at(3_600_000)); // repays both (5), 5 left
    await refundUsage(s, e2.eventId, 'bad answer');
    await refundUsage(s, e2.eventId, 'bad answer');
    expect(await batchOf(accountId, 'promo')).toMatchObject({ remaining: credits(7).toString() });
    await refundUsage(s, e1.eventId, 'bad answer');
    await refundUsage(s, e1.eventId, 'bad answer');
    expect(await batchOf(accountId, 'promo')).toMatchObject({ remaining: credits(10).toString() });
    const b = await readBalance(s.pool, accountId, T0);
    expect([b.totalMicroCredits, b.freeMicroCredits, b.paidMicroCredits, b.debtMicroCredits]).toEqual([credits(15), credits(10), credits(5), 0n]);
    expect(await adjustmentGrants(accountId)).toBe(0);
    await expectLedgerInvariant(s.pool, accountId, T0);
  });

  it("voidGrant removes the grant's unused remainder, once", async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    const g = await grant(accountId, 'paid', 10, 'PAID');
    await recordUsage(s, { accountId, idempotencyKey: 'u', category: 'units', quantities: { units: '4' } });
    await voidGrant(s, g.grantId, 'chargeback');
    await voidGrant(s, g.grantId, 'chargeback');
    const b = await readBalance(s.pool, accountId, T0);
    expect(b.totalMicroCredits).toBe(0n);
    const { rows } = await s.pool.query(`SELECT type, amount_micro_credits::text AS amount FROM ledger_entries WHERE account_id = $1 AND type = 'VOID'`, [accountId]);
    expect(rows).toEqual([{ type: 'VOID', amount: (-credits(6)).toString() }]);
    await expectLedgerInvariant(s.pool, accountId, T0);
  });
});
