/**
 * The Stripe adapter (PAYMENT_PROVIDER=stripe), on the official `stripe` SDK. A charge is one
 * off-session PaymentIntent, created and confirmed in one request
 * (https://docs.stripe.com/payments/save-and-reuse#charge-saved-payment-method:
 * `confirm: true, off_session: true, payment_method, customer`), sent with the payment id as
 * Stripe's `Idempotency-Key` (https://docs.stripe.com/api/idempotent_requests: a retry with the
 * same key returns the first result, for 24 hours). Outcomes:
 * - PaymentIntent `succeeded` -> succeeded (providerRef = the PaymentIntent id);
 * - card error `authentication_required` (the bank wants 3-D Secure, which needs the customer:
 *   https://docs.stripe.com/payments/3d-secure) or a PaymentIntent in `requires_action` -> requires_action;
 * - any other card error (`card_declined`, `insufficient_funds`, ...) or a PaymentIntent left
 *   without a usable payment method -> declined (code = Stripe's decline_code, else its code);
 * - no answer (connection error, timeout), 409 (same key still in flight), 429 and 5xx, or a
 *   PaymentIntent still `processing` -> PaymentTimeoutError: the outcome is unknown, retry with the
 *   same key (https://docs.stripe.com/error-low-level#idempotency).
 * A payment whose key Stripe may have pruned (24 hours) is looked up instead of charged again:
 * lookupCharge searches PaymentIntents by `metadata['paymentId']`
 * (https://docs.stripe.com/search#search-query-language). Search is eventually consistent (under
 * a minute normally: https://docs.stripe.com/search#data-freshness), and a request sent just
 * before the window closed may still be in flight, so an empty answer is only believed
 * LOOKUP_SETTLE_DELAY_MS after the payment's last send (services/purchase-pack.ts settlePayment).
 * Webhooks are verified with Stripe's signature scheme (https://docs.stripe.com/webhooks#verify-events)
 * and read by chargeEventOf (the endpoint: src/http/stripe-webhook.ts); verifyWebhookEvent checks
 * them under the live and the test endpoint's secrets, each of which only signs events of its mode.
 * A provider holding a live key refuses a test-mode account's charge or lookup (test mode never
 * moves real money: payments/mode-routing.ts routes those elsewhere; this is the last guard).
 */
import Stripe from 'stripe';
import { isStripeTestKey } from './mode-routing.js';
import { PaymentTimeoutError, usdToCents, type ChargeEvent, type ChargeReversalEvent, type ChargeOutcome, type ChargeRequest, type PaymentProvider } from './provider.js';

/**
 * Where and how the SDK reaches Stripe, apart from the key: `host`/`port`/`protocol` point it
 * elsewhere (tests: a local fake of Stripe's API); all unset in production (api.stripe.com).
 */
export interface StripeConnection {
  host?: string;
  port?: number;
  protocol?: 'http' | 'https';
  /** Request timeout in milliseconds (default 30 s); past it the charge is a PaymentTimeoutError. */
  timeoutMs?: number;
  /** Retries the SDK itself makes, with the same idempotency key (default 2). */
  maxNetworkRetries?: number;
}

/** How to reach Stripe: a key and the connection (see {@link StripeConnection}). */
export interface StripeProviderOptions extends StripeConnection {
  /** Secret API key (`sk_live_…` / `sk_test_…`). */
  secretKey: string;
}

/** Splits a stored reference: `pm_…` or `cus_…/pm_…` (a method attached to a customer). */
function parseReference(ref: string): { customer?: string; paymentMethod: string } {
  const slash = ref.indexOf('/');
  return slash < 0 ? { paymentMethod: ref } : { customer: ref.slice(0, slash), paymentMethod: ref.slice(slash + 1) };
}

/** True when Stripe's answer leaves the outcome unknown or says "try again later". */
function outcomeUnknown(err: InstanceType<typeof Stripe.errors.StripeError>): boolean {
  const status = err.statusCode ?? 0;
  return err instanceof Stripe.errors.StripeConnectionError || status === 409 || status === 429 || status >= 500;
}

