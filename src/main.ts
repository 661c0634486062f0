/**
 * The API process: `npm run serve` (tsx src/main.ts). Takes no arguments but `--help` (anything
 * else: one line on stderr, exit 2, nothing read or started; src/main-arguments.ts): its
 * settings come from the environment. Reads the environment (src/config/env.ts),
 * applies pending migrations, starts the HTTP server and, unless RUN_WORKERS=false, the BullMQ
 * workers in-process. Logs one "creditpool ready" line with the URL. SIGTERM/SIGINT stop it
 * gracefully (server and workers at once, then connections), also during the boot ({@link shutdown}).
 */
// First: wrong arguments and --help are answered before the rest of the application loads.
import './main-arguments.js';
import { Redis } from 'ioredis';
import { loadEnvOrExit } from './config/env.js';
import { createLogger } from './logging.js';
import { createPgPool, ledgerSessionLimits, logLostConnections, warnAboutSessionTimeouts } from './db/pg.js';
import { QueryTimings } from './db/query-timings.js';
import { readStatisticsSettings, statisticsWarnings } from './db/statistics.js';
import { createPrismaClient, type PrismaClient } from './db/prisma.js';
import type pg from 'pg';
import { applyMigrations, MigrationFailedError, redactDatabaseUrl } from './db/migrate.js';
import { createPricingState } from './services/pricing-state.js';
import { createPaymentProvider } from './payments/index.js';
import { createAuthenticator } from './auth/authenticator.js';
import { buildServer, type CreditpoolServer } from './server.js';
import { GroupCommitter } from './services/group-commit.js';
import { ReservationOwners } from './services/reservation-owners.js';
import { DepletionAlerts } from './services/depletion-alerts.js';
import { RefusalTopUps } from './services/refusal-top-ups.js';
import { applyCharge, chargeAccounts } from './services/record-usage.js';
import { startWorkers, type RunningWorkers } from '../workers/start.js';
import { closeRedis, settlesWithin } from './db/redis-close.js';
import { endPoolWithin, STUCK_WORK_WAIT_MS, trackCheckedOutSessions, type CheckedOutSessions } from './db/pool-shutdown.js';

const env = loadEnvOrExit();
// Secrets and card holders' details are kept out of its lines (src/logging.ts).
const log = createLogger({ level: env.LOG_LEVEL, base: { service: 'creditpool-api' } });

// What a shutdown has to close, filled in as the boot creates it. The signal handlers are
// installed before anything else: the server takes requests as soon as it listens, which is
// before the in-process workers have started (they wait for Redis, without a bound while it is
// unreachable), and a SIGTERM in that window used to kill the process outright (no handler yet),
// cutting the requests it had taken instead of answering them.
const running: { server?: CreditpoolServer; workers?: RunningWorkers; pool?: pg.Pool; sessions?: CheckedOutSessions; prisma?: PrismaClient; redis?: Redis } = {};
let stopping = false;
/** The boot has finished (logged "creditpool ready", or that it listens but is not ready). */
let booted = false;
/** The shutdown has begun closing: workers whose start ends later are closed by the boot itself. */
let workersPassed = false;

/**
 * The graceful stop on SIGTERM/SIGINT, at any point of the boot or after it. Before the server
 * exists nothing was taken: exit 0 at once (a migration cut short is rolled back, each runs in
 * one transaction). Otherwise the server and, if they have started, the workers at once, within
 * one SHUTDOWN_GRACE_MS from the signal (the server answers the requests it took, the workers
 * finish their jobs; a workers start still waiting for Redis has no job running and is left
 * behind), then the connections (database work still running gets STUCK_WORK_WAIT_MS, then its
 * sessions are terminated: db/pool-shutdown.ts); exit 0, or 1 when a step throws.
 * A second signal while stopping changes nothing.
 */
function shutdown(signal: NodeJS.Signals): void {
  if (stopping) return;
  stopping = true;
  const { server, pool, prisma, redis } = running;
  log.info({ signal, booted }, 'shutting down');
  if (!server) process.exit(0);
  // Workers whose start ends from now on are closed by the boot itself.
  workersPassed = true;
  void (async () => {
    // One grace period for both, from the signal: the server answers what it took while the
    // workers finish their jobs. One after the other, a stop took up to twice SHUTDOWN_GRACE_MS
    // (test/cycles/shutdown.test.ts), past what an orchestrator gives before its SIGKILL.
    await Promise.all([server.close(), running.workers?.close()]);
    // Work still in PostgreSQL past the grace period (a request or a job waiting for a lock) gets
    // STUCK_WORK_WAIT_MS, then its session is terminated: the pool's end used to wait for it up to
    // the statement timeout.
    await Promise.allSettled([
      pool && endPoolWithin(pool, running.sessions!, log),
      prisma && settlesWithin(prisma.$disconnect(), STUCK_WORK_WAIT_MS),
      redis && closeRedis(redis),
    ]);
    process.exit(0);
  })().catch((err) => {
    log.error({ err }, 'error during shutdown');
    process.exit(1);
  });
}
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => shutdown(signal));

