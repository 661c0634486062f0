#!/usr/bin/env bash
# Runs a bench against a PRIVATE PostgreSQL started with pg_stat_statements preloaded, so that
# bench/perf.ts can print PostgreSQL's own time per statement for every scenario, nested
# statements (functions, triggers, foreign-key checks) and planning included
# (bench/perf/pg-statements.ts). The shared PostgreSQL cannot load the library without a restart;
# this one is ours. It is configured like the shared one where that matters for the numbers
# (fsync and synchronous_commit on, shared_buffers 128 MB, autovacuum off, max_connections 100),
# lives in .data/pg-statements (or $CREDITPOOL_DATA_DIR/pg-statements), listens on a free port
# of 127.0.0.1 and is stopped when the command ends. Redis is whatever scripts/services.sh finds.
#
#   bash bench/pg-stat-statements.sh                       # = npx tsx bench/perf.ts
#   bash bench/pg-stat-statements.sh npx tsx bench/perf.ts --quick --skip-history
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# For its helpers (_cp_pg_bindir, _cp_pg_run, _cp_free_port); the command runs through
# scripts/with-services.sh below, which finds Redis and our DATABASE_URL.
# shellcheck source=scripts/services.sh
source scripts/services.sh

data="${CREDITPOOL_DATA_DIR:-$root/.data}"
dir="$data/pg-statements"
bindir="$(_cp_pg_bindir)"
mkdir -p "$data"
if [[ ! -f "$dir/PG_VERSION" ]]; then
  echo "pg-stat-statements: initialising a private PostgreSQL in $dir" >&2
  rm -rf "$dir" && mkdir -p "$dir" && chmod 700 "$dir"
  if [[ "$(id -u)" == 0 ]]; then chown postgres: "$dir"; fi
  _cp_pg_run "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$data/pg-statements-initdb.log" 2>&1
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = ''"
    echo "max_connections = 100"
    echo "shared_buffers = 128MB"
    echo "autovacuum = off"
    echo "shared_preload_libraries = 'pg_stat_statements'"
    echo "pg_stat_statements.track = all"
    echo "pg_stat_statements.track_planning = on"
    echo "pg_stat_statements.max = 5000"
  } >>"$dir/postgresql.conf"
fi
if [[ "$(id -u)" == 0 ]]; then touch "$data/pg-statements.log" && chown postgres: "$data/pg-statements.log"; fi
port="$(_cp_free_port 55532)"
_cp_pg_run "$bindir/pg_ctl" -D "$dir" -l "$data/pg-statements.log" -o "-p $port" -w -t 60 start >/dev/null
stop() { _cp_pg_run "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true; }
trap stop EXIT
_cp_pg_run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres creditpool 2>/dev/null || true
export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/creditpool"
echo "pg-stat-statements: private PostgreSQL with pg_stat_statements at ${DATABASE_URL}" >&2
if [[ $# -eq 0 ]]; then set -- npx tsx bench/perf.ts; fi
bash scripts/with-services.sh "$@"
