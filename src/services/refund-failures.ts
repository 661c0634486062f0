/**
 * A refund that FAILED gives back the credit it took. A refund of a SUCCEEDED payment's charge
 * takes back the refunded share of its credit, or voids what remains when it is full
 * (services/charge-reversal.ts). The card issuer may later fail to return the money (a closed,
 * lost or expired card): the provider returns it to the platform's balance and reports the
 * refund as failed (Stripe: `charge.refund.updated` with the Refund's `status` `failed`, and
 * `refund.failed` on API versions from 2024-10-28.acacia; https://docs.stripe.com/refunds). The
 * customer has then paid and lost the credit; this gives it back. A refund CANCELED after it was
 * made (Stripe: `status` `canceled`; some card refunds can be canceled from the Dashboard for a
 * while, and refunds waiting for customer action through the API) is the same case: the money
 * never left the platform. It is applied by the same rules (src/payments/stripe.ts
 * REFUND_MONEY_BACK_STATUSES); "failure" below means either.
 *
 * Rules ({@link applyRefundFailureLocked}), in ONE transaction under the account lock, like the
 * other reversals (services/payment-reversals.ts applyReversalEvent finds the payment by the
 * Refund's PaymentIntent, among SUCCEEDED payments, and checks mode, currency and amount):
 * - once per Refund id (`payment_refund_failures`, primary key `refund_ref`): a redelivered
 *   failure, or a second event type for the same failure, is `unchanged`;
 * - the failed refund's amount F is taken out of the refunded amount: refunded_cents R becomes
 *   R − F (Stripe's Charge `amount_refunded` no longer counts a failed refund's money, which went
 *   back to the platform), and with it what the payment's refunds have taken of the credit:
 *   they had taken T = refund_taken_micro_credits (partial refunds) plus, when a full refund
 *   voided the rest, what that void took (reversed_micro_credits; reversed_at is cleared: the
 *   charge is no longer refunded in full). After the failure they keep
 *   K = min(floor(G × (R − F) / C), T) — the share of what stays refunded (G the pack's credit in
 *   micro-credits, C the amount in cents), never more than they took — and give back T − K.
 *   Without spent credit that is exactly floor(G×R/C) − floor(G×(R−F)/C) for a partial refund,
 *   and what the void took (plus the partial takes beyond the remaining share) for a full one.
 *   Credit that was already spent when a refund came was never taken, so it does not come back;
 *   refund_taken_micro_credits becomes K;
 * - what comes back is granted as a NEW grant: type `PAID`, the source (`PURCHASE` /
 *   `AUTO_TOP_UP`) and batch expiry of the grant that carries the payment's credit
 *   (`live_grant_id`), reference the payment id, idempotency key
 *   `payment:<id>:refund-failed:<refund id>` (ledger/grant-keys.ts refundFailedGrantKey),
 *   `grant.created` in the audit trail. When that grant still has unused credit (a partial refund's
 *   rest), it is voided (a `VOID` entry) and its rest is part of the new grant, so one grant keeps
 *   carrying the payment's credit (a later refund takes its share from it, a full refund or a
 *   dispute voids it). The statement shows the `VOID` of the rest (if any) and the `GRANT`;
 * - nothing is given back (the refunded amount is still lowered; answered `recorded`, logged)
 *   when the refunds took nothing beyond the remaining share, or the credit's expiry has passed
 *   (it would have expired meanwhile);
 * - nothing changes but the failure's record (answered `recorded`, logged as a warning) when the
 *   payment was disputed (the dispute's outcome decides its credit; an operator checks it), or
 *   when the failed refund was never applied: its refund was created after the latest refund event
 *   applied (payments.refund_event_at, in the provider's time; refunded_at where a server of an
 *   older release applied the refund without it), or it is more than the refunded
 *   amount (its `charge.refunded` has not come yet; when it comes, it is older than the failure
 *   and so changes nothing);
 * - nothing changes but the failure's record either (answered `recorded`, logged) when a refund
 *   event made AFTER the failure (its `created` strictly later than the failure's) was applied
 *   before it (Stripe delivers in any order): that event's cumulative amount already left the
 *   failed refund out, and the share it took was of that amount, so lowering the refunded amount
 *   again would give the failed refund's credit back twice (a new refund larger than the failed
 *   one); a new refund smaller than the failed one waits for the failure instead
 *   (services/charge-reversal.ts, `retry_later`);
 * - a `charge.refunded` made at or before the latest failure applied (payments.refund_failed_event_at,
 *   the provider's time; Stripe's are whole seconds) is stale — redelivered, or delivered late — and
 *   changes nothing: its cumulative amount may include the failed refund, which would otherwise be
 *   taken back again (services/charge-reversal.ts isStaleRefund). A refund made after the failure
 *   raises the refunded amount again and takes its share as usual (its grant key names how many
 *   failures came before: ledger/grant-keys.ts partialRefundGrantKey);
 * - a plan roll that is due runs first when credit is given back (plans.ts rollDuePeriodsFirst, as
 *   before every grant: services/grant-credits.ts);
 * - auto top-up paused by a full refund **stays paused**: an operator decides whether the card is
 *   charged again (setAutoTopUp);
 * - a failure of a charge no SUCCEEDED payment has is not applicable (services/payment-reversals.ts).
 */
