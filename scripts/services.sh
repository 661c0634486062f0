# shellcheck shell=bash
# Makes PostgreSQL and Redis reachable and exports DATABASE_URL, REDIS_URL and
# TEST_DATABASE_URL. Meant to be sourced:   source scripts/services.sh
#
# For each service:
#   1. $DATABASE_URL / $REDIS_URL when set and reachable;
#   2. when not set, the defaults postgresql://postgres@127.0.0.1:5432/creditpool and
#      redis://127.0.0.1:6379 if reachable (overridable with CREDITPOOL_PG_DEFAULT /
#      CREDITPOOL_REDIS_DEFAULT, e.g. for tests);
#   3. else (a given URL that is not reachable included) a PRIVATE instance under <project>/.data/ (or $CREDITPOOL_DATA_DIR) on a free port,
#      started from Debian's postgresql / redis-server packages (installed with apt-get when
#      missing). Its URL is recorded in .data/services.env so later runs reuse it (restarting it
#      when stopped). scripts/stop-services.sh stops private instances.
# TEST_DATABASE_URL defaults to the same server with database creditpool_test; a given one whose
# server is not reachable is moved to the chosen server (same database name).
# Works under `set -euo pipefail`; on failure it returns non-zero (never exits the caller).

_cp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_cp_data="${CREDITPOOL_DATA_DIR:-$_cp_root/.data}"
_cp_env="$_cp_data/services.env"

_cp_log() { echo "services: $*" >&2; }

# host and port of a URL, printed as "host port" (default port $2).
_cp_hostport() {
  local url="$1" default_port="$2" rest host port
  rest="${url#*://}"
  rest="${rest%%[/?]*}"
  rest="${rest##*@}"
  if [[ "$rest" == \[*\]* ]]; then
    host="${rest%%]*}]"; port="${rest#"$host"}"; port="${port#:}"
  elif [[ "$rest" == *:* ]]; then
    host="${rest%:*}"; port="${rest##*:}"
  else
    host="$rest"; port=""
  fi
  host="${host#[}"; host="${host%]}"
  echo "${host:-127.0.0.1} ${port:-$default_port}"
}

# Succeeds when something accepts TCP connections on host $1 port $2 (2 s limit).
_cp_tcp_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

_cp_pg_ok() {
  local hp; hp="$(_cp_hostport "$1" 5432)"
  set -- ${hp}
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$1" -p "$2" -t 3 >/dev/null 2>&1
  else
    _cp_tcp_open "$1" "$2"
  fi
}

_cp_redis_ok() {
  local url="$1" hp; hp="$(_cp_hostport "$url" 6379)"
  set -- ${hp}
  if command -v redis-cli >/dev/null 2>&1; then
    [[ "$(timeout 3 redis-cli -u "$url" ping 2>/dev/null)" == "PONG" ]]
  else
    _cp_tcp_open "$1" "$2"
  fi
}

# A TCP port on 127.0.0.1 that nobody listens on, starting at $1, skipping $2.
_cp_free_port() {
  local port="$1"
  while (( port < 65000 )); do
    if [[ "$port" != "${2:-}" ]] && ! _cp_tcp_open 127.0.0.1 "$port"; then
      echo "$port"; return 0
    fi
    port=$((port + 1))
  done
  _cp_log "no free port found"; return 1
}

# Runs a command as root (directly, or through sudo when available).
_cp_as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else _cp_log "need root to run: $* (no sudo)"; return 1
  fi
}

_cp_apt_updated=0
_cp_apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    _cp_log "apt-get not found; install $* yourself"; return 1
  fi
  if [[ $_cp_apt_updated == 0 ]]; then
    _cp_as_root apt-get update -qq >&2 || return 1
    _cp_apt_updated=1
  fi
  _cp_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# Directory of the newest installed PostgreSQL server binaries (installs them if missing).
_cp_pg_bindir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
    _cp_log "installing postgresql with apt-get"
    _cp_apt_install postgresql || return 1
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [[ -n "$dir" && -x "$dir/initdb" ]] || { _cp_log "PostgreSQL server binaries not found"; return 1; }
  echo "$dir"
}

# Runs a PostgreSQL binary; as the `postgres` system user when we are root (postgres refuses
# to run as root).
_cp_pg_run() {
  if [[ "$(id -u)" == 0 ]]; then
    (cd / && runuser -u postgres -- "$@") # from /: the caller's directory may be closed to postgres
  else
    "$@"
  fi
}

