/**
 * The payment simulator: the default PaymentProvider (PAYMENT_PROVIDER=simulator) for local runs,
 * demos and tests. It moves no money, but keeps the rules of a real provider (src/payments/provider.ts):
 * one charge per idempotency key (a repeated key answers the first outcome and never charges
 * again; the same key with another amount or payment method is an error, like Stripe's
 * `idempotency_error`), and a lost answer is a PaymentTimeoutError, whether or not the charge
 * happened. Like Stripe, it can forget idempotency keys ({@link PaymentSimulator.pruneIdempotencyKeys}:
 * a forgotten key charges again), while the charges themselves stay findable by the payment id
 * in their metadata ({@link PaymentSimulator.lookupCharge}).
 *
 * What a charge does is chosen per payment-method reference:
 * - a script queued with {@link PaymentSimulator.script} (first entry first), else
 * - the reference's prefix: `pm_decline_…` declines (card_declined), `pm_requires_action_…` needs
 *   the customer (authentication_required), `pm_timeout_…` never answers; anything else succeeds.
 *
 * After the fact, a succeeded charge can be refunded ({@link PaymentSimulator.refund}, in full or
 * in part) or disputed ({@link PaymentSimulator.dispute}), its dispute won
 * ({@link PaymentSimulator.disputeWon}), and one of its refunds fail
 * ({@link PaymentSimulator.refundFailed}): each returns the event Stripe would send (a
 * ChargeReversalEvent, `createdAt` strictly increasing across the simulator's events), which
 * services/payment-reversals.ts applyReversalEvent applies exactly as the Stripe webhook's
 * `charge.refunded` / `charge.dispute.created` / `charge.dispute.closed` / `charge.refund.updated`.
 */
import { randomUUID } from 'node:crypto';
import { PaymentTimeoutError, usdToCents, type ChargeOutcome, type ChargeRequest, type ChargeReversalEvent, type PaymentProvider } from './provider.js';

/**
 * What one simulated charge does. `timeout`: no charge and no answer. `timeout_after_charge`: the
 * charge happens but the answer is lost (a retry with the same key then answers `succeeded`).
 */
export type SimulatedResult = 'succeed' | 'decline' | 'requires_action' | 'timeout' | 'timeout_after_charge';

const PREFIX_RESULTS: ReadonlyArray<readonly [string, SimulatedResult]> = [
  ['pm_decline_', 'decline'],
  ['pm_requires_action_', 'requires_action'],
  ['pm_timeout_', 'timeout'],
];

/** One refund of a simulated charge. */
interface SimulatedRefund {
  id: string;
  cents: bigint;
  createdAt: Date;
  failed: boolean;
}

/** A succeeded simulated charge: what refunds and disputes act on. */
interface SimulatedCharge {
  cents: bigint;
  testMode: boolean;
  providerRef: string;
  /** Cumulative refunded cents, failed refunds not counted (Stripe's `amount_refunded`). */
  refundedCents: bigint;
  refunds: SimulatedRefund[];
  disputeRef?: string;
}

interface StoredCharge {
  cents: bigint;
  paymentMethodRef: string;
  outcome: ChargeOutcome;
}

/** A PaymentProvider that simulates charges in memory (module comment). */
export class PaymentSimulator implements PaymentProvider {
  readonly name = 'simulator';
  private readonly byKey = new Map<string, StoredCharge>();
  private readonly scripts = new Map<string, SimulatedResult[]>();
  private readonly charged = new Map<string, number>();
  /** Outcome per `metadata.paymentId`: what lookupCharge finds (never pruned, like Stripe's PaymentIntents). */
  private readonly byPayment = new Map<string, ChargeOutcome>();
  /** Succeeded charges by `metadata.paymentId`: what refund and dispute act on. */
  private readonly succeeded = new Map<string, SimulatedCharge>();
  /** The creation time of the last event made (ms): each next one is later, as a provider's own clock orders them. */
  private lastEventMs = 0;

  /** Queues what the next charges of `paymentMethodRef` do (new keys only; a replay answers the first outcome). */
  script(paymentMethodRef: string, results: SimulatedResult[]): void {
    this.scripts.set(paymentMethodRef, [...(this.scripts.get(paymentMethodRef) ?? []), ...results]);
  }

