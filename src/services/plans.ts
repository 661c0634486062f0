/**
 * Plans and billing cycles (contract: Plan, PlanSubscription, createPlan, subscribeToPlan,
 * cancelSubscription, RolloverPolicy).
 *
 * Billing periods are calendar months from the account's billing anchor
 * (src/ledger/billing-period.ts). Subscribing moves the anchor to "now" (the contract: "the
 * period starts now (or at the test clock's time)") and grants the first period's
 * `monthlyCredits` at once as PAID credit (source SUBSCRIPTION). At every period start the plan
 * rolls (`rollBillingPeriods`, one transaction, idempotent on the period start):
 * - RESET: subscription credit was granted with expiresAt = the period's end, so the expiry
 *   (run first, in the same transaction) removes what is unused;
 * - ROLLOVER: subscription credit never expires by itself; what exceeds `rolloverCapCredits`
 *   at the period start expires then (EXPIRE entries dated at it, oldest batches first; a late
 *   roll counts the credit as it stood at the period start, see trimRollover);
 * then the new period's `monthlyCredits` is granted. Purchased packs and other credit are never
 * touched by a roll. A cancelled subscription stops rolling; its credit stays.
 */
import { SINGLE_LINE_FORBIDDEN, SINGLE_LINE_MESSAGE } from '../ledger/text-input.js';
import type pg from 'pg';
import { z } from 'zod';
import { withTransaction, toBigInt, type Tx } from '../db/pg.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { formatCredits, minBig } from '../ledger/credits.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { monthlyPeriodAt } from '../ledger/billing-period.js';
import { AccountTx } from './account-tx.js';
import { accountNowSql } from './account-clock.js';
import type { ServiceContext } from './context.js';
import { applyGrant } from './grant-credits.js';
import { applyExpiries } from './expire-due.js';
import { canonicalUsd } from './credit-packs.js';
import { planPeriodGrantKey } from '../ledger/grant-keys.js';

/** A plan as stored (amounts in micro-credits, price as a decimal string in USD). */
export interface PlanRecord {
  id: string;
  name: string;
  monthlyMicroCredits: bigint;
  rollover: 'RESET' | 'ROLLOVER';
  rolloverCapMicroCredits: bigint | null;
  priceUsd: string;
}

/** An account's subscription with its current period (by the account's clock). */
export interface SubscriptionView {
  plan: PlanRecord;
  currentPeriodStart: Date;
  currentPeriodEnd: Date;
  active: boolean;
}

const DECIMAL_USD = /^(0|[1-9]\d{0,11})(\.\d{1,6})?$/;

/** Input of createPlan (amounts in micro-credits). */
export const CreatePlanCommand = z.object({
  name: z.string().trim().min(1).max(100).refine((n) => !SINGLE_LINE_FORBIDDEN.test(n), SINGLE_LINE_MESSAGE),
  monthlyMicroCredits: z.bigint().positive(),
  rollover: z.enum(['RESET', 'ROLLOVER']),
  rolloverCapMicroCredits: z.bigint().nonnegative().nullable(),
  priceUsd: z.string().regex(DECIMAL_USD, 'a non-negative decimal with at most 6 places'),
});

function planFromRow(r: Record<string, unknown>): PlanRecord {
  return {
    id: r.id as string,
    name: r.name as string,
    monthlyMicroCredits: toBigInt(r.monthly_micro_credits),
    rollover: r.rollover as PlanRecord['rollover'],
    rolloverCapMicroCredits: r.rollover_cap_micro_credits === null ? null : toBigInt(r.rollover_cap_micro_credits),
    priceUsd: canonicalUsd(String(r.price_usd)),
  };
}

/**
 * Creates a plan.
 * @throws LedgerError BAD_USER_INPUT (bad fields, a cap on a RESET plan, a name already taken).
 */
