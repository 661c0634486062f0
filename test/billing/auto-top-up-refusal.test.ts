/**
 * Auto top-up started by a refusal for lack of credit (README "Auto top-up";
 * src/services/refusal-top-ups.ts). A charge without a hold never overdraws: one that costs more
 * than `available` is refused and writes nothing, so no balance change crosses the threshold. An
 * account with auto top-up on, threshold 10, available 15, whose agent asks for a 20-credit call
 * was refused for ever. Now such a refusal starts the same PENDING top-up and outbox job as a
 * crossing (single flight, the cap, not when paused or off), when the pack would let the refused
 * charge through; the refusal itself still answers INSUFFICIENT_CREDITS at once and writes
 * nothing. A real server and real BullMQ workers (unique queue prefix) charge the top-ups through
 * the payment simulator, as test/billing/auto-top-up.test.ts does. Waits are on database conditions.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type { RunningWorkers } from '../../workers/start.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { applyCharge, chargeAccounts, recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { credits } from '../../src/ledger/credits.js';
import { REFUSAL_TOP_UP_RECHECK_MS, RefusalTopUps } from '../../src/services/refusal-top-ups.js';
import { setAutoTopUp } from '../../src/services/auto-top-up.js';
import { afterCreditRefusals } from '../../src/services/depletion-alerts.js';
import type { ServiceContext } from '../../src/services/context.js';
import { settledCode } from '../setup/services.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, ok, readAccount, uniq } from '../api/helpers.js';
import { attachMethod, billingCounts, createPack, startBillingServer, startBillingWorkers, topUps, waitFor, type BillingServer } from './billing-helpers.js';

const SET = `mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`;

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;
let workers: RunningWorkers;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
  workers = await startBillingWorkers(billing);
});

afterAll(async () => {
  await workers?.close();
  await billing?.close();
});

/** Charges `units` credits (the test price book: 1 credit per unit) over the API. */
const spendApi = (accountId: string, units: number) =>
  srv.gql(RECORD, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: String(units) } } });

/** Charges `units` credits through the service (`accountId`: a global id). */
const spend = (ctx: ServiceContext, accountId: string, units: number) =>
  recordUsage(ctx, { accountId: dbId(accountId), idempotencyKey: uniq('use'), category: 'units', quantities: { units: String(units) } });

/** An account with `paid` credits, a payment method (`reference`) and auto top-up on with `input`. */
async function topUpAccount(paid: string, input: { thresholdCredits: string; packId: string; maxPerPeriod?: number }, reference = `pm_ok_${randomUUID()}`) {
  const accountId = await apiAccount(srv, { paid });
  await attachMethod(srv, accountId, reference);
  ok(await srv.gql(SET, { input: { accountId, enabled: true, ...input } }));
  return { accountId, reference };
}

/** Usage events of the account (a refused charge writes none). */
async function eventCount(accountId: string): Promise<number> {
  const { rows } = await srv.services.pool.query(`SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1`, [dbId(accountId)]);
  return rows[0].n as number;
}

/** Waits until the account has `n` top-ups and none is PENDING; returns them. */
function settled(accountId: string, n: number) {
  return waitFor(`${n} finished top-ups`, async () => {
    const rows = await topUps(srv, accountId);
    return rows.length === n && rows.every((t) => t.status !== 'PENDING') ? rows : null;
  });
}

/**
 * Asserts that `refused` answered INSUFFICIENT_CREDITS and that the account still has
 * `topUpsBefore` top-ups (the after-refusal step ends before the refusal is answered). A top-up's
 * job carries its id, so no new row is also no new job.
 */
async function expectNoTopUp(accountId: string, refused: Promise<unknown>, topUpsBefore = 0) {
  await expect(refused).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
  expect(await topUps(srv, accountId)).toHaveLength(topUpsBefore);
}