  /** Charges that really happened (money taken), for one payment method or in all. */
  chargeCount(paymentMethodRef?: string): number {
    if (paymentMethodRef !== undefined) return this.charged.get(paymentMethodRef) ?? 0;
    let n = 0;
    for (const c of this.charged.values()) n += c;
    return n;
  }

  /**
   * Forgets every idempotency key seen so far, as Stripe does with keys older than 24 hours: a
   * charge sent again with a forgotten key is a NEW charge (money taken again). Charges made stay
   * findable with {@link lookupCharge}.
   */
  pruneIdempotencyKeys(): void {
    this.byKey.clear();
  }

  /**
   * The outcome of the charge made for `paymentId` (its `metadata.paymentId`), or null when none
   * was made (never sent, or a `timeout` that charged nothing). Sends no charge.
   */
  async lookupCharge(paymentId: string): Promise<ChargeOutcome | null> {
    return this.byPayment.get(paymentId) ?? null;
  }

  /**
   * Simulates one charge (module comment).
   * @throws PaymentTimeoutError for `timeout` / `timeout_after_charge`.
   * @throws Error when the key was used with another amount or payment method.
   */
  async charge(request: ChargeRequest): Promise<ChargeOutcome> {
    const cents = usdToCents(request.amountUsd);
    const prior = this.byKey.get(request.idempotencyKey);
    if (prior) {
      if (prior.cents !== cents || prior.paymentMethodRef !== request.paymentMethodRef) {
        throw new Error(`idempotency key ${request.idempotencyKey} was used with other parameters`);
      }
      return prior.outcome;
    }
    const ref = request.paymentMethodRef;
    const result = this.scripts.get(ref)?.shift() ?? PREFIX_RESULTS.find(([prefix]) => ref.startsWith(prefix))?.[1] ?? 'succeed';
    if (result === 'timeout') throw new PaymentTimeoutError('simulated timeout: no answer, nothing charged');
    const outcome = this.outcomeOf(result);
    this.byKey.set(request.idempotencyKey, { cents, paymentMethodRef: ref, outcome });
    const paymentId = request.metadata.paymentId;
    if (paymentId !== undefined && this.byPayment.get(paymentId)?.status !== 'succeeded') this.byPayment.set(paymentId, outcome);
    if (outcome.status === 'succeeded') {
      this.charged.set(ref, (this.charged.get(ref) ?? 0) + 1);
      if (paymentId !== undefined && !this.succeeded.has(paymentId)) {
        this.succeeded.set(paymentId, { cents, testMode: request.testMode, providerRef: outcome.providerRef, refundedCents: 0n, refunds: [] });
      }
    }
    if (result === 'timeout_after_charge') throw new PaymentTimeoutError('simulated timeout: charged, answer lost');
    return outcome;
  }

  /**
   * Refunds `amountCents` more of the succeeded charge of payment `paymentId` (default: all that
   * is left) and returns the `refund` event Stripe's `charge.refunded` would carry: the charge's
   * amount and its cumulative refunded amount, `livemode` true unless the charge was a test-mode
   * one. The refund's id (`sim_re_…`) is the event's `refundRef`: {@link refundFailed} names it.
   * @throws Error when the payment has no succeeded charge here, or the refund exceeds what is left.
   */
  refund(paymentId: string, amountCents?: bigint): ChargeReversalEvent {
    const charge = this.succeededCharge(paymentId);
    const more = amountCents ?? charge.cents - charge.refundedCents;
    if (more <= 0n || charge.refundedCents + more > charge.cents) throw new Error(`simulator: cannot refund ${more} cents of payment ${paymentId}`);
    charge.refundedCents += more;
    const base = this.eventBase('charge.refunded', charge);
    const refund: SimulatedRefund = { id: `sim_re_${randomUUID().replaceAll('-', '')}`, cents: more, createdAt: base.createdAt, failed: false };
    charge.refunds.push(refund);
    return { ...base, kind: 'refund', amountCents: charge.cents, refundedCents: charge.refundedCents, disputeRef: null, refundRef: refund.id };
  }

