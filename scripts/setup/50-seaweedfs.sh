#!/usr/bin/env bash
# Builds what the S3 archive tests need: SeaweedFS's `weed` (a real S3-compatible server).
#
#   weed   built with Go from github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION (Go module proxy)
#
# Idempotent: the binary is cached under ${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/seaweedfs/
# and linked as .../seaweedfs/bin/weed, where tests/storage/s3server.py looks for it; a warm
# run finds it and builds nothing. One build at a time (the machine has 2 cores), under a lock.
set -euo pipefail

# SeaweedFS tags are not Go-module versions (3.x without /v3): the proxy serves commits as
# pseudo-versions; this one is the 2026-11-09 master.
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6
CACHE="${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/seaweedfs"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { printf '50-seaweedfs: %s\n' "$*" >&2; }

exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock -w 1800 9 || { log "another setup holds $CACHE/.lock"; exit 1; }
fi

weed="$CACHE/weed-$SEAWEEDFS_VERSION"
if [ ! -x "$weed" ]; then
    command -v go >/dev/null 2>&1 || { log "Go is needed to build weed"; exit 1; }
    log "building weed $SEAWEEDFS_VERSION (several minutes on 2 cores)"
    t0=$(date +%s)
    # Not `go install weed@version`: its go.mod has a replace directive, which go install
    # refuses, so build it as the main module from the module cache (read-only; -o elsewhere).
    src="$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$weed.tmp" ./weed)
    mv "$weed.tmp" "$weed"
    log "weed built in $(( $(date +%s) - t0 ))s"
fi
ln -sfn "$weed" "$BIN/weed"
"$BIN/weed" version >/dev/null 2>&1 || { log "$BIN/weed does not run"; exit 1; }
log "weed: $BIN/weed"
