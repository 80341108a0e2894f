#!/usr/bin/env bash
# Runs every test: unit tests, config tests, and the end-to-end tests against the local stack.
# Starts the stack (installing it on first use) and stops it again if it was not running before.
set -euo pipefail
cd "$(dirname "$0")/.."

was_running=$(scripts/stack.sh status | grep -c running || true)
# `up` prints the endpoints as NAME=value lines; the tests read them from the environment.
set -a
eval "$(scripts/stack.sh up)"
set +a
if [ "$was_running" -lt 2 ]; then
  trap 'scripts/stack.sh down' EXIT
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
