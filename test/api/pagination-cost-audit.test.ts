/**
 * What one page of a list field costs when the account has a long history (issue #6 "fast
 * history"): the first page, a page deep in the history (by cursor, both directions) and the
 * last page of every paginated or capped list field of the API, in its order and with each
 * filter it takes, read about a page of rows, not the account's history. One account is given a
 * long history of each kind with SQL (HISTORY usage events and ledger entries spread over a
 * year, SMALL_HISTORY grants, alerts, holds and audit events); each field is called through the
 * real server, the SQL statements its Prisma client sent are recorded (test-server.ts
 * onPrismaSql) and replayed on a fresh connection of the same settings (db/pg.ts
 * withPlannerOptions, plan_cache_mode=auto, unnamed statements: custom plans, as the server's), and PostgreSQL counts the rows they read
 * from the field's table (pg_stat_xact_user_tables: seq_tup_read + idx_tup_fetch).
 * PAGINATION_AUDIT_HISTORY (default 20,000) sets HISTORY, a tenth of it (at least 2,000) SMALL_HISTORY
 * (holds: 5,000, five times Account.reservations' cap). Usage events and ledger entries of a
 * neighbour account lie between the account's, and so do its alerts (an account has at most one
 * alert per threshold and billing period: 2,000 is centuries of them, seeded all the same);
 * PAGINATION_AUDIT_LOG=1 prints each page's rows and replay time, PAGINATION_AUDIT_EXPLAIN=1 each
 * statement's EXPLAIN ANALYZE.
 * Not here, known and accepted (issue #6): Account.budgets / userBudgets (sort one kind's
 * budgets), Account.batches (sorts the ACTIVE batches), Account.statement (a period's range).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestServer } from '../setup/test-server.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { withPlannerOptions } from '../../src/db/pg.js';
import { createPrismaClient } from '../../src/db/prisma.js';
import { apiAccount, dbId, ok } from './helpers.js';

const HISTORY = Number(process.env.PAGINATION_AUDIT_HISTORY ?? 20_000);
const SMALL_HISTORY = Math.max(2_000, Math.floor(HISTORY / 10));
const EXPLAIN = process.env.PAGINATION_AUDIT_EXPLAIN === '1';
const PAGE = 50;
/** Most rows a page of PAGE may read: the page, the row after it, the cursor row, a few more. */
const PAGE_BOUND = 3 * PAGE + 20;
/** Most rows Account.reservations serves (ACCOUNT_RESERVATIONS_CAP), and the holds seeded: five times that. */
const HOLDS_CAP = 1000;
const HOLDS = 5 * HOLDS_CAP;

const recorded: Array<{ text: string; values: readonly unknown[] }> = [];
const srv = useTestServer({}, { onPrismaSql: (text, values) => recorded.push({ text, values }) });

/**
 * PAGE_BOUND, plus the rows of `table` that belong to neither seeded account, up to a quarter of
 * the account's history of that kind: other test files write to the same tables while this one
 * runs, and where the seeded account holds half a table the planner may serve a page by walking
 * the table's seq index and passing over the other accounts' rows before or after the account's.
 * A read of the account's history (what this file is about) still fails: it is four times that.
 */
async function pageBound(table: string): Promise<number> {
  const { rows } = await srv.services.pool.query(
    `SELECT COUNT(*)::int AS n FROM ${table} WHERE account_id IS DISTINCT FROM $1 AND account_id IS DISTINCT FROM $2`,
    [accountDb, neighbourDb],
  );
  const history = table === 'usage_events' || table === 'ledger_entries' ? HISTORY : SMALL_HISTORY;
  return PAGE_BOUND + Math.min(rows[0].n as number, Math.floor(history / 4));
}

let account: string; // global id
let accountDb: string;
let neighbourDb: string;
type RowList = 'usage' | 'ledger' | 'grants' | 'alerts' | 'audit' | 'usageAgent0';
/** Each list's row ids of the account, newest first. */
const ids = {} as Record<RowList, string[]>;

/** base64 of the row cursor @pothos/plugin-prisma hands out for a uuid id. */
const cursorOf = (id: string | undefined) => Buffer.from(`GPC:S:${id}`).toString('base64');

