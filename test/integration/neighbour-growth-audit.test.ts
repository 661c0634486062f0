/**
 * Issue #6, "a hot shared pool that scales": one account's operations must read that account's
 * rows, whatever the other accounts' rows do, and whatever the planner statistics said when the
 * plans were made. The ledger's connections plan generically (db/pg.ts LEDGER_SESSION_OPTIONS)
 * and keep a named statement's plan until an ANALYZE of its tables; autovacuum runs that ANALYZE
 * only when a tenth of a table changed (PostgreSQL docs, "The Autovacuum Daemon",
 * autovacuum_analyze_scale_factor), so in a big table the statistics can say "no batch expires,
 * no payment is pending, no webhook is sending" long after a campaign or an outage made
 * thousands of them. A statement that one account's condition bounds, but whose other
 * condition also matches a global index (the expiring ACTIVE batches of every account, pending
 * payments, recent rows by seq or created_at), may be planned on that global index while it is
 * small, and then read every account's rows in it once it is not. The fresh-clone CI of 842282e
 * found four of those by chance (applyExpiries read 120,040 index entries for one account's roll);
 * this audit looks for them on purpose.
 *
 * A database of its own (`<test database>_neighbours`, autovacuum off for its tables, so no
 * ANALYZE runs but the test's own), in three phases, the same operations on the same two
 * accounts each time, counting the rows each reads per table (test/setup/rows-read.ts:
 * pg_stat_xact_user_tables and the index entries returned):
 * 1. **quiet**: 3,000 other accounts with a few rows each in every table that grows, none of
 *    them in a global index's subset (paid batches that never expire, payments settled long
 *    ago, closed holds, delivered webhooks, rows of two months ago); ANALYZE; the operations run
 *    once unmeasured (their generic plans made under these statistics), then measured.
 * 2. **stale**: 2,000 more accounts, 25 rows each per table, all of them in those subsets
 *    (ACTIVE batches expiring from a day ago to 60 days ahead, PENDING and refunded payments,
 *    active holds, SENDING webhooks, pending top-ups, events with debt, rows of the last day),
 *    committed by another connection, and no ANALYZE: the plans and statistics of phase 1 stay.
 * 3. **analyzed**: ANALYZE (which re-plans every statement on its next execution), measured again.
 *
 * Each operation may read in phases 2 and 3 what it read in phase 1 plus SLACK per table: the
 * other accounts' 50,000 new rows per table are never its to read.
 *
 * The measured accounts (an organization with auto top-up on, a payment method and an agent
 * budget; a second organization for batches of two accounts; a test-mode account on a monthly
 * ROLLOVER plan) are committed first. Each phase runs
 * the operations in ONE transaction of one connection of a ledger pool (test/setup/rows-read.ts
 * OneTransactionPool: the services' transactions are savepoints of it), rolled back at the
 * phase's end, so every phase starts from the same state and a count reads only this backend's
 * counters; the other connection's rows are committed, so each statement sees them (READ
 * COMMITTED). The plans stay with the connection across phases.
 *
 * Findings when this audit was written (rows read, phase 1 / phase 2), each fixed and seen
 * failing without its fix:
 * - readAccountStatement's due expiries (`expires_at <= $4`): credit_batches 8 / 453, through
 *   the sweep's partial index of every account's expiring batches (credit_batches_active_expiry).
 * - advanceTestClock: plannedSteps' window and nextDueAfter's MIN(expires_at) (which PostgreSQL
 *   rewrites as an ordered LIMIT 1 over that index): credit_batches 4 / 16,673.
 * - chargePayment's send mark (every purchase and auto top-up charge): `id = $1 AND status =
 *   'PENDING' AND created_at > …` on the partial index of every account's pending payments
 *   (payments_pending_created_at): payments 4 / 23,014.
 * - Every balance change's plan lookup (`account_id = … AND active`: the balance snapshot, the
 *   roll check) through the sweep's partial index of active plans (WHERE active), once other
 *   accounts' plans became active: plan_subscriptions 2 / 4,002 index entries per charge (the
 *   index's predicate now also says `next_period_start IS NOT NULL`, which only the sweep's
 *   range implies: migration plan_next_period_start_predicate).
 * - deliverWebhook's outcome (`UPDATE … WHERE id = $1 AND status = 'SENDING'`, every delivery)
 *   through the partial unique index of SENDING attempts, which the statistics nearly always count
 *   empty (attempts are SENDING only in flight): webhook_deliveries 1 / 50,001 rows with 50,000
 *   attempts in flight (webhooks.ts SENDING_BY_ID).
 * Not counted as findings, by choice of the quiet size: at 500 other accounts the charge paths'
 * unnest joins read balances and accounts whole (the small-deployment plans db/pg.ts
 * LEDGER_PLANNER_OPTIONS describes), and an empty refund_credits was planned as a sequential
 * scan; autovacuum's ANALYZE re-plans both once those tables grow by a tenth (balances changes at
 * every charge), so the quiet phase has 3,000 accounts and some refund credits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { addTopUpAndAgentBudget, createFundedAccount, unitCharges } from '../factories/accounts.js';
import { applyCharge, chargeAccounts, recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { readAccountStatement } from '../../src/services/account-statement.js';
import { usageHistory, usageSummary } from '../../src/services/usage-summary.js';
import { readBalance } from '../../src/services/read-balance.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { extendReservation } from '../../src/services/extend-reservation.js';
import { quoteUsage } from '../../src/services/quote-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { createPromoCode, redeemPromoCode } from '../../src/services/promo-codes.js';
import { purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { runPendingTopUps, topUpsUsedThisPeriod } from '../../src/services/auto-top-up.js';
import { expireDue } from '../../src/services/expire-due.js';
import { createPlan, readSubscription, rollBillingPeriods, subscribeToPlan } from '../../src/services/plans.js';
import { openBillingPeriod } from '../../src/services/open-billing-period.js';
import { listBudgets } from '../../src/services/spending-budgets.js';
import { reconcileAccount } from '../../src/services/read-balance.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { deliverWebhook } from '../../src/services/webhooks.js';
import { startReceiver, type Receiver } from '../webhooks/helpers.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { DepletionAlerts } from '../../src/services/depletion-alerts.js';
import { RefusalTopUps } from '../../src/services/refusal-top-ups.js';
import type { ServiceContext } from '../../src/services/context.js';
import { credits } from '../../src/ledger/credits.js';
import { OneTransactionPool, rowsReadInTransaction } from '../setup/rows-read.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { createTestDatabase, databaseNameOf, dropTestDatabase, withDatabaseName } from '../setup/test-database.js';
import { addOtherAccounts, GROWTH_NEIGHBOURS, NEIGHBOUR_TABLES, phaseReadLines, QUIET_NEIGHBOURS } from '../setup/neighbours.js';

/** Tables whose rows grow with the number of accounts and their history (all that addOtherAccounts fills). */
const GROWING_TABLES = NEIGHBOUR_TABLES;

