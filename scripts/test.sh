#!/usr/bin/env bash
# Runs every test: unit tests, config tests, and the end-to-end tests against the local stack.
# Starts the stack (installing it on first use) and stops it again if it was not running before.
set -euo pipefail
cd "$(dirname "$0")/.."

# Only what this run starts is stopped at the end (set before `up`: a start-up that fails
# half-way leaves nothing behind); services already running are left running.
starting=$(scripts/stack.sh stopped)
if [ -n "$starting" ]; then
  # shellcheck disable=SC2064 # the names are meant to be expanded now
  trap "scripts/stack.sh down $starting" EXIT
fi
# `up` prints the endpoints as NAME=value lines; the tests read them from the environment.
# (Two steps: `eval "$(…)"` would go on when `up` fails.)
endpoints=$(scripts/stack.sh up)
# The container image (tests/image.rs runs it): built from deploy/Dockerfile with buildah, or
# reused from the layer cache when nothing it is built from changed (seconds). A filtered run
# (arguments) uses the image `make image` last built instead of building it.
if [ $# -gt 0 ]; then
  image=$(scripts/image.sh env)
else
  image=$(scripts/image.sh)
fi
set -a
eval "$endpoints"
eval "$image"
set +a

# The crash test runs alone after everything else, at full size (100,000 records, 5 SIGKILLs):
# it keeps kinesis-mock busy for minutes, which would slow every test running beside it.
# DOKA_CRASH_RECORDS=6000 make test for a quick run. Arguments run one filtered pass instead.
export DOKA_CRASH_RECORDS=${DOKA_CRASH_RECORDS:-100000}
status=0
if cargo nextest --version >/dev/null 2>&1; then
  if [ $# -gt 0 ]; then
    cargo nextest run --no-fail-fast "$@"
    exit
  fi
  cargo nextest run --no-fail-fast -E 'not binary(crash)' || status=$?
  cargo nextest run --no-fail-fast --test crash || status=$?
else
  if [ $# -gt 0 ]; then
    cargo test --no-fail-fast "$@"
    exit
  fi
  cargo test --no-fail-fast -- --skip sigkill_at_random_moments || status=$?
  cargo test --no-fail-fast --test crash || status=$?
fi
exit $status
