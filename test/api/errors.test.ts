/**
 * The HTTP surface around GraphQL: GraphiQL, health and readiness probes, request ids, and the
 * graphql-armor limits (depth, aliases) and the cost limit (with page sizes given as variables)
 * that reject abusive documents before execution.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, ok } from './helpers.js';

let srv: TestServer;
let base: string;
let acct: string;

beforeAll(async () => {
  srv = await startTestServer();
  base = srv.url.replace(/\/graphql$/, '');
  acct = await apiAccount(srv, { paid: '1' });
});

afterAll(async () => {
  await srv?.close();
});

/**
 * A query whose selection is `levels` times `usage { edges { node { account { ... } } } }`
 * nested under `account(id:)`: 4 levels of depth per repetition.
 */
function nestedUsageQuery(levels: number): string {
  let inner = 'id';
  for (let i = 0; i < levels; i++) inner = `usage(first: 1) { edges { node { account { ${inner} } } } }`;
  return `query($id: ID!) { account(id: $id) { ${inner} } }`;
}

describe('HTTP endpoints', () => {
  it('GET /graphql with accept: text/html serves GraphiQL', async () => {
    const res = await fetch(srv.url, { headers: { accept: 'text/html' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await res.text();
    expect(html).toMatch(/<html/i);
    expect(html).toMatch(/graphiql/i);
  });

  it('/healthz answers 200', async () => {
    const res = await fetch(`${base}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });

  it('/readyz answers 200 with PostgreSQL and Redis reachable', async () => {
    const res = await fetch(`${base}/readyz`);
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body).toMatchObject({ ok: true, postgres: true, redis: true, live: { webSockets: 0, channels: 0, listeners: 0 } });
    // The event loop has run this file's requests: busy time since boot, and idle time between them.
    expect(body.eventLoop.activeMs).toBeGreaterThan(0);
    expect(body.eventLoop.idleMs).toBeGreaterThan(0);
    expect(body.queryTimings).toBeNull(); // PG_QUERY_TIMINGS is off by default
    // Its lateness: samples since boot (one every 10 ms, a counter) and their summed lateness,
    // estimated from the histogram's mean (mean - 10 ms) x samples, clamped at 0: not strictly
    // growing, since a sample that came a little early lowers it (a CI run, 2026-12-07).
    // The sampler runs: within a bound, a read counts samples (a server whose sampler is off
    // reports 0 for ever), and a later read counts more.
    const eventLoop = async () => ((await (await fetch(`${base}/readyz`)).json()) as { eventLoop: { delaySamples: number; delayLatenessMs: number } }).eventLoop;
    let first = body.eventLoop as { delaySamples: number; delayLatenessMs: number };
    await vi.waitFor(async () => {
      first = await eventLoop();
      expect(first.delaySamples).toBeGreaterThan(0);
    }, { timeout: 5_000, interval: 20 });
    expect(first.delayLatenessMs).toBeGreaterThanOrEqual(0);
    await vi.waitFor(async () => expect((await eventLoop()).delaySamples).toBeGreaterThan(first.delaySamples), { timeout: 5_000, interval: 20 });
    const later = await eventLoop();
    expect(Number.isFinite(later.delayLatenessMs) && later.delayLatenessMs >= 0).toBe(true);
  });

  it('echoes a valid x-request-id and generates one otherwise', async () => {
    const post = (headers: Record<string, string>) =>
      fetch(srv.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${srv.adminKey}`, ...headers },
        body: JSON.stringify({ query: '{ priceBook { version } }' }),
      });
    const given = await post({ 'x-request-id': 'req-123.abc' });
    expect(given.headers.get('x-request-id')).toBe('req-123.abc');
    const generated = await post({});
    expect(generated.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    const invalid = await post({ 'x-request-id': 'bad id with spaces' });
    expect(invalid.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('graphql-armor limits', () => {
  it('a query nested within the depth limit runs (control)', async () => {
    const data = ok(await srv.gql(nestedUsageQuery(2), { id: acct }));
    expect(data.account.usage.edges).toEqual([]);
  });

  it('a query nested beyond the depth limit is rejected before execution', async () => {
    // 3 repetitions: depth 14 against the default limit of 12.
    const res = await srv.gql(nestedUsageQuery(3), { id: acct });
    expect(res.body.data ?? null).toBeNull();
    expect(res.body.errors).toHaveLength(1);
    const err = res.body.errors![0]!;
    expect(err.message).toMatch(/depth limit of 12 exceeded/i);
    expect(err.extensions?.code).toBe('BAD_USER_INPUT');
  });

  it('a query whose estimated cost is beyond the cost limit is rejected', async () => {
    // Within the depth limit (a query beyond both is refused for its depth): three pages of 500.
    const pages = ['a', 'b', 'c'].map((alias) => `${alias}: usage(first: 500) { edges { node { id } } }`).join(' ');
    const res = await srv.gql(`query($id: ID!) { account(id: $id) { ${pages} } }`, { id: acct });
    expect(res.body.data ?? null).toBeNull();
    expect(res.body.errors).toHaveLength(1);
    expect(res.body.errors![0]!.message).toMatch(/cost limit/i);
    expect(res.body.errors![0]!.extensions?.code).toBe('BAD_USER_INPUT');
  });

  it('a page size passed as a variable counts in the cost as a literal one does', async () => {
    // usageEvent -> account -> usage(first: $n) -> each event's account -> usage(first: $n): n x n
    // events per alias. With the page size as a variable, the estimate used to multiply by 1.
    const query = `query($id: ID!, $n: Int) { usageEvent(id: $id) { account { usage(first: $n) { edges { node { account { usage(first: $n) { edges { node { id } } } } } } } } } }`;
    const literal = query.replace('query($id: ID!, $n: Int)', 'query($id: ID!)').replaceAll('first: $n', 'first: 500');
    const event = ok(await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: acct, category: 'unit', idempotencyKey: `cost-${Date.now()}` } })).recordUsage.id;
    for (const res of [await srv.gql(literal, { id: event }), await srv.gql(query, { id: event, n: 500 })]) {
      expect(res.body.data ?? null).toBeNull();
      expect(res.body.errors).toHaveLength(1);
      expect(res.body.errors![0]!.message).toMatch(/cost limit of 20000 exceeded/i);
      expect(res.body.errors![0]!.extensions?.code).toBe('BAD_USER_INPUT');
    }
    // The variable's default counts when the request leaves it out.
    const defaulted = await srv.gql(query.replace('$n: Int)', '$n: Int = 500)'), { id: event });
    expect(defaulted.body.errors?.[0]?.message).toMatch(/cost limit of 20000 exceeded/i);
    // Small pages are served (control).
    const data = ok(await srv.gql(query, { id: event, n: 2 }));
    expect(data.usageEvent.account.usage.edges[0].node.account.usage.edges.length).toBeGreaterThan(0);
  });

  it('a list read without a page size counts the rows it serves: an unpaged connection its default page, batches and reservations their weight', async () => {
    // Before the fix both cost about what one item did (a few hundred) and ran: 20 events, each
    // reading its account's batches and reservations (up to 1,000 rows each), and 10 aliases of
    // batches with a nested grant per row.
    const perEvent = `query($id: ID!) { account(id: $id) { usage { edges { node { account { batches { id remaining } reservations { id status } } } } } } }`;
    const aliases = Array.from({ length: 10 }, (_, i) => `b${i}: batches(status: [ACTIVE, EXHAUSTED]) { id remaining grant { id amount batch { id grant { id } } } }`).join(' ');
    const perAlias = `query($id: ID!) { account(id: $id) { ${aliases} } }`;
    for (const query of [perEvent, perAlias]) {
      const res = await srv.gql(query, { id: acct });
      expect(res.body.data ?? null).toBeNull();
      expect(res.body.errors).toHaveLength(1);
      expect(res.body.errors![0]!.message).toMatch(/^Query cost limit of 20000 exceeded, found \d+(\.\d+)?\.$/);
      expect(res.body.errors![0]!.extensions?.code).toBe('BAD_USER_INPUT');
    }
  });

  it('a plain list counts the rows it serves: usageSummary, usageHistory (by its months variable), budgets, userBudgets, Viewer.accounts, drawdowns, recordUsageBatch (by its inputs)', async () => {
    // Before the fix each counted as one item and ran: 20 events each reading its account's
    // report of up to 1,000 rows (or 120 months, or every budget), two accounts each reading a page
    // of 500, 200 events with their drawdowns, 100 charges each reading a page of 20.
    const perEvent = (list: string) => `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { account { ${list} } } } } } }`;
    const history = perEvent('usageHistory(months: $m) { month total byCategory { category credits } }').replace('$id: ID!', '$id: ID!, $m: Int');
    const batch = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { event { account { usage(first: 20) { edges { node { id } } } } } } }`;
    const inputs = Array.from({ length: 100 }, (_, i) => ({ accountId: acct, category: 'unit', idempotencyKey: `cost-batch-${Date.now()}-${i}` }));
    const refused: [string, Record<string, unknown>][] = [
      [perEvent('usageSummary(groupBy: [TASK]) { taskId credits events }'), { id: acct }],
      [history, { id: acct, m: 120 }],
      [perEvent('budgets { agentId limit spent }'), { id: acct }],
      [perEvent('userBudgets { userId limit spent }'), { id: acct }],
      [`{ viewer { accounts { usage(first: 500) { edges { node { id cost } } } } } }`, {}],
      [`query($id: ID!) { account(id: $id) { usage(first: 200) { edges { node { id drawdowns { amount batch { id remaining } } } } } } }`, { id: acct }],
      [batch, { inputs }],
    ];
    const events = async () => ok(await srv.gql(`query($id: ID!) { account(id: $id) { usage(first: 500) { edges { node { id } } } } }`, { id: acct })).account.usage.edges.length;
    const before = await events();
    for (const [query, variables] of refused) {
      const res = await srv.gql(query, variables);
      expect.soft(res.body.data ?? null, query).toBeNull();
      expect.soft(res.body.errors?.map((e) => `${e.extensions?.code}: ${e.message}`), query).toEqual([expect.stringMatching(/^BAD_USER_INPUT: Query cost limit of 20000 exceeded, found \d+(\.\d+)?\.$/)]);
    }
    expect(await events()).toBe(before); // the refused batch charged nothing
    // Control: a batch of one, and the same history of one month (under that event), are served.
    expect(ok(await srv.gql(batch, { inputs: inputs.slice(0, 1) })).recordUsageBatch).toHaveLength(1);
    const served = ok(await srv.gql(history, { id: acct, m: 1 })).account.usage.edges;
    expect(served.length).toBeGreaterThan(0);
    for (const edge of served) expect(edge.node.account.usageHistory).toHaveLength(1);
  });

  it('a dashboard query (balance, batches, holds, a page of usage and of the ledger, alerts, summaries, budgets) is served', async () => {
    const dash = await apiAccount(srv, { free: '5', paid: '10' });
    ok(await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: dash, category: 'unit', idempotencyKey: `dash-use-${Date.now()}` } }));
    const reserved = ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: dash, amount: '0.25', idempotencyKey: `dash-hold-${Date.now()}` } })).reserveCredits.id;
    const dashboard = `query Dashboard($id: ID!) { account(id: $id) {
      id externalId name kind
      balance { available total reserved free paid periodCredits percentRemaining depleted version }
      batches(status: [ACTIVE, EXHAUSTED, EXPIRED, VOIDED]) { ...Batch }
      reservations(status: [ACTIVE]) { id amount consumed status expiresAt createdAt }
      usage(first: 20) { edges { node { id category model cost occurredAt lines { item amount } } } pageInfo { hasNextPage endCursor } }
      ledger(first: 20) { edges { node { id type amount balanceAfter createdAt note batch { id } } } }
      alerts { edges { node { threshold percentRemaining available createdAt } } }
      byCategory: usageSummary(groupBy: [CATEGORY]) { category credits events }
      byModel: usageSummary(groupBy: [MODEL]) { model credits events }
      budgets { agentId limit spent }
      reconciliation { consistent }
    } }
    fragment Batch on CreditBatch { id type source allocated remaining addedAt expiresAt status }`;
    const data = ok(await srv.gql(dashboard, { id: dash }));
    expect(data.account.batches.length).toBe(2);
    expect(data.account.reservations.map((r: { id: string }) => r.id)).toContain(reserved);
    expect(data.account.usage.edges.length).toBeGreaterThan(0);
    expect(data.account.reconciliation.consistent).toBe(true);
  });

  it('a mutation refused for its cost records nothing', async () => {
    const events = async () => ok(await srv.gql(`query($id: ID!) { account(id: $id) { usage(first: 100) { edges { node { id } } } } }`, { id: acct })).account.usage.edges.length;
    const before = await events();
    const res = await srv.gql(
      `mutation($input: RecordUsageInput!, $n: Int) { recordUsage(input: $input) { id account { usage(first: $n) { edges { node { account { usage(first: $n) { edges { node { id } } } } } } } } } }`,
      { input: { accountId: acct, category: 'unit', idempotencyKey: `cost-mutation-${Date.now()}` }, n: 500 },
    );
    expect(res.body.data ?? null).toBeNull();
    expect(res.body.errors?.map((e) => e.extensions?.code)).toEqual(['BAD_USER_INPUT']);
    expect(res.body.errors![0]!.message).toMatch(/cost limit/i);
    expect(await events()).toBe(before);
  });

  it('a document nested deeper than the parser can go is BAD_USER_INPUT, with or without credentials', async () => {
    // 2,450 nested lists: 4,900 tokens, within the token limit; graphql-js's recursive parser
    // ran out of stack on it (INTERNAL_SERVER_ERROR, logged as a bug).
    const lists = `{ plans(x: ${'['.repeat(2450)}${']'.repeat(2450)}) { id } }`;
    const objects = `mutation { recordUsage(input: { accountId: "${acct}", category: "unit", idempotencyKey: "deep", metadata: ${'{a: '.repeat(1200)}1${'}'.repeat(1200)} }) { id } }`;
    for (const [query, token] of [[lists, null], [lists, srv.adminKey], [objects, srv.adminKey]] as const) {
      const res = await srv.gql(query, {}, token);
      expect(res.body.data ?? null).toBeNull();
      expect(res.body.errors?.map((e) => e.extensions?.code)).toEqual(['BAD_USER_INPUT']);
      expect(res.body.errors![0]!.message).toMatch(/nests brackets more than 256 levels/);
    }
    // Brackets inside strings, block strings and comments are not nesting (control): these
    // documents reach validation, which refuses the unknown argument.
    const quoted = [
      `{ plans(x: "${'['.repeat(300)}\\" ${'{'.repeat(300)}") { id } }`,
      `{ plans(x: """${'{'.repeat(300)} \\""" ${'['.repeat(300)}""") { id } }`,
      `{ plans(x: 1 # ${'('.repeat(300)}\n) { id } }`,
    ];
    for (const query of quoted) {
      const res = await srv.gql(query, {});
      expect(res.body.errors?.map((e) => e.extensions?.code)).toEqual(['BAD_USER_INPUT']);
      expect(res.body.errors![0]!.message).not.toMatch(/nests brackets/);
    }
  });

  it('a query with too many aliases is rejected', async () => {
    const aliases = Array.from({ length: 40 }, (_, i) => `a${i}: priceBook { version }`).join(' ');
    const res = await srv.gql(`{ ${aliases} }`);
    expect(res.body.data ?? null).toBeNull();
    expect(res.body.errors!.length).toBeGreaterThan(0);
    expect(res.body.errors![0]!.message).toMatch(/alias/i);
    expect(res.body.errors![0]!.extensions?.code).toBe('BAD_USER_INPUT');
  });
});
