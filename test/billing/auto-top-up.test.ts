/**
 * Auto top-up end to end (issue #4): a real server and real BullMQ workers on real Redis (a
 * unique queue prefix) and PostgreSQL, the payment simulator as provider. Charges over the API
 * cross the threshold; balances_changed starts one PENDING top-up per crossing (single flight),
 * the outbox relay enqueues its job and the worker charges and grants the pack (source
 * AUTO_TOP_UP). Covered: settings and refusals, 100 concurrent charges -> one top-up, one charge,
 * one grant; the per-period cap; three declines -> paused, FAILED and the `auto_top_up.paused`
 * webhook job enqueued, then setAutoTopUp re-enables; timeouts then success -> one charge; enabling
 * below the threshold starts one at once; usedThisPeriod counts the period Balance names (the
 * account's now) on a server whose clock is behind the last change. Waits are on database/queue
 * conditions.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type { RunningWorkers } from '../../workers/start.js';
import { LEDGER_JOBS_QUEUE, WEBHOOK_DELIVERY_QUEUE } from '../../src/queues/names.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectUnchanged, gid, ok, readAccount, uniq } from '../api/helpers.js';
import { attachMethod, billingCounts, createPack, startBillingServer, startBillingWorkers, topUps, waitFor, type BillingServer } from './billing-helpers.js';

const SET = `mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) {
  enabled thresholdCredits pack { id } maxPerPeriod usedThisPeriod lastAttemptAt lastError pausedAt } }`;
const SETTINGS = `query($id: ID!) { account(id: $id) { autoTopUp {
  enabled thresholdCredits pack { id } maxPerPeriod usedThisPeriod lastAttemptAt lastError pausedAt } } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;
let workers: RunningWorkers;
let connection: Redis;
let queue: Queue;
let webhookQueue: Queue;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
  const { prefix } = billing;
  // The server's relay enqueues the jobs; the workers share its services (and so its simulator).
  workers = await startBillingWorkers(billing);
  connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  queue = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
  webhookQueue = new Queue(WEBHOOK_DELIVERY_QUEUE, { connection, prefix });
});

afterAll(async () => {
  await workers?.close();
  await queue?.close();
  await webhookQueue?.close();
  connection?.disconnect();
  await billing?.close();
});

/** Charges `units` credits to the account over the API. */
async function spend(accountId: string, units: number) {
  return ok(await srv.gql(RECORD, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: String(units) } } }));
}

async function settings(accountId: string) {
  return ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp;
}

/** An account with `paid` credits and a payment method, auto top-up set to `input`. */
async function topUpAccount(paid: string, input: { thresholdCredits: string; packId: string; maxPerPeriod?: number }, reference = `pm_ok_${randomUUID()}`) {
  const accountId = await apiAccount(srv, { paid });
  await attachMethod(srv, accountId, reference);
  ok(await srv.gql(SET, { input: { accountId, enabled: true, ...input } }));
  return { accountId, reference };
}

/** Waits until the account has `n` top-ups and none is PENDING; returns them. */
function settled(accountId: string, n: number, timeoutMs?: number) {
  return waitFor(`${n} finished top-ups`, async () => {
    const rows = await topUps(srv, accountId);
    return rows.length === n && rows.every((t) => t.status !== 'PENDING') ? rows : null;
  }, timeoutMs);
}

describe('setAutoTopUp', () => {
  it('saves the settings, Account.autoTopUp reads them, and above the threshold nothing starts', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const accountId = await apiAccount(srv, { paid: '100' });
    await attachMethod(srv, accountId);
    const before = (await readAccount(srv, accountId)).balance.version;
    const saved = ok(await srv.gql(SET, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } })).setAutoTopUp;
    expect(saved).toEqual({
      enabled: true,
      thresholdCredits: '50',
      pack: { id: pack.id },
      maxPerPeriod: 3,
      usedThisPeriod: 0,
      lastAttemptAt: null,
      lastError: null,
      pausedAt: null,
    });
    expect(await settings(accountId)).toEqual(saved);
    expect((await readAccount(srv, accountId)).balance.version).toBe(before);
    expect(await topUps(srv, accountId)).toEqual([]);
  });

  it('refuses bad input, an unknown pack and enabling without a payment method, changing nothing', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const accountId = await apiAccount(srv, { paid: '10' });
    const base = { accountId, enabled: true, thresholdCredits: '50', packId: pack.id };
    const noMethod = expectError(await expectUnchanged(srv, [accountId], () => srv.gql(SET, { input: base })), 'BAD_USER_INPUT');
    expect(noMethod.extensions?.reason).toBe('NO_PAYMENT_METHOD');
    await attachMethod(srv, accountId);
    expectError(await srv.gql(SET, { input: { ...base, thresholdCredits: '-1' } }), 'BAD_USER_INPUT');
    expectError(await srv.gql(SET, { input: { ...base, maxPerPeriod: 0 } }), 'BAD_USER_INPUT');
    expectError(await srv.gql(SET, { input: { ...base, packId: gid('CreditPack', randomUUID()) } }), 'NOT_FOUND');
    expectError(await srv.gql(SET, { input: { ...base, accountId: gid('Account', randomUUID()) } }), 'NOT_FOUND');
    expect(await settings(accountId)).toBeNull();
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 0, top_ups: 0 });
  });
});

