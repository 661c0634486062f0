/**
 * PostgreSQL's own time per statement for one scenario (issue #6: "profile before optimizing
 * (node --cpu-prof, pg_stat_statements)"), from the pg_stat_statements extension: executions and
 * execution time of every statement the scenario's database ran, nested ones included (with
 * `pg_stat_statements.track = all`: the statements inside PL/pgSQL functions, triggers and
 * foreign-key checks), and planning time (with `track_planning`), divided by the scenario's
 * units.
 *
 * The extension needs `shared_preload_libraries = 'pg_stat_statements'`, i.e. a server started
 * with it: `bench/pg-stat-statements.sh` starts a private PostgreSQL so configured and runs a
 * bench against it. Without it enablePgStatements returns false and the bench runs as before. The statistics are cluster-wide; rows are filtered to the bench database.
 *
 * Times are PostgreSQL's execution (and planning) time, not the client's wall time: the waits
 * around a statement (the round trip, the client's event loop, CPU scheduling) are not in them,
 * which is what makes them the complement of PG_QUERY_TIMINGS (src/db/query-timings.ts). A
 * top-level statement's time includes its nested statements', so the rows overlap.
 */
import type pg from 'pg';
import { round } from './load.js';

/** One normalized statement's share of a scenario. */
export interface PgStatementWork {
  /** The normalized statement (pg_stat_statements' `query`), whitespace collapsed, cut to 100 characters. */
  statement: string;
  /** False for statements run inside a function, trigger or foreign-key check. */
  toplevel: boolean;
  /** Executions per unit. */
  callsPerUnit: number;
  /** Execution time per unit, ms (includes nested statements' time for a top-level one). */
  execMsPerUnit: number;
  /** Planning time per unit, ms (0 when the server does not track planning). */
  planMsPerUnit: number;
  /** Mean execution time of one call, ms. */
  meanExecMs: number;
  /** Rows returned or changed per unit. */
  rowsPerUnit: number;
}

/**
 * Whether pg_stat_statements can be read on the server `client` is connected to: the library is
 * preloaded; the extension is then created in the connected database if missing.
 * @returns false when the server was started without the library (nothing is changed then).
 */
export async function enablePgStatements(client: pg.Client): Promise<boolean> {
  const { rows } = await client.query(`SELECT current_setting('shared_preload_libraries') AS libs`);
  const libs = String(rows[0]?.libs ?? '');
  if (!libs.split(',').some((l) => l.trim() === 'pg_stat_statements')) return false;
  await client.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  return true;
}

/** Clears the statistics of every database (call before a scenario). */
export async function resetPgStatements(client: pg.Client): Promise<void> {
  await client.query('SELECT pg_stat_statements_reset()');
}

/**
 * The `top` statements of `database` by execution time since the last reset, per unit.
 * @param units the scenario's units (events, jobs, calls); no rows when 0.
 */
export async function readPgStatements(client: pg.Client, database: string, units: number, top = 12): Promise<PgStatementWork[]> {
  if (units <= 0) return [];
  const { rows } = await client.query(
    `SELECT s.query, s.toplevel, s.calls::float8 AS calls, s.total_exec_time AS exec_ms, s.total_plan_time AS plan_ms, s.rows::float8 AS rows
       FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
      WHERE d.datname = $1 AND s.query NOT LIKE '%pg_stat_statements%'
      ORDER BY s.total_exec_time + s.total_plan_time DESC
      LIMIT $2`,
    [database, top],
  );
  return rows.map((r) => ({
    statement: String(r.query).replace(/\s+/g, ' ').trim().slice(0, 100),
    toplevel: r.toplevel === true,
    callsPerUnit: round(Number(r.calls) / units, 3),
    execMsPerUnit: round(Number(r.exec_ms) / units, 4),
    planMsPerUnit: round(Number(r.plan_ms) / units, 4),
    meanExecMs: round(Number(r.exec_ms) / Math.max(Number(r.calls), 1), 4),
    rowsPerUnit: round(Number(r.rows) / units, 2),
  }));
}

/**
 * One statement as a line of the bench's output: level, calls, execution and planning ms per
 * unit, then the statement cut to `width` characters.
 */
export function formatPgStatement(t: PgStatementWork, width = 100): string {
  return `${t.toplevel ? 'top   ' : 'nested'} ${String(t.callsPerUnit).padStart(8)} calls ${t.execMsPerUnit.toFixed(4).padStart(8)} ms exec ${t.planMsPerUnit.toFixed(4).padStart(7)} ms plan  ${t.statement.slice(0, width)}`;
}
