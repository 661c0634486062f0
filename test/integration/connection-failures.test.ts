/**
 * Lost and refused database connections and the ledger sessions' time limits, as node-postgres
 * really reports them (real PostgreSQL, a real closed port): `isDatabaseUnavailable` tells them
 * from a wrong statement, maskError answers them UNAVAILABLE instead of masking them as a bug, a
 * pool made by createPgPool survives a connection that dies under a checked-out client between
 * two statements, a charge (or a recordUsageBatch, each item answering UNAVAILABLE) stuck behind
 * another transaction's lock gives up after PG_STATEMENT_TIMEOUT_MS, a transaction left idle is ended after
 * PG_IDLE_IN_TRANSACTION_TIMEOUT_MS, freeing the account it locked, and a database that goes
 * silent (a relay that drops every byte, like a lost host or a partition) fails statements after
 * PG_QUERY_TIMEOUT_MS and new connections after PG_CONNECT_TIMEOUT_MS instead of hanging. Both
 * pools' connections have TCP keepalive on (the kernel's own timer on the socket, read from
 * /proc/net/tcp).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GraphQLError } from 'graphql';
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createPgPool, isDatabaseUnavailable } from '../../src/db/pg.js';
import { DATABASE_UNAVAILABLE_MESSAGE, maskError } from '../../src/graphql/errors.js';
import { startSilenceableRelay, taggedDatabaseUrl, terminateBackends, unreachableDatabaseUrl } from '../setup/connections.js';
import { createPrismaClient } from '../../src/db/prisma.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { startTestServer } from '../setup/test-server.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createPricingState } from '../../src/services/pricing-state.js';
import { recordUsageBatch } from '../../src/services/record-usage.js';
import type { UsageInput } from '../../src/services/usage-command.js';
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
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { id } } }`;
const terminate = (applicationName: string) => terminateBackends(admin, applicationName);

/** The rejection of `p`, or a failure of the test if it resolves. */
/**
 * After a stuck attempt and its replay: the account holds exactly `events` usage events (each
 * charged once), the ledger invariant holds, and its total is `totalMicroCredits`.
 */
