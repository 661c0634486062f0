/**
 * The billing period's end of an account without a plan reaches the live credit bar
 * (services/open-billing-period.ts; README "Live updates"). A plan's period end is a balance
 * change (its roll grants the new period); without a plan nothing used to happen then: a query
 * showed the new period (periodStart, periodCredits, percentRemaining) under the version the bar
 * held, and the bar showed it only with the account's next change. Now the `sweep-due` job opens
 * the new period of such an account with a balance version of its own (no money moved), and
 * advanceTestClock does the same for a test-mode account, which the sweep leaves alone.
 *
 * One real server (real PostgreSQL and Redis, its outbox relay), WebSocket and SSE clients. The
 * server's and the sweep's clock is the test services' clock, set to an era of each test's own
 * (the later tests further back), so a sweep reaches only accounts whose last change lies before
 * its now: this file's earlier tests' accounts (their last change is later) and what other files
 * left in the shared database are not rolled by it, and every assertion reads this test's own
 * accounts and streams.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { useTestServer } from '../setup/test-server.js';
import { lockWaiters } from '../setup/services.js';
import { apiAccount, dbId, ok, uniq } from '../api/helpers.js';
import { sseSubscribe, streamsStarted, waitForStreamsStarted, wsSubscribe, type LiveSub } from '../live/helpers.js';
import { parseEnv } from '../../src/config/env.js';
import { processSweepDue } from '../../workers/processors/sweep-due.js';
import { findAccountsWithUnopenedPeriods } from '../../src/services/open-billing-period.js';

const DAY_MS = 86_400_000;
/** Every field of the contract's Balance. */
const BALANCE_FIELDS = `accountId available total reserved free paid debt periodStart periodEnd periodCredits percentRemaining planName depleted nextExpiry { amount at } version updatedAt`;
const BAR_SUB = `subscription ($id: ID!) { balanceChanged(accountId: $id) { ${BALANCE_FIELDS} } }`;
const BALANCE = `query($id: ID!) { account(id: $id) { balance { ${BALANCE_FIELDS} } } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;

const srv = useTestServer({ CHARGE_PATH: 'group' });
const subs: LiveSub[] = [];
const bearer = () => `Bearer ${srv.adminKey}`;

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
  srv.services.setNow(null);
});

/** Charges `units` credits (test price book: category `units`, 1 credit per unit). */
const spend = (account: string, units: string) =>
  srv.gql(RECORD, { input: { accountId: account, idempotencyKey: uniq('roll'), category: 'units', quantities: { units } } }).then(ok);

/** The account's balance as a fresh query shows it (at the server's clock). */
const balanceOf = async (account: string) => ok(await srv.gql(BALANCE, { id: account })).account.balance;

/** One sweep-due run at the server's clock (the server's own services: the same clock and pool). */
const sweep = () => processSweepDue({ services: srv.services, log: pino({ level: 'silent' }), env: parseEnv({}) }, { add: async () => undefined });

/** The account's balance version as stored. */
async function storedVersion(account: string): Promise<bigint> {
  const { rows } = await srv.services.pool.query('SELECT version FROM balances WHERE account_id = $1', [dbId(account)]);
  return BigInt(rows[0].version);
}

/**
 * A plan-less account created at `createdAt` with 100 paid credits of which 40 are spent (60 %
 * left of its first period), watched by a WebSocket and an SSE credit bar that received their
 * starting balance (the first period, at `version`).
 */
async function watchedAccount(createdAt: Date) {
  srv.services.setNow(createdAt);
  const account = await apiAccount(srv, { paid: '100' });
  await spend(account, '40');
  const held = await balanceOf(account);
  expect(held.periodStart).toBe(createdAt.toISOString());
  expect(held.percentRemaining).toBe(60);
  const before = await streamsStarted(srv.url);
  const ws = wsSubscribe(srv.url, bearer(), BAR_SUB, { id: account });
  const sse = sseSubscribe(srv.url, bearer(), BAR_SUB, { id: account });
  subs.push(ws, sse);
  await waitForStreamsStarted(srv.url, before + 2);
  for (const bar of [ws, sse]) {
    await bar.waitFor((s) => s.events.length === 1, 'the starting balance');
    expect(bar.events[0].balanceChanged).toEqual(held);
  }
  return { account, held, bars: [ws, sse] as const };
}

describe('the billing period of an account without a plan, live', () => {
  it('after the period end one sweep sends the new period (version + 1, equal to a fresh query); a second sends nothing', async () => {
    const createdAt = new Date('1995-05-10T08:00:00.000Z');
    const { account, held, bars } = await watchedAccount(createdAt);

    // Two days past the period end: a query already figures the new period, at the old version.
    srv.services.setNow(new Date(createdAt.getTime() + 33 * DAY_MS));
    const stale = await balanceOf(account);
    expect(stale.periodStart).toBe('1995-06-10T08:00:00.000Z');
    expect(stale.version).toBe(held.version);

    await sweep();
    const fresh = await balanceOf(account);
    expect(BigInt(fresh.version)).toBe(BigInt(held.version) + 1n);
    expect(fresh.periodStart).toBe('1995-06-10T08:00:00.000Z');
    expect(fresh.periodEnd).toBe('1995-07-10T08:00:00.000Z');
    // The new period starts from what the account held at its start: 60 of 60.
    expect(fresh.periodCredits).toBe('60');
    expect(fresh.percentRemaining).toBe(100);
    expect(fresh.available).toBe(held.available); // no money moved
    for (const bar of bars) {
      await bar.waitFor((s) => s.events.length >= 2, 'the opened period');
      expect(bar.events[1].balanceChanged).toEqual(fresh);
    }

    // A second sweep writes no version and sends nothing: the next update is the next charge's,
    // at version + 2 (the stream delivers in version order, so anything between would come first).
    const second = await sweep();
    expect(await storedVersion(account)).toBe(BigInt(fresh.version));
    expect(await findAccountsWithUnopenedPeriods(srv.services.pool, srv.services.clock(), 10_000)).not.toContain(dbId(account));
    expect(second.failedAccounts).toBe(0);
    await spend(account, '6');
    const charged = await balanceOf(account);
    expect(BigInt(charged.version)).toBe(BigInt(held.version) + 2n);
    expect(charged.percentRemaining).toBe(90);
    for (const bar of bars) {
      await bar.waitFor((s) => s.events.length >= 3, 'the charge after the second sweep');
      expect(bar.events.map((e) => BigInt(e.balanceChanged.version))).toEqual([0n, 1n, 2n].map((d) => BigInt(held.version) + d));
      expect(bar.events[2].balanceChanged).toEqual(charged);
    }
  });

  it('a charge racing the roll: the roll takes the lock first, the charge follows; versions contiguous, the last equal to a fresh query', async () => {
    const createdAt = new Date('1994-05-10T08:00:00.000Z');
    const { account, held, bars } = await watchedAccount(createdAt);
    srv.services.setNow(new Date(createdAt.getTime() + 33 * DAY_MS));

    const holder = await srv.services.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [dbId(account)]);
      const swept = sweep();
      await lockWaiters(srv.services.pool, 1); // the roll waits for the account's lock
      const charged = spend(account, '6');
      await lockWaiters(srv.services.pool, 2); // and the charge behind it
      await holder.query('COMMIT');
      await Promise.all([swept, charged]);
    } finally {
      holder.release();
    }

    const fresh = await balanceOf(account);
    expect(BigInt(fresh.version)).toBe(BigInt(held.version) + 2n);
    expect(fresh.periodStart).toBe('1994-06-10T08:00:00.000Z');
    expect(fresh.percentRemaining).toBe(90);
    for (const bar of bars) {
      await bar.waitFor((s) => s.events.length >= 3, 'the roll and the charge');
      const versions = bar.events.map((e) => BigInt(e.balanceChanged.version));
      expect(versions).toEqual([0n, 1n, 2n].map((d) => BigInt(held.version) + d));
      // The roll's version is the new period with nothing charged yet.
      expect(bar.events[1].balanceChanged.periodStart).toBe('1994-06-10T08:00:00.000Z');
      expect(bar.events[1].balanceChanged.percentRemaining).toBe(100);
      expect(bar.events[2].balanceChanged).toEqual(fresh);
    }
  });

  it('a charge racing the roll: the charge takes the lock first and opens the period; the roll, re-checking under the lock, writes nothing', async () => {
    const createdAt = new Date('1993-05-10T08:00:00.000Z');
    const { account, held, bars } = await watchedAccount(createdAt);
    srv.services.setNow(new Date(createdAt.getTime() + 33 * DAY_MS));

    const holder = await srv.services.pool.connect();
    let result: Awaited<ReturnType<typeof sweep>>;
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [dbId(account)]);
      const charged = spend(account, '6');
      await lockWaiters(srv.services.pool, 1); // the charge waits for the account's lock
      // The sweep found the account behind (the charge has not committed) and waits behind it.
      const swept = sweep();
      await lockWaiters(srv.services.pool, 2);
      await holder.query('COMMIT');
      [result] = await Promise.all([swept, charged]);
    } finally {
      holder.release();
    }
    expect(result.openedAccounts).toBeGreaterThanOrEqual(1);

    const fresh = await balanceOf(account);
    expect(BigInt(fresh.version)).toBe(BigInt(held.version) + 1n); // the charge's only
    expect(fresh.periodStart).toBe('1993-06-10T08:00:00.000Z');
    expect(fresh.percentRemaining).toBe(90);
    await spend(account, '6');
    const next = await balanceOf(account);
    for (const bar of bars) {
      await bar.waitFor((s) => s.events.length >= 3, 'the two charges');
      expect(bar.events.map((e) => BigInt(e.balanceChanged.version))).toEqual([0n, 1n, 2n].map((d) => BigInt(held.version) + d));
      expect(bar.events[1].balanceChanged).toEqual(fresh);
      expect(bar.events[2].balanceChanged).toEqual(next);
    }
  });

  it('a test-mode account: the sweep leaves it to its clock; advanceTestClock past the period end sends the new period', async () => {
    const clockStart = new Date('1992-03-10T00:00:00.000Z');
    const account = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
        input: { externalId: uniq('roll-test-mode'), name: 'test clock', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: clockStart.toISOString() },
      }),
    ).createAccount.id as string;
    ok(await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, { input: { accountId: account, amount: '50', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }));
    await spend(account, '10');

    // By the wall clock its first period has ended; by its own clock it has not: the sweep's
    // finder does not list it, and a sweep changes nothing of it.
    srv.services.setNow(new Date('1992-04-20T00:00:00.000Z'));
    expect(await findAccountsWithUnopenedPeriods(srv.services.pool, srv.services.clock(), 10_000)).not.toContain(dbId(account));
    const held = await balanceOf(account);
    expect(held.periodStart).toBe(clockStart.toISOString());
    await sweep();
    expect(await storedVersion(account)).toBe(BigInt(held.version));

    const before = await streamsStarted(srv.url);
    const bar = wsSubscribe(srv.url, bearer(), BAR_SUB, { id: account });
    subs.push(bar);
    await waitForStreamsStarted(srv.url, before + 1);
    await bar.waitFor((s) => s.events.length === 1, 'the starting balance');
    expect(bar.events[0].balanceChanged).toEqual(held);

    ok(await srv.gql(`mutation($a: ID!, $to: DateTime!) { advanceTestClock(accountId: $a, to: $to) { id } }`, { a: account, to: '1992-04-15T00:00:00.000Z' }));
    const fresh = await balanceOf(account);
    expect(BigInt(fresh.version)).toBe(BigInt(held.version) + 1n);
    expect(fresh.periodStart).toBe('1992-04-10T00:00:00.000Z');
    expect(fresh.percentRemaining).toBe(100);
    await bar.waitFor((s) => s.events.length >= 2, 'the period the clock moved into');
    expect(bar.events[1].balanceChanged).toEqual(fresh);

    // Advancing again within the period writes nothing: the next update is the next charge's.
    ok(await srv.gql(`mutation($a: ID!, $to: DateTime!) { advanceTestClock(accountId: $a, to: $to) { id } }`, { a: account, to: '1992-04-16T00:00:00.000Z' }));
    await spend(account, '4');
    await bar.waitFor((s) => s.events.length >= 3, 'the charge');
    expect(bar.events.map((e) => BigInt(e.balanceChanged.version))).toEqual([0n, 1n, 2n].map((d) => BigInt(held.version) + d));
    expect(bar.events[2].balanceChanged).toEqual(await balanceOf(account));
  });
});
