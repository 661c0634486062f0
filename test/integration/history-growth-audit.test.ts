/**
 * Issue #6, "fast history": an organization that has billed for a year must not pay more per
 * charge than a new one. Every path that changes a balance (recordUsage alone and through group
 * commit, recordUsageBatch, reserveCredits, a capture with reservationId, settleReservation, a
 * refusal for lack of credit with its depletion notice and auto top-up check) and Balance
 * (readBalance) are run on two accounts set up alike, one new and one with a year of history
 * behind its current billing period, and the rows each operation reads per table are compared
 * (and once more in a new billing period, before and at its first change, and at a plan's roll):
 * what PostgreSQL itself counted (pg_stat_xact_user_tables: seq_tup_read + idx_tup_fetch; and the
 * index entries read, pg_stat_get_xact_tuples_returned over the table's indexes, for index-only
 * scans; and the heap and index pages touched, pg_stat_get_xact_blocks_fetched), everything that runs inside PostgreSQL included (balances_changed and balance_figures,
 * the usage rollup triggers, the deferred balance invariant, fired before each count).
 *
 * The history (≈ 100,000 rows, all of the one account, dated in its 12 past billing periods):
 * 5,000 auto top-ups paid (their grants, used-up or expired batches, SUCCEEDED payments, GRANT
 * entries) and 1,000 that failed, 20,000 usage events with their CONSUME entries and drawdowns, 2,000 refund
 * credits, 20,000 closed holds (settled, released, expired), 1,200 credit alerts (thresholds
 * 1..100 in each past period), 5,000 webhook attempts and 2,500 audit events. The accounts have
 * auto top-up on (with a threshold above their credit, so every change runs the top-up check),
 * a payment method and an agent budget, and cross alert thresholds in the current period.
 *
 * Everything runs in ONE transaction of one connection of a ledger pool (generic plans, made after
 * an ANALYZE that counts the history), rolled back at the end, so no other test sees the history:
 * the services get a one-connection pool whose transactions are savepoints of it
 * ({@link OneTransactionPool}); a count reads only this backend's counters.
 *
 * credit_grants was left out at first: balance_figures' grants term read every grant of the
 * account (5,001 rows here against 1); since migration grants_period_indexes it reads the period's
 * grants and voids, and the table is checked like the others.
 *
 * Findings when this audit was written (rows read, new account / year of history):
 * - Balance before the first change of a new billing period (and so every refusal for lack of
 *   credit then: the depletion notice reads Balance) summed the account's whole ledger
 *   (balance_figures' fallback ledger_total_at, the balance row's opening being for the period
 *   before; a window of up to one sweep-due interval after the boundary while the workers keep
 *   up): ledger_entries 15 / 25,015 rows, readBalance 10.7 ms against 3.3 ms after. Now the
 *   opening comes from the account's total less the entries dated from the start on
 *   (migration balance_opening_from_total): 1 / 2 rows, the same figures.
 * - A capped ROLLOVER plan's roll (the first change of each period, or the roll job) read every
 *   batch of the account (trimRollover matched used-up batches on the account alone: 18 / 5,018
 *   rows) and, under the generic plan, the whole of usage_events and drawdowns (20,019 / 20,031
 *   and 20,015 / 20,027: hash joins for the usage drawn since the period start); 10.9 ms for
 *   that statement. Now the batches by id and the usage by entry (plans.ts DRAWN_SINCE_CTE,
 *   trimRollover): 20 / 20, 3 / 3, 1 / 1, 0.13 ms.
 * - Otherwise every table read the same on both accounts, to within
 *   the few index entries that page layout moves (see SLACK and indexEntriesAllowed). E.g. a naive charge: auto_top_ups
 *   2/2, credit_alerts 1/1, credit_batches 5/5, usage_events 2/2, refund_credits 0/1 (the one
 *   refund dated in the current period), reservations, payments, ledger_entries,
 *   webhook_deliveries, audit_events 0/0; a capture and a settle: reservations 6/6 and 4/4;
 *   Balance: credit_batches 1/1, refund_credits 0/1. The period-bounded reads (top-ups of the
 *   period, the period's alerts by their unique key, refund credits from the period start, holds
 *   through the partial index of ACTIVE ones) hold with thousands of rows behind them.
 *   balances_changed took 0.79 vs 1.38 ms (auto_explain, ANALYZE), the difference all in its
 *   credit_grants scan (0.52 ms, 5,000 grants), since bounded (migration grants_period_indexes).
 *
 * That the checks can fail was seen with regressions made on purpose: the top-up count without its
 * (account_id, period_start) index (6,000 auto_top_ups rows per change), the holds without their
 * account indexes, the depletion notice's alert lookup not bounded by the period (1,200
 * credit_alerts rows per refusal) and Balance counting the account's payments of the period (5,000
 * payments rows).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { addTopUpAndAgentBudget, createFundedAccount, unitCharges } from '../factories/accounts.js';
import { applyCharge, chargeAccounts, recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { readBalance } from '../../src/services/read-balance.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { DepletionAlerts } from '../../src/services/depletion-alerts.js';
import { RefusalTopUps } from '../../src/services/refusal-top-ups.js';
import type { ServiceContext } from '../../src/services/context.js';
import { credits } from '../../src/ledger/credits.js';
import { OneTransactionPool, nonHotUpdatesInTransaction, rowsReadInTransaction } from '../setup/rows-read.js';
import { NEIGHBOUR_TABLES } from '../setup/neighbours.js';

/**
 * Tables whose rows grow with an account's history: those other accounts' rows fill in the
 * neighbour audits (test/setup/neighbours.ts; the tables of one row per account left out), the
 * outbox and the usage rollups.
 */
