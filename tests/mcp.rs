//! MCP with a real third-party client: the official Python `mcp` package
//! (installed into a virtual environment by `scripts/python-env.sh`)
//! connects over stdio and over streamable HTTP, lists tools, calls one,
//! is refused a forbidden one, and gets a pending result for a gated one:
//! held before it starts, or held at a host call in the middle of its run.

mod support;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use support::http::{Server, request};
use support::{airlock_with, component, toml_path};

fn client(args: &[&str]) -> Value {
    client_with(args, &[])
}

/// The client with extra environment variables.
fn client_with(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = Command::new(support::python())
        .arg(support::repo_root().join("tests/mcp_client.py"))
        .args(args)
        .env_remove("AIRLOCK_DATA_DIR")
        .env_remove("AIRLOCK_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run the Python MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "MCP client failed: {stderr}\n{stdout}");
    // The client ends its HTTP session with DELETE and warns unless the
    // server confirms it (200/204).
    assert!(
        !stderr.contains("Session termination failed"),
        "the session was not closed cleanly: {stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}\n{stderr}"))
}

struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let gated = toml_path(&component("gated"));
        let grants = "[actions.NAME.grants]\napproval = true\nfiles = { dir = \"work\", mode = \"read-write\" }\n";
        let text = format!(
            r#"
[runtime]
data-dir = "data"
[service]
mcp-wait-ms = 1500

[actions.echo]
description = "Echoes a value"
component = {gated}
{echo_grants}
[actions.echo.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.echo.mcp]
read-only = true
destructive = false

[actions.deploy]
description = "Deploys"
component = {gated}
{deploy_grants}
[actions.deploy.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.deploy.approval]
invocation = true
[actions.deploy.mcp]
destructive = true

[actions.secret-ops]
component = {gated}
{ops_grants}
[actions.secret-ops.access]
invoke = ["ops-bot"]
approve = ["role:reviewer"]

# Files read-only: its writes are denied at the choke point.
[actions.readonly]
component = {gated}
[actions.readonly.grants]
approval = true
files = {{ dir = "work", mode = "read-only" }}
[actions.readonly.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]

# Logs a line per report.
[actions.report]
component = {report}
[actions.report.grants]
log = true
files = {{ dir = "work", mode = "read-write" }}
[actions.report.access]
invoke = ["role:agent"]

# A pure action whose WIT is documented.
[actions.types]
component = {types}
[actions.types.access]
invoke = ["role:agent"]

# Runs at once; writes under gated/ wait for a reviewer mid-run.
[actions.gated]
component = {gated}
{gated_grants}
[actions.gated.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.gated.approval]
wait-secs = 120
[[actions.gated.approval.host-calls]]
capability = "files"
path-prefix = "gated"
"#,
            types = toml_path(&component("types")),
            report = toml_path(&component("report")),
            echo_grants = grants.replace("NAME", "echo"),
            deploy_grants = grants.replace("NAME", "deploy"),
            ops_grants = grants.replace("NAME", "secret-ops"),
            gated_grants = grants.replace("NAME", "gated"),
        );
        let config = dir.path().join("airlock.toml");
        std::fs::write(&config, text).unwrap();
        World { dir, config }
    }

    /// A token, and a file holding it (for `--token-file`).
    fn token(&self, identity: &str, kind: &str, role: &str) -> (String, PathBuf) {
        let token = support::create_token(&self.config, identity, kind, &[role]);
        let file = self.dir.path().join(format!("{identity}.token"));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        (token, file)
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

/// What every scenario must have seen, over either transport.
fn check_scenario(seen: &Value) -> String {
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"echo__echo") && tools.contains(&"deploy__echo") && tools.contains(&"airlock_status"),
        "{tools:?}"
    );
    assert!(
        !tools.iter().any(|t| t.starts_with("secret-ops")),
        "a forbidden tool is listed: {tools:?}"
    );
    assert_eq!(seen["annotations"]["echo__echo"]["read_only"], true, "{seen}");
    assert_eq!(seen["annotations"]["deploy__echo"]["destructive"], true, "{seen}");
    assert_eq!(seen["echo_schema"]["properties"]["value"]["type"], "string", "{seen}");

    // Log lines are forwarded at or above the level the client set.
    assert_eq!(seen["logs_at_warning"]["is_error"], false, "{seen}");
    assert_eq!(seen["logs_at_warning"]["logs"], serde_json::json!([]), "{seen}");
    let logs = &seen["logs_at_info"]["logs"];
    assert_eq!(logs.as_array().map(Vec::len), Some(1), "{seen}");
    assert_eq!(logs[0]["logger"], "report", "{seen}");
    assert!(logs[0]["level"].as_str().unwrap().contains("info"), "{seen}");
    assert_eq!(logs[0]["data"]["message"], "report written", "{seen}");
    assert_eq!(logs[0]["data"]["fields"]["path"], "reports/loud.md", "{seen}");
    // A call the choke point denies is told as a warning while it runs.
    let denial = &seen["denial"]["logs"];
    assert_eq!(denial.as_array().map(Vec::len), Some(1), "{seen}");
    assert_eq!(denial[0]["logger"], "airlock", "{seen}");
    assert!(denial[0]["level"].as_str().unwrap().contains("warning"), "{seen}");
    assert_eq!(denial[0]["data"]["action"], "readonly", "{seen}");
    assert_eq!(denial[0]["data"]["denied"]["interface"], "airlock:cap/files", "{seen}");
    assert_eq!(denial[0]["data"]["denied"]["function"], "write", "{seen}");
    assert!(
        denial[0]["data"]["denied"]["rule"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{seen}"
    );

    // The WIT's doc comments describe the tool and its parameters; the
    // result schema is published and the result matches it.
    let describe = &seen["describe_tool"];
    assert!(
        describe["description"]
            .as_str()
            .unwrap()
            .starts_with("Echoes values of every WIT type.\n\nDescribe a number in words."),
        "{seen}"
    );
    assert_eq!(
        describe["input"]["properties"]["n"]["description"], "the number to describe.",
        "{seen}"
    );
    assert_eq!(
        describe["input"]["properties"]["style"]["description"],
        "how much to say\n\nHow much to say.\n\n`brief`: One line.\n`detailed`: Everything known.",
        "{seen}"
    );
    assert_eq!(describe["input"]["properties"]["style"]["title"], "style", "{seen}");
    assert_eq!(
        describe["output"]["then"]["properties"]["result"]["type"], "string",
        "{seen}"
    );
    assert_eq!(seen["describe"]["is_error"], false, "{seen}");
    assert_eq!(seen["describe"]["structured"]["result"], "7, which is odd", "{seen}");
    assert_eq!(seen["describe_valid"], true, "{seen}");
    assert_eq!(seen["describe_bad_caught"], true, "{seen}");

    assert_eq!(seen["allowed"]["is_error"], false, "{seen}");
    assert_eq!(seen["allowed"]["structured"]["result"], "hi from python", "{seen}");
    assert_eq!(seen["allowed"]["structured"]["status"], "succeeded", "{seen}");
    assert_eq!(seen["bad_args"]["is_error"], true, "{seen}");

    // Refused as a protocol error (invalid params), like a tool that does
    // not exist: not a result, and not some other failure.
    let forbidden = &seen["forbidden"];
    assert_eq!(forbidden["raised"], true, "{seen}");
    assert_eq!(forbidden["code"], -32602, "{seen}");
    assert!(
        forbidden["message"]
            .as_str()
            .unwrap()
            .starts_with("no tool secret-ops__echo for bot"),
        "{seen}"
    );

    let pending = &seen["pending"]["structured"];
    assert_eq!(pending["status"], "awaiting-approval", "{seen}");
    assert!(pending["approval"].is_string(), "{seen}");
    assert!(
        !seen["progress"].as_array().unwrap().is_empty(),
        "no progress notifications: {seen}"
    );
    assert!(
        seen["progress"][0]["message"]
            .as_str()
            .unwrap()
            .contains("waiting for approval"),
        "{seen}"
    );
    pending["invocation"].as_str().unwrap().to_string()
}

