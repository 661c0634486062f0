/**
 * Agent and user budgets over the API (issue #5): setAgentBudget/setUserBudget, Account.budgets
 * and Account.userBudgets (spent = usage cost this billing period + active holds of the
 * subject), BUDGET_EXCEEDED refusals that record nothing, other subjects unaffected, the pool's
 * own INSUFFICIENT_CREDITS (with exact neededCredits/availableCredits), 100 racing charges
 * against a budget of 30, holds counting against the budget, and budgets re-arming in the next
 * billing period of a test-mode account.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { dbId, gid, expectConsistent, expectError, expectUnchanged, grant, ok, readAccount, uniq } from '../helpers.js';
import { createAccount, growthCounts } from './growth-helpers.js';

const SET_AGENT = `mutation($accountId: ID!, $agentId: String!, $limit: Credits) { setAgentBudget(accountId: $accountId, agentId: $agentId, limit: $limit) { agentId limit spent } }`;
const SET_USER = `mutation($accountId: ID!, $userId: String!, $limit: Credits) { setUserBudget(accountId: $accountId, userId: $userId, limit: $limit) { userId limit spent } }`;
const BUDGETS = `query($id: ID!) { account(id: $id) { budgets { agentId limit spent } userBudgets { userId limit spent } } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost agentId userId reservation { id } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id amount consumed status } }`;
const RELEASE = `mutation($id: ID!) { releaseReservation(reservationId: $id) { id status } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id consumed status } }`;

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv?.close();
});

/** An account funded with `paid` PAID credit. */
async function funded(paid: string, clockStart?: string): Promise<string> {
  const id = (await createAccount(srv, clockStart ? { clockStart } : {})).id;
  if (paid !== '0') await grant(srv, id, paid, 'PAID');
  return id;
}

/** Usage input of `units` credits (category "units": 1 credit per unit). */
function use(accountId: string, units: string, extra: Record<string, unknown> = {}) {
  return { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units }, ...extra };
}

async function budgets(accountId: string) {
  return ok(await srv.gql(BUDGETS, { id: accountId })).account as { budgets: Array<{ agentId: string; limit: string; spent: string }>; userBudgets: Array<{ userId: string; limit: string; spent: string }> };
}

async function agentSpent(accountId: string, agentId: string): Promise<string | undefined> {
  return (await budgets(accountId)).budgets.find((b) => b.agentId === agentId)?.spent;
}

async function setAgent(accountId: string, agentId: string, limit: string | null) {
  return ok(await srv.gql(SET_AGENT, { accountId, agentId, limit })).setAgentBudget;
}

/** Runs `op`, expects `code` and that the account's balance, ledger, events and holds did not change. */
async function expectRefused(accountId: string, op: () => Promise<any>, code: string) {
  const before = await growthCounts(srv, accountId);
  const res = await expectUnchanged(srv, [accountId], op);
  const error = expectError(res, code);
  expect(await growthCounts(srv, accountId)).toEqual(before);
  return error;
}

