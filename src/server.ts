/**
 * buildServer(): graphql-yoga over Node's http server, with /healthz and /readyz.
 * GraphiQL is served at GET /graphql (off in production). Limits (depth, aliases, tokens) come
 * from graphql-armor, the cost limit from graphql/cost-limit.ts (armor's estimate, with variables); introspection and field suggestions are off in production; every
 * unexpected error is masked to the client and logged with the request id; strings PostgreSQL
 * cannot store as sent (NUL, lone surrogates) are refused before execution (graphql/input-values.ts).
 *
 * Live updates (issue #3): subscriptions over WebSocket (graphql-ws, protocol
 * `graphql-transport-ws`, on the /graphql path) and over SSE (yoga's built-in GraphQL over SSE,
 * distinct connections mode). WebSocket operations run through `yoga.getEnveloped`, so auth,
 * limits and masking apply exactly as over HTTP. The server also runs this instance's LiveHub
 * (one Redis subscriber connection, which also hears API key revocations announced by whoever
 * revoked them: src/auth/key-revocation.ts) and, unless OUTBOX_RELAY=false, the outbox relay.
 *
 * With PAYMENT_PROVIDER=stripe and STRIPE_WEBHOOK_SECRET, POST /webhooks/stripe takes Stripe's
 * payment events (src/http/stripe-webhook.ts), routed before yoga so it reads the raw body.
 *
 * Operations are counted against their credential's rate limit (RATE_LIMIT_*, src/graphql/rate-limit.ts;
 * HTTP 429 RATE_LIMITED past it), end users by default, service keys only when configured.
 *
 * Unless METRICS_ENABLED=false, GET /metrics answers Prometheus metrics from a registry of this
 * instance's own (src/metrics/server-metrics.ts), behind `Authorization: Bearer <METRICS_TOKEN>`
 * when that is set.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { createYoga, handleStreamOrSingleExecutionResult, isAsyncIterable, type Plugin } from 'graphql-yoga';
import { GraphQLError, NoSchemaIntrospectionCustomRule, type ExecutionResult } from 'graphql';
import { EnvelopArmorPlugin } from '@escape.tech/graphql-armor';
import type pg from 'pg';
import { Redis } from 'ioredis';
import { WebSocketServer, type WebSocket } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import type { ExecutionArgs } from 'graphql';
import type { Principal } from './auth/principal.js';
import { LiveHub } from './live/hub.js';
import { startOutboxRelay, type OutboxRelay } from './outbox/relay.js';
import { createQueueJobSink } from './queues/job-sink.js';
import type { Logger } from 'pino';
import { schema } from './graphql/schema.js';
import type { GraphQLContext } from './graphql/context.js';
import { maskError } from './graphql/errors.js';
import { refuseUnstorableStrings } from './graphql/input-values.js';
import { accountDataGuard } from './graphql/account-data-guard.js';
import { queryCostLimit } from './graphql/cost-limit.js';
import { createRateLimit } from './graphql/rate-limit.js';
import { refuseDeeplyNestedDocuments } from './graphql/document-nesting.js';
import type { Env } from './config/env.js';
import type { ServiceContext } from './services/context.js';
import { actorFromPrincipal } from './audit/audit-log.js';
import type { PrismaClient } from './db/prisma.js';
import { bearerToken, type Authenticator } from './auth/authenticator.js';
import type { QueryTimings } from './db/query-timings.js';
import { LedgerError } from './ledger/errors.js';
import { bodyRefusal } from './http/body-limit.js';
import { STRIPE_WEBHOOK_PATH, stripeWebhookHandler } from './http/stripe-webhook.js';
import { verifyWebhookEvent } from './payments/stripe.js';
import { stripeChargeLivemode, stripeWebhookSecrets } from './payments/index.js';
import { atInstant, type InstantTimer } from './live/at-instant.js';
import { closeRedis, settlesWithin, REDIS_QUIT_WAIT_MS } from './db/redis-close.js';
import { createServerMetrics, type LiveCounters } from './metrics/server-metrics.js';
import { NO_USAGE_OUTCOMES } from './metrics/usage-outcomes.js';

/** What the server needs, created by the process entry (src/main.ts) or a test. */
export interface ServerDeps {
  env: Env;
  log: Logger;
  pool: pg.Pool;
  prisma: PrismaClient;
  redis: Redis;
  services: ServiceContext;
  authenticator: Authenticator;
  /** Client-side statement timings of `pool`, reported on /readyz (PG_QUERY_TIMINGS). */
  queryTimings?: QueryTimings;
}

/** A built, not yet listening, server. */
export interface CreditpoolServer {
  http: Server;
  /** Starts listening; resolves with the bound port. */
  listen(port: number, host?: string): Promise<number>;
  /** This instance's live fan-out. */
  live: LiveHub;
  /** This instance's outbox relay (null when OUTBOX_RELAY=false). */
  relay: OutboxRelay | null;
  /**
   * What GET /readyz reports now: `postgres` (a `SELECT 1` on the ledger pool answered),
   * `redis` (a PING answered PONG) and `ok` (both); never throws (an error counts as down).
   */
  ready(): Promise<{ ok: boolean; postgres: boolean; redis: boolean }>;
  /**
   * Stops accepting connections, closes WebSockets with 1001 "server shutting down", ends SSE
   * streams, answers the requests it has taken (for up to SHUTDOWN_GRACE_MS; their responses
   * say `Connection: close`), then closes every HTTP connection, stops the relay and the hub
   * (never waiting for a Redis that is unreachable: db/redis-close.ts).
   */
  close(): Promise<void>;
}

/** Sampling interval of the event-loop delay histogram reported on /readyz (ms; Node's default). */
const EVENT_LOOP_SAMPLE_MS = 10;

