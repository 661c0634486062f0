/**
 * The only reader of process.env. Parses and validates the whole environment at once with zod
 * and returns a typed, frozen config; on any error it lists every problem (not just the first).
 */
import { z } from 'zod';
import { DEFAULT_JWT_MAX_TTL_SECONDS, jwksUrlProblem } from '../auth/jwt.js';
import { isStripeTestKey } from '../payments/mode-routing.js';

const booleanish = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

/** graphql-yoga's SSE heartbeat interval (a `:` comment line on every open stream), in milliseconds; fixed by yoga. */
export const SSE_HEARTBEAT_MS = 12_000;

/**
 * Smallest WEBHOOK_LOG_RETENTION_DAYS other than 0, in days: the longest any reader of the
 * delivery log looks back. /metrics counts the attempts of the last 7 days
 * (WEBHOOK_METRICS_WINDOW_SECONDS, src/metrics/server-metrics.ts); the sweep re-adds events of
 * the last 24 h that have no DELIVERED row (WEBHOOK_SWEEP_MAX_AGE_MS) and a delivery job retries
 * for about 18 h (LEDGER_JOB_OPTIONS['deliver-webhook']), both well inside it.
 */
export const MIN_WEBHOOK_LOG_RETENTION_DAYS = 7;

const EnvSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  /** HTTP port of the API (contract README: default 4000). */
  PORT: z.coerce.number().int().min(0).max(65535).default(4000),
  /** Interface to listen on. */
  HOST: z.string().min(1).default('0.0.0.0'),
  DATABASE_URL: z.string().url().default('postgresql://postgres@127.0.0.1:5432/creditpool'),
  REDIS_URL: z.string().url().default('redis://127.0.0.1:6379'),
  /**
   * Bootstrap service key with every scope. Unset: no bootstrap key. Visible ASCII without
   * spaces: it is sent as one Bearer token (src/auth/authenticator.ts), so any other key could
   * never be presented.
   */
  ADMIN_API_KEY: z
    .string()
    .min(16, 'ADMIN_API_KEY must be at least 16 characters')
    .regex(/^[\x21-\x7e]+$/, 'must be visible ASCII without spaces (it is sent as "Authorization: Bearer <key>")')
    .optional(),
  /** HS256 secret for end-user JWTs. */
  JWT_SECRET: z.string().min(32, 'JWT_SECRET must be at least 32 characters').optional(),
  /**
   * Alternative to JWT_SECRET: a JWKS URL for end-user JWTs (RS256/ES256...). Must be https
   * (plain http only on a loopback host): a key set fetched in clear text could be replaced.
   */
  JWKS_URL: z
    .string()
    .superRefine((url, ctx) => {
      const problem = jwksUrlProblem(url);
      if (problem) ctx.addIssue({ code: 'custom', message: `JWKS_URL ${problem}` });
    })
    .optional(),
  /** Required `iss` of end-user JWTs; required with JWKS_URL (the provider's key set signs other issuers' and apps' tokens too). */
  JWT_ISSUER: z.string().optional(),
  /** Required `aud` of end-user JWTs; required with JWKS_URL (see JWT_ISSUER). */
  JWT_AUDIENCE: z.string().optional(),
  /**
   * Longest accepted end-user token lifetime in seconds: `exp` (required) may lie at most this far
   * after the token's `iat` and after now (src/auth/jwt.ts). Default 24 hours; 60 s .. 30 days.
   * (Live connections close at `exp` with src/live/at-instant.ts, which waits beyond Node's
   * longest timer.)
   */
  JWT_MAX_TTL_SECONDS: z.coerce.number().int().min(60).max(2_592_000).default(DEFAULT_JWT_MAX_TTL_SECONDS),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Run the BullMQ workers inside the API process too. */
  RUN_WORKERS: booleanish.default(true),
  /** Apply pending migrations at boot. */
  MIGRATE_ON_BOOT: booleanish.default(true),
  /** Size of the pg pool used by the ledger's money-moving transactions. */
  PG_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(20),
  /**
   * Longest a statement of that pool may run, lock waits included, before PostgreSQL cancels it
   * (its `statement_timeout`; 0 = no limit). A charge waiting on an account row that a stuck
   * transaction holds answers UNAVAILABLE after this long instead of hanging (db/pg.ts).
   */
  PG_STATEMENT_TIMEOUT_MS: z.coerce.number().int().min(0).default(30_000),
  /**
   * Longest a transaction of that pool may sit idle (no statement running) before PostgreSQL ends
   * its session and rolls it back (`idle_in_transaction_session_timeout`; 0 = no limit): a
   * process that hangs or dies mid-transaction cannot hold an account's row lock for longer.
   */
  PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: z.coerce.number().int().min(0).default(60_000),
  /**
   * Longest that pool waits for PostgreSQL's answer to a statement it sent before it gives the
   * connection up (node-postgres `query_timeout`; 0 = never). PostgreSQL's own limits cannot help
   * when the server or the network between went silent (a host lost without a TCP reset, a
   * partition): the client would otherwise wait for the kernel's TCP timeouts, ~15 minutes.
   * Default: PG_STATEMENT_TIMEOUT_MS + 15 s (none when that is 0); it must be longer than
   * PG_STATEMENT_TIMEOUT_MS, so that a statement PostgreSQL is still allowed to run is not given up.
   */
  PG_QUERY_TIMEOUT_MS: z.coerce.number().int().min(0).optional(),
  /**
   * Longest the ledger pool and Prisma's pool wait for a connection (a new one to be established, or
   * a busy pool to free one) before the request answers UNAVAILABLE (node-postgres/pg-pool
   * `connectionTimeoutMillis`; 0 = no limit).
   */
  PG_CONNECT_TIMEOUT_MS: z.coerce.number().int().min(0).default(10_000),
  /** Time every statement of that pool client-side and report the sums on /readyz (src/db/query-timings.ts; for profiling). */
  PG_QUERY_TIMINGS: booleanish.default(false),
  /**
   * Serve Prometheus metrics at GET /metrics (src/metrics/server-metrics.ts): process metrics,
   * charge outcomes, the outbox, queue and webhook backlogs, the live and group-commit counters.
   */
  METRICS_ENABLED: booleanish.default(true),
  /**
   * When set, GET /metrics answers only `Authorization: Bearer <METRICS_TOKEN>` (401 otherwise).
   * Visible ASCII without spaces, at least 16 characters; must differ from the other secrets (a
   * scraper's configuration is no place for a key that moves money).
   */
  METRICS_TOKEN: z
    .string()
    .min(16, 'METRICS_TOKEN must be at least 16 characters')
    .regex(/^[\x21-\x7e]+$/, 'must be visible ASCII without spaces (it is sent as "Authorization: Bearer <token>")')
    .optional(),
  /** GraphQL limits (graphql-armor). */
  GRAPHQL_MAX_DEPTH: z.coerce.number().int().min(1).default(12),
  GRAPHQL_MAX_ALIASES: z.coerce.number().int().min(1).default(30),
  GRAPHQL_MAX_TOKENS: z.coerce.number().int().min(100).default(5000),
  GRAPHQL_MAX_COST: z.coerce.number().int().min(100).default(20000),
  /**
   * Largest HTTP request body accepted, in bytes (checked against Content-Length before the body
   * is read; a body without Content-Length is refused with 411). 25,000,000 is graphql-yoga's
   * own default, which this check replaces (src/http/body-limit.ts).
   */
  MAX_REQUEST_BODY_BYTES: z.coerce.number().int().min(1_024).max(1_000_000_000).default(25_000_000),
  /** Most items accepted by recordUsageBatch. */
  MAX_BATCH_ITEMS: z.coerce.number().int().min(1).max(10000).default(1000),
  /**
   * How charges commit: `group` decides the charges that arrive while the charge transactions
   * are busy together (across accounts, one balance version per account) and commits them as one
   * transaction (src/services/group-commit.ts); `naive` is one transaction per charge (kept to
   * measure against).
   */
  CHARGE_PATH: z.enum(['group', 'naive']).default('group'),
  /**
   * With CHARGE_PATH=group: charge transactions in flight at once; charges that arrive while all
   * are busy wait and run together, across accounts, in the next free one (group-commit.ts).
   */
  GROUP_COMMIT_MAX_TRANSACTIONS: z.coerce.number().int().min(1).max(200).default(4),
  /**
   * With CHARGE_PATH=group: a hot account's next transaction starts from the state its previous
   * one left (guarded by the balance version; one round trip instead of two). Off: every
   * transaction reads its state.
   */
  GROUP_COMMIT_CARRY_STATE: booleanish.default(true),
  /** BullMQ key prefix of the queues (tests use their own). */
  QUEUE_PREFIX: z.string().min(1).default('creditpool'),
  /** Every how many milliseconds the sweeps (expiries, period rolls, stuck top-ups) run. */
  SWEEP_EVERY_MS: z.coerce.number().int().min(100).default(30_000),
  /**
   * Every how many milliseconds the workers check, where PostgreSQL's autovacuum is off, which
   * tables changed by more than autovacuum's analyze threshold and ANALYZE them
   * (db/statistics.ts analyzeStaleTables; with autovacuum on the job does nothing). 0: never.
   */
  STATISTICS_UPKEEP_EVERY_MS: z.coerce.number().int().min(0).default(15_000),
  /**
   * Every how many hours the reconcile-ledger job (every minute, src/services/reconcile-ledger.ts)
   * checks a recently changed account in FULL (its whole ledger history: what catches an old
   * ledger entry changed or deleted behind the product's back); in between it checks only what
   * changed since the account's last consistent check. 0: every pass is full (cost grows with each
   * account's history). 0 to 8,760 (a year).
   */
  RECONCILE_FULL_EVERY_HOURS: z.coerce.number().min(0).max(8_760).default(24),
  /** Prefix of the Redis pub/sub channels of live updates (one channel per account). */
  LIVE_CHANNEL_PREFIX: z.string().min(1).default('creditpool:live:'),
  /** Run the outbox relay in this process (publishes committed outbox rows to Redis). */
  OUTBOX_RELAY: booleanish.default(true),
  /** Safety-net poll of the outbox relay, in milliseconds (commits in this process publish at once). */
  OUTBOX_POLL_INTERVAL_MS: z.coerce.number().int().min(10).max(60_000).default(250),
  /**
   * Per-credential rate limit (src/graphql/rate-limit.ts): points an end user (JWT, keyed by its
   * `sub`) may spend per minute, each operation weighing its GraphQL cost estimate
   * (src/graphql/cost-limit.ts; a credit-bar balance read ~25, a usage page of 20 events ~850,
   * the demo's whole report ~8,450). 0: end users are not limited.
   */
  RATE_LIMIT_USER_POINTS_PER_MINUTE: z.coerce.number().int().min(0).max(1_000_000_000).default(30_000),
  /**
   * The same for service API keys (keyed by key id; the bootstrap ADMIN_API_KEY by itself).
   * 0 (default): not limited, and a service request makes no rate-limit round trip to Redis, so
   * metering services are never throttled unless the operator opts in.
   */
  RATE_LIMIT_SERVICE_POINTS_PER_MINUTE: z.coerce.number().int().min(0).max(1_000_000_000).default(0),
  /**
   * Length of the fixed window the budgets are counted in, in seconds: each window allows
   * ceil(points per minute x window / 60) points. Shorter windows allow smaller bursts at the same rate.
   */
  RATE_LIMIT_WINDOW_SECONDS: z.coerce.number().int().min(1).max(3_600).default(60),
  /**
   * Longest a rate-limit decision waits for Redis (ioredis commandTimeout of the limiter's own
   * connection); a Redis that is down or slower falls back to a per-instance in-memory limit.
   */
  RATE_LIMIT_REDIS_TIMEOUT_MS: z.coerce.number().int().min(1).max(10_000).default(100),
  /** Prefix of the rate limit's Redis keys (`<prefix>:user:<hash of sub>`, `<prefix>:service:<key id>`). */
  RATE_LIMIT_KEY_PREFIX: z.string().min(1).default('creditpool:ratelimit'),
  /** Live subscriptions one WebSocket connection may hold at once. */
  LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION: z.coerce.number().int().min(1).default(20),
  /** Live connections one credential may hold open on one instance: WebSocket connections and SSE subscription streams together (HTTP 429 / close 4429 past it). */
  LIVE_MAX_CONNECTIONS_PER_TOKEN: z.coerce.number().int().min(1).default(100),
  /** Largest WebSocket message accepted from a client, in bytes. */
  LIVE_MAX_MESSAGE_BYTES: z.coerce.number().int().min(1024).default(65_536),
  /**
   * Most bytes a WebSocket may hold unsent (its client not reading) before the server stops
   * reading that client's messages until the backlog is written (src/server.ts). Without it a
   * client that sends without reading grew the server's buffer without bound.
   */
  LIVE_MAX_BUFFERED_BYTES: z.coerce.number().int().min(16_384).default(1_048_576),
  /**
   * Every how many milliseconds the server pings each WebSocket; one that has not answered by the
   * next ping is terminated (graphql-ws keepAlive): dead peers, and clients that stopped reading,
   * are gone within twice this.
   */
  LIVE_WS_KEEPALIVE_MS: z.coerce.number().int().min(100).max(600_000).default(12_000),
  /**
   * An SSE subscription stream whose connection has written nothing for this long (its client
   * takes nothing: the TCP window is full) is closed, freeing its subscription and live slot.
   * An idle stream writes a heartbeat comment every 12 s, so it must be longer than that (parseEnv
   * refuses less outside NODE_ENV=test, where yoga's heartbeat is every 300 ms).
   */
  LIVE_SSE_STALL_TIMEOUT_MS: z.coerce.number().int().min(1_000).max(3_600_000).default(30_000),
  /**
   * On SIGTERM/SIGINT, how long the server waits for the requests it is answering to finish
   * before it closes their connections anyway (src/server.ts `close`), and how long the workers
   * wait for their jobs in progress before they drop their Redis connections (workers/start.ts).
   */
  SHUTDOWN_GRACE_MS: z.coerce.number().int().min(0).default(10_000),
  /**
   * Longest the workers process (`npm run workers`, workers/main.ts) waits at start for Redis to
   * take its job schedulers and workers, in milliseconds; past it, it logs one fatal line naming
   * REDIS_URL (password hidden) and exits 1, so a Redis that is down or silent at start is seen
   * (the orchestrator restarts it) instead of a process that waited for ever and looked started.
   * 0: no limit (the behaviour before). After a successful start it reconnects to a Redis that
   * goes away without a limit, as before. Not used by the API's in-process workers (src/main.ts),
   * which serve requests meanwhile and say "not ready" on GET /readyz.
   */
  WORKERS_REDIS_WAIT_MS: z.coerce.number().int().min(0).max(3_600_000).default(30_000),
  /** Undelivered updates queued per subscription before they are replaced by one fresh snapshot. */
  LIVE_MAX_QUEUED_UPDATES: z.coerce.number().int().min(1).default(1_000),
  /** Where signed webhooks (credit alerts, auto top-up paused) are POSTed. Unset: none are sent or logged. */
  WEBHOOK_URL: z
    .string()
    .url()
    .refine((u) => /^https?:\/\//i.test(u), 'WEBHOOK_URL must be an http(s) URL')
    // fetch refuses a URL with user:password (every attempt would fail): authenticate the
    // receiver with the signature (WEBHOOK_SECRET) instead. The message never echoes the URL.
    .refine((u) => !URL.canParse(u) || (new URL(u).username === '' && new URL(u).password === ''), 'WEBHOOK_URL must not carry a user:password (fetch refuses such a URL; the receiver checks the signature instead)')
    .optional(),
  /** HMAC-SHA256 key of the webhook signatures (header creditpool-signature); required when WEBHOOK_URL is set (parseEnv refuses the URL alone). */
  WEBHOOK_SECRET: z.string().min(32, 'WEBHOOK_SECRET must be at least 32 characters').optional(),
  /**
   * Webhook deliveries a workers process runs at once, on their own queue (webhook-deliveries,
   * workers/start.ts), apart from the ledger-jobs worker's money jobs. Each may wait up to
   * WEBHOOK_TIMEOUT_MS on a slow receiver while holding no database connection (two short
   * statements per attempt); default 8.
   */
  WEBHOOK_CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(8),
  /** Timeout of one webhook POST (connect + response + body), in milliseconds. */
  WEBHOOK_TIMEOUT_MS: z.coerce.number().int().min(100).max(60_000).default(5_000),
  /**
   * How many days the delivery log (webhook_deliveries) keeps an event's attempts after its newest
   * one: the `prune-webhook-log` maintenance job deletes older events whole
   * (src/services/webhook-retention.ts). 0: kept for ever. At least
   * {@link MIN_WEBHOOK_LOG_RETENTION_DAYS} (7) otherwise: /metrics counts the last 7 days' attempts,
   * and the sweep (24 h) and a delivery's retries (about 18 h) read the log to know an event was
   * delivered.
   */
  WEBHOOK_LOG_RETENTION_DAYS: z.coerce
    .number()
    .int()
    .min(0)
    .max(36_500)
    .refine(
      (d) => d === 0 || d >= MIN_WEBHOOK_LOG_RETENTION_DAYS,
      `must be 0 (keep the delivery log for ever) or at least ${MIN_WEBHOOK_LOG_RETENTION_DAYS} days: /metrics counts the last 7 days' delivery attempts, and the sweep (24 h) and a delivery's retries (about 18 h) read the log to know an event was delivered`,
    )
    .default(30),
  /**
   * How many days after its billing period ended (by the account's clock) a budgeted agent's or
   * user's kept spending row of that period (budget_spend) is kept: the `prune-budget-spend`
   * maintenance job deletes older rows (src/services/budget-spend-retention.ts), which no budget
   * check or read looks at any more. 0: kept for ever (the job is not scheduled). A day is already
   * a margin far beyond any clock skew between the servers that charge and the one that prunes.
   */
  BUDGET_SPEND_RETENTION_DAYS: z.coerce.number().int().min(0).max(36_500).default(30),
  /**
   * How long, in seconds, a pack purchase may stay PENDING (its provider answer lost, its client
   * never retrying) before the `sweep-due` job hands it to the `resume-payment` job, which sends
   * the same provider request again with the same idempotency key (services/resume-payment.ts).
   * Keep it above the provider's request timeout with retries (Stripe: 30 s, 2 retries), so a
   * purchase still in flight is left to its caller.
   */
  PAYMENT_RESUME_AFTER_SECONDS: z.coerce.number().int().min(1).max(82_800).default(300),
  /** Who charges payment methods (packs, auto top-ups): the built-in simulator, or Stripe (needs STRIPE_SECRET_KEY). */
  PAYMENT_PROVIDER: z.enum(['simulator', 'stripe']).default('simulator'),
  /**
   * Stripe secret API key (sk_live_… / sk_test_…), used when PAYMENT_PROVIDER=stripe for live
   * accounts, and for test-mode accounts too when it is a test key (payments/mode-routing.ts).
   */
  STRIPE_SECRET_KEY: z.string().min(1).optional(),
  /**
   * Stripe test-mode key (sk_test_… / rk_test_…) that charges test-mode accounts when
   * PAYMENT_PROVIDER=stripe. Unset: they are charged by STRIPE_SECRET_KEY if that is a test key,
   * else by the built-in simulator. A live key is refused: test mode never moves real money.
   */
  STRIPE_TEST_SECRET_KEY: z
    .string()
    .refine(isStripeTestKey, 'must be a Stripe test-mode secret key (sk_test_… or rk_test_…): a live key would charge real cards for test-mode accounts')
    .optional(),
  /**
   * Signing secret (whsec_…) of the Stripe webhook endpoint registered in STRIPE_SECRET_KEY's mode
   * (a live key: a live-mode endpoint, whose events all have livemode=true). With
   * PAYMENT_PROVIDER=stripe it turns on POST /webhooks/stripe (src/http/stripe-webhook.ts).
   */
  STRIPE_WEBHOOK_SECRET: z.string().min(1).optional(),
  /**
   * Signing secret (whsec_…) of a test-mode Stripe webhook endpoint at the same URL (events with
   * livemode=false: test-mode accounts' payments). With PAYMENT_PROVIDER=stripe it turns on
   * POST /webhooks/stripe too; must differ from STRIPE_WEBHOOK_SECRET.
   */
  STRIPE_TEST_WEBHOOK_SECRET: z.string().min(1).optional(),
}).superRefine((env, ctx) => {
  // A JWKS is the identity provider's: it signs every application's tokens, so only iss and aud
  // tell ours apart (src/auth/jwt.ts createUserTokenVerifier refuses it too).
  if (env.JWKS_URL) {
    for (const name of ['JWT_ISSUER', 'JWT_AUDIENCE'] as const) {
      if (!env[name]) ctx.addIssue({ code: 'custom', path: [name], message: 'is required when JWKS_URL is set (the key set signs other applications\' tokens too)' });
    }
  }
  // One secret per power: the JWT secret mints any end user's token, the admin key is every scope,
  // and the webhook secret is shared with whoever receives the webhooks; the metrics token sits in a scraper's configuration.
  for (const [name, value, others] of [
    ['JWT_SECRET', env.JWT_SECRET, [['ADMIN_API_KEY', env.ADMIN_API_KEY]]],
    ['WEBHOOK_SECRET', env.WEBHOOK_SECRET, [['ADMIN_API_KEY', env.ADMIN_API_KEY], ['JWT_SECRET', env.JWT_SECRET]]],
    ['METRICS_TOKEN', env.METRICS_TOKEN, [['ADMIN_API_KEY', env.ADMIN_API_KEY], ['JWT_SECRET', env.JWT_SECRET], ['WEBHOOK_SECRET', env.WEBHOOK_SECRET]]],
  ] as const) {
    for (const [otherName, otherValue] of others) {
      if (value && value === otherValue) ctx.addIssue({ code: 'custom', path: [name], message: `must differ from ${otherName} (whoever holds one would hold both powers)` });
    }
  }
  // Each Stripe endpoint has its own secret, and a secret decides which livemode its events must carry.
  if (env.STRIPE_TEST_WEBHOOK_SECRET && env.STRIPE_TEST_WEBHOOK_SECRET === env.STRIPE_WEBHOOK_SECRET) {
    ctx.addIssue({ code: 'custom', path: ['STRIPE_TEST_WEBHOOK_SECRET'], message: 'must differ from STRIPE_WEBHOOK_SECRET (the test-mode endpoint has its own signing secret)' });
  }
  // Stripe cannot charge without its key; refused here with the rest, not later by createPaymentProvider alone.
  if (env.PAYMENT_PROVIDER === 'stripe' && !env.STRIPE_SECRET_KEY) {
    ctx.addIssue({ code: 'custom', path: ['STRIPE_SECRET_KEY'], message: 'is required when PAYMENT_PROVIDER=stripe' });
  }
  // Without the secret no delivery can be signed: every alert webhook would fail for good (deliverWebhook).
  if (env.WEBHOOK_URL && !env.WEBHOOK_SECRET) {
    ctx.addIssue({ code: 'custom', path: ['WEBHOOK_SECRET'], message: 'is required when WEBHOOK_URL is set (webhooks are signed with it)' });
  }
  // graphql-yoga writes an SSE heartbeat every 12 s (300 ms under NODE_ENV=test): a shorter stall
  // timeout would close idle streams whose client is reading.
  if (env.NODE_ENV !== 'test' && env.LIVE_SSE_STALL_TIMEOUT_MS <= SSE_HEARTBEAT_MS) {
    ctx.addIssue({ code: 'custom', path: ['LIVE_SSE_STALL_TIMEOUT_MS'], message: `must be longer than the ${SSE_HEARTBEAT_MS} ms SSE heartbeat (idle streams would be closed)` });
  }
  if (env.PG_QUERY_TIMEOUT_MS && env.PG_STATEMENT_TIMEOUT_MS && env.PG_QUERY_TIMEOUT_MS <= env.PG_STATEMENT_TIMEOUT_MS) {
    ctx.addIssue({ code: 'custom', path: ['PG_QUERY_TIMEOUT_MS'], message: `must be longer than PG_STATEMENT_TIMEOUT_MS (${env.PG_STATEMENT_TIMEOUT_MS}), or 0 for no limit` });
  }
});

/** Validated process configuration. */
export type Env = z.infer<typeof EnvSchema>;

/**
 * The names of every environment variable read here (PORT, REDIS_URL, ...): `npm run serve` and
 * `npm run workers` name the variable when an operator passes one as an option (`--port 5000`;
 * src/util/command-args.ts).
 */
export const ENV_VARIABLE_NAMES: readonly string[] = Object.freeze(Object.keys(EnvSchema.shape));

/**
 * Parses an environment (default: process.env).
 * @throws Error listing every invalid variable.
 */
export function parseEnv(source: NodeJS.ProcessEnv = process.env): Env {
  const cleaned: Record<string, string> = {};
  for (const [k, v] of Object.entries(source)) if (v !== undefined && v !== '') cleaned[k] = v;
  const result = EnvSchema.safeParse(cleaned);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid environment:\n${lines.join('\n')}`);
  }
  return Object.freeze(result.data);
}

/**
 * Parses process.env or exits the process with status 1 after printing every problem.
 * Use only in process entry points (src/main.ts, workers/main.ts, scripts).
 */
export function loadEnvOrExit(): Env {
  try {
    return parseEnv();
  } catch (err) {
    console.error((err as Error).message);
    process.exit(1);
  }
}
