/**
 * Chooses the payment provider from the environment (PAYMENT_PROVIDER): the simulator (default)
 * or Stripe.
 */
import type { Env } from '../config/env.js';
import type { PaymentProvider } from './provider.js';
import { PaymentSimulator } from './simulator.js';
import { StripeProvider, type StripeConnection } from './stripe.js';

/**
 * The provider the environment asks for. Each call returns a new instance (the simulator keeps
 * its charges in memory, so a process should create one and share it).
 * @param connection where the Stripe SDK sends its requests (default: Stripe's API; tests: a local fake).
 * @throws Error when PAYMENT_PROVIDER=stripe and STRIPE_SECRET_KEY is unset.
 */
export function createPaymentProvider(
  env: Pick<Env, 'PAYMENT_PROVIDER' | 'STRIPE_SECRET_KEY' | 'STRIPE_WEBHOOK_SECRET'>,
  connection: StripeConnection = {},
): PaymentProvider {
  if (env.PAYMENT_PROVIDER === 'simulator') return new PaymentSimulator();
  if (!env.STRIPE_SECRET_KEY) throw new Error('PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY');
  return new StripeProvider({ ...connection, secretKey: env.STRIPE_SECRET_KEY, webhookSecret: env.STRIPE_WEBHOOK_SECRET });
}
