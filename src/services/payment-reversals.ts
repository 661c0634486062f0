/**
 * Taking back the credit of a payment whose money went back: the provider reports, after the
 * fact, that a SUCCEEDED charge was refunded (Stripe `charge.refunded`, e.g. from its dashboard)
 * or disputed by the card holder (a chargeback, Stripe `charge.dispute.created`). Without this,
 * money-backed credit would stay on the account with no money behind it.
 *
 * Rules ({@link applyReversalEvent}):
 * - the payment is found by the charge's reference (`payments.provider_ref`, Stripe's
 *   PaymentIntent id; Stripe copies no PaymentIntent metadata to its Charge or Dispute), among
 *   SUCCEEDED payments only (only they took money); none -> `unknown_payment`, nothing written;
 * - an event whose mode (`livemode`), currency or amount is not the payment's (as for payment
 *   events, services/payment-events.ts) changes nothing and is logged (`mismatch`);
 * - a FULL refund (cumulative refunded = the payment's amount) or a dispute takes back what
 *   remains unused of the payment's grant (`payment:<payment id>`) with voidGrant's rules
 *   (services/void-grant.ts voidLockedGrant: due expiries first, one VOID entry, the amount kept
 *   on the grant, `grant.voided` in the audit trail), with a reason naming the refund or dispute,
 *   and marks the payment `reversed_at`; in ONE transaction under the account lock, once;
 * - credit already spent (or expired) is not turned into debt: it is logged (warn: account,
 *   payment, unrecovered micro-credits) for the operator;
 * - a PARTIAL refund (0 < refunded < amount) is recorded (`refunded_cents`, `refunded_at`) and
 *   logged (warn) with the pack's refunded share, but takes nothing back: a grant is voided whole
 *   or not at all (credit_grants.voided_at / voided_micro_credits, and balance_figures's period
 *   credit, know one void per grant), so a share is left to the operator (README "Limits"). A
 *   later event that brings the refund to the full amount takes back the remainder;
 * - a dispute, and a full refund, also pause the account's auto top-up (enabled = false,
 *   paused_at, last_error; the audit trail records `auto_top_up.updated`): a card whose holder
 *   disputes charges, or was given the money back, is not charged again until an operator
 *   re-enables it (setAutoTopUp). Without it, the void of a refunded top-up takes the balance
 *   back under its threshold and the same card is charged again at once;
 * - events come twice and out of order (https://docs.stripe.com/webhooks#event-ordering):
 *   `refunded_cents` only grows (an older or redelivered refund changes nothing), a dispute is
 *   recorded once, and the grant is taken back once whichever comes first (refund after
 *   dispute, dispute after refund: `unchanged`).
 */
import { SYSTEM_ACTOR, recordAuditEvent, type AuditActor } from '../audit/audit-log.js';
import { toBigInt, withTransaction } from '../db/pg.js';
import { formatCredits } from '../ledger/credits.js';
import { assert } from '../ledger/errors.js';
import { usdToCents, type ChargeReversalEvent } from '../payments/provider.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import { toPaymentRow, type PaymentRow } from './purchase-pack.js';
import { voidLockedGrant } from './void-grant.js';

/**
 * What {@link applyReversalEvent} did:
 * - `reversed`: this call took back the grant's unused remainder (`voidedMicroCredits`);
 * - `recorded`: this call recorded a partial refund or a dispute whose grant had been taken back
 *   before, and took nothing back;
 * - `unchanged`: the event was applied before (redelivered, or older than one applied): nothing written;
 * - `unknown_payment`: no SUCCEEDED creditpool payment has that charge;
 * - `mismatch`: the charge's livemode, currency or amount is not the payment's (logged as an error).
 */
export interface ReversalEventResult {
  result: 'reversed' | 'recorded' | 'unchanged' | 'unknown_payment' | 'mismatch';
  /** The payment's id (null for unknown_payment). */
  paymentId: string | null;
  /** What this call took back, in micro-credits (0 unless `reversed`). */
  voidedMicroCredits: bigint;
}

/** Why the charge an event describes is not `payment`'s, or null when it is. */
function mismatchOf(event: ChargeReversalEvent, payment: PaymentRow, expectedLivemode: boolean): string | null {
  if (event.livemode !== expectedLivemode) return `livemode ${event.livemode}, expected ${expectedLivemode} for this account's payments`;
  if (event.currency !== 'usd') return `currency ${event.currency}, expected usd`;
  const cents = usdToCents(payment.amountUsd);
  if (event.kind === 'refund') {
    if (event.amountCents !== cents) return `amount ${event.amountCents} cents, expected ${cents}`;
    if (event.refundedCents < 0n || event.refundedCents > cents) return `amount_refunded ${event.refundedCents} cents, expected 0 to ${cents}`;
  } else if (event.amountCents <= 0n || event.amountCents > cents) {
    return `disputed amount ${event.amountCents} cents, expected 1 to ${cents}`;
  }
  return null;
}

/**
 * Applies a provider's refund or dispute of a charge (module comment for the rules). Idempotent:
 * applying the same event again, or an older one, changes nothing.
 * @param event what the provider reported (payments/stripe.ts reversalEventOf, or the simulator).
 * @param chargeLivemode the `livemode` of the provider's charges for an account of this mode
 *   (payments/index.ts stripeChargeLivemode); an event of the other mode is a `mismatch`.
 * @returns what was done ({@link ReversalEventResult}).
 * @throws database errors (nothing written; retry the event).
 */
