/**
 * Promo codes over the API (issue #5): createPromoCode is admin-only and refuses terms no code
 * should have (a validUntil already past, credits <= 0, maxRedemptions < 1, expiresAfterDays
 * outside 1..3650) while a retry with the same terms replays; redeemPromoCode grants a
 * FREE PROMO_CODE batch once per account per code, is refused after validUntil (at the
 * redeeming account's clock) and once maxRedemptions is reached, also under a race. Every
 * refusal is shown to change nothing (balance version, grants, redemptions).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { createApiKey } from '../../../src/auth/api-keys.js';
import { expectConsistent, expectError, expectUnchanged, ok, readAccount, snapshot } from '../helpers.js';
import { DAY_MS, createAccount, growthCounts } from './growth-helpers.js';

const CREATE_PROMO = `mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) {
  code credits expiresAfterDays maxRedemptions redemptions validUntil } }`;
const PROMO = `query($code: String!) { promoCode(code: $code) { code credits expiresAfterDays maxRedemptions redemptions validUntil } }`;
const REDEEM = `mutation($accountId: ID!, $code: String!) { redeemPromoCode(accountId: $accountId, code: $code) {
  id amount type source reference note createdAt batch { id allocated remaining status type source expiresAt } } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const GRANTS = `query($id: ID!) { account(id: $id) { grants(first: 20) { edges { node { id amount type source reference batch { expiresAt } } } } } }`;

let srv: TestServer;
let creditsWriteKey: string;

beforeAll(async () => {
  srv = await startTestServer();
  creditsWriteKey = (await createApiKey(srv.services.pool, { name: 'growth-promo-credits', scopes: ['credits:write'] })).token;
});

afterAll(async () => {
  await srv?.close();
});

/** A fresh, valid, unique promo code. */
function newCode(prefix = 'PROMO'): string {
  return `${prefix}-${randomBytes(6).toString('hex').toUpperCase()}`;
}

async function createPromo(input: Record<string, unknown>) {
  return ok(await srv.gql(CREATE_PROMO, { input })).createPromoCode;
}

async function promo(code: string) {
  return ok(await srv.gql(PROMO, { code })).promoCode;
}

/** promoCode(code)'s live and test-mode redemption counts. */
async function promoCounts(code: string): Promise<{ redemptions: number; testRedemptions: number }> {
  return ok(await srv.gql(`query($code: String!) { promoCode(code: $code) { redemptions testRedemptions } }`, { code })).promoCode;
}

async function grantsOf(accountId: string): Promise<any[]> {
  return ok(await srv.gql(GRANTS, { id: accountId })).account.grants.edges.map((e: any) => e.node);
}

/** Asserts a refused redemption: the code, and that neither the account nor the promo changed. */
async function expectRefusedRedeem(accountId: string, code: string, errorCode: string) {
  const promoBefore = await promo(code);
  const countsBefore = await growthCounts(srv, accountId);
  const res = await expectUnchanged(srv, [accountId], () => srv.gql(REDEEM, { accountId, code }));
  const error = expectError(res, errorCode);
  expect(res.body.data ?? null).toBeNull();
  expect(await promo(code)).toEqual(promoBefore);
  expect(await growthCounts(srv, accountId)).toEqual(countsBefore);
  return error;
}