beforeAll(async () => {
  account = await apiAccount(srv);
  accountDb = dbId(account);
  neighbourDb = dbId(await apiAccount(srv));
  // A connection of its own, without the ledger pool's statement_timeout: a seed of 200,000
  // events (PAGINATION_AUDIT_HISTORY) takes longer than that.
  const db = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await db.connect();
  try {
    const n = HISTORY;
    const m = SMALL_HISTORY;
    // Phase 0..11: the month of the year the row falls in. A filter value of phase 0 is one the
    // account stopped using eleven months ago: newest first, its rows are behind the whole year.
    // Every other row is a neighbour's (even i ours, odd i the neighbour's): the table holds other
    // accounts' rows between this one's, as a real one does.
    await db.query(
      `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, model, tier,
                                 agent_id, user_id, task_id, cost_micro_credits, lines, price_book_version)
       SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN $1::uuid ELSE $3::uuid END, 'seed-' || i, 'seed', t, t,
              CASE WHEN p = 0 THEN 'early' ELSE 'unit' END, 'model-' || p, 'tier-' || p,
              'agent-' || p, 'user-' || p, 'task-' || (i / 1000), 0, '[]', (SELECT max(version) FROM price_books)
       FROM generate_series(0, 2 * $2::int - 1) i,
            LATERAL (SELECT timestamptz '2025-01-01T00:00:00Z' + i * interval '365 days' / (2 * $2::int) AS t, (6 * i) / $2::int AS p) x`,
      [accountDb, n, neighbourDb],
    );
    await db.query(
      `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, created_at)
       SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN $1::uuid ELSE $3::uuid END, 'CONSUME', 0, 0,
              timestamptz '2025-01-01T00:00:00Z' + i * interval '365 days' / (2 * $2::int)
       FROM generate_series(0, 2 * $2::int - 1) i`,
      [accountDb, n, neighbourDb],
    );
    await db.query(
      `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
       SELECT gen_random_uuid(), $1, 'ADJUSTMENT', 'PAID', 1, 'seed-' || i, 'seed', timestamptz '2025-01-01T00:00:00Z' + i * interval '365 days' / $2::int
       FROM generate_series(0, $2::int - 1) i`,
      [accountDb, m],
    );
    await db.query(
      `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
       SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN $1::uuid ELSE $3::uuid END, 25, 25, 0, t, t
       FROM generate_series(0, 2 * $2::int - 1) i, LATERAL (SELECT timestamptz '2025-01-01T00:00:00Z' + i * interval '1 minute' AS t) x`,
      [accountDb, m, neighbourDb],
    );
    await db.query(
      `INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, created_at, closed_at, idempotency_key, request_hash)
       SELECT gen_random_uuid(), $1, 1, (ARRAY['SETTLED', 'RELEASED', 'EXPIRED'])[1 + i % 3]::"ReservationStatus", t + interval '1 hour', t, t + interval '1 minute', 'seed-' || i, 'seed'
       FROM generate_series(0, $2::int - 1) i, LATERAL (SELECT timestamptz '2025-01-01T00:00:00Z' + i * interval '365 days' / $2::int AS t) x`,
      [accountDb, HOLDS],
    );
    await db.query(
      `INSERT INTO audit_events (id, actor_kind, actor_name, action, account_id, created_at)
       SELECT gen_random_uuid(), 'system', 'seed', 'seed', $1, now() FROM generate_series(1, $2::int)`,
      [accountDb, m],
    );
    for (const t of ['usage_events', 'ledger_entries', 'credit_grants', 'credit_alerts', 'reservations', 'audit_events']) await db.query(`ANALYZE ${t}`);
    // Ids of the rows, newest first, to place cursors deep in the history.
    const order = async (sql: string) => (await db.query(sql, [accountDb])).rows.map((r: { id: string }) => r.id);
    ids.usage = await order('SELECT id FROM usage_events WHERE account_id = $1 ORDER BY seq DESC');
    ids.ledger = await order('SELECT id FROM ledger_entries WHERE account_id = $1 ORDER BY seq DESC');
    ids.grants = await order('SELECT id FROM credit_grants WHERE account_id = $1 ORDER BY seq DESC');
    ids.alerts = await order('SELECT id FROM credit_alerts WHERE account_id = $1 ORDER BY seq DESC');
    ids.audit = await order('SELECT id FROM audit_events WHERE account_id = $1 ORDER BY seq DESC');
    ids.usageAgent0 = await order(`SELECT id FROM usage_events WHERE account_id = $1 AND agent_id = 'agent-0' ORDER BY seq DESC`);
  } finally {
    await db.end();
  }
}, 600_000);

afterAll(async () => {
  // The seeded rows are not a consistent history (grants without batches): gone with the account.
  // Its audit events stay (append-only), as every test's do.
  // The ledger entries go first, and their table is vacuumed: deleting an event deletes its
  // entries through ledger_entries_usage_event_id_fkey, which has no index (a scan of the table
  // per event: with the seeded entries still in it, past the pool's statement_timeout).
  const seeded = [accountDb, neighbourDb].filter(Boolean);
  const db = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await db.connect();
  try {
    await db.query('DELETE FROM ledger_entries WHERE account_id = ANY($1::uuid[])', [seeded]);
    await db.query('VACUUM ledger_entries');
    await db.query('DELETE FROM accounts WHERE id = ANY($1::uuid[])', [seeded]);
  } finally {
    await db.end();
  }
});

