-- Hand-written: a capped ROLLOVER roll written by a server of the release before plan_capped_roll
-- is remembered too.
--
-- Why: during a rolling upgrade the servers of the previous release keep running on the migrated
-- database until they are replaced, and their rollDuePeriods ends with
-- `UPDATE plan_subscriptions SET granted_period_start = $2 WHERE account_id = $1` (commit
-- 592a2f8^): a roll they ran after plan_capped_roll left capped_roll_at NULL (or at the roll
-- before), and the backfill of that migration had already run. refundUsage (rolloverRoom) then
-- found no capped roll and gave a refunded event recorded before that roll its whole credit back,
-- above the cap the roll had trimmed to: a capped plan of 100 (cap 50) with 30 spent, rolled by an
-- older server, read 180 instead of 150 after the refund (test/upgrade/rolling-upgrade.test.ts).
--
-- So the row derives it itself: an update that moves granted_period_start forward on the same
-- subscription (same plan, same started_at: a roll, not a subscribe) without touching the capped
-- roll, on a ROLLOVER plan with a cap, records that roll with the plan's cap, as rollDuePeriods
-- (src/services/plans.ts) writes it. The current code's own rolls set both columns themselves, so
-- the trigger changes nothing for them.
CREATE FUNCTION "plan_subscriptions_capped_roll"() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_cap bigint;
BEGIN
  IF NEW.granted_period_start > OLD.granted_period_start
     AND NEW.plan_id = OLD.plan_id AND NEW.started_at = OLD.started_at
     AND NEW.capped_roll_at IS NOT DISTINCT FROM OLD.capped_roll_at
     AND NEW.capped_roll_cap_micro_credits IS NOT DISTINCT FROM OLD.capped_roll_cap_micro_credits THEN
    SELECT rollover_cap_micro_credits INTO v_cap FROM plans WHERE id = NEW.plan_id AND rollover = 'ROLLOVER';
    IF v_cap IS NOT NULL THEN
      NEW.capped_roll_at := NEW.granted_period_start;
      NEW.capped_roll_cap_micro_credits := v_cap;
    END IF;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER "plan_subscriptions_capped_roll" BEFORE UPDATE OF "granted_period_start" ON "plan_subscriptions"
  FOR EACH ROW EXECUTE FUNCTION "plan_subscriptions_capped_roll"();

-- Rolls older servers ran between plan_capped_roll and this migration: plan_capped_roll's
-- backfill again, for the rows it would now set differently. The current code keeps every row on
-- a capped ROLLOVER plan that has rolled (granted_period_start > started_at) at capped_roll_at =
-- granted_period_start with that plan's cap, so only rows left behind by older servers match.
UPDATE "plan_subscriptions" s SET "capped_roll_at" = s."granted_period_start", "capped_roll_cap_micro_credits" = p."rollover_cap_micro_credits"
  FROM "plans" p
 WHERE p."id" = s."plan_id" AND p."rollover" = 'ROLLOVER' AND p."rollover_cap_micro_credits" IS NOT NULL
   AND s."granted_period_start" > s."started_at"
   AND s."capped_roll_at" IS DISTINCT FROM s."granted_period_start";
