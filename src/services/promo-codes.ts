/**
 * Promo codes (issue #5): an operator creates a code worth N credits; each account may redeem
 * it once and receives the credit as a FREE batch (source PROMO_CODE, reference = the code),
 * expiring `expiresAfterDays` after redemption when set. Refused after `validUntil` (at the
 * redeeming account's "now") or once `maxRedemptions` is reached. Redemptions of one code are
 * serialized by a row lock on the code, and a CHECK constraint keeps `redemptions <=
 * maxRedemptions` even if code were wrong, so racing accounts cannot over-redeem.
 * Test-mode accounts redeem under the same rules against their own count (`testRedemptions`,
 * at most maxRedemptions of its own): a rehearsal never uses up a slot meant for a live customer.
 */
import { withTransaction, toBigInt } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { formatCredits } from '../ledger/credits.js';
import { AccountTx } from './account-tx.js';
import { applyGrant, type GrantResult } from './grant-credits.js';
import { rollDuePeriodsFirst } from './plans.js';
import type { ServiceContext } from './context.js';
import { promoGrantKey } from '../ledger/grant-keys.js';

const CODE_RE = /^[A-Z0-9_-]{3,64}$/;
const DAY_MS = 86_400_000;

/** A promo code as stored. */
export interface PromoCodeView {
  code: string;
  creditsMicroCredits: bigint;
  expiresAfterDays: number | null;
  maxRedemptions: number | null;
  /** Redemptions by live accounts (at most maxRedemptions). */
  redemptions: number;
  /** Redemptions by test-mode accounts, counted apart (at most maxRedemptions of their own). */
  testRedemptions: number;
  validUntil: Date | null;
}

/** Normalizes a code (trimmed, upper case) or throws BAD_USER_INPUT. */
export function normalizePromoCode(code: string): string {
  const c = typeof code === 'string' ? code.trim().toUpperCase() : '';
  if (!CODE_RE.test(c)) throw badInput('code', 'must be 3 to 64 characters of A-Z, 0-9, "_" or "-"');
  return c;
}

function toView(r: Record<string, unknown>): PromoCodeView {
  return {
    code: r.code as string,
    creditsMicroCredits: toBigInt(r.credits_micro_credits),
    expiresAfterDays: (r.expires_after_days as number | null) ?? null,
    maxRedemptions: (r.max_redemptions as number | null) ?? null,
    redemptions: r.redemptions as number,
    testRedemptions: r.test_redemptions as number,
    validUntil: (r.valid_until as Date | null) ?? null,
  };
}

/** Whether a stored code has exactly the terms of a create command. */
function sameTerms(existing: PromoCodeView, cmd: CreatePromoCodeCommand): boolean {
  return (
    existing.creditsMicroCredits === cmd.creditsMicroCredits &&
    existing.expiresAfterDays === cmd.expiresAfterDays &&
    existing.maxRedemptions === cmd.maxRedemptions &&
    (existing.validUntil?.getTime() ?? null) === (cmd.validUntil?.getTime() ?? null)
  );
}

/** createPromoCode's input (credits in micro-credits). */
export interface CreatePromoCodeCommand {
  code: string;
  creditsMicroCredits: bigint;
  expiresAfterDays: number | null;
  maxRedemptions: number | null;
  validUntil: Date | null;
}

/**
 * Creates a promo code. Creating the same code again with the same terms returns it
 * (idempotent, also once its validUntil has passed); with other terms it is IDEMPOTENCY_CONFLICT.
 * A new code's `validUntil` must be after the deployment's now (`ctx.clock()`, the clock its
 * `createdAt` is dated by): a code is shared by every account, so no one account's test clock
 * applies, and one already past could never be redeemed by a live account while its name would
 * be taken for good (there is no edit). To rehearse a code's end on a test clock, give it a future
 * validUntil and advance the clock past it.
 * @throws LedgerError BAD_USER_INPUT (code format, credits <= 0, days/max not positive,
 *   validUntil not in the future), IDEMPOTENCY_CONFLICT.
 */
