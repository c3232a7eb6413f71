//! `airlock serve`: the HTTP API against a real server process, with real
//! tokens, the real `gated` component, and hostile clients.

mod support;

use serde_json::{Value, json};
use std::io::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::http::{Response, Server, request};
use support::{airlock_with, component, toml_path};

struct World {
    /// Kept for its lifetime: the directory goes when the test ends.
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let gated = toml_path(&component("gated"));
        let text = format!(
            r#"
[runtime]
data-dir = "data"

[service]
max-body-bytes = 65536
rate-limit = {{ per-second = 1000, burst = 1000 }}
audit-readers = ["role:auditor"]

[actions.echo]
component = {gated}
[actions.echo.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.echo.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]

[actions.deploy]
component = {gated}
[actions.deploy.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.deploy.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.deploy.approval]
invocation = true

[actions.secret-ops]
component = {gated}
[actions.secret-ops.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.secret-ops.access]
invoke = ["ops-bot"]
approve = ["role:reviewer"]
"#
        );
        let config = dir.path().join("airlock.toml");
        std::fs::write(&config, text).unwrap();
        World { _dir: dir, config }
    }

    fn token(&self, identity: &str, kind: &str, roles: &[&str]) -> String {
        support::create_token(&self.config, identity, kind, roles)
    }

    fn revoke(&self, token: &str) {
        let id = &token[4..20];
        let run = airlock_with(
            &["token", "revoke", id, "--config", self.config.to_str().unwrap()],
            b"",
            &[],
        );
        assert_eq!(run.code, 0, "{run:?}");
    }
}

fn invoke_body(action: &str, function: &str, args: Value) -> Value {
    json!({"action": action, "function": function, "args": args})
}

#[test]
fn authentication_missing_wrong_and_revoked_tokens() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let server = Server::start(&w.config);
    assert_eq!(server.get("/v1/health", None).status, 200);

    let missing = server.get("/v1/actions", None);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "unauthenticated");
    assert!(missing.header("www-authenticate").is_some());

    let wrong = server.get(
        "/v1/actions",
        Some("alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    assert_eq!(wrong.status, 401);
    assert!(!String::from_utf8_lossy(&wrong.body).contains("AAAAAAAA"));
    // A real token's id with a wrong secret is no token at all.
    let forged = format!("alk_{}_{}", &agent[4..20], "B".repeat(43));
    assert_ne!(forged, agent);
    let wrong_secret = server.get("/v1/actions", Some(&forged));
    assert_eq!(wrong_secret.status, 401, "{wrong_secret:?}");
    assert_eq!(wrong_secret.json()["error"]["code"], "unauthenticated");
    assert!(!String::from_utf8_lossy(&wrong_secret.body).contains("BBBBBBBB"));
    let garbage = server.get("/v1/actions", Some("not a token"));
    assert_eq!(garbage.status, 401);

    let ok = server.get("/v1/actions", Some(&agent));
    assert_eq!(ok.status, 200, "{ok:?}");
    let listed = ok.json();
    let names: Vec<&str> = listed["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    // Only what this identity may invoke or approve is listed.
    assert_eq!(names, ["deploy", "echo"]);
    let echo = &ok.json()["actions"][1];
    assert!(
        echo["manifest"]["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "echo")
    );
    assert!(echo["manifest"]["digest"].as_str().unwrap().starts_with("blake3:"));

    // Revocation takes effect on the very next request.
    w.revoke(&agent);
    let revoked = server.get("/v1/actions", Some(&agent));
    assert_eq!(revoked.status, 401, "{revoked:?}");
    assert!(revoked.json()["error"]["message"].as_str().unwrap().contains("revoked"));
}

#[test]
fn permissions_sync_and_async_invocations() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let server = Server::start(&w.config);

    // Permission denial, before anything runs.
    let denied = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("secret-ops", "echo", json!({"value": "x"})),
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"]["code"], "forbidden");

    // Synchronous: the result in the response.
    let sync = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("echo", "echo", json!({"value": "hi"})),
    );
    assert_eq!(sync.status, 200, "{sync:?}");
    assert_eq!(sync.json()["status"], "succeeded");
    assert_eq!(sync.json()["result"], "hi");
    let id = sync.json()["invocation"].as_str().unwrap().to_string();
    let fetched = server.get(&format!("/v1/invocations/{id}"), Some(&agent));
    assert_eq!(fetched.json()["result"], "hi", "{fetched:?}");

    // Asynchronous: an id at once, the result later.
    let mut body = invoke_body("echo", "echo", json!({"value": "later"}));
    body["wait-ms"] = json!(0);
    let submitted = server.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(submitted.status, 202, "{submitted:?}");
    let id = submitted.json()["invocation"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.get(&format!("/v1/invocations/{id}"), Some(&agent));
        assert_eq!(r.status, 200, "{r:?}");
        if r.json()["status"] == "succeeded" {
            assert_eq!(r.json()["result"], "later");
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Someone else's invocation is not found.
    let other = w.token("other", "agent", &["agent"]);
    assert_eq!(server.get(&format!("/v1/invocations/{id}"), Some(&other)).status, 404);

    // Bad requests are structured.
    let bad_args = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("echo", "echo", json!({"value": 7})),
    );
    assert_eq!(bad_args.status, 422, "{bad_args:?}");
    let unknown = server.post("/v1/invocations", Some(&agent), &invoke_body("nope", "echo", json!({})));
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let extra = server.post(
        "/v1/invocations",
        Some(&agent),
        &json!({"action": "echo", "function": "echo", "bogus": 1}),
    );
    assert_eq!(extra.status, 400, "{extra:?}");
}

#[test]
fn approvals_over_the_api() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let server = Server::start(&w.config);

    let mut body = invoke_body("deploy", "echo", json!({"value": "v1"}));
    body["wait-ms"] = json!(0);
    let pending = server.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(pending.status, 202, "{pending:?}");
    assert_eq!(pending.json()["status"], "awaiting-approval");
    assert_eq!(pending.json()["approval-kind"], "invocation");
    let id = pending.json()["approval"].as_str().unwrap().to_string();
    let invocation = pending.json()["invocation"].as_str().unwrap().to_string();

    // The reviewer sees exactly what would run.
    let list = server.get("/v1/approvals", Some(&alice));
    assert_eq!(list.json()["approvals"].as_array().unwrap().len(), 1, "{list:?}");
    let shown = server.get(&format!("/v1/approvals/{id}"), Some(&alice)).json();
    assert_eq!(shown["caller"], "bot");
    assert_eq!(shown["args"], json!({"value": "v1"}));
    assert_eq!(shown["function"], "echo");
    assert!(shown["component-digest"].as_str().unwrap().starts_with("blake3:"));

    // The requester cannot approve; a deny needs a reason.
    let own = server.post(&format!("/v1/approvals/{id}/approve"), Some(&agent), &json!({}));
    assert!(own.status == 404 || own.status == 409, "{own:?}");
    let no_reason = server.post(&format!("/v1/approvals/{id}/deny"), Some(&alice), &json!({}));
    assert_eq!(no_reason.status, 400, "{no_reason:?}");

    let approved = server.post(
        &format!("/v1/approvals/{id}/approve"),
        Some(&alice),
        &json!({"reason": "ok"}),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.json()["approval"]["state"], "approved");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.get(&format!("/v1/invocations/{invocation}"), Some(&agent));
        if r.json()["status"] == "succeeded" {
            assert_eq!(r.json()["result"], "v1");
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = server.post(&format!("/v1/approvals/{id}/approve"), Some(&alice), &json!({}));
    assert_eq!(again.status, 409, "{again:?}");
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let server = Server::start(&w.config);
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {agent}");
        let r = request(
            &server.addr,
            "GET",
            "/v1/actions",
            &[("Authorization", auth.as_str())],
            b"",
        );
        assert_eq!(r.status, 200, "{scheme}: {r:?}");
    }
    // Another scheme does not carry a bearer token.
    let basic = format!("Basic {agent}");
    let r = request(
        &server.addr,
        "GET",
        "/v1/actions",
        &[("Authorization", basic.as_str())],
        b"",
    );
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn readiness_names_actions_only_to_an_identity_and_only_its_own() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let nobody = w.token("stranger", "agent", &[]);
    let server = Server::start(&w.config);
    let names = |r: &Response| -> Vec<String> {
        let mut names: Vec<String> = r.json()["actions"]
            .as_array()
            .unwrap_or_else(|| panic!("no action list: {r:?}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        names.sort_unstable();
        names
    };

    // Anyone learns whether the service is ready, and nothing else.
    let r = server.get("/v1/ready", None);
    assert_eq!(r.status, 200, "{r:?}");
    let ready = r.json();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["audit"], "ok", "{ready}");
    assert!(
        ready.get("actions").is_none(),
        "action names without credentials: {ready}"
    );
    for name in ["echo", "deploy", "secret-ops"] {
        assert!(!String::from_utf8_lossy(&r.body).contains(name), "{ready}");
    }

    // An identity sees what it may invoke or approve.
    assert_eq!(names(&server.get("/v1/ready", Some(&agent))), ["deploy", "echo"]);
    assert_eq!(
        names(&server.get("/v1/ready", Some(&alice))),
        ["deploy", "echo", "secret-ops"]
    );
    assert!(names(&server.get("/v1/ready", Some(&nobody))).is_empty());
    // A bad token is refused, not treated as no token.
    let bad = server.get(
        "/v1/ready",
        Some("alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    assert_eq!(bad.status, 401, "{bad:?}");
}

#[test]
fn refusals_name_only_what_the_caller_may_see() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let nobody = w.token("stranger", "agent", &[]);
    let server = Server::start(&w.config);
    let message = |r: &Response| r.json()["error"]["message"].as_str().unwrap_or_default().to_string();

    // An unknown action: the caller's own actions are offered, no others.
    for action in ["nope", "", "../deploy", "secret-ops "] {
        let r = server.post("/v1/invocations", Some(&agent), &invoke_body(action, "echo", json!({})));
        assert_eq!(r.status, 404, "{action:?}: {r:?}");
        assert_eq!(r.json()["error"]["code"], "unknown-action", "{r:?}");
        let m = message(&r);
        assert!(m.contains("deploy") && m.contains("echo"), "{m}");
        assert!(!m.contains("secret-ops") || action.contains("secret-ops"), "{m}");
    }
    let r = server.post("/v1/invocations", Some(&agent), &invoke_body("nope", "echo", json!({})));
    assert!(!message(&r).contains("secret-ops"), "{r:?}");
    let r = server.post(
        "/v1/invocations",
        Some(&nobody),
        &invoke_body("nope", "echo", json!({})),
    );
    assert_eq!(r.status, 404, "{r:?}");
    let m = message(&r);
    assert!(m.contains("none"), "{m}");
    for name in ["echo", "deploy", "secret-ops"] {
        assert!(!m.contains(name), "{m}");
    }

    // A forbidden action is refused without the rule's identities and
    // roles; the audit record keeps them for the operator.
    let r = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("secret-ops", "echo", json!({"value": "x"})),
    );
    assert_eq!(r.status, 403, "{r:?}");
    let m = message(&r);
    assert!(m.contains("may not invoke action `secret-ops`"), "{m}");
    assert!(!m.contains("ops-bot") && !m.contains("access.invoke"), "{m}");
    let auditor = w.token("audrey", "human", &["auditor"]);
    let records = server
        .get("/v1/audit?action=secret-ops&caller=bot", Some(&auditor))
        .json();
    assert!(
        records["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"]["error"].as_str().is_some_and(|e| e.contains("ops-bot"))),
        "{records}"
    );
}

/// Send one request with exactly `headers` (none added but Host and the
/// body's length) and read the answer.
fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    support::http::read(stream)
}