describe('setAgentBudget / setUserBudget', () => {
  it('sets, changes and removes (null -> null) an agent budget; Account.budgets shows limit and spent', async () => {
    const acct = await funded('50');
    expect(await setAgent(acct, 'agent-a', '12.5')).toEqual({ agentId: 'agent-a', limit: '12.5', spent: '0' });
    expect(await setAgent(acct, 'agent-b', '3')).toEqual({ agentId: 'agent-b', limit: '3', spent: '0' });
    ok(await srv.gql(RECORD, { input: use(acct, '2', { agentId: 'agent-a' }) }));
    expect(await setAgent(acct, 'agent-a', '20')).toEqual({ agentId: 'agent-a', limit: '20', spent: '2' });
    expect((await budgets(acct)).budgets).toEqual([
      { agentId: 'agent-a', limit: '20', spent: '2' },
      { agentId: 'agent-b', limit: '3', spent: '0' },
    ]);
    expect((await budgets(acct)).userBudgets).toEqual([]);

    const removed = ok(await srv.gql(SET_AGENT, { accountId: acct, agentId: 'agent-a', limit: null }));
    expect(removed.setAgentBudget).toBeNull();
    expect((await budgets(acct)).budgets).toEqual([{ agentId: 'agent-b', limit: '3', spent: '0' }]);
    // Without a budget the agent spends freely again.
    ok(await srv.gql(RECORD, { input: use(acct, '25', { agentId: 'agent-a' }) }));
  });

  it('sets and removes a user budget; it shows in userBudgets, not in budgets', async () => {
    const acct = await funded('10');
    const set = ok(await srv.gql(SET_USER, { accountId: acct, userId: 'user-1', limit: '4' })).setUserBudget;
    expect(set).toEqual({ userId: 'user-1', limit: '4', spent: '0' });
    expect(await budgets(acct)).toEqual({ budgets: [], userBudgets: [{ userId: 'user-1', limit: '4', spent: '0' }] });
    expect(ok(await srv.gql(SET_USER, { accountId: acct, userId: 'user-1', limit: null })).setUserBudget).toBeNull();
    expect(await budgets(acct)).toEqual({ budgets: [], userBudgets: [] });
  });
});

