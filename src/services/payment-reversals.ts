/**
 * Taking back the credit of a payment whose money went back: the provider reports, after the
 * fact, that a SUCCEEDED charge was refunded (Stripe `charge.refunded`, e.g. from its dashboard)
 * or disputed by the card holder (a chargeback, Stripe `charge.dispute.created`). Without this,
 * money-backed credit would stay on the account with no money behind it.
 *
 * Rules ({@link applyReversalEvent}):
 * - the payment is found by the charge's reference (`payments.provider_ref`, Stripe's
 *   PaymentIntent id; Stripe copies no PaymentIntent metadata to its Charge or Dispute), among
 *   SUCCEEDED payments only (only they took money); an event without a reference ->
 *   `unknown_payment`, nothing written;
 * - when no SUCCEEDED payment has the reference YET, the event is kept (`kept`), not dropped: the
 *   charge may have succeeded at the provider while its payment is PENDING here (the charge's
 *   answer was lost) or FAILED `no_charge_found` (a late success grants it), and events come out
 *   of order (https://docs.stripe.com/webhooks#event-ordering). Acknowledging it as unknown lost
 *   it for good (the provider never sends an acknowledged event again), and the later settlement
 *   (the webhook's `payment_intent.succeeded`, the resume or top-up job, the client's retry)
 *   granted credit for money that had gone back. A kept event is one `early_payment_reversals`
 *   row per (reference, kind): a refund keeps the largest cumulative refunded amount, a dispute
 *   the first. settlePayment applies them in the transaction that settles a payment SUCCEEDED
 *   with that reference (services/charge-reversal.ts applyEarlyReversals): the grant is made and
 *   voided in one transaction, and the payment row records the refund or dispute. Keeping and
 *   settling serialize on an advisory lock of the reference, so none is lost between them.
 *   References that never become a creditpool payment (another application on the same provider
 *   account; Stripe's Charge carries no creditpool metadata to tell them apart without an API
 *   call) are deleted EARLY_REVERSAL_RETENTION_MS after they were first received by the
 *   `sweep-due` job ({@link pruneEarlyReversals});
 * - an event whose mode (`livemode`), currency or amount is not the payment's (as for payment
 *   events, services/payment-events.ts) changes nothing and is logged (`mismatch`);
 * - a FULL refund (cumulative refunded = the payment's amount) or a dispute takes back what
 *   remains unused of the grant that carries the payment's credit (its own `payment:<payment id>`,
 *   or the one a partial refund or a won dispute made since: `live_grant_id`) with voidGrant's rules
 *   (services/void-grant.ts voidLockedGrant: due expiries first, one VOID entry, the amount kept
 *   on the grant, `grant.voided` in the audit trail), with a reason naming the refund or dispute,
 *   and marks the payment `reversed_at`; in ONE transaction under the account lock, once;
 * - credit already spent (or expired) is not turned into debt: it is logged (warn: account,
 *   payment, unrecovered micro-credits) for the operator;
 * - a PARTIAL refund (0 < refunded < amount) is recorded (`refunded_cents`, `refunded_at`) and
 *   takes back the pack's refunded share: floor(pack credits x refunded / amount), less what
 *   earlier partial refunds took (`refund_taken_micro_credits`), at most what remains unused (no
 *   debt; the rest is logged). A grant is voided whole or not at all (one voided_at /
 *   voided_micro_credits per grant, which balance_figures's period credit reads), so the grant
 *   carrying the payment's credit is voided and its rest less the share granted again as a new
 *   PAID grant (same source and expiry, key `payment:<id>:refund:<refunded cents>`), which then
 *   carries it (`live_grant_id`), in one transaction (services/charge-reversal.ts
 *   takeRefundedShare). It does not pause auto top-up. A later event that brings the refund to
 *   the full amount takes back the remainder (of the live grant);
 * - a dispute, and a full refund, also pause the account's auto top-up (enabled = false,
 *   paused_at, last_error; the audit trail records `auto_top_up.updated`): a card whose holder
 *   disputes charges, or was given the money back, is not charged again until an operator
 *   re-enables it (setAutoTopUp). Without it, the void of a refunded top-up takes the balance
 *   back under its threshold and the same card is charged again at once;
 * - a dispute WON (Stripe `charge.dispute.closed` with status `won`, `charge.dispute.funds_reinstated`:
 *   kind `dispute_won`) gives back exactly what the dispute took (`payments.reversed_micro_credits`)
 *   as a new PAID grant, once (`dispute_won_at`, `dispute_won_grant_id`), unless the payment was
 *   also refunded in full; a full refund after it takes the given-back credit back; auto top-up
 *   stays paused (services/charge-reversal.ts applyDisputeWonLocked). One that comes before its
 *   dispute applies the dispute first; one that comes before its payment is settled is kept like
 *   the others (kind `dispute_won`);
 * - a refund that FAILED or was CANCELED (Stripe `charge.refund.updated` / `refund.updated` with
 *   status `failed` or `canceled`, `refund.failed`: kind `refund_failed`) gives back the credit that refund took, once per Refund id, and lowers
 *   the refunded amount; a `charge.refunded` made before the failure changes nothing afterwards
 *   (services/refund-failures.ts has the rules). One without a Refund id is `unknown_payment`. One
 *   of a charge no SUCCEEDED payment has is `not_applicable` (nothing written, logged as an
 *   error), not kept: a refund fails days after it was made (the card issuer answers), while a
 *   payment is settled within minutes of its charge (the resume job at most
 *   IDEMPOTENCY_KEY_SAFE_WINDOW_MS + LOOKUP_SETTLE_DELAY_MS later), so such a failure belongs to
 *   no creditpool payment (another application on the same provider account) or needs an
 *   operator (a refund kept for the charge would still be applied when its payment is settled);
 * - events come twice and out of order (https://docs.stripe.com/webhooks#event-ordering):
 *   `refunded_cents` only grows (an older or redelivered refund changes nothing; a NEWER one whose
 *   cumulative amount is lower reveals a refund failure not received yet: `retry_later`, nothing
 *   written, services/charge-reversal.ts), a dispute is
 *   recorded once, and the grant is taken back once whichever comes first (refund after
 *   dispute, dispute after refund: `unchanged`).
 */