import type { AuditActor } from '../audit/audit-log.js';
import { toBigInt } from '../db/pg.js';
import { formatCredits, minBig } from '../ledger/credits.js';
import type { CreditType } from '../ledger/drawdown.js';
import { assert } from '../ledger/errors.js';
import { refundFailedGrantKey } from '../ledger/grant-keys.js';
import { usdToCents, type ChargeReversalEvent } from '../payments/provider.js';
import type { AccountTx } from './account-tx.js';
import type { LockedReversal, ReversalEventResult } from './charge-reversal.js';
import type { ServiceContext } from './context.js';
import { applyExpiries } from './expire-due.js';
import { rollDuePeriodsFirst } from './plans.js';
import { applyGrant, auditGrantCreated, type GrantSource } from './grant-credits.js';
import type { PaymentRow } from './purchase-pack.js';
import { voidLockedGrant } from './void-grant.js';

/** What applying a failed refund did (amounts in micro-credits, cents in USD cents). */
export interface FailedRefund {
  /** The provider's Refund id. */
  refundRef: string;
  /** The failed refund's amount, in cents. */
  amountCents: bigint;
  /**
   * Why the refunded amount was not lowered: `disputed` (the payment was disputed), `not_applied`
   * (the refund was never applied), `superseded` (a refund event made after the failure was applied
   * first: its cumulative amount already left the failed refund out); null when it was.
   */
  notApplied: 'disputed' | 'not_applied' | 'superseded' | null;
  /** The payment's refunded cents before and after. */
  refundedBeforeCents: bigint;
  refundedAfterCents: bigint;
  /** What came back (0: nothing; `notRestored` says why when something was owed). */
  restoredMicroCredits: bigint;
  /** Why nothing came back though the refunds had taken more than the remaining share: `expired` (the credit's expiry has passed). */
  notRestored: 'expired' | null;
  /** The grant that carries the payment's credit now (null: no grant was made). */
  grantId: string | null;
  /** The unused rest of the previous carrying grant, voided and made part of `grantId`. */
  carriedMicroCredits: bigint;
}

/**
 * Applies the failure of refund `event.refundRef` (`event.kind` `refund_failed`; `event.amountCents`
 * the refund's own amount) to the SUCCEEDED payment `payment` inside the transaction of `atx`, which
 * holds the payment's account lock (the caller checked services/charge-reversal.ts
 * reversalMismatchOf and calls atx.finish()). Rules: the module comment.
 * @returns what was written (LockedReversal with `failure`; `recorded` false when this refund's
 *   failure was applied before).
 * @throws LedgerError BAD_USER_INPUT reason BALANCE_LIMIT when the give-back would pass the balance
 *   limit (applyGrant; nothing is written: the provider delivers the event again).
 */
