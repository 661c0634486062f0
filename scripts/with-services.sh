#!/usr/bin/env bash
# Runs a command with PostgreSQL and Redis reachable (DATABASE_URL, REDIS_URL and
# TEST_DATABASE_URL exported by scripts/services.sh, which starts private instances from
# Debian's packages when none is reachable).   Usage: bash scripts/with-services.sh <command...>
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/services.sh
source scripts/services.sh
if [[ ! -d src/generated/prisma ]]; then
  bash scripts/prisma-generate.sh
fi
exec "$@"