#[test]
fn two_authorization_headers_are_refused_on_every_route() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let server = Server::start(&w.config);
    let (a, b) = (format!("Bearer {agent}"), format!("Bearer {alice}"));
    let bogus = "Bearer alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
    let body = invoke_body("echo", "echo", json!({"value": "twice"})).to_string();
    // Two identities, the same one twice, a valid one after an invalid one
    // and the other way round: never a guess at which counts.
    for (first, second) in [(&a, &b), (&a, &a), (&bogus, &a), (&a, &bogus)] {
        for (method, path, body) in [
            ("GET", "/v1/actions", ""),
            ("GET", "/v1/ready", ""),
            ("GET", "/v1/health", ""),
            ("POST", "/v1/invocations", body.as_str()),
            ("POST", "/v1/approvals/x/approve", "{}"),
            ("GET", "/v1/audit", ""),
        ] {
            let r = raw(
                &server.addr,
                method,
                path,
                &[
                    ("Authorization", first.as_str()),
                    ("Authorization", second.as_str()),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            );
            assert_json_error(&r, 400, "ambiguous-credentials");
            assert!(
                r.json()["error"]["message"].as_str().unwrap().contains("Authorization"),
                "{r:?}"
            );
        }
    }
    // Nothing ran.
    let auditor = w.token("audrey", "human", &["auditor"]);
    let records = server.get("/v1/audit?action=echo", Some(&auditor)).json();
    assert_eq!(records["records"], json!([]), "{records}");
    // One header is fine.
    let r = raw(
        &server.addr,
        "GET",
        "/v1/actions",
        &[("Authorization", a.as_str())],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_call_that_outlasts_its_wait_is_answered_202_and_finishes_in_the_background() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let server = Server::start(&w.config);
    let mut body = invoke_body("echo", "write-then-spin", json!({"path": "spin.txt", "ms": 3000}));
    body["wait-ms"] = json!(300);
    let r = server.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["status"], "running", "{r:?}");
    let id = r.json()["invocation"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.get(&format!("/v1/invocations/{id}"), Some(&agent));
        assert_eq!(r.status, 200, "{r:?}");
        if r.json()["status"] == "succeeded" {
            assert_eq!(r.json()["result"], "done", "{r:?}");
            break;
        }
        assert_eq!(r.json()["status"], "running", "{r:?}");
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_sync_invocation_waits_for_its_approval_up_to_wait_ms() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let server = Server::start(&w.config);

    // A short wait without a decision: 202 with the request, after the wait.
    let mut body = invoke_body("deploy", "echo", json!({"value": "soon"}));
    body["wait-ms"] = json!(300);
    let started = Instant::now();
    let short = server.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(short.status, 202, "{short:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(short.json()["status"], "awaiting-approval", "{short:?}");
    assert!(short.json()["approval"].is_string(), "{short:?}");

    // A long wait: a reviewer approves meanwhile, and the waiting request
    // is answered with the result.
    let addr = server.addr.clone();
    let auth = format!("Bearer {agent}");
    let waiting = std::thread::spawn(move || {
        let body = json!({"action": "deploy", "function": "echo", "args": {"value": "v2"}, "wait-ms": 30000});
        request(
            &addr,
            "POST",
            "/v1/invocations",
            &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let list = server.get("/v1/approvals", Some(&alice)).json();
        let found = list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["args"]["value"] == "v2")
            .map(|a| a["id"].as_str().unwrap().to_string());
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < deadline, "no request for the waiting call: {list}");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiting.is_finished(), "answered before the decision");
    // Approved with no body at all.
    let auth = format!("Bearer {alice}");
    let approved = request(
        &server.addr,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        &[("Authorization", auth.as_str())],
        b"",
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    let answered = waiting.join().unwrap();
    assert_eq!(answered.status, 200, "{answered:?}");
    assert_eq!(answered.json()["status"], "succeeded", "{answered:?}");
    assert_eq!(answered.json()["result"], "v2", "{answered:?}");
}

#[test]
fn a_deny_over_the_api_ends_the_invocation_as_denied() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let server = Server::start(&w.config);
    let mut body = invoke_body("deploy", "echo", json!({"value": "risky"}));
    body["wait-ms"] = json!(0);
    let pending = server.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(pending.status, 202, "{pending:?}");
    let id = pending.json()["approval"].as_str().unwrap().to_string();
    let invocation = pending.json()["invocation"].as_str().unwrap().to_string();

    let denied = server.post(
        &format!("/v1/approvals/{id}/deny"),
        Some(&alice),
        &json!({"reason": "not today"}),
    );
    assert_eq!(denied.status, 200, "{denied:?}");
    assert_eq!(denied.json()["approval"]["state"], "denied", "{denied:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.get(&format!("/v1/invocations/{invocation}"), Some(&agent));
        assert_eq!(r.status, 200, "{r:?}");
        if r.json()["status"] == "denied" {
            assert_eq!(r.json()["result"], Value::Null, "{r:?}");
            let error = r.json()["error"].as_str().unwrap().to_string();
            assert!(error.contains("not today") && error.contains("nothing ran"), "{error}");
            break;
        }
        assert_eq!(r.json()["status"], "awaiting-approval", "{r:?}");
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing of it ran.
    let auditor = w.token("audrey", "human", &["auditor"]);
    let records = server
        .get(&format!("/v1/audit?invocation={invocation}"), Some(&auditor))
        .json();
    assert!(
        !records["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"]["kind"] == "invocation-started"),
        "{records}"
    );
}

fn assert_json_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(r.json()["error"]["code"], code, "{r:?}");
    assert!(r.json()["error"]["message"].is_string(), "{r:?}");
}

#[test]
fn malformed_queries_paths_and_decision_bodies_get_json_errors() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let auditor = w.token("audrey", "human", &["auditor"]);
    let server = Server::start(&w.config);

    for path in ["/v1/approvals?limit=x", "/v1/approvals?bogus=1"] {
        assert_json_error(&server.get(path, Some(&alice)), 400, "bad-query");
    }
    for path in ["/v1/audit?limit=x", "/v1/audit?limit=-1", "/v1/audit?bogus=1"] {
        assert_json_error(&server.get(path, Some(&auditor)), 400, "bad-query");
    }
    // Who asks is settled first.
    assert_json_error(&server.get("/v1/approvals?limit=x", None), 401, "unauthenticated");
    assert_json_error(&server.get("/v1/invocations/%FF", Some(&agent)), 400, "bad-path");
    let bearer = format!("Bearer {agent}");
    assert_json_error(
        &request(
            &server.addr,
            "DELETE",
            "/v1/invocations",
            &[("Authorization", &bearer)],
            b"",
        ),
        405,
        "method-not-allowed",
    );

    let mut body = invoke_body("deploy", "echo", json!({"value": "v1"}));
    body["wait-ms"] = json!(0);
    let pending = server.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(pending.status, 202, "{pending:?}");
    let id = pending.json()["approval"].as_str().unwrap().to_string();
    let auth = format!("Bearer {alice}");
    for (content_type, bad) in [
        ("application/json", "{"),
        ("application/json", "{\"reason\": 5}"),
        ("application/json", "{\"bogus\": 1}"),
        ("text/plain", "reason"),
    ] {
        for verdict in ["approve", "deny"] {
            let r = request(
                &server.addr,
                "POST",
                &format!("/v1/approvals/{id}/{verdict}"),
                &[("Authorization", auth.as_str()), ("Content-Type", content_type)],
                bad.as_bytes(),
            );
            assert_json_error(&r, 400, "bad-json");
        }
    }
    let still = server.get(&format!("/v1/approvals/{id}"), Some(&alice)).json();
    assert_eq!(still["state"], "pending", "{still}");
    assert_eq!(still["decisions"], json!([]), "{still}");
}