/**
 * What a PaymentIntent whose payment attempt failed means for the charge: its `last_payment_error`
 * `authentication_required` (the bank wants 3-D Secure from an off-session charge:
 * https://docs.stripe.com/payments/save-and-reuse#charge-saved-payment-method) is requires_action,
 * as charge() answers that card error; any other error is declined with Stripe's decline_code,
 * else its code, else `fallbackCode`.
 */
function failedAttemptOf(intent: Stripe.PaymentIntent, fallbackCode: string): ChargeOutcome {
  const e = intent.last_payment_error;
  if (e?.code === 'authentication_required') return { status: 'requires_action', providerRef: intent.id, message: e.message ?? 'The payment requires the customer to authenticate.' };
  return { status: 'declined', code: e?.decline_code ?? e?.code ?? fallbackCode, message: e?.message ?? `PaymentIntent ${intent.status}` };
}

/** What a PaymentIntent's status means for the charge (module comment). @throws PaymentTimeoutError while it is `processing`. */
function outcomeOfIntent(intent: Stripe.PaymentIntent): ChargeOutcome {
  switch (intent.status) {
    case 'succeeded':
      return { status: 'succeeded', providerRef: intent.id };
    case 'requires_action':
      return { status: 'requires_action', providerRef: intent.id, message: 'The payment requires the customer to authenticate.' };
    case 'processing':
      throw new PaymentTimeoutError(`stripe: PaymentIntent ${intent.id} is still processing`);
    default:
      return failedAttemptOf(intent, intent.status);
  }
}

/**
 * The object a verified event carries (`data.object`), or an empty object when it has none or
 * it is not an object: the event is then read as naming no payment (`unknown_payment`, answered
 * 200) instead of throwing while it is read, which dropped the request without an answer (Stripe
 * delivers such an event again for days).
 */
function eventObjectOf(event: Stripe.Event): Record<string, unknown> {
  const data: unknown = (event as { data?: unknown }).data;
  const object = data && typeof data === 'object' ? (data as { object?: unknown }).object : undefined;
  return object && typeof object === 'object' && !Array.isArray(object) ? (object as Record<string, unknown>) : {};
}

/**
 * The webhook event types that settle a payment (https://docs.stripe.com/api/events/types), each a
 * PaymentIntent outcome that is final for that PaymentIntent:
 * - `payment_intent.succeeded`: the money was taken;
 * - `payment_intent.payment_failed`: the payment attempt failed and the PaymentIntent went back to
 *   `requires_payment_method` (https://docs.stripe.com/payments/paymentintents/lifecycle); only a
 *   new confirmation could still charge it, and creditpool never confirms a PaymentIntent again
 *   (its one create-and-confirm request is replayed by its Idempotency-Key, never re-executed:
 *   https://docs.stripe.com/api/idempotent_requests) nor hands out its client secret;
 * - `payment_intent.requires_action`: the bank wants the customer, whom an off-session charge
 *   does not have (charge() answers the same request requires_action);
 * - `payment_intent.canceled`: a canceled PaymentIntent can never be charged.
 * Others (`created`, `processing`, `amount_capturable_updated`, ...) say nothing final and are ignored.
 */
export const SETTLING_EVENT_TYPES = ['payment_intent.succeeded', 'payment_intent.payment_failed', 'payment_intent.requires_action', 'payment_intent.canceled'] as const;

/**
 * The charge outcome a verified Stripe event reports ({@link SETTLING_EVENT_TYPES}), from the
 * PaymentIntent snapshot it carries (`data.object`; the adapter's charges carry `metadata.paymentId`
 * and `metadata.accountId`): succeeded -> succeeded (providerRef = the PaymentIntent id);
 * payment_failed and canceled -> declined (decline_code, else code, else `payment_failed` /
 * `canceled`), or requires_action for `authentication_required`, as charge() maps the same error;
 * requires_action -> requires_action. The outcome follows the event's TYPE, not the snapshot's
 * status, since events may arrive out of order (https://docs.stripe.com/webhooks#event-ordering).
 * `livemode` is the event's (false unless it is literally true).
 * @returns null for any other event type (nothing to settle).
 */