/** Other accounts in phase 1, and rows of each per table; accounts added before phase 2, and rows of each per table (50,000 per table). */
const { accounts: QUIET_ACCOUNTS, rows: QUIET_ROWS } = QUIET_NEIGHBOURS;
const { accounts: GROWTH_ACCOUNTS, rows: GROWTH_ROWS } = GROWTH_NEIGHBOURS;

/**
 * Rows or index entries an operation may read in a later phase beyond what it read in phase 1,
 * per table. Every phase starts from the same committed state (its transaction is rolled back),
 * but the index entries of the earlier phases' rolled-back rows of the measured accounts (their
 * grants' batches, holds, events: a few dozen per phase) stay until a VACUUM, and a scan of the
 * account's range passes over them until it marks them dead (up to +56 credit_batches entries
 * seen in phase 3, after ANALYZE changed which index a statement takes); page layout moves counts
 * by a few more. Reading the other accounts' new rows reads hundreds to thousands (the walks
 * found: 453 to 23,014 rows; see the module comment).
 */
const SLACK = 100;

const DB_URL = withDatabaseName(TEST_DATABASE_URL, `${databaseNameOf(TEST_DATABASE_URL)}_neighbours`);

/** The operations measured, in the order they run in each phase (each can run again in the next). */
const OPS = [
  'recordUsage (naive)',
  'recordUsage (group commit)',
  'recordUsageBatch (3 items)',
  'recordUsageBatch (2 accounts)',
  'reserveCredits (naive)',
  'capture: recordUsage with reservationId (naive)',
  'settleReservation (naive)',
  'reserveCredits (group commit)',
  'capture: recordUsage with reservationId (group commit)',
  'settleReservation (group commit)',
  'reserveCredits then releaseReservation',
  'readBalance (Account.balance)',
  'refusal for lack of credit',
  'refundUsage',
  'grantCredits (FREE, expiring in 30 days)',
  'readAccountStatement (current period)',
  'usageSummary [CATEGORY, TIER, MODEL] (current period)',
  'usageHistory(12)',
  'advanceTestClock by an hour (test-mode account)',
  'advanceTestClock by a month (its plan rolls, its free batch expires)',
  'reserveCredits, extendReservation, releaseReservation',
  'quoteUsage',
  'grantCredits then voidGrant',
  'createPromoCode and redeemPromoCode',
  'purchaseCreditPack (payment simulator)',
  'runPendingTopUps (payment simulator)',
  'expireDue, rollBillingPeriods, openBillingPeriod (nothing due)',
  'listBudgets, topUpsUsedThisPeriod, readSubscription',
  'reconcileAccount',
  'purchaseCreditPack, then its refund (applyReversalEvent)',
  'purchaseCreditPack, then a dispute and its win (applyReversalEvent)',
  'recordUsage down to 10 credits (alerts crossed)',
  'deliverWebhook of the 0 % alert (a receiver answering 200)',
  'refusal for lack of credit (0 % notice, refusal top-up started)',
  'readBalance before the first change of a new period',
  'refusal for lack of credit before the first change of a new period',
  'recordUsage: the first change of a new period',
] as const;
type Op = (typeof OPS)[number];
const PHASES = ['quiet', 'stale', 'analyzed'] as const;
type Phase = (typeof PHASES)[number];

