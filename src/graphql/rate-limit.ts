/**
 * Per-credential rate limit (RATE_LIMIT_* in src/config/env.ts; README "Rate limits").
 *
 * Why: one end user's token (a browser tab in a loop, or a leaked token) could send expensive
 * reads without end (a `usageSummary` grouped by AGENT over a big account is ~600 ms of
 * PostgreSQL); GRAPHQL_MAX_COST bounds one request, not a flood, and every tenant shares the
 * database. The contract's RATE_LIMITED code is the answer.
 *
 * What is counted: each operation (query, mutation, subscription start; HTTP, SSE and WebSocket
 * alike) weighs its GraphQL cost estimate, the one queryCostLimit computed and let through
 * (src/graphql/cost-limit.ts admittedOperationCost), rounded up, at least 1, and at most the whole
 * window's budget (so an operation the cost limit allows is never refused forever). A
 * subscription counts once, when it starts (its snapshot read included); the updates it pushes
 * later are not counted (LIVE_MAX_* bound those).
 *
 * Keyed by credential, never by IP: end users by their `sub` (issuer-independent; hashed, so no
 * external id is written into Redis key names), whatever `org` claim the token carries: the
 * person making the load is the user, so a user in several organizations (or holding tokens with
 * and without `org`) gets one budget, and one member of an organization cannot use up a budget
 * shared with the others. Service keys by key id, the bootstrap ADMIN_API_KEY by its own key id.
 * Anonymous requests are not counted (every field that reads data needs a credential).
 *
 * Where: rate-limiter-flexible's fixed-window counter in Redis (one EVALSHA round trip per
 * counted operation: SET NX + INCRBY + PTTL in a Lua script), so every instance shares one
 * budget. On its own ioredis connection without an offline queue and with
 * RATE_LIMIT_REDIS_TIMEOUT_MS as its command timeout: when Redis is down (the connection not
 * ready) the decision falls back at once, when it is slow after that timeout, to the library's
 * insuranceLimiter, an in-memory limiter of this instance with the same budget (fail open: billing
 * traffic is never refused because Redis is away; with N instances a credential may then spend up
 * to N budgets). The fallback is logged (a warning at most every 10 s with the count since).
 *
 * Cost on the charge path: with RATE_LIMIT_SERVICE_POINTS_PER_MINUTE=0 (the default) a service
 * key's operation is let through by one branch on the principal's kind, synchronously: no Redis
 * round trip, no promise.
 *
 * A refused operation is answered before it runs (envelop onExecute / onSubscribe
 * setResultAndStopExecution), so a refused mutation changes nothing: HTTP 429, one error with
 * `extensions.code` RATE_LIMITED and `extensions.retryAfterSeconds`, and a `Retry-After` header
 * (over a WebSocket the same error without the HTTP parts).
 */
import { createHash } from 'node:crypto';
import { GraphQLError, type ExecutionResult } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type IRateLimiterOptions } from 'rate-limiter-flexible';
import type { Env } from '../config/env.js';
import type { Principal } from '../auth/principal.js';
import type { GraphQLContext } from './context.js';
import { admittedOperationCost } from './cost-limit.js';
import { closeRedis } from '../db/redis-close.js';

/** Shortest interval between two "falling back to memory" warnings, in ms. */
const FALLBACK_WARNING_EVERY_MS = 10_000;

/** The RATE_LIMIT_* settings read by {@link createRateLimit}. */
export type RateLimitSettings = Pick<
  Env,
  'REDIS_URL' | 'RATE_LIMIT_USER_POINTS_PER_MINUTE' | 'RATE_LIMIT_SERVICE_POINTS_PER_MINUTE' | 'RATE_LIMIT_WINDOW_SECONDS' | 'RATE_LIMIT_REDIS_TIMEOUT_MS' | 'RATE_LIMIT_KEY_PREFIX'
>;

/** What a server's rate limit did since boot (for GET /metrics). */
export interface RateLimitStats {
  /** Operations refused with RATE_LIMITED, by the credential's kind. */
  refused: { user: number; service: number };
  /** Decisions taken by the in-memory stand-in because Redis did not answer. */
  fallbacks: number;
}

/** A server's rate limit: its envelop plugin and its Redis connection's shutdown. */
export interface RateLimit {
  /** Counters since boot (a fresh object each call). */
  stats(): RateLimitStats;
  /** Counts and refuses operations (see the module comment); place it after queryCostLimit. */
  plugin: Plugin;
  /** Points one window allows an end user / a service key (0: not limited). */
  pointsPerWindow: { user: number; service: number };
  /** Closes the limiter's Redis connection (never waits for a Redis that is unreachable). */
  close(): Promise<void>;
}

/**
 * Points one window of `windowSeconds` allows at `pointsPerMinute`: ceil(rate x window / 60);
 * 0 stays 0 (not limited).
 */
export function pointsPerWindow(pointsPerMinute: number, windowSeconds: number): number {
  return pointsPerMinute === 0 ? 0 : Math.max(1, Math.ceil((pointsPerMinute * windowSeconds) / 60));
}

/**
 * The key a principal's points are counted under (without the limiter's prefix): `<hash>` of an
 * end user's `sub` (SHA-256, base64url: no external id in Redis), a service key's id as it is.
 */
export function rateLimitKey(principal: Principal): string {
  return principal.kind === 'user' ? createHash('sha256').update(principal.userId, 'utf8').digest('base64url') : principal.keyId;
}

