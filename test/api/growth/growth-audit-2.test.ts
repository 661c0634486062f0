/**
 * Second audit of growth credits (welcome bonus, promo codes, referrals), over the API: what a
 * platform running campaigns hits. A code's validUntil at the exact instant (test clocks), a
 * promo batch's expiry counted from the account's clock, codes typed with other case and
 * surrounding whitespace, a code's limit under redemptions racing through two servers, referral
 * loops and chains, a referral cap of 0, and what an end user of a referee may see of the
 * referrer. Every refusal is shown to change nothing. Referral settings are restored afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { signUserToken } from '../../../src/auth/jwt.js';
import { expectConsistent, expectError, expectUnchanged, ok } from '../helpers.js';
import { DAY_MS, createAccount, growthCounts, referralSettings, setReferralSettings } from './growth-helpers.js';

const CREATE_PROMO = `mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) { code credits maxRedemptions redemptions validUntil } }`;
const PROMO = `query($code: String!) { promoCode(code: $code) { code redemptions testRedemptions } }`;
const REDEEM = `mutation($accountId: ID!, $code: String!) { redeemPromoCode(accountId: $accountId, code: $code) {
  id amount type source reference batch { id status expiresAt } } }`;
const REFER = `mutation($accountId: ID!, $code: String!) { redeemReferral(accountId: $accountId, code: $code) { id amount source reference note } }`;
const ADVANCE = `mutation($accountId: ID!, $to: DateTime!) { advanceTestClock(accountId: $accountId, to: $to) { id } }`;
const BALANCE = `query($id: ID!) { account(id: $id) { referralsRewarded balance { total free } } }`;

let srv: TestServer;
let other: TestServer;
let original: { referralRewardCredits: string; referralMaxRewardsPerAccount: number };

beforeAll(async () => {
  srv = await startTestServer();
  other = await startTestServer();
  original = await referralSettings(srv);
  await setReferralSettings(srv, { referralRewardCredits: '2.5', referralMaxRewardsPerAccount: 10 });
});

afterAll(async () => {
  if (srv && original) await setReferralSettings(srv, original);
  await other?.close();
  await srv?.close();
});

function newCode(prefix = 'AUDIT'): string {
  return `${prefix}-${randomBytes(6).toString('hex').toUpperCase()}`;
}

async function promo(code: string) {
  return ok(await srv.gql(PROMO, { code })).promoCode;
}

/** A refused redemption: the error, and nothing changed on the account or the code. */
async function expectRefusedRedeem(accountId: string, code: string, errorCode: string) {
  const before = [await promo(code.trim().toUpperCase()), await growthCounts(srv, accountId)];
  const res = await expectUnchanged(srv, [accountId], () => srv.gql(REDEEM, { accountId, code }));
  const error = expectError(res, errorCode);
  expect([await promo(code.trim().toUpperCase()), await growthCounts(srv, accountId)]).toEqual(before);
  return error;
}

