/**
 * The benchmarks' own databases: each bench drops and re-creates a database of its own on the
 * PostgreSQL server of DATABASE_URL (so it can write millions of rows and throw them away), and
 * drops it at the end.
 */
import pg from 'pg';

/** Returns `url` with its database replaced by `database`. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Runs `sql` on the server's maintenance database (`postgres`). */
async function onMaintenanceDatabase(serverUrl: string, sql: string[]): Promise<void> {
  const admin = new pg.Client({ connectionString: withDatabase(serverUrl, 'postgres') });
  await admin.connect();
  try {
    for (const statement of sql) await admin.query(statement);
  } finally {
    await admin.end();
  }
}

/**
 * Drops database `name` (terminating its connections) if it exists and creates it empty.
 * @param serverUrl a PostgreSQL URL of the server (its database part is ignored)
 * @param name a plain identifier (the benches' constants; not quoted)
 * @returns `serverUrl` with its database replaced by `name`
 * @throws the database error (e.g. no CREATEDB privilege)
 */
export async function recreateDatabase(serverUrl: string, name: string): Promise<string> {
  await onMaintenanceDatabase(serverUrl, [`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`, `CREATE DATABASE ${name}`]);
  return withDatabase(serverUrl, name);
}

/**
 * Drops database `name` (terminating its connections) if it exists.
 * @throws the database error
 */
export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  await onMaintenanceDatabase(serverUrl, [`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]);
}