/** Rows read per phase, operation and table key (rows-read.ts rowsReadInTransaction). */
const measured = new Map<Phase, Map<Op, Map<string, number>>>();
/** What the setup saw, checked by the first test. */
const seen: Record<string, unknown> = {};

let s: TestServices;
let prices: TestServices;
/** Services on a pool of their own for the committed setup. */
let setup: TestServices;
let admin: pg.Client;
/** Where the webhook deliveries go. */
let receiver: Receiver;

beforeAll(async () => {
  await createTestDatabase(DB_URL);
  admin = new pg.Client({ connectionString: DB_URL });
  await admin.connect();
  // Only this test's ANALYZEs run on these tables.
  for (const t of [...GROWING_TABLES, 'usage_rollups_hourly', 'usage_rollups_monthly']) await admin.query(`ALTER TABLE ${t} SET (autovacuum_enabled = false)`);
  await admin.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), 'neighbours', 100000000, 100)`);
  await addOtherAccounts(admin, QUIET_ACCOUNTS, QUIET_ROWS, false);

  receiver = await startReceiver();
  s = createTestServices(1, DB_URL);
  prices = createTestServices(1, DB_URL);
  setup = createTestServices(2, DB_URL);
  // The measured accounts and their settings, committed: each phase's transaction starts from them.
  const setupCtx: ServiceContext = { ...setup, pricing: prices.pricing };
  const accountId = await createFundedAccount(setupCtx, { paid: 100_000, free: 100, freeExpiresAt: new Date(Date.now() + 20 * 86_400_000) });
  const otherAccountId = await createFundedAccount(setupCtx, { paid: 100_000 });
  const testAccountId = await createFundedAccount(setupCtx, { paid: 1_000, free: 100, freeExpiresAt: new Date(Date.now() + 20 * 86_400_000), testClockStart: new Date() });
  const packId = (await admin.query(`SELECT id FROM credit_packs WHERE name = 'neighbours'`)).rows[0].id as string;
  // A top-up threshold above the account's credit: every balance change runs the top-up check.
  await addTopUpAndAgentBudget(setupCtx, admin, { accountId, packId, topUpThresholdMicroCredits: credits(500_000), agentBudgetMicroCredits: credits(1_000_000) });
  // The test-mode account on a monthly ROLLOVER plan: each month's advance rolls it.
  const plan = await createPlan(setupCtx, { name: 'neighbours', monthlyMicroCredits: credits(100), rollover: 'ROLLOVER', rolloverCapMicroCredits: credits(150), priceUsd: '1' });
  await subscribeToPlan(setupCtx, testAccountId, plan.id);

  const client = await s.pool.connect();
  try {
    expect((await client.query('SHOW plan_cache_mode')).rows[0].plan_cache_mode).toBe('force_generic_plan');
    const pool = new OneTransactionPool(client) as unknown as pg.Pool;
    // Made afresh for each phase (phase() below): their memory (carried balances, notices sent,
    // the simulator's idempotency keys) must not outlive the phase's rolled-back transaction.
    let ctx!: ServiceContext;
    let grouped!: ServiceContext;
    const newContexts = () => {
      ctx = { ...s, pool, pricing: prices.pricing, payments: new PaymentSimulator(), depletionAlerts: new DepletionAlerts(), refusalTopUps: new RefusalTopUps() };
      grouped = { ...ctx, groupCommit: new GroupCommitter(pool, s.clock, chargeAccounts, applyCharge, { maxTransactions: 1 }) };
    };

    let k = 0;
    const charge = unitCharges(accountId);
    let hold = '';
    let lastEventId = '';
    const reserve = async (c: ServiceContext) =>
      (await reserveCredits(c, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: `hold-${k++}`, agentId: 'agent-1' })).reservationId;
    const testClock = async () => (await client.query('SELECT test_clock_at FROM accounts WHERE id = $1', [testAccountId])).rows[0].test_clock_at as Date;
    const run: Record<Op, () => Promise<unknown>> = {
      'recordUsage (naive)': async () => {
        lastEventId = (await recordUsage(ctx, charge(1))).eventId;
      },
      'recordUsage (group commit)': () => recordUsage(grouped, charge(1)),
      'recordUsageBatch (3 items)': () => recordUsageBatch(ctx, [charge(1), charge(1), charge(1)], { maxItems: 10 }),
      'recordUsageBatch (2 accounts)': () => recordUsageBatch(ctx, [charge(1), { ...charge(1), accountId: otherAccountId }, charge(1)], { maxItems: 10 }),
      'reserveCredits (naive)': async () => {
        hold = await reserve(ctx);
      },
      'capture: recordUsage with reservationId (naive)': () => recordUsage(ctx, charge(1, { reservationId: hold })),
      'settleReservation (naive)': () => settleReservation(ctx, hold, []),
      'reserveCredits (group commit)': async () => {
        hold = await reserve(grouped);
      },
      'capture: recordUsage with reservationId (group commit)': () => recordUsage(grouped, charge(1, { reservationId: hold })),
      'settleReservation (group commit)': () => settleReservation(grouped, hold, []),
      'reserveCredits then releaseReservation': async () => releaseReservation(ctx, await reserve(ctx)),
      'readBalance (Account.balance)': () => readBalance(pool, accountId, s.clock()),
      'refusal for lack of credit': () =>
        recordUsage(ctx, charge(500_000)).then(
          () => (seen.refusal = 'charged'),
          (e: { code?: string }) => (seen.refusal = e.code),
        ),
      refundUsage: () => refundUsage(ctx, lastEventId, 'audit'),
      'grantCredits (FREE, expiring in 30 days)': () =>
        grantCredits(ctx, {
          accountId,
          amountMicroCredits: credits(1),
          type: 'FREE',
          source: 'PROMO_CODE',
          expiresAt: new Date(Date.now() + 30 * 86_400_000),
          reference: null,
          idempotencyKey: `grant-${k++}`,
        }),
      'readAccountStatement (current period)': () => readAccountStatement(pool, accountId, s.clock(), null),
      'usageSummary [CATEGORY, TIER, MODEL] (current period)': async () => {
        const now = s.clock();
        return usageSummary(pool, accountId, { from: new Date(now.getTime() - 20 * 86_400_000), to: now }, ['CATEGORY', 'TIER', 'MODEL']);
      },
      'usageHistory(12)': () => usageHistory(pool, accountId, s.clock(), 12),
      'advanceTestClock by an hour (test-mode account)': async () => advanceTestClock(ctx, testAccountId, new Date((await testClock()).getTime() + 3_600_000)),
      'advanceTestClock by a month (its plan rolls, its free batch expires)': async () => {
        const { steps } = await advanceTestClock(ctx, testAccountId, new Date((await testClock()).getTime() + 31 * 86_400_000));
        seen.monthSteps = [...((seen.monthSteps as number[] | undefined) ?? []), steps];
      },
      'reserveCredits, extendReservation, releaseReservation': async () => {
        const id = await reserve(ctx);
        await extendReservation(ctx, id, 1200);
        await releaseReservation(ctx, id);
      },
      quoteUsage: () => quoteUsage(ctx, charge(1)),
      'grantCredits then voidGrant': async () => {
        const { grantId } = await grantCredits(ctx, {
          accountId,
          amountMicroCredits: credits(1),
          type: 'PAID',
          source: 'ADJUSTMENT',
          expiresAt: null,
          reference: null,
          idempotencyKey: `grant-${k++}`,
        });
        await voidGrant(ctx, grantId, 'audit');
      },
      'createPromoCode and redeemPromoCode': async () => {
        const code = `NEIGHBOURS${k++}`;
        await createPromoCode(ctx, { code, creditsMicroCredits: credits(1), expiresAfterDays: 30, maxRedemptions: null, validUntil: null });
        await redeemPromoCode(ctx, accountId, code);
      },
      'purchaseCreditPack (payment simulator)': () => purchaseCreditPack(ctx, { accountId, packId, idempotencyKey: `purchase-${k++}` }),
      'runPendingTopUps (payment simulator)': async () => {
        const ran = await runPendingTopUps(ctx, accountId);
        seen.topUpsRun = [...((seen.topUpsRun as number[] | undefined) ?? []), ran.length];
      },
      'expireDue, rollBillingPeriods, openBillingPeriod (nothing due)': async () => {
        await expireDue(ctx, accountId);
        await rollBillingPeriods(ctx, accountId);
        await openBillingPeriod(ctx, accountId);
      },
      'listBudgets, topUpsUsedThisPeriod, readSubscription': async () => {
        await listBudgets(pool, accountId, s.clock());
        await topUpsUsedThisPeriod(pool, accountId, s.clock());
        await readSubscription(pool, testAccountId, s.clock());
      },
      reconcileAccount: async () => {
        const r = await reconcileAccount(pool, accountId);
        seen.reconciled = r;
      },
      'purchaseCreditPack, then its refund (applyReversalEvent)': async () => {
        const { paymentId } = await purchaseCreditPack(ctx, { accountId, packId, idempotencyKey: `purchase-${k++}` });
        const { result } = await applyReversalEvent(ctx, (ctx.payments as PaymentSimulator).refund(paymentId, 5000n), (testMode) => !testMode);
        seen.refund = result;
      },
      'purchaseCreditPack, then a dispute and its win (applyReversalEvent)': async () => {
        const { paymentId } = await purchaseCreditPack(ctx, { accountId, packId, idempotencyKey: `purchase-${k++}` });
        const simulator = ctx.payments as PaymentSimulator;
        const lost = await applyReversalEvent(ctx, simulator.dispute(paymentId), (testMode) => !testMode);
        const won = await applyReversalEvent(ctx, simulator.disputeWon(paymentId), (testMode) => !testMode);
        seen.dispute = [lost.result, won.result];
      },
      'recordUsage down to 10 credits (alerts crossed)': async () => {
        const { availableMicroCredits } = await readBalance(pool, accountId, s.clock());
        await recordUsage(ctx, charge(Number(availableMicroCredits / 1_000_000n) - 10));
      },
      'deliverWebhook of the 0 % alert (a receiver answering 200)': async () => {
        const { rows } = await client.query(`SELECT id FROM credit_alerts WHERE account_id = $1 AND threshold = 0 ORDER BY seq DESC LIMIT 1`, [accountId]);
        const env = { WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: 'neighbours-secret', WEBHOOK_TIMEOUT_MS: 5000 };
        const out = await deliverWebhook({ pool, env }, { eventType: 'credit_alert.raised', eventId: rows[0].id as string, accountId }, 1);
        seen.webhook = [...((seen.webhook as string[] | undefined) ?? []), out.status];
      },
      'refusal for lack of credit (0 % notice, refusal top-up started)': async () => {
        // The PENDING top-up gone (its job failed): a refusal may start one.
        await client.query(`UPDATE auto_top_ups SET status = 'FAILED' WHERE account_id = $1 AND status = 'PENDING'`, [accountId]);
        await recordUsage(ctx, charge(40)).catch((e: { code?: string }) => (seen.smallRefusal = e.code));
      },
      'readBalance before the first change of a new period': async () => {
        // A new billing period, begun just after the account's last change.
        await client.query(
          `UPDATE accounts SET billing_anchor_at = (SELECT updated_at + interval '1 millisecond' FROM balances WHERE account_id = $1) - interval '1 month' WHERE id = $1`,
          [accountId],
        );
        seen.newPeriodBalance = await readBalance(pool, accountId, s.clock());
      },
      'refusal for lack of credit before the first change of a new period': () =>
        recordUsage(ctx, charge(500_000)).catch((e: { code?: string }) => (seen.newPeriodRefusal = e.code)),
      'recordUsage: the first change of a new period': () => recordUsage(ctx, charge(1)),
    };
    const measure = async (phase: Phase) => {
      const byOp = new Map<Op, Map<string, number>>();
      for (const op of OPS) {
        const before = await rowsReadInTransaction(client, GROWING_TABLES);
        await run[op]();
        const after = await rowsReadInTransaction(client, GROWING_TABLES);
        byOp.set(op, new Map([...after].map(([t, v]) => [t, v - (before.get(t) ?? 0)])));
      }
      measured.set(phase, byOp);
    };

    // Each phase runs in one transaction of the measured connection, rolled back at its end, so
    // every phase starts from the same committed state and does the same work (a count of one
    // phase's index entries would otherwise include the earlier phases' row versions of the
    // measured accounts, which no VACUUM can remove while one transaction lasts).
    const phase = async (work: () => Promise<void>) => {
      newContexts();
      await client.query('BEGIN');
      try {
        await work();
      } finally {
        await client.query('ROLLBACK');
      }
    };

    // Phase 1: statistics of the quiet database; the operations' plans made under them.
    await admin.query(`ANALYZE ${GROWING_TABLES.join(', ')}`);
    await phase(async () => {
      for (const op of OPS) await run[op]();
    });
    await phase(() => measure('quiet'));

    // Phase 2: the other accounts' rows grow; the plans and statistics stay.
    await addOtherAccounts(admin, GROWTH_ACCOUNTS, GROWTH_ROWS, true);
    const { rows: stale } = await admin.query(
      `SELECT relname, n_mod_since_analyze::int AS changed FROM pg_stat_user_tables WHERE relname IN ('credit_batches', 'payments', 'webhook_deliveries') ORDER BY relname`,
    );
    seen.changedSinceAnalyze = stale;
    await phase(() => measure('stale'));

    // Phase 3: statistics of the grown database; every statement re-planned.
    await admin.query(`ANALYZE ${GROWING_TABLES.join(', ')}`);
    await phase(() => measure('analyzed'));
  } finally {
    client.release();
  }
}, 600_000);

afterAll(async () => {
  await s?.close();
  await prices?.close();
  await setup?.close();
  await admin?.end();
  await receiver?.close();
  await dropTestDatabase(DB_URL);
  if (process.env.NEIGHBOUR_AUDIT_PRINT) {
    for (const line of phaseReadLines(OPS, PHASES.map((p) => (op: string) => measured.get(p)?.get(op as Op)))) console.log(line);
  }
});

describe("rows read per operation: the other accounts' new rows are not read, under stale or fresh statistics", () => {
  it('the scenario ran as meant in the last phase (statistics stale in phase 2, refusals, a top-up, a plan roll, reversals, the ledger reconciled)', () => {
    expect(seen.refusal).toBe('INSUFFICIENT_CREDITS');
    expect(seen.smallRefusal).toBe('INSUFFICIENT_CREDITS');
    expect(seen.newPeriodRefusal).toBe('INSUFFICIENT_CREDITS');
    // One pending top-up run in each of the 4 phases (warm-up and three measured).
    expect(seen.topUpsRun).toEqual([1, 1, 1, 1]);
    // A month's advance: at least the free batch's expiry, the period end and the target instant.
    for (const steps of seen.monthSteps as number[]) expect(steps).toBeGreaterThanOrEqual(3);
    expect(seen.refund).toBe('reversed');
    expect(seen.webhook).toEqual(['DELIVERED', 'DELIVERED', 'DELIVERED', 'DELIVERED']);
    expect(seen.dispute).toEqual(['reversed', 'restored']);
    expect(seen.reconciled).toMatchObject({ consistent: true });
    // Nothing granted since the new period began: all its credit is the opening, available.
    const b = seen.newPeriodBalance as { periodMicroCredits: bigint; availableMicroCredits: bigint };
    expect(b.periodMicroCredits).toBe(b.availableMicroCredits);
    const changed = seen.changedSinceAnalyze as { relname: string; changed: number }[];
    expect(changed.map((r) => r.relname)).toEqual(['credit_batches', 'payments', 'webhook_deliveries']);
    for (const r of changed) expect(r.changed).toBeGreaterThanOrEqual(GROWTH_ACCOUNTS * GROWTH_ROWS);
  });

  for (const op of OPS) {
    for (const phase of ['stale', 'analyzed'] as const) {
      it(`${op}: ${phase} statistics`, () => {
        const quiet = measured.get('quiet')!.get(op)!;
        const later = measured.get(phase)!.get(op)!;
        const grew = [...later]
          .filter(([key]) => !key.endsWith('(blocks)'))
          .map(([key, n]) => ({ key, quiet: quiet.get(key) ?? 0, [phase]: n }))
          .filter((d) => (d[phase] as number) > d.quiet + SLACK);
        expect(grew).toEqual([]);
      });
    }
  }
});
