/**
 * Issue #6, "a hot shared pool that scales", for what the API serves: one account's list pages
 * and account reads must read that account's rows, whatever the other accounts' rows do and
 * whatever the planner statistics say (test/integration/neighbour-growth-audit.test.ts does the
 * same for the ledger services; read its comment for why stale statistics matter). The GraphQL
 * read layer runs on Prisma with unnamed statements (custom plans, db/pg.ts withPlannerOptions):
 * each execution is planned anew, but from the statistics of the last ANALYZE, so a table whose
 * last day, pending payments or sending webhooks grew by 50,000 rows still looks as it did.
 *
 * A database of its own (`<test database>_neighbour_pages`, autovacuum off for the growing
 * tables), the real server started on it (test-server.ts, DATABASE_URL override), one measured
 * account with a history of every kind (SQL, committed), in three phases as the neighbour audit:
 * 1. **quiet**: QUIET_ACCOUNTS other accounts (test/setup/neighbours.ts addOtherAccounts), none of
 *    their rows in a global index's subset; ANALYZE; measured.
 * 2. **stale**: GROWTH_ACCOUNTS more with GROWTH_ROWS rows per table, all in those subsets, dated
 *    in the last day, committed; no ANALYZE; measured.
 * 3. **analyzed**: ANALYZE; measured.
 *
 * Two kinds of probes:
 * - **GraphQL** (the Prisma-served fields: Account.usage with each filter and page, ledger,
 *   grants, alerts, reservations, batches, autoTopUp, paymentMethod, Query.auditEvents of the
 *   account, usageEvent with its relations, account and accountByExternalId): the field is asked
 *   of the server, the SQL its Prisma client sent is recorded (onPrismaSql) and replayed on a
 *   fresh connection with the server's session settings inside a transaction, and PostgreSQL
 *   counts what the transaction read (test/setup/rows-read.ts rowsReadInTransaction).
 * - **pool** (the fields the server answers with the ledger pool's SQL, not covered by the
 *   neighbour audit: budgets, userBudgets, taskCost, reconciliation, autoTopUp.usedThisPeriod,
 *   subscription, referralsRewarded, statement.usage, and the account's clock every list field
 *   reads first): the service function the resolver calls, on one connection of a ledger pool
 *   (generic plans, kept across phases 1 and 2 as a long-lived server's are) in one transaction.
 *
 * Findings when this audit was written (rows read quiet/stale/analyzed, before -> after the fix):
 * - Prisma loads a to-one relation of N rows with `WHERE id IN ($1, ..., $N)`, the same account id
 *   once per row, planned as N accounts: a sequential scan of accounts for the status clock of
 *   Account.reservations (120 holds: 3,002 -> 2), of nested batch and hold statuses
 *   (grants(first: 300) { batch { status } }: 3,002/5,002/5,002 -> 2; ledger(first: 200) with
 *   batch and reservation status: 3,003/5,003/5,003 -> 2) and for UsageEvent.account
 *   (usage(first: 300): 3,002/5,002/5,002 -> 2); fixed by src/graphql/access.ts readOnceInFlight.
 * - Account.userBudgets (a user without this period's budget_spend row): after ANALYZE, the
 *   generic plan of the spending SUM took the (account_id, user_id, seq) index and read the users'
 *   whole history (0/0/400 -> 0/0/0); fixed in services/spending-budgets.ts subjectUsageSql.
 *
 * NEIGHBOUR_AUDIT_PRINT=1 prints each probe's reads per phase (quiet/stale/analyzed);
 * NEIGHBOUR_AUDIT_EXPLAIN=<part of a probe's name> prints the EXPLAIN ANALYZE of its replayed SQL.
 *
 * Each probe may read in phases 2 and 3 what it read in phase 1 plus SLACK per table (the
 * measured account's rows do not change between phases), and must answer the same; and in every
 * phase at most ONE_ACCOUNT_ROWS rows of accounts and of balances (one row per account: more is a
 * scan of other accounts' rows, whatever the growth).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { createTestDatabase, databaseNameOf, dropTestDatabase, withDatabaseName } from '../setup/test-database.js';
import { addOtherAccounts, GROWTH_NEIGHBOURS, NEIGHBOUR_TABLES, phaseReadLines, QUIET_NEIGHBOURS } from '../setup/neighbours.js';
import { rowsReadInTransaction } from '../setup/rows-read.js';
import { withPlannerOptions } from '../../src/db/pg.js';
import { readAccountClock, reconcileAccount } from '../../src/services/read-balance.js';
import { listBudgets } from '../../src/services/spending-budgets.js';
import { usageSummary } from '../../src/services/usage-summary.js';
import { topUpsUsedThisPeriod } from '../../src/services/auto-top-up.js';
import { readSubscription } from '../../src/services/plans.js';
import { statementUsage } from '../../src/services/account-statement.js';
import { apiAccount, dbId, gid, ok } from './helpers.js';

/** Other accounts in phase 1 and rows of each per table; accounts added before phase 2 and their rows (50,000 per table). */
const { accounts: QUIET_ACCOUNTS, rows: QUIET_ROWS } = QUIET_NEIGHBOURS;
const { accounts: GROWTH_ACCOUNTS, rows: GROWTH_ROWS } = GROWTH_NEIGHBOURS;
/** Rows or index entries a probe may read in a later phase beyond phase 1, per table (see the neighbour audit's SLACK). */
const SLACK = 100;
/** Rows of accounts or of balances a probe may read in any phase (it reads 1 to 6: see the test). */
const ONE_ACCOUNT_ROWS = 20;
/** The measured account's history: usage events (and their ledger entries and drawdowns), grants (and batches), holds, alerts, audit events. */
const EVENTS = 400;
const GRANTS = 300;
const HOLDS = 120;
const ALERTS = 60;
const AUDITS = 150;
const PAGE = 20;

