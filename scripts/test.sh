#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-components.sh
# The console test drives a real headless Chromium through chromedriver
# (Debian's packages).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends chromium chromium-driver
fi
# The MCP tests use the official Python client.
AIRLOCK_TEST_PYTHON=$(bash scripts/python-env.sh)
export AIRLOCK_TEST_PYTHON
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p airlock -p airlock-sdk 2>&1 | tee "$log"
# One closing line over every test binary (the last binary cargo runs may
# legitimately hold no tests, e.g. doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
