/**
 * Expiry of what is due on an account, at the account's "now" (its test clock or the wall
 * clock): batches past expiresAt lose their remaining credit (EXPIRE ledger entry dated at the
 * batch's expiresAt, status EXPIRED), holds past expiresAt release their unused rest (RELEASE
 * entry, status EXPIRED). One transaction per account; the balance version moves once and the
 * change is published like any other. Running it again finds nothing due: an expiry can happen
 * only once (the rows are ACTIVE only until this transaction marks them).
 *
 * A delayed `expire-due` job is scheduled (through the outbox) for every batch and hold with an
 * expiry, and the `sweep-due` maintenance job finds anything those jobs missed.
 */
import type pg from 'pg';
import { withTransaction, toBigInt } from '../db/pg.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import { closeReservation } from './reservation-tx.js';
// A cycle (plans.ts applies expiries from here): used only when a job runs, never at module evaluation.
import { rollDuePeriodsFirst } from './plans.js';

/** What one expiry pass removed. */
export interface ExpiryResult {
  batches: number;
  expiredMicroCredits: bigint;
  holds: number;
}

/**
 * Queues (in `atx`'s outbox) a delayed `expire-due` job for the account at `at`; `what` and `id`
 * make its jobId unique (a moved expiry gets a new job; the old one then finds nothing due).
 */
export function scheduleExpiry(atx: AccountTx, what: 'batch' | 'hold', id: string, at: Date): void {
  atx.publish('job', { name: 'expire-due', jobId: `expire-due-${what}-${id}-${at.getTime()}`, data: { accountId: atx.accountId }, runAt: at.toISOString() });
}

/**
 * Expires, inside the locked account transaction, every ACTIVE batch and hold whose expiresAt is
 * at or before `atx.now` (a batch pays only while now < expiresAt). Entries are recorded on
 * `atx`; the caller calls `atx.finish()`.
 * With `batchesUpTo` (an instant before now), only the batches whose expiresAt is at or before it
 * and no holds: a late plan roll steps through the period starts it missed, each with what had
 * expired by then (plans.ts rollDuePeriods).
 */
export async function applyExpiries(atx: AccountTx, batchesUpTo?: Date): Promise<ExpiryResult> {
  const { rows: batches } = await atx.tx.query(
    // COALESCE (the same rows: a batch without an expiry never expires) keeps the planner on the
    // account's (account_id, status) index: `expires_at <= $3` alone also matches the sweep's
    // partial index of every account's expiring batches (credit_batches_active_expiry), which a
    // generic plan took when the statistics counted that index small, and then read every
    // account's due or expiring batches (120,040 index entries for one account's roll in
    // test/integration/history-growth-audit.test.ts, with another transaction's 20,000 accounts
    // in flight).
    `WITH due AS (
       SELECT id, remaining_micro_credits AS remaining, expires_at FROM credit_batches
        WHERE account_id = $1 AND status = 'ACTIVE' AND COALESCE(expires_at, 'infinity') <= $3
        FOR UPDATE
     )
     UPDATE credit_batches b SET status = 'EXPIRED', remaining_micro_credits = 0, updated_at = $2
       FROM due WHERE b.id = due.id
     RETURNING b.id, due.remaining, due.expires_at`,
    [atx.accountId, atx.now, batchesUpTo && batchesUpTo.getTime() < atx.now.getTime() ? batchesUpTo : atx.now],
  );
  batches.sort((x, y) => (x.expires_at as Date).getTime() - (y.expires_at as Date).getTime() || String(x.id).localeCompare(String(y.id)));
  let expired = 0n;
  for (const b of batches) {
    const remaining = toBigInt(b.remaining);
    expired += remaining;
    if (remaining > 0n) atx.addEntry({ type: 'EXPIRE', amountMicroCredits: -remaining, batchId: b.id as string, note: 'expired', at: b.expires_at as Date });
    else atx.touch();
  }
  if (batchesUpTo && batchesUpTo.getTime() < atx.now.getTime()) return { batches: batches.length, expiredMicroCredits: expired, holds: 0 };
  const { rows: holds } = await atx.tx.query(
    `SELECT id FROM reservations WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at <= $2 ORDER BY expires_at, id FOR UPDATE`,
    [atx.accountId, atx.now],
  );
  for (const h of holds) {
    await closeReservation({ atx, id: h.id as string, amountMicroCredits: 0n, consumedMicroCredits: 0n, status: 'ACTIVE', expiresAt: atx.now, holding: false }, 'EXPIRED', 'hold expired');
  }
  return { batches: batches.length, expiredMicroCredits: expired, holds: holds.length };
}

