-- Hand-written: balance_figures' total at the period start, when the balance row does not hold
-- it yet, from the account's total and the entries dated from the start on, not from a SUM of
-- the account's whole ledger.
--
-- Why (test/integration/history-growth-audit.test.ts, issue #6 "fast history"): the balance row
-- keeps the period's opening total (migration period_opening_total), set by the account's first
-- change in the period: a charge or an expiry, else the sweep-due job's opening (every
-- SWEEP_EVERY_MS, 30 s by default, at most 5,000 accounts a run, README "Live updates") or a
-- plan's roll job; for a test-mode account advanceTestClock. So normally for seconds after each
-- period boundary, and for as long as the workers are down or behind (or more accounts are due
-- at once than a sweep run opens). Until that change, balance_figures fell back to
-- ledger_total_at, which reads every ledger entry of the account dated before the start: with a
-- year of history (25,000 entries) every Balance read (Account.balance, the balanceChanged
-- subscription's first value, quoteUsage, the auto top-up job) and every refusal for lack of
-- credit (the depletion notice's and the refusal top-up's readBalance) read 25,015 ledger rows
-- against 15 for a new account. Measured there (medians of 200, generic plans): ledger_total_at
-- 7.4-7.9 ms (10,480 buffers), readBalance 10.7-11.5 ms; with ledger_opening_at 0.32-0.37 ms
-- (11 buffers) and 3.3-3.7 ms (the rest is balance_figures' grants term), 2 ledger rows read;
-- the same figures.
--
-- ledger_opening_at gives the same figure the way AccountTx.finishMany computes the stored
-- opening at that first change (ledger_opening_from_total): the balance row's total (the SUM of
-- all its total-changing entries: the ledger invariant reconcileAccount checks) less the entries
-- dated after the start and the non-EXPIRE ones dated at it: for a period whose first change has
-- not happened yet, next to none. NULL exactly when ledger_total_at is NULL (no total-changing
-- entry before the start and no EXPIRE at it: an index probe each, the first stops at the
-- account's first entry). ledger_total_at itself is unchanged: reconcile uses it as the
-- definition to check the stored opening against.
--
-- The same definition of balance_figures carries the `granted` term of migration
-- 20261218090000_grants_period_indexes (the period's grants and voids through its two indexes,
-- not one pass over every grant of the account); otherwise it is exactly as migration
-- 20261216100000_period_credits_refund_rows left it. A migration that redefines it again must
-- keep both terms.
CREATE FUNCTION "ledger_opening_at"(p_account uuid, p_start timestamptz)
RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN EXISTS (SELECT 1 FROM ledger_entries
                  WHERE account_id = p_account AND created_at < p_start AND type NOT IN ('RESERVE', 'RELEASE'))
      OR EXISTS (SELECT 1 FROM ledger_entries
                  WHERE account_id = p_account AND created_at = p_start AND type = 'EXPIRE')
    THEN ledger_opening_from_total(p_account, p_start, (SELECT total_micro_credits FROM balances WHERE account_id = p_account))
  END
$$;

CREATE OR REPLACE FUNCTION "balance_figures"(p_account uuid, p_now timestamptz, p_period_start timestamptz)
RETURNS TABLE (free bigint, paid bigint, reserved bigint, next_at timestamptz, next_amount bigint, total_at_start bigint, granted bigint)
LANGUAGE sql STABLE AS $$
  WITH active AS (
    SELECT type, remaining_micro_credits AS remaining, expires_at FROM credit_batches
     WHERE account_id = p_account AND status = 'ACTIVE'
  ), spendable AS (
    SELECT * FROM active WHERE expires_at IS NULL OR expires_at > p_now
  ), next_exp AS (
    SELECT MIN(expires_at) AS at FROM spendable WHERE expires_at IS NOT NULL
  ), opening AS (
    SELECT opening_total_micro_credits AS total FROM balances
     WHERE account_id = p_account AND opening_period_start = p_period_start
  )
  SELECT
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'FREE')::bigint,
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'PAID')::bigint,
    (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) FROM reservations
      WHERE account_id = p_account AND status = 'ACTIVE' AND expires_at > p_now)::bigint,
    (SELECT at FROM next_exp),
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable, next_exp WHERE spendable.expires_at = next_exp.at)::bigint,
    (COALESCE((SELECT total FROM opening), ledger_opening_at(p_account, p_period_start))
      -- expired at or before the start, EXPIRE not recorded yet (migration period_opening_due_expiries)
      - (SELECT COALESCE(SUM(remaining), 0) FROM active WHERE expires_at <= p_period_start))::bigint,
    -- Granted in the period (credit_grants_account_id_created_at_idx), less taken back by voids
    -- in it, of grants made in it or before (credit_grants_voided_at, partial): each read bounded
    -- by the period, not by the account's history of grants,
    ((SELECT COALESCE(SUM(amount_micro_credits), 0) FROM credit_grants
        WHERE account_id = p_account AND created_at >= p_period_start AND created_at <= p_now)
      - (SELECT COALESCE(SUM(voided_micro_credits), 0) FROM credit_grants
          WHERE account_id = p_account AND voided_at >= p_period_start AND voided_at <= p_now)
      -- Credit refunds in the period gave back into batches that had left them before it: new
      -- credit of this period, as a grant's (refund_credits, written before the REFUND entries'
      -- statement, so that statement's snapshot and alerts count it).
      + (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM refund_credits
          WHERE account_id = p_account AND refunded_at >= p_period_start AND refunded_at <= p_now
            AND left_at < p_period_start))::bigint
$$;
