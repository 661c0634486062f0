/**
 * Opening the billing period of an account without a plan (README "Live updates", "Limits"). A
 * plan's period end is a balance change of its own (the plan's roll grants the new period,
 * plans.ts rollBillingPeriods). Without a plan nothing changes the balance at the period end:
 * `periodStart`, `periodEnd`, `periodCredits` and `percentRemaining` are figured at the reader's
 * now, so a query shows the new period while the live credit bar holds the last snapshot
 * published (the old period) under the same version, and the balance row's stored period
 * opening (`opening_period_start`, `opening_total_micro_credits`; migration
 * period_opening_total) names the old period, so every balance read of the new period sums the
 * account's ledger entries before its start.
 *
 * {@link openBillingPeriod} makes that moment a balance change with no money moved: a new
 * balance version dated at the account's now (AccountTx touch + finish), which writes the new
 * period's opening on the balance row and the balance snapshot to the outbox (published after
 * commit). The `sweep-due` job runs it for the accounts {@link findAccountsWithUnopenedPeriods}
 * finds, so the bar shows the new period within about SWEEP_EVERY_MS of its start; a test-mode
 * account's clock only moves with advanceTestClock, which runs it at every step (test-clock.ts).
 */
import type pg from 'pg';
import { withTransaction } from '../db/pg.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';

/**
 * Accounts without an active plan, not in test mode, whose balance row's stored period opening
 * is behind the billing period of their now, or was never written (rows older than migration
 * period_opening_total), at most `limit`: the oldest stored opening first (never written first;
 * ties by account id), so under a backlog larger than `limit` (the sweep's MAX_ACCOUNTS_PER_RUN)
 * the next call takes the rest. Plan accounts are the plan roll's (findAccountsWithDuePeriods); a
 * test-mode account's period moves with its clock, which advanceTestClock steps.
 *
 * "Behind" is read from balances.opening_period_end, the start of the period after the stored
 * opening's, kept by triggers (migration balances_opening_period_end): behind once `now` has
 * reached it. The account's now is the later of `now` and its last change (account-clock.ts
 * accountNowSql), but every change writes the opening of the period of its own instant
 * (AccountTx.finishMany), so opening_period_end lies after the last change and `now` decides.
 *
 * Cost: about what is due, not how many accounts there are (the sweep runs it every
 * SWEEP_EVERY_MS): a range of the index on opening_period_end, written `BETWEEN '-infinity' AND
 * $1` (always true below) because a generic plan, the ledger pool's, estimates a one-sided
 * `<= $1` at a third of the table and reads all of it, while a two-sided range is estimated
 * small; each row found is probed for a test-mode account (accounts_test_mode) and an active plan
 * (a plan account's opening is behind from its period end until its roll, seconds). Measured at
 * 200,000 accounts with none to open (EXPLAIN ANALYZE, generic plan): see the migration.
 * @param now the sweep's wall clock
 * @returns account ids (uuids)
 */
export async function findAccountsWithUnopenedPeriods(pool: pg.Pool, now: Date, limit: number): Promise<string[]> {
  const { rows } = await pool.query({
    name: 'cp-find-unopened-periods',
    text: `SELECT b.account_id FROM balances b
            WHERE b.opening_period_end BETWEEN '-infinity' AND $1::timestamptz
              AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = b.account_id AND a.test_mode)
              AND NOT EXISTS (SELECT 1 FROM plan_subscriptions s WHERE s.account_id = b.account_id AND s.active)
            ORDER BY b.opening_period_start NULLS FIRST, b.account_id
            LIMIT $2`,
    values: [now, limit],
  });
  return rows.map((r) => r.account_id as string);
}

/**
 * Opens the account's current billing period (module comment) in one transaction under the
 * account lock: when, re-checked under the lock, the account has no active plan and its balance
 * row's stored opening is for an earlier period than the one of its now (or was never written),
 * writes a new balance version with no ledger entry (the new period's opening, the balance
 * snapshot in the outbox, and what balances_changed does at every change: alerts, an auto
 * top-up when the new period allows one). Idempotent: once opened (by this, or by any change of
 * the account in the new period, e.g. a charge that took the lock first) it does nothing, and
 * writes no version.
 * @returns whether a version was written.
 * @throws LedgerError NOT_FOUND for an unknown account.
 */
export async function openBillingPeriod(ctx: ServiceContext, accountId: string): Promise<{ opened: boolean }> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const { rows } = await tx.query(
      `SELECT b.opening_period_start, EXISTS (SELECT 1 FROM plan_subscriptions s WHERE s.account_id = b.account_id AND s.active) AS planned
         FROM balances b WHERE b.account_id = $1`,
      [accountId],
    );
    const opening = rows[0]!.opening_period_start as Date | null;
    // An active plan's period is rolled (and opened) by its own roll, with the period's grant.
    if (rows[0]!.planned === true) return { opened: false };
    if (opening !== null && opening.getTime() >= atx.period().start.getTime()) return { opened: false };
    atx.touch();
    await atx.finish();
    return { opened: true };
  });
}
