-- CreateTable
CREATE TABLE "usage_rollups_hourly" (
    "account_id" UUID NOT NULL,
    "hour" TIMESTAMPTZ(3) NOT NULL,
    "category" TEXT NOT NULL,
    "tier" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "credits_micro_credits" BIGINT NOT NULL,
    "events" INTEGER NOT NULL,

    CONSTRAINT "usage_rollups_hourly_pkey" PRIMARY KEY ("account_id","hour","category","tier","model")
);

-- CreateTable
CREATE TABLE "usage_rollups_monthly" (
    "account_id" UUID NOT NULL,
    "month" TIMESTAMPTZ(3) NOT NULL,
    "category" TEXT NOT NULL,
    "credits_micro_credits" BIGINT NOT NULL,
    "events" INTEGER NOT NULL,

    CONSTRAINT "usage_rollups_monthly_pkey" PRIMARY KEY ("account_id","month","category")
);

-- Hand-written: invariants.
ALTER TABLE "usage_rollups_hourly" ADD CONSTRAINT "usage_rollups_hourly_not_negative" CHECK ("credits_micro_credits" >= 0 AND "events" >= 0);
ALTER TABLE "usage_rollups_monthly" ADD CONSTRAINT "usage_rollups_monthly_not_negative" CHECK ("credits_micro_credits" >= 0 AND "events" >= 0);

-- Hand-written: the rollups are maintained by statement-level triggers on usage_events, set-based
-- over the statement's transition table, so one charge adds one upsert per rollup and a bulk
-- insert of a million rows aggregates before it upserts. A refund (refunded_at set) takes the
-- event out again. Hours and months are UTC.
CREATE FUNCTION "usage_rollups_add"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO usage_rollups_hourly (account_id, hour, category, tier, model, credits_micro_credits, events)
  SELECT account_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', category, COALESCE(tier, ''), COALESCE(model, ''),
         SUM(cost_micro_credits), COUNT(*)
    FROM new_rows WHERE refunded_at IS NULL
   GROUP BY 1, 2, 3, 4, 5
  ON CONFLICT (account_id, hour, category, tier, model) DO UPDATE
     SET credits_micro_credits = usage_rollups_hourly.credits_micro_credits + EXCLUDED.credits_micro_credits,
         events = usage_rollups_hourly.events + EXCLUDED.events;
  INSERT INTO usage_rollups_monthly (account_id, month, category, credits_micro_credits, events)
  SELECT account_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', category, SUM(cost_micro_credits), COUNT(*)
    FROM new_rows WHERE refunded_at IS NULL
   GROUP BY 1, 2, 3
  ON CONFLICT (account_id, month, category) DO UPDATE
     SET credits_micro_credits = usage_rollups_monthly.credits_micro_credits + EXCLUDED.credits_micro_credits,
         events = usage_rollups_monthly.events + EXCLUDED.events;
  RETURN NULL;
END
$$;

CREATE FUNCTION "usage_rollups_refund"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE usage_rollups_hourly r
     SET credits_micro_credits = r.credits_micro_credits - x.credits, events = r.events - x.events
    FROM (SELECT n.account_id, date_trunc('hour', n.occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, n.category,
                 COALESCE(n.tier, '') AS tier, COALESCE(n.model, '') AS model, SUM(n.cost_micro_credits) AS credits, COUNT(*) AS events
            FROM new_rows n JOIN old_rows o ON o.id = n.id
           WHERE o.refunded_at IS NULL AND n.refunded_at IS NOT NULL
           GROUP BY 1, 2, 3, 4, 5) x
   WHERE r.account_id = x.account_id AND r.hour = x.hour AND r.category = x.category AND r.tier = x.tier AND r.model = x.model;
  UPDATE usage_rollups_monthly r
     SET credits_micro_credits = r.credits_micro_credits - x.credits, events = r.events - x.events
    FROM (SELECT n.account_id, date_trunc('month', n.occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month, n.category,
                 SUM(n.cost_micro_credits) AS credits, COUNT(*) AS events
            FROM new_rows n JOIN old_rows o ON o.id = n.id
           WHERE o.refunded_at IS NULL AND n.refunded_at IS NOT NULL
           GROUP BY 1, 2, 3) x
   WHERE r.account_id = x.account_id AND r.month = x.month AND r.category = x.category;
  RETURN NULL;
END
$$;

CREATE TRIGGER "usage_events_rollups_add" AFTER INSERT ON "usage_events"
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "usage_rollups_add"();
CREATE TRIGGER "usage_events_rollups_refund" AFTER UPDATE ON "usage_events"
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "usage_rollups_refund"();

-- Backfill from the events recorded before this migration.
INSERT INTO usage_rollups_hourly (account_id, hour, category, tier, model, credits_micro_credits, events)
SELECT account_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', category, COALESCE(tier, ''), COALESCE(model, ''),
       SUM(cost_micro_credits), COUNT(*)
  FROM usage_events WHERE refunded_at IS NULL GROUP BY 1, 2, 3, 4, 5;
INSERT INTO usage_rollups_monthly (account_id, month, category, credits_micro_credits, events)
SELECT account_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', category, SUM(cost_micro_credits), COUNT(*)
  FROM usage_events WHERE refunded_at IS NULL GROUP BY 1, 2, 3;
