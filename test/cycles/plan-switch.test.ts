/**
 * Switching plans through the API on a test clock (real PostgreSQL and Redis, in-process server).
 * The contract's rule for subscribeToPlan: "Starts (or changes) the account's plan; the period
 * starts now (or at the test clock's time)". Each plan's grant of a period has its own
 * idempotency key (`plan-period:<plan id>:<period start>`), so a switch at the same instant
 * grants the new plan instead of colliding with the old plan's key (it was IDEMPOTENCY_CONFLICT).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { ok, uniq } from '../api/helpers.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv.close();
});

async function testAccount(start: string): Promise<string> {
  return ok(
    await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: uniq('allowance'), name: 'allowance', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: start },
    }),
  ).createAccount.id as string;
}

async function plan(monthly: string, rollover: 'RESET' | 'ROLLOVER' = 'RESET'): Promise<string> {
  return ok(
    await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, {
      input: { name: uniq('allowance-plan'), monthlyCredits: monthly, rollover, priceUsd: '10' },
    }),
  ).createPlan.id as string;
}

async function subscribe(accountId: string, planId: string) {
  return ok(await srv.gql(`mutation($a: ID!, $p: ID!) { subscribeToPlan(accountId: $a, planId: $p) { active currentPeriodStart currentPeriodEnd } }`, { a: accountId, p: planId }))
    .subscribeToPlan;
}

async function advance(accountId: string, to: string) {
  ok(await srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id: accountId, to }));
}

/** Balance, subscription and the SUBSCRIPTION grants' amounts (oldest first). */
async function read(accountId: string) {
  const account = ok(
    await srv.gql(
      `query($id: ID!) { account(id: $id) { balance { available periodStart planName } reconciliation { consistent }
         subscription { active currentPeriodStart plan { id } }
         grants(first: 50) { edges { node { amount source createdAt } } } } }`,
      { id: accountId },
    ),
  ).account;
  const grants = account.grants.edges
    .map((e: any) => e.node)
    .filter((g: any) => g.source === 'SUBSCRIPTION')
    .sort((a: any, b: any) => a.createdAt.localeCompare(b.createdAt) || Number(a.amount) - Number(b.amount))
    .map((g: any) => g.amount);
  expect(account.reconciliation.consistent).toBe(true);
  return { balance: account.balance, subscription: account.subscription, grants };
}

describe('switching plans', () => {
  it('at the same instant as the first subscription grants the new plan (no IDEMPOTENCY_CONFLICT); switching back at that instant grants nothing again', async () => {
    const id = await testAccount('2026-04-01T00:00:00.000Z');
    const small = await plan('100', 'ROLLOVER');
    const big = await plan('250', 'ROLLOVER');
    await subscribe(id, small);
    expect(await subscribe(id, big)).toMatchObject({ active: true, currentPeriodStart: '2026-04-01T00:00:00.000Z' });
    expect(await read(id)).toMatchObject({ grants: ['100', '250'], balance: { available: '350' }, subscription: { plan: { id: big } } });
    // Back to the small plan in the same instant: its grant of this period exists (same key, same request).
    await subscribe(id, small);
    expect(await read(id)).toMatchObject({ grants: ['100', '250'], balance: { available: '350' }, subscription: { plan: { id: small } } });
  });

  it('later in a period starts a new period at that instant with the new plan in full; the next period grants it again', async () => {
    const id = await testAccount('2026-06-01T00:00:00.000Z');
    const small = await plan('100');
    const big = await plan('250');
    await subscribe(id, small);
    await advance(id, '2026-06-10T00:00:00.000Z');
    expect(await subscribe(id, big)).toMatchObject({ currentPeriodStart: '2026-06-10T00:00:00.000Z', currentPeriodEnd: '2026-07-10T00:00:00.000Z' });
    await advance(id, '2026-07-10T00:00:00.000Z');
    const after = await read(id);
    expect(after.grants).toEqual(['100', '250', '250']);
    expect(after.balance).toMatchObject({ periodStart: '2026-07-10T00:00:00.000Z', planName: expect.any(String) });
  });
});