async function expectChargedOnce(services: TestServices, accountId: string, events: number, totalMicroCredits: bigint): Promise<void> {
  const { rows } = await services.pool.query('SELECT COUNT(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
  expect(rows[0].n).toBe(events);
  expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(totalMicroCredits);
}

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
    // The handler is attached now: the FATAL may reach the client before terminate() returns, and
    // a rejection with no handler at that moment is an unhandled rejection (it failed a CI run).
    const running = rejection(client.query('SELECT pg_sleep(30)'));
    // Wait until the statement runs, so the FATAL reaches it (polled; the test's timeout bounds it).
    for (;;) {
      const { rows } = await admin.query(`SELECT state FROM pg_stat_activity WHERE application_name = $1`, [name]);
      if (rows[0]?.state === 'active') break;
    }
    expect(await terminate(name)).toBe(1);
    const terminated = await running;
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
      // The FATAL first; node-postgres then reports the socket's end too ("Connection terminated
      // unexpectedly"), which may or may not have been read by now.
      expect((reported[0] as { code?: string }).code).toBe('57P01');
      expect(reported.length).toBeLessThanOrEqual(2);
      for (const err of reported) expect(isDatabaseUnavailable(err), String(err)).toBe(true);
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
      await expectChargedOnce(services, accountId, 5, 5_000_000n);
    } finally {
      await holder.end();
      await services.close();
      await srv.close();
    }
  });

  it('recordUsageBatch items stuck behind a lock answer UNAVAILABLE with the database message, like recordUsage (not INTERNAL_SERVER_ERROR, a bug); a replay with the same keys charges each once', async () => {
    const srv = await startTestServer({ PG_STATEMENT_TIMEOUT_MS: '300', CHARGE_PATH: 'group' });
    const services = createTestServices(2);
    const holder = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await holder.connect();
    try {
      const accountId = await createFundedAccount(services, { paid: 10 });
      const run = `stuck-batch-${randomUUID()}`;
      const inputs = Array.from({ length: 3 }, (_, i) => ({ accountId: gid('Account', accountId), category: 'unit', idempotencyKey: `${run}:${i}` }));
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
      const stuck = await srv.gql(BATCH, { inputs });
      expect(stuck.body.errors, JSON.stringify(stuck.body)).toBeUndefined();
      expect(stuck.body.data.recordUsageBatch).toEqual(inputs.map(() => ({ errorCode: 'UNAVAILABLE', errorMessage: DATABASE_UNAVAILABLE_MESSAGE, event: null })));
      await holder.query('ROLLBACK');
      const charged = await srv.gql(BATCH, { inputs });
      expect(charged.body.data.recordUsageBatch.map((r: { errorCode: string | null }) => r.errorCode)).toEqual([null, null, null]);
      await expectChargedOnce(services, accountId, 3, 7_000_000n);
    } finally {
      await holder.end();
      await services.close();
      await srv.close();
    }
  });

  it('recordUsageBatch: a chunk stuck behind a lock gives up after ONE statement timeout, every item of it answering the database error (not retried account by account and item by item, each waiting again); a replay with the same keys charges each once', async () => {
    const { services, transactions } = countingTransactions(createTestServices(4, TEST_DATABASE_URL, { statementTimeoutMs: 300 }));
    const holder = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await holder.connect();
    try {
      const stuck = await createFundedAccount(services, { paid: 100 });
      const other = await createFundedAccount(services, { paid: 100 });
      const inputs: UsageInput[] = [
        ...Array.from({ length: 10 }, (_, i) => ({ accountId: stuck, category: 'unit', idempotencyKey: `s${i}` })),
        { accountId: other, category: 'unit', idempotencyKey: 'o1' },
        { accountId: other, category: 'unit', idempotencyKey: 'o2' },
      ];
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [stuck]);
      const before = transactions();
      const results = await recordUsageBatch(services, inputs, { maxItems: 100 });
      // One transaction for the one chunk: a timeout is no item's fault, and a transaction per
      // account and per item would each have waited for the lock again (here 13 transactions, 12
      // timeouts; a batch of 1,000 items on the account would wait 1,002 statement timeouts).
      expect(transactions() - before).toBe(1);
      for (const r of results) expect(!r.ok && isDatabaseUnavailable(r.error), String(!r.ok && r.error)).toBe(true);
      await holder.query('ROLLBACK');
      const replay = await recordUsageBatch(services, inputs, { maxItems: 100 });
      expect(replay.map((r) => r.ok && !r.result.replayed)).toEqual(inputs.map(() => true));
      expect((await expectLedgerInvariant(services.pool, stuck)).totalMicroCredits).toBe(90_000_000n);
      expect((await expectLedgerInvariant(services.pool, other)).totalMicroCredits).toBe(98_000_000n);
    } finally {
      await holder.end();
      await services.close();
    }
  });

  it('recordUsageBatch: a chunk whose connection is lost is run again once as a whole, and each item is charged exactly once', async () => {
    const { url } = tagged();
    const { services, transactions } = countingTransactions(createTestServices(4, url));
    const holder = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await holder.connect();
    try {
      const a = await createFundedAccount(services, { paid: 100 });
      const b = await createFundedAccount(services, { paid: 100 });
      const inputs: UsageInput[] = [a, b, a, b].map((accountId, i) => ({ accountId, category: 'unit', idempotencyKey: `l${i}` }));
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [a]);
      const holderPid = (await holder.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      const before = transactions();
      const batch = recordUsageBatch(services, inputs, { maxItems: 100 });
      // The chunk's connection dies while it waits for the lock (as in a failover); its retry waits again.
      const first = await blockedBy(holderPid);
      await admin.query('SELECT pg_terminate_backend($1)', [first]);
      await blockedBy(holderPid, first);
      await holder.query('ROLLBACK');
      const results = await batch;
      expect(results.map((r) => r.ok && !r.result.replayed)).toEqual([true, true, true, true]);
      expect(transactions() - before).toBe(2);
      for (const id of [a, b]) expect((await expectLedgerInvariant(services.pool, id)).totalMicroCredits).toBe(98_000_000n);
    } finally {
      await holder.end();
      await services.close();
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

describe('a database that goes silent (no answer, no TCP reset)', () => {
  it('ledger pool: statements sent and unanswered fail after queryTimeoutMs as a lost connection, those pipelined behind them too; a new connection fails after connectTimeoutMs; once the network is back the pool serves queries on a new connection', async () => {
    const relay = await startSilenceableRelay();
    const pool = createPgPool(relay.url, 2, { queryTimeoutMs: 400, connectTimeoutMs: 400 });
    const reported: Error[] = [];
    pool.on('error', (err) => reported.push(err));
    try {
      expect((await pool.query('SELECT 1 AS n')).rows[0].n).toBe(1);
      relay.silence();
      const client = await pool.connect(); // the idle pooled connection: no round trip
      const pipelined = [client.query('BEGIN'), client.query('SELECT 2'), client.query('COMMIT')];
      const errors = await Promise.all(pipelined.map((p) => rejection(p)));
      expect((errors[0] as Error).message).toBe('Query read timeout');
      for (const err of errors) expect(isDatabaseUnavailable(err), String(err)).toBe(true);
      client.release(errors[0] as Error); // as withTransaction does when its ROLLBACK fails too
      expect(pool.totalCount).toBe(0);
      const refused = await rejection(pool.query('SELECT 3'));
      expect((refused as Error).message).toBe('Connection terminated due to connection timeout');
      expect(isDatabaseUnavailable(refused), String(refused)).toBe(true);
      relay.restore();
      expect((await pool.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
      expect(pool.totalCount).toBe(1);
    } finally {
      await pool.end();
      await relay.close();
    }
  });

  it('Prisma: a read unanswered fails after queryTimeoutMs and a new connection after connectTimeoutMs, both as the database being unavailable; reads work again once the network is back', async () => {
    const relay = await startSilenceableRelay();
    const prisma = createPrismaClient(relay.url, 1, { queryTimeoutMs: 400, connectTimeoutMs: 400 });
    try {
      expect(await prisma.$queryRaw<{ n: number }[]>`SELECT 1::int AS n`).toEqual([{ n: 1 }]);
      relay.silence();
      const unanswered = await rejection(prisma.$queryRaw`SELECT 2::int AS n`);
      expect(isDatabaseUnavailable(unanswered), String(unanswered)).toBe(true);
      const refused = await rejection(prisma.$queryRaw`SELECT 3::int AS n`);
      expect(isDatabaseUnavailable(refused), String(refused)).toBe(true);
      relay.restore();
      expect(await prisma.$queryRaw<{ n: number }[]>`SELECT 42::int AS n`).toEqual([{ n: 42 }]);
    } finally {
      await prisma.$disconnect();
      await relay.close();
    }
  });

  it('the API: while the database is silent a charge and a read answer UNAVAILABLE instead of hanging; once it is back a retry with the same key charges exactly once', async () => {
    const services = createTestServices(2);
    const relay = await startSilenceableRelay();
    const srv = await startTestServer({
      DATABASE_URL: relay.url,
      CHARGE_PATH: 'group',
      PG_STATEMENT_TIMEOUT_MS: '200',
      PG_QUERY_TIMEOUT_MS: '600',
      PG_CONNECT_TIMEOUT_MS: '600',
    });
    try {
      const accountId = await createFundedAccount(services, { paid: 10 });
      const READ = `query($id: ID!) { account(id: $id) { id name } }`;
      const run = `silent-${randomUUID()}`;
      const input = (k: string) => ({ accountId: gid('Account', accountId), category: 'unit', idempotencyKey: `${run}:${k}` });
      // Connections exist in both pools before the network goes.
      expect((await srv.gql(RECORD, { input: input('before') })).body.data.recordUsage.cost).toBe('1');
      expect((await srv.gql(READ, { id: gid('Account', accountId) })).body.data.account.id).toBe(gid('Account', accountId));
      relay.silence();
      for (const res of [await srv.gql(RECORD, { input: input('during') }), await srv.gql(READ, { id: gid('Account', accountId) })]) {
        expect(res.body.errors?.map((e) => e.extensions?.code), JSON.stringify(res.body)).toEqual(['UNAVAILABLE']);
        expect(res.body.errors![0]!.message).toBe(DATABASE_UNAVAILABLE_MESSAGE);
      }
      relay.restore();
      const retried = await srv.gql(RECORD, { input: input('during') });
      expect(retried.body.errors).toBeUndefined();
      expect(retried.body.data.recordUsage.cost).toBe('1');
      const again = await srv.gql(RECORD, { input: input('during') });
      expect(again.body.data.recordUsage.id).toBe(retried.body.data.recordUsage.id);
      const { rows } = await services.pool.query('SELECT idempotency_key FROM usage_events WHERE account_id = $1 ORDER BY idempotency_key', [accountId]);
      expect(rows.map((r) => r.idempotency_key)).toEqual([`${run}:before`, `${run}:during`]);
      expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(8_000_000n);
    } finally {
      await srv.close();
      await relay.close();
      await services.close();
    }
  });
});

/**
 * The kernel's timer on this process's TCP connection from local port `port` (Linux
 * /proc/net/tcp and tcp6, column `tr`: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero
 * window probe), or null when no such connection is listed.
 */
function tcpTimerOfLocalPort(port: number): number | null {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // f[1] local address:port, f[3] state (01 = ESTABLISHED), f[5] timer:when
      if (f.length > 5 && f[1]!.endsWith(`:${hex}`) && f[3] === '01') return Number.parseInt(f[5]!.split(':')[0]!, 16);
    }
  }
  return null;
}

describe('TCP keepalive on the pools (an idle connection whose peer vanished is found dead)', () => {
  // inet_client_port(): this session's client port as PostgreSQL sees it, i.e. the local port of
  // the connection in this process (TEST_DATABASE_URL is TCP on this machine).
  const clientPort = (rows: { port: number | null }[]) => {
    const port = rows[0]?.port;
    expect(port, 'TEST_DATABASE_URL must be a TCP connection for this test').toBeTypeOf('number');
    return port as number;
  };

  it('the ledger pool (createPgPool) and Prisma set SO_KEEPALIVE; a plain client does not', async () => {
    const pool = createPgPool(TEST_DATABASE_URL, 1);
    const prisma = createPrismaClient(TEST_DATABASE_URL, 1);
    const plain = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await plain.connect();
    try {
      const ledgerPort = clientPort((await pool.query<{ port: number | null }>('SELECT inet_client_port() AS port')).rows);
      const prismaPort = clientPort(await prisma.$queryRaw<{ port: number | null }[]>`SELECT inet_client_port() AS port`);
      const plainPort = clientPort((await plain.query<{ port: number | null }>('SELECT inet_client_port() AS port')).rows);
      expect(tcpTimerOfLocalPort(ledgerPort)).toBe(2);
      expect(tcpTimerOfLocalPort(prismaPort)).toBe(2);
      // The control: the same check sees no keepalive timer on a connection without it.
      expect(tcpTimerOfLocalPort(plainPort)).toBe(0);
    } finally {
      await plain.end();
      await prisma.$disconnect();
      await pool.end();
    }
  });
});

/**
 * `services` charging through a pool whose `connect()` calls are counted: withTransaction takes
 * one connection per transaction (pool.query does not go through it), so `transactions()` is the
 * number of transactions begun. The price book and settings are cached first, so that a batch
 * reads them from memory.
 */
function countingTransactions(real: TestServices): { services: TestServices; transactions: () => number } {
  let n = 0;
  const pool = new Proxy(real.pool, {
    get(target, prop) {
      if (prop === 'connect') {
        return () => {
          n++;
          return target.connect();
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { services: { ...real, pool, pricing: createPricingState(real.pool, 600_000) }, transactions: () => n };
}

/** The pid of a backend waiting for a lock that backend `holderPid` holds, other than `not` (polls pg_blocking_pids). */
async function blockedBy(holderPid: number, not: number | null = null): Promise<number> {
  for (;;) {
    const { rows } = await admin.query(`SELECT pid FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid)) AND pid IS DISTINCT FROM $2::int`, [holderPid, not]);
    if (rows[0]) return rows[0].pid as number;
    await new Promise((resolve) => setImmediate(resolve));
  }
}
