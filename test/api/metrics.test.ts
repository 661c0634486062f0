/**
 * GET /metrics (src/metrics/server-metrics.ts) on real servers, PostgreSQL and Redis: the charge
 * outcome counter moves by exactly the charges made, by outcome; the outbox gauges show rows the
 * relay cannot publish; the webhook gauges show delivery attempts as logged; the queue gauges
 * show BullMQ's counts; the payment reversal gauges count the refunds, disputes and won disputes
 * of the last 7 days (live accounts), the failed refunds and what they gave back (the refund gauges then
 * counting what stays refunded), and the kept early reversals; a collector whose source is down or late is left out with up=0 while the
 * scrape answers; the token guards it; METRICS_ENABLED=false turns it off; and no account id,
 * external id, key or subject the tests used appears in it.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { freePort } from '../../demo/server-process.js';
import { OUTBOX_RELAY_LOCK_KEY } from '../../src/outbox/relay.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { USAGE_OUTCOMES } from '../../src/metrics/usage-outcomes.js';
import { METRICS_COLLECT_TIMEOUT_MS } from '../../src/metrics/server-metrics.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { attachMethod, createPack } from '../billing/billing-helpers.js';
import { WEBHOOK_MAX_LOGGED_ATTEMPTS } from '../../src/services/webhooks.js';
import { LEDGER_JOBS_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_DELIVERY_QUEUE } from '../../src/queues/names.js';
import { apiAccount, dbId, gid, ok, uniq } from './helpers.js';

/** One scrape: the HTTP status, the text, and the value of one sample (undefined when absent). */
interface Scrape {
  status: number;
  text: string;
  value(name: string, labels?: Record<string, string>): number | undefined;
}

/** GETs /metrics of `srv` with `authorization` (none by default) and parses the samples. */
async function scrape(srv: TestServer, authorization?: string): Promise<Scrape> {
  const res = await fetch(new URL('/metrics', srv.url), { headers: authorization ? { authorization } : {} });
  const text = await res.text();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    samples.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return {
    status: res.status,
    text,
    value(name, labels = {}) {
      const parts = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
      return samples.get(parts.length ? `${name}{${parts.join(',')}}` : name);
    },
  };
}

/** Every `creditpool_usage_events_total` series of a scrape, by outcome. */
function outcomes(s: Scrape): Record<string, number> {
  return Object.fromEntries(USAGE_OUTCOMES.map((o) => [o, s.value('creditpool_usage_events_total', { outcome: o })!]));
}

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { id } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id status consumed } }`;

/** The error code of a one-error answer, or 'OK'. */
const codeOf = (res: { body: { errors?: Array<{ extensions?: { code?: string } }> } }) => res.body.errors?.[0]?.extensions?.code ?? 'OK';

let srv: TestServer;
let db: pg.Pool;
/** Everything tenant-specific the tests sent: none of it may appear in the metrics. */
const tenantStrings = new Set<string>();

beforeAll(async () => {
  srv = await startTestServer();
  db = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 3 });
});

afterAll(async () => {
  await srv?.close();
  await db?.end();
});

/** An account over the API whose ids and external id are remembered as tenant data. */
async function account(opts: { paid?: string } = {}): Promise<string> {
  const externalId = uniq('metrics-tenant');
  const id = await apiAccount(srv, { ...opts, externalId });
  tenantStrings.add(externalId).add(id).add(dbId(id));
  return id;
}

/** A usage input whose idempotency key is remembered as tenant data. */
function usage(accountId: string, extra: Record<string, unknown> = {}) {
  const idempotencyKey = uniq('metrics-use');
  tenantStrings.add(idempotencyKey);
  return { accountId, idempotencyKey, category: 'unit', ...extra };
}

const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id } }`;

/**
 * What the payment reversal gauge tests use: the metrics server's simulator; `apply`, which
 * applies a simulator event as the webhook would and answers its result; and `bought`, which pays
 * for a new pack of 40 credits for $4 (made by this call) as `accountId` and answers the
 * payment's database id; `boughtOnTestMode`, the same for a new test-mode account.
 * @throws Error when the metrics server does not charge through the simulator.
 */
