/**
 * Adversarial audit of the period credit's refund rule (balance_figures, migration
 * period_credits_refunds; README "Plans and billing cycles", the periodCredits paragraph): a
 * refund in the billing period of usage charged before it adds what it gave back into batches to
 * the period's credit, once. Each case pins the exact Balance (available, periodCredits,
 * percentRemaining) and the credit alerts, on the real PostgreSQL. After each test, the rows
 * refundUsage kept for its accounts (refund_credits) must equal what the backfill of migration
 * period_credits_refund_rows derives from their ledger.
 */
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { useTestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { expireDue } from '../../src/services/expire-due.js';
import { readBalance, reconcileAccount } from '../../src/services/read-balance.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { balanceFromSnapshot, type BalanceSnapshot } from '../../src/services/balance-figures.js';
import { credits } from '../../src/ledger/credits.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import { createCreditPack } from '../../src/services/credit-packs.js';
import { attachPaymentMethod, purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import type { ServiceContext } from '../../src/services/context.js';
import { migrationSql } from '../setup/upgrade.js';

const s = useTestServices(5);

/** Accounts the running test made: after it, their refund_credits rows are checked against the migration's backfill. */
const made: string[] = [];
async function fundedAccount(...args: Parameters<typeof createFundedAccount> extends [unknown, ...infer R] ? R : never): Promise<string> {
  const id = await createFundedAccount(s, ...args);
  made.push(id);
  return id;
}

/**
 * The backfill of migration period_credits_refund_rows (its INSERT's SELECT, read from the file)
 * names, for refunds an older release made, the rows refundUsage writes now: after each test, for
 * its accounts, what the backfill would derive from the ledger equals what the code stored.
 */
afterEach(async () => {
  const ids = made.splice(0);
  if (ids.length === 0) return;
  const sql = await migrationSql('20261216100000_period_credits_refund_rows');
  const insert = sql.slice(sql.indexOf('INSERT INTO "refund_credits"'));
  const select = insert.slice(insert.indexOf('SELECT'), insert.indexOf(';'));
  const order = 'ORDER BY usage_event_id, left_at';
  const cols = 'usage_event_id::text, left_at, account_id::text, refunded_at, amount::text';
  const derived = await s.pool.query(`SELECT ${cols} FROM (${select}) AS b(usage_event_id, left_at, account_id, refunded_at, amount) WHERE account_id = ANY($1::uuid[]) ${order}`, [ids]);
  const stored = await s.pool.query(`SELECT ${cols} FROM (SELECT usage_event_id, left_at, account_id, refunded_at, amount_micro_credits AS amount FROM refund_credits) r WHERE account_id = ANY($1::uuid[]) ${order}`, [ids]);
  expect(derived.rows, "the migration's backfill against what refundUsage stored").toEqual(stored.rows);
});

// Accounts created at T0 have monthly periods starting on the 1st: P1 = September, P2 = October, P3 = November.
const T0 = new Date(Date.UTC(2026, 8, 1, 0, 0, 0));
const P2 = new Date(Date.UTC(2026, 9, 1, 0, 0, 0));
const P3 = new Date(Date.UTC(2026, 10, 1, 0, 0, 0));
const DAY_MS = 86_400_000;
const plus = (d: Date, ms: number) => new Date(d.getTime() + ms);

async function paid(accountId: string, key: string, whole: number, expiresAt: Date | null = null, type: 'PAID' | 'FREE' = 'PAID') {
  return grantCredits(s, { accountId, amountMicroCredits: credits(whole), type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', expiresAt, reference: null, idempotencyKey: key });
}
async function spend(accountId: string, key: string, whole: number, reservationId?: string) {
  return recordUsage(s, { accountId, idempotencyKey: key, category: 'units', quantities: { units: String(whole) }, ...(reservationId ? { reservationId } : {}) });
}
/** [available, periodCredits, percentRemaining] in whole credits (available may be negative). */
async function bar(accountId: string, now: Date): Promise<[number, number, number]> {
  const b = await readBalance(s.pool, accountId, now);
  return [Number(b.availableMicroCredits / 1_000_000n), Number(b.periodMicroCredits / 1_000_000n), b.percentRemaining];
}
/** The credit alerts of the period starting at `periodStart`, highest threshold first. */
async function alerts(accountId: string, periodStart: Date): Promise<number[]> {
  const { rows } = await s.pool.query('SELECT threshold FROM credit_alerts WHERE account_id = $1 AND period_start = $2 ORDER BY threshold DESC', [accountId, periodStart]);
  return rows.map((r) => Number(r.threshold));
}
/** The balance snapshot of the account's latest outbox row (what balanceChanged delivers), as a Balance. */
async function liveBar(accountId: string): Promise<[number, number, number]> {
  const { rows } = await s.pool.query(`SELECT payload FROM outbox_events WHERE account_id = $1 AND topic = 'balance' ORDER BY id DESC LIMIT 1`, [accountId]);
  const b = balanceFromSnapshot(rows[0].payload as BalanceSnapshot);
  return [Number(b.availableMicroCredits / 1_000_000n), Number(b.periodMicroCredits / 1_000_000n), b.percentRemaining];
}

describe("a refund of an earlier period's usage and the next period's opening", () => {
  it('the refunded credit is in the next period exactly once (its opening), and the 25 % alert of that period is raised once', async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({ paid: 150 });
    const last = await spend(accountId, 'p1', 50);
    s.setNow(plus(P2, 10 * DAY_MS));
    await refundUsage(s, last.eventId, 'bad answer'); // new credit of P2
    expect(await bar(accountId, plus(P2, 10 * DAY_MS))).toEqual([150, 150, 100]);
    // The snapshot the refund's own transaction wrote (balanceChanged) says the same.
    expect(await liveBar(accountId)).toEqual([150, 150, 100]);
    const p3 = plus(P3, 4 * DAY_MS);
    s.setNow(p3);
    // P3 opens with 150 (the refund is dated in P2): not 200 by counting it again.
    expect(await bar(accountId, p3)).toEqual([150, 150, 100]);
    await spend(accountId, 'p3-a', 100); // 50 of 150: 33 %
    expect(await bar(accountId, p3)).toEqual([50, 150, 33.33]);
    expect(await alerts(accountId, P3)).toEqual([]);
    await spend(accountId, 'p3-b', 13); // 37 of 150: 24 %, crosses 25 %
    expect(await bar(accountId, p3)).toEqual([37, 150, 24.66]);
    await spend(accountId, 'p3-c', 1); // 36: still above 15 %, nothing more
    expect(await alerts(accountId, P3)).toEqual([25]);
    expect(await liveBar(accountId)).toEqual(await bar(accountId, p3));
    expect(await alerts(accountId, P2)).toEqual([]);
    await expectLedgerInvariant(s.pool, accountId, p3);
  });

  it('a refund dated exactly at the next period start counts there once (as new credit), not in the opening', async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({ paid: 150 });
    const last = await spend(accountId, 'p1', 50);
    s.setNow(P2);
    await refundUsage(s, last.eventId, 'bad answer');
    expect(await bar(accountId, P2)).toEqual([150, 150, 100]);
    expect(await liveBar(accountId)).toEqual([150, 150, 100]);
    await expectLedgerInvariant(s.pool, accountId, P2);
  });
});

describe('an event recorded exactly at the period start', () => {
  it("is the period's charge: its refund later in the period adds nothing", async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({ paid: 150 });
    s.setNow(P2);
    const atStart = await spend(accountId, 'at-start', 50); // recorded_at == P2's start
    expect(await bar(accountId, P2)).toEqual([100, 150, 66.66]);
    const later = plus(P2, 5 * DAY_MS);
    s.setNow(later);
    await refundUsage(s, atStart.eventId, 'bad answer');
    expect(await bar(accountId, later)).toEqual([150, 150, 100]); // not 150 of 200
    expect(await liveBar(accountId)).toEqual([150, 150, 100]);
    await expectLedgerInvariant(s.pool, accountId, later);
  });
});

describe("a refund of an earlier period's usage into a batch with an expiry", () => {
  for (const runJob of [false, true]) {
    it(`into a batch that then expires in the period (expiry job ${runJob ? 'run' : 'not run'}): added once, then spent by the expiry`, async () => {
      s.setNow(T0);
      const accountId = await fundedAccount({});
      await paid(accountId, 'free', 100, plus(P2, 20 * DAY_MS), 'FREE');
      await paid(accountId, 'paid', 50);
      const last = await spend(accountId, 'p1', 60); // from the expiring free credit first
      const mid = plus(P2, 10 * DAY_MS);
      s.setNow(mid);
      expect(await bar(accountId, mid)).toEqual([90, 90, 100]);
      await refundUsage(s, last.eventId, 'bad answer');
      expect(await bar(accountId, mid)).toEqual([150, 150, 100]);
      const after = plus(P2, 25 * DAY_MS);
      s.setNow(after);
      if (runJob) await expireDue(s, accountId);
      expect(await bar(accountId, after)).toEqual([50, 150, 33.33]);
      await expectLedgerInvariant(s.pool, accountId, after);
    });
  }

  it('into a batch that had already expired: nothing given back, nothing added', async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({});
    await paid(accountId, 'free', 100, plus(P2, 5 * DAY_MS), 'FREE');
    await paid(accountId, 'paid', 50);
    const last = await spend(accountId, 'p1', 60);
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    await refundUsage(s, last.eventId, 'bad answer');
    expect(await bar(accountId, mid)).toEqual([50, 90, 55.55]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });

  it('into a batch that expired exactly at the period start (expiry not recorded): nothing added', async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({});
    await paid(accountId, 'free', 100, P2, 'FREE');
    await paid(accountId, 'paid', 50);
    const last = await spend(accountId, 'p1', 60);
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    await refundUsage(s, last.eventId, 'bad answer');
    expect(await bar(accountId, mid)).toEqual([50, 50, 100]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });
});

describe("a refund of an earlier period's usage that left debt", () => {
  /** 20 paid, a hold of 20 captured at 30: 10 of debt (event `over`), in P1. */
  async function inDebt() {
    s.setNow(T0);
    const accountId = await fundedAccount({ paid: 20 });
    const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: credits(20), ttlSeconds: 600, idempotencyKey: 'hold' });
    const over = await spend(accountId, 'over', 30, reservationId);
    expect((await readBalance(s.pool, accountId, T0)).debtMicroCredits).toBe(credits(10));
    return { accountId, over };
  }

  it('repaid by a grant of the period, then refunded: the repaid part is that grant\'s credit (already counted), 100 % as in the other order', async () => {
    const { accountId, over } = await inDebt();
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    await paid(accountId, 'p2-grant', 100); // repays the 10: 90 of 100
    expect(await bar(accountId, mid)).toEqual([90, 100, 90]);
    await refundUsage(s, over.eventId, 'bad answer'); // 20 back into the P1 batch, 10 back into the grant's
    expect(await bar(accountId, mid)).toEqual([120, 120, 100]);
    expect(await liveBar(accountId)).toEqual([120, 120, 100]);
    // 95 spent: 25 of 120 is 20 %: the 25 % alert once.
    await spend(accountId, 'p2-spend', 95);
    expect(await bar(accountId, mid)).toEqual([25, 120, 20.83]);
    expect(await alerts(accountId, P2)).toEqual([25]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });

  it('refunded, then a grant of the period: the same figures', async () => {
    const { accountId, over } = await inDebt();
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    await refundUsage(s, over.eventId, 'bad answer'); // 20 back, 10 forgiven (not counted)
    expect(await bar(accountId, mid)).toEqual([20, 20, 100]);
    await paid(accountId, 'p2-grant', 100);
    expect(await bar(accountId, mid)).toEqual([120, 120, 100]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });

  it('repaid in part by a grant of the earlier period, the rest by one of this period, then refunded: only the earlier repayment adds', async () => {
    const { accountId, over } = await inDebt();
    s.setNow(plus(T0, DAY_MS));
    await paid(accountId, 'p1-grant', 4); // repays 4 in P1: P2 opens at -6
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    expect(await bar(accountId, mid)).toEqual([-6, 0, 0]);
    await paid(accountId, 'p2-grant', 100); // repays the other 6: 94 of 100
    expect(await bar(accountId, mid)).toEqual([94, 100, 94]);
    await refundUsage(s, over.eventId, 'bad answer'); // 20 + 4 (repaid in P1) + 6 (repaid in P2) back
    expect(await bar(accountId, mid)).toEqual([124, 124, 100]);
    expect(await liveBar(accountId)).toEqual([124, 124, 100]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });

  it('repaid by a grant of the earlier period, refunded in this one: the repaid part adds', async () => {
    const { accountId, over } = await inDebt();
    s.setNow(plus(T0, DAY_MS));
    await paid(accountId, 'p1-grant', 100); // repays the 10 in P1: P2 opens with 90
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    expect(await bar(accountId, mid)).toEqual([90, 90, 100]);
    await refundUsage(s, over.eventId, 'bad answer');
    expect(await bar(accountId, mid)).toEqual([120, 120, 100]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });
});

describe('test clocks and plan subscriptions', () => {
  it('a test-clock account: charge, advanceTestClock past the period end, refund: added once', async () => {
    s.setNow(null);
    const accountId = await fundedAccount({ paid: 150, testClockStart: T0 });
    const last = await spend(accountId, 'p1', 50);
    await advanceTestClock(s, accountId, plus(P2, 3 * DAY_MS));
    const wall = new Date();
    expect(await bar(accountId, wall)).toEqual([100, 100, 100]);
    await refundUsage(s, last.eventId, 'bad answer');
    expect(await bar(accountId, wall)).toEqual([150, 150, 100]);
    await spend(accountId, 'p2', 120);
    expect(await bar(accountId, wall)).toEqual([30, 150, 20]);
    expect(await alerts(accountId, P2)).toEqual([25]);
    expect(await liveBar(accountId)).toEqual(await bar(accountId, wall));
    // The next period of the test clock opens with the 30 left, the refund not counted again.
    await advanceTestClock(s, accountId, plus(P3, DAY_MS));
    expect(await bar(accountId, new Date())).toEqual([30, 30, 100]);
    await expectLedgerInvariant(s.pool, accountId);
  });

  it("a plan subscribed between the charge and its refund: the refund is new credit of the new anchor's period; a charge at the subscription instant is not", async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({ paid: 150 });
    const before = await spend(accountId, 'before', 50);
    const plan = await createPlan(s, { name: `period-refund-${randomUUID()}`, monthlyMicroCredits: credits(100), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '0' });
    const sub = plus(T0, 10 * DAY_MS);
    s.setNow(sub);
    await subscribeToPlan(s, accountId, plan.id); // the period starts now: opens with 100, plan grants 100
    const atStart = await spend(accountId, 'at-sub', 10); // recorded at the new period's start
    expect(await bar(accountId, sub)).toEqual([190, 200, 95]);
    const later = plus(sub, 5 * DAY_MS);
    s.setNow(later);
    await refundUsage(s, before.eventId, 'bad answer'); // charged before the anchor: +50
    expect(await bar(accountId, later)).toEqual([240, 250, 96]);
    await refundUsage(s, atStart.eventId, 'bad answer'); // the period's own charge: undone only
    expect(await bar(accountId, later)).toEqual([250, 250, 100]);
    expect(await liveBar(accountId)).toEqual([250, 250, 100]);
    await expectLedgerInvariant(s.pool, accountId, later);
  });
});

describe("a payment's credit refunded into its live grant", () => {
  it("usage of the earlier period drawn from a pack whose grant a partial payment refund voided in this period: added once, into the live grant", async () => {
    s.setNow(T0);
    const payments = new PaymentSimulator();
    const ctx: ServiceContext = { ...s, payments };
    const accountId = await fundedAccount({});
    const pack = await createCreditPack(s, { name: `period-pack-${randomUUID()}`, microCredits: credits(100), bonusMicroCredits: 0n, priceUsd: '10', expiresAfterDays: null });
    await attachPaymentMethod(ctx, accountId, `pm_card_period_${randomUUID().slice(0, 8)}`);
    const { paymentId } = await purchaseCreditPack(ctx, { accountId, packId: pack.id, idempotencyKey: `buy-${randomUUID()}` });
    const used = await spend(accountId, 'p1', 40);
    const mid = plus(P2, 10 * DAY_MS);
    s.setNow(mid);
    expect(await bar(accountId, mid)).toEqual([60, 60, 100]);
    // 10 % of the money back: the grant's 60 voided, 50 granted again (the live grant).
    expect(await applyReversalEvent(ctx, payments.refund(paymentId, 100n), (testMode) => !testMode)).toMatchObject({ result: 'reversed' });
    expect(await bar(accountId, mid)).toEqual([50, 50, 100]);
    await refundUsage(s, used.eventId, 'bad answer'); // the 40 go back into the live grant
    expect(await bar(accountId, mid)).toEqual([90, 90, 100]);
    const { rows } = await s.pool.query(
      `SELECT COUNT(*)::int AS n FROM ledger_entries l JOIN payments p ON p.id = $2 JOIN credit_batches b ON b.grant_id = p.live_grant_id
        WHERE l.account_id = $1 AND l.type = 'REFUND' AND l.batch_id = b.id`,
      [accountId, paymentId],
    );
    expect(rows[0].n).toBe(1);
    await spend(accountId, 'p2', 70); // 20 of 90: 22 %
    expect(await bar(accountId, mid)).toEqual([20, 90, 22.22]);
    expect(await alerts(accountId, P2)).toEqual([25]);
    expect(await liveBar(accountId)).toEqual([20, 90, 22.22]);
    await expectLedgerInvariant(s.pool, accountId, mid);
  });
});

describe('reconcile and the kept refund credit', () => {
  it("an event's refund_credits rows that differ from its REFUND entries into batches make the account inconsistent", async () => {
    s.setNow(T0);
    const accountId = await fundedAccount({ paid: 150 });
    const used = await spend(accountId, 'p1', 50);
    s.setNow(plus(P2, DAY_MS));
    await refundUsage(s, used.eventId, 'bad answer');
    expect(await reconcileAccount(s.pool, accountId)).toMatchObject({ consistent: true, refundCreditMismatches: 0 });
    await s.pool.query('UPDATE refund_credits SET amount_micro_credits = amount_micro_credits - 1 WHERE usage_event_id = $1', [used.eventId]);
    expect(await reconcileAccount(s.pool, accountId)).toMatchObject({ consistent: false, refundCreditMismatches: 1 });
    await s.pool.query('DELETE FROM refund_credits WHERE usage_event_id = $1', [used.eventId]);
    expect(await reconcileAccount(s.pool, accountId)).toMatchObject({ consistent: false, refundCreditMismatches: 1 });
    // Put back as refundUsage wrote it (the backfill check after this test reads it).
    await s.pool.query(
      `INSERT INTO refund_credits (usage_event_id, left_at, account_id, refunded_at, amount_micro_credits)
       SELECT e.id, e.recorded_at, e.account_id, e.refunded_at, $2 FROM usage_events e WHERE e.id = $1`,
      [used.eventId, credits(50).toString()],
    );
    await expectLedgerInvariant(s.pool, accountId, plus(P2, DAY_MS));
  });
});
