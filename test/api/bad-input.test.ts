/**
 * Bad input at the API edge: malformed Credits, wrong JSON types, bad idempotency keys, unknown
 * or foreign ids, unpriceable usage, out-of-range TTLs. Each must answer with an
 * `extensions.code` (BAD_USER_INPUT or NOT_FOUND) and change nothing: the involved accounts'
 * snapshots (balance version, ledger, batches, events, holds) and the platform-wide row counts
 * are compared before and after. Request bodies over MAX_REQUEST_BODY_BYTES (413) or without
 * Content-Length (411) are refused before anything is read or recorded.
 */
import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, expectError, expectUnchanged, gid, globalCounts, ok, uniq, type GqlResponse } from './helpers.js';

const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id amount } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
const EXTEND = `mutation($id: ID!, $ttl: Int!) { extendReservation(reservationId: $id, ttlSeconds: $ttl) { id } }`;
const RELEASE = `mutation($id: ID!) { releaseReservation(reservationId: $id) { id } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`;
const VOID = `mutation($id: ID!) { voidGrant(grantId: $id, reason: "test") { id } }`;
const REFUND = `mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "test") { id } }`;
const CREATE = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { id } } }`;
const QUOTE = `query($input: RecordUsageInput!) { quote(input: $input) { cost } }`;

let srv: TestServer;
/** The account every bad request targets (funded, with a hold, a grant and an event). */
let acct: string;
/** A bystander account with its own hold, used for foreign ids. */
let other: string;
let grantId: string;
let batchId: string;
let eventId: string;
let holdId: string;
let otherHoldId: string;
let ledgerEntryId: string;

beforeAll(async () => {
  srv = await startTestServer();
  acct = await apiAccount(srv, { free: '5' });
  other = await apiAccount(srv, { paid: '5' });
  const g = ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id batch { id } } }`, {
      input: { accountId: acct, amount: '50', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
    }),
  ).grantCredits;
  grantId = g.id;
  batchId = g.batch.id;
  eventId = ok(await srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } })).recordUsage.id;
  holdId = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '2', idempotencyKey: uniq('h') } })).reserveCredits.id;
  otherHoldId = ok(await srv.gql(RESERVE, { input: { accountId: other, amount: '1', idempotencyKey: uniq('h') } })).reserveCredits.id;
  ledgerEntryId = ok(await srv.gql(`query($id: ID!) { account(id: $id) { ledger(first: 1) { edges { node { id } } } } }`, { id: acct })).account.ledger
    .edges[0].node.id;
});

afterAll(async () => {
  await srv?.close();
});