describe('createPromoCode', () => {
  it('an admin creates a code with its terms; promoCode(code) reads it back with 0 redemptions', async () => {
    const code = newCode();
    const validUntil = new Date(Date.now() + 10 * DAY_MS).toISOString();
    const created = await createPromo({ code, credits: '12.5', expiresAfterDays: 14, maxRedemptions: 3, validUntil });
    expect(created).toEqual({ code, credits: '12.5', expiresAfterDays: 14, maxRedemptions: 3, redemptions: 0, validUntil });
    expect(await promo(code)).toEqual(created);
  });

  it('a validUntil that has already passed is BAD_USER_INPUT on validUntil and creates nothing: such a code could never be redeemed, and its name would be taken', async () => {
    for (const validUntil of [new Date(Date.now() - DAY_MS).toISOString(), '2001-01-01T00:00:00.000Z']) {
      const code = newCode();
      const res = await srv.gql(CREATE_PROMO, { input: { code, credits: '5', validUntil } });
      const err = expectError(res, 'BAD_USER_INPUT');
      expect(err.extensions?.field).toBe('validUntil');
      expect(err.message).toMatch(/validUntil.*future/);
      expect(res.body.data ?? null).toBeNull();
      expect(await promo(code)).toBeNull();
      // The name stays free: the corrected code can be created.
      const fixed = new Date(Date.now() + DAY_MS).toISOString();
      expect(await createPromo({ code, credits: '5', validUntil: fixed })).toMatchObject({ code, validUntil: fixed });
    }
  });

  it('creating a code again with the same terms after its validUntil passed still returns it (idempotent), not a refusal', async () => {
    const code = newCode();
    const validUntil = new Date(Date.now() + DAY_MS).toISOString();
    const created = await createPromo({ code, credits: '5', validUntil });
    srv.services.setNow(new Date(Date.now() + 2 * DAY_MS)); // the platform's clock, past validUntil
    try {
      expect(await createPromo({ code, credits: '5', validUntil })).toEqual(created);
      // Other terms are refused (the past validUntil itself, before the code is looked up).
      expectError(await srv.gql(CREATE_PROMO, { input: { code, credits: '6', validUntil } }), 'BAD_USER_INPUT');
    } finally {
      srv.services.setNow(null);
    }
    expect(await promo(code)).toEqual(created);
  });

  it('credits <= 0, maxRedemptions < 1 and expiresAfterDays outside 1..3650 are BAD_USER_INPUT on their field and create nothing', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ credits: '0' }, 'credits'],
      [{ credits: '-1' }, 'credits'],
      [{ credits: '1', maxRedemptions: 0 }, 'maxRedemptions'],
      [{ credits: '1', maxRedemptions: -3 }, 'maxRedemptions'],
      [{ credits: '1', expiresAfterDays: 0 }, 'expiresAfterDays'],
      [{ credits: '1', expiresAfterDays: 3651 }, 'expiresAfterDays'],
    ];
    for (const [terms, field] of cases) {
      const code = newCode();
      const res = await srv.gql(CREATE_PROMO, { input: { code, ...terms } });
      const err = expectError(res, 'BAD_USER_INPUT');
      expect(err.extensions?.field, JSON.stringify(terms)).toBe(field);
      expect(await promo(code)).toBeNull();
    }
  });

  it('a credits:write key is FORBIDDEN and no code is created', async () => {
    const code = newCode();
    const res = await srv.gql(CREATE_PROMO, { input: { code, credits: '5' } }, creditsWriteKey);
    expectError(res, 'FORBIDDEN');
    expect(res.body.data ?? null).toBeNull();
    expect(await promo(code)).toBeNull();
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM promo_codes WHERE code = $1', [code]);
    expect(rows[0].n).toBe(0);
  });
});