/** WebSocket close codes used when a connection is refused or ended (graphql-ws conventions). */
export const WS_CLOSE = {
  /** No credential in connectionParams.authorization. */
  unauthorized: 4401,
  /** The credential is invalid, or it expired or was revoked while connected. */
  forbidden: 4403,
  /** The credential already holds LIVE_MAX_CONNECTIONS_PER_TOKEN live connections (WebSockets and SSE streams) on this instance. */
  tooManyConnections: 4429,
  /**
   * The credential could not be checked at connection_init (the API key lookup's database or the
   * JWKS endpoint unreachable: UNAVAILABLE over HTTP). RFC 6455 "Try Again Later", which
   * graphql-ws clients retry; 4403 would tell the client its credential is bad.
   */
  tryAgainLater: 1013,
  /** Graceful shutdown. */
  goingAway: 1001,
} as const;

/**
 * How long a WebSocket whose service key was revoked stays open for its streams to send their
 * UNAUTHENTICATED error and complete (each does within one re-check); then it is closed (4403)
 * whatever is left.
 */
export const LIVE_CREDENTIAL_CLOSE_GRACE_MS = 5_000;

/** What this server keeps on each WebSocket connection. */
interface WsState {
  principal?: Principal | null;
  /** connectionParams.authorization, re-authenticated for every new operation. */
  authorization?: string;
  /**
   * The connection acts for public visitors (`x-creditpool-audience: public` on its upgrade
   * request or in its connectionParams: {@link audienceFlag}); every operation's context gets it.
   */
  publicAudience?: boolean;
  /** liveSlotKey of the bearer token: the live slot this connection holds. */
  tokenKey?: string;
  connectionId: string;
  operations: Set<string>;
  expiryTimer?: InstantTimer;
  /**
   * A service key's connection: stops watching the key's revocation announcements and its
   * periodic re-check ({@link watchSocketKey}).
   */
  unwatchKey?: () => void;
  /** Its key no longer authenticates: the socket closes (4403) once its open operations ended. */
  credentialEnded?: boolean;
}

/** The path of the Prometheus metrics (METRICS_ENABLED). */
export const METRICS_PATH = '/metrics';

/**
 * Whether `req` may read the metrics: always without a METRICS_TOKEN, else only with exactly one
 * `Authorization: Bearer <METRICS_TOKEN>` line (the scheme in any case). Compared as SHA-256
 * digests in constant time, so the answer's timing tells nothing about the token.
 */
function metricsAuthorized(req: IncomingMessage, token: string | undefined): boolean {
  if (!token) return true;
  if (authorizationLines(req) !== 1) return false;
  const given = bearerToken(req.headers.authorization);
  if (given === null) return false;
  const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest();
  return timingSafeEqual(digest(given), digest(token));
}

/** The header (and connectionParams key) that marks a call made on behalf of a public visitor. */
const AUDIENCE_HEADER = 'x-creditpool-audience';

/**
 * Whether a value of the `x-creditpool-audience` header (or connectionParams key) asks for the
 * public-visitor form of billing refusals: exactly `public`, in any case. Anything else (another
 * word, a repeated header that Node or fetch joined as `public, public`, a non-string
 * connectionParams value) changes nothing. Granting it to whoever asks is safe: the flag only
 * turns INSUFFICIENT_CREDITS / BUDGET_EXCEEDED into a neutral UNAVAILABLE in the answer
 * (graphql/errors.ts maskError), so it hides from the caller what the caller would see without
 * it, and never changes what a credential may do.
 */
function audienceFlag(value: unknown): boolean {
  return typeof value === 'string' && value.toLowerCase() === 'public';
}

/** The key a credential's live slots are counted under: the SHA-256 of its bearer token (authenticator.ts bearerToken). */
function liveSlotKey(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

/**
 * How many Authorization lines `req` carries. Node keeps only the first in `req.headers` (and so
 * does the request yoga sees), while a proxy in front may act on the last: a request sending the
 * singleton field twice (RFC 9110 §5.3) is ambiguous about who is calling and is refused
 * (UNAUTHENTICATED), not decided by position.
 */
function authorizationLines(req: IncomingMessage): number {
  let count = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'authorization') count++;
  return count;
}

/** What a client reads when its credential holds LIVE_MAX_CONNECTIONS_PER_TOKEN live connections already. */
function tooManyLiveConnections(max: number): string {
  return `Too many live connections for this credential: at most ${max} WebSockets and SSE streams at once on this instance.`;
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,100}$/;

function disableIntrospection(): Plugin {
  return {
    onValidate({ addValidationRule }) {
      addValidationRule(NoSchemaIntrospectionCustomRule);
    },
  };
}

/**
 * graphql-js' "Did you mean …?" hints: `Did you mean "account"?`, `Did you mean "a", "b", or
 * "c"?`, `Did you mean the enum value "ACTIVE"?`. GraphQL names hold no `?`, so the hint ends at
 * the first one.
 */
const SUGGESTION_RE = /\s*Did you mean [^?]*\?/g;

/**
 * With NODE_ENV=production (README, configuration: "turns off GraphiQL, introspection and field
 * suggestions"), removes graphql-js' suggestions from every error message: validation errors of
 * the document (unknown field, argument, type, enum value) and the errors of coercing its
 * variables (an unknown input field, an unknown enum value), which graphql-js raises when the
 * operation executes, not at validation. Without them, a caller with introspection off can still
 * rebuild the schema name by name from the hints (the way tools like clairvoyance do).
 * graphql-armor's blockFieldSuggestion, which it replaces, looked at validation errors only and
 * missed the enum value form. Applies over HTTP, SSE and WebSocket (the socket's operations run
 * through yoga.getEnveloped). Rewrites the messages in place, after every other plugin's masking.
 */
function hideSuggestions(): Plugin {
  const hide = (errors: readonly { message: string }[] | undefined): void => {
    for (const error of errors ?? []) if (error.message.includes('Did you mean')) error.message = error.message.replace(SUGGESTION_RE, '');
  };
  const onResult = ({ result }: { result: ExecutionResult }) => hide(result.errors);
  return {
    onValidate: () => ({ valid, result }) => {
      if (!valid) hide(result);
    },
    onExecute: () => ({ onExecuteDone: (payload) => handleStreamOrSingleExecutionResult(payload, onResult) }),
    onSubscribe: () => ({ onSubscribeResult: (payload) => handleStreamOrSingleExecutionResult(payload, onResult) }),
  };
}

