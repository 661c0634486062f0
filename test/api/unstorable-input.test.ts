/**
 * Input the database or JavaScript cannot hold as sent, found by an audit to answer a masked
 * INTERNAL_SERVER_ERROR (or to be stored altered) instead of BAD_USER_INPUT:
 * - DateTime values outside 0001-01-01 .. 9999-12-31 UTC, or of dates that do not exist;
 * - strings with U+0000 or an unpaired UTF-16 surrogate in any argument (PostgreSQL refuses NUL
 *   and turns a lone surrogate into U+FFFD, so two idempotency keys became one);
 * - metadata nested beyond 32 levels (stack overflow in the request hash) or with a JSON number
 *   JavaScript cannot hold (1e400, silently stored as null);
 * - reserveCredits agentId / userId beyond the 1..200 characters recordUsage allows;
 * and the neighbouring edge answers: an operationName the document does not define
 * (OPERATION_RESOLUTION_FAILURE, not a contract code) and taskCost of a missing account.
 * Every refusal is checked for its code and message and that nothing was written anywhere.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectRefusedUnchanged, expectUnchanged, gid, ok, refusalTargets, uniq, type GqlResponse } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id occurredAt metadata } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { id } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const CREATE = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`;
const USAGE = `query($id: ID!, $filter: UsageFilter) { account(id: $id) { usage(first: 5, filter: $filter) { edges { node { id occurredAt } } } } }`;
const TASK_COST = `query($id: ID!, $t: String!) { taskCost(accountId: $id, taskId: $t) { credits events } }`;

let srv: TestServer;
/** The account the bad requests target (funded, with one hold, one grant and one event), and a bystander. */
let acct: string;
let other: string;
let holdId: string;
let grantId: string;
let eventId: string;

beforeAll(async () => {
  srv = await startTestServer();
  ({ acct, other, grantId, eventId, holdId } = await refusalTargets(srv));
});

afterAll(async () => {
  await srv?.close();
});

/** Sends the request, asserts one error with `code` and `message`, and that nothing changed anywhere. */
const expectRejected = (send: () => Promise<GqlResponse>, code: string, message: RegExp) => expectRefusedUnchanged(srv, [acct, other], send, code, message);

