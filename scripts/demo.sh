#!/usr/bin/env bash
# `make demo`: start the local AWS stack, build doka and watch it move records end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a
eval "$(scripts/stack.sh up)"
set +a
cargo build --bin doka --example demo
DOKA_BIN=target/debug/doka target/debug/examples/demo
