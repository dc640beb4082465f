#!/usr/bin/env bash
# Fetches what the S3 archive tests need: S3Proxy (github.com/gaul/s3proxy), a real
# S3-compatible server (here on its filesystem backend) that checks every request's
# signature. tests/services.py (S3Service) runs it with the Java 17 the CQL server uses.
#
#   s3proxy   org.gaul:s3proxy:$S3PROXY_VERSION, its jar-with-dependencies, from Maven Central
#
# Idempotent: cached as ${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/s3proxy/s3proxy-VERSION.jar
# and linked as .../s3proxy/s3proxy.jar; a warm run fetches nothing. Java and Maven are
# installed by 20-cql.sh. (SeaweedFS, a Go module, was the first choice: its build took 34
# minutes on this 2-core machine, over half the cold CI budget; this is a 40 MB download.)
set -euo pipefail

S3PROXY_VERSION=2.9.0
CACHE="${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/s3proxy"
mkdir -p "$CACHE"
log() { printf '50-s3proxy: %s\n' "$*" >&2; }

jar="$CACHE/s3proxy-$S3PROXY_VERSION.jar"
if [ ! -f "$jar" ]; then
    log "fetching S3Proxy $S3PROXY_VERSION from Maven Central"
    repo="$(mktemp -d)"
    trap 'rm -rf "$repo"' EXIT
    mvn -B -q dependency:get -Dmaven.repo.local="$repo" -Dtransitive=false \
        -Dartifact="org.gaul:s3proxy:$S3PROXY_VERSION:jar:jar-with-dependencies"
    cp "$repo/org/gaul/s3proxy/$S3PROXY_VERSION/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar" \
        "$jar.tmp"
    mv "$jar.tmp" "$jar"
fi
ln -sfn "$jar" "$CACHE/s3proxy.jar"
log "s3proxy: $CACHE/s3proxy.jar"
