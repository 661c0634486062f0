-- Idempotency-key lookups must probe the (account_id, idempotency_key) unique index whatever plan
-- PostgreSQL caches (issue #6, found with `npx tsx bench/charge-profile.ts --plans` and
-- pg_stat_user_tables during the perf bench).
--
-- The charge path runs named statements, whose cached generic plan estimates `account_id = $1`
-- from the average account. Right after onboarding that average is about one row, so every
-- index that starts with account_id looks equally good for `account_id = $1 AND
-- idempotency_key = $2`, and the planner took a smaller one ((account_id, occurred_at),
-- (account_id, user_id, recorded_at)) and filtered the key: a lookup that reads the whole
-- history of the account. On a hot organization pool with 10,800 events that was 2.2 ms per
-- charge and 172 ms per batch of 100 keys, growing with every event (0.02 ms / 0.16 ms with the
-- unique index).
--
-- Usage is skewed: a few big pools hold most events, reservations and grants. Stating that
-- accounts have many rows each (n_distinct as a negative fraction of the rows: PostgreSQL docs,
-- ALTER TABLE ... ALTER COLUMN ... SET (n_distinct)) makes the key filter look as expensive as it
-- is on a big account, and the unique index wins. Takes effect at the next ANALYZE (autovacuum
-- runs it; the migration runs it now).
ALTER TABLE "usage_events" ALTER COLUMN "account_id" SET (n_distinct = -0.001);
ALTER TABLE "reservations" ALTER COLUMN "account_id" SET (n_distinct = -0.01);
ALTER TABLE "credit_grants" ALTER COLUMN "account_id" SET (n_distinct = -0.01);
ANALYZE "usage_events";
ANALYZE "reservations";
ANALYZE "credit_grants";
