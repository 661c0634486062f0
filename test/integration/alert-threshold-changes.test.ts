/**
 * Settings.alertThresholds changed in the middle of a billing period (README "Alerts at 25 %,
 * 15 % and 0 %", "Changing alert thresholds mid-period"). The thresholds are platform-wide and a
 * save writes nothing per account: no balance version, no outbox row, no alert. An account is
 * checked against the thresholds in force at its next balance change (balances_changed) or, for
 * the 0 % depletion notice, at its next refusal for lack of credit (depletion-alerts.ts). So a
 * threshold added above where an account already is raises its alert once, at that next change;
 * removing and re-adding a threshold never raises it twice in a period (unique per account,
 * period and threshold). Real PostgreSQL; the settings row is shared, so every test restores it.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { updateSettings } from '../../src/services/update-settings.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { DepletionAlerts } from '../../src/services/depletion-alerts.js';
import { createPricingState } from '../../src/services/pricing-state.js';
import { readBalance } from '../../src/services/read-balance.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';

let services: TestServices;
/** The settings row before this file ran (restored after each test: other files read it). */
let original: Record<string, unknown>;

beforeAll(async () => {
  services = createTestServices(6);
  original = (await services.pool.query('SELECT * FROM settings WHERE id = 1')).rows[0];
});

afterEach(async () => {
  await services.pool.query(
    `UPDATE settings SET alert_thresholds = $1, credit_usd_value = $2, welcome_bonus_micro_credits = $3, welcome_bonus_expires_after_days = $4,
            referral_reward_micro_credits = $5, referral_max_rewards_per_account = $6 WHERE id = 1`,
    [original.alert_thresholds, original.credit_usd_value, original.welcome_bonus_micro_credits, original.welcome_bonus_expires_after_days, original.referral_reward_micro_credits, original.referral_max_rewards_per_account],
  );
});

afterAll(async () => {
  await services.close();
});

/** Charges `units` credits (the test price book's `units` rule: 1 credit per unit). */
const spend = (ctx: ServiceContext, accountId: string, units: string) =>
  recordUsage(ctx, { accountId, idempotencyKey: `thr-${randomUUID()}`, category: 'units', quantities: { units } });

/** The account's alert thresholds in the order they were raised. */
async function raised(accountId: string): Promise<number[]> {
  const { rows } = await services.pool.query(`SELECT threshold FROM credit_alerts WHERE account_id = $1 ORDER BY seq`, [accountId]);
  return rows.map((r) => r.threshold as number);
}

/** The account's balance version and its outbox rows (count), to show that a save wrote nothing for it. */
async function footprint(accountId: string): Promise<{ version: string; outbox: number; alerts: number }> {
  const { rows } = await services.pool.query(
    `SELECT b.version::text AS version,
            (SELECT count(*)::int FROM outbox_events o WHERE o.account_id = b.account_id) AS outbox,
            (SELECT count(*)::int FROM credit_alerts c WHERE c.account_id = b.account_id) AS alerts
       FROM balances b WHERE b.account_id = $1`,
    [accountId],
  );
  return rows[0];
}