const ONE_ROW_PER_ACCOUNT: readonly string[] = ['accounts', 'balances', 'plan_subscriptions', 'auto_top_up_settings'];
const HISTORY_TABLES = [
  ...NEIGHBOUR_TABLES.filter((t) => !ONE_ROW_PER_ACCOUNT.includes(t)),
  'outbox_events',
  'usage_rollups_hourly',
  'usage_rollups_monthly',
] as const;

/**
 * Inserts a year of history for `accountId` (see the module comment), dated in the 12 billing
 * periods before its current one (its anchor is set 12 months and 10 days back).
 */
async function addHistory(c: pg.PoolClient, accountId: string, packId: string): Promise<void> {
  await c.query(`CREATE TEMP TABLE h_span ON COMMIT DROP AS SELECT a.billing_anchor_at AS a0, a.billing_anchor_at + interval '12 months' AS a1 FROM accounts a WHERE a.id = $1`, [
    accountId,
  ]);
  // 5,000 auto top-ups paid (grant, batch used up or expired, payment, top-up, GRANT entry), 1,000 failed.
  await c.query(
    `CREATE TEMP TABLE h_top ON COMMIT DROP AS
     SELECT g, gen_random_uuid() AS grant_id, gen_random_uuid() AS batch_id, gen_random_uuid() AS payment_id,
            a0 + (a1 - a0) * (g - 1) / 5000.0 AS t FROM h_span, generate_series(1, 5000) g`,
  );
  await c.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
     SELECT grant_id, $1, 'AUTO_TOP_UP', 'PAID', 10000000, 'hist-g-' || g, 'x', t FROM h_top`,
    [accountId],
  );
  await c.query(
    `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status, updated_at)
     SELECT batch_id, $1, grant_id, 'PAID', 'AUTO_TOP_UP', 10000000, 0, t, CASE WHEN g % 5 = 0 THEN t + interval '30 days' END,
            (CASE WHEN g % 5 = 0 THEN 'EXPIRED' ELSE 'EXHAUSTED' END)::"BatchStatus", t FROM h_top`,
    [accountId],
  );
  await c.query(
    `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, payment_method_ref, status, provider_ref, grant_id, created_at, updated_at, last_sent_at)
     SELECT payment_id, $1, 'AUTO_TOP_UP', 'hist-p-' || g, $2, 10, 'pm_1', 'SUCCEEDED', 'pi_hist_' || g, grant_id, t, t, t FROM h_top`,
    [accountId, packId],
  );
  await c.query(
    `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, payment_id, created_at, finished_at)
     SELECT gen_random_uuid(), $1, p.period_start, 'SUCCEEDED', 1, payment_id, t, t
       FROM h_top CROSS JOIN LATERAL billing_period((SELECT a0 FROM h_span), t) p`,
    [accountId],
  );
  await c.query(
    `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, error, created_at, finished_at)
     SELECT gen_random_uuid(), $1, p.period_start, 'FAILED', 3, 'card_declined', t, t
       FROM h_top CROSS JOIN LATERAL billing_period((SELECT a0 FROM h_span), t) p WHERE g % 5 = 0`,
    [accountId],
  );
  await c.query(
    `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, created_at)
     SELECT gen_random_uuid(), $1, 'GRANT', 10000000, 10000000, batch_id, t FROM h_top`,
    [accountId],
  );
  // 20,000 usage events of 2.5 credits (all the top-ups' credit), with their CONSUME entries.
  await c.query(
    `CREATE TEMP TABLE h_use ON COMMIT DROP AS
     SELECT g, gen_random_uuid() AS id, a0 + (a1 - a0) * (g - 1) / 20000.0 AS t FROM h_span, generate_series(1, 20000) g`,
  );
  await c.query(
    `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, agent_id, units, cost_micro_credits, lines, price_book_version)
     SELECT id, $1, 'hist-u-' || g, 'x', t, t, 'units', 'agent-1', 2.5, 2500000, '[]', (SELECT max(version) FROM price_books) FROM h_use`,
    [accountId],
  );
  await c.query(
    `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, usage_event_id, created_at)
     SELECT gen_random_uuid(), $1, 'CONSUME', -2500000, 0, id, t FROM h_use`,
    [accountId],
  );
  // Each drew from the top-up of its time (4 events a top-up).
  await c.query(
    `INSERT INTO drawdowns (id, usage_event_id, batch_id, position, amount_micro_credits)
     SELECT gen_random_uuid(), u.id, p.batch_id, 0, 2500000 FROM h_use u JOIN h_top p ON p.g = (u.g + 3) / 4`,
  );
  // 2,000 refunded in part an hour later (refund_credits).
  await c.query(
    `INSERT INTO refund_credits (usage_event_id, left_at, account_id, refunded_at, amount_micro_credits)
     SELECT id, t, $1, t + interval '1 hour', 1000000 FROM h_use WHERE g % 10 = 0`,
    [accountId],
  );
  // 20,000 closed holds.
  await c.query(
    `INSERT INTO reservations (id, account_id, amount_micro_credits, consumed_micro_credits, status, expires_at, created_at, closed_at, idempotency_key, request_hash, agent_id)
     SELECT gen_random_uuid(), $1, 3000000, 2500000, (ARRAY['SETTLED', 'RELEASED', 'EXPIRED'])[1 + g % 3]::"ReservationStatus",
            t + interval '1 hour', t, t + interval '10 minutes', 'hist-r-' || g, 'x', 'agent-1' FROM h_use`,
    [accountId],
  );
  // Credit alerts: thresholds 1..100 in each past period (1,200).
  await c.query(
    `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
     SELECT gen_random_uuid(), $1, th, th, 0, a0 + make_interval(months => k), a0 + make_interval(months => k) + interval '20 days'
       FROM h_span, generate_series(0, 11) k, generate_series(1, 100) th`,
    [accountId],
  );
  // Webhook attempts and audit events.
  await c.query(
    `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, created_at)
     SELECT gen_random_uuid(), 'credit_alert.raised', gen_random_uuid()::text, $1, 'https://example.com/…', 1, 'DELIVERED', 200, t FROM h_top`,
    [accountId],
  );
  await c.query(
    `INSERT INTO audit_events (id, created_at, actor_kind, actor_name, action, account_id, subject_type, subject_id)
     SELECT gen_random_uuid(), t, 'system', 'hist', 'auto_top_up.updated', $1, 'auto_top_up', $2 FROM h_top WHERE g % 2 = 0`,
    [accountId, accountId],
  );
  await c.query('DROP TABLE h_span, h_top, h_use');
}

/**
 * Rows or index entries the account with history may read beyond the new one's, per table: where
 * its rows sit on the pages (which updates of this transaction were HOT, so how many row versions
 * an index points to) moves the counts by a few either way (reservations' index entries: 6 vs 9
 * with 20,000 closed holds, 9 vs 6 with 80,000); a read that grows with history reads thousands.
 */
const SLACK = 10;

/**
 * Index entries the account with history may read from a table in one operation: the new
 * account's plus SLACK, times one more for each update of the table its run made so far that was
 * not HOT beyond the new account's run. Everything runs in one transaction, so no row version it
 * made is pruned: an update that is not HOT (no room left on the row's page) leaves the old
 * version's entries in every index, and each later scan over the row returns them too. The
 * account with history has its live rows among pages its history filled, so it is the one whose
 * updates may find no room; how many depends on where the rows landed, which the concurrent test
 * files move (a CI run saw credit_batches 6 new / 18 old: 6 entries per version, 1 version
 * against 3). A read that grows with the history reads thousands (5,000 batches, 1,200 alerts).
 * @param fresh entries the new account's operation read; `extraVersions` the updates of the table
 *   not HOT in the account with history's run up to this operation, less the new account's (≥ 0).
 */
function indexEntriesAllowed(fresh: number, extraVersions: number): number {
  return (fresh + SLACK) * (1 + Math.max(0, extraVersions));
}

/**
 * Most rows or index entries an operation may read from one of HISTORY_TABLES, on either account
 * (a few dozen at most today): a read the history does not change can still grow with the
 * deployment's rows, as a sequential scan (the top-up count without its (account_id, period_start)
 * index read the 6,000 top-ups of the table for either account). For index entries, times one
 * more for each update of the table not HOT in that account's run so far (see
 * indexEntriesAllowed: each leaves a version a later scan returns too).
 */
const MOST_READ = 100;

/**
 * Blocks (heap and index pages, read or written) the account with history may touch beyond the
 * new one's, per table: they move with the pages the writes land on (up to 14 either way seen);
 * reading one account's 20,000 holds or 5,000 payments through an index touches 40 to 100 pages.
 * The rows counted above do not see index entries an index scan checks and skips (a condition on
 * a later column of the index): the pages do, when there are enough of them.
 */
const BLOCKS_SLACK = 25;

/** The operations measured, in the order they run on each account. */
const OPS = [
  'recordUsage (naive)',
  'recordUsage (group commit)',
  'recordUsageBatch (3 items)',
  'reserveCredits (naive)',
  'capture: recordUsage with reservationId (naive)',
  'settleReservation (naive)',
  'reserveCredits (group commit)',
  'capture: recordUsage with reservationId (group commit)',
  'settleReservation (group commit)',
  'readBalance (Account.balance)',
  'refusal for lack of credit (no notice due)',
  'recordUsage down to 10 credits (alerts crossed)',
  'refusal for lack of credit (0 % notice and auto top-up started)',
] as const;

/**
 * Run after those, once a new billing period has begun (the account's anchor moved so that the
 * period starts just after its last change): the balance row's opening total is still for the
 * period before, until the first change of this one.
 */
const NEW_PERIOD_OPS = [
  'readBalance before the first change of a new period',
  'refusal for lack of credit before the first change of a new period',
  'recordUsage: the first change of a new period',
] as const;
/**
 * Then, with a capped ROLLOVER plan subscribed whose roll for the current period is due: the
 * charge that runs it (plans.ts rollDuePeriodsFirst; the roll job runs the same roll), once per
 * period.
 */
const ROLL_OP = 'recordUsage running a capped ROLLOVER plan\'s due roll' as const;
type Op = (typeof OPS)[number] | (typeof NEW_PERIOD_OPS)[number] | typeof ROLL_OP;

let s: TestServices;
/** The price book and settings, read through a pool of their own (the measured one's only connection is in use). */
let prices: TestServices;
/** Rows read per operation, per table: [new account, account with history]. */
const measured = new Map<Op, [Map<string, number>, Map<string, number>]>();
/**
 * Updates not HOT per table (rows-read.ts nonHotUpdatesInTransaction) in each account's run from
 * its first operation to the end of each operation: [new account, account with history].
 */
const nonHotSoFar = new Map<Op, [Map<string, number>, Map<string, number>]>();
/** Outcomes the scenario counts on, per account. */
const seen: Record<string, unknown>[] = [];

beforeAll(async () => {
  s = createTestServices(1);
  prices = createTestServices(1);
  const client = await s.pool.connect();
  try {
    expect((await client.query('SHOW plan_cache_mode')).rows[0].plan_cache_mode).toBe('force_generic_plan');
    await client.query('BEGIN');
    const pool = new OneTransactionPool(client) as unknown as pg.Pool;
    const ctx: ServiceContext = { ...s, pool, pricing: prices.pricing, depletionAlerts: new DepletionAlerts(), refusalTopUps: new RefusalTopUps() };
    const grouped: ServiceContext = { ...ctx, groupCommit: new GroupCommitter(pool, s.clock, chargeAccounts, applyCharge, { maxTransactions: 1 }) };
    const accounts: string[] = [];
    for (const history of [false, true]) {
      const accountId = await createFundedAccount(ctx, { paid: 1000 });
      await client.query(
        `UPDATE accounts SET billing_anchor_at = date_trunc('day', now() - interval '12 months' - interval '10 days'), created_at = date_trunc('day', now() - interval '12 months' - interval '10 days') WHERE id = $1`,
        [accountId],
      );
      const packId = (
        await client.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES (gen_random_uuid(), 'history-' || gen_random_uuid(), 100000000, 100) RETURNING id`)
      ).rows[0].id as string;
      // A top-up threshold above the account's credit: every balance change runs the top-up check (count of the period's top-ups).
      await addTopUpAndAgentBudget(ctx, client, { accountId, packId, topUpThresholdMicroCredits: credits(5000), agentBudgetMicroCredits: credits(100_000) });
      if (history) await addHistory(client, accountId, packId);
      accounts.push(accountId);
    }
    await client.query(`ANALYZE ${HISTORY_TABLES.join(', ')}`);
    // The statements prepared during the setup are planned again, with these statistics.
    await client.query('DISCARD PLANS');

    for (const [n, accountId] of accounts.entries()) {
      let k = 0;
      const charge = unitCharges(accountId);
      const outcome: Record<string, unknown> = {};
      seen.push(outcome);
      // The period's opening total kept on the balance row, the first alert (25 %) and a PENDING top-up.
      await recordUsage(ctx, charge(800));
      await recordUsage(ctx, charge(1));
      let hold = '';
      const run: Record<Op, () => Promise<unknown>> = {
        'recordUsage (naive)': () => recordUsage(ctx, charge(1)),
        'recordUsage (group commit)': () => recordUsage(grouped, charge(1)),
        'recordUsageBatch (3 items)': () => recordUsageBatch(ctx, [charge(1), charge(1), charge(1)], { maxItems: 10 }),
        'reserveCredits (naive)': async () => {
          hold = (await reserveCredits(ctx, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: `hold-${k++}`, agentId: 'agent-1' })).reservationId;
        },
        'capture: recordUsage with reservationId (naive)': () => recordUsage(ctx, charge(1, { reservationId: hold })),
        'settleReservation (naive)': () => settleReservation(ctx, hold, []),
        'reserveCredits (group commit)': async () => {
          hold = (await reserveCredits(grouped, { accountId, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: `hold-${k++}`, agentId: 'agent-1' })).reservationId;
        },
        'capture: recordUsage with reservationId (group commit)': () => recordUsage(grouped, charge(1, { reservationId: hold })),
        'settleReservation (group commit)': () => settleReservation(grouped, hold, []),
        'readBalance (Account.balance)': async () => {
          outcome.balance = await readBalance(pool, accountId, s.clock());
        },
        'refusal for lack of credit (no notice due)': () => recordUsage(ctx, charge(50_000)).catch((e: { code?: string }) => (outcome.bigRefusal = e.code)),
        'recordUsage down to 10 credits (alerts crossed)': async () => {
          const { availableMicroCredits } = await readBalance(pool, accountId, s.clock());
          await recordUsage(ctx, charge(Number(availableMicroCredits / 1_000_000n) - 10));
        },
        'readBalance before the first change of a new period': async () => {
          outcome.newPeriodBalance = await readBalance(pool, accountId, s.clock());
        },
        'refusal for lack of credit before the first change of a new period': () =>
          recordUsage(ctx, charge(50_000)).catch((e: { code?: string }) => (outcome.newPeriodRefusal = e.code)),
        'recordUsage: the first change of a new period': () => recordUsage(ctx, charge(1)),
        [ROLL_OP]: () => recordUsage(ctx, charge(1)),
        'refusal for lack of credit (0 % notice and auto top-up started)': async () => {
          // The PENDING top-up gone (its job failed): a refusal may start one.
          await client.query(`UPDATE auto_top_ups SET status = 'FAILED' WHERE account_id = $1 AND status = 'PENDING'`, [accountId]);
          await recordUsage(ctx, charge(40)).catch((e: { code?: string }) => (outcome.smallRefusal = e.code));
        },
      };
      const nonHotAtStart = await nonHotUpdatesInTransaction(client, HISTORY_TABLES);
      const measure = async (op: Op) => {
        const before = await rowsReadInTransaction(client, HISTORY_TABLES);
        await run[op]();
        const after = await rowsReadInTransaction(client, HISTORY_TABLES);
        const read = new Map([...after].map(([t, v]) => [t, v - (before.get(t) ?? 0)]));
        const pair = measured.get(op) ?? [new Map(), new Map()];
        pair[n] = read;
        measured.set(op, pair);
        const nonHot = await nonHotUpdatesInTransaction(client, HISTORY_TABLES);
        const versions = nonHotSoFar.get(op) ?? [new Map(), new Map()];
        versions[n] = new Map([...nonHot].map(([t, v]) => [t, v - (nonHotAtStart.get(t) ?? 0)]));
        nonHotSoFar.set(op, versions);
      };
      for (const op of OPS) await measure(op);
      const { rows } = await client.query(
        `SELECT (SELECT array_agg(threshold ORDER BY threshold) FROM credit_alerts a JOIN balances b ON b.account_id = a.account_id AND a.period_start = b.opening_period_start WHERE a.account_id = $1) AS alerts,
                (SELECT count(*)::int FROM auto_top_ups WHERE account_id = $1 AND status = 'PENDING' AND refused_micro_credits IS NOT NULL) AS refusal_top_ups,
                json_build_object(
                  'payments', (SELECT count(*) FROM payments WHERE account_id = $1),
                  'top_ups', (SELECT count(*) FROM auto_top_ups WHERE account_id = $1),
                  'closed_holds', (SELECT count(*) FROM reservations WHERE account_id = $1 AND status <> 'ACTIVE'),
                  'alerts', (SELECT count(*) FROM credit_alerts WHERE account_id = $1),
                  'batches', (SELECT count(*) FROM credit_batches WHERE account_id = $1)) AS history`,
        [accountId],
      );
      Object.assign(outcome, rows[0]);

      // A new billing period, begun just after the account's last change (the history stays in
      // the periods before it).
      await client.query(
        `UPDATE accounts SET billing_anchor_at = (SELECT updated_at + interval '1 millisecond' FROM balances WHERE account_id = $1) - interval '12 months' WHERE id = $1`,
        [accountId],
      );
      for (const op of NEW_PERIOD_OPS) await measure(op);
      const { rows: opening } = await client.query(`SELECT opening_period_start, opening_total_micro_credits::text AS total FROM balances WHERE account_id = $1`, [accountId]);
      outcome.openingKept = opening[0];

      // A ROLLOVER plan capped at 50 credits, granted up to the period before this one.
      const planId = (
        await client.query(
          `INSERT INTO plans (id, name, monthly_micro_credits, rollover, rollover_cap_micro_credits, price_usd)
           VALUES (gen_random_uuid(), 'history-' || gen_random_uuid(), 100000000, 'ROLLOVER', 50000000, 10) RETURNING id`,
        )
      ).rows[0].id as string;
      await client.query(
        `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start)
         SELECT $1, $2, true, a.billing_anchor_at, a.billing_anchor_at + interval '11 months' FROM accounts a WHERE a.id = $1`,
        [accountId, planId],
      );
      // The previous roll's grant: 80 credits of SUBSCRIPTION credit added at the previous period
      // start, unused (so the trim has credit before its start to count).
      const { rows: prevGrant } = await client.query(
        `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
         SELECT gen_random_uuid(), $1, 'SUBSCRIPTION', 'PAID', 80000000, 'plan-previous-period', 'x', a.billing_anchor_at + interval '11 months'
           FROM accounts a WHERE a.id = $1 RETURNING id, created_at`,
        [accountId],
      );
      await client.query(
        `WITH b AS (
           INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, status, updated_at)
           VALUES (gen_random_uuid(), $1, $2, 'PAID', 'SUBSCRIPTION', 80000000, 80000000, $3, 'ACTIVE', $3) RETURNING id
         ), l AS (
           INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, created_at)
           SELECT gen_random_uuid(), $1, 'GRANT', 80000000, 0, b.id, $3 FROM b
         )
         UPDATE balances SET total_micro_credits = total_micro_credits + 80000000, opening_total_micro_credits = opening_total_micro_credits + 80000000
          WHERE account_id = $1`,
        [accountId, prevGrant[0].id, prevGrant[0].created_at],
      );
      await measure(ROLL_OP);
      const { rows: rolled } = await client.query(
        `SELECT s.granted_period_start = p.period_start AS rolled, (SELECT count(*)::int FROM credit_batches WHERE account_id = $1 AND source = 'SUBSCRIPTION') AS plan_batches
           FROM plan_subscriptions s JOIN accounts a ON a.id = s.account_id CROSS JOIN LATERAL billing_period(a.billing_anchor_at, clock_timestamp()) p WHERE s.account_id = $1`,
        [accountId],
      );
      outcome.roll = rolled[0];
    }
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}, 300_000);

