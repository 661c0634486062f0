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
  /** autovacuum's threshold for the table: `autovacuum_analyze_threshold + autovacuum_analyze_scale_factor × reltuples` (never-analyzed tables count as 0 rows). */
  thresholdRows: number;
}

/** What {@link analyzeStaleTables} did. */
export interface StatisticsUpkeep {
  /** `analyzed`: the tables it analyzed (maybe none); `autovacuum-on`: nothing to do, autovacuum does it; `no-track-counts`: nothing known about changes, nothing done. */
  outcome: 'analyzed' | 'autovacuum-on' | 'no-track-counts';
  tables: StaleTable[];
}

/**
 * Does autovacuum's ANALYZE where autovacuum is off: every table of the current schema
 * (`current_schema()`, where the migrations put the project's tables) whose changed rows exceed
 * autovacuum's analyze threshold (PostgreSQL docs, "The Autovacuum Daemon": threshold = base
 * threshold + scale factor × number of tuples; the server's `autovacuum_analyze_threshold` and
 * `autovacuum_analyze_scale_factor`, default 50 and 0.1; per-table storage parameters are not
 * read) gets an ANALYZE, one statement per table. ANALYZE also invalidates the plans that
 * connections cached for the table, so they are made again from the new statistics.
 * Does nothing when `settings` says autovacuum is on, or track_counts is off (no change counts).
 * @param db a pool on the database
 * @param settings as {@link readStatisticsSettings} returns them
 * @returns the outcome and the tables analyzed
 * @throws the driver's error when a query fails
 */
export async function analyzeStaleTables(db: pg.Pool, settings: StatisticsSettings): Promise<StatisticsUpkeep> {
  if (settings.trackCounts !== 'on') return { outcome: 'no-track-counts', tables: [] };
  if (settings.autovacuum === 'on') return { outcome: 'autovacuum-on', tables: [] };
  const { rows } = await db.query<{ table: string; changed: string; threshold: string }>(
    `SELECT format('%I.%I', s.schemaname, s.relname) AS table, s.n_mod_since_analyze AS changed, t.threshold
       FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid,
            LATERAL (SELECT floor(current_setting('autovacuum_analyze_threshold')::float8
                                  + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)) AS threshold) t
      WHERE s.schemaname = current_schema() AND s.n_mod_since_analyze > t.threshold
      ORDER BY s.relname`,
  );
  const tables = rows.map((r) => ({ table: r.table, changedRows: Number(r.changed), thresholdRows: Number(r.threshold) }));
  for (const t of tables) await db.query(`ANALYZE ${t.table}`);
  return { outcome: 'analyzed', tables };
}
