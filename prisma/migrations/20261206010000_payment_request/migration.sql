-- Hand-written: every payment records the payment method its provider request is built from.
--
-- Why: a charge whose answer was lost (timeout, crash) is resumed by sending the SAME provider
-- request again with the payment id as the idempotency key, so the provider answers the first
-- outcome instead of charging again. The request used to be rebuilt from the account's CURRENT
-- payment method: after attachPaymentMethod replaced the card, the resend carried other
-- parameters, the provider refused it (Stripe: idempotency_error; the simulator the same), and
-- the payment stayed PENDING for good while the money was already taken. The amount and currency
-- were already fixed by the row (`amount_usd`, always USD); the description and metadata come
-- from the pack (never changed) and the row's own id and purpose.
--
-- Existing rows: a PENDING one gets the account's current method, which is what the old code
-- would have sent on its next retry anyway (the best that is known; if the card changed since,
-- the resend is refused as before and the sweep's resume logs it). SUCCEEDED / FAILED rows keep
-- NULL: they are never sent again and which card they were charged to was not recorded. The check
-- is NOT VALID so that it binds every row written from now on without failing on an old PENDING
-- row whose account has no method left.
ALTER TABLE "payments" ADD COLUMN "payment_method_ref" TEXT;

UPDATE "payments" p SET "payment_method_ref" = m."reference"
  FROM "payment_methods" m
 WHERE m."account_id" = p."account_id" AND p."status" = 'PENDING';

ALTER TABLE "payments" ADD CONSTRAINT "payments_pending_has_method"
  CHECK ("status" <> 'PENDING' OR "payment_method_ref" IS NOT NULL) NOT VALID;

-- The resume sweep's search: PENDING payments by age.
CREATE INDEX "payments_pending_created_at" ON "payments" ("created_at") WHERE "status" = 'PENDING';