fn approval_of(w: &World, invocation: &str) -> String {
    let run = airlock_with(
        &["invocations", "show", invocation, "--json", "--config", w.cfg()],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let record = run.json();
    // What the agent said in `_meta` is kept with the invocation.
    assert_eq!(record["intent"]["reason"], "ship release 42", "{record}");
    assert_eq!(
        record["intent"]["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "{record}"
    );
    assert_eq!(record["args"], serde_json::json!({"value": "gated"}), "{record}");
    record["approval"].as_str().unwrap().to_string()
}

#[test]
fn python_client_over_stdio() {
    let w = World::new();
    let (_, agent_file) = w.token("bot", "agent", "agent");
    let (_, reviewer_file) = w.token("alice", "human", "reviewer");
    let airlock = env!("CARGO_BIN_EXE_airlock");
    let seen = client(&["stdio", airlock, w.cfg(), agent_file.to_str().unwrap(), "scenario"]);
    let invocation = check_scenario(&seen);

    // A reviewer approves; the approving process runs it; the agent's next
    // session asks airlock_status for the outcome.
    let approval = approval_of(&w, &invocation);
    let approve = airlock_with(
        &[
            "approvals",
            "approve",
            &approval,
            "--config",
            w.cfg(),
            "--token-file",
            reviewer_file.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(approve.code, 0, "{approve:?}");
    let status = client(&[
        "stdio",
        airlock,
        w.cfg(),
        agent_file.to_str().unwrap(),
        "status",
        &invocation,
    ]);
    assert_eq!(status["status"]["structured"]["status"], "succeeded", "{status}");
    assert_eq!(status["status"]["structured"]["result"], "gated", "{status}");

    // A bad token never gets a session.
    let bogus = w.dir.path().join("bogus.token");
    std::fs::write(
        &bogus,
        "alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let run = airlock_with(
        &["mcp", "--config", w.cfg(), "--token-file", bogus.to_str().unwrap()],
        b"",
        &[],
    );
    assert_eq!(run.code, 3, "{run:?}");
}

/// One JSON-RPC session over the client's ends of two socket pairs.
struct SocketSession {
    to: std::os::unix::net::UnixStream,
    from: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl SocketSession {
    fn send(&mut self, message: &Value) {
        use std::io::Write as _;
        self.to.write_all(format!("{message}\n").as_bytes()).unwrap();
    }

    /// Send request `id` and read lines until its answer.
    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        use std::io::BufRead as _;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            let n = self.from.read_line(&mut line).expect("an answer within 60 s");
            assert!(n > 0, "airlock mcp closed stdout before answering {method}");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if v["id"] == id {
                return v;
            }
        }
    }
}

/// Node's `child_process` gives a child a socket pair per stream, not a
/// pipe: `airlock mcp` reads and writes them on its reactor in
/// non-blocking mode. A whole session works that way, and the process
/// ends cleanly when the client closes its end.
#[test]
fn a_session_over_socket_pairs_as_node_clients_start_it() {
    use std::os::unix::net::UnixStream;
    let w = World::new();
    let (_, agent_file) = w.token("bot", "agent", "agent");
    let (server_in, client_in) = UnixStream::pair().unwrap();
    let (server_out, client_out) = UnixStream::pair().unwrap();
    client_out
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["mcp", "--config", w.cfg(), "--token-file", agent_file.to_str().unwrap()])
        .env_remove("AIRLOCK_DATA_DIR")
        .env_remove("AIRLOCK_TOKEN")
        .env("AIRLOCK_LOG", "airlock=debug")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(server_in)))
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(server_out)))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut s = SocketSession {
        to: client_in,
        from: std::io::BufReader::new(client_out),
    };
    let init = s.call(
        0,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "socket-test", "version": "1"}}),
    );
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let listed = s.call(1, "tools/list", json!({}));
    let tools: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        tools.contains(&"echo__echo") && tools.contains(&"airlock_status"),
        "{tools:?}"
    );
    // Many calls in a row, each answered on the socket it came in on.
    for id in 2..40u64 {
        let called = s.call(
            id,
            "tools/call",
            json!({"name": "echo__echo", "arguments": {"value": format!("hi {id}")}}),
        );
        assert_eq!(
            called["result"]["structuredContent"]["result"],
            format!("hi {id}"),
            "{called}"
        );
        assert_eq!(s.call(1000 + id, "ping", json!({}))["result"], json!({}));
    }
    // The client goes away: the session ends and the process with it.
    drop(s);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        stderr.contains("Sockets"),
        "the sockets were read on the reactor: {stderr}"
    );
}

