#!/usr/bin/env bash
# Every test: formatting, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-components.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p airlock -p airlock-sdk 2>&1 | tee "$log"
# One closing line over every test binary (the last binary cargo runs may
# legitimately hold no tests, e.g. doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