async function reversalTools() {
  const simulator = srv.services.payments;
  if (!(simulator instanceof PaymentSimulator)) throw new Error('the metrics server should charge through the simulator');
  const chargeLivemode = (testMode: boolean) => !testMode;
  const apply = async (event: Parameters<typeof applyReversalEvent>[1]) => (await applyReversalEvent(srv.services, event, chargeLivemode)).result;
  const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
  /** A payment of `accountId` for the 40-credit pack, charged by the simulator. */
  const bought = async (accountId: string) => {
    await attachMethod(srv, accountId);
    const grant = ok(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('metrics-buy') })).purchaseCreditPack;
    const { rows } = await db.query('SELECT id FROM payments WHERE grant_id = $1', [dbId(grant.id)]);
    return rows[0].id as string;
  };
  /** A payment for the pack of a new test-mode account (its clock starting now; its id kept in tenantStrings). */
  const boughtOnTestMode = async () => {
    const testModeAccount = dbId(
      ok(
        await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
          input: { externalId: uniq('metrics-test-mode'), name: 'metrics', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: new Date().toISOString() },
        }),
      ).createAccount.id,
    );
    tenantStrings.add(testModeAccount);
    return bought(gid('Account', testModeAccount));
  };
  return { simulator, apply, bought, boughtOnTestMode };
}