/** Validation failures are malformed input: the contract's code for them is BAD_USER_INPUT. */
function validationErrorsAreBadInput(): Plugin {
  return {
    onValidate() {
      return ({ valid, result }) => {
        if (valid) return;
        for (const error of result) {
          const ext = ((error as { extensions: Record<string, unknown> }).extensions ??= {});
          ext.code = 'BAD_USER_INPUT';
        }
      };
    },
  };
}

/** Builds the HTTP server with the GraphQL endpoint at /graphql. */
export function buildServer(deps: ServerDeps): CreditpoolServer {
  const { env, log } = deps;
  const production = env.NODE_ENV === 'production';

  // The hub also hears API key revocations announced on Redis (auth/key-revocation.ts): the key
  // leaves this instance's lookup cache at once (every cached key after a reconnect, when
  // announcements may have been missed), and its open live streams re-check it.
  const live = new LiveHub(env.REDIS_URL, env.LIVE_CHANNEL_PREFIX, log, {
    onKeyRevoked: (keyId) => deps.authenticator.forgetApiKey(keyId ?? undefined),
  });
  // How late the event loop runs a timer: a reply from PostgreSQL or Redis waits as long
  // behind the HTTP and GraphQL work before this process sees it (Node's perf_hooks histogram;
  // it samples every EVENT_LOOP_SAMPLE_MS, a libuv timer, and records each interval).
  const eventLoopDelay = monitorEventLoopDelay({ resolution: EVENT_LOOP_SAMPLE_MS });
  eventLoopDelay.enable();
  const publisher = env.OUTBOX_RELAY
    ? new Redis(env.REDIS_URL, { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectionName: 'creditpool-outbox-relay' })
    : null;
  publisher?.on('error', (err) => log.warn({ err: err.message }, 'outbox relay: redis error'));
  // Fails fast like the publisher: while Redis is away a drain fails at once and is retried, rather
  // than leaving one batch of jobs per retry in ioredis' offline queue.
  const queueConnection = env.OUTBOX_RELAY ? new Redis(env.REDIS_URL, { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectionName: 'creditpool-outbox-jobs' }) : null;
  queueConnection?.on('error', (err) => log.warn({ err: err.message }, 'outbox relay: queue redis error'));
  const jobSink = queueConnection ? createQueueJobSink(queueConnection, env.QUEUE_PREFIX) : undefined;
  for (const q of jobSink ? [jobSink.queue, jobSink.webhookQueue] : []) q.on('error', (err) => log.warn({ err: err.message, queue: q.name }, 'outbox relay: queue error'));
  const relay = publisher
    ? startOutboxRelay({ pool: deps.pool, redis: publisher, log, channelPrefix: env.LIVE_CHANNEL_PREFIX, pollIntervalMs: env.OUTBOX_POLL_INTERVAL_MS, jobs: jobSink })
    : null;

  // Stripe's webhook endpoint (http/stripe-webhook.ts): only where Stripe charges and a signing
  // secret (live and/or test endpoint) is configured. Without it, payments are settled by their own
  // answer and by polling only. Verifying a signature is local (no request to Stripe).
  const stripeSecrets = stripeWebhookSecrets(env);
  const stripeWebhook =
    env.PAYMENT_PROVIDER === 'stripe' && env.STRIPE_SECRET_KEY && stripeSecrets.length > 0
      ? stripeWebhookHandler({
          verify: (rawBody, signature) => verifyWebhookEvent(rawBody, signature, stripeSecrets),
          chargeLivemode: (testMode) => stripeChargeLivemode(env, testMode),
          services: deps.services,
          log,
        })
      : null;
  // Live counters of this instance (no tenant data), for /readyz and /metrics: open WebSockets,
  // the hub's counters, the outbox rows this instance's relay published and its drain transactions.
  const liveCounters = (): LiveCounters => ({ webSockets: wss.clients.size, ...live.stats(), outboxPublished: relay?.published() ?? 0, outboxDrains: relay?.drains() ?? 0 });
  // The metrics' own Redis connection for the queue counts: fails fast while Redis is away (the
  // scrape answers without them) instead of queueing commands until it returns.
  // Per-credential rate limit (graphql/rate-limit.ts): its own Redis connection, only when a budget is on.
  const rateLimit = createRateLimit(env, log);
  const metricsRedis = env.METRICS_ENABLED
    ? new Redis(env.REDIS_URL, { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectionName: 'creditpool-metrics' })
    : null;
  metricsRedis?.on('error', (err) => log.debug({ err: err.message }, 'metrics: redis error'));
  const metrics = metricsRedis
    ? createServerMetrics({ pool: deps.pool, queueRedis: metricsRedis, queuePrefix: env.QUEUE_PREFIX, live: liveCounters, groupCommit: () => deps.services.groupCommit?.stats() ?? null, rateLimit: () => rateLimit.stats() })
    : null;


  if (env.PAYMENT_PROVIDER === 'stripe' && !stripeWebhook) {
    log.warn(`neither STRIPE_WEBHOOK_SECRET nor STRIPE_TEST_WEBHOOK_SECRET is set: ${STRIPE_WEBHOOK_PATH} is off, so a payment whose answer was lost is only settled by polling, and a late success whose grant failed is not retried`);
  }

  /**
   * Masks one error for the client (graphql/errors.ts maskError) with the request id and audience
   * of the request it belongs to, logging bugs, neutralized refusals and database failures.
   */
  const maskFor = (error: unknown, requestId: string, publicAudience: boolean): GraphQLError =>
    maskError(error, requestId, (err) => log.error({ err, requestId }, 'unexpected error while executing GraphQL'), {
      publicAudience,
      onNeutralized: (err) => log.info({ requestId, code: err.code, reason: err.message, details: err.details }, 'billing refusal shown to a public visitor as UNAVAILABLE'),
      onUnavailable: (err) => log.warn({ err, requestId }, 'database unreachable, connection lost or timed out: answered UNAVAILABLE'),
    });

  // Responses being written, for a graceful close: a charge the server took is answered before
  // its connection is closed (test/cycles/server-faults.test.ts, SIGTERM). SSE subscription
  // streams never finish on their own, so they are kept apart (moved there by liveStreamSlots
  // once the response is known to be a stream) and ended at once.
  const answering = new Set<ServerResponse>();
  const streams = new Set<ServerResponse>();
  let stopping = false;
  let answered: (() => void) | null = null;
  const track = (res: ServerResponse) => {
    answering.add(res);
    if (stopping) res.setHeader('connection', 'close');
    res.once('close', () => {
      answering.delete(res);
      streams.delete(res);
      stalledSince.delete(res);
      if (!stopping) return;
      http.closeIdleConnections();
      if (answering.size === 0) answered?.();
    });
  };
  // SSE streams whose writes wait for their client (a write refused, no 'drain' since), by when
  // that was first seen. A stream's writes are serial (each waits for 'drain'), so a client that
  // takes nothing holds one stream chunk and its subscription's queue, but without this it held
  // them, its subscription and its live slot until it went away by itself: no update and no
  // heartbeat could be written to tell. One watchdog for all streams, ticking a quarter of the
  // timeout (at most every second), closes a stream stalled for LIVE_SSE_STALL_TIMEOUT_MS. (A
  // socket inactivity timeout cannot do it: @whatwg-node/server sets the streaming socket's
  // timeout to 0.)
  const stalledSince = new Map<ServerResponse, number>();
  const stallWatchdog = setInterval(() => {
    const now = Date.now();
    for (const res of streams) {
      if (!res.writableNeedDrain) {
        stalledSince.delete(res);
        continue;
      }
      const since = stalledSince.get(res);
      if (since === undefined) stalledSince.set(res, now);
      else if (now - since >= env.LIVE_SSE_STALL_TIMEOUT_MS) {
        stalledSince.delete(res);
        log.info({ stallTimeoutMs: env.LIVE_SSE_STALL_TIMEOUT_MS }, 'SSE stream closed: its client took nothing for the stall timeout');
        res.destroy();
      }
    }
  }, Math.min(1_000, Math.ceil(env.LIVE_SSE_STALL_TIMEOUT_MS / 4)));
  stallWatchdog.unref();
  /** `res` (open, tracked) streams a subscription: shutdown ends it at once instead of waiting for it. */
  const trackAsStream = (res: ServerResponse) => {
    answering.delete(res);
    streams.add(res);
    if (!stopping) return;
    res.destroy();
    if (answering.size === 0) answered?.();
  };

  // Live connections per credential on this instance, WebSockets and SSE streams together
  // (LIVE_MAX_CONNECTIONS_PER_TOKEN), keyed by liveSlotKey.
  const connectionsPerToken = new Map<string, number>();
  /** Takes one live slot of `key`; false when its credential already holds the most. */
  const takeLiveSlot = (key: string): boolean => {
    const open = connectionsPerToken.get(key) ?? 0;
    if (open >= env.LIVE_MAX_CONNECTIONS_PER_TOKEN) return false;
    connectionsPerToken.set(key, open + 1);
    return true;
  };
  const releaseLiveSlot = (key: string): void => {
    const left = (connectionsPerToken.get(key) ?? 1) - 1;
    if (left > 0) connectionsPerToken.set(key, left);
    else connectionsPerToken.delete(key);
  };

  /**
   * An HTTP response that streams (a subscription over SSE) holds a live slot of its credential
   * while it is open, as a WebSocket does: without it one key could hold any number of streams.
   * Decided on the result yoga is about to send, not on the request's Accept header: a query or
   * mutation sent with `Accept: text/event-stream, application/json` is answered as JSON and
   * takes no slot, and a subscription sent with a wildcard Accept (or none), which yoga also streams,
   * takes one. Past the limit the stream is ended before it starts (its subscription disposed)
   * and the answer is HTTP 429, RATE_LIMITED. Only an authenticated request gets a stream (the
   * subscription fields need a credential); the slot key is its bearer token however the header
   * spells it (the raw header for any other form, as on WebSocket). A stream's response also
   * carries `X-Accel-Buffering: no` (buffering proxies pass its events on at once).
   */
  const liveStreamSlots = (): Plugin => ({
    onResultProcess({ request, result, resultProcessor, setResultProcessor, serverContext }) {
      if (!resultProcessor || !isAsyncIterable(result)) return;
      const { res, requestId } = serverContext as { res?: ServerResponse; requestId?: string };
      if (!res) return; // not an HTTP request of this server (WebSocket operations do not go through yoga's handler)
      // Closed already (the client went away): nothing will stream, and no 'close' would free a slot.
      if (!answering.has(res)) return;
      const authorization = request.headers.get('authorization') ?? '';
      const slot = liveSlotKey(bearerToken(authorization) ?? authorization);
      if (!takeLiveSlot(slot)) {
        const iterator = (result as AsyncIterable<unknown>)[Symbol.asyncIterator]();
        void iterator.return?.();
        const body = JSON.stringify({ errors: [{ message: tooManyLiveConnections(env.LIVE_MAX_CONNECTIONS_PER_TOKEN), extensions: { code: 'RATE_LIMITED', requestId } }] });
        setResultProcessor((_result, fetchAPI) => new fetchAPI.Response(body, { status: 429, headers: { 'content-type': 'application/json' } }), 'application/json');
        return;
      }
      res.once('close', () => releaseLiveSlot(slot));
      // A buffering reverse proxy (nginx's default proxy_buffering) would hold the events, and
      // the 12 s heartbeats, until its buffer fills: a credit bar behind it updated in bursts or
      // not at all. This header turns that off for this response (README "Live updates").
      res.setHeader('x-accel-buffering', 'no');
      // Whatever the client takes ends a stall (the watchdog closes a stream stalled for
      // LIVE_SSE_STALL_TIMEOUT_MS: stalledSince).
      res.on('drain', () => stalledSince.delete(res));
      trackAsStream(res);
    },
  });

  const yoga = createYoga<{ req: IncomingMessage; res: ServerResponse; requestId: string }, GraphQLContext>({
    schema,
    graphqlEndpoint: '/graphql',
    graphiql: !production,
    landingPage: false,
    // Every origin may call the API (browsers of the platform's end users send their token), but
    // credentials travel only in the Authorization header, which a page must set itself: no origin
    // is told it may send cookies or other ambient credentials (yoga's default says
    // `Access-Control-Allow-Credentials: true` to every origin it reflects, which would let any
    // web page read answers to requests a cookie-based proxy in front of us authenticated).
    cors: { credentials: false },
    logging: false,
    // The body limit is enforced from Content-Length before yoga runs (bodyRefusal).
    maxRequestBodySize: false,
    context: async (initial): Promise<GraphQLContext> => {
      const ws = (initial as { ws?: { principal: Principal | null; requestId: string; authorization: string; publicAudience: boolean } }).ws;
      const request = (initial as { request: Request }).request;
      const requestId = ws?.requestId ?? (initial as { requestId?: string }).requestId ?? randomUUID();
      const credential = ws ? ws.authorization : request.headers.get('authorization');
      const req = (initial as { req?: IncomingMessage }).req;
      if (!ws && req && authorizationLines(req) > 1) {
        throw new GraphQLError('Send exactly one Authorization header.', { extensions: { code: 'UNAUTHENTICATED', http: { status: 401 } } });
      }
      let principal: Principal | null;
      try {
        principal = ws ? ws.principal : await deps.authenticator.authenticate(credential);
      } catch (err) {
        if (err instanceof LedgerError) {
          throw new GraphQLError(err.message, { extensions: { code: err.code, http: { status: err.code === 'UNAUTHENTICATED' ? 401 : 503 } } });
        }
        // e.g. the API key lookup found no database: UNAVAILABLE with this request's id, and HTTP
        // 503 like a JWKS outage above (both mean "the credential cannot be checked now").
        const masked = maskFor(err, requestId, false);
        if (masked.extensions.code !== 'UNAVAILABLE') throw masked;
        throw new GraphQLError(masked.message, { extensions: { ...masked.extensions, http: { status: 503 } } });
      }
      // Over a WebSocket, the flag of its upgrade request or connectionParams (onConnect).
      const flagged = ws ? ws.publicAudience : audienceFlag(request.headers.get(AUDIENCE_HEADER));
      const publicAudience = flagged || (principal?.kind === 'service' && principal.publicAudience === true);
      return {
        principal,
        publicAudience,
        requestId,
        // The request's own view of the services: the same pools and committers, plus who is
        // calling, which the services write into the audit trail with each change they make.
        services: { ...deps.services, actor: actorFromPrincipal(principal, requestId) },
        prisma: deps.prisma,
        env,
        log: log.child({ requestId }),
        live,
        usageOutcomes: metrics?.usageOutcomes ?? NO_USAGE_OUTCOMES,
        readableAccounts: new Map(),
        stillAuthenticated: async () => {
          try {
            return (await deps.authenticator.authenticate(credential)) !== null;
          } catch (err) {
            if (err instanceof LedgerError && err.code === 'UNAUTHENTICATED') return false;
            throw err;
          }
        },
      };
    },
    // Errors of an execution or subscription are masked by maskExecutionErrors (below) with their
    // own context. What reaches yoga's masking after that is either already masked (maskError
    // keeps a coded GraphQLError as it is) or raised before any context exists (a malformed
    // request, a parse or validation error: BAD_USER_INPUT, no request id); a bug raised there
    // would be logged and answered with a fresh id, not the x-request-id.
    maskedErrors: {
      maskError: (error, _message, _isDev) => maskFor(error, randomUUID(), false),
    },
    plugins: [
      maskExecutionErrors((error, context) => maskFor(error, context.requestId, context.publicAudience)),
      EnvelopArmorPlugin({
        maxDepth: { n: env.GRAPHQL_MAX_DEPTH },
        maxAliases: { n: env.GRAPHQL_MAX_ALIASES },
        maxTokens: { n: env.GRAPHQL_MAX_TOKENS },
        // The cost limit needs the variables (a page size passed as $first): graphql/cost-limit.ts.
        costLimit: { enabled: false },
        maxDirectives: { n: 50 },
        // hideSuggestions (below) does it, for variables' errors and enum values too.
        blockFieldSuggestion: { enabled: false },
      }),
      // After armor: its token limit replaces the parse function, which this one wraps.
      refuseDeeplyNestedDocuments(),
      ...(production ? [disableIntrospection()] : []),
      // After maskExecutionErrors: it rewrites the messages of the errors as they are answered.
      ...(production ? [hideSuggestions()] : []),
      validationErrorsAreBadInput(),
      queryCostLimit(env.GRAPHQL_MAX_COST),
      // After the cost limit, whose estimate it weighs each operation by; before anything runs.
      rateLimit.plugin,
      refuseAnonymousStreams(),
      liveStreamSlots(),
      accountDataGuard(),
      refuseUnstorableStrings(),
    ],
  });

  const ready = async () => {
    const [postgres, redis] = await Promise.all([
      deps.pool.query('SELECT 1').then(() => true, () => false),
      deps.redis.ping().then((r) => r === 'PONG', () => false),
    ]);
    // Live fan-out counters of this instance (liveCounters); the group committer's counters; the
    // event loop's busy time; with PG_QUERY_TIMINGS, the ledger pool's statements' summed wall
    // times and its round trips (benchmarks read them).
    const liveStats = liveCounters();
    // The event loop's busy and idle time since boot (ms; utilization = active / (active + idle)),
    // and its lateness: samples taken since boot and their summed lateness (ms beyond the
    // sampling interval), so a reader can difference two reads into the mean of a time window.
    const { active, idle } = performance.eventLoopUtilization();
    const samples = eventLoopDelay.count;
    const latenessMs = samples > 0 ? Math.max(0, (eventLoopDelay.mean / 1e6 - EVENT_LOOP_SAMPLE_MS) * samples) : 0;
    const eventLoop = { activeMs: Math.round(active), idleMs: Math.round(idle), delaySamples: samples, delayLatenessMs: Math.round(latenessMs * 1000) / 1000, delayMaxMs: Math.round(eventLoopDelay.max / 1e4) / 100 };
    const queryTimings = deps.queryTimings?.snapshot() ?? null;
    const pgRoundTrips = deps.queryTimings?.roundTrips() ?? null;
    return { ok: postgres && redis, postgres, redis, live: liveStats, groupCommit: deps.services.groupCommit?.stats() ?? null, eventLoop, queryTimings, pgRoundTrips };
  };

  const http = createServer((req, res) => {
    track(res);
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
      return;
    }
    if (path === '/readyz') {
      ready().then(
        (r) => res.writeHead(r.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(r)),
        () => res.writeHead(503).end('{"ok":false}'),
      );
      return;
    }
    if (metrics && path === METRICS_PATH) {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('Method Not Allowed\n');
        return;
      }
      if (!metricsAuthorized(req, env.METRICS_TOKEN)) {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="metrics"', 'content-type': 'text/plain' }).end('Send Authorization: Bearer <METRICS_TOKEN>.\n');
        return;
      }
      // A collector that fails or is late is left out (creditpool_metrics_collector_up 0); only
      // the registry itself failing (a bug) answers 500.
      metrics.render().then(
        (text) => res.writeHead(200, { 'content-type': metrics.contentType, 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : text),
        (err) => {
          log.error({ err }, 'metrics: rendering failed');
          res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
        },
      );
      return;
    }
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID_RE.test(given) ? given : randomUUID();
    res.setHeader('x-request-id', requestId);
    const refusal = bodyRefusal(req, env.MAX_REQUEST_BODY_BYTES);
    if (refusal) {
      // Nothing of the body is read; the connection closes so its bytes are not parsed as a request.
      res.writeHead(refusal.status, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify({ errors: [{ message: refusal.message, extensions: { code: 'BAD_USER_INPUT', reason: refusal.reason, requestId } }] }));
      return;
    }
    if (stripeWebhook && path === STRIPE_WEBHOOK_PATH) {
      stripeWebhook(req, res, requestId); // reads the raw body itself (the signature is over its bytes)
      return;
    }
    // A subscription streamed over SSE takes a live slot once yoga has its result: liveStreamSlots.
    void yoga(req, res, { req, res, requestId });
  });
  http.keepAliveTimeout = 65_000;

  // --- WebSocket (graphql-ws) on the same path ---------------------------------------------
  const wss = new WebSocketServer({ noServer: true, maxPayload: env.LIVE_MAX_MESSAGE_BYTES });
  http.on('upgrade', (req, socket, head) => {
    if ((req.url ?? '/').split('?')[0] !== '/graphql') {
      socket.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (client) => wss.emit('connection', client, req));
  });
  // Backpressure on what a client makes the server write: a client may send operations (and
  // pings) as fast as it likes while it reads nothing, and ws keeps reading them and queues every
  // answer in memory. Once LIVE_MAX_BUFFERED_BYTES are unsent, the server stops reading that
  // client until its socket has drained (as Node's HTTP server does with pipelined requests).
  // Its pongs are not read either, so a client that never reads again is terminated by the
  // keepalive (LIVE_WS_KEEPALIVE_MS) however many unsolicited pongs it sends. Registered before
  // graphql-ws's handler, so each message is checked before it is answered. Subscription updates
  // need no such check: each waits for the previous one to be written (graphql-ws awaits send).
  wss.on('connection', (client, req) => {
    let paused = false;
    const holdBack = () => {
      if (paused || client.bufferedAmount <= env.LIVE_MAX_BUFFERED_BYTES) return;
      paused = true;
      client.pause();
      req.socket.once('drain', () => {
        paused = false;
        client.resume();
      });
    };
    client.on('message', holdBack);
    client.on('ping', holdBack);
  });
  const stateOf = (extra: { socket: WebSocket }): WsState => {
    const holder = extra as unknown as { state?: WsState };
    return (holder.state ??= { connectionId: randomUUID(), operations: new Set() });
  };
  /** Closes a WebSocket whose credential no longer authenticates (revoked key, expired token): 4403. */
  const closeCredentialEnded = (socket: WebSocket): void => socket.close(WS_CLOSE.forbidden, 'Forbidden: credential revoked or expired');
  /**
   * Closes a service key's WebSocket (4403) once the key stops authenticating, even when the
   * socket runs no operation: re-checked when a revocation of `keyId` is announced on Redis
   * (src/auth/key-revocation.ts; the announcement only makes the server look again, so a forged
   * one closes nothing). Open streams end themselves first with their UNAUTHENTICATED error
   * (src/graphql/subscriptions.ts); the socket then closes when the last one completes
   * (onComplete), or after LIVE_CREDENTIAL_CLOSE_GRACE_MS at the latest. A lookup that fails
   * (database down) keeps the socket, as it keeps streams. A revocation that was not announced
   * (Redis down for the revoker) closes an idle socket at its next operation (onSubscribe).
   * @returns stops watching (called on close).
   */
  const watchSocketKey = (socket: WebSocket, state: WsState, keyId: string): (() => void) => {
    let checking = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const check = async (): Promise<void> => {
      if (checking || state.credentialEnded) return;
      checking = true;
      try {
        await deps.authenticator.authenticate(state.authorization ?? '');
      } catch (err) {
        if (err instanceof LedgerError && err.code === 'UNAUTHENTICATED') {
          state.credentialEnded = true;
          log.info({ connectionId: state.connectionId }, 'websocket closing: credential no longer valid');
          const close = () => closeCredentialEnded(socket);
          if (state.operations.size === 0) close();
          else (graceTimer = setTimeout(close, LIVE_CREDENTIAL_CLOSE_GRACE_MS)).unref();
        } else {
          log.warn({ connectionId: state.connectionId, err }, 'websocket: could not re-check its credential; keeping the connection');
        }
      } finally {
        checking = false;
      }
    };
    const unwatch = live.watchKey(keyId, () => void check());
    return () => {
      unwatch();
      clearTimeout(graceTimer);
    };
  };
  useServer(
    {
      connectionInitWaitTimeout: 10_000,
      onConnect: async (ctx) => {
        const state = stateOf(ctx.extra);
        const socket = ctx.extra.socket;
        const authorization = ctx.connectionParams?.authorization;
        if (typeof authorization !== 'string' || authorization.trim() === '') {
          socket.close(WS_CLOSE.unauthorized, 'Unauthorized: send connectionParams.authorization');
          return false;
        }
        let principal: Principal | null;
        try {
          principal = await deps.authenticator.authenticate(authorization);
        } catch (err) {
          if (err instanceof LedgerError && err.code === 'UNAUTHENTICATED') {
            log.info({ connectionId: state.connectionId, reason: err.message }, 'websocket refused: invalid credential');
            socket.close(WS_CLOSE.forbidden, 'Forbidden: invalid or expired credential');
          } else {
            // The server's problem (database, JWKS), not the caller's: HTTP answers UNAVAILABLE.
            log.warn({ connectionId: state.connectionId, err }, 'websocket refused: the credential could not be checked');
            socket.close(WS_CLOSE.tryAgainLater, 'Try again later: the credential cannot be checked right now');
          }
          return false;
        }
        if (!principal) {
          socket.close(WS_CLOSE.unauthorized, 'Unauthorized: send connectionParams.authorization');
          return false;
        }
        // Counted per token, not per spelling of the header value: "bearer x" and " Bearer  x"
        // authenticate as the same credential and must not each get their own slots.
        const tokenKey = liveSlotKey(bearerToken(authorization) ?? authorization);
        if (!takeLiveSlot(tokenKey)) {
          socket.close(WS_CLOSE.tooManyConnections, 'Too many connections for this credential');
          return false;
        }
        state.tokenKey = tokenKey;
        state.principal = principal;
        state.authorization = authorization;
        // A browser cannot set headers on a WebSocket, but a platform's server-side proxy can
        // set this one on the upgrade request; a client may also send it in connectionParams.
        state.publicAudience = audienceFlag(ctx.extra.request.headers[AUDIENCE_HEADER]) || audienceFlag(ctx.connectionParams?.[AUDIENCE_HEADER]);
        if (principal.kind === 'user' && principal.expiresAt) {
          state.expiryTimer = atInstant(principal.expiresAt, () => socket.close(WS_CLOSE.forbidden, 'Forbidden: token expired'));
        }
        if (principal.kind === 'service') state.unwatchKey = watchSocketKey(socket, state, principal.keyId);
        return true;
      },
      onClose: (ctx) => {
        const state = stateOf(ctx.extra);
        state.expiryTimer?.cancel();
        state.unwatchKey?.();
        state.unwatchKey = undefined;
        if (state.tokenKey) {
          releaseLiveSlot(state.tokenKey);
          state.tokenKey = undefined;
        }
      },
      onSubscribe: async (ctx, id, payload) => {
        const state = stateOf(ctx.extra);
        const requestId = `${state.connectionId}:${id}`;
        // The credential is checked again for every operation (the API key lookup is cached, so
        // this costs no query on the hot path): a key revoked since the connection opened is
        // refused here (UNAUTHENTICATED) and the connection is closed with 4403, as at expiry.
        const authorization = state.authorization ?? '';
        let principal: Principal | null;
        try {
          principal = await deps.authenticator.authenticate(authorization);
        } catch (err) {
          if (err instanceof LedgerError && err.code === 'UNAUTHENTICATED') {
            log.info({ connectionId: state.connectionId }, 'websocket closed: credential no longer valid');
            setImmediate(() => closeCredentialEnded(ctx.extra.socket));
            return [new GraphQLError('This credential is no longer valid (revoked or expired).', { extensions: { code: 'UNAUTHENTICATED', requestId } })];
          }
          return [maskFor(err, requestId, false)];
        }
        if (!principal) return [new GraphQLError('Send Authorization: Bearer <API key or user token>.', { extensions: { code: 'UNAUTHENTICATED', requestId } })];
        state.principal = principal;
        // From here to operations.add there is no await, so concurrent operations count right.
        if (state.operations.size >= env.LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION) {
          return [new GraphQLError(`At most ${env.LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION} operations per connection.`, { extensions: { code: 'RATE_LIMITED' } })];
        }
        const { schema: enveloped, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ws: { principal, requestId, authorization, publicAudience: state.publicAudience === true },
        } as never);
        // Parse and validate as over HTTP: graphql-armor's limits throw from either step.
        const badInput = (err: unknown) => [new GraphQLError((err as Error).message, { extensions: { code: 'BAD_USER_INPUT' } })];
        let document;
        let errors: readonly GraphQLError[];
        try {
          document = parse(payload.query);
          errors = validate(enveloped, document);
        } catch (err) {
          if (err instanceof GraphQLError) return badInput(err);
          throw err;
        }
        if (errors.length > 0) return errors;
        state.operations.add(id);
        const args: ExecutionArgs = {
          schema: enveloped,
          document,
          operationName: payload.operationName ?? null,
          variableValues: payload.variables ?? null,
          contextValue: await contextFactory(),
          rootValue: { execute, subscribe },
        };
        return args;
      },
      onComplete: (ctx, id) => {
        const state = stateOf(ctx.extra);
        state.operations.delete(id);
        // The key was revoked while this operation ran: its stream has just sent its
        // UNAUTHENTICATED error; close once the complete message is out (as at the close below).
        if (state.credentialEnded && state.operations.size === 0) setImmediate(() => closeCredentialEnded(ctx.extra.socket));
      },
      execute: (args) => (args.rootValue as { execute: (a: ExecutionArgs) => never }).execute(args),
      subscribe: (args) => (args.rootValue as { subscribe: (a: ExecutionArgs) => never }).subscribe(args),
    },
    wss,
    // Pings every LIVE_WS_KEEPALIVE_MS; no pong by the next one: terminated (dead peers, and
    // clients that stopped reading, are gone within twice this).
    env.LIVE_WS_KEEPALIVE_MS,
  );

  let closing: Promise<void> | null = null;
  return {
    http,
    live,
    relay,
    ready,
    listen: (port, host = env.HOST) =>
      new Promise((resolve, reject) => {
        http.once('error', reject);
        http.listen(port, host, () => {
          const address = http.address();
          resolve(typeof address === 'object' && address ? address.port : port);
        });
      }),
    close: () =>
      (closing ??= (async () => {
        stopping = true;
        clearInterval(stallWatchdog);
        for (const res of answering) if (!res.headersSent) res.setHeader('connection', 'close');
        const httpClosed = new Promise<void>((resolve) => http.close(() => resolve())); // stops listening, closes idle connections
        for (const client of wss.clients) client.close(WS_CLOSE.goingAway, 'server shutting down');
        await new Promise<void>((resolve) => wss.close(() => resolve()));
        for (const res of streams) res.destroy(); // SSE clients reconnect (to another instance)
        if (answering.size > 0) {
          let timer: NodeJS.Timeout | undefined;
          await new Promise<void>((resolve) => {
            answered = resolve;
            timer = setTimeout(resolve, env.SHUTDOWN_GRACE_MS);
          });
          clearTimeout(timer);
          if (answering.size > 0) log.warn({ unanswered: answering.size, graceMs: env.SHUTDOWN_GRACE_MS }, 'shutdown grace period over: closing connections with requests still unanswered');
        }
        http.closeAllConnections(); // keep-alive connections left, and whatever outlived the grace period
        await httpClosed;
        await relay?.close();
        // Redis may be unreachable (a SIGTERM during an outage): nothing here waits for it to return
        // (db/redis-close.ts); the outbox rows not yet published stay for the next relay.
        if (jobSink) await settlesWithin(jobSink.close(), REDIS_QUIT_WAIT_MS);
        if (metrics) await settlesWithin(metrics.close(), REDIS_QUIT_WAIT_MS);
        await Promise.allSettled([rateLimit.close(), live.close(), publisher && closeRedis(publisher), queueConnection && closeRedis(queueConnection), metricsRedis && closeRedis(metricsRedis)]);
        eventLoopDelay.disable();
      })()),
  };
}

