/**
 * Audit of the usage reports over HTTP (usageSummary, usageHistory, taskCost, the `usage` event
 * list): they equal a full scan of the account's events as the `usage` list pages them out
 * (refunds, free events, BYOK platform fees, captures against a hold, events dated in the past
 * and at UTC month boundaries, null agent/user/task/model, every grouping); the `usage` list pages
 * every event that existed when paging began exactly once while other events are recorded; the
 * reports' "now" (the default usageSummary range, usageHistory's newest month) is the account's
 * now as Balance and statement read it, also when this server's clock runs behind the account's
 * last change (another server's clock ahead); an account anchored mid-month (billing period vs UTC
 * calendar month); usageHistory on a test clock before the year 1000; `months` bounds; and
 * tenancy (an organization member
 * reads the pool's reports, not another member's USER account). Real server, PostgreSQL, Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import { useTestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, grant, ok, uniq } from '../api/helpers.js';

const srv = useTestServer();

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;
const REFUND = `mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "audit") { id refunded } }`;

/** Records one event over the API; returns its global id. */
async function record(input: Record<string, unknown>): Promise<string> {
  return ok(await srv.gql(RECORD, { input: { idempotencyKey: uniq('u'), ...input } })).recordUsage.id as string;
}

describe("the reports' now is the account's now", () => {
  it('usageSummary (default range) and usageHistory count an event charged just after a period boundary while this server clock is behind it', async () => {
    // Anchor at a calendar month start, so the billing period boundary B is also a UTC month boundary.
    const anchor = new Date('2031-02-01T00:00:00.000Z');
    const boundary = new Date('2031-03-01T00:00:00.000Z');
    srv.services.setNow(anchor);
    try {
      const acct = await apiAccount(srv, { paid: '10' });
      // Another server, whose clock is ahead, charges just after the boundary...
      srv.services.setNow(new Date(boundary.getTime() + 1000));
      await record({ accountId: acct, category: 'unit' });
      // ...and this server, 2 s behind it, answers the reports.
      srv.services.setNow(new Date(boundary.getTime() - 1000));
      const a = ok(
        await srv.gql(
          `query($id: ID!) { account(id: $id) {
             balance { periodStart }
             statement { periodStart usageByCategory { category credits events } }
             usageSummary(groupBy: [CATEGORY]) { category credits events }
             usageHistory(months: 1) { month total byCategory { category credits events } } } }`,
          { id: acct },
        ),
      ).account;
      expect(a.balance.periodStart).toBe(boundary.toISOString());
      expect(a.statement.periodStart).toBe(boundary.toISOString());
      const row = [{ category: 'unit', credits: '1', events: 1 }];
      expect(a.statement.usageByCategory).toEqual(row);
      // The current billing period as Balance names it, not the one of this server's clock.
      expect(a.usageSummary).toEqual(row);
      expect(a.usageHistory).toEqual([{ month: '2031-03', total: '1', byCategory: row }]);
    } finally {
      srv.services.setNow(null);
    }
  });
});

describe('an account anchored mid-month', () => {
  it('usageSummary defaults to the billing period; usageHistory counts UTC calendar months', async () => {
    srv.services.setNow(new Date('2031-05-15T10:00:00.000Z'));
    try {
      const acct = await apiAccount(srv, { paid: '10' });
      srv.services.setNow(new Date('2031-06-12T00:00:00.000Z'));
      for (const at of ['2031-05-15T09:59:59.999Z', '2031-05-16T00:00:00.000Z', '2031-06-01T00:00:00.000Z', '2031-06-11T00:00:00.000Z']) {
        await record({ accountId: acct, category: 'unit', occurredAt: at });
      }
      const a = ok(await srv.gql(`query($id: ID!) { account(id: $id) { balance { periodStart periodEnd } usageSummary(groupBy: []) { credits events } usageHistory(months: 2) { month total } } }`, { id: acct })).account;
      expect(a.balance).toEqual({ periodStart: '2031-05-15T10:00:00.000Z', periodEnd: '2031-06-15T10:00:00.000Z' });
      expect(a.usageSummary).toEqual([{ credits: '3', events: 3 }]); // not the event just before the anchor
      expect(a.usageHistory).toEqual([{ month: '2031-06', total: '2' }, { month: '2031-05', total: '2' }]);
    } finally {
      srv.services.setNow(null);
    }
  });
});

