#!/usr/bin/env bash
# The main job: build the example actions, check the example config,
# inspect the components, invoke the actions under their policy, and open a
# ticket through a local API with a credential the action never sees.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-components.sh
cargo build -p airlock
airlock=target/debug/airlock
config=examples/airlock.toml
wasm=target/wasm32-wasip2/release

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The ticket-create action needs its credential in the vault before the
# config checks out. A fresh random token, piped on stdin (never argv).
token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
step "airlock secret set tickets-token   (value read from stdin)"
printf '%s' "$token" | "$airlock" secret set tickets-token --config "$config"
"$airlock" secret list --config "$config"

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

step "tickets API on 127.0.0.1:8787 (expects the bearer token), then airlock invoke ticket-create create"
TICKETS_API_TOKEN="$token" python3 examples/tickets_api.py 8787 &
api=$!
trap 'kill $api 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/8787) 2>/dev/null && break
    sleep 0.1
done
out=$("$airlock" invoke --config "$config" ticket-create create \
    --args '{"ticket": {"title": "Disk almost full on db-1", "body": "92% used on /var", "priority": "high"}}' 2>&1)
printf '%s\n' "$out"
if printf '%s' "$out" | grep -qF "$token"; then
    echo "FAILED: the token appeared in airlock's output" >&2
    exit 1
fi
echo "(the API accepted the bearer token; the token appears nowhere in the action's result, logs or airlock's output)"

step "identities: an agent and a reviewer, each with a token (printed once; only its hash is stored)"
tokens=$(mktemp -d)
trap 'kill $api 2>/dev/null || true; rm -rf "$tokens"' EXIT
"$airlock" token create --identity demo-agent --kind agent --role agent --config "$config" --out "$tokens/agent"
"$airlock" token create --identity demo-reviewer --kind human --role reviewer --config "$config" --out "$tokens/reviewer"

step "airlock serve   (HTTP API, MCP at /mcp, reviewer console at /console; loopback, any free port)"
serve_out="$tokens/serve.out"
"$airlock" serve --config "$config" --listen 127.0.0.1:0 >"$serve_out" 2>"$tokens/serve.err" &
service=$!
trap 'kill $api $service 2>/dev/null || true; rm -rf "$tokens"' EXIT
for _ in $(seq 100); do
    grep -q '^listening on ' "$serve_out" 2>/dev/null && break
    sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$serve_out")
if [ -z "$url" ]; then
    echo "airlock serve did not start:" >&2
    cat "$tokens/serve.err" >&2
    exit 1
fi
echo "service at $url"
python=$(bash scripts/python-env.sh)

step "an agent calls greet-approved over MCP   (it waits for a reviewer: progress, then a pending result)"
pending=$("$python" examples/mcp_agent.py "$url/mcp" "$tokens/agent" call greet-approved__greet \
    '{"who": {"name": "Grace", "languages": ["en"]}}')
printf '%s\n' "$pending"
approval=$(printf '%s' "$pending" | python3 -c 'import json,sys; print(json.load(sys.stdin)["approval"])')
invocation=$(printf '%s' "$pending" | python3 -c 'import json,sys; print(json.load(sys.stdin)["invocation"])')
echo "a reviewer can decide it at $url/console (sign in with a reviewer token), or from the command line:"

step "airlock approvals show $approval   (exactly what would run)"
"$airlock" approvals show "$approval" --config "$config" --token-file "$tokens/reviewer"

step "the agent cannot approve its own request; the reviewer approves, and it runs"
"$airlock" approvals approve "$approval" --config "$config" --token-file "$tokens/agent" \
    || echo "(exit $? — nobody approves their own request, and agents only when the config names them)"
"$airlock" approvals approve "$approval" --config "$config" --token-file "$tokens/reviewer"

step "the agent asks airlock_status over MCP for the result"
"$python" examples/mcp_agent.py "$url/mcp" "$tokens/agent" status "$invocation"

step "the audit trail over the API   (GET /v1/audit/verify as a reviewer)"
python3 - "$url" "$tokens/reviewer" <<'PY'
import json, sys, urllib.request
url, token = sys.argv[1], open(sys.argv[2]).read().strip()
req = urllib.request.Request(url + "/v1/audit/verify", headers={"Authorization": "Bearer " + token})
print(json.dumps(json.load(urllib.request.urlopen(req))))
PY

step "airlock audit show --invocation $invocation   (request, decision, run)"
"$airlock" audit show --config "$config" --invocation "$invocation"

step "airlock audit show --action ticket-create   (what ran, under which grants, and every host call)"
"$airlock" audit show --config "$config" --action ticket-create

step "airlock audit verify   (the hash chain and every signed checkpoint)"
"$airlock" audit verify --config "$config"
