#!/usr/bin/env bash
# Packs container images without a container engine: a one-layer image in `docker save` format
# (manifest.json, the config, layer.tar), written with tar and sha256sum only. Import it with
# `ctr -n k8s.io images import`, `kind load image-archive`, `docker load` or `podman load`.
# Dynamically linked binaries get their shared libraries (and the loader) copied in via ldd.
#
# usage:
#   hack/image.sh blockproxy [--profile debug|release] [--ref REF] OUT.tar
#       the blockproxy, blockproxy-mount and blockproxy-operator binaries of target/<profile>/
#       (default: release, built first with `cargo build --release`; debug packs what
#       `cargo test` already built) under /usr/local/bin, plus the host's CA bundle, entrypoint
#       blockproxy-operator, user 65532. REF defaults to example.local/blockproxy:dev.
#   hack/image.sh binaries REF OUT.tar ENTRYPOINT BINARY...
#       BINARY... under /usr/local/bin (and /bin for busybox's applets), entrypoint ENTRYPOINT.
set -euo pipefail

die() { echo "image.sh: error: $*" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# Copies $1 into rootfs $2 under $3, plus every shared library ldd lists (at its own path).
add_binary() {
  local bin=$1 rootfs=$2 dir=$3 lib
  [ -x "$bin" ] || die "$bin is not an executable file"
  mkdir -p "$rootfs$dir"
  cp -L "$bin" "$rootfs$dir/"
  # ldd prints "name => /path (addr)" or "/lib64/ld-linux... (addr)"; static binaries print nothing useful.
  for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -e "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -Ln "$lib" "$rootfs$lib"
  done
}

# Writes the tarball: pack_rootfs REF ROOTFS OUT ENTRYPOINT_JSON USER
pack_rootfs() {
  local ref=$1 rootfs=$2 out=$3 entry=$4 user=$5 tmp diff cfg
  tmp=$(mktemp -d)
  mkdir -p "$rootfs/tmp" "$rootfs/etc"; chmod 1777 "$rootfs/tmp"
  [ -f "$rootfs/etc/passwd" ] || printf 'root:x:0:0:root:/:/bin/sh\nnonroot:x:65532:65532:nonroot:/:/bin/false\n' > "$rootfs/etc/passwd"
  [ -f "$rootfs/etc/group" ] || printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$tmp/layer.tar" .
  diff=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  mkdir "$tmp/$diff"; mv "$tmp/layer.tar" "$tmp/$diff/layer.tar"
  cat > "$tmp/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Entrypoint":$entry,"User":"$user","Env":["PATH=/usr/local/bin:/bin:/usr/bin"],"WorkingDir":"/"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff"]}}
JSON
  cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1); mv "$tmp/config.json" "$tmp/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$cfg" "$ref" "$diff" > "$tmp/manifest.json"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$tmp" -cf "$out.tmp" manifest.json "$cfg.json" "$diff"
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

blockproxy_image() {
  local profile=release ref=example.local/blockproxy:dev out=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --profile) profile=$2; shift 2 ;;
      --ref) ref=$2; shift 2 ;;
      -*) die "unknown option $1" ;;
      *) out=$1; shift ;;
    esac
  done
  [ -n "$out" ] || die "usage: hack/image.sh blockproxy [--profile debug|release] [--ref REF] OUT.tar"
  local target=${CARGO_TARGET_DIR:-$ROOT/target} dir
  case "$profile" in
    release) (cd "$ROOT" && cargo build --release --locked -p blockproxy -p blockproxy-operator) ;;
    debug) ;;
    *) die "profile must be debug or release" ;;
  esac
  dir=$target/$profile
  local rootfs b; rootfs=$(mktemp -d)
  for b in blockproxy blockproxy-mount blockproxy-csi blockproxy-operator; do
    [ -x "$dir/$b" ] || die "$dir/$b missing (cargo build -p blockproxy -p blockproxy-operator${profile/debug/})"
    add_binary "$dir/$b" "$rootfs" /usr/local/bin
  done
  # The AWS SDK in the proxy panics at start without any root CA (the Dockerfile's distroless
  # base has them too): the host's bundle, at the path rustls-native-certs reads.
  local ca=/etc/ssl/certs/ca-certificates.crt
  [ -f "$ca" ] || die "$ca missing (install ca-certificates)"
  mkdir -p "$rootfs/etc/ssl/certs"; cp -L "$ca" "$rootfs/etc/ssl/certs/"
  pack_rootfs "$ref" "$rootfs" "$out" '["blockproxy-operator"]' "65532:65532"
  rm -rf "$rootfs"
}

binaries_image() {
  [ $# -ge 4 ] || die "usage: hack/image.sh binaries REF OUT.tar ENTRYPOINT BINARY..."
  local ref=$1 out=$2 entry=$3 rootfs b a; shift 3
  rootfs=$(mktemp -d)
  for b in "$@"; do
    add_binary "$b" "$rootfs" /usr/local/bin
    if [ "$(basename "$b")" = busybox ]; then   # a shell and the usual commands
      mkdir -p "$rootfs/bin"
      for a in $("$b" --list); do ln -sf /usr/local/bin/busybox "$rootfs/bin/$a"; done
    fi
  done
  pack_rootfs "$ref" "$rootfs" "$out" "[\"$entry\"]" "0:0"
  rm -rf "$rootfs"
}

case "${1:-}" in
  blockproxy) shift; blockproxy_image "$@" ;;
  binaries) shift; binaries_image "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
