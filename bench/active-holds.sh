#!/usr/bin/env bash
# What one account's balance change costs while other accounts hold credit (issue #6; migration
# reservations_active_by_account).
#
# On the database bench/charge-profile.ts leaves (creditpool_bench_profile: 10,000 accounts and
# their closed holds; run charge-profile first), with the statistics a VACUUM leaves when no hold
# is active, then 20,000 ACTIVE holds on other accounts (2 per account, expiring in an hour):
# pgbench, one client, generic plans (as the ledger's sessions), `BEGIN; SELECT
# balances_changed(one account); ROLLBACK`, alternating the indexes of ACTIVE holds as they were
# before the migration reservations_active_by_account (old: by expiry) and after it (new: by
# account), each round on new connections (plans made afresh). Prints the mean latency per
# transaction and how many index entries of `reservations` one call reads.
# Leaves the database with the holds deleted and the new index.
#
# Usage: bash scripts/with-services.sh bash bench/active-holds.sh [rounds (default 2)] [seconds (default 5)]
set -euo pipefail
ROUNDS="${1:-2}"
SECONDS_EACH="${2:-5}"
BASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/creditpool}"
DB_URL="${BASE_URL%/*}/creditpool_bench_profile"
q() { PGOPTIONS="-c client_min_messages=warning" psql "$DB_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

ACCOUNT="$(q "SELECT id FROM accounts ORDER BY id LIMIT 1")"
[ -n "$ACCOUNT" ] || { echo "no accounts in creditpool_bench_profile: run bench/charge-profile.ts first" >&2; exit 1; }
NEW_INDEX="CREATE INDEX IF NOT EXISTS reservations_active_by_account ON reservations (account_id, expires_at) WHERE status = 'ACTIVE'"
OLD_INDEX="CREATE INDEX IF NOT EXISTS reservations_active_expiry ON reservations (expires_at) WHERE status = 'ACTIVE'"
# The indexes as before the migration reservations_active_by_account (old) or after it (new).
use_indexes() {
  if [ "$1" = old ]; then q "$OLD_INDEX"; q "DROP INDEX IF EXISTS reservations_active_by_account";
  else q "$NEW_INDEX"; q "DROP INDEX IF EXISTS reservations_active_expiry"; fi
}
delete_holds() { q "SET session_replication_role = replica; DELETE FROM reservations WHERE idempotency_key LIKE 'bench-active-%'"; }
trap 'delete_holds || true; use_indexes new || true' EXIT

# The measured statement: one account's balance change (its snapshot sums the account's holds).
CALL="SELECT balances_changed(ARRAY['$ACCOUNT'::uuid], ARRAY[now()], ARRAY[1::bigint], ARRAY[now()], ARRAY[0::bigint]);"
SCRIPT="$(mktemp)"
printf 'BEGIN;\n%s\nROLLBACK;\n' "$CALL" > "$SCRIPT"

reads() {
  PGOPTIONS="-c plan_cache_mode=force_generic_plan" psql "$DB_URL" -qAtX -v ON_ERROR_STOP=1 <<SQL | tail -1
BEGIN;
$CALL
SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index WHERE indrelid = 'reservations'::regclass;
ROLLBACK;
SQL
}

# Per variant: the indexes as they were or are (made before the VACUUM, as in a deployment that
# has them), the statistics of a quiet moment (no ACTIVE hold), then the holds of everybody else. The fixture rows skip the ledger's triggers
# (session_replication_role): only the planner and the executor look at them, and they are
# deleted at the end.
for r in $(seq 1 "$ROUNDS"); do
  for variant in old new; do
    delete_holds
    use_indexes "$variant"
    q "VACUUM ANALYZE reservations"
    q "SET session_replication_role = replica;
       INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, idempotency_key, request_hash)
       SELECT gen_random_uuid(), a.id, 1000, 'ACTIVE', now() + interval '1 hour', 'bench-active-' || g, 'bench'
         FROM accounts a, generate_series(1, 2) g WHERE a.id <> '$ACCOUNT'"
    latency="$(PGOPTIONS="-c plan_cache_mode=force_generic_plan" pgbench "$DB_URL" -n -M prepared -c 1 -T "$SECONDS_EACH" -f "$SCRIPT" 2>&1 | sed -n 's/^latency average = //p')"
    printf 'round %s  %s indexes: %s per transaction, %s index entries of reservations read per call (%s ACTIVE holds of other accounts)\n' \
      "$r" "$variant" "$latency" "$(reads)" "$(q "SELECT count(*) FROM reservations WHERE status = 'ACTIVE' AND account_id <> '$ACCOUNT'")"
  done
done
rm -f "$SCRIPT"
