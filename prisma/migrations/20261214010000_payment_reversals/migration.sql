-- What the payment provider later reported about a SUCCEEDED payment's charge: refunds and disputes.
--
-- Why: a pack's credit was granted when its charge succeeded and kept whatever happened to the
-- money afterwards; a charge refunded in the provider's dashboard or disputed by the card holder
-- (a chargeback) left money-backed credit with no money behind it. Now the provider's events
-- (Stripe `charge.refunded`, `charge.dispute.created`) take back what remains unused of the
-- payment's grant (src/services/payment-reversals.ts) and the payment row records what happened:
-- - refunded_cents: the charge's cumulative refunded amount (Stripe `amount_refunded`) as last
--   applied; it only grows (a redelivered or older event changes nothing), and a full refund is
--   refunded_cents = the payment's amount in cents; refunded_at: when it last grew;
-- - disputed_at / dispute_ref: when the first dispute was applied, and the provider's dispute id;
-- - reversed_at: when the grant's unused remainder was taken back (a full refund or a dispute).
-- Nullable columns and a constant default: no table rewrite.
ALTER TABLE "payments" ADD COLUMN "refunded_cents" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "payments" ADD COLUMN "refunded_at" TIMESTAMPTZ(3);
ALTER TABLE "payments" ADD COLUMN "disputed_at" TIMESTAMPTZ(3);
ALTER TABLE "payments" ADD COLUMN "dispute_ref" TEXT;
ALTER TABLE "payments" ADD COLUMN "reversed_at" TIMESTAMPTZ(3);

ALTER TABLE "payments" ADD CONSTRAINT "payments_refunded_cents" CHECK ("refunded_cents" >= 0 AND "refunded_cents" <= "amount_usd" * 100);
ALTER TABLE "payments" ADD CONSTRAINT "payments_refunded_at" CHECK (("refunded_cents" > 0) = ("refunded_at" IS NOT NULL));
ALTER TABLE "payments" ADD CONSTRAINT "payments_disputed" CHECK (("disputed_at" IS NULL) = ("dispute_ref" IS NULL));
-- Only money that was taken can be refunded or disputed.
ALTER TABLE "payments" ADD CONSTRAINT "payments_reversed_succeeded" CHECK (("refunded_at" IS NULL AND "disputed_at" IS NULL AND "reversed_at" IS NULL) OR "status" = 'SUCCEEDED');
-- The grant is taken back only for a full refund or a dispute.
ALTER TABLE "payments" ADD CONSTRAINT "payments_reversed_why" CHECK ("reversed_at" IS NULL OR "disputed_at" IS NOT NULL OR "refunded_cents" = "amount_usd" * 100);

-- The provider's events name the charge by its PaymentIntent (Stripe does not copy the
-- PaymentIntent's metadata to its Charge or Dispute), which the payment keeps as provider_ref.
CREATE INDEX "payments_provider_ref" ON "payments" ("provider_ref") WHERE "provider_ref" IS NOT NULL;
