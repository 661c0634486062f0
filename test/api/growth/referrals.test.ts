/**
 * Referrals over the API (issue #5): a newer account redeems an older account's referralCode
 * and both get Settings.referralRewardCredits as FREE REFERRAL credit whose reference is the
 * other account's global id; the referrer is rewarded at most referralMaxRewardsPerAccount
 * times (later referees are still rewarded, their grant's note says the referrer was not).
 * Refusals (twice, self, older redeeming newer, unknown code) change nothing.
 * The referral settings are set here and restored afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { dbId, expectConsistent, expectError, expectUnchanged, ok, readAccount } from '../helpers.js';
import { signUserToken } from '../../../src/auth/jwt.js';
import { createAccount, growthCounts, referralSettings, setReferralSettings, type GrowthAccount } from './growth-helpers.js';

const REWARD = '7.25';
const CAP = 3;

const REDEEM = `mutation($accountId: ID!, $code: String!) { redeemReferral(accountId: $accountId, code: $code) {
  id amount type source reference note batch { allocated remaining type source status expiresAt } } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const ACCOUNT = `query($id: ID!) { account(id: $id) { id referralCode referralsRewarded balance { total free paid }
  grants(first: 20) { edges { node { id amount type source reference note } } } } }`;

let srv: TestServer;
let original: { referralRewardCredits: string; referralMaxRewardsPerAccount: number };

beforeAll(async () => {
  srv = await startTestServer();
  original = await referralSettings(srv);
  await setReferralSettings(srv, { referralRewardCredits: REWARD, referralMaxRewardsPerAccount: CAP });
});

afterAll(async () => {
  if (srv && original) await setReferralSettings(srv, original);
  await srv?.close();
});

async function account(id: string) {
  return ok(await srv.gql(ACCOUNT, { id })).account as {
    id: string;
    referralCode: string;
    referralsRewarded: number;
    balance: { total: string; free: string; paid: string };
    grants: { edges: Array<{ node: { id: string; amount: string; type: string; source: string; reference: string | null; note: string | null } }> };
  };
}

async function referralGrants(id: string) {
  return (await account(id)).grants.edges.map((e) => e.node).filter((g) => g.source === 'REFERRAL');
}

/** Two accounts, the second created strictly after the first. */
async function olderAndNewer(): Promise<[GrowthAccount, GrowthAccount]> {
  const older = await createAccount(srv);
  const newer = await createAccount(srv);
  expect(Date.parse(newer.createdAt)).toBeGreaterThan(Date.parse(older.createdAt));
  return [older, newer];
}

/** Asserts a refused redemption changed neither account (balance, grants, referrals). */
async function expectRefused(referee: string, others: string[], code: string, errorCode: string) {
  const all = [referee, ...others];
  const countsBefore = await Promise.all(all.map((a) => growthCounts(srv, a)));
  const rewardedBefore = await Promise.all(all.map(async (a) => (await account(a)).referralsRewarded));
  const res = await expectUnchanged(srv, all, () => srv.gql(REDEEM, { accountId: referee, code }));
  const error = expectError(res, errorCode);
  expect(res.body.data ?? null).toBeNull();
  expect(await Promise.all(all.map((a) => growthCounts(srv, a)))).toEqual(countsBefore);
  expect(await Promise.all(all.map(async (a) => (await account(a)).referralsRewarded))).toEqual(rewardedBefore);
  return error;
}

describe('referral codes', () => {
  it('every account has a referralCode of its own', async () => {
    const [a, b] = await olderAndNewer();
    expect(a.referralCode).toMatch(/^[A-Z0-9]{4,32}$/);
    expect(b.referralCode).toMatch(/^[A-Z0-9]{4,32}$/);
    expect(a.referralCode).not.toBe(b.referralCode);
    expect((await account(a.id)).referralCode).toBe(a.referralCode);
  });
});

