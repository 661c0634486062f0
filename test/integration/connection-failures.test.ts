/**
 * Lost and refused database connections, as node-postgres really reports them (real PostgreSQL,
 * a real closed port): `isConnectionFailure` tells them from a wrong statement, maskError answers
 * them UNAVAILABLE instead of masking them as a bug, and a pool made by createPgPool survives a
 * connection that dies under a checked-out client between two statements.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GraphQLError } from 'graphql';
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { createPgPool, isConnectionFailure } from '../../src/db/pg.js';
import { DATABASE_UNAVAILABLE_MESSAGE, maskError } from '../../src/graphql/errors.js';
import { freePort } from '../../demo/server-process.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

let admin: pg.Client;

beforeAll(async () => {
  admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end();
});

/** TEST_DATABASE_URL with its own application_name, to find its backends in pg_stat_activity. */
function tagged(): { url: string; name: string } {
  const name = `cp-conn-${randomUUID().slice(0, 8)}`;
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('application_name', name);
  return { url: url.toString(), name };
}

const terminate = async (applicationName: string): Promise<number> =>
  (await admin.query(`SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1`, [applicationName])).rows[0].n;

/** The rejection of `p`, or a failure of the test if it resolves. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => expect.fail('expected a rejection'),
    (err: unknown) => err,
  );
}

describe('isConnectionFailure and maskError on real errors', () => {
  it('a backend terminated under a running statement (57P01) and a refused connection (ECONNREFUSED) are connection failures, answered UNAVAILABLE', async () => {
    const { url, name } = tagged();
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    client.on('error', () => undefined);
    const running = client.query('SELECT pg_sleep(30)');
    // Wait until the statement runs, so the FATAL reaches it (polled; the test's timeout bounds it).
    for (;;) {
      const { rows } = await admin.query(`SELECT state FROM pg_stat_activity WHERE application_name = $1`, [name]);
      if (rows[0]?.state === 'active') break;
    }
    expect(await terminate(name)).toBe(1);
    const terminated = await rejection(running);
    expect((terminated as { code?: string }).code).toBe('57P01');

    const closed = new URL(TEST_DATABASE_URL);
    closed.hostname = '127.0.0.1';
    closed.port = String(await freePort());
    const refused = await rejection(new pg.Client({ connectionString: closed.toString() }).connect());
    expect((refused as { code?: string }).code).toBe('ECONNREFUSED');

    // The statement after the loss, on the same client.
    const after = await rejection(client.query('SELECT 1'));

    for (const err of [terminated, refused, after]) {
      expect(isConnectionFailure(err), String(err)).toBe(true);
      const bugs: unknown[] = [];
      const unavailable: unknown[] = [];
      const out = maskError(new GraphQLError('x', { originalError: err as Error }), 'req-7', (e) => bugs.push(e), { publicAudience: false, onUnavailable: (e) => unavailable.push(e) });
      expect([out.message, out.extensions]).toEqual([DATABASE_UNAVAILABLE_MESSAGE, { code: 'UNAVAILABLE', requestId: 'req-7' }]);
      expect([bugs, unavailable]).toEqual([[], [err]]);
    }
  });

  it('a wrong statement (division by zero, syntax error, unknown table) is not a connection failure and stays masked as a bug', async () => {
    const errors = [
      await rejection(admin.query('SELECT 1 / 0')),
      await rejection(admin.query('SELEC 1')),
      await rejection(admin.query('SELECT * FROM no_such_table_here')),
      new Error('plain bug'),
    ];
    for (const err of errors) {
      expect(isConnectionFailure(err), String(err)).toBe(false);
      const bugs: unknown[] = [];
      const out = maskError(new GraphQLError('x', { originalError: err as Error }), 'req-8', (e) => bugs.push(e), { publicAudience: false, onUnavailable: () => expect.fail('not a connection failure') });
      expect(out.extensions.code).toBe('INTERNAL_SERVER_ERROR');
      expect(bugs).toEqual([err]);
    }
  });
});

describe('createPgPool', () => {
  it('survives a connection that dies under a checked-out client between two statements, reports it on the pool, and serves the next query on a new connection', async () => {
    const { url, name } = tagged();
    const pool = createPgPool(url, 2);
    const reported: Error[] = [];
    pool.on('error', (err) => reported.push(err));
    try {
      const client = await pool.connect();
      await client.query('SELECT 1');
      // No statement of the client runs now: node-postgres emits 'error' on the client itself,
      // which without a listener of the client's own throws and ends the process.
      const lost = new Promise<void>((resolve) => pool.once('error', () => resolve()));
      expect(await terminate(name)).toBe(1);
      await lost;
      expect(reported.map((e) => (e as { code?: string }).code)).toEqual(['57P01']);
      expect(isConnectionFailure(await rejection(client.query('SELECT 1')))).toBe(true);
      client.release();
      expect((await pool.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
    } finally {
      await pool.end();
    }
  });
});
