/**
 * Input a serious billing system refuses although it could store it:
 * - control characters (Unicode Cc) and line separators in one-line identifiers and labels
 *   (idempotency keys, external ids, names, usage labels, budget subjects, grant references,
 *   price-book selectors): they split usage breakdowns by labels that look alike and forge lines
 *   in logs and exports. Free-text reasons may hold tab, LF and CR, nothing else of Cc;
 * - an occurredAt more than 5 minutes after the account's current time (Stripe's rule for meter
 *   events): it was priced at a future instant and counted in a future month;
 * - usage(filter:) with `to` before `from`, which usageSummary refuses too (it gave an empty page).
 * Every refusal is checked for its code and message and that nothing was written anywhere; every
 * rule has a control that is accepted.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectRefusedUnchanged, gid, ok, refusalTargets, uniq, type GqlResponse, type RefusalTargets } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id occurredAt agentId taskId } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { id occurredAt } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const CREATE = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`;
const QUOTE = `query($input: RecordUsageInput!) { quote(input: $input) { cost } }`;
const USAGE = `query($id: ID!, $filter: UsageFilter) { account(id: $id) { usage(first: 50, filter: $filter) { edges { node { id } } } } }`;
const REFUND = `mutation($id: ID!, $r: String!) { refundUsage(usageEventId: $id, reason: $r) { id } }`;

let srv: TestServer;
/** The account the bad requests target (funded, with one hold, one grant and one event), and a bystander. */
let t: RefusalTargets;

beforeAll(async () => {
  srv = await startTestServer();
  t = await refusalTargets(srv);
});

afterAll(async () => {
  await srv?.close();
});

/** Sends the request, asserts one error with `code` and `message`, and that nothing changed anywhere. */
const expectRejected = (send: () => Promise<GqlResponse>, code: string, message: RegExp, accounts = [t.acct, t.other]) => expectRefusedUnchanged(srv, accounts, send, code, message);

const usageInput = (extra: Record<string, unknown> = {}) => ({ accountId: t.acct, idempotencyKey: uniq('u'), category: 'unit', ...extra });

