/**
 * Money moves exactly once, off the charge path: concurrent duplicates and conflicting calls of
 * refundUsage, voidGrant, expireDue, redeemPromoCode, redeemReferral, subscribeToPlan,
 * advanceTestClock and releaseReservation / settleReservation, each run against the real
 * PostgreSQL with Promise.all, then the ledger invariant (expectLedgerInvariant) and counts of the
 * rows that carry the money.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createTestServices, settledCode as codeOf, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { expireDue } from '../../src/services/expire-due.js';
import { createPromoCode, redeemPromoCode } from '../../src/services/promo-codes.js';
import { redeemReferral } from '../../src/services/redeem-referral.js';
import { updateSettings } from '../../src/services/update-settings.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { extendReservation } from '../../src/services/extend-reservation.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;
beforeAll(() => {
  services = createTestServices(20);
});
afterAll(async () => {
  await services.close();
});

async function entries(accountId: string, type: string): Promise<number> {
  const { rows } = await services.pool.query('SELECT COUNT(*)::int AS n FROM ledger_entries WHERE account_id = $1 AND type = $2', [accountId, type]);
  return rows[0].n as number;
}

async function grantIdOf(accountId: string, key: string): Promise<string> {
  const { rows } = await services.pool.query('SELECT id FROM credit_grants WHERE account_id = $1 AND idempotency_key = $2', [accountId, key]);
  return rows[0].id as string;
}

describe('refunds, voids and expiries of the same money at once', () => {
  it('10 refunds of one event and 10 voids of the batch it drew from, all at once: one REFUND, one VOID, invariant holds', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const ev = await recordUsage(services, { accountId, idempotencyKey: 'u-1', category: 'unit' });
    const grantId = await grantIdOf(accountId, 'factory-paid');
    const results = await Promise.allSettled([
      ...Array.from({ length: 10 }, () => refundUsage(services, ev.eventId, 'duplicate')),
      ...Array.from({ length: 10 }, () => voidGrant(services, grantId, 'fraud')),
    ]);
    expect(results.map(codeOf)).toEqual(Array(20).fill('OK'));
    expect(await entries(accountId, 'VOID')).toBe(1);
    const refunds = await entries(accountId, 'REFUND');
    expect(refunds).toBeLessThanOrEqual(1);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.totalMicroCredits).toBe(0n); // the only batch is voided whichever came first
  });

  it('refunds of two events, voids and expiry passes racing on a batch past its expiresAt: each batch changes once', async () => {
    const start = new Date('2031-03-01T00:00:00Z');
    const accountId = await createFundedAccount(services, { free: 5, paid: 5, freeExpiresAt: new Date(start.getTime() + 3_600_000), testClockStart: start });
    const a = await recordUsage(services, { accountId, idempotencyKey: 'u-a', category: 'unit' }); // from the expiring FREE batch
    const b = await recordUsage(services, { accountId, idempotencyKey: 'u-b', category: 'unit' });
    await services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, new Date(start.getTime() + 7_200_000)]);
    const freeGrant = await grantIdOf(accountId, 'factory-free');
    const paidGrant = await grantIdOf(accountId, 'factory-paid');
    const results = await Promise.allSettled([
      ...Array.from({ length: 5 }, () => expireDue(services, accountId)),
      ...Array.from({ length: 5 }, () => refundUsage(services, a.eventId, 'r')),
      ...Array.from({ length: 5 }, () => refundUsage(services, b.eventId, 'r')),
      ...Array.from({ length: 5 }, () => voidGrant(services, freeGrant, 'v')),
      voidGrant(services, paidGrant, 'v'),
    ]);
    expect(results.map(codeOf)).toEqual(Array(21).fill('OK'));
    expect(await entries(accountId, 'EXPIRE')).toBe(1); // the FREE batch's 3 left, dated at its expiresAt
    expect(await entries(accountId, 'VOID')).toBe(2);
    const balance = await expectLedgerInvariant(services.pool, accountId, new Date(start.getTime() + 7_200_000));
    expect(balance.totalMicroCredits).toBe(0n);
  });
});

describe('promo codes and referrals at once', () => {
  it('one account redeeming one code 10 times at once gets it once; two codes of maxRedemptions 1 at once: both, once each', async () => {
    const accountId = await createFundedAccount(services, {});
    const one = `ONCE-${randomUUID().slice(0, 8)}`.toUpperCase();
    const two = `TWICE-${randomUUID().slice(0, 8)}`.toUpperCase();
    const three = `THRICE-${randomUUID().slice(0, 8)}`.toUpperCase();
    for (const code of [one, two, three]) {
      await createPromoCode(services, { code, creditsMicroCredits: credits(3), expiresAfterDays: null, maxRedemptions: code === one ? null : 1, validUntil: null });
    }
    const same = await Promise.allSettled(Array.from({ length: 10 }, () => redeemPromoCode(services, accountId, one)));
    expect(same.map(codeOf).filter((c) => c === 'OK')).toHaveLength(1);
    expect(same.map(codeOf).filter((c) => c !== 'OK')).toEqual(Array(9).fill('BAD_USER_INPUT'));
    const other = await createFundedAccount(services, {});
    const both = await Promise.allSettled([
      ...Array.from({ length: 5 }, () => redeemPromoCode(services, other, two)),
      ...Array.from({ length: 5 }, () => redeemPromoCode(services, other, three)),
      ...Array.from({ length: 5 }, () => redeemPromoCode(services, accountId, two)),
    ]);
    expect(both.map(codeOf).filter((c) => c === 'OK')).toHaveLength(2);
    const { rows } = await services.pool.query('SELECT code, redemptions FROM promo_codes WHERE code = ANY($1) ORDER BY code', [[one, two, three]]);
    expect(rows.map((r) => r.redemptions)).toEqual([1, 1, 1]);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits + (await expectLedgerInvariant(services.pool, other)).totalMicroCredits).toBe(
      credits(9),
    );
  });

  it('a new account redeeming one code 8 times and two other codes at once: one referral, each side granted once', async () => {
    await updateSettings(services, { referralRewardCredits: '4', referralMaxRewardsPerAccount: 100 });
    const referrers = [await createFundedAccount(services, {}), await createFundedAccount(services, {}), await createFundedAccount(services, {})];
    const codes = await Promise.all(
      referrers.map(async (id) => (await services.pool.query('SELECT referral_code FROM accounts WHERE id = $1', [id])).rows[0].referral_code as string),
    );
    const referee = await createFundedAccount(services, {});
    const results = await Promise.allSettled([
      ...Array.from({ length: 8 }, () => redeemReferral(services, referee, codes[0]!)),
      redeemReferral(services, referee, codes[1]!),
      redeemReferral(services, referee, codes[2]!),
    ]);
    expect(results.map(codeOf).filter((c) => c === 'OK')).toHaveLength(1);
    expect(results.map(codeOf).filter((c) => c !== 'OK')).toEqual(Array(9).fill('BAD_USER_INPUT'));
    const { rows } = await services.pool.query('SELECT COUNT(*)::int AS n FROM referrals WHERE referee_account_id = $1', [referee]);
    expect(rows[0].n).toBe(1);
    expect((await expectLedgerInvariant(services.pool, referee)).totalMicroCredits).toBe(credits(4));
    const totals = await Promise.all(referrers.map(async (id) => (await expectLedgerInvariant(services.pool, id)).totalMicroCredits));
    expect(totals.reduce((s, t) => s + t, 0n)).toBe(credits(4));
  });
});

describe('plans and test clocks at once', () => {
  it('subscribeToPlan 10 times at once grants the first period once', async () => {
    const plan = await createPlan(services, { name: `once-${randomUUID()}`, monthlyMicroCredits: credits(20), rollover: 'ROLLOVER', rolloverCapMicroCredits: null, priceUsd: '10' });
    const accountId = await createFundedAccount(services, {});
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => subscribeToPlan(services, accountId, plan.id)));
    expect(results.map(codeOf)).toEqual(Array(10).fill('OK'));
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(20));
  });

  it('advanceTestClock racing itself (same and different targets) and charges: each period granted once, each batch expired once', async () => {
    const start = new Date('2031-01-10T00:00:00Z');
    const plan = await createPlan(services, { name: `clock-${randomUUID()}`, monthlyMicroCredits: credits(10), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '5' });
    const accountId = await createFundedAccount(services, { paid: 50, testClockStart: start });
    await subscribeToPlan(services, accountId, plan.id);
    const to = (months: number) => new Date(Date.UTC(2031, 0 + months, 10));
    const results = await Promise.allSettled([
      ...Array.from({ length: 4 }, () => advanceTestClock(services, accountId, to(3))),
      advanceTestClock(services, accountId, to(1)),
      advanceTestClock(services, accountId, to(2)),
      ...Array.from({ length: 20 }, (_, i) => recordUsage(services, { accountId, idempotencyKey: `c-${i}`, category: 'unit' })),
    ]);
    const codes = results.map(codeOf);
    expect(codes.slice(0, 6).every((c) => c === 'OK' || c === 'BAD_USER_INPUT')).toBe(true); // a late target is behind the clock
    expect(codes.slice(6).filter((c) => c !== 'OK')).toEqual([]);
    const { rows } = await services.pool.query(
      `SELECT COUNT(*)::int AS n, COUNT(DISTINCT idempotency_key)::int AS keys FROM credit_grants WHERE account_id = $1 AND source = 'SUBSCRIPTION'`,
      [accountId],
    );
    expect(rows[0]).toEqual({ n: 4, keys: 4 }); // periods starting Jan, Feb, Mar, Apr 10
    const expired = await services.pool.query(`SELECT batch_id, COUNT(*)::int AS n FROM ledger_entries WHERE account_id = $1 AND type = 'EXPIRE' GROUP BY batch_id HAVING COUNT(*) > 1`, [accountId]);
    expect(expired.rows).toEqual([]);
    const balance = await expectLedgerInvariant(services.pool, accountId, to(3));
    const spent = await services.pool.query('SELECT COALESCE(SUM(cost_micro_credits), 0)::text AS s FROM usage_events WHERE account_id = $1', [accountId]);
    expect(BigInt(spent.rows[0].s)).toBe(credits(20));
    expect(balance.totalMicroCredits >= credits(10)).toBe(true);
  });
});

describe('holds at once', () => {
  it('release, settle, extend and expiry racing on one hold: it closes once, its capture is charged at most once', async () => {
    for (let round = 0; round < 5; round++) {
      const accountId = await createFundedAccount(services, { paid: 20 });
      const hold = await reserveCredits(services, { accountId, amountMicroCredits: credits(5), ttlSeconds: 60, idempotencyKey: `h-${round}` });
      const results = await Promise.allSettled([
        releaseReservation(services, hold.reservationId),
        settleReservation(services, hold.reservationId, [{ accountId, idempotencyKey: `cap-${round}`, category: 'unit' }]),
        settleReservation(services, hold.reservationId, [{ accountId, idempotencyKey: `cap-${round}`, category: 'unit' }]),
        extendReservation(services, hold.reservationId, 120),
        expireDue(services, accountId),
        releaseReservation(services, hold.reservationId),
      ]);
      for (const c of results.map(codeOf)) expect(['OK', 'RESERVATION_NOT_ACTIVE']).toContain(c);
      const { rows } = await services.pool.query('SELECT status FROM reservations WHERE id = $1', [hold.reservationId]);
      expect(['RELEASED', 'SETTLED']).toContain(rows[0].status);
      expect(await entries(accountId, 'RELEASE')).toBeLessThanOrEqual(1);
      expect(await entries(accountId, 'CONSUME')).toBeLessThanOrEqual(1);
      const balance = await expectLedgerInvariant(services.pool, accountId);
      expect(balance.reservedMicroCredits).toBe(0n);
      expect(balance.totalMicroCredits).toBe(credits(rows[0].status === 'SETTLED' ? 19 : 20));
    }
  });
});

describe('grants at once', () => {
  it('one key with two inputs at once: one grant, the other input IDEMPOTENCY_CONFLICT', async () => {
    const accountId = await createFundedAccount(services, {});
    const grant = (amount: number) =>
      grantCredits(services, { accountId, amountMicroCredits: credits(amount), type: 'PAID', source: 'ADJUSTMENT', expiresAt: null, reference: null, idempotencyKey: 'k' });
    const results = await Promise.allSettled([...Array.from({ length: 5 }, () => grant(1)), ...Array.from({ length: 5 }, () => grant(2))]);
    const codes = results.map(codeOf);
    const winner = codes.slice(0, 5).every((c) => c === 'OK') ? 1 : 2;
    expect(codes).toEqual(winner === 1 ? [...Array(5).fill('OK'), ...Array(5).fill('IDEMPOTENCY_CONFLICT')] : [...Array(5).fill('IDEMPOTENCY_CONFLICT'), ...Array(5).fill('OK')]);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(winner));
  });
});

describe('plan period grants at a clamped month end', () => {
  it('re-subscribing to a RESET plan at the instant its roll granted a clamped period (anchor Jan 31, roll at Feb 28) is no IDEMPOTENCY_CONFLICT and grants the period once', async () => {
    const start = new Date('2031-01-31T00:00:00Z');
    const plan = await createPlan(services, { name: `clamp-${randomUUID()}`, monthlyMicroCredits: credits(10), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '5' });
    const other = await createPlan(services, { name: `clamp-other-${randomUUID()}`, monthlyMicroCredits: credits(1), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '1' });
    const accountId = await createFundedAccount(services, { testClockStart: start });
    await subscribeToPlan(services, accountId, plan.id);
    const rollAt = new Date('2031-02-28T00:00:00Z');
    await advanceTestClock(services, accountId, rollAt);
    await subscribeToPlan(services, accountId, other.id);
    await subscribeToPlan(services, accountId, plan.id);
    const { rows } = await services.pool.query(`SELECT COUNT(*)::int AS n FROM credit_grants WHERE account_id = $1 AND reference = $2`, [accountId, `plan:${plan.id}`]);
    expect(rows[0].n).toBe(2); // Jan 31 and Feb 28, once each
    await expectLedgerInvariant(services.pool, accountId, rollAt);
  });
});

/**
 * Per-batch conservation, which the account-level invariant does not see (credit given back to
 * the wrong batch, a batch voided or expired twice, a grant's repayment lost): for every batch of
 * the account, allocated = its GRANT + DEBT_REPAY entries, and remaining = its GRANT, REFUND,
 * VOID and EXPIRE entries - what usage drew from it; every refunded event got back at most its
 * cost, in one refund. The allocated rule holds for the operations modelled here (no payments):
 * a refund of usage a payment bought that goes to the payment's live grant grows that batch's
 * allocated by what it did not give (README "Refunds and voids"; the rule with that growth is
 * checked in todays-money-paths.test.ts batchStory).
 */
