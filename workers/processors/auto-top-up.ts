/**
 * Processor of the `auto-top-up` job (issue #4): charges the pack of one PENDING top-up and grants
 * it (source AUTO_TOP_UP); see services/auto-top-up.ts. A top-up left PENDING (a failed charge
 * with attempts left, a provider timeout) makes the attempt fail, so BullMQ retries it with
 * backoff (LEDGER_JOB_OPTIONS); the same payment key is reused, so a retry never charges twice.
 */
import { z } from 'zod';
import type { Env } from '../../src/config/env.js';
import type { PaymentProvider } from '../../src/payments/provider.js';
import { createPaymentProvider } from '../../src/payments/index.js';
import { runAutoTopUp, type TopUpRunResult } from '../../src/services/auto-top-up.js';
import type { ServiceContext } from '../../src/services/context.js';
import type { Processor, WorkerDeps } from '../deps.js';

/** Payload: the top-up (and its account, for logs). */
export const AutoTopUpPayload = z.object({ topUpId: z.string().uuid(), accountId: z.string().uuid() });

/** Providers made for worker processes whose services carry none (one per environment). */
const fallbackProviders = new WeakMap<Env, PaymentProvider>();

function providerFor(env: Env): PaymentProvider {
  let provider = fallbackProviders.get(env);
  if (!provider) fallbackProviders.set(env, (provider = createPaymentProvider(env)));
  return provider;
}

/** The processors' services, with a payment provider made from the environment when they carry none, and the workers' logger when they carry none. */
export function servicesWithProvider(deps: WorkerDeps): ServiceContext {
  return { ...deps.services, payments: deps.services.payments ?? providerFor(deps.env), log: deps.services.log ?? deps.log };
}

/**
 * Runs one top-up.
 * @throws ZodError for a malformed payload (not retried); Error while the top-up stays PENDING (retried).
 */
export const processAutoTopUp: Processor = async (deps, job): Promise<TopUpRunResult> => {
  const { topUpId } = AutoTopUpPayload.parse(job.data);
  const result = await runAutoTopUp(servicesWithProvider(deps), topUpId, { attemptsMade: job.attemptsMade, attempts: job.attempts });
  if (result.status === 'PENDING') throw new Error(`auto top-up ${topUpId} not done (${result.reason ?? 'unknown'}); will retry`);
  deps.log.info({ topUpId, status: result.status, reason: result.reason }, 'auto top-up finished');
  return result;
};