# Where the private PostgreSQL's data directory is: <data>/pg, or, when we are root and the
# `postgres` user cannot reach <data> (a clone under /root, mode 0700, on a fresh machine),
# /var/lib/creditpool/<hash of the project path>/pg with <data>/pg a symlink to it (so
# scripts/stop-services.sh and later runs find it). Prints the real directory.
_cp_pg_datadir() {
  local home
  if [[ -L "$_cp_data/pg" ]]; then readlink -f "$_cp_data/pg"; return 0; fi
  if [[ "$(id -u)" == 0 ]] && ! runuser -u postgres -- test -x "$_cp_data" 2>/dev/null; then
    home="/var/lib/creditpool/$(printf '%s' "$_cp_root" | sha256sum | cut -c1-16)"
    _cp_log "the postgres user cannot reach $_cp_data; keeping the private PostgreSQL's data in $home/pg"
    install -d -o postgres -g postgres -m 700 "$home" || return 1
    rm -rf "$_cp_data/pg" && ln -s "$home/pg" "$_cp_data/pg" || return 1
    echo "$home/pg"; return 0
  fi
  echo "$_cp_data/pg"
}

# Starts (initialising on first use) the private PostgreSQL on port $1.
_cp_start_private_pg() {
  local port="$1" bindir dir pglog db
  bindir="$(_cp_pg_bindir)" || return 1
  mkdir -p "$_cp_data" || return 1
  dir="$(_cp_pg_datadir)" || return 1
  pglog="$(dirname "$dir")/pg.log"
  if [[ ! -f "$dir/PG_VERSION" ]]; then
    _cp_log "initialising private PostgreSQL in $dir"
    rm -rf "$dir" && mkdir -p "$dir" && chmod 700 "$dir" || return 1
    if [[ "$(id -u)" == 0 ]]; then chown postgres: "$dir" || return 1; fi
    _cp_pg_run "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$_cp_data/pg-initdb.log" 2>&1 \
      || { _cp_log "initdb failed, see $_cp_data/pg-initdb.log"; return 1; }
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = ''"
      echo "fsync = off"
      echo "max_connections = 200"
    } >>"$dir/postgresql.conf" || return 1
  fi
  if [[ "$(id -u)" == 0 ]]; then
    touch "$pglog" && chown postgres: "$pglog" || return 1
  fi
  _cp_detached _cp_pg_run "$bindir/pg_ctl" -D "$dir" -l "$pglog" -o "-p $port" -w -t 60 start >/dev/null \
    || { _cp_log "PostgreSQL did not start, see $pglog"; return 1; }
  for db in creditpool creditpool_test; do
    _cp_pg_run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" 2>/dev/null || true
  done
}

# Starts the private Redis on port $1.
_cp_start_private_redis() {
  local port="$1" dir="$_cp_data/redis" i
  if ! command -v redis-server >/dev/null 2>&1; then
    _cp_log "installing redis-server with apt-get"
    _cp_apt_install redis-server || return 1
  fi
  mkdir -p "$dir" || return 1
  _cp_detached redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes --save "" --appendonly no \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null || return 1
  for i in $(seq 1 50); do
    _cp_redis_ok "redis://127.0.0.1:$port" && return 0
    sleep 0.1
  done
  _cp_log "Redis did not start, see $dir/redis.log"; return 1
}

# Runs a command without the services.lock descriptor: daemons inherit open descriptors, and
# one holding the flock would block every later run.
_cp_detached() {
  if [[ -n "${_cp_lock_fd:-}" ]]; then
    "$@" {_cp_lock_fd}>&-
  else
    "$@"
  fi
}

_cp_save_env() {
  mkdir -p "$_cp_data" || return 1
  {
    echo "# Private instances started by scripts/services.sh (stop: scripts/stop-services.sh)"
    echo "CREDITPOOL_PRIVATE_PG_URL=${_cp_priv_pg:-}"
    echo "CREDITPOOL_PRIVATE_REDIS_URL=${_cp_priv_redis:-}"
  } >"$_cp_env.tmp" && mv "$_cp_env.tmp" "$_cp_env"
}

_cp_read_env() {
  if [[ -f "$_cp_env" ]]; then
    _cp_priv_pg="$(sed -n 's/^CREDITPOOL_PRIVATE_PG_URL=//p' "$_cp_env")"
    _cp_priv_redis="$(sed -n 's/^CREDITPOOL_PRIVATE_REDIS_URL=//p' "$_cp_env")"
  fi
}