export async function createPlan(ctx: ServiceContext, input: z.input<typeof CreatePlanCommand>): Promise<PlanRecord> {
  const parsed = CreatePlanCommand.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw badInput(String(issue.path[0] ?? 'input'), issue.message);
  }
  const cmd = parsed.data;
  if (cmd.rollover === 'RESET' && cmd.rolloverCapMicroCredits !== null) throw badInput('rolloverCapCredits', 'only a ROLLOVER plan has a rollover cap');
  // The plan and its audit row commit together.
  return withTransaction(ctx.pool, async (tx) => {
    const { rows } = await tx.query(
      `INSERT INTO plans (id, name, monthly_micro_credits, rollover, rollover_cap_micro_credits, price_usd)
       VALUES (gen_random_uuid(), $1, $2, $3::"RolloverPolicy", $4, $5)
       ON CONFLICT (name) DO NOTHING RETURNING *`,
      [cmd.name, cmd.monthlyMicroCredits.toString(), cmd.rollover, cmd.rolloverCapMicroCredits?.toString() ?? null, cmd.priceUsd],
    );
    if (!rows[0]) throw badInput('name', 'a plan with this name already exists');
    const plan = planFromRow(rows[0]);
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'plan.created',
      subjectType: 'plan',
      subjectId: plan.id,
      details: {
        name: plan.name,
        monthlyCredits: formatCredits(plan.monthlyMicroCredits),
        rollover: plan.rollover,
        rolloverCapCredits: plan.rolloverCapMicroCredits === null ? null : formatCredits(plan.rolloverCapMicroCredits),
        priceUsd: plan.priceUsd,
      },
    });
    return plan;
  });
}

/** Every plan, oldest first. */
export async function listPlans(pool: pg.Pool): Promise<PlanRecord[]> {
  const { rows } = await pool.query('SELECT * FROM plans ORDER BY created_at, id');
  return rows.map(planFromRow);
}

/** One plan, or null. */
export async function findPlan(db: pg.Pool | pg.PoolClient, planId: string): Promise<PlanRecord | null> {
  const { rows } = await db.query('SELECT * FROM plans WHERE id = $1', [planId]);
  return rows[0] ? planFromRow(rows[0]) : null;
}

function scheduleRoll(atx: AccountTx, periodEnd: Date): void {
  atx.publish('job', { name: 'roll-period', jobId: `roll-period-${atx.accountId}-${periodEnd.getTime()}`, data: { accountId: atx.accountId }, runAt: periodEnd.toISOString() });
}

/**
 * Grants the plan's allowance of the period, dated at its start (applyGrant's effectiveAt; a
 * subscription's period starts now): a roll that runs late, for a period that already ended or
 * for the current one, dates its grant as an on-time roll would (README "Statements"). Dating the
 * current period's late grant at the roll's now instead put it in another period once a later
 * subscription re-gridded the periods at that instant (an hour-late RESET roll followed by a
 * switch: the re-gridded period before the switch showed the expiry of the old allowance but not
 * the grant of the new one; test/integration/statement-audit.test.ts). A period of this plan starting at this instant that was granted
 * already (its key `plan-period:<plan>:<start>` exists) is replayed, whatever its end (applyGrant's keyNamesGrant):
 * a roll under the old anchor and a subscription at that same instant (a test clock stands still
 * between calls) name the same period start, but a clamped month end can differ (anchor Jan 31:
 * the roll at Feb 28 grants up to Mar 31, a subscription at Feb 28 runs to Mar 28), and the
 * differing expiresAt of a RESET plan would otherwise make the subscription IDEMPOTENCY_CONFLICT.
 */
async function grantPeriod(atx: AccountTx, plan: PlanRecord, periodStart: Date, periodEnd: Date): Promise<void> {
  await applyGrant(atx, {
    amountMicroCredits: plan.monthlyMicroCredits,
    type: 'PAID',
    source: 'SUBSCRIPTION',
    expiresAt: plan.rollover === 'RESET' ? periodEnd : null,
    reference: `plan:${plan.id}`,
    idempotencyKey: planPeriodGrantKey(plan.id, periodStart),
  }, periodStart, { keyNamesGrant: true });
}

/**
 * Subscribes the account to the plan: the billing anchor moves to the account's now, the first
 * period's credit is granted, the roll at the period end is scheduled. Subscribing again to the
 * plan already active changes nothing; another plan replaces it (a new period starts now;
 * credit granted under the old plan keeps its own expiry). A roll of the current plan that was
 * due and had not run yet runs first (rollDuePeriods).
 * @throws LedgerError NOT_FOUND (account or plan).
 */