describe('control characters and line breaks in one-line identifiers and labels', () => {
  const ONE_LINE = (field: string) => new RegExp(`^${field.replace(/[.[\]]/g, '\\$&')}: must not contain control characters or line breaks$`);
  // One of each kind: C0 (ESC, LF, CR, TAB, BEL), DEL, C1 (NEL, CSI), LINE SEPARATOR, PARAGRAPH SEPARATOR.
  const cases: Array<[string, string, () => Promise<GqlResponse>]> = [
    ['recordUsage category with an ANSI colour (ESC)', 'category', () => srv.gql(RECORD, { input: usageInput({ category: 'unit\u001b[31m' }) })],
    ['recordUsage model with LF', 'model', () => srv.gql(RECORD, { input: usageInput({ model: 'gpt-4o\nfake log line' }) })],
    ['recordUsage tier with TAB', 'tier', () => srv.gql(RECORD, { input: usageInput({ tier: 'fast\t' }) })],
    ['recordUsage sku with DEL', 'sku', () => srv.gql(RECORD, { input: usageInput({ sku: 'a\u007f' }) })],
    ['recordUsage agentId with CR', 'agentId', () => srv.gql(RECORD, { input: usageInput({ agentId: 'agent\r1' }) })],
    ['recordUsage userId with NEL (C1)', 'userId', () => srv.gql(RECORD, { input: usageInput({ userId: 'u\u0085' }) })],
    ['recordUsage taskId with LINE SEPARATOR', 'taskId', () => srv.gql(RECORD, { input: usageInput({ taskId: 't\u2028' }) })],
    ['recordUsage conversationId with PARAGRAPH SEPARATOR', 'conversationId', () => srv.gql(RECORD, { input: usageInput({ conversationId: '\u2029' }) })],
    ['recordUsage messageId with CSI (C1)', 'messageId', () => srv.gql(RECORD, { input: usageInput({ messageId: 'm\u009b2J' }) })],
    ['recordUsage idempotencyKey with DEL (C0 was refused before, DEL was not)', 'idempotencyKey', () => srv.gql(RECORD, { input: usageInput({ idempotencyKey: `k\u007f${randomUUID()}` }) })],
    ['quote agentId with BEL', 'agentId', () => srv.gql(QUOTE, { input: usageInput({ agentId: '\u0007' }) })],
    ['reserveCredits agentId with LF', 'agentId', () => srv.gql(RESERVE, { input: { accountId: t.acct, amount: '1', idempotencyKey: uniq('h'), agentId: 'a\nb' } })],
    ['reserveCredits idempotencyKey with NEL', 'idempotencyKey', () => srv.gql(RESERVE, { input: { accountId: t.acct, amount: '1', idempotencyKey: `h\u0085${randomUUID()}` } })],
    ['settleReservation usage item taskId with ESC', 'taskId', () => srv.gql(SETTLE, { input: { reservationId: t.holdId, usage: [usageInput({ taskId: '\u001b' })] } })],
    ['createAccount externalId with LF', 'externalId', () => srv.gql(CREATE, { input: { externalId: `x\n${randomUUID()}`, name: 'n', kind: 'USER' } })],
    ['createAccount name with ESC', 'name', () => srv.gql(CREATE, { input: { externalId: uniq('x'), name: 'Acme\u001b]0;pwned\u0007', kind: 'USER' } })],
    ['grantCredits reference with CR LF', 'reference', () => srv.gql(GRANT, { input: { accountId: t.acct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g'), reference: 'ticket 1\r\nticket 2' } })],
    ['grantCredits idempotencyKey with TAB', 'idempotencyKey', () => srv.gql(GRANT, { input: { accountId: t.acct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: `g\t${randomUUID()}` } })],
    ['setAgentBudget agentId with TAB', 'agentId', () => srv.gql(`mutation($id: ID!, $a: String!) { setAgentBudget(accountId: $id, agentId: $a, limit: "5") { agentId } }`, { id: t.acct, a: 'a\tb' })],
    ['setUserBudget userId with DEL', 'userId', () => srv.gql(`mutation($id: ID!, $u: String!) { setUserBudget(accountId: $id, userId: $u, limit: "5") { userId } }`, { id: t.acct, u: 'u\u007f' })],
    ['createCreditPack name with LF', 'name', () => srv.gql(`mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`, { input: { name: 'Pack\nB', credits: '10', priceUsd: '1' } })],
    ['createPlan name with ESC', 'name', () => srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, { input: { name: `Pro\u001b${randomUUID()}`, monthlyCredits: '10', priceUsd: '1', rollover: 'RESET' } })],
    ['publishPriceBook name with LF', 'name', () => srv.gql(`mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`, { input: { name: 'a\nb', rules: [{ category: 'unit', kind: 'FLAT', credits: '1' }] } })],
    ['publishPriceBook rule model with NEL', 'rules[0].model', () => srv.gql(`mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`, { input: { name: 'n', rules: [{ category: 'llm', model: 'gpt\u0085', kind: 'FLAT', credits: '1' }] } })],
    ['purchaseCreditPack idempotencyKey with LF', 'idempotencyKey', () => srv.gql(`mutation($id: ID!, $p: ID!, $k: String!) { purchaseCreditPack(accountId: $id, packId: $p, idempotencyKey: $k) { id } }`, { id: t.acct, p: gid('CreditPack', randomUUID()), k: 'k\nk' })],
  ];
  for (const [name, field, send] of cases) {
    it(`${name} is BAD_USER_INPUT naming ${field} and writes nothing`, async () => {
      const error = await expectRejected(send, 'BAD_USER_INPUT', ONE_LINE(field));
      expect(error.extensions).toMatchObject({ field });
    });
  }

  it('recordUsageBatch: the item with a control character fails alone, with its code and message; the others are recorded', async () => {
    const own = await apiAccount(srv, { paid: '5' });
    const inputs = [usageInput({ accountId: own }), usageInput({ accountId: own, agentId: 'a\u001bb' }), usageInput({ accountId: own })];
    const items = ok(await srv.gql(BATCH, { inputs })).recordUsageBatch;
    expect(items.map((i: { errorCode: string | null }) => i.errorCode)).toEqual([null, 'BAD_USER_INPUT', null]);
    expect(items[1].errorMessage).toMatch(ONE_LINE('agentId'));
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [dbId(own)]);
    expect(rows[0].n).toBe(2);
  });

  it('printable labels in any script, with spaces and emoji, are recorded as sent (control)', async () => {
    const own = await apiAccount(srv, { paid: '5' });
    const agentId = 'агент 1 · 研究 🤖';
    const taskId = 'task: "quarterly report" (v2)';
    const e = ok(await srv.gql(RECORD, { input: usageInput({ accountId: own, agentId, taskId, idempotencyKey: `ключ ${randomUUID()}` }) })).recordUsage;
    expect(e).toMatchObject({ agentId, taskId });
  });
});

describe('free-text reasons', () => {
  const MULTI = /^reason: must not contain control characters other than tab, line feed and carriage return$/;

  it('a refund reason with ESC or a LINE SEPARATOR is BAD_USER_INPUT and refunds nothing', async () => {
    for (const r of ['refund \u001b[2J', 'a\u2028b', 'bell\u0007']) await expectRejected(() => srv.gql(REFUND, { id: t.eventId, r }), 'BAD_USER_INPUT', MULTI);
  });

  it('a void reason with DEL is BAD_USER_INPUT and voids nothing', async () => {
    await expectRejected(() => srv.gql(`mutation($id: ID!, $r: String!) { voidGrant(grantId: $id, reason: $r) { id } }`, { id: t.grantId, r: 'oops\u007f' }), 'BAD_USER_INPUT', MULTI);
  });

  it('a reason over several lines, with tabs, is kept as sent (control)', async () => {
    const own = await apiAccount(srv, { paid: '5' });
    const ev = ok(await srv.gql(RECORD, { input: usageInput({ accountId: own }) })).recordUsage.id;
    const reason = 'Ticket 4711:\r\n\tthe model timed out\n\tno answer was delivered';
    ok(await srv.gql(REFUND, { id: ev, r: reason }));
    const { rows } = await srv.services.pool.query('SELECT refund_reason FROM usage_events WHERE id = $1', [dbId(ev)]);
    expect(rows[0].refund_reason).toBe(reason);
  });
});

describe('occurredAt after the account\'s current time', () => {
  const AHEAD = /^occurredAt: must not be more than 5 minutes after the account's current time \(/;
  /** A test-mode account whose clock stands at 2030-01-01T00:00:00Z, funded. */
  async function clockAccount(): Promise<string> {
    const id = ok(
      await srv.gql(CREATE, { input: { externalId: uniq('clock'), name: 'Clock', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: '2030-01-01T00:00:00Z' } }),
    ).createAccount.id as string;
    ok(await srv.gql(GRANT, { input: { accountId: id, amount: '50', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }));
    return id;
  }

  it('on a test clock: 5 minutes ahead is recorded, 1 ms more is BAD_USER_INPUT and records nothing (recordUsage, quote, an item of a settle)', async () => {
    const own = await clockAccount();
    const at = ok(await srv.gql(RECORD, { input: usageInput({ accountId: own, occurredAt: '2030-01-01T00:05:00.000Z' }) })).recordUsage;
    expect(at.occurredAt).toBe('2030-01-01T00:05:00.000Z');
    const late = '2030-01-01T00:05:00.001Z';
    const message = /^occurredAt: must not be more than 5 minutes after the account's current time \(2030-01-01T00:00:00\.000Z\)$/;
    await expectRejected(() => srv.gql(RECORD, { input: usageInput({ accountId: own, occurredAt: late }) }), 'BAD_USER_INPUT', message, [own]);
    await expectRejected(() => srv.gql(QUOTE, { input: usageInput({ accountId: own, occurredAt: late }) }), 'BAD_USER_INPUT', message, [own]);
    const hold = ok(await srv.gql(RESERVE, { input: { accountId: own, amount: '2', idempotencyKey: uniq('h') } })).reserveCredits.id;
    await expectRejected(() => srv.gql(SETTLE, { input: { reservationId: hold, usage: [usageInput({ accountId: own, occurredAt: '2031-06-01T00:00:00Z' })] } }), 'BAD_USER_INPUT', message, [own]);
    // Once the clock moves on, the same instant is in the past and recorded.
    ok(await srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id: own, to: '2030-01-01T01:00:00Z' }));
    expect(ok(await srv.gql(RECORD, { input: usageInput({ accountId: own, occurredAt: late }) })).recordUsage.occurredAt).toBe(late);
  });

  it('a live account: an hour ahead is BAD_USER_INPUT, a minute ahead and a year back are recorded (control)', async () => {
    const own = await apiAccount(srv, { paid: '5' });
    const hourAhead = new Date(Date.now() + 3_600_000).toISOString();
    await expectRejected(() => srv.gql(RECORD, { input: usageInput({ accountId: own, occurredAt: hourAhead }) }), 'BAD_USER_INPUT', AHEAD, [own]);
    await expectRejected(() => srv.gql(RECORD, { input: usageInput({ accountId: own, occurredAt: '9999-12-31T23:59:59.999Z' }) }), 'BAD_USER_INPUT', AHEAD, [own]);
    for (const occurredAt of [new Date(Date.now() + 60_000).toISOString(), new Date(Date.now() - 365 * 86_400_000).toISOString()]) {
      expect(ok(await srv.gql(RECORD, { input: usageInput({ accountId: own, occurredAt }) })).recordUsage.occurredAt).toBe(occurredAt);
    }
  });

  it('recordUsageBatch: the item dated ahead fails alone with BAD_USER_INPUT; the others are recorded', async () => {
    const own = await clockAccount();
    const inputs = [usageInput({ accountId: own }), usageInput({ accountId: own, occurredAt: '2030-02-01T00:00:00Z' }), usageInput({ accountId: own, occurredAt: '2029-12-31T00:00:00Z' })];
    const items = ok(await srv.gql(BATCH, { inputs })).recordUsageBatch;
    expect(items.map((i: { errorCode: string | null }) => i.errorCode)).toEqual([null, 'BAD_USER_INPUT', null]);
    expect(items[1].errorMessage).toMatch(AHEAD);
    expect(items[2].event.occurredAt).toBe('2029-12-31T00:00:00.000Z');
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [dbId(own)]);
    expect(rows[0].n).toBe(2);
  });
});