describe('agent budgets', () => {
  it('usage beyond the remaining budget is BUDGET_EXCEEDED and records nothing; other agents are unaffected', async () => {
    const acct = await funded('100');
    await setAgent(acct, 'x', '5');
    await setAgent(acct, 'z', '1');
    const e = ok(await srv.gql(RECORD, { input: use(acct, '3', { agentId: 'x' }) })).recordUsage;
    expect(e).toMatchObject({ cost: '3', agentId: 'x' });
    expect(await agentSpent(acct, 'x')).toBe('3');

    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '2.000001', { agentId: 'x' }) }), 'BUDGET_EXCEEDED');
    expect(await agentSpent(acct, 'x')).toBe('3');

    ok(await srv.gql(RECORD, { input: use(acct, '2', { agentId: 'x' }) })); // exactly up to the limit
    expect(await agentSpent(acct, 'x')).toBe('5');
    await expectRefused(acct, () => srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit', agentId: 'x' } }), 'BUDGET_EXCEEDED');

    // Other agents: one without a budget, one with its own budget, and usage with no agent.
    ok(await srv.gql(RECORD, { input: use(acct, '10', { agentId: 'y' }) }));
    ok(await srv.gql(RECORD, { input: use(acct, '1', { agentId: 'z' }) }));
    ok(await srv.gql(RECORD, { input: use(acct, '7') }));
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '1', { agentId: 'z' }) }), 'BUDGET_EXCEEDED');
    expect((await budgets(acct)).budgets).toEqual([
      { agentId: 'x', limit: '5', spent: '5' },
      { agentId: 'z', limit: '1', spent: '1' },
    ]);
    expect((await readAccount(srv, acct)).balance.total).toBe('77'); // 100 - 5 - 10 - 1 - 7
    await expectConsistent(srv, acct);
  });

  it('a budget of 0 refuses any paid usage of the agent but lets free usage through', async () => {
    const acct = await funded('10');
    await setAgent(acct, 'zero', '0');
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '0.000001', { agentId: 'zero' }) }), 'BUDGET_EXCEEDED');
    const free = ok(await srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'free', agentId: 'zero' } })).recordUsage;
    expect(free.cost).toBe('0');
    expect(await agentSpent(acct, 'zero')).toBe('0');
  });

  it("within the agent's budget the pool's own INSUFFICIENT_CREDITS still applies, with exact needed/available amounts", async () => {
    const acct = await funded('2.5');
    await setAgent(acct, 'x', '100');
    const err = await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '3', { agentId: 'x' }) }), 'INSUFFICIENT_CREDITS');
    expect(err.extensions).toMatchObject({ neededCredits: '3', availableCredits: '2.5' });
    expect(await agentSpent(acct, 'x')).toBe('0');
  });

  it('INSUFFICIENT_CREDITS counts active holds out of the available amount', async () => {
    const acct = await funded('5');
    ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '3', idempotencyKey: uniq('h') } }));
    const err = await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '2.25') }), 'INSUFFICIENT_CREDITS');
    expect(err.extensions).toMatchObject({ code: 'INSUFFICIENT_CREDITS', neededCredits: '2.25', availableCredits: '2' });
    const hold = await expectRefused(acct, () => srv.gql(RESERVE, { input: { accountId: acct, amount: '2.5', idempotencyKey: uniq('h') } }), 'INSUFFICIENT_CREDITS');
    expect(hold.extensions).toMatchObject({ neededCredits: '2.5', availableCredits: '2' });
  });

  it('100 concurrent 1-credit charges against a budget of 30: exactly 30 succeed, 70 BUDGET_EXCEEDED, spent = 30', async () => {
    const acct = await funded('1000');
    await setAgent(acct, 'X', '30');
    const results = await Promise.all(
      Array.from({ length: 100 }, () => srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('race'), category: 'unit', agentId: 'X' } })),
    );
    const okCount = results.filter((r) => !r.body.errors).length;
    const refused = results.filter((r) => r.body.errors);
    expect(okCount).toBe(30);
    expect(refused).toHaveLength(70);
    for (const r of refused) expectError(r, 'BUDGET_EXCEEDED');
    for (const r of results.filter((x) => !x.body.errors)) expect(r.body.data.recordUsage).toMatchObject({ cost: '1', agentId: 'X' });
    expect(await agentSpent(acct, 'X')).toBe('30');
    expect(await growthCounts(srv, acct)).toMatchObject({ events: 30 });
    expect((await readAccount(srv, acct)).balance.total).toBe('970');
    await expectConsistent(srv, acct);
  });

  it('holds with agentId count against the budget while active; a hold beyond the remaining budget is BUDGET_EXCEEDED', async () => {
    const acct = await funded('100');
    await setAgent(acct, 'x', '10');
    const hold = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '6', agentId: 'x', idempotencyKey: uniq('h') } })).reserveCredits;
    expect(await agentSpent(acct, 'x')).toBe('6');

    await expectRefused(acct, () => srv.gql(RESERVE, { input: { accountId: acct, amount: '4.5', agentId: 'x', idempotencyKey: uniq('h') } }), 'BUDGET_EXCEEDED');
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '5', { agentId: 'x' }) }), 'BUDGET_EXCEEDED');
    // Another agent's hold does not count against x.
    const other = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '20', agentId: 'y', idempotencyKey: uniq('h') } })).reserveCredits;
    ok(await srv.gql(RECORD, { input: use(acct, '4', { agentId: 'x' }) }));
    expect(await agentSpent(acct, 'x')).toBe('10');

    // Releasing the hold gives its room back.
    expect(ok(await srv.gql(RELEASE, { id: hold.id })).releaseReservation.status).toBe('RELEASED');
    expect(await agentSpent(acct, 'x')).toBe('4');
    const hold2 = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '6', agentId: 'x', idempotencyKey: uniq('h') } })).reserveCredits;
    expect(await agentSpent(acct, 'x')).toBe('10');

    // Settling 3 of the 6 held: spent = 4 + 3 used; the released rest no longer counts.
    const settled = ok(await srv.gql(SETTLE, { input: { reservationId: hold2.id, usage: [use(acct, '3', { agentId: 'x' })] } })).settleReservation;
    expect(settled).toMatchObject({ consumed: '3', status: 'SETTLED' });
    expect(await agentSpent(acct, 'x')).toBe('7');
    ok(await srv.gql(RELEASE, { id: other.id }));
    await expectConsistent(srv, acct);
  });

  it('a refunded usage event no longer counts as spent', async () => {
    const acct = await funded('10');
    await setAgent(acct, 'r', '4');
    const e = ok(await srv.gql(RECORD, { input: use(acct, '4', { agentId: 'r' }) })).recordUsage;
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '1', { agentId: 'r' }) }), 'BUDGET_EXCEEDED');
    ok(await srv.gql(`mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "test") { id refunded } }`, { id: e.id }));
    expect(await agentSpent(acct, 'r')).toBe('0');
    ok(await srv.gql(RECORD, { input: use(acct, '4', { agentId: 'r' }) }));
  });
});

