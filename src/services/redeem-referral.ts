/**
 * redeemReferral (issue #5, contract Mutation.redeemReferral): a new account redeems an
 * existing account's referral code. Both get Settings.referralRewardCredits as FREE credit
 * (source REFERRAL, each grant's reference = the other account's id), except that a referrer
 * already rewarded referralMaxRewardsPerAccount times gets nothing more (the new account is
 * still rewarded, and its grant's note says so). An account redeems at most one referral
 * (unique key), never its own code, and only a code of an account created before it, of the
 * same mode: a test-mode account (its own clock, made by the platform to rehearse) and a live
 * one never reward each other, so rehearsals earn no live account real credit or use up its
 * rewards, and no live account gets real credit for a test-mode referral.
 * Both accounts are locked in id order (no deadlock between crossing redemptions).
 */
import { withTransaction, toBigInt } from '../db/pg.js';
import { formatCredits } from '../ledger/credits.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { AccountTx } from './account-tx.js';
import { applyGrant, type GrantResult } from './grant-credits.js';
import { rollDuePeriodsFirst } from './plans.js';
import type { ServiceContext } from './context.js';
import { REFEREE_GRANT_KEY, referrerGrantKey } from '../ledger/grant-keys.js';

/** Result: the new account's grant and whether the referrer was rewarded too. */
export interface ReferralResult extends GrantResult {
  referrerRewarded: boolean;
}

/**
 * Redeems a referral code for `accountId` (the new account).
 * @param toReference turns an account id into the reference text stored on the grants
 *   (the API passes the global id).
 * @throws LedgerError NOT_FOUND (account, code), BAD_USER_INPUT (own code, test-mode and live
 *   accounts: reason MODE_MISMATCH, already redeemed a referral, referrer not older than the new
 *   account, reward set to 0).
 */
export async function redeemReferral(
  ctx: ServiceContext,
  accountId: string,
  rawCode: string,
  toReference: (accountId: string) => string = (id) => id,
): Promise<ReferralResult> {
  const code = typeof rawCode === 'string' ? rawCode.trim().toUpperCase() : '';
  if (!/^[A-Z0-9]{4,32}$/.test(code)) throw badInput('code', 'is not a referral code');
  return withTransaction(ctx.pool, async (tx) => {
    const found = await tx.query('SELECT id FROM accounts WHERE referral_code = $1', [code]);
    const referrerId = found.rows[0]?.id as string | undefined;
    if (!referrerId) throw new LedgerError('NOT_FOUND', 'referral code not found');
    if (referrerId === accountId) throw new LedgerError('BAD_USER_INPUT', 'an account cannot redeem its own referral code', { reason: 'SELF_REFERRAL' });
    const wallNow = ctx.clock();
    const [first, second] = [accountId, referrerId].sort();
    const locked = new Map<string, AccountTx>();
    for (const id of [first!, second!]) locked.set(id, await AccountTx.lock(tx, id, wallNow));
    const referee = locked.get(accountId)!;
    const referrer = locked.get(referrerId)!;
    if (referee.testMode !== referrer.testMode) {
      throw new LedgerError(
        'BAD_USER_INPUT',
        referee.testMode
          ? "a test-mode account can only redeem another test-mode account's referral code"
          : "a live account cannot redeem a test-mode account's referral code",
        { reason: 'MODE_MISMATCH' },
      );
    }
    const prior = await tx.query('SELECT referrer_account_id FROM referrals WHERE referee_account_id = $1', [accountId]);
    if (prior.rows[0]) throw new LedgerError('BAD_USER_INPUT', 'this account has already redeemed a referral', { reason: 'ALREADY_REFERRED' });
    if (referrer.createdAt.getTime() >= referee.createdAt.getTime()) {
      throw new LedgerError('BAD_USER_INPUT', 'only a newer account can redeem a referral code', { reason: 'NOT_NEWER' });
    }
    const s = await tx.query('SELECT referral_reward_micro_credits, referral_max_rewards_per_account FROM settings WHERE id = 1');
    const reward = toBigInt(s.rows[0].referral_reward_micro_credits);
    const cap = s.rows[0].referral_max_rewards_per_account as number;
    if (reward <= 0n) throw new LedgerError('BAD_USER_INPUT', 'referral rewards are turned off (referralRewardCredits is 0)', { reason: 'DISABLED' });
    const count = await tx.query('SELECT COUNT(*)::int AS n FROM referrals WHERE referrer_account_id = $1 AND referrer_rewarded', [referrerId]);
    const referrerRewarded = (count.rows[0].n as number) < cap;
    // A due plan roll first on each account granted, as on time: its grant repays debt before
    // the reward (grant-credits.ts).
    await rollDuePeriodsFirst(referee);
    const grant = await applyGrant(referee, {
      amountMicroCredits: reward,
      type: 'FREE',
      source: 'REFERRAL',
      expiresAt: null,
      reference: toReference(referrerId),
      idempotencyKey: REFEREE_GRANT_KEY,
    });
    const note = referrerRewarded ? null : `referrer not rewarded: it already received the maximum of ${cap} referral rewards`;
    if (note) await tx.query('UPDATE credit_grants SET note = $2 WHERE id = $1', [grant.grantId, note]);
    if (referrerRewarded) {
      await rollDuePeriodsFirst(referrer);
      await applyGrant(referrer, {
        amountMicroCredits: reward,
        type: 'FREE',
        source: 'REFERRAL',
        expiresAt: null,
        reference: toReference(accountId),
        idempotencyKey: referrerGrantKey(accountId),
      });
    }
    await tx.query(
      'INSERT INTO referrals (id, referrer_account_id, referee_account_id, referrer_rewarded, created_at) VALUES (gen_random_uuid(), $1, $2, $3, $4)',
      [referrerId, accountId, referrerRewarded, referee.now],
    );
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'referral.redeemed',
      accountId,
      subjectType: 'grant',
      subjectId: grant.grantId,
      details: { code, referrerAccountId: referrerId, reward: formatCredits(reward), referrerRewarded },
    });
    await referee.finish();
    if (referrerRewarded) await referrer.finish();
    return { ...grant, referrerRewarded };
  });
}