describe('auto top-up worker', () => {
  it('100 concurrent charges crossing the threshold start exactly one top-up: one charge, one PAID AUTO_TOP_UP grant', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const { accountId, reference } = await topUpAccount('200', { thresholdCredits: '150', packId: pack.id });
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => srv.gql(RECORD, { input: { accountId, idempotencyKey: `c-${i}`, category: 'unit' } })),
    );
    for (const r of results) ok(r);
    const [topUp] = await settled(accountId, 1);
    expect(topUp).toMatchObject({ status: 'SUCCEEDED', attempts: 1 });
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    const { rows } = await srv.services.pool.query(
      `SELECT g.type, g.source, g.amount_micro_credits::text AS amount FROM credit_grants g JOIN payments p ON p.grant_id = g.id WHERE p.account_id = $1`,
      [dbId(accountId)],
    );
    expect(rows).toEqual([{ type: 'PAID', source: 'AUTO_TOP_UP', amount: '100000000' }]);
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ available: '200', paid: '200' });
    expect(await settings(accountId)).toMatchObject({ usedThisPeriod: 1, lastError: null, enabled: true });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('stops at maxPerPeriod; raising the cap while below the threshold starts one at once', async () => {
    const pack = await createPack(srv, { credits: '30', priceUsd: '3' });
    const { accountId, reference } = await topUpAccount('100', { thresholdCredits: '50', packId: pack.id, maxPerPeriod: 2 });
    await spend(accountId, 60); // 40 < 50
    await settled(accountId, 1); // 70
    await spend(accountId, 30); // 40 < 50
    await settled(accountId, 2); // 70
    await spend(accountId, 30); // 40 < 50, but 2 of 2 are used
    expect(await topUps(srv, accountId)).toHaveLength(2);
    expect(await settings(accountId)).toMatchObject({ usedThisPeriod: 2, maxPerPeriod: 2 });
    expect((await readAccount(srv, accountId)).balance.available).toBe('40');
    ok(await srv.gql(SET, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id, maxPerPeriod: 3 } }));
    const rows = await settled(accountId, 3);
    expect(rows.map((t) => t.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED']);
    expect(simulator.chargeCount(reference)).toBe(3);
    expect((await readAccount(srv, accountId)).balance.available).toBe('70');
    expect(await settings(accountId)).toMatchObject({ usedThisPeriod: 3 });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('three declines in a row pause auto top-up, fail the top-up and enqueue the auto_top_up.paused webhook; setAutoTopUp re-enables it', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId } = await topUpAccount('100', { thresholdCredits: '50', packId: pack.id }, `pm_decline_${randomUUID()}`);
    await spend(accountId, 60); // 40 < 50
    const [topUp] = await settled(accountId, 1);
    expect(topUp).toMatchObject({ status: 'FAILED', attempts: 3, error: 'card_declined: Your card was declined.' });
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 3, failed: 3, succeeded: 0, pack_grants: 0 });
    const paused = await settings(accountId);
    expect(paused).toMatchObject({ enabled: false, lastError: 'card_declined: Your card was declined.', usedThisPeriod: 0 });
    expect(paused.pausedAt).not.toBeNull();
    expect(paused.lastAttemptAt).not.toBeNull();
    const job = await waitFor('the webhook job', () => Job.fromId(webhookQueue, `webhook-auto_top_up_paused-${topUp!.id}`));
    expect(job.name).toBe('deliver-webhook');
    expect(job.data).toEqual({ eventType: 'auto_top_up.paused', eventId: topUp!.id, accountId: dbId(accountId) });

    await spend(accountId, 1); // paused: no new top-up
    expect(await topUps(srv, accountId)).toHaveLength(1);

    await attachMethod(srv, accountId);
    ok(await srv.gql(SET, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
    const rows = await settled(accountId, 2);
    expect(rows[1]).toMatchObject({ status: 'SUCCEEDED' });
    expect(await settings(accountId)).toMatchObject({ enabled: true, pausedAt: null, lastError: null, usedThisPeriod: 1 });
    const { rows: s } = await srv.services.pool.query('SELECT consecutive_failures FROM auto_top_up_settings WHERE account_id = $1', [dbId(accountId)]);
    expect(s[0].consecutive_failures).toBe(0);
    expect((await readAccount(srv, accountId)).balance.available).toBe('49');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('timeouts (one before charging, one after) then success: the retries reuse the payment key, one charge, one grant', async () => {
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const reference = `pm_ok_${randomUUID()}`;
    simulator.script(reference, ['timeout', 'timeout_after_charge']);
    const { accountId } = await topUpAccount('100', { thresholdCredits: '50', packId: pack.id }, reference);
    await spend(accountId, 60);
    const [topUp] = await settled(accountId, 1);
    expect(topUp).toMatchObject({ status: 'SUCCEEDED', attempts: 1 });
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    expect((await readAccount(srv, accountId)).balance.available).toBe('60');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it("usedThisPeriod counts the top-ups of the period Balance names, also on a server whose clock is behind the last change", async () => {
    // Anchored at a calendar month start; the boundary is the next month's start.
    const anchor = new Date('2032-06-01T00:00:00.000Z');
    const boundary = new Date('2032-07-01T00:00:00.000Z');
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    try {
      srv.services.setNow(anchor);
      const { accountId } = await topUpAccount('100', { thresholdCredits: '50', packId: pack.id });
      // Another server, whose clock is ahead, charges across the threshold just after the boundary:
      // the top-up is of the new period.
      srv.services.setNow(new Date(boundary.getTime() + 1000));
      await spend(accountId, 60);
      const [topUp] = await settled(accountId, 1);
      expect(topUp).toMatchObject({ status: 'SUCCEEDED' });
      // This server, 2 s behind it, reads the settings.
      srv.services.setNow(new Date(boundary.getTime() - 1000));
      const a = ok(await srv.gql(`query($id: ID!) { account(id: $id) { balance { periodStart } autoTopUp { usedThisPeriod } } }`, { id: accountId })).account;
      expect(a.balance.periodStart).toBe(boundary.toISOString());
      expect(a.autoTopUp.usedThisPeriod).toBe(1);
    } finally {
      srv.services.setNow(null);
    }
  });
});
