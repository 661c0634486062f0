/**
 * Auto top-up audit (README "Auto top-up"): what happens to a top-up whose charge is in flight
 * (sent, outcome unknown) when the customer turns auto top-up off, and when the failure of that
 * charge arrives after they did. The processor and the provider-event settlement are called
 * directly (no worker consumes this file's queues), against real PostgreSQL and the simulator.
 * - turned off while a charge's outcome is unknown: the next run looks the charge up and never
 *   sends it again (a charge that was made is granted once; one that was not is never made, and
 *   the top-up ends SKIPPED without counting a failure toward the pause);
 * - the third failure in a row of a charge that was in flight when a dispute paused auto top-up
 *   does not pause it again (the dispute stays its reason; no `auto_top_up.paused` webhook);
 * - re-enabling a paused auto top-up below the threshold starts exactly one top-up at once;
 * - maxPerPeriod: a top-up started before a period end and settled after counts in the period it
 *   started in (a test-mode account and its clock).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { WEBHOOK_DELIVERY_QUEUE } from '../../src/queues/names.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { PURCHASE } from './reversal-helpers.js';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import { settleTopUpPayment } from '../../src/services/auto-top-up.js';
import { findPayment } from '../../src/services/purchase-pack.js';
import { LOOKUP_SETTLE_DELAY_MS } from '../../src/payments/provider.js';
import type { WorkerDeps } from '../../workers/deps.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, grant, ok, readAccount, uniq } from '../api/helpers.js';
import { RECORD_USAGE, SET_AUTO_TOP_UP, attachMethod, billingCounts, billingWorkerDeps, createPack, crossedThreshold, startBillingServer, topUps, waitFor, type BillingServer } from './billing-helpers.js';

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;
let deps: WorkerDeps;
let connection: Redis;
let webhookQueue: Queue;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
  deps = billingWorkerDeps(billing);
  connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  webhookQueue = new Queue(WEBHOOK_DELIVERY_QUEUE, { connection, prefix: billing.prefix });
});

afterAll(async () => {
  await webhookQueue?.close();
  connection?.disconnect();
  await billing?.close();
});

/** Runs the processor as BullMQ would, optionally on a clock `aheadMs` ahead of the wall clock. */
function run(accountId: string, topUpId: string, attemptsMade = 0, aheadMs = 0) {
  const d: WorkerDeps = aheadMs === 0 ? deps : { ...deps, services: { ...deps.services, clock: () => new Date(Date.now() + aheadMs) } };
  return processAutoTopUp(d, { id: `auto-top-up-${topUpId}`, name: 'auto-top-up', data: { topUpId, accountId: dbId(accountId) }, attemptsMade, attempts: 3 });
}

async function settingsRow(accountId: string) {
  const { rows } = await srv.services.pool.query('SELECT enabled, consecutive_failures, paused_at, last_error FROM auto_top_up_settings WHERE account_id = $1', [dbId(accountId)]);
  return rows[0] as { enabled: boolean; consecutive_failures: number; paused_at: Date | null; last_error: string | null };
}

/** Waits until the relay has published every outbox row of the account (so its jobs are in Redis). */
function drained(accountId: string) {
  return waitFor('the outbox relay', async () => {
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM outbox_events WHERE account_id = $1', [dbId(accountId)]);
    return rows[0].n === 0;
  });
}

