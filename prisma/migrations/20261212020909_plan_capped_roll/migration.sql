-- The last capped ROLLOVER roll of an account, kept across plan switches and cancels: a refund of
-- usage recorded before it gives back only the room that roll left under its cap (refund-usage.ts
-- rolloverRoom). The subscription row's plan_id names the plan now subscribed, so after a switch
-- it no longer told which cap the old plan's last roll applied.
ALTER TABLE "plan_subscriptions" ADD COLUMN     "capped_roll_at" TIMESTAMPTZ(3),
ADD COLUMN     "capped_roll_cap_micro_credits" BIGINT;

ALTER TABLE "plan_subscriptions" ADD CONSTRAINT "plan_subscriptions_capped_roll" CHECK (("capped_roll_at" IS NULL) = ("capped_roll_cap_micro_credits" IS NULL) AND ("capped_roll_cap_micro_credits" IS NULL OR "capped_roll_cap_micro_credits" >= 0));

-- Existing rows: the roll the subscription row still describes (its plan ROLLOVER with a cap, its
-- last granted period begun by a roll rather than by the subscription). A capped roll of a plan
-- switched away from before this migration is not known (the row no longer names that plan).
UPDATE "plan_subscriptions" s SET "capped_roll_at" = s."granted_period_start", "capped_roll_cap_micro_credits" = p."rollover_cap_micro_credits"
  FROM "plans" p
 WHERE p."id" = s."plan_id" AND p."rollover" = 'ROLLOVER' AND p."rollover_cap_micro_credits" IS NOT NULL
   AND s."granted_period_start" > s."started_at";