export async function applyRefundFailureLocked(atx: AccountTx, actor: AuditActor, payment: PaymentRow, event: ChargeReversalEvent): Promise<LockedReversal> {
  const tx = atx.tx;
  const refundRef = event.refundRef;
  assert(event.kind === 'refund_failed' && refundRef, 'a refund failure names its refund (payment-reversals checks it)');
  const cents = usdToCents(payment.amountUsd);
  const { rows } = await tx.query(
    `SELECT refunded_cents, COALESCE(refund_event_at, refunded_at) AS refund_event_at, refund_event_at AS provider_refund_event_at, disputed_at, reversed_at, reversed_micro_credits, refund_taken_micro_credits, grant_id,
            COALESCE(live_grant_id, grant_id) AS live_grant_id
       FROM payments WHERE id = $1 FOR UPDATE`,
    [payment.id],
  );
  const current = rows[0];
  assert(current && current.grant_id, 'a SUCCEEDED payment has its grant');
  const refundedBefore = toBigInt(current.refunded_cents);
  const unchanged: LockedReversal = { recorded: false, voided: null, refunded: refundedBefore, grantedMicroCredits: 0n, pausedAutoTopUp: false };
  const failedAt = event.createdAt ?? atx.now;
  const inserted = await tx.query(
    `INSERT INTO payment_refund_failures (refund_ref, payment_id, event_id, event_type, amount_cents, applied, failed_at, received_at)
     VALUES ($1, $2, $3, $4, $5, false, $6, $7) ON CONFLICT (refund_ref) DO NOTHING RETURNING 1`,
    [refundRef, payment.id, event.eventId, event.eventType, event.amountCents.toString(), failedAt, atx.now],
  );
  if (!inserted.rows[0]) return unchanged;
  // From now on a refund event made at or before this failure is stale (charge-reversal.ts isStaleRefund).
  await tx.query('UPDATE payments SET refund_failed_event_at = GREATEST(refund_failed_event_at, $2), updated_at = $3 WHERE id = $1', [payment.id, failedAt, atx.now]);
  const grant = await tx.query('SELECT amount_micro_credits FROM credit_grants WHERE id = $1', [current.grant_id]);
  const grantedMicroCredits = toBigInt(grant.rows[0].amount_micro_credits);
  const failure: FailedRefund = {
    refundRef,
    amountCents: event.amountCents,
    notApplied: null,
    refundedBeforeCents: refundedBefore,
    refundedAfterCents: refundedBefore,
    restoredMicroCredits: 0n,
    notRestored: null,
    grantId: null,
    carriedMicroCredits: 0n,
  };
  const base = { recorded: true, voided: null, refunded: refundedBefore, grantedMicroCredits, pausedAutoTopUp: false };
  if (current.disputed_at !== null) return { ...base, failure: { ...failure, notApplied: 'disputed' } };
  const refundEventAt = current.refund_event_at === null ? null : new Date(current.refund_event_at as Date);
  const applied =
    event.amountCents <= refundedBefore && refundEventAt !== null && (!event.refundCreatedAt || event.refundCreatedAt.getTime() <= refundEventAt.getTime());
  if (!applied) return { ...base, failure: { ...failure, notApplied: 'not_applied' } };
  // A refund event applied since was made after this failure (events come in any order): its
  // cumulative amount already left the failed refund out, and its share was taken on it.
  // (In the provider's time only: refunded_at, on rows an older release refunded, is creditpool's.)
  const providerRefundEventAt = current.provider_refund_event_at === null ? null : new Date(current.provider_refund_event_at as Date);
  if (event.createdAt && providerRefundEventAt !== null && event.createdAt.getTime() < providerRefundEventAt.getTime()) {
    return { ...base, failure: { ...failure, notApplied: 'superseded' } };
  }

  const refundedAfter = refundedBefore - event.amountCents;
  const taken = toBigInt(current.refund_taken_micro_credits) + (current.reversed_at !== null ? toBigInt(current.reversed_micro_credits) : 0n);
  const kept = minBig((grantedMicroCredits * refundedAfter) / cents, taken);
  const owed = taken - kept;
  await tx.query(
    `UPDATE payments SET refunded_cents = $2, refunded_at = CASE WHEN $2::bigint = 0 THEN NULL ELSE refunded_at END, refund_taken_micro_credits = $3,
            reversed_at = NULL, reversed_micro_credits = NULL, updated_at = $4 WHERE id = $1`,
    [payment.id, refundedAfter.toString(), kept.toString(), atx.now],
  );
  await tx.query('UPDATE payment_refund_failures SET applied = true WHERE refund_ref = $1', [refundRef]);
  const done = { ...failure, refundedAfterCents: refundedAfter };
  const result = { ...base, refunded: refundedAfter };
  if (owed === 0n) return { ...result, failure: done };

  // A due plan roll first, as before every grant (grant-credits.ts): the give-back repays debt
  // only after the roll's grant did, as on time.
  await rollDuePeriodsFirst(atx);
  // What is due to expire goes first (as voidLockedGrant would): only the unexpired rest is carried.
  await applyExpiries(atx);
  const liveGrantId = current.live_grant_id as string;
  const live = (
    await tx.query(
      `SELECT g.voided_at, g.source, b.status, b.remaining_micro_credits, b.expires_at
         FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.id = $1 AND g.account_id = $2 FOR UPDATE OF g`,
      [liveGrantId, atx.accountId],
    )
  ).rows[0];
  assert(live, "the payment's live grant belongs to the locked account");
  const expiresAt = live.expires_at === null ? null : new Date(live.expires_at as Date);
  if (expiresAt && expiresAt.getTime() <= atx.now.getTime()) return { ...result, failure: { ...done, notRestored: 'expired' } };
  const rest = live.voided_at === null && live.status === 'ACTIVE' ? toBigInt(live.remaining_micro_credits) : 0n;
  const reason = `refund ${refundRef} of payment ${payment.id} failed (charge ${event.providerRef}, event ${event.eventId}): the money came back, so the credit the refund took comes back`;
  if (rest > 0n) {
    const voided = await voidLockedGrant(atx, actor, liveGrantId, `${reason}; the rest of this grant is granted again with it`);
    assert(voided.voidedNow && voided.voidedMicroCredits === rest, 'the live grant is voided with what it had left');
  }
  const cmd = {
    amountMicroCredits: rest + owed,
    type: 'PAID' as CreditType,
    source: live.source as GrantSource,
    expiresAt,
    reference: payment.id,
    idempotencyKey: refundFailedGrantKey(payment.id, refundRef),
  };
  const given = await applyGrant(atx, cmd);
  assert(!given.replayed, 'a refund fails once: its failure row was new');
  await auditGrantCreated(tx, actor, atx.accountId, given.grantId, cmd, `${reason}: ${formatCredits(owed)} given back${rest > 0n ? `, with ${formatCredits(rest)} left of grant ${liveGrantId}` : ''}`);
  await tx.query('UPDATE payments SET live_grant_id = $2 WHERE id = $1', [payment.id, given.grantId]);
  await tx.query('UPDATE payment_refund_failures SET restored_micro_credits = $2, grant_id = $3 WHERE refund_ref = $1', [refundRef, owed.toString(), given.grantId]);
  return { ...result, failure: { ...done, restoredMicroCredits: owed, grantId: given.grantId, carriedMicroCredits: rest } };
}

