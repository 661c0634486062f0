/**
 * Time-driven rules through the API, on test clocks (issue #4): expiry at the boundary, hold
 * expiry, three billing periods of RESET and ROLLOVER with exact balances (a refund after a
 * ROLLOVER roll giving the balance a refund before it gives), alerts at 25/15/0 %
 * (one by one, several at once, under 100 concurrent charges; not again in the same period;
 * re-armed by a new period). Real PostgreSQL and Redis (in-process server).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { dbId, ok, uniq, expectError, expectUnchanged, globalCounts } from '../api/helpers.js';
import fc from 'fast-check';
import { rollBillingPeriods } from '../../src/services/plans.js';
import { advanceTestClock, plannedSteps } from '../../src/services/test-clock.js';
import { ALERTS_SUB, streamsStarted, waitForStreamsStarted, wsSubscribe } from '../live/helpers.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv.close();
});

const BALANCE = `available total reserved free paid periodStart periodEnd periodCredits percentRemaining planName version`;

async function testAccount(start: string): Promise<string> {
  return ok(
    await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: uniq('clock'), name: 'test clock', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: start },
    }),
  ).createAccount.id as string;
}

async function grant(accountId: string, amount: string, type: 'FREE' | 'PAID', expiresAt: string | null = null) {
  return ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId, amount, type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', idempotencyKey: uniq('g'), expiresAt },
    }),
  ).grantCredits.id as string;
}

async function spend(accountId: string, units: string) {
  return srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`, {
    input: { accountId, category: 'units', quantities: { units }, idempotencyKey: uniq('u') },
  });
}

async function advance(accountId: string, to: string) {
  return ok(
    await srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id balance { ${BALANCE} } reconciliation { consistent } } }`, { id: accountId, to }),
  ).advanceTestClock as { balance: Record<string, any>; reconciliation: { consistent: boolean } };
}

async function read(accountId: string) {
  return ok(
    await srv.gql(
      `query($id: ID!) { account(id: $id) { balance { ${BALANCE} } reconciliation { consistent }
         subscription { active currentPeriodStart currentPeriodEnd plan { name } }
         alerts(first: 50) { edges { node { threshold percentRemaining available periodStart } } }
         ledger(first: 100) { edges { node { type amount createdAt } } } } }`,
      { id: accountId },
    ),
  ).account;
}

const entries = (acct: any, type: string) => acct.ledger.edges.map((e: any) => e.node).filter((n: any) => n.type === type);

describe('batch and hold expiry', () => {
  it('a batch pays one millisecond before expiresAt; at expiresAt its rest is removed once', async () => {
    const id = await testAccount('2026-01-10T12:00:00.000Z');
    await grant(id, '10', 'FREE', '2026-01-10T13:00:00.000Z');
    await grant(id, '5', 'PAID');
    await advance(id, '2026-01-10T12:59:59.999Z');
    ok(await spend(id, '1'));
    expect((await read(id)).balance).toMatchObject({ free: '9', paid: '5', available: '14' });

    const at = await advance(id, '2026-01-10T13:00:00.000Z');
    expect(at.balance).toMatchObject({ free: '0', paid: '5', available: '5', total: '5' });
    expect(at.reconciliation.consistent).toBe(true);
    await advance(id, '2026-01-10T18:00:00.000Z');
    const acct = await read(id);
    expect(entries(acct, 'EXPIRE')).toEqual([{ type: 'EXPIRE', amount: '-9', createdAt: '2026-01-10T13:00:00.000Z' }]);
    expect(acct.reconciliation.consistent).toBe(true);
    expectError(await spend(id, '6'), 'INSUFFICIENT_CREDITS');
  });

  it('a hold past its expiresAt is released (status EXPIRED, one RELEASE entry)', async () => {
    const id = await testAccount('2026-02-01T00:00:00.000Z');
    await grant(id, '10', 'PAID');
    const hold = ok(
      await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, {
        input: { accountId: id, amount: '4', idempotencyKey: uniq('h'), ttlSeconds: 60 },
      }),
    ).reserveCredits.id;
    expect((await advance(id, '2026-02-01T00:00:59.999Z')).balance).toMatchObject({ reserved: '4', available: '6' });
    expect((await advance(id, '2026-02-01T00:01:00.000Z')).balance).toMatchObject({ reserved: '0', available: '10' });
    const r = ok(await srv.gql(`query($id: ID!) { node(id: $id) { ... on Reservation { status } } }`, { id: hold }));
    expect(r.node.status).toBe('EXPIRED');
    await advance(id, '2026-02-02T00:00:00.000Z');
    expect(entries(await read(id), 'RELEASE')).toHaveLength(1);
  });

  it('the clock only moves forward, and only test-mode accounts have one', async () => {
    const id = await testAccount('2026-02-01T00:00:00.000Z');
    await advance(id, '2026-02-02T00:00:00.000Z');
    expectError(await srv.gql(`mutation($id: ID!) { advanceTestClock(accountId: $id, to: "2026-02-01T00:00:00.000Z") { id } }`, { id }), 'BAD_USER_INPUT');
    const live = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
        input: { externalId: uniq('live'), name: 'live', kind: 'ORGANIZATION', welcomeBonus: false },
      }),
    ).createAccount.id;
    expectError(await srv.gql(`mutation($id: ID!) { advanceTestClock(accountId: $id, to: "2030-01-01T00:00:00.000Z") { id } }`, { id: live }), 'BAD_USER_INPUT');
  });
});

async function plan(rollover: 'RESET' | 'ROLLOVER', monthly: string, cap: string | null = null): Promise<string> {
  const created = ok(
    await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id name monthlyCredits rollover rolloverCapCredits priceUsd } }`, {
      input: { name: uniq(`plan-${rollover}`), monthlyCredits: monthly, rollover, rolloverCapCredits: cap, priceUsd: '19.99' },
    }),
  ).createPlan;
  expect(created).toMatchObject({ monthlyCredits: monthly, rollover, rolloverCapCredits: cap, priceUsd: '19.99' });
  return created.id as string;
}

async function subscribe(accountId: string, planId: string) {
  return ok(
    await srv.gql(`mutation($a: ID!, $p: ID!) { subscribeToPlan(accountId: $a, planId: $p) { active currentPeriodStart currentPeriodEnd plan { name } } }`, { a: accountId, p: planId }),
  ).subscribeToPlan;
}

describe('plans and billing cycles', () => {
  it('RESET over three periods: unused subscription credit expires at each period end, packs are untouched', async () => {
    const id = await testAccount('2026-01-31T00:00:00.000Z');
    await grant(id, '50', 'PAID'); // a purchased pack: never expires
    const sub = await subscribe(id, await plan('RESET', '100'));
    expect(sub).toMatchObject({ active: true, currentPeriodStart: '2026-01-31T00:00:00.000Z', currentPeriodEnd: '2026-02-28T00:00:00.000Z' });
    expect((await read(id)).balance).toMatchObject({ available: '150', periodCredits: '150', percentRemaining: 100 });
    ok(await spend(id, '30')); // the subscription batch expires first, so it pays first
    expect((await read(id)).balance).toMatchObject({ available: '120', percentRemaining: 80 });

    const p2 = await advance(id, '2026-02-28T00:00:00.000Z');
    expect(p2.balance).toMatchObject({ available: '150', periodStart: '2026-02-28T00:00:00.000Z', periodEnd: '2026-03-31T00:00:00.000Z', periodCredits: '150', percentRemaining: 100 });
    ok(await spend(id, '10'));
    const p3 = await advance(id, '2026-03-31T00:00:00.000Z');
    expect(p3.balance).toMatchObject({ available: '150', paid: '150', periodStart: '2026-03-31T00:00:00.000Z', periodEnd: '2026-04-30T00:00:00.000Z', periodCredits: '150' });
    const acct = await read(id);
    expect(entries(acct, 'EXPIRE').map((e: any) => [e.amount, e.createdAt])).toEqual([
      ['-90', '2026-03-31T00:00:00.000Z'],
      ['-70', '2026-02-28T00:00:00.000Z'],
    ]);
    expect(entries(acct, 'GRANT')).toHaveLength(4); // the pack and three periods
    expect(acct.subscription).toMatchObject({ active: true, currentPeriodStart: '2026-03-31T00:00:00.000Z' });
    expect(acct.reconciliation.consistent).toBe(true);
    // Advancing again inside the period grants nothing more.
    await advance(id, '2026-04-10T00:00:00.000Z');
    expect(entries(await read(id), 'GRANT')).toHaveLength(4);
  });

  it('ROLLOVER over three periods: unused subscription credit carries over up to the cap', async () => {
    const id = await testAccount('2026-03-15T08:00:00.000Z');
    await subscribe(id, await plan('ROLLOVER', '100', '50'));
    ok(await spend(id, '20'));
    const p2 = await advance(id, '2026-04-15T08:00:00.000Z');
    expect(p2.balance).toMatchObject({ available: '150', periodCredits: '150', percentRemaining: 100 }); // 80 capped to 50, + 100
    const p3 = await advance(id, '2026-05-15T08:00:00.000Z');
    expect(p3.balance).toMatchObject({ available: '150', periodCredits: '150' }); // 150 capped to 50, + 100
    const acct = await read(id);
    expect(entries(acct, 'EXPIRE').map((e: any) => e.amount)).toEqual(['-50', '-50', '-30']);
    expect(acct.reconciliation.consistent).toBe(true);
    const cancelled = ok(await srv.gql(`mutation($a: ID!) { cancelSubscription(accountId: $a) { active } }`, { a: id })).cancelSubscription;
    expect(cancelled.active).toBe(false);
    const after = await advance(id, '2026-06-15T08:00:00.000Z');
    expect(after.balance.available).toBe('150'); // no roll after cancelling: nothing granted, nothing trimmed
    expect(after.balance.planName).toBeNull();
  });

  it('ROLLOVER periods missed while nothing rolled (a worker outage) are each granted and trimmed, as when the periods are stepped', async () => {
    for (const cap of [null, '50']) {
      const stepped = await testAccount('2026-01-10T00:00:00.000Z');
      const late = await testAccount('2026-01-10T00:00:00.000Z');
      const p = await plan('ROLLOVER', '100', cap);
      await subscribe(stepped, p);
      await subscribe(late, p);
      for (const to of ['2026-02-10T00:00:00.000Z', '2026-03-10T00:00:00.000Z', '2026-04-10T00:00:00.000Z']) await advance(stepped, to);
      // The late account's clock jumps three periods without advanceTestClock (which rolls at
      // once); the sweep's roll then finds three periods due.
      await srv.services.pool.query(`UPDATE accounts SET test_clock_at = '2026-04-10T00:00:00.000Z' WHERE id = $1`, [dbId(late)]);
      expect(await rollBillingPeriods(srv.services, dbId(late))).toEqual({ periodsRolled: 3 });
      const [a, b] = [await read(stepped), await read(late)];
      expect(b.balance.available).toBe(cap === null ? '400' : '150');
      expect(b.balance).toMatchObject({ available: a.balance.available, total: a.balance.total, periodStart: a.balance.periodStart, periodCredits: a.balance.periodCredits });
      expect(b.reconciliation.consistent).toBe(true);
    }
  });

  it('a ROLLOVER roll whose job is late is made by the first charge after the period start: usage in between does not save credit above the cap', async () => {
    const capped = await plan('ROLLOVER', '100', '50');
    const stepped = await testAccount('2026-07-07T00:00:00.000Z');
    const late = await testAccount('2026-07-07T00:00:00.000Z');
    for (const id of [stepped, late]) {
      await grant(id, '5', 'FREE'); // FREE pays first, before the subscription credit
      await subscribe(id, capped);
      ok(await spend(id, '25')); // 80 of the subscription credit left: 30 above the cap
    }
    await advance(stepped, '2026-08-07T01:00:00.000Z'); // rolled at 08-07: 80 trimmed to 50, + 100
    await srv.services.pool.query(`UPDATE accounts SET test_clock_at = '2026-08-07T01:00:00.000Z' WHERE id = $1`, [dbId(late)]);
    for (const id of [stepped, late]) {
      ok(await spend(id, '30')); // the late account's charge rolls first (80 trimmed to 50, + 100), as on time
      ok(await spend(id, '5'));
    }
    expect(await rollBillingPeriods(srv.services, dbId(late))).toEqual({ periodsRolled: 0 }); // the late job finds it done
    const [a, b] = [await read(stepped), await read(late)];
    expect(a.balance.available).toBe('115');
    expect(b.balance).toMatchObject({ available: a.balance.available, total: a.balance.total, periodStart: a.balance.periodStart, periodCredits: a.balance.periodCredits });
    expect(entries(b, 'EXPIRE').map((e: any) => [e.amount, e.createdAt])).toEqual([['-30', '2026-08-07T00:00:00.000Z']]);
    expect(b.reconciliation.consistent).toBe(true);
  });

  it('a refund after a ROLLOVER roll gives back only what the cap would have carried: the same as the refund before the roll, never carried credit above the cap', async () => {
    const capped = await plan('ROLLOVER', '100', '50');
    const refund = async (eventId: string) =>
      ok(await srv.gql(`mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "refund") { id } }`, { id: eventId }));
    const spent = async (id: string, units: string) => ok(await spend(id, units)).recordUsage.id as string;
    // Each case: [usage before the roll, usage after it (drawn from the carried credit first)].
    for (const [before, after] of [['30', null], ['100', null], ['30', '20']] as const) {
      const first = await testAccount('2026-09-01T00:00:00.000Z'); // refund, then roll
      const then = await testAccount('2026-09-01T00:00:00.000Z'); // roll, then refund
      const events = new Map<string, string>();
      for (const id of [first, then]) {
        await subscribe(id, capped);
        events.set(id, await spent(id, before));
      }
      await refund(events.get(first)!);
      for (const id of [first, then]) {
        await advance(id, '2026-10-01T00:00:00.000Z');
        if (after) await spent(id, after);
      }
      await refund(events.get(then)!);
      const [a, b] = [await read(first), await read(then)];
      const expected = after ? '130' : '150'; // 50 carried (the cap) + 100 granted, less the later usage
      expect(a.balance.available, `${before}/${after}`).toBe(expected);
      // (periodCredits differs by design: a refund is no grant, so one after the period start does
      // not raise the period's credit, while one before it is in the total at the start.)
      expect(b.balance, `${before}/${after}`).toMatchObject({ available: a.balance.available, total: a.balance.total });
      expect(b.reconciliation.consistent).toBe(true);
      // The carried batch itself stays within the cap.
      const { rows } = await srv.services.pool.query(
        `SELECT COALESCE(SUM(remaining_micro_credits), 0)::text AS carried FROM credit_batches WHERE account_id = $1 AND source = 'SUBSCRIPTION' AND added_at < '2026-10-01T00:00:00Z'`,
        [dbId(then)],
      );
      expect(BigInt(rows[0].carried)).toBeLessThanOrEqual(50_000_000n);
    }
  });

  it('cancelling or switching plans after a period began but before its roll ran (a late job) first rolls that period under the old plan, as when the roll ran on time', async () => {
    for (const change of ['cancel', 'switch'] as const) {
      const capped = await plan('ROLLOVER', '100', '50');
      const other = await plan('RESET', '10');
      const stepped = await testAccount('2026-05-05T00:00:00.000Z');
      const late = await testAccount('2026-05-05T00:00:00.000Z');
      for (const id of [stepped, late]) {
        await subscribe(id, capped);
        ok(await spend(id, '20')); // 80 left: above the cap of 50
      }
      await advance(stepped, '2026-06-05T01:00:00.000Z'); // rolled at 06-05: 80 trimmed to 50, + 100
      // The late account's clock passes the period start without advanceTestClock (which rolls at
      // once), as the wall clock does while the roll-period job waits for a worker.
      await srv.services.pool.query(`UPDATE accounts SET test_clock_at = '2026-06-05T01:00:00.000Z' WHERE id = $1`, [dbId(late)]);
      for (const id of [stepped, late]) {
        if (change === 'cancel') ok(await srv.gql(`mutation($a: ID!) { cancelSubscription(accountId: $a) { active } }`, { a: id }));
        else await subscribe(id, other);
      }
      expect(await rollBillingPeriods(srv.services, dbId(late))).toEqual({ periodsRolled: 0 }); // nothing left for the job
      const [a, b] = [await read(stepped), await read(late)];
      expect(a.balance.available).toBe(change === 'cancel' ? '150' : '160');
      expect(b.balance).toMatchObject({ available: a.balance.available, total: a.balance.total, periodStart: a.balance.periodStart, periodCredits: a.balance.periodCredits });
      expect(entries(b, 'EXPIRE').map((e: any) => [e.amount, e.createdAt])).toEqual([['-30', '2026-06-05T00:00:00.000Z']]);
      expect(b.reconciliation.consistent).toBe(true);
    }
  });

  /** The SUBSCRIPTION grants' amounts (oldest first; one instant: smaller first) and the plan in force. */
  async function planGrants(accountId: string) {
    const a = ok(
      await srv.gql(`query($id: ID!) { account(id: $id) { subscription { plan { id } } grants(first: 50) { edges { node { amount source createdAt } } } } }`, { id: accountId }),
    ).account;
    const grants = a.grants.edges
      .map((e: any) => e.node)
      .filter((g: any) => g.source === 'SUBSCRIPTION')
      .sort((x: any, y: any) => x.createdAt.localeCompare(y.createdAt) || Number(x.amount) - Number(y.amount))
      .map((g: any) => g.amount);
    return { grants, planId: a.subscription?.plan.id as string | undefined };
  }

  it('switching plans at the instant of the first subscription grants the new plan (its own grant key, no IDEMPOTENCY_CONFLICT); switching back at that instant grants nothing again', async () => {
    const id = await testAccount('2026-04-01T00:00:00.000Z');
    const small = await plan('ROLLOVER', '100');
    const big = await plan('ROLLOVER', '250');
    await subscribe(id, small);
    expect(await subscribe(id, big)).toMatchObject({ active: true, currentPeriodStart: '2026-04-01T00:00:00.000Z' });
    expect(await planGrants(id)).toEqual({ grants: ['100', '250'], planId: big });
    // Back to the small plan in the same instant: its grant of this period exists (same key, same request).
    await subscribe(id, small);
    expect(await planGrants(id)).toEqual({ grants: ['100', '250'], planId: small });
    const acct = await read(id);
    expect(acct.balance.available).toBe('350');
    expect(acct.reconciliation.consistent).toBe(true);
  });

  it('switching plans later in a period starts a new period at that instant with the new plan in full (the contract: "the period starts now"); the next period grants it again', async () => {
    const id = await testAccount('2026-06-01T00:00:00.000Z');
    const small = await plan('RESET', '100');
    const big = await plan('RESET', '250');
    await subscribe(id, small);
    await advance(id, '2026-06-10T00:00:00.000Z');
    expect(await subscribe(id, big)).toMatchObject({ currentPeriodStart: '2026-06-10T00:00:00.000Z', currentPeriodEnd: '2026-07-10T00:00:00.000Z' });
    const after = await advance(id, '2026-07-10T00:00:00.000Z');
    expect((await planGrants(id)).grants).toEqual(['100', '250', '250']);
    expect(after.balance.periodStart).toBe('2026-07-10T00:00:00.000Z');
    expect(after.reconciliation.consistent).toBe(true);
  });

  it('planName follows the plan; a malformed plan is BAD_USER_INPUT', async () => {
    const id = await testAccount('2026-01-01T00:00:00.000Z');
    const p = await plan('RESET', '10');
    await subscribe(id, p);
    const name = ok(await srv.gql(`query { plans { id name } }`)).plans.find((x: any) => x.id === p).name;
    expect((await read(id)).balance.planName).toBe(name);
    expectError(
      await srv.gql(`mutation { createPlan(input: { name: "bad", monthlyCredits: "10", rollover: RESET, rolloverCapCredits: "5", priceUsd: "1" }) { id } }`),
      'BAD_USER_INPUT',
    );
    expectError(await srv.gql(`mutation { createPlan(input: { name: "bad2", monthlyCredits: "0", rollover: RESET, priceUsd: "1" }) { id } }`), 'BAD_USER_INPUT');
  });
});