/**
 * The per-instance limiter used while Redis does not answer: the library's RateLimiterMemory,
 * logging (throttled) each time it stands in, since the library itself falls back silently.
 */
class LoggedInsuranceLimiter extends RateLimiterMemory {
  /** Decisions taken since boot. */
  total = 0;
  private fallbacks = 0;
  private lastWarningAt = 0;

  constructor(
    options: IRateLimiterOptions,
    private readonly onFallback: (fallbacksSinceLastWarning: number) => void,
  ) {
    super(options);
  }

  override consume(key: string | number, pointsToConsume?: number, options?: { [key: string]: unknown }): Promise<RateLimiterRes> {
    this.fallbacks++;
    this.total++;
    const now = Date.now();
    if (now - this.lastWarningAt >= FALLBACK_WARNING_EVERY_MS) {
      this.lastWarningAt = now;
      this.onFallback(this.fallbacks);
      this.fallbacks = 0;
    }
    return super.consume(key, pointsToConsume, options);
  }
}

/**
 * Builds the rate limit of one server instance from its settings. Opens a Redis connection
 * (`creditpool-rate-limit`) only when some budget is on.
 */
export function createRateLimit(settings: RateLimitSettings, log: Logger): RateLimit {
  const window = settings.RATE_LIMIT_WINDOW_SECONDS;
  const points = {
    user: pointsPerWindow(settings.RATE_LIMIT_USER_POINTS_PER_MINUTE, window),
    service: pointsPerWindow(settings.RATE_LIMIT_SERVICE_POINTS_PER_MINUTE, window),
  };
  const refused = { user: 0, service: 0 };
  const insurances: LoggedInsuranceLimiter[] = [];
  const stats = (): RateLimitStats => ({ refused: { ...refused }, fallbacks: insurances.reduce((n, l) => n + l.total, 0) });
  if (points.user === 0 && points.service === 0) return { plugin: {}, pointsPerWindow: points, stats, close: async () => undefined };

  const redis = new Redis(settings.REDIS_URL, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: settings.RATE_LIMIT_REDIS_TIMEOUT_MS,
    connectionName: 'creditpool-rate-limit',
  });
  redis.on('error', (err) => log.debug({ err: err.message }, 'rate limit: redis error'));

  const limiter = (kind: 'user' | 'service'): RateLimiterRedis | null => {
    if (points[kind] === 0) return null;
    const options = { points: points[kind], duration: window, keyPrefix: `${settings.RATE_LIMIT_KEY_PREFIX}:${kind}` };
    const insuranceLimiter = new LoggedInsuranceLimiter(options, (fallbacks) =>
      log.warn({ kind, fallbacks, redisStatus: redis.status }, 'rate limit: Redis did not answer; counting in this instance\'s memory instead (fail open)'),
    );
    insurances.push(insuranceLimiter);
    return new RateLimiterRedis({ ...options, storeClient: redis, rejectIfRedisNotReady: true, insuranceLimiter });
  };
  const limiters = { user: limiter('user'), service: limiter('service') };

  /** The refusal of an operation whose credential has spent its window: retry after `res.msBeforeNext`. */
  const refusal = (res: RateLimiterRes, overWebSocket: boolean): ExecutionResult => {
    const retryAfterSeconds = Math.max(1, Math.ceil(res.msBeforeNext / 1000));
    const extensions: Record<string, unknown> = { code: 'RATE_LIMITED', retryAfterSeconds };
    if (!overWebSocket) extensions.http = { status: 429, headers: { 'retry-after': String(retryAfterSeconds) } };
    const message = `Rate limit exceeded for this credential: try again in ${retryAfterSeconds} s.`;
    return { data: null, errors: [new GraphQLError(message, { extensions })] };
  };

  /**
   * Counts the operation `args` for its principal. Returns undefined (synchronously) when its
   * credential is not limited; else a promise of the refusal, or of null when it may run.
   */
  const decide = (args: { contextValue?: unknown }): Promise<ExecutionResult | null> | undefined => {
    const context = args.contextValue as (GraphQLContext & { ws?: unknown }) | undefined;
    const principal = context?.principal;
    if (!principal) return undefined;
    const counter = principal.kind === 'user' ? limiters.user : limiters.service;
    if (!counter) return undefined;
    const cost = admittedOperationCost(args) ?? 1;
    const weight = Math.min(Math.max(Math.ceil(cost), 1), counter.points);
    return counter.consume(rateLimitKey(principal), weight).then(
      () => null,
      (rejected: unknown) => {
        if (rejected instanceof RateLimiterRes) {
          refused[principal.kind === 'user' ? 'user' : 'service']++;
          context.log?.info({ kind: principal.kind, weight, retryAfterMs: rejected.msBeforeNext }, 'rate limit: operation refused');
          return refusal(rejected, context.ws !== undefined);
        }
        // Both Redis and the in-memory stand-in failed: a bug of ours, not the caller's fault. Fail open.
        log.error({ err: rejected }, 'rate limit: could not decide; letting the operation run');
        return null;
      },
    );
  };

  const hook = ({ args, setResultAndStopExecution }: { args: { contextValue?: unknown }; setResultAndStopExecution: (result: ExecutionResult) => void }) => {
    const decision = decide(args);
    if (!decision) return;
    return decision.then((refused) => {
      if (refused) setResultAndStopExecution(refused);
    });
  };
  return {
    plugin: { onExecute: hook, onSubscribe: hook } as Plugin,
    pointsPerWindow: points,
    stats,
    close: () => closeRedis(redis),
  };
}
