#!/usr/bin/env bash
# Build the example actions and the test components for wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
# Incremental compilation of a wasm32 cdylib can drop the component-type
# section wit-bindgen embeds (bench-component then fails to link: "module
# requires an import interface named airlock:cap/log"); these release
# builds never want it, whatever the caller's environment says.
unset CARGO_INCREMENTAL
cargo build --release --target wasm32-wasip2 \
    -p hello -p report -p cleanup -p ticket-create -p refund -p probe -p types -p exfil -p gated -p notes-v1 -p notes-v2 -p bench-component
