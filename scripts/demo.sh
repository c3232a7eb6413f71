#!/usr/bin/env bash
# The main job: build the example actions, check the example config,
# inspect the components, and invoke the actions under their policy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-components.sh
cargo build -p airlock
airlock=target/debug/airlock
config=examples/airlock.toml
wasm=target/wasm32-wasip2/release

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "airlock check --config $config   (cleanup is refused: its files import is not granted)"
"$airlock" check --config "$config" || echo "(exit $? — expected: the config refuses cleanup)"

step "airlock inspect $wasm/report.wasm"
"$airlock" inspect "$wasm/report.wasm"

step "airlock invoke hello greet"
"$airlock" invoke --config "$config" hello greet \
    --args '{"who": {"name": "Ada", "title": "Dr", "languages": ["fr", "en"]}}'

step "airlock invoke report write-report   (writes examples/workspace/reports/weekly.md)"
"$airlock" invoke --config "$config" report write-report \
    --args '{"name": "weekly", "findings": [{"title": "TLS certificate expires in 9 days", "severity": "high"}, {"title": "Unused admin account", "severity": "medium"}]}'
cat examples/workspace/reports/weekly.md

step "airlock invoke cleanup purge   (refused before it runs: exit 3)"
if "$airlock" invoke --config "$config" cleanup purge --args '{"prefix": "weekly"}'; then
    echo "unexpected: cleanup ran" >&2
    exit 1
else
    echo "(exit $? — refused as configured)"
fi

step "airlock invoke hello greet with bad arguments   (exit 2, names the field)"
"$airlock" invoke --config "$config" hello greet --args '{"who": {"name": 7, "languages": []}}' \
    || echo "(exit $?)"