export async function subscribeToPlan(ctx: ServiceContext, accountId: string, planId: string): Promise<SubscriptionView> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const plan = await findPlan(tx, planId);
    if (!plan) throw new LedgerError('NOT_FOUND', 'plan not found');
    // A period of the current plan that began and has not rolled yet is rolled under that plan first.
    await rollDuePeriods(atx);
    const current = await tx.query('SELECT plan_id, active FROM plan_subscriptions WHERE account_id = $1', [accountId]);
    if (current.rows[0]?.active && current.rows[0].plan_id === planId) {
      const period = atx.period();
      await atx.finish(); // the roll, if one was due
      return { plan, currentPeriodStart: period.start, currentPeriodEnd: period.end, active: true };
    }
    const now = atx.now;
    await tx.query('UPDATE accounts SET billing_anchor_at = $2 WHERE id = $1', [accountId, now]);
    // Kept budget spending is per billing period of the old anchor: start it again from the SUM
    // over the new periods at the next budget check (migration budget_spend).
    await tx.query('DELETE FROM budget_spend WHERE account_id = $1', [accountId]);
    atx.billingAnchorAt = now;
    const period = monthlyPeriodAt(now, now);
    await tx.query(
      `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start, canceled_at)
       VALUES ($1, $2, TRUE, $3, $3, NULL)
       ON CONFLICT (account_id) DO UPDATE SET plan_id = $2, active = TRUE, started_at = $3, granted_period_start = $3, canceled_at = NULL`,
      [accountId, planId, now],
    );
    atx.planGrantedPeriodStart = now;
    await grantPeriod(atx, plan, period.start, period.end);
    scheduleRoll(atx, period.end);
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'plan.subscribed',
      accountId,
      subjectType: 'plan',
      subjectId: planId,
      details: { planName: plan.name, previousPlanId: current.rows[0]?.active ? (current.rows[0].plan_id as string) : null, periodStart: period.start.toISOString() },
    });
    await atx.finish();
    return { plan, currentPeriodStart: period.start, currentPeriodEnd: period.end, active: true };
  });
}

/**
 * Cancels the account's plan: no further periods are granted; credit already granted stays. A
 * roll that was due and had not run yet runs first (rollDuePeriods): a period that began while
 * the plan was active is trimmed and granted as if its roll had run on time.
 * @throws LedgerError NOT_FOUND (no subscription).
 */
export async function cancelSubscription(ctx: ServiceContext, accountId: string): Promise<SubscriptionView> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    // A period that began while the plan was active is rolled (trimmed, granted) before it stops.
    await rollDuePeriods(atx);
    // `old` is the row as it was before this UPDATE: only a cancel of an active plan is audited.
    const { rows } = await tx.query(
      `UPDATE plan_subscriptions s SET active = FALSE, canceled_at = COALESCE(s.canceled_at, $2)
         FROM plan_subscriptions old WHERE s.account_id = $1 AND old.account_id = $1 RETURNING s.plan_id, old.active AS was_active`,
      [accountId, atx.now],
    );
    if (!rows[0]) throw new LedgerError('NOT_FOUND', 'the account has no plan');
    atx.planGrantedPeriodStart = null;
    const plan = (await findPlan(tx, rows[0].plan_id as string))!;
    if (rows[0].was_active) {
      await recordAuditEvent(tx, actorOf(ctx), { action: 'plan.cancelled', accountId, subjectType: 'plan', subjectId: plan.id, details: { planName: plan.name } });
    }
    atx.touch(); // planName changes: a new balance version tells live credit bars
    await atx.finish();
    const period = atx.period();
    return { plan, currentPeriodStart: period.start, currentPeriodEnd: period.end, active: false };
  });
}

/**
 * The account's subscription (null without one), with the billing period that contains the
 * account's now as Balance reads it (account-clock.ts: its test clock, else `wallNow` but never
 * before its last committed change), so on a server whose clock runs behind the one that changed
 * the account just after a period boundary it names the period Balance.periodStart names.
 */
export async function readSubscription(pool: pg.Pool, accountId: string, wallNow: Date): Promise<SubscriptionView | null> {
  const { rows } = await pool.query(
    `SELECT s.active, a.billing_anchor_at, ${accountNowSql('a', 'bal', '$2')} AS now, p.*
       FROM plan_subscriptions s JOIN accounts a ON a.id = s.account_id JOIN balances bal ON bal.account_id = a.id JOIN plans p ON p.id = s.plan_id
      WHERE s.account_id = $1`,
    [accountId, wallNow],
  );
  const r = rows[0];
  if (!r) return null;
  const period = monthlyPeriodAt(r.billing_anchor_at as Date, r.now as Date);
  return { plan: planFromRow(r), currentPeriodStart: period.start, currentPeriodEnd: period.end, active: r.active as boolean };
}

