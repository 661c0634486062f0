/**
 * The workers process: `tsx workers/main.ts`. Same environment as the API (DATABASE_URL,
 * REDIS_URL, LOG_LEVEL). Graceful SIGTERM/SIGINT: finishes jobs in progress (for up to
 * SHUTDOWN_GRACE_MS, without waiting for an unreachable Redis; workers/start.ts), then exits.
 */
import { pino } from 'pino';
import { loadEnvOrExit } from '../src/config/env.js';
import { createPgPool, ledgerSessionLimits, logLostConnections, warnAboutSessionTimeouts } from '../src/db/pg.js';
import { startWorkers } from './start.js';

const env = loadEnvOrExit();
const log = pino({ level: env.LOG_LEVEL, base: { service: 'creditpool-workers' } });
const pool = createPgPool(env.DATABASE_URL, 5, ledgerSessionLimits(env));
logLostConnections(pool, log);
await warnAboutSessionTimeouts(pool, ledgerSessionLimits(env), log);
const workers = await startWorkers({ env, pool, log });
log.info('creditpool workers ready');

let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping workers');
    void workers
      .close()
      .then(() => pool.end())
      .then(() => process.exit(0), (err) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      });
  });
}