if (env.MIGRATE_ON_BOOT) {
  try {
    const { applied } = await applyMigrations(env.DATABASE_URL, { log: (m) => log.debug(m) });
    log.info({ applied }, applied.length ? 'applied migrations' : 'database schema is current');
  } catch (err) {
    // One log line saying which step and which database (PostgreSQL unreachable, a migration
    // failing), instead of Node's bare stack trace of an uncaught rejection; the orchestrator restarts.
    // A failed migration blocks every later boot until it is resolved: say how.
    if (err instanceof MigrationFailedError) {
      log.fatal(
        { err, database: redactDatabaseUrl(env.DATABASE_URL), failedMigrations: err.failedMigrations },
        `could not apply the database migrations (MIGRATE_ON_BOOT): ${err.resolveHint}; exiting`,
      );
    } else {
      log.fatal({ err, database: redactDatabaseUrl(env.DATABASE_URL) }, 'could not apply the database migrations (MIGRATE_ON_BOOT): exiting');
    }
    process.exit(1);
  }
}

const pool = createPgPool(env.DATABASE_URL, env.PG_POOL_SIZE, ledgerSessionLimits(env));
running.pool = pool;
running.sessions = trackCheckedOutSessions(pool);
logLostConnections(pool, log);
await warnAboutSessionTimeouts(pool, ledgerSessionLimits(env), log);
try {
  for (const warning of statisticsWarnings(await readStatisticsSettings(pool), env.STATISTICS_UPKEEP_EVERY_MS)) log.warn(warning);
} catch (err) {
  log.warn({ err: (err as Error).message }, 'could not read PostgreSQL autovacuum settings');
}
const queryTimings = env.PG_QUERY_TIMINGS ? new QueryTimings() : undefined;
queryTimings?.instrument(pool);
const prisma = createPrismaClient(env.DATABASE_URL, 10, ledgerSessionLimits(env));
running.prisma = prisma;
const redis = new Redis(env.REDIS_URL, { maxRetriesPerRequest: 3, lazyConnect: false });
running.redis = redis;
redis.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'));
const clock = () => new Date();
const services = {
  pool,
  clock,
  pricing: createPricingState(pool),
  payments: createPaymentProvider(env),
  groupCommit: env.CHARGE_PATH === 'group' ? new GroupCommitter(pool, clock, chargeAccounts, applyCharge, { maxTransactions: Math.min(env.GROUP_COMMIT_MAX_TRANSACTIONS, env.PG_POOL_SIZE), carryState: env.GROUP_COMMIT_CARRY_STATE }) : undefined,
  reservationOwners: new ReservationOwners(),
  depletionAlerts: new DepletionAlerts(),
  refusalTopUps: new RefusalTopUps(),
  log,
};
const authenticator = createAuthenticator({
  pool,
  adminApiKey: env.ADMIN_API_KEY,
  jwtSecret: env.JWT_SECRET,
  jwksUrl: env.JWKS_URL,
  issuer: env.JWT_ISSUER,
  audience: env.JWT_AUDIENCE,
  jwtMaxTtlSeconds: env.JWT_MAX_TTL_SECONDS,
});
const server = buildServer({ env, log, pool, prisma, redis, services, authenticator, queryTimings });
running.server = server;
let port: number;
try {
  port = await server.listen(env.PORT);
} catch (err) {
  // One log line naming the port (EADDRINUSE: another process has it; EACCES: a privileged port),
  // instead of Node's stack dump of an uncaught rejection on stderr.
  log.fatal({ err, port: env.PORT }, `could not listen on port ${env.PORT} (PORT): exiting`);
  process.exit(1);
}
if (env.RUN_WORKERS && !stopping) {
  const workers = await startWorkers({ env, pool, log, services, relay: false });
  // Started after the shutdown closed what it found: they stop here (nothing of theirs ran long).
  if (workersPassed) await workers.close();
  else running.workers = workers;
}
if (!stopping) {
  booted = true;
  // "ready" only when it is: with MIGRATE_ON_BOOT=false nothing above needed PostgreSQL (each
  // use of it is caught), and with RUN_WORKERS=false nothing needed Redis; the server then
  // listens while GET /readyz answers 503, and the log used to say "creditpool ready" anyway.
  const { postgres, redis: redisUp } = await server.ready();
  const url = `http://127.0.0.1:${port}/graphql`;
  if (postgres && redisUp) log.info({ url, workers: env.RUN_WORKERS }, 'creditpool ready');
  else log.warn({ url, workers: env.RUN_WORKERS, postgres, redis: redisUp }, 'creditpool listening, not ready: a dependency is unreachable (false below); GET /readyz answers 503 until it answers');
}
