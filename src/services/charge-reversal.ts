/**
 * The rules of taking back a payment's credit when its charge was refunded or disputed, inside a
 * transaction that holds the payment's account lock. Shared by the two places a reversal meets
 * its payment, so both apply it the same way, once:
 * - services/payment-reversals.ts applyReversalEvent: the provider's event about a payment that
 *   is SUCCEEDED already (the module comment there has the rules);
 * - services/purchase-pack.ts settlePayment: a payment settled SUCCEEDED after the provider had
 *   already reported a refund or dispute of its charge (kept in `early_payment_reversals`, see
 *   {@link applyEarlyReversals}), in the transaction that grants it.
 * This module imports nothing from purchase-pack.ts but a type, so settlePayment can use it.
 */
import { SYSTEM_ACTOR, recordAuditEvent, type AuditActor } from '../audit/audit-log.js';
import { toBigInt, type Tx } from '../db/pg.js';
import { formatCredits, minBig } from '../ledger/credits.js';
import { assert } from '../ledger/errors.js';
import { disputeWonGrantKey, partialRefundGrantKey } from '../ledger/grant-keys.js';
import { usdToCents, type ChargeReversalEvent } from '../payments/provider.js';
import type { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import type { PaymentRow } from './purchase-pack.js';
import { voidLockedGrant, type VoidedGrant } from './void-grant.js';
import { applyGrant, auditGrantCreated, type GrantSource } from './grant-credits.js';
import { applyExpiries } from './expire-due.js';
import { rollDuePeriodsFirst } from './plans.js';
import type { CreditType } from '../ledger/drawdown.js';
import { applyRefundFailureLocked, reportRefundFailure, type FailedRefund } from './refund-failures.js';

/**
 * What applying a refund or dispute did (services/payment-reversals.ts applyReversalEvent):
 * - `reversed`: this call took back the grant's unused remainder (`voidedMicroCredits`), or a
 *   partial refund's share of it ({@link takeRefundedShare});
 * - `recorded`: this call recorded a refund or dispute and took nothing back (a partial refund
 *   whose share grew by nothing or found nothing left, a dispute whose grant had been taken back
 *   before);
 * - `unchanged`: the event was applied (or kept) before (redelivered, or older than one applied): nothing written;
 * - `kept`: no SUCCEEDED payment has the charge yet; the event is kept (`early_payment_reversals`)
 *   and applied when a payment is settled SUCCEEDED with that charge (or pruned after
 *   EARLY_REVERSAL_RETENTION_MS when none is);
 * - `unknown_payment`: the event names no charge reference (or not a usable refund or dispute);
 * - `mismatch`: the charge's livemode, currency or amount is not the payment's (logged as an error);
 * - `restored`: this call applied a won dispute and gave back what the dispute took
 *   (`restoredMicroCredits`; {@link applyDisputeWonLocked}), or applied a failed refund and gave
 *   back what the refunds took beyond the share of what stays refunded (services/refund-failures.ts).
 *   A won dispute or a failed refund that gives nothing back (refunded in full, nothing was taken,
 *   the credit's expiry passed, a disputed payment, a refund never applied) is `recorded`;
 * - `not_applicable`: a refund failure of a charge no SUCCEEDED payment has (services/payment-reversals.ts): nothing written, logged;
 * - `retry_later`: a refund event made after the latest one applied reports less refunded than
 *   recorded, so a refund failure made before it has not been received yet: nothing written,
 *   logged; the event is to be applied when delivered again (the Stripe webhook answers 503).
 */
export interface ReversalEventResult {
  result: 'reversed' | 'recorded' | 'unchanged' | 'kept' | 'unknown_payment' | 'mismatch' | 'restored' | 'not_applicable' | 'retry_later';
  /** The payment's id (null for kept and unknown_payment). */
  paymentId: string | null;
  /** What this call took back, in micro-credits (0 unless `reversed`, or `restored` of a dispute applied by this call). */
  voidedMicroCredits: bigint;
  /** What this call gave back of a won dispute or a failed refund, in micro-credits (set for those only). */
  restoredMicroCredits?: bigint;
}

/**
 * Why the charge an event describes is not `payment`'s, or null when it is.
 * @param expectedLivemode the `livemode` of the payment's charges; null: not compared (a kept
 *   event applied at settlement: {@link applyEarlyReversals}).
 */
export function reversalMismatchOf(event: ChargeReversalEvent, payment: PaymentRow, expectedLivemode: boolean | null): string | null {
  if (expectedLivemode !== null && event.livemode !== expectedLivemode) return `livemode ${event.livemode}, expected ${expectedLivemode} for this account's payments`;
  if (event.currency !== 'usd') return `currency ${event.currency}, expected usd`;
  const cents = usdToCents(payment.amountUsd);
  if (event.kind === 'refund') {
    if (event.amountCents !== cents) return `amount ${event.amountCents} cents, expected ${cents}`;
    if (event.refundedCents < 0n || event.refundedCents > cents) return `amount_refunded ${event.refundedCents} cents, expected 0 to ${cents}`;
  } else if (event.kind === 'refund_failed') {
    if (event.amountCents <= 0n || event.amountCents > cents) return `failed refund's amount ${event.amountCents} cents, expected 1 to ${cents}`;
  } else if (event.amountCents <= 0n || event.amountCents > cents) {
    return `disputed amount ${event.amountCents} cents, expected 1 to ${cents}`;
  }
  return null;
}

/** What {@link applyReversalLocked} did, for {@link reportReversal} to log after the commit. */
export interface LockedReversal {
  /** Something was written on the payment (refunded_cents grew, the dispute, the void). */
  recorded: boolean;
  /** The void of the grant, when this event made the refund full or is a dispute (voidedNow false: voided before). */
  voided: VoidedGrant | null;
  /** The payment's cumulative refunded cents after this call. */
  refunded: bigint;
  /** The grant's amount, in micro-credits. */
  grantedMicroCredits: bigint;
  /** The account's auto top-up was enabled and this call paused it. */
  pausedAutoTopUp: boolean;
  /** A won dispute applied by this call ({@link applyDisputeWonLocked}); absent for other events. */
  won?: WonDispute;
  /** A partial refund applied by this call ({@link takeRefundedShare}); absent for other events. */
  partial?: PartialRefund;
  /** A failed refund applied by this call (services/refund-failures.ts); absent for other events. */
  failure?: FailedRefund;
  /**
   * A refund event made at or before a refund failure of the payment was applied (redelivered or
   * late: its cumulative amount may include the failed refund), so nothing was written.
   */
  staleRefund?: boolean;
  /**
   * A refund event made after the latest refund event applied reports a smaller cumulative amount:
   * a refund failure made before it has not been received yet, so nothing was written and the
   * event is to be delivered again (`retry_later`).
   */
  awaitingRefundFailure?: boolean;
  /**
   * What of the payment's credit a full refund or dispute applied by this call leaves with the
   * customer (spent or expired: not turned into debt), in micro-credits: the pack's credit less
   * what partial refunds took before and what this call voided. Absent: the voided grant's amount
   * less what was voided.
   */
  unrecoveredMicroCredits?: bigint;
}

/** What a partial refund took back of its payment's credit (amounts in micro-credits). */
export interface PartialRefund {
  /** The pack's refunded share: floor(pack credits x cumulative refunded cents / amount cents). */
  shareMicroCredits: bigint;
  /** What this call took back (0: the share did not grow, or nothing of the credit was left). */
  takenMicroCredits: bigint;
  /** What this call should have taken but was spent or expired (not turned into debt). */
  unrecoveredMicroCredits: bigint;
  /** The grant that carries the payment's credit after this call (null: unchanged). */
  liveGrantId: string | null;
}

/** What applying a won dispute gave back (amounts in micro-credits). */
export interface WonDispute {
  /** The grant that gave the credit back; null when nothing was given back (`notRestored` says why). */
  grantId: string | null;
  restoredMicroCredits: bigint;
  /** Why nothing was given back: `refunded_in_full` (the money went back to the customer), `nothing_taken` (the dispute voided nothing), `expired` (the credit's expiry has passed). */
  notRestored: 'refunded_in_full' | 'nothing_taken' | 'expired' | null;
  /** What the dispute took back: 0 unless this call applied the dispute too (won before its dispute). */
  disputeVoidedMicroCredits: bigint;
}

/**
 * Applies `event` to the SUCCEEDED payment `payment` inside the transaction of `atx`, which holds
 * the payment's account lock (the caller checked {@link reversalMismatchOf} and calls atx.finish()):
 * records a refund (refunded_cents only grows) or the first dispute; a partial refund takes back
 * its share of the credit ({@link takeRefundedShare}); a full refund or a dispute pauses auto
 * top-up and voids the unused remainder of the grant that carries the payment's credit (its own,
 * or the one a partial refund or a won dispute made since: live_grant_id) with voidLockedGrant's
 * rules (once: reversed_at). Rules: services/payment-reversals.ts module comment.
 * @throws LedgerError BAD_USER_INPUT reason BALANCE_LIMIT (a grant made again or given back would
 *   pass the balance limit; nothing is written).
 * @returns what was written ({@link LockedReversal}).
 */
export async function applyReversalLocked(atx: AccountTx, actor: AuditActor, payment: PaymentRow, event: ChargeReversalEvent): Promise<LockedReversal> {
  if (event.kind === 'dispute_won') return applyDisputeWonLocked(atx, actor, payment, event);
  if (event.kind === 'refund_failed') return applyRefundFailureLocked(atx, actor, payment, event);
  const tx = atx.tx;
  const cents = usdToCents(payment.amountUsd);
  const { rows } = await tx.query(
    `SELECT refunded_cents, disputed_at, reversed_at, grant_id, dispute_won_grant_id, COALESCE(live_grant_id, grant_id) AS live_grant_id, refund_taken_micro_credits,
            refund_failed_event_at, refund_event_at
       FROM payments WHERE id = $1 FOR UPDATE`,
    [payment.id],
  );
  const current = rows[0];
  assert(current && current.grant_id, 'a SUCCEEDED payment has its grant');
  const refundedBefore = toBigInt(current.refunded_cents);
  if (event.kind === 'refund' && isStaleRefund(event, current.refund_failed_event_at as Date | null)) {
    return { recorded: false, voided: null, refunded: refundedBefore, grantedMicroCredits: 0n, pausedAutoTopUp: false, staleRefund: true };
  }
  if (event.kind === 'refund' && current.disputed_at === null && revealsUnreceivedFailure(event, refundedBefore, current.refund_event_at as Date | null)) {
    return { recorded: false, voided: null, refunded: refundedBefore, grantedMicroCredits: 0n, pausedAutoTopUp: false, awaitingRefundFailure: true };
  }
  let recorded = false;
  let pausedAutoTopUp = false;
  if (event.kind === 'refund' && event.refundedCents > refundedBefore) {
    // refund_event_at: which refunds refunded_cents includes (a failed refund created after it was never applied).
    await tx.query('UPDATE payments SET refunded_cents = $2, refunded_at = $3, refund_event_at = $4, updated_at = $3 WHERE id = $1', [
      payment.id,
      event.refundedCents.toString(),
      atx.now,
      event.createdAt ?? atx.now,
    ]);
    recorded = true;
  }
  if (event.kind === 'dispute' && current.disputed_at === null) {
    await tx.query('UPDATE payments SET disputed_at = $2, dispute_ref = $3, updated_at = $2 WHERE id = $1', [payment.id, atx.now, event.disputeRef ?? event.eventId]);
    pausedAutoTopUp = await pauseAutoTopUp(atx, actor, `dispute: the card holder disputed payment ${payment.id}`);
    recorded = true;
  }
  const refunded = event.kind === 'refund' && event.refundedCents > refundedBefore ? event.refundedCents : refundedBefore;
  const full = event.kind === 'dispute' || current.disputed_at !== null || refunded >= cents;
  const grant = await tx.query('SELECT amount_micro_credits FROM credit_grants WHERE id = $1', [current.grant_id]);
  const grantedMicroCredits = toBigInt(grant.rows[0].amount_micro_credits);
  // The grant that carries the payment's credit now: its own, or the last one a partial refund or
  // a won dispute made (live_grant_id), so every reversal acts on the credit that is left.
  const liveGrantId = current.live_grant_id as string;
  const takenBefore = toBigInt(current.refund_taken_micro_credits);
  if (event.kind === 'refund' && refundedBefore < cents && refunded >= cents && current.dispute_won_grant_id !== null) {
    // Refunded in full after a won dispute gave the credit back: the money went back to the
    // customer after all, so what was given back is taken back as the first void was.
    return takeBackGivenBack(atx, actor, payment, event, liveGrantId, refunded);
  }
  if (event.kind === 'refund' && refunded > refundedBefore && refunded < cents && (current.disputed_at === null || current.dispute_won_grant_id !== null)) {
    // A partial refund of a payment whose credit is live (not disputed, or given back by a won
    // dispute): its share of the credit follows the money.
    const partial = await takeRefundedShare(atx, actor, payment, event, { liveGrantId, grantedMicroCredits, takenBefore, refunded, cents });
    return { recorded: true, voided: null, refunded, grantedMicroCredits, pausedAutoTopUp, partial };
  }
  if (!full || current.reversed_at !== null) return { recorded, voided: null, refunded, grantedMicroCredits, pausedAutoTopUp };
  const reason =
    event.kind === 'refund'
      ? `payment ${payment.id} refunded in full by the payment provider (charge ${event.providerRef}, event ${event.eventId})`
      : `payment ${payment.id} disputed by the card holder (dispute ${event.disputeRef ?? event.eventId}, charge ${event.providerRef})`;
  // A full refund pauses auto top-up as a dispute does: the customer was given the money back,
  // and the void below may take the balance under the top-up threshold, which would charge the
  // same card again at once (balances_changed in atx.finish sees the pause).
  if (event.kind === 'refund') pausedAutoTopUp = (await pauseAutoTopUp(atx, actor, `refund: payment ${payment.id} was refunded in full`)) || pausedAutoTopUp;
  const voided = await voidLockedGrant(atx, actor, liveGrantId, reason);
  // What this reversal took is kept: a won dispute gives back exactly it (applyDisputeWonLocked).
  await tx.query('UPDATE payments SET reversed_at = $2, reversed_micro_credits = $3, updated_at = $2 WHERE id = $1', [payment.id, atx.now, voided.voidedMicroCredits.toString()]);
  const unrecoveredMicroCredits = maxZero(grantedMicroCredits - takenBefore - voided.voidedMicroCredits);
  return { recorded: true, voided, refunded, grantedMicroCredits, pausedAutoTopUp, unrecoveredMicroCredits };
}

const maxZero = (v: bigint): bigint => (v > 0n ? v : 0n);

/**
 * Whether a refund event (a charge's cumulative refunded amount) was made at or before the latest
 * refund failure applied to its payment (`refundFailedEventAt`, payments.refund_failed_event_at):
 * its amount is from before the failure and may include the failed refund, which the failure has
 * already taken out, so applying it would take that refund's share again (a redelivered
 * `charge.refunded`, or one delivered late). Compared in the provider's time (Stripe: whole
 * seconds; the same second counts as before: a new refund made in the very second a failure was
 * reported is not taken back, and is logged). An event without a creation time is stale once a
 * failure was applied. Rule: services/refund-failures.ts module comment.
 */
function isStaleRefund(event: ChargeReversalEvent, refundFailedEventAt: Date | null): boolean {
  if (refundFailedEventAt === null) return false;
  return !event.createdAt || event.createdAt.getTime() <= new Date(refundFailedEventAt).getTime();
}

/**
 * Whether a refund event (a charge's cumulative refunded amount) reports LESS than the payment's
 * recorded refunded amount (`refundedBefore`) although it was made after the latest refund event
 * applied (`refundEventAt`, payments.refund_event_at; provider times): the charge's refunded amount
 * only drops when a refund fails or is canceled, so a failure the provider made before this event
 * has not been received yet (Stripe delivers in any order). Acknowledging the event would lose
 * the new refund it reports (its amount is below what is recorded, so it changes nothing), and the
 * failure, applied later, would give back the credit of money the new refund returned; so it is
 * answered `retry_later` (the webhook answers 503) and applied when delivered again after the
 * failure. Not checked when either time is unknown (refund_event_at is NULL on payments an older
 * release refunded: its refunded_at is creditpool's clock, not the provider's). Rule:
 * services/refund-failures.ts module comment.
 */
function revealsUnreceivedFailure(event: ChargeReversalEvent, refundedBefore: bigint, refundEventAt: Date | null): boolean {
  if (!event.createdAt || refundEventAt === null || event.refundedCents >= refundedBefore) return false;
  return event.createdAt.getTime() > new Date(refundEventAt).getTime();
}

/**
 * Takes back a partial refund's share of its payment's credit, inside `atx` (account lock held;
 * the payment row is locked and refunded_cents already records `refunded`). The rule: the share
 * of a cumulative refund of `refunded` of `cents` on a pack of G micro-credits is
 * floor(G x refunded / cents); what partial refunds took before (`takenBefore`,
 * payments.refund_taken_micro_credits) is subtracted, and at most what remains unused of the
 * live grant is taken (no debt; the rest is returned as unrecovered, for the log).
 * With the ledger's own operations, so every figure stays right: a due plan roll first (plans.ts
 * rollDuePeriodsFirst, as before every grant: grant-credits.ts), due expiries, then the
 * live grant is voided (voidLockedGrant: VOID entry, voided amount kept on the grant, which the
 * period's credit subtracts) and its rest less the share granted again (applyGrant: a new PAID
 * grant with the live grant's source, type and expiry, reference the payment, key
 * ledger/grant-keys.ts partialRefundGrantKey; `grant.created` in the audit trail by `actor`),
 * which becomes the payment's live grant. Nothing is written but the refund's record when there
 * is nothing to take. Auto top-up is not paused (the card's charge stands, in part).
 * @throws LedgerError BAD_USER_INPUT reason BALANCE_LIMIT (applyGrant; not reachable in practice:
 *   the new grant is smaller than what the void took back).
 */
async function takeRefundedShare(
  atx: AccountTx,
  actor: AuditActor,
  payment: PaymentRow,
  event: ChargeReversalEvent,
  p: { liveGrantId: string; grantedMicroCredits: bigint; takenBefore: bigint; refunded: bigint; cents: bigint },
): Promise<PartialRefund> {
  const tx = atx.tx;
  const shareMicroCredits = (p.grantedMicroCredits * p.refunded) / p.cents;
  const owed = maxZero(shareMicroCredits - p.takenBefore);
  const none: PartialRefund = { shareMicroCredits, takenMicroCredits: 0n, unrecoveredMicroCredits: 0n, liveGrantId: null };
  if (owed === 0n) return none;
  // A due plan roll first, as before every grant (grant-credits.ts): the rest granted again
  // repays debt only after the roll's grant did, as on time.
  await rollDuePeriodsFirst(atx);
  // What is due to expire goes first (as voidLockedGrant would): only what remains unexpired is taken.
  await applyExpiries(atx);
  const { rows } = await tx.query(
    `SELECT g.voided_at, g.source, g.type, b.status, b.remaining_micro_credits, b.expires_at
       FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.id = $1 AND g.account_id = $2 FOR UPDATE OF g`,
    [p.liveGrantId, atx.accountId],
  );
  const live = rows[0];
  assert(live, "the payment's live grant belongs to the locked account");
  const remaining = live.voided_at === null && live.status === 'ACTIVE' ? toBigInt(live.remaining_micro_credits) : 0n;
  const taken = minBig(owed, remaining);
  if (taken === 0n) return { ...none, unrecoveredMicroCredits: owed };
  const reason = `payment ${payment.id} refunded in part by the payment provider (${p.refunded} of ${p.cents} cents; charge ${event.providerRef}, event ${event.eventId}): its share is taken back, the rest granted again`;
  const voided = await voidLockedGrant(atx, actor, p.liveGrantId, reason);
  assert(voided.voidedNow && voided.voidedMicroCredits === remaining, 'the live grant is voided with what it had left');
  const rest = remaining - taken;
  let liveGrantId = p.liveGrantId;
  if (rest > 0n) {
    const source = live.source as GrantSource;
    const type = live.type as CreditType;
    const expiresAt = live.expires_at === null ? null : new Date(live.expires_at as Date);
    // The refunded amount only grows between refund failures; each failure starts a new series of keys.
    const failures = await tx.query('SELECT count(*)::int AS n FROM payment_refund_failures WHERE payment_id = $1 AND applied', [payment.id]);
    const idempotencyKey = partialRefundGrantKey(payment.id, p.refunded, failures.rows[0].n as number);
    const grant = { amountMicroCredits: rest, type, source, expiresAt, reference: payment.id, idempotencyKey };
    const again = await applyGrant(atx, grant);
    assert(!again.replayed, 'a partial refund grants again once per refunded amount: refunded_cents only grows');
    liveGrantId = again.grantId;
    await auditGrantCreated(tx, actor, atx.accountId, again.grantId, grant, `${reason}: ${formatCredits(taken)} taken back of ${formatCredits(remaining)} left (grant ${p.liveGrantId} voided)`);
  }
  await tx.query('UPDATE payments SET refund_taken_micro_credits = $2, live_grant_id = $3, updated_at = $4 WHERE id = $1', [
    payment.id,
    (p.takenBefore + taken).toString(),
    liveGrantId,
    atx.now,
  ]);
  return { shareMicroCredits, takenMicroCredits: taken, unrecoveredMicroCredits: owed - taken, liveGrantId };
}

const PAYMENT_DISPUTE_COLUMNS = 'refunded_cents, disputed_at, dispute_ref, reversed_at, reversed_micro_credits, dispute_won_at, grant_id';

/**
 * Applies a won dispute (`event.kind` `dispute_won`: Stripe `charge.dispute.closed` with status
 * `won`, or `charge.dispute.funds_reinstated`) to the SUCCEEDED payment `payment` inside the
 * transaction of `atx`, which holds the payment's account lock: the disputed money came back to
 * the platform, so the credit the dispute took back is given back. Once per payment
 * (`dispute_won_at`; a charge has one dispute, and Stripe may send both event types, and again):
 * - when the dispute was not applied yet (the won event came first: events come in any order), it
 *   is applied first in this transaction ({@link applyReversalLocked}: recorded, auto top-up
 *   paused, the grant voided), so its own event later changes nothing and the credit ends given back;
 * - what is given back is exactly what the dispute took (`payments.reversed_micro_credits`), as a
 *   NEW grant (type PAID, the payment's grant's source and batch expiry, reference the payment id,
 *   key `payment:<id>:dispute-won`, ledger/grant-keys.ts disputeWonGrantKey; `grant.created` in
 *   the audit trail by `actor`), recorded as `dispute_won_grant_id` and as the grant that carries
 *   the payment's credit (`live_grant_id`: a later partial or full refund acts on it). Credit
 *   spent before the dispute, or taken by a partial refund before it, was never taken by the
 *   dispute, so it is not given;
 * - nothing is given back (`notRestored`) when the payment was also refunded in full (the money
 *   went back to the customer anyway), when the dispute took nothing, or when the original
 *   credit's expiry has passed (it would have expired meanwhile);
 * - auto top-up stays paused: an operator decides whether the card is charged again (setAutoTopUp).
 * A plan roll that is due runs first (plans.ts rollDuePeriodsFirst, as before every grant:
 * grant-credits.ts), unless the won dispute was applied before.
 * The voided original grant stays voided (one void per grant; the period figures read it).
 * @returns what was written ({@link LockedReversal} with `won`).
 * @throws LedgerError BAD_USER_INPUT reason BALANCE_LIMIT when the give-back would pass the
 *   balance limit (applyGrant; nothing is written: the provider delivers the event again).
 */
export async function applyDisputeWonLocked(atx: AccountTx, actor: AuditActor, payment: PaymentRow, event: ChargeReversalEvent): Promise<LockedReversal> {
  const tx = atx.tx;
  const cents = usdToCents(payment.amountUsd);
  const read = async () => (await tx.query(`SELECT ${PAYMENT_DISPUTE_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE`, [payment.id])).rows[0];
  let current = await read();
  assert(current && current.grant_id, 'a SUCCEEDED payment has its grant');
  const unchanged: LockedReversal = { recorded: false, voided: null, refunded: toBigInt(current.refunded_cents), grantedMicroCredits: 0n, pausedAutoTopUp: false };
  if (current.dispute_won_at !== null) return unchanged;
  // A due plan roll first, as before every grant (grant-credits.ts): the give-back repays debt
  // only after the roll's grant did, as on time.
  await rollDuePeriodsFirst(atx);
  let disputed: LockedReversal | null = null;
  if (current.disputed_at === null) {
    disputed = await applyReversalLocked(atx, actor, payment, { ...event, kind: 'dispute' });
    current = await read();
  }
  await tx.query('UPDATE payments SET dispute_won_at = $2, updated_at = $2 WHERE id = $1', [payment.id, atx.now]);
  const refunded = toBigInt(current.refunded_cents);
  const taken = current.reversed_micro_credits === null ? 0n : toBigInt(current.reversed_micro_credits);
  const { rows } = await tx.query(
    `SELECT g.source, g.amount_micro_credits, b.expires_at FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.id = $1`,
    [current.grant_id],
  );
  const original = rows[0];
  const grantedMicroCredits = toBigInt(original.amount_micro_credits);
  const expiresAt = original.expires_at === null ? null : new Date(original.expires_at as Date);
  const disputeVoidedMicroCredits = disputed?.voided?.voidedMicroCredits ?? 0n;
  const base = { recorded: true, voided: disputed?.voided ?? null, refunded, grantedMicroCredits, pausedAutoTopUp: disputed?.pausedAutoTopUp ?? false };
  const notRestored = refunded >= cents ? 'refunded_in_full' : taken <= 0n ? 'nothing_taken' : expiresAt && expiresAt.getTime() <= atx.now.getTime() ? 'expired' : null;
  if (notRestored) return { ...base, won: { grantId: null, restoredMicroCredits: 0n, notRestored, disputeVoidedMicroCredits } };
  const source = original.source as GrantSource;
  const idempotencyKey = disputeWonGrantKey(payment.id);
  const grant = { amountMicroCredits: taken, type: 'PAID' as const, source, expiresAt, reference: payment.id, idempotencyKey };
  const given = await applyGrant(atx, grant);
  assert(!given.replayed, 'a won dispute gives back once: dispute_won_at was not set');
  // The given-back grant carries the payment's credit now: a later partial or full refund acts on it.
  await tx.query('UPDATE payments SET dispute_won_grant_id = $2, live_grant_id = $2 WHERE id = $1', [payment.id, given.grantId]);
  const disputeRef = event.disputeRef ?? (current.dispute_ref as string | null) ?? event.eventId;
  await auditGrantCreated(tx, actor, atx.accountId, given.grantId, grant, `dispute ${disputeRef} of payment ${payment.id} won (charge ${event.providerRef}, event ${event.eventId}): the credit the dispute took back is given back`);
  return { ...base, won: { grantId: given.grantId, restoredMicroCredits: taken, notRestored: null, disputeVoidedMicroCredits } };
}

/**
 * A full refund that comes after a won dispute gave the credit back ({@link applyDisputeWonLocked}):
 * voids the unused remainder of the grant that carries the given-back credit (the give-back, or
 * the grant a later partial refund made again: `liveGrantId`) by voidLockedGrant's rules and
 * pauses auto top-up, as a full refund of the payment's own grant does. Inside `atx` (account lock held).
 */
async function takeBackGivenBack(atx: AccountTx, actor: AuditActor, payment: PaymentRow, event: ChargeReversalEvent, givenGrantId: string, refunded: bigint): Promise<LockedReversal> {
  const pausedAutoTopUp = await pauseAutoTopUp(atx, actor, `refund: payment ${payment.id} was refunded in full`);
  const reason = `payment ${payment.id} refunded in full by the payment provider after its dispute was won (charge ${event.providerRef}, event ${event.eventId}): the credit given back is taken back`;
  const voided = await voidLockedGrant(atx, actor, givenGrantId, reason);
  return { recorded: true, voided, refunded, grantedMicroCredits: voided.grantedMicroCredits, pausedAutoTopUp };
}

/**
 * Logs, after the commit, what {@link applyReversalLocked} did (auto top-up paused: warn; credit
 * already spent or expired and not taken back: warn with `unrecoveredMicroCredits`; a partial
 * refund: warn with the pack's refunded share) and returns the event's result.
 */
export function reportReversal(ctx: ServiceContext, event: ChargeReversalEvent, payment: PaymentRow, done: LockedReversal): ReversalEventResult {
  const logContext = { providerRef: event.providerRef, eventId: event.eventId, eventType: event.eventType, paymentId: payment.id, accountId: payment.accountId, purpose: payment.purpose };
  if (done.won) return reportDisputeWon(ctx, logContext, done.won);
  if (done.failure) return reportRefundFailure(ctx, logContext, done.failure);
  if (done.awaitingRefundFailure) {
    ctx.log?.warn(
      { ...logContext, refundedCents: event.refundedCents.toString(), recordedRefundedCents: done.refunded.toString(), eventCreatedAt: event.createdAt?.toISOString() ?? null },
      'payment reversal: a newer refund event reports less refunded than recorded: a refund failure has not been received yet; not applied, to be delivered again',
    );
    return { result: 'retry_later', paymentId: payment.id, voidedMicroCredits: 0n };
  }
  if (done.staleRefund) {
    ctx.log?.warn(
      { ...logContext, refundedCents: event.refundedCents.toString(), eventCreatedAt: event.createdAt?.toISOString() ?? null },
      'payment reversal: a refund event made before a refund failure of this payment was applied (redelivered or late); ignored. If it reports a refund not applied yet, take its share back by hand',
    );
    return { result: 'unchanged', paymentId: payment.id, voidedMicroCredits: 0n };
  }
  if (done.pausedAutoTopUp) ctx.log?.warn(logContext, 'payment reversal: a charge of the account was refunded in full or disputed; its auto top-up is paused (setAutoTopUp re-enables it)');
  if (done.partial) return reportPartialRefund(ctx, logContext, payment, done, done.partial);
  if (done.voided) {
    const unrecovered = done.unrecoveredMicroCredits ?? done.voided.grantedMicroCredits - done.voided.voidedMicroCredits;
    const figures = { ...logContext, voidedMicroCredits: done.voided.voidedMicroCredits.toString(), unrecoveredMicroCredits: unrecovered.toString() };
    // A grant voided before (by an operator's voidGrant) had its rest taken back then: nothing of it is reported as spent here.
    if (done.voided.voidedNow && unrecovered > 0n) {
      ctx.log?.warn(figures, 'payment reversal: part of the credit of a refunded or disputed payment was already spent or expired; it is not taken back (no debt is made)');
    }
    return { result: done.voided.voidedNow ? 'reversed' : 'recorded', paymentId: payment.id, voidedMicroCredits: done.voided.voidedMicroCredits };
  }
  return { result: done.recorded ? 'recorded' : 'unchanged', paymentId: payment.id, voidedMicroCredits: 0n };
}

/**
 * Logs (warn, only when part of the share was spent or expired and is not taken back: no debt is
 * made) and returns the result of a partial refund applied by {@link takeRefundedShare}:
 * `reversed` when it took something back, else `recorded`.
 */
function reportPartialRefund(ctx: ServiceContext, logContext: Record<string, unknown>, payment: PaymentRow, done: LockedReversal, partial: PartialRefund): ReversalEventResult {
  if (partial.unrecoveredMicroCredits > 0n) {
    const cents = usdToCents(payment.amountUsd);
    ctx.log?.warn(
      {
        ...logContext,
        refundedCents: done.refunded.toString(),
        amountCents: cents.toString(),
        refundedShareMicroCredits: partial.shareMicroCredits.toString(),
        refundedShare: formatCredits(partial.shareMicroCredits),
        voidedMicroCredits: partial.takenMicroCredits.toString(),
        unrecoveredMicroCredits: partial.unrecoveredMicroCredits.toString(),
      },
      'payment reversal: part of the refunded share of a partial refund was already spent or expired; it is not taken back (no debt is made)',
    );
  }
  return { result: partial.takenMicroCredits > 0n ? 'reversed' : 'recorded', paymentId: payment.id, voidedMicroCredits: partial.takenMicroCredits };
}

/**
 * Logs (warn: an operator may want to re-enable auto top-up, or check why nothing came back) and
 * returns the result of a won dispute applied by {@link applyDisputeWonLocked}.
 */
function reportDisputeWon(ctx: ServiceContext, logContext: Record<string, unknown>, won: WonDispute): ReversalEventResult {
  const figures = { ...logContext, restoredMicroCredits: won.restoredMicroCredits.toString(), givenBackGrantId: won.grantId, notRestored: won.notRestored };
  if (won.grantId) {
    ctx.log?.warn(figures, 'payment reversal: a dispute was won; the credit it took back is given back (auto top-up stays paused: setAutoTopUp re-enables it)');
    return { result: 'restored', paymentId: logContext.paymentId as string, voidedMicroCredits: won.disputeVoidedMicroCredits, restoredMicroCredits: won.restoredMicroCredits };
  }
  ctx.log?.warn(figures, 'payment reversal: a dispute was won but nothing is given back (refunded in full, nothing was taken back, or the credit would have expired)');
  return { result: 'recorded', paymentId: logContext.paymentId as string, voidedMicroCredits: won.disputeVoidedMicroCredits, restoredMicroCredits: 0n };
}

/** Advisory lock class of a charge reference's early reversals (pg_advisory_xact_lock(class, hashtext(ref))). */
const EARLY_REVERSAL_LOCK_CLASS = 0x72657631;

/**
 * Takes the transaction-scoped advisory lock of charge reference `providerRef`: held by the
 * transaction that keeps an early reversal (after it checked that no SUCCEEDED payment has the
 * reference) and by the one that settles a payment SUCCEEDED with it (before it reads the kept
 * reversals). So either the keeper sees the settled payment (and applies the event to it), or the
 * settlement sees the kept reversal: none is lost between the two. A hash collision only makes
 * two references wait on each other.
 */
export async function lockChargeReference(tx: Tx, providerRef: string): Promise<void> {
  await tx.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [EARLY_REVERSAL_LOCK_CLASS, providerRef]);
}

