#!/usr/bin/env bash
# `make image`: builds doka's container image from deploy/Dockerfile, unchanged, with buildah —
# no Docker engine, no registry. Nothing is pulled: the Dockerfile's base images are made here
# and tagged under their docker.io/library/… names, so its FROM lines resolve locally.
#
#   scripts/image.sh          build (or reuse) the image; prints DOKA_IMAGE=… and the
#                             CONTAINERS_* lines podman needs to find it, as NAME=value lines
#   scripts/image.sh env      print those lines only (no build)
#   scripts/image.sh clean    remove everything this script made (images, layers, cache)
#
# - debian:<suite>-slim is made with mmdebstrap (minbase, docs/man pages/locales left out as the
#   official slim images do) from the machine's Debian mirror, trixie being the suite the
#   Dockerfile names.
# - rust:<version>-slim-<suite> is a STAND-IN for the official Rust image: the Debian image above
#   plus gcc, libc6-dev and CA certificates, and this machine's own Rust toolchain copied in (same
#   version as the tag; the image's CARGO_HOME and PATH as in the official one). Elsewhere the
#   official image is used.
# - Storage, configuration and the build cache live under ~/.cache/doka-stack/image: the host's
#   podman/buildah setup is not touched, and the cache makes a second build take seconds.
#   Runtime runc, lowered rlimits, no bridge network (see shared/reference/container-image.md).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${DOKA_IMAGE_STATE:-$HOME/.cache/doka-stack/image}
IMAGE=${DOKA_IMAGE:-localhost/doka:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}
DOCKERFILE=deploy/Dockerfile

log() { echo "image: $*" >&2; }

# The base images the Dockerfile names, read from its FROM lines (the tags stay the Dockerfile's).
rust_tag=$(sed -n 's/^FROM rust:\([^ ]*\).*/\1/p' "$DOCKERFILE")
debian_tag=$(sed -n 's/^FROM debian:\([^ ]*\).*/\1/p' "$DOCKERFILE")
suite=${debian_tag%-slim}
if [ -z "$rust_tag" ] || [ -z "$debian_tag" ] || [ "${rust_tag##*-slim-}" != "$suite" ]; then
  echo "image: $DOCKERFILE must build FROM rust:<version>-slim-<suite> and run FROM debian:<suite>-slim (found rust:$rust_tag, debian:$debian_tag)" >&2
  exit 1
fi

setup_env() {
  mkdir -p "$STATE/storage" "$STATE/run" "$STATE/tmp"
  # runc: crun refuses this host's hybrid cgroups. Low rlimits: the defaults need CAP_SYS_RESOURCE.
  cat > "$STATE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$STATE/tmp"
EOF
  cat > "$STATE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$STATE/run"
EOF
  export CONTAINERS_CONF="$STATE/containers.conf"
  export CONTAINERS_STORAGE_CONF="$STATE/storage.conf"
  export BUILDAH_ISOLATION=chroot
  export TMPDIR="$STATE/tmp"
}

print_env() {
  echo "DOKA_IMAGE=$IMAGE"
  echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
}

install_tools() {
  local missing=()
  for tool in buildah podman runc mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} (apt-get)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq buildah podman runc mmdebstrap >&2
}

have_image() { podman image exists "$1"; }

# The apt settings of the official Debian images (debuerreotype's docker-* files): no package
# caches or downloaded .debs left in a layer, no translations, compressed indexes. The dpkg
# excludes of mmdebstrap's --dpkgopt stay in /etc/dpkg/dpkg.cfg.d, so a Dockerfile's own
# `apt-get install` leaves docs and man pages out too, as in the official slim images.
docker_apt_config() {
  local conf="$1/etc/apt/apt.conf.d"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
  printf 'DPkg::Post-Invoke { %s };\nAPT::Update::Post-Invoke { %s };\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' "$clean" "$clean" > "$conf/docker-clean"
  echo 'Acquire::Languages "none";' > "$conf/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' > "$conf/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$conf/docker-autoremove-suggests"
}

