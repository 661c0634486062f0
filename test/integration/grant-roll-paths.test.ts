/**
 * Every grant path runs a plan roll that is due first (src/services/grant-credits.ts module
 * comment; plans.ts rollDuePeriodsFirst), beyond grantCredits (test/integration/statement-audit.test.ts):
 * a promo code, a referral (on both accounts), a pack purchase (payment settlement, which auto
 * top-ups, payment events and resumed payments share), a won dispute's and a failed refund's
 * give-backs made for an account in debt whose roll is late leave their own credit whole, as after an on-time roll, whose grant repaid the debt. A
 * replayed grantCredits changes nothing: it does not roll. Real PostgreSQL, test clocks, the
 * payment simulator.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { createPromoCode, redeemPromoCode } from '../../src/services/promo-codes.js';
import { redeemReferral } from '../../src/services/redeem-referral.js';
import { createPlan, subscribeToPlan, type PlanRecord } from '../../src/services/plans.js';
import { readBalance } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';
import { purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { attachMethod, createPack, startBillingServer, type BillingServer } from '../billing/billing-helpers.js';
import { dbId, gid } from '../api/helpers.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import type { ChargeReversalEvent } from '../../src/payments/provider.js';

let services: TestServices;
let capped: PlanRecord;
let rewardBefore: string;
beforeAll(async () => {
  services = createTestServices(4);
  capped = await createPlan(services, { name: `grant-roll capped ${randomUUID()}`, monthlyMicroCredits: credits(40), rollover: 'ROLLOVER', rolloverCapMicroCredits: credits(25), priceUsd: '1' });
  rewardBefore = (await services.pool.query('SELECT referral_reward_micro_credits::text AS r FROM settings WHERE id = 1')).rows[0].r as string;
  await services.pool.query('UPDATE settings SET referral_reward_micro_credits = $1 WHERE id = 1', [credits(20).toString()]);
});
afterAll(async () => {
  await services.pool.query('UPDATE settings SET referral_reward_micro_credits = $1 WHERE id = 1', [rewardBefore]);
  await services.close();
});

const HOUR = 3_600_000;

/** Moves the account's test clock without running anything due (the roll-period job is late). */
async function setClock(accountId: string, at: Date): Promise<void> {
  await services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, at]);
}

/**
 * A test-mode account from `start` on the capped plan (40 a month, cap 25) that used 50 past a
 * hold of 5 (10 of debt), its clock then moved an hour past its first period's end without its roll.
 */
async function inDebtRollLate(start: Date, on: TestServices = services): Promise<string> {
  const id = await createFundedAccount(on, { testClockStart: start });
  await subscribeToPlan(services, id, capped.id);
  await setClock(id, new Date(start.getTime() + 1000));
  const hold = await reserveCredits(services, { accountId: id, amountMicroCredits: credits(5), ttlSeconds: 3600, idempotencyKey: 'h' });
  await recordUsage(services, { accountId: id, idempotencyKey: 'u', category: 'units', quantities: { units: '50' }, reservationId: hold.reservationId });
  const end = new Date(start);
  end.setUTCMonth(end.getUTCMonth() + 1);
  await setClock(id, new Date(end.getTime() + HOUR));
  return id;
}

/** The account's period grants so far, its debt, and what is left of the grant `grantId`'s batch. */
async function after(accountId: string, grantId: string): Promise<{ planGrants: number; debt: bigint; left: bigint }> {
  const plan = await services.pool.query(`SELECT count(*)::int AS n FROM credit_grants WHERE account_id = $1 AND source = 'SUBSCRIPTION'`, [accountId]);
  const batch = await services.pool.query('SELECT remaining_micro_credits::text AS r FROM credit_batches WHERE grant_id = $1', [grantId]);
  const balance = await readBalance(services.pool, accountId, new Date());
  return { planGrants: plan.rows[0].n as number, debt: balance.debtMicroCredits, left: BigInt(batch.rows[0].r as string) };
}