const DB_URL = withDatabaseName(TEST_DATABASE_URL, `${databaseNameOf(TEST_DATABASE_URL)}_neighbour_pages`);
const PHASES = ['quiet', 'stale', 'analyzed'] as const;
type Phase = (typeof PHASES)[number];

const recorded: Array<{ text: string; values: readonly unknown[] }> = [];
let srv: TestServer;
let admin: pg.Client;
let ledger: TestServices;
let account = '';
let accountDb = '';
let externalId = '';
/** The account's row ids, newest first, for cursors and node reads. */
const ids: Record<'usage' | 'ledger' | 'grants' | 'alerts' | 'audit' | 'usageAgent1', string[]> = { usage: [], ledger: [], grants: [], alerts: [], audit: [], usageAgent1: [] };

/** base64 of the row cursor @pothos/plugin-prisma hands out for a uuid id. */
const cursorOf = (id: string | undefined) => Buffer.from(`GPC:S:${id}`).toString('base64');
const deep = (list: string[]) => cursorOf(list[Math.floor(list.length / 2)]);

const CONNECTION = (field: string, withFilter = false) => `query($id: ID!, $first: Int, $after: String, $last: Int, $before: String${withFilter ? ', $filter: UsageFilter' : ''}) {
  account(id: $id) { ${field}(first: $first, after: $after, last: $last, before: $before${withFilter ? ', filter: $filter' : ''}) { edges { node { id } } pageInfo { hasNextPage hasPreviousPage } } } }`;

/** A GraphQL probe: its query and variables (made when it runs: the ids are known by then). */
type GqlProbe = { kind: 'gql'; query: string; variables: () => Record<string, unknown> };
/** A pool probe: the resolver's service call on the measured connection. */
type PoolProbe = { kind: 'pool'; run: (db: pg.Pool) => Promise<unknown> };

/** Four pages of a connection: first, deep forward, deep backward, last. */
function pages(field: string, list: () => string[], filter?: Record<string, unknown>): Array<[string, GqlProbe]> {
  const q = CONNECTION(field, filter !== undefined);
  const v = (extra: () => Record<string, unknown>) => () => ({ id: account, ...(filter ? { filter } : {}), ...extra() });
  const tag = filter ? `${field} ${JSON.stringify(filter)}` : field;
  return [
    [`${tag}: the first page`, { kind: 'gql', query: q, variables: v(() => ({ first: PAGE })) }],
    [`${tag}: a page deep in (after)`, { kind: 'gql', query: q, variables: v(() => ({ first: PAGE, after: deep(list()) })) }],
    [`${tag}: a page deep in (before)`, { kind: 'gql', query: q, variables: v(() => ({ last: PAGE, before: deep(list()) })) }],
    [`${tag}: the last page`, { kind: 'gql', query: q, variables: v(() => ({ last: PAGE })) }],
  ];
}

