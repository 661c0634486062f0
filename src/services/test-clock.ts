/**
 * Test clocks (contract: advanceTestClock; Stripe's test clocks are the model:
 * https://docs.stripe.com/billing/testing/test-clocks). A test-mode account runs on its own
 * clock; every rule reads "now" from it (AccountTx.now), so production and test clocks share
 * one code path. Advancing moves the clock from due instant to due instant up to `to` and, at
 * each, runs in this order what is due: batch and hold expiries, the plan's period roll (RESET /
 * ROLLOVER, the new period's grant) or, without a plan, the new period's opening (a balance
 * version with no money moved, so the live credit bar shows the period the clock moved into:
 * open-billing-period.ts; the sweep leaves test-mode accounts to this), then pending auto top-ups. Alerts are raised by the balance
 * changes themselves (balances_changed). Returns when everything due up to `to` is done.
 */
import { LedgerError, badInput } from '../ledger/errors.js';
import type { ServiceContext } from './context.js';
import { expireDue } from './expire-due.js';
import { rollBillingPeriods } from './plans.js';
import { openBillingPeriod } from './open-billing-period.js';
import { runPendingTopUps } from './auto-top-up.js';
import { withTransaction } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';

/**
 * Latest instant a test clock may show (testClockStart, advanceTestClock `to`): ten years and a
 * day before the DateTime range ends (MAX_DATE_TIME, src/graphql/input-values.ts), so what a test-mode account derives from its clock (expiries up to
 * 3650 days ahead: welcome bonus, packs, promo grants; week-long holds; monthly periods) stays
 * within the DateTime range and can be read back. A clock at 9999-12-31T23:00Z used to give a
 * welcome bonus expiring in year 10000, and every read of the account's batches failed.
 */
export const MAX_TEST_CLOCK = new Date('9989-12-31T23:59:59.999Z');
/** The BAD_USER_INPUT message for a test clock past MAX_TEST_CLOCK (after the field name). */
export const LATE_TEST_CLOCK = `a test clock must not pass ${MAX_TEST_CLOCK.toISOString()} (UTC), so that the expiries and periods it leads to stay within the DateTime range`;

/**
 * Most due instants one advanceTestClock call walks through (README "Test clocks"): a `to`
 * further away than that, counted from what is due already (plannedSteps), is BAD_USER_INPUT
 * before anything is written; the loop's own guard stays for instants the walk itself adds
 * (auto top-up batches that expire).
 */
export const MAX_TEST_CLOCK_STEPS = 10_000;
const MAX_STEPS = MAX_TEST_CLOCK_STEPS;

/**
 * Advances the account's test clock to `to`, running everything due on the way (module comment).
 * @returns the number of instants stepped through.
 * @throws LedgerError NOT_FOUND (account), BAD_USER_INPUT (not a test-mode account, `to`
 *   before the clock: test clocks only move forward, or past MAX_TEST_CLOCK, or more than MAX_TEST_CLOCK_STEPS due
 *   instants away: plannedSteps, checked before anything is written), UNAVAILABLE (the walk met
 *   more than MAX_TEST_CLOCK_STEPS instants after all, through instants it added itself; what
 *   it walked stays done).
 */
export async function advanceTestClock(ctx: ServiceContext, accountId: string, to: Date): Promise<{ steps: number }> {
  const { rows } = await ctx.pool.query('SELECT test_mode, test_clock_at FROM accounts WHERE id = $1', [accountId]);
  const account = rows[0];
  if (!account) throw new LedgerError('NOT_FOUND', 'account not found');
  if (!account.test_mode || !account.test_clock_at) throw badInput('accountId', 'only a test-mode account has a test clock');
  if (Number.isNaN(to.getTime())) throw badInput('to', 'must be a valid instant');
  if (to.getTime() < (account.test_clock_at as Date).getTime()) throw badInput('to', 'a test clock only moves forward');
  if (to.getTime() > MAX_TEST_CLOCK.getTime()) throw badInput('to', LATE_TEST_CLOCK);
  let clock = account.test_clock_at as Date;
  // Refused up front, not after walking (and granting) 10,000 periods for ~3 minutes: a `to` in
  // year 9999 on a monthly plan used to answer UNAVAILABLE only once that was done.
  if ((await plannedSteps(ctx, accountId, clock, to)) > MAX_STEPS) {
    throw badInput(
      'to',
      `is more than ${MAX_STEPS} due instants (billing periods, batch and hold expiries) after the account's clock (${clock.toISOString()}); advance in smaller steps`,
    );
  }
  for (let steps = 1; steps <= MAX_STEPS; steps++) {
    const next = await nextDueAfter(ctx, accountId, clock);
    const at = next && next.getTime() <= to.getTime() ? next : to;
    const moveClock = 'UPDATE accounts SET test_clock_at = $2 WHERE id = $1 AND test_clock_at <= $2';
    if (steps === 1) {
      // One audit row per call, with the first move of the clock (each step commits on its own:
      // a walk stopped by UNAVAILABLE keeps the steps it made, and its row).
      const from = clock;
      await withTransaction(ctx.pool, async (tx) => {
        await tx.query(moveClock, [accountId, at]);
        await recordAuditEvent(tx, actorOf(ctx), { action: 'test_clock.advanced', accountId, subjectType: 'account', subjectId: accountId, details: { from: from.toISOString(), to: to.toISOString() } });
      });
    } else {
      await ctx.pool.query(moveClock, [accountId, at]);
    }
    clock = at;
    await expireDue(ctx, accountId);
    await rollBillingPeriods(ctx, accountId);
    await openBillingPeriod(ctx, accountId);
    await runPendingTopUps(ctx, accountId);
    if (at.getTime() === to.getTime()) return { steps };
  }
  throw new LedgerError('UNAVAILABLE', `more than ${MAX_STEPS} due instants before ${to.toISOString()}; advance in smaller steps`);
}

