-- A dispute the platform WINS gives back the credit the dispute took (src/services/charge-reversal.ts
-- applyDisputeWonLocked).
--
-- Why: a dispute (charge.dispute.created) voids the unused credit of its payment's grant, and the
-- money comes back to the platform when Stripe closes the dispute as won (charge.dispute.closed
-- with status `won`, charge.dispute.funds_reinstated); the credit stayed voided, so the customer
-- paid and kept nothing. Now the won dispute grants back what the dispute voided (the original
-- grant's voided_micro_credits) as a new PAID grant, once, unless the payment was also refunded in
-- full (the money went back to the customer anyway). The payment row records it:
-- - dispute_won_at: when the won dispute was applied (once; redelivered events change nothing);
-- - dispute_won_grant_id: the grant that gave the credit back (NULL when nothing was given back:
--   refunded in full, nothing was voided, or the original credit's expiry has passed). A later
--   full refund voids that grant too.
-- And what the reversal (the full refund or the dispute that set reversed_at) took back of the
-- grant, in micro-credits, kept on the payment: the grant's voided_micro_credits may be an
-- operator's earlier voidGrant (then the dispute took nothing), and a won dispute gives back exactly
-- what the dispute took. Rows reversed before this migration: the grant's void when it was made by
-- the reversal's own transaction (same timestamp), else 0.
-- Nullable column: no table rewrite; the backfill touches reversed payments only.
-- A won dispute that comes before its payment is settled is kept in early_payment_reversals
-- (kind `dispute_won`) and applied by the settlement, as refunds and disputes are.
-- Nullable columns: no table rewrite.
ALTER TABLE "payments" ADD COLUMN "dispute_won_at" TIMESTAMPTZ(3);
ALTER TABLE "payments" ADD COLUMN "dispute_won_grant_id" UUID;
ALTER TABLE "payments" ADD COLUMN "reversed_micro_credits" BIGINT;

UPDATE "payments" p SET "reversed_micro_credits" = CASE WHEN g."voided_at" = p."reversed_at" THEN COALESCE(g."voided_micro_credits", 0) ELSE 0 END
  FROM "credit_grants" g WHERE g."id" = p."grant_id" AND p."reversed_at" IS NOT NULL;
ALTER TABLE "payments" ADD CONSTRAINT "payments_reversed_micro_credits" CHECK (("reversed_at" IS NULL) = ("reversed_micro_credits" IS NULL) AND ("reversed_micro_credits" IS NULL OR "reversed_micro_credits" >= 0));

CREATE UNIQUE INDEX "payments_dispute_won_grant_id_key" ON "payments"("dispute_won_grant_id");

-- A dispute is won only once it was applied, and applying it took the grant back (reversed_at).
ALTER TABLE "payments" ADD CONSTRAINT "payments_dispute_won" CHECK ("dispute_won_at" IS NULL OR ("disputed_at" IS NOT NULL AND "reversed_at" IS NOT NULL));
-- The credit is given back only by a won dispute.
ALTER TABLE "payments" ADD CONSTRAINT "payments_dispute_won_grant" CHECK ("dispute_won_grant_id" IS NULL OR "dispute_won_at" IS NOT NULL);

-- A won dispute kept before its payment is settled: kind `dispute_won`, shaped like a dispute.
ALTER TABLE "early_payment_reversals" DROP CONSTRAINT "early_payment_reversals_kind";
ALTER TABLE "early_payment_reversals" ADD CONSTRAINT "early_payment_reversals_kind" CHECK ("kind" IN ('refund', 'dispute', 'dispute_won'));
ALTER TABLE "early_payment_reversals" DROP CONSTRAINT "early_payment_reversals_refund";
ALTER TABLE "early_payment_reversals" ADD CONSTRAINT "early_payment_reversals_refund" CHECK (
  ("kind" = 'refund' AND "refunded_cents" > 0 AND "refunded_cents" <= "amount_cents" AND "dispute_ref" IS NULL)
  OR ("kind" IN ('dispute', 'dispute_won') AND "refunded_cents" = 0 AND "dispute_ref" IS NOT NULL));
