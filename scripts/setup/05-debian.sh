#!/usr/bin/env bash
# Installs in one apt round every Debian package the later setup scripts would each install
# on a fresh machine (redis-server, etcd-server, Java 17 and Maven, the node's runtime,
# Chromium, Node): one `apt-get update` instead of five, and no apt run left for the scripts
# that scripts/test runs side by side (dpkg takes one client at a time). Each script still
# checks for what it needs and installs it alone when run by itself.
set -euo pipefail

log() { printf '05-debian: %s\n' "$*" >&2; }

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || need+=(redis-server)
have etcd || need+=(etcd-server)
if ! have java || ! java -version 2>&1 | grep -q 'version "17'; then
    need+=(openjdk-17-jre-headless)
fi
have mvn || need+=(maven)
for pair in runc:runc containerd:containerd ctr:containerd iptables:iptables \
            conntrack:conntrack mmdebstrap:mmdebstrap; do
    have "${pair%%:*}" || need+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
have chromium || need+=(chromium fonts-dejavu-core)
have npm || need+=(nodejs npm)

if [ "${#need[@]}" -eq 0 ]; then
    log "every package already installed"
    exit 0
fi
if ! have apt-get || { [ "$(id -u)" != 0 ] && ! have sudo; }; then
    log "no apt-get (or not root and no sudo): the scripts that need ${need[*]} say what they skip"
    exit 0
fi
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
t0=$(date +%s)
log "installing $(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')"
$sudo apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
    --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
# Where an init system runs, the packages start a system redis and etcd on their default
# ports; the tests start their own on free ports.
if have systemctl; then
    for unit in redis-server etcd; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then $sudo systemctl stop "$unit" || true; fi
    done
fi
log "done in $(( $(date +%s) - t0 ))s"