describe('promo codes at their boundaries', () => {
  it('validUntil is the first instant a code no longer redeems: a test clock 1 ms before it redeems, one at it is EXPIRED, also after advancing to it', async () => {
    const validUntil = new Date(Math.ceil((Date.now() + 60 * DAY_MS) / 1000) * 1000);
    const code = newCode();
    ok(await srv.gql(CREATE_PROMO, { input: { code, credits: '3', validUntil: validUntil.toISOString() } }));

    const before = await createAccount(srv, { clockStart: new Date(validUntil.getTime() - 1).toISOString() });
    expect(ok(await srv.gql(REDEEM, { accountId: before.id, code })).redeemPromoCode).toMatchObject({ amount: '3', type: 'FREE' });

    const at = await createAccount(srv, { clockStart: validUntil.toISOString() });
    expect((await expectRefusedRedeem(at.id, code, 'BAD_USER_INPUT')).extensions?.reason).toBe('EXPIRED');

    const advanced = await createAccount(srv, { clockStart: new Date(validUntil.getTime() - DAY_MS).toISOString() });
    ok(await srv.gql(ADVANCE, { accountId: advanced.id, to: validUntil.toISOString() }));
    expect((await expectRefusedRedeem(advanced.id, code, 'BAD_USER_INPUT')).extensions?.reason).toBe('EXPIRED');
    expect(await promo(code)).toMatchObject({ redemptions: 0, testRedemptions: 1 });
  });

  it("a promo batch expires expiresAfterDays after the redeeming account's now (its test clock, not the server's), and stops paying then", async () => {
    const code = newCode();
    ok(await srv.gql(CREATE_PROMO, { input: { code, credits: '4', expiresAfterDays: 7 } }));
    const start = '2031-03-01T12:00:00.000Z';
    const acct = await createAccount(srv, { clockStart: start });
    const g = ok(await srv.gql(REDEEM, { accountId: acct.id, code })).redeemPromoCode;
    expect(g.batch.expiresAt).toBe(new Date(Date.parse(start) + 7 * DAY_MS).toISOString());
    ok(await srv.gql(ADVANCE, { accountId: acct.id, to: g.batch.expiresAt }));
    expect(ok(await srv.gql(BALANCE, { id: acct.id })).account.balance.total).toBe('0');
    await expectConsistent(srv, acct.id);
  });

  it('codes match whatever their case and surrounding whitespace (tabs, newlines, no-break spaces), at creation, redemption and lookup', async () => {
    const stored = newCode('spring');
    const created = ok(await srv.gql(CREATE_PROMO, { input: { code: ` ${stored.toLowerCase()}\n`, credits: '1' } })).createPromoCode;
    expect(created.code).toBe(stored.toUpperCase());
    const acct = await createAccount(srv);
    const g = ok(await srv.gql(REDEEM, { accountId: acct.id, code: `\u00a0\t${stored.toLowerCase()} ` })).redeemPromoCode;
    expect(g).toMatchObject({ reference: stored.toUpperCase(), amount: '1' });
    expect((await expectRefusedRedeem(acct.id, stored, 'BAD_USER_INPUT')).extensions?.reason).toBe('ALREADY_REDEEMED');
    expect(ok(await srv.gql(PROMO, { code: ` ${stored.toLowerCase()} ` })).promoCode).toMatchObject({ code: stored.toUpperCase(), redemptions: 1 });
    // A space inside a code is not trimmed away: it is another (malformed) code.
    const inner = `${stored.slice(0, 4)} ${stored.slice(4)}`;
    const res = await expectUnchanged(srv, [acct.id], () => srv.gql(REDEEM, { accountId: acct.id, code: inner }));
    expect(expectError(res, 'BAD_USER_INPUT').extensions?.field).toBe('code');
  });

  it("redemptions racing through two servers stop at exactly maxRedemptions; each loser changes nothing", async () => {
    const code = newCode('RACE2');
    ok(await srv.gql(CREATE_PROMO, { input: { code, credits: '0.5', maxRedemptions: 7 } }));
    const racers = await Promise.all(Array.from({ length: 24 }, () => createAccount(srv).then((a) => a.id)));
    const results = await Promise.all(racers.map((accountId, i) => (i % 2 ? other : srv).gql(REDEEM, { accountId, code })));
    const won = results.filter((r) => !r.body.errors);
    expect(won).toHaveLength(7);
    for (const r of results) if (r.body.errors) expect(expectError(r, 'BAD_USER_INPUT').extensions?.reason).toBe('EXHAUSTED');
    expect(await promo(code)).toMatchObject({ redemptions: 7, testRedemptions: 0 });
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM promo_redemptions WHERE code = $1', [code]);
    expect(rows[0].n).toBe(7);
    for (const [i, a] of racers.entries()) {
      expect(ok(await srv.gql(BALANCE, { id: a })).account.balance.total).toBe(results[i]!.body.errors ? '0' : '0.5');
    }
  });
});