#[test]
fn python_client_over_streamable_http() {
    let w = World::new();
    let (agent, _) = w.token("bot", "agent", "agent");
    let (reviewer, _) = w.token("alice", "human", "reviewer");
    let server = Server::start(&w.config);
    let url = format!("http://{}/mcp", server.addr);
    let seen = client(&["http", &url, &agent, "scenario"]);
    let invocation = check_scenario(&seen);

    // The forbidden call was refused for want of permission, and that is
    // on record.
    let (auditor, _) = w.token("audrey", "human", "auditor");
    let refused = server
        .get("/v1/audit?action=secret-ops&caller=bot", Some(&auditor))
        .json();
    let refusals: Vec<&Value> = refused["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"]["kind"] == "invocation-refused")
        .collect();
    assert_eq!(refusals.len(), 1, "{refused}");
    assert!(
        refusals[0]["event"]["error"]
            .as_str()
            .unwrap()
            .contains("may not invoke"),
        "{refused}"
    );

    let approval = approval_of(&w, &invocation);
    let approved = server.post(
        &format!("/v1/approvals/{approval}/approve"),
        Some(&reviewer),
        &json!({}),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = client(&["http", &url, &agent, "status", &invocation]);
        if status["status"]["structured"]["status"] == "succeeded" {
            assert_eq!(status["status"]["structured"]["result"], "gated", "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // DNS rebinding: a foreign Host, or a browser page from a foreign
    // Origin, is refused before any MCP handling.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let auth = format!("Bearer {agent}");
    let base = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let mut evil_host = base.to_vec();
    evil_host.push(("Host", "attacker.example"));
    let r = request_with_host(&server.addr, &evil_host, init.as_bytes());
    assert_eq!(r.status, 403, "{r:?}");
    let mut evil_origin = base.to_vec();
    evil_origin.push(("Origin", "http://attacker.example"));
    let r = request(&server.addr, "POST", "/mcp", &evil_origin, init.as_bytes());
    assert_eq!(r.status, 403, "{r:?}");
    // Without a token, or with a revoked one: no session at all.
    let r = request(&server.addr, "POST", "/mcp", &base[1..], init.as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
    let id = &agent[4..20];
    let revoke = airlock_with(&["token", "revoke", id, "--config", w.cfg()], b"", &[]);
    assert_eq!(revoke.code, 0, "{revoke:?}");
    let r = request(&server.addr, "POST", "/mcp", &base, init.as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
}

/// A request whose Host header is `headers`' (the client's own is not sent).
fn request_with_host(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> support::http::Response {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut head = "POST /mcp HTTP/1.1\r\nConnection: close\r\n".to_string();
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    support::http::read(stream)
}

#[test]
fn a_call_held_at_a_host_call_gate_returns_pending_and_its_outcome_comes_later() {
    let w = World::new();
    let (agent, _) = w.token("bot", "agent", "agent");
    let (reviewer, _) = w.token("alice", "human", "reviewer");
    let server = Server::start(&w.config);
    let url = format!("http://{}/mcp", server.addr);
    let seen = client(&["http", &url, &agent, "hostcall"]);

    // The instance is suspended inside its gated write: the call reported
    // progress and, after mcp-wait-ms, returned what it waits for.
    let pending = &seen["pending"]["structured"];
    assert_eq!(seen["pending"]["is_error"], false, "{seen}");
    assert_eq!(pending["status"], "awaiting-approval", "{seen}");
    assert_eq!(pending["approval-kind"], "host-call", "{seen}");
    assert!(
        pending["rule"].as_str().unwrap().contains("approval.host-calls[0]"),
        "{seen}"
    );
    let invocation = pending["invocation"].as_str().unwrap().to_string();
    let approval = pending["approval"].as_str().unwrap().to_string();
    let progress = seen["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "no progress notifications: {seen}");
    assert!(
        progress.iter().any(|p| p["message"]
            .as_str()
            .unwrap()
            .contains(&format!("waiting for approval {approval}"))),
        "{seen}"
    );
    assert!(w.dir.path().join("work/before.txt").exists());
    assert!(!w.dir.path().join("work/gated/plan.txt").exists());

    // The reviewer sees the held call of that invocation.
    let shown = server.get(&format!("/v1/approvals/{approval}"), Some(&reviewer)).json();
    assert_eq!(shown["kind"], "host-call", "{shown}");
    assert_eq!(shown["invocation"], invocation, "{shown}");
    assert_eq!(shown["state"], "pending", "{shown}");

    // Asked before the decision, airlock_status says what it waits for
    // (over a lowercase `bearer` scheme, which is the same credential).
    let lowercase = [("AIRLOCK_TEST_AUTH_SCHEME", "bearer")];
    let before = client_with(&["http", &url, &agent, "status", &invocation], &lowercase);
    assert_eq!(
        before["status"]["structured"]["status"], "awaiting-approval",
        "{before}"
    );
    assert_eq!(before["status"]["structured"]["approval"], approval, "{before}");

    // Approved: the held write goes through, the run resumes in the
    // background, and airlock_status returns its outcome.
    let approved = server.post(
        &format!("/v1/approvals/{approval}/approve"),
        Some(&reviewer),
        &json!({}),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = client_with(&["http", &url, &agent, "status", &invocation], &lowercase);
        let s = &status["status"]["structured"];
        if s["status"] == "succeeded" {
            assert_eq!(s["result"], "written", "{status}");
            break;
        }
        assert!(
            s["status"] == "running" || s["status"] == "awaiting-approval",
            "{status}"
        );
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_to_string(w.dir.path().join("work/gated/plan.txt")).unwrap(),
        "go"
    );
    assert!(w.dir.path().join("work/after.txt").exists());
}

/// POST `body` to `/mcp` with `headers` besides the usual ones.
fn mcp_post(
    server: &Server,
    auth: &[&str],
    content_type: &str,
    session: Option<&str>,
    body: &[u8],
) -> support::http::Response {
    let auth: Vec<String> = auth.iter().map(|t| format!("Bearer {t}")).collect();
    let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    headers.push(("Content-Type", content_type));
    headers.push(("Accept", "application/json, text/event-stream"));
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
        headers.push(("Mcp-Protocol-Version", "2025-06-18"));
    }
    request(&server.addr, "POST", "/mcp", &headers, body)
}

/// The JSON-RPC messages of an answer: a JSON body, or an event stream's
/// `data:` lines.
fn messages(r: &support::http::Response) -> Vec<Value> {
    let text = String::from_utf8_lossy(&r.body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return vec![v];
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

#[test]
fn unreadable_bodies_get_json_rpc_errors_and_valid_ones_still_work() {
    let w = World::new();
    let (agent, _) = w.token("bot", "agent", "agent");
    let server = Server::start(&w.config);
    let json_rpc_error = |r: &support::http::Response, status: u16, code: i64, id: Value| {
        assert_eq!(r.status, status, "{r:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{r:?}"
        );
        let answer = r.json();
        assert_eq!(answer["jsonrpc"], "2.0", "{r:?}");
        assert_eq!(answer["id"], id, "{r:?}");
        assert_eq!(answer["error"]["code"], code, "{r:?}");
        assert!(answer["error"]["message"].is_string(), "{r:?}");
    };

    // Nested past any parser's patience, as arrays and as objects: a
    // parse error, never a crash, a hang or a plain-text 415.
    let arrays = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let call_deep = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"echo__echo","arguments":{{"value":{}"x"{}}}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    for body in [
        arrays.as_str(),
        objects.as_str(),
        call_deep.as_str(),
        "{",
        "",
        "not json",
        "\u{0}\u{1}",
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize""#,
    ] {
        let r = mcp_post(&server, &[&agent], "application/json", None, body.as_bytes());
        json_rpc_error(&r, 400, -32700, Value::Null);
    }
    let invalid_utf8 = [b'{', 0xff, 0xfe, b'}'];
    json_rpc_error(
        &mcp_post(&server, &[&agent], "application/json", None, &invalid_utf8),
        400,
        -32700,
        Value::Null,
    );
    // JSON, but not a JSON-RPC message: invalid request, with its id when
    // it has one.
    for (body, id) in [
        ("{}", Value::Null),
        ("[]", Value::Null),
        ("42", Value::Null),
        (r#"{"jsonrpc":"2.0","id":3,"method":7}"#, json!(3)),
        (r#"{"jsonrpc":"1.0","id":"a","method":"ping"}"#, json!("a")),
    ] {
        let r = mcp_post(&server, &[&agent], "application/json", None, body.as_bytes());
        json_rpc_error(&r, 400, -32600, id);
    }
    // Not JSON at all by its content type: 415, still a JSON-RPC error.
    let r = mcp_post(&server, &[&agent], "text/plain", None, b"{}");
    json_rpc_error(&r, 415, -32600, Value::Null);

    // Two Authorization headers: refused, whichever is valid.
    let bogus = "alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    for pair in [
        [agent.as_str(), agent.as_str()],
        [bogus, agent.as_str()],
        [agent.as_str(), bogus],
    ] {
        let r = mcp_post(&server, &pair, "application/json", None, ping);
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["error"]["code"], "ambiguous-credentials", "{r:?}");
    }

    // The server still speaks MCP: a session, its tools, a call.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        None,
        init.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let session = r.header("mcp-session-id").expect("a session").to_string();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        Some(&session),
        note.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        Some(&session),
        list.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let tools = messages(&r);
    assert!(
        tools.iter().any(|m| m["id"] == 2
            && m["result"]["tools"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == "echo__echo"))),
        "{tools:?}"
    );
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"value": "still here"}}});
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        Some(&session),
        call.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        messages(&r)
            .iter()
            .any(|m| m["id"] == 3 && m["result"]["structuredContent"]["result"] == "still here"),
        "{r:?}"
    );
}

#[test]
fn a_session_is_only_for_its_identity_and_401s_point_to_the_resource_metadata() {
    let w = World::new();
    let (agent, _) = w.token("bot", "agent", "agent");
    let (other, _) = w.token("other-bot", "agent", "agent");
    let server = Server::start(&w.config);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        None,
        init.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let session = r.header("mcp-session-id").expect("a session").to_string();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    // Another identity that learned the session id gets nothing of it: not
    // its requests, not its event stream, not its end.
    let r = mcp_post(
        &server,
        &[&other],
        "application/json",
        Some(&session),
        list.to_string().as_bytes(),
    );
    assert_eq!(r.status, 404, "{r:?}");
    let bearer = format!("Bearer {other}");
    let stream = request(
        &server.addr,
        "GET",
        "/mcp",
        &[
            ("Authorization", &bearer),
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", &session),
        ],
        b"",
    );
    assert_eq!(stream.status, 404, "{stream:?}");
    let ended = request(
        &server.addr,
        "DELETE",
        "/mcp",
        &[("Authorization", &bearer), ("Mcp-Session-Id", &session)],
        b"",
    );
    assert_eq!(ended.status, 404, "{ended:?}");
    // A made-up id is no better.
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        Some("0123456789abcdef"),
        list.to_string().as_bytes(),
    );
    assert_eq!(r.status, 404, "{r:?}");
    // Its owner still uses it.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        Some(&session),
        note.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let r = mcp_post(
        &server,
        &[&agent],
        "application/json",
        Some(&session),
        list.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        messages(&r)
            .iter()
            .any(|m| m["id"] == 2 && m["result"]["tools"].is_array()),
        "{r:?}"
    );

    // Without a token: 401, naming the protected resource metadata
    // (RFC 9728), which says the resource takes bearer tokens in a header.
    let r = request(
        &server.addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        init.to_string().as_bytes(),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").expect("a challenge").to_string();
    let origin = format!("http://{}", server.addr);
    assert_eq!(
        challenge,
        format!("Bearer realm=\"airlock\", resource_metadata=\"{origin}/.well-known/oauth-protected-resource/mcp\""),
    );
    let metadata = server.get("/.well-known/oauth-protected-resource/mcp", None);
    assert_eq!(metadata.status, 200, "{metadata:?}");
    assert_eq!(metadata.json()["resource"], format!("{origin}/mcp"), "{metadata:?}");
    assert_eq!(metadata.json()["bearer_methods_supported"], json!(["header"]));
    // A Host `/mcp` does not answer to is not reflected.
    for host in ["evil\"x", "evil.example:80"] {
        let r = request(
            &server.addr,
            "POST",
            "/mcp",
            &[("Host", host), ("Content-Type", "application/json")],
            init.to_string().as_bytes(),
        );
        assert_eq!(r.status, 401, "{r:?}");
        assert!(!r.header("www-authenticate").unwrap().contains("evil"), "{r:?}");
    }
}

/// The official MCP conformance suite's CLI (scripts/mcp-conformance-env.sh
/// installs it; scripts/test.sh runs that).
fn conformance() -> PathBuf {
    let path = std::env::var_os("AIRLOCK_TEST_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::repo_root().join("target/mcp-conformance/node_modules/.bin/conformance"));
    assert!(
        path.exists(),
        "the conformance test needs the official suite: run `bash scripts/mcp-conformance-env.sh` (scripts/test.sh does)"
    );
    path
}

#[test]
fn the_official_conformance_scenarios_pass() {
    let w = World::new();
    let (agent, _) = w.token("conformance", "agent", "agent");
    let server = Server::start(&w.config);
    // The suite sends no token of its own: a proxy on loopback adds one.
    let proxy = support::bearer_proxy::BearerProxy::start(&server.addr, &agent);
    let url = format!("http://{}/mcp", proxy.addr);
    let results = tempfile::tempdir().unwrap();
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "logging-set-level",
        "server-sse-multiple-streams",
        "server-sse-polling",
    ] {
        let out = Command::new(conformance())
            .args(["server", "--url", &url, "--scenario", scenario, "--output-dir"])
            .arg(results.path())
            .output()
            .expect("run the conformance suite");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{scenario} failed:\n{stdout}\n{stderr}");
        assert!(!stdout.contains("FAILURE"), "{scenario}:\n{stdout}");
    }
}

#[test]
fn a_cancelled_call_stops_its_run_and_is_audited_as_cancelled() {
    use std::io::{BufRead as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n[service]\nmcp-wait-ms = 60000\n\
             [actions.spin]\ncomponent = {}\n[actions.spin.grants]\napproval = true\n\
             files = {{ dir = \"work\", mode = \"read-write\" }}\n[actions.spin.limits]\ntimeout-ms = 120000\n\
             [actions.spin.access]\ninvoke = [\"role:agent\"]\napprove = [\"role:reviewer\"]\n",
            toml_path(&component("gated"))
        ),
    )
    .unwrap();
    let token = support::create_token(&config, "bot", "agent", &["agent"]);
    let token_file = dir.path().join("bot.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "mcp",
            "--config",
            config.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .env_remove("AIRLOCK_DATA_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut send = |v: Value| writeln!(to, "{v}").unwrap();
    let next = |from: &mut std::io::BufReader<std::process::ChildStdout>| {
        let mut line = String::new();
        assert!(from.read_line(&mut line).unwrap() > 0, "airlock mcp ended");
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let answer = |from: &mut std::io::BufReader<std::process::ChildStdout>, id: i64| loop {
        let v = next(from);
        if v["id"] == id {
            break v;
        }
    };
    send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}));
    answer(&mut from, 1);
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    // Ten minutes of computing, after one write: far past anything here.
    send(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "spin__write-then-spin", "arguments": {"path": "spinning.txt", "ms": 600_000},
                   "_meta": {"progressToken": "spin-1"}}}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.path().join("work/spinning.txt").exists() {
        assert!(std::time::Instant::now() < deadline, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A long call reports progress while it runs.
    let progress = loop {
        let v = next(&mut from);
        assert_ne!(v["id"], 7, "the call ended early: {v}");
        if v["method"] == "notifications/progress" {
            break v;
        }
    };
    assert_eq!(progress["params"]["progressToken"], "spin-1", "{progress}");
    assert!(
        progress["params"]["message"].as_str().unwrap().ends_with("is running"),
        "{progress}"
    );
    let cancelled_at = std::time::Instant::now();
    send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "changed my mind"}}),
    );
    // The session goes on, and the run is closed in the audit log as
    // cancelled, well before its timeout.
    let audit = |args: &[&str]| {
        airlock_with(
            &[&["audit", "show", "--config", config.to_str().unwrap(), "--json"], args].concat(),
            b"",
            &[],
        )
    };
    let finished = loop {
        let run = audit(&[]);
        assert_eq!(run.code, 0, "{run:?}");
        let found = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|r| r["event"]["kind"] == "invocation-finished");
        if let Some(f) = found {
            break f;
        }
        assert!(
            cancelled_at.elapsed() < std::time::Duration::from_secs(20),
            "no closing record: {run:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(cancelled_at.elapsed() < std::time::Duration::from_secs(20));
    let event = &finished["event"];
    assert_eq!(event["outcome"], "cancelled", "{finished}");
    assert!(event["error"].as_str().unwrap().contains("cancelled"), "{finished}");
    send(json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}));
    assert_eq!(answer(&mut from, 8)["result"], json!({}));
    let _ = child.kill();
    let _ = child.wait();
}
