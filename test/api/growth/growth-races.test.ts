/**
 * Growth credits under races and retries, over HTTP (audit of promo codes, referrals, welcome
 * bonus, plans and voids): one account redeeming one code concurrently under case/space variants,
 * createAccount retried concurrently with changed input, one new account redeeming two referral
 * codes at once, concurrent subscribeToPlan and voidGrant, a void racing charges, and what a void
 * of a plan grant does to the next RESET / ROLLOVER roll. The ledger invariant after each.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { expectLedgerInvariant } from '../../setup/invariant.js';
import { dbId, ok, uniq, expectError } from '../helpers.js';

let srv: TestServer;
beforeAll(async () => {
  srv = await startTestServer();
});
afterAll(async () => {
  await srv?.close();
});

const code = () => `P-${randomBytes(5).toString('hex')}`;
const REDEEM = `mutation($accountId: ID!, $code: String!) { redeemPromoCode(accountId: $accountId, code: $code) { id amount type source batch { expiresAt status } } }`;
const BAL = `available total reserved free paid debt periodStart periodEnd periodCredits percentRemaining planName version`;

async function acct(opts: { test?: string; bonus?: boolean } = {}) {
  const input: any = { externalId: uniq('probe'), name: 'probe', kind: 'ORGANIZATION', welcomeBonus: opts.bonus ?? false };
  if (opts.test) Object.assign(input, { testMode: true, testClockStart: opts.test });
  return ok(await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id referralCode } }`, { input })).createAccount as { id: string; referralCode: string };
}
async function read(id: string) {
  return ok(
    await srv.gql(`query($id: ID!) { account(id: $id) { balance { ${BAL} } reconciliation { consistent }
      grants(first: 50) { edges { node { id amount type source reference batch { status remaining expiresAt } } } }
      ledger(first: 100) { edges { node { type amount createdAt } } } } }`, { id }),
  ).account;
}
async function inv(id: string) {
  const a = await read(id);
  expect(a.reconciliation.consistent).toBe(true);
  await expectLedgerInvariant(srv.services.pool, dbId(id), new Date('2100-01-01'));
  return a;
}
async function spend(accountId: string, units: string) {
  return srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost drawdowns { amount batch { type source } } } }`, {
    input: { accountId, category: 'units', quantities: { units }, idempotencyKey: uniq('u') },
  });
}
async function grant(accountId: string, amount: string, type: 'FREE' | 'PAID', extra: any = {}) {
  return ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId, amount, type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', idempotencyKey: uniq('g'), ...extra },
    }),
  ).grantCredits.id as string;
}
async function plan(rollover: 'RESET' | 'ROLLOVER', monthly: string, cap: string | null = null): Promise<string> {
  return ok(
    await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, {
      input: { name: uniq(`plan-${rollover}`), monthlyCredits: monthly, rollover, rolloverCapCredits: cap, priceUsd: '19.99' },
    }),
  ).createPlan.id as string;
}
const subscribe = (a: string, p: string) => srv.gql(`mutation($a: ID!, $p: ID!) { subscribeToPlan(accountId: $a, planId: $p) { active currentPeriodStart currentPeriodEnd } }`, { a, p });
const cancel = (a: string) => srv.gql(`mutation($a: ID!) { cancelSubscription(accountId: $a) { active } }`, { a });
const voidG = (g: string) => srv.gql(`mutation($g: ID!) { voidGrant(grantId: $g, reason: "probe") { id batch { status remaining } } }`, { g });
const advance = (id: string, to: string) => srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id, to });

describe('growth credits under races', () => {
  it('one account redeeming one code 10 times at once, under case and space variants: one grant, one redemption', async () => {
    const c = code();
    ok(await srv.gql(`mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) { code } }`, { input: { code: `  ${c.toLowerCase()} `, credits: '5', maxRedemptions: 100, expiresAfterDays: 3 } }));
    const a = await acct();
    const variants = [c, c.toLowerCase(), ` ${c} `, `${c}\t`, c.toUpperCase()];
    const res = await Promise.all(Array.from({ length: 10 }, (_, i) => srv.gql(REDEEM, { accountId: a.id, code: variants[i % variants.length] })));
    expect(res.filter((r) => !r.body.errors)).toHaveLength(1);
    for (const r of res.filter((x) => x.body.errors)) expect(expectError(r, 'BAD_USER_INPUT').extensions?.reason).toBe('ALREADY_REDEEMED');
    const acc = await inv(a.id);
    expect(acc.balance).toMatchObject({ total: '5', free: '5' });
    expect(ok(await srv.gql(`query($c: String!) { promoCode(code: $c) { redemptions } }`, { c: c.toLowerCase() })).promoCode.redemptions).toBe(1);
  });

  it('createAccount sent 10 times at once, a third with welcomeBonus: false: one account, one welcome bonus, the changed input IDEMPOTENCY_CONFLICT', async () => {
    const input = { externalId: uniq('wb'), name: 'wb', kind: 'ORGANIZATION' };
    const res = await Promise.all(
      Array.from({ length: 9 }, (_, i) => srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, { input: i % 3 === 2 ? { ...input, welcomeBonus: false } : i % 3 === 1 ? { ...input, welcomeBonus: true } : input })),
    );
    const okIds = res.filter((r) => !r.body.errors).map((r) => r.body.data.createAccount.id);
    const conflicts = res.filter((r) => r.body.errors).map((r) => expectError(r, 'IDEMPOTENCY_CONFLICT'));
    expect(okIds.length + conflicts.length).toBe(9);
    expect(new Set(okIds).size).toBe(1);
    const a = await inv(okIds[0]);
    const bonuses = a.grants.edges.map((e: any) => e.node).filter((g: any) => g.source === 'WELCOME_BONUS');
    // Whichever input won, at most one bonus, FREE with an expiry.
    expect(bonuses.length).toBeLessThanOrEqual(1);
    for (const b of bonuses) expect(b).toMatchObject({ type: 'FREE' });
  });

  it('one new account redeeming two referral codes at once: one referral, one referrer rewarded once', async () => {
    const r1 = await acct();
    const r2 = await acct();
    const n = await acct();
    const res = await Promise.all([r1, r2, r1, r2].map((r) => srv.gql(`mutation($a: ID!, $c: String!) { redeemReferral(accountId: $a, code: $c) { id } }`, { a: n.id, c: r.referralCode.toLowerCase() })));
    expect(res.filter((r) => !r.body.errors)).toHaveLength(1);
    for (const r of res.filter((x) => x.body.errors)) expect(expectError(r, 'BAD_USER_INPUT').extensions?.reason).toBe('ALREADY_REFERRED');
    const rewarded = [];
    for (const x of [r1, r2]) rewarded.push((await inv(x.id)).grants.edges.filter((e: any) => e.node.source === 'REFERRAL').length);
    expect(rewarded.sort()).toEqual([0, 1]);
    expect((await inv(n.id)).grants.edges.map((e: any) => e.node)).toMatchObject([{ source: 'REFERRAL', type: 'FREE' }]);
  });

  it('RESET: 5 concurrent subscriptions grant once; a partly spent plan grant voided 4 times at once is voided once; the next roll grants the plan in full', async () => {
    const id = (await acct({ test: '2026-01-10T00:00:00.000Z' })).id;
    const p = await plan('RESET', '100');
    (await Promise.all(Array.from({ length: 5 }, () => subscribe(id, p)))).forEach((r) => ok(r));
    let a = await inv(id);
    expect(a.balance.total).toBe('100');
    ok(await spend(id, '30'));
    const g = a.grants.edges[0].node.id;
    (await Promise.all(Array.from({ length: 4 }, () => voidG(g)))).forEach((r) => ok(r));
    a = await inv(id);
    expect(a.ledger.edges.filter((e: any) => e.node.type === 'VOID').map((e: any) => e.node.amount)).toEqual(['-70']);
    expect(a.balance).toMatchObject({ total: '0', periodCredits: '30' });
    ok(await advance(id, '2026-02-10T00:00:00.000Z'));
    a = await inv(id);
    expect(a.balance).toMatchObject({ total: '100', paid: '100', periodCredits: '100' });
    expect(a.ledger.edges.filter((e: any) => e.node.type === 'EXPIRE')).toHaveLength(0); // the voided batch has nothing left to expire
  });

  it('ROLLOVER with a cap: voiding the carried-over grant leaves the next roll to trim only the rest', async () => {
    const id = (await acct({ test: '2026-03-10T00:00:00.000Z' })).id;
    const p = await plan('ROLLOVER', '100', '50');
    ok(await subscribe(id, p));
    const g = (await read(id)).grants.edges[0].node.id;
    ok(await advance(id, '2026-04-10T00:00:00.000Z')); // 100 -> 50 carried + 100
    expect((await inv(id)).balance.total).toBe('150');
    ok(await voidG(g)); // the 50 carried over
    expect((await inv(id)).balance.total).toBe('100');
    ok(await advance(id, '2026-05-10T00:00:00.000Z')); // 100 -> 50 + 100
    const a = await inv(id);
    expect(a.balance.total).toBe('150');
    expect(a.ledger.edges.map((e: any) => `${e.node.type}${e.node.amount}`)).toEqual(['GRANT100', 'EXPIRE-50', 'VOID-50', 'GRANT100', 'EXPIRE-50', 'GRANT100']);
  });

  it('a void racing 30 charges: FREE drawn before PAID, the void takes exactly what the charges left', async () => {
    const id = (await acct()).id;
    const g = await grant(id, '100', 'FREE');
    await grant(id, '100', 'PAID');
    const ops: Promise<any>[] = Array.from({ length: 30 }, () => spend(id, '3'));
    ops.splice(10, 0, voidG(g));
    const res = await Promise.all(ops);
    res.forEach((r) => ok(r));
    const a = await inv(id);
    const voided = -Number(a.ledger.edges.find((e: any) => e.node.type === 'VOID').node.amount);
    expect(Number(a.balance.total)).toBe(200 - 90 - voided);
    expect(a.balance.free).toBe('0');
    expect(a.balance.periodCredits).toBe(String(200 - voided));
    // Each charge drew FREE before PAID: no FREE drawdown after a PAID one.
    for (const r of res.filter((x) => x.body.data.recordUsage)) {
      const types: string[] = r.body.data.recordUsage.drawdowns.map((d: any) => d.batch.type);
      expect(types.length).toBeGreaterThan(0);
      expect(types.slice(types.indexOf('PAID') < 0 ? types.length : types.indexOf('PAID'))).not.toContain('FREE');
    }
  });

  it('a grant that repaid debt, voided: only its rest is taken back; the debt stays repaid', async () => {
    const id = (await acct()).id;
    await grant(id, '10', 'PAID');
    const rs = ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: id, amount: '10', idempotencyKey: uniq('r') } })).reserveCredits;
    ok(await srv.gql(`mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`, { input: { reservationId: rs.id, usage: [{ accountId: id, category: 'units', quantities: { units: '14' }, idempotencyKey: uniq('s') }] } }));
    expect((await inv(id)).balance).toMatchObject({ total: '-4', debt: '4' });
    const g = await grant(id, '10', 'FREE');
    expect((await inv(id)).balance).toMatchObject({ total: '6', debt: '0' });
    ok(await voidG(g));
    expect((await inv(id)).balance).toMatchObject({ total: '0', debt: '0', periodCredits: '14' });
  });
});
