/**
 * Credit alerts (README "Alerts at 25 %, 15 % and 0 %", contract Balance.periodCredits /
 * percentRemaining) against what the period's figures should be when the worker that records an
 * expiry or rolls a plan has not come by yet: credit that expired at or before the period start
 * is not part of the period ("credit that expired at the boundary excluded"), whether its EXPIRE
 * entry is written yet or not, so it can neither lower percentRemaining nor raise the period's
 * alerts early (which would use them up: each threshold fires once per period). Real
 * PostgreSQL, test clocks moved without running what is due (as if no worker came by).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, lockWaiters, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { readBalance } from '../../src/services/read-balance.js';
import { createPlan, rollBillingPeriods, subscribeToPlan } from '../../src/services/plans.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { expireDue } from '../../src/services/expire-due.js';
import { credits } from '../../src/ledger/credits.js';
import { balanceFromSnapshot } from '../../src/services/balance-figures.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(4);
});

afterAll(async () => {
  await services.close();
});

/** Moves the account's test clock without running anything due (as if no worker came by). */
async function setClock(accountId: string, at: string): Promise<void> {
  await services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, new Date(at)]);
}

/** The account's alerts, oldest first: threshold and the period they belong to. */
async function alerts(accountId: string): Promise<{ threshold: number; periodStart: string }[]> {
  const { rows } = await services.pool.query('SELECT threshold, period_start FROM credit_alerts WHERE account_id = $1 ORDER BY seq', [accountId]);
  return rows.map((r) => ({ threshold: r.threshold as number, periodStart: (r.period_start as Date).toISOString() }));
}

/** Charges `units` credits (the test price book's `units` rule: 1 credit per unit). */
const spend = (accountId: string, units: string) =>
  recordUsage(services, { accountId, idempotencyKey: `ca-${randomUUID()}`, category: 'units', quantities: { units } });

describe('credit alerts at a period boundary before the worker came by', () => {
  it("a RESET plan's credit that expired at the period end does not count in the new period; the first charge after the boundary rolls the plan before the roll job came by", async () => {
    // 100 purchased credits that never expire, and a RESET plan of 1,000 a month from Mar 1.
    const accountId = await createFundedAccount(services, { paid: 100, testClockStart: new Date('2026-03-01T00:00:00Z') });
    const plan = await createPlan(services, { name: `reset-${randomUUID()}`, monthlyMicroCredits: credits(1000), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '10' });
    await subscribeToPlan(services, accountId, plan.id);

    // Apr 1, one second after the boundary: the March plan credit (1,000 unused) has expired but
    // no roll or expiry job has run yet. Before a charge, the period holds what was left at its
    // start (the 100 purchased; the plan credit expired at it).
    await setClock(accountId, '2026-04-01T00:00:01Z');
    const early = await readBalance(services.pool, accountId, new Date());
    expect(early.periodMicroCredits).toBe(credits(100));
    expect(early.percentRemaining).toBe(100);

    // A charge rolls the plan first (plans.ts rollDuePeriodsFirst): April's 1,000 pay it, the
    // purchased credit is untouched, and the roll job later finds nothing to do.
    await spend(accountId, '1');
    expect(await alerts(accountId)).toEqual([]);
    const rolled = await expectLedgerInvariant(services.pool, accountId, new Date('2026-04-01T00:00:01Z'));
    expect(rolled.periodMicroCredits).toBe(credits(1100));
    expect(rolled.availableMicroCredits).toBe(credits(1099));
    expect(rolled.paidMicroCredits).toBe(credits(1099));
    const { rows } = await services.pool.query(`SELECT remaining_micro_credits::text AS r FROM credit_batches WHERE account_id = $1 AND source = 'PURCHASE'`, [accountId]);
    expect(rows).toEqual([{ r: String(credits(100)) }]);
    expect((await rollBillingPeriods(services, accountId)).periodsRolled).toBe(0);

    // Spending down to 25 % of April's 1,100 credits raises April's 25 % alert then, not before.
    await spend(accountId, '824'); // 275 left = 25 %
    expect(await alerts(accountId)).toEqual([{ threshold: 25, periodStart: '2026-04-01T00:00:00.000Z' }]);
  });

  it('credit that expired in the previous period, recorded late, is not part of the new period either', async () => {
    // Periods start on the 10th. FREE 90 expires on Feb 5 (in the first period); PAID 10.
    const accountId = await createFundedAccount(services, { free: 90, paid: 10, freeExpiresAt: new Date('2026-02-05T00:00:00Z'), testClockStart: new Date('2026-01-10T00:00:00Z') });
    // Feb 15, in the second period, before the expiry job ran: a charge pays from PAID.
    await setClock(accountId, '2026-02-15T00:00:00Z');
    await spend(accountId, '1');
    expect(await alerts(accountId)).toEqual([]); // 9 of 10 left
    const b = await readBalance(services.pool, accountId, new Date());
    expect(b.availableMicroCredits).toBe(credits(9));
    expect(b.periodMicroCredits).toBe(credits(10)); // what the period started with once the FREE 90 expired on Feb 5
    expect(b.percentRemaining).toBe(90);
  });
});