# debian:<suite>-slim from the machine's mirror (the first URI of its Debian sources).
make_debian() {
  local name=docker.io/library/debian:$debian_tag
  have_image "$name" && return
  local mirror
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\/\?\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  mirror=${mirror:-http://deb.debian.org/debian}
  mirror=${mirror%/}
  log "making $name with mmdebstrap from $mirror"
  local tar="$STATE/tmp/debian-$suite.tar"
  mmdebstrap --variant=minbase --quiet \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="$(declare -f docker_apt_config); docker_apt_config \"\$1\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    "$suite" "$tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb ${mirror%/debian}/debian-security $suite-security main" >&2
  podman import --change 'CMD ["bash"]' "$tar" "$name" >&2
  rm -f "$tar"
}

# Writes the certificates of this machine's CA bundle that Debian's ca-certificates does not
# ship (a local or intercepting CA) into $1, one .crt file each.
host_added_cas() {
  python3 - "$1" <<'PY'
import glob, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
norm = lambda c: "".join(c.split())
shipped = set()
for f in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True):
    shipped.update(norm(c) for c in pem.findall(open(f).read()))
try:
    bundle = pem.findall(open("/etc/ssl/certs/ca-certificates.crt").read())
except FileNotFoundError:
    bundle = []
added = [c for c in bundle if norm(c) not in shipped]
for i, cert in enumerate(added):
    open(f"{sys.argv[1]}/host-added-{i}.crt", "w").write(cert + "\n")
PY
}

# rust:<version>-slim-<suite>: a stand-in for the official image (see the top of this file).
make_rust() {
  local name=docker.io/library/rust:$rust_tag
  have_image "$name" && return
  local want=${rust_tag%%-*} have
  have=$(rustc --version | awk '{print $2}')
  case "$have" in
    "$want" | "$want".*) ;;
    *) echo "image: the Dockerfile's build image is rust:$rust_tag but this machine's toolchain is $have: the stand-in must be the same version" >&2; exit 1 ;;
  esac
  log "making $name (stand-in: Debian $suite + gcc + this machine's Rust $have)"
  local sysroot ctr
  sysroot=$(rustc --print sysroot)
  ctr=$(buildah from --pull=never "docker.io/library/debian:$debian_tag")
  buildah run "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*' >&2
  buildah run "$ctr" -- mkdir -p /usr/local/rust/bin /usr/local/cargo/bin
  # cargo in the build stage reaches the crate registry through this machine's network: the
  # stand-in trusts the certificate authorities this machine added to its own bundle (never the
  # Dockerfile: an image built elsewhere needs none of them).
  local extra="$STATE/tmp/host-ca"
  rm -rf "$extra" && mkdir -p "$extra"
  host_added_cas "$extra"
  if [ -n "$(ls -A "$extra")" ]; then
    buildah copy "$ctr" "$extra" /usr/local/share/ca-certificates/ >&2
    buildah run "$ctr" -- update-ca-certificates >&2
  fi
  buildah copy "$ctr" "$sysroot/lib" /usr/local/rust/lib >&2
  buildah copy "$ctr" "$sysroot/bin/rustc" "$sysroot/bin/cargo" /usr/local/rust/bin/ >&2
  buildah config \
    --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$have" \
    --label org.opencontainers.image.description="local stand-in for the official rust:$rust_tag image (doka scripts/image.sh)" \
    "$ctr"
  buildah commit --rm "$ctr" "$name" >&2
}

build() {
  log "building $IMAGE from $DOCKERFILE"
  local started=$SECONDS
  # --layers: each step's layer is cached, so an unchanged Cargo.lock reuses the dependency build.
  buildah bud --pull=never --layers --format oci -f "$DOCKERFILE" -t "$IMAGE" . >&2
  log "built $IMAGE in $((SECONDS - started)) s ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

case "${1:-build}" in
  build)
    install_tools
    setup_env
    make_debian
    make_rust
    build
    print_env
    ;;
  env)
    setup_env
    print_env
    ;;
  clean)
    setup_env
    if command -v podman >/dev/null 2>&1; then
      podman rm --all --force >/dev/null 2>&1 || true
      buildah rm --all >/dev/null 2>&1 || true
      podman system reset --force >/dev/null 2>&1 || true
    fi
    rm -rf "$STATE"
    ;;
  *)
    echo "usage: scripts/image.sh [build|env|clean]" >&2
    exit 2
    ;;
esac