describe('how far one advanceTestClock call may go (MAX_TEST_CLOCK_STEPS due instants)', () => {
  it('a `to` more than 10,000 due instants away (monthly periods up to year 9989) is BAD_USER_INPUT at once and changes nothing', async () => {
    // Before this rule the call walked 10,000 periods (~190 s here), granted each, moved the
    // clock to 2859 and only then answered UNAVAILABLE "advance in smaller steps".
    const id = await testAccount('2026-01-01T00:00:00.000Z');
    await subscribe(id, await plan('RESET', '10'));
    const clockOf = async () => (await srv.services.pool.query('SELECT test_clock_at FROM accounts WHERE id = $1', [dbId(id)])).rows[0].test_clock_at as Date;
    const clockBefore = await clockOf();
    const counts = await globalCounts(srv);
    // 2026-01-01 + 10,001 months: 10,001 period ends, one more than a call may step through.
    for (const to of ['9989-12-31T23:59:59.999Z', '2859-06-01T00:00:00.000Z']) {
      const res = await expectUnchanged(srv, [id], () => srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id, to }));
      expect(expectError(res, 'BAD_USER_INPUT').message).toMatch(/^to: is more than 10000 due instants .*advance in smaller steps$/);
    }
    expect(await clockOf()).toEqual(clockBefore);
    expect(await globalCounts(srv)).toEqual(counts);
    // Control: a year ahead is walked (12 period grants after the first).
    const a = await advance(id, '2027-01-01T00:00:00.000Z');
    expect(a.reconciliation.consistent).toBe(true);
    expect(entries(await read(id), 'GRANT')).toHaveLength(13);
  });

  it('property: the steps counted before the walk (plannedSteps) are the steps the walk takes, with and without a plan, batches and holds, at and between due instants', async () => {
    // The up-front refusal must never refuse a call the walk could finish: its count has to be
    // the walk's own (no auto top-ups here, so nothing is added on the way).
    const DAY = 86_400_000;
    const rolloverPlan = await plan('ROLLOVER', '10', '15');
    const resetPlan = await plan('RESET', '10');
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          startDay: fc.integer({ min: 0, max: 60 }),
          plan: fc.constantFrom(null, 'RESET' as const, 'ROLLOVER' as const),
          // Batch expiries in days after the start; 31 and 59 fall on or near period ends.
          batches: fc.array(fc.constantFrom(1, 2, 2, 31, 59, 90, 120, 400), { maxLength: 4 }),
          holdTtlSeconds: fc.option(fc.constantFrom(1, 3600, 86_400, 604_800), { nil: null }),
          toDays: fc.oneof(fc.integer({ min: 0, max: 200 }), fc.constantFrom(31, 59, 90)),
          toOffsetMs: fc.constantFrom(0, 0, 1, 3_600_000),
        }),
        async (c) => {
          const start = new Date(Date.UTC(2026, 0, 1) + c.startDay * DAY);
          const id = await testAccount(start.toISOString());
          if (c.plan) await subscribe(id, c.plan === 'RESET' ? resetPlan : rolloverPlan);
          await grant(id, '5', 'PAID');
          for (const days of c.batches) await grant(id, '1', 'FREE', new Date(start.getTime() + days * DAY).toISOString());
          if (c.holdTtlSeconds !== null) {
            ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: id, amount: '1', idempotencyKey: uniq('h'), ttlSeconds: c.holdTtlSeconds } }));
          }
          const to = new Date(start.getTime() + c.toDays * DAY + c.toOffsetMs);
          const planned = await plannedSteps(srv.services, dbId(id), start, to);
          const { steps } = await advanceTestClock(srv.services, dbId(id), to);
          expect(planned).toBe(steps);
        },
      ),
      { numRuns: 25 },
    );
  });
});