describe('redeemPromoCode', () => {
  it('grants FREE PROMO_CODE credit with reference = the code and a batch expiring expiresAfterDays after redemption', async () => {
    const code = newCode();
    await createPromo({ code, credits: '25', expiresAfterDays: 7 });
    const acct = (await createAccount(srv)).id;
    const before = Date.now();
    const g = ok(await srv.gql(REDEEM, { accountId: acct, code })).redeemPromoCode;
    const after = Date.now();
    expect(g).toMatchObject({ amount: '25', type: 'FREE', source: 'PROMO_CODE', reference: code, note: null });
    expect(g.batch).toMatchObject({ allocated: '25', remaining: '25', status: 'ACTIVE', type: 'FREE', source: 'PROMO_CODE' });
    const redeemedAt = Date.parse(g.createdAt);
    expect(redeemedAt).toBeGreaterThanOrEqual(before - 1000);
    expect(redeemedAt).toBeLessThanOrEqual(after + 1000);
    expect(Date.parse(g.batch.expiresAt) - redeemedAt).toBe(7 * DAY_MS);
    // The grant is in the account's Credit Grants table.
    expect(await grantsOf(acct)).toEqual([{ id: g.id, amount: '25', type: 'FREE', source: 'PROMO_CODE', reference: code, batch: { expiresAt: g.batch.expiresAt } }]);
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '25', free: '25', paid: '0' });
    expect((await promo(code)).redemptions).toBe(1);
    expect(await growthCounts(srv, acct)).toMatchObject({ promo_redemptions: 1 });
    await expectConsistent(srv, acct);
  });

  it('without expiresAfterDays the promo batch never expires', async () => {
    const code = newCode();
    await createPromo({ code, credits: '3' });
    const acct = (await createAccount(srv)).id;
    const g = ok(await srv.gql(REDEEM, { accountId: acct, code })).redeemPromoCode;
    expect(g).toMatchObject({ amount: '3', type: 'FREE', source: 'PROMO_CODE', reference: code });
    expect(g.batch.expiresAt).toBeNull();
  });

  it('a second redemption by the same account is BAD_USER_INPUT and grants nothing', async () => {
    const code = newCode();
    await createPromo({ code, credits: '10', maxRedemptions: 5 });
    const acct = (await createAccount(srv)).id;
    ok(await srv.gql(REDEEM, { accountId: acct, code }));
    await expectRefusedRedeem(acct, code, 'BAD_USER_INPUT');
    expect((await promo(code)).redemptions).toBe(1);
    expect(await grantsOf(acct)).toHaveLength(1);
    expect((await readAccount(srv, acct)).balance.total).toBe('10');
  });

  it('expiring between two redemptions: an account whose clock is before validUntil redeems, one after it is refused', async () => {
    const code = newCode();
    const validUntil = '2030-06-15T12:00:00.000Z';
    await createPromo({ code, credits: '4', validUntil, expiresAfterDays: 30 });
    const early = (await createAccount(srv, { clockStart: '2030-06-15T11:59:59.000Z' })).id;
    const late = (await createAccount(srv, { clockStart: '2030-06-15T12:00:01.000Z' })).id;

    const g = ok(await srv.gql(REDEEM, { accountId: early, code })).redeemPromoCode;
    // Redemption time is the test-mode account's clock.
    expect(g).toMatchObject({ amount: '4', type: 'FREE', source: 'PROMO_CODE', reference: code, createdAt: '2030-06-15T11:59:59.000Z' });
    expect(g.batch.expiresAt).toBe(new Date(Date.parse('2030-06-15T11:59:59.000Z') + 30 * DAY_MS).toISOString());

    const err = await expectRefusedRedeem(late, code, 'BAD_USER_INPUT');
    expect(err.message).toMatch(/expire/i);
    // Test-mode redemptions are counted apart from the live ones (see below).
    expect(await promoCounts(code)).toEqual({ redemptions: 0, testRedemptions: 1 });
    expect(await grantsOf(late)).toEqual([]);
  });

  it('test-mode redemptions are counted apart: they never use a live slot of maxRedemptions, and have maxRedemptions of their own', async () => {
    const code = newCode();
    await createPromo({ code, credits: '5', maxRedemptions: 1 });
    const rehearsal = (await createAccount(srv, { clockStart: '2030-01-01T00:00:00.000Z' })).id;
    ok(await srv.gql(REDEEM, { accountId: rehearsal, code }));
    // The code's one live redemption is still there for a live account.
    const live = (await createAccount(srv)).id;
    const g = ok(await srv.gql(REDEEM, { accountId: live, code })).redeemPromoCode;
    expect(g).toMatchObject({ amount: '5', source: 'PROMO_CODE', reference: code });
    expect(await promoCounts(code)).toEqual({ redemptions: 1, testRedemptions: 1 });
    // Each side is exhausted on its own count.
    const err = await expectRefusedRedeem((await createAccount(srv, { clockStart: '2030-01-01T00:00:00.000Z' })).id, code, 'BAD_USER_INPUT');
    expect(err.extensions?.reason).toBe('EXHAUSTED');
    expect(err.message).toMatch(/test-mode/);
    expect((await expectRefusedRedeem((await createAccount(srv)).id, code, 'BAD_USER_INPUT')).extensions?.reason).toBe('EXHAUSTED');
    expect(await promoCounts(code)).toEqual({ redemptions: 1, testRedemptions: 1 });
  });

  it('once maxRedemptions is reached further accounts are refused with BAD_USER_INPUT', async () => {
    const code = newCode();
    await createPromo({ code, credits: '2', maxRedemptions: 2 });
    for (let i = 0; i < 2; i++) ok(await srv.gql(REDEEM, { accountId: (await createAccount(srv)).id, code }));
    const third = (await createAccount(srv)).id;
    await expectRefusedRedeem(third, code, 'BAD_USER_INPUT');
    expect((await promo(code)).redemptions).toBe(2);
    expect(await grantsOf(third)).toEqual([]);
  });

  it("a client grant cannot take the key of the code's grant: grantCredits under promo:<code> is BAD_USER_INPUT, the redemption then grants", async () => {
    const code = newCode();
    await createPromo({ code, credits: '6', maxRedemptions: 1 });
    const acct = (await createAccount(srv)).id;
    // The very payload the redemption would write (FREE, PROMO_CODE, reference = the code, never
    // expiring): accepted, it would make the redemption a replay that grants nothing and still
    // uses up the code's only redemption; with another amount the redemption would be
    // IDEMPOTENCY_CONFLICT.
    for (const amount of ['6', '1']) {
      const res = await expectUnchanged(srv, [acct], () =>
        srv.gql(GRANT, { input: { accountId: acct, amount, type: 'FREE', source: 'PROMO_CODE', reference: code, idempotencyKey: `promo:${code}` } }),
      );
      const err = expectError(res, 'BAD_USER_INPUT');
      expect(err.message).toMatch(/idempotencyKey.*reserved/);
      expect(err.extensions?.field).toBe('idempotencyKey');
    }
    const g = ok(await srv.gql(REDEEM, { accountId: acct, code })).redeemPromoCode;
    expect(g).toMatchObject({ amount: '6', source: 'PROMO_CODE', reference: code });
    expect((await readAccount(srv, acct)).balance.total).toBe('6');
    expect((await promo(code)).redemptions).toBe(1);
    await expectConsistent(srv, acct);
  });

  it('an unknown code is NOT_FOUND and changes nothing', async () => {
    const acct = (await createAccount(srv)).id;
    const res = await expectUnchanged(srv, [acct], () => srv.gql(REDEEM, { accountId: acct, code: newCode('NOPE') }));
    expectError(res, 'NOT_FOUND');
  });

  it('50 accounts racing for the last 10 redemptions: exactly 10 win, 40 get BAD_USER_INPUT, redemptions = 12', async () => {
    const code = newCode('RACE');
    await createPromo({ code, credits: '1.5', maxRedemptions: 12, expiresAfterDays: 3 });
    for (let i = 0; i < 2; i++) ok(await srv.gql(REDEEM, { accountId: (await createAccount(srv)).id, code }));
    expect((await promo(code)).redemptions).toBe(2);

    const racers = await Promise.all(Array.from({ length: 50 }, () => createAccount(srv).then((a) => a.id)));
    const before = new Map(await Promise.all(racers.map(async (a) => [a, await snapshot(srv, a)] as const)));
    const results = await Promise.all(racers.map((accountId) => srv.gql(REDEEM, { accountId, code })));

    const winners = racers.filter((_, i) => !results[i]!.body.errors);
    const losers = racers.filter((_, i) => results[i]!.body.errors);
    expect(winners).toHaveLength(10);
    expect(losers).toHaveLength(40);
    for (const res of results) {
      if (res.body.errors) expectError(res, 'BAD_USER_INPUT');
      else expect(res.body.data.redeemPromoCode).toMatchObject({ amount: '1.5', type: 'FREE', source: 'PROMO_CODE', reference: code, batch: { allocated: '1.5' } });
    }
    expect((await promo(code)).redemptions).toBe(12);
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM promo_redemptions WHERE code = $1', [code]);
    expect(rows[0].n).toBe(12);
    // Losers were granted nothing at all; winners exactly one promo grant each.
    for (const acct of losers) {
      expect(await snapshot(srv, acct)).toEqual(before.get(acct));
      expect(await growthCounts(srv, acct)).toMatchObject({ promo_redemptions: 0 });
    }
    for (const acct of winners) {
      expect((await grantsOf(acct)).map((g) => [g.source, g.amount, g.reference])).toEqual([['PROMO_CODE', '1.5', code]]);
      await expectConsistent(srv, acct);
    }
  });
});