afterAll(async () => {
  await s?.close();
  await prices?.close();
  if (process.env.HISTORY_AUDIT_PRINT) {
    for (const [op, [fresh, old]] of measured) {
      const keys = [...new Set([...fresh.keys(), ...old.keys()])].filter((t) => (fresh.get(t) ?? 0) + (old.get(t) ?? 0) > 0).sort();
      console.log(`${op}: ${keys.map((t) => `${t} ${fresh.get(t) ?? 0}/${old.get(t) ?? 0}`).join(', ')}`);
    }
  }
});

describe('rows read per operation: an account with a year of history reads what a new one reads', () => {
  it('the scenario ran as meant on both accounts (refusals, alerts crossed, a refusal top-up)', () => {
    for (const o of seen) {
      expect(o.bigRefusal).toBe('INSUFFICIENT_CREDITS');
      expect(o.smallRefusal).toBe('INSUFFICIENT_CREDITS');
      expect(o.alerts).toEqual([0, 15, 25]);
      expect(o.refusal_top_ups).toBe(1);
    }
    expect(seen).toHaveLength(2);
    const [fresh, old] = seen as [Record<string, unknown>, Record<string, unknown>];
    // The same balance: the history is all in past periods and nets to nothing.
    expect((old.balance as { availableMicroCredits: bigint }).availableMicroCredits).toBe((fresh.balance as { availableMicroCredits: bigint }).availableMicroCredits);
    expect(fresh.history).toEqual({ payments: 0, top_ups: 2, closed_holds: 2, alerts: 3, batches: 1 });
    expect(old.history).toEqual({ payments: 5_000, top_ups: 6_002, closed_holds: 20_002, alerts: 1_203, batches: 5_001 });
  });

  it('a new period: Balance before its first change reads the opening total its first change keeps', () => {
    const [fresh, old] = seen as [Record<string, unknown>, Record<string, unknown>];
    for (const o of seen) {
      const b = o.newPeriodBalance as { periodStart: Date; periodMicroCredits: bigint; availableMicroCredits: bigint };
      expect(o.newPeriodRefusal).toBe('INSUFFICIENT_CREDITS');
      // Nothing granted in the new period: its credit is the total at its start, all still available.
      expect(b.periodMicroCredits).toBe(b.availableMicroCredits);
      expect(o.openingKept).toEqual({ opening_period_start: b.periodStart, total: b.periodMicroCredits.toString() });
    }
    expect((old.newPeriodBalance as { periodMicroCredits: bigint }).periodMicroCredits).toBe((fresh.newPeriodBalance as { periodMicroCredits: bigint }).periodMicroCredits);
  });

  it('the due plan roll ran on both accounts (its grant made)', () => {
    for (const o of seen) expect(o.roll).toEqual({ rolled: true, plan_batches: 2 });
  });

  for (const op of [...OPS, ...NEW_PERIOD_OPS, ROLL_OP]) {
    it(op, () => {
      const [fresh, old] = measured.get(op)!;
      const [freshNonHot, oldNonHot] = nonHotSoFar.get(op)!;
      const rows = HISTORY_TABLES.flatMap((t) => {
        const [freshVersions, oldVersions] = [freshNonHot.get(t) ?? 0, oldNonHot.get(t) ?? 0];
        const entries = `${t} (index entries)`;
        return [
          { key: t, fresh: fresh.get(t) ?? 0, old: old.get(t) ?? 0, allowed: (fresh.get(t) ?? 0) + SLACK, mostFresh: MOST_READ, mostOld: MOST_READ },
          {
            key: entries,
            fresh: fresh.get(entries) ?? 0,
            old: old.get(entries) ?? 0,
            allowed: indexEntriesAllowed(fresh.get(entries) ?? 0, oldVersions - freshVersions),
            mostFresh: MOST_READ * (1 + freshVersions),
            mostOld: MOST_READ * (1 + oldVersions),
          },
        ];
      }).filter((d) => d.old > d.allowed || d.old > d.mostOld || d.fresh > d.mostFresh);
      const blocks = HISTORY_TABLES.map((t) => ({ key: `${t} (blocks)`, fresh: fresh.get(`${t} (blocks)`) ?? 0, old: old.get(`${t} (blocks)`) ?? 0 })).filter(
        (d) => d.old > d.fresh + BLOCKS_SLACK,
      );
      const diff = [...rows, ...blocks];
      expect(diff).toEqual([]);
    });
  }
});
