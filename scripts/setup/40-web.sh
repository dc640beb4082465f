#!/usr/bin/env bash
# Installs what the web client's tests need: Debian's Chromium (the browser
# tests drive the system browser through Playwright; no browser download), and
# the JS SDK's npm dependencies, then builds the SDK and the web app into
# dataplane/chatplane/web/static/. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
if command -v chromium >/dev/null 2>&1; then
    echo "40-web: $(chromium --version 2>/dev/null | head -1) already installed"
else
    echo "40-web: installing chromium from Debian"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
fi
if ! command -v npm >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        nodejs npm >/dev/null
fi
cd "$root/clients/js"
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules ]]; then
    npm ci --no-audit --no-fund
fi
npm run build
echo "40-web: web app built into dataplane/chatplane/web/static/"
