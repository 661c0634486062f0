-- The period's granted credit read from the period's grants and voids instead of every grant the
-- account ever had (issue #6, "fast history"). balance_figures runs on every balance change
-- (balances_changed: the snapshot, the alerts) and every balance read, and its `granted` term was
-- one pass over ALL the account's credit_grants: an account on auto top-up gets a grant per
-- top-up, thousands a year, and each charge read them all (~1 µs a row: 3,000 grants ≈ 3 ms of
-- PostgreSQL per charge, growing for ever). Now two index-bounded sums: grants created in
-- [period start, now] and voids dated in it. Same figure: the old pass summed exactly these rows
-- (SUM skips a void's NULL amount, as the CASE's NULL was skipped).
--
-- The grant limit of grantCredits (SUM of the period's grants, src/services/grant-credits.ts)
-- reads through the first index too; it read all the account's grants as well.
--
-- Built without CONCURRENTLY (README "Limits"): grants and voids wait while they build.

-- CreateIndex
CREATE INDEX "credit_grants_account_id_created_at_idx" ON "credit_grants"("account_id", "created_at");

-- Partial: few grants are ever voided. Not in schema.prisma (Prisma cannot say WHERE).
CREATE INDEX "credit_grants_voided_at" ON "credit_grants"("account_id", "voided_at") WHERE "voided_at" IS NOT NULL;

-- Unchanged but for the `granted` term (migration 20261216100000_period_credits_refund_rows).
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
    (COALESCE((SELECT total FROM opening), ledger_total_at(p_account, p_period_start))
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
