/**
 * The live credit bar and credit alerts driven by real charges over HTTP on one real server
 * (group commit, real PostgreSQL and Redis): a concurrent burst of single charges, batches, holds
 * and a grant on one account, watched by balanceChanged and creditAlerts. Every update arrives in
 * version order, each one's figures are the contract's arithmetic of themselves, the last equals a
 * fresh `balance` query at the same version, and each threshold's alert arrives exactly once.
 * Spending budgets under the same kind of burst over HTTP: an agent's spending never passes its
 * limit and the pool never goes below zero.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectConsistent, grant, ok, uniq } from '../api/helpers.js';
import { ALERTS_SUB, waitForStreamsStarted, streamsStarted, wsSubscribe, type LiveSub } from './helpers.js';

const BAR_SUB = `subscription ($id: ID!) { balanceChanged(accountId: $id) { accountId available total reserved free paid debt version percentRemaining periodCredits depleted } }`;
const BALANCE = `query($id: ID!) { account(id: $id) { balance { accountId available total reserved free paid debt version percentRemaining periodCredits depleted } alerts(first: 50) { edges { node { id threshold percentRemaining } } } } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { id cost } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id amount } }`;
const SET_AGENT = `mutation($accountId: ID!, $agentId: String!, $limit: Credits) { setAgentBudget(accountId: $accountId, agentId: $agentId, limit: $limit) { agentId limit spent } }`;

let srv: TestServer;
const subs: LiveSub[] = [];
const bearer = () => `Bearer ${srv.adminKey}`;

beforeAll(async () => {
  srv = await startTestServer({ CHARGE_PATH: 'group' });
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
});

afterAll(async () => {
  await srv?.close();
});

/** Credits text -> micro-credits. */
function micro(c: string): bigint {
  const [w, f = ''] = c.split('.');
  const neg = w!.startsWith('-');
  const v = BigInt(w!.replace('-', '')) * 1_000_000n + BigInt((f + '000000').slice(0, 6));
  return neg ? -v : v;
}

/** The contract's percentRemaining of `available` of `period` (both micro-credits), as the API shows it. */
function percent(available: bigint, period: bigint): number {
  if (period <= 0n || available <= 0n) return 0;
  if (available >= period) return 100;
  return Number((available * 10000n) / period) / 100;
}

/** Outcome codes of settled GraphQL calls (each a {status, body}). */
function codeOf(r: { body: { data?: any; errors?: Array<{ extensions?: { code?: string } }> } }): string {
  return r.body.errors?.length ? String(r.body.errors[0]!.extensions?.code) : 'OK';
}

describe('live credit bar and alerts under a concurrent burst', () => {
  it('every committed version arrives in order, each self-consistent, the last equal to a fresh query; each threshold alerts once', async () => {
    const account = await apiAccount(srv, { paid: '100' });
    const before = await streamsStarted(srv.url);
    const bar = wsSubscribe(srv.url, bearer(), BAR_SUB, { id: account });
    const alerts = wsSubscribe(srv.url, bearer(), ALERTS_SUB, { id: account });
    subs.push(bar, alerts);
    await waitForStreamsStarted(srv.url, before + 2);

    const singles = Array.from({ length: 60 }, () => srv.gql(RECORD, { input: { accountId: account, idempotencyKey: uniq('s'), category: 'unit' } }));
    const batches = Array.from({ length: 3 }, () =>
      srv.gql(BATCH, { inputs: Array.from({ length: 20 }, () => ({ accountId: account, idempotencyKey: uniq('b'), category: 'unit' })) }),
    );
    const holds = Array.from({ length: 5 }, () => srv.gql(RESERVE, { input: { accountId: account, amount: '1', ttlSeconds: 600, idempotencyKey: uniq('h') } }));
    const granted = grant(srv, account, '10', 'PAID');
    const results = await Promise.all([...singles, ...batches, ...holds]);
    await granted;
    const charged =
      results.slice(0, 60).filter((r) => codeOf(r) === 'OK').length +
      results.slice(60, 63).flatMap((r) => ok(r).recordUsageBatch as Array<{ errorCode: string | null }>).filter((x) => x.errorCode === null).length;
    const held = results.slice(63).filter((r) => codeOf(r) === 'OK').length;
    // What the burst left (the grant may have landed after most of it was refused), spent one by one.
    let after = 0;
    for (;;) {
      const r = await srv.gql(RECORD, { input: { accountId: account, idempotencyKey: uniq('f'), category: 'unit' } });
      if (codeOf(r) !== 'OK') break;
      after++;
    }
    expect(charged + held + after).toBe(110);

    const fresh = ok(await srv.gql(BALANCE, { id: account })).account;
    expect(fresh.balance.available).toBe('0');
    await bar.waitFor((s) => s.events.at(-1)?.balanceChanged.version === fresh.balance.version, 'the last version');
    const versions = bar.events.map((e) => BigInt(e.balanceChanged.version));
    for (let i = 1; i < versions.length; i++) expect(versions[i]! > versions[i - 1]!).toBe(true);
    // Without a Redis drop or a slow client, no version between the first and the last is skipped.
    expect(versions.at(-1)! - versions[0]!).toBe(BigInt(versions.length - 1));
    for (const { balanceChanged: b } of bar.events) {
      expect(micro(b.available)).toBe(micro(b.total) - micro(b.reserved));
      expect(b.percentRemaining).toBe(percent(micro(b.available), micro(b.periodCredits)));
      expect(b.depleted).toBe(micro(b.available) <= 0n);
      expect(micro(b.available)).toBeGreaterThanOrEqual(0n);
    }
    expect(bar.events.at(-1)!.balanceChanged).toEqual(fresh.balance);

    const thresholds = fresh.alerts.edges.map((e: any) => e.node.threshold).sort((a: number, b: number) => b - a);
    expect(thresholds).toEqual([25, 15, 0]);
    await alerts.waitFor((s) => s.events.length >= 3, 'three alerts');
    expect(alerts.events.map((e) => e.creditAlerts.threshold)).toEqual([25, 15, 0]);
    expect(new Set(alerts.events.map((e) => e.creditAlerts.id)).size).toBe(3);
    await expectConsistent(srv, account);
  });
});

