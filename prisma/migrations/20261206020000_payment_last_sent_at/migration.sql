-- Hand-written: every payment records when its provider request was last SENT (`last_sent_at`,
-- wall clock), written in the statement that decides the send, before the request goes out.
--
-- Why: past IDEMPOTENCY_KEY_SAFE_WINDOW_MS (23 h after the first attempt) a PENDING payment is
-- only looked up at the provider, and "no charge found" settled it FAILED (`no_charge_found`).
-- But a request sent just before the window closed (a client retry, a resume, a top-up run) can
-- still be in flight, and Stripe's search lags about a minute behind a finished charge: the
-- lookup found nothing, the payment was FAILED, the real charge then succeeded and its success
-- was dropped (card charged, no credit; an auto top-up charged again under a new payment). Now
-- "nothing found" is only a decline once LOOKUP_SETTLE_DELAY_MS have passed since `last_sent_at`
-- (src/payments/provider.ts); before that the outcome is unknown and the payment stays PENDING.
--
-- Existing rows: a PENDING one gets now(), the migration's time: any request of it in flight was
-- sent before that, so the settle delay counts from no earlier than its real last send (at worst
-- a "no charge" settles a few minutes later). `updated_at` is not usable for it: settlements and
-- rows made by the old auto top-up code wrote the account's clock, which is the TEST clock of a
-- test-mode account. Settled rows get `updated_at` (never read for them).
ALTER TABLE "payments" ADD COLUMN "last_sent_at" TIMESTAMPTZ(3);

UPDATE "payments" SET "last_sent_at" = CASE WHEN "status" = 'PENDING' THEN now() ELSE "updated_at" END;

ALTER TABLE "payments" ALTER COLUMN "last_sent_at" SET NOT NULL, ALTER COLUMN "last_sent_at" SET DEFAULT CURRENT_TIMESTAMP;

-- The idempotency window is measured from `created_at`, the first attempt (Stripe prunes a key by
-- its age since first use, so it must not restart at a resend). Before commit bb7be6d an
-- AUTO_TOP_UP payment's `created_at` was the account's clock: for a test-mode account its TEST
-- clock, which may run days ahead of the wall clock, so such a payment would look young and be
-- re-sent after Stripe had forgotten its key (a second charge). When that first attempt really
-- happened is not recorded anywhere on the wall clock, so these rows are treated as past the
-- window: moved to 24 hours ago at the latest, they are only looked up from now on (safe: a
-- charge found is granted, "none" is settled only after the delay above). Rows of test-mode
-- accounts made since bb7be6d are caught too (they cannot be told apart); the cost is that a
-- lost attempt of theirs is looked up and retried as a new attempt instead of being re-sent.
UPDATE "payments" p SET "created_at" = LEAST(p."created_at", now() - interval '24 hours')
  FROM "accounts" a
 WHERE a."id" = p."account_id" AND a."test_mode" AND p."status" = 'PENDING' AND p."purpose" = 'AUTO_TOP_UP';
