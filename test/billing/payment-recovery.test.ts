/**
 * Payments whose provider answer was lost (the simulator's `timeout` / `timeout_after_charge`),
 * resumed later, against the real PostgreSQL and Redis with the simulator as the provider:
 * - a retry sends exactly the request the payment recorded: a card attached since the lost answer
 *   does not change it (the provider would refuse the reused key), for purchases and auto top-ups;
 * - a purchase whose client never retries is found by the `sweep-due` job (a `resume-payment`
 *   job on the real queue) and settled by its processor: granted once if it was charged, FAILED if
 *   declined; one younger than PAYMENT_RESUME_AFTER_SECONDS is left to its client;
 * - a payment older than IDEMPOTENCY_KEY_SAFE_WINDOW_MS is never sent again (the simulator then
 *   forgets keys like Stripe, so a resend would charge twice): its charge is looked up instead;
 * - a lookup that finds nothing is a decline only LOOKUP_SETTLE_DELAY_MS after the last send: a
 *   request sent just before the window closed (held in flight here by a gate on the simulator's
 *   charge or lookup, no sleeps) is not declined under it, and a success that still arrives
 *   after a `no_charge_found` settlement is granted once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import { processResumePayment } from '../../workers/processors/resume-payment.js';
import { processSweepDue } from '../../workers/processors/sweep-due.js';
import { createQueueJobSink } from '../../src/queues/job-sink.js';
import { resumePayment } from '../../src/services/resume-payment.js';
import { applyChargeEvent } from '../../src/services/payment-events.js';
import { IDEMPOTENCY_KEY_SAFE_WINDOW_MS, LOOKUP_SETTLE_DELAY_MS } from '../../src/payments/provider.js';
import type { ServiceContext } from '../../src/services/context.js';
import type { WorkerDeps } from '../../workers/deps.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { TEST_REDIS_URL } from '../setup/env.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, ok, readAccount, uniq } from '../api/helpers.js';
import { RECORD_USAGE, SET_AUTO_TOP_UP, attachMethod, billingCounts, billingWorkerDeps, createPack, startBillingServer, topUps, type BillingServer } from './billing-helpers.js';

const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id amount } }`;

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;
let deps: WorkerDeps;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
  deps = billingWorkerDeps(billing, { PAYMENT_RESUME_AFTER_SECONDS: '120' });
});

afterAll(async () => {
  await billing?.close();
});

function purchase(accountId: string, packId: string, key: string) {
  return srv.gql(PURCHASE, { accountId, packId, key });
}

/**
 * An account (100 paid, threshold 50, pack of 20) paying with `card`, whose first charge the
 * simulator makes and then answers with a timeout (`timeout_after_charge`; or as `script` says),
 * that just crossed the threshold: its PENDING top-up, and `run(attemptsMade, services?)` calling
 * the auto-top-up processor on it.
 */
async function topUpAfterLostAnswer(card: string, script: Parameters<PaymentSimulator['script']>[1] = ['timeout_after_charge']) {
  const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
  const accountId = await apiAccount(srv, { paid: '100' });
  simulator.script(card, script);
  await attachMethod(srv, accountId, card);
  ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
  ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '60' } } }));
  const topUpId = (await topUps(srv, accountId))[0]!.id;
  const run = (attemptsMade: number, services: ServiceContext = deps.services) =>
    processAutoTopUp(
      { ...deps, services },
      { id: `auto-top-up-${topUpId}`, name: 'auto-top-up', data: { topUpId, accountId: dbId(accountId) }, attemptsMade, attempts: 3 },
    );
  return { accountId, topUpId, run };
}

/** The account's payments, oldest first. */
async function payments(accountId: string) {
  const { rows } = await srv.services.pool.query(
    'SELECT id, status, payment_method_ref, grant_id, error FROM payments WHERE account_id = $1 ORDER BY created_at, id',
    [dbId(accountId)],
  );
  return rows as Array<{ id: string; status: string; payment_method_ref: string | null; grant_id: string | null; error: string | null }>;
}

/** Moves the account's payments' first attempt and last send `ms` into the past (a payment made and last sent that long ago). */
async function age(accountId: string, ms: number) {
  await srv.services.pool.query(
    `UPDATE payments SET created_at = created_at - make_interval(secs => $2), last_sent_at = last_sent_at - make_interval(secs => $2) WHERE account_id = $1`,
    [dbId(accountId), ms / 1000],
  );
}

