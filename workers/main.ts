/**
 * The workers process: `npm run workers` (tsx workers/main.ts). Same environment as the API
 * (DATABASE_URL, REDIS_URL, LOG_LEVEL). Takes no arguments but `--help` (anything else: one line
 * on stderr, exit 2, nothing started; workers/main-arguments.ts). At start it waits at most
 * WORKERS_REDIS_WAIT_MS for Redis (then: one fatal log line, exit 1); once started it rides out
 * Redis outages, reconnecting. Graceful SIGTERM/SIGINT: finishes jobs in progress (for up to
 * SHUTDOWN_GRACE_MS, without waiting for an unreachable Redis; workers/start.ts), then exits.
 * The handlers are installed before the boot ({@link shutdown}), as src/main.ts does.
 */
// First: wrong arguments and --help are answered before the rest of the workers load.
import './main-arguments.js';
import type pg from 'pg';
import { loadEnvOrExit } from '../src/config/env.js';
import { createLogger } from '../src/logging.js';
import { createPgPool, ledgerSessionLimits, logLostConnections, warnAboutSessionTimeouts } from '../src/db/pg.js';
import { redactDatabaseUrl } from '../src/db/migrate.js';
import { settlesWithin } from '../src/db/redis-close.js';
import { startWorkers, type RunningWorkers } from './start.js';
import { endPoolWithin, trackCheckedOutSessions, type CheckedOutSessions } from '../src/db/pool-shutdown.js';

const env = loadEnvOrExit();
// Secrets and card holders' details are kept out of its lines (src/logging.ts).
const log = createLogger({ level: env.LOG_LEVEL, base: { service: 'creditpool-workers' } });

// What a stop has to close, filled in as the boot creates it. The boot waits for Redis while it is
// unreachable (startWorkers; up to WORKERS_REDIS_WAIT_MS); the handlers used to be installed after it, so a
// SIGTERM then killed the process by Node's default action, with nothing logged.
const running: { pool?: pg.Pool; sessions?: CheckedOutSessions; workers?: RunningWorkers } = {};
let stopping = false;

/**
 * The graceful stop on SIGTERM/SIGINT, at any point of the boot or after it. Workers that have
 * started are closed (jobs in progress get up to SHUTDOWN_GRACE_MS; workers/start.ts), then the
 * pool is ended (work still in PostgreSQL gets STUCK_WORK_WAIT_MS more, then its sessions are
 * terminated: db/pool-shutdown.ts); exit 0, or 1 when a step throws. Before the workers have started no job has run:
 * the pool is ended and the process exits 0 (a start still waiting for Redis is left behind).
 * A second signal while stopping changes nothing.
 */
function shutdown(signal: NodeJS.Signals): void {
  if (stopping) return;
  stopping = true;
  log.info({ signal, started: running.workers !== undefined }, 'stopping workers');
  void (async () => {
    await running.workers?.close();
    // A job still waiting in PostgreSQL past the grace period (a lock held elsewhere) used to keep
    // the process alive until its statement timeout: its session is terminated instead.
    if (running.pool) await endPoolWithin(running.pool, running.sessions!, log);
    process.exit(0);
  })().catch((err) => {
    log.error({ err }, 'error while stopping');
    process.exit(1);
  });
}
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => shutdown(signal));

const pool = createPgPool(env.DATABASE_URL, 5, ledgerSessionLimits(env));
running.pool = pool;
running.sessions = trackCheckedOutSessions(pool);
logLostConnections(pool, log);
await warnAboutSessionTimeouts(pool, ledgerSessionLimits(env), log);
if (!stopping) {
  const workers = await startWithinRedisWait();
  if (stopping) {
    // Started after the stop began (the stop found none to close): they stop here; no job of theirs ran long.
    await workers.close();
  } else {
    running.workers = workers;
    log.info('creditpool workers ready');
  }
}

/**
 * Starts the workers, waiting at most WORKERS_REDIS_WAIT_MS (0: no limit) for Redis to take their
 * job schedulers: BullMQ's connection waits for a Redis that is down or silent without a bound,
 * and the process used to sit there for ever, logging reconnect warnings, with no job running.
 * No job runs before the start completes (the workers are created after the schedulers), so
 * giving up loses nothing. A failed start (the wait passed, or startWorkers threw) logs one fatal
 * line (REDIS_URL without its password) and exits 1, unless a stop has begun: the stop then
 * exits as it does during the boot.
 */
async function startWithinRedisWait(): Promise<RunningWorkers> {
  const waitMs = env.WORKERS_REDIS_WAIT_MS;
  const redis = redactDatabaseUrl(env.REDIS_URL);
  const starting = startWorkers({ env, pool, log });
  const inTime = waitMs === 0 || (await settlesWithin(starting, waitMs));
  // A stop begun meanwhile exits the process itself (as during the rest of the boot).
  if (stopping && !inTime) return new Promise<never>(() => undefined);
  if (!inTime) {
    log.fatal({ redis, waitMs }, `could not start the workers: Redis at ${redis} did not answer within ${waitMs} ms (WORKERS_REDIS_WAIT_MS); exiting`);
    process.exit(1);
  }
  try {
    return await starting;
  } catch (err) {
    if (stopping) return new Promise<never>(() => undefined);
    log.fatal({ err, redis }, 'could not start the workers: exiting');
    process.exit(1);
  }
}
