/**
 * Test mode never moves real money (after Stripe, whose test-mode keys only ever reach test
 * cards: https://docs.stripe.com/keys#test-live-modes): a deployment has one payment provider for
 * its live accounts and one for its test-mode accounts (`createAccount(testMode: true)`), and
 * {@link ModeRoutingProvider} sends each charge and lookup to the one of its account's mode
 * ({@link ChargeRequest.testMode}). Which provider serves which mode is chosen from the
 * environment by payments/index.ts createPaymentProvider:
 * - PAYMENT_PROVIDER=simulator: the simulator for both;
 * - PAYMENT_PROVIDER=stripe: STRIPE_SECRET_KEY for live accounts; for test-mode accounts
 *   STRIPE_TEST_SECRET_KEY when set, else STRIPE_SECRET_KEY when it is itself a test key, else
 *   the built-in simulator (never a live key).
 */
import type { ChargeOutcome, ChargeRequest, PaymentProvider } from './provider.js';

/**
 * True for a Stripe test-mode secret or restricted key (`sk_test_…`, `rk_test_…`;
 * https://docs.stripe.com/keys#obtain-api-keys). Anything else is treated as live.
 */
export function isStripeTestKey(key: string): boolean {
  return /^(sk|rk)_test_/.test(key);
}

/**
 * A PaymentProvider that dispatches by the account's mode: live-mode charges and lookups to
 * `live`, test-mode ones to `test` (module comment). Its `name` is the live provider's; the name
 * that charges a given mode is {@link providerNameFor}'s.
 */
export class ModeRoutingProvider implements PaymentProvider {
  readonly name: string;

  /**
   * @param live charges live accounts (the deployment's configured provider).
   * @param test charges test-mode accounts (a Stripe test key, or the simulator); never a live key.
   */
  constructor(
    private readonly live: PaymentProvider,
    private readonly test: PaymentProvider,
  ) {
    this.name = live.name;
  }

  /** The provider that serves accounts of this mode. */
  providerFor(testMode: boolean): PaymentProvider {
    return testMode ? this.test : this.live;
  }

  /** Charges through the provider of `request.testMode` (its errors and timeouts as they are). */
  charge(request: ChargeRequest): Promise<ChargeOutcome> {
    return this.providerFor(request.testMode).charge(request);
  }

  /** Looks the payment's charge up at the provider of `testMode` (its answer and errors as they are). */
  lookupCharge(paymentId: string, testMode: boolean): Promise<ChargeOutcome | null> {
    return this.providerFor(testMode).lookupCharge(paymentId, testMode);
  }
}

/**
 * The name of the provider that charges accounts of mode `testMode` through `provider`
 * ("simulator", "stripe"): what a payment method attached to such an account is stored and shown
 * with (services/purchase-pack.ts attachPaymentMethod).
 */
export function providerNameFor(provider: PaymentProvider, testMode: boolean): string {
  return provider instanceof ModeRoutingProvider ? providerNameFor(provider.providerFor(testMode), testMode) : provider.name;
}
