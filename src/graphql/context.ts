/**
 * The per-request GraphQL context.
 */
import type { Principal } from '../auth/principal.js';
import type { PrismaClient } from '../db/prisma.js';
import type { ServiceContext } from '../services/context.js';
import type { Env } from '../config/env.js';
import type { Logger } from 'pino';
import type { LiveHub } from '../live/hub.js';
import type { UsageOutcomeCounter } from '../metrics/usage-outcomes.js';

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
  /**
   * True for requests on behalf of public visitors: a PUBLIC API key, or `x-creditpool-audience: public`
   * (HTTP header; over a WebSocket the upgrade request's header or connectionParams key, server.ts).
   */
  publicAudience: boolean;
  /** This instance's live fan-out (subscriptions); null where none runs (scripts, some tests). */
  live: LiveHub | null;
  /**
   * Where the charge resolvers count each usage event's outcome for GET /metrics
   * (metrics/usage-outcomes.ts); counts nothing with METRICS_ENABLED=false.
   */
  usageOutcomes: UsageOutcomeCounter;
  /** Memo of account ids this principal may read (filled by access checks). */
  readableAccounts: Map<string, boolean>;
  /**
   * Re-checks the credential this operation was authenticated with, through the same
   * authenticator as a new request (API keys: the cached lookup of src/auth/api-keys.ts, so a
   * revocation shows at once in the revoking process and where it was announced on Redis,
   * src/auth/key-revocation.ts, and otherwise within API_KEY_CACHE_TTL_MS).
   * Resolves false when it no longer authenticates (revoked key, expired token), true while it
   * does. Long-lived operations (subscriptions) call it to end streams of a revoked key.
   * @throws whatever the lookup throws when it cannot tell (e.g. the database is unreachable).
   */
  stillAuthenticated(): Promise<boolean>;
}
