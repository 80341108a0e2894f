#!/usr/bin/env bash
# `make demo`: start the local AWS stack, build doka and watch it move records end to end.
# Stops the stand-ins it started when it ends, however it ends (as scripts/test.sh does); services
# that were already running (`make stack` keeps them up on purpose) are left running, one by one.
set -euo pipefail
cd "$(dirname "$0")/.."

# Set before `up`, so that a start-up that fails half-way does not leave services behind.
starting=$(scripts/stack.sh stopped)
if [ -n "$starting" ]; then
  # shellcheck disable=SC2064 # the names are meant to be expanded now
  trap "scripts/stack.sh down $starting" EXIT
fi
# (Two steps: `eval "$(…)"` would go on when `up` fails.)
endpoints=$(scripts/stack.sh up)
set -a
eval "$endpoints"
set +a
cargo build --bin doka --example demo
DOKA_BIN=target/debug/doka target/debug/examples/demo
