#!/usr/bin/env bash
# Runs bench/charge-profile.ts in alternating pairs with PostgreSQL's default random_page_cost
# (4, set through DATABASE_URL's options, which win over the ledger pool's own 1.1) and with the
# ledger pool's own (1.1), and prints per run the wall and CPU per event and the tables read by
# whole-table sequential scans (more than 0.1 per event; price_books and settings, one-row
# tables, left out). See bench/README.md, "Small deployments: the planner's random-page cost".
#
#   bash bench/experiments/planner-cost-pairs.sh ACCOUNTS PAIRS "MODE ARGS"...
#   bash bench/experiments/planner-cost-pairs.sh 1000 2 "--events 6000" "--jobs --events 6000"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
accounts="$1"
pairs="$2"
shift 2
base="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/creditpool}"
for mode in "$@"; do
  for ((i = 0; i < pairs; i++)); do
    for cost in 4 own; do
      url="$base"
      if [[ "$cost" == 4 ]]; then
        if [[ "$base" == *\?* ]]; then url="$base&options=-c%20random_page_cost%3D4"; else url="$base?options=-c%20random_page_cost%3D4"; fi
      fi
      # shellcheck disable=SC2086 # MODE ARGS are words
      out="$(DATABASE_URL="$url" bash scripts/with-services.sh npx tsx bench/charge-profile.ts $mode --accounts "$accounts" 2>&1)"
      wall="$(grep '^wall' <<<"$out" || true)"
      scans="$(awk '/^table \(pg_stat/{f=1;next} f && $2>0.1 && $1!="price_books" && $1!="settings" {printf "%s %s/event (%s rows) ", $1,$2,$3}' <<<"$out")"
      echo "accounts=$accounts mode=[$mode] random_page_cost=$cost | $wall | whole-table scans: ${scans:-none}"
    done
  done
done
