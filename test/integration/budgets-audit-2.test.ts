/**
 * Second audit of spending budgets (README "Budgets inside a pool"), on the real PostgreSQL and on
 * both charge paths (one transaction per call, and group commit deciding in memory): a budget
 * lowered below its spending, removed and set again, the kept spending across a billing period
 * boundary and a refund of the previous period's usage, a capture beyond its hold, the same agent
 * in a batch across two accounts, concurrent charges from two servers near the limit, and the
 * refusal's details.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, settledCode, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { listBudgets, setSpendingBudget } from '../../src/services/spending-budgets.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import type { ServiceContext } from '../../src/services/context.js';
import { credits } from '../../src/ledger/credits.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, expectError, gid, ok, uniq } from '../api/helpers.js';

let s: TestServices;
let s2: TestServices;
beforeAll(() => {
  s = createTestServices(20);
  s2 = createTestServices(10);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
  await s2.close();
});

/** The services of `base` with a group committer of 2 transaction slots (grouped) or without one. */
const pathCtx = (base: TestServices, grouped: boolean): ServiceContext =>
  grouped ? { ...base, groupCommit: new GroupCommitter(base.pool, base.clock, chargeAccounts, applyCharge, { maxTransactions: 2 }) } : base;

/** A charge of `n` whole credits (category `units`) of agent `agentId`. */
const spend = (ctx: ServiceContext, accountId: string, idempotencyKey: string, agentId: string, n: number, extra: { userId?: string; reservationId?: string } = {}) =>
  recordUsage(ctx, { accountId, idempotencyKey, category: 'units', quantities: { units: String(n) }, agentId, ...extra });

/** The refusal `op` ends with (fails the test when it resolves). */
const refusal = (op: Promise<unknown>) =>
  op.then(
    () => expect.unreachable('expected a refusal'),
    (e: unknown) => e,
  );

/** The agent's budget as Account.budgets reads it at `at`. */
const agentBudget = async (accountId: string, agentId: string, at = new Date()) =>
  (await listBudgets(s.pool, accountId, at, 'AGENT', { subjectId: agentId }))[0];

/** The kept spending rows (budget_spend) of an account, each next to the SUM over its period that defines it. */
async function keptSpending(accountId: string): Promise<{ subject: string; periodStart: string; kept: bigint; sum: bigint }[]> {
  const { rows } = await s.pool.query(
    `SELECT k.subject_kind || ':' || k.subject_id AS subject, k.period_start, k.spent_micro_credits AS kept,
            (SELECT COALESCE(SUM(e.cost_micro_credits), 0) FROM usage_events e
              WHERE e.account_id = k.account_id AND e.refunded_at IS NULL
                AND e.recorded_at >= k.period_start AND e.recorded_at < k.period_start + interval '1 month'
                AND CASE WHEN k.subject_kind = 'AGENT' THEN e.agent_id = k.subject_id ELSE e.user_id = k.subject_id END) AS sum
       FROM budget_spend k WHERE k.account_id = $1 ORDER BY 1, 2`,
    [accountId],
  );
  return rows.map((r) => ({ subject: r.subject as string, periodStart: (r.period_start as Date).toISOString(), kept: BigInt(r.kept), sum: BigInt(r.sum) }));
}

/** Counts of what a refused operation must not have written. */
const footprint = async (accountId: string) =>
  (
    await s.pool.query(
      `SELECT (SELECT count(*) FROM usage_events WHERE account_id = $1)::int AS events,
              (SELECT count(*) FROM ledger_entries WHERE account_id = $1)::int AS entries,
              (SELECT count(*) FROM reservations WHERE account_id = $1)::int AS holds,
              (SELECT version FROM balances WHERE account_id = $1)::text AS version`,
      [accountId],
    )
  ).rows[0];