describe('an agent budget under a concurrent burst over HTTP', () => {
  it('singles, batches and holds of one agent, with the pool running out too: the agent never passes its limit, the pool never goes below zero', async () => {
    const account = await apiAccount(srv, { paid: '45' });
    ok(await srv.gql(SET_AGENT, { accountId: account, agentId: 'hot', limit: '30' }));
    const agent = (i: number) => (i % 3 === 0 ? {} : { agentId: 'hot' });
    const singles = Array.from({ length: 60 }, (_, i) => srv.gql(RECORD, { input: { accountId: account, idempotencyKey: uniq('s'), category: 'unit', ...agent(i) } }));
    const batches = Array.from({ length: 3 }, () =>
      srv.gql(BATCH, { inputs: Array.from({ length: 10 }, (_, i) => ({ accountId: account, idempotencyKey: uniq('b'), category: 'unit', ...agent(i) })) }),
    );
    const holds = Array.from({ length: 8 }, (_, i) => srv.gql(RESERVE, { input: { accountId: account, amount: '1', ttlSeconds: 600, idempotencyKey: uniq('h'), ...agent(i + 1) } }));
    const lower = srv.gql(SET_AGENT, { accountId: account, agentId: 'hot', limit: '25' });
    const results = await Promise.all([...singles, ...batches, ...holds]);
    ok(await lower);
    const codes = [
      ...results.slice(0, 60).map(codeOf),
      ...results.slice(60, 63).flatMap((r) => (ok(r).recordUsageBatch as Array<{ errorCode: string | null }>).map((x) => x.errorCode ?? 'OK')),
      ...results.slice(63).map(codeOf),
    ];
    for (const c of codes) expect(['OK', 'BUDGET_EXCEEDED', 'INSUFFICIENT_CREDITS']).toContain(c);
    expect(codes.filter((c) => c === 'BUDGET_EXCEEDED').length).toBeGreaterThan(0);
    const rows = await srv.services.pool.query(
      `SELECT COALESCE(SUM(cost_micro_credits) FILTER (WHERE agent_id = 'hot'), 0)::text AS agent, COALESCE(SUM(cost_micro_credits), 0)::text AS all_usage,
              (SELECT COALESCE(SUM(amount_micro_credits - consumed_micro_credits), 0) FROM reservations WHERE account_id = $1 AND status = 'ACTIVE' AND agent_id = 'hot')::text AS agent_held
         FROM usage_events WHERE account_id = $1`,
      [dbId(account)],
    );
    const { agent: agentUsage, all_usage, agent_held } = rows.rows[0];
    expect(BigInt(agentUsage) + BigInt(agent_held)).toBeLessThanOrEqual(30_000_000n);
    expect(BigInt(all_usage)).toBeLessThanOrEqual(45_000_000n);
    const a = await expectConsistent(srv, account);
    expect(micro(a.balance.available)).toBeGreaterThanOrEqual(0n);
    expect(a.balance.debt).toBe('0');
    const budget = ok(await srv.gql(`query($id: ID!) { account(id: $id) { budgets { agentId limit spent } } }`, { id: account })).account.budgets;
    expect(budget).toEqual([{ agentId: 'hot', limit: '25', spent: String(Number(BigInt(agentUsage) + BigInt(agent_held)) / 1e6) }]);
  });
});