export function chargeEventOf(event: Stripe.Event): ChargeEvent | null {
  if (!(SETTLING_EVENT_TYPES as readonly string[]).includes(event.type)) return null;
  const intent = eventObjectOf(event) as unknown as Stripe.PaymentIntent; // fields it lacks read as undefined
  let outcome: ChargeOutcome;
  switch (event.type) {
    case 'payment_intent.succeeded':
      outcome = { status: 'succeeded', providerRef: intent.id };
      break;
    case 'payment_intent.requires_action':
      outcome = { status: 'requires_action', providerRef: intent.id, message: 'The payment requires the customer to authenticate.' };
      break;
    case 'payment_intent.canceled':
      outcome = failedAttemptOf(intent, 'canceled');
      break;
    default:
      outcome = failedAttemptOf(intent, 'payment_failed');
  }
  const metadata = intent.metadata ?? {};
  return {
    livemode: event.livemode === true,
    eventId: event.id,
    eventType: event.type,
    paymentId: typeof metadata.paymentId === 'string' ? metadata.paymentId : null,
    accountId: typeof metadata.accountId === 'string' ? metadata.accountId : null,
    outcome,
    amountCents: BigInt(Number.isSafeInteger(intent.amount) ? intent.amount : -1),
    currency: String(intent.currency ?? '').toLowerCase(),
  };
}

/**
 * The webhook event types that tell a dispute was WON (the disputed money came back to the
 * platform), which gives back the credit the dispute took (services/charge-reversal.ts
 * applyDisputeWonLocked):
 * - `charge.dispute.closed` whose Dispute has `status: 'won'` (`lost` and `warning_closed` change
 *   nothing: {@link reversalEventOf} returns null for them);
 * - `charge.dispute.funds_reinstated`: Stripe returned the withdrawn funds to the platform's
 *   balance (https://docs.stripe.com/disputes/how-disputes-work); taken as won whatever the
 *   Dispute's status, since the money came back. Both may come for one dispute: applied once.
 */
export const DISPUTE_WON_EVENT_TYPES = ['charge.dispute.closed', 'charge.dispute.funds_reinstated'] as const;

/**
 * The webhook event types that tell a REFUND FAILED (https://docs.stripe.com/refunds, "Failed
 * refunds": the card issuer could not return the money, e.g. a closed or lost card; Stripe returns
 * it to the platform's balance, records it as the Refund's `failure_balance_transaction`, and sets
 * the Refund's `status` to `failed`), which gives back the credit the refund took
 * (services/refund-failures.ts applyRefundFailureLocked):
 * - `charge.refund.updated` whose Refund has `status: 'failed'` (other updates change nothing:
 *   {@link reversalEventOf} returns null for them);
 * - `refund.updated` with `status: 'failed'` and `refund.failed`: sent for every refund on API
 *   versions from 2024-10-28.acacia (https://docs.stripe.com/changelog/acacia/2024-10-28/refund-webhook-update).
 * - `charge.refund.updated` / `refund.updated` whose Refund has `status: 'canceled'`: a refund
 *   canceled after it was made (https://docs.stripe.com/api/refunds/object: `pending`,
 *   `requires_action`, `succeeded`, `failed` or `canceled`). The API cancels only refunds in
 *   `requires_action`, which card refunds never enter (https://docs.stripe.com/api/refunds/cancel),
 *   but Stripe lets some card refunds be canceled from the Dashboard for a while after they are
 *   made (https://support.stripe.com/questions/canceling-a-refund). Either way the money never
 *   left the platform (Stripe records a `failure_balance_transaction`, and the Charge's
 *   `amount_refunded` no longer counts it), exactly as for a failure: applied by the same rules.
 *   A refund canceled before its `charge.refunded` was applied changes nothing but its record
 *   (services/refund-failures.ts, "never applied").
 * Several may come for one refund: applied once per Refund id (a refund is canceled or fails, not
 * both; an event of either kind for a refund already applied is `unchanged`). The Refund object
 * carries `id`, `amount` (the refund's own amount, cents), `currency`, `payment_intent`, `created`.
 */
export const REFUND_FAILURE_EVENT_TYPES = ['charge.refund.updated', 'refund.updated', 'refund.failed'] as const;

/**
 * The Refund `status` values of a `charge.refund.updated` / `refund.updated` whose money came back
 * to the platform: `failed` (the card issuer could not return it) and `canceled` (see
 * {@link REFUND_FAILURE_EVENT_TYPES}). Other statuses (`pending`, `requires_action`, `succeeded`)
 * change nothing (`ignored`).
 */
