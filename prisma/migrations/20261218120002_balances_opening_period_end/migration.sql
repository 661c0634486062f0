-- When an account's stored period opening is behind: the start of the billing period after the
-- one balances.opening_period_start names (balances.opening_period_end), kept by triggers,
-- indexed. The `sweep-due` job's finder of plan-less accounts whose new period has no opening yet
-- (src/services/open-billing-period.ts findAccountsWithUnopenedPeriods), run every
-- SWEEP_EVERY_MS, read every balance row and every account to find them: 200,000 accounts with
-- none to open, 200,004 balance and 200,002 account rows per run, 100-240 ms (EXPLAIN ANALYZE,
-- generic plan). With the stored instant a range of this index finds them.
--
-- The rule (the finder's): an opening is behind when it is NULL (never written) or before
-- billing_period(billing_anchor_at, the account's now).period_start; as for plans (migration
-- plan_next_period_start) that is when the account's now has reached next_period_start_of(anchor,
-- opening) ('-infinity' for NULL, or an opening before the anchor).
--
-- Every balance change writes the opening of the period of its own instant (AccountTx.finishMany),
-- so the trigger's function runs once per account and period (the UPDATE trigger's WHEN skips the
-- rest: the charge path pays one comparison per row), and a move of the anchor (subscribeToPlan)
-- moves the stored instant with it.

-- AlterTable
ALTER TABLE "balances" ADD COLUMN "opening_period_end" TIMESTAMPTZ(3);

-- The rows there are, before the triggers exist (one set-based pass; the table stays locked by
-- the ALTER until this migration commits, so no write comes between). The deferred balance
-- invariant (balances_invariant) is off for it: this moves no money, and each row's check would
-- sum the account's batches at commit, and leave the table with pending trigger events, which
-- the ALTER below refuses.
ALTER TABLE "balances" DISABLE TRIGGER "balances_invariant";
-- (next_period_start_of written out: through the function each row costs ~40 µs, billing_period
-- inlined here ~2 µs.)
UPDATE "balances" b SET "opening_period_end" = x.e
  FROM (SELECT o."account_id",
               CASE WHEN o."opening_period_start" IS NULL OR o."opening_period_start" < a."billing_anchor_at" THEN '-infinity'::timestamptz
                    ELSE p.period_end END AS e
          FROM "balances" o JOIN "accounts" a ON a."id" = o."account_id"
               CROSS JOIN LATERAL billing_period(a."billing_anchor_at", o."opening_period_start") p) x
 WHERE x."account_id" = b."account_id";
ALTER TABLE "balances" ENABLE TRIGGER "balances_invariant";

ALTER TABLE "balances" ALTER COLUMN "opening_period_end" SET NOT NULL;

CREATE FUNCTION "balances_opening_period_end"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.opening_period_end := (SELECT next_period_start_of(a.billing_anchor_at, NEW.opening_period_start)
                               FROM accounts a WHERE a.id = NEW.account_id);
  RETURN NEW;
END
$$;
CREATE TRIGGER "balances_opening_period_end_insert" BEFORE INSERT ON "balances"
  FOR EACH ROW EXECUTE FUNCTION "balances_opening_period_end"();
CREATE TRIGGER "balances_opening_period_end_update" BEFORE UPDATE OF "opening_period_start" ON "balances"
  FOR EACH ROW WHEN (NEW.opening_period_start IS DISTINCT FROM OLD.opening_period_start)
  EXECUTE FUNCTION "balances_opening_period_end"();

-- A move of the anchor moves the periods of the account's subscription row (migration
-- plan_next_period_start) and of its balance row's opening.
CREATE OR REPLACE FUNCTION "accounts_plan_next_period_start"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE plan_subscriptions SET next_period_start = next_period_start_of(NEW.billing_anchor_at, granted_period_start)
   WHERE account_id = NEW.id;
  UPDATE balances SET opening_period_end = next_period_start_of(NEW.billing_anchor_at, opening_period_start)
   WHERE account_id = NEW.id;
  RETURN NULL;
END
$$;

-- CreateIndex
CREATE INDEX "balances_opening_period_end_idx" ON "balances"("opening_period_end");
