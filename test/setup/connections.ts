/**
 * Database connections a fault test can find, cut or never get: the test database's URL with an
 * application_name of its own (its backends are found in pg_stat_activity and terminated there),
 * and a URL of a loopback port nothing listens on.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { freePort } from '../../demo/server-process.js';
import { TEST_DATABASE_URL } from './env.js';

/** TEST_DATABASE_URL with application_name `<prefix>-<8 random hex>`; returns both. */
export function taggedDatabaseUrl(prefix: string): { url: string; name: string } {
  const name = `${prefix}-${randomUUID().slice(0, 8)}`;
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('application_name', name);
  return { url: url.toString(), name };
}

/**
 * Terminates (pg_terminate_backend, as a restart or failover would) every backend whose
 * application_name is `name`, through `db`. @returns how many were terminated
 */
export async function terminateBackends(db: pg.Pool | pg.Client, name: string): Promise<number> {
  const { rows } = await db.query(`SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1`, [name]);
  return rows[0].n as number;
}

/** TEST_DATABASE_URL pointed at a loopback port nothing listens on: every connection is refused (ECONNREFUSED). */
export async function unreachableDatabaseUrl(): Promise<string> {
  const url = new URL(TEST_DATABASE_URL);
  url.hostname = '127.0.0.1';
  url.port = String(await freePort());
  return url.toString();
}
