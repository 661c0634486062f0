/**
 * Reservations (holds) end to end, on the real PostgreSQL, through both charge paths (one
 * transaction per operation, and group commit): partial captures then a settle, captures beyond
 * the hold, settles and releases racing the expiry, idempotency keys reused with other input,
 * settles naming another account, credit that expires or is voided while held, extensions and
 * budgets. After every scenario the ledger invariant holds.
 */
import { describe, expect, it } from 'vitest';
import { settledCode, useTestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { MAX_RESERVATION_TTL_SECONDS, reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { extendReservation } from '../../src/services/extend-reservation.js';
import { expireDue } from '../../src/services/expire-due.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { readBalance } from '../../src/services/read-balance.js';
import { setSpendingBudget, listBudgets } from '../../src/services/spending-budgets.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';

const s = useTestServices(10);

const T0 = new Date(Date.UTC(2026, 7, 1, 0, 0, 0));
const at = (ms: number) => new Date(T0.getTime() + ms);

/** The ledger entries of an account in order: type, amount, balanceAfter (micro-credits as strings). */
async function entriesOf(accountId: string) {
  const { rows } = await s.pool.query(
    `SELECT type, amount_micro_credits::text AS amount, balance_after_micro_credits::text AS after FROM ledger_entries WHERE account_id = $1 ORDER BY seq`,
    [accountId],
  );
  return rows.map((r) => `${r.type} ${r.amount} -> ${r.after}`);
}

async function holdRow(id: string) {
  const { rows } = await s.pool.query('SELECT status, amount_micro_credits::text AS amount, consumed_micro_credits::text AS consumed, expires_at FROM reservations WHERE id = $1', [id]);
  return rows[0] as { status: string; amount: string; consumed: string; expires_at: Date };
}

/**
 * Every hold of the account agrees with its ledger: consumed = the cost of its usage events, one
 * RESERVE of its amount, and once closed one RELEASE of max(amount - consumed, 0) (none while
 * ACTIVE); each entry's balanceAfter is the previous one moved by the entries that change the total.
 */
async function expectHoldsAgree(accountId: string) {
  const { rows } = await s.pool.query(
    `SELECT r.id, r.status, r.amount_micro_credits::text AS amount, r.consumed_micro_credits::text AS consumed,
            (SELECT COALESCE(SUM(cost_micro_credits), 0)::text FROM usage_events u WHERE u.reservation_id = r.id) AS captured,
            (SELECT COALESCE(SUM(amount_micro_credits), 0)::text FROM ledger_entries l WHERE l.reservation_id = r.id AND l.type = 'RESERVE') AS reserved,
            (SELECT COALESCE(SUM(-amount_micro_credits), 0)::text FROM ledger_entries l WHERE l.reservation_id = r.id AND l.type = 'RELEASE') AS released,
            (SELECT COUNT(*)::int FROM ledger_entries l WHERE l.reservation_id = r.id AND l.type = 'RELEASE') AS releases
       FROM reservations r WHERE r.account_id = $1`,
    [accountId],
  );
  for (const r of rows) {
    const left = BigInt(r.amount) - BigInt(r.consumed);
    expect({ id: r.id, consumed: r.consumed, reserved: r.reserved, released: r.released, releases: r.releases }).toEqual({
      id: r.id,
      consumed: r.captured,
      reserved: r.amount,
      released: r.status === 'ACTIVE' || left <= 0n ? '0' : left.toString(),
      releases: r.status === 'ACTIVE' || left <= 0n ? 0 : 1,
    });
  }
  const { rows: entries } = await s.pool.query(
    `SELECT type, amount_micro_credits::text AS amount, balance_after_micro_credits::text AS after FROM ledger_entries WHERE account_id = $1 ORDER BY seq`,
    [accountId],
  );
  let total = 0n;
  for (const e of entries) {
    if (e.type !== 'RESERVE' && e.type !== 'RELEASE') total += BigInt(e.amount);
    if (e.after !== null) expect(`${e.type} ${e.amount} -> ${e.after}`).toBe(`${e.type} ${e.amount} -> ${total}`);
  }
}

async function countOf(sql: string, params: unknown[]): Promise<number> {
  const { rows } = await s.pool.query(sql, params);
  return rows[0].n as number;
}

const units = (accountId: string, key: string, n: number, reservationId?: string) => ({
  accountId,
  idempotencyKey: key,
  category: 'units',
  quantities: { units: String(n) },
  ...(reservationId ? { reservationId } : {}),
});

for (const path of ['naive', 'group'] as const) {
  const ctx = (): ServiceContext => (path === 'group' ? { ...s, groupCommit: new GroupCommitter(s.pool, s.clock, chargeAccounts, applyCharge) } : s);

  describe(`holds (${path} path)`, () => {
    it('three partial captures then a settle: totals, drawdowns, consumed and balanceAfter exact', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { free: 3, paid: 20 });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(10), ttlSeconds: 600, idempotencyKey: 'h' });
      for (const [i, n] of [2, 3, 1].entries()) await recordUsage(c, units(accountId, `p${i}`, n, reservationId));
      let b = await readBalance(s.pool, accountId, T0);
      expect([b.totalMicroCredits, b.reservedMicroCredits, b.availableMicroCredits]).toEqual([credits(17), credits(4), credits(13)]);
      await settleReservation(c, reservationId, [units(accountId, 'final', 2)]);
      b = await readBalance(s.pool, accountId, T0);
      expect([b.totalMicroCredits, b.reservedMicroCredits, b.availableMicroCredits, b.debtMicroCredits]).toEqual([credits(15), 0n, credits(15), 0n]);
      expect(await holdRow(reservationId)).toMatchObject({ status: 'SETTLED', consumed: credits(8).toString() });
      expect(await entriesOf(accountId)).toEqual([
        'GRANT 3000000 -> 3000000',
        'GRANT 20000000 -> 23000000',
        'RESERVE 10000000 -> 23000000',
        'CONSUME -2000000 -> 21000000',
        'CONSUME -3000000 -> 18000000',
        'CONSUME -1000000 -> 17000000',
        'CONSUME -2000000 -> 15000000',
        'RELEASE -2000000 -> 15000000',
      ]);
      // FREE first: 2 + 1 of the 3 FREE, then PAID.
      const { rows } = await s.pool.query(
        `SELECT b.type, SUM(d.amount_micro_credits)::text AS sum FROM drawdowns d JOIN credit_batches b ON b.id = d.batch_id WHERE b.account_id = $1 GROUP BY b.type ORDER BY b.type`,
        [accountId],
      );
      expect(rows).toEqual([
        { type: 'FREE', sum: credits(3).toString() },
        { type: 'PAID', sum: credits(5).toString() },
      ]);
      await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
    });

    it('one hot account: 30 captures against a hold, 10 more holds and the settle at once: consumed, releases and balanceAfter agree', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { free: 4, paid: 30 });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(10), ttlSeconds: 600, idempotencyKey: 'h' });
      const ops: Promise<unknown>[] = [];
      for (let i = 0; i < 30; i++) ops.push(recordUsage(c, units(accountId, `p${i}`, 1, reservationId)));
      for (let i = 0; i < 10; i++) ops.push(reserveCredits(c, { accountId, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: `h${i}` }));
      ops.push(settleReservation(c, reservationId, []));
      for (let i = 0; i < 5; i++) ops.push(recordUsage(c, units(accountId, `q${i}`, 2, reservationId)));
      const codes = (await Promise.allSettled(ops)).map(settledCode);
      expect(codes.filter((x) => x !== 'OK' && x !== 'RESERVATION_NOT_ACTIVE' && x !== 'INSUFFICIENT_CREDITS')).toEqual([]);
      await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
      for (let i = 0; i < 10; i++) await reserveCredits(c, { accountId, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: `h${i}` }).then(
        (r) => releaseReservation(c, r.reservationId),
        () => undefined,
      );
      await expectHoldsAgree(accountId);
      const b = await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
      expect(b.reservedMicroCredits).toBe(0n);
    });

    it('a settle racing the expiry sweep past expiresAt: the settle is refused, the hold is released once', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 60, idempotencyKey: 'h' });
      await recordUsage(c, units(accountId, 'p', 1, reservationId));
      s.setNow(at(59_999));
      await extendReservation(c, reservationId, 1); // 1 ms before expiresAt it still holds: expiresAt = 60_999
      s.setNow(at(60_999));
      // At expiresAt exactly, before any expiry job: no longer holding.
      await expect(settleReservation(c, reservationId, [units(accountId, 'final', 2)])).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
      await expect(recordUsage(c, units(accountId, 'late', 1, reservationId))).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
      await expect(settleReservation(c, reservationId, [])).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
      expect((await readBalance(s.pool, accountId, at(60_999))).reservedMicroCredits).toBe(0n);
      const outcomes = await Promise.allSettled([
        settleReservation(c, reservationId, [units(accountId, 'final', 2)]),
        expireDue(c, accountId),
        releaseReservation(c, reservationId),
        expireDue(c, accountId),
      ]);
      expect(settledCode(outcomes[0]!)).toBe('RESERVATION_NOT_ACTIVE');
      expect(outcomes.slice(1).map(settledCode)).toEqual(['OK', 'OK', 'OK']);
      expect(await holdRow(reservationId)).toMatchObject({ status: 'EXPIRED', consumed: credits(1).toString() });
      expect(await countOf(`SELECT COUNT(*)::int AS n FROM ledger_entries WHERE reservation_id = $1 AND type = 'RELEASE'`, [reservationId])).toBe(1);
      expect(await countOf(`SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1 AND idempotency_key = 'final'`, [accountId])).toBe(0);
      const b = await expectLedgerInvariant(s.pool, accountId, at(60_999));
      await expectHoldsAgree(accountId);
      expect([b.totalMicroCredits, b.reservedMicroCredits]).toEqual([credits(9), 0n]);
      // Settling, extending or capturing an expired hold stays refused; releasing it again changes nothing.
      await expect(settleReservation(c, reservationId, [])).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
      await expect(extendReservation(c, reservationId, 60)).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
      await releaseReservation(c, reservationId);
      expect(await countOf(`SELECT COUNT(*)::int AS n FROM ledger_entries WHERE reservation_id = $1 AND type = 'RELEASE'`, [reservationId])).toBe(1);
    });

    it('settle and release of one live hold at once: exactly one wins, one RELEASE', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h' });
      const outcomes = (await Promise.allSettled([settleReservation(c, reservationId, [units(accountId, 'final', 2)]), releaseReservation(c, reservationId)])).map(settledCode);
      const status = (await holdRow(reservationId)).status;
      expect(outcomes).toEqual(status === 'SETTLED' ? ['OK', 'RESERVATION_NOT_ACTIVE'] : ['RESERVATION_NOT_ACTIVE', 'OK']);
      expect(await countOf(`SELECT COUNT(*)::int AS n FROM ledger_entries WHERE reservation_id = $1 AND type = 'RELEASE'`, [reservationId])).toBe(1);
      await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
    });

    it('a hold key reused with other input is IDEMPOTENCY_CONFLICT and changes nothing; the same input replays', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const first = await reserveCredits(c, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'h' });
      const before = await entriesOf(accountId);
      for (const other of [{ amountMicroCredits: credits(5) }, { ttlSeconds: 60 }, { agentId: 'a' }]) {
        await expect(reserveCredits(c, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'h', ...other })).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
      }
      const again = await reserveCredits(c, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'h' });
      expect(again).toMatchObject({ reservationId: first.reservationId, replayed: true });
      expect(await entriesOf(accountId)).toEqual(before);
      // A settle item's key reused with other usage: IDEMPOTENCY_CONFLICT, the hold stays ACTIVE.
      await recordUsage(c, units(accountId, 'p', 1, first.reservationId));
      await expect(settleReservation(c, first.reservationId, [units(accountId, 'p', 2)])).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
      expect((await holdRow(first.reservationId)).status).toBe('ACTIVE');
      await settleReservation(c, first.reservationId, [units(accountId, 'final', 1)]);
      // A retry of that settle replays; a settle with new usage after it is refused and records nothing.
      await expect(settleReservation(c, first.reservationId, [units(accountId, 'final', 1)])).resolves.toMatchObject({ replayed: true });
      await expect(settleReservation(c, first.reservationId, [units(accountId, 'final', 3)])).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
      await expect(settleReservation(c, first.reservationId, [units(accountId, 'more', 1)])).rejects.toMatchObject({ code: 'RESERVATION_NOT_ACTIVE' });
      expect(await countOf('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId])).toBe(2);
      const b = await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
      expect([b.totalMicroCredits, b.reservedMicroCredits]).toEqual([credits(8), 0n]);
    });

    it("a settle whose usage names another account is refused and changes nothing on either", async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const other = await createFundedAccount(s, { paid: 10 });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'h' });
      await expect(settleReservation(c, reservationId, [units(other, 'x', 1)])).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      await expect(recordUsage(c, units(other, 'y', 1, reservationId))).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect((await holdRow(reservationId)).status).toBe('ACTIVE');
      expect(await countOf('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = ANY($1)', [[accountId, other]])).toBe(0);
      expect((await readBalance(s.pool, other, T0)).totalMicroCredits).toBe(credits(10));
    });

    it('holds of 0, negative amounts, beyond the balance, or TTLs outside 1..7 days are refused and write nothing', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const base = { accountId, ttlSeconds: 600, idempotencyKey: 'h' };
      await expect(reserveCredits(c, { ...base, amountMicroCredits: 0n })).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      await expect(reserveCredits(c, { ...base, amountMicroCredits: -1n })).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      await expect(reserveCredits(c, { ...base, amountMicroCredits: 2n ** 62n })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
      await expect(reserveCredits(c, { ...base, amountMicroCredits: 1n, ttlSeconds: 0 })).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      await expect(reserveCredits(c, { ...base, amountMicroCredits: 1n, ttlSeconds: MAX_RESERVATION_TTL_SECONDS + 1 })).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      expect(await countOf('SELECT COUNT(*)::int AS n FROM reservations WHERE account_id = $1', [accountId])).toBe(0);
      const { reservationId } = await reserveCredits(c, { ...base, amountMicroCredits: credits(10) });
      await expect(reserveCredits(c, { ...base, idempotencyKey: 'h2', amountMicroCredits: 1n })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
      await expect(extendReservation(c, reservationId, MAX_RESERVATION_TTL_SECONDS + 1)).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      await extendReservation(c, reservationId, MAX_RESERVATION_TTL_SECONDS);
      expect((await holdRow(reservationId)).expires_at.getTime()).toBe(at(MAX_RESERVATION_TTL_SECONDS * 1000).getTime());
      await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
    });

    it('credit that expires or is voided while held: the hold stays; its captures beyond the credit left become debt', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, {});
      await grantCredits(s, { accountId, amountMicroCredits: credits(5), type: 'FREE', source: 'PROMO_CODE', expiresAt: at(60_000), reference: null, idempotencyKey: 'free' });
      const paid = await grantCredits(s, { accountId, amountMicroCredits: credits(3), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(8), ttlSeconds: 600, idempotencyKey: 'h' });
      s.setNow(at(60_000));
      await expireDue(c, accountId);
      await voidGrant(s, paid.grantId, 'chargeback');
      let b = await readBalance(s.pool, accountId, at(60_000));
      expect([b.totalMicroCredits, b.reservedMicroCredits, b.availableMicroCredits]).toEqual([0n, credits(8), -credits(8)]);
      await expect(recordUsage(c, units(accountId, 'no-hold', 1))).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
      await settleReservation(c, reservationId, [units(accountId, 'final', 2)]);
      b = await expectLedgerInvariant(s.pool, accountId, at(60_000));
      await expectHoldsAgree(accountId);
      expect([b.totalMicroCredits, b.debtMicroCredits, b.reservedMicroCredits]).toEqual([-credits(2), credits(2), 0n]);
    });

    it('one settle naming a key twice: the same input records it once, other input refuses the whole settle', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const a = await reserveCredits(c, { accountId, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'a' });
      await expect(settleReservation(c, a.reservationId, [units(accountId, 'x', 1), units(accountId, 'y', 1), units(accountId, 'x', 2)])).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
      expect(await holdRow(a.reservationId)).toMatchObject({ status: 'ACTIVE', consumed: '0' });
      expect(await countOf('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId])).toBe(0);
      await settleReservation(c, a.reservationId, [units(accountId, 'x', 1), units(accountId, 'x', 1)]);
      expect(await holdRow(a.reservationId)).toMatchObject({ status: 'SETTLED', consumed: credits(1).toString() });
      const tooMany = Array.from({ length: 101 }, (_, i) => units(accountId, `m${i}`, 1));
      const b = await reserveCredits(c, { accountId, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: 'b' });
      await expect(settleReservation(c, b.reservationId, tooMany)).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
      const bal = await expectLedgerInvariant(s.pool, accountId, T0);
      expect([bal.totalMicroCredits, bal.reservedMicroCredits]).toEqual([credits(9), credits(1)]);
      await expectHoldsAgree(accountId);
    });

    it('a capture refunded while its hold is open: the settle releases only what was not captured, the refund gives the rest back', async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 10 });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h' });
      const ev = await recordUsage(c, units(accountId, 'p', 4, reservationId));
      await refundUsage(s, ev.eventId, 'bad answer');
      let b = await readBalance(s.pool, accountId, T0);
      expect([b.totalMicroCredits, b.reservedMicroCredits, b.availableMicroCredits]).toEqual([credits(10), credits(2), credits(8)]);
      await settleReservation(c, reservationId, [units(accountId, 'final', 1)]);
      b = await expectLedgerInvariant(s.pool, accountId, T0);
      expect([b.totalMicroCredits, b.reservedMicroCredits]).toEqual([credits(9), 0n]);
      await expectHoldsAgree(accountId);
    });

    it("an agent's hold counts against its budget while it holds; its settle counts the captured usage once", async () => {
      s.setNow(T0);
      const c = ctx();
      const accountId = await createFundedAccount(s, { paid: 100 });
      await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'bot', limitMicroCredits: credits(10) });
      const { reservationId } = await reserveCredits(c, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'h', agentId: 'bot' });
      await expect(reserveCredits(c, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: 'h2', agentId: 'bot' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
      await expect(recordUsage(c, { ...units(accountId, 'free-run', 5), agentId: 'bot' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
      await recordUsage(c, units(accountId, 'p', 2, reservationId));
      await settleReservation(c, reservationId, [units(accountId, 'final', 1)]);
      const [budget] = await listBudgets(s.pool, accountId, T0, 'AGENT');
      expect(budget).toMatchObject({ subjectId: 'bot', spentMicroCredits: credits(3) });
      await recordUsage(c, { ...units(accountId, 'after', 7), agentId: 'bot' });
      await expect(recordUsage(c, { ...units(accountId, 'over', 1), agentId: 'bot' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
      await expectLedgerInvariant(s.pool, accountId, T0);
      await expectHoldsAgree(accountId);
    });
  });
}
