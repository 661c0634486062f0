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
 *   expires at the period start (EXPIRE entries dated at it, oldest batches first);
 * then the new period's `monthlyCredits` is granted. Purchased packs and other credit are never
 * touched by a roll. A cancelled subscription stops rolling; its credit stays.
 */
import type pg from 'pg';
import { z } from 'zod';
import { withTransaction, toBigInt } from '../db/pg.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { minBig } from '../ledger/credits.js';
import { monthlyPeriodAt } from '../ledger/billing-period.js';
import { AccountTx } from './account-tx.js';
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
  name: z.string().trim().min(1).max(100),
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
  const { rows } = await ctx.pool.query(
    `INSERT INTO plans (id, name, monthly_micro_credits, rollover, rollover_cap_micro_credits, price_usd)
     VALUES (gen_random_uuid(), $1, $2, $3::"RolloverPolicy", $4, $5)
     ON CONFLICT (name) DO NOTHING RETURNING *`,
    [cmd.name, cmd.monthlyMicroCredits.toString(), cmd.rollover, cmd.rolloverCapMicroCredits?.toString() ?? null, cmd.priceUsd],
  );
  if (!rows[0]) throw badInput('name', 'a plan with this name already exists');
  return planFromRow(rows[0]);
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

/** Grants the plan's allowance of the period; a period that already ended is dated at its start (applyGrant's effectiveAt). */
async function grantPeriod(atx: AccountTx, plan: PlanRecord, periodStart: Date, periodEnd: Date): Promise<void> {
  const ended = periodEnd.getTime() <= atx.now.getTime();
  await applyGrant(atx, {
    amountMicroCredits: plan.monthlyMicroCredits,
    type: 'PAID',
    source: 'SUBSCRIPTION',
    expiresAt: plan.rollover === 'RESET' ? periodEnd : null,
    reference: `plan:${plan.id}`,
    idempotencyKey: planPeriodGrantKey(plan.id, periodStart),
  }, ended ? periodStart : undefined);
}

/**
 * Subscribes the account to the plan: the billing anchor moves to the account's now, the first
 * period's credit is granted, the roll at the period end is scheduled. Subscribing again to the
 * plan already active changes nothing; another plan replaces it (a new period starts now;
 * credit granted under the old plan keeps its own expiry).
 * @throws LedgerError NOT_FOUND (account or plan).
 */
export async function subscribeToPlan(ctx: ServiceContext, accountId: string, planId: string): Promise<SubscriptionView> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const plan = await findPlan(tx, planId);
    if (!plan) throw new LedgerError('NOT_FOUND', 'plan not found');
    const current = await tx.query('SELECT plan_id, active FROM plan_subscriptions WHERE account_id = $1', [accountId]);
    if (current.rows[0]?.active && current.rows[0].plan_id === planId) {
      const period = atx.period();
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
    await grantPeriod(atx, plan, period.start, period.end);
    scheduleRoll(atx, period.end);
    await atx.finish();
    return { plan, currentPeriodStart: period.start, currentPeriodEnd: period.end, active: true };
  });
}

/**
 * Cancels the account's plan: no further periods are granted; credit already granted stays.
 * @throws LedgerError NOT_FOUND (no subscription).
 */
export async function cancelSubscription(ctx: ServiceContext, accountId: string): Promise<SubscriptionView> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const { rows } = await tx.query(
      `UPDATE plan_subscriptions SET active = FALSE, canceled_at = COALESCE(canceled_at, $2) WHERE account_id = $1 RETURNING plan_id`,
      [accountId, atx.now],
    );
    if (!rows[0]) throw new LedgerError('NOT_FOUND', 'the account has no plan');
    const plan = (await findPlan(tx, rows[0].plan_id as string))!;
    atx.touch(); // planName changes: a new balance version tells live credit bars
    await atx.finish();
    const period = atx.period();
    return { plan, currentPeriodStart: period.start, currentPeriodEnd: period.end, active: false };
  });
}

