-- A PARTIAL refund of a payment's charge takes back the refunded share of its credit
-- (src/services/charge-reversal.ts takeRefundedShare).
--
-- Why: a partial refund (Stripe `charge.refunded` with 0 < amount_refunded < amount) was only
-- recorded and logged, because a grant is voided whole or not at all (one voided_at /
-- voided_micro_credits per grant, which balance_figures reads for the period's credit). A platform
-- that refunds "the unused part" of a pack left the customer both the money and the credit. Now
-- the share (floor(pack credits x refunded / amount)) less what earlier partial refunds took is
-- taken back, at most what remains unused, with the ledger's own operations: the grant carrying
-- the payment's credit is voided (VOID entry, its voided amount kept) and its rest less the share
-- is granted again as a new PAID grant (same source and expiry, key
-- `payment:<id>:refund:<refunded cents>`), in one transaction. The payment row records:
-- - refund_taken_micro_credits: what partial refunds took back in all (the next one takes its
--   cumulative share less this; only grows);
-- - live_grant_id: the grant that carries the payment's credit now, when not grant_id (the last
--   grant made again by a partial refund, or the give-back of a won dispute). A later partial or
--   full refund, a dispute or a won dispute acts on it; grant_id stays the pack's own grant (the
--   purchase's answer).
-- A constant default and a nullable column: no table rewrite.
ALTER TABLE "payments" ADD COLUMN "refund_taken_micro_credits" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "payments" ADD COLUMN "live_grant_id" UUID;

-- Only a refund takes a share.
ALTER TABLE "payments" ADD CONSTRAINT "payments_refund_taken" CHECK ("refund_taken_micro_credits" >= 0 AND ("refund_taken_micro_credits" = 0 OR "refunded_cents" > 0));
-- A payment's credit is carried by one grant, and a grant carries one payment's credit.
CREATE UNIQUE INDEX "payments_live_grant_id_key" ON "payments"("live_grant_id");
-- Only a SUCCEEDED payment (with its grant) has credit to carry.
ALTER TABLE "payments" ADD CONSTRAINT "payments_live_grant" CHECK ("live_grant_id" IS NULL OR "grant_id" IS NOT NULL);
