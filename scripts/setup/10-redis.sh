#!/usr/bin/env bash
# Installs Debian's redis-server for the tests (tests/services.py starts it on
# 127.0.0.1 itself). Idempotent: does nothing when redis-server is on PATH.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "10-redis: $(redis-server --version | cut -d' ' -f1-3) already installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    sudo=sudo
else
    sudo=
fi
echo "10-redis: installing redis-server from Debian"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    redis-server >/dev/null
# The package starts a system-wide server on 6379 where an init system runs; the
# tests never use it (they start their own on a free port), so stop it if it runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    $sudo systemctl stop redis-server || true
fi
echo "10-redis: $(redis-server --version | cut -d' ' -f1-3)"
