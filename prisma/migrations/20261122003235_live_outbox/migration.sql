-- CreateTable
CREATE TABLE "outbox_events" (
    "id" BIGSERIAL NOT NULL,
    "account_id" UUID NOT NULL,
    "topic" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "outbox_events_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "credit_alerts" (
    "id" UUID NOT NULL,
    "account_id" UUID NOT NULL,
    "threshold" INTEGER NOT NULL,
    "percent_remaining" DOUBLE PRECISION NOT NULL,
    "available_micro_credits" BIGINT NOT NULL,
    "period_start" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "credit_alerts_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "credit_alerts_account_id_created_at_idx" ON "credit_alerts"("account_id", "created_at");

-- CreateIndex
CREATE UNIQUE INDEX "credit_alerts_account_id_period_start_threshold_key" ON "credit_alerts"("account_id", "period_start", "threshold");

-- CreateIndex
CREATE INDEX "ledger_entries_account_id_created_at_seq_idx" ON "ledger_entries"("account_id", "created_at", "seq");

-- AddForeignKey
ALTER TABLE "credit_alerts" ADD CONSTRAINT "credit_alerts_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- Hand-written: invariants the database enforces.
ALTER TABLE "outbox_events" ADD CONSTRAINT "outbox_events_topic_check" CHECK ("topic" IN ('balance', 'usage', 'alert'));
ALTER TABLE "credit_alerts" ADD CONSTRAINT "credit_alerts_threshold_check" CHECK ("threshold" BETWEEN 0 AND 100);
ALTER TABLE "credit_alerts" ADD CONSTRAINT "credit_alerts_percent_check" CHECK ("percent_remaining" BETWEEN 0 AND 100);

-- Hand-written: the figures of the contract's Balance that come from batches, holds, grants and
-- the ledger, in ONE definition shared by readBalance and by the balance snapshot that every
-- money-moving transaction writes to the outbox (src/services/balance-figures.ts).
--   free / paid       remaining credit of ACTIVE batches not past expires_at, by type
--   reserved          amount - consumed (floored at 0) of ACTIVE holds not past expires_at
--   next_at/_amount   the soonest expiry among those batches and the credit expiring then
--   total_at_start    the account total after the last ledger entry before the period start
--   granted           credit granted during the period (up to p_now)
CREATE FUNCTION "balance_figures"(p_account uuid, p_now timestamptz, p_period_start timestamptz)
RETURNS TABLE (free bigint, paid bigint, reserved bigint, next_at timestamptz, next_amount bigint, total_at_start bigint, granted bigint)
LANGUAGE sql STABLE AS $$
  WITH spendable AS (
    SELECT type, remaining_micro_credits AS remaining, expires_at FROM credit_batches
     WHERE account_id = p_account AND status = 'ACTIVE' AND (expires_at IS NULL OR expires_at > p_now)
  ), next_exp AS (
    SELECT MIN(expires_at) AS at FROM spendable WHERE expires_at IS NOT NULL
  )
  SELECT
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'FREE')::bigint,
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'PAID')::bigint,
    (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) FROM reservations
      WHERE account_id = p_account AND status = 'ACTIVE' AND expires_at > p_now)::bigint,
    (SELECT at FROM next_exp),
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable, next_exp WHERE spendable.expires_at = next_exp.at)::bigint,
    (SELECT balance_after_micro_credits FROM ledger_entries
      WHERE account_id = p_account AND created_at < p_period_start ORDER BY created_at DESC, seq DESC LIMIT 1),
    (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM credit_grants
      WHERE account_id = p_account AND created_at >= p_period_start AND created_at <= p_now)::bigint
$$;
