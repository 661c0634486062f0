/**
 * What every processor receives: the ledger's services (pool, clock, pricing), a logger and the
 * validated environment (payment provider and webhook settings come from it).
 */
import type { Logger } from 'pino';
import type { ServiceContext } from '../src/services/context.js';
import type { Env } from '../src/config/env.js';
import type { PaymentProvider } from '../src/payments/provider.js';
import { createPaymentProvider } from '../src/payments/index.js';

/** Dependencies of the processors. */
export interface WorkerDeps {
  services: ServiceContext;
  log: Logger;
  env: Env;
}

/** The part of a BullMQ job a processor reads. */
export interface JobView {
  id?: string | undefined;
  name: string;
  data: unknown;
  /** Attempts already made before this one (0 on the first run). */
  attemptsMade: number;
  /** Attempts allowed in all (BullMQ `opts.attempts`). */
  attempts: number;
  /** When the job was made (BullMQ `timestamp`, ms since the epoch; kept across its retries and put-backs), when known. */
  createdAtMs?: number;
}

/** A processor of one job name. Idempotent: running it twice has the effect of running it once. */
export type Processor = (deps: WorkerDeps, job: JobView) => Promise<unknown>;

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
