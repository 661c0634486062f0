/**
 * Test clocks (contract: advanceTestClock; Stripe's test clocks are the model:
 * https://docs.stripe.com/billing/testing/test-clocks). A test-mode account runs on its own
 * clock; every rule reads "now" from it (AccountTx.now), so production and test clocks share
 * one code path. Advancing moves the clock from due instant to due instant up to `to` and, at
 * each, runs in this order what is due: batch and hold expiries, the plan's period roll (RESET /
 * ROLLOVER, the new period's grant), then pending auto top-ups. Alerts are raised by the balance
 * changes themselves (balances_changed). Returns when everything due up to `to` is done.
 */
import { LedgerError, badInput } from '../ledger/errors.js';
import type { ServiceContext } from './context.js';
import { expireDue } from './expire-due.js';
import { rollBillingPeriods } from './plans.js';
import { runPendingTopUps } from './auto-top-up.js';

/** Most due instants one call walks through (a guard against a runaway loop). */
const MAX_STEPS = 10_000;

/**
 * Advances the account's test clock to `to`, running everything due on the way (module comment).
 * @returns the number of instants stepped through.
 * @throws LedgerError NOT_FOUND (account), BAD_USER_INPUT (not a test-mode account, or `to`
 *   before the clock: test clocks only move forward).
 */
export async function advanceTestClock(ctx: ServiceContext, accountId: string, to: Date): Promise<{ steps: number }> {
  const { rows } = await ctx.pool.query('SELECT test_mode, test_clock_at FROM accounts WHERE id = $1', [accountId]);
  const account = rows[0];
  if (!account) throw new LedgerError('NOT_FOUND', 'account not found');
  if (!account.test_mode || !account.test_clock_at) throw badInput('accountId', 'only a test-mode account has a test clock');
  if (Number.isNaN(to.getTime())) throw badInput('to', 'must be a valid instant');
  if (to.getTime() < (account.test_clock_at as Date).getTime()) throw badInput('to', 'a test clock only moves forward');
  let clock = account.test_clock_at as Date;
  for (let steps = 1; steps <= MAX_STEPS; steps++) {
    const next = await nextDueAfter(ctx, accountId, clock);
    const at = next && next.getTime() <= to.getTime() ? next : to;
    await ctx.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1 AND test_clock_at <= $2', [accountId, at]);
    clock = at;
    await expireDue(ctx, accountId);
    await rollBillingPeriods(ctx, accountId);
    await runPendingTopUps(ctx, accountId);
    if (at.getTime() === to.getTime()) return { steps };
  }
  throw new LedgerError('UNAVAILABLE', `more than ${MAX_STEPS} due instants before ${to.toISOString()}; advance in smaller steps`);
}

/** The first instant after `clock` at which something is due on the account, or null. */
async function nextDueAfter(ctx: ServiceContext, accountId: string, clock: Date): Promise<Date | null> {
  const { rows } = await ctx.pool.query(
    `SELECT LEAST(
       (SELECT MIN(expires_at) FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at > $2),
       (SELECT MIN(expires_at) FROM reservations WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at > $2),
       (SELECT p.period_end FROM plan_subscriptions s JOIN accounts a ON a.id = s.account_id,
               LATERAL billing_period(a.billing_anchor_at, $2) p
         WHERE s.account_id = $1 AND s.active)
     ) AS next`,
    [accountId, clock],
  );
  return (rows[0]?.next as Date | null) ?? null;
}
