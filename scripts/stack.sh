#!/usr/bin/env bash
# Local stand-ins for the AWS side of doka, installed on first use and started as plain processes:
#   - moto server     : STS (AssumeRole, AssumeRoleWithWebIdentity) that keeps accounts apart
#   - kinesis-mock    : Kinesis Data Streams; 12-digit access key ids select an account,
#                       any other key (the ASIA... keys STS hands out) lands in account B.
#   - moto also serves Firehose, S3 and the Glue Schema Registry on the same port.
#   - schema_registry : rivven-schema, a Confluent Schema Registry REST API (in-memory), for the
#                       schema-registry tests; the venv also gets the producers' serializers.
#   - registry_proxy  : nginx in front of it with HTTPS (the test CA) and basic authentication,
#                       as registries are deployed; rivven-schema has no authentication itself.
# and, for the authenticated Kafka listeners MSK offers (TLS, mutual TLS, SASL/SCRAM, IAM):
#   - auth_broker     : examples/auth_broker.rs, four librdkafka mock brokers, the SCRAM and
#                       OAUTHBEARER ones behind a SASL-handling proxy (tokens are recorded)
#   - stunnel         : terminates TLS in front of them, with a test CA generated here
# Plain Kafka needs nothing: tests and the demo host librdkafka's mock cluster themselves,
# a real Kafka-protocol broker on a TCP port (see ../shared/reference/local-stack.md for why).
# `install` also runs scripts/tools.sh install (hadolint, kubernetes-validate, prometheus and
# promtool for tests/deploy.rs and the metrics tests); `up` and `env` print their paths too.
#
# Usage: scripts/stack.sh install|up|down [service...]|stopped|status|env
# Idempotent: `up` installs what is missing and reuses services that already answer.
set -euo pipefail

STACK_DIR=${DOKA_STACK_DIR:-"$HOME/.cache/doka-stack"}
MOTO_PORT=${DOKA_MOTO_PORT:-4599}
KINESIS_PORT=${DOKA_KINESIS_PORT:-4568}
KINESIS_TLS_PORT=${DOKA_KINESIS_TLS_PORT:-4569}
SCHEMA_REGISTRY_PORT=${DOKA_SCHEMA_REGISTRY_PORT:-4631}
REGISTRY_PROXY_PORT=${DOKA_REGISTRY_PROXY_PORT:-4632}
REGISTRY_USER=doka-registry
REGISTRY_PASSWORD=doka-registry-secret
# Pinned: it is young (0.0.x). Built once (minutes) and cached; its build directory is removed.
RIVVEN_VERSION=0.0.22
RIVVEN_BIN="$STACK_DIR/rivven/bin/rivven-schema"
# What tests/support/schema_producer.py imports (producers' serializers, as real producers use).
PRODUCER_PACKAGES=("confluent-kafka[avro,schemaregistry]>=2.6,<3" "fastavro>=1.9,<2" "jsonschema>=4,<5"
  "aws-glue-schema-registry==1.1.3" "protobuf>=4.25,<8" "boto3>=1.34,<2")
ACCOUNT_B=222222222222
MOTO_VERSION="moto[server]>=5.1,<6"
KINESIS_MOCK_VERSION="kinesis-local@0.6.2"
RUN_DIR="$STACK_DIR/run"
KINESIS_PKG="$STACK_DIR/kinesis/node_modules/kinesis-local"
# Kafka with authentication, in the order tls, mtls, scram, iam: clients use the public (TLS,
# stunnel) ports, which the mock brokers advertise; stunnel forwards to auth_broker's internal ones.
KAFKA_HOST=127.0.0.1
KAFKA_PUBLIC_PORTS=(4611 4612 4613 4614)
# A second TLS door to the tls cluster, with a certificate for another host name: hostname
# verification must refuse it.
KAFKA_WRONG_NAME_PORT=4615
KAFKA_INTERNAL_PORTS=(4621 4622 4623 4624)
SCRAM_USER=doka-test
SCRAM_PASSWORD=doka-test-secret
TLS_DIR="$STACK_DIR/tls"
TOKENS_FILE="$RUN_DIR/oauth-tokens.jsonl"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AUTH_BROKER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/auth_broker"
# Stopped in this order (stunnel before the brokers behind it).
SERVICES=(stunnel registry_proxy auth_broker moto kinesis schema_registry)