describe('voidGrant of credit that had already expired', () => {
  it('records the expiry (dated at expiresAt), voids nothing more, and leaves the period figures and alerts as the expiry would', async () => {
    // Periods start on the 10th. PAID 10, and a FREE 90 grant expiring on Feb 5 (first period).
    const accountId = await createFundedAccount(services, { paid: 10, testClockStart: new Date('2026-01-10T00:00:00Z') });
    const free = await grantCredits(services, {
      accountId,
      amountMicroCredits: credits(90),
      type: 'FREE',
      source: 'PROMO_CODE',
      expiresAt: new Date('2026-02-05T00:00:00Z'),
      reference: 'SPRING',
      idempotencyKey: 'void-expired',
    });
    // Feb 15, second period, before the expiry job ran: the operator voids the (expired) grant.
    await setClock(accountId, '2026-02-15T00:00:00Z');
    await voidGrant(services, free.grantId, 'promo abuse');

    // The period started with the 10 PAID credits (the FREE 90 had expired): nothing was spent.
    await spend(accountId, '1');
    const b = await expectLedgerInvariant(services.pool, accountId, new Date('2026-02-15T00:00:00Z'));
    expect(b.periodMicroCredits).toBe(credits(10));
    expect(b.percentRemaining).toBe(90);
    expect(await alerts(accountId)).toEqual([]);
    const { rows: entries } = await services.pool.query(
      `SELECT e.type, e.amount_micro_credits::text AS amount, e.created_at FROM ledger_entries e
         JOIN credit_batches b ON b.id = e.batch_id WHERE b.grant_id = $1 AND e.type IN ('EXPIRE', 'VOID') AND e.amount_micro_credits <> 0 ORDER BY e.seq`,
      [free.grantId],
    );
    // The 90 expired on Feb 5, in the first period: that is what the ledger says, not a void on Feb 15.
    expect(entries).toEqual([{ type: 'EXPIRE', amount: String(-credits(90)), created_at: new Date('2026-02-05T00:00:00Z') }]);
    const { rows: grant } = await services.pool.query(
      `SELECT g.voided_at IS NOT NULL AS voided, g.void_reason, b.status FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.id = $1`,
      [free.grantId],
    );
    expect(grant[0]).toEqual({ voided: true, void_reason: 'promo abuse', status: 'EXPIRED' });

    // The expiry job finds nothing left to expire.
    expect((await expireDue(services, accountId)).batches).toBe(0);
  });
});

describe('voidGrant of credit that had not expired', () => {
  // A voided grant is taken back: what it took back is not part of the period's credit, or the
  // account reads as nearly spent (100 kept of 1,100 "granted") and raises the period's 25 % and
  // 15 % alerts with 99 % of its real credit left, using them up for the period.
  it('a grant voided in its own period is not part of periodCredits and raises no alert', async () => {
    const accountId = await createFundedAccount(services, { paid: 100, testClockStart: new Date('2026-03-10T00:00:00Z') });
    await setClock(accountId, '2026-03-11T00:00:00Z');
    const mistake = await grantCredits(services, { accountId, amountMicroCredits: credits(1000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'mistake' });
    await voidGrant(services, mistake.grantId, 'granted by mistake');
    await spend(accountId, '1');
    const b = await expectLedgerInvariant(services.pool, accountId, new Date());
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(99), credits(100), 99]);
    expect(await alerts(accountId)).toEqual([]);
  });

  it('a grant of the previous period voided in this one is taken out of this period, partly spent or not', async () => {
    // Periods start on the 10th. 100 purchased; 1,000 granted in February, 400 of them spent
    // (after the 100), then voided in March: the 600 left are taken back.
    const accountId = await createFundedAccount(services, { paid: 100, testClockStart: new Date('2026-02-10T00:00:00Z') });
    await setClock(accountId, '2026-02-11T00:00:00Z');
    const grant = await grantCredits(services, { accountId, amountMicroCredits: credits(1000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'later-voided' });
    await spend(accountId, '500'); // the purchased 100 first (added first), then 400 of the grant
    await setClock(accountId, '2026-03-11T00:00:00Z');
    await grantCredits(services, { accountId, amountMicroCredits: credits(200), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'march-pack' });
    await voidGrant(services, grant.grantId, 'chargeback');
    const b = await expectLedgerInvariant(services.pool, accountId, new Date());
    // The period began with 600 (all of the voided grant's rest), granted 200, and 600 were taken back.
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(200), credits(200), 100]);
    await spend(accountId, '1');
    expect(await alerts(accountId)).toEqual([]);
    await spend(accountId, '149'); // 50 of 200 left: 25 %
    expect(await alerts(accountId)).toEqual([{ threshold: 25, periodStart: '2026-03-10T00:00:00.000Z' }]);
  });
});

