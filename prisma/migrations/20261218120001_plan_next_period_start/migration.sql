-- When a plan's next roll is due: the start of the billing period after the one last granted
-- (plan_subscriptions.next_period_start), kept by triggers, indexed for the active plans. The
-- `sweep-due` job's finder of due rolls (src/services/plans.ts findAccountsWithDuePeriods), run
-- every SWEEP_EVERY_MS, figured billing_period(anchor, the account's now) for EVERY active
-- subscription to compare it with granted_period_start: 100,000 subscriptions with no roll due
-- read 100,004 subscription and 200,004 account rows per run, 296-567 ms (EXPLAIN ANALYZE,
-- generic plan). With the stored instant a range of this index finds the due ones: 1.2 ms, 154
-- subscription rows read (those of the 300 test-mode accounts, compared with their clocks).
--
-- The rule (the finder's): a roll is due when billing_period(billing_anchor_at, the account's
-- now).period_start > granted_period_start. Period starts are the anchor plus whole months, so
-- for granted_period_start at or after the anchor that holds exactly when the account's now has
-- reached the end of the period granted_period_start lies in (billing_period(anchor,
-- granted).period_end); a granted_period_start before the anchor (the anchor moved on after it)
-- is due at any now: '-infinity'.

-- next_period_start_of(anchor, at): the start of the billing period after the one `at` lies in
-- (billing_period(anchor, at).period_end); '-infinity' when `at` lies before the anchor or is
-- NULL (billing_period of a NULL instant is the anchor's first period, not NULL). Also used for
-- balances (migration balances_opening_period_end), whose opening may be NULL.
CREATE FUNCTION "next_period_start_of"(p_anchor timestamptz, p_at timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN p_at IS NULL OR p_at < p_anchor THEN '-infinity'::timestamptz
              ELSE (SELECT p.period_end FROM billing_period(p_anchor, p_at) p) END
$$;

-- AlterTable
ALTER TABLE "plan_subscriptions" ADD COLUMN "next_period_start" TIMESTAMPTZ(3);

-- The rows there are, before the triggers exist (one set-based pass; the table stays locked by
-- the ALTER until this migration commits, so no write comes between).
-- (next_period_start_of written out: through the function each row costs ~40 µs, billing_period
-- inlined here ~2 µs.)
UPDATE "plan_subscriptions" s SET "next_period_start" = x.e
  FROM (SELECT o."account_id",
               CASE WHEN o."granted_period_start" < a."billing_anchor_at" THEN '-infinity'::timestamptz ELSE p.period_end END AS e
          FROM "plan_subscriptions" o JOIN "accounts" a ON a."id" = o."account_id"
               CROSS JOIN LATERAL billing_period(a."billing_anchor_at", o."granted_period_start") p) x
 WHERE x."account_id" = s."account_id";

ALTER TABLE "plan_subscriptions" ALTER COLUMN "next_period_start" SET NOT NULL;


-- Every write of a subscription (subscribeToPlan's upsert, a roll, a cancel; an older server's
-- too) figures it from the row's granted_period_start and the account's anchor.
CREATE FUNCTION "plan_subscriptions_next_period_start"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.next_period_start := (SELECT next_period_start_of(a.billing_anchor_at, NEW.granted_period_start)
                              FROM accounts a WHERE a.id = NEW.account_id);
  RETURN NEW;
END
$$;
CREATE TRIGGER "plan_subscriptions_next_period_start" BEFORE INSERT OR UPDATE ON "plan_subscriptions"
  FOR EACH ROW EXECUTE FUNCTION "plan_subscriptions_next_period_start"();

-- A move of the anchor (subscribeToPlan) moves the periods of the account's subscription row.
CREATE FUNCTION "accounts_plan_next_period_start"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE plan_subscriptions SET next_period_start = next_period_start_of(NEW.billing_anchor_at, granted_period_start)
   WHERE account_id = NEW.id;
  RETURN NULL;
END
$$;
CREATE TRIGGER "accounts_plan_next_period_start" AFTER UPDATE OF "billing_anchor_at" ON "accounts"
  FOR EACH ROW WHEN (NEW.billing_anchor_at IS DISTINCT FROM OLD.billing_anchor_at)
  EXECUTE FUNCTION "accounts_plan_next_period_start"();

-- Partial: only active plans roll. Not in schema.prisma (Prisma cannot say WHERE).
CREATE INDEX "plan_subscriptions_next_period_start" ON "plan_subscriptions"("next_period_start") WHERE "active";
