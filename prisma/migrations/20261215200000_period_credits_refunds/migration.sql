-- Hand-written (Prisma's schema cannot state a partial index): balance_figures' `granted` (the
-- part of periodCredits added during the billing period) counts what refunds in the period gave
-- back into batches for usage charged before the period started.
--
-- Why: periodCredits is the total at the period start plus the period's grants, less what voids
-- in it took back (migration period_credits_voids). A refund of usage charged in an earlier period
-- brings back credit the period's opening never had, yet it was not counted, while a void counts
-- everything it takes back. So 5 of a mistaken grant of 100 left at the start (with 100 bought),
-- 95 of its usage refunded, then the grant voided: the base fell from 105 to 5 with 100
-- available, so the bar read 100 % until less than 5 was left and raised neither the 25 % nor the
-- 15 % alert (README "Plans and billing cycles", the known gap written down on 2026-12-07). The
-- same refund without a void measured the period against too small a base (150 bought, 50 spent
-- last period and refunded in this one, 120 spent: 30 left read 30 % of 100, not 20 % of 150). Now such a refund counts as the period's credit, as a grant does; a refund of
-- usage charged in the period only undoes its charge (its cost was taken from the period's credit)
-- and adds nothing. Debt a refund forgives (REFUND entries without a batch) is not counted: it
-- raised the total from below zero, like a grant's repayment of debt, which is in `granted` by the
-- grant's amount. Which period a usage event was charged in is decided by its recorded_at against
-- the period start of the moment the figures are computed, so a plan subscription that moved the
-- billing anchor between the charge and its refund counts the refund as new credit of the new
-- anchor's period (the charge is in that period's opening total).
--
-- Cost: one probe of a partial index that holds REFUND entries into batches only (usually none
-- for the account). Writes of other entries pay the predicate only.
CREATE INDEX "ledger_entries_batch_refunds" ON "ledger_entries" ("account_id", "created_at")
  WHERE "type" = 'REFUND' AND "batch_id" IS NOT NULL;

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
    -- One pass over the account's grants: granted in the period, less taken back by voids in it,
    ((SELECT COALESCE(SUM(CASE WHEN created_at >= p_period_start AND created_at <= p_now THEN amount_micro_credits ELSE 0 END), 0)
          - COALESCE(SUM(CASE WHEN voided_at >= p_period_start AND voided_at <= p_now THEN voided_micro_credits ELSE 0 END), 0)
       FROM credit_grants WHERE account_id = p_account)
      -- Credit refunds in the period gave back into batches for usage charged before it: new
      -- credit of this period, as a grant's (migration period_credits_refunds).
      + (SELECT COALESCE(SUM(l.amount_micro_credits), 0) FROM ledger_entries l
           JOIN usage_events e ON e.id = l.usage_event_id
          WHERE l.account_id = p_account AND l.type = 'REFUND' AND l.batch_id IS NOT NULL
            AND l.created_at >= p_period_start AND l.created_at <= p_now
            AND e.recorded_at < p_period_start))::bigint
$$;