export const REFUND_MONEY_BACK_STATUSES: readonly string[] = ['failed', 'canceled'];

/**
 * The webhook event types that take back a SUCCEEDED payment's credit, or give it back (services/payment-reversals.ts):
 * - `charge.refunded`: a refund of the charge (full or partial: its Charge's `amount_refunded` is
 *   the cumulative refunded amount; https://docs.stripe.com/api/charges/object);
 * - `charge.dispute.created`: the card holder disputed the charge; Stripe withdraws the disputed
 *   amount from the platform's balance (https://docs.stripe.com/disputes/how-disputes-work). Not
 *   for an inquiry (status `warning_needs_response`, `warning_under_review`): a pre-dispute request
 *   for information takes no money, so nothing is taken back; when one escalates, Stripe withdraws
 *   the funds and reports it with `charge.dispute.funds_withdrawn`;
 * - `charge.dispute.funds_withdrawn`: the disputed amount was withdrawn (a chargeback, and an
 *   inquiry that became one); the same dispute as its `charge.dispute.created`, applied once
 *   (the payment's `disputed_at`);
 * - {@link DISPUTE_WON_EVENT_TYPES}: the dispute was won;
 * - {@link REFUND_FAILURE_EVENT_TYPES}: a refund failed.
 */
export const REVERSAL_EVENT_TYPES = ['charge.refunded', 'charge.dispute.created', 'charge.dispute.funds_withdrawn', ...DISPUTE_WON_EVENT_TYPES, ...REFUND_FAILURE_EVENT_TYPES] as const;

/** A Stripe expandable reference (`"pi_…"` or the expanded object) as its id, or null. */
function refId(ref: unknown): string | null {
  if (typeof ref === 'string') return ref;
  if (ref && typeof ref === 'object' && typeof (ref as { id?: unknown }).id === 'string') return (ref as { id: string }).id;
  return null;
}

/** A Stripe integer amount as bigint cents (-1 when it is not a safe integer, which no payment matches). */
function centsOf(amount: unknown): bigint {
  return BigInt(typeof amount === 'number' && Number.isSafeInteger(amount) ? amount : -1);
}

/** A Stripe timestamp (Unix seconds) as a Date, or null when it is not a safe non-negative integer. */
function dateOf(seconds: unknown): Date | null {
  return typeof seconds === 'number' && Number.isSafeInteger(seconds) && seconds >= 0 && seconds <= 253_402_300_799 ? new Date(seconds * 1000) : null;
}

/**
 * The refund or dispute a verified Stripe event reports ({@link REVERSAL_EVENT_TYPES}), from the
 * object it carries: a Charge (`payment_intent`, `amount`, `amount_refunded`, `currency`) for
 * `charge.refunded`, a Dispute (`id`, `payment_intent`, `amount`, `currency`) for
 * `charge.dispute.created` and the won dispute types ({@link DISPUTE_WON_EVENT_TYPES}: kind
 * `dispute_won`), a Refund (`id`, `payment_intent`, `amount`, `currency`, `created`) for the
 * failure types ({@link REFUND_FAILURE_EVENT_TYPES}: kind `refund_failed`, `amountCents` the
 * refund's own amount). `providerRef` is the PaymentIntent id, which the payment keeps as its
 * provider_ref. `livemode` is the event's (false unless it is literally true); `createdAt` is the
 * event's `created` (null when it is not a timestamp). Missing or malformed fields are read as
 * null / -1 cents, which no payment matches (answered `unknown_payment` or `mismatch`).
 * @returns null for any other event type, for a `charge.dispute.closed` whose status is not `won`,
 *   for a `charge.dispute.created` of an inquiry (status `warning_…`: no money was taken), and for
 *   a `charge.refund.updated` / `refund.updated` whose Refund's status is neither `failed` nor
 *   `canceled` ({@link REFUND_MONEY_BACK_STATUSES}).
 */