const PROBES: Array<[string, GqlProbe | PoolProbe]> = [
  ['account(id)', { kind: 'gql', query: `query($id: ID!) { account(id: $id) { id externalId name kind testMode createdAt referralCode } }`, variables: () => ({ id: account }) }],
  ['accountByExternalId', { kind: 'gql', query: `query($e: String!) { accountByExternalId(externalId: $e) { id name } }`, variables: () => ({ e: externalId }) }],
  ...pages('usage', () => ids.usage),
  ...(['taskId', 'agentId', 'userId', 'model', 'category', 'tier'] as const).map((f): [string, GqlProbe] => {
    const value = { taskId: 'task-3', agentId: 'agent-1', userId: 'user-1', model: 'model-1', category: 'units', tier: 'tier-1' }[f];
    const q = CONNECTION('usage', true);
    return [`usage {${f}: ${value}}: the first page`, { kind: 'gql', query: q, variables: () => ({ id: account, first: PAGE, filter: { [f]: value } }) }];
  }),
  ...(['taskId', 'agentId', 'userId', 'model', 'category', 'tier'] as const).map((f): [string, GqlProbe] => {
    const value = { taskId: 'task-3', agentId: 'agent-1', userId: 'user-1', model: 'model-1', category: 'units', tier: 'tier-1' }[f];
    const q = CONNECTION('usage', true);
    return [`usage {${f}: ${value}}: the last page`, { kind: 'gql', query: q, variables: () => ({ id: account, last: PAGE, filter: { [f]: value } }) }];
  }),
  ...pages('usage', () => ids.usageAgent1, { agentId: 'agent-1' }).slice(1, 3),
  [
    'usage {from: a week ago}: the first page',
    { kind: 'gql', query: CONNECTION('usage', true), variables: () => ({ id: account, first: PAGE, filter: { from: new Date(Date.now() - 7 * 86_400_000).toISOString() } }) },
  ],
  [
    'usage {from, to: the last four days}: the first page',
    {
      kind: 'gql',
      query: CONNECTION('usage', true),
      variables: () => ({ id: account, first: PAGE, filter: { from: new Date(Date.now() - 4 * 86_400_000).toISOString(), to: new Date(Date.now() + 60_000).toISOString() } }),
    },
  ],
  ...pages('ledger', () => ids.ledger),
  ...pages('grants', () => ids.grants),
  ...pages('alerts', () => ids.alerts),
  [
    'ledger with batch, usageEvent and reservation: the first page',
    {
      kind: 'gql',
      query: `query($id: ID!) { account(id: $id) { ledger(first: ${PAGE}) { edges { node { id type batch { id status } usageEvent { id } reservation { id status } } } } } }`,
      variables: () => ({ id: account }),
    },
  ],
  [
    'ledger(first: 200) with the status of batch and reservation',
    {
      kind: 'gql',
      query: `query($id: ID!) { account(id: $id) { ledger(first: 200) { edges { node { id batch { status } reservation { status } } } } } }`,
      variables: () => ({ id: account }),
    },
  ],
  [
    'usage(first: 100) with drawdowns, batch and reservation status',
    {
      kind: 'gql',
      query: `query($id: ID!) { account(id: $id) { usage(first: 100) { edges { node { id drawdowns { batch { status } } reservation { status } } } } } }`,
      variables: () => ({ id: account }),
    },
  ],
  [
    "usage(first: 300) with each event's account",
    { kind: 'gql', query: `query($id: ID!) { account(id: $id) { usage(first: 300) { edges { node { id account { id } } } } } }`, variables: () => ({ id: account }) },
  ],
  [
    'grants(first: 300) with the batch status',
    { kind: 'gql', query: `query($id: ID!) { account(id: $id) { grants(first: 300) { edges { node { id batch { status } } } } } }`, variables: () => ({ id: account }) },
  ],
  [
    'grants with batch: the first page',
    { kind: 'gql', query: `query($id: ID!) { account(id: $id) { grants(first: ${PAGE}) { edges { node { id batch { id remaining status } } } } } }`, variables: () => ({ id: account }) },
  ],
  ...[null, ['ACTIVE'], ['EXPIRED'], ['SETTLED'], ['RELEASED'], ['ACTIVE', 'EXPIRED', 'SETTLED', 'RELEASED']].map((status): [string, GqlProbe] => [
    `reservations(status: ${JSON.stringify(status)})`,
    { kind: 'gql', query: `query($id: ID!, $s: [ReservationStatus!]) { account(id: $id) { reservations(status: $s) { id status } } }`, variables: () => ({ id: account, s: status }) },
  ]),
  ...[null, ['ACTIVE'], ['EXPIRED'], ['EXHAUSTED'], ['ACTIVE', 'EXPIRED', 'EXHAUSTED', 'VOIDED']].map((status): [string, GqlProbe] => [
    `batches(status: ${JSON.stringify(status)})`,
    {
      kind: 'gql',
      query: `query($id: ID!, $s: [BatchStatus!]) { account(id: $id) { batches(status: $s) { id status remaining expiresAt grant { id } } } }`,
      variables: () => ({ id: account, s: status }),
    },
  ]),
  [
    'autoTopUp { pack } and paymentMethod',
    {
      kind: 'gql',
      query: `query($id: ID!) { account(id: $id) { autoTopUp { enabled maxPerPeriod pack { id name } } paymentMethod { provider reference } } }`,
      variables: () => ({ id: account }),
    },
  ],
  ...pages('auditEvents', () => ids.audit).map(([name, p]): [string, GqlProbe] => [
    `Query.${name.replace('auditEvents', 'auditEvents(accountId)')}`,
    {
      kind: 'gql',
      query: `query($id: ID, $first: Int, $after: String, $last: Int, $before: String) {
        auditEvents(accountId: $id, first: $first, after: $after, last: $last, before: $before) { edges { node { id action } } pageInfo { hasNextPage } } }`,
      variables: p.variables,
    },
  ]),
  [
    'usageEvent(id) with drawdowns, batches, reservation and account',
    {
      kind: 'gql',
      query: `query($id: ID!) { usageEvent(id: $id) { id cost drawdowns { amount batch { id status } } reservation { id status } account { id } } }`,
      variables: () => ({ id: gid('UsageEvent', ids.usage[Math.floor(ids.usage.length / 2)]!) }),
    },
  ],
  ['pool: readAccountClock (every list field with a status, usageSummary, usageHistory)', { kind: 'pool', run: (db) => readAccountClock(db, accountDb, new Date()) }],
  ['pool: Account.budgets (listBudgets AGENT)', { kind: 'pool', run: (db) => listBudgets(db, accountDb, new Date(), 'AGENT', { limit: 1000 }) }],
  ['pool: Account.userBudgets (listBudgets USER)', { kind: 'pool', run: (db) => listBudgets(db, accountDb, new Date(), 'USER', { limit: 1000 }) }],
  [
    'pool: Query.taskCost (usageSummary by taskId, total and by category)',
    {
      kind: 'pool',
      run: async (db) => {
        const range = { from: new Date('0001-01-01T00:00:00Z'), to: new Date('9999-12-31T00:00:00Z') };
        return [await usageSummary(db, accountDb, range, [], { taskId: 'task-3' }), await usageSummary(db, accountDb, range, ['CATEGORY'], { taskId: 'task-3' })];
      },
    },
  ],
  ['pool: Account.reconciliation', { kind: 'pool', run: (db) => reconcileAccount(db, accountDb) }],
  ['pool: AutoTopUpSettings.usedThisPeriod', { kind: 'pool', run: (db) => topUpsUsedThisPeriod(db, accountDb, new Date()) }],
  ['pool: Account.subscription', { kind: 'pool', run: (db) => readSubscription(db, accountDb, new Date()) }],
  [
    'pool: Account.referralsRewarded',
    { kind: 'pool', run: (db) => db.query('SELECT COUNT(*)::int AS n FROM referrals WHERE referrer_account_id = $1 AND referrer_rewarded', [accountDb]).then((r) => r.rows) },
  ],
  [
    'pool: AccountStatement.usage (current period)',
    {
      kind: 'pool',
      run: async (db) => {
        const c = await readAccountClock(db, accountDb, new Date());
        return statementUsage(db, { accountId: accountDb, periodStart: c.periodStart, periodEnd: c.periodEnd });
      },
    },
  ],
];