/**
 * Rolls the account's active plan into every period that has started since the last one
 * granted (see the module comment), in one transaction. Periods that already ended while
 * nothing rolled (a long outage) are rolled one by one: under ROLLOVER each gets its trim and its
 * grant, as if the roll had run on time; under RESET only the current period is granted (the
 * credit of the others would have expired already), and an ended period only when the account
 * was in debt at its start (its allowance repaid that debt on time; the rest expires at its end).
 * @returns the number of periods rolled (0: nothing due).
 * @throws LedgerError NOT_FOUND for an unknown account.
 */
export async function rollBillingPeriods(ctx: ServiceContext, accountId: string): Promise<{ periodsRolled: number }> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const periodsRolled = await rollDuePeriods(atx);
    await atx.finish();
    return { periodsRolled };
  });
}

/**
 * Locks the account (AccountTx.lock) for a decision made on its Balance as SQL reads it
 * (readBalance) in a transaction that moves no credit itself: the depletion notice and the auto
 * top-up started after a refusal for lack of credit (depletion-alerts.ts, refusal-top-ups.ts),
 * and the check of available credit against the threshold when auto top-up is saved
 * (auto-top-up.ts setAutoTopUp: it started a top-up the on-time account never had). A
 * plan roll that is due runs first (rollDuePeriodsFirst) and is written (atx.finish), then the
 * account is locked again in the same transaction, so the read sees the new period's allowance,
 * as after an on-time roll. A refused charge's roll is rolled back with it (README "Plans and
 * billing cycles"): the notice's check then read a period credit without its grant and without
 * the RESET allowance that had expired, and missed the notice the on-time account got
 * (test/integration/reset-roll-audit.test.ts).
 * @returns the account's AccountTx, locked, with the roll (if one was due) written.
 * @throws LedgerError NOT_FOUND for an unknown account; database errors.
 */
export async function lockAfterDueRoll(tx: Tx, accountId: string, wallNow: Date): Promise<AccountTx> {
  const atx = await AccountTx.lock(tx, accountId, wallNow);
  if (!(await rollDuePeriodsFirst(atx))) return atx;
  await atx.finish();
  return AccountTx.lock(tx, accountId, wallNow);
}

/** The savepoint rollDuePeriodsFirst rolls under (nested inside GroupCommitter's own, if any). */
const ROLL_SAVEPOINT = 'cp_period_roll';

/**
 * Before a charge, a hold, a grant, a void or a refund (anything that moves credit) decides,
 * inside its locked account transaction `atx`: rolls the
 * account's plan when its current billing period began and has not been rolled yet
 * (AccountTx.periodRollDue, known from the lock: no statement otherwise). The new period has
 * begun for every other rule (a RESET allowance stops paying at its expiresAt, alerts, budgets
 * and top-ups count the new period), so a charge in the instants between the boundary and the
 * `roll-period` job (BullMQ's delay, workers busy or down) was refused although the new allowance
 * was due, or drew a purchased pack the allowance should have paid, and raised credit alerts
 * against a period credit without its grant. The roll is the one the job would make
 * (rollDuePeriods: trim and grant dated as on time, idempotent on the period start), under a
 * savepoint: a roll refused with a LedgerError (its grant over the balance limit) is undone and
 * the charge goes on without it, as before (the job and the sweep retry and log it).
 * Every grant path runs it too, before its grant (grant-credits.ts module comment: in debt at the
 * period start, the roll's grant repays the debt, as on time), as do voids and refunds.
 * The caller re-reads the account's batches when this returns true.
 * @returns true when a roll ran (and the batches changed).
 * @throws database errors (the transaction is then rolled back by the caller).
 */
export async function rollDuePeriodsFirst(atx: AccountTx): Promise<boolean> {
  if (!atx.periodRollDue()) return false;
  const mark = atx.checkpoint();
  await atx.tx.query(`SAVEPOINT ${ROLL_SAVEPOINT}`);
  try {
    await rollDuePeriods(atx);
  } catch (error) {
    if (!(error instanceof LedgerError)) throw error;
    await atx.tx.query(`ROLLBACK TO SAVEPOINT ${ROLL_SAVEPOINT}`);
    atx.rollbackTo(mark);
    atx.planGrantedPeriodStart = null; // not tried again in this transaction
    return false;
  }
  await atx.tx.query(`RELEASE SAVEPOINT ${ROLL_SAVEPOINT}`);
  return true;
}