/** A refund or dispute kept for a charge no payment was settled with yet, and what settling applied of it. */
export interface AppliedEarlyReversal {
  event: ChargeReversalEvent;
  /** What was applied; null when the event is not this payment's charge (`mismatch`, logged; the event stays kept). */
  done: LockedReversal | null;
  /** Why it is not this payment's charge (null when applied). */
  mismatch: string | null;
}

/** A kept `early_payment_reversals` row as the event it was made from (`createdAt`: the provider's time of the event, else when it was last kept). */
function keptEventOf(r: Record<string, unknown>): ChargeReversalEvent {
  return {
    eventId: r.event_id as string,
    eventType: r.event_type as string,
    kind: r.kind as ChargeReversalEvent['kind'],
    providerRef: r.provider_ref as string,
    amountCents: toBigInt(r.amount_cents as string),
    refundedCents: toBigInt(r.refunded_cents as string),
    disputeRef: (r.dispute_ref as string | null) ?? null,
    currency: r.currency as string,
    livemode: r.livemode === true,
    // The provider's time of the event (rows kept before it was stored: when it was last received,
    // at or after that time), never the settlement's: a test-mode account's clock is not the provider's.
    createdAt: new Date((r.event_created_at ?? r.updated_at) as Date),
  };
}

/**
 * Applies the refunds and disputes the provider reported for the charge `payment.providerRef`
 * before the payment was settled (kept by applyReversalEvent in `early_payment_reversals`), in
 * the transaction of `atx` that has just settled `payment` SUCCEEDED with its grant (settlePayment):
 * so a payment refunded in full or disputed before creditpool learnt it had succeeded has its
 * grant voided in the same transaction that makes it, and the payment row records the refund or
 * dispute, as if the events had come after the settlement. Each applied event is deleted.
 * The event's currency and amount are checked against the payment (a mismatch is returned to be
 * logged, and the event is left to the pruning); its `livemode` is not: the reference is the one
 * the charge's own outcome reported for this payment, and a provider's charge reference (Stripe's
 * PaymentIntent id, the simulator's uuid) names one charge of one mode.
 * @param actor who settles the payment (the audit trail's actor of the voids and pauses written
 *   here: the Stripe webhook, the client retrying its purchase, or the workers); `system` by default.
 * @returns the kept events, in the order received, and what was applied of each.
 */
