/**
 * Audit of refundUsage and voidGrant (README "Refunds and voids"): the findings of the audit, each
 * with a test that failed before its fix, on the real PostgreSQL: a refund past the 64-bit balance
 * limit (an internal error), and refunds of usage a pack paid for after the pack's payment was
 * refunded in part or disputed and won (credit lost, or the refunded share given back again). Areas the audit found right are
 * covered elsewhere (ledger-rules, money-once, rollover-cap, holds-audit, credit-alerts, budgets,
 * usage-rollups).
 */
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { useTestServices } from '../setup/services.js';
import { rowsReadUnderGenericPlans } from '../setup/rows-read.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { readPaymentCredits, readRefundBatches, refundUsage } from '../../src/services/refund-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { readBalance } from '../../src/services/read-balance.js';
import { MAX_ABS_MICRO_CREDITS, credits } from '../../src/ledger/credits.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import type { ChargeReversalEvent } from '../../src/payments/provider.js';
import { createCreditPack } from '../../src/services/credit-packs.js';
import { attachPaymentMethod, purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import type { ServiceContext } from '../../src/services/context.js';

const s = useTestServices(5);

const T0 = new Date(Date.UTC(2026, 8, 1, 0, 0, 0));
const DAY_MS = 86_400_000;
const at = (ms: number) => new Date(T0.getTime() + ms);

/** The account's rows that a refund writes or changes, to compare before and after a refusal. */
async function refundFootprint(accountId: string, eventId: string) {
  const { rows } = await s.pool.query(
    `SELECT (SELECT version::text FROM balances WHERE account_id = $1) AS version,
            (SELECT COUNT(*)::int FROM ledger_entries WHERE account_id = $1) AS entries,
            (SELECT string_agg(remaining_micro_credits::text || status, ',' ORDER BY added_at, id) FROM credit_batches WHERE account_id = $1) AS batches,
            (SELECT refunded_at IS NOT NULL FROM usage_events WHERE id = $2) AS refunded,
            (SELECT COUNT(*)::int FROM audit_events WHERE account_id = $1 AND action = 'usage.refunded') AS audited`,
    [accountId, eventId],
  );
  return rows[0];
}

describe('refundUsage and the 64-bit balance limit', () => {
  it('a refund that would take the total above the largest amount kept is BAD_USER_INPUT (BALANCE_LIMIT) and changes nothing', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    await grantCredits(s, { accountId, amountMicroCredits: MAX_ABS_MICRO_CREDITS, type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'max' });
    const ev = await recordUsage(s, { accountId, idempotencyKey: 'u', category: 'units', quantities: { units: '1' } });
    // The next billing period: a grant of 1 credit fits again (total and the period's grants at most the limit).
    s.setNow(at(40 * DAY_MS));
    await grantCredits(s, { accountId, amountMicroCredits: credits(1), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'one' });
    expect((await readBalance(s.pool, accountId, at(40 * DAY_MS))).totalMicroCredits).toBe(MAX_ABS_MICRO_CREDITS);
    const before = await refundFootprint(accountId, ev.eventId);
    const refused = await refundUsage(s, ev.eventId, 'bad answer').then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(LedgerError);
    expect(refused).toMatchObject({ code: 'BAD_USER_INPUT', details: { field: 'usageEventId', reason: 'BALANCE_LIMIT' } });
    expect(await refundFootprint(accountId, ev.eventId)).toEqual(before);
    await expectLedgerInvariant(s.pool, accountId, at(40 * DAY_MS));
  });
});