describe.each([
  ['one transaction per call', false],
  ['group commit', true],
])('spending budgets, second audit (%s)', (_path, grouped) => {
  it('a budget lowered below what is spent: the next charge and hold are refused with the numbers, nothing changes, others go on', async () => {
    s.setNow(null);
    const ctx = pathCtx(s, grouped);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'low', limitMicroCredits: credits(10) });
    await spend(ctx, accountId, 'l1', 'low', 6);
    const lowered = await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'low', limitMicroCredits: credits(4) });
    expect(lowered).toEqual({ subjectKind: 'AGENT', subjectId: 'low', limitMicroCredits: credits(4), spentMicroCredits: credits(6) });
    const before = await footprint(accountId);
    const e = await refusal(spend(ctx, accountId, 'l2', 'low', 1));
    expect(e).toMatchObject({
      code: 'BUDGET_EXCEEDED',
      details: { subjectKind: 'AGENT', subjectId: 'low', limitCredits: '4', spentCredits: '6', neededCredits: '1' },
    });
    expect((e as Error).message).toContain('0 of 4 left');
    await expect(reserveCredits(ctx, { accountId, amountMicroCredits: credits(1), ttlSeconds: 60, idempotencyKey: 'lh', agentId: 'low' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    expect(await footprint(accountId)).toEqual(before);
    await spend(ctx, accountId, 'l3', 'other', 1);
    expect(await agentBudget(accountId, 'low')).toMatchObject({ spentMicroCredits: credits(6) });
    // Raised again above the spending: room for exactly the difference.
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'low', limitMicroCredits: credits(8) });
    await spend(ctx, accountId, 'l4', 'low', 2);
    await expect(spend(ctx, accountId, 'l5', 'low', 1)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED', details: { spentCredits: '8', limitCredits: '8' } });
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('removed across a period boundary and set again: only the new period counts, and the old period keeps nothing stale', async () => {
    const jan = new Date(Date.UTC(2026, 4, 5, 12, 0, 0));
    s.setNow(jan);
    const ctx = pathCtx(s, grouped);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'r', limitMicroCredits: credits(5) });
    await spend(ctx, accountId, 'r1', 'r', 5);
    expect(await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'r', limitMicroCredits: null })).toBeNull();
    await spend(ctx, accountId, 'r2', 'r', 3); // unlimited meanwhile
    const next = new Date(Date.UTC(2026, 5, 5, 12, 0, 1));
    s.setNow(next);
    await spend(ctx, accountId, 'r3', 'r', 2); // new period, still unlimited
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'r', limitMicroCredits: credits(5) });
    expect((await agentBudget(accountId, 'r', next))?.spentMicroCredits).toBe(credits(2));
    await spend(ctx, accountId, 'r4', 'r', 3);
    await expect(spend(ctx, accountId, 'r5', 'r', 1)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    const kept = await keptSpending(accountId);
    expect(kept).toEqual([{ subject: 'AGENT:r', periodStart: new Date(Date.UTC(2026, 5, 5, 12, 0, 0)).toISOString(), kept: credits(5), sum: credits(5) }]);
    await expectLedgerInvariant(s.pool, accountId, next);
    s.setNow(null);
  });

  it("a refund of the previous period's usage takes its cost off that period's kept spending, not off this one's", async () => {
    const may = new Date(Date.UTC(2026, 6, 3, 8, 0, 0));
    s.setNow(may);
    const ctx = pathCtx(s, grouped);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'p', limitMicroCredits: credits(5) });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'pu', limitMicroCredits: credits(5) });
    const old = await spend(ctx, accountId, 'p1', 'p', 4, { userId: 'pu' });
    const june = new Date(Date.UTC(2026, 7, 3, 8, 0, 0)); // the period starting Aug 3
    s.setNow(june);
    await spend(ctx, accountId, 'p2', 'p', 5, { userId: 'pu' });
    await expect(spend(ctx, accountId, 'p3', 'p', 1)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    await refundUsage(s, old.eventId, 'refund of last period');
    // This period's spending is still 5: the agent and the user stay at their limits.
    expect((await agentBudget(accountId, 'p', june))?.spentMicroCredits).toBe(credits(5));
    await expect(spend(ctx, accountId, 'p4', 'p', 1)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    await expect(spend(ctx, accountId, 'p5', 'q', 1, { userId: 'pu' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED', details: { subjectKind: 'USER' } });
    for (const row of await keptSpending(accountId)) expect(row.kept).toBe(row.sum);
    expect((await keptSpending(accountId)).map((r) => r.kept)).toEqual([0n, credits(5), 0n, credits(5)]);
    await expectLedgerInvariant(s.pool, accountId, june);
    s.setNow(null);
  });

  it('a capture beyond its hold is not checked, leaves spent over the limit, and the next charge and hold are refused', async () => {
    s.setNow(null);
    const ctx = pathCtx(s, grouped);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'c', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(ctx, { accountId, amountMicroCredits: credits(8), ttlSeconds: 600, idempotencyKey: 'ch', agentId: 'c' });
    expect((await agentBudget(accountId, 'c'))?.spentMicroCredits).toBe(credits(8));
    await spend(ctx, accountId, 'c1', 'c', 12, { reservationId: hold.reservationId });
    expect((await agentBudget(accountId, 'c'))?.spentMicroCredits).toBe(credits(12));
    await expect(spend(ctx, accountId, 'c2', 'c', 1)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED', details: { spentCredits: '12', limitCredits: '10' } });
    await expect(reserveCredits(ctx, { accountId, amountMicroCredits: credits(1), ttlSeconds: 60, idempotencyKey: 'ch2', agentId: 'c' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    await settleReservation(ctx, hold.reservationId, []);
    expect((await agentBudget(accountId, 'c'))?.spentMicroCredits).toBe(credits(12));
    for (const row of await keptSpending(accountId)) expect(row.kept).toBe(row.sum);
    await expectLedgerInvariant(s.pool, accountId);
  });

  it('a hold released (or expired) frees its share; settled with less usage, only the usage stays', async () => {
    s.setNow(null);
    const ctx = pathCtx(s, grouped);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'm', limitMicroCredits: credits(10) });
    const hold = await reserveCredits(ctx, { accountId, amountMicroCredits: credits(7), ttlSeconds: 600, idempotencyKey: 'mh', userId: 'm' });
    await expect(recordUsage(ctx, { accountId, idempotencyKey: 'm1', category: 'units', quantities: { units: '4' }, userId: 'm' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
      details: { spentCredits: '7', neededCredits: '4' },
    });
    await settleReservation(ctx, hold.reservationId, [{ accountId, idempotencyKey: 'm2', category: 'units', quantities: { units: '2' } }]);
    expect((await listBudgets(s.pool, accountId, new Date(), 'USER'))[0]?.spentMicroCredits).toBe(credits(2));
    await recordUsage(ctx, { accountId, idempotencyKey: 'm3', category: 'units', quantities: { units: '8' }, userId: 'm' });
    await expect(recordUsage(ctx, { accountId, idempotencyKey: 'm4', category: 'units', quantities: { units: '1' }, userId: 'm' })).rejects.toMatchObject({
      code: 'BUDGET_EXCEEDED',
    });
    await expectLedgerInvariant(s.pool, accountId);
  });
  it('a hold stops counting at its expiresAt, before the expiry job; a hold over a lowered limit still captures and settles', async () => {
    const t0 = new Date(Date.UTC(2026, 8, 10, 10, 0, 0));
    s.setNow(t0);
    const ctx = pathCtx(s, grouped);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'x', limitMicroCredits: credits(10) });
    await reserveCredits(ctx, { accountId, amountMicroCredits: credits(9), ttlSeconds: 60, idempotencyKey: 'xh', agentId: 'x' });
    await expect(spend(ctx, accountId, 'x1', 'x', 2)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED', details: { spentCredits: '9' } });
    const expired = new Date(t0.getTime() + 60_000);
    s.setNow(expired);
    expect((await agentBudget(accountId, 'x', expired))?.spentMicroCredits).toBe(0n);
    await spend(ctx, accountId, 'x2', 'x', 10);
    await expect(spend(ctx, accountId, 'x3', 'x', 1)).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED', details: { spentCredits: '10' } });
    // A hold made under the old limit, the limit lowered below it: its captures are not re-checked.
    const y = await reserveCredits(ctx, { accountId, amountMicroCredits: credits(6), ttlSeconds: 600, idempotencyKey: 'yh', userId: 'yu' });
    await setSpendingBudget(s, { accountId, subjectKind: 'USER', subjectId: 'yu', limitMicroCredits: credits(2) });
    await spend(ctx, accountId, 'y1', 'free-agent', 3, { reservationId: y.reservationId });
    await settleReservation(ctx, y.reservationId, [{ accountId, idempotencyKey: 'y2', category: 'units', quantities: { units: '1' } }]);
    expect((await listBudgets(s.pool, accountId, expired, 'USER'))[0]?.spentMicroCredits).toBe(credits(4));
    for (const row of await keptSpending(accountId)) expect(row.kept).toBe(row.sum);
    await expectLedgerInvariant(s.pool, accountId, expired);
    s.setNow(null);
  });
});

describe('spending budgets, second audit: batches and two servers', () => {
  it('the same agent in one batch across two accounts: each account has its own budget, items decided in input order', async () => {
    s.setNow(null);
    const a = await createFundedAccount(s, { paid: 100 });
    const b = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId: a, subjectKind: 'AGENT', subjectId: 'shared', limitMicroCredits: credits(2) });
    await setSpendingBudget(s, { accountId: b, subjectKind: 'AGENT', subjectId: 'shared', limitMicroCredits: credits(3) });
    // Start a's kept row first so one account decides in memory and the other from its first check.
    await recordUsage(s, { accountId: a, idempotencyKey: 'pre', category: 'unit', agentId: 'shared' });
    const inputs = Array.from({ length: 10 }, (_, i) => ({ accountId: i % 2 === 0 ? a : b, idempotencyKey: `bx-${i}`, category: 'unit', agentId: 'shared' }));
    const out = await recordUsageBatch(s, inputs, { maxItems: 100 });
    const codes = out.map((r) => (r.ok ? 'OK' : (r.error as { code: string }).code));
    expect(codes).toEqual(['OK', 'OK', 'BUDGET_EXCEEDED', 'OK', 'BUDGET_EXCEEDED', 'OK', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED']);
    expect((await agentBudget(a, 'shared'))?.spentMicroCredits).toBe(credits(2));
    expect((await agentBudget(b, 'shared'))?.spentMicroCredits).toBe(credits(3));
    for (const id of [a, b]) {
      for (const row of await keptSpending(id)) expect(row.kept).toBe(row.sum);
      await expectLedgerInvariant(s.pool, id);
    }
  });

  it('charges and holds of one agent from two servers at once: charges plus what the holds hold stop exactly at the limit', async () => {
    s.setNow(null);
    const servers = [pathCtx(s, true), pathCtx(s2, true), s, s2];
    const accountId = await createFundedAccount(s, { paid: 100 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'mix', limitMicroCredits: credits(20) });
    await spend(s, accountId, 'warm', 'mix', 10);
    const results = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) =>
        i % 3 === 0
          ? reserveCredits(servers[i % 4]!, { accountId, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: `mh-${i}`, agentId: 'mix' })
          : recordUsage(servers[i % 4]!, { accountId, idempotencyKey: `mc-${i}`, category: 'unit', agentId: 'mix' }),
      ),
    );
    const c = results.map(settledCode);
    expect(c.filter((x) => x === 'OK')).toHaveLength(10);
    expect(c.filter((x) => x === 'BUDGET_EXCEEDED')).toHaveLength(50);
    expect((await agentBudget(accountId, 'mix'))?.spentMicroCredits).toBe(credits(20));
    for (const row of await keptSpending(accountId)) expect(row.kept).toBe(row.sum);
    await expectLedgerInvariant(s.pool, accountId);
  });

  it.each([
    ['the budget', 100, 'BUDGET_EXCEEDED', 5],
    ['the available credit', 18, 'INSUFFICIENT_CREDITS', 3],
  ])('50 concurrent charges of an agent near its limit from two servers (group commit on each) stop exactly at %s', async (_what, paid, code, ok) => {
    s.setNow(null);
    const servers = [pathCtx(s, true), pathCtx(s2, true)];
    const accountId = await createFundedAccount(s, { paid });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'hot', limitMicroCredits: credits(20) });
    await spend(s, accountId, 'warm', 'hot', 15);
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => recordUsage(servers[i % 2]!, { accountId, idempotencyKey: `hot-${i}`, category: 'unit', agentId: 'hot' })),
    );
    const c = results.map(settledCode);
    expect(c.filter((x) => x === 'OK')).toHaveLength(ok);
    expect(c.filter((x) => x === code)).toHaveLength(50 - ok);
    expect((await agentBudget(accountId, 'hot'))?.spentMicroCredits).toBe(credits(15 + ok));
    for (const row of await keptSpending(accountId)) expect(row.kept).toBe(row.sum);
    const bal = await expectLedgerInvariant(s.pool, accountId);
    expect(bal.totalMicroCredits).toBe(credits(paid - 15 - ok));
  });
});

