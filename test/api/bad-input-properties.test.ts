/**
 * Properties of the input scalars and ids at the API edge, sent to a real server: every
 * generated value is either accepted exactly as a reference model of the contract says, or
 * refused with an `extensions.code` from the contract (BAD_USER_INPUT, NOT_FOUND; never a masked
 * INTERNAL_SERVER_ERROR) and nothing written. The table-driven cases are in bad-input.test.ts.
 * - Credits, as strings built from signs, blanks, leading zeros, non-ASCII digits, fractions,
 *   exponents and sizes past 64 bits, and as JSON numbers (setAgentBudget `limit`: the budget
 *   row is the only thing it writes, so the model can check every accepted value);
 * - DateTime, as strings built from out-of-range and impossible fields and offsets
 *   (recordUsage `occurredAt`);
 * - ids of the wrong type, base64 garbage and base64 of non-uuids in every ID argument of every
 *   mutation.
 */
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectUnchanged, gid, globalCounts, grant, ok, uniq, type GqlResponse } from './helpers.js';
import { MAX_ABS_MICRO_CREDITS, formatCredits } from '../../src/ledger/credits.js';

let srv: TestServer;
let acct: string;

beforeAll(async () => {
  srv = await startTestServer();
  acct = await apiAccount(srv, { paid: '50' });
});

afterAll(async () => {
  await srv?.close();
});

/** Platform-wide counts plus the rows setAgentBudget and the growth mutations write. */
async function allCounts() {
  const { rows } = await srv.services.pool.query(
    `SELECT (SELECT count(*) FROM spending_budgets)::int AS budgets, (SELECT count(*) FROM plan_subscriptions)::int AS subscriptions,
            (SELECT count(*) FROM payments)::int AS payments, (SELECT count(*) FROM promo_codes)::int AS promos`,
  );
  return { ...(await globalCounts(srv)), ...rows[0] };
}

/** Asserts one error with `code` and that nothing changed (account snapshot and all counts). */
async function expectRejected(send: () => Promise<GqlResponse>, code: string, accounts: string[] = [acct]) {
  const counts = await allCounts();
  const res = await expectUnchanged(srv, accounts, send);
  const error = expectError(res, code);
  expect(await allCounts()).toEqual(counts);
  return error;
}

describe('Credits', () => {
  /**
   * The contract's Credits, as a model: plain ASCII decimal (optional "-", digits, optionally
   * "." and digits), at most 64 characters, at most 6 fractional digits once trailing zeros are
   * dropped, magnitude at most MAX_ABS_MICRO_CREDITS. Returns micro-credits or null (refused).
   */
  function modelCredits(text: string): bigint | null {
    const m = /^(-?)([0-9]+)(?:\.([0-9]+))?$/.exec(text);
    if (!m || text.length > 64) return null;
    const frac = (m[3] ?? '').replace(/0+$/, '');
    if (frac.length > 6) return null;
    const micro = BigInt(m[2]! + frac.padEnd(6, '0')) * (m[1] ? -1n : 1n);
    return micro > MAX_ABS_MICRO_CREDITS || -micro > MAX_ABS_MICRO_CREDITS ? null : micro;
  }

  const digits = (min: number, max: number) => fc.stringMatching(new RegExp(`^[0-9]{${min},${max}}$`));
  const creditsText = fc
    .tuple(
      fc.constantFrom('', '', '-', '+', ' ', '\t', '--', '\u2212'),
      fc.oneof(digits(1, 3), digits(1, 25), fc.constantFrom('0', '00', '007', '9223372036854', '9223372036855', '\u0661', '\uff11', '1\u00a0000', '')),
      fc.oneof(fc.constant(''), fc.constant('.'), digits(1, 9).map((d) => `.${d}`), fc.constantFrom('.000000', '.0000001', '.775807', '.775808', '.5000000000')),
      fc.constantFrom('', '', '', 'e3', 'E-2', 'e+0', ' ', '\n', 'x', '\u0000'),
    )
    .map((parts) => parts.join(''));

  const BUDGET = `mutation($id: ID!, $a: String!, $l: Credits) { setAgentBudget(accountId: $id, agentId: $a, limit: $l) { limit } }`;

  /** Sends `limit`; asserts the model's answer: the canonical limit stored, or BAD_USER_INPUT and no change. */
  async function checkLimit(limit: unknown, expected: bigint | null) {
    const agentId = uniq('agent');
    if (expected === null || expected < 0n) {
      await expectRejected(() => srv.gql(BUDGET, { id: acct, a: agentId, l: limit }), 'BAD_USER_INPUT');
      return;
    }
    expect(ok(await srv.gql(BUDGET, { id: acct, a: agentId, l: limit })).setAgentBudget.limit).toBe(formatCredits(expected));
    const { rows } = await srv.services.pool.query('SELECT limit_micro_credits::text AS l FROM spending_budgets WHERE account_id = $1 AND subject_id = $2', [dbId(acct), agentId]);
    expect(rows).toEqual([{ l: expected.toString() }]);
  }

  it('property: a Credits string is stored as the model reads it, or refused with BAD_USER_INPUT and nothing written', async () => {
    await fc.assert(fc.asyncProperty(creditsText, async (text) => checkLimit(text, modelCredits(text))), { numRuns: 150 });
  });

  it('property: a Credits JSON number is read as its shortest decimal text (1e21 and 1e-7 are exponents, so refused)', async () => {
    // Finite numbers only: JSON has no Infinity or NaN (JSON.stringify sends null, which removes the budget).
    const numbers = fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer(), fc.constantFrom(1.5, 0.1 + 0.2, 1e21, 1e-7, 9007199254740993, -0, 123456.7890125));
    await fc.assert(fc.asyncProperty(numbers, async (n) => checkLimit(n, modelCredits(String(n)))), { numRuns: 80 });
  });
});