/**
 * Masks every error of an execution or a subscription (HTTP, SSE and WebSocket alike) with
 * `mask`, which gets the operation's own context: its request id and audience.
 *
 * Why a plugin and not yoga's `maskedErrors` alone: yoga's `maskError(error, message, isDev)` is
 * not given the request, so it used to read it from an AsyncLocalStorage entered per HTTP request.
 * On Node 20 an active AsyncLocalStorage runs a promise hook on every promise the process creates;
 * measured with `bench/experiments/server-cpu-per-request.ts` (sequential requests, server CPU from
 * /proc) that cost ~20 % of the server's CPU per recordUsage. WebSocket operations never ran
 * inside it, so their errors got a random request id and no public-audience masking; with the
 * context they get both. Registered before yoga's own masking (envelop runs `onExecuteDone`
 * hooks in plugin order), which then finds every such error masked and keeps it.
 */
function maskExecutionErrors(mask: (error: unknown, context: GraphQLContext) => GraphQLError): Plugin<GraphQLContext> {
  const masking =
    (context: GraphQLContext) =>
    ({ result, setResult }: { result: ExecutionResult; setResult: (result: ExecutionResult) => void }) => {
      if (result.errors?.length) setResult({ ...result, errors: result.errors.map((e) => mask(e, context)) });
    };
  return {
    onExecute: ({ args }) => ({
      onExecuteDone: (payload) => handleStreamOrSingleExecutionResult(payload, masking(args.contextValue as GraphQLContext)),
    }),
    onSubscribe: ({ args }) => ({
      onSubscribeResult: (payload) => handleStreamOrSingleExecutionResult(payload, masking(args.contextValue as GraphQLContext)),
      onSubscribeError: ({ error, setError }) => setError(mask(error, args.contextValue as GraphQLContext)),
    }),
  };
}

/**
 * A subscription over SSE (Accept: text/event-stream) without a valid credential is refused
 * with HTTP 401 before any stream is opened (the WebSocket path refuses with close code 4401).
 * Decided on the header, before the operation is read: any request listing text/event-stream
 * without an Authorization header gets the 401 (every operation needs a credential anyway). One
 * that does not list it and subscribes without a credential gets UNAUTHENTICATED, never a stream.
 */
function refuseAnonymousStreams(): Plugin {
  return {
    onRequest({ request, endResponse, fetchAPI }) {
      if (!(request.headers.get('accept') ?? '').includes('text/event-stream')) return;
      if ((request.headers.get('authorization') ?? '').trim() !== '') return;
      endResponse(
        new fetchAPI.Response(JSON.stringify({ errors: [{ message: 'Send Authorization: Bearer <API key or user token>.', extensions: { code: 'UNAUTHENTICATED' } }] }), {
          status: 401,
          headers: { 'content-type': 'application/json' },
        }),
      );
    },
  };
}
