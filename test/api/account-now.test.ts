/**
 * Every read of an account that depends on the time uses the account's now as Balance does: its
 * test clock in test mode, else this server's clock but never before the account's last committed
 * change (balances.updated_at). Each case has another server, whose clock runs ahead, change the
 * account just after an instant (a batch's or hold's expiry, a billing period boundary), and then
 * this server, whose clock is 2 s behind that instant, read it: Account.batches and
 * Account.reservations (their filters and CreditBatch.status / Reservation.status), the budgets'
 * `spent` (Account.budgets, userBudgets, setAgentBudget's answer) and Account.subscription's
 * period must all say what Balance says (README "Which instant an event belongs to";
 * AutoTopUpSettings.usedThisPeriod: test/billing/auto-top-up.test.ts). One server whose clock the
 * test moves plays both. Real server, PostgreSQL, Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, grant, ok, uniq } from './helpers.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv?.close();
});

const at = (iso: string, deltaMs = 0) => new Date(new Date(iso).getTime() + deltaMs);

/** Runs `fn` with this server's clock at `now`, restoring the real clock after. */
async function withClock<T>(now: Date, fn: () => Promise<T>): Promise<T> {
  srv.services.setNow(now);
  try {
    return await fn();
  } finally {
    srv.services.setNow(null);
  }
}

describe("batch and hold statuses follow the account's now", () => {
  it('a batch and a hold past their expiresAt at the last change are EXPIRED on a server whose clock is behind it, as in Balance', async () => {
    const start = at('2032-01-10T00:00:00.000Z');
    const expiry = at('2032-01-10T01:00:00.000Z');
    const { acct, expiring, hold } = await withClock(start, async () => {
      const acct = await apiAccount(srv, { paid: '10' });
      const expiring = await grant(srv, acct, '5', 'FREE', { expiresAt: expiry.toISOString() });
      const batch = ok(await srv.gql(`query($id: ID!) { node(id: $id) { ... on CreditGrant { batch { id } } } }`, { id: expiring })).node.batch.id as string;
      // A hold that expires at the same instant (ttl 3600 s from the account's now, `start`).
      const hold = ok(
        await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id expiresAt } }`, {
          input: { accountId: acct, amount: '2', idempotencyKey: uniq('hold'), ttlSeconds: 3600 },
        }),
      ).reserveCredits as { id: string; expiresAt: string };
      expect(hold.expiresAt).toBe(expiry.toISOString());
      return { acct, expiring: batch, hold: hold.id };
    });
    // Another server, whose clock is ahead, changes the account just after the expiry...
    await withClock(at(expiry.toISOString(), 1000), () => grant(srv, acct, '1', 'PAID'));
    // ...and this server, 2 s behind it, reads it.
    const a = await withClock(at(expiry.toISOString(), -1000), async () =>
      ok(
        await srv.gql(
          `query($id: ID!, $batch: ID!, $hold: ID!) {
             account(id: $id) {
               balance { total free reserved available }
               batches { id status }
               expired: batches(status: [EXPIRED]) { id status }
               reservations { id status }
               active: reservations(status: [ACTIVE]) { id }
               expiredHolds: reservations(status: [EXPIRED]) { id status } }
             batch: node(id: $batch) { ... on CreditBatch { status } }
             hold: node(id: $hold) { ... on Reservation { status } } }`,
          { id: acct, batch: expiring, hold },
        ),
      ),
    );
    // Balance leaves the expired batch and the expired hold out...
    expect(a.account.balance).toEqual({ total: '11', free: '0', reserved: '0', available: '11' });
    // ...and so do the lists and statuses.
    expect(a.account.batches.map((b: { id: string }) => b.id)).not.toContain(expiring);
    expect(a.account.batches.every((b: { status: string }) => b.status === 'ACTIVE')).toBe(true);
    expect(a.account.expired).toEqual([{ id: expiring, status: 'EXPIRED' }]);
    expect(a.batch.status).toBe('EXPIRED');
    expect(a.account.reservations).toEqual([{ id: hold, status: 'EXPIRED' }]);
    expect(a.account.active).toEqual([]);
    expect(a.account.expiredHolds).toEqual([{ id: hold, status: 'EXPIRED' }]);
    expect(a.hold.status).toBe('EXPIRED');
  });
});

describe("the current billing period of budgets and the subscription is the account's now's", () => {
  // Anchored at a calendar month start, so the period boundary is a month start.
  const anchor = at('2032-03-01T00:00:00.000Z');
  const boundary = at('2032-04-01T00:00:00.000Z');
  const BUDGET_FIELDS = `budgets { agentId spent } userBudgets { userId spent }`;

  it("budgets' spent is the spending of the period Balance names right after a period boundary", async () => {
    const acct = await withClock(anchor, async () => {
      const acct = await apiAccount(srv, { paid: '100' });
      ok(await srv.gql(`mutation($a: ID!) { setAgentBudget(accountId: $a, agentId: "bot", limit: "50") { agentId } }`, { a: acct }));
      ok(await srv.gql(`mutation($a: ID!) { setUserBudget(accountId: $a, userId: "ann", limit: "50") { userId } }`, { a: acct }));
      return acct;
    });
    const use = (units: string) =>
      srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, {
        input: { accountId: acct, idempotencyKey: uniq('use'), category: 'units', quantities: { units }, agentId: 'bot', userId: 'ann' },
      });
    // 3 credits in the first period, then 1 just after the boundary by a server whose clock is ahead.
    await withClock(at(boundary.toISOString(), -60_000), async () => ok(await use('3')));
    await withClock(at(boundary.toISOString(), 1000), async () => ok(await use('1')));
    // This server, 2 s behind, reads the budgets and sets one again.
    await withClock(at(boundary.toISOString(), -1000), async () => {
      const a = ok(await srv.gql(`query($id: ID!) { account(id: $id) { balance { periodStart } ${BUDGET_FIELDS} } }`, { id: acct })).account;
      expect(a.balance.periodStart).toBe(boundary.toISOString());
      expect(a.budgets).toEqual([{ agentId: 'bot', spent: '1' }]);
      expect(a.userBudgets).toEqual([{ userId: 'ann', spent: '1' }]);
      const set = ok(await srv.gql(`mutation($a: ID!) { setAgentBudget(accountId: $a, agentId: "bot", limit: "40") { agentId spent } }`, { a: acct })).setAgentBudget;
      expect(set).toEqual({ agentId: 'bot', spent: '1' });
    });
  });

  it("Account.subscription's current period is the one Balance names right after a period boundary", async () => {
    const acct = await withClock(anchor, async () => {
      const acct = await apiAccount(srv, { paid: '10' });
      const plan = ok(await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, { input: { name: uniq('plan'), monthlyCredits: '5', rollover: 'RESET', priceUsd: '5' } })).createPlan.id as string;
      ok(await srv.gql(`mutation($a: ID!, $p: ID!) { subscribeToPlan(accountId: $a, planId: $p) { active } }`, { a: acct, p: plan }));
      return acct;
    });
    await withClock(at(boundary.toISOString(), 1000), () => grant(srv, acct, '1', 'PAID'));
    const a = await withClock(at(boundary.toISOString(), -1000), async () =>
      ok(await srv.gql(`query($id: ID!) { account(id: $id) { balance { periodStart periodEnd } subscription { currentPeriodStart currentPeriodEnd } } }`, { id: acct })).account,
    );
    expect(a.balance.periodStart).toBe(boundary.toISOString());
    expect(a.subscription).toEqual({ currentPeriodStart: a.balance.periodStart, currentPeriodEnd: a.balance.periodEnd });
  });
});
