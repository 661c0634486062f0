/**
 * The API process: `npm run serve` (tsx src/main.ts). Reads the environment (src/config/env.ts),
 * applies pending migrations, starts the HTTP server and, unless RUN_WORKERS=false, the BullMQ
 * workers in-process. Logs one "creditpool ready" line with the URL. SIGTERM/SIGINT stop it
 * gracefully (server first, then workers, then connections).
 */
import { pino } from 'pino';
import { Redis } from 'ioredis';
import { loadEnvOrExit } from './config/env.js';
import { createPgPool, ledgerSessionLimits, logLostConnections, warnAboutSessionTimeouts } from './db/pg.js';
import { QueryTimings } from './db/query-timings.js';
import { readStatisticsSettings, statisticsWarnings } from './db/statistics.js';
import { createPrismaClient } from './db/prisma.js';
import { applyMigrations } from './db/migrate.js';
import { createPricingState } from './services/pricing-state.js';
import { createPaymentProvider } from './payments/index.js';
import { createAuthenticator } from './auth/authenticator.js';
import { buildServer } from './server.js';
import { GroupCommitter } from './services/group-commit.js';
import { ReservationOwners } from './services/reservation-owners.js';
import { applyCharge, chargeAccounts } from './services/record-usage.js';
import { startWorkers, type RunningWorkers } from '../workers/start.js';
import { closeRedis } from './db/redis-close.js';

const env = loadEnvOrExit();
const log = pino({ level: env.LOG_LEVEL, base: { service: 'creditpool-api' } });

if (env.MIGRATE_ON_BOOT) {
  const { applied } = await applyMigrations(env.DATABASE_URL, { log: (m) => log.debug(m) });
  log.info({ applied }, applied.length ? 'applied migrations' : 'database schema is current');
}

const pool = createPgPool(env.DATABASE_URL, env.PG_POOL_SIZE, ledgerSessionLimits(env));
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
const redis = new Redis(env.REDIS_URL, { maxRetriesPerRequest: 3, lazyConnect: false });
redis.on('error', (err) => log.warn({ err: err.message }, 'redis connection error'));
const clock = () => new Date();
const services = {
  pool,
  clock,
  pricing: createPricingState(pool),
  payments: createPaymentProvider(env),
  groupCommit: env.CHARGE_PATH === 'group' ? new GroupCommitter(pool, clock, chargeAccounts, applyCharge, { maxTransactions: Math.min(env.GROUP_COMMIT_MAX_TRANSACTIONS, env.PG_POOL_SIZE), carryState: env.GROUP_COMMIT_CARRY_STATE }) : undefined,
  reservationOwners: new ReservationOwners(),
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
const port = await server.listen(env.PORT);
const workers: RunningWorkers | null = env.RUN_WORKERS ? await startWorkers({ env, pool, log, services, relay: false }) : null;
log.info({ url: `http://127.0.0.1:${port}/graphql`, workers: env.RUN_WORKERS }, 'creditpool ready');

let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    void (async () => {
      await server.close();
      await workers?.close();
      await Promise.allSettled([pool.end(), prisma.$disconnect(), closeRedis(redis)]);
      process.exit(0);
    })().catch((err) => {
      log.error({ err }, 'error during shutdown');
      process.exit(1);
    });
  });
}
