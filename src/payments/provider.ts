/**
 * The payment provider interface (issue #4): the one external part of creditpool. Pack purchases
 * and auto top-ups charge the account's saved payment method through it, off-session (the
 * customer is not present). Two implementations: the simulator (default; src/payments/simulator.ts)
 * and Stripe (src/payments/stripe.ts).
 *
 * Rules every implementation keeps (after Stripe's API, https://docs.stripe.com/api/idempotent_requests):
 * - `idempotencyKey` names ONE charge: a second call with the same key never charges again, it
 *   answers the first call's outcome (creditpool passes the `payments` row id, so a retried or
 *   resumed purchase/top-up can never pay twice);
 * - an answer that never came (timeout, connection lost, provider 5xx) is NOT a decline: the
 *   charge may or may not have happened, so it throws {@link PaymentTimeoutError} and the caller
 *   retries later with the same key;
 * - a key is re-sent only within {@link IDEMPOTENCY_KEY_SAFE_WINDOW_MS} of the first attempt
 *   (providers forget keys: Stripe after 24 hours); later the outcome is looked up
 *   ({@link PaymentProvider.lookupCharge}), never charged again, and "no charge found" is only
 *   believed {@link LOOKUP_SETTLE_DELAY_MS} after the request was last sent;
 * - every charge and lookup says whether its account is in test mode ({@link ChargeRequest.testMode}):
 *   a test-mode account is never charged with real money (payments/mode-routing.ts).
 */
import { parseExactDecimal } from '../ledger/credits.js';
import { badInput } from '../ledger/errors.js';

/** One off-session charge. */
export interface ChargeRequest {
  /** Names the charge at the provider (creditpool: the payment id). Same key = same charge. */
  idempotencyKey: string;
  /** Amount in USD as a canonical decimal string with at most 2 fractional digits ("19.99"). */
  amountUsd: string;
  /** The saved payment method, as the provider knows it (Stripe: `pm_…` or `cus_…/pm_…`). */
  paymentMethodRef: string;
  /** The creditpool account paying (database id). */
  accountId: string;
  /**
   * Whether that account is a test-mode account (accounts.test_mode, fixed at its creation). A
   * test-mode charge must never move real money: the ModeRoutingProvider (payments/mode-routing.ts)
   * sends it to the test-mode provider, and a StripeProvider holding a live key refuses it.
   */
  testMode: boolean;
  /** Shown on the customer's statement / the provider's dashboard. */
  description: string;
  /** Free-form strings stored with the charge at the provider (payment id, pack id, purpose). */
  metadata: Record<string, string>;
}

/**
 * What a charge ended as. `succeeded`: money was taken. `declined`: it was refused (`code` is the
 * provider's reason, e.g. `card_declined`, `insufficient_funds`). `requires_action`: the bank asks
 * the customer to authenticate (3-D Secure, Stripe's `authentication_required`), which an
 * off-session charge cannot do; nothing was taken.
 */
export type ChargeOutcome =
  | { status: 'succeeded'; providerRef: string }
  | { status: 'declined'; code: string; message: string }
  | { status: 'requires_action'; providerRef: string; message: string };

/**
 * What the provider reports on its own, after the fact, about one charge creditpool made (Stripe:
 * a verified `payment_intent.*` webhook event; src/payments/stripe.ts chargeEventOf). Settled by
 * services/payment-events.ts applyChargeEvent through the same code as the charge's own answer.
 */
export interface ChargeEvent {
  /** The provider's event id (logs only: the settlement itself is idempotent per payment). */
  eventId: string;
  /** The provider's event type (logs). */
  eventType: string;
  /** `metadata.paymentId` of the charge as the provider echoes it (unvalidated; null when absent). */
  paymentId: string | null;
  /** `metadata.accountId` of the charge (database id; null when absent). */
  accountId: string | null;
  /** What the charge ended as, in the terms of {@link PaymentProvider.charge}'s answer. */
  outcome: ChargeOutcome;
  /** The charge's amount in the currency's minor unit (USD cents), as the provider recorded it. */
  amountCents: bigint;
  /** ISO currency code as the provider recorded it, lower case (`usd`). */
  currency: string;
  /**
   * Whether the provider made the charge with real money (Stripe: the event's `livemode`; false
   * for an event of Stripe's test mode). Compared with the mode the payment's account is charged
   * in (services/payment-events.ts).
   */
  livemode: boolean;
}

