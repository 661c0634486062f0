/**
 * Settling payments from what the payment provider reports on its own (its webhooks; the Stripe
 * endpoint is src/http/stripe-webhook.ts): the reconciliation path next to the synchronous answer
 * of the charge (services/purchase-pack.ts, services/auto-top-up.ts) and the polling of PENDING
 * payments (services/resume-payment.ts, the `auto-top-up` job and the sweep).
 *
 * Why it is needed: a charge's answer can be lost (a timeout, a crash, a PaymentIntent still
 * `processing`), and a success that arrives after its payment was settled `no_charge_found` is
 * granted by that one call only: when that grant fails (the database at that moment, or the
 * balance limit) the payment stays FAILED with the customer's money taken, and nothing polls
 * FAILED payments. The provider's event names the payment (`metadata.paymentId`) and is
 * delivered until it is acknowledged (Stripe: for up to 3 days, https://docs.stripe.com/webhooks#retries),
 * so it settles such a payment once its grant can be made.
 *
 * Rules ({@link applyChargeEvent}):
 * - the event is settled through the SAME code as the synchronous answer: settlePurchase
 *   (settlePayment in one transaction under the account lock) for purchases, settleTopUpPayment
 *   (the top-up's recordOutcome) for auto top-ups. So a payment is settled once, whoever comes
 *   first (the webhook, the client's retry, the resume job, the top-up job); the grant's key
 *   `payment:<payment id>` makes its grant once;
 * - a success for a PENDING payment grants it; for a payment FAILED `no_charge_found` it is the
 *   late success and grants it once (settlePayment);
 * - a failure (declined, requires_action) for a PENDING payment settles it FAILED. This is safe
 *   because a payment has exactly one PaymentIntent and that PaymentIntent's failure is final:
 *   the payment id is the Idempotency-Key of its one create-and-confirm request, whose result a
 *   retry replays (https://docs.stripe.com/api/idempotent_requests), the key is never sent after
 *   IDEMPOTENCY_KEY_SAFE_WINDOW_MS, and creditpool never confirms a PaymentIntent again nor gives
 *   out its client secret; a failed PaymentIntent goes back to `requires_payment_method`
 *   (https://docs.stripe.com/payments/paymentintents/lifecycle) and takes no money unless it is
 *   confirmed again. The synchronous answer to that request is the same failure;
 * - events may come twice and out of order (https://docs.stripe.com/webhooks#handle-duplicate-events,
 *   https://docs.stripe.com/webhooks#event-ordering): an event for a payment that is already
 *   settled changes nothing (a failure after a success, a success replayed). One exception is
 *   logged as an error for an operator: a success for a payment FAILED by the provider's own
 *   decline (not `no_charge_found`), which the rule above says cannot happen; it is not granted
 *   automatically, since an auto top-up may have charged a newer attempt meanwhile;
 * - an event whose payment is unknown (not creditpool's, or another deployment's), or whose
 *   amount, currency or account is not the payment's, or whose mode (`livemode`) is not the one
 *   its account is charged in (a test-mode account's payment never by a live event, and a live
 *   account's not by a test event on a live-key deployment), changes nothing (the latter are logged);
 * - a settlement that cannot be made now (database unavailable, BALANCE_LIMIT) throws, and the
 *   endpoint answers 5xx so that the provider delivers the event again.
 */
import { assert } from '../ledger/errors.js';
import { usdToCents, type ChargeEvent } from '../payments/provider.js';
import { findCreditPack } from './credit-packs.js';
import { failedAsNoChargeFound, findPayment, settlePurchase, type PaymentRow } from './purchase-pack.js';
import { settleTopUpPayment } from './auto-top-up.js';
import type { ServiceContext } from './context.js';
import { isUuid } from '../db/uuid.js';

/**
 * What {@link applyChargeEvent} did with an event:
 * - `settled`: this call settled the payment (`status` after it);
 * - `unchanged`: the payment was already settled (or is settled by a concurrent call), or its
 *   auto top-up had ended: nothing written;
 * - `unknown_payment`: no creditpool payment has that id (or the event names none);
 * - `mismatch`: the charge's livemode, amount, currency or account is not the payment's (logged as an error).
 */