/**
 * Over the API: who reads budgets (README "Who may do what": members of an organization read its
 * pool whole, `userBudgets` included; any other account answers like a missing one) and the
 * numbers a BUDGET_EXCEEDED refusal carries in `extensions`.
 */
describe('spending budgets, second audit: over the API', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer();
  });
  afterAll(async () => {
    await srv?.close();
  });
  const BUDGETS = `query($id: ID!) { account(id: $id) { budgets { agentId limit spent } userBudgets { userId limit spent } } }`;
  const SET_USER = `mutation($id: ID!, $u: String!, $l: Credits) { setUserBudget(accountId: $id, userId: $u, limit: $l) { userId limit spent } }`;
  const SET_AGENT = `mutation($id: ID!, $a: String!, $l: Credits) { setAgentBudget(accountId: $id, agentId: $a, limit: $l) { agentId limit spent } }`;
  const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;

  it("an end user reads its organization's budgets, nobody else's, and sets none", async () => {
    const orgExt = uniq('org');
    const userExt = uniq('member');
    const org = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt, paid: '50' });
    const other = await apiAccount(srv, { kind: 'ORGANIZATION', paid: '50' });
    const otherUser = await apiAccount(srv, { kind: 'USER', paid: '5' });
    for (const id of [org, other, otherUser]) {
      ok(await srv.gql(SET_USER, { id, u: userExt, l: '3' }));
      ok(await srv.gql(SET_AGENT, { id, a: 'bot', l: '4' }));
    }
    ok(await srv.gql(RECORD, { input: { accountId: org, idempotencyKey: uniq('u'), category: 'units', quantities: { units: '2' }, userId: 'someone-else' } }));
    ok(await srv.gql(SET_USER, { id: org, u: 'someone-else', l: '5' }));
    const token = await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 600 });
    const own = ok(await srv.gql(BUDGETS, { id: org }, token)).account;
    expect(own).toEqual({
      budgets: [{ agentId: 'bot', limit: '4', spent: '0' }],
      userBudgets: [
        { userId: userExt, limit: '3', spent: '0' },
        { userId: 'someone-else', limit: '5', spent: '2' },
      ].sort((a, b) => Buffer.compare(Buffer.from(a.userId), Buffer.from(b.userId))),
    });
    const missing = await srv.gql(BUDGETS, { id: gid('Account', randomUUID()) }, token);
    for (const id of [other, otherUser]) {
      const res = await srv.gql(BUDGETS, { id }, token);
      expect(res.body).toEqual(missing.body);
      expect(res.body.data).toEqual({ account: null });
    }
    const before = ok(await srv.gql(BUDGETS, { id: org })).account;
    for (const [q, v] of [
      [SET_USER, { id: org, u: userExt, l: '1000' }],
      [SET_AGENT, { id: org, a: 'bot', l: null }],
    ] as const) {
      const res = await srv.gql(q, v, token);
      expect(res.body.errors?.map((e) => e.extensions?.code)).toEqual(['FORBIDDEN']);
    }
    expect(ok(await srv.gql(BUDGETS, { id: org })).account).toEqual(before);
  });

  it("BUDGET_EXCEEDED carries the subject, limit, spent (over the limit after it was lowered) and needed amounts", async () => {
    const org = await apiAccount(srv, { paid: '50' });
    ok(await srv.gql(SET_AGENT, { id: org, a: 'bot', l: '10' }));
    ok(await srv.gql(RECORD, { input: { accountId: org, idempotencyKey: uniq('u'), category: 'units', quantities: { units: '6' }, agentId: 'bot' } }));
    expect(ok(await srv.gql(SET_AGENT, { id: org, a: 'bot', l: '4.5' })).setAgentBudget).toEqual({ agentId: 'bot', limit: '4.5', spent: '6' });
    const res = await srv.gql(RECORD, { input: { accountId: org, idempotencyKey: uniq('u'), category: 'units', quantities: { units: '1' }, agentId: 'bot' } });
    const e = expectError(res, 'BUDGET_EXCEEDED');
    expect(e.extensions).toEqual({ code: 'BUDGET_EXCEEDED', subjectKind: 'AGENT', subjectId: 'bot', limitCredits: '4.5', spentCredits: '6', neededCredits: '1' });
    expect(e.message).toBe('agent bot budget exceeded: needs 1, 0 of 4.5 left this period');
  });
});