/**
 * Expires what is due on one account in one transaction, after the account's plan roll when one
 * is due and has not run yet (the job's, dated as on time).
 * @returns counts (JSON-safe: the amount as a decimal string of micro-credits) of what expired
 *   after that roll (the roll's own expiries are not counted).
 * @throws LedgerError NOT_FOUND for an unknown account.
 */
export async function expireDue(ctx: ServiceContext, accountId: string): Promise<{ batches: number; holds: number; expiredMicroCredits: string }> {
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    // A due plan roll first (plans.ts rollDuePeriodsFirst; it applies the expiries due by each
    // period start it rolls, and those of now): an expiry is a balance change, whose alert check
    // (balances_changed) read the new period's credit without its allowance and raised alerts the
    // on-time account never had (reset-roll-audit.test.ts). What the roll expired is not counted.
    await rollDuePeriodsFirst(atx);
    const r = await applyExpiries(atx);
    await atx.finish();
    return { batches: r.batches, holds: r.holds, expiredMicroCredits: r.expiredMicroCredits.toString() };
  });
}

/**
 * Accounts with an ACTIVE batch or hold past its expiresAt by the account's own clock (test
 * clock for test-mode accounts, else `now`), at most `limit`, the account whose earliest due
 * expiresAt is oldest first (ties by id): under a backlog larger than `limit` (the sweep's
 * MAX_ACCOUNTS_PER_RUN) the accounts that have waited longest are taken, and the next call finds
 * the rest, instead of whichever rows the plan met first. (A test-mode account's expiresAt is on
 * its own clock, so it is ordered by that instant among the others.)
 *
 * Cost: about what is due, not what exists (the sweep runs it every SWEEP_EVERY_MS). The other
 * accounts' due batches come by the partial index credit_batches_active_expiry (expires_at)
 * WHERE ACTIVE, their due holds by reservations_active_by_account, each due row's account told
 * from a test-mode one by a probe of the partial index accounts_test_mode (an anti-join, so no
 * pass over accounts); a test-mode account's rows are due by its own clock, which no expiry index
 * can bound, so those branches start from the test-mode accounts (accounts_test_mode) and read
 * each one's live batches and holds (OFFSET 0 keeps each a per-account index probe). Sorting is
 * over the due rows only. Measured at 200,000 accounts each with an ACTIVE batch expiring within
 * 30 days, 300 of them in test mode, nothing due (EXPLAIN ANALYZE, generic plan; migration
 * sweep_test_mode_accounts): 1.3 ms and 604 account rows read, where joining `accounts` to
 * filter `NOT test_mode` read all 200,000 (23-115 ms).
 * @param now the sweep's wall clock.
 * @returns account ids (uuids).
 */
export async function findAccountsWithDueExpiries(pool: pg.Pool, now: Date, limit: number): Promise<string[]> {
  const { rows } = await pool.query(
    `SELECT account_id FROM (
       SELECT b.account_id, b.expires_at FROM credit_batches b
        WHERE b.status = 'ACTIVE' AND b.expires_at <= $1
          AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = b.account_id AND a.test_mode)
       UNION ALL
       SELECT r.account_id, r.expires_at FROM reservations r
        WHERE r.status = 'ACTIVE' AND r.expires_at <= $1
          AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = r.account_id AND a.test_mode)
       UNION ALL
       SELECT a.id, b.expires_at FROM accounts a
        CROSS JOIN LATERAL (SELECT b.expires_at FROM credit_batches b
                             WHERE b.account_id = a.id AND b.status = 'ACTIVE' AND b.expires_at <= a.test_clock_at OFFSET 0) b
        WHERE a.test_mode
       UNION ALL
       SELECT a.id, r.expires_at FROM accounts a
        CROSS JOIN LATERAL (SELECT r.expires_at FROM reservations r
                             WHERE r.account_id = a.id AND r.status = 'ACTIVE' AND r.expires_at <= a.test_clock_at OFFSET 0) r
        WHERE a.test_mode
     ) due GROUP BY account_id ORDER BY min(expires_at), account_id LIMIT $2`,
    [now, limit],
  );
  return rows.map((r) => r.account_id as string);
}