async function expectBatchConservation(accountId: string): Promise<void> {
  const { rows } = await services.pool.query(
    `WITH e AS (
       SELECT batch_id, COALESCE(SUM(amount_micro_credits) FILTER (WHERE type IN ('GRANT', 'REFUND', 'VOID', 'EXPIRE')), 0) AS moved,
              COALESCE(SUM(amount_micro_credits) FILTER (WHERE type IN ('GRANT', 'DEBT_REPAY')), 0) AS granted
         FROM ledger_entries WHERE account_id = $1 AND batch_id IS NOT NULL GROUP BY batch_id
     ), d AS (SELECT batch_id, SUM(amount_micro_credits) AS drawn FROM drawdowns GROUP BY batch_id)
     SELECT b.id FROM credit_batches b LEFT JOIN e ON e.batch_id = b.id LEFT JOIN d ON d.batch_id = b.id
      WHERE b.account_id = $1
        AND (b.allocated_micro_credits <> COALESCE(e.granted, 0) OR b.remaining_micro_credits <> COALESCE(e.moved, 0) - COALESCE(d.drawn, 0))`,
    [accountId],
  );
  expect(rows).toEqual([]);
  const refunds = await services.pool.query(
    `SELECT e.id FROM usage_events e JOIN (SELECT usage_event_id, SUM(amount_micro_credits) AS s, COUNT(DISTINCT created_at) AS n
                                          FROM ledger_entries WHERE account_id = $1 AND type = 'REFUND' GROUP BY usage_event_id) r ON r.usage_event_id = e.id
      WHERE r.s > e.cost_micro_credits OR r.n > 1 OR e.refunded_at IS NULL`,
    [accountId],
  );
  expect(refunds.rows).toEqual([]);
}