/** The account's subscription (null without one), its period by the account's clock. */
export async function readSubscription(pool: pg.Pool, accountId: string, wallNow: Date): Promise<SubscriptionView | null> {
  const { rows } = await pool.query(
    `SELECT s.active, a.billing_anchor_at, CASE WHEN a.test_mode AND a.test_clock_at IS NOT NULL THEN a.test_clock_at ELSE $2::timestamptz END AS now, p.*
       FROM plan_subscriptions s JOIN accounts a ON a.id = s.account_id JOIN plans p ON p.id = s.plan_id
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
 * credit of the others would have expired already).
 * @returns the number of periods rolled (0: nothing due).
 * @throws LedgerError NOT_FOUND for an unknown account.
 */
export async function rollBillingPeriods(ctx: ServiceContext, accountId: string): Promise<{ periodsRolled: number }> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const { rows } = await tx.query(`SELECT plan_id, granted_period_start FROM plan_subscriptions WHERE account_id = $1 AND active FOR UPDATE`, [accountId]);
    const sub = rows[0];
    if (!sub) return { periodsRolled: 0 };
    const plan = (await findPlan(tx, sub.plan_id as string))!;
    const current = atx.period();
    let granted = sub.granted_period_start as Date;
    if (granted.getTime() >= current.start.getTime()) return { periodsRolled: 0 };
    let rolled = 0;
    // RESET credit of the period that ended expires first (dated at its expiresAt).
    await applyExpiries(atx);
    while (granted.getTime() < current.start.getTime()) {
      const next = monthlyPeriodAt(atx.billingAnchorAt, granted).end; // the next period's start
      if (plan.rollover === 'ROLLOVER' && plan.rolloverCapMicroCredits !== null) await trimRollover(atx, plan.rolloverCapMicroCredits, next);
      const period = monthlyPeriodAt(atx.billingAnchorAt, next);
      // RESET credit of a period that ended while nothing rolled would have expired by now; ROLLOVER
      // credit carries over, so every period is granted (after its boundary's trim), as stepping
      // the periods one by one (advanceTestClock) does.
      if (plan.rollover === 'ROLLOVER' || period.start.getTime() === current.start.getTime()) await grantPeriod(atx, plan, period.start, period.end);
      granted = next;
      rolled++;
    }
    await tx.query('UPDATE plan_subscriptions SET granted_period_start = $2 WHERE account_id = $1', [accountId, granted]);
    scheduleRoll(atx, current.end);
    await atx.finish();
    return { periodsRolled: rolled };
  });
}

/** ROLLOVER: expires subscription credit above `cap` at `at` (oldest batches first). */
async function trimRollover(atx: AccountTx, cap: bigint, at: Date): Promise<void> {
  const { rows } = await atx.tx.query(
    `SELECT id, remaining_micro_credits FROM credit_batches
      WHERE account_id = $1 AND status = 'ACTIVE' AND source = 'SUBSCRIPTION' AND (expires_at IS NULL OR expires_at > $2)
      ORDER BY added_at, id FOR UPDATE`,
    [atx.accountId, at],
  );
  let total = rows.reduce((s, r) => s + toBigInt(r.remaining_micro_credits), 0n);
  for (const r of rows) {
    if (total <= cap) break;
    const remaining = toBigInt(r.remaining_micro_credits);
    const cut = minBig(remaining, total - cap);
    await atx.tx.query(
      `UPDATE credit_batches SET remaining_micro_credits = remaining_micro_credits - $2,
              status = CASE WHEN remaining_micro_credits - $2 = 0 THEN 'EXPIRED'::"BatchStatus" ELSE status END, updated_at = $3
        WHERE id = $1`,
      [r.id, cut.toString(), atx.now],
    );
    atx.addEntry({ type: 'EXPIRE', amountMicroCredits: -cut, batchId: r.id as string, note: 'above the rollover cap', at });
    total -= cut;
  }
}

/**
 * Accounts with an active plan whose current billing period (by the account's own clock) began
 * after the last period granted, at most `limit`.
 */
export async function findAccountsWithDuePeriods(pool: pg.Pool, now: Date, limit: number): Promise<string[]> {
  const { rows } = await pool.query(
    `SELECT s.account_id FROM plan_subscriptions s JOIN accounts a ON a.id = s.account_id,
            LATERAL billing_period(a.billing_anchor_at, CASE WHEN a.test_mode AND a.test_clock_at IS NOT NULL THEN a.test_clock_at ELSE $1::timestamptz END) p
      WHERE s.active AND p.period_start > s.granted_period_start
      LIMIT $2`,
    [now, limit],
  );
  return rows.map((r) => r.account_id as string);
}