/**
 * Calls `query` with `variables` and returns the rows the SQL it sent read from `table`, replayed
 * on a fresh connection (see the file's comment), and the answer's data.
 */
async function cost(table: string, query: string, variables: Record<string, unknown>): Promise<{ rows: number; data: any }> {
  recorded.length = 0;
  const data = ok(await srv.gql(query, variables));
  const statements = recorded.filter((s) => s.text.includes(`"${table}"`));
  expect(statements.length).toBeGreaterThan(0);
  const client = new pg.Client({ connectionString: withPlannerOptions(TEST_DATABASE_URL) });
  await client.connect();
  try {
    await client.query('BEGIN');
    const started = performance.now();
    for (const s of statements) await client.query(s.text, s.values as unknown[]);
    const ms = performance.now() - started;
    const { rows } = await client.query(
      'SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) AS rows_read FROM pg_stat_xact_user_tables WHERE relname = $1',
      [table],
    );
    if (EXPLAIN) {
      for (const s of statements) {
        const plan = await client.query(`EXPLAIN (ANALYZE, BUFFERS) ${s.text}`, s.values as unknown[]);
        console.log(`${table} ${JSON.stringify(variables)}\n${s.text}\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n`);
      }
    }
    await client.query('ROLLBACK');
    if (process.env.PAGINATION_AUDIT_LOG === '1') console.log(`ROWS ${table} ${Number(rows[0]?.rows_read ?? 0)} ${ms.toFixed(1)}ms ${JSON.stringify({ ...variables, id: undefined })}`);
    return { rows: Number(rows[0]?.rows_read ?? 0), data };
  } finally {
    await client.end();
  }
}

const CONNECTION = (field: string, args = '') => `query($id: ID!, $first: Int, $after: String, $last: Int, $before: String${args ? `, ${args}` : ''}) {
  account(id: $id) { ${field}(first: $first, after: $after, last: $last, before: $before${args ? `, ${args.replace(/\$(\w+): [^,]+/g, '$1: $$$1')}` : ''}) {
    edges { node { id } } } } }`;

/** The four pages of a connection: first, deep forward, deep backward, last. */
function pagesOf(rowIds: () => string[]): Array<[string, () => Record<string, unknown>]> {
  return [
    ['the first page', () => ({ first: PAGE })],
    ['a page deep in the history (after)', () => ({ first: PAGE, after: cursorOf(rowIds()[Math.floor(rowIds().length * 0.8)]) })],
    ['a page deep in the history (before)', () => ({ last: PAGE, before: cursorOf(rowIds()[Math.floor(rowIds().length * 0.8)]) })],
    ['the last page', () => ({ last: PAGE })],
  ];
}

describe('the replay plans as the server does', () => {
  it("the production Prisma client's sessions have the replay connection's planner cost", async () => {
    // The counts below are the replay connection's plans: they hold for the server only while
    // createPrismaClient starts its sessions with the same random_page_cost (db/pg.ts withPlannerOptions).
    const prisma = createPrismaClient(TEST_DATABASE_URL, 1);
    const client = new pg.Client({ connectionString: withPlannerOptions(TEST_DATABASE_URL) });
    await client.connect();
    try {
      const [served] = await prisma.$queryRaw<Array<{ v: string }>>`SELECT current_setting('random_page_cost') AS v`;
      const replayed = (await client.query(`SELECT current_setting('random_page_cost') AS v`)).rows[0].v;
      expect(served?.v).toBe(replayed);
      expect(replayed).toBe('1.1');
    } finally {
      await client.end();
      await prisma.$disconnect();
    }
  });
});

describe('Account connections read about a page of rows at any depth', () => {
  const connections: Array<[field: string, table: string, key: RowList]> = [
    ['usage', 'usage_events', 'usage'],
    ['ledger', 'ledger_entries', 'ledger'],
    ['grants', 'credit_grants', 'grants'],
    ['alerts', 'credit_alerts', 'alerts'],
  ];
  for (const [field, table, key] of connections) {
    for (const [name, vars] of pagesOf(() => ids[key])) {
      it(`${field}: ${name}`, async () => {
        const { rows, data } = await cost(table, CONNECTION(field), { id: account, ...vars() });
        expect(data.account[field].edges).toHaveLength(PAGE);
        expect(rows, `rows read from ${table}`).toBeLessThanOrEqual(await pageBound(table));
      });
    }
  }
});

