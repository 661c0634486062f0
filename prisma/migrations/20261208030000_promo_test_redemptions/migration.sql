-- Promo code redemptions by test-mode accounts are counted apart from the live ones.
--
-- Why: a test-mode account (createAccount(testMode: true), its own clock, made by the platform to
-- rehearse its integration) redeeming a promo code used up a real slot of its maxRedemptions: a
-- code for 100 customers served 99 after one rehearsal (test/api/growth/promo-codes.test.ts).
-- Test-mode accounts go through every rule of a redemption as live ones do (validUntil at their
-- clock, once per account, maxRedemptions), but against their own count: `redemptions` counts
-- live accounts, `test_redemptions` test-mode ones, each at most max_redemptions.
--
-- Existing codes are recounted from their redemptions, so slots test-mode accounts took are
-- given back to live accounts (only codes that test-mode accounts redeemed change).
-- AlterTable
ALTER TABLE "promo_codes" ADD COLUMN     "test_redemptions" INTEGER NOT NULL DEFAULT 0;

-- Hand-written: the recount and the same bound as redemptions (promo_codes_redemptions_in_range).
UPDATE "promo_codes" p
   SET "redemptions" = c.live, "test_redemptions" = c.test
  FROM (SELECT r."code",
               count(*) FILTER (WHERE NOT a."test_mode")::int AS live,
               count(*) FILTER (WHERE a."test_mode")::int AS test
          FROM "promo_redemptions" r JOIN "accounts" a ON a."id" = r."account_id"
         GROUP BY r."code"
        HAVING count(*) FILTER (WHERE a."test_mode") > 0) c
 WHERE p."code" = c."code";

ALTER TABLE "promo_codes"
  ADD CONSTRAINT "promo_codes_test_redemptions_in_range"
  CHECK ("test_redemptions" >= 0 AND ("max_redemptions" IS NULL OR "test_redemptions" <= "max_redemptions"));
