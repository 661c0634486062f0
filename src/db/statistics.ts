/**
 * Whether the PostgreSQL the service runs on keeps its planner statistics current, and what to
 * tell the operator when it does not.
 *
 * The ledger's statements are named and run with generic plans (db/pg.ts
 * LEDGER_SESSION_OPTIONS): each connection plans a statement once and keeps the plan until
 * PostgreSQL invalidates it, which an ANALYZE of its tables does. Autovacuum runs that ANALYZE as
 * tables grow (PostgreSQL docs, "The Autovacuum Daemon"; it needs `track_counts`). Without it, a
 * plan made while a table was empty, a sequential scan where an index lookup belongs, stays as
 * the table grows. Measured on this project's machine (autovacuum off): `npm run demo` on a
 * fresh database charged 340 events/s, falling from ~700 to ~250 as its tables grew, its
 * connections reading usage_events 53,985 times by sequential scans (904 million rows); run again
 * on the same, by then bigger, database (new connections, new plans) it charged 964 events/s.
 *
 * So where autovacuum is off, the workers do its ANALYZE part for this database's tables
 * ({@link analyzeStaleTables}, the `analyze-stale-tables` maintenance job), by autovacuum's own
 * rule, and the start-up warning says so. Same machine, same demo on a fresh database, with the
 * job every 15 s: 584-645 events/s in two runs, rising as the first ANALYZEs re-planned the
 * statements (250 events/s in the run without it just before).
 */
import type pg from 'pg';

/** The two settings autovacuum's ANALYZE depends on, as PostgreSQL reports them (`on` / `off`). */
export interface StatisticsSettings {
  autovacuum: string;
  trackCounts: string;
}

/**
 * Reads `autovacuum` and `track_counts` of the server `db` is connected to.
 * @throws the driver's error when the query fails (the database unreachable, for one).
 */
export async function readStatisticsSettings(db: pg.Pool): Promise<StatisticsSettings> {
  const { rows } = await db.query<{ autovacuum: string; track_counts: string }>(
    `SELECT current_setting('autovacuum') AS autovacuum, current_setting('track_counts') AS track_counts`,
  );
  return { autovacuum: rows[0]!.autovacuum, trackCounts: rows[0]!.track_counts };
}

/**
 * The warnings a process logs at start for `settings`: none when autovacuum and track_counts
 * are both on; otherwise one sentence saying what goes stale and what to do.
 * @param upkeepEveryMs STATISTICS_UPKEEP_EVERY_MS (0: the workers' ANALYZE job is off, so the
 *   advice is to run ANALYZE by hand)
 */
export function statisticsWarnings(settings: StatisticsSettings, upkeepEveryMs: number): string[] {
  const off = [settings.autovacuum !== 'on' ? 'autovacuum' : null, settings.trackCounts !== 'on' ? 'track_counts' : null].filter((s): s is string => s !== null);
  if (off.length === 0) return [];
  return [
    `PostgreSQL ${off.join(' and ')} ${off.length > 1 ? 'are' : 'is'} off: PostgreSQL does not re-analyze the ledger's tables as they grow, so plans the ledger's ` +
      `connections cached while a table was small (sequential scans) stay until something runs ANALYZE, and charges slow down as tables grow. ` +
      (settings.trackCounts !== 'on'
        ? `Without track_counts nothing can tell which tables changed: turn both on, or run ANALYZE regularly (at least after the first thousands of events).`
        : upkeepEveryMs > 0
          ? `The workers' analyze-stale-tables job (every STATISTICS_UPKEEP_EVERY_MS = ${upkeepEveryMs} ms) runs ANALYZE by autovacuum's rule meanwhile: turn autovacuum on, or keep the workers running.`
          : `Turn autovacuum on, or STATISTICS_UPKEEP_EVERY_MS above 0, or run ANALYZE regularly (at least after the first thousands of events).`),
  ];
}

/** A table of this database's schema that changed enough since its last ANALYZE to need one. */
export interface StaleTable {
  /** Schema-qualified name, as ANALYZE was given it. */
  table: string;
  /** Rows inserted, updated or deleted since the table's last ANALYZE (`pg_stat_user_tables.n_mod_since_analyze`). */
  changedRows: number;
  /**
   * autovacuum's threshold for the table: `autovacuum_analyze_threshold + autovacuum_analyze_scale_factor × reltuples`
   * (the table's own storage parameters where set, else the server's settings; never-analyzed tables count as 0 rows).
   */
  thresholdRows: number;
}

/** What {@link analyzeStaleTables} did. */
export interface StatisticsUpkeep {
  /** `analyzed`: the tables it analyzed (maybe none); `autovacuum-on`: nothing to do, autovacuum does it; `no-track-counts`: nothing known about changes, nothing done. */
  outcome: 'analyzed' | 'autovacuum-on' | 'no-track-counts';
  /** The stale tables it analyzed. */
  tables: StaleTable[];
  /**
   * The stale tables it left for the next run because another session held a conflicting lock
   * longer than the lock timeout (another ANALYZE or VACUUM of the table, a migration's DDL).
   */
  busy: StaleTable[];
}

