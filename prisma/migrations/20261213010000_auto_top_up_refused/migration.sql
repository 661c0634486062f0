-- A top-up started by a refusal for lack of credit records what was refused.
--
-- Why: auto top-up started only when a balance change made `available` fall below the threshold.
-- A charge that costs more than `available` is refused and changes nothing, so an account at 15
-- credits with threshold 10 whose agent asks for 20 was refused for ever. Such a refusal now
-- starts a top-up (src/services/refusal-top-ups.ts); its job must not skip it because `available`
-- is still at or above the threshold, so the row keeps the refused amount and the job skips it
-- only once `available` covers that amount too (src/services/auto-top-up.ts prepare).
-- NULL: started by a threshold crossing (balances_changed), as every row before this migration.
-- A nullable column without a default: no table rewrite.
ALTER TABLE "auto_top_ups" ADD COLUMN "refused_micro_credits" BIGINT;
ALTER TABLE "auto_top_ups" ADD CONSTRAINT "auto_top_ups_refused_positive" CHECK ("refused_micro_credits" IS NULL OR "refused_micro_credits" > 0);
