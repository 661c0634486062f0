/**
 * The price book and settings in force, cached in memory. A cached value is reused for at
 * most `ttlMs` (default 1 s); `invalidate()` drops it at once (called after publishPriceBook /
 * updateSettings in this process). So another instance may price with the previous version for
 * up to ttlMs after a publish; every usage event records the version it was priced with.
 */
import type pg from 'pg';
import { validatePriceBook, type PriceBookDraft } from '../pricing/price-book.js';
import { toBigInt } from '../db/pg.js';

/** Settings row as the services use it (amounts in micro-credits, decimals as canonical text). */
export interface SettingsRecord {
  creditUsdValue: string;
  welcomeBonusMicroCredits: bigint;
  welcomeBonusExpiresAfterDays: number | null;
  referralRewardMicroCredits: bigint;
  referralMaxRewardsPerAccount: number;
  alertThresholds: number[];
}

/** The price book in force with its version and publication time. */
export interface ActivePriceBook {
  version: number;
  publishedAt: Date;
  book: PriceBookDraft;
  /** The stored (normalized input) form, for the API. */
  stored: { name: string; byokFeePercent: string; rules: unknown[] };
}

/** Cached pricing inputs. */
export interface PricingState {
  /** The newest published price book, or null when none was published yet. */
  priceBook(): Promise<ActivePriceBook | null>;
  settings(): Promise<SettingsRecord>;
  invalidate(): void;
}

/** Canonical decimal text of a pg numeric string ("0.0100000000" -> "0.01"). */
export function canonicalNumeric(text: string): string {
  if (!text.includes('.')) return text;
  const t = text.replace(/0+$/, '').replace(/\.$/, '');
  return t === '-0' ? '0' : t;
}

/**
 * Reads the settings row (the single row `id = 1` of `settings`): creditUsdValue as canonical
 * decimal text (USD per credit), the welcome bonus and referral reward in micro-credits, the
 * welcome bonus's expiry in days (null: never), the referral cap and the alert thresholds
 * (percentages).
 * @throws Error when the row is missing (the migrations, which insert it, were not applied), or
 *   what the query throws.
 */
export async function readSettings(db: pg.Pool | pg.PoolClient): Promise<SettingsRecord> {
  const { rows } = await db.query(
    `SELECT credit_usd_value::text AS credit_usd_value, welcome_bonus_micro_credits, welcome_bonus_expires_after_days,
            referral_reward_micro_credits, referral_max_rewards_per_account, alert_thresholds
       FROM settings WHERE id = 1`,
  );
  const r = rows[0];
  if (!r) throw new Error('settings row is missing (migrations not applied?)');
  return {
    creditUsdValue: canonicalNumeric(r.credit_usd_value as string),
    welcomeBonusMicroCredits: toBigInt(r.welcome_bonus_micro_credits),
    welcomeBonusExpiresAfterDays: r.welcome_bonus_expires_after_days as number | null,
    referralRewardMicroCredits: toBigInt(r.referral_reward_micro_credits),
    referralMaxRewardsPerAccount: r.referral_max_rewards_per_account as number,
    alertThresholds: r.alert_thresholds as number[],
  };
}

/**
 * Reads the newest price book version, re-validated from its stored form but not against the LLM
 * price catalog again (validatePriceBook `checkCatalog: false`): a catalog upgrade that no longer
 * prices a model one of its rules names must not stop the pricing of every other event; that
 * model's events are refused by priceUsage (BAD_USER_INPUT, field model).
 */
export async function readActivePriceBook(db: pg.Pool | pg.PoolClient): Promise<ActivePriceBook | null> {
  const { rows } = await db.query(
    `SELECT version, name, byok_fee_percent::text AS byok, rules, published_at FROM price_books ORDER BY version DESC LIMIT 1`,
  );
  const r = rows[0];
  if (!r) return null;
  const stored = { name: r.name as string, byokFeePercent: canonicalNumeric(r.byok as string), rules: r.rules as unknown[] };
  return { version: r.version as number, publishedAt: r.published_at as Date, book: validatePriceBook(stored, { checkCatalog: false }), stored };
}

/** A value loaded at most once per `ttlMs`; a failed load is forgotten so the next call retries. */
function ttlCache<T>(load: () => Promise<T>, ttlMs: number): { get(): Promise<T>; clear(): void } {
  let entry: { at: number; value: Promise<T> } | null = null;
  return {
    get() {
      const now = Date.now();
      if (!entry || now - entry.at > ttlMs) {
        const value = load();
        const mine = { at: now, value };
        value.catch(() => {
          if (entry === mine) entry = null;
        });
        entry = mine;
      }
      return entry.value;
    },
    clear() {
      entry = null;
    },
  };
}

/** Creates a cache over `pool` with the given time-to-live. */
export function createPricingState(pool: pg.Pool, ttlMs = 1000): PricingState {
  const book = ttlCache(() => readActivePriceBook(pool), ttlMs);
  const settings = ttlCache(() => readSettings(pool), ttlMs);
  return {
    priceBook: () => book.get(),
    settings: () => settings.get(),
    invalidate() {
      book.clear();
      settings.clear();
    },
  };
}
