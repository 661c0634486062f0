-- Refunds and disputes the payment provider reported for a charge that no creditpool payment was
-- settled SUCCEEDED with yet (src/services/payment-reversals.ts, services/charge-reversal.ts).
--
-- Why: a charge can succeed at the provider while its payment is still PENDING here (the charge's
-- answer was lost or timed out) or FAILED `no_charge_found` (a late success grants it), and the
-- provider's events come in any order (https://docs.stripe.com/webhooks#event-ordering). A refund
-- or dispute in that window found no SUCCEEDED payment, was acknowledged as `unknown_payment`
-- (never sent again), and the later settlement granted the pack for money that had gone back.
-- Now the event is kept here, by the charge's reference (Stripe's PaymentIntent id, which the
-- settlement records as payments.provider_ref), and the transaction that settles a payment
-- SUCCEEDED with that reference applies it (voids the grant it has just made, records the refund
-- or dispute on the payment) and deletes it. References that never become a creditpool payment
-- (another application on the same Stripe account) are deleted by the sweep-due job 30 days after
-- they were first received (EARLY_REVERSAL_RETENTION_MS).
-- One row per (reference, kind): a refund keeps the largest cumulative refunded amount (Stripe's
-- `amount_refunded`; an older or redelivered event changes nothing), a dispute the first one.
CREATE TABLE "early_payment_reversals" (
    "provider_ref" TEXT NOT NULL,
    "kind" TEXT NOT NULL,
    "event_id" TEXT NOT NULL,
    "event_type" TEXT NOT NULL,
    "livemode" BOOLEAN NOT NULL,
    "currency" TEXT NOT NULL,
    "amount_cents" BIGINT NOT NULL,
    "refunded_cents" BIGINT NOT NULL,
    "dispute_ref" TEXT,
    "received_at" TIMESTAMPTZ(3) NOT NULL,
    "updated_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "early_payment_reversals_pkey" PRIMARY KEY ("provider_ref","kind")
);

-- The pruning reads the oldest first.
CREATE INDEX "early_payment_reversals_received_at" ON "early_payment_reversals"("received_at");

ALTER TABLE "early_payment_reversals" ADD CONSTRAINT "early_payment_reversals_kind" CHECK ("kind" IN ('refund', 'dispute'));
ALTER TABLE "early_payment_reversals" ADD CONSTRAINT "early_payment_reversals_amount" CHECK ("amount_cents" > 0);
-- A refund: 1 to the charge's amount refunded in all; a dispute: its provider id, nothing refunded.
ALTER TABLE "early_payment_reversals" ADD CONSTRAINT "early_payment_reversals_refund" CHECK (
  ("kind" = 'refund' AND "refunded_cents" > 0 AND "refunded_cents" <= "amount_cents" AND "dispute_ref" IS NULL)
  OR ("kind" = 'dispute' AND "refunded_cents" = 0 AND "dispute_ref" IS NOT NULL));