describe('alert thresholds changed mid-period', () => {
  it('a threshold added above where the account already is: the save writes nothing; raised once at the next balance change', async () => {
    await updateSettings(services, { alertThresholds: [25, 15, 0] });
    const accountId = await createFundedAccount(services, { paid: 100 });
    await spend(services, accountId, '70'); // 30 % left: nothing crossed yet
    expect(await raised(accountId)).toEqual([]);

    const before = await footprint(accountId);
    const balanceBefore = await readBalance(services.pool, accountId, services.clock());
    await updateSettings(services, { alertThresholds: [50, 25, 15, 0] });
    // Platform-wide: no per-account write, no balance version, no alert until the account changes.
    expect(await footprint(accountId)).toEqual(before);
    expect(await readBalance(services.pool, accountId, services.clock())).toMatchObject({
      version: balanceBefore.version,
      percentRemaining: balanceBefore.percentRemaining,
      availableMicroCredits: balanceBefore.availableMicroCredits,
    });

    await spend(services, accountId, '1'); // 29 %: at or below 50 for the first time in a check
    expect(await raised(accountId)).toEqual([50]);
    const { rows } = await services.pool.query(`SELECT percent_remaining::float8 AS p FROM credit_alerts WHERE account_id = $1 AND threshold = 50`, [accountId]);
    expect(rows[0].p).toBe(29);
    await spend(services, accountId, '1');
    expect(await raised(accountId)).toEqual([50]);

    // Removed, then added again in the same period: the period's 50 % alert was raised already.
    await updateSettings(services, { alertThresholds: [25, 15, 0] });
    await spend(services, accountId, '1');
    await updateSettings(services, { alertThresholds: [50, 25, 15, 0] });
    await spend(services, accountId, '1');
    expect(await raised(accountId)).toEqual([50]);

    // The remaining thresholds are crossed as usual.
    await spend(services, accountId, '2'); // 24 %
    expect(await raised(accountId)).toEqual([50, 25]);
  });

  it('a threshold added while the account is above it again (a top-up): raised only once spending reaches it', async () => {
    await updateSettings(services, { alertThresholds: [25, 15, 0] });
    const accountId = await createFundedAccount(services, { paid: 100 });
    await spend(services, accountId, '70'); // 30 % of 100
    await updateSettings(services, { alertThresholds: [50, 25, 15, 0] });
    // The next change is a grant: 130 of 200 = 65 %, above 50: nothing raised.
    await grantCredits(services, { accountId, amountMicroCredits: credits(100), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: `thr-g-${randomUUID()}` });
    expect(await raised(accountId)).toEqual([]);
    await spend(services, accountId, '30'); // 100 of 200 = 50 %
    expect(await raised(accountId)).toEqual([50]);
  });

  it('settings, budgets and auto top-up saves move no balance version and write no outbox row', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    await spend(services, accountId, '10');
    const before = await footprint(accountId);
    await updateSettings(services, {
      alertThresholds: [40, 20, 0],
      creditUsdValue: '0.02',
      welcomeBonusCredits: '5',
      welcomeBonusExpiresAfterDays: 30,
      referralRewardCredits: '7',
      referralMaxRewardsPerAccount: 3,
    });
    await setSpendingBudget(services, { accountId, subjectKind: 'AGENT', subjectId: 'bot', limitMicroCredits: credits(5) });
    await setSpendingBudget(services, { accountId, subjectKind: 'USER', subjectId: 'ann', limitMicroCredits: credits(5) });
    expect(await footprint(accountId)).toEqual(before);
  });
});

describe('the depletion notice when 0 becomes a threshold mid-period', () => {
  it('a process that answered refusals while 0 was no threshold raises it at the next refusal after 0 is added, at the same balance version', async () => {
    // A process's own pricing cache (as src/main.ts: held for a while), invalidated by its own save.
    const ctx: ServiceContext = { ...services, pricing: createPricingState(services.pool, 60_000), depletionAlerts: new DepletionAlerts() };
    await updateSettings(ctx, { alertThresholds: [25, 15] });
    const accountId = await createFundedAccount(ctx, { paid: 100 });
    await spend(ctx, accountId, '99.5'); // 0.5 % left
    expect(await raised(accountId)).toEqual([25, 15]);
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await raised(accountId)).toEqual([25, 15]); // 0 is no threshold: no notice

    const before = await footprint(accountId);
    await updateSettings(ctx, { alertThresholds: [25, 15, 0] });
    expect(await footprint(accountId)).toEqual(before); // the save wrote nothing for the account
    // The refusal changes nothing, so the balance version is the one the first refusal was answered at.
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await raised(accountId)).toEqual([25, 15, 0]);
    expect((await footprint(accountId)).version).toBe(before.version);
    // And once only.
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await raised(accountId)).toEqual([25, 15, 0]);
  });

  it('another process sees 0 added within its settings cache time, here at once (no cache)', async () => {
    const remembered = new DepletionAlerts();
    const ctx: ServiceContext = { ...services, depletionAlerts: remembered };
    await updateSettings(services, { alertThresholds: [25, 15] });
    const accountId = await createFundedAccount(ctx, { paid: 100 });
    await spend(ctx, accountId, '99.5');
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await raised(accountId)).toEqual([25, 15]);
    // Saved through another process (its own context): this process's DepletionAlerts is not told.
    await updateSettings({ ...services, pricing: createPricingState(services.pool, 0) }, { alertThresholds: [25, 15, 0] });
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await raised(accountId)).toEqual([25, 15, 0]);
  });
});