describe('Account.usage filtered by one value reads about a page of rows', () => {
  // The first page of a value the account stopped using eleven months ago (phase 0), and the last
  // page of one it uses now (phase 11): either way, the rest of the year lies between.
  const filters: Array<[string, Record<string, unknown>, Record<string, unknown>]> = [
    ['taskId', { taskId: 'task-1' }, { taskId: `task-${Math.floor((2 * HISTORY - 1) / 1000) - 1}` }],
    ['agentId', { agentId: 'agent-0' }, { agentId: 'agent-11' }],
    ['userId', { userId: 'user-0' }, { userId: 'user-11' }],
    ['model', { model: 'model-0' }, { model: 'model-11' }],
    ['category', { category: 'early' }, { category: 'unit' }],
    ['tier', { tier: 'tier-0' }, { tier: 'tier-11' }],
  ];
  for (const [name, old, current] of filters) {
    it(`${name}: the first page of a value last used a year ago`, async () => {
      const { rows, data } = await cost('usage_events', CONNECTION('usage', '$filter: UsageFilter'), { id: account, first: PAGE, filter: old });
      expect(data.account.usage.edges).toHaveLength(PAGE);
      expect(rows, 'rows read from usage_events').toBeLessThanOrEqual(await pageBound('usage_events'));
    });
    it(`${name}: the last page of a value in use now`, async () => {
      const { rows, data } = await cost('usage_events', CONNECTION('usage', '$filter: UsageFilter'), { id: account, last: PAGE, filter: current });
      expect(data.account.usage.edges).toHaveLength(PAGE);
      expect(rows, 'rows read from usage_events').toBeLessThanOrEqual(await pageBound('usage_events'));
    });
  }
  it('agentId: pages deep in its events, both ways', async () => {
    const deep = cursorOf(ids.usageAgent0[Math.floor(ids.usageAgent0.length * 0.5)]);
    for (const vars of [{ first: PAGE, after: deep }, { last: PAGE, before: deep }]) {
      const { rows, data } = await cost('usage_events', CONNECTION('usage', '$filter: UsageFilter'), { id: account, ...vars, filter: { agentId: 'agent-0' } });
      expect(data.account.usage.edges).toHaveLength(PAGE);
      expect(rows, `rows read from usage_events, ${JSON.stringify(vars)}`).toBeLessThanOrEqual(await pageBound('usage_events'));
    }
  });
  it('from (the last month): the first page', async () => {
    const { rows, data } = await cost('usage_events', CONNECTION('usage', '$filter: UsageFilter'), { id: account, first: PAGE, filter: { from: '2025-12-01T00:00:00Z' } });
    expect(data.account.usage.edges).toHaveLength(PAGE);
    expect(rows, 'rows read from usage_events').toBeLessThanOrEqual(await pageBound('usage_events'));
  });
});

// Known and left (README "Limits"): no index gives occurredAt ranges in seq order, so a page of an
// old range reads the account's events recorded since (192,379 rows for a week a year ago at
// 200,000 events when this audit was written); not pinned here.

describe('Account.reservations reads about its cap of rows per status asked for', () => {
  const q = `query($id: ID!, $status: [ReservationStatus!]) { account(id: $id) { reservations(status: $status) { id } } }`;
  for (const status of [null, ['SETTLED'], ['EXPIRED'], ['ACTIVE'], ['SETTLED', 'RELEASED']]) {
    it(`status ${JSON.stringify(status)}`, async () => {
      const { rows, data } = await cost('reservations', q, { id: account, status });
      expect(rows, 'rows read from reservations').toBeLessThanOrEqual(HOLDS_CAP * Math.max(1, status?.length ?? 1) + PAGE);
      // The same holds in the same order as one statement over the statuses (none is ACTIVE
      // past its expiry here, so the stored status is the one shown).
      const expected = await srv.services.pool.query(
        `SELECT id FROM reservations WHERE account_id = $1 AND ($2::text[] IS NULL OR status::text = ANY($2)) ORDER BY created_at DESC, id DESC LIMIT ${HOLDS_CAP}`,
        [accountDb, status],
      );
      expect(data.account.reservations.map((r: { id: string }) => dbId(r.id))).toEqual(expected.rows.map((r: { id: string }) => r.id));
    });
  }
});

describe('Query.auditEvents reads about a page of rows', () => {
  const q = (withAccount: boolean) => `query(${withAccount ? '$accountId: ID, ' : ''}$first: Int, $after: String, $last: Int, $before: String) {
    auditEvents(${withAccount ? 'accountId: $accountId, ' : ''}first: $first, after: $after, last: $last, before: $before) { edges { node { id } } } }`;
  for (const withAccount of [true, false]) {
    for (const [name, vars] of pagesOf(() => ids.audit)) {
      it(`${withAccount ? 'of the account' : 'of every account'}: ${name}`, async () => {
        const { rows, data } = await cost('audit_events', q(withAccount), { accountId: withAccount ? account : undefined, ...vars() });
        expect(data.auditEvents.edges).toHaveLength(PAGE);
        expect(rows, 'rows read from audit_events').toBeLessThanOrEqual(await pageBound('audit_events'));
      });
    }
  }
});
