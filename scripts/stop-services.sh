#!/usr/bin/env bash
# Stops the PRIVATE PostgreSQL / Redis instances that scripts/services.sh started under
# <project>/.data/ (or $CREDITPOOL_DATA_DIR). Never touches any other server. Data stays on
# disk (rm -rf .data to drop it); the next `source scripts/services.sh` restarts them.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${CREDITPOOL_DATA_DIR:-$root/.data}"
stopped=0

# <data>/pg may be a symlink to where the postgres user can reach it (scripts/services.sh).
pgdir="$(readlink -f "$data/pg" 2>/dev/null || echo "$data/pg")"
if [[ -f "$pgdir/postmaster.pid" ]]; then
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -n "$bindir" ]]; then
    if [[ "$(id -u)" == 0 ]]; then
      (cd / && runuser -u postgres -- "$bindir/pg_ctl" -D "$pgdir" -m fast -w stop >/dev/null) || true
    else
      "$bindir/pg_ctl" -D "$pgdir" -m fast -w stop >/dev/null || true
    fi
    echo "stop-services: stopped private PostgreSQL ($pgdir)"
    stopped=1
  fi
fi

pidfile="$data/redis/redis.pid"
if [[ -f "$pidfile" ]]; then
  pid="$(cat "$pidfile")"
  # Only a redis-server whose pid file is ours.
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q redis-server "/proc/$pid/comm" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stop-services: stopped private Redis (pid $pid)"
    stopped=1
  fi
  rm -f "$pidfile"
fi

[[ $stopped == 1 ]] || echo "stop-services: no private instance running under $data"