#[test]
fn a_callers_own_requests_are_listed_however_many_newer_ones_others_made() {
    let w = World::new();
    let bot = w.token("bot", "agent", &["agent"]);
    let other = w.token("other", "agent", &["agent"]);
    let server = Server::start(&w.config);
    let submit = |token: &str, value: &str| {
        let mut body = invoke_body("deploy", "echo", json!({ "value": value }));
        body["wait-ms"] = json!(0);
        let r = server.post("/v1/invocations", Some(token), &body);
        assert_eq!(r.status, 202, "{r:?}");
        r.json()["approval"].as_str().unwrap().to_string()
    };
    let own = submit(bot.as_str(), "mine");
    for i in 0..3 {
        submit(other.as_str(), format!("theirs {i}").as_str());
    }
    // The newest request this caller may see, not the newest of all.
    let listed = server.get("/v1/approvals?limit=1", Some(&bot)).json();
    let ids: Vec<&str> = listed["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [own.as_str()], "{listed}");
}

#[test]
fn audit_query_and_verify() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let auditor = w.token("audrey", "human", &["auditor"]);
    let server = Server::start(&w.config);
    for v in ["a", "b"] {
        let r = server.post(
            "/v1/invocations",
            Some(&agent),
            &invoke_body("echo", "echo", json!({ "value": v })),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(server.get("/v1/audit", Some(&agent)).status, 403);
    let records = server.get("/v1/audit?action=echo&caller=bot", Some(&auditor));
    assert_eq!(records.status, 200, "{records:?}");
    let records = records.json()["records"].as_array().unwrap().clone();
    let started: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"]["kind"] == "invocation-started")
        .collect();
    assert_eq!(started.len(), 2);
    assert!(records.iter().any(|r| r["event"]["kind"] == "invocation-finished"));
    let one = started[0]["event"]["invocation"].as_str().unwrap();
    let only = server
        .get(&format!("/v1/audit?invocation={one}"), Some(&auditor))
        .json();
    assert!(
        only["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["event"]["invocation"] == one)
    );
    let verify = server.get("/v1/audit/verify", Some(&auditor));
    assert_eq!(verify.json()["intact"], true, "{verify:?}");
    let openapi = server.get("/v1/openapi.json", None).json();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/v1/invocations"]["post"].is_object());
}

#[test]
fn hostile_clients_oversized_malformed_slow_and_many() {
    let w = World::new();
    let agent = w.token("bot", "agent", &["agent"]);
    let server = Server::start(&w.config);
    let auth = format!("Bearer {agent}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];

    // Oversized body: refused with a structured 413.
    let big = format!(
        "{{\"action\":\"echo\",\"function\":\"echo\",\"args\":{{\"value\":\"{}\"}}}}",
        "x".repeat(200_000)
    );
    let r = request(&server.addr, "POST", "/v1/invocations", &headers, big.as_bytes());
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["error"]["code"].is_string());

    // Malformed JSON of several kinds.
    for bad in [
        "{",
        "[]",
        "null",
        "{\"action\": 5}",
        "\u{0}\u{1}",
        "{\"action\":\"echo\",\"function\":\"echo\",\"args\":[1,2]}",
    ] {
        let r = request(&server.addr, "POST", "/v1/invocations", &headers, bad.as_bytes());
        assert!((400..500).contains(&r.status), "{bad:?}: {r:?}");
        assert!(r.json()["error"]["message"].is_string(), "{bad:?}: {r:?}");
    }

    // Slow clients holding half-sent requests do not stop others.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"POST /v1/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
            .unwrap();
        slow.push(s);
    }
    let ok = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("echo", "echo", json!({"value": "still here"})),
    );
    assert_eq!(ok.status, 200, "{ok:?}");

    // Many concurrent connections, all answered.
    let addr = server.addr.clone();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let addr = addr.clone();
            let auth = auth.clone();
            std::thread::spawn(move || {
                let body =
                    json!({"action": "echo", "function": "echo", "args": {"value": format!("n{i}")}}).to_string();
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                request(&addr, "POST", "/v1/invocations", &headers, body.as_bytes())
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["result"], format!("n{i}"));
    }
    drop(slow);
    assert_eq!(server.get("/v1/health", None).status, 200);
}

#[test]
fn each_identity_is_rate_limited_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        "[runtime]\ndata-dir = \"data\"\n[service]\nrate-limit = { per-second = 0.2, burst = 3 }\n",
    )
    .unwrap();
    let a = support::create_token(&config, "bot-a", "agent", &[]);
    let b = support::create_token(&config, "bot-b", "agent", &[]);
    let server = Server::start(&config);
    for _ in 0..3 {
        assert_eq!(server.get("/v1/actions", Some(&a)).status, 200);
    }
    let limited = server.get("/v1/actions", Some(&a));
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.json()["error"]["code"], "rate-limited");
    // Another identity has its own budget.
    assert_eq!(server.get("/v1/actions", Some(&b)).status, 200);
}