/**
 * A change reads the wall clock before it waits for the account's lock; another change may take
 * the lock first with a later instant (or another server's clock may run ahead). The period's
 * figures count grants and voids dated up to the change's instant, so a charge dated before a void
 * that had already committed counted the voided credit in periodCredits (its rest gone from
 * `available`): 99 of 1,100 (9 %), raising the period's 25 % and 15 % alerts with 99 % left and
 * using them up, and a live credit bar showing that at a version whose `balance` query says 99 %.
 */
describe('a change that waited for the account while a later-dated one committed', () => {
  afterAll(() => services.setNow(null));

  it('a charge dated before a void that committed first counts the void: no false alerts, its snapshot is the balance at its version', async () => {
    services.setNow(new Date('2026-11-20T10:00:00Z'));
    const accountId = await createFundedAccount(services, { paid: 100 });
    const mistake = await grantCredits(services, { accountId, amountMicroCredits: credits(1000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: `m-${randomUUID()}` });
    // Hold the account so the void and the charge both wait for it, the void first.
    const blocker = await services.pool.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE', [accountId]);
      services.setNow(new Date('2026-11-20T10:00:02Z'));
      const voided = voidGrant(services, mistake.grantId, 'granted by mistake');
      await lockWaiters(services.pool, 1);
      // The charge's instant was read before the void's (it is only queued behind it).
      services.setNow(new Date('2026-11-20T10:00:01Z'));
      const charged = spend(accountId, '1');
      await lockWaiters(services.pool, 2);
      await blocker.query('COMMIT');
      await Promise.all([voided, charged]);
    } finally {
      blocker.release();
    }
    services.setNow(new Date('2026-11-20T10:00:03Z'));
    expect(await alerts(accountId)).toEqual([]);
    const b = await expectLedgerInvariant(services.pool, accountId, new Date('2026-11-20T10:00:03Z'));
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(99), credits(100), 99]);
    // The last snapshot written for the live credit bar is that balance at that version.
    const { rows } = await services.pool.query(`SELECT payload FROM outbox_events WHERE account_id = $1 AND topic = 'balance' ORDER BY id DESC LIMIT 1`, [accountId]);
    const live = balanceFromSnapshot(rows[0].payload);
    expect(live.version).toBe(b.version);
    expect([live.availableMicroCredits, live.periodMicroCredits, live.percentRemaining]).toEqual([credits(99), credits(100), 99]);
  });

  it('a balance read on a clock behind the last change (another server\'s, running late) is the balance at that version', async () => {
    services.setNow(new Date('2026-11-21T10:00:00Z'));
    const accountId = await createFundedAccount(services, { paid: 100 });
    services.setNow(new Date('2026-11-21T10:00:02Z'));
    await grantCredits(services, { accountId, amountMicroCredits: credits(100), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: `g-${randomUUID()}` });
    const { rows } = await services.pool.query(`SELECT payload FROM outbox_events WHERE account_id = $1 AND topic = 'balance' ORDER BY id DESC LIMIT 1`, [accountId]);
    const live = balanceFromSnapshot(rows[0].payload);
    const read = await readBalance(services.pool, accountId, new Date('2026-11-21T10:00:01Z'));
    expect(read.version).toBe(live.version);
    expect([read.availableMicroCredits, read.periodMicroCredits, read.percentRemaining]).toEqual([credits(200), credits(200), 100]);
  });
});