/**
 * rollBillingPeriods inside the locked account transaction `atx` (the caller calls
 * `atx.finish()`): rolls the active plan into every period started by the account's now and not
 * yet granted, and schedules the next roll. subscribeToPlan and cancelSubscription run it first,
 * so a roll that was due but had not run yet (a late job, a worker outage) happens under the plan
 * it was due for, as when it ran on time, before the subscription changes.
 * @returns the number of periods rolled (0: no active plan, or nothing due).
 */
async function rollDuePeriods(atx: AccountTx): Promise<number> {
  const { tx, accountId } = atx;
  const { rows } = await tx.query(`SELECT plan_id, granted_period_start FROM plan_subscriptions WHERE account_id = $1 AND active FOR UPDATE`, [accountId]);
  const sub = rows[0];
  atx.planGrantedPeriodStart = sub ? (sub.granted_period_start as Date) : null;
  if (!sub) return 0;
  const plan = (await findPlan(tx, sub.plan_id as string))!;
  const current = atx.period();
  let granted = sub.granted_period_start as Date;
  if (granted.getTime() >= current.start.getTime()) return 0;
  let rolled = 0;
  const capped = plan.rollover === 'ROLLOVER' && plan.rolloverCapMicroCredits !== null;
  while (granted.getTime() < current.start.getTime()) {
    const next = monthlyPeriodAt(atx.billingAnchorAt, granted).end; // the next period's start
    // What had expired by this period start expires first (dated at its expiresAt; RESET credit
    // of the period that ended), and only that: credit expiring after it still stood there, and
    // a late trim counts it as the on-time one did (before, every due expiry ran first and the
    // trim left out the credit that expired after the period start; statement-audit.test.ts).
    await applyExpiries(atx, next);
    if (capped) await trimRollover(atx, plan.rolloverCapMicroCredits!, next);
    const period = monthlyPeriodAt(atx.billingAnchorAt, next);
    // RESET credit of a period that ended while nothing rolled would have expired by now; ROLLOVER
    // credit carries over, so every period is granted (after its boundary's trim), as stepping
    // the periods one by one (advanceTestClock) does. An ended RESET period is granted too when
    // the account was in debt at its start: on time, its allowance repaid the debt and only the
    // rest expired at its end (the next pass's applyExpiries, dated there). Skipped, the debt
    // stayed for the current period's allowance to repay, and the account ended that much lower
    // than after on-time rolls (test/integration/reset-roll-audit.test.ts).
    if (plan.rollover === 'ROLLOVER' || period.start.getTime() === current.start.getTime() || atx.debt > 0n) await grantPeriod(atx, plan, period.start, period.end);
    granted = next;
    rolled++;
  }
  await applyExpiries(atx); // the rest due by now, and holds
  // A capped roll is remembered with its cap (capped_roll_at, migration plan_capped_roll), kept
  // across switches and cancels, for the refunds of usage recorded before it (rolloverRoom).
  await tx.query(
    `UPDATE plan_subscriptions SET granted_period_start = $2,
            capped_roll_at = CASE WHEN $3::bigint IS NULL THEN capped_roll_at ELSE $2 END,
            capped_roll_cap_micro_credits = COALESCE($3::bigint, capped_roll_cap_micro_credits)
      WHERE account_id = $1`,
    [accountId, granted, capped ? plan.rolloverCapMicroCredits!.toString() : null],
  );
  atx.planGrantedPeriodStart = granted;
  scheduleRoll(atx, current.end);
  return rolled;
}

/**
 * SQL of the CTE `since(batch_id, drawn)`: per batch, the micro-credits that left it after
 * instant `$2`: what usage recorded from `$2` on (CONSUME entries of account `$1` dated from `$2`,
 * their events not refunded) drew from it, plus what expired from it after `$2` (EXPIRE entries
 * dated after `$2`: the batch's expiresAt came later; a trim's own entries are dated at `$2` or
 * before). Added to a batch's remaining it gives its credit as it stood at `$2`: what
 * trimRollover trims and what a refund may give back under the cap (refund-usage.ts
 * rolloverRoom) both count from that. (Without the expiries, a roll that ran after such a
 * batch's expiresAt left it out of the credit that stood at the period start and trimmed less
 * than the on-time roll: 5 credits more kept in test/integration/statement-audit.test.ts.)
 */
