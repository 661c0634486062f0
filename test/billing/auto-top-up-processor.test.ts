/**
 * The auto-top-up processor called directly (no worker consumes this file's queue), to place
 * crashes and races exactly: a worker that dies after the provider charged but before the grant
 * (the simulator's `timeout_after_charge`), then runs again -> one charge, one grant; the
 * processor twice at once plus the inline runPendingTopUps on the same top-up -> one charge, one
 * grant; skips (disabled, back above the threshold) charge nothing; a decline is retried (the
 * top-up stays PENDING) until the last attempt fails it without pausing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { ZodError } from 'zod';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import { runPendingTopUps } from '../../src/services/auto-top-up.js';
import { expireDue } from '../../src/services/expire-due.js';
import { recordUsage } from '../../src/services/record-usage.js';
import type { WorkerDeps } from '../../workers/deps.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { dbId, expectUnchanged, grant, ok, readAccount, uniq } from '../api/helpers.js';
import { SET_AUTO_TOP_UP, attachMethod, billingCounts, billingWorkerDeps, createPack, crossedThreshold, startBillingServer, topUps, type BillingServer } from './billing-helpers.js';

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;
let deps: WorkerDeps;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
  deps = billingWorkerDeps(billing);
});

afterAll(async () => {
  await billing?.close();
});

function run(accountId: string, topUpId: string, attemptsMade = 0) {
  return processAutoTopUp(deps, { id: `auto-top-up-${topUpId}`, name: 'auto-top-up', data: { topUpId, accountId: dbId(accountId) }, attemptsMade, attempts: 3 });
}

describe('processAutoTopUp', () => {
  it("a top-up started before a RESET plan's period end is skipped once the plan's new grant is rolled in: the card is not charged; the old allowance's expiry starts none", async () => {
    const start = '2026-03-01T00:00:00.000Z';
    const accountId = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
        input: { externalId: uniq('reset-topup'), name: 'reset plan', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: start },
      }),
    ).createAccount.id as string;
    const plan = ok(
      await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, {
        input: { name: uniq('reset-plan'), monthlyCredits: '100', rollover: 'RESET', priceUsd: '10' },
      }),
    ).createPlan.id as string;
    ok(await srv.gql(`mutation($a: ID!, $p: ID!) { subscribeToPlan(accountId: $a, planId: $p) { active } }`, { a: accountId, p: plan }));
    const pack = await createPack(srv, { credits: '50', priceUsd: '5' });
    await attachMethod(srv, accountId);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '10', packId: pack.id } }));
    // March's spending takes available to 5, under the threshold of 10: a top-up starts; its job
    // has not run when the period ends.
    await recordUsage(srv.services, { accountId: dbId(accountId), idempotencyKey: 'march', category: 'units', quantities: { units: '95' } });
    const started = await topUps(srv, accountId);
    expect(started.map((t) => t.status)).toEqual(['PENDING']);
    // The account's clock passes the period end without advanceTestClock (which rolls at once);
    // the expiry job runs first, as the batch's expire-due job or the sweep would. It runs the due
    // roll before expiring (expire-due.ts), as on time: March's allowance expires and April's is
    // granted at the same instant, so available never drops to 0 and no second top-up starts.
    await srv.services.pool.query(`UPDATE accounts SET test_clock_at = '2026-04-01T00:00:01.000Z' WHERE id = $1`, [dbId(accountId)]);
    await expireDue(srv.services, dbId(accountId));
    expect((await topUps(srv, accountId)).map((t) => t.status)).toEqual(['PENDING']);
    const before = await billingCounts(srv, accountId);
    const result = await run(accountId, started[0]!.id);
    expect(result).toMatchObject({ status: 'SKIPPED', reason: 'available credit is no longer below the threshold' });
    expect(await billingCounts(srv, accountId)).toEqual(before); // no payment, no charge
    const account = await readAccount(srv, accountId);
    expect(account.balance.available).toBe('100');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId), new Date('2026-04-01T00:00:01.000Z'));
  });

  it('a worker that died after the charge, before the grant: the next run grants once and charges nothing more', async () => {
    const reference = `pm_ok_${randomUUID()}`;
    simulator.script(reference, ['timeout_after_charge']);
    const { accountId, topUpId } = await crossedThreshold(srv, reference);
    await expect(run(accountId, topUpId)).rejects.toThrow(/will retry/);
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, pack_grants: 0 });
    expect((await topUps(srv, accountId))[0]).toMatchObject({ status: 'PENDING', attempts: 1 });

    expect(await run(accountId, topUpId, 1)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    expect((await readAccount(srv, accountId)).balance.available).toBe('60');

    // A duplicate job after success changes nothing.
    const again = await expectUnchanged(srv, [accountId], () => run(accountId, topUpId, 2));
    expect(again).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(reference)).toBe(1);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('two processors and the inline runner on the same top-up at once: one charge, one grant', async () => {
    const { accountId, reference, topUpId } = await crossedThreshold(srv);
    const [a, b, inline] = await Promise.all([run(accountId, topUpId), run(accountId, topUpId), runPendingTopUps(srv.services, dbId(accountId))]);
    for (const r of [a, b]) expect(r).toMatchObject({ status: 'SUCCEEDED' });
    expect(inline.every((r) => r.status === 'SUCCEEDED')).toBe(true);
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('skips without charging when auto top-up was turned off, or credit is back above the threshold', async () => {
    const off = await crossedThreshold(srv);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId: off.accountId, enabled: false, thresholdCredits: '50', packId: off.packId } }));
    expect(await run(off.accountId, off.topUpId)).toMatchObject({ status: 'SKIPPED', reason: 'auto top-up is disabled or paused' });

    const refilled = await crossedThreshold(srv);
    await grant(srv, refilled.accountId, '100', 'PAID');
    expect(await run(refilled.accountId, refilled.topUpId)).toMatchObject({ status: 'SKIPPED', reason: 'available credit is no longer below the threshold' });

    for (const c of [off, refilled]) {
      expect(simulator.chargeCount(c.reference)).toBe(0);
      expect(await billingCounts(srv, c.accountId)).toMatchObject({ payments: 0, pack_grants: 0 });
    }
  });

  it('a decline leaves the top-up PENDING for the retry; a decline on the last attempt fails it without pausing', async () => {
    const { accountId, reference, topUpId } = await crossedThreshold(srv, `pm_decline_${randomUUID()}`);
    await expect(run(accountId, topUpId, 0)).rejects.toThrow(/card_declined/);
    expect((await topUps(srv, accountId))[0]).toMatchObject({ status: 'PENDING', attempts: 1 });
    expect(await run(accountId, topUpId, 2)).toMatchObject({ status: 'FAILED', reason: 'card_declined: Your card was declined.' });
    expect((await topUps(srv, accountId))[0]).toMatchObject({ status: 'FAILED', attempts: 2 });
    const { rows } = await srv.services.pool.query('SELECT enabled, consecutive_failures, paused_at FROM auto_top_up_settings WHERE account_id = $1', [dbId(accountId)]);
    expect(rows[0]).toEqual({ enabled: true, consecutive_failures: 2, paused_at: null });
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 2, failed: 2, pack_grants: 0 });
    expect(simulator.chargeCount(reference)).toBe(0);
  });

  it('a malformed payload is a ZodError (not retried)', async () => {
    await expect(processAutoTopUp(deps, { name: 'auto-top-up', data: { topUpId: 'nope' }, attemptsMade: 0, attempts: 3 })).rejects.toBeInstanceOf(ZodError);
  });
});