describe('alerts at 25 %, 15 % and 0 %', () => {
  it('thresholds crossed one by one raise one alert each, when reached', async () => {
    const id = await testAccount('2026-07-01T00:00:00.000Z');
    await grant(id, '100', 'PAID');
    const thresholds = async () => (await read(id)).alerts.edges.map((e: any) => e.node.threshold).sort((a: number, b: number) => b - a);
    ok(await spend(id, '74')); // 26 %
    expect(await thresholds()).toEqual([]);
    ok(await spend(id, '1')); // exactly 25 %: "to or below"
    expect(await thresholds()).toEqual([25]);
    ok(await spend(id, '10')); // 15 %
    expect(await thresholds()).toEqual([25, 15]);
    ok(await spend(id, '14.999999')); // 0.000001 left: 0.00 %, rounded down
    expect(await thresholds()).toEqual([25, 15, 0]);
    ok(await spend(id, '0.000001'));
    expect(await thresholds()).toEqual([25, 15, 0]);
  });

  it('one by one, several at once, 100 concurrent charges: each threshold once per period; a new period re-arms', async () => {
    const id = await testAccount('2026-05-01T00:00:00.000Z');
    await grant(id, '200', 'PAID');
    const before = await streamsStarted(srv.url);
    const live = wsSubscribe(srv.url, `Bearer ${srv.adminKey}`, ALERTS_SUB, { id });
    try {
      await waitForStreamsStarted(srv.url, before + 1); // creditAlerts has no snapshot to wait for
      ok(await spend(id, '140')); // 30 %: nothing yet
      expect((await read(id)).alerts.edges).toEqual([]);
      // 100 concurrent 1-credit charges on 60 left: 60 succeed, crossing 25 (at 50 left), 15 (at 30) and 0.
      const results = await Promise.all(Array.from({ length: 100 }, () => spend(id, '1')));
      expect(results.filter((r) => !r.body.errors).length).toBe(60);
      let acct = await read(id);
      expect(acct.alerts.edges.map((e: any) => e.node.threshold).sort()).toEqual([0, 15, 25]);
      // Concurrent charges of one account may commit as one group (one balance change), so the
      // 25 % alert reports the level the change that crossed it reached: at or below 25 %.
      const at25 = acct.alerts.edges.find((e: any) => e.node.threshold === 25).node;
      expect(at25.percentRemaining).toBeLessThanOrEqual(25);
      expect(Number(at25.available)).toBe(at25.percentRemaining * 2); // of the period's 200 credits
      await live.waitFor((s) => s.events.length === 3, 'three live alerts');

      await grant(id, '100', 'PAID'); // a top-up in the same period ...
      ok(await spend(id, '95')); // ... and a new drop raise nothing again
      acct = await read(id);
      expect(acct.alerts.edges).toHaveLength(3);

      // A new period re-arms: 5 left is the new period's 100 %; one charge of 4.5 crosses 25 and 15 at once.
      await advance(id, '2026-06-01T00:00:00.000Z');
      expect((await read(id)).balance).toMatchObject({ available: '5', periodCredits: '5', percentRemaining: 100 });
      ok(await spend(id, '4.5'));
      acct = await read(id);
      const p2 = acct.alerts.edges.map((e: any) => e.node).filter((n: any) => n.periodStart === '2026-06-01T00:00:00.000Z');
      expect(p2.map((n: any) => n.threshold).sort()).toEqual([15, 25]);
      expect(p2[0].percentRemaining).toBe(10);
      await live.waitFor((s) => s.events.length === 5, 'five live alerts');
      expect(live.events.map((e) => e.creditAlerts.threshold)).toEqual([25, 15, 0, 25, 15]);
    } finally {
      await live.dispose();
    }
  });
});