import { actorOf, type AuditActor } from '../audit/audit-log.js';
import { withTransaction } from '../db/pg.js';
import type pg from 'pg';
import type { ChargeReversalEvent } from '../payments/provider.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import { toPaymentRow } from './purchase-pack.js';
import { applyReversalLocked, lockChargeReference, reportReversal, reversalMismatchOf, type ReversalEventResult } from './charge-reversal.js';

export type { ReversalEventResult } from './charge-reversal.js';

/**
 * How long a refund or dispute of a charge no payment was settled with is kept (30 days, from
 * when it was first received): far past the provider's redelivery of the payment's own success
 * (Stripe: up to 3 days, https://docs.stripe.com/webhooks#retries) and the resume job's window
 * (IDEMPOTENCY_KEY_SAFE_WINDOW_MS, then LOOKUP_SETTLE_DELAY_MS), with room for a payment held
 * PENDING by an outage or the balance limit. A payment settled later than that would keep the
 * credit of a refunded charge (README "Limits").
 */
export const EARLY_REVERSAL_RETENTION_MS = 30 * 86_400_000;

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
  const providerRef = event.providerRef;
  if (providerRef === null) return { result: 'unknown_payment', ...none };
  const context = { providerRef, eventId: event.eventId, eventType: event.eventType };
  if (event.kind === 'refund_failed' && !event.refundRef) return { result: 'unknown_payment', ...none };
  // Twice at most: a payment settled with this reference between the lookup and the keeping is
  // found by the second lookup (keepEarlyReversal saw it under the reference's lock).
  for (let attempt = 0; ; attempt++) {
    const found = await ctx.pool.query(
      `SELECT p.*, a.test_mode FROM payments p JOIN accounts a ON a.id = p.account_id
        WHERE p.provider_ref = $1 AND p.status = 'SUCCEEDED' ORDER BY p.created_at LIMIT 2`,
      [providerRef],
    );
    if (found.rows.length === 0) {
      if (event.kind === 'refund_failed') {
        ctx.log?.error({ ...context, refundRef: event.refundRef, failedRefundCents: event.amountCents.toString() }, 'payment reversal: a refund failed of a charge no payment was settled with; not applicable, nothing changed (check it)');
        return { result: 'not_applicable', ...none };
      }
      const kept = await keepEarlyReversal(ctx, event, providerRef);
      if (kept === 'settled' && attempt === 0) continue;
      return { result: kept === 'settled' ? 'unchanged' : kept, ...none };
    }
    if (found.rows.length > 1) {
      // A provider's charge reference names one charge; two payments with it are not both this charge.
      ctx.log?.error({ ...context, paymentIds: found.rows.map((r) => r.id as string) }, 'payment reversal: several payments have this charge reference; nothing taken back, check it');
      return { result: 'mismatch', ...none };
    }
    const payment = toPaymentRow(found.rows[0]);
    const mismatch = reversalMismatchOf(event, payment, chargeLivemode(found.rows[0].test_mode === true));
    if (mismatch) {
      ctx.log?.error({ ...context, paymentId: payment.id, accountId: payment.accountId, purpose: payment.purpose, mismatch }, "payment reversal: the charge is not this payment's; ignored");
      return { result: 'mismatch', paymentId: payment.id, voidedMicroCredits: 0n };
    }
    const actor: AuditActor = actorOf(ctx);
    const done = await withTransaction(ctx.pool, async (tx) => {
      const atx = await AccountTx.lock(tx, payment.accountId, ctx.clock());
      const applied = await applyReversalLocked(atx, actor, payment, event);
      await atx.finish();
      return applied;
    });
    return reportReversal(ctx, event, payment, done);
  }
}

