/**
 * Processor of the `analyze-stale-tables` maintenance job: where PostgreSQL's autovacuum is off,
 * ANALYZE the tables that changed by more than autovacuum's threshold (db/statistics.ts
 * analyzeStaleTables), so that the ledger's cached plans are made again from statistics of the
 * tables as they are. Reads the settings at every run (an operator may turn autovacuum on).
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { analyzeStaleTables, readStatisticsSettings, type StatisticsUpkeep } from '../../src/db/statistics.js';

/**
 * Runs one pass; logs the tables it analyzed (info) and those it left busy (warn), if any.
 * @returns what analyzeStaleTables did (the job's result as BullMQ stores it).
 * @throws the database error (the job fails; the next scheduled run tries again).
 */
export async function processAnalyzeStaleTables(pool: pg.Pool, log: Logger): Promise<StatisticsUpkeep> {
  const upkeep = await analyzeStaleTables(pool, await readStatisticsSettings(pool));
  if (upkeep.tables.length > 0) log.info({ tables: upkeep.tables }, 'analyze-stale-tables: analyzed tables that changed since their last ANALYZE (autovacuum is off)');
  if (upkeep.busy.length > 0) log.warn({ tables: upkeep.busy }, 'analyze-stale-tables: tables locked by another session past the lock timeout, left for the next run');
  return upkeep;
}