export async function createPromoCode(
  ctx: ServiceContext,
  cmd: CreatePromoCodeCommand,
): Promise<PromoCodeView> {
  const code = normalizePromoCode(cmd.code);
  if (cmd.creditsMicroCredits <= 0n) throw badInput('credits', 'must be greater than 0');
  if (cmd.expiresAfterDays !== null && (!Number.isInteger(cmd.expiresAfterDays) || cmd.expiresAfterDays < 1 || cmd.expiresAfterDays > 3650)) {
    throw badInput('expiresAfterDays', 'must be 1 to 3650');
  }
  if (cmd.maxRedemptions !== null && (!Number.isInteger(cmd.maxRedemptions) || cmd.maxRedemptions < 1)) throw badInput('maxRedemptions', 'must be at least 1');
  const now = ctx.clock();
  if (cmd.validUntil && cmd.validUntil.getTime() <= now.getTime()) {
    // A retry of a create whose validUntil has passed since is still a replay.
    const { rows } = await ctx.pool.query('SELECT * FROM promo_codes WHERE code = $1', [code]);
    if (rows[0] && sameTerms(toView(rows[0]), cmd)) return toView(rows[0]);
    throw badInput('validUntil', `must be in the future (now is ${now.toISOString()}): a code past its validUntil can never be redeemed`);
  }
  // The code and its audit row commit together; a replay of the same terms writes neither.
  const created = await withTransaction(ctx.pool, async (tx) => {
    const inserted = await tx.query(
      `INSERT INTO promo_codes (code, credits_micro_credits, expires_after_days, max_redemptions, valid_until, created_at)
       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING RETURNING *`,
      [code, cmd.creditsMicroCredits.toString(), cmd.expiresAfterDays, cmd.maxRedemptions, cmd.validUntil, now],
    );
    if (!inserted.rows[0]) return null;
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'promo_code.created',
      subjectType: 'promo_code',
      subjectId: code,
      details: {
        code,
        credits: formatCredits(cmd.creditsMicroCredits),
        expiresAfterDays: cmd.expiresAfterDays,
        maxRedemptions: cmd.maxRedemptions,
        validUntil: cmd.validUntil?.toISOString() ?? null,
      },
    });
    return toView(inserted.rows[0]);
  });
  if (created) return created;
  const existing = toView((await ctx.pool.query('SELECT * FROM promo_codes WHERE code = $1', [code])).rows[0]);
  if (!sameTerms(existing, cmd)) throw new LedgerError('IDEMPOTENCY_CONFLICT', `promo code ${code} already exists with other terms`);
  return existing;
}

/** Reads a promo code, or null. */
export async function findPromoCode(ctx: ServiceContext, code: string): Promise<PromoCodeView | null> {
  const { rows } = await ctx.pool.query('SELECT * FROM promo_codes WHERE code = $1', [code.trim().toUpperCase()]);
  return rows[0] ? toView(rows[0]) : null;
}

/**
 * Redeems a promo code for an account, in one transaction. A live account takes one of the
 * code's `redemptions`, a test-mode account one of its `testRedemptions` (each bounded by
 * maxRedemptions on its own). A plan roll that is due runs first (plans.ts rollDuePeriodsFirst,
 * as before every grant: grant-credits.ts).
 * @returns the FREE grant.
 * @throws LedgerError NOT_FOUND (account or code), BAD_USER_INPUT (already redeemed by this
 *   account, past validUntil, no redemptions left for the account's mode).
 */
export async function redeemPromoCode(ctx: ServiceContext, accountId: string, rawCode: string): Promise<GrantResult> {
  const code = normalizePromoCode(rawCode);
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const { rows } = await tx.query('SELECT * FROM promo_codes WHERE code = $1 FOR UPDATE', [code]);
    if (!rows[0]) throw new LedgerError('NOT_FOUND', `promo code ${code} not found`);
    const promo = toView(rows[0]);
    const prior = await tx.query('SELECT 1 FROM promo_redemptions WHERE code = $1 AND account_id = $2', [code, accountId]);
    if (prior.rows[0]) throw new LedgerError('BAD_USER_INPUT', `promo code ${code} was already redeemed by this account`, { reason: 'ALREADY_REDEEMED' });
    if (promo.validUntil && atx.now.getTime() >= promo.validUntil.getTime()) {
      throw new LedgerError('BAD_USER_INPUT', `promo code ${code} expired at ${promo.validUntil.toISOString()}`, { reason: 'EXPIRED' });
    }
    const used = atx.testMode ? promo.testRedemptions : promo.redemptions;
    if (promo.maxRedemptions !== null && used >= promo.maxRedemptions) {
      const message = atx.testMode
        ? `promo code ${code} has no test-mode redemptions left (test-mode accounts have maxRedemptions of their own, apart from live ones)`
        : `promo code ${code} has no redemptions left`;
      throw new LedgerError('BAD_USER_INPUT', message, { reason: 'EXHAUSTED' });
    }
    // A due plan roll first, as on time: its grant repays debt before this one (grant-credits.ts).
    await rollDuePeriodsFirst(atx);
    const grant = await applyGrant(atx, {
      amountMicroCredits: promo.creditsMicroCredits,
      type: 'FREE',
      source: 'PROMO_CODE',
      expiresAt: promo.expiresAfterDays ? new Date(atx.now.getTime() + promo.expiresAfterDays * DAY_MS) : null,
      reference: code,
      idempotencyKey: promoGrantKey(code),
    });
    await tx.query(
      atx.testMode
        ? 'UPDATE promo_codes SET test_redemptions = test_redemptions + 1 WHERE code = $1'
        : 'UPDATE promo_codes SET redemptions = redemptions + 1 WHERE code = $1',
      [code],
    );
    await tx.query('INSERT INTO promo_redemptions (id, code, account_id, grant_id, created_at) VALUES (gen_random_uuid(), $1, $2, $3, $4)', [
      code,
      accountId,
      grant.grantId,
      atx.now,
    ]);
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'promo_code.redeemed',
      accountId,
      subjectType: 'grant',
      subjectId: grant.grantId,
      details: { code, credits: formatCredits(promo.creditsMicroCredits) },
    });
    await atx.finish();
    return grant;
  });
}