/**
 * Logs, after the commit, what {@link applyRefundFailureLocked} did (warn: a refund failed; the
 * figures, and why nothing came back when nothing did) and returns the event's result:
 * `restored` when credit came back, else `recorded`.
 */
export function reportRefundFailure(ctx: ServiceContext, logContext: Record<string, unknown> & { paymentId: string }, failure: FailedRefund): ReversalEventResult {
  const figures = {
    ...logContext,
    refundRef: failure.refundRef,
    failedRefundCents: failure.amountCents.toString(),
    refundedBeforeCents: failure.refundedBeforeCents.toString(),
    refundedAfterCents: failure.refundedAfterCents.toString(),
    restoredMicroCredits: failure.restoredMicroCredits.toString(),
    givenBackGrantId: failure.grantId,
    notApplied: failure.notApplied,
    notRestored: failure.notRestored,
  };
  if (failure.notApplied === 'disputed') {
    ctx.log?.warn(figures, 'payment reversal: a refund of a disputed payment failed; recorded, no credit changed (check the dispute and the refund)');
  } else if (failure.notApplied === 'superseded') {
    ctx.log?.warn(figures, 'payment reversal: a refund failed whose money a later refund event already left out (delivered after it); recorded, nothing changed');
  } else if (failure.notApplied) {
    ctx.log?.warn(figures, 'payment reversal: a refund failed that was never applied to its payment; recorded, nothing changed');
  } else {
    ctx.log?.warn(figures, 'payment reversal: a refund failed or was canceled and its money came back; the credit it took is given back (auto top-up stays paused: setAutoTopUp re-enables it)');
  }
  return {
    result: failure.restoredMicroCredits > 0n ? 'restored' : 'recorded',
    paymentId: logContext.paymentId,
    voidedMicroCredits: 0n,
    restoredMicroCredits: failure.restoredMicroCredits,
  };
}
