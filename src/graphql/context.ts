/**
 * The per-request GraphQL context.
 */
import type { Principal } from '../auth/principal.js';
import type { PrismaClient } from '../db/prisma.js';
import type { ServiceContext } from '../services/context.js';
import type { Env } from '../config/env.js';
import type { Logger } from 'pino';
import type { LiveHub } from '../live/hub.js';

/** What every resolver receives. */
export interface GraphQLContext {
  /** Who is calling: a service key, an end user, or nobody. */
  principal: Principal | null;
  /** Correlates logs of one request (x-request-id header, or generated). */
  requestId: string;
  services: ServiceContext;
  prisma: PrismaClient;
  env: Env;
  log: Logger;
  /** True for requests on behalf of public visitors (a PUBLIC API key, or `x-creditpool-audience: public`). */
  publicAudience: boolean;
  /** This instance's live fan-out (subscriptions); null where none runs (scripts, some tests). */
  live: LiveHub | null;
  /** Memo of account ids this principal may read (filled by access checks). */
  readableAccounts: Map<string, boolean>;
}
