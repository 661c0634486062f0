-- A refund that FAILS gives its credit back (src/services/refund-failures.ts).
--
-- Why: a refund (Stripe `charge.refunded`) takes back the refunded share of a payment's credit, or
-- voids what remains when it is full. A refund can fail afterwards (the card was closed, lost or
-- expired): Stripe returns the money to the platform's balance and reports it with
-- `charge.refund.updated` (the Refund's `status` `failed`) and, on API versions from
-- 2024-10-28.acacia, `refund.failed`. The customer had then paid and lost the credit, with the
-- money kept. Now each failed refund is applied once (one row here per Refund id): the payment's
-- refunded amount is lowered by the refund's, and the credit the refunds took beyond the share of
-- what stays refunded comes back as a new PAID grant.
--
-- payments:
-- - refund_event_at: the provider's creation time of the latest refund event applied (Stripe's
--   event `created`; the settlement time for a refund kept before its payment was settled). A
--   failed refund created after it was never part of refunded_cents, so it lowers nothing.
--   Rows refunded before this migration: refunded_at (when the refund was applied, just after the
--   provider made the event), so their refunds count as applied.
-- - refund_failed_event_at: the provider's creation time of the latest refund failure applied. A
--   `charge.refunded` made at or before it (redelivered, or delivered late) reports a cumulative
--   amount from before the failure, which may include the failed refund: it changes nothing, else
--   a failed refund would be taken back again.
-- Nullable columns: no table rewrite; the backfill touches refunded payments only.
ALTER TABLE "payments" ADD COLUMN "refund_event_at" TIMESTAMPTZ(3);
ALTER TABLE "payments" ADD COLUMN "refund_failed_event_at" TIMESTAMPTZ(3);
UPDATE "payments" SET "refund_event_at" = "refunded_at" WHERE "refunded_at" IS NOT NULL;

CREATE TABLE "payment_refund_failures" (
    -- The provider's Refund id (Stripe `re_…`): a refund fails once, so it is applied once.
    "refund_ref" TEXT NOT NULL,
    "payment_id" UUID NOT NULL,
    "event_id" TEXT NOT NULL,
    "event_type" TEXT NOT NULL,
    -- The failed refund's amount, in USD cents.
    "amount_cents" BIGINT NOT NULL,
    -- Whether it lowered the payment's refunded_cents (false: the refund was never applied, or the
    -- payment is disputed, and nothing else changed).
    "applied" BOOLEAN NOT NULL,
    -- What came back of the credit, in micro-credits, and the grant that carries the payment's
    -- credit from then on (the live grant's rest plus it); NULL when nothing was granted.
    "restored_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "grant_id" UUID,
    -- When the provider reported the failure (Stripe's event `created`), and when it was applied.
    "failed_at" TIMESTAMPTZ(3) NOT NULL,
    "received_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "payment_refund_failures_pkey" PRIMARY KEY ("refund_ref"),
    CONSTRAINT "payment_refund_failures_payment_id_fkey" FOREIGN KEY ("payment_id") REFERENCES "payments"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "payment_refund_failures_payment_id" ON "payment_refund_failures"("payment_id");
CREATE UNIQUE INDEX "payment_refund_failures_grant_id_key" ON "payment_refund_failures"("grant_id");
ALTER TABLE "payment_refund_failures" ADD CONSTRAINT "payment_refund_failures_amount" CHECK ("amount_cents" > 0);
-- Credit comes back only from a failure that lowered the refunded amount, and with a grant.
ALTER TABLE "payment_refund_failures" ADD CONSTRAINT "payment_refund_failures_restored" CHECK (
  "restored_micro_credits" >= 0 AND ("restored_micro_credits" = 0) = ("grant_id" IS NULL) AND ("restored_micro_credits" = 0 OR "applied"));