describe('refundUsage of usage paid by a pack whose payment was refunded in part or disputed', () => {
  /** A pack of 100 credits for $10 bought with the simulator, and `spend` credits charged from it (event `used`). */
  async function boughtAndSpent(spend: number) {
    s.setNow(null);
    const payments = new PaymentSimulator();
    const ctx: ServiceContext = { ...s, payments };
    const accountId = await createFundedAccount(s, {});
    const pack = await createCreditPack(s, { name: `audit-pack-${randomUUID()}`, microCredits: credits(100), bonusMicroCredits: 0n, priceUsd: '10', expiresAfterDays: null });
    await attachPaymentMethod(ctx, accountId, `pm_card_audit_${randomUUID().slice(0, 8)}`);
    const { paymentId } = await purchaseCreditPack(ctx, { accountId, packId: pack.id, idempotencyKey: `buy-${randomUUID()}` });
    const used = await recordUsage(s, { accountId, idempotencyKey: 'used', category: 'units', quantities: { units: String(spend) } });
    const apply = (event: ChargeReversalEvent) => applyReversalEvent(ctx, event, (testMode) => !testMode);
    return { accountId, paymentId, payments, used, apply };
  }
  const totalOf = async (accountId: string) => (await readBalance(s.pool, accountId, new Date())).totalMicroCredits;

  it('a full refund of the payment: the refund of usage it paid gives nothing back (no money behind that credit)', async () => {
    const { accountId, paymentId, payments, used, apply } = await boughtAndSpent(40);
    expect(await apply(payments.refund(paymentId))).toMatchObject({ result: 'reversed' });
    expect(await totalOf(accountId)).toBe(0n);
    await refundUsage(s, used.eventId, 'bad answer');
    expect(await totalOf(accountId)).toBe(0n);
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('a 10 % refund of the payment after 40 of 100 were spent: refunding those 40 gives them back (90 paid for)', async () => {
    const { accountId, paymentId, payments, used, apply } = await boughtAndSpent(40);
    expect(await apply(payments.refund(paymentId, 100n))).toMatchObject({ result: 'reversed' });
    expect(await totalOf(accountId)).toBe(credits(50));
    await refundUsage(s, used.eventId, 'bad answer');
    expect(await totalOf(accountId)).toBe(credits(90));
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('a 50 % refund of the payment after all 100 were spent (nothing taken back): refunding them gives back 50, not 100', async () => {
    const { accountId, paymentId, payments, used, apply } = await boughtAndSpent(100);
    await apply(payments.refund(paymentId, 500n));
    expect(await totalOf(accountId)).toBe(0n);
    await refundUsage(s, used.eventId, 'bad answer');
    expect(await totalOf(accountId)).toBe(credits(50));
    const taken = await s.pool.query('SELECT refund_taken_micro_credits::text AS taken FROM payments WHERE id = $1', [paymentId]);
    expect(taken.rows[0].taken).toBe(credits(50).toString()); // the share is taken now, once
    // A further 10 % of the money refunded takes its 10 from what came back: 40 left of 100 at 60 %.
    await apply(payments.refund(paymentId, 100n));
    expect(await totalOf(accountId)).toBe(credits(40));
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('the usage refund and a 10 % refund of the payment racing: 90 left whichever commits first, once', async () => {
    const { accountId, paymentId, payments, used, apply } = await boughtAndSpent(40);
    const event = payments.refund(paymentId, 100n);
    await Promise.all([refundUsage(s, used.eventId, 'bad answer'), apply(event), refundUsage(s, used.eventId, 'bad answer'), apply(event)]);
    expect(await totalOf(accountId)).toBe(credits(90));
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('a dispute won after 40 of 100 were spent: refunding those 40 gives them back (100 paid for)', async () => {
    const { accountId, paymentId, payments, used, apply } = await boughtAndSpent(40);
    expect(await apply(payments.dispute(paymentId))).toMatchObject({ result: 'reversed' });
    expect(await apply(payments.disputeWon(paymentId))).toMatchObject({ result: 'restored' });
    expect(await totalOf(accountId)).toBe(credits(60));
    await refundUsage(s, used.eventId, 'bad answer');
    expect(await totalOf(accountId)).toBe(credits(100));
    await expectLedgerInvariant(s.pool, accountId);
  });
});

describe("the period's credit and a refund of an earlier period's usage (balance_figures, migration period_credits_refunds)", () => {
  it("voiding a grant whose credit came back by the refund of an earlier period's usage leaves the period's other credit its base (no 0 % bar, alerts kept)", async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    const mistake = await grantCredits(s, { accountId, amountMicroCredits: credits(100), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'mistake' });
    s.setNow(at(1000));
    await grantCredits(s, { accountId, amountMicroCredits: credits(100), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'bought' });
    const ev = await recordUsage(s, { accountId, idempotencyKey: 'u', category: 'units', quantities: { units: '95' } }); // from the mistake (oldest)
    const next = at(40 * DAY_MS); // the next billing period: it opens with 105 (5 of the mistake, 100 bought)
    s.setNow(next);
    await refundUsage(s, ev.eventId, 'bad answer'); // 95 back into the mistake: new credit of this period (200)
    let b = await readBalance(s.pool, accountId, next);
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(200), credits(200), 100]);
    await voidGrant(s, mistake.grantId, 'granted by mistake'); // takes its 100 back
    b = await readBalance(s.pool, accountId, next);
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(100), credits(100), 100]);
    // 80 of the 100 bought spent: 20 % left, the 25 % alert is raised.
    await recordUsage(s, { accountId, idempotencyKey: 'v', category: 'units', quantities: { units: '80' } });
    b = await readBalance(s.pool, accountId, next);
    expect(b.percentRemaining).toBe(20);
    const { rows } = await s.pool.query('SELECT threshold FROM credit_alerts WHERE account_id = $1 ORDER BY threshold DESC', [accountId]);
    expect(rows.map((r) => r.threshold)).toEqual([25]);
    await expectLedgerInvariant(s.pool, accountId, next);
  });

  it("a refund of an earlier period's usage adds to the period's credit as a grant would; a refund of this period's usage only undoes its charge", async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    await grantCredits(s, { accountId, amountMicroCredits: credits(150), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'bought' });
    const last = await recordUsage(s, { accountId, idempotencyKey: 'last-period', category: 'units', quantities: { units: '50' } });
    const next = at(40 * DAY_MS); // opens with 100
    s.setNow(next);
    const now = await recordUsage(s, { accountId, idempotencyKey: 'this-period', category: 'units', quantities: { units: '10' } });
    await refundUsage(s, now.eventId, 'bad answer'); // undoes a charge of the period: the base stays 100
    let b = await readBalance(s.pool, accountId, next);
    expect([b.availableMicroCredits, b.periodMicroCredits]).toEqual([credits(100), credits(100)]);
    await refundUsage(s, last.eventId, 'bad answer'); // 50 the period never had: 150 of 150
    b = await readBalance(s.pool, accountId, next);
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(150), credits(150), 100]);
    // 120 spent: 30 of 150 is 20 % (it read 30 % of 100 before the rule), the 25 % alert is raised.
    await recordUsage(s, { accountId, idempotencyKey: 'spend', category: 'units', quantities: { units: '120' } });
    b = await readBalance(s.pool, accountId, next);
    expect(b.percentRemaining).toBe(20);
    const { rows } = await s.pool.query('SELECT threshold FROM credit_alerts WHERE account_id = $1 ORDER BY threshold DESC', [accountId]);
    expect(rows.map((r) => r.threshold)).toEqual([25]);
    await expectLedgerInvariant(s.pool, accountId, next);
  });
});