describe('grant paths run a due plan roll first', () => {
  it('a promo code redeemed in debt before a late roll: the roll\'s grant repays the debt, the promo credit stays whole', async () => {
    const id = await inDebtRollLate(new Date('2030-03-01T00:00:00.000Z'));
    const code = `ROLL${randomUUID().slice(0, 8).toUpperCase()}`;
    await createPromoCode(services, { code, creditsMicroCredits: credits(20), expiresAfterDays: null, maxRedemptions: null, validUntil: null });
    const grant = await redeemPromoCode(services, id, code);
    // Before, the promo repaid the 10 (10 left) and the late roll's 40 stood whole.
    expect(await after(id, grant.grantId)).toEqual({ planGrants: 2, debt: 0n, left: credits(20) });
  });

  it('a referral redeemed in debt before late rolls: each account rewarded rolls first, both rewards stay whole', async () => {
    const referrer = await inDebtRollLate(new Date('2030-08-01T00:00:00.000Z'));
    const referee = await inDebtRollLate(new Date('2030-08-02T00:00:00.000Z')); // newer: it may redeem the referrer's code
    const { rows } = await services.pool.query('SELECT referral_code FROM accounts WHERE id = $1', [referrer]);
    const r = await redeemReferral(services, referee, rows[0].referral_code as string);
    expect(r.referrerRewarded).toBe(true);
    const given = await services.pool.query(`SELECT id FROM credit_grants WHERE account_id = $1 AND source = 'REFERRAL'`, [referrer]);
    expect({ referee: await after(referee, r.grantId), referrer: await after(referrer, given.rows[0].id as string) }).toEqual({
      referee: { planGrants: 2, debt: 0n, left: credits(20) },
      referrer: { planGrants: 2, debt: 0n, left: credits(20) },
    });
  });

  it('a pack purchased in debt before a late roll: the settlement rolls first, the pack stays whole', async () => {
    const billing: BillingServer = await startBillingServer();
    try {
      const id = await inDebtRollLate(new Date('2030-11-01T00:00:00.000Z'), billing.srv.services);
      await attachMethod(billing.srv, gid('Account', id));
      const pack = await createPack(billing.srv, { credits: '20', priceUsd: '2' });
      const bought = await purchaseCreditPack(billing.srv.services, { accountId: id, packId: dbId(pack.id), idempotencyKey: 'buy' });
      expect(await after(id, bought.grantId)).toEqual({ planGrants: 2, debt: 0n, left: credits(20) });
    } finally {
      await billing.close();
    }
  });

  it.each([
    { what: 'a dispute won', take: 'dispute' as const, giveBack: 'dispute_won' as const },
    { what: 'a full refund failed', take: 'refund' as const, giveBack: 'refund_failed' as const },
  ])('$what in debt before a late roll: the give-back rolls first and stays whole', async ({ take, giveBack }) => {
    const billing: BillingServer = await startBillingServer();
    try {
      const ctx = billing.srv.services;
      const start = new Date('2031-01-01T00:00:00.000Z');
      const id = await createFundedAccount(ctx, { testClockStart: start });
      await subscribeToPlan(ctx, id, capped.id);
      await attachMethod(billing.srv, gid('Account', id));
      const pack = await createPack(billing.srv, { credits: '20', priceUsd: '2' });
      await setClock(id, new Date(start.getTime() + 1000));
      const bought = await purchaseCreditPack(ctx, { accountId: id, packId: dbId(pack.id), idempotencyKey: 'buy' });
      const { rows } = await ctx.pool.query('SELECT provider_ref FROM payments WHERE id = $1', [bought.paymentId]);
      const event = (kind: ChargeReversalEvent['kind']): ChargeReversalEvent => ({
        eventId: `evt_${randomUUID()}`, eventType: kind, kind, providerRef: rows[0].provider_ref as string, amountCents: 200n, refundedCents: kind === 'refund' ? 200n : 0n,
        disputeRef: kind.startsWith('dispute') ? 'du_roll' : null, currency: 'usd', livemode: false, createdAt: null, ...(kind === 'refund_failed' ? { refundRef: 're_roll' } : {}),
      });
      await applyReversalEvent(ctx, event(take), () => false); // the pack's 20 voided
      await setClock(id, new Date(start.getTime() + 2000));
      const hold = await reserveCredits(ctx, { accountId: id, amountMicroCredits: credits(5), ttlSeconds: 3600, idempotencyKey: 'h' });
      await recordUsage(ctx, { accountId: id, idempotencyKey: 'u', category: 'units', quantities: { units: '50' }, reservationId: hold.reservationId }); // 10 of debt
      await setClock(id, new Date('2031-02-01T01:00:00.000Z')); // the Feb 1 roll has not run
      await applyReversalEvent(ctx, event(giveBack), () => false);
      const given = await ctx.pool.query('SELECT live_grant_id FROM payments WHERE id = $1', [bought.paymentId]);
      expect(given.rows[0].live_grant_id).not.toBe(bought.grantId);
      expect(await after(id, given.rows[0].live_grant_id as string)).toEqual({ planGrants: 2, debt: 0n, left: credits(20) });
    } finally {
      await billing.close();
    }
  });

  it('a replayed grantCredits rolls nothing (a replay changes nothing); the first grant rolled', async () => {
    const id = await inDebtRollLate(new Date('2030-10-01T00:00:00.000Z'));
    const cmd = { accountId: id, amountMicroCredits: credits(20), type: 'PAID' as const, source: 'PURCHASE' as const, expiresAt: null, reference: null, idempotencyKey: 'g' };
    const first = await grantCredits(services, cmd);
    expect(await after(id, first.grantId)).toEqual({ planGrants: 2, debt: 0n, left: credits(20) });
    // The next period's roll is due; a replay of the grant leaves it to the next change or the job.
    await setClock(id, new Date('2030-12-01T01:00:00.000Z'));
    const version = (await readBalance(services.pool, id, new Date())).version;
    expect(await grantCredits(services, cmd)).toEqual({ grantId: first.grantId, replayed: true });
    expect((await after(id, first.grantId)).planGrants).toBe(2);
    expect((await readBalance(services.pool, id, new Date())).version).toBe(version);
  });
});