export interface ChargeEventResult {
  result: 'settled' | 'unchanged' | 'unknown_payment' | 'mismatch';
  /** The payment's id (null for unknown_payment). */
  paymentId: string | null;
  /** The payment's status after the call (null for unknown_payment). */
  status: PaymentRow['status'] | null;
}

/**
 * Why the charge an event describes is not `payment`'s, or null when it is (same livemode as the
 * payment's account is charged in, same account, USD, same cents).
 */
function mismatchOf(event: ChargeEvent, payment: PaymentRow, expectedLivemode: boolean): string | null {
  if (event.livemode !== expectedLivemode) return `livemode ${event.livemode}, expected ${expectedLivemode} for this account's payments`;
  if (event.currency !== 'usd') return `currency ${event.currency}, expected usd`;
  const cents = usdToCents(payment.amountUsd);
  if (event.amountCents !== cents) return `amount ${event.amountCents} cents, expected ${cents}`;
  if (event.accountId !== null && event.accountId !== payment.accountId) return 'metadata.accountId is another account';
  return null;
}

/**
 * Settles the payment a provider event names (module comment for the rules). Idempotent: applying
 * the same event (or any later event of an already settled payment) again changes nothing.
 * @param event what the provider reported (src/payments/stripe.ts chargeEventOf).
 * @param chargeLivemode the `livemode` of the provider's charges for an account of this mode
 *   (payments/index.ts stripeChargeLivemode: false for a test-mode account); an event of the other
 *   mode is a `mismatch`.
 * @returns what was done (see {@link ChargeEventResult}).
 * @throws LedgerError BAD_USER_INPUT (reason BALANCE_LIMIT) when a success's grant would take the
 *   balance above MAX_ABS_MICRO_CREDITS: nothing written, the payment keeps its status (retry the
 *   event later); database errors (nothing written, retry).
 */
export async function applyChargeEvent(
  ctx: ServiceContext,
  event: ChargeEvent,
  chargeLivemode: (accountTestMode: boolean) => boolean,
): Promise<ChargeEventResult> {
  const id = event.paymentId;
  const payment = id !== null && isUuid(id) ? await findPayment(ctx.pool, id) : null;
  if (!payment) return { result: 'unknown_payment', paymentId: null, status: null };
  const context = { paymentId: payment.id, accountId: payment.accountId, eventId: event.eventId, eventType: event.eventType };
  // The payment's account decides the mode (accounts.test_mode never changes after creation).
  const account = await ctx.pool.query('SELECT test_mode FROM accounts WHERE id = $1', [payment.accountId]);
  assert(account.rows[0], 'a payment refers to an existing account');
  const mismatch = mismatchOf(event, payment, chargeLivemode(account.rows[0].test_mode === true));
  if (mismatch) {
    ctx.log?.error({ ...context, mismatch }, 'payment event: the charge is not this payment\'s; ignored');
    return { result: 'mismatch', paymentId: payment.id, status: payment.status };
  }
  const succeeded = event.outcome.status === 'succeeded';
  if (payment.status !== 'PENDING' && !(succeeded && failedAsNoChargeFound(payment))) {
    if (succeeded && payment.status === 'FAILED') {
      ctx.log?.error(
        { ...context, error: payment.error },
        'payment event: the provider reports a success for a payment it had declined; not granted automatically: the customer may have been charged without credit, check it',
      );
    }
    return { result: 'unchanged', paymentId: payment.id, status: payment.status };
  }
  let settledNow: boolean;
  if (payment.purpose === 'PURCHASE') {
    const pack = await findCreditPack(ctx.pool, payment.packId);
    assert(pack, 'a payment refers to an existing pack');
    settledNow = (await settlePurchase(ctx, payment, pack, event.outcome)).settledNow;
  } else {
    settledNow = (await settleTopUpPayment(ctx, payment, event.outcome)).settledNow;
  }
  const after = await findPayment(ctx.pool, payment.id);
  return { result: settledNow ? 'settled' : 'unchanged', paymentId: payment.id, status: after?.status ?? payment.status };
}