describe('turning auto top-up off while a charge is in flight', () => {
  it('a charge that never reached the provider is not sent again: looked up, then the top-up ends SKIPPED, no failure counted', async () => {
    const reference = `pm_ok_${randomUUID()}`;
    simulator.script(reference, ['timeout']); // no answer, nothing charged
    const { accountId, packId, topUpId } = await crossedThreshold(srv, reference);
    await expect(run(accountId, topUpId, 0)).rejects.toThrow(/will retry/);
    expect(simulator.chargeCount(reference)).toBe(0);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: false, thresholdCredits: '50', packId } }));

    // The retry only looks the charge up: none yet, and the request may still be in flight.
    await expect(run(accountId, topUpId, 1)).rejects.toThrow(/will retry/);
    expect(simulator.chargeCount(reference)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, pack_grants: 0 });

    // Once a lost request can no longer land, the payment is settled as never made and the top-up skipped.
    expect(await run(accountId, topUpId, 2, LOOKUP_SETTLE_DELAY_MS + 60_000)).toMatchObject({ status: 'SKIPPED', reason: 'auto top-up is disabled or paused' });
    expect(simulator.chargeCount(reference)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, failed: 1, pack_grants: 0 });
    expect(await settingsRow(accountId)).toMatchObject({ enabled: false, consecutive_failures: 0, paused_at: null });
    expect((await readAccount(srv, accountId)).balance.available).toBe('40');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a charge the provider made before the answer was lost is granted once, nothing charged again', async () => {
    const reference = `pm_ok_${randomUUID()}`;
    simulator.script(reference, ['timeout_after_charge']);
    const { accountId, packId, topUpId } = await crossedThreshold(srv, reference);
    await expect(run(accountId, topUpId, 0)).rejects.toThrow(/will retry/);
    expect(simulator.chargeCount(reference)).toBe(1);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: false, thresholdCredits: '50', packId } }));
    expect(await run(accountId, topUpId, 1)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    expect((await readAccount(srv, accountId)).balance.available).toBe('60');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('the third failure in a row, of a charge in flight when a dispute paused auto top-up, keeps the dispute as the reason and sends no auto_top_up.paused', async () => {
    const reference = `pm_ok_${randomUUID()}`;
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const accountId = await apiAccount(srv, { paid: '100' });
    await attachMethod(srv, accountId, reference);
    const bought = ok(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') })).purchaseCreditPack;
    const { rows: paid } = await srv.services.pool.query('SELECT id FROM payments WHERE grant_id = $1', [dbId(bought.id)]);
    simulator.script(reference, ['decline', 'decline', 'timeout']);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
    ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '80' } } })); // 40 < 50
    const topUpId = (await topUps(srv, accountId))[0]!.id;
    await expect(run(accountId, topUpId, 0)).rejects.toThrow(/card_declined/);
    await expect(run(accountId, topUpId, 1)).rejects.toThrow(/card_declined/);
    // The third attempt's answer is lost (the sweep re-added the job: attemptsMade 0).
    await expect(run(accountId, topUpId, 0)).rejects.toThrow(/will retry/);
    expect(await settingsRow(accountId)).toMatchObject({ enabled: true, consecutive_failures: 2 });

    // The card holder disputes the purchase: auto top-up paused, no webhook (README "Refunds and disputes").
    expect((await applyReversalEvent(srv.services, simulator.dispute(paid[0].id as string), (testMode) => !testMode)).result).toBe('reversed');
    const disputed = await settingsRow(accountId);
    expect(disputed).toMatchObject({ enabled: false, last_error: expect.stringMatching(/^dispute: /) });
    expect(disputed.paused_at).not.toBeNull();

    // Then the provider reports the in-flight charge declined (its webhook).
    const inFlight = (await topUps(srv, accountId))[0]!;
    const payment = (await findPayment(srv.services.pool, inFlight.payment_id!))!;
    await settleTopUpPayment(srv.services, payment, { status: 'declined', code: 'card_declined', message: 'Your card was declined.' });
    const after = await settingsRow(accountId);
    expect(after).toMatchObject({ enabled: false, last_error: disputed.last_error, paused_at: disputed.paused_at });
    await drained(accountId);
    expect(await Job.fromId(webhookQueue, `webhook-auto_top_up_paused-${topUpId}`)).toBeUndefined();
    expect(simulator.chargeCount(reference)).toBe(1); // the purchase only
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('re-enabling after a pause', () => {
  it('below the threshold: the failure count is reset and exactly one top-up starts at once, however many saves race', async () => {
    const reference = `pm_ok_${randomUUID()}`;
    simulator.script(reference, ['decline', 'decline', 'decline']);
    const { accountId, packId, topUpId } = await crossedThreshold(srv, reference);
    await expect(run(accountId, topUpId, 0)).rejects.toThrow(/card_declined/);
    await expect(run(accountId, topUpId, 1)).rejects.toThrow(/card_declined/);
    expect(await run(accountId, topUpId, 0)).toMatchObject({ status: 'FAILED' }); // the third in a row pauses
    expect(await settingsRow(accountId)).toMatchObject({ enabled: false, consecutive_failures: 3 });
    await waitFor('the auto_top_up.paused webhook job', () => Job.fromId(webhookQueue, `webhook-auto_top_up_paused-${topUpId}`));

    await Promise.all(Array.from({ length: 4 }, () => srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId } })).map(async (p) => ok(await p)));
    expect(await settingsRow(accountId)).toMatchObject({ enabled: true, consecutive_failures: 0, paused_at: null });
    const rows = await topUps(srv, accountId);
    expect(rows.map((t) => t.status)).toEqual(['FAILED', 'PENDING']);
    expect(await run(accountId, rows[1]!.id, 0)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(reference)).toBe(1);
    expect((await readAccount(srv, accountId)).balance.available).toBe('60');
    await drained(accountId);
    expect(await Job.fromId(webhookQueue, `webhook-auto_top_up_paused-${rows[1]!.id}`)).toBeUndefined();
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('maxPerPeriod across a billing period boundary', () => {
  it('a top-up started before the period end and settled after counts in the period it started in; the new period has its own cap', async () => {
    const reference = `pm_ok_${randomUUID()}`;
    simulator.script(reference, ['timeout']); // the first charge gets no answer (nothing charged)
    const accountId = ok(
      await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
        input: { externalId: uniq('cap-boundary'), name: 'cap boundary', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: '2026-03-01T00:00:00.000Z' },
      }),
    ).createAccount.id as string;
    await grant(srv, accountId, '100', 'PAID');
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    await attachMethod(srv, accountId, reference);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id, maxPerPeriod: 1 } }));
    const advance = async (to: string) => ok(await srv.gql(`mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id: accountId, to }));
    const spend = async (units: string) => ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units } } }));
    const used = async () => ok(await srv.gql(`query($id: ID!) { account(id: $id) { autoTopUp { usedThisPeriod } } }`, { id: accountId })).account.autoTopUp.usedThisPeriod as number;

    await advance('2026-03-31T23:00:00.000Z');
    await spend('60'); // 40 < 50, in March
    const [march] = await topUps(srv, accountId);
    await expect(run(accountId, march!.id, 0)).rejects.toThrow(/will retry/);
    // April begins; the clock's walk runs the pending top-up: charged and granted in April, counted in March.
    await advance('2026-04-01T01:00:00.000Z');
    expect((await topUps(srv, accountId)).map((t) => t.status)).toEqual(['SUCCEEDED']);
    const { rows } = await srv.services.pool.query('SELECT period_start FROM auto_top_ups WHERE id = $1', [march!.id]);
    expect((rows[0].period_start as Date).toISOString()).toBe('2026-03-01T00:00:00.000Z');
    expect(await used()).toBe(0);

    await spend('15'); // 45 < 50, in April: April's first top-up
    const april = (await topUps(srv, accountId))[1]!;
    expect(april.status).toBe('PENDING');
    expect(await run(accountId, april.id, 0)).toMatchObject({ status: 'SUCCEEDED' });
    expect(await used()).toBe(1);
    await spend('20'); // 45 < 50 again: April's cap is reached
    expect(await topUps(srv, accountId)).toHaveLength(2);
    expect(simulator.chargeCount(reference)).toBe(2);
    expect((await readAccount(srv, accountId)).balance.available).toBe('45');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId), new Date('2026-04-01T01:00:00.000Z'));
  });
});