/** Rows read per phase and probe (rows-read.ts keys), and the answer (JSON) each gave. */
const measured = new Map<Phase, Map<string, { read: Map<string, number>; answer: string }>>();
const seen: Record<string, unknown> = {};

/**
 * Asks the server `p`'s query and replays the SQL its Prisma client sent on a fresh connection
 * with the server's session settings (withPlannerOptions), in a transaction rolled back at the
 * end; returns what that transaction read from NEIGHBOUR_TABLES and the answer's data as JSON.
 */
async function runGql(name: string, p: GqlProbe): Promise<{ read: Map<string, number>; answer: string }> {
  recorded.length = 0;
  const data = ok(await srv.gql(p.query, p.variables()));
  const statements = [...recorded];
  const client = new pg.Client({ connectionString: withPlannerOptions(DB_URL) });
  await client.connect();
  try {
    await client.query('BEGIN');
    for (const s of statements) await client.query(s.text, s.values as unknown[]);
    if (process.env.NEIGHBOUR_AUDIT_EXPLAIN && name.includes(process.env.NEIGHBOUR_AUDIT_EXPLAIN)) {
      for (const s of statements) {
        const plan = await client.query(`EXPLAIN (ANALYZE, BUFFERS) ${s.text}`, s.values as unknown[]);
        console.log(`${s.text}\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n`);
      }
    }
    const read = await rowsReadInTransaction(client as unknown as pg.PoolClient, NEIGHBOUR_TABLES);
    await client.query('ROLLBACK');
    return { read, answer: JSON.stringify(data) };
  } finally {
    await client.end();
  }
}

