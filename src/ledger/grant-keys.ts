/**
 * Idempotency keys of the grants the engine makes itself, and the rule that keeps client keys
 * out of their forms.
 *
 * Every grant, a client's (`grantCredits`) or the engine's own (welcome bonus, promo codes,
 * referrals, plan credit, pack purchases and auto top-ups), is unique per (account, idempotency
 * key) in `credit_grants`: one key space. A client grant under an engine key would take that key
 * first, and the engine's later grant would then be IDEMPOTENCY_CONFLICT (another payload) or a
 * replay that grants nothing (the same payload) while its redemption or purchase was still
 * recorded. So the engine's keys are built here, in forms a client may not send: `welcome-bonus`
 * (and `welcome-bonus:…`) and keys starting with `promo:`, `referral:`, `plan-period:` or
 * `payment:` (exact spelling; the unique key compares exactly). Keys already stored keep working:
 * the engine's rows keep their keys, and nothing is renamed (README "Idempotency").
 */
import { LedgerError } from './errors.js';

/** Key of the welcome bonus createAccount grants (one per account). */
export const WELCOME_BONUS_GRANT_KEY = 'welcome-bonus';

/** Key of the new account's referral reward (one referral per account). */
export const REFEREE_GRANT_KEY = 'referral:referee';

/** Key of a promo code's grant to the redeeming account (`code` normalized, upper case). */
export function promoGrantKey(code: string): string {
  return `promo:${code}`;
}

/** Key of the referrer's reward for referring the account `refereeAccountId` (database id). */
export function referrerGrantKey(refereeAccountId: string): string {
  return `referral:referrer:${refereeAccountId}`;
}

/** Key of a plan's credit for the billing period starting at `periodStart`. */
export function planPeriodGrantKey(planId: string, periodStart: Date): string {
  return `plan-period:${planId}:${periodStart.toISOString()}`;
}

/** Key of the grant of a paid payment (a pack purchase or an auto top-up; `paymentId` = payments.id). */
export function paymentGrantKey(paymentId: string): string {
  return `payment:${paymentId}`;
}

/**
 * Key of the grant that gives back the credit a dispute of payment `paymentId` took, once the
 * dispute was won (services/charge-reversal.ts applyDisputeWonLocked). Per payment, not per
 * dispute: a charge has one dispute (Stripe), and the credit is given back at most once whatever
 * the provider redelivers. Under the reserved `payment:` prefix.
 */
export function disputeWonGrantKey(paymentId: string): string {
  return `${paymentGrantKey(paymentId)}:dispute-won`;
}

/**
 * Key of the grant that carries on the credit of payment `paymentId` after a partial refund
 * brought the charge's cumulative refunded amount to `refundedCents` (USD cents) and took its
 * share back (services/charge-reversal.ts takeRefundedShare: the carrying grant is voided and its
 * rest less the share granted again under this key). Unique per payment: between two refund
 * failures the refunded amount only grows, so each partial refund that takes something has its
 * own; a refund failure lowers it (services/refund-failures.ts), so after `failuresApplied` of
 * them the key names that count too (`…:refund:<cents>:after-failures:<n>`; the form without it,
 * n = 0, is the one keys made before refund failures were applied have). Under the reserved
 * `payment:` prefix.
 */
export function partialRefundGrantKey(paymentId: string, refundedCents: bigint, failuresApplied = 0): string {
  const key = `${paymentGrantKey(paymentId)}:refund:${refundedCents.toString()}`;
  return failuresApplied > 0 ? `${key}:after-failures:${failuresApplied}` : key;
}

/**
 * Key of the grant that gives back the credit a refund of payment `paymentId` took once that
 * refund failed (services/refund-failures.ts applyRefundFailureLocked), `refundRef` the provider's
 * Refund id (a refund fails once). Under the reserved `payment:` prefix.
 */
export function refundFailedGrantKey(paymentId: string, refundRef: string): string {
  return `${paymentGrantKey(paymentId)}:refund-failed:${refundRef}`;
}

/** Prefixes of the engine's grant keys (see the module comment). */
const RESERVED_PREFIXES = ['welcome-bonus:', 'promo:', 'referral:', 'plan-period:', 'payment:'] as const;

/** True when `key` has a form the engine keeps for its own grants (exact spelling). */
function isReservedGrantKey(key: string): boolean {
  return key === WELCOME_BONUS_GRANT_KEY || RESERVED_PREFIXES.some((p) => key.startsWith(p));
}

/**
 * The refusal of a client grant key in a reserved form, or null when the key is the client's to use.
 * @param field the input field named in the error (`idempotencyKey`).
 * @returns a BAD_USER_INPUT LedgerError (extensions.field = `field`, reason RESERVED_KEY), or null.
 */
export function reservedGrantKeyError(key: string, field = 'idempotencyKey'): LedgerError | null {
  if (!isReservedGrantKey(key)) return null;
  return new LedgerError(
    'BAD_USER_INPUT',
    `${field}: "${key}" is reserved for the engine's own grants (welcome-bonus, and keys starting with welcome-bonus:, promo:, referral:, plan-period: or payment:); choose another key`,
    { field, reason: 'RESERVED_KEY' },
  );
}
