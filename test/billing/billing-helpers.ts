/**
 * Helpers of the billing tests (issue #4: packs, payment methods, purchases, auto top-up): a test
 * server on a unique queue prefix whose payment provider is the simulator, packs and payment
 * methods made over the API, counters read straight from PostgreSQL, and a condition wait (a
 * deadline is only the failure guard; nothing sleeps to synchronize).
 */
import { randomUUID } from 'node:crypto';
import { expect } from 'vitest';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import { apiAccount, dbId, ok, uniq } from '../api/helpers.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { pino } from 'pino';
import { parseEnv } from '../../src/config/env.js';
import type { WorkerDeps } from '../../workers/deps.js';
import { startWorkers, type RunningWorkers } from '../../workers/start.js';
import { LEDGER_JOBS_QUEUE, MAINTENANCE_QUEUE } from '../../src/queues/names.js';

/** A test server whose relay enqueues jobs under its own `prefix`. */
export interface QueuedServer {
  srv: TestServer;
  prefix: string;
  /** Closes the server, then removes its queues from Redis. */
  close(): Promise<void>;
}

/** A test server on its own queues, and its simulator. */
export interface BillingServer extends QueuedServer {
  simulator: PaymentSimulator;
}

/** Starts a test server with the environment `overrides` on a unique BullMQ prefix. */
export async function startServerWithOwnQueues(overrides: Record<string, string>): Promise<QueuedServer> {
  const prefix = `cp-billing-${randomUUID()}`;
  const srv = await startTestServer({ QUEUE_PREFIX: prefix, ...overrides });
  return {
    srv,
    prefix,
    async close() {
      await srv.close();
      const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
      for (const name of [LEDGER_JOBS_QUEUE, MAINTENANCE_QUEUE]) {
        const queue = new Queue(name, { connection, prefix });
        await queue.obliterate({ force: true });
        await queue.close();
      }
      connection.disconnect();
    },
  };
}

/** Starts a test server (PAYMENT_PROVIDER=simulator) on a unique BullMQ prefix. */
export async function startBillingServer(): Promise<BillingServer> {
  const base = await startServerWithOwnQueues({ PAYMENT_PROVIDER: 'simulator' });
  const simulator = base.srv.services.payments;
  if (!(simulator instanceof PaymentSimulator)) throw new Error('the test server should charge through the simulator');
  return { ...base, simulator };
}

/** The CreditPack fields the billing tests select (GraphQL selection set). */
export const PACK_FIELDS = 'id name credits bonusCredits priceUsd expiresAfterDays';
const CREATE_PACK = `mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { ${PACK_FIELDS} } }`;
const ATTACH = `mutation($accountId: ID!, $reference: String!) { attachPaymentMethod(accountId: $accountId, reference: $reference) { provider reference attachedAt } }`;

/** Creates a pack over the API (admin key) with a unique name; returns it as the API shows it. */
export async function createPack(
  srv: TestServer,
  input: { credits: string; bonusCredits?: string; priceUsd: string; expiresAfterDays?: number; name?: string },
): Promise<{ id: string; name: string; credits: string; bonusCredits: string; priceUsd: string; expiresAfterDays: number | null }> {
  return ok(await srv.gql(CREATE_PACK, { input: { name: uniq('pack'), ...input } })).createCreditPack;
}

/** Attaches a payment method; `reference` defaults to a unique one that always succeeds. */
export async function attachMethod(srv: TestServer, accountId: string, reference = `pm_ok_${randomUUID()}`): Promise<string> {
  ok(await srv.gql(ATTACH, { accountId, reference }));
  return reference;
}

/** Rows of the billing tables that belong to an account (for "nothing changed" checks). */
export async function billingCounts(srv: TestServer, accountGlobalId: string) {
  const { rows } = await srv.services.pool.query(
    `SELECT (SELECT count(*) FROM payments WHERE account_id = $1)::int AS payments,
            (SELECT count(*) FROM payments WHERE account_id = $1 AND status = 'SUCCEEDED')::int AS succeeded,
            (SELECT count(*) FROM payments WHERE account_id = $1 AND status = 'FAILED')::int AS failed,
            (SELECT count(*) FROM credit_grants WHERE account_id = $1 AND source IN ('PURCHASE', 'AUTO_TOP_UP') AND idempotency_key LIKE 'payment:%')::int AS pack_grants,
            (SELECT count(*) FROM auto_top_ups WHERE account_id = $1)::int AS top_ups`,
    [dbId(accountGlobalId)],
  );
  return rows[0] as { payments: number; succeeded: number; failed: number; pack_grants: number; top_ups: number };
}

/** The account's auto top-up rows, oldest first. */
export async function topUps(srv: TestServer, accountGlobalId: string) {
  const { rows } = await srv.services.pool.query(
    `SELECT id, status, attempts, payment_id, error FROM auto_top_ups WHERE account_id = $1 ORDER BY created_at, id`,
    [dbId(accountGlobalId)],
  );
  return rows as Array<{ id: string; status: string; attempts: number; payment_id: string | null; error: string | null }>;
}

/**
 * Polls `probe` until it returns a value that is not null/undefined/false and returns it; fails
 * after `timeoutMs` (the guard against a hang, not a synchronization delay).
 */
export async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null && value !== undefined && value !== false) return value;
    if (Date.now() > deadline) expect.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** setAutoTopUp, answering `enabled`. */
export const SET_AUTO_TOP_UP = `mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`;
/** recordUsage, answering the event's `id`. */
export const RECORD_USAGE = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;

/**
 * What a worker processor needs, over the billing server's own services (so its simulator), with a
 * silent log and the test environment (its queue prefix) plus `env` overrides (e.g.
 * PAYMENT_RESUME_AFTER_SECONDS): for calling processors directly in a test.
 */
export function billingWorkerDeps(billing: QueuedServer, env: Record<string, string> = {}): WorkerDeps {
  return {
    services: billing.srv.services,
    log: pino({ level: 'silent' }),
    env: parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: TEST_DATABASE_URL, QUEUE_PREFIX: billing.prefix, ...env }),
  };
}

/**
 * Starts real BullMQ workers (4 jobs at a time) on the billing server's queues and over its own
 * services (so its simulator), with the environment of {@link billingWorkerDeps}; their relay is
 * off, the server's enqueues the jobs. Close them before the server.
 */
export async function startBillingWorkers(billing: QueuedServer): Promise<RunningWorkers> {
  const { services } = billing.srv;
  return startWorkers({ env: billingWorkerDeps(billing).env, pool: services.pool, log: pino({ level: 'silent' }), prefix: billing.prefix, services, relay: false, concurrency: 4 });
}

/**
 * A new account of 100 paid credits with auto top-up on (threshold 50, a new pack of 20 credits
 * for $2, payment method `reference`) that 60 credits of usage just took below the threshold.
 * @returns the account's global id, `reference`, the pack's global id and the id of its one top-up (PENDING).
 */
export async function crossedThreshold(srv: TestServer, reference = `pm_ok_${randomUUID()}`): Promise<{ accountId: string; reference: string; packId: string; topUpId: string }> {
  const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
  const accountId = await apiAccount(srv, { paid: '100' });
  await attachMethod(srv, accountId, reference);
  ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '50', packId: pack.id } }));
  ok(await srv.gql(RECORD_USAGE, { input: { accountId, idempotencyKey: uniq('use'), category: 'units', quantities: { units: '60' } } }));
  const rows = await topUps(srv, accountId);
  expect(rows.map((t) => t.status)).toEqual(['PENDING']);
  return { accountId, reference, packId: pack.id, topUpId: rows[0]!.id };
}
