#!/usr/bin/env bash
# Local stand-ins for the AWS side of doka, installed on first use and started as plain processes:
#   - moto server     : STS (AssumeRole, AssumeRoleWithWebIdentity) that keeps accounts apart
#   - kinesis-mock    : Kinesis Data Streams; 12-digit access key ids select an account,
#                       any other key (the ASIA... keys STS hands out) lands in account B.
# The Kafka side needs nothing installed: tests and the demo host librdkafka's mock cluster,
# a real Kafka-protocol broker on a TCP port (see ../shared/reference/local-stack.md for why).
#
# Usage: scripts/stack.sh install|up|down|status|env
# Idempotent: `up` installs what is missing and reuses services that already answer.
set -euo pipefail

STACK_DIR=${DOKA_STACK_DIR:-"$HOME/.cache/doka-stack"}
MOTO_PORT=${DOKA_MOTO_PORT:-4599}
KINESIS_PORT=${DOKA_KINESIS_PORT:-4568}
KINESIS_TLS_PORT=${DOKA_KINESIS_TLS_PORT:-4569}
ACCOUNT_B=222222222222
MOTO_VERSION="moto[server]>=5.1,<6"
KINESIS_MOCK_VERSION="kinesis-local@0.6.2"
RUN_DIR="$STACK_DIR/run"
KINESIS_PKG="$STACK_DIR/kinesis/node_modules/kinesis-local"

log() { echo "stack: $*" >&2; }

install() {
  mkdir -p "$STACK_DIR" "$RUN_DIR"
  if [ ! -x "$STACK_DIR/venv/bin/moto_server" ]; then
    log "installing moto server into $STACK_DIR/venv"
    python3 -m venv "$STACK_DIR/venv"
    "$STACK_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "$MOTO_VERSION"
  fi
  if [ ! -f "$KINESIS_PKG/main.js" ]; then
    log "installing kinesis-mock ($KINESIS_MOCK_VERSION) into $STACK_DIR/kinesis"
    npm install --silent --no-audit --no-fund --prefix "$STACK_DIR/kinesis" "$KINESIS_MOCK_VERSION"
  fi
}

answers() { # port path
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1$2"
}

running() { # name
  local pidfile="$RUN_DIR/$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_for() { # name port path
  for _ in $(seq 1 120); do
    if answers "$2" "$3"; then return 0; fi
    if ! running "$1"; then
      log "$1 exited during start-up; its log:"; tail -n 30 "$RUN_DIR/$1.log" >&2; return 1
    fi
    sleep 0.5
  done
  log "$1 did not answer on port $2 within 60 s; its log:"; tail -n 30 "$RUN_DIR/$1.log" >&2
  return 1
}

up() {
  install
  if running moto && answers "$MOTO_PORT" /; then
    log "moto already up on $MOTO_PORT"
  else
    log "starting moto (STS) on 127.0.0.1:$MOTO_PORT"
    # Detached from our stdout: `$(stack.sh up)` must not wait for the services to end.
    nohup "$STACK_DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" </dev/null >"$RUN_DIR/moto.log" 2>&1 &
    echo $! >"$RUN_DIR/moto.pid"
    wait_for moto "$MOTO_PORT" /
  fi
  if running kinesis && answers "$KINESIS_PORT" /; then
    log "kinesis-mock already up on $KINESIS_PORT"
  else
    log "starting kinesis-mock on 127.0.0.1:$KINESIS_PORT (default account $ACCOUNT_B)"
    # kinesis-mock reads server.json from its working directory.
    (cd "$KINESIS_PKG" && KINESIS_MOCK_PLAIN_PORT="$KINESIS_PORT" KINESIS_MOCK_TLS_PORT="$KINESIS_TLS_PORT" \
      AWS_ACCOUNT_ID="$ACCOUNT_B" LOG_LEVEL=WARN CREATE_STREAM_DURATION=100ms SHARD_LIMIT=1000 \
      exec nohup node main.js) </dev/null >"$RUN_DIR/kinesis.log" 2>&1 &
    echo $! >"$RUN_DIR/kinesis.pid"
    wait_for kinesis "$KINESIS_PORT" /
  fi
  env_lines
}

down() {
  for name in moto kinesis; do
    if running "$name"; then
      log "stopping $name"
      pid=$(cat "$RUN_DIR/$name.pid")
      kill "$pid" 2>/dev/null || true
      # Wait for the port to be free before anyone starts it again.
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
}

status() {
  for name in moto kinesis; do
    if running "$name"; then echo "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

env_lines() {
  echo "DOKA_TEST_STS_ENDPOINT=http://127.0.0.1:$MOTO_PORT"
  echo "DOKA_TEST_KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT"
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 install|up|down|status|env" >&2; exit 2 ;;
esac