export function reversalEventOf(event: Stripe.Event): ChargeReversalEvent | null {
  const base = { eventId: event.id, eventType: event.type, livemode: event.livemode === true, createdAt: dateOf((event as { created?: unknown }).created) };
  if ((REFUND_FAILURE_EVENT_TYPES as readonly string[]).includes(event.type)) {
    const refund = eventObjectOf(event) as Partial<Stripe.Refund>;
    if (event.type !== 'refund.failed' && !REFUND_MONEY_BACK_STATUSES.includes(refund.status as string)) return null; // pending, succeeded, …: nothing came back
    return {
      ...base,
      kind: 'refund_failed',
      providerRef: refId(refund.payment_intent),
      amountCents: centsOf(refund.amount),
      refundedCents: 0n,
      disputeRef: null,
      refundRef: typeof refund.id === 'string' && refund.id !== '' ? refund.id : null,
      refundCreatedAt: dateOf(refund.created),
      currency: String(refund.currency ?? '').toLowerCase(),
    };
  }
  if (event.type === 'charge.refunded') {
    const charge = eventObjectOf(event) as Partial<Stripe.Charge>;
    return {
      ...base,
      kind: 'refund',
      providerRef: refId(charge.payment_intent),
      amountCents: centsOf(charge.amount),
      refundedCents: centsOf(charge.amount_refunded),
      disputeRef: null,
      currency: String(charge.currency ?? '').toLowerCase(),
    };
  }
  const wonType = event.type === 'charge.dispute.funds_reinstated' || event.type === 'charge.dispute.closed';
  if (event.type === 'charge.dispute.created' || event.type === 'charge.dispute.funds_withdrawn' || wonType) {
    const dispute = eventObjectOf(event) as Partial<Stripe.Dispute>;
    if (event.type === 'charge.dispute.closed' && dispute.status !== 'won') return null; // lost, warning_closed: nothing to give back
    // An inquiry takes no money (REVERSAL_EVENT_TYPES): its credit stays until funds_withdrawn.
    if (event.type === 'charge.dispute.created' && typeof dispute.status === 'string' && dispute.status.startsWith('warning_')) return null;
    return {
      ...base,
      kind: wonType ? 'dispute_won' : 'dispute',
      providerRef: refId(dispute.payment_intent),
      amountCents: centsOf(dispute.amount),
      refundedCents: 0n,
      disputeRef: typeof dispute.id === 'string' ? dispute.id : null,
      currency: String(dispute.currency ?? '').toLowerCase(),
    };
  }
  return null;
}

/** A webhook endpoint's signing secret (`whsec_…`) and the `livemode` of every event it signs. */
export interface WebhookEndpointSecret {
  secret: string;
  /** Stripe signs live events only with a live-mode endpoint's secret, test events with a test-mode one's. */
  livemode: boolean;
}

/**
 * A webhook whose signature is valid under an endpoint's secret, but whose `livemode` is not that
 * endpoint's mode: not an event that endpoint can have received from Stripe (a secret configured
 * for the wrong mode, or a forged event).
 */
export class WebhookLivemodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookLivemodeError';
  }
}

/**
 * Verifies a webhook's `Stripe-Signature` header against the raw body under each of `secrets`
 * (Stripe's scheme, 5-minute tolerance) and returns the event if it is valid under a secret whose
 * `livemode` is the event's.
 * @throws WebhookLivemodeError when it is valid only under secrets of the other mode.
 * @throws Stripe.errors.StripeSignatureVerificationError when it is valid under none (or none is given);
 *   SyntaxError for a validly signed body that is not JSON.
 */
export function verifyWebhookEvent(rawBody: string | Buffer, signatureHeader: string, secrets: readonly WebhookEndpointSecret[]): Stripe.Event {
  let otherMode: { event: Stripe.Event; secretLivemode: boolean } | null = null;
  let invalid: unknown = null;
  for (const { secret, livemode } of secrets) {
    let event: Stripe.Event;
    try {
      event = Stripe.webhooks.constructEvent(rawBody, signatureHeader, secret);
    } catch (err) {
      if (!(err instanceof Stripe.errors.StripeSignatureVerificationError)) throw err;
      invalid = err;
      continue;
    }
    if (event.livemode === livemode) return event;
    otherMode = { event, secretLivemode: livemode };
  }
  if (otherMode) {
    const { event, secretLivemode } = otherMode;
    throw new WebhookLivemodeError(`event ${event.id} has livemode ${String(event.livemode)}, but is signed with the secret of the ${secretLivemode ? 'live' : 'test'}-mode endpoint`);
  }
  throw invalid ?? new Stripe.errors.StripeSignatureVerificationError(signatureHeader, rawBody, { message: 'no webhook signing secret is configured' });
}