/** Moves only the account's payments' last send `ms` into the past. */
async function ageLastSend(accountId: string, ms: number) {
  await srv.services.pool.query(`UPDATE payments SET last_sent_at = last_sent_at - make_interval(secs => $2) WHERE account_id = $1`, [dbId(accountId), ms / 1000]);
}

/** The services with a wall clock `ms` ahead of the real one (another process, a little later). */
function later(ms: number): ServiceContext {
  return { ...srv.services, clock: () => new Date(Date.now() + ms) };
}

/** A promise and its resolver. */
function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * Holds the simulator's next `charge` (or `lookupCharge`) in flight: `started` resolves when it
 * is called, it goes on to the real simulator once `release()` is called. `restore()` puts the
 * method back if it was never called.
 */
function holdNext(method: 'charge' | 'lookupCharge') {
  const started = deferred();
  const released = deferred();
  const target = simulator as unknown as Record<typeof method, (arg: unknown) => Promise<unknown>>;
  const original = target[method];
  const held = async (arg: unknown) => {
    target[method] = original;
    started.resolve();
    await released.promise;
    return original.call(simulator, arg);
  };
  target[method] = held;
  return {
    started: started.promise,
    release: released.resolve,
    restore: () => {
      if (target[method] === held) target[method] = original;
      released.resolve();
    },
  };
}

/** Auto top-up's settings row of the account (failures counted toward the pause). */
async function topUpSettings(accountId: string) {
  const { rows } = await srv.services.pool.query('SELECT enabled, consecutive_failures FROM auto_top_up_settings WHERE account_id = $1', [dbId(accountId)]);
  return rows[0] as { enabled: boolean; consecutive_failures: number };
}

/** A buyer whose first charge on card one is scripted; returns the account and both cards. */
async function buyer(script: Parameters<PaymentSimulator['script']>[1]) {
  const accountId = await apiAccount(srv);
  const cardOne = `pm_card_one_${randomUUID()}`;
  const cardTwo = `pm_card_two_${randomUUID()}`;
  simulator.script(cardOne, script);
  await attachMethod(srv, accountId, cardOne);
  return { accountId, cardOne, cardTwo };
}