/** Bounds of one ANALYZE statement of {@link analyzeStaleTables}. */
export interface AnalyzeLimits {
  /**
   * statement_timeout of each ANALYZE, in ms (default 600,000: ten minutes). It replaces the
   * ledger pool's own 30 s for that statement, so the first ANALYZE of a big table is not cut
   * short; it still ends, as a job must.
   */
  statementTimeoutMs: number;
  /**
   * lock_timeout of each ANALYZE, in ms (default 5,000): ANALYZE takes SHARE UPDATE EXCLUSIVE on
   * its table, which conflicts with another ANALYZE or VACUUM of it and with DDL; the job does
   * not queue behind those (nor make later DDL queue behind it) but leaves the table for its
   * next run.
   */
  lockTimeoutMs: number;
}

/** The defaults of {@link AnalyzeLimits}. */
export const DEFAULT_ANALYZE_LIMITS: AnalyzeLimits = { statementTimeoutMs: 600_000, lockTimeoutMs: 5_000 };

/** PostgreSQL's SQLSTATE for a lock not obtained within lock_timeout (lock_not_available). */
const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Does autovacuum's ANALYZE where autovacuum is off: every table of the current schema
 * (`current_schema()`, where the migrations put the project's tables) whose changed rows exceed
 * autovacuum's analyze threshold (PostgreSQL docs, "The Autovacuum Daemon" and "Storage
 * Parameters": threshold = base threshold + scale factor × number of tuples, from the table's own
 * `autovacuum_analyze_threshold` / `autovacuum_analyze_scale_factor` storage parameters where
 * set, else the server's settings, default 50 and 0.1) gets an ANALYZE. The choice of tables and
 * each ANALYZE run in transactions of their own, on one connection, with the statement and lock
 * timeouts of `limits` instead of the pool's. ANALYZE also invalidates the plans
 * that connections cached for the table, so they are made again from the new statistics.
 * A table's own `autovacuum_enabled = false` is not honoured: it tells autovacuum (which is off
 * here anyway) to leave the table alone, while this job keeps the service's cached plans current.
 * Does nothing when `settings` says autovacuum is on, or track_counts is off (no change counts).
 * @param db a pool on the database
 * @param settings as {@link readStatisticsSettings} returns them
 * @param limits the timeouts of each ANALYZE ({@link DEFAULT_ANALYZE_LIMITS})
 * @returns the outcome, the tables analyzed and the ones left busy (lock timeout)
 * @throws the driver's error when a query fails, other than a lock timeout of an ANALYZE
 */
export async function analyzeStaleTables(db: pg.Pool, settings: StatisticsSettings, limits: AnalyzeLimits = DEFAULT_ANALYZE_LIMITS): Promise<StatisticsUpkeep> {
  if (settings.trackCounts !== 'on') return { outcome: 'no-track-counts', tables: [], busy: [] };
  if (settings.autovacuum === 'on') return { outcome: 'autovacuum-on', tables: [], busy: [] };
  const client = await db.connect();
  let broken: Error | undefined;
  try {
    const stale = await withLimits(client, limits, async () => {
      const { rows } = await client.query<{ table: string; changed: string; threshold: string }>(
        `SELECT format('%I.%I', s.schemaname, s.relname) AS table, s.n_mod_since_analyze AS changed, t.threshold
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid,
                LATERAL (SELECT floor(
                           COALESCE((SELECT o.option_value::float8 FROM pg_options_to_table(c.reloptions) o WHERE o.option_name = 'autovacuum_analyze_threshold'),
                                    current_setting('autovacuum_analyze_threshold')::float8)
                         + COALESCE((SELECT o.option_value::float8 FROM pg_options_to_table(c.reloptions) o WHERE o.option_name = 'autovacuum_analyze_scale_factor'),
                                    current_setting('autovacuum_analyze_scale_factor')::float8) * greatest(c.reltuples, 0)) AS threshold) t
          WHERE s.schemaname = current_schema() AND s.n_mod_since_analyze > t.threshold
          ORDER BY s.relname`,
      );
      return rows.map((r) => ({ table: r.table, changedRows: Number(r.changed), thresholdRows: Number(r.threshold) }));
    });
    const tables: StaleTable[] = [];
    const busy: StaleTable[] = [];
    for (const t of stale) {
      try {
        await withLimits(client, limits, () => client.query(`ANALYZE ${t.table}`));
        tables.push(t);
      } catch (err) {
        if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw err;
        busy.push(t);
      }
    }
    return { outcome: 'analyzed', tables, busy };
  } catch (err) {
    broken = err as Error;
    throw err;
  } finally {
    // A connection whose statement failed is closed rather than returned to the pool (its
    // transaction was rolled back, but it is not worth trusting a connection after a timeout).
    client.release(broken);
  }
}

/**
 * Runs `fn` in a transaction of its own on `client` with the statement and lock timeouts of
 * `limits` (SET LOCAL, so the pool's own are back when it ends, however it ends).
 * @throws what `fn` throws, after ROLLBACK
 */
async function withLimits<T>(client: pg.PoolClient, limits: AnalyzeLimits, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    await client.query(`SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)`, [
      String(limits.statementTimeoutMs),
      String(limits.lockTimeoutMs),
    ]);
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}