describe('GET /metrics', () => {
  it('counts every charge once by outcome: recorded, replayed, and each refusal code, across recordUsage, recordUsageBatch and settleReservation', async () => {
    const before = await scrape(srv);
    expect(before.status).toBe(200);
    const start = outcomes(before);
    const groupChargesBefore = before.value('creditpool_group_commit_charges_total')!;

    const funded = await account({ paid: '20' });
    const empty = await account();
    const answers: string[] = [];
    // recordUsage: 2 recorded, 1 replayed, 1 IDEMPOTENCY_CONFLICT, 1 INSUFFICIENT_CREDITS.
    const first = usage(funded);
    answers.push(codeOf(await srv.gql(RECORD, { input: first })));
    answers.push(codeOf(await srv.gql(RECORD, { input: usage(funded) })));
    answers.push(codeOf(await srv.gql(RECORD, { input: first })));
    answers.push(codeOf(await srv.gql(RECORD, { input: { ...first, sku: 'half' } })));
    answers.push(codeOf(await srv.gql(RECORD, { input: usage(empty) })));
    expect(answers).toEqual(['OK', 'OK', 'OK', 'IDEMPOTENCY_CONFLICT', 'INSUFFICIENT_CREDITS']);
    // A budget of 1 credit for one agent: 1 recorded, 1 BUDGET_EXCEEDED.
    const agentId = uniq('metrics-agent');
    tenantStrings.add(agentId);
    await setSpendingBudget(srv.services, { accountId: dbId(funded), subjectKind: 'AGENT', subjectId: agentId, limitMicroCredits: 1_000_000n });
    expect(codeOf(await srv.gql(RECORD, { input: usage(funded, { agentId }) }))).toBe('OK');
    expect(codeOf(await srv.gql(RECORD, { input: usage(funded, { agentId }) }))).toBe('BUDGET_EXCEEDED');
    // recordUsageBatch: 1 recorded, 1 INSUFFICIENT_CREDITS, 1 BAD_USER_INPUT (no price rule), 1 NOT_FOUND (an id that cannot be read).
    const batch = ok(await srv.gql(BATCH, { inputs: [usage(funded), usage(empty), usage(funded, { category: 'no-such-category' }), usage('not-an-account-id')] })).recordUsageBatch;
    expect(batch.map((r: { errorCode: string | null }) => r.errorCode)).toEqual([null, 'INSUFFICIENT_CREDITS', 'BAD_USER_INPUT', 'NOT_FOUND']);
    // settleReservation with 2 usage items: 2 recorded; the same settle again: 2 replayed.
    const hold = ok(await srv.gql(RESERVE, { input: { accountId: funded, amount: '5', ttlSeconds: 600, idempotencyKey: uniq('metrics-hold') } })).reserveCredits;
    const settle = { reservationId: hold.id, usage: [usage(funded), usage(funded)] };
    expect(ok(await srv.gql(SETTLE, { input: settle })).settleReservation).toMatchObject({ status: 'SETTLED', consumed: '2' });
    expect(ok(await srv.gql(SETTLE, { input: settle })).settleReservation).toMatchObject({ status: 'SETTLED', consumed: '2' });

    const after = await scrape(srv);
    const moved = Object.fromEntries(Object.entries(outcomes(after)).map(([o, n]) => [o, n - start[o]!]));
    expect(moved).toEqual({
      ...Object.fromEntries(USAGE_OUTCOMES.map((o) => [o, 0])),
      recorded: 6,
      replayed: 3,
      IDEMPOTENCY_CONFLICT: 1,
      INSUFFICIENT_CREDITS: 2,
      BUDGET_EXCEEDED: 1,
      BAD_USER_INPUT: 1,
      NOT_FOUND: 1,
    });
    // The group committer took the single charges (CHARGE_PATH=group by default).
    expect(after.value('creditpool_group_commit_charges_total')!).toBeGreaterThan(groupChargesBefore);
    expect(after.value('creditpool_live_websockets')).toBe(0);
  });

  it('the outbox gauges show the rows left while no relay can publish (its lock held), and the age of the oldest', async () => {
    const locker = await db.connect();
    const ids: string[] = [];
    try {
      // Every relay drains under this lock (outbox/relay.ts): while it is held nothing is published.
      await locker.query('SELECT pg_advisory_lock($1)', [OUTBOX_RELAY_LOCK_KEY.toString()]);
      const before = await scrape(srv);
      expect(before.value('creditpool_metrics_collector_up', { collector: 'outbox' })).toBe(1);
      const rows = before.value('creditpool_outbox_rows')!;
      const { rows: inserted } = await db.query(
        `INSERT INTO outbox_events (account_id, topic, payload, created_at)
         SELECT gen_random_uuid(), 'balance', '{}'::jsonb, now() - interval '120 seconds' FROM generate_series(1, 3) RETURNING id::text`,
      );
      ids.push(...inserted.map((r) => r.id as string));
      const after = await scrape(srv);
      expect(after.value('creditpool_outbox_rows')).toBe(rows + 3);
      expect(after.value('creditpool_outbox_oldest_age_seconds')!).toBeGreaterThanOrEqual(120);
      expect(after.value('creditpool_outbox_oldest_age_seconds')!).toBeLessThan(600);
    } finally {
      if (ids.length) await db.query('DELETE FROM outbox_events WHERE id = ANY($1::bigint[])', [ids]);
      await locker.query('SELECT pg_advisory_unlock($1)', [OUTBOX_RELAY_LOCK_KEY.toString()]);
      locker.release();
    }
  });

  it('the webhook gauges count events whose logged attempts all failed, and those that failed for good (attempts exhausted or a permanent 4xx), within the window', async () => {
    const owner = dbId(await account());
    const events: string[] = [];
    /** Logs attempts 1..n of a new event with `status` / `responseCode` (the last one's may differ), `ageSeconds` old. */
    const log = async (attempts: Array<{ status: 'FAILED' | 'DELIVERED'; responseCode: number | null; attempt?: number }>, ageSeconds = 60) => {
      const eventId = randomUUID();
      events.push(eventId);
      for (const [i, a] of attempts.entries()) {
        await db.query(
          `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, error, created_at)
           VALUES (gen_random_uuid(), 'credit_alert.raised', $1, $2, 'http://receiver.invalid/hook', $3, $4, $5, $6, now() - make_interval(secs => $7))`,
          [eventId, owner, a.attempt ?? i + 1, a.status, a.responseCode, a.status === 'FAILED' ? 'HTTP error' : null, ageSeconds - i],
        );
      }
    };
    const failed = (responseCode: number | null = 500) => ({ status: 'FAILED' as const, responseCode });
    try {
      const before = await scrape(srv);
      expect(before.value('creditpool_metrics_collector_up', { collector: 'webhooks' })).toBe(1);
      const undelivered = before.value('creditpool_webhook_events_undelivered')!;
      const final = before.value('creditpool_webhook_events_failed_final')!;
      await log([failed(), failed(null)]); // undelivered, retries left
      await log([failed(), { status: 'DELIVERED', responseCode: 200 }]); // delivered in the end: not counted
      await log(Array.from({ length: WEBHOOK_MAX_LOGGED_ATTEMPTS }, () => failed(503)), 3600); // every attempt failed: final
      await log([failed(410)]); // a permanent refusal: final
      await log([failed(429)]); // asks for a retry: undelivered, not final
      await log([failed(), failed()], 8 * 86400); // older than the window: not counted
      // Redelivered (`npm run webhooks -- redeliver`: a new job, attempt numbers from 1) after a
      // permanent refusal and after its 17 attempts; the new job's first attempt failed with a
      // 500 and it retries: undelivered, not final (`failed` lists both as retrying).
      await log([failed(410), { ...failed(500), attempt: 1 }]);
      await log([...Array.from({ length: WEBHOOK_MAX_LOGGED_ATTEMPTS }, () => failed(503)), { ...failed(500), attempt: 1 }], 3600);
      const after = await scrape(srv);
      expect(after.value('creditpool_webhook_events_undelivered')! - undelivered).toBe(6);
      expect(after.value('creditpool_webhook_events_failed_final')! - final).toBe(2);
    } finally {
      await db.query('DELETE FROM webhook_deliveries WHERE event_id = ANY($1::text[])', [events]);
    }
  });

  it('the payment reversal gauges count the refunds (full, partial), disputes and won disputes of the last 7 days of live accounts, the credit taken and given back, and the kept early reversals', async () => {
    const { simulator, apply, bought, boughtOnTestMode } = await reversalTools();
    const names = [
      'creditpool_payments_refunded_full',
      'creditpool_payments_refunded_partially',
      'creditpool_payments_disputed',
      'creditpool_payments_disputes_won',
      'creditpool_payments_reversed_micro_credits',
      'creditpool_payments_dispute_won_micro_credits',
      'creditpool_early_payment_reversals',
    ];
    const earlyRef = `sim_pi_${randomUUID().replaceAll('-', '')}`;
    try {
      const before = await scrape(srv);
      expect(before.value('creditpool_metrics_collector_up', { collector: 'payments' })).toBe(1);
      const live = await account();
      const [full, partial, disputed, old] = [await bought(live), await bought(live), await bought(live), await bought(live)];
      ok(await srv.gql(RECORD, { input: usage(live) })); // spent from one of the grants: what is taken back is read from the rows below
      expect(await apply(simulator.refund(full))).toBe('reversed');
      expect(await apply(simulator.refund(partial, 100n))).toBe('reversed'); // takes the refunded share
      expect(await apply(simulator.dispute(disputed))).toBe('reversed');
      expect(await apply(simulator.disputeWon(disputed))).toBe('restored');
      // A full refund applied 8 days ago (moved back by SQL): out of the window.
      expect(await apply(simulator.refund(old))).toBe('reversed');
      await db.query(`UPDATE payments SET refunded_at = refunded_at - interval '8 days', reversed_at = reversed_at - interval '8 days' WHERE id = $1`, [old]);
      // A test-mode account's reversals are on its own clock: not counted.
      const testModePayment = await boughtOnTestMode();
      expect(await apply(simulator.dispute(testModePayment))).toBe('reversed');
      // A refund of a charge no payment was settled with yet: kept.
      expect(await apply({ kind: 'refund', eventId: `sim_evt_${randomUUID()}`, eventType: 'charge.refunded', providerRef: earlyRef, currency: 'usd', livemode: true, amountCents: 400n, refundedCents: 400n, disputeRef: null })).toBe('kept');

      // What the payments' own rows say was taken and given back.
      const { rows } = await db.query(
        `SELECT p.id, COALESCE(p.reversed_micro_credits, 0)::text AS taken, p.refund_taken_micro_credits::text AS share_taken, g.amount_micro_credits::text AS given
           FROM payments p LEFT JOIN credit_grants g ON g.id = p.dispute_won_grant_id WHERE p.id = ANY($1::uuid[])`,
        [[full, disputed, partial]],
      );
      const byId = new Map(rows.map((r) => [r.id as string, r]));
      expect(BigInt(byId.get(partial)!.share_taken)).toBeGreaterThan(0n);
      const taken = BigInt(byId.get(full)!.taken) + BigInt(byId.get(disputed)!.taken) + BigInt(byId.get(partial)!.share_taken);
      expect(taken).toBeGreaterThan(0n);
      expect(byId.get(disputed)!.given).toBe(byId.get(disputed)!.taken);

      const after = await scrape(srv);
      expect(after.value('creditpool_metrics_collector_up', { collector: 'payments' })).toBe(1);
      // Test files run one after another (vitest.config.ts fileParallelism: false), so the rows of
      // other files are the same in both scrapes: the differences are this test's.
      const moved = Object.fromEntries(names.map((n) => [n, after.value(n)! - before.value(n)!]));
      expect(moved).toEqual({
        creditpool_payments_refunded_full: 1,
        creditpool_payments_refunded_partially: 1,
        creditpool_payments_disputed: 1,
        creditpool_payments_disputes_won: 1,
        creditpool_payments_reversed_micro_credits: Number(taken),
        creditpool_payments_dispute_won_micro_credits: Number(byId.get(disputed)!.given),
        creditpool_early_payment_reversals: 1,
      });
    } finally {
      await db.query('DELETE FROM early_payment_reversals WHERE provider_ref = $1', [earlyRef]);
    }
  });

  it('failed refunds: counted (applied, and recorded only) with the credit they gave back over 7 days of live accounts; the refund gauges then count what stays refunded', async () => {
    const { simulator, apply, bought, boughtOnTestMode } = await reversalTools();
    const names = [
      'creditpool_payments_refunded_full',
      'creditpool_payments_refunded_partially',
      'creditpool_payments_disputed',
      'creditpool_payments_reversed_micro_credits',
      'creditpool_payments_refunds_failed',
      'creditpool_payments_refunds_failed_not_applied',
      'creditpool_payments_refund_failed_micro_credits',
    ];
    const before = await scrape(srv);
    expect(before.value('creditpool_metrics_collector_up', { collector: 'payments' })).toBe(1);
    const live = await account();
    const [fullFailed, restFailed, disputed, old] = [await bought(live), await bought(live), await bought(live), await bought(live)];
    // Refunded in full, then that refund failed: no longer refunded at all.
    expect(await apply(simulator.refund(fullFailed))).toBe('reversed');
    expect(await apply(simulator.refundFailed(fullFailed))).toBe('restored');
    // A quarter refunded, then the rest (in full); the second refund failed: refunded in part.
    expect(await apply(simulator.refund(restFailed, 100n))).toBe('reversed');
    expect(await apply(simulator.refund(restFailed))).toBe('reversed');
    expect(await apply(simulator.refundFailed(restFailed))).toBe('restored');
    // A refund of a disputed payment failed: recorded only.
    expect(await apply(simulator.refund(disputed, 100n))).toBe('reversed');
    expect(await apply(simulator.dispute(disputed))).toBe('reversed');
    expect(await apply(simulator.refundFailed(disputed))).toBe('recorded');
    // A failure applied 8 days ago (moved back by SQL, with its refund): out of the window.
    expect(await apply(simulator.refund(old, 200n))).toBe('reversed');
    expect(await apply(simulator.refundFailed(old))).toBe('restored');
    await db.query(`UPDATE payment_refund_failures SET received_at = received_at - interval '8 days' WHERE payment_id = $1`, [old]);
    // A test-mode account's failures are on its own clock: not counted.
    const testModePayment = await boughtOnTestMode();
    expect(await apply(simulator.refund(testModePayment))).toBe('reversed');
    expect(await apply(simulator.refundFailed(testModePayment))).toBe('restored');

    const { rows } = await db.query(
      `SELECT payment_id, applied, restored_micro_credits::text AS restored FROM payment_refund_failures WHERE payment_id = ANY($1::uuid[])`,
      [[fullFailed, restFailed, disputed]],
    );
    const restored = new Map(rows.map((r) => [r.payment_id as string, BigInt(r.restored)]));
    expect(restored.get(fullFailed)).toBe(40_000_000n);
    expect(restored.get(restFailed)).toBe(30_000_000n);
    expect(restored.get(disputed)).toBe(0n);
    const partial = await db.query('SELECT refunded_cents::text, refund_taken_micro_credits::text AS taken, reversed_at FROM payments WHERE id = $1', [restFailed]);
    expect(partial.rows[0]).toEqual({ refunded_cents: '100', taken: '10000000', reversed_at: null });
    const disputedRow = await db.query('SELECT reversed_micro_credits::text AS voided FROM payments WHERE id = $1', [disputed]);

    const after = await scrape(srv);
    expect(after.value('creditpool_metrics_collector_up', { collector: 'payments' })).toBe(1);
    // Test files run one after another (vitest.config.ts fileParallelism: false): the differences are this test's.
    const moved = Object.fromEntries(names.map((n) => [n, after.value(n)! - before.value(n)!]));
    expect(moved).toEqual({
      creditpool_payments_refunded_full: 0, // the payment refunded in full is not any more
      creditpool_payments_refunded_partially: 2, // restFailed (100 of 400 cents stay refunded), disputed (100)
      creditpool_payments_disputed: 1,
      // What stays taken: restFailed's quarter, and the disputed payment's partial share and void.
      creditpool_payments_reversed_micro_credits: 10_000_000 + 10_000_000 + Number(disputedRow.rows[0].voided),
      creditpool_payments_refunds_failed: 2,
      creditpool_payments_refunds_failed_not_applied: 1,
      creditpool_payments_refund_failed_micro_credits: 70_000_000,
    });
  });

  it('a collector whose statement runs past its timeout is left out with up=0, and the scrape still answers with the rest', async () => {
    const locker = await db.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE outbox_events IN ACCESS EXCLUSIVE MODE');
      const started = Date.now();
      const s = await scrape(srv);
      expect(s.status).toBe(200);
      expect(Date.now() - started).toBeLessThan(METRICS_COLLECT_TIMEOUT_MS + 3_000);
      expect(s.value('creditpool_metrics_collector_up', { collector: 'outbox' })).toBe(0);
      expect(s.value('creditpool_outbox_rows')).toBeUndefined();
      expect(s.value('creditpool_outbox_oldest_age_seconds')).toBeUndefined();
      expect(s.value('creditpool_metrics_collector_up', { collector: 'webhooks' })).toBe(1);
      expect(s.value('creditpool_webhook_events_undelivered')).toBeTypeOf('number');
      expect(s.value('creditpool_usage_events_total', { outcome: 'recorded' })).toBeTypeOf('number');
    } finally {
      await locker.query('ROLLBACK');
      locker.release();
    }
    // Once the table is free the next scrape has it again.
    expect((await scrape(srv)).value('creditpool_metrics_collector_up', { collector: 'outbox' })).toBe(1);
  });

  it('contains no account id, external id, idempotency key or subject of the accounts the tests used', async () => {
    expect(tenantStrings.size).toBeGreaterThan(10);
    const { text } = await scrape(srv);
    expect(text).toContain('creditpool_usage_events_total');
    for (const s of tenantStrings) expect(text, s).not.toContain(s);
  });

  it('reports the BullMQ job counts of each queue by state', async () => {
    const prefix = `metrics-test-${randomUUID().slice(0, 8)}`;
    const own = await startTestServer({ QUEUE_PREFIX: prefix, OUTBOX_RELAY: 'false' });
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
    const queue = new Queue(LEDGER_JOBS_QUEUE, { connection, prefix });
    const webhookQueue = new Queue(WEBHOOK_DELIVERY_QUEUE, { connection, prefix });
    try {
      await webhookQueue.add('deliver-webhook', {}, { jobId: 'metrics-webhook-delayed', delay: 3_600_000 });
      await queue.add('expire-due', {}, { jobId: 'metrics-delayed', delay: 3_600_000 });
      await queue.add('expire-due', {}, { jobId: 'metrics-waiting' });
      await queue.add('expire-due', {}, { jobId: 'metrics-waiting-2' });
      const s = await scrape(own);
      expect(s.value('creditpool_metrics_collector_up', { collector: 'queues' })).toBe(1);
      expect(s.value('creditpool_queue_jobs', { queue: LEDGER_JOBS_QUEUE, state: 'delayed' })).toBe(1);
      expect(s.value('creditpool_queue_jobs', { queue: LEDGER_JOBS_QUEUE, state: 'waiting' })).toBe(2);
      expect(s.value('creditpool_queue_jobs', { queue: LEDGER_JOBS_QUEUE, state: 'failed' })).toBe(0);
      expect(s.value('creditpool_queue_jobs', { queue: MAINTENANCE_QUEUE, state: 'waiting' })).toBe(0);
      // The deliveries' own queue (workers/start.ts) is counted too.
      expect(s.value('creditpool_queue_jobs', { queue: WEBHOOK_DELIVERY_QUEUE, state: 'delayed' })).toBe(1);
      expect(s.value('creditpool_queue_jobs', { queue: WEBHOOK_DELIVERY_QUEUE, state: 'waiting' })).toBe(0);
      // This server's relay is off: no publication counted.
      expect(s.value('creditpool_outbox_published_total')).toBe(0);
    } finally {
      await queue.obliterate({ force: true });
      await webhookQueue.obliterate({ force: true });
      await queue.close();
      await webhookQueue.close();
      await connection.quit();
      await own.close();
    }
  });

  it('answers 200 without the queue counts when Redis is unreachable (up=0), with PostgreSQL\'s gauges', async () => {
    const down = await startTestServer({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, OUTBOX_RELAY: 'false' });
    try {
      const s = await scrape(down);
      expect(s.status).toBe(200);
      expect(s.value('creditpool_metrics_collector_up', { collector: 'queues' })).toBe(0);
      expect(s.text).not.toMatch(/^creditpool_queue_jobs\{/m);
      expect(s.value('creditpool_metrics_collector_up', { collector: 'outbox' })).toBe(1);
      expect(s.value('creditpool_outbox_rows')).toBeTypeOf('number');
    } finally {
      await down.close();
    }
  });

  it('with METRICS_TOKEN, answers only Authorization: Bearer <token> (401 otherwise)', async () => {
    const token = 'metrics-token-0123456789abcdef';
    const guarded = await startTestServer({ METRICS_TOKEN: token, OUTBOX_RELAY: 'false' });
    try {
      for (const authorization of [undefined, 'Bearer wrong-token-0123456789abcdef', token, `Basic ${token}`, `Bearer ${token}x`]) {
        const s = await scrape(guarded, authorization);
        expect(s.status, String(authorization)).toBe(401);
        expect(s.text).not.toContain('creditpool_');
      }
      for (const authorization of [`Bearer ${token}`, `bearer  ${token}`]) {
        const s = await scrape(guarded, authorization);
        expect(s.status).toBe(200);
        expect(s.value('creditpool_usage_events_total', { outcome: 'recorded' })).toBe(0);
        expect(s.text).toMatch(/^process_resident_memory_bytes \d+/m);
        expect(s.text).toMatch(/^nodejs_eventloop_lag_seconds /m);
      }
      // Unguarded servers answer without a token.
      expect((await scrape(srv)).status).toBe(200);
    } finally {
      await guarded.close();
    }
  });

  it('with METRICS_ENABLED=false there is no /metrics', async () => {
    const off = await startTestServer({ METRICS_ENABLED: 'false', OUTBOX_RELAY: 'false' });
    try {
      const s = await scrape(off);
      expect(s.status).toBe(404);
      expect(s.text).not.toContain('creditpool_');
    } finally {
      await off.close();
    }
  });
});