/**
 * What the provider reports on its own about a charge that SUCCEEDED, after the fact: money went
 * back to the customer (Stripe: a verified `charge.refunded` event, whose Charge carries the
 * cumulative `amount_refunded`) or the card holder disputed it (a chargeback; Stripe:
 * `charge.dispute.created`), and, later, that a dispute was won (the money came back) or that
 * one refund FAILED or was CANCELED (the money came back; Stripe: `charge.refund.updated` /
 * `refund.updated` with status `failed` or `canceled`, `refund.failed`). Read by src/payments/stripe.ts reversalEventOf and made by the simulator
 * (PaymentSimulator.refund / dispute / disputeWon / refundFailed); applied by services/payment-reversals.ts
 * applyReversalEvent. The payment is found by `providerRef` (Stripe copies no PaymentIntent
 * metadata to its Charge or Dispute).
 */
export interface ChargeReversalEvent {
  /** The provider's event id (logs only: applying is idempotent per payment). */
  eventId: string;
  /** The provider's event type (logs). */
  eventType: string;
  /**
   * `refund`: refundedCents is the charge's cumulative refunded amount; `dispute`: a chargeback;
   * `dispute_won`: the dispute was closed in the platform's favour and its money came back
   * (Stripe: `charge.dispute.closed` with status `won`, `charge.dispute.funds_reinstated`), which
   * gives back the credit the dispute took (services/charge-reversal.ts applyDisputeWonLocked);
   * `refund_failed`: the refund `refundRef` of `amountCents` failed or was canceled, and its money
   * came back to the platform (services/refund-failures.ts applyRefundFailureLocked).
   */
  kind: 'refund' | 'dispute' | 'dispute_won' | 'refund_failed';
  /** The charge's reference as the payment keeps it (`payments.provider_ref`; Stripe: the PaymentIntent id); null when absent. */
  providerRef: string | null;
  /**
   * The charge's amount (refund), the disputed amount (dispute, dispute_won), or the failed
   * refund's own amount (refund_failed), in USD cents, as the provider recorded it.
   */
  amountCents: bigint;
  /** refund: the charge's cumulative refunded amount in cents (Stripe `amount_refunded`); other kinds: 0. */
  refundedCents: bigint;
  /** refund_failed: the provider's id of the refund that failed (Stripe `re_…`; null when absent); other kinds: absent. */
  refundRef?: string | null;
  /**
   * When the provider made the event (Stripe: the event's `created`, whole seconds). Orders a
   * refund against a refund failure of the same charge (services/refund-failures.ts). An event
   * kept before its payment was settled keeps it (`early_payment_reversals.event_created_at`; rows
   * kept before that column: when the row was last kept). Absent or null: the applying
   * transaction's now is used.
   */
  createdAt?: Date | null;
  /** refund_failed: when the failed refund was created (Stripe: the Refund's `created`); absent or null when unknown. */
  refundCreatedAt?: Date | null;
  /** dispute, dispute_won: the provider's dispute id (Stripe `du_…`); refund: null. */
  disputeRef: string | null;
  /** ISO currency code, lower case (`usd`). */
  currency: string;
  /** Whether the charge moved real money (Stripe: the event's `livemode`); compared like {@link ChargeEvent.livemode}. */
  livemode: boolean;
}

/**
 * The provider's answer is unknown (timeout, network error, provider-side error): the charge may
 * have happened. Retry with the SAME idempotency key; never treat it as a decline.
 */
export class PaymentTimeoutError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PaymentTimeoutError';
  }
}

