/**
 * updateSettings: changes platform-wide settings (only the fields given). Validated first;
 * one UPDATE; the pricing cache is dropped so new values apply at once in this process.
 */
import { badInput } from '../ledger/errors.js';
import { formatCredits, parseCredits, parseExactDecimal, formatExactDecimal } from '../ledger/credits.js';
import type { ServiceContext } from './context.js';
import { withTransaction } from '../db/pg.js';
import { actorOf, recordAuditEvent, type AuditDetail } from '../audit/audit-log.js';

/** Fields of SettingsInput (contract); Credits/Decimal as strings or numbers. */
export interface SettingsPatch {
  creditUsdValue?: unknown;
  welcomeBonusCredits?: unknown;
  welcomeBonusExpiresAfterDays?: number | null;
  referralRewardCredits?: unknown;
  referralMaxRewardsPerAccount?: number | null;
  alertThresholds?: number[] | null;
}

/**
 * Applies a settings patch. Absent fields keep their value; welcomeBonusExpiresAfterDays may be
 * set to null (never expires). Writes nothing per account: no Balance field is derived from
 * settings, so no balance version moves and nothing is published (README "Live updates"); new
 * alert thresholds apply to each account at its next balance change in the period
 * (balances_changed) and, for 0, at its next refusal for lack of credit (depletion-alerts.ts),
 * each threshold still raised at most once per account and period.
 * @throws LedgerError BAD_USER_INPUT: creditUsdValue not in (0, 1000000], negative credits,
 *   days not in 1..3650, referral limit not in 0..1000000, thresholds not distinct ints in 0..100.
 */
export async function updateSettings(ctx: ServiceContext, patch: SettingsPatch): Promise<void> {
  const sets: string[] = [];
  const values: unknown[] = [];
  // What changed, by input field, with canonical values (credits and decimals as strings).
  const changed: Record<string, AuditDetail> = {};
  const set = (column: string, value: unknown, field: string, shown: AuditDetail) => {
    changed[field] = shown;
    values.push(value);
    sets.push(`${column} = $${values.length}`);
  };
  if (patch.creditUsdValue !== undefined && patch.creditUsdValue !== null) {
    const d = parseExactDecimal(patch.creditUsdValue, 'creditUsdValue', 10);
    if (d.units <= 0n || d.units > 1_000_000n * 10n ** BigInt(d.scale)) throw badInput('creditUsdValue', 'must be > 0 and <= 1000000');
    set('credit_usd_value', formatExactDecimal(d), 'creditUsdValue', formatExactDecimal(d));
  }
  if (patch.welcomeBonusCredits !== undefined && patch.welcomeBonusCredits !== null) {
    const micro = parseCredits(patch.welcomeBonusCredits, 'welcomeBonusCredits');
    if (micro < 0n) throw badInput('welcomeBonusCredits', 'must not be negative');
    set('welcome_bonus_micro_credits', micro.toString(), 'welcomeBonusCredits', formatCredits(micro));
  }
  if (patch.welcomeBonusExpiresAfterDays !== undefined) {
    const days = patch.welcomeBonusExpiresAfterDays;
    if (days !== null && (!Number.isInteger(days) || days < 1 || days > 3650)) throw badInput('welcomeBonusExpiresAfterDays', 'must be 1 to 3650, or null');
    set('welcome_bonus_expires_after_days', days, 'welcomeBonusExpiresAfterDays', days);
  }
  if (patch.referralRewardCredits !== undefined && patch.referralRewardCredits !== null) {
    const micro = parseCredits(patch.referralRewardCredits, 'referralRewardCredits');
    if (micro < 0n) throw badInput('referralRewardCredits', 'must not be negative');
    set('referral_reward_micro_credits', micro.toString(), 'referralRewardCredits', formatCredits(micro));
  }
  if (patch.referralMaxRewardsPerAccount !== undefined && patch.referralMaxRewardsPerAccount !== null) {
    const n = patch.referralMaxRewardsPerAccount;
    if (!Number.isInteger(n) || n < 0 || n > 1_000_000) throw badInput('referralMaxRewardsPerAccount', 'must be 0 to 1000000');
    set('referral_max_rewards_per_account', n, 'referralMaxRewardsPerAccount', n);
  }
  if (patch.alertThresholds !== undefined && patch.alertThresholds !== null) {
    const t = patch.alertThresholds;
    if (t.length > 10 || t.some((x) => !Number.isInteger(x) || x < 0 || x > 100) || new Set(t).size !== t.length) {
      throw badInput('alertThresholds', 'must be at most 10 distinct integers from 0 to 100');
    }
    const sorted = [...t].sort((a, b) => b - a);
    set('alert_thresholds', sorted, 'alertThresholds', sorted);
  }
  if (sets.length === 0) return;
  values.push(ctx.clock());
  await withTransaction(ctx.pool, async (tx) => {
    await tx.query(`UPDATE settings SET ${sets.join(', ')}, updated_at = $${values.length} WHERE id = 1`, values);
    await recordAuditEvent(tx, actorOf(ctx), { action: 'settings.updated', subjectType: 'settings', subjectId: '1', details: changed });
  });
  ctx.pricing.invalidate();
}