/** POSTs a raw JSON body (for JSON numbers JavaScript cannot hold, like 1e400). */
async function rawGql(body: string): Promise<GqlResponse> {
  const res = await fetch(srv.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${srv.adminKey}` },
    body,
  });
  return { status: res.status, body: (await res.json()) as GqlResponse['body'] };
}

/**
 * Sends the request and asserts the error code and that nothing changed anywhere: the given
 * accounts' snapshots (default: this file's two accounts) and the platform-wide counts of
 * `server` (default: this file's server). Returns the response and its one error.
 */
async function expectRejected(send: () => Promise<GqlResponse>, code: string, on: { server: TestServer; accounts: string[] } = { server: srv, accounts: [acct, other] }) {
  const counts = await globalCounts(on.server);
  const res = await expectUnchanged(on.server, on.accounts, send);
  const error = expectError(res, code);
  expect(await globalCounts(on.server)).toEqual(counts);
  return Object.assign(res, { error });
}

const grantInput = (extra: Record<string, unknown> = {}) => ({
  accountId: acct,
  amount: '5',
  type: 'PAID',
  source: 'PURCHASE',
  idempotencyKey: uniq('g'),
  ...extra,
});
const usageInput = (extra: Record<string, unknown> = {}) => ({ accountId: acct, idempotencyKey: uniq('u'), category: 'unit', ...extra });
const reserveInput = (extra: Record<string, unknown> = {}) => ({ accountId: acct, amount: '1', idempotencyKey: uniq('h'), ...extra });

describe('Credits inputs', () => {
  const badAmounts: Array<[string, unknown]> = [
    ['negative "-5"', '-5'],
    ['zero', '0'],
    ['"NaN"', 'NaN'],
    ['"Infinity"', 'Infinity'],
    ['"-Infinity"', '-Infinity'],
    ['"1e400"', '1e400'],
    ['"1e3" (exponent)', '1e3'],
    ['"1.0000001" (7 decimals)', '1.0000001'],
    ['the JSON number 1.0000001', 1.0000001],
    ['the JSON number 1e-7', 1e-7],
    ['"abc"', 'abc'],
    ['an empty string', ''],
    ['"1,5"', '1,5'],
    ['true', true],
    ['{}', {}],
    ['[]', []],
    ['["5"]', ['5']],
    ['null', null],
    ['a value beyond 64-bit micro-credits', '9223372036854.775808'],
  ];
  for (const [name, amount] of badAmounts) {
    it(`grantCredits amount ${name} is BAD_USER_INPUT and changes nothing`, async () => {
      await expectRejected(() => srv.gql(GRANT, { input: grantInput({ amount }) }), 'BAD_USER_INPUT');
    });
  }

  it('1e400 as a JSON number is BAD_USER_INPUT and changes nothing', async () => {
    const body = `{"query":${JSON.stringify(GRANT)},"variables":{"input":{"accountId":"${acct}","amount":1e400,"type":"PAID","source":"PURCHASE","idempotencyKey":"${uniq('g')}"}}}`;
    await expectRejected(() => rawGql(body), 'BAD_USER_INPUT');
  });

  it('1e400 as a literal in the query document is BAD_USER_INPUT and changes nothing', async () => {
    const q = `mutation { grantCredits(input: { accountId: "${acct}", amount: 1e400, type: PAID, source: PURCHASE, idempotencyKey: "${uniq('g')}" }) { id } }`;
    await expectRejected(() => srv.gql(q), 'BAD_USER_INPUT');
  });

  it('reserveCredits amount "0" and "-1" are BAD_USER_INPUT and change nothing', async () => {
    for (const amount of ['0', '-1']) await expectRejected(() => srv.gql(RESERVE, { input: reserveInput({ amount }) }), 'BAD_USER_INPUT');
  });

  it('a valid number literal and a canonical string are accepted (control)', async () => {
    const a = ok(await srv.gql(GRANT, { input: { ...grantInput({ amount: 0.5 }), accountId: other } })).grantCredits;
    const b = ok(await srv.gql(GRANT, { input: { ...grantInput({ amount: '1.000000' }), accountId: other } })).grantCredits;
    expect([a.amount, b.amount]).toEqual(['0.5', '1']);
  });
});

describe('wrong GraphQL types', () => {
  // graphql-js rejects these while coercing variables; the contract still requires a code
  // from its list (BAD_USER_INPUT), never a masked INTERNAL_SERVER_ERROR.
  const cases: Array<[string, () => Promise<GqlResponse>]> = [
    ['a string for an Int (ttlSeconds "5")', () => srv.gql(RESERVE, { input: reserveInput({ ttlSeconds: '5' }) })],
    ['a fraction for an Int (ttlSeconds 1.5)', () => srv.gql(EXTEND, { id: holdId, ttl: 1.5 })],
    ['an Int beyond 32 bits (ttlSeconds 1e10)', () => srv.gql(EXTEND, { id: holdId, ttl: 1e10 })],
    ['a string for an Int token count', () => srv.gql(RECORD, { input: usageInput({ quantities: { inputTokens: '100' } }) })],
    ['a number for a String (idempotencyKey 5)', () => srv.gql(GRANT, { input: grantInput({ idempotencyKey: 5 }) })],
    ['an unknown enum value (type GOLD)', () => srv.gql(GRANT, { input: grantInput({ type: 'GOLD' }) })],
    ['a missing required input field', () => srv.gql(GRANT, { input: { accountId: acct, amount: '5', type: 'PAID', source: 'PURCHASE' } })],
    ['an unknown input field', () => srv.gql(GRANT, { input: grantInput({ bonus: true }) })],
  ];
  for (const [name, send] of cases) {
    it(`${name} is BAD_USER_INPUT and changes nothing`, async () => {
      await expectRejected(send, 'BAD_USER_INPUT');
    });
  }

  it('a literal of the wrong type in the query document is BAD_USER_INPUT and changes nothing', async () => {
    await expectRejected(() => srv.gql(`mutation { extendReservation(reservationId: "${holdId}", ttlSeconds: "5") { id } }`), 'BAD_USER_INPUT');
  });
});

describe('idempotency keys', () => {
  const keys: Array<[string, string]> = [
    ['empty', ''],
    ['300 characters', 'k'.repeat(300)],
    ['with a control character', 'a\nb'],
  ];
  for (const [name, key] of keys) {
    it(`an ${name} idempotencyKey is BAD_USER_INPUT on grant, usage and hold, and changes nothing`, async () => {
      await expectRejected(() => srv.gql(GRANT, { input: grantInput({ idempotencyKey: key }) }), 'BAD_USER_INPUT');
      await expectRejected(() => srv.gql(RECORD, { input: usageInput({ idempotencyKey: key }) }), 'BAD_USER_INPUT');
      await expectRejected(() => srv.gql(RESERVE, { input: reserveInput({ idempotencyKey: key }) }), 'BAD_USER_INPUT');
    });
  }

  it('a 200-character key is accepted (control)', async () => {
    const res = await srv.gql(GRANT, { input: { ...grantInput({ idempotencyKey: 'k'.repeat(200) }), accountId: other } });
    expect(ok(res).grantCredits.amount).toBe('5');
  });
});

describe('unknown and foreign ids', () => {
  const randomAccount = () => gid('Account', randomUUID());
  const cases: Array<[string, () => Promise<GqlResponse>]> = [
    ['grantCredits: well-formed id of a random uuid', () => srv.gql(GRANT, { input: grantInput({ accountId: randomAccount() }) })],
    ['grantCredits: garbage id "abc"', () => srv.gql(GRANT, { input: grantInput({ accountId: 'abc' }) })],
    ['grantCredits: empty id', () => srv.gql(GRANT, { input: grantInput({ accountId: '' }) })],
    ['grantCredits: a batch id as accountId', () => srv.gql(GRANT, { input: grantInput({ accountId: batchId }) })],
    ['grantCredits: an Account id whose uuid is not a uuid', () => srv.gql(GRANT, { input: grantInput({ accountId: gid('Account', 'not-a-uuid') }) })],
    ['recordUsage: random account', () => srv.gql(RECORD, { input: usageInput({ accountId: randomAccount() }) })],
    ['recordUsage: a grant id as accountId', () => srv.gql(RECORD, { input: usageInput({ accountId: grantId }) })],
    ['recordUsage: random reservation', () => srv.gql(RECORD, { input: usageInput({ reservationId: gid('Reservation', randomUUID()) }) })],
    ["recordUsage: another account's reservation", () => srv.gql(RECORD, { input: usageInput({ reservationId: otherHoldId }) })],
    ['recordUsage: an account id as reservationId', () => srv.gql(RECORD, { input: usageInput({ reservationId: acct }) })],
    ['reserveCredits: random account', () => srv.gql(RESERVE, { input: reserveInput({ accountId: randomAccount() }) })],
    ['voidGrant: random grant', () => srv.gql(VOID, { id: gid('CreditGrant', randomUUID()) })],
    ['voidGrant: garbage id', () => srv.gql(VOID, { id: 'abc' })],
    ['voidGrant: a batch id', () => srv.gql(VOID, { id: batchId })],
    ['refundUsage: random event', () => srv.gql(REFUND, { id: gid('UsageEvent', randomUUID()) })],
    ['refundUsage: a ledger entry id', () => srv.gql(REFUND, { id: ledgerEntryId })],
    ['releaseReservation: random', () => srv.gql(RELEASE, { id: gid('Reservation', randomUUID()) })],
    ['releaseReservation: an event id', () => srv.gql(RELEASE, { id: eventId })],
    ['extendReservation: garbage', () => srv.gql(EXTEND, { id: 'abc', ttl: 60 })],
    ['settleReservation: random', () => srv.gql(SETTLE, { input: { reservationId: gid('Reservation', randomUUID()), usage: [] } })],
  ];
  for (const [name, send] of cases) {
    it(`${name} is NOT_FOUND and changes nothing`, async () => {
      await expectRejected(send, 'NOT_FOUND');
    });
  }

  it("settling a hold with usage of another account is BAD_USER_INPUT and changes nothing", async () => {
    await expectRejected(() => srv.gql(SETTLE, { input: { reservationId: holdId, usage: [usageInput({ accountId: other })] } }), 'BAD_USER_INPUT');
  });
});

describe('usage that cannot be priced or is malformed', () => {
  it('a category with no price rule is BAD_USER_INPUT (recordUsage and quote) and changes nothing', async () => {
    await expectRejected(() => srv.gql(RECORD, { input: usageInput({ category: 'no-rule-here' }) }), 'BAD_USER_INPUT');
    await expectRejected(() => srv.gql(QUOTE, { input: usageInput({ category: 'no-rule-here' }) }), 'BAD_USER_INPUT');
  });

  it('an unknown llm model is priced by the category-wide fallback (control for the case above)', async () => {
    const q = ok(await srv.gql(QUOTE, { input: usageInput({ category: 'llm', model: 'no-such-model-xyz', quantities: { inputTokens: 10 } }) }));
    expect(q.quote.cost).toBe('2');
  });

  const bad: Array<[string, Record<string, unknown>]> = [
    ['an empty category', { category: '' }],
    ['a negative token count', { quantities: { inputTokens: -1 } }],
    ['an llm (PER_TOKEN) event without any token count', { category: 'llm', model: 'gpt-4o-mini' }],
    ['negative units', { category: 'units', quantities: { units: '-1' } }],
    ['non-numeric seconds', { category: 'voice', quantities: { seconds: 'ten' } }],
    ['a negative providerCostUsd', { category: 'passthrough', providerCostUsd: '-0.01' }],
    ['an occurredAt without offset', { occurredAt: '2026-01-01T10:00:00' }],
    ['an occurredAt that is not a date', { occurredAt: 'yesterday' }],
    ['an agentId of 201 characters', { agentId: 'a'.repeat(201) }],
    ['metadata above 8 KB', { metadata: { blob: 'x'.repeat(9000) } }],
  ];
  for (const [name, extra] of bad) {
    it(`recordUsage with ${name} is BAD_USER_INPUT and changes nothing`, async () => {
      await expectRejected(() => srv.gql(RECORD, { input: usageInput(extra) }), 'BAD_USER_INPUT');
    });
  }

  it('an llm (PER_TOKEN) event without any token count is refused by quote and recordUsageBatch too; explicit zeros cost 0 (control)', async () => {
    const noTokens = () => usageInput({ category: 'llm', model: 'gpt-4o-mini', quantities: { seconds: '1' } });
    const quoted = await expectRejected(() => srv.gql(QUOTE, { input: noTokens() }), 'BAD_USER_INPUT');
    expect(quoted.error.message).toMatch(/^quantities: .*PER_TOKEN/);
    const batch = await expectUnchanged(srv, [acct], () => srv.gql(BATCH, { inputs: [noTokens()] }));
    expect(ok(batch).recordUsageBatch).toEqual([{ errorCode: 'BAD_USER_INPUT', event: null }]);
    expect(ok(await srv.gql(QUOTE, { input: usageInput({ category: 'llm', model: 'gpt-4o-mini', quantities: { inputTokens: 0, outputTokens: 0 } }) })).quote.cost).toBe('0');
  });

  it('a BYOK llm event of a model the catalog cannot price, without providerCostUsd, is BAD_USER_INPUT telling to send providerCostUsd (the fallback is not a fee base)', async () => {
    const byok = (extra: Record<string, unknown> = {}) => usageInput({ category: 'llm', model: 'no-such-model-xyz', byok: true, quantities: { inputTokens: 10 }, ...extra });
    for (const send of [() => srv.gql(RECORD, { input: byok() }), () => srv.gql(QUOTE, { input: byok() })]) {
      const { error } = await expectRejected(send, 'BAD_USER_INPUT');
      expect(error.message).toMatch(/^providerCostUsd: .*send providerCostUsd/);
      expect(error.message).not.toMatch(/give the rule fallbackCredits/);
    }
    // What the message says works: 5 % of $0.10 (the test book's byokFeePercent).
    expect(ok(await srv.gql(QUOTE, { input: byok({ providerCostUsd: '0.1' }) })).quote.cost).toBe('0.5');
  });

  it('recordUsageBatch above MAX_BATCH_ITEMS is BAD_USER_INPUT and records none of the items', async () => {
    const inputs = Array.from({ length: 1001 }, () => usageInput({ category: 'free' }));
    await expectRejected(() => srv.gql(BATCH, { inputs }), 'BAD_USER_INPUT');
  });

  it('recordUsageBatch above MAX_BATCH_ITEMS is refused however many of its items carry an unreadable id (the cap counts every item sent)', async () => {
    // 1,000 good items and one whose accountId is no global id: 1,001 items, one over the cap.
    const inputs = [...Array.from({ length: 1000 }, () => usageInput({ category: 'free' })), usageInput({ category: 'free', accountId: 'not-a-global-id' })];
    const { error } = await expectRejected(() => srv.gql(BATCH, { inputs }), 'BAD_USER_INPUT');
    expect(error.message).toBe('inputs: at most 1000 items per batch');
  });
});

describe('token counts (0 to 1,000,000,000 per field)', () => {
  const FIELDS = ['inputTokens', 'outputTokens', 'reasoningTokens', 'cacheReadTokens', 'cacheWriteTokens'] as const;

  it('property: a count outside 0..1e9 in any token field is BAD_USER_INPUT naming the field and the range, on recordUsage and quote, and changes nothing', async () => {
    // Counts above 1e9 used to be refused as "must be a non-negative integer", which 1000000001 is.
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FIELDS),
        fc.oneof(fc.integer({ min: -(2 ** 31), max: -1 }), fc.integer({ min: 1_000_000_001, max: 2 ** 31 - 1 }), fc.constantFrom(-1, 1_000_000_001, 2 ** 31 - 1)),
        async (field, count) => {
          const input = usageInput({ category: 'llm', model: 'gpt-4o-mini', quantities: { [field]: count } });
          const expected = new RegExp(`^quantities\\.${field}: must be an integer from 0 to 1000000000$`);
          expect((await expectRejected(() => srv.gql(RECORD, { input }), 'BAD_USER_INPUT')).error.message).toMatch(expected);
          expect(expectError(await srv.gql(QUOTE, { input }), 'BAD_USER_INPUT').message).toMatch(expected);
        },
      ),
      { numRuns: 20 },
    );
  });

  it('1,000,000,000 in every token field is priced (control)', async () => {
    const quantities = Object.fromEntries(FIELDS.map((f) => [f, 1_000_000_000]));
    expect(ok(await srv.gql(QUOTE, { input: usageInput({ category: 'llm', model: 'gpt-4o-mini', quantities }) })).quote.cost).toMatch(/^\d+(\.\d+)?$/);
  });
});

describe('other inputs', () => {
  it('grantCredits with expiresAt in the past or a 501-character reference is BAD_USER_INPUT and changes nothing', async () => {
    await expectRejected(() => srv.gql(GRANT, { input: grantInput({ expiresAt: new Date(Date.now() - 60_000).toISOString() }) }), 'BAD_USER_INPUT');
    await expectRejected(() => srv.gql(GRANT, { input: grantInput({ reference: 'r'.repeat(501) }) }), 'BAD_USER_INPUT');
  });

  for (const ttl of [0, -1, 1_000_000_000]) {
    it(`ttlSeconds ${ttl} is BAD_USER_INPUT on reserveCredits and extendReservation, and changes nothing`, async () => {
      await expectRejected(() => srv.gql(RESERVE, { input: reserveInput({ ttlSeconds: ttl }) }), 'BAD_USER_INPUT');
      await expectRejected(() => srv.gql(EXTEND, { id: holdId, ttl }), 'BAD_USER_INPUT');
    });
  }

  it('createAccount with an empty externalId, a 201-character name or a testClockStart without testMode is BAD_USER_INPUT', async () => {
    const base = { externalId: uniq('bad'), name: 'Bad', kind: 'ORGANIZATION' };
    for (const input of [
      { ...base, externalId: '' },
      { ...base, name: 'n'.repeat(201) },
      { ...base, testClockStart: '2026-01-01T00:00:00.000Z' },
    ]) {
      await expectRejected(() => srv.gql(CREATE, { input }), 'BAD_USER_INPUT');
    }
    const probe = ok(await srv.gql(`query($e: String!) { accountByExternalId(externalId: $e) { id } }`, { e: base.externalId }));
    expect(probe.accountByExternalId).toBeNull();
  });

  it('usageSummary with an inverted range names the argument the caller sent and the default it met', async () => {
    const SUMMARY = `query($id: ID!, $from: DateTime, $to: DateTime) { account(id: $id) { usageSummary(from: $from, to: $to, groupBy: [CATEGORY]) { credits } } }`;
    // Only `to`, before the current period: from defaults to the period's start.
    const onlyTo = expectError(await srv.gql(SUMMARY, { id: acct, to: '2001-01-01T00:00:00.000Z' }), 'BAD_USER_INPUT');
    expect(onlyTo.message).toMatch(/^to: is before the current billing period's start \(.+\), from's default: give from as well$/);
    // Only `from`, after the current period: to defaults to the period's end.
    const onlyFrom = expectError(await srv.gql(SUMMARY, { id: acct, from: '9000-01-01T00:00:00.000Z' }), 'BAD_USER_INPUT');
    expect(onlyFrom.message).toMatch(/^from: is after the current billing period's end \(.+\), to's default: give to as well$/);
    const both = expectError(await srv.gql(SUMMARY, { id: acct, from: '2001-02-01T00:00:00.000Z', to: '2001-01-01T00:00:00.000Z' }), 'BAD_USER_INPUT');
    expect(both.message).toBe('to: must not be before from');
    // Control: the same `to` with a `from` before it is answered.
    const answered = ok(await srv.gql(SUMMARY, { id: acct, from: '2000-01-01T00:00:00.000Z', to: '2001-01-01T00:00:00.000Z' }));
    expect(answered.account.usageSummary).toEqual([]);
  });
});

describe('request-body limit (MAX_REQUEST_BODY_BYTES)', () => {
  let small: TestServer;
  let smallAcct: string;
  beforeAll(async () => {
    small = await startTestServer({ MAX_REQUEST_BODY_BYTES: '4096' });
    smallAcct = await apiAccount(small, { paid: '100' });
  });
  afterAll(async () => {
    await small?.close();
  });

  /** POSTs `body` with node:http: with Content-Length, or chunked (no Content-Length). */
  function post(body: string, chunked: boolean): Promise<GqlResponse> {
    return new Promise((resolve, reject) => {
      const r = httpRequest(
        small.url,
        {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            authorization: `Bearer ${small.adminKey}`,
            ...(chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(Buffer.byteLength(body)) }),
          },
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as GqlResponse['body'] }));
        },
      );
      r.on('error', reject);
      if (chunked) for (let i = 0; i < body.length; i += 100) r.write(body.slice(i, i + 100));
      else r.write(body);
      r.end();
    });
  }

  const batchBody = (n: number) =>
    JSON.stringify({ query: BATCH, variables: { inputs: Array.from({ length: n }, () => ({ accountId: smallAcct, idempotencyKey: uniq('u'), category: 'unit' })) } });

  it('a body over the limit is 413, BAD_USER_INPUT (reason REQUEST_ENTITY_TOO_LARGE), and records nothing', async () => {
    const body = batchBody(60);
    expect(Buffer.byteLength(body)).toBeGreaterThan(4096);
    const res = await expectRejected(() => post(body, false), 'BAD_USER_INPUT', { server: small, accounts: [smallAcct] });
    expect(res.status).toBe(413);
    expect(res.error.extensions).toMatchObject({ reason: 'REQUEST_ENTITY_TOO_LARGE' });
  });

  it('a body without Content-Length is 411, BAD_USER_INPUT (reason LENGTH_REQUIRED), and records nothing, even when small', async () => {
    const body = batchBody(2);
    expect(Buffer.byteLength(body)).toBeLessThan(4096);
    const res = await expectRejected(() => post(body, true), 'BAD_USER_INPUT', { server: small, accounts: [smallAcct] });
    expect(res.status).toBe(411);
    expect(res.error.extensions).toMatchObject({ reason: 'LENGTH_REQUIRED' });
  });

  it('a body within the limit is served (control)', async () => {
    const body = batchBody(10);
    expect(Buffer.byteLength(body)).toBeLessThanOrEqual(4096);
    const res = await post(body, false);
    expect(res.status).toBe(200);
    const items = ok(res).recordUsageBatch as Array<{ errorCode: string | null; event: { id: string } | null }>;
    expect(items).toHaveLength(10);
    for (const item of items) expect(item.errorCode).toBeNull();
  });
});