/**
 * Keeps `event`, whose charge reference no SUCCEEDED payment has (module comment), in one
 * transaction under the reference's advisory lock. Refunds keep the largest cumulative refunded
 * amount (an older or redelivered one changes nothing), disputes the first.
 * @returns `kept` (written), `unchanged` (nothing new: redelivered or older), `unknown_payment`
 *   (not a usable refund or dispute: no positive amount, or a refunded amount outside 1..amount;
 *   nothing written), or `settled` when a payment was settled SUCCEEDED with the reference
 *   meanwhile (nothing written: apply the event to it).
 */
async function keepEarlyReversal(ctx: ServiceContext, event: ChargeReversalEvent, providerRef: string): Promise<'kept' | 'unchanged' | 'unknown_payment' | 'settled'> {
  if (event.amountCents <= 0n) return 'unknown_payment';
  if (event.kind === 'refund' && (event.refundedCents <= 0n || event.refundedCents > event.amountCents)) return 'unknown_payment';
  return withTransaction(ctx.pool, async (tx) => {
    await lockChargeReference(tx, providerRef);
    const settled = await tx.query(`SELECT 1 FROM payments WHERE provider_ref = $1 AND status = 'SUCCEEDED' LIMIT 1`, [providerRef]);
    if (settled.rows[0]) return 'settled';
    const now = ctx.clock();
    const { rows } = await tx.query(
      `INSERT INTO early_payment_reversals (provider_ref, kind, event_id, event_type, livemode, currency, amount_cents, refunded_cents, dispute_ref, received_at, updated_at, event_created_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)
       ON CONFLICT (provider_ref, kind) DO UPDATE
         SET event_id = EXCLUDED.event_id, event_type = EXCLUDED.event_type, livemode = EXCLUDED.livemode, currency = EXCLUDED.currency,
             amount_cents = EXCLUDED.amount_cents, refunded_cents = EXCLUDED.refunded_cents, updated_at = EXCLUDED.updated_at,
             event_created_at = EXCLUDED.event_created_at
         WHERE EXCLUDED.kind = 'refund' AND early_payment_reversals.refunded_cents < EXCLUDED.refunded_cents
       RETURNING 1`,
      [
        providerRef,
        event.kind,
        event.eventId,
        event.eventType,
        event.livemode,
        event.currency,
        event.amountCents.toString(),
        event.kind === 'refund' ? event.refundedCents.toString() : '0',
        event.kind !== 'refund' ? (event.disputeRef ?? event.eventId) : null, // dispute, dispute_won
        now,
        event.createdAt ?? null, // the provider's time: which refunds a refunded amount includes (services/refund-failures.ts)
      ],
    );
    return rows[0] ? 'kept' : 'unchanged';
  });
}

/**
 * Deletes the kept refunds and disputes (module comment) first received more than
 * EARLY_REVERSAL_RETENTION_MS before `now` (wall clock): charges that never became a creditpool
 * payment. Run by the `sweep-due` job; one statement, bounded by `limit` rows per call.
 * @returns how many were deleted.
 */
export async function pruneEarlyReversals(db: Pick<pg.Pool, 'query'>, now: Date, limit = 10_000): Promise<number> {
  const { rowCount } = await db.query(
    `DELETE FROM early_payment_reversals WHERE (provider_ref, kind) IN (
       SELECT provider_ref, kind FROM early_payment_reversals WHERE received_at < $1::timestamptz - make_interval(secs => $2) LIMIT $3)`,
    [now, EARLY_REVERSAL_RETENTION_MS / 1000, limit],
  );
  return rowCount ?? 0;
}