/** Charges saved payment methods through Stripe PaymentIntents (module comment). */
export class StripeProvider implements PaymentProvider {
  readonly name = 'stripe';
  private readonly stripe: Stripe;
  /** The key is a test-mode key (sk_test_/rk_test_): the only kind that may serve test-mode accounts. */
  private readonly testKey: boolean;

  constructor(opts: StripeProviderOptions) {
    this.testKey = isStripeTestKey(opts.secretKey);
    this.stripe = new Stripe(opts.secretKey, {
      host: opts.host,
      port: opts.port,
      protocol: opts.protocol,
      timeout: opts.timeoutMs ?? 30_000,
      maxNetworkRetries: opts.maxNetworkRetries ?? 2,
      telemetry: false,
    });
  }

  /**
   * Creates and confirms one off-session PaymentIntent in USD cents (exact from the decimal string).
   * @throws PaymentTimeoutError when the outcome is unknown (module comment).
   * @throws Stripe's error for anything else (bad key, invalid request, idempotency key reused
   *   with other parameters): a configuration problem or a bug, not a decline.
   * @throws Error, sending nothing, for a test-mode account's charge (`request.testMode`) when
   *   this provider's key is not a test key.
   */
  async charge(request: ChargeRequest): Promise<ChargeOutcome> {
    this.assertMode(request.testMode);
    const { customer, paymentMethod } = parseReference(request.paymentMethodRef);
    let intent: Stripe.PaymentIntent;
    try {
      intent = await this.stripe.paymentIntents.create(
        {
          amount: Number(usdToCents(request.amountUsd)),
          currency: 'usd',
          payment_method: paymentMethod,
          ...(customer ? { customer } : {}),
          confirm: true,
          off_session: true,
          description: request.description,
          metadata: { ...request.metadata, accountId: request.accountId },
        },
        { idempotencyKey: request.idempotencyKey },
      );
    } catch (err) {
      if (!(err instanceof Stripe.errors.StripeError)) throw err;
      if (outcomeUnknown(err)) throw new PaymentTimeoutError(`stripe: no definite answer (${err.message})`, { cause: err });
      if (!(err instanceof Stripe.errors.StripeCardError)) throw err;
      if (err.code === 'authentication_required') {
        return { status: 'requires_action', providerRef: err.payment_intent?.id ?? '', message: err.message };
      }
      return { status: 'declined', code: err.decline_code ?? err.code ?? 'card_declined', message: err.message };
    }
    return outcomeOfIntent(intent);
  }

  /**
   * Finds the PaymentIntent created for creditpool payment `paymentId` (search by
   * `metadata['paymentId']`; a succeeded one wins if there are several) and maps it like charge().
   * Sends no charge.
   * @returns its outcome, or null when Stripe has no PaymentIntent for the payment.
   * @throws PaymentTimeoutError when Stripe does not answer definitely, or the PaymentIntent is still processing.
   * @throws Stripe's error for anything else (bad key, search not available on the account).
   * @throws Error, sending nothing, for a test-mode account's payment when this provider's key is not a test key.
   */
  async lookupCharge(paymentId: string, testMode: boolean): Promise<ChargeOutcome | null> {
    this.assertMode(testMode);
    let found: Stripe.ApiSearchResult<Stripe.PaymentIntent>;
    try {
      found = await this.stripe.paymentIntents.search({ query: `metadata['paymentId']:'${paymentId.replace(/[\\']/g, '\\$&')}'`, limit: 10 });
    } catch (err) {
      if (err instanceof Stripe.errors.StripeError && outcomeUnknown(err)) throw new PaymentTimeoutError(`stripe: no definite answer (${err.message})`, { cause: err });
      throw err;
    }
    const intents = found.data;
    if (intents.length === 0) return null;
    return outcomeOfIntent(intents.find((i) => i.status === 'succeeded') ?? intents[0]!);
  }

  /** Refuses a test-mode account's request on a key that is not a test key (a wiring bug: it would be real money). */
  private assertMode(testMode: boolean): void {
    if (testMode && !this.testKey) throw new Error('stripe: a test-mode account is never charged or looked up with a live key (configure STRIPE_TEST_SECRET_KEY)');
  }
}
