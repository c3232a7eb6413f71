#!/usr/bin/env bash
# A Python virtual environment with the MCP client the tests drive airlock
# with (the official `mcp` package from PyPI). Prints its python's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-mcp
if ! "$venv/bin/python" -c 'import mcp, httpx2, openapi_spec_validator' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet 'mcp==2.3.0' 'openapi-spec-validator==0.7.2' >&2
fi
echo "$PWD/$venv/bin/python"
