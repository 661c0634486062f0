-- What voidGrant took back, kept on the grant (voided_micro_credits), and balance_figures'
-- `granted` (the part of periodCredits added during the period) net of what was taken back
-- during the period.
--
-- Why: periodCredits (the base of percentRemaining and so of the credit alerts) was the total at
-- the period start plus every grant of the period, voided or not. A voided grant's rest leaves
-- `available` (a VOID entry) but stayed in periodCredits: 100 purchased and a mistaken grant of
-- 1,000 voided at once read as 99 of 1,100 (9 %) after a 1-credit charge and raised the period's
-- 25 % and 15 % alerts with 99 % of the real credit left, using them up for the period; a grant of
-- an earlier period voided in this one stayed in the period's opening the same way
-- (test/integration/credit-alerts.test.ts). Now what grants voided in [period start, now] took back
-- is subtracted: the period's credit is what it started with and was granted, less what was taken
-- back. What of a voided grant was spent before the void stays part of the period.
--
-- The amount is kept on the grant (written by voidGrant before its VOID entry) because the alerts
-- are checked in the statement that writes that entry (AccountTx.finish), which cannot see it.
ALTER TABLE "credit_grants" ADD COLUMN "voided_micro_credits" BIGINT;

-- Grants voided before: their VOID entries (one per grant, on its batch; 0 when nothing was left).
UPDATE credit_grants g SET voided_micro_credits = COALESCE((
  SELECT -SUM(l.amount_micro_credits) FROM credit_batches b
    JOIN ledger_entries l ON l.account_id = g.account_id AND l.batch_id = b.id AND l.type = 'VOID'
   WHERE b.grant_id = g.id), 0)
 WHERE g.voided_at IS NOT NULL;

-- Unchanged but for `granted` (migration 20261207010000_period_opening_due_expiries).
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
    -- One pass over the account's grants: granted in the period, less taken back by voids in it.
    (SELECT COALESCE(SUM(CASE WHEN created_at >= p_period_start AND created_at <= p_now THEN amount_micro_credits ELSE 0 END), 0)
          - COALESCE(SUM(CASE WHEN voided_at >= p_period_start AND voided_at <= p_now THEN voided_micro_credits ELSE 0 END), 0)
       FROM credit_grants WHERE account_id = p_account)::bigint
$$;