describe('DateTime', () => {
  const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { occurredAt } }`;
  const pad = (n: number, w: number) => String(n).padStart(w, '0');

  /**
   * The contract's DateTime, as a model: the fields must name a real date and time (no
   * February 30th, hour 24, second 60, offset beyond 23:59) and the instant must lie in
   * 0001-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z. Returns the instant's ISO text or null.
   */
  function modelDateTime(f: { y: number; mo: number; d: number; h: number; mi: number; s: number; ms: number; off: number | null; offH: number; offM: number }): string | null {
    if (f.mo < 1 || f.mo > 12 || f.h > 23 || f.mi > 59 || f.s > 59) return null;
    if (f.off !== null && (f.offH > 23 || f.offM > 59)) return null;
    const monthEnd = new Date(0);
    monthEnd.setUTCFullYear(f.y, f.mo, 0); // day 0 of the next month: the month's last day
    if (f.d < 1 || f.d > monthEnd.getUTCDate()) return null;
    const local = new Date(0);
    local.setUTCFullYear(f.y, f.mo - 1, f.d);
    local.setUTCHours(f.h, f.mi, f.s, f.ms);
    const offsetMs = f.off === null ? 0 : f.off * (f.offH * 60 + f.offM) * 60_000;
    const at = local.getTime() - offsetMs;
    if (at < new Date('0001-01-01T00:00:00.000Z').getTime()) return null;
    if (at > new Date('9999-12-31T23:59:59.999Z').getTime()) return null;
    return new Date(at).toISOString();
  }

  /** A field: mostly in range, often at or just past its bounds. */
  const field = (min: number, max: number, edges: number[]) => fc.oneof(fc.integer({ min, max }), fc.constantFrom(...edges));
  const fields = fc.record({
    y: field(0, 9999, [0, 1, 2024, 2100, 9989, 9990, 9999]),
    mo: field(1, 12, [0, 2, 12, 13]),
    d: field(1, 28, [0, 29, 30, 31, 32]),
    h: field(0, 23, [0, 23, 24]),
    mi: field(0, 59, [0, 59, 60]),
    s: field(0, 59, [0, 59, 60]),
    ms: fc.integer({ min: 0, max: 999 }),
    off: fc.constantFrom(null, 1, -1),
    offH: field(0, 14, [0, 23, 24]),
    offM: fc.constantFrom(0, 30, 45, 59, 60),
  });

  it('property: an occurredAt is recorded at the instant the model reads, or refused with BAD_USER_INPUT and nothing written', async () => {
    // A test-mode account whose clock stands at the last instant a test clock may reach, so that
    // "at most 5 minutes after the account's time" (record-usage.ts MAX_OCCURRED_AT_AHEAD_MS) is a
    // fixed instant the model can apply, years before the DateTime range ends.
    const CLOCK = '9989-12-31T23:59:59.999Z';
    const created = await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: uniq('clock'), name: 'DateTime model', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: CLOCK },
    });
    const own = ok(created).createAccount.id as string;
    await grant(srv, own, '1000', 'PAID');
    const latestMs = new Date(CLOCK).getTime() + 5 * 60_000;
    await fc.assert(
      fc.asyncProperty(fields, async (f) => {
        const offset = f.off === null ? 'Z' : `${f.off < 0 ? '-' : '+'}${pad(f.offH, 2)}:${pad(f.offM, 2)}`;
        const text = `${pad(f.y, 4)}-${pad(f.mo, 2)}-${pad(f.d, 2)}T${pad(f.h, 2)}:${pad(f.mi, 2)}:${pad(f.s, 2)}.${pad(f.ms, 3)}${offset}`;
        const parsed = modelDateTime(f);
        const expected = parsed !== null && new Date(parsed).getTime() <= latestMs ? parsed : null;
        const input = { accountId: own, idempotencyKey: uniq('u'), category: 'unit', occurredAt: text };
        if (expected === null) await expectRejected(() => srv.gql(RECORD, { input }), 'BAD_USER_INPUT', [own]);
        else expect(ok(await srv.gql(RECORD, { input })).recordUsage.occurredAt).toBe(expected);
      }),
      { numRuns: 200 },
    );
  });
});

describe('ids', () => {
  /** Real objects of every node type, so a wrong-type id names something that exists. */
  let ids: Record<'account' | 'grant' | 'batch' | 'event' | 'hold' | 'entry' | 'plan' | 'pack', string>;
  let promo: string;
  let referralCode: string;
  let fresh: string;

  beforeAll(async () => {
    const g = ok(
      await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id batch { id } } }`, {
        input: { accountId: acct, amount: '5', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
      }),
    ).grantCredits;
    const event = ok(await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } })).recordUsage.id;
    const hold = ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: acct, amount: '1', idempotencyKey: uniq('h') } })).reserveCredits.id;
    const read = ok(await srv.gql(`query($id: ID!) { account(id: $id) { referralCode ledger(first: 1) { edges { node { id } } } } }`, { id: acct })).account;
    const plan = ok(await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, { input: { name: uniq('plan'), monthlyCredits: '10', priceUsd: '1', rollover: 'RESET' } })).createPlan.id;
    const pack = ok(await srv.gql(`mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`, { input: { name: uniq('pack'), credits: '10', priceUsd: '1' } })).createCreditPack.id;
    promo = ok(await srv.gql(`mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) { code } }`, { input: { code: `P-${randomUUID()}`.toUpperCase(), credits: '1' } })).createPromoCode.code;
    referralCode = read.referralCode;
    fresh = await apiAccount(srv);
    ids = { account: acct, grant: g.id, batch: g.batch.id, event, hold, entry: read.ledger.edges[0].node.id, plan, pack };
  });

  type Slot = 'account' | 'grant' | 'event' | 'hold' | 'plan' | 'pack';
  /** Every ID argument of every mutation: its node type, and the request with `bad` in that slot (every other argument valid). */
  const slots: Array<[string, Slot, (bad: string) => Promise<GqlResponse>]> = [
    ['advanceTestClock accountId', 'account', (bad) => srv.gql(`mutation($id: ID!) { advanceTestClock(accountId: $id, to: "2030-01-01T00:00:00Z") { id } }`, { id: bad })],
    ['attachPaymentMethod accountId', 'account', (bad) => srv.gql(`mutation($id: ID!) { attachPaymentMethod(accountId: $id, reference: "pm_card_visa") { __typename } }`, { id: bad })],
    ['cancelSubscription accountId', 'account', (bad) => srv.gql(`mutation($id: ID!) { cancelSubscription(accountId: $id) { active } }`, { id: bad })],
    ['grantCredits accountId', 'account', (bad) => srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, { input: { accountId: bad, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } })],
    ['purchaseCreditPack accountId', 'account', (bad) => srv.gql(`mutation($id: ID!, $p: ID!) { purchaseCreditPack(accountId: $id, packId: $p, idempotencyKey: "${uniq('k')}") { id } }`, { id: bad, p: ids.pack })],
    ['purchaseCreditPack packId', 'pack', (bad) => srv.gql(`mutation($id: ID!, $p: ID!) { purchaseCreditPack(accountId: $id, packId: $p, idempotencyKey: "${uniq('k')}") { id } }`, { id: acct, p: bad })],
    ['recordUsage accountId', 'account', (bad) => srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: bad, idempotencyKey: uniq('u'), category: 'unit' } })],
    ['recordUsage reservationId', 'hold', (bad) => srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit', reservationId: bad } })],
    ['quote accountId', 'account', (bad) => srv.gql(`query($input: RecordUsageInput!) { quote(input: $input) { cost } }`, { input: { accountId: bad, idempotencyKey: uniq('u'), category: 'unit' } })],
    ['redeemPromoCode accountId', 'account', (bad) => srv.gql(`mutation($id: ID!, $c: String!) { redeemPromoCode(accountId: $id, code: $c) { id } }`, { id: bad, c: promo })],
    ['redeemReferral accountId', 'account', (bad) => srv.gql(`mutation($id: ID!, $c: String!) { redeemReferral(accountId: $id, code: $c) { id } }`, { id: bad, c: referralCode })],
    ['refundUsage usageEventId', 'event', (bad) => srv.gql(`mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "r") { id } }`, { id: bad })],
    ['releaseReservation reservationId', 'hold', (bad) => srv.gql(`mutation($id: ID!) { releaseReservation(reservationId: $id) { id } }`, { id: bad })],
    ['extendReservation reservationId', 'hold', (bad) => srv.gql(`mutation($id: ID!) { extendReservation(reservationId: $id, ttlSeconds: 60) { id } }`, { id: bad })],
    ['reserveCredits accountId', 'account', (bad) => srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: bad, amount: '1', idempotencyKey: uniq('h') } })],
    ['setAgentBudget accountId', 'account', (bad) => srv.gql(`mutation($id: ID!) { setAgentBudget(accountId: $id, agentId: "a", limit: "5") { agentId } }`, { id: bad })],
    ['setUserBudget accountId', 'account', (bad) => srv.gql(`mutation($id: ID!) { setUserBudget(accountId: $id, userId: "u", limit: "5") { userId } }`, { id: bad })],
    ['setAutoTopUp accountId', 'account', (bad) => srv.gql(`mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`, { input: { accountId: bad, enabled: false, packId: ids.pack, thresholdCredits: '1' } })],
    ['setAutoTopUp packId', 'pack', (bad) => srv.gql(`mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`, { input: { accountId: acct, enabled: false, packId: bad, thresholdCredits: '1' } })],
    ['settleReservation reservationId', 'hold', (bad) => srv.gql(`mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`, { input: { reservationId: bad, usage: [] } })],
    ['subscribeToPlan accountId', 'account', (bad) => srv.gql(`mutation($id: ID!, $p: ID!) { subscribeToPlan(accountId: $id, planId: $p) { active } }`, { id: bad, p: ids.plan })],
    ['subscribeToPlan planId', 'plan', (bad) => srv.gql(`mutation($id: ID!, $p: ID!) { subscribeToPlan(accountId: $id, planId: $p) { active } }`, { id: fresh, p: bad })],
    ['voidGrant grantId', 'grant', (bad) => srv.gql(`mutation($id: ID!) { voidGrant(grantId: $id, reason: "r") { id } }`, { id: bad })],
  ];
  const typeOf: Record<Slot, string> = { account: 'Account', grant: 'CreditGrant', event: 'UsageEvent', hold: 'Reservation', plan: 'Plan', pack: 'CreditPack' };

  /** A bad id for `slot`: a real object of another type, a random uuid, base64 garbage or of a non-uuid, empty. */
  const badId = (slot: Slot) =>
    fc.oneof(
      fc.constantFrom(...(Object.keys({ account: 1, grant: 1, batch: 1, event: 1, hold: 1, entry: 1, plan: 1, pack: 1 }) as Array<keyof typeof ids>)).filter((k) => k !== slot).map((k) => () => ids[k]),
      fc.constant(() => gid(typeOf[slot], randomUUID())),
      fc.uint8Array({ minLength: 0, maxLength: 40 }).map((b) => () => Buffer.from(b).toString('base64')),
      fc.string({ maxLength: 40 }).map((s) => () => Buffer.from(`${typeOf[slot]}:${s}`).toString('base64')),
      fc.constantFrom(() => '', () => '%%%', () => gid(typeOf[slot], '00000000-0000-0000-0000-00000000000g')),
    );

  it('property: a bad id in any ID argument of any mutation (and quote) is NOT_FOUND and changes nothing', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...slots).chain(([name, slot, send]) => fc.tuple(fc.constant(name), fc.constant(send), badId(slot))), async ([, send, bad]) => {
        await expectRejected(() => send(bad()), 'NOT_FOUND', [acct, fresh]);
      }),
      { numRuns: 200 },
    );
  });

  it('each slot with its right id is answered (control: the bad id alone made the request fail)', async () => {
    // Read-only or repeatable slots only; the rest are covered by mutations.test.ts.
    expect(ok(await slots.find(([n]) => n === 'quote accountId')![2](acct)).quote.cost).toBe('1');
    expect(ok(await slots.find(([n]) => n === 'extendReservation reservationId')![2](ids.hold)).extendReservation.id).toBe(ids.hold);
    expect(ok(await slots.find(([n]) => n === 'setAgentBudget accountId')![2](acct)).setAgentBudget.agentId).toBe('a');
  });
});