describe('usageHistory on a test clock in an early year', () => {
  it("names and sums the clock's months also before the year 1000 (and 100): YYYY-MM as the contract says", async () => {
    const id = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
        input: { externalId: uniq('early'), name: 'Early', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: '0050-06-15T00:00:00.000Z' },
      }),
    ).createAccount.id as string;
    await grant(srv, id, '5', 'PAID');
    await record({ accountId: id, category: 'unit' }); // occurred at the clock's now
    await record({ accountId: id, category: 'unit', occurredAt: '0049-12-31T23:59:59.999Z' });
    const history = ok(await srv.gql(`query($id: ID!) { account(id: $id) { usageHistory(months: 7) { month total } } }`, { id })).account.usageHistory;
    expect(history.map((m: { month: string; total: string }) => `${m.month}=${m.total}`)).toEqual(['0050-06=1', '0050-05=0', '0050-04=0', '0050-03=0', '0050-02=0', '0050-01=0', '0049-12=1']);
  });
});

/** Micro-credits of a Credits decimal string ("-1.5" -> -1500000n). */
function micro(credits: string): bigint {
  const neg = credits.startsWith('-');
  const [whole, frac = ''] = (neg ? credits.slice(1) : credits).split('.');
  const v = BigInt(whole!) * 1_000_000n + BigInt((frac + '000000').slice(0, 6));
  return neg ? -v : v;
}

interface ListedEvent {
  id: string;
  occurredAt: string;
  category: string;
  tier: string | null;
  model: string | null;
  agentId: string | null;
  userId: string | null;
  taskId: string | null;
  cost: string;
  refunded: boolean;
}

const USAGE_PAGE = `query($id: ID!, $after: String, $first: Int) { account(id: $id) { usage(first: $first, after: $after) {
  edges { cursor node { id occurredAt category tier model agentId userId taskId cost refunded } } pageInfo { hasNextPage endCursor } } } }`;

/** Every event of the account, newest first, as the `usage` list pages it out (pages of `first`). */
async function listAll(acct: string, first = 100, between?: () => Promise<void>): Promise<ListedEvent[]> {
  const out: ListedEvent[] = [];
  let after: string | null = null;
  for (;;) {
    const page: { edges: { node: ListedEvent }[]; pageInfo: { hasNextPage: boolean; endCursor: string | null } } = ok(await srv.gql(USAGE_PAGE, { id: acct, after, first })).account.usage;
    out.push(...page.edges.map((e) => e.node));
    if (!page.pageInfo.hasNextPage) return out;
    after = page.pageInfo.endCursor;
    if (between) await between();
  }
}

const DIMS = { CATEGORY: 'category', TIER: 'tier', MODEL: 'model', AGENT: 'agentId', USER: 'userId', TASK: 'taskId' } as const;
type Dim = keyof typeof DIMS;
type Row = { category: string | null; tier: string | null; model: string | null; agentId: string | null; userId: string | null; taskId: string | null; credits: bigint; events: number };
const key = (r: Omit<Row, 'credits' | 'events'>) => JSON.stringify([r.category, r.tier, r.model, r.agentId, r.userId, r.taskId]);
const sortRows = (rows: Row[]) => rows.sort((a, b) => key(a).localeCompare(key(b)));

/** The full scan: the listed events not refunded with occurredAt in [from, to), grouped by `dims`. */
function scan(events: ListedEvent[], from: number, to: number, dims: Dim[]): Row[] {
  const groups = new Map<string, Row>();
  for (const e of events) {
    const at = Date.parse(e.occurredAt);
    if (e.refunded || at < from || at >= to) continue;
    const g: Row = { category: null, tier: null, model: null, agentId: null, userId: null, taskId: null, credits: 0n, events: 0 };
    for (const d of dims) g[DIMS[d]] = e[DIMS[d]];
    const k = key(g);
    const row = groups.get(k) ?? g;
    row.credits += micro(e.cost);
    row.events += 1;
    groups.set(k, row);
  }
  return sortRows([...groups.values()]);
}

