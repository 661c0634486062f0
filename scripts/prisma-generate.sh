#!/usr/bin/env bash
# Runs `prisma generate` without network access.
#
# The Prisma 7 CLI insists on resolving a native schema-engine binary before it generates
# anything, and tries to download one when none is present. Client generation itself is pure
# WebAssembly and never runs that binary, so we point PRISMA_SCHEMA_ENGINE_BINARY at a stub
# executable (exits 1) unless the caller already set it to a real engine.
#
# Usage: bash scripts/prisma-generate.sh [extra `prisma generate` args, e.g. --schema path]
# Exits 0 with a note when prisma/schema.prisma does not exist yet, or (as npm's postinstall)
# when the prisma CLI is not installed, so `npm install` never fails because of it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

has_schema_arg=0
for arg in "$@"; do
  case "$arg" in --schema|--schema=*) has_schema_arg=1 ;; esac
done
if [[ $has_schema_arg -eq 0 && ! -f prisma/schema.prisma ]]; then
  echo "prisma-generate: prisma/schema.prisma not found, skipping prisma generate"
  exit 0
fi

if [[ ! -x node_modules/.bin/prisma ]]; then
  if [[ "${npm_lifecycle_event:-}" == postinstall ]]; then
    # e.g. `npm ci --omit=dev`: the prisma CLI (a devDependency) is absent; not an error here.
    echo "prisma-generate: prisma CLI not installed, skipping prisma generate"
    exit 0
  fi
  echo "prisma-generate: node_modules/.bin/prisma missing (run npm install first)" >&2
  exit 1
fi

if [[ -z "${PRISMA_SCHEMA_ENGINE_BINARY:-}" ]]; then
  stub_dir="$root/node_modules/.cache/creditpool"
  stub="$stub_dir/schema-engine-stub"
  if [[ ! -x "$stub" ]]; then
    mkdir -p "$stub_dir"
    printf '%s\n' '#!/bin/sh' \
      'echo "schema-engine stub: the native Prisma schema engine is not installed here; use npm run db:migrate / db:diff" >&2' \
      'exit 1' >"$stub"
    chmod +x "$stub"
  fi
  export PRISMA_SCHEMA_ENGINE_BINARY="$stub"
fi
# Never let the CLI phone home (update check / telemetry) on an offline machine.
export CHECKPOINT_DISABLE=1
export PRISMA_HIDE_UPDATE_MESSAGE=1

# Generators (prisma-pothos-types) are resolved through PATH, as under `npm run`.
export PATH="$root/node_modules/.bin:$PATH"

exec prisma generate "$@"
