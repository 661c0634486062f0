-- Hand-written in part (the backfill, the function): what usage refunds gave back into batches,
-- kept in its own table (refund_credits) by when that credit had left the batches, and
-- balance_figures' `granted` reading it instead of the REFUND ledger entries.
--
-- Why (test/integration/period-credit-refunds-audit.test.ts), two faults of migration
-- period_credits_refunds, which counted a refund's REFUND entries into batches for an event
-- recorded before the period start:
-- 1. The live snapshot and the alerts missed the refund. balance_figures read the REFUND entries,
--    which AccountTx.finish writes in the same statement that writes the outbox snapshot and
--    checks the alerts (balances_changed), and that statement cannot see them: 150 bought, 50
--    spent last period and refunded in this one read 150 of 150 by query and 150 of 100 in the
--    balanceChanged snapshot of the same version (README: "a live credit bar and a query can never
--    disagree"). Voids avoid this by keeping their amount on the grant before the VOID entry's
--    statement (migration period_credits_voids); refundUsage now writes these rows before it too.
-- 2. Debt of the event that a grant of THIS period repaid, given back into that grant's batch,
--    was counted although the grant is already in `granted` by its whole amount (the repayment
--    included): 20 paid, 30 charged (10 of debt), a grant of 100 in the next period (90 of 100),
--    then the refund (20 + 10 back): 120 of 130 (92 %) with nothing spent in the period, while
--    refund-then-grant gives 120 of 120. Credit a refund gives back is the period's new credit when
--    it LEFT the batches before the period start: drawn credit at the event's recorded_at, repaid
--    debt at its repayment (the repaying grant's DEBT_REPAY entry).
CREATE TABLE "refund_credits" (
    "usage_event_id" UUID NOT NULL,
    "left_at" TIMESTAMPTZ(3) NOT NULL,
    "account_id" UUID NOT NULL,
    "refunded_at" TIMESTAMPTZ(3) NOT NULL,
    "amount_micro_credits" BIGINT NOT NULL,

    CONSTRAINT "refund_credits_pkey" PRIMARY KEY ("usage_event_id","left_at")
);

CREATE INDEX "refund_credits_account_id_refunded_at_idx" ON "refund_credits"("account_id", "refunded_at");

ALTER TABLE "refund_credits" ADD CONSTRAINT "refund_credits_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "refund_credits" ADD CONSTRAINT "refund_credits_usage_event_id_fkey" FOREIGN KEY ("usage_event_id") REFERENCES "usage_events"("id") ON DELETE CASCADE ON UPDATE CASCADE;

ALTER TABLE "refund_credits" ADD CONSTRAINT "refund_credits_amount_positive" CHECK ("amount_micro_credits" > 0);

-- Refunds made before: their REFUND entries into batches. Credit into a batch the event drew
-- from left at its recorded_at; into a batch that repaid debt (a DEBT_REPAY entry, one per
-- grant, when it was made) at that repayment; else (a payment's live grant given the credit
-- drawn from the payment's earlier grant) at its recorded_at.
INSERT INTO "refund_credits" ("usage_event_id", "left_at", "account_id", "refunded_at", "amount_micro_credits")
SELECT l.usage_event_id, x.left_at, l.account_id, MIN(l.created_at), SUM(l.amount_micro_credits)
  FROM ledger_entries l
  JOIN usage_events e ON e.id = l.usage_event_id
  CROSS JOIN LATERAL (SELECT CASE
      WHEN EXISTS (SELECT 1 FROM drawdowns d WHERE d.usage_event_id = e.id AND d.batch_id = l.batch_id) THEN e.recorded_at
      ELSE COALESCE((SELECT MIN(r.created_at) FROM ledger_entries r
                      WHERE r.account_id = l.account_id AND r.type = 'DEBT_REPAY' AND r.batch_id = l.batch_id), e.recorded_at)
    END AS left_at) x
 WHERE l.type = 'REFUND' AND l.batch_id IS NOT NULL AND l.amount_micro_credits > 0
 GROUP BY l.usage_event_id, x.left_at, l.account_id;

-- No longer read (balance_figures reads refund_credits).
DROP INDEX "ledger_entries_batch_refunds";

-- Unchanged but for the last term of `granted` (migration 20261215200000_period_credits_refunds).
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
      -- Credit refunds in the period gave back into batches that had left them before it: new
      -- credit of this period, as a grant's (refund_credits, written before the REFUND entries'
      -- statement, so that statement's snapshot and alerts count it).
      + (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM refund_credits
          WHERE account_id = p_account AND refunded_at >= p_period_start AND refunded_at <= p_now
            AND left_at < p_period_start))::bigint
$$;
