#!/usr/bin/env bash
# Builds the real components that blockproxy's tests run against, from the package registries only
# (Go module proxy, PyPI), pinned to exact versions, and caches them under
#   ${BLOCKPROXY_CACHE:-~/.cache/blockproxy}/<tool>-<version>/
# Idempotent: a finished tool is never rebuilt. Safe when two runs race: each tool builds under an
# exclusive flock into a temporary directory that is renamed into place only when complete.
#
# The cluster tools (nodepkgs, kubenode, coredns) are what kind-tests' real multi-node cluster
# needs: containerd, runc and the CNI plugins from Debian's packages (apt-get, root only), and
# kubelet, kube-proxy, kubectl, a pause binary and CoreDNS built at the pinned versions.
# clientpkgs are the S3 clients nobody here wrote that judge the S3 endpoint (rclone, s3fs-fuse
# with the FUSE userspace, fio), Debian's packages at pinned versions.
#
# usage: hack/tools.sh [tool ...]        (default: all)
#        hack/tools.sh --print-env       (prints BLOCKPROXY_* variables for the tests, builds nothing)
set -euo pipefail

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
TOXIPROXY_VERSION=v2.12.0
HELM_VERSION=v3.21.4
AWSCLI_VERSION=1.46.2
BOTO3_VERSION=1.44.5
COREDNS_VERSION=v1.15.0
# Cloud store emulators (issue 14). Azurite 3.35.0 is the last release that runs on Node 20.
AZURITE_VERSION=3.35.0
FAKEGCS_VERSION=v1.56.1
# pjdfstest, the POSIX file system test suite (its Rust rewrite, from crates.io), judging the mount.
PJDFSTEST_VERSION=0.2.2
# Debian packages a cluster node needs (containerd 1.6, runc, CNI plugins), the tools the
# cluster's network setup and kube-proxy call, and busybox-static for small test images.
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2 util-linux busybox-static socat openssl)
# Real S3 clients for proxy/tests/s3_clients.rs, pinned to Debian bookworm's versions: rclone,
# s3fs-fuse with fuse3 (fusermount3, /etc/fuse.conf) and fio (for the mount's I/O tests).
CLIENT_PACKAGES=(rclone=1.60.1+dfsg-2+b5 s3fs=1.90-1 fuse3=3.14.0-4 fio=3.33-3)

