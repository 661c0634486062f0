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
 */
export function statisticsWarnings(settings: StatisticsSettings): string[] {
  const off = [settings.autovacuum !== 'on' ? 'autovacuum' : null, settings.trackCounts !== 'on' ? 'track_counts' : null].filter((s): s is string => s !== null);
  if (off.length === 0) return [];
  return [
    `PostgreSQL ${off.join(' and ')} ${off.length > 1 ? 'are' : 'is'} off: nothing re-analyzes the ledger's tables as they grow, so plans the ledger's ` +
      `connections cached while a table was small (sequential scans) stay, and charges slow down as tables grow. Turn autovacuum on, ` +
      `or run ANALYZE regularly (at least after the first thousands of events).`,
  ];
}