/**
 * Seeds the measured account's history with SQL in one committed transaction (triggers off, as
 * addOtherAccounts): usage events over the last EVENTS * 3 hours with their ledger entries and
 * drawdowns, grants with batches (ACTIVE expiring ones among them: the global subsets' rows are
 * the account's too), holds of each status, alerts, audit events, budgets, auto top-up settings
 * with a payment method and this period's top-ups.
 */
async function seedAccount(db: pg.Client, accountId: string, packId: string): Promise<void> {
  await db.query('BEGIN');
  await db.query('SET LOCAL session_replication_role = replica');
  await db.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
     SELECT gen_random_uuid(), $1, CASE WHEN k % 2 = 0 THEN 'PROMO_CODE' ELSE 'PURCHASE' END::"GrantSource", CASE WHEN k % 2 = 0 THEN 'FREE' ELSE 'PAID' END::"CreditType",
            1000000000, 'm-g-' || k, 'x', now() - (($2 + 1 - k) * interval '1 day')
       FROM generate_series(1, $2::int) k`,
    [accountId, GRANTS],
  );
  // Even k: FREE, ACTIVE, expiring from 10 days ago (EXPIRED as shown, not swept yet) to 50 days
  // ahead; odd k: PAID, half ACTIVE without expiry, half EXHAUSTED.
  await db.query(
    `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status, updated_at)
     SELECT gen_random_uuid(), g.account_id, g.id, g.type, g.source, 1000000000,
            CASE WHEN g.type = 'PAID' AND k % 4 = 1 THEN 0 ELSE 1000000000 END, g.created_at,
            CASE WHEN g.type = 'FREE' THEN GREATEST(g.created_at + interval '1 hour', now() + (k - 10) * interval '1 day') END,
            CASE WHEN g.type = 'PAID' AND k % 4 = 1 THEN 'EXHAUSTED' ELSE 'ACTIVE' END::"BatchStatus", g.created_at
       FROM (SELECT *, substring(idempotency_key FROM 5)::int AS k FROM credit_grants WHERE account_id = $1) g`,
    [accountId],
  );
  await db.query(
    `INSERT INTO reservations (id, account_id, amount_micro_credits, consumed_micro_credits, status, expires_at, created_at, closed_at, idempotency_key, request_hash, agent_id, user_id)
     SELECT gen_random_uuid(), $1, 1000000, 0, s, t + CASE WHEN s = 'ACTIVE' AND k % 8 = 0 THEN interval '1 minute' ELSE interval '30 days' END, t,
            CASE WHEN s = 'ACTIVE' THEN NULL ELSE t + interval '1 minute' END, 'm-r-' || k, 'x', 'agent-' || (k % 3), 'user-' || (k % 3)
       FROM generate_series(1, $2::int) k,
            LATERAL (SELECT (ARRAY['ACTIVE', 'SETTLED', 'RELEASED', 'EXPIRED'])[1 + k % 4]::"ReservationStatus" AS s, now() - ($2 + 1 - k) * interval '6 hours' AS t) x`,
    [accountId, HOLDS],
  );
  // Events: agent-1 (the neighbours' agent and category) on every fourth, users, tasks of 20,
  // two models and tiers; a hold on every tenth; debt on every fiftieth.
  await db.query(
    `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, model, tier, agent_id, user_id, task_id,
                               units, cost_micro_credits, debt_micro_credits, lines, price_book_version, reservation_id)
     SELECT gen_random_uuid(), $1, 'm-u-' || i, 'x', t, t, CASE WHEN i % 5 = 0 THEN 'other' ELSE 'units' END, 'model-' || (i % 2), 'tier-' || (i % 2),
            CASE WHEN i % 4 = 0 THEN 'agent-1' ELSE 'agent-2' END, 'user-' || (i % 3), 'task-' || (i / 20), 1, 1000000,
            CASE WHEN i % 50 = 0 THEN 1000 ELSE 0 END, '[]', (SELECT max(version) FROM price_books),
            r.id
       FROM generate_series(1, $2::int) i CROSS JOIN LATERAL (SELECT now() - ($2 + 1 - i) * interval '3 hours' AS t) x
       LEFT JOIN (SELECT id, row_number() OVER (ORDER BY created_at DESC) - 1 AS n FROM reservations WHERE account_id = $1) r ON i % 10 = 0 AND r.n = (i / 10) % $3::int`,
    [accountId, EVENTS, HOLDS],
  );
  await db.query(
    `CREATE TEMP TABLE m_batch ON COMMIT DROP AS SELECT id, row_number() OVER (ORDER BY added_at) - 1 AS n FROM credit_batches WHERE account_id = $1`,
    [accountId],
  );
  await db.query(
    `INSERT INTO drawdowns (id, usage_event_id, batch_id, position, amount_micro_credits)
     SELECT gen_random_uuid(), e.id, b.id, 0, 1000000 FROM usage_events e JOIN m_batch b ON b.n = e.seq % $2 WHERE e.account_id = $1`,
    [accountId, GRANTS],
  );
  await db.query(
    `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, created_at)
     SELECT gen_random_uuid(), account_id, 'GRANT', 1000000000, 0, id, added_at FROM credit_batches WHERE account_id = $1`,
    [accountId],
  );
  await db.query(
    `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, usage_event_id, reservation_id, batch_id, created_at)
     SELECT gen_random_uuid(), e.account_id, 'CONSUME', -1000000, 0, e.id, e.reservation_id, d.batch_id, e.recorded_at
       FROM usage_events e JOIN drawdowns d ON d.usage_event_id = e.id WHERE e.account_id = $1`,
    [accountId],
  );
  await db.query(
    `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
     SELECT gen_random_uuid(), $1, 25, 25, 0, date_trunc('day', now()) - ($2 + 1 - k) * interval '1 day', now() - ($2 + 1 - k) * interval '1 day' FROM generate_series(1, $2::int) k`,
    [accountId, ALERTS],
  );
  await db.query(
    `INSERT INTO audit_events (id, created_at, actor_kind, actor_name, action, account_id, subject_type, subject_id)
     SELECT gen_random_uuid(), now() - ($2 + 1 - k) * interval '1 hour', 'system', 'seed', 'grant.created', $1::uuid, 'grant', $1::text FROM generate_series(1, $2::int) k`,
    [accountId, AUDITS],
  );
  await db.query(
    `INSERT INTO spending_budgets (id, account_id, subject_kind, subject_id, limit_micro_credits)
     SELECT gen_random_uuid(), $1, kind, lower(kind) || '-' || k, 1000000000 FROM generate_series(0, 4) k, unnest(ARRAY['AGENT', 'USER']) kind`,
    [accountId],
  );
  await db.query(
    `INSERT INTO budget_spend (account_id, subject_kind, subject_id, period_start, spent_micro_credits)
     SELECT $1, 'AGENT', 'agent-' || k, date_trunc('day', now()) - d * interval '1 day', 1000 FROM generate_series(0, 4) k, generate_series(0, 30) d`,
    [accountId],
  );
  await db.query(`INSERT INTO payment_methods (account_id, provider, reference) VALUES ($1, 'test', 'pm_test_4242')`, [accountId]);
  await db.query(`INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period) VALUES ($1, true, 1000000, $2, 10)`, [
    accountId,
    packId,
  ]);
  await db.query(
    `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, created_at, finished_at)
     SELECT gen_random_uuid(), $1, date_trunc('day', now()) - k * interval '1 day', CASE WHEN k % 2 = 0 THEN 'SUCCEEDED' ELSE 'FAILED' END, 1, now() - k * interval '1 day', now() - k * interval '1 day'
       FROM generate_series(1, 20) k`,
    [accountId],
  );
  await db.query('COMMIT');
}

beforeAll(async () => {
  await createTestDatabase(DB_URL);
  admin = new pg.Client({ connectionString: DB_URL });
  await admin.connect();
  // Only this test's ANALYZEs run on these tables.
  for (const t of [...NEIGHBOUR_TABLES, 'spending_budgets', 'usage_rollups_hourly', 'usage_rollups_monthly']) await admin.query(`ALTER TABLE ${t} SET (autovacuum_enabled = false)`);
  const packId = (
    await admin.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), 'neighbours', 100000000, 100) RETURNING id`)
  ).rows[0].id as string;
  await addOtherAccounts(admin, QUIET_ACCOUNTS, QUIET_ROWS, false);

  srv = await startTestServer({ DATABASE_URL: DB_URL }, { onPrismaSql: (text, values) => recorded.push({ text, values }) });
  account = await apiAccount(srv);
  accountDb = dbId(account);
  externalId = (await admin.query('SELECT external_id FROM accounts WHERE id = $1', [accountDb])).rows[0].external_id as string;
  await seedAccount(admin, accountDb, packId);
  const order = async (sql: string) => (await admin.query(sql, [accountDb])).rows.map((r: { id: string }) => r.id);
  ids.usage = await order('SELECT id FROM usage_events WHERE account_id = $1 ORDER BY seq DESC');
  ids.usageAgent1 = await order(`SELECT id FROM usage_events WHERE account_id = $1 AND agent_id = 'agent-1' ORDER BY seq DESC`);
  ids.ledger = await order('SELECT id FROM ledger_entries WHERE account_id = $1 ORDER BY seq DESC');
  ids.grants = await order('SELECT id FROM credit_grants WHERE account_id = $1 ORDER BY seq DESC');
  ids.alerts = await order('SELECT id FROM credit_alerts WHERE account_id = $1 ORDER BY seq DESC');
  ids.audit = await order('SELECT id FROM audit_events WHERE account_id = $1 ORDER BY seq DESC');

  ledger = createTestServices(1, DB_URL);
  const client = await ledger.pool.connect();
  try {
    expect((await client.query('SHOW plan_cache_mode')).rows[0].plan_cache_mode).toBe('force_generic_plan');
    await client.query('BEGIN');
    const db = client as unknown as pg.Pool;
    const measure = async (phase: Phase) => {
      const byProbe = new Map<string, { read: Map<string, number>; answer: string }>();
      for (const [name, p] of PROBES) {
        if (p.kind === 'gql') {
          byProbe.set(name, await runGql(name, p));
        } else {
          const before = await rowsReadInTransaction(client, NEIGHBOUR_TABLES);
          const answer = JSON.stringify(await p.run(db), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
          const after = await rowsReadInTransaction(client, NEIGHBOUR_TABLES);
          byProbe.set(name, { read: new Map([...after].map(([t, v]) => [t, v - (before.get(t) ?? 0)])), answer });
        }
      }
      measured.set(phase, byProbe);
    };

    // Phase 1: statistics of the quiet database; the pool probes' generic plans made under them.
    await admin.query(`ANALYZE ${[...NEIGHBOUR_TABLES, 'spending_budgets'].join(', ')}`);
    for (const [, p] of PROBES) if (p.kind === 'pool') await p.run(db);
    await measure('quiet');

    // Phase 2: the other accounts' rows grow; the statistics (and the pool's plans) stay.
    await addOtherAccounts(admin, GROWTH_ACCOUNTS, GROWTH_ROWS, true);
    seen.changedSinceAnalyze = (
      await admin.query(
        `SELECT relname, n_mod_since_analyze::int AS changed FROM pg_stat_user_tables WHERE relname IN ('usage_events', 'credit_batches', 'reservations') ORDER BY relname`,
      )
    ).rows;
    await measure('stale');

    // Phase 3: statistics of the grown database.
    await admin.query(`ANALYZE ${[...NEIGHBOUR_TABLES, 'spending_budgets'].join(', ')}`);
    await measure('analyzed');
  } finally {
    await client.query('ROLLBACK').catch(() => undefined);
    client.release();
  }
}, 900_000);