describe('usage(filter:) range', () => {
  it('to before from is BAD_USER_INPUT, as usageSummary answers; to equal to from is an empty page (control)', async () => {
    const res = await srv.gql(USAGE, { id: t.acct, filter: { from: '2026-02-01T00:00:00Z', to: '2026-01-01T00:00:00Z' } });
    const error = expectError(res, 'BAD_USER_INPUT');
    expect(error.message).toBe('filter.to: must not be before filter.from');
    expect(error.extensions).toMatchObject({ field: 'filter.to' });
    const summary = await srv.gql(`query($id: ID!) { account(id: $id) { usageSummary(from: "2026-02-01T00:00:00Z", to: "2026-01-01T00:00:00Z", groupBy: [CATEGORY]) { credits } } }`, { id: t.acct });
    expectError(summary, 'BAD_USER_INPUT');
    const empty = ok(await srv.gql(USAGE, { id: t.acct, filter: { from: '2026-02-01T00:00:00Z', to: '2026-02-01T00:00:00Z' } }));
    expect(empty.account.usage.edges).toEqual([]);
    // And a range that holds the account's event finds it.
    const all = ok(await srv.gql(USAGE, { id: t.acct, filter: { from: '2000-01-01T00:00:00Z', to: new Date(Date.now() + 60_000).toISOString() } }));
    expect(all.account.usage.edges.map((e: { node: { id: string } }) => e.node.id)).toContain(t.eventId);
  });
});