/** Charges payment methods (see the module comment for the rules). */
export interface PaymentProvider {
  /** The provider's name, stored on payment methods ("simulator", "stripe"). */
  readonly name: string;
  /**
   * Charges `amountUsd` to the payment method, once per idempotency key.
   * @throws PaymentTimeoutError when the outcome is unknown (retry with the same key).
   * @throws Error on misuse (malformed amount, the same key with other parameters, bad credentials).
   */
  charge(request: ChargeRequest): Promise<ChargeOutcome>;
  /**
   * Finds what became of the charge made for creditpool payment `paymentId` (every charge carries
   * it as `metadata.paymentId`), WITHOUT sending a charge: how a payment is resumed once the
   * provider may have forgotten its idempotency key ({@link IDEMPOTENCY_KEY_SAFE_WINDOW_MS}).
   * @returns the charge's outcome, or null when the provider has no charge for that payment (yet:
   *   a request still in flight, or a finished one its search does not show yet, is not found;
   *   see {@link LOOKUP_SETTLE_DELAY_MS}).
   * @param testMode whether the payment's account is a test-mode account (the provider of that mode is asked; see {@link ChargeRequest.testMode}).
   * @throws PaymentTimeoutError when the answer is unknown (no answer, or the charge is still processing).
   */
  lookupCharge(paymentId: string, testMode: boolean): Promise<ChargeOutcome | null>;
}

/**
 * How long after a payment's first charge attempt its idempotency key may still be re-sent:
 * 23 hours. Stripe prunes keys "after they're at least 24 hours old" and "generate[s] a new
 * request if a key is reused after the original is pruned"
 * (https://docs.stripe.com/api/idempotent_requests, https://docs.stripe.com/idempotency), so
 * re-sending an older key could charge a second time. Past this window a PENDING payment is
 * settled by {@link PaymentProvider.lookupCharge} only; the hour of margin covers clock skew
 * between creditpool and the provider and a request in flight at the edge.
 */
export const IDEMPOTENCY_KEY_SAFE_WINDOW_MS = 23 * 3_600_000;

/**
 * How long after a payment's request was last SENT (`payments.last_sent_at`) a lookup that finds
 * no charge ({@link PaymentProvider.lookupCharge} answering null) still means "unknown", not "never
 * charged": 15 minutes. Until then the payment stays PENDING as after a timeout, and is looked up
 * again later; only afterwards is it settled as declined (`no_charge_found`). A request sent just
 * before {@link IDEMPOTENCY_KEY_SAFE_WINDOW_MS} closed can still be in flight when the first lookup
 * runs, and a finished charge is not found at once either:
 * - the Stripe adapter waits up to 30 s per request and retries twice with the same key
 *   (src/payments/stripe.ts, `timeoutMs`/`maxNetworkRetries`), so about 1.5 minutes in all;
 * - Stripe's search is eventually consistent: under normal conditions data is searchable in
 *   under a minute, later during an outage (https://docs.stripe.com/search#data-freshness).
 * The rest of the margin covers a process that stalls between recording the send and sending it,
 * and clock skew between creditpool processes. A success that still arrives after the payment
 * was settled `no_charge_found` is granted, not dropped (services/purchase-pack.ts settlePayment).
 */
export const LOOKUP_SETTLE_DELAY_MS = 15 * 60_000;

/** Most cents one charge may be (Stripe's card limit: $999,999.99). */
export const MAX_CHARGE_CENTS = 99_999_999n;

/**
 * Exact USD cents of a decimal string ("19.99" -> 1999n, "5" -> 500n); no floating point.
 * @throws LedgerError BAD_USER_INPUT when not a decimal with at most 2 fractional digits,
 *   negative, or above {@link MAX_CHARGE_CENTS}.
 */
export function usdToCents(amountUsd: string): bigint {
  const d = parseExactDecimal(amountUsd, 'amountUsd', 2);
  const cents = d.units * 10n ** BigInt(2 - d.scale);
  if (cents < 0n || cents > MAX_CHARGE_CENTS) throw badInput('amountUsd', 'must be 0 to 999999.99');
  return cents;
}
