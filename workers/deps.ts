/**
 * What every processor receives: the ledger's services (pool, clock, pricing), a logger and the
 * validated environment (payment provider and webhook settings come from it).
 */
import type { Logger } from 'pino';
import type { ServiceContext } from '../src/services/context.js';
import type { Env } from '../src/config/env.js';

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
}

/** A processor of one job name. Idempotent: running it twice has the effect of running it once. */
export type Processor = (deps: WorkerDeps, job: JobView) => Promise<unknown>;