type Op =
  | { op: 'grant'; amount: number; key: number; expiresInDays: number | null }
  | { op: 'charge'; key: number }
  | { op: 'refund'; event: number }
  | { op: 'void'; grant: number }
  | { op: 'expire' }
  | { op: 'advance'; days: number }
  | { op: 'reserve'; key: number; amount: number }
  | { op: 'settle'; hold: number; key: number }
  | { op: 'release'; hold: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('grant' as const), amount: fc.integer({ min: 1, max: 8 }), key: fc.nat(3), expiresInDays: fc.option(fc.integer({ min: 1, max: 40 }), { nil: null }) }),
  fc.record({ op: fc.constant('charge' as const), key: fc.nat(6) }),
  fc.record({ op: fc.constant('refund' as const), event: fc.nat(3) }),
  fc.record({ op: fc.constant('void' as const), grant: fc.nat(3) }),
  fc.record({ op: fc.constant('expire' as const) }),
  fc.record({ op: fc.constant('advance' as const), days: fc.integer({ min: 1, max: 35 }) }),
  fc.record({ op: fc.constant('reserve' as const), key: fc.nat(2), amount: fc.integer({ min: 1, max: 5 }) }),
  fc.record({ op: fc.constant('settle' as const), hold: fc.nat(2), key: fc.nat(6) }),
  fc.record({ op: fc.constant('release' as const), hold: fc.nat(2) }),
);

