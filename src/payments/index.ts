/**
 * Chooses the payment providers from the environment (PAYMENT_PROVIDER): the simulator (default)
 * or Stripe, one for live accounts and one for test-mode accounts (payments/mode-routing.ts),
 * and the Stripe webhook endpoint's secrets and modes.
 */
import type { Env } from '../config/env.js';
import type { PaymentProvider } from './provider.js';
import { ModeRoutingProvider, isStripeTestKey } from './mode-routing.js';
import { PaymentSimulator } from './simulator.js';
import { StripeProvider, type StripeConnection, type WebhookEndpointSecret } from './stripe.js';

/** The variables the payment providers are made from. */
export type PaymentEnv = Pick<Env, 'PAYMENT_PROVIDER' | 'STRIPE_SECRET_KEY' | 'STRIPE_WEBHOOK_SECRET' | 'STRIPE_TEST_SECRET_KEY' | 'STRIPE_TEST_WEBHOOK_SECRET'>;

/**
 * The provider the environment asks for. Each call returns a new instance (the simulator keeps
 * its charges in memory, so a process should create one and share it):
 * - PAYMENT_PROVIDER=simulator: one simulator for both modes;
 * - PAYMENT_PROVIDER=stripe: Stripe with STRIPE_SECRET_KEY for live accounts, and for test-mode
 *   accounts Stripe with STRIPE_TEST_SECRET_KEY when set, else the same provider when
 *   STRIPE_SECRET_KEY is itself a test key, else the built-in simulator: a live key never charges
 *   a test-mode account (a {@link ModeRoutingProvider} when the two differ).
 * @param connection where the Stripe SDK sends its requests (default: Stripe's API; tests: a local fake).
 * @throws Error when PAYMENT_PROVIDER=stripe and STRIPE_SECRET_KEY is unset.
 */
export function createPaymentProvider(env: PaymentEnv, connection: StripeConnection = {}): PaymentProvider {
  if (env.PAYMENT_PROVIDER === 'simulator') return new PaymentSimulator();
  if (!env.STRIPE_SECRET_KEY) throw new Error('PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY');
  const live = new StripeProvider({ ...connection, secretKey: env.STRIPE_SECRET_KEY });
  if (env.STRIPE_TEST_SECRET_KEY) {
    return new ModeRoutingProvider(live, new StripeProvider({ ...connection, secretKey: env.STRIPE_TEST_SECRET_KEY }));
  }
  if (isStripeTestKey(env.STRIPE_SECRET_KEY)) return live;
  return new ModeRoutingProvider(live, new PaymentSimulator());
}

/**
 * Whether Stripe charges a payment of an account of mode `accountTestMode` with real money, i.e.
 * the `livemode` its webhook events carry: never for a test-mode account; for a live account,
 * unless STRIPE_SECRET_KEY is a test key (a deployment rehearsing on Stripe's test mode).
 */
export function stripeChargeLivemode(env: Pick<Env, 'STRIPE_SECRET_KEY'>, accountTestMode: boolean): boolean {
  return !accountTestMode && !isStripeTestKey(env.STRIPE_SECRET_KEY ?? '');
}

/**
 * The signing secrets the Stripe webhook endpoint verifies events with, each with the `livemode`
 * of the events it signs: STRIPE_WEBHOOK_SECRET, the endpoint of STRIPE_SECRET_KEY's mode (live
 * for a live key), and STRIPE_TEST_WEBHOOK_SECRET, a test-mode endpoint. Empty: the endpoint is off.
 */
export function stripeWebhookSecrets(env: Pick<Env, 'STRIPE_SECRET_KEY' | 'STRIPE_WEBHOOK_SECRET' | 'STRIPE_TEST_WEBHOOK_SECRET'>): WebhookEndpointSecret[] {
  const secrets: WebhookEndpointSecret[] = [];
  if (env.STRIPE_WEBHOOK_SECRET) secrets.push({ secret: env.STRIPE_WEBHOOK_SECRET, livemode: stripeChargeLivemode(env, false) });
  if (env.STRIPE_TEST_WEBHOOK_SECRET) secrets.push({ secret: env.STRIPE_TEST_WEBHOOK_SECRET, livemode: false });
  return secrets;
}