const fromApi = (rows: Array<Omit<Row, 'credits'> & { credits: string }>): Row[] =>
  sortRows(rows.map((r) => ({ category: r.category, tier: r.tier, model: r.model, agentId: r.agentId, userId: r.userId, taskId: r.taskId, credits: micro(r.credits), events: r.events })));

const ROW_FIELDS = 'category tier model agentId userId taskId credits events';

describe('the reports equal a full scan of the listed events', () => {
  let acct: string;
  let events: ListedEvent[];
  const now = new Date();
  // UTC month starts from 14 months back to this month: events on, just before and between them.
  const monthStarts = Array.from({ length: 15 }, (_, i) => Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 14 + i, 1));
  const instants = [...monthStarts.flatMap((t) => [t, t - 1, t + 1, t + 3_600_000]), ...monthStarts.slice(0, -1).map((t) => t + 15 * 86_400_000 + 12_345)].filter((t) => t <= now.getTime());

  // The server's clock is `now` for this describe: usageHistory's newest month is the one of the
  // server's now, which could otherwise be the month after `now`'s when the file runs across a
  // UTC month end (collected at 23:59:59 on the last day, queried after midnight).
  afterAll(() => srv.services.setNow(null));

  beforeAll(async () => {
    srv.services.setNow(now);
    acct = await apiAccount(srv, { paid: '100000' });
    await grant(srv, acct, '50', 'FREE');
    const kinds: Array<Record<string, unknown>> = [
      { category: 'unit' },
      { category: 'unit', sku: 'half' },
      { category: 'units', quantities: { units: '2.5' } },
      { category: 'free' }, // cost 0, still an event
      { category: 'llm', model: 'gpt-4o-mini', tier: 'fast', quantities: { inputTokens: 1500, outputTokens: 70 } },
      { category: 'llm', model: 'gpt-4o-mini', tier: 'fast', byok: true, quantities: { inputTokens: 1500, outputTokens: 70 } }, // platform fee only
      { category: 'llm', model: 'other-model', quantities: { inputTokens: 10, outputTokens: 1 } },
      { category: 'passthrough', providerCostUsd: '0.0042' },
    ];
    const picks = fc.sample(
      fc.record({
        at: fc.constantFrom(...instants),
        kind: fc.integer({ min: 0, max: kinds.length - 1 }),
        agent: fc.constantFrom(null, 'agent-a', 'agent-b'),
        user: fc.constantFrom(null, 'user-1'),
        task: fc.constantFrom(null, 'task-x', 'task-y'),
        refund: fc.integer({ min: 0, max: 4 }),
      }),
      { numRuns: 90, seed: 20261207 },
    );
    const inputs = picks.map((p) => ({
      accountId: acct,
      idempotencyKey: uniq('b'),
      occurredAt: new Date(p.at).toISOString(),
      agentId: p.agent,
      userId: p.user,
      taskId: p.task,
      ...kinds[p.kind],
    }));
    const res = ok(await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { id } } }`, { inputs }));
    const ids: string[] = res.recordUsageBatch.map((r: { errorCode: string | null; event: { id: string } | null }) => {
      expect(r.errorCode).toBeNull();
      return r.event!.id;
    });
    // Captures against a hold (one recordUsage, one settle), then now-dated events one by one.
    const hold = ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: acct, amount: '5', idempotencyKey: uniq('h') } })).reserveCredits.id;
    ids.push(await record({ accountId: acct, reservationId: hold, category: 'units', quantities: { units: '1.25' }, taskId: 'task-x', occurredAt: new Date(monthStarts[13]!).toISOString() }));
    ok(await srv.gql(`mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`, {
      input: { reservationId: hold, usage: [{ accountId: acct, idempotencyKey: uniq('s'), category: 'unit', taskId: 'task-y' }] },
    }));
    for (let i = 0; i < 3; i++) ids.push(await record({ accountId: acct, category: 'unit', agentId: i ? 'agent-a' : null }));
    for (const [i, id] of ids.entries()) if (picks[i]?.refund === 0 || i === ids.length - 1) ok(await srv.gql(REFUND, { id }));
    events = await listAll(acct, 37);
    expect(events.length).toBe(ids.length + 1);
    expect(events.some((e) => e.refunded)).toBe(true);
  });

  it('usageSummary equals the scan for random ranges (month boundaries, whole and partial hours) and every grouping', async () => {
    const edges = [...instants.flatMap((t) => [t - 3_600_000, t, t + 1]), now.getTime() + 60_000];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...edges), fc.constantFrom(...edges), fc.subarray(Object.keys(DIMS) as Dim[]), async (a, b, dims) => {
        const from = Math.min(a, b);
        const to = Math.max(a, b);
        const got = ok(await srv.gql(`query($id: ID!, $from: DateTime, $to: DateTime, $g: [UsageDimension!]!) { account(id: $id) { usageSummary(from: $from, to: $to, groupBy: $g) { ${ROW_FIELDS} } } }`, {
          id: acct, from: new Date(from).toISOString(), to: new Date(to).toISOString(), g: dims,
        })).account.usageSummary;
        expect(fromApi(got)).toEqual(scan(events, from, to, dims));
      }),
      { numRuns: 40, seed: 99 },
    );
  });

  it('usageHistory equals the scan month by month (120 months, the most allowed), and taskCost per task', async () => {
    const history = ok(await srv.gql(`query($id: ID!) { account(id: $id) { usageHistory(months: 120) { month total byCategory { ${ROW_FIELDS} } } } }`, { id: acct })).account.usageHistory;
    expect(history).toHaveLength(120);
    for (const [i, m] of history.entries()) {
      const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i, 1);
      const end = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i + 1, 1);
      expect(m.month).toBe(new Date(start).toISOString().slice(0, 7));
      const expected = scan(events, start, end, ['CATEGORY']);
      expect(fromApi(m.byCategory)).toEqual(expected);
      expect(micro(m.total)).toBe(expected.reduce((s, r) => s + r.credits, 0n));
    }
    for (const task of ['task-x', 'task-y', 'nothing']) {
      const t = ok(await srv.gql(`query($id: ID!, $t: String!) { taskCost(accountId: $id, taskId: $t) { credits events byCategory { ${ROW_FIELDS} } } }`, { id: acct, t: task })).taskCost;
      const mine = events.filter((e) => e.taskId === task);
      const [total] = scan(mine, -Infinity, Infinity, []);
      expect({ credits: micro(t.credits), events: t.events }).toEqual({ credits: total?.credits ?? 0n, events: total?.events ?? 0 });
      expect(fromApi(t.byCategory)).toEqual(scan(mine, -Infinity, Infinity, ['CATEGORY']));
    }
  });

  it('months outside 1..120 is BAD_USER_INPUT', async () => {
    for (const months of [0, -1, 121]) {
      expectError(await srv.gql(`query($id: ID!, $m: Int) { account(id: $id) { usageHistory(months: $m) { month } } }`, { id: acct, m: months }), 'BAD_USER_INPUT');
    }
    expect(ok(await srv.gql(`query($id: ID!) { account(id: $id) { usageHistory(months: 1) { month } } }`, { id: acct })).account.usageHistory).toHaveLength(1);
  });
});

describe('the usage list under concurrent inserts', () => {
  it('pages every event that existed when paging began exactly once, newest first, while others are recorded', async () => {
    const acct = await apiAccount(srv, { paid: '1000' });
    const inputs = Array.from({ length: 45 }, (_, i) => ({ accountId: acct, idempotencyKey: uniq('p'), category: 'unit', agentId: i % 2 ? 'agent-a' : null }));
    ok(await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode } }`, { inputs }));
    for (let i = 0; i < 5; i++) await record({ accountId: acct, category: 'unit' });
    const before = (await listAll(acct)).map((e) => e.id);
    expect(before).toHaveLength(50);
    // Page by 7 while charges are recorded in flight (each launched between pages, not awaited there).
    const inFlight: Promise<string>[] = [];
    const seen = (await listAll(acct, 7, async () => {
      inFlight.push(record({ accountId: acct, category: 'unit' }), record({ accountId: acct, category: 'free' }));
    })).map((e) => e.id);
    const added = await Promise.all(inFlight);
    expect(new Set(seen).size).toBe(seen.length); // no duplicates
    expect(seen.filter((id) => before.includes(id))).toEqual(before); // none skipped, same order
    expect(seen.every((id) => before.includes(id) || added.includes(id))).toBe(true);
    // And afterwards one list holds them all once.
    const after = (await listAll(acct)).map((e) => e.id);
    expect(new Set(after)).toEqual(new Set([...before, ...added]));
    expect(after).toHaveLength(before.length + added.length);
  });
});