/** POSTs a raw JSON body (for JSON numbers JavaScript cannot hold, like 1e400). */
async function rawGql(body: string): Promise<GqlResponse> {
  const res = await fetch(srv.url, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${srv.adminKey}` }, body });
  return { status: res.status, body: (await res.json()) as GqlResponse['body'] };
}

const usageInput = (extra: Record<string, unknown> = {}) => ({ accountId: acct, idempotencyKey: uniq('u'), category: 'unit', ...extra });
const reserveInput = (extra: Record<string, unknown> = {}) => ({ accountId: acct, amount: '1', idempotencyKey: uniq('h'), ...extra });

describe('DateTime inputs outside what PostgreSQL and JavaScript round-trip', () => {
  const RANGE = /DateTime must be between 0001-01-01T00:00:00\.000Z and 9999-12-31T23:59:59\.999Z/;
  const INVALID = /is not a valid date and time/;
  const cases: Array<[string, RegExp]> = [
    ['0000-01-01T00:00:00Z', RANGE],
    ['0001-01-01T00:00:00+01:00', RANGE], // 0000-12-31T23:00Z
    ['9999-12-31T23:59:59-05:00', RANGE], // 10000-01-01T04:59:59Z
    ['2099-02-30T00:00:00Z', INVALID], // Date.parse rolls it over to 2099-03-02
    ['2100-02-29T00:00:00Z', INVALID], // 2100 is not a leap year
    ['2026-04-31T00:00:00Z', INVALID],
    ['2026-13-01T00:00:00Z', INVALID],
    ['2026-01-01T24:00:00Z', INVALID],
    ['2026-01-01T10:60:00Z', INVALID],
    ['2026-01-01T10:00:00+05:60', INVALID],
  ];
  for (const [occurredAt, message] of cases) {
    it(`recordUsage occurredAt ${occurredAt} is BAD_USER_INPUT and records nothing`, async () => {
      await expectRejected(() => srv.gql(RECORD, { input: usageInput({ occurredAt }) }), 'BAD_USER_INPUT', message);
    });
  }

  it('the same values as literals in the query document are BAD_USER_INPUT', async () => {
    for (const [occurredAt, message] of [cases[0]!, cases[3]!]) {
      const q = `mutation { recordUsage(input: { accountId: "${acct}", idempotencyKey: "${uniq('u')}", category: "unit", occurredAt: "${occurredAt}" }) { id } }`;
      await expectRejected(() => srv.gql(q), 'BAD_USER_INPUT', message);
    }
  });

  it('createAccount with testClockStart in year 0 is BAD_USER_INPUT and creates no account', async () => {
    const externalId = uniq('clock');
    const input = { externalId, name: 'Year zero', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: '0000-01-01T00:00:00Z' };
    await expectRejected(() => srv.gql(CREATE, { input }), 'BAD_USER_INPUT', RANGE);
    expect(ok(await srv.gql(`query($e: String!) { accountByExternalId(externalId: $e) { id } }`, { e: externalId })).accountByExternalId).toBeNull();
  });

  it('a test clock later than 9989-12-31T23:59:59.999Z (testClockStart, advanceTestClock to) is BAD_USER_INPUT and changes nothing: the instants it derives (expiries, periods) must stay readable', async () => {
    // A clock at 9999-12-31T23:00Z was accepted: its welcome bonus expired in year 10000 and
    // every later read of the account's batches or holds was an INTERNAL_SERVER_ERROR.
    const LATE = /^(testClockStart|to): a test clock must not pass 9989-12-31T23:59:59\.999Z/;
    const externalId = uniq('clock');
    const input = { externalId, name: 'Late clock', kind: 'ORGANIZATION', testMode: true, testClockStart: '9999-12-31T23:00:00Z' };
    await expectRejected(() => srv.gql(CREATE, { input }), 'BAD_USER_INPUT', LATE);
    expect(ok(await srv.gql(`query($e: String!) { accountByExternalId(externalId: $e) { id } }`, { e: externalId })).accountByExternalId).toBeNull();
    // Control: the last allowed start, its welcome bonus, a week-long hold and a plan period all read back.
    const last = ok(await srv.gql(CREATE, { input: { ...input, externalId: uniq('clock'), testClockStart: '9989-12-31T23:59:59.999Z' } })).createAccount.id;
    ok(await srv.gql(RESERVE, { input: { accountId: last, amount: '1', idempotencyKey: uniq('h'), ttlSeconds: 604800 } }));
    const read = ok(await srv.gql(`query($id: ID!) { account(id: $id) { balance { periodEnd } batches { expiresAt } reservations { expiresAt } } }`, { id: last })).account;
    expect(read.batches[0].expiresAt).toMatch(/^9990-/);
    expect(read.reservations[0].expiresAt).toMatch(/^9990-01-07T/);
    // advanceTestClock past the same bound is refused and moves nothing.
    const clock = async () => (await srv.services.pool.query('SELECT test_clock_at FROM accounts WHERE id = $1', [dbId(last)])).rows[0].test_clock_at as Date;
    const before = await clock();
    const res = await expectUnchanged(srv, [last], () => srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id: last, to: '9999-12-31T23:00:00Z' }));
    expect(expectError(res, 'BAD_USER_INPUT').message).toMatch(LATE);
    expect(await clock()).toEqual(before);
  });

  it('grantCredits expiresAt in year 10000 (UTC) is BAD_USER_INPUT', async () => {
    const input = { accountId: acct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g'), expiresAt: '9999-12-31T23:59:59-00:01' };
    await expectRejected(() => srv.gql(GRANT, { input }), 'BAD_USER_INPUT', RANGE);
  });

  it('usage(filter: {from}) in year 0 is BAD_USER_INPUT, not a database error', async () => {
    const res = await srv.gql(USAGE, { id: acct, filter: { from: '0000-01-01T00:00:00Z' } });
    expect(expectError(res, 'BAD_USER_INPUT').message).toMatch(RANGE);
  });

  it('the first and last instants of the range are recorded and read back (control)', async () => {
    // An occurredAt may not lie more than 5 minutes after the account's time (input-hygiene.test.ts),
    // so the last instant is read back as a batch's expiry instead.
    const own = await apiAccount(srv, { paid: '5' });
    const ids: string[] = [];
    for (const occurredAt of ['0001-01-01T00:00:00Z', '2024-02-29T23:30:00-01:00']) {
      const e = ok(await srv.gql(RECORD, { input: { ...usageInput({ occurredAt }), accountId: own } })).recordUsage;
      expect(e.occurredAt).toBe(new Date(occurredAt).toISOString());
      ids.push(e.id);
    }
    const read = ok(await srv.gql(USAGE, { id: own })).account.usage.edges.map((e: { node: { id: string; occurredAt: string } }) => e.node);
    expect(read.map((n: { occurredAt: string }) => n.occurredAt).sort()).toEqual(['0001-01-01T00:00:00.000Z', '2024-03-01T00:30:00.000Z']);
    expect(read.map((n: { id: string }) => n.id).sort()).toEqual([...ids].sort());
    ok(await srv.gql(GRANT, { input: { accountId: own, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g'), expiresAt: '9999-12-31T23:59:59.999Z' } }));
    const batches = ok(await srv.gql(`query($id: ID!) { account(id: $id) { batches { expiresAt } } }`, { id: own })).account.batches;
    expect(batches.map((b: { expiresAt: string | null }) => b.expiresAt)).toContain('9999-12-31T23:59:59.999Z');
  });
});

describe('strings PostgreSQL cannot store as sent (U+0000, unpaired surrogates)', () => {
  const NUL = 'a\u0000b';
  const message = (path: string) => new RegExp(`^${path.replace(/[$[\].()]/g, '\\$&')}: must not contain U\\+0000 \\(NUL\\) or an unpaired UTF-16 surrogate$`);
  const cases: Array<[string, string, () => Promise<GqlResponse>]> = [
    ['createAccount externalId', '$input.externalId', () => srv.gql(CREATE, { input: { externalId: `x${NUL}`, name: 'n', kind: 'USER' } })],
    ['createAccount name', '$input.name', () => srv.gql(CREATE, { input: { externalId: uniq('x'), name: NUL, kind: 'USER' } })],
    ['grantCredits reference', '$input.reference', () => srv.gql(GRANT, { input: { accountId: acct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g'), reference: NUL } })],
    ['grantCredits idempotencyKey (lone high surrogate)', '$input.idempotencyKey', () => srv.gql(GRANT, { input: { accountId: acct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: 'sur-\ud800' } })],
    ['voidGrant reason', '$r', () => srv.gql(`mutation($id: ID!, $r: String!) { voidGrant(grantId: $id, reason: $r) { id } }`, { id: grantId, r: NUL })],
    ['refundUsage reason', '$r', () => srv.gql(`mutation($id: ID!, $r: String!) { refundUsage(usageEventId: $id, reason: $r) { id } }`, { id: eventId, r: NUL })],
    ['recordUsage model', '$input.model', () => srv.gql(RECORD, { input: usageInput({ model: NUL }) })],
    ['recordUsage agentId (lone low surrogate)', '$input.agentId', () => srv.gql(RECORD, { input: usageInput({ agentId: '\udc00' }) })],
    ['recordUsage idempotencyKey', '$input.idempotencyKey', () => srv.gql(RECORD, { input: usageInput({ idempotencyKey: `k${NUL}` }) })],
    ['recordUsage messageId', '$input.messageId', () => srv.gql(RECORD, { input: usageInput({ messageId: NUL }) })],
    ['recordUsage metadata value', '$input.metadata.notes[1]', () => srv.gql(RECORD, { input: usageInput({ metadata: { notes: ['ok', NUL] } }) })],
    ['recordUsage metadata key', `$input.metadata.${NUL}`, () => srv.gql(RECORD, { input: usageInput({ metadata: { [NUL]: 1 } }) })],
    ['reserveCredits agentId', '$input.agentId', () => srv.gql(RESERVE, { input: reserveInput({ agentId: NUL }) })],
    ['settleReservation usage item taskId', '$input.usage[0].taskId', () => srv.gql(SETTLE, { input: { reservationId: holdId, usage: [usageInput({ taskId: NUL })] } })],
    ['setAgentBudget agentId', '$a', () => srv.gql(`mutation($id: ID!, $a: String!) { setAgentBudget(accountId: $id, agentId: $a, limit: "5") { agentId } }`, { id: acct, a: NUL })],
    ['setUserBudget userId', '$u', () => srv.gql(`mutation($id: ID!, $u: String!) { setUserBudget(accountId: $id, userId: $u, limit: "5") { userId } }`, { id: acct, u: NUL })],
    ['createCreditPack name', '$input.name', () => srv.gql(`mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`, { input: { name: NUL, credits: '10', priceUsd: '1' } })],
    ['createPlan name', '$input.name', () => srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, { input: { name: NUL, monthlyCredits: '10', priceUsd: '1', rollover: 'RESET' } })],
    ['publishPriceBook name', '$input.name', () => srv.gql(`mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`, { input: { name: NUL, rules: [{ category: 'unit', kind: 'FLAT', credits: '1' }] } })],
    ['publishPriceBook rule category', '$input.rules[0].category', () => srv.gql(`mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`, { input: { name: 'n', rules: [{ category: NUL, kind: 'FLAT', credits: '1' }] } })],
    ['purchaseCreditPack idempotencyKey', '$k', () => srv.gql(`mutation($id: ID!, $p: ID!, $k: String!) { purchaseCreditPack(accountId: $id, packId: $p, idempotencyKey: $k) { id } }`, { id: acct, p: gid('CreditPack', randomUUID()), k: NUL })],
    ['query accountByExternalId', '$e', () => srv.gql(`query($e: String!) { accountByExternalId(externalId: $e) { id } }`, { e: NUL })],
    ['query promoCode', '$c', () => srv.gql(`query($c: String!) { promoCode(code: $c) { code } }`, { c: NUL })],
    ['query taskCost taskId', '$t', () => srv.gql(TASK_COST, { id: acct, t: NUL })],
    ['query usage(filter:) model', '$filter.model', () => srv.gql(USAGE, { id: acct, filter: { model: NUL } })],
    ['a \\u0000 escape in a literal argument', 'recordUsage(input).agentId', () => srv.gql(`mutation { recordUsage(input: { accountId: "${acct}", idempotencyKey: "${uniq('u')}", category: "unit", agentId: "a\\u0000b" }) { id } }`)],
    ['a \\u0000 escape in a literal JSON list', 'recordUsage(input).metadata.tags[0]', () => srv.gql(`mutation { recordUsage(input: { accountId: "${acct}", idempotencyKey: "${uniq('u')}", category: "unit", metadata: { tags: ["\\u0000"] } }) { id } }`)],
    ['a \\u0000 escape in a variable default', '$a (default)', () => srv.gql(`mutation($a: String = "\\u0000") { recordUsage(input: { accountId: "${acct}", idempotencyKey: "${uniq('u')}", category: "unit", agentId: $a }) { id } }`)],
  ];
  for (const [name, path, send] of cases) {
    it(`${name} is BAD_USER_INPUT naming ${JSON.stringify(path)} and writes nothing`, async () => {
      const error = await expectRejected(send, 'BAD_USER_INPUT', message(path));
      expect(error.extensions).toMatchObject({ field: path });
    });
  }

  it('recordUsageBatch with one such item is refused as a whole, like a malformed DateTime in one item: no item is recorded', async () => {
    const inputs = [usageInput(), usageInput({ agentId: NUL }), usageInput()];
    await expectRejected(() => srv.gql(BATCH, { inputs }), 'BAD_USER_INPUT', message('$inputs[1].agentId'));
    // The same rule as for a malformed DateTime in one item (control: also refused as a whole).
    await expectRejected(() => srv.gql(BATCH, { inputs: [usageInput(), usageInput({ occurredAt: 'soon' })] }), 'BAD_USER_INPUT', /DateTime/);
  });

  it('two keys that differ only in a lone surrogate are both refused, so they cannot collide; a paired surrogate is kept exactly (control)', async () => {
    for (const key of ['sur-\ud800', 'sur-\udc00']) {
      await expectRejected(() => srv.gql(RECORD, { input: usageInput({ idempotencyKey: key }) }), 'BAD_USER_INPUT', message('$input.idempotencyKey'));
    }
    const own = await apiAccount(srv, { paid: '5' });
    const [a, b] = ['sur-\ud83d\ude00', 'sur-\ud83d\ude01'];
    const first = ok(await srv.gql(RECORD, { input: { accountId: own, idempotencyKey: a, category: 'unit', metadata: { emoji: a } } })).recordUsage;
    const second = ok(await srv.gql(RECORD, { input: { accountId: own, idempotencyKey: b, category: 'unit' } })).recordUsage;
    expect(second.id).not.toBe(first.id);
    expect(first.metadata).toEqual({ emoji: a });
    const replay = ok(await srv.gql(RECORD, { input: { accountId: own, idempotencyKey: a, category: 'unit', metadata: { emoji: a } } })).recordUsage;
    expect(replay.id).toBe(first.id);
  });
});

describe('metadata JSON', () => {
  const nested = (depth: number): unknown => JSON.parse('['.repeat(depth) + ']'.repeat(depth));

  it('3,000 nested arrays (under the 8 KB cap) are BAD_USER_INPUT, not a stack overflow', async () => {
    expect(JSON.stringify(nested(3000)).length).toBeLessThan(8192);
    await expectRejected(() => srv.gql(RECORD, { input: usageInput({ metadata: nested(3000) }) }), 'BAD_USER_INPUT', /at most 32 levels deep/);
    await expectRejected(() => srv.gql(BATCH, { inputs: [usageInput({ metadata: nested(3000) })] }), 'BAD_USER_INPUT', /at most 32 levels deep/);
  });

  it('33 levels are refused and 32 are recorded (control)', async () => {
    await expectRejected(() => srv.gql(RECORD, { input: usageInput({ metadata: { a: nested(32) } }) }), 'BAD_USER_INPUT', /at most 32 levels deep/);
    const own = await apiAccount(srv, { paid: '5' });
    const e = ok(await srv.gql(RECORD, { input: { ...usageInput({ metadata: { a: nested(31) } }), accountId: own } })).recordUsage;
    expect(e.metadata).toEqual({ a: nested(31) });
  });

  it('a JSON number beyond double range (1e400) is BAD_USER_INPUT, not stored as null', async () => {
    const body = JSON.stringify({ query: RECORD, variables: { input: usageInput({ metadata: { a: 0 } }) } }).replace('{"a":0}', '{"a":1e400}');
    expect(body).toContain('"a":1e400');
    await expectRejected(() => rawGql(body), 'BAD_USER_INPUT', /numbers must be finite/);
    const literal = `mutation { recordUsage(input: { accountId: "${acct}", idempotencyKey: "${uniq('u')}", category: "unit", metadata: { a: -1e400 } }) { id } }`;
    await expectRejected(() => srv.gql(literal), 'BAD_USER_INPUT', /numbers must be finite/);
  });
});

describe('reserveCredits agentId / userId follow recordUsage (1 to 200 characters)', () => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['agentId of 100,000 characters', { agentId: 'a'.repeat(100_000) }, /^agentId: must be 1 to 200 characters$/],
    ['agentId of 201 characters', { agentId: 'a'.repeat(201) }, /^agentId: must be 1 to 200 characters$/],
    ['an empty userId', { userId: '' }, /^userId: must be 1 to 200 characters$/],
  ];
  for (const [name, extra, message] of cases) {
    it(`an ${name} is BAD_USER_INPUT and holds nothing`, async () => {
      await expectRejected(() => srv.gql(RESERVE, { input: reserveInput(extra) }), 'BAD_USER_INPUT', message);
    });
  }

  it('200 characters are accepted and stored (control)', async () => {
    const agentId = 'a'.repeat(200);
    const id = ok(await srv.gql(RESERVE, { input: { ...reserveInput({ agentId, userId: 'u' }), accountId: other } })).reserveCredits.id;
    const { rows } = await srv.services.pool.query('SELECT agent_id, user_id FROM reservations WHERE id = $1', [dbId(id)]);
    expect(rows).toEqual([{ agent_id: agentId, user_id: 'u' }]);
  });
});

describe('operation resolution', () => {
  it('an operationName the document does not define is BAD_USER_INPUT', async () => {
    const res = await rawGql(JSON.stringify({ query: 'query A { __typename }', operationName: 'Z' }));
    expect(expectError(res, 'BAD_USER_INPUT').message).toMatch(/operation/);
  });

  it('two unnamed operations are BAD_USER_INPUT and run neither', async () => {
    const res = await expectUnchanged(srv, [acct], () =>
      rawGql(JSON.stringify({ query: `mutation { recordUsage(input: { accountId: "${acct}", idempotencyKey: "${uniq('u')}", category: "unit" }) { id } } query { __typename }` })),
    );
    expectError(res, 'BAD_USER_INPUT');
  });
});

describe('taskCost of an account that does not exist', () => {
  it('is NOT_FOUND for a service key, like quote (a foreign account answers the same for user tokens: auth.test.ts)', async () => {
    const missing = gid('Account', randomUUID());
    const task = await srv.gql(TASK_COST, { id: missing, t: 't' });
    expect(expectError(task, 'NOT_FOUND').message).toBe('account not found');
    const quote = await srv.gql(`query($input: RecordUsageInput!) { quote(input: $input) { cost } }`, { input: { accountId: missing, idempotencyKey: 'q', category: 'unit' } });
    expect(expectError(quote, 'NOT_FOUND').message).toBe('account not found');
  });

  it('an existing account without the task answers zero (control)', async () => {
    expect(ok(await srv.gql(TASK_COST, { id: acct, t: uniq('t') })).taskCost).toEqual({ credits: '0', events: 0 });
  });
});