describe('referrals', () => {
  it('no loop: once B redeemed A, A cannot redeem B (NOT_NEWER, nothing changed); a chain A <- B <- C rewards each referrer once', async () => {
    const a = await createAccount(srv);
    const b = await createAccount(srv);
    const c = await createAccount(srv);
    ok(await srv.gql(REFER, { accountId: b.id, code: a.referralCode }));
    const res = await expectUnchanged(srv, [a.id, b.id], () => srv.gql(REFER, { accountId: a.id, code: b.referralCode }));
    expect(expectError(res, 'BAD_USER_INPUT').extensions?.reason).toBe('NOT_NEWER');
    ok(await srv.gql(REFER, { accountId: c.id, code: ` ${b.referralCode.toLowerCase()}\t` }));
    const totals = await Promise.all([a, b, c].map(async (x) => ok(await srv.gql(BALANCE, { id: x.id })).account));
    expect(totals.map((t) => [t.balance.total, t.referralsRewarded])).toEqual([['2.5', 1], ['5', 1], ['2.5', 0]]);
    for (const x of [a, b, c]) await expectConsistent(srv, x.id);
  });

  it("an end user of the referee sees neither the referrer's id nor how many rewards the referrer had (the cap note)", async () => {
    await setReferralSettings(srv, { referralMaxRewardsPerAccount: 0 });
    try {
      const referrer = await createAccount(srv);
      const referee = await createAccount(srv);
      const g = ok(await srv.gql(REFER, { accountId: referee.id, code: referrer.referralCode })).redeemReferral;
      // The platform (an API key) is told why the referrer got nothing.
      expect(g.note).toMatch(/not rewarded/i);
      expect(ok(await srv.gql(BALANCE, { id: referrer.id })).account).toMatchObject({ referralsRewarded: 0, balance: { total: '0' } });
      const { externalId } = ok(await srv.gql(`query($id: ID!) { account(id: $id) { externalId } }`, { id: referee.id })).account;
      const member = await signUserToken(srv.jwtSecret, { sub: 'member-audit-2', org: externalId, expiresInSeconds: 600 });
      const seen = ok(await srv.gql(`query($id: ID!) { account(id: $id) { grants(first: 5) { edges { node { id source amount reference note } } } } }`, { id: referee.id }, member));
      expect(seen.account.grants.edges.map((e: any) => e.node)).toEqual([{ id: g.id, source: 'REFERRAL', amount: '2.5', reference: null, note: null }]);
    } finally {
      await setReferralSettings(srv, { referralMaxRewardsPerAccount: 10 });
    }
  });
});

describe('welcome bonus and retries', () => {
  it('a welcome bonus change between createAccount and its retry grants nothing more: the account keeps the bonus in force when it was opened', async () => {
    const SETTINGS = `{ settings { welcomeBonusCredits welcomeBonusExpiresAfterDays } }`;
    const UPDATE = `mutation($input: SettingsInput!) { updateSettings(input: $input) { welcomeBonusCredits } }`;
    const CREATE = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`;
    const GRANTS = `query($id: ID!) { account(id: $id) { balance { total free } grants(first: 5) { edges { node { source amount } } } } }`;
    const saved = ok(await srv.gql(SETTINGS)).settings;
    try {
      ok(await srv.gql(UPDATE, { input: { welcomeBonusCredits: '6', welcomeBonusExpiresAfterDays: 30 } }));
      const input = { externalId: `audit2-${randomBytes(6).toString('hex')}`, name: 'audit 2', kind: 'USER', welcomeBonus: true };
      const id = ok(await srv.gql(CREATE, { input })).createAccount.id;
      ok(await srv.gql(UPDATE, { input: { welcomeBonusCredits: '9' } }));
      const replay = await expectUnchanged(srv, [id], () => srv.gql(CREATE, { input }));
      expect(ok(replay).createAccount.id).toBe(id);
      const a = ok(await srv.gql(GRANTS, { id })).account;
      expect(a.grants.edges.map((e: any) => e.node)).toEqual([{ source: 'WELCOME_BONUS', amount: '6' }]);
      expect(a.balance).toEqual({ total: '6', free: '6' });
    } finally {
      ok(await srv.gql(UPDATE, { input: { welcomeBonusCredits: saved.welcomeBonusCredits, welcomeBonusExpiresAfterDays: saved.welcomeBonusExpiresAfterDays } }));
    }
  });

  it('redeem calls take no idempotency key: a retry (an answer lost) is refused ALREADY_REDEEMED / ALREADY_REFERRED and grants nothing more', async () => {
    const code = newCode();
    ok(await srv.gql(CREATE_PROMO, { input: { code, credits: '2' } }));
    const referrer = await createAccount(srv);
    const acct = await createAccount(srv);
    ok(await srv.gql(REDEEM, { accountId: acct.id, code }));
    ok(await srv.gql(REFER, { accountId: acct.id, code: referrer.referralCode }));
    expect((await expectRefusedRedeem(acct.id, code, 'BAD_USER_INPUT')).extensions?.reason).toBe('ALREADY_REDEEMED');
    const res = await expectUnchanged(srv, [acct.id, referrer.id], () => srv.gql(REFER, { accountId: acct.id, code: referrer.referralCode }));
    expect(expectError(res, 'BAD_USER_INPUT').extensions?.reason).toBe('ALREADY_REFERRED');
    expect(ok(await srv.gql(BALANCE, { id: acct.id })).account.balance.total).toBe('4.5');
  });
});