afterAll(async () => {
  await srv?.close();
  await ledger?.close();
  await admin?.end();
  await dropTestDatabase(DB_URL);
  if (process.env.NEIGHBOUR_AUDIT_PRINT) {
    const lines = phaseReadLines(PROBES.map(([name]) => name), PHASES.map((p) => (name: string) => measured.get(p)?.get(name)?.read));
    for (const line of lines) console.log(line);
  }
});

describe("API reads of one account: the other accounts' new rows are not read, under stale or fresh statistics", () => {
  it('the scenario ran as meant (statistics stale in phase 2, the lists not empty)', () => {
    const changed = seen.changedSinceAnalyze as { relname: string; changed: number }[];
    expect(changed.map((r) => r.relname)).toEqual(['credit_batches', 'reservations', 'usage_events']);
    for (const r of changed) expect(r.changed).toBeGreaterThanOrEqual(GROWTH_ACCOUNTS * GROWTH_ROWS);
    const quiet = measured.get('quiet')!;
    // Every connection page served a full page, and every status list something.
    for (const [name] of PROBES.filter(([n]) => n.includes('page'))) expect((quiet.get(name)!.answer.match(/"node"/g) ?? []).length, name).toBeGreaterThanOrEqual(PAGE);
    for (const [name] of PROBES.filter(([n]) => n.startsWith('reservations') || n.startsWith('batches'))) expect(quiet.get(name)!.answer, name).toMatch(/"id"/);
  });

  for (const [name] of PROBES) {
    // accounts and balances hold one row per account: a read of one account's data needs a few
    // (the account, and the row of the cursor's or the relation's account), never the table.
    it(`${name}: one account's rows of accounts and balances, in every phase`, () => {
      const many = PHASES.flatMap((phase) =>
        ['accounts', 'balances'].map((key) => ({ phase, key, read: measured.get(phase)!.get(name)!.read.get(key) ?? 0 })).filter((d) => d.read > ONE_ACCOUNT_ROWS),
      );
      expect(many).toEqual([]);
    });
    for (const phase of ['stale', 'analyzed'] as const) {
      it(`${name}: ${phase} statistics`, () => {
        const quiet = measured.get('quiet')!.get(name)!;
        const later = measured.get(phase)!.get(name)!;
        // The same answer (the pool probes' carry the clock's now: their reads alone are compared).
        if (PROBES.find(([n]) => n === name)![1].kind === 'gql') expect(later.answer).toBe(quiet.answer);
        const grew = [...later.read]
          .filter(([key]) => !key.endsWith('(blocks)'))
          .map(([key, n]) => ({ key, quiet: quiet.read.get(key) ?? 0, [phase]: n }))
          .filter((d) => (d[phase] as number) > d.quiet + SLACK);
        expect(grew).toEqual([]);
      });
    }
  }
});
