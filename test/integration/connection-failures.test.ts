/**
 * Lost and refused database connections and the ledger sessions' time limits, as node-postgres
 * really reports them (real PostgreSQL, a real closed port): `isDatabaseUnavailable` tells them
 * from a wrong statement, maskError answers them UNAVAILABLE instead of masking them as a bug, a
 * pool made by createPgPool survives a connection that dies under a checked-out client between
 * two statements, a charge stuck behind another transaction's lock gives up after
 * PG_STATEMENT_TIMEOUT_MS, and a transaction left idle is ended after
 * PG_IDLE_IN_TRANSACTION_TIMEOUT_MS, freeing the account it locked.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GraphQLError } from 'graphql';
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { createPgPool, isDatabaseUnavailable } from '../../src/db/pg.js';
import { DATABASE_UNAVAILABLE_MESSAGE, maskError } from '../../src/graphql/errors.js';
import { taggedDatabaseUrl, terminateBackends, unreachableDatabaseUrl } from '../setup/connections.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { startTestServer } from '../setup/test-server.js';
import { createTestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { gid } from '../api/helpers.js';

let admin: pg.Client;

beforeAll(async () => {
  admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end();
});

const tagged = () => taggedDatabaseUrl('cp-conn');
const terminate = (applicationName: string) => terminateBackends(admin, applicationName);

/** The rejection of `p`, or a failure of the test if it resolves. */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => expect.fail('expected a rejection'),
    (err: unknown) => err,
  );
}

describe('isDatabaseUnavailable and maskError on real errors', () => {
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

    const refused = await rejection(new pg.Client({ connectionString: await unreachableDatabaseUrl() }).connect());
    expect((refused as { code?: string }).code).toBe('ECONNREFUSED');

    // The statement after the loss, on the same client.
    const after = await rejection(client.query('SELECT 1'));

    for (const err of [terminated, refused, after]) {
      expect(isDatabaseUnavailable(err), String(err)).toBe(true);
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
      expect(isDatabaseUnavailable(err), String(err)).toBe(false);
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
      expect(isDatabaseUnavailable(await rejection(client.query('SELECT 1')))).toBe(true);
      client.release();
      expect((await pool.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
    } finally {
      await pool.end();
    }
  });
});

describe('time limits of the ledger sessions', () => {
  it('charges waiting on an account that a stuck transaction holds answer UNAVAILABLE after PG_STATEMENT_TIMEOUT_MS, without being retried one by one; a retry with the same key charges once when the lock is gone', async () => {
    const srv = await startTestServer({ PG_STATEMENT_TIMEOUT_MS: '300', CHARGE_PATH: 'group' });
    const services = createTestServices(2);
    const holder = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await holder.connect();
    try {
      const accountId = await createFundedAccount(services, { paid: 10 });
      const run = `stuck-${randomUUID()}`;
      const inputs = Array.from({ length: 5 }, (_, i) => ({ accountId: gid('Account', accountId), category: 'unit', idempotencyKey: `${run}:${i}` }));
      const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
      const stats = () => srv.services.groupCommit!.stats();
      const before = stats();
      const refused = await Promise.all(inputs.map((input) => srv.gql(RECORD, { input })));
      for (const res of refused) {
        expect(res.body.errors?.map((e) => e.extensions?.code), JSON.stringify(res.body)).toEqual(['UNAVAILABLE']);
        expect(res.body.errors![0]!.message).toBe(DATABASE_UNAVAILABLE_MESSAGE);
      }
      // A timeout is no charge's fault: nothing was split into transactions of one charge each.
      expect(stats().retriedAlone).toBe(before.retriedAlone);
      await holder.query('ROLLBACK');
      const charged = await Promise.all(inputs.map((input) => srv.gql(RECORD, { input })));
      for (const res of charged) {
        expect(res.body.errors).toBeUndefined();
        expect(res.body.data.recordUsage.cost).toBe('1');
      }
      const { rows } = await services.pool.query('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
      expect(rows[0].n).toBe(5);
      expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(5_000_000n);
    } finally {
      await holder.end();
      await services.close();
      await srv.close();
    }
  });

  it('a transaction left idle longer than PG_IDLE_IN_TRANSACTION_TIMEOUT_MS is ended by PostgreSQL: the account it locked is free again and the pool carries on', async () => {
    const services = createTestServices(2);
    const accountId = await createFundedAccount(services, { paid: 10 });
    await services.close();
    const pool = createPgPool(TEST_DATABASE_URL, 1, { idleInTransactionTimeoutMs: 200 });
    const reported: Error[] = [];
    const ended = new Promise<void>((resolve) =>
      pool.on('error', (err) => {
        reported.push(err);
        resolve();
      }),
    );
    try {
      const client = await pool.connect();
      await client.query('BEGIN');
      await client.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
      // The "stuck" process does nothing more; PostgreSQL ends the session once it idled 200 ms.
      await ended;
      expect(reported.map((e) => (e as { code?: string }).code)).toEqual(['25P03']);
      client.release();
      await admin.query('BEGIN');
      const { rows } = await admin.query('SELECT 1 AS locked FROM balances WHERE account_id = $1 FOR UPDATE NOWAIT', [accountId]);
      await admin.query('ROLLBACK');
      expect(rows).toEqual([{ locked: 1 }]);
      expect((await pool.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
    } finally {
      await pool.end();
    }
  });
});
