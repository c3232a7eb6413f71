#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-components.sh
# Every fuzz target for a few seconds from its committed corpus (see
# FUZZING.md). First, so its instrumented build is gone before the test
# build needs the disk.
bash scripts/fuzz.sh smoke 5
# The console test drives a real headless Chromium through chromedriver
# (Debian's packages).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends chromium chromium-driver
fi
# The store's tests start a throw-away PostgreSQL server of their own
# (tests/support/postgres.rs) from Debian's server programs; nothing is
# started here. Debian keeps them in /usr/lib/postgresql/VERSION/bin, off
# the PATH.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends postgresql
fi
# The packaging test checks the systemd unit with systemd-analyze.
if ! command -v systemd-analyze >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends systemd
fi
# The MCP tests use the official Python client.
AIRLOCK_TEST_PYTHON=$(bash scripts/python-env.sh)
export AIRLOCK_TEST_PYTHON
# ... and the official MCP conformance suite (npm, on the machine's Node.js).
AIRLOCK_TEST_CONFORMANCE=$(bash scripts/mcp-conformance-env.sh)
export AIRLOCK_TEST_CONFORMANCE
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p airlock -p airlock-sdk 2>&1 | tee "$log"
# The approvals suite once more with its store on PostgreSQL (each test a
# fresh database on the server the tests start).
# (Same packages as above: the same features, so nothing is rebuilt.)
AIRLOCK_TEST_STORE=postgres cargo test -p airlock -p airlock-sdk --test approvals 2>&1 | tee -a "$log"
# One closing line over every test binary (the last binary cargo runs may
# legitimately hold no tests, e.g. doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