# Uses or starts the private instances for whichever of pg_url / redis_url (of _cp_main) is
# empty. Explicit `|| return 1`: `set -e` does not apply inside a function called with `||`.
_cp_start_missing() {
  if [[ -z "$pg_url" ]]; then
    if [[ -n "$_cp_priv_pg" ]] && _cp_pg_ok "$_cp_priv_pg"; then
      :
    else
      port=""
      [[ -n "$_cp_priv_pg" ]] && port="$(_cp_hostport "$_cp_priv_pg" 5432 | cut -d' ' -f2)"
      if [[ -z "$port" ]] || _cp_tcp_open 127.0.0.1 "$port"; then port="$(_cp_free_port 55432)" || return 1; fi
      _cp_start_private_pg "$port" || return 1
      _cp_priv_pg="postgresql://postgres@127.0.0.1:$port/creditpool"
      _cp_save_env || return 1
    fi
    pg_url="$_cp_priv_pg"; pg_kind="private"
  fi
  if [[ -z "$redis_url" ]]; then
    if [[ -n "$_cp_priv_redis" ]] && _cp_redis_ok "$_cp_priv_redis"; then
      :
    else
      port=""
      [[ -n "$_cp_priv_redis" ]] && port="$(_cp_hostport "$_cp_priv_redis" 6379 | cut -d' ' -f2)"
      if [[ -z "$port" ]] || _cp_tcp_open 127.0.0.1 "$port"; then
        port="$(_cp_free_port 56379 "$(_cp_hostport "$pg_url" 5432 | cut -d' ' -f2)")" || return 1
      fi
      _cp_start_private_redis "$port" || return 1
      _cp_priv_redis="redis://127.0.0.1:$port"
      _cp_save_env || return 1
    fi
    redis_url="$_cp_priv_redis"; redis_kind="private"
  fi
}

_cp_main() {
  local pg_default="${CREDITPOOL_PG_DEFAULT:-postgresql://postgres@127.0.0.1:5432/creditpool}"
  local redis_default="${CREDITPOOL_REDIS_DEFAULT:-redis://127.0.0.1:6379}"
  local pg_url="" redis_url="" pg_kind="" redis_kind="" url port
  _cp_priv_pg="" _cp_priv_redis="" _cp_lock_fd=""

  # PostgreSQL: the given URL, else the default. A given URL that is not reachable is replaced by
  # a private instance, never by the default: that may be another project's (shared) server.
  if [[ -n "${DATABASE_URL:-}" ]]; then
    if _cp_pg_ok "$DATABASE_URL"; then pg_url="$DATABASE_URL"; pg_kind="DATABASE_URL"
    else _cp_log "DATABASE_URL not reachable (${DATABASE_URL%%\?*}): using a private PostgreSQL"; fi
  elif _cp_pg_ok "$pg_default"; then pg_url="$pg_default"; pg_kind="default"
  fi
  if [[ -n "${REDIS_URL:-}" ]]; then
    if _cp_redis_ok "$REDIS_URL"; then redis_url="$REDIS_URL"; redis_kind="REDIS_URL"
    else _cp_log "REDIS_URL not reachable ($REDIS_URL): using a private Redis"; fi
  elif _cp_redis_ok "$redis_default"; then redis_url="$redis_default"; redis_kind="default"
  fi

  # Private instances recorded by an earlier run and still up: no lock needed.
  if [[ -z "$pg_url" || -z "$redis_url" ]]; then
    _cp_read_env
    if [[ -z "$pg_url" && -n "$_cp_priv_pg" ]] && _cp_pg_ok "$_cp_priv_pg"; then
      pg_url="$_cp_priv_pg"; pg_kind="private"
    fi
    if [[ -z "$redis_url" && -n "$_cp_priv_redis" ]] && _cp_redis_ok "$_cp_priv_redis"; then
      redis_url="$_cp_priv_redis"; redis_kind="private"
    fi
  fi

  if [[ -z "$pg_url" || -z "$redis_url" ]]; then
    mkdir -p "$_cp_data"
    # One starter at a time (two shells sourcing this concurrently).
    if command -v flock >/dev/null 2>&1; then
      exec {_cp_lock_fd}>"$_cp_data/services.lock"
      flock "$_cp_lock_fd"
    fi
    _cp_read_env # another shell may have started them while we waited
    local rc=0
    _cp_start_missing || rc=$?
    if [[ -n "$_cp_lock_fd" ]]; then exec {_cp_lock_fd}>&-; _cp_lock_fd=""; fi
    [[ $rc == 0 ]] || return "$rc"
  fi

  export DATABASE_URL="$pg_url" REDIS_URL="$redis_url"
  # The test database on the chosen server: creditpool_test, or the database a given
  # TEST_DATABASE_URL names when its own server is not reachable (it pointed at the server
  # DATABASE_URL named, which was replaced).
  local test_db="creditpool_test" given="${TEST_DATABASE_URL:-}"
  if [[ -n "$given" ]] && ! _cp_pg_ok "$given"; then
    test_db="${given%%\?*}"; test_db="${test_db##*/}"
    _cp_log "TEST_DATABASE_URL not reachable (${given%%\?*}): using database $test_db on ${pg_url%%\?*}"
    given=""
  fi
  if [[ -z "$given" ]]; then
    local base="${pg_url%%\?*}" query
    query="${pg_url#"$base"}"
    if [[ "${base#*://}" == */* ]]; then base="${base%/*}"; fi
    export TEST_DATABASE_URL="$base/$test_db$query"
  fi
  echo "services: PostgreSQL ${DATABASE_URL%%\?*} ($pg_kind), Redis $REDIS_URL ($redis_kind)" >&2
}

_cp_main