describe('a retry sends the request the payment recorded', () => {
  it('purchase: the answer is lost, another card is attached, the retry settles on card one (charged once) and grants once', async () => {
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const { accountId, cardOne, cardTwo } = await buyer(['timeout_after_charge']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    await attachMethod(srv, accountId, cardTwo);
    const first = ok(await purchase(accountId, pack.id, key)).purchaseCreditPack;
    expect(first.amount).toBe('40');
    for (let i = 0; i < 2; i++) expect(ok(await purchase(accountId, pack.id, key)).purchaseCreditPack.id).toBe(first.id);
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(simulator.chargeCount(cardTwo)).toBe(0);
    expect(await payments(accountId)).toEqual([{ id: expect.any(String), status: 'SUCCEEDED', payment_method_ref: cardOne, grant_id: dbId(first.id), error: null }]);
    expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('auto top-up: the worker dies after the charge, another card is attached, the next run settles on card one', async () => {
    const cardOne = `pm_card_one_${randomUUID()}`;
    const { accountId, run } = await topUpAfterLostAnswer(cardOne);
    await expect(run(0)).rejects.toThrow(/will retry/);
    const cardTwo = await attachMethod(srv, accountId, `pm_card_two_${randomUUID()}`);
    expect(await run(1)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(simulator.chargeCount(cardTwo)).toBe(0);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    expect((await payments(accountId))[0]!.payment_method_ref).toBe(cardOne);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
  it('purchase: the answer is lost; client retries, resume jobs and the provider\'s success event all at once: one charge, one grant, every retry answers it', async () => {
    const pack = await createPack(srv, { credits: '25', priceUsd: '2.5' });
    const { accountId, cardOne } = await buyer(['timeout_after_charge']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    const [pending] = await payments(accountId);
    const event = {
      eventId: `evt_${randomUUID()}`,
      eventType: 'payment_intent.succeeded',
      paymentId: pending!.id,
      accountId: dbId(accountId),
      outcome: { status: 'succeeded' as const, providerRef: `pi_${randomUUID()}` },
      amountCents: 250n,
      currency: 'usd',
      livemode: true,
    };
    const [retries, resumes, events] = await Promise.all([
      Promise.all(Array.from({ length: 5 }, () => purchase(accountId, pack.id, key))),
      Promise.all(Array.from({ length: 5 }, () => resumePayment(srv.services, pending!.id))),
      Promise.all(Array.from({ length: 5 }, () => applyChargeEvent(srv.services, event, () => true))),
    ]);
    const grantIds = new Set(retries.map((r) => ok(r).purchaseCreditPack.id));
    expect(grantIds.size).toBe(1);
    expect(resumes.map((r) => r.status)).toEqual(Array(5).fill('SUCCEEDED'));
    expect(events.map((e) => e.status)).toEqual(Array(5).fill('SUCCEEDED'));
    expect(events.filter((e) => e.result === 'settled').length).toBeLessThanOrEqual(1);
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(await payments(accountId)).toEqual([{ id: pending!.id, status: 'SUCCEEDED', payment_method_ref: cardOne, grant_id: dbId([...grantIds][0]!), error: null }]);
    expect((await readAccount(srv, accountId)).balance.paid).toBe('25');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe('resume-payment: a purchase whose client never retries', () => {
  it('the sweep adds its job once it is older than PAYMENT_RESUME_AFTER_SECONDS; the processor grants it once, charging nothing more', async () => {
    const pack = await createPack(srv, { credits: '25', bonusCredits: '5', priceUsd: '2.5' });
    const { accountId, cardOne } = await buyer(['timeout_after_charge']);
    expectError(await purchase(accountId, pack.id, uniq('buy')), 'UNAVAILABLE');
    const [pending] = await payments(accountId);
    const jobId = `resume-payment-${pending!.id}`;
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const sink = createQueueJobSink(connection, billing.prefix);
    try {
      await processSweepDue(deps, sink);
      expect(await sink.queue.getJob(jobId)).toBeUndefined(); // younger than the grace period: left to its client
      await age(accountId, 121_000);
      await processSweepDue(deps, sink);
      const job = await sink.queue.getJob(jobId);
      expect(job?.name).toBe('resume-payment');
      expect(job?.data).toEqual({ paymentId: pending!.id, accountId: dbId(accountId) });

      const view = { id: jobId, name: 'resume-payment', data: job!.data, attemptsMade: 0, attempts: 5 };
      expect(await processResumePayment(deps, view)).toMatchObject({ status: 'SUCCEEDED' });
      expect(await processResumePayment(deps, view)).toMatchObject({ status: 'SUCCEEDED' });
      expect(simulator.chargeCount(cardOne)).toBe(1);
      expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
      expect((await readAccount(srv, accountId)).balance.paid).toBe('30');

      // Settled: the next sweep offers it no more, and the client's late retry returns the same grant.
      await (await sink.queue.getJob(jobId))!.remove();
      await processSweepDue(deps, sink);
      expect(await sink.queue.getJob(jobId)).toBeUndefined();
      await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    } finally {
      await sink.close();
      connection.disconnect();
    }
  });

  it('a timeout that charged nothing, then a decline: the resume marks the payment FAILED and grants nothing', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId, cardOne } = await buyer(['timeout', 'decline']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    const [pending] = await payments(accountId);
    expect(await resumePayment(srv.services, pending!.id)).toEqual({ paymentId: pending!.id, status: 'FAILED', reason: 'card_declined: Your card was declined.' });
    expect(simulator.chargeCount(cardOne)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, failed: 1, pack_grants: 0 });
    expect(expectError(await purchase(accountId, pack.id, key), 'PAYMENT_FAILED').extensions?.reason).toBe('card_declined');
  });

  it('a provider that still does not answer leaves it PENDING and the job attempt fails (to be retried)', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId } = await buyer(['timeout', 'timeout']);
    expectError(await purchase(accountId, pack.id, uniq('buy')), 'UNAVAILABLE');
    const [pending] = await payments(accountId);
    const view = { name: 'resume-payment', data: { paymentId: pending!.id, accountId: dbId(accountId) }, attemptsMade: 0, attempts: 5 };
    await expect(processResumePayment(deps, view)).rejects.toThrow(/will retry/);
    expect((await payments(accountId))[0]!.status).toBe('PENDING');
  });
});

describe('past the provider idempotency window a payment is looked up, never sent again', () => {
  it('purchase charged 25 hours ago, key forgotten by the provider: the retry grants it without a second charge', async () => {
    const pack = await createPack(srv, { credits: '50', priceUsd: '5' });
    const { accountId, cardOne } = await buyer(['timeout_after_charge']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    await age(accountId, 25 * 3_600_000);
    simulator.pruneIdempotencyKeys();
    const g = ok(await purchase(accountId, pack.id, key)).purchaseCreditPack;
    expect(g.amount).toBe('50');
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('purchase whose first attempt charged nothing, 25 hours ago: FAILED (no_charge_found), nothing is sent or charged', async () => {
    const pack = await createPack(srv, { credits: '50', priceUsd: '5' });
    const { accountId, cardOne } = await buyer(['timeout']);
    expectError(await purchase(accountId, pack.id, uniq('buy')), 'UNAVAILABLE');
    await age(accountId, 25 * 3_600_000);
    simulator.pruneIdempotencyKeys();
    const [pending] = await payments(accountId);
    expect(await resumePayment(srv.services, pending!.id)).toMatchObject({ status: 'FAILED', reason: expect.stringMatching(/^no_charge_found: /) });
    expect(simulator.chargeCount(cardOne)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, failed: 1, pack_grants: 0 });
  });

  it('auto top-up charged 25 hours ago, key forgotten: the next run grants it without a second charge', async () => {
    const card = `pm_card_${randomUUID()}`;
    const { accountId, run } = await topUpAfterLostAnswer(card);
    await expect(run(0)).rejects.toThrow(/will retry/);
    await age(accountId, 25 * 3_600_000);
    simulator.pruneIdempotencyKeys();
    expect(await run(1)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(card)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
  });
});

describe('a lookup that finds nothing is a decline only LOOKUP_SETTLE_DELAY_MS after the last send', () => {
  const JUST_INSIDE_WINDOW_MS = IDEMPOTENCY_KEY_SAFE_WINDOW_MS - 10_000;

  /** A purchase (pack of 30) whose first answer was lost (`timeout`; the next send succeeds), aged to 10 s inside the 23 h window: its PENDING payment. */
  async function lostPurchaseAlmostOutOfWindow() {
    const pack = await createPack(srv, { credits: '30', priceUsd: '3' });
    const { accountId, cardOne } = await buyer(['timeout', 'succeed']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    await age(accountId, JUST_INSIDE_WINDOW_MS);
    const [pending] = await payments(accountId);
    return { pack, accountId, cardOne, key, pending };
  }

  it('probe: a retry sent at 22h59m50s is in flight when a resume 20 s later looks the charge up: PENDING, then the charge is granted once', async () => {
    const { pack, accountId, cardOne, key, pending } = await lostPurchaseAlmostOutOfWindow();
    const charge = holdNext('charge');
    try {
      const retry = purchase(accountId, pack.id, key); // the client's retry: still inside the window, so it is sent
      await charge.started;
      const resumed = await resumePayment(later(20_000), pending!.id); // past the window: looked up, finds nothing yet
      expect(resumed).toMatchObject({ status: 'PENDING', reason: expect.stringMatching(/no charge found yet/) });
      expect((await payments(accountId))[0]!.status).toBe('PENDING');
      charge.release();
      const answer = await retry;
      expect(ok(answer).purchaseCreditPack.amount).toBe('30');
    } finally {
      charge.restore();
    }
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('30');
    expect(await resumePayment(later(LOOKUP_SETTLE_DELAY_MS * 2), pending!.id)).toMatchObject({ status: 'SUCCEEDED' });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a send recorded while the lookup was already running is seen when the lookup settles (under the row lock)', async () => {
    const { pack, accountId, cardOne, key, pending } = await lostPurchaseAlmostOutOfWindow();
    const lookup = holdNext('lookupCharge');
    const charge = holdNext('charge');
    try {
      const resume = resumePayment(later(20_000), pending!.id); // read the row (last send 22h59m50s ago), now looking up
      await lookup.started;
      const retry = purchase(accountId, pack.id, key); // records its send, then waits in flight
      await charge.started;
      lookup.release();
      expect(await resume).toMatchObject({ status: 'PENDING' });
      charge.release();
      expect(ok(await retry).purchaseCreditPack.amount).toBe('30');
    } finally {
      lookup.restore();
      charge.restore();
    }
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1 });
  });

  it('nothing found a minute after the last send: PENDING (the job retries); LOOKUP_SETTLE_DELAY_MS after it: FAILED no_charge_found', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId, cardOne } = await buyer(['timeout']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    await age(accountId, IDEMPOTENCY_KEY_SAFE_WINDOW_MS + 1_800_000);
    await srv.services.pool.query(`UPDATE payments SET last_sent_at = $2 WHERE account_id = $1`, [dbId(accountId), new Date(Date.now() - 60_000)]);
    const [pending] = await payments(accountId);
    const view = { name: 'resume-payment', data: { paymentId: pending!.id, accountId: dbId(accountId) }, attemptsMade: 0, attempts: 5 };
    await expect(processResumePayment(deps, view)).rejects.toThrow(/no charge found yet.*will retry/);
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE'); // the client is told to retry, not that it failed
    expect((await payments(accountId))[0]!.status).toBe('PENDING');

    await ageLastSend(accountId, LOOKUP_SETTLE_DELAY_MS);
    expect(await processResumePayment(deps, view)).toMatchObject({ status: 'FAILED', reason: expect.stringMatching(/^no_charge_found: /) });
    expect(expectError(await purchase(accountId, pack.id, key), 'PAYMENT_FAILED').extensions?.reason).toBe('no_charge_found');
    expect(simulator.chargeCount(cardOne)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, failed: 1, pack_grants: 0 });
  });

  it('purchase: a send that stalls past the delay is settled no_charge_found, and its late success is granted once (SUCCEEDED)', async () => {
    const { pack, accountId, cardOne, key, pending } = await lostPurchaseAlmostOutOfWindow();
    const charge = holdNext('charge');
    let first: { id: string; amount: string };
    try {
      const retry = purchase(accountId, pack.id, key);
      await charge.started;
      const resumed = await resumePayment(later(LOOKUP_SETTLE_DELAY_MS + 60_000), pending!.id);
      expect(resumed).toMatchObject({ status: 'FAILED', reason: expect.stringMatching(/^no_charge_found: /) });
      charge.release();
      first = ok(await retry).purchaseCreditPack;
    } finally {
      charge.restore();
    }
    expect(first.amount).toBe('30');
    expect(ok(await purchase(accountId, pack.id, key)).purchaseCreditPack.id).toBe(first.id);
    expect(await resumePayment(srv.services, pending!.id)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(cardOne)).toBe(1);
    expect(await payments(accountId)).toEqual([{ id: pending!.id, status: 'SUCCEEDED', payment_method_ref: cardOne, grant_id: dbId(first.id), error: null }]);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('30');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('auto top-up: nothing found 20 s after the last send counts no failure; a late success after no_charge_found ends the top-up SUCCEEDED with no second payment', async () => {
    const card = `pm_card_${randomUUID()}`;
    const { accountId, topUpId, run } = await topUpAfterLostAnswer(card, ['timeout', 'succeed']);
    await expect(run(0)).rejects.toThrow(/will retry/);
    await age(accountId, JUST_INSIDE_WINDOW_MS);
    const charge = holdNext('charge');
    try {
      const inFlight = run(1); // inside the window: sent again with its key, held in flight
      inFlight.catch(() => undefined); // awaited below; a rejection is the assertion's, not an unhandled one
      await charge.started;
      await expect(run(1, later(20_000))).rejects.toThrow(/no charge found yet.*will retry/);
      expect((await payments(accountId))[0]!.status).toBe('PENDING');
      expect(await topUpSettings(accountId)).toEqual({ enabled: true, consecutive_failures: 0 });
      // The send stalls past the delay: the lookup settles it no_charge_found (a failure; the top-up stays PENDING).
      await expect(run(1, later(LOOKUP_SETTLE_DELAY_MS + 60_000))).rejects.toThrow(/no_charge_found: .*will retry/);
      expect((await payments(accountId))[0]!.status).toBe('FAILED');
      charge.release();
      expect(await inFlight).toMatchObject({ status: 'SUCCEEDED' });
    } finally {
      charge.restore();
    }
    expect(await run(2)).toMatchObject({ status: 'SUCCEEDED' });
    expect(simulator.chargeCount(card)).toBe(1);
    expect(await billingCounts(srv, accountId)).toEqual({ payments: 1, succeeded: 1, failed: 0, pack_grants: 1, top_ups: 1 });
    expect(await topUps(srv, accountId)).toMatchObject([{ id: topUpId, status: 'SUCCEEDED', attempts: 1 }]);
    expect(await topUpSettings(accountId)).toEqual({ enabled: true, consecutive_failures: 0 });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});
