#!/usr/bin/env bash
# Build the example actions and the test components for wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 \
    -p hello -p report -p cleanup -p ticket-create -p probe -p types -p exfil -p gated -p bench-component