describe("a refund finds the payments behind its batches by primary key, not by reading the account's payments", () => {
  it("readRefundBatches and readPaymentCredits read one payment each under the ledger pool's generic plans, whatever the account's payments", async () => {
    // One pack bought and drawn from, next to 300 earlier failed payments of the account; the two
    // reads of a refund run on a fresh ledger-pool connection, with PostgreSQL's own count of the
    // rows read from payments (rows-read.ts).
    s.setNow(null);
    const payments = new PaymentSimulator();
    const ctx: ServiceContext = { ...s, payments };
    const accountId = await createFundedAccount(s, {});
    const pack = await createCreditPack(s, { name: `probe-pack-${randomUUID()}`, microCredits: credits(100), bonusMicroCredits: 0n, priceUsd: '10', expiresAfterDays: null });
    await attachPaymentMethod(ctx, accountId, `pm_card_probe_${randomUUID().slice(0, 8)}`);
    await s.pool.query(
      `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, status, error)
       SELECT gen_random_uuid(), $1, 'PURCHASE', 'failed-' || i, $2, 10, 'FAILED', 'card declined' FROM generate_series(1, 300) i`,
      [accountId, pack.id],
    );
    const { paymentId, grantId } = await purchaseCreditPack(ctx, { accountId, packId: pack.id, idempotencyKey: `buy-${randomUUID()}` });
    const { rows: batchRows } = await s.pool.query('SELECT id FROM credit_batches WHERE grant_id = $1', [grantId]);
    const batchId = batchRows[0].id as string;
    await s.pool.query('ANALYZE payments');
    const read = await rowsReadUnderGenericPlans('payments', async (_db, client) => {
      const batches = await readRefundBatches(client, [batchId]);
      expect(batches.get(batchId)).toMatchObject({ status: 'ACTIVE', paymentId });
      const paid = await readPaymentCredits(client, accountId, [paymentId]);
      expect(paid.get(paymentId)).toMatchObject({ live: { batchId, status: 'ACTIVE' }, unrecoveredMicroCredits: 0n });
    });
    // 12 reads of one payment; reading the account's payments would be 12 × 301.
    expect(read).toBeLessThanOrEqual(12 * 2);
  });

  it("a grant keyed like a payment's whose reference is no payment id (a client's, from before the engine's keys were reserved) is no payment's: its refund gives the credit back into it", async () => {
    s.setNow(null);
    const accountId = await createFundedAccount(s, {});
    // grantCredits refuses `payment:` keys now (RESERVED_KEY); a client grant of an earlier
    // release could carry one, with any reference: made here as that release would have left it.
    const { grantId } = await grantCredits(s, { accountId, amountMicroCredits: credits(10), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: 'order 7', idempotencyKey: 'legacy' });
    await s.pool.query(`UPDATE credit_grants SET idempotency_key = 'payment:order-7' WHERE id = $1`, [grantId]);
    const used = await recordUsage(s, { accountId, idempotencyKey: 'drawn', category: 'units', quantities: { units: '4' } });
    expect((await readBalance(s.pool, accountId, new Date())).totalMicroCredits).toBe(credits(6));
    await refundUsage(s, used.eventId, 'bad answer');
    expect((await readBalance(s.pool, accountId, new Date())).totalMicroCredits).toBe(credits(10));
    await expectLedgerInvariant(s.pool, accountId);
  });
});