describe('property: bursts of concurrent money moves on one test-clock account with a plan', () => {
  it('after every burst (Promise.allSettled of mixed grants, charges, refunds, voids, expiries, clock moves, holds): the invariant and per-batch conservation hold', async () => {
    const plan = await createPlan(services, { name: `burst-${randomUUID()}`, monthlyMicroCredits: credits(6), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '1' });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(opArb, { minLength: 2, maxLength: 10 }), { minLength: 1, maxLength: 5 }), async (bursts) => {
        const start = new Date('2031-05-31T00:00:00Z');
        const accountId = await createFundedAccount(services, { paid: 10, testClockStart: start });
        await subscribeToPlan(services, accountId, plan.id);
        let clock = start;
        // Something to refund, void, settle and release from the first burst on.
        for (const [key, days] of [[0, 20], [1, null]] as const) {
          await grantCredits(services, {
            accountId,
            amountMicroCredits: credits(5),
            type: 'FREE',
            source: 'ADJUSTMENT',
            expiresAt: days === null ? null : new Date(start.getTime() + days * 86_400_000),
            reference: null,
            idempotencyKey: `g-${key}`,
          });
        }
        for (const key of [0, 1, 2]) await recordUsage(services, { accountId, idempotencyKey: `e-${key}`, category: 'unit' });
        await reserveCredits(services, { accountId, amountMicroCredits: credits(3), ttlSeconds: 3600, idempotencyKey: 'h-0' });
        const eventId = async (n: number) =>
          (await services.pool.query('SELECT id FROM usage_events WHERE account_id = $1 AND idempotency_key = $2', [accountId, `e-${n}`])).rows[0]?.id as string | undefined;
        const holdId = async (n: number) =>
          (await services.pool.query('SELECT id FROM reservations WHERE account_id = $1 AND idempotency_key = $2', [accountId, `h-${n}`])).rows[0]?.id as string | undefined;
        const grantId = async (n: number) =>
          (await services.pool.query('SELECT id FROM credit_grants WHERE account_id = $1 AND idempotency_key = $2', [accountId, `g-${n}`])).rows[0]?.id as string | undefined;
        for (const burst of bursts) {
          const run = async (o: Op): Promise<unknown> => {
            switch (o.op) {
              case 'grant':
                return grantCredits(services, {
                  accountId,
                  amountMicroCredits: credits(o.amount),
                  type: 'FREE',
                  source: 'ADJUSTMENT',
                  expiresAt: o.expiresInDays === null ? null : new Date(clock.getTime() + o.expiresInDays * 86_400_000),
                  reference: null,
                  idempotencyKey: `g-${o.key}`,
                });
              case 'charge':
                return recordUsage(services, { accountId, idempotencyKey: `e-${o.key}`, category: 'unit' });
              case 'refund': {
                const id = await eventId(o.event);
                return id && refundUsage(services, id, 'r');
              }
              case 'void': {
                const id = await grantId(o.grant);
                return id && voidGrant(services, id, 'v');
              }
              case 'expire':
                return expireDue(services, accountId);
              case 'advance':
                return advanceTestClock(services, accountId, new Date(clock.getTime() + o.days * 86_400_000));
              case 'reserve':
                return reserveCredits(services, { accountId, amountMicroCredits: credits(o.amount), ttlSeconds: 3600, idempotencyKey: `h-${o.key}` });
              case 'settle': {
                const id = await holdId(o.hold);
                return id && settleReservation(services, id, [{ accountId, idempotencyKey: `e-${o.key}`, category: 'unit' }]);
              }
              case 'release': {
                const id = await holdId(o.hold);
                return id && releaseReservation(services, id);
              }
            }
          };
          const results = await Promise.allSettled(burst.map(run));
          for (const r of results) {
            // Refusals by the rules are fine (credit, conflicts, closed holds, a clock target passed by another move); nothing else is.
            if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(LedgerError);
          }
          const now = (await services.pool.query('SELECT test_clock_at FROM accounts WHERE id = $1', [accountId])).rows[0].test_clock_at as Date;
          clock = now;
          await expectLedgerInvariant(services.pool, accountId, now);
          await expectBatchConservation(accountId);
        }
      }),
      { numRuns: 25 },
    );
  });
});