describe('redeemReferral', () => {
  it("a newer account redeems an older account's code: both get the reward as FREE REFERRAL credit referencing the other", async () => {
    const [referrer, referee] = await olderAndNewer();
    const g = ok(await srv.gql(REDEEM, { accountId: referee.id, code: referrer.referralCode })).redeemReferral;
    expect(g).toMatchObject({ amount: REWARD, type: 'FREE', source: 'REFERRAL', reference: referrer.id, note: null });
    expect(g.batch).toMatchObject({ allocated: REWARD, remaining: REWARD, type: 'FREE', source: 'REFERRAL', status: 'ACTIVE' });

    expect(await referralGrants(referee.id)).toEqual([{ id: g.id, amount: REWARD, type: 'FREE', source: 'REFERRAL', reference: referrer.id, note: null }]);
    const theirs = await referralGrants(referrer.id);
    expect(theirs).toEqual([expect.objectContaining({ amount: REWARD, type: 'FREE', source: 'REFERRAL', reference: referee.id })]);

    const r = await account(referrer.id);
    const e = await account(referee.id);
    expect(r.balance).toMatchObject({ total: REWARD, free: REWARD, paid: '0' });
    expect(e.balance).toMatchObject({ total: REWARD, free: REWARD, paid: '0' });
    expect(r.referralsRewarded).toBe(1);
    expect(e.referralsRewarded).toBe(0);
    await expectConsistent(srv, referrer.id);
    await expectConsistent(srv, referee.id);

    // A member of the referee organization (end-user token) sees its reward, but not the
    // referrer's account id: another tenant's.
    const { externalId } = ok(await srv.gql(`query($id: ID!) { account(id: $id) { externalId } }`, { id: referee.id })).account;
    const member = await signUserToken(srv.jwtSecret, { sub: 'member-1', org: externalId, expiresInSeconds: 600 });
    const seen = (ok(await srv.gql(ACCOUNT, { id: referee.id }, member)).account as Awaited<ReturnType<typeof account>>).grants.edges.map((x) => x.node);
    expect(seen.filter((x) => x.source === 'REFERRAL')).toEqual([{ id: g.id, amount: REWARD, type: 'FREE', source: 'REFERRAL', reference: null, note: null }]);
  });

  it('past the cap: of 5 new accounts the first 3 reward the referrer, the last 2 only themselves with a note saying so', async () => {
    const referrer = await createAccount(srv);
    const referees: GrowthAccount[] = [];
    for (let i = 0; i < 5; i++) referees.push(await createAccount(srv));
    for (const r of referees) expect(Date.parse(r.createdAt)).toBeGreaterThan(Date.parse(referrer.createdAt));

    const grants = [];
    for (const r of referees) grants.push(ok(await srv.gql(REDEEM, { accountId: r.id, code: referrer.referralCode })).redeemReferral);

    for (const [i, g] of grants.entries()) {
      // Every new account is rewarded, whatever the referrer's count.
      expect(g).toMatchObject({ amount: REWARD, type: 'FREE', source: 'REFERRAL', reference: referrer.id });
      if (i < CAP) {
        expect(g.note).toBeNull();
      } else {
        expect(g.note).toEqual(expect.any(String));
        expect(g.note).toMatch(/referrer/i);
        expect(g.note).toMatch(/not rewarded/i);
      }
      expect((await account(referees[i]!.id)).balance.total).toBe(REWARD);
    }

    const r = await account(referrer.id);
    expect(r.referralsRewarded).toBe(3);
    const rewards = await referralGrants(referrer.id);
    expect(rewards).toHaveLength(3);
    expect(new Set(rewards.map((g) => g.reference))).toEqual(new Set(referees.slice(0, 3).map((x) => x.id)));
    expect(rewards.every((g) => g.amount === REWARD && g.type === 'FREE')).toBe(true);
    expect(r.balance.total).toBe('21.75'); // 3 x 7.25
    await expectConsistent(srv, referrer.id);
  });

  it('5 new accounts redeeming one code at the same time still reward the referrer exactly 3 times', async () => {
    const referrer = await createAccount(srv);
    const referees = await Promise.all(Array.from({ length: 5 }, () => createAccount(srv)));
    const results = await Promise.all(referees.map((r) => srv.gql(REDEEM, { accountId: r.id, code: referrer.referralCode })));
    const grants = results.map((res) => ok(res).redeemReferral);
    expect(grants.every((g) => g.amount === REWARD && g.source === 'REFERRAL' && g.reference === referrer.id)).toBe(true);
    expect(grants.filter((g) => g.note === null)).toHaveLength(3);
    expect(grants.filter((g) => typeof g.note === 'string' && /not rewarded/i.test(g.note))).toHaveLength(2);
    expect((await account(referrer.id)).referralsRewarded).toBe(3);
    expect(await referralGrants(referrer.id)).toHaveLength(3);
    expect((await account(referrer.id)).balance.total).toBe('21.75');
  });

  it('never twice for the same new account: a second redeemReferral is BAD_USER_INPUT and grants nothing', async () => {
    const [referrer, referee] = await olderAndNewer();
    ok(await srv.gql(REDEEM, { accountId: referee.id, code: referrer.referralCode }));
    await expectRefused(referee.id, [referrer.id], referrer.referralCode, 'BAD_USER_INPUT');
    expect(await referralGrants(referee.id)).toHaveLength(1);
    expect((await account(referrer.id)).referralsRewarded).toBe(1);
  });

  it('a second, different older referrer is refused for an account that already redeemed one', async () => {
    const first = await createAccount(srv);
    const second = await createAccount(srv);
    const referee = await createAccount(srv);
    ok(await srv.gql(REDEEM, { accountId: referee.id, code: first.referralCode }));
    await expectRefused(referee.id, [first.id, second.id], second.referralCode, 'BAD_USER_INPUT');
    expect((await account(second.id)).referralsRewarded).toBe(0);
    expect(await referralGrants(second.id)).toEqual([]);
  });

  it('self-referral is BAD_USER_INPUT and grants nothing', async () => {
    const a = await createAccount(srv);
    await expectRefused(a.id, [], a.referralCode, 'BAD_USER_INPUT');
    expect(await referralGrants(a.id)).toEqual([]);
  });

  it("an older account cannot redeem a newer account's code (BAD_USER_INPUT, nothing granted)", async () => {
    const [older, newer] = await olderAndNewer();
    await expectRefused(older.id, [newer.id], newer.referralCode, 'BAD_USER_INPUT');
    expect(await referralGrants(older.id)).toEqual([]);
    expect(await referralGrants(newer.id)).toEqual([]);
    // The refusal did not use up the newer account's own referral: it can still redeem the older one's code.
    const g = ok(await srv.gql(REDEEM, { accountId: newer.id, code: older.referralCode })).redeemReferral;
    expect(g).toMatchObject({ amount: REWARD, source: 'REFERRAL', reference: older.id });
  });

  it("client grants cannot take the referral grants' keys: grantCredits under referral:* is BAD_USER_INPUT, the referral then rewards both", async () => {
    const [referrer, referee] = await olderAndNewer();
    // The payloads the referral would write: accepted, they would make its grants replays that
    // grant nothing (or IDEMPOTENCY_CONFLICT with another amount).
    const attempts = [
      { accountId: referee.id, reference: referrer.id, idempotencyKey: 'referral:referee' },
      { accountId: referrer.id, reference: referee.id, idempotencyKey: `referral:referrer:${dbId(referee.id)}` },
    ];
    for (const a of attempts) {
      const res = await expectUnchanged(srv, [referee.id, referrer.id], () =>
        srv.gql(GRANT, { input: { ...a, amount: REWARD, type: 'FREE', source: 'REFERRAL' } }),
      );
      expect(expectError(res, 'BAD_USER_INPUT').message).toMatch(/idempotencyKey.*reserved/);
    }
    ok(await srv.gql(REDEEM, { accountId: referee.id, code: referrer.referralCode }));
    expect((await account(referee.id)).balance.total).toBe(REWARD);
    expect((await account(referrer.id)).balance.total).toBe(REWARD);
    expect((await account(referrer.id)).referralsRewarded).toBe(1);
  });

  it('referrals stay within one mode: test-mode and live accounts never reward each other (BAD_USER_INPUT, MODE_MISMATCH); two test-mode accounts can', async () => {
    // A test-mode account (its own clock, made by the platform itself) redeeming a live code
    // would earn the live referrer real credit and use up one of its real rewards.
    const liveReferrer = await createAccount(srv);
    const testReferee = await createAccount(srv, { clockStart: '2035-01-01T00:00:00.000Z' });
    const toLive = await expectRefused(testReferee.id, [liveReferrer.id], liveReferrer.referralCode, 'BAD_USER_INPUT');
    expect(toLive.extensions?.reason).toBe('MODE_MISMATCH');
    expect(toLive.message).toMatch(/test-mode/);
    // A live account redeeming a test-mode account's code would get real credit for a fake referral.
    const testReferrer = await createAccount(srv, { clockStart: '2020-01-01T00:00:00.000Z' });
    const liveReferee = await createAccount(srv);
    expect((await expectRefused(liveReferee.id, [testReferrer.id], testReferrer.referralCode, 'BAD_USER_INPUT')).extensions?.reason).toBe('MODE_MISMATCH');

    // Between test-mode accounts the referral works as between live ones.
    ok(await srv.gql(REDEEM, { accountId: testReferee.id, code: testReferrer.referralCode }));
    expect((await account(testReferee.id)).balance.total).toBe(REWARD);
    expect((await account(testReferrer.id)).balance.total).toBe(REWARD);
    expect((await account(testReferrer.id)).referralsRewarded).toBe(1);
    // The live accounts, refused above, can still refer each other.
    ok(await srv.gql(REDEEM, { accountId: liveReferee.id, code: liveReferrer.referralCode }));
    expect((await account(liveReferrer.id)).referralsRewarded).toBe(1);
  });

  it('an unknown code is NOT_FOUND and grants nothing', async () => {
    const a = await createAccount(srv);
    const taken = new Set((await srv.services.pool.query('SELECT referral_code FROM accounts')).rows.map((r) => r.referral_code as string));
    let unknown = 'UNKNOWNCODE0';
    for (let i = 1; taken.has(unknown); i++) unknown = `UNKNOWNCODE${i}`;
    await expectRefused(a.id, [], unknown, 'NOT_FOUND');
  });

  it('the referral reward follows the setting in force', async () => {
    await setReferralSettings(srv, { referralRewardCredits: '2' });
    try {
      const [referrer, referee] = await olderAndNewer();
      const g = ok(await srv.gql(REDEEM, { accountId: referee.id, code: referrer.referralCode })).redeemReferral;
      expect(g.amount).toBe('2');
      expect((await readAccount(srv, referrer.id)).balance.total).toBe('2');
    } finally {
      await setReferralSettings(srv, { referralRewardCredits: REWARD });
    }
  });
});