/// How long until the server closes `stream` (read returns end of file or
/// a reset), or `None` if it is still open after `limit`.
fn closed_after(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read as _;
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => Some(start.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(start.elapsed()),
        Err(_) => None,
    }
}

#[test]
fn slow_clients_are_cut_off_and_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        "[runtime]\ndata-dir = \"data\"\n[service]\nheader-timeout-ms = 3000\nbody-timeout-ms = 1500\n\
         max-connections = 4\nmax-body-bytes = 4096\n",
    )
    .unwrap();
    let token = support::create_token(&config, "bot", "agent", &[]);
    let auth = format!("Bearer {token}");
    let server = Server::start(&config);
    let limit = Duration::from_secs(20);

    // A connection that never sends a byte, one stuck in its request head,
    // and a keep-alive connection idle after its first response: all closed
    // by the header timeout.
    let silent = TcpStream::connect(&server.addr).unwrap();
    let waited = closed_after(silent, limit).expect("a silent connection is closed");
    assert!(waited >= Duration::from_millis(1000), "closed too early: {waited:?}");
    let mut partial = TcpStream::connect(&server.addr).unwrap();
    partial.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").unwrap();
    closed_after(partial, limit).expect("a half-sent head is cut off");
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    closed_after(idle, limit).expect("an idle keep-alive connection is closed");

    // An authenticated body that trickles: 408 once the body timeout
    // passes, and the connection is not reused.
    let mut trickle = TcpStream::connect(&server.addr).unwrap();
    trickle
        .write_all(
            format!(
                "POST /v1/invocations HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"act"
            )
            .as_bytes(),
        )
        .unwrap();
    trickle.set_read_timeout(Some(limit)).unwrap();
    let r = support::http::read(trickle);
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "body-timeout", "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");

    // Oversized bodies of authenticated callers are refused on every
    // route, /mcp included, from the declared length and from what
    // actually arrives (chunked).
    let big = vec![b'x'; 10_000];
    for path in ["/v1/invocations", "/mcp"] {
        let r = request(
            &server.addr,
            "POST",
            path,
            &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
            &big,
        );
        assert_eq!(r.status, 413, "{path}: {r:?}");
    }
    let mut chunked = TcpStream::connect(&server.addr).unwrap();
    chunked
        .write_all(
            format!(
                "POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    for _ in 0..3 {
        let _ = chunked.write_all(format!("{:x}\r\n{}\r\n", 2000, "y".repeat(2000)).as_bytes());
    }
    let _ = chunked.write_all(b"0\r\n\r\n");
    chunked.set_read_timeout(Some(limit)).unwrap();
    assert_eq!(support::http::read(chunked).status, 413);

    // Idle connections that never authenticated cannot take the slots:
    // four of them, and a fifth client is served at once, its room made
    // by closing the oldest of them, long before the header timeout.
    let holders: Vec<_> = (0..4).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let held_at = Instant::now();
    let r = server.get("/v1/actions", Some(&token));
    assert_eq!(r.status, 200, "{r:?}");
    let closed = holders
        .into_iter()
        .filter_map(|h| closed_after(h, Duration::from_millis(200)))
        .count();
    assert!(closed >= 2, "{closed} idle unauthenticated connection(s) closed");
    assert!(
        held_at.elapsed() < Duration::from_millis(2500),
        "the idle connections were not closed to make room, only timed out: {:?}",
        held_at.elapsed()
    );

    // Authenticated keep-alive connections do hold their slots: four of
    // them, idle after a request each, and a fifth client is served only
    // once the header timeout has freed one.
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            s.write_all(format!("GET /v1/actions HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n").as_bytes())
                .unwrap();
            let mut first = [0u8; 12];
            std::io::Read::read_exact(&mut s, &mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            s
        })
        .collect();
    let held_at = Instant::now();
    let r = server.get("/v1/health", None);
    assert_eq!(r.status, 200, "{r:?}");
    let waited = held_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "served after {waited:?}, while authenticated connections held every slot"
    );
    drop(holders);
    assert_eq!(server.get("/v1/health", None).status, 200);
}

