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
import { accountNowSql } from './account-clock.js';
import type { ServiceContext } from './context.js';

/**
 * Shortest billing period there is, in days: a calendar month from the anchor, clamped to a
 * shorter month's end (ledger/billing-period.ts), is never under 28 days (Jan 31 -> Feb 28). A
 * stored opening of a period that has ended therefore lies at least this long before now, which
 * lets the finder skip, with a plain comparison, every balance row whose period started since.
 */
const SHORTEST_PERIOD_DAYS = 28;

/**
 * Accounts without an active plan, not in test mode, whose balance row's stored period opening
 * is behind the billing period of their now (accountNowSql's rule: the later of `now` and their
 * last change), or was never written (rows older than migration period_opening_total), at most
 * `limit`: the oldest stored opening first (never written first; ties by account id), so under a
 * backlog larger than `limit` (the sweep's MAX_ACCOUNTS_PER_RUN) the next call takes the rest.
 * Plan accounts are the plan roll's (findAccountsWithDuePeriods); a test-mode account's period
 * moves with its clock, which advanceTestClock steps.
 *
 * Cost: a scan of `balances` and `accounts` (no index is needed: the billing period is only
 * figured for rows whose stored opening lies at least SHORTEST_PERIOD_DAYS back, about a tenth of
 * them once every account is opened). `EXPLAIN ANALYZE` on 100,000 accounts (README "Limits"):
 * ~70-110 ms once all are opened, ~350 ms with 60,000 of them behind.
 * @param now the sweep's wall clock
 * @returns account ids (uuids)
 */
export async function findAccountsWithUnopenedPeriods(pool: pg.Pool, now: Date, limit: number): Promise<string[]> {
  const { rows } = await pool.query({
    name: 'cp-find-unopened-periods',
    text: `SELECT b.account_id FROM balances b JOIN accounts a ON a.id = b.account_id
            WHERE NOT a.test_mode
              AND (b.opening_period_start IS NULL
                   OR (b.opening_period_start <= $1::timestamptz - make_interval(days => ${SHORTEST_PERIOD_DAYS})
                       AND b.opening_period_start < (SELECT p.period_start FROM billing_period(a.billing_anchor_at, ${accountNowSql('a', 'b', '$1')}) p)))
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
