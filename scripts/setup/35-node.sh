#!/usr/bin/env bash
# Installs what the single-node cluster (scripts/node/up, tests/node/) needs on top of 30-kube.sh:
#
#   runc, containerd, CNI plugins, iptables, conntrack, mmdebstrap   Debian packages (apt)
#   kubelet, kube-controller-manager, kube-scheduler, kube-proxy, kubectl
#       built with Go from k8s.io/kubernetes at the apiserver's version (scripts/kube/go.mod)
#   the chatplane image   scripts/image/build (mmdebstrap + wheels), cached by content
#   coredns  CoreDNS with only the plugins scripts/node/up's Corefile uses, built from
#            scripts/coredns (its go.mod pins the version; cluster DNS, run by scripts/node/up
#            as a host process). All of CoreDNS's plugins took 1.4 GB of modules and ~380 s of
#            CPU to build; these four take 258 MB and ~250 s.
#
# Idempotent: binaries are cached under ${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/kube/ and
# linked into .../kube/bin/. Builds run one at a time (2 cores), niced, under the same lock.
# v1.33 still runs on cgroup v1 (failCgroupV1 defaults to false until v1.35).
set -euo pipefail

KUBE_VERSION=v1.33.13
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
COREDNS_VERSION=$(sed -n 's:^require github.com/coredns/coredns \(v[^ ]*\)$:\1:p' "$ROOT/scripts/coredns/go.mod")
CACHE="${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/kube"
BIN="$CACHE/bin"
mkdir -p "$BIN"
started=$(date +%s)

log() { printf '35-node: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------
need=()
for pair in runc:runc containerd:containerd ctr:containerd iptables:iptables \
            conntrack:conntrack mmdebstrap:mmdebstrap; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ "${#need[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; }; then
        log "cannot install ${need[*]} (no apt-get, or not root and no sudo): tests/node will skip"
        exit 0
    fi
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing ${need[*]} with apt-get"
    $sudo apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
        $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
    # Where an init system runs, the package starts a system containerd; scripts/node/up
    # runs its own (own socket and root), so the system one is left alone.
fi

# --- Kubernetes node binaries ------------------------------------------------------------
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock -w 3600 9 || { log "another setup holds $CACHE/.lock"; exit 1; }
fi
command -v go >/dev/null 2>&1 || { log "Go is needed to build the node binaries"; exit 1; }
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
v="k8s.io/component-base/version"
flags="-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
flags="$flags -X $v.gitTreeState=clean"
for cmd in kubelet kube-controller-manager kube-scheduler kube-proxy kubectl; do
    out="$CACHE/$cmd-$KUBE_VERSION"
    if [ ! -x "$out" ]; then
        log "building $cmd $KUBE_VERSION"
        t0=$(date +%s)
        pkg="k8s.io/kubernetes/cmd/$cmd"
        [ "$cmd" = kubectl ] && pkg="k8s.io/kubernetes/cmd/kubectl"
        (cd "$ROOT/scripts/kube" && GOFLAGS=-mod=mod nice -n 19 go build -trimpath \
            -ldflags "$flags" -o "$out.tmp" "$pkg")
        mv "$out.tmp" "$out"
        log "$cmd built in $(( $(date +%s) - t0 ))s"
    fi
    ln -sfn "$out" "$BIN/$cmd"
done

out="$CACHE/coredns-$COREDNS_VERSION-node"
if [ ! -x "$out/coredns" ]; then
    log "building coredns $COREDNS_VERSION (bind, errors, cache, kubernetes)"
    t0=$(date +%s)
    mkdir -p "$out"
    (cd "$ROOT/scripts/coredns" && GOFLAGS=-mod=mod nice -n 19 go build -trimpath \
        -ldflags "-s -w" -o "$out/coredns.tmp" .)
    mv "$out/coredns.tmp" "$out/coredns"
    log "coredns built in $(( $(date +%s) - t0 ))s"
fi
ln -sfn "$out/coredns" "$BIN/coredns"

# The image the node tests run (rebuilt only when the project changed); mmdebstrap and
# chroot need root, as the node itself does.
if [ "$(id -u)" = 0 ]; then
    "$ROOT/scripts/image/build" --no-import
else
    log "not root: the image is not built and tests/node will skip"
fi

log "done in $(( $(date +%s) - started ))s"