describe('a refusal for lack of credit starts auto top-up', () => {
  it('threshold 10, available 15, a 20-credit call: refused at once, writes nothing, starts one top-up whose job grants the pack; the same call then succeeds', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const { accountId, reference } = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    const version = (await readAccount(srv, accountId)).balance.version;

    expectError(await spendApi(accountId, 20), 'INSUFFICIENT_CREDITS');
    expect(await eventCount(accountId)).toBe(0);
    const started = await topUps(srv, accountId);
    expect(started).toHaveLength(1);

    // Its job (relayed from the outbox; the sweep would only take it up after a minute) charges and grants it.
    const [topUp] = await settled(accountId, 1);
    expect(topUp!.id).toBe(started[0]!.id);
    expect(topUp).toMatchObject({ status: 'SUCCEEDED', attempts: 1 });
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    const after = (await readAccount(srv, accountId)).balance;
    expect(after).toMatchObject({ available: '115', paid: '115' });
    expect(BigInt(after.version)).toBe(BigInt(version) + 1n); // the grant is the only balance change

    expect(ok(await spendApi(accountId, 20)).recordUsage.cost).toBe('20');
    expect((await readAccount(srv, accountId)).balance.available).toBe('95');
    expect(await topUps(srv, accountId)).toHaveLength(1);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('only when the pack lets the refused charge through: 15 + 5 covers 20, 15 + 4 does not', async () => {
    const covers = await createPack(srv, { credits: '4', bonusCredits: '1', priceUsd: '1' });
    const { accountId } = await topUpAccount('15', { thresholdCredits: '10', packId: covers.id });
    await expect(spend(srv.services, accountId, 20)).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect((await settled(accountId, 1))[0]).toMatchObject({ status: 'SUCCEEDED' });
    expect((await readAccount(srv, accountId)).balance.available).toBe('20');

    const short = await createPack(srv, { credits: '4', priceUsd: '1' });
    const other = await topUpAccount('15', { thresholdCredits: '10', packId: short.id });
    await expectNoTopUp(other.accountId, spend(srv.services, other.accountId, 20));
    expect(await billingCounts(srv, other.accountId)).toMatchObject({ payments: 0 });
  });

  it('nothing starts when auto top-up is off or paused, or without a payment method', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const off = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    ok(await srv.gql(SET, { input: { accountId: off.accountId, enabled: false, thresholdCredits: '10', packId: pack.id } }));
    await expectNoTopUp(off.accountId, spend(srv.services, off.accountId, 20));

    const paused = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    // What three failed charges in a row write (auto-top-up.ts recordOutcome).
    await srv.services.pool.query(`UPDATE auto_top_up_settings SET enabled = false, paused_at = now(), consecutive_failures = 3 WHERE account_id = $1`, [
      dbId(paused.accountId),
    ]);
    await expectNoTopUp(paused.accountId, spend(srv.services, paused.accountId, 20));

    // Nor without a payment method (its job would only record a SKIPPED row, on every re-check of a flood).
    const noMethod = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    await srv.services.pool.query(`DELETE FROM payment_methods WHERE account_id = $1`, [dbId(noMethod.accountId)]);
    await expectNoTopUp(noMethod.accountId, spend(srv.services, noMethod.accountId, 20));
  });

  it('nothing starts at maxPerPeriod, nor while a top-up is pending', async () => {
    const pack = await createPack(srv, { credits: '30', priceUsd: '3' });
    const { accountId } = await topUpAccount('100', { thresholdCredits: '50', packId: pack.id, maxPerPeriod: 1 });
    ok(await spendApi(accountId, 60)); // 40 < 50: the period's one top-up
    await settled(accountId, 1); // 70
    ok(await spendApi(accountId, 60)); // 10 < 50, but 1 of 1 is used
    await expectNoTopUp(accountId, spend(srv.services, accountId, 20), 1); // 10 + 30 would cover 20

    const waiting = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    // A pending top-up with no job (its job not yet relayed, say): the refusal adds none.
    await srv.services.pool.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, created_at) VALUES (gen_random_uuid(), $1, now(), 'PENDING', now())`,
      [dbId(waiting.accountId)],
    );
    await expect(spend(srv.services, waiting.accountId, 20)).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await topUps(srv, waiting.accountId)).toMatchObject([{ status: 'PENDING', attempts: 0 }]);
    await srv.services.pool.query(`DELETE FROM auto_top_ups WHERE account_id = $1`, [dbId(waiting.accountId)]);
  });

  it('16 concurrent refusals start one top-up: in one process, in several (no memo), and through group commit', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const committer = new GroupCommitter(srv.services.pool, srv.services.clock, chargeAccounts, applyCharge, { maxTransactions: 2 });
    const contexts: ServiceContext[] = [
      srv.services,
      { ...srv.services, depletionAlerts: undefined, refusalTopUps: undefined } as ServiceContext,
      { ...srv.services, groupCommit: committer },
    ];
    for (const ctx of contexts) {
      const { accountId, reference } = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
      const outcomes = await Promise.allSettled(Array.from({ length: 16 }, () => spend(ctx, accountId, 20)));
      expect(outcomes.map(settledCode)).toEqual(Array(16).fill('INSUFFICIENT_CREDITS'));
      expect(await topUps(srv, accountId)).toHaveLength(1);
      const [topUp] = await settled(accountId, 1);
      expect(topUp).toMatchObject({ status: 'SUCCEEDED' });
      expect(simulator.chargeCount(reference)).toBe(1);
      expect((await readAccount(srv, accountId)).balance.available).toBe('115');
    }
  });

  it('refused items of recordUsageBatch start one top-up, and so does a refused hold', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const { accountId } = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    const results = await recordUsageBatch(
      srv.services,
      [20, 30, 5].map((units) => ({ accountId: dbId(accountId), idempotencyKey: uniq('b'), category: 'units', quantities: { units: String(units) } })),
      { maxItems: 10 },
    );
    expect(results.map((r) => (r.ok ? 'OK' : (r.error as { code: string }).code))).toEqual(['INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS', 'OK']);
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect((await settled(accountId, 1))[0]).toMatchObject({ status: 'SUCCEEDED' });
    expect((await readAccount(srv, accountId)).balance.available).toBe('110');

    const held = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    await expect(
      reserveCredits(srv.services, { accountId: dbId(held.accountId), amountMicroCredits: credits(20), ttlSeconds: 60, idempotencyKey: uniq('h') }),
    ).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await topUps(srv, held.accountId)).toHaveLength(1);
    expect((await settled(held.accountId, 1))[0]).toMatchObject({ status: 'SUCCEEDED' });
  });
});

describe('a process remembers the refusals it checked', () => {
  /** A monotonic clock the test moves. */
  const manualClock = () => {
    let ms = 0;
    return { now: () => ms, advance: (by: number) => (ms += by) };
  };

  it('a flood at one balance version costs no statement; what it remembers is checked again after REFUSAL_TOP_UP_RECHECK_MS', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const { accountId } = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    ok(await srv.gql(SET, { input: { accountId, enabled: false, thresholdCredits: '10', packId: pack.id } }));
    const clock = manualClock();
    const remembered = new RefusalTopUps(10, clock.now);
    const ctx: ServiceContext = { ...srv.services, refusalTopUps: remembered };
    await expectNoTopUp(accountId, spend(ctx, accountId, 20)); // off: nothing to start at this version
    expect(remembered.size).toBe(1);
    // Enabled behind this process's back (another process's setAutoTopUp: no new balance version).
    await srv.services.pool.query(`UPDATE auto_top_up_settings SET enabled = true WHERE account_id = $1`, [dbId(accountId)]);
    // A process that checked would start one now; this one does not look again...
    for (let i = 0; i < 5; i++) await expectNoTopUp(accountId, spend(ctx, accountId, 20));
    clock.advance(REFUSAL_TOP_UP_RECHECK_MS - 1);
    await expectNoTopUp(accountId, spend(ctx, accountId, 20));
    // ... until what it remembers is old enough.
    clock.advance(1);
    await expect(spend(ctx, accountId, 20)).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect((await settled(accountId, 1))[0]).toMatchObject({ status: 'SUCCEEDED' });
  });

  it('setAutoTopUp in the same process makes it check the next refusal at once', async () => {
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const { accountId } = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id, maxPerPeriod: 1 });
    const clock = manualClock();
    const ctx: ServiceContext = { ...srv.services, refusalTopUps: new RefusalTopUps(10, clock.now) };
    const settings = { accountId: dbId(accountId), enabled: false, thresholdMicroCredits: credits(10), packId: dbId(pack.id), maxPerPeriod: 1 };
    await setAutoTopUp(ctx, settings);
    await expectNoTopUp(accountId, spend(ctx, accountId, 20));
    await setAutoTopUp(ctx, { ...settings, enabled: true });
    await expect(spend(ctx, accountId, 20)).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect((await settled(accountId, 1))[0]).toMatchObject({ status: 'SUCCEEDED' });
  });

  it('a refusal decided before the top-up landed, checked after, starts none (one refusal is never charged twice)', async () => {
    // What a process without the memo (another process) sees: the refusal's version is old, and
    // available credit now covers what it refused.
    const pack = await createPack(srv, { credits: '100', priceUsd: '1' });
    const { accountId, reference } = await topUpAccount('15', { thresholdCredits: '10', packId: pack.id });
    const stale: unknown[] = [];
    await spend(srv.services, accountId, 20).catch((error: unknown) => stale.push(error));
    await settled(accountId, 1);
    await afterCreditRefusals({ ...srv.services, refusalTopUps: new RefusalTopUps() }, stale);
    expect(await topUps(srv, accountId)).toHaveLength(1);
    expect(simulator.chargeCount(reference)).toBe(1);
  });
});
