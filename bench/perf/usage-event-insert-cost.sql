-- What one usage_events row costs PostgreSQL to insert, and how much of it is the secondary
-- indexes, the statement-level rollup trigger and the foreign-key checks (issue #6, "where the
-- time goes"). Run it against a database the charge profile filled (it copies 2,000 of its
-- events); every step runs in a transaction that is rolled back, so it changes nothing:
--
--   bash scripts/with-services.sh npx tsx bench/charge-profile.ts --events 5000 --accounts 10000
--   psql -h 127.0.0.1 -U postgres -d creditpool_bench_profile -X -f bench/perf/usage-event-insert-cost.sql | grep -E 'step|Time'
--
-- Each step inserts the 2,000 rows one single-row INSERT at a time from PL/pgSQL (no client
-- round trips), so its time divided by 2,000 is PostgreSQL's cost per row. Steps:
--   1. as in production (13 indexes, rollup trigger, 3 foreign keys);
--   2. without the rollup trigger;
--   3. also without the 11 secondary indexes (primary key and the idempotency key stay);
--   4. also without the foreign-key checks (all triggers disabled).
\set drop_secondary_indexes 'DROP INDEX usage_events_seq_key, usage_events_account_id_seq_idx, usage_events_account_id_task_id_seq_idx, usage_events_account_id_occurred_at_idx, usage_events_account_id_agent_id_recorded_at_idx, usage_events_account_id_user_id_recorded_at_idx, usage_events_account_id_agent_id_seq_idx, usage_events_account_id_user_id_seq_idx, usage_events_account_id_model_seq_idx, usage_events_account_id_category_seq_idx, usage_events_account_id_tier_seq_idx;'
\timing on
CREATE TEMP TABLE src AS SELECT * FROM usage_events LIMIT 2000;
CREATE FUNCTION pg_temp.insert_copies() RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record; i int := 0;
BEGIN
  FOR r IN SELECT * FROM src LOOP
    INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, model, tier, sku,
                              agent_id, user_id, task_id, input_tokens, output_tokens, byok, cost_micro_credits, debt_micro_credits,
                              lines, price_book_version, metadata)
    VALUES (gen_random_uuid(), r.account_id, r.idempotency_key || '-copy-' || i, r.request_hash, r.occurred_at, r.recorded_at, r.category,
            r.model, r.tier, r.sku, r.agent_id, r.user_id, r.task_id, r.input_tokens, r.output_tokens, r.byok, r.cost_micro_credits,
            r.debt_micro_credits, r.lines, r.price_book_version, r.metadata);
    i := i + 1;
  END LOOP;
END $$;
-- warm-up (caches, plans)
BEGIN; SELECT pg_temp.insert_copies(); ROLLBACK;
\echo step 1: as in production
BEGIN; SELECT pg_temp.insert_copies(); ROLLBACK;
\echo step 2: without the rollup trigger
BEGIN; ALTER TABLE usage_events DISABLE TRIGGER usage_events_rollups_add; SELECT pg_temp.insert_copies(); ROLLBACK;
\echo step 3: also without the 11 secondary indexes
BEGIN;
ALTER TABLE usage_events DISABLE TRIGGER usage_events_rollups_add;
:drop_secondary_indexes
SELECT pg_temp.insert_copies();
ROLLBACK;
\echo step 4: also without the foreign-key checks
BEGIN;
ALTER TABLE usage_events DISABLE TRIGGER ALL;
:drop_secondary_indexes
SELECT pg_temp.insert_copies();
ROLLBACK;