log() { echo "stack: $*" >&2; }

# Runs a noisy command quietly; shows its output only when it fails.
quiet() {
  local out
  if ! out=$("$@" 2>&1); then echo "$out" >&2; return 1; fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

stunnel_bin() { command -v stunnel4 || command -v stunnel; }

apt_install() { # package
  log "installing $1 (apt-get)"
  if ! quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1"; then
    quiet as_root apt-get update -q
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1"
  fi
}

install_stunnel() {
  stunnel_bin >/dev/null && return 0
  apt_install stunnel4
}

nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }

# A test CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by it,
# plus an unrelated CA and a key that matches no certificate, for the negative tests.
make_certs() {
  local f missing=0
  for f in ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem other-ca.pem other-key.pem \
    wrong-name.pem wrong-name-key.pem; do
    [ -s "$TLS_DIR/$f" ] || missing=1
  done
  [ "$missing" = 0 ] && return 0
  log "generating the test CA and certificates in $TLS_DIR"
  local tmp
  tmp=$(mktemp -d "$STACK_DIR/tls.XXXXXX")
  (
    cd "$tmp"
    printf '%s\n' '[req]' 'distinguished_name = dn' '[dn]' '[ca]' \
      'basicConstraints = critical, CA:TRUE' 'keyUsage = critical, keyCertSign, cRLSign' \
      'subjectKeyIdentifier = hash' >ca.cnf
    printf '%s\n' 'basicConstraints = CA:FALSE' 'keyUsage = critical, digitalSignature, keyEncipherment' \
      'extendedKeyUsage = serverAuth' 'subjectAltName = IP:127.0.0.1, DNS:localhost' >server.ext
    printf '%s\n' 'basicConstraints = CA:FALSE' 'keyUsage = critical, digitalSignature, keyEncipherment' \
      'extendedKeyUsage = clientAuth' >client.ext
    printf '%s\n' 'basicConstraints = CA:FALSE' 'keyUsage = critical, digitalSignature, keyEncipherment' \
      'extendedKeyUsage = serverAuth' 'subjectAltName = DNS:wrong-name.example' >wrong-name.ext
    for ca in "ca:doka test CA" "other-ca:unrelated test CA"; do
      quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -config ca.cnf -extensions ca \
        -subj "/CN=${ca#*:}" -keyout "${ca%%:*}-key.pem" -out "${ca%%:*}.pem"
    done
    for leaf in server:localhost client:doka-test-client wrong-name:wrong-name.example; do
      name=${leaf%%:*}
      quiet openssl req -new -newkey rsa:2048 -nodes -config ca.cnf -subj "/CN=${leaf#*:}" \
        -keyout "$name-key.pem" -out "$name.csr"
      quiet openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -days 3650 \
        -set_serial "0x$(openssl rand -hex 8)" -extfile "$name.ext" -out "$name.pem"
    done
    quiet openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other-key.pem
  )
  mkdir -p "$TLS_DIR"
  mv "$tmp"/*.pem "$TLS_DIR/"
  rm -rf "$tmp"
}

build_auth_broker() {
  if [ -x "$AUTH_BROKER_BIN" ] && [ "$AUTH_BROKER_BIN" -nt "$ROOT/examples/auth_broker.rs" ]; then return 0; fi
  log "building examples/auth_broker.rs"
  if ! (cd "$ROOT" && cargo build --quiet --example auth_broker) >&2; then
    # Examples link the crate's library: a half-edited src/ must not take the stack down.
    [ -x "$AUTH_BROKER_BIN" ] || return 1
    log "build failed; using the older $AUTH_BROKER_BIN"
  fi
}

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
  if ! "$STACK_DIR/venv/bin/python" -c "import confluent_kafka.schema_registry.avro, confluent_kafka.schema_registry.json_schema, fastavro, jsonschema, aws_schema_registry, google.protobuf, boto3" 2>/dev/null; then
    log "installing the schema producers' packages into $STACK_DIR/venv"
    "$STACK_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "${PRODUCER_PACKAGES[@]}"
  fi
  if [ ! -x "$RIVVEN_BIN" ]; then
    log "building rivven-schema $RIVVEN_VERSION (a Confluent Schema Registry API) into $STACK_DIR/rivven (once; minutes)"
    local target="$STACK_DIR/rivven-build" built=0
    # Niced: it shares the machine with whatever else builds or tests. The 1.2 GB build
    # directory goes either way (a retry rebuilds).
    CARGO_TARGET_DIR="$target" nice -n 10 cargo install --quiet --locked "rivven-schema@$RIVVEN_VERSION" \
      --root "$STACK_DIR/rivven" >&2 && built=1
    rm -rf "$target"
    [ "$built" = 1 ] || { log "building rivven-schema failed"; return 1; }
  fi
  install_stunnel
  [ -x "$(nginx_bin)" ] || apt_install nginx-light
  make_certs
  build_auth_broker
  # The deployment tools are not services: a failure to install them must not take the stack
  # down. The tests that need them say which one is missing.
  "$ROOT/scripts/tools.sh" install >/dev/null || log "scripts/tools.sh install failed; the deployment tests will say what is missing"
}

answers() { # port path
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1$2"
}

running() { # name
  local pidfile="$RUN_DIR/$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_open() { # port
  (: </dev/tcp/"$KAFKA_HOST"/"$1") 2>/dev/null
}

ports_open() { # port...
  local p
  for p in "$@"; do port_open "$p" || return 1; done
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
  if running schema_registry && answers "$SCHEMA_REGISTRY_PORT" /subjects; then
    log "rivven-schema already up on $SCHEMA_REGISTRY_PORT"
  else
    log "starting rivven-schema (Confluent Schema Registry API) on 127.0.0.1:$SCHEMA_REGISTRY_PORT"
    # NO_COLOR: its log (tracing) is plain text, without terminal colour codes.
    NO_COLOR=1 nohup "$RIVVEN_BIN" serve --host 127.0.0.1 --port "$SCHEMA_REGISTRY_PORT" </dev/null >"$RUN_DIR/schema_registry.log" 2>&1 &
    echo $! >"$RUN_DIR/schema_registry.pid"
    wait_for schema_registry "$SCHEMA_REGISTRY_PORT" /subjects
  fi
  start_registry_proxy
  start_auth_broker
  start_stunnel
  env_lines
}

start_registry_proxy() {
  if running registry_proxy && port_open "$REGISTRY_PROXY_PORT" && [ "$RUN_DIR/registry_proxy.pid" -nt "$TLS_DIR/ca.pem" ]; then
    log "nginx (registry proxy) already up on $REGISTRY_PROXY_PORT"
    return 0
  fi
  stop registry_proxy
  local dir="$RUN_DIR/nginx"
  mkdir -p "$dir"
  printf '%s:%s\n' "$REGISTRY_USER" "$(openssl passwd -apr1 "$REGISTRY_PASSWORD")" >"$dir/htpasswd"
  cat >"$dir/nginx.conf" <<EOF
# written by scripts/stack.sh: HTTPS and basic authentication in front of rivven-schema
daemon off;
# Workers as this user: they read the password file under its home.
user $(id -un);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_processes 1;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$REGISTRY_PROXY_PORT ssl;
    ssl_certificate $TLS_DIR/server.pem;
    ssl_certificate_key $TLS_DIR/server-key.pem;
    location / {
      auth_basic "schema registry";
      auth_basic_user_file $dir/htpasswd;
      proxy_pass http://127.0.0.1:$SCHEMA_REGISTRY_PORT;
    }
  }
}
EOF
  log "starting nginx (HTTPS + basic auth in front of rivven-schema) on 127.0.0.1:$REGISTRY_PROXY_PORT"
  nohup "$(nginx_bin)" -c "$dir/nginx.conf" -p "$dir" </dev/null >"$RUN_DIR/registry_proxy.log" 2>&1 &
  echo $! >"$RUN_DIR/registry_proxy.pid"
  for _ in $(seq 1 60); do
    if port_open "$REGISTRY_PROXY_PORT"; then return 0; fi
    if ! running registry_proxy; then
      log "nginx exited during start-up; its log:"; tail -n 30 "$RUN_DIR/registry_proxy.log" "$dir/error.log" >&2; return 1
    fi
    sleep 0.5
  done
  log "nginx did not listen on $REGISTRY_PROXY_PORT within 30 s"; return 1
}

start_auth_broker() {
  if running auth_broker && ports_open "${KAFKA_INTERNAL_PORTS[@]}"; then
    if [ "$AUTH_BROKER_BIN" -nt "$RUN_DIR/auth_broker.pid" ]; then
      log "auth_broker was rebuilt since it started; restarting it"
      stop auth_broker
    else
      log "auth_broker already up on ${KAFKA_INTERNAL_PORTS[*]}"
      return 0
    fi
  fi
  stop auth_broker # a half-started one would hold some of the ports
  log "starting auth_broker (mock brokers with TLS/mTLS/SCRAM/IAM listeners)"
  local ports public
  ports=$(IFS=,; echo "${KAFKA_INTERNAL_PORTS[*]}")
  public=$(IFS=,; echo "${KAFKA_PUBLIC_PORTS[*]}")
  # A fresh record of OAUTHBEARER tokens for each start (tests look theirs up by client id).
  : >"$TOKENS_FILE"
  # The password goes by environment, not on the command line that `ps` shows.
  DOKA_TEST_SCRAM_USER="$SCRAM_USER" DOKA_TEST_SCRAM_PASSWORD="$SCRAM_PASSWORD" \
    nohup "$AUTH_BROKER_BIN" --host "$KAFKA_HOST" --advertise-host "$KAFKA_HOST" \
    --ports "$ports" --public-ports "$public" --tokens-file "$TOKENS_FILE" \
    </dev/null >"$RUN_DIR/auth_broker.log" 2>&1 &
  echo $! >"$RUN_DIR/auth_broker.pid"
  for _ in $(seq 1 120); do
    if grep -q "^auth_broker: ready" "$RUN_DIR/auth_broker.log"; then return 0; fi
    if ! running auth_broker; then
      log "auth_broker exited during start-up; its log:"; tail -n 30 "$RUN_DIR/auth_broker.log" >&2; return 1
    fi
    sleep 0.5
  done
  log "auth_broker was not ready within 60 s; its log:"; tail -n 30 "$RUN_DIR/auth_broker.log" >&2
  return 1
}

start_stunnel() {
  # A running stunnel serves the certificates it read at its start: restart it when they changed.
  if running stunnel && ports_open "${KAFKA_PUBLIC_PORTS[@]}" "$KAFKA_WRONG_NAME_PORT" \
    && [ "$RUN_DIR/stunnel.pid" -nt "$TLS_DIR/ca.pem" ]; then
    log "stunnel already up on ${KAFKA_PUBLIC_PORTS[*]}"
    return 0
  fi
  stop stunnel
  local conf="$RUN_DIR/stunnel.conf" i
  local names=(tls mtls scram iam)
  {
    echo "; written by scripts/stack.sh: TLS in front of auth_broker's plain listeners"
    echo "foreground = yes"
    echo "pid ="
    echo "debug = warning"
    # Kafka is request/response with small frames: Nagle would add delayed-ACK stalls.
    echo "socket = l:TCP_NODELAY=1"
    echo "socket = r:TCP_NODELAY=1"
    for i in 0 1 2 3; do
      echo
      echo "[kafka-${names[$i]}]"
      echo "accept = $KAFKA_HOST:${KAFKA_PUBLIC_PORTS[$i]}"
      echo "connect = $KAFKA_HOST:${KAFKA_INTERNAL_PORTS[$i]}"
      echo "cert = $TLS_DIR/server.pem"
      echo "key = $TLS_DIR/server-key.pem"
      if [ "${names[$i]}" = mtls ]; then
        # Mutual TLS: no certificate, or one not signed by the test CA, is refused in the handshake.
        echo "CAfile = $TLS_DIR/ca.pem"
        echo "verifyChain = yes"
        echo "requireCert = yes"
      fi
    done
    echo
    echo "[kafka-tls-wrong-name]"
    echo "accept = $KAFKA_HOST:$KAFKA_WRONG_NAME_PORT"
    echo "connect = $KAFKA_HOST:${KAFKA_INTERNAL_PORTS[0]}"
    echo "cert = $TLS_DIR/wrong-name.pem"
    echo "key = $TLS_DIR/wrong-name-key.pem"
  } >"$conf"
  log "starting stunnel (TLS) on ${KAFKA_PUBLIC_PORTS[*]}"
  nohup "$(stunnel_bin)" "$conf" </dev/null >"$RUN_DIR/stunnel.log" 2>&1 &
  echo $! >"$RUN_DIR/stunnel.pid"
  for _ in $(seq 1 60); do
    if ports_open "${KAFKA_PUBLIC_PORTS[@]}" "$KAFKA_WRONG_NAME_PORT"; then return 0; fi
    if ! running stunnel; then
      log "stunnel exited during start-up; its log:"; tail -n 30 "$RUN_DIR/stunnel.log" >&2; return 1
    fi
    sleep 0.5
  done
  log "stunnel did not listen on ${KAFKA_PUBLIC_PORTS[*]} within 30 s; its log:"; tail -n 30 "$RUN_DIR/stunnel.log" >&2
  return 1
}

stop() { # name
  local name=$1 pid
  if running "$name"; then
    log "stopping $name"
    pid=$(cat "$RUN_DIR/$name.pid")
    kill "$pid" 2>/dev/null || true
    # Wait for the port to be free before anyone starts it again.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/$name.pid"
}

down() { # [name...]: those services only (default: all)
  local wanted=" ${*:-${SERVICES[*]}} " name p
  for name in "${SERVICES[@]}"; do
    [[ "$wanted" == *" $name "* ]] && stop "$name"
  done
  # Wait for the ports of what was stopped to be free before anyone starts it again.
  local ports=()
  [[ "$wanted" == *" stunnel "* ]] && ports+=("${KAFKA_PUBLIC_PORTS[@]}" "$KAFKA_WRONG_NAME_PORT")
  [[ "$wanted" == *" auth_broker "* ]] && ports+=("${KAFKA_INTERNAL_PORTS[@]}")
  [[ "$wanted" == *" registry_proxy "* ]] && ports+=("$REGISTRY_PROXY_PORT")
  for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do port_open "$p" || break; sleep 0.2; done
    if port_open "$p"; then log "port $p is still in use (by a process not started by this script?)"; fi
  done
}

# The services not running now, on one line: what an `up` that follows starts, and what a
# script that wants to leave the machine as it found it stops afterwards.
stopped() {
  local name out=()
  for name in "${SERVICES[@]}"; do running "$name" || out+=("$name"); done
  echo "${out[*]}"
}

status() {
  for name in "${SERVICES[@]}"; do
    if running "$name"; then echo "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

env_lines() {
  echo "DOKA_TEST_STS_ENDPOINT=http://127.0.0.1:$MOTO_PORT"
  echo "DOKA_TEST_KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT"
  echo "DOKA_TEST_GLUE_ENDPOINT=http://127.0.0.1:$MOTO_PORT"
  echo "DOKA_TEST_SCHEMA_REGISTRY=http://127.0.0.1:$SCHEMA_REGISTRY_PORT"
  echo "DOKA_TEST_PYTHON=$STACK_DIR/venv/bin/python"
  echo "DOKA_TEST_REGISTRY_HTTPS=https://127.0.0.1:$REGISTRY_PROXY_PORT"
  echo "DOKA_TEST_REGISTRY_USER=$REGISTRY_USER"
  echo "DOKA_TEST_REGISTRY_PASSWORD=$REGISTRY_PASSWORD"
  echo "DOKA_TEST_KAFKA_TLS=$KAFKA_HOST:${KAFKA_PUBLIC_PORTS[0]}"
  echo "DOKA_TEST_KAFKA_MTLS=$KAFKA_HOST:${KAFKA_PUBLIC_PORTS[1]}"
  echo "DOKA_TEST_KAFKA_SCRAM=$KAFKA_HOST:${KAFKA_PUBLIC_PORTS[2]}"
  echo "DOKA_TEST_KAFKA_IAM=$KAFKA_HOST:${KAFKA_PUBLIC_PORTS[3]}"
  echo "DOKA_TEST_KAFKA_TLS_WRONG_NAME=$KAFKA_HOST:$KAFKA_WRONG_NAME_PORT"
  echo "DOKA_TEST_TLS_DIR=$TLS_DIR"
  echo "DOKA_TEST_OAUTH_TOKENS=$TOKENS_FILE"
  echo "DOKA_TEST_SCRAM_USER=$SCRAM_USER"
  echo "DOKA_TEST_SCRAM_PASSWORD=$SCRAM_PASSWORD"
  "$ROOT/scripts/tools.sh" env
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) shift; down "$@" ;;
  stopped) stopped ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 install|up|down [service...]|stopped|status|env" >&2; exit 2 ;;
esac