export async function applyEarlyReversals(atx: AccountTx, payment: PaymentRow, actor: AuditActor = SYSTEM_ACTOR): Promise<AppliedEarlyReversal[]> {
  if (payment.status !== 'SUCCEEDED' || payment.providerRef === null) return [];
  await lockChargeReference(atx.tx, payment.providerRef);
  const { rows } = await atx.tx.query('SELECT * FROM early_payment_reversals WHERE provider_ref = $1 ORDER BY received_at, kind', [payment.providerRef]);
  const applied: AppliedEarlyReversal[] = [];
  for (const row of rows) {
    const event = keptEventOf(row);
    const mismatch = reversalMismatchOf(event, payment, null);
    if (mismatch) {
      applied.push({ event, done: null, mismatch });
      continue;
    }
    const done = await applyReversalLocked(atx, actor, payment, event);
    await atx.tx.query('DELETE FROM early_payment_reversals WHERE provider_ref = $1 AND kind = $2', [event.providerRef, event.kind]);
    applied.push({ event, done, mismatch: null });
  }
  return applied;
}

/**
 * Logs, after the commit, what {@link applyEarlyReversals} applied when `payment` was settled:
 * each event as {@link reportReversal} does, plus one warning per applied event (the credit was
 * granted and taken back in one transaction because the refund or dispute came first), and an
 * error per mismatch (left kept until pruned; an operator checks it).
 */