export async function applyReversalEvent(
  ctx: ServiceContext,
  event: ChargeReversalEvent,
  chargeLivemode: (accountTestMode: boolean) => boolean,
): Promise<ReversalEventResult> {
  const none = { paymentId: null, voidedMicroCredits: 0n };
  if (event.providerRef === null) return { result: 'unknown_payment', ...none };
  const found = await ctx.pool.query(
    `SELECT p.*, a.test_mode FROM payments p JOIN accounts a ON a.id = p.account_id
      WHERE p.provider_ref = $1 AND p.status = 'SUCCEEDED' ORDER BY p.created_at LIMIT 2`,
    [event.providerRef],
  );
  const context = { providerRef: event.providerRef, eventId: event.eventId, eventType: event.eventType };
  if (found.rows.length === 0) return { result: 'unknown_payment', ...none };
  if (found.rows.length > 1) {
    // A provider's charge reference names one charge; two payments with it are not both this charge.
    ctx.log?.error({ ...context, paymentIds: found.rows.map((r) => r.id as string) }, 'payment reversal: several payments have this charge reference; nothing taken back, check it');
    return { result: 'mismatch', ...none };
  }
  const payment = toPaymentRow(found.rows[0]);
  const logContext = { ...context, paymentId: payment.id, accountId: payment.accountId, purpose: payment.purpose };
  const mismatch = mismatchOf(event, payment, chargeLivemode(found.rows[0].test_mode === true));
  if (mismatch) {
    ctx.log?.error({ ...logContext, mismatch }, "payment reversal: the charge is not this payment's; ignored");
    return { result: 'mismatch', paymentId: payment.id, voidedMicroCredits: 0n };
  }
  const cents = usdToCents(payment.amountUsd);
  const actor: AuditActor = ctx.actor ?? SYSTEM_ACTOR;
  const done = await withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, payment.accountId, ctx.clock());
    const { rows } = await tx.query('SELECT refunded_cents, disputed_at, reversed_at, grant_id FROM payments WHERE id = $1 FOR UPDATE', [payment.id]);
    const current = rows[0];
    assert(current && current.grant_id, 'a SUCCEEDED payment has its grant');
    const refundedBefore = toBigInt(current.refunded_cents);
    let recorded = false;
    let pausedAutoTopUp = false;
    if (event.kind === 'refund' && event.refundedCents > refundedBefore) {
      await tx.query('UPDATE payments SET refunded_cents = $2, refunded_at = $3, updated_at = $3 WHERE id = $1', [payment.id, event.refundedCents.toString(), atx.now]);
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
    if (!full || current.reversed_at !== null) {
      await atx.finish();
      return { recorded, voided: null, refunded, grantedMicroCredits, pausedAutoTopUp };
    }
    const reason =
      event.kind === 'refund'
        ? `payment ${payment.id} refunded in full by the payment provider (charge ${event.providerRef}, event ${event.eventId})`
        : `payment ${payment.id} disputed by the card holder (dispute ${event.disputeRef ?? event.eventId}, charge ${event.providerRef})`;
    // A full refund pauses auto top-up as a dispute does: the customer was given the money back,
    // and the void below may take the balance under the top-up threshold, which would charge the
    // same card again at once (balances_changed in atx.finish sees the pause).
    if (event.kind === 'refund') pausedAutoTopUp = (await pauseAutoTopUp(atx, actor, `refund: payment ${payment.id} was refunded in full`)) || pausedAutoTopUp;
    const voided = await voidLockedGrant(atx, actor, current.grant_id as string, reason);
    await tx.query('UPDATE payments SET reversed_at = $2, updated_at = $2 WHERE id = $1', [payment.id, atx.now]);
    await atx.finish();
    return { recorded: true, voided, refunded, grantedMicroCredits, pausedAutoTopUp };
  });
  if (done.pausedAutoTopUp) ctx.log?.warn(logContext, 'payment reversal: a charge of the account was refunded in full or disputed; its auto top-up is paused (setAutoTopUp re-enables it)');
  if (done.voided) {
    const unrecovered = done.voided.grantedMicroCredits - done.voided.voidedMicroCredits;
    const figures = { ...logContext, voidedMicroCredits: done.voided.voidedMicroCredits.toString(), unrecoveredMicroCredits: unrecovered.toString() };
    if (unrecovered > 0n) {
      ctx.log?.warn(figures, 'payment reversal: part of the credit of a refunded or disputed payment was already spent or expired; it is not taken back (no debt is made)');
    }
    return { result: done.voided.voidedNow ? 'reversed' : 'recorded', paymentId: payment.id, voidedMicroCredits: done.voided.voidedMicroCredits };
  }
  if (done.recorded && event.kind === 'refund' && done.refunded < cents) {
    // The pack's refunded share, rounded down: what an operator may take back by hand.
    const shareMicroCredits = (done.grantedMicroCredits * done.refunded) / cents;
    ctx.log?.warn(
      { ...logContext, refundedCents: done.refunded.toString(), amountCents: cents.toString(), refundedShareMicroCredits: shareMicroCredits.toString(), refundedShare: formatCredits(shareMicroCredits) },
      'payment reversal: a partial refund is recorded but its share of the credit is not taken back automatically (a grant is voided whole); take it back by hand if needed',
    );
  }
  return { result: done.recorded ? 'recorded' : 'unchanged', paymentId: payment.id, voidedMicroCredits: 0n };
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
