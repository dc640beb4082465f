#!/usr/bin/env bash
# Fetches Apache Cassandra 5.0.x (cassandra-all and its runtime jars) from Maven
# Central into ${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/cassandra/lib-VERSION,
# the CQL server the tests run in place of ScyllaDB (scripts/cql/run-cassandra
# starts it). Idempotent: a complete lib folder is kept. Needs Java 17 and Maven
# (installed from Debian when missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../cql" && pwd)
version=$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$here/pom.xml")
lib="${CHATPLANE_CACHE:-$HOME/.cache/chatplane}/cassandra/lib-$version"

if [[ -f "$lib/.complete" ]]; then
    echo "20-cql: Cassandra $version jars already in $lib"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    sudo=sudo
else
    sudo=
fi
if ! command -v java >/dev/null 2>&1 || ! java -version 2>&1 | grep -q 'version "17'; then
    echo "20-cql: installing Java 17 from Debian"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        openjdk-17-jre-headless >/dev/null
fi
if ! command -v mvn >/dev/null 2>&1; then
    echo "20-cql: installing Maven from Debian"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        maven >/dev/null
fi

echo "20-cql: fetching Cassandra $version into $lib"
tmp="$lib.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$tmp"
if [[ ! -f "$tmp/cassandra-all-$version.jar" ]]; then
    echo "20-cql: Maven finished but cassandra-all-$version.jar is missing in $tmp" >&2
    exit 1
fi
touch "$tmp/.complete"
rm -rf "$lib"
mv "$tmp" "$lib"
echo "20-cql: $(ls "$lib" | wc -l) jars in $lib"
