#!/usr/bin/env bash
# The official MCP conformance suite (npm @modelcontextprotocol/conformance,
# pinned with its whole tree in tests/mcp-conformance/package-lock.json),
# installed with the machine's Node.js and npm. Prints the CLI's path.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/mcp-conformance
if ! cmp -s tests/mcp-conformance/package-lock.json "$dir/package-lock.json" 2>/dev/null \
    || [ ! -x "$dir/node_modules/.bin/conformance" ]; then
    if ! command -v npm >/dev/null; then
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update >&2
        $sudo apt-get install -y --no-install-recommends nodejs npm >&2
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    cp tests/mcp-conformance/package.json tests/mcp-conformance/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
echo "$PWD/$dir/node_modules/.bin/conformance"
