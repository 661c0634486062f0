/**
 * voidGrant: an operator revokes a grant; its batch's unused remainder is removed (VOID entry)
 * and the batch becomes VOIDED. Idempotent: voiding a voided grant returns it unchanged.
 * Credit that had already expired is not voided: what is due on the account expires first
 * (applyExpiries: EXPIRE entries dated at each batch's expiresAt, as the expiry job would record
 * them), so a grant past its expiresAt is voided with nothing left (its batch stays EXPIRED).
 * Likewise a plan roll that is due and has not run yet runs first (plans.ts rollDuePeriodsFirst,
 * as before a charge, a hold, a switch or a cancel): a ROLLOVER roll trims, at the period start,
 * subscription credit as it stood then, so voiding that credit first (dated now) took what the
 * on-time roll would have trimmed, and the late roll then trimmed nothing: the ended period's
 * statement closed higher and the expiry showed as a void of the next period.
 */
import { freeText } from '../ledger/text-input.js';
import { withTransaction, toBigInt } from '../db/pg.js';
import { formatCredits } from '../ledger/credits.js';
import { actorOf, recordAuditEvent, type AuditActor } from '../audit/audit-log.js';
import { assert, badInput } from '../ledger/errors.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import { applyExpiries } from './expire-due.js';
import { rollDuePeriodsFirst } from './plans.js';

/**
 * Voids a grant.
 * @param grantId the grant's database id.
 * @param reason free text, 1..500 characters, kept on the grant.
 * @returns the grant id.
 * @throws LedgerError NOT_FOUND, BAD_USER_INPUT (empty reason).
 */
export async function voidGrant(ctx: ServiceContext, grantId: string, reason: string): Promise<string> {
  if (!reason.trim() || reason.length > 500) throw badInput('reason', 'must be 1 to 500 characters');
  freeText(reason, 'reason');
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lockOwner(tx, 'credit_grants', grantId, 'grant', ctx.clock());
    // A due plan roll first, as on time (module comment); only when the grant is not voided yet,
    // so a repeated void stays a no-op (looked up only when a roll is due, as grantCredits does).
    if (atx.periodRollDue()) {
      const voided = await tx.query('SELECT voided_at FROM credit_grants WHERE id = $1', [grantId]);
      if (!voided.rows[0]?.voided_at) await rollDuePeriodsFirst(atx);
    }
    await voidLockedGrant(atx, actorOf(ctx), grantId, reason);
    await atx.finish();
    return grantId;
  });
}

/** What {@link voidLockedGrant} did (amounts in micro-credits). */
export interface VoidedGrant {
  /** False when the grant was voided before (nothing written). */
  voidedNow: boolean;
  /** What this call took back (the batch's unused, unexpired remainder; 0 when not voidedNow). */
  voidedMicroCredits: bigint;
  /** The grant's amount as granted. */
  grantedMicroCredits: bigint;
}

/**
 * The rules of voidGrant (module comment) inside a transaction that holds the grant's account
 * lock (`atx`); the caller calls atx.finish(). Due expiries are applied first; the batch's
 * unused remainder is taken back by one VOID entry (note = reason), kept on the grant
 * (`voided_at`, `void_reason`, `voided_micro_credits`), and the audit trail records
 * `grant.voided` by `actor`. Shared by voidGrant (an operator) and the provider's refunds and
 * disputes (services/payment-reversals.ts), so a grant is voided the same way, once.
 * @param reason 1..500 characters (checked by the caller).
 * @returns what was done; a grant voided before is left unchanged (`voidedNow` false).
 * @throws Error (assertion) when `grantId` is not a grant of the locked account (the caller
 *   checks that first); what the queries throw, leaving the transaction to be rolled back.
 */
export async function voidLockedGrant(atx: AccountTx, actor: AuditActor, grantId: string, reason: string): Promise<VoidedGrant> {
  const tx = atx.tx;
  const grant = await tx.query('SELECT voided_at, amount_micro_credits FROM credit_grants WHERE id = $1 AND account_id = $2 FOR UPDATE', [grantId, atx.accountId]);
  assert(grant.rows[0], 'the grant belongs to the locked account');
  const grantedMicroCredits = toBigInt(grant.rows[0].amount_micro_credits);
  if (grant.rows[0].voided_at) return { voidedNow: false, voidedMicroCredits: 0n, grantedMicroCredits };
  // A batch past its expiresAt no longer pays: its rest expired then (dated at expiresAt, so the
  // billing period it expired in keeps it), whether or not the expiry job has come by. Voiding
  // it here instead (dated now) would put an expiry of an earlier period into this one, and
  // that period's opening total (periodCredits, credit alerts) would keep the expired credit.
  await applyExpiries(atx);
  const { rows } = await tx.query(
    `SELECT b.id AS batch_id, b.status, b.remaining_micro_credits FROM credit_batches b WHERE b.grant_id = $1`,
    [grantId],
  );
  const row = rows[0];
  const remaining = row.status === 'ACTIVE' ? toBigInt(row.remaining_micro_credits) : 0n;
  // What is taken back is kept on the grant: balance_figures takes it out of this period's
  // credit (periodCredits) in the statement that writes the VOID entry (atx.finish), which
  // cannot see that entry (migration period_credits_voids).
  await tx.query('UPDATE credit_grants SET voided_at = $2, void_reason = $3, voided_micro_credits = $4 WHERE id = $1', [grantId, atx.now, reason, remaining.toString()]);
  await tx.query(
    `UPDATE credit_batches SET remaining_micro_credits = 0, status = 'VOIDED', updated_at = $2 WHERE id = $1 AND status IN ('ACTIVE', 'EXHAUSTED')`,
    [row.batch_id, atx.now],
  );
  atx.addEntry({ type: 'VOID', amountMicroCredits: -remaining, batchId: row.batch_id as string, note: reason });
  await recordAuditEvent(tx, actor, {
    action: 'grant.voided',
    accountId: atx.accountId,
    subjectType: 'grant',
    subjectId: grantId,
    details: { reason, voidedAmount: formatCredits(remaining) },
  });
  return { voidedNow: true, voidedMicroCredits: remaining, grantedMicroCredits };
}