export function reportEarlyReversals(ctx: ServiceContext, payment: PaymentRow, applied: readonly AppliedEarlyReversal[]): void {
  for (const { event, done, mismatch } of applied) {
    const context = { providerRef: event.providerRef, eventId: event.eventId, eventType: event.eventType, paymentId: payment.id, accountId: payment.accountId, purpose: payment.purpose };
    if (!done) {
      ctx.log?.error({ ...context, mismatch }, "payment reversal: a refund or dispute kept for this charge is not this payment's; not applied, check it");
      continue;
    }
    const { result, voidedMicroCredits } = reportReversal(ctx, event, payment, done);
    ctx.log?.warn(
      { ...context, result, voidedMicroCredits: voidedMicroCredits.toString() },
      'payment reversal: the charge was refunded or disputed before its payment was settled; applied when it was settled',
    );
  }
}

/**
 * Pauses the account's auto top-up inside the locked transaction, as three failed charges do
 * (services/auto-top-up.ts: enabled = false, paused_at), with `last_error` = `reason` (the dispute or the full refund),
 * and records `auto_top_up.updated` in the audit trail. No `auto_top_up.paused` webhook: its body
 * is built from the top-up that paused it (services/webhooks.ts), which a dispute has not.
 * @returns whether it was enabled (and is paused now).
 */
async function pauseAutoTopUp(atx: AccountTx, actor: AuditActor, reason: string): Promise<boolean> {
  const { rows } = await atx.tx.query(
    `UPDATE auto_top_up_settings SET enabled = false, paused_at = COALESCE(paused_at, $2), last_error = $3, updated_at = $2
      WHERE account_id = $1 AND enabled RETURNING account_id`,
    [atx.accountId, atx.now, reason],
  );
  if (!rows[0]) return false;
  await recordAuditEvent(atx.tx, actor, {
    action: 'auto_top_up.updated',
    accountId: atx.accountId,
    subjectType: 'auto_top_up',
    subjectId: atx.accountId,
    details: { enabled: false, reason },
  });
  return true;
}