export const DRAWN_SINCE_CTE = `since AS (
       SELECT x.batch_id, SUM(x.amount) AS drawn FROM (
         SELECT d.batch_id, d.amount AS amount FROM ledger_entries l
           -- each entry's event and drawdowns by key (OFFSET 0 keeps this a per-entry lookup: the
           -- ledger pool's generic plan joined them by hash, reading all of usage_events and drawdowns)
           CROSS JOIN LATERAL (SELECT dd.batch_id, dd.amount_micro_credits AS amount
                                 FROM usage_events e JOIN drawdowns dd ON dd.usage_event_id = e.id
                                WHERE e.id = l.usage_event_id AND e.refunded_at IS NULL OFFSET 0) d
          WHERE l.account_id = $1 AND l.type = 'CONSUME' AND l.created_at >= $2
         UNION ALL
         SELECT l.batch_id, -l.amount_micro_credits FROM ledger_entries l
          WHERE l.account_id = $1 AND l.type = 'EXPIRE' AND l.created_at > $2 AND l.batch_id IS NOT NULL
       ) x
        GROUP BY x.batch_id
     )`;

/**
 * ROLLOVER: expires, at the period start `at`, the subscription credit above `cap` (micro-credits)
 * as it stood at `at` (oldest batches first; EXPIRE entries dated at `at`). A roll that runs late
 * finds the credit already drawn by usage recorded since `at`, which under an on-time roll would
 * have been drawn from what the trim left: each batch's credit at `at` is its remaining plus what
 * usage recorded since then (not refunded) drew from it, the trim takes from each batch what it
 * would have taken then, and what of that has been spent since cannot be taken back (the rest is
 * cut). On time (nothing recorded since `at`) it is the plain trim of the remaining credit.
 * Only credit added before `at` stood at `at`: a SUBSCRIPTION grant made after the period start
 * (grantCredits may name that source) is not trimmed, as an on-time roll would not have seen it
 * (every grant runs a due roll first, grant-credits.ts, so a roll meets one only after a roll
 * refused then, over the balance limit, ran later). Credit that stood at `at` and expired since (its expiresAt after `at`,
 * before the late roll; the roll applies due expiries first) is counted as the on-time roll
 * counted it: its batch's part of the trim cannot be taken back (it expired), the others' is.
 */
async function trimRollover(atx: AccountTx, cap: bigint, at: Date): Promise<void> {
  // Usage since `at`: the account's CONSUME entries dated from `at` on (an index range on
  // (account_id, created_at); on time, none) and their drawdowns, by batch, read once. The
  // batches looked at: the ACTIVE ones and those drawn since `at`, by id (the conditions below
  // keep the same rows): matched on the account alone, every used-up batch of its history was
  // read at each roll (5,000: 5,018 rows against 18; test/integration/history-growth-audit.test.ts).
  // Each candidate is fetched by its id in a LATERAL subquery of its own (OFFSET 0 keeps it one):
  // written as `b.id = ANY(…) AND b.account_id = $1` in one scan, the planner could read the
  // account's (account_id, status) range instead and filter the ids, and did so where the
  // statistics said the account had few batches (the full suite's shared test database).
  const { rows } = await atx.tx.query(
    `WITH ${DRAWN_SINCE_CTE}
     SELECT b.id, b.remaining_micro_credits, COALESCE(s.drawn, 0) AS drawn_since
       FROM (SELECT DISTINCT id FROM unnest(ARRAY(SELECT id FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE'
                                                  UNION ALL SELECT batch_id FROM since)) AS id) ids
       CROSS JOIN LATERAL (SELECT c.id, c.remaining_micro_credits, c.status, c.added_at FROM credit_batches c
                            WHERE c.id = ids.id AND c.account_id = $1 AND c.source = 'SUBSCRIPTION' AND c.added_at < $2
                              AND (c.expires_at IS NULL OR c.expires_at > $2) AND c.status IN ('ACTIVE', 'EXHAUSTED', 'EXPIRED')
                            OFFSET 0 FOR UPDATE) b
       LEFT JOIN since s ON s.batch_id = b.id
      WHERE b.status = 'ACTIVE' OR (b.status IN ('EXHAUSTED', 'EXPIRED') AND s.drawn IS NOT NULL)
      ORDER BY b.added_at, b.id`,
    [atx.accountId, at],
  );
  const batches = rows.map((r) => {
    const remaining = toBigInt(r.remaining_micro_credits);
    return { id: r.id as string, remaining, atStart: remaining + toBigInt(r.drawn_since) };
  });
  let total = batches.reduce((sum, b) => sum + b.atStart, 0n);
  for (const b of batches) {
    if (total <= cap) break;
    const trimmed = minBig(b.atStart, total - cap); // what an on-time trim took from this batch
    total -= trimmed;
    const cut = minBig(b.remaining, trimmed);
    if (cut === 0n) continue;
    await atx.tx.query(
      `UPDATE credit_batches SET remaining_micro_credits = remaining_micro_credits - $2,
              status = CASE WHEN remaining_micro_credits - $2 = 0 THEN 'EXPIRED'::"BatchStatus" ELSE status END, updated_at = $3
        WHERE id = $1`,
      [b.id, cut.toString(), atx.now],
    );
    atx.addEntry({ type: 'EXPIRE', amountMicroCredits: -cut, batchId: b.id, note: 'above the rollover cap', at });
  }
}