#[test]
fn an_upgraded_pin_is_listed_with_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    let (v1, v2) = (component("notes_v1"), component("notes_v2"));
    let digest = |p: &std::path::Path| format!("blake3:{}", blake3::hash(&std::fs::read(p).unwrap()).to_hex());
    let config = dir.path().join("airlock.toml");
    let write = |pin: &str, accept: &str| {
        let text = format!(
            "[runtime]\ndata-dir = \"data\"\n[actions.notes]\ncomponent = \"notes.wasm\"\ndigest = \"{pin}\"\n{accept}\n\
             [actions.notes.grants]\nfiles = {{ dir = \"notes\", mode = \"read-write\" }}\n\
             [[actions.notes.grants.http.allow]]\ndestination = \"https://announce.example\"\n\
             [actions.notes.access]\ninvoke = [\"role:agent\", \"local\"]\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    // Running it records the pin (a `check` only compares).
    let check = || {
        airlock_with(
            &[
                "invoke",
                "--config",
                config.to_str().unwrap(),
                "notes",
                "names",
                "--args",
                "{}",
            ],
            b"",
            &[],
        )
    };
    std::fs::copy(&v1, dir.path().join("notes.wasm")).unwrap();
    write(&digest(&v1), "");
    assert_eq!(check().code, 0);
    std::fs::copy(&v2, dir.path().join("notes.wasm")).unwrap();
    write(&digest(&v2), "accept-new-imports = [\"*\"]");
    assert_eq!(check().code, 0);

    let token = support::create_token(&config, "bot", "agent", &["agent"]);
    let server = Server::start(&config);
    let auth = format!("Bearer {token}");
    let r = request(&server.addr, "GET", "/v1/actions", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let upgrade = &r.json()["actions"][0]["upgrade"];
    assert_eq!(upgrade["old"], digest(&v1).as_str(), "{upgrade}");
    assert_eq!(upgrade["new"], digest(&v2).as_str(), "{upgrade}");
    assert_eq!(
        upgrade["imports"]["added"][1]["name"], "airlock:cap/http@0.1.0",
        "{upgrade}"
    );
    assert_eq!(
        upgrade["grants"]["newly-used"],
        json!(["credentials", "http"]),
        "{upgrade}"
    );
    assert!(
        upgrade["functions"]["changed"][0]["new"]
            .as_str()
            .unwrap()
            .starts_with("save(name: string, text: string, tags: list<string>)"),
        "{upgrade}"
    );
}

/// The value of the sample `series` (name and labels as printed) in a
/// metrics text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.split(' ').next().unwrap().parse().unwrap())
}

#[test]
fn metrics_are_guarded_and_move_with_the_work() {
    let w = World::new();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = free.local_addr().unwrap().to_string();
    drop(free);
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        "audit-readers = [\"role:auditor\"]\n",
        &format!("audit-readers = [\"role:auditor\"]\nmetrics-listen = \"{metrics_addr}\"\nrate-limit = {{ per-second = 0.01, burst = 12 }}\n"),
    );
    let mut text = text.replace("rate-limit = { per-second = 1000, burst = 1000 }\n", "");
    let gated = toml_path(&component("gated"));
    text.push_str(&format!(
        "[actions.reader]\ncomponent = {gated}\n[actions.reader.grants]\napproval = true\n\
         files = {{ dir = \"work\", mode = \"read-only\" }}\n[actions.reader.access]\ninvoke = [\"role:agent\"]\napprove = [\"role:reviewer\"]\n"
    ));
    std::fs::write(&w.config, text).unwrap();
    let agent = w.token("bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let prometheus = w.token("prometheus", "agent", &["monitoring"]);
    let server = Server::start(&w.config);

    // Guarded: no token, then a token without the role.
    assert_eq!(server.get("/metrics", None).status, 401);
    let forbidden = server.get("/metrics", Some(&agent));
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    let before = server.get("/metrics", Some(&prometheus));
    assert_eq!(before.status, 200, "{before:?}");
    assert!(
        before
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{before:?}"
    );
    let before = String::from_utf8(before.body).unwrap();
    assert!(before.ends_with("# EOF\n"), "{before}");

    // Work: two runs, one host call refused, one invocation refused by
    // policy, one held for approval and approved.
    let ok = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("echo", "echo", json!({"value": "a"})),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let escape = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("echo", "write", json!({"path": "../outside.txt", "data": "x"})),
    );
    assert!(escape.status < 500, "{escape:?}");
    let read_only = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("reader", "write", json!({"path": "x.txt", "data": "x"})),
    );
    assert!(read_only.status < 500, "{read_only:?}");
    let refused = server.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("secret-ops", "echo", json!({"value": "x"})),
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    let mut held = invoke_body("deploy", "echo", json!({"value": "v"}));
    held["wait-ms"] = json!(0);
    let held = server.post("/v1/invocations", Some(&agent), &held);
    assert_eq!(held.status, 202, "{held:?}");
    let approval = held.json()["approval"].as_str().unwrap().to_string();
    // Read from the store at most every 5 s, whoever scrapes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mid = String::from_utf8(request(&metrics_addr, "GET", "/metrics", &[], b"").body).unwrap();
        if sample(&mid, "airlock_approvals_pending") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{mid}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let approved = server.post(&format!("/v1/approvals/{approval}/approve"), Some(&alice), &json!({}));
    assert_eq!(approved.status, 200, "{approved:?}");

    // Read from the second address: no token needed there, and nothing
    // else served.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = request(&metrics_addr, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200, "{r:?}");
        let text = String::from_utf8(r.body).unwrap();
        if sample(&text, r#"airlock_invocations_total{action="deploy",outcome="ok"}"#) >= 1.0
            && sample(&text, "airlock_approvals_pending") == 0.0
        {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(request(&metrics_addr, "GET", "/v1/actions", &[], b"").status, 404);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved(r#"airlock_invocations_total{action="echo",outcome="ok"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"airlock_invocations_total{action="echo",outcome="action-error"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"airlock_invocations_total{action="secret-ops",outcome="refused"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"airlock_invocation_run_seconds_count{action="echo"}"#),
        2.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"airlock_invocation_queue_seconds_count{action="deploy"}"#),
        1.0,
        "{after}"
    );
    assert!(
        moved(r#"airlock_invocation_audit_wait_seconds_count{action="echo"}"#) >= 2.0,
        "{after}"
    );
    assert!(
        moved(r#"airlock_host_calls_total{capability="airlock:cap/files",decision="allowed"}"#) >= 1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"airlock_host_calls_total{capability="airlock:cap/files",decision="denied"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(moved("airlock_approvals_requested_total"), 1.0, "{after}");
    assert_eq!(
        moved(r#"airlock_approval_votes_total{verdict="approve"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, "airlock_approvals_pending"), 0.0, "{after}");
    assert!(moved("airlock_audit_sync_seconds_count") >= 4.0, "{after}");
    assert!(moved("airlock_audit_head_sequence") >= 8.0, "{after}");
    assert_eq!(sample(&after, "airlock_audit_write_failures_total"), 0.0, "{after}");
    assert!(
        moved(r#"airlock_store_operation_seconds_count{operation="update-approval"}"#) >= 1.0,
        "{after}"
    );
    assert!(
        moved(r#"airlock_http_requests_total{surface="api",status="403"}"#) >= 1.0,
        "{after}"
    );

    // The per-identity limit: the agent's burst is spent by now.
    let mut limited = 0;
    for _ in 0..12 {
        if server.get("/v1/actions", Some(&agent)).status == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0);
    let last = String::from_utf8(request(&metrics_addr, "GET", "/metrics", &[], b"").body).unwrap();
    assert_eq!(
        sample(&last, r#"airlock_rate_limited_total{limiter="identity"}"#)
            - sample(&after, r#"airlock_rate_limited_total{limiter="identity"}"#),
        f64::from(limited),
        "{last}"
    );
}

#[test]
fn invocations_are_listed_filtered_and_paged() {
    let w = World::new();
    let bot = w.token("bot", "agent", &["agent"]);
    let other = w.token("other", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let server = Server::start(&w.config);
    for i in 0..5 {
        let r = server.post(
            "/v1/invocations",
            Some(&bot),
            &invoke_body("echo", "echo", json!({"value": format!("b{i}")})),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let mut held = invoke_body("deploy", "echo", json!({"value": "held"}));
    held["wait-ms"] = json!(0);
    assert_eq!(server.post("/v1/invocations", Some(&bot), &held).status, 202);
    for i in 0..2 {
        let r = server.post(
            "/v1/invocations",
            Some(&other),
            &invoke_body("echo", "echo", json!({"value": format!("o{i}")})),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let list = |token: &str, query: &str| {
        let r = server.get(&format!("/v1/invocations{query}"), Some(token));
        assert_eq!(r.status, 200, "{query}: {r:?}");
        r.json()
    };
    let ids = |page: &Value| -> Vec<String> {
        page["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["invocation"].as_str().unwrap().to_string())
            .collect()
    };

    // Its own only, newest first.
    let mine = list(&bot, "");
    let all_mine = ids(&mine);
    assert_eq!(all_mine.len(), 6, "{mine}");
    assert_eq!(mine["next"], Value::Null);
    let items = mine["invocations"].as_array().unwrap();
    assert!(items.iter().all(|i| i["caller"] == "bot"), "{mine}");
    let created: Vec<&str> = items.iter().map(|i| i["created-at"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    // An approver of the actions sees everyone's.
    assert_eq!(ids(&list(&alice, "")).len(), 8);
    assert_eq!(ids(&list(&alice, "?caller=other")).len(), 2);

    // Filters.
    let waiting = list(&bot, "?state=awaiting-approval");
    assert_eq!(ids(&waiting).len(), 1, "{waiting}");
    assert_eq!(waiting["invocations"][0]["action"], "deploy");
    assert_eq!(ids(&list(&bot, "?action=echo")).len(), 5);
    assert_eq!(ids(&list(&bot, "?action=echo&state=succeeded")).len(), 5);
    assert_eq!(ids(&list(&bot, "?since=2999-01-01")).len(), 0);
    assert_eq!(ids(&list(&bot, "?until=2999-01-01")).len(), 6);

    // Pages of two, followed to the end: every one once, in order.
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let page = list(&bot, &query);
        let got = ids(&page);
        assert!(got.len() <= 2, "{page}");
        paged.extend(got);
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, all_mine);

    // Malformed queries are refused, never guessed at.
    for bad in [
        "?after=nonsense",
        "?state=done",
        "?limit=x",
        "?bogus=1",
        "?since=yesterday",
    ] {
        let r = server.get(&format!("/v1/invocations{bad}"), Some(&bot));
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    assert_eq!(server.get("/v1/invocations", None).status, 401);
}

#[test]
fn the_openapi_document_is_valid_and_describes_every_route() {
    let w = World::new();
    let bot = w.token("bot", "agent", &["agent"]);
    let server = Server::start(&w.config);
    let public = server.get("/v1/openapi.json", None);
    assert_eq!(public.status, 200, "{public:?}");
    let public = public.json();
    let doc = server.get("/v1/openapi.json", Some(&bot)).json();
    assert_eq!(doc["openapi"], "3.1.0");

    // The API's routes are made only from the handlers' annotations (the
    // router and the document from one list), and every operation the
    // document describes is served: neither "no such endpoint" nor a
    // method the route does not take.
    for file in ["api.rs", "openapi.rs", "routes.rs"] {
        let source = std::fs::read_to_string(support::repo_root().join("runtime/src/service").join(file)).unwrap();
        for by_hand in [".route(", ".route_service("] {
            assert!(
                !source.contains(by_hand),
                "a route added by hand ({by_hand}) in {file}, beside the documented list"
            );
        }
    }
    let auth = format!("Bearer {bot}");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let concrete = path.replace("{id}", "no-such-id");
            let r = raw(
                &server.addr,
                &method.to_ascii_uppercase(),
                &concrete,
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                b"{}",
            );
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                r.status != 405 && !body.contains("no such endpoint"),
                "{method} {path} is described but not served: {r:?}"
            );
        }
        // And what it does not describe is not served either.
        if path == "/mcp" {
            continue;
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_none() {
                let concrete = path.replace("{id}", "no-such-id");
                let r = raw(
                    &server.addr,
                    &method.to_ascii_uppercase(),
                    &concrete,
                    &[("Authorization", &auth)],
                    b"",
                );
                assert_eq!(r.status, 405, "{method} {path} is served but not described: {r:?}");
            }
        }
    }
    assert!(operations >= 19, "{operations} operations described");
    // What is sent is what is described: real answers, each key described
    // (here) and each value valid against its schema (JSON Schema 2020-12,
    // below).
    let schemas = doc["components"]["schemas"].clone();
    let checked = std::cell::RefCell::new(Vec::new());
    let fits = |value: &Value, schema: &str| {
        checked.borrow_mut().push(json!([schema, value]));
        let s = &schemas[schema];
        let properties = s["properties"].as_object().unwrap_or_else(|| panic!("{schema}: {s}"));
        for key in value.as_object().unwrap().keys() {
            assert!(
                properties.contains_key(key),
                "{schema} does not describe {key}: {value}"
            );
        }
        for key in s["required"].as_array().into_iter().flatten() {
            assert!(
                value.get(key.as_str().unwrap()).is_some(),
                "{schema} needs {key}: {value}"
            );
        }
    };
    let ran = server.post(
        "/v1/invocations",
        Some(&bot),
        &invoke_body("echo", "echo", json!({"value": "v"})),
    );
    assert_eq!(ran.status, 200, "{ran:?}");
    fits(&ran.json(), "Invocation");
    let id = ran.json()["invocation"].as_str().unwrap().to_string();
    fits(
        &server.get(&format!("/v1/invocations/{id}"), Some(&bot)).json(),
        "Invocation",
    );
    let page = server.get("/v1/invocations", Some(&bot)).json();
    fits(&page, "InvocationPage");
    fits(&page["invocations"][0], "Invocation");
    let held = server.post(
        "/v1/invocations",
        Some(&bot),
        &json!({"action": "deploy", "function": "write-between", "args": {"path": "a", "data": "b"}, "wait-ms": 0}),
    );
    assert_eq!(held.status, 202, "{held:?}");
    fits(&held.json(), "Invocation");
    let actions = server.get("/v1/actions", Some(&bot)).json();
    fits(&actions, "ActionList");
    fits(&actions["actions"][0], "Action");
    fits(&server.get("/v1/ready", Some(&bot)).json(), "Readiness");
    fits(&server.get("/v1/health", None).json(), "Health");
    fits(&server.get("/v1/cluster", Some(&bot)).json(), "Cluster");
    let approvals = server.get("/v1/approvals", Some(&bot)).json();
    fits(&approvals, "ApprovalList");
    fits(&approvals["approvals"][0], "Approval");
    fits(&server.get("/v1/invocations/nope", Some(&bot)).json(), "Error");
    let auditor = w.token("auditor", "human", &["auditor"]);
    let audit = server.get("/v1/audit?limit=5", Some(&auditor)).json();
    fits(&audit, "AuditRecords");
    fits(&server.get("/v1/audit/verify", Some(&auditor)).json(), "Verification");
    let alice = w.token("alice", "human", &["reviewer"]);
    let pending = approvals["approvals"][0]["id"].as_str().unwrap().to_string();
    let decided = server.post(
        &format!("/v1/approvals/{pending}/deny"),
        Some(&alice),
        &json!({"reason": "not now"}),
    );
    assert_eq!(decided.status, 200, "{decided:?}");
    fits(&decided.json(), "Decided");
    fits(
        &server.get("/.well-known/oauth-protected-resource", None).json(),
        "ResourceMetadata",
    );
    let out = python_with(
        "import json, sys\n\
             from jsonschema import Draft202012Validator\n\
             from referencing import Registry, Resource\n\
             from referencing.jsonschema import DRAFT202012\n\
             given = json.load(sys.stdin)\n\
             registry = Registry().with_resource('urn:api', Resource.from_contents(given['doc'], default_specification=DRAFT202012))\n\
             bad = []\n\
             for name, value in given['cases']:\n\
             \x20   v = Draft202012Validator({'$ref': 'urn:api#/components/schemas/' + name}, registry=registry)\n\
             \x20   bad += [f'{name}: {e.message} at {list(e.absolute_path)}' for e in v.iter_errors(value)]\n\
             print('\\n'.join(bad))\n\
             sys.exit(1 if bad else 0)\n",
        &json!({"doc": doc, "cases": checked.into_inner()}),
    );
    assert!(
        out.status.success(),
        "answers that do not fit their schemas:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation has an id of its own.
    let mut seen = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(seen.insert(id.to_string()), "operationId {id} twice");
        }
    }

    // With a token: the argument and result schemas of what that identity
    // may invoke (from the WIT), as request bodies; never another's.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert_eq!(
        schemas["echo.echo.args"]["properties"]["value"]["type"], "string",
        "{doc}"
    );
    assert_eq!(schemas["echo.echo.result"]["type"], "string", "{doc}");
    assert!(schemas.contains_key("deploy.write-between.args"));
    assert!(
        !schemas.contains_key("secret-ops.echo.args"),
        "another identity's action"
    );
    let bodies =
        doc["paths"]["/v1/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
            .as_array()
            .unwrap();
    assert!(bodies.iter().any(|b| b["properties"]["action"]["const"] == "echo"
        && b["properties"]["function"]["const"] == "echo"
        && b["properties"]["args"]["$ref"] == "#/components/schemas/echo.echo.args"));
    // Without one: no action is named.
    assert!(!public.to_string().contains("echo.echo"), "{public}");

    // Both documents are valid OpenAPI 3.1.
    for (which, document) in [("public", &public), ("with a token", &doc)] {
        let out = python_with(
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))\nprint('valid')",
            document,
        );
        assert!(
            out.status.success(),
            "the {which} document is not valid OpenAPI: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Run the test environment's Python on `script`, with `input` as JSON on
/// its stdin.
fn python_with(script: &str, input: &Value) -> std::process::Output {
    let mut child = std::process::Command::new(support::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The spans of real invocations reach a real OTLP receiver, continuing
/// the trace each request named: by the API's `traceparent` header, by an
/// MCP request's `_meta`, and none at all; an unsampled trace stays
/// unsampled, and a process that ends sends what it has queued.
#[test]
fn invocation_and_host_call_spans_are_exported_over_otlp_continuing_the_callers_trace() {
    use std::io::{BufRead as _, Write as _};
    let collector = support::otlp::Collector::start();
    let endpoint = collector.endpoint();
    let w = World::new();
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text.push_str(&format!(
        "[actions.reader]\ncomponent = {}\n[actions.reader.grants]\napproval = true\n\
         files = {{ dir = \"work\", mode = \"read-only\" }}\n[actions.reader.access]\ninvoke = [\"role:agent\"]\napprove = [\"role:reviewer\"]\n",
        toml_path(&component("gated"))
    ));
    std::fs::write(&w.config, text).unwrap();
    let agent = w.token("bot", "agent", &["agent"]);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=collector-key-1"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let server = Server::start_env(&w.config, &[], &env);
    let post = |body: Value, headers: &[(&str, &str)]| {
        let auth = format!("Bearer {agent}");
        let mut all = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let r = request(
            &server.addr,
            "POST",
            "/v1/invocations",
            &all,
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    let (trace1, parent1) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let allowed = post(
        invoke_body("echo", "write", json!({"path": "x.txt", "data": "secret-looking-data"})),
        &[
            ("traceparent", &format!("00-{trace1}-{parent1}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    );
    let (trace2, parent2) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let denied = post(
        invoke_body("reader", "write", json!({"path": "y.txt", "data": "x"})),
        &[("traceparent", &format!("00-{trace2}-{parent2}-01"))],
    );
    let unsampled_trace = "11111111111111111111111111111111";
    post(
        invoke_body("echo", "echo", json!({"value": "quiet"})),
        &[("traceparent", &format!("00-{unsampled_trace}-2222222222222222-00"))],
    );
    let root = post(invoke_body("echo", "echo", json!({"value": "root"})), &[]);

    // Over MCP stdio, the trace comes in `_meta`; the process ends before
    // its batch is due (60 s), so only the flush at exit can send it.
    let token_file = w.config.with_file_name("bot.token");
    std::fs::write(&token_file, format!("{agent}\n")).unwrap();
    let mut mcp = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["mcp", "--config", w.config.to_str().unwrap(), "--token-file"])
        .arg(&token_file)
        .env_remove("AIRLOCK_DATA_DIR")
        .envs(env.iter().copied())
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let (trace3, parent3) = ("5e1d0c0ffee0000000000000000000aa", "0102030405060708");
    {
        let mut to = mcp.stdin.take().unwrap();
        let mut from = std::io::BufReader::new(mcp.stdout.take().unwrap());
        let mut answer = |message: Value| {
            writeln!(to, "{message}").unwrap();
            let Some(id) = message.get("id").cloned() else {
                return Value::Null;
            };
            loop {
                let mut line = String::new();
                assert!(from.read_line(&mut line).unwrap() > 0, "airlock mcp ended");
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["id"] == id {
                    break v;
                }
            }
        };
        answer(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}));
        answer(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let called = answer(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "echo__write", "arguments": {"path": "mcp.txt", "data": "m"},
            "_meta": {"traceparent": format!("00-{trace3}-{parent3}-01"), "tracestate": "vendor=abc"}}}));
        assert_eq!(called["result"]["isError"], false, "{called}");
        // Closing stdin ends the session and the process.
    }
    let ended = mcp.wait().unwrap();
    assert!(ended.success(), "{ended:?}");

    let invocation_in = |spans: &[support::otlp::Received], trace: &str| {
        spans
            .iter()
            .find(|s| s.span.name == "invocation" && s.trace_id() == trace)
            .cloned()
    };
    let spans = collector.wait_for(Duration::from_secs(20), |spans| {
        [trace1, trace2, trace3].iter().all(|t| {
            invocation_in(spans, t).is_some_and(|inv| {
                spans
                    .iter()
                    .any(|s| s.span.name == "host_call" && s.parent_span_id() == inv.span_id())
            })
        }) && spans
            .iter()
            .any(|s| s.attr("invocation").as_deref() == root["invocation"].as_str())
    });

    // The API's trace: the invocation is a child of the caller's span,
    // carries its tracestate, and its host call is a child of it.
    let first = invocation_in(&spans, trace1).unwrap();
    assert_eq!(first.parent_span_id(), parent1);
    assert_eq!(first.span.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(first.attr("invocation").as_deref(), allowed["invocation"].as_str());
    assert_eq!(first.attr("action").as_deref(), Some("echo"));
    assert_eq!(first.attr("function").as_deref(), Some("write"));
    assert_eq!(first.attr("caller").as_deref(), Some("bot"));
    assert_eq!(first.attr("outcome").as_deref(), Some("ok"));
    let call = spans
        .iter()
        .find(|s| s.span.name == "host_call" && s.parent_span_id() == first.span_id())
        .unwrap();
    assert_eq!(call.trace_id(), trace1);
    assert_eq!(call.attr("allowed").as_deref(), Some("true"));
    assert!(call.attr("interface").unwrap().contains("files"), "{call:?}");
    assert!(call.span.start_time_unix_nano >= first.span.start_time_unix_nano);
    assert!(call.span.end_time_unix_nano <= first.span.end_time_unix_nano);

    // A denied host call is a span too, marked as such.
    let second = invocation_in(&spans, trace2).unwrap();
    assert_eq!(second.parent_span_id(), parent2);
    assert_eq!(second.attr("invocation").as_deref(), denied["invocation"].as_str());
    let refused = spans
        .iter()
        .find(|s| s.span.name == "host_call" && s.parent_span_id() == second.span_id())
        .unwrap();
    assert_eq!(refused.attr("allowed").as_deref(), Some("false"), "{refused:?}");

    // MCP's `_meta` trace, sent at exit.
    let third = invocation_in(&spans, trace3).unwrap();
    assert_eq!(third.parent_span_id(), parent3);
    assert_eq!(third.span.trace_state, "vendor=abc");
    assert_eq!(third.attr("function").as_deref(), Some("write"));

    // No trace named: a root span of a trace of its own.
    let own = spans
        .iter()
        .find(|s| s.attr("invocation").as_deref() == root["invocation"].as_str())
        .unwrap();
    assert!(own.span.parent_span_id.is_empty(), "{own:?}");
    assert!(![trace1, trace2, trace3, unsampled_trace].contains(&own.trace_id().as_str()));

    // The caller's unsampled trace is not recorded.
    assert!(spans.iter().all(|s| s.trace_id() != unsampled_trace), "{spans:#?}");
    // Only airlock's two spans, described as airlock, sent with the
    // configured headers to the traces path.
    for s in &spans {
        assert!(matches!(s.span.name.as_str(), "invocation" | "host_call"), "{s:?}");
        assert_eq!(s.resource_attr("service.name").as_deref(), Some("airlock"));
        assert_eq!(s.resource_attr("deployment.environment").as_deref(), Some("test"));
        assert_eq!(s.header("x-api-key"), Some("collector-key-1"));
        assert_eq!(s.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(s.path, "/v1/traces");
    }
    // Arguments never leave as attributes.
    for body in collector.bodies() {
        assert!(
            !body.windows(19).any(|w| w == b"secret-looking-data"),
            "an argument was exported"
        );
    }
}