  /**
   * Fails refund `refundRef` of payment `paymentId`'s charge (default: its latest refund that has
   * not failed), as a card issuer does for a closed or lost card: the money comes back to the
   * platform, the charge's cumulative refunded amount drops by the refund's, and the
   * `refund_failed` event Stripe's `charge.refund.updated` (status `failed`) would carry is
   * returned: the refund's id and own amount. Applied by the same code, it gives back the credit
   * the refund took (services/refund-failures.ts applyRefundFailureLocked).
   * @throws Error when the payment has no succeeded charge here, or no such refund that has not failed.
   */
  refundFailed(paymentId: string, refundRef?: string): ChargeReversalEvent {
    const charge = this.succeededCharge(paymentId);
    const refund = refundRef === undefined ? charge.refunds.filter((r) => !r.failed).at(-1) : charge.refunds.find((r) => r.id === refundRef && !r.failed);
    if (!refund) throw new Error(`simulator: payment ${paymentId} has no refund ${refundRef ?? ''} that could fail`);
    refund.failed = true;
    charge.refundedCents -= refund.cents;
    return {
      ...this.eventBase('charge.refund.updated', charge),
      kind: 'refund_failed',
      amountCents: refund.cents,
      refundedCents: 0n,
      disputeRef: null,
      refundRef: refund.id,
      refundCreatedAt: refund.createdAt,
    };
  }

  /**
   * Disputes the succeeded charge of payment `paymentId` (a chargeback of its whole amount) and
   * returns the `dispute` event Stripe's `charge.dispute.created` would carry.
   * @throws Error when the payment has no succeeded charge here.
   */
  dispute(paymentId: string): ChargeReversalEvent {
    const charge = this.succeededCharge(paymentId);
    charge.disputeRef ??= `sim_du_${randomUUID()}`; // one dispute per charge, as at Stripe
    return { ...this.eventBase('charge.dispute.created', charge), kind: 'dispute', amountCents: charge.cents, refundedCents: 0n, disputeRef: charge.disputeRef };
  }

  /**
   * Closes the dispute of payment `paymentId`'s charge in the platform's favour (the money comes
   * back) and returns the `dispute_won` event Stripe's `charge.dispute.closed` (status `won`)
   * would carry, with the dispute's id: applied by the same code, it gives back the credit the
   * dispute took (services/charge-reversal.ts applyDisputeWonLocked). The caller may apply it
   * before the dispute's own event (events come in any order).
   * @throws Error when the payment has no succeeded charge here, or it was not disputed ({@link dispute}).
   */
  disputeWon(paymentId: string): ChargeReversalEvent {
    const charge = this.succeededCharge(paymentId);
    if (!charge.disputeRef) throw new Error(`simulator: payment ${paymentId} was not disputed`);
    return { ...this.eventBase('charge.dispute.closed', charge), kind: 'dispute_won', amountCents: charge.cents, refundedCents: 0n, disputeRef: charge.disputeRef };
  }

  private succeededCharge(paymentId: string) {
    const charge = this.succeeded.get(paymentId);
    if (!charge) throw new Error(`simulator: payment ${paymentId} has no succeeded charge`);
    return charge;
  }

  private eventBase(eventType: string, charge: { testMode: boolean; providerRef: string }) {
    this.lastEventMs = Math.max(Date.now(), this.lastEventMs + 1);
    return { eventId: `sim_evt_${randomUUID()}`, eventType, providerRef: charge.providerRef, currency: 'usd', livemode: !charge.testMode, createdAt: new Date(this.lastEventMs) };
  }

  private outcomeOf(result: Exclude<SimulatedResult, 'timeout'>): ChargeOutcome {
    // Unique across processes: a refund or dispute finds its payment by this reference.
    const providerRef = `sim_pi_${randomUUID().replaceAll('-', '')}`;
    switch (result) {
      case 'decline':
        return { status: 'declined', code: 'card_declined', message: 'Your card was declined.' };
      case 'requires_action':
        return { status: 'requires_action', providerRef, message: 'This payment requires the customer to authenticate.' };
      default:
        return { status: 'succeeded', providerRef };
    }
  }
}