/**
 * Accounts with an active plan whose current billing period (by the account's own clock) began
 * after the last period granted, at most `limit`, the oldest period granted first (ties by
 * account id): the roll that has waited longest goes first, so under a backlog larger than
 * `limit` (the sweep's MAX_ACCOUNTS_PER_RUN) the next call takes the rest.
 *
 * Cost: about what is due, not how many plans there are (the sweep runs it every
 * SWEEP_EVERY_MS). A roll is due when the account's now has reached the subscription's
 * next_period_start (the end of the period granted, kept by triggers: migration
 * plan_next_period_start, which says why that is the same rule), read through the partial index
 * plan_subscriptions_next_period_start (WHERE active AND next_period_start IS NOT NULL, so no
 * account-scoped `active` read can take it: migration plan_next_period_start_predicate) for the
 * accounts on the wall clock, each told
 * from a test-mode one by the partial index accounts_test_mode (an anti-join); the test-mode
 * accounts (that index) are compared with their own clock, or `now` when they have none, each
 * by a probe of its own subscription by the primary key (COALESCE, a no-op on the NOT NULL
 * column, keeps the partial index out of it; OFFSET 0 keeps it one probe: joined, the planner read every
 * subscription where test-mode accounts were many, as in the full suite's shared database). The
 * range is written `BETWEEN '-infinity' AND $1`, always true below, because a generic plan
 * (the ledger pool's) estimates a one-sided `<= $1` at a third of the index and reads the whole
 * table instead; a two-sided range is estimated small. Measured at 100,000 active plans (200,000
 * accounts, 300 in test mode), none due (EXPLAIN ANALYZE, generic plan): 1.2 ms, 154
 * subscription and 304 account rows read, where figuring every plan's period read 100,004 and
 * 200,004 (296-567 ms); with all 99,850 due, 62 ms (was 538 ms).
 * @param now the sweep's wall clock.
 * @returns account ids (uuids).
 */
export async function findAccountsWithDuePeriods(pool: pg.Pool, now: Date, limit: number): Promise<string[]> {
  const { rows } = await pool.query(
    `SELECT account_id FROM (
       SELECT s.account_id, s.granted_period_start FROM plan_subscriptions s
        WHERE s.active AND s.next_period_start BETWEEN '-infinity' AND $1::timestamptz
          AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = s.account_id AND a.test_mode)
       UNION ALL
       SELECT a.id, s.granted_period_start FROM accounts a
        CROSS JOIN LATERAL (SELECT s.granted_period_start FROM plan_subscriptions s
                             WHERE s.account_id = a.id AND s.active AND COALESCE(s.next_period_start, 'infinity') <= COALESCE(a.test_clock_at, $1::timestamptz) OFFSET 0) s
        WHERE a.test_mode
     ) due ORDER BY granted_period_start, account_id
     LIMIT $2`,
    [now, limit],
  );
  return rows.map((r) => r.account_id as string);
}