describe('tenancy of the reports', () => {
  it("an organization member reads the pool's reports, not another member's USER account", async () => {
    const orgExt = uniq('org');
    const [u1, u2] = [uniq('user'), uniq('user')];
    const org = await apiAccount(srv, { paid: '10', externalId: orgExt, kind: 'ORGANIZATION' });
    const other = await apiAccount(srv, { paid: '10', externalId: u2, kind: 'USER' });
    await record({ accountId: org, category: 'unit', taskId: 't', userId: u1 });
    await record({ accountId: other, category: 'unit', taskId: 't' });
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ org: orgExt }).setProtectedHeader({ alg: 'HS256' }).setSubject(u1).setIssuedAt(now).setExpirationTime(now + 600).sign(new TextEncoder().encode(srv.jwtSecret));
    const REPORTS = `query($id: ID!) { account(id: $id) { usageSummary(groupBy: [USER]) { userId credits events } usageHistory(months: 1) { total } usage(first: 5) { edges { node { id } } } }
      taskCost(accountId: $id, taskId: "t") { credits events } }`;
    const mine = ok(await srv.gql(REPORTS, { id: org }, token));
    expect(mine.account.usageSummary).toEqual([{ userId: u1, credits: '1', events: 1 }]);
    expect(mine.account.usageHistory).toEqual([{ total: '1' }]);
    expect(mine.account.usage.edges).toHaveLength(1);
    expect(mine.taskCost).toEqual({ credits: '1', events: 1 });
    // Another member's USER account answers as a missing one: account null, taskCost NOT_FOUND.
    const theirs = await srv.gql(REPORTS.replace(/\s*taskCost[^}]*}/, ''), { id: other }, token);
    expect(ok(theirs).account).toBeNull();
    expectError(await srv.gql(`query($id: ID!) { taskCost(accountId: $id, taskId: "t") { credits } }`, { id: other }, token), 'NOT_FOUND');
    expect(dbId(other)).not.toBe(dbId(org));
  });
});

describe('taskCost input', () => {
  it('a task id no event can carry (empty, over 200 characters, a line break) is BAD_USER_INPUT, not the cost of some other events', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    await record({ accountId: acct, category: 'unit', taskId: 't' });
    await record({ accountId: acct, category: 'unit' });
    const Q = `query($id: ID!, $t: String!) { taskCost(accountId: $id, taskId: $t) { credits events } }`;
    for (const t of ['', 'x'.repeat(201), 'a\nb']) expectError(await srv.gql(Q, { id: acct, t }), 'BAD_USER_INPUT');
    expect(ok(await srv.gql(Q, { id: acct, t: 't' })).taskCost).toEqual({ credits: '1', events: 1 });
    expect(ok(await srv.gql(Q, { id: acct, t: 'x'.repeat(200) })).taskCost).toEqual({ credits: '0', events: 0 });
  });
});