/**
 * The steps advanceTestClock takes from `from` to `to` through what is due already: the
 * distinct instants among the active plan's period ends, the ACTIVE batches' and holds'
 * expiries in (`from`, `to`], and `to` itself (the last step). Instants the walk adds itself
 * (batches of auto top-ups) are not known here, so the count is a lower bound of the walk's
 * steps, exact without auto top-ups. Period ends are listed up to MAX_TEST_CLOCK_STEPS + 1, so
 * the answer is exact up to that cap and some number above it beyond.
 *
 * The account's batches are matched on `COALESCE(expires_at, 'infinity')` (the same rows: a batch
 * without an expiry is never due), here and in nextDueAfter, so that only the account's
 * (account_id, status) index can serve them: a plain `expires_at > $2` also matches the sweep's
 * partial index of every account's expiring batches (credit_batches_active_expiry), which the
 * ledger pool's generic plan took while the statistics counted few of them, and then read every
 * account's batches expiring in the window (16,673 rows for one advance of an hour, after 50,000
 * other accounts' batches came: test/integration/neighbour-growth-audit.test.ts).
 */
export async function plannedSteps(ctx: Pick<ServiceContext, 'pool'>, accountId: string, from: Date, to: Date): Promise<number> {
  const { rows } = await ctx.pool.query(
    `WITH sub AS (
       SELECT a.billing_anchor_at AS anchor, f.period_start AS from_start, t.period_start AS to_start
         FROM accounts a JOIN plan_subscriptions s ON s.account_id = a.id AND s.active,
              LATERAL billing_period(a.billing_anchor_at, $2) f, LATERAL billing_period(a.billing_anchor_at, $3) t
        WHERE a.id = $1
     ), months AS (
       -- Index of the period holding from, and how many period ends lie in (from, to].
       SELECT anchor,
              ((EXTRACT(YEAR FROM from_start AT TIME ZONE 'UTC') - EXTRACT(YEAR FROM anchor AT TIME ZONE 'UTC')) * 12
                + EXTRACT(MONTH FROM from_start AT TIME ZONE 'UTC') - EXTRACT(MONTH FROM anchor AT TIME ZONE 'UTC'))::int AS m,
              ((EXTRACT(YEAR FROM to_start AT TIME ZONE 'UTC') - EXTRACT(YEAR FROM from_start AT TIME ZONE 'UTC')) * 12
                + EXTRACT(MONTH FROM to_start AT TIME ZONE 'UTC') - EXTRACT(MONTH FROM from_start AT TIME ZONE 'UTC'))::int AS n
         FROM sub
     )
     SELECT count(*)::int AS steps FROM (
       SELECT ((anchor AT TIME ZONE 'UTC') + make_interval(months => m + k)) AT TIME ZONE 'UTC' AS at
         FROM months, generate_series(1, LEAST(n, $4::int + 1)) k
       UNION SELECT expires_at FROM credit_batches
              WHERE account_id = $1 AND status = 'ACTIVE' AND COALESCE(expires_at, 'infinity') > $2 AND COALESCE(expires_at, 'infinity') <= $3
       UNION SELECT expires_at FROM reservations WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at > $2 AND expires_at <= $3
       UNION SELECT $3::timestamptz
     ) due`,
    [accountId, from, to, MAX_STEPS],
  );
  return rows[0].steps as number;
}

/**
 * The first instant after `clock` at which something is due on the account, or null. The batches'
 * MIN is taken over a subquery (OFFSET 0): on the table itself PostgreSQL rewrites MIN(expires_at)
 * as `expires_at IS NOT NULL ORDER BY expires_at LIMIT 1` (PostgreSQL docs, "Aggregate Functions":
 * min/max use an index), which the partial index of every account's expiring batches serves, and
 * the generic plan walked it past every other account's batch (17,100 rows in
 * test/integration/neighbour-growth-audit.test.ts); see plannedSteps for the COALESCE.
 */
async function nextDueAfter(ctx: ServiceContext, accountId: string, clock: Date): Promise<Date | null> {
  const { rows } = await ctx.pool.query(
    `SELECT LEAST(
       (SELECT MIN(b.expires_at) FROM (SELECT expires_at FROM credit_batches
                                        WHERE account_id = $1 AND status = 'ACTIVE' AND COALESCE(expires_at, 'infinity') > $2 OFFSET 0) b),
       (SELECT MIN(expires_at) FROM reservations WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at > $2),
       (SELECT p.period_end FROM plan_subscriptions s JOIN accounts a ON a.id = s.account_id,
               LATERAL billing_period(a.billing_anchor_at, $2) p
         WHERE s.account_id = $1 AND s.active)
     ) AS next`,
    [accountId, clock],
  );
  return (rows[0]?.next as Date | null) ?? null;
}
