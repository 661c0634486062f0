#!/bin/bash
# Issue #6, (2a) @8: does keeping PostgreSQL's backends off the server's core help the hot pool?
# Runs `npm run bench`'s hot-account row (1 account, 8 clients, 20 s) once, and with MODE=pin
# pins, as soon as the server is up, every process named `postgres` to CPU 0 (the postmaster
# too, so new backends inherit it) and, with PINSERVER=main, the server's JavaScript thread to
# CPU 1 (PINSERVER=all: every thread of the server). Restores PostgreSQL's affinity to all CPUs
# at the end. Needs root (or the PostgreSQL processes' owner) and a 2-core machine.
#
#   bash bench/experiments/cpu-pinning.sh nopin
#   PINSERVER=main bash bench/experiments/cpu-pinning.sh pin
#
# Results (2026-12-06, 02:05-02:30 UTC): bench/README.md, "Tried and not landed".
set -euo pipefail
mode=${1:?nopin|pin}; path=${CHARGE_PATH:-group}
cd "$(dirname "$0")/../.."
out=$(mktemp /tmp/cpu-pinning-XXXX.txt)
env CHARGE_PATH="$path" bash scripts/with-services.sh npx tsx bench/record-usage.ts --accounts 1 --concurrency 8 --scenarios single --seconds 20 >"$out" 2>&1 &
bg=$!
restore() { for p in $(pgrep -x postgres); do taskset -a -pc 0-1 "$p" >/dev/null 2>&1 || true; done; }
trap restore EXIT
if [ "$mode" = pin ]; then
  until grep -q "Server ready" "$out" 2>/dev/null; do sleep 0.2; done
  case "${PINSERVER:-none}" in
    main) for p in $(pgrep -f "src/main.ts"); do taskset -pc 1 "$p" >/dev/null; done ;;
    all) for p in $(pgrep -f "src/main.ts"); do taskset -a -pc 1 "$p" >/dev/null; done ;;
  esac
  for p in $(pgrep -x postgres); do taskset -a -pc 0 "$p" >/dev/null 2>&1 || true; done
fi
wait $bg
echo "$mode (server: ${PINSERVER:-none}) $path: $(grep -E 'events/s' "$out" | head -1 | sed 's/  */ /g')"
grep "JavaScript thread" "$out" | sed 's/  */ /g'
