-- The sweep's index of active plans by the start of their next period (migration
-- plan_next_period_start) was partial on `active` alone. Every account-scoped read of a plan
-- (`account_id = $1 AND active`: the balance snapshot at every balance change, the roll check,
-- the test clock) matches that predicate too, so the ledger pool's generic plans could read the
-- whole index instead of the primary key, and did while the statistics counted few active plans:
-- after 2,000 other accounts' plans became active with no ANALYZE since, every charge read 4,002
-- index entries of plan_subscriptions instead of 2 or 3
-- (test/integration/neighbour-growth-audit.test.ts). With `next_period_start IS NOT NULL` in the
-- predicate (always true: the column is NOT NULL) only a statement with a condition on
-- next_period_start can use the index: the sweep's `next_period_start BETWEEN ... AND ...` implies
-- it (PostgreSQL proves a strict comparison's column not null: PostgreSQL docs, "Partial
-- Indexes"), `active` alone does not. (The sweep's test-mode probe compares
-- COALESCE(next_period_start, 'infinity'), which implies nothing, and reads by the primary key.)
-- Built without CONCURRENTLY (the migration runner runs each migration in a transaction): writes
-- to plan_subscriptions wait while it builds; one row per subscribed account.
DROP INDEX "plan_subscriptions_next_period_start";
CREATE INDEX "plan_subscriptions_next_period_start" ON "plan_subscriptions"("next_period_start") WHERE "active" AND "next_period_start" IS NOT NULL;