describe('budget edge cases', () => {
  it('replaying a charge recorded before the budget was spent returns the first event, not BUDGET_EXCEEDED', async () => {
    const acct = await funded('10');
    await setAgent(acct, 'x', '2');
    const input = use(acct, '2', { agentId: 'x' });
    const first = ok(await srv.gql(RECORD, { input })).recordUsage;
    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(RECORD, { input })).recordUsage);
    expect(again.id).toBe(first.id);
    expect(await agentSpent(acct, 'x')).toBe('2');
  });

  it('recordUsageBatch (internal caller) refuses the items beyond the budget with errorCode BUDGET_EXCEEDED', async () => {
    const acct = await funded('10');
    await setAgent(acct, 'b', '3');
    const inputs = Array.from({ length: 5 }, () => ({ accountId: acct, idempotencyKey: uniq('b'), category: 'unit', agentId: 'b' }));
    const items = ok(await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { id cost } } }`, { inputs }))
      .recordUsageBatch;
    // Items of one account run in input order: the first 3 fit, the last 2 do not.
    expect(items.map((i: any) => i.errorCode)).toEqual([null, null, null, 'BUDGET_EXCEEDED', 'BUDGET_EXCEEDED']);
    expect(items.slice(3).every((i: any) => i.event === null && /budget/i.test(i.errorMessage))).toBe(true);
    expect(await growthCounts(srv, acct)).toMatchObject({ events: 3 });
    expect(await agentSpent(acct, 'b')).toBe('3');
  });

  it('a negative limit is BAD_USER_INPUT; an unknown account is NOT_FOUND', async () => {
    const acct = await funded('1');
    const res = await expectUnchanged(srv, [acct], () => srv.gql(SET_AGENT, { accountId: acct, agentId: 'x', limit: '-1' }));
    expectError(res, 'BAD_USER_INPUT');
    expect((await budgets(acct)).budgets).toEqual([]);
    const missing = gid('Account', '00000000-0000-4000-8000-000000000000');
    expectError(await srv.gql(SET_AGENT, { accountId: missing, agentId: 'x', limit: '1' }), 'NOT_FOUND');
  });
});

describe('user budgets', () => {
  it('setUserBudget limits usage and holds with that userId the same way', async () => {
    const acct = await funded('100');
    ok(await srv.gql(SET_USER, { accountId: acct, userId: 'u-1', limit: '3' }));
    ok(await srv.gql(RECORD, { input: use(acct, '2', { userId: 'u-1' }) }));
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '1.5', { userId: 'u-1' }) }), 'BUDGET_EXCEEDED');
    await expectRefused(acct, () => srv.gql(RESERVE, { input: { accountId: acct, amount: '2', userId: 'u-1', idempotencyKey: uniq('h') } }), 'BUDGET_EXCEEDED');
    ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '1', userId: 'u-1', idempotencyKey: uniq('h') } }));
    ok(await srv.gql(RECORD, { input: use(acct, '10', { userId: 'u-2' }) })); // another user, no budget
    expect((await budgets(acct)).userBudgets).toEqual([{ userId: 'u-1', limit: '3', spent: '3' }]);
    expect((await budgets(acct)).budgets).toEqual([]);
  });

  it("an agent within its budget is still refused when the user's budget is spent", async () => {
    const acct = await funded('100');
    await setAgent(acct, 'bot', '50');
    ok(await srv.gql(SET_USER, { accountId: acct, userId: 'u-9', limit: '2' }));
    ok(await srv.gql(RECORD, { input: use(acct, '2', { userId: 'u-9', agentId: 'bot' }) }));
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '1', { userId: 'u-9', agentId: 'bot' }) }), 'BUDGET_EXCEEDED');
    ok(await srv.gql(RECORD, { input: use(acct, '1', { userId: 'u-10', agentId: 'bot' }) }));
    expect(await agentSpent(acct, 'bot')).toBe('3');
  });
});

describe('budgets across a billing period change', () => {
  it('a test-mode account spends its whole budget; one month later the same agent can spend again from 0', async () => {
    const start = '2030-03-10T09:00:00.000Z';
    const acct = await funded('100', start);
    await setAgent(acct, 'agent-p', '5');
    ok(await srv.gql(RECORD, { input: use(acct, '5', { agentId: 'agent-p' }) }));
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '1', { agentId: 'agent-p' }) }), 'BUDGET_EXCEEDED');
    expect(await agentSpent(acct, 'agent-p')).toBe('5');

    // advanceTestClock comes with issue #4; until then the test clock is moved in the database.
    const moveClock = (at: string) => srv.services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1 AND test_mode', [dbId(acct), at]);
    // 1 ms before the period ends: still the first period.
    expect((await moveClock('2030-04-10T08:59:59.999Z')).rowCount).toBe(1);
    expect(await agentSpent(acct, 'agent-p')).toBe('5');
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '1', { agentId: 'agent-p' }) }), 'BUDGET_EXCEEDED');

    // The next period starts one calendar month after creation.
    expect((await moveClock('2030-04-10T09:00:00.000Z')).rowCount).toBe(1);
    expect(await agentSpent(acct, 'agent-p')).toBe('0');
    ok(await srv.gql(RECORD, { input: use(acct, '5', { agentId: 'agent-p' }) }));
    expect(await agentSpent(acct, 'agent-p')).toBe('5');
    await expectRefused(acct, () => srv.gql(RECORD, { input: use(acct, '0.5', { agentId: 'agent-p' }) }), 'BUDGET_EXCEEDED');
    expect((await readAccount(srv, acct)).balance.total).toBe('90');
    await expectConsistent(srv, acct);
  });
});

/**
 * Usage captured against a hold is the hold's agent's and user's (README "Budgets inside a
 * pool"), on both charge paths: without agentId/userId it takes the hold's (and counts against
 * their budgets, so reserve, capture unlabelled, reserve again cannot pass a budget); naming
 * another than the hold has is BAD_USER_INPUT; a subject the hold has none of is checked like a
 * charge without a hold.
 */
describe.each(['group', 'naive'])('usage captured against a hold (CHARGE_PATH=%s)', (chargePath) => {
  let cs: TestServer;
  beforeAll(async () => {
    cs = await startTestServer({ CHARGE_PATH: chargePath });
  });
  afterAll(async () => {
    await cs?.close();
  });

  const account = async (paid: string) => {
    const id = (await createAccount(cs)).id;
    await grant(cs, id, paid, 'PAID');
    return id;
  };
  const spentOf = async (accountId: string) => ok(await cs.gql(BUDGETS, { id: accountId })).account as { budgets: { agentId: string; spent: string }[]; userBudgets: { userId: string; spent: string }[] };
  const reserve = async (accountId: string, amount: string, extra: Record<string, unknown> = {}) =>
    ok(await cs.gql(RESERVE, { input: { accountId, amount, idempotencyKey: uniq('h'), ...extra } })).reserveCredits.id as string;
  /** Expects `op` refused with `code`, nothing of the account changed; returns the error. */
  const refused = async (accountId: string, op: () => Promise<any>, code: string) => {
    const before = await growthCounts(cs, accountId);
    const error = expectError(await expectUnchanged(cs, [accountId], op), code);
    expect(await growthCounts(cs, accountId)).toEqual(before);
    return error;
  };

  it("a capture and a settle's usage without agentId/userId are recorded under the hold's and count against its budget after the settle", async () => {
    const acct = await account('100');
    ok(await cs.gql(SET_AGENT, { accountId: acct, agentId: 'cap-a', limit: '10' }));
    ok(await cs.gql(SET_USER, { accountId: acct, userId: 'cap-u', limit: '10' }));
    const hold = await reserve(acct, '6', { agentId: 'cap-a', userId: 'cap-u' });
    const e = ok(await cs.gql(RECORD, { input: use(acct, '4', { reservationId: hold }) })).recordUsage;
    expect(e).toMatchObject({ cost: '4', agentId: 'cap-a', userId: 'cap-u', reservation: { id: hold } });
    ok(await cs.gql(SETTLE, { input: { reservationId: hold, usage: [use(acct, '2', { userId: 'cap-u' })] } }));
    expect(await spentOf(acct)).toEqual({ budgets: [{ agentId: 'cap-a', limit: '10', spent: '6' }], userBudgets: [{ userId: 'cap-u', limit: '10', spent: '6' }] });
    // The room left is 4: another hold of 6 is over the budget.
    await refused(acct, () => cs.gql(RESERVE, { input: { accountId: acct, amount: '6', agentId: 'cap-a', idempotencyKey: uniq('h') } }), 'BUDGET_EXCEEDED');
    await refused(acct, () => cs.gql(RESERVE, { input: { accountId: acct, amount: '6', userId: 'cap-u', idempotencyKey: uniq('h') } }), 'BUDGET_EXCEEDED');
    await expectConsistent(cs, acct);
  });

  it("naming another agent or user than the hold's is BAD_USER_INPUT on recordUsage, settleReservation and recordUsageBatch, and records nothing", async () => {
    const acct = await account('100');
    const hold = await reserve(acct, '5', { agentId: 'own-a', userId: 'own-u' });
    const agentErr = await refused(acct, () => cs.gql(RECORD, { input: use(acct, '1', { reservationId: hold, agentId: 'other-a' }) }), 'BAD_USER_INPUT');
    expect(agentErr.message).toMatch(/^agentId: must be the reservation's agentId or be omitted/);
    const userErr = await refused(acct, () => cs.gql(RECORD, { input: use(acct, '1', { reservationId: hold, userId: 'other-u' }) }), 'BAD_USER_INPUT');
    expect(userErr.message).toMatch(/^userId: must be the reservation's userId or be omitted/);
    await refused(acct, () => cs.gql(SETTLE, { input: { reservationId: hold, usage: [use(acct, '1', { agentId: 'other-a' })] } }), 'BAD_USER_INPUT');
    const items = ok(
      await cs.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { id agentId userId } } }`, {
        inputs: [use(acct, '1', { reservationId: hold }), use(acct, '1', { reservationId: hold, agentId: 'other-a' })],
      }),
    ).recordUsageBatch;
    expect(items.map((i: any) => i.errorCode)).toEqual([null, 'BAD_USER_INPUT']);
    expect(items[0].event).toMatchObject({ agentId: 'own-a', userId: 'own-u' });
    expect(items[1].errorMessage).toMatch(/^agentId: /);
    expect(ok(await cs.gql(SETTLE, { input: { reservationId: hold, usage: [use(acct, '1', { agentId: 'own-a', userId: 'own-u' })] } })).settleReservation).toMatchObject({
      consumed: '2',
      status: 'SETTLED',
    });
    await expectConsistent(cs, acct);
  });

  it('a hold without an agent: a capture naming an agent with a budget is checked against that budget like a charge without a hold', async () => {
    const acct = await account('100');
    ok(await cs.gql(SET_AGENT, { accountId: acct, agentId: 'late-a', limit: '2' }));
    const hold = await reserve(acct, '5');
    await refused(acct, () => cs.gql(RECORD, { input: use(acct, '3', { reservationId: hold, agentId: 'late-a' }) }), 'BUDGET_EXCEEDED');
    expect(ok(await cs.gql(RECORD, { input: use(acct, '2', { reservationId: hold, agentId: 'late-a' }) })).recordUsage).toMatchObject({ agentId: 'late-a', userId: null });
    expect((await spentOf(acct)).budgets).toEqual([{ agentId: 'late-a', limit: '2', spent: '2' }]);
    await refused(acct, () => cs.gql(SETTLE, { input: { reservationId: hold, usage: [use(acct, '1', { agentId: 'late-a' })] } }), 'BUDGET_EXCEEDED');
    ok(await cs.gql(SETTLE, { input: { reservationId: hold, usage: [use(acct, '1', { agentId: 'free-a' })] } })); // no budget: free to name
    await expectConsistent(cs, acct);
  });
});