CACHE="${BLOCKPROXY_CACHE:-$HOME/.cache/blockproxy}"
ALL_TOOLS=(etcd kube toxiproxy helm minio kwok pytools checker azurite fakegcs pjdfstest nodepkgs clientpkgs kubenode coredns)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The fault test's history checker is our own code (hack/checker): it is keyed by a hash of its
# source instead of a version, so an edit rebuilds it and an unchanged tree reuses the cache.
checker_hash() {
  (cd "$ROOT/hack/checker" && cat go.mod go.sum ./*.go) | sha256sum | cut -c1-16
}

die() { echo "tools.sh: error: $*" >&2; exit 1; }
log() { echo "tools.sh: $*" >&2; }

tool_dir() {
  case "$1" in
    etcd) echo "$CACHE/etcd-$ETCD_VERSION" ;;
    kube) echo "$CACHE/kube-$K8S_VERSION" ;;
    kwok) echo "$CACHE/kwok-$KWOK_VERSION" ;;
    minio) echo "$CACHE/minio-$MINIO_VERSION" ;;
    toxiproxy) echo "$CACHE/toxiproxy-$TOXIPROXY_VERSION" ;;
    helm) echo "$CACHE/helm-$HELM_VERSION" ;;
    pytools) echo "$CACHE/pytools-awscli$AWSCLI_VERSION-boto3$BOTO3_VERSION" ;;
    nodepkgs|clientpkgs) echo "/usr/bin" ;;
    kubenode) echo "$CACHE/kubenode-$K8S_VERSION" ;;
    coredns) echo "$CACHE/coredns-$COREDNS_VERSION" ;;
    azurite) echo "$CACHE/azurite-$AZURITE_VERSION" ;;
    fakegcs) echo "$CACHE/fakegcs-$FAKEGCS_VERSION" ;;
    pjdfstest) echo "$CACHE/pjdfstest-$PJDFSTEST_VERSION" ;;
    checker) echo "$CACHE/checker-$(checker_hash)" ;;
    *) die "unknown tool '$1' (known: ${ALL_TOOLS[*]})" ;;
  esac
}

print_env() {
  echo "export BLOCKPROXY_ETCD=$(tool_dir etcd)/bin/etcd"
  echo "export BLOCKPROXY_KUBE_APISERVER=$(tool_dir kube)/bin/kube-apiserver"
  echo "export BLOCKPROXY_KUBE_CONTROLLER_MANAGER=$(tool_dir kube)/bin/kube-controller-manager"
  echo "export BLOCKPROXY_KUBE_SCHEDULER=$(tool_dir kube)/bin/kube-scheduler"
  echo "export BLOCKPROXY_KWOK=$(tool_dir kwok)/bin/kwok"
  echo "export BLOCKPROXY_KWOKCTL=$(tool_dir kwok)/bin/kwokctl"
  echo "export BLOCKPROXY_MINIO=$(tool_dir minio)/bin/minio"
  echo "export BLOCKPROXY_TOXIPROXY=$(tool_dir toxiproxy)/bin/toxiproxy-server"
  echo "export BLOCKPROXY_HELM=$(tool_dir helm)/bin/helm"
  echo "export BLOCKPROXY_AWS=$(tool_dir pytools)/venv/bin/aws"
  echo "export BLOCKPROXY_PYTHON=$(tool_dir pytools)/venv/bin/python"
  echo "export BLOCKPROXY_CHECKER=$(tool_dir checker)/bin/checker"
  echo "export BLOCKPROXY_RCLONE=/usr/bin/rclone"
  echo "export BLOCKPROXY_S3FS=/usr/bin/s3fs"
  echo "export BLOCKPROXY_FUSERMOUNT=/usr/bin/fusermount3"
  echo "export BLOCKPROXY_FIO=/usr/bin/fio"
  echo "export BLOCKPROXY_AZURITE=$(tool_dir azurite)/bin/azurite-blob"
  echo "export BLOCKPROXY_FAKEGCS=$(tool_dir fakegcs)/bin/fake-gcs-server"
  echo "export BLOCKPROXY_PJDFSTEST=$(tool_dir pjdfstest)/bin/pjdfstest"
  print_cluster_env
}

print_cluster_env() {
  echo "export BLOCKPROXY_KUBELET=$(tool_dir kubenode)/bin/kubelet"
  echo "export BLOCKPROXY_KUBE_PROXY=$(tool_dir kubenode)/bin/kube-proxy"
  echo "export BLOCKPROXY_KUBECTL=$(tool_dir kubenode)/bin/kubectl"
  echo "export BLOCKPROXY_PAUSE=$(tool_dir kubenode)/bin/pause"
  echo "export BLOCKPROXY_COREDNS=$(tool_dir coredns)/bin/coredns"
  echo "export BLOCKPROXY_CONTAINERD=/usr/bin/containerd"
  echo "export BLOCKPROXY_CNI_BIN_DIR=/usr/lib/cni"
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

go_env() {
  need go "install Go 1.26 or later (https://go.dev/dl is not needed: Debian's or the machine's go works)"
  export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-mod=mod -buildvcs=false"
  export CGO_ENABLED=0 GOTOOLCHAIN=local
}

# A wrapper module: `go mod init` + `go get -tool`, optional replace lines, then `go build`.
# $1 = staging dir, $2 = module@version to require, rest = go build args.
go_wrapper_build() {
  local work=$1 req=$2; shift 2
  mkdir -p "$work/src"
  ( cd "$work/src"
    [ -f go.mod ] || go mod init local/wrapper >/dev/null 2>&1
    if [ -n "${GO_REPLACES:-}" ]; then
      for r in $GO_REPLACES; do go mod edit -replace "$r"; done
    fi
    go get "$req" >&2
    go build -trimpath "$@" >&2 )
}

build_etcd() {
  local out=$1; go_env
  go_wrapper_build "$out" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
    -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3
}

build_kube() {
  kube_wrapper_build "$1" kube-apiserver kube-controller-manager kube-scheduler
}

# Builds k8s.io/kubernetes/cmd/<name> for each name through a wrapper module requiring
# k8s.io/kubernetes. $1 = staging dir, rest = command names.
kube_wrapper_build() {
  local out=$1; shift; go_env
  # As a dependency k8s.io/kubernetes' own replace lines do not apply: pin every staging module
  # (the list comes from that version's go.mod) to its published v0.X.Y.
  local info; info=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
  local gomod; gomod=$(printf '%s' "$info" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  local staging_version="v0.${K8S_VERSION#v1.}"
  GO_REPLACES=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" \
    | sort -u | sed "s#.*#&=&@$staging_version#")
  [ -n "$GO_REPLACES" ] || die "no staging replaces found in $gomod"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local pkgs=() c; for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  GO_REPLACES=$GO_REPLACES go_wrapper_build "$out" "k8s.io/kubernetes@$K8S_VERSION" -ldflags "$ld" \
    -o "$out/bin/" "${pkgs[@]}"
}

build_kwok() {
  local out=$1; go_env
  go_wrapper_build "$out" "sigs.k8s.io/kwok@$KWOK_VERSION" \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    -o "$out/bin/" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
}

build_minio() {
  local out=$1; go_env
  go_wrapper_build "$out" "github.com/minio/minio@$MINIO_VERSION" -ldflags "-s -w" \
    -o "$out/bin/minio" github.com/minio/minio
}

build_toxiproxy() {
  local out=$1; go_env
  go_wrapper_build "$out" "github.com/Shopify/toxiproxy/v2@$TOXIPROXY_VERSION" -ldflags "-s -w" \
    -o "$out/bin/toxiproxy-server" github.com/Shopify/toxiproxy/v2/cmd/server
}

build_helm() {
  local out=$1; go_env
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  go_wrapper_build "$out" "helm.sh/helm/v3@$HELM_VERSION" \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    -o "$out/bin/helm" helm.sh/helm/v3/cmd/helm
}

build_fakegcs() {
  local out=$1; go_env
  go_wrapper_build "$out" "github.com/fsouza/fake-gcs-server@$FAKEGCS_VERSION" -ldflags "-s -w" \
    -o "$out/bin/fake-gcs-server" github.com/fsouza/fake-gcs-server
}

# Azurite from npm, pinned, into its own prefix; bin/azurite-blob runs only the Blob service.
build_azurite() {
  local out=$1
  need npm "install Node.js 20 and npm"
  npm install --prefix "$out/pkg" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
  ln -s ../pkg/node_modules/.bin/azurite-blob "$out/bin/azurite-blob"
}

# From crates.io at the pinned version, with its own lock file (--locked), into the cache.
build_pjdfstest() {
  local out=$1
  need cargo "install Rust (rustup)"
  CARGO_TARGET_DIR="$out/target" cargo install --locked --root "$out" "pjdfstest@$PJDFSTEST_VERSION" >&2
  rm -rf "$out/target"
}

# Unit tests first (they prove the checker finds each kind of anomaly), then the binary.
build_checker() {
  local out=$1; go_env
  mkdir -p "$out/src"
  cp "$ROOT"/hack/checker/go.mod "$ROOT"/hack/checker/go.sum "$ROOT"/hack/checker/*.go "$out/src/"
  ( cd "$out/src" && go vet ./... >&2 && go test ./... >&2 && go build -trimpath -ldflags "-s -w" -o "$out/bin/checker" . >&2 )
}

build_pytools() {
  local out=$1
  need python3 "install Python 3.9 or later"
  python3 -m venv "$out/venv" >&2
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$out/venv/bin/pip" install -q \
    "awscli==$AWSCLI_VERSION" "boto3==$BOTO3_VERSION" >&2
}

# ---- cluster tools (kind-tests' real multi-node cluster) ----------------------------------

# containerd, runc and the CNI plugins from Debian's packages (see ensure_debpkgs).
ensure_nodepkgs() {
  ensure_debpkgs nodepkgs "the cluster tests" "${NODE_PACKAGES[@]}"
}

# rclone, s3fs, fuse3 and fio at their pinned versions (see ensure_debpkgs).
ensure_clientpkgs() {
  ensure_debpkgs clientpkgs "the S3 client tests (proxy/tests/s3_clients.rs)" "${CLIENT_PACKAGES[@]}"
}

# Installs Debian packages (`name` or `name=version`) with apt-get. Idempotent and quiet when they
# are installed at that version; without root it only says what is missing (the tests that need
# them then fail saying which binary is missing). $1 = lock/log name, $2 = who needs them.
ensure_debpkgs() {
  local name=$1 who=$2; shift 2
  local missing=() p pkg want have
  for p in "$@"; do
    pkg=${p%%=*}; want=${p#*=}; [ "$want" = "$p" ] && want=
    have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
    case "$have" in
      "install ok installed ${want:-}"*) [ -z "$want" ] || [ "$have" = "install ok installed $want" ] || missing+=("$p") ;;
      *) missing+=("$p") ;;
    esac
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "warning: $who need these Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})"
    return 0
  fi
  log "installing ${missing[*]} (apt-get)"
  local start=$SECONDS
  mkdir -p "$CACHE"; exec {aptfd}>"$CACHE/$name.lock"; flock "$aptfd"
  # Debian's containerd package only ships a systemd unit: installing it starts nothing.
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } >"$CACHE/$name.log" 2>&1 || { tail -n 20 "$CACHE/$name.log" >&2; die "apt-get install failed"; }
  flock -u "$aptfd"
  log "installed ${missing[*]} in $((SECONDS - start))s"
}

# kubelet, kube-proxy and kubectl through the same wrapper module as `kube` (so the module and
# build caches it leaves are reused), plus pause: PID 1 of every pod sandbox, a tiny static Go
# program that reaps zombies and exits on SIGINT/SIGTERM.
build_kubenode() {
  local out=$1
  kube_wrapper_build "$out" kubelet kube-proxy kubectl
  mkdir -p "$out/pause-src"
  cat > "$out/pause-src/main.go" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 16)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range c {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  printf 'module local/pause\n\ngo 1.22\n' > "$out/pause-src/go.mod"
  (cd "$out/pause-src" && go build -trimpath -ldflags '-s -w' -o "$out/bin/pause" .) >&2
  rm -rf "$out/pause-src"
}

# CoreDNS (the cluster's DNS), a static binary.
build_coredns() {
  local out=$1; go_env
  go_wrapper_build "$out" "github.com/coredns/coredns@$COREDNS_VERSION" -ldflags "-s -w" \
    -o "$out/bin/coredns" github.com/coredns/coredns
}

# Builds one tool unless it is already cached. Concurrent callers serialise on a per-tool lock;
# the final directory appears atomically (rename), so a half-built tool is never seen as done.
ensure() {
  local tool=$1 final
  if [ "$tool" = nodepkgs ]; then ensure_nodepkgs; return; fi
  if [ "$tool" = clientpkgs ]; then ensure_clientpkgs; return; fi
  final=$(tool_dir "$tool")
  [ -f "$final/.complete" ] && return 0
  mkdir -p "$CACHE"
  exec {lockfd}>"$final.lock"
  flock "$lockfd"
  if [ ! -f "$final/.complete" ]; then
    # A Python venv embeds its absolute path, so pytools is built in place (still under the lock).
    local stage="$final.tmp.$$"; [ "$tool" = pytools ] && stage=$final
    rm -rf "$stage"; mkdir -p "$stage/bin"
    log "building $tool into $final (cold builds take minutes; logs: $stage.log)"
    local start=$SECONDS
    if ! "build_$tool" "$stage" >"$stage.log" 2>&1; then
      tail -n 40 "$stage.log" >&2
      rm -rf "$stage"
      die "building $tool failed; full log: $stage.log"
    fi
    rm -rf "$stage/src"   # the wrapper module is only needed to build
    touch "$stage/.complete"
    if [ "$stage" != "$final" ]; then rm -rf "$final"; mv "$stage" "$final"; fi
    rm -f "$stage.log"
    log "built $tool in $((SECONDS - start))s"
  fi
  flock -u "$lockfd"
}

main() {
  if [ "${1:-}" = "--print-env" ]; then print_env; exit 0; fi
  local tools=("$@"); [ ${#tools[@]} -gt 0 ] || tools=("${ALL_TOOLS[@]}")
  need flock "install util-linux"
  for t in "${tools[@]}"; do tool_dir "$t" >/dev/null; done
  # kube is by far the longest build: run it beside the others so a cold run takes ~10 minutes
  # instead of ~15 on 2 cores. kubenode follows it in the same background job, so it compiles
  # only what kube's build cache lacks. Each tool has its own lock, so this is race-free.
  local pids=() t bg=() rest=()
  for t in "${tools[@]}"; do
    case "$t" in kube|kubenode) bg+=("$t") ;; *) rest+=("$t") ;; esac
  done
  if [ ${#bg[@]} -gt 0 ] && [ ${#rest[@]} -gt 0 ]; then
    { for t in "${bg[@]}"; do ensure "$t"; done; } & pids+=($!)
  else
    rest=("${bg[@]}" "${rest[@]}")
  fi
  for t in "${rest[@]}"; do ensure "$t"; done
  for p in "${pids[@]}"; do wait "$p" || die "a background build failed (see above)"; done
  log "all tools ready under $CACHE"
}
main "$@"
