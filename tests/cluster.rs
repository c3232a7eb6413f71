//! Two `airlock serve` nodes on one PostgreSQL database, end to end: a
//! request made on one node is decided on the other and runs exactly once;
//! a host call held on one node resumes when the other records the
//! decision; a token revoked through one node is refused by the other at
//! once; a console session opened on one node works on the other; and the
//! held work of a node killed with SIGKILL is failed by the survivor.

mod support;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::http::{Server, request};
use support::{component, toml_path};

/// One database, one config, two data directories (one per node).
struct Cluster {
    dir: tempfile::TempDir,
    config: PathBuf,
    _db: support::postgres::TestDatabase,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with("")
    }

    /// `extra` is appended to the config (e.g. `[audit]`).
    fn with(extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let db = support::postgres::database();
        let gated = toml_path(&component("gated"));
        let text = format!(
            r#"
[runtime]
data-dir = "data-cli"

{store}

[actions.gated]
component = {gated}
[actions.gated.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.gated.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.gated.approval]
wait-secs = 60
[[actions.gated.approval.host-calls]]
capability = "files"
path-prefix = "gated"

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
quorum = 2
ttl-secs = 600
{extra}
"#,
            store = db.store_section()
        );
        let config = dir.path().join("airlock.toml");
        std::fs::write(&config, text).unwrap();
        Cluster { dir, config, _db: db }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `airlock serve` as node `name`, with its own data directory.
    fn node(&self, name: &str) -> Server {
        let data = self.path(&format!("data-{name}"));
        Server::start_with(&self.config, &["--node-id", name, "--data-dir", data.to_str().unwrap()])
    }

    /// A token, made through the CLI (which writes to the shared store).
    fn token(&self, identity: &str, kind: &str, roles: &[&str]) -> String {
        support::create_token(&self.config, identity, kind, roles)
    }

    /// Every audit record of `invocation` in node `name`'s log.
    fn audit_of(&self, name: &str, invocation: &str) -> Vec<Value> {
        let data = self.path(&format!("data-{name}"));
        let run = support::airlock_with(
            &[
                "audit",
                "show",
                "--invocation",
                invocation,
                "--json",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            b"",
            &[],
        );
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn kind(record: &Value) -> &str {
    record["event"]["kind"]
        .as_str()
        .or_else(|| record["kind"].as_str())
        .unwrap_or("")
}

fn invoke_body(action: &str, function: &str, args: Value) -> Value {
    json!({"action": action, "function": function, "args": args})
}

/// Poll `f` every 20 ms until it returns `Some`, for up to `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pending_request(node: &Server, reviewer: &str, invocation: &str) -> Option<String> {
    let list = node.get("/v1/approvals", Some(reviewer));
    assert_eq!(list.status, 200, "{list:?}");
    list.json()["approvals"]
        .as_array()?
        .iter()
        .find(|a| a["invocation"] == invocation)
        .and_then(|a| a["id"].as_str().map(str::to_string))
}

#[test]
fn a_request_made_on_one_node_is_approved_on_the_other_and_runs_exactly_once() {
    let c = Cluster::new();
    let agent = c.token("bot", "agent", &["agent"]);
    let alice = c.token("alice", "human", &["reviewer"]);
    let bob = c.token("bob", "human", &["reviewer"]);
    let a = c.node("node-a");
    let b = c.node("node-b");

    let mut body = invoke_body("deploy", "write", json!({"path": "deployed", "data": "v1"}));
    body["wait-ms"] = json!(0);
    let submitted = a.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(submitted.status, 202, "{submitted:?}");
    let invocation = submitted.json()["invocation"].as_str().unwrap().to_string();

    // Node B sees the request at once: it is in the shared store.
    let id = pending_request(&b, &alice, &invocation).expect("node B lists node A's request");
    let first = b.post(&format!("/v1/approvals/{id}/approve"), Some(&alice), &json!({}));
    assert_eq!(first.status, 200, "{first:?}");
    // The second vote on node A completes the quorum.
    let second = a.post(&format!("/v1/approvals/{id}/approve"), Some(&bob), &json!({}));
    assert_eq!(second.status, 200, "{second:?}");
    // Alice cannot vote again through the other node.
    let again = a.post(&format!("/v1/approvals/{id}/approve"), Some(&alice), &json!({}));
    assert_eq!(again.status, 409, "{again:?}");

    // Both nodes' sweepers look for approved invocations; one claims it.
    let done = eventually(30, "the approved invocation to finish", || {
        let r = b.get(&format!("/v1/invocations/{invocation}"), Some(&agent));
        (r.json()["status"] == "succeeded").then(|| r.json())
    });
    assert_eq!(done["result"], "written", "{done}");
    assert_eq!(std::fs::read_to_string(c.path("work/deployed")).unwrap(), "v1");
    // Give a second (wrong) run time to happen, then count the runs: one
    // `invocation-started` record across both nodes' logs.
    std::thread::sleep(Duration::from_millis(1500));
    let started: usize = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            c.audit_of(n, &invocation)
                .iter()
                .filter(|r| kind(r) == "invocation-started")
                .count()
        })
        .sum();
    assert_eq!(started, 1, "the invocation ran {started} times");
    let seen_on_a = a.get(&format!("/v1/invocations/{invocation}"), Some(&agent));
    assert_eq!(seen_on_a.json()["status"], "succeeded", "{seen_on_a:?}");
}

#[test]
fn a_host_call_held_on_one_node_resumes_when_the_other_records_the_decision() {
    let c = Cluster::new();
    let agent = c.token("bot", "agent", &["agent"]);
    let alice = c.token("alice", "human", &["reviewer"]);
    let a = c.node("node-a");
    let b = c.node("node-b");

    let addr = a.addr.clone();
    let agent_a = agent.clone();
    let held = std::thread::spawn(move || {
        let auth = format!("Bearer {agent_a}");
        let body = invoke_body("gated", "write-between", json!({"path": "gated/out", "data": "x"}));
        request(
            &addr,
            "POST",
            "/v1/invocations",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    });
    let (id, invocation) = eventually(30, "node A's held call to ask for approval", || {
        let list = b.get("/v1/approvals", Some(&alice));
        let a = list.json()["approvals"].as_array()?.first()?.clone();
        Some((a["id"].as_str()?.to_string(), a["invocation"].as_str()?.to_string()))
    });
    let decided = b.post(&format!("/v1/approvals/{id}/approve"), Some(&alice), &json!({}));
    assert_eq!(decided.status, 200, "{decided:?}");
    let answer = held.join().unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["status"], "succeeded", "{answer:?}");
    assert_eq!(answer.json()["invocation"], invocation.as_str());
    assert_eq!(std::fs::read_to_string(c.path("work/gated/out")).unwrap(), "x");
}

#[test]
fn a_token_revoked_on_one_node_is_refused_by_the_other_at_once_and_sessions_are_shared() {
    let c = Cluster::new();
    let alice = c.token("alice", "human", &["reviewer"]);
    let a = c.node("node-a");
    let b = c.node("node-b");

    // Both nodes list each other.
    let cluster = eventually(10, "both nodes in /v1/cluster", || {
        let r = a.get("/v1/cluster", Some(&alice));
        assert_eq!(r.status, 200, "{r:?}");
        let nodes: Vec<String> = r.json()["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["id"].as_str().map(str::to_string))
            .collect();
        (nodes.contains(&"node-a".to_string()) && nodes.contains(&"node-b".to_string())).then(|| r.json())
    });
    assert_eq!(cluster["this-node"], "node-a");
    assert_eq!(cluster["shared-store"], true);
    assert!(cluster["nodes"][0]["version"].is_string(), "{cluster}");
    let ready = b.get("/v1/ready", None);
    assert_eq!(ready.json()["database"], "ok", "{ready:?}");

    // A console session opened on B is good on A.
    let session = support::http::sign_in(&b, &alice)
        .split(';')
        .next()
        .expect("a session cookie")
        .to_string();
    let on_a = request(&a.addr, "GET", "/console", &[("Cookie", session.as_str())], b"");
    assert_eq!(on_a.status, 200, "{on_a:?}");
    assert!(String::from_utf8_lossy(&on_a.body).contains("alice"), "{on_a:?}");

    // Revoked through B's store (the CLI on the shared database), refused
    // on A at once, for the API and the console session alike.
    assert_eq!(a.get("/v1/approvals", Some(&alice)).status, 200);
    let listed = support::airlock_with(
        &["token", "list", "--json", "--config", c.config.to_str().unwrap()],
        b"",
        &[],
    );
    let id = serde_json::from_str::<Value>(&listed.stdout)
        .ok()
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|t| t["identity"] == "alice")
                .and_then(|t| t["id"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| panic!("alice's token in {listed:?}"));
    let revoked = support::airlock_with(
        &["token", "revoke", &id, "--config", c.config.to_str().unwrap()],
        b"",
        &[],
    );
    assert_eq!(revoked.code, 0, "{revoked:?}");
    assert_eq!(a.get("/v1/approvals", Some(&alice)).status, 401);
    assert_eq!(b.get("/v1/approvals", Some(&alice)).status, 401);
    let after = request(&a.addr, "GET", "/console", &[("Cookie", session.as_str())], b"");
    assert_eq!(after.status, 303, "{after:?}");
}

#[test]
fn the_held_call_of_a_killed_node_is_failed_by_the_survivor() {
    let c = Cluster::new();
    let agent = c.token("bot", "agent", &["agent"]);
    let alice = c.token("alice", "human", &["reviewer"]);
    let mut a = c.node("node-a");
    let b = c.node("node-b");

    let addr = a.addr.clone();
    let agent_a = agent.clone();
    let held = std::thread::spawn(move || {
        let auth = format!("Bearer {agent_a}");
        let body = invoke_body("gated", "write-between", json!({"path": "gated/out", "data": "x"}));
        let mut body = body;
        body["wait-ms"] = json!(0);
        request(
            &addr,
            "POST",
            "/v1/invocations",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    });
    let submitted = held.join().unwrap();
    assert_eq!(submitted.status, 202, "{submitted:?}");
    let id = eventually(30, "node A's held call to ask for approval", || {
        pending_request(&b, &alice, submitted.json()["invocation"].as_str()?)
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // B takes A for dead once its heartbeats stop, and fails the request.
    let failed = eventually(60, "node B to fail the dead node's request", || {
        let r = b.get(&format!("/v1/approvals/{id}"), Some(&alice));
        (r.json()["state"] == "failed").then(|| r.json())
    });
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("node-a"), "{failed}");
    assert!(!c.path("work/gated/out").exists());
}

#[test]
fn the_vault_is_shared_through_the_database_as_ciphertext_and_each_node_needs_the_key() {
    let c = Cluster::new();
    let key = c.path("master.key");
    std::fs::write(&key, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let key_env = ("AIRLOCK_MASTER_KEY_FILE", key.to_str().unwrap());
    let config = c.config.to_str().unwrap();
    let node = |name: &str| c.path(&format!("data-{name}")).to_str().unwrap().to_string();
    let set = |data: &str, value: &[u8]| {
        support::airlock_with(
            &["secret", "set", "api-token", "--config", config, "--data-dir", data],
            value,
            &[key_env],
        )
    };
    let first = set(&node("a"), b"first-value-0f1e2d");
    assert_eq!(first.code, 0, "{first:?}");
    // Node B's data directory holds no vault file, and lists the secret.
    let listed = support::airlock_with(
        &["secret", "list", "--json", "--config", config, "--data-dir", &node("b")],
        b"",
        &[key_env],
    );
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains("api-token"), "{listed:?}");
    assert!(!c.path("data-b/vault.json").exists());
    assert!(!c.path("data-a/vault.json").exists());

    // A node that follows the vault sees a rotation made on another node.
    let settings = c._db.settings();
    let store = airlock::store::open(&settings, &c.path("data-b")).unwrap();
    // Node B's key in its default place (its data directory).
    std::fs::create_dir_all(c.path("data-b")).unwrap();
    std::fs::copy(&key, c.path("data-b/master.key")).unwrap();
    let live = airlock::vault::LiveVault::open_in(&c.path("data-b"), store.shared_vault()).unwrap();
    // (Values never leave the crate; their lengths tell them apart.)
    assert_eq!(live.get("api-token").unwrap().len(), "first-value-0f1e2d".len());
    let rotated = set(&node("c"), b"second-value-9a8b7c-rotated");
    assert_eq!(rotated.code, 0, "{rotated:?}");
    assert_eq!(
        live.get("api-token").unwrap().len(),
        "second-value-9a8b7c-rotated".len()
    );

    // The database holds ciphertext only: no value, no key.
    let dump = c._db.dump();
    for secret in [
        "first-value-0f1e2d",
        "second-value-9a8b7c-rotated",
        "00112233445566778899",
    ] {
        assert!(!dump.contains(secret), "{secret} is in the database");
    }
    assert!(dump.contains("api-token"), "the vault row is in the dump");

    // A node with another key is refused by the key check, naming no value.
    let other = c.path("other.key");
    std::fs::write(
        &other,
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let wrong = support::airlock_with(
        &["secret", "list", "--config", config, "--data-dir", &node("d")],
        b"",
        &[("AIRLOCK_MASTER_KEY_FILE", other.to_str().unwrap())],
    );
    assert_ne!(wrong.code, 0, "{wrong:?}");
    assert!(wrong.stderr.contains("master key does not open the vault"), "{wrong:?}");
    assert!(!wrong.stderr.contains("second-value"), "{wrong:?}");
}

#[test]
fn a_node_stopped_gracefully_hands_back_its_held_work_at_once() {
    let c = Cluster::new();
    let agent = c.token("bot", "agent", &["agent"]);
    let alice = c.token("alice", "human", &["reviewer"]);
    let mut a = c.node("node-a");
    let b = c.node("node-b");

    let mut body = invoke_body("gated", "write-between", json!({"path": "gated/out", "data": "x"}));
    body["wait-ms"] = json!(0);
    let submitted = a.post("/v1/invocations", Some(&agent), &body);
    assert_eq!(submitted.status, 202, "{submitted:?}");
    let invocation = submitted.json()["invocation"].as_str().unwrap().to_string();
    let id = eventually(30, "node A's held call to ask for approval", || {
        pending_request(&b, &alice, &invocation)
    });
    // A run answered with 202 and still going when the stop comes: it
    // finishes first.
    let mut slow = invoke_body("echo", "write-then-spin", json!({"path": "slow", "ms": 1500}));
    slow["wait-ms"] = json!(0);
    let slow = a.post("/v1/invocations", Some(&agent), &slow);
    assert_eq!(slow.status, 202, "{slow:?}");
    let slow = slow.json()["invocation"].as_str().unwrap().to_string();
    eventually(30, "the slow run to start", || {
        c.path("work/slow").exists().then_some(())
    });
    let pid = i32::try_from(a.child.id()).unwrap();
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = a.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Failed by node A itself on its way out: no wait for stale heartbeats.
    let r = b.get(&format!("/v1/approvals/{id}"), Some(&alice));
    assert_eq!(r.json()["state"], "failed", "{r:?}");
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("node-a shut down"), "{reason}");
    // Approving it now changes nothing and nothing is written.
    let late = b.post(&format!("/v1/approvals/{id}/approve"), Some(&alice), &json!({}));
    assert_eq!(late.status, 409, "{late:?}");
    let done = eventually(30, "the invocation to end", || {
        let r = b.get(&format!("/v1/invocations/{invocation}"), Some(&agent));
        let s = r.json()["status"].as_str()?.to_string();
        (s != "running").then_some(s)
    });
    assert_eq!(done, "failed");
    assert!(!c.path("work/gated/out").exists());
    let r = b.get(&format!("/v1/invocations/{slow}"), Some(&agent));
    assert_eq!(
        r.json()["status"],
        "succeeded",
        "the run in flight was cut off by the stop: {r:?}"
    );
}

/// Every record in node `name`'s log (`audit show --json`; with the audit
/// trail in PostgreSQL, every node's), and whether `audit verify` finds
/// it intact.
fn whole_log(c: &Cluster, name: &str) -> (Vec<Value>, support::Run) {
    let data = c.path(&format!("data-{name}"));
    let data = data.to_str().unwrap();
    let config = c.config.to_str().unwrap();
    let show = support::airlock_with(
        &["audit", "show", "--json", "--config", config, "--data-dir", data],
        b"",
        &[],
    );
    assert_eq!(show.code, 0, "{show:?}");
    let records = show
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verify = support::airlock_with(&["audit", "verify", "--config", config, "--data-dir", data], b"", &[]);
    (records, verify)
}

#[test]
fn killing_a_node_under_load_loses_no_acknowledged_invocation_and_the_survivor_ends_its_work() {
    kill_under_load(Cluster::new(), false);
}

#[test]
fn killing_a_node_under_load_with_the_audit_trail_in_postgres() {
    kill_under_load(Cluster::with("[audit]\nbackend = \"postgres\"\n"), true);
}

fn kill_under_load(c: Cluster, pg_audit: bool) {
    let agent = c.token("bot", "agent", &["agent"]);
    let alice = c.token("alice", "human", &["reviewer"]);
    let mut a = c.node("node-a");
    let b = c.node("node-b");

    // Held work on node A: requests waiting for a reviewer.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut body = invoke_body(
            "gated",
            "write-between",
            json!({"path": format!("gated/h{i}"), "data": "x"}),
        );
        body["wait-ms"] = json!(0);
        let r = a.post("/v1/invocations", Some(&agent), &body);
        assert_eq!(r.status, 202, "{r:?}");
        held.push(r.json()["invocation"].as_str().unwrap().to_string());
    }
    let requests: Vec<String> = held
        .iter()
        .map(|inv| eventually(30, "a held request", || pending_request(&b, &alice, inv)))
        .collect();

    // 32 clients, spread over both nodes, until A is killed and a while
    // after; each remembers what was acknowledged, and where.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs = [a.addr.clone(), b.addr.clone()];
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let stop = stop.clone();
            let addrs = addrs.clone();
            let auth = format!("Bearer {agent}");
            std::thread::spawn(move || {
                let mut acked: Vec<(usize, String)> = Vec::new();
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let node = (i + n) % 2;
                    n += 1;
                    let body = invoke_body("echo", "echo", json!({"value": format!("c{i}-{n}")}));
                    let Some(r) = try_request(&addrs[node], &auth, &body) else {
                        continue;
                    };
                    if r.status == 200 && r.json()["status"] == "succeeded" {
                        assert_eq!(r.json()["result"], format!("c{i}-{n}"), "{r:?}");
                        acked.push((node, r.json()["invocation"].as_str().unwrap().to_string()));
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<(usize, String)> = clients.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        acked.iter().any(|(n, _)| *n == 0),
        "node A acknowledged nothing before it died"
    );
    assert!(acked.iter().any(|(n, _)| *n == 1), "node B acknowledged nothing");

    // Every acknowledged invocation is closed in the log of the node that
    // answered, and both logs verify (A's after its kill -9).
    for (node, name) in [(0, "node-a"), (1, "node-b")] {
        let (records, verify) = whole_log(&c, name);
        assert_eq!(verify.code, 0, "{name}: {verify:?}");
        let finished: std::collections::HashSet<&str> = records
            .iter()
            .filter(|r| r["event"]["kind"] == "invocation-finished")
            .filter_map(|r| r["event"]["invocation"].as_str())
            .collect();
        for (_, id) in acked.iter().filter(|(n, _)| *n == node) {
            assert!(
                finished.contains(id.as_str()),
                "{name} acknowledged {id} but its log does not close it"
            );
        }
        if pg_audit {
            // One trail across both nodes: each record names its node.
            let nodes: std::collections::HashSet<&str> = records.iter().filter_map(|r| r["node"].as_str()).collect();
            assert!(nodes.contains("node-a") && nodes.contains("node-b"), "{nodes:?}");
        }
    }

    // The survivor fails A's held requests once A's heartbeats stop, and
    // their invocations end: nothing A held stays open.
    for (id, invocation) in requests.iter().zip(&held) {
        let failed = eventually(60, "node B to fail node A's held request", || {
            let r = b.get(&format!("/v1/approvals/{id}"), Some(&alice));
            (r.json()["state"] == "failed").then(|| r.json())
        });
        assert!(
            failed["reason"].as_str().is_some_and(|r| r.contains("node-a")),
            "{failed}"
        );
        let ended = eventually(60, "the held invocation to end", || {
            let r = b.get(&format!("/v1/invocations/{invocation}"), Some(&agent));
            let s = r.json()["status"].as_str()?.to_string();
            (s != "running" && s != "awaiting-approval").then_some(s)
        });
        assert_eq!(ended, "failed", "{invocation}");
    }
    // Runs node A had in flight when it died end too (by node B, once A's
    // heartbeats stop), each closed by exactly one cut-off record.
    let config = c.config.to_str().unwrap().to_string();
    let ended = eventually(60, "no run of node A left running", || {
        let run = support::airlock_with(&["invocations", "list", "--json", "--config", &config], b"", &[]);
        assert_eq!(run.code, 0, "{run:?}");
        let list: Value = serde_json::from_str(&run.stdout).ok()?;
        let rows = list.as_array()?.clone();
        rows.iter().all(|r| r["state"] != "running").then_some(rows)
    });
    let cut: Vec<&Value> = ended
        .iter()
        .filter(|r| {
            r["outcome"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("stopped sending heartbeats"))
        })
        .collect();
    let (records, _) = whole_log(&c, "node-b");
    for row in &cut {
        let closings = records
            .iter()
            .filter(|r| r["event"]["kind"] == "invocation-cut-off" && r["event"]["invocation"] == row["id"])
            .count();
        assert_eq!(closings, 1, "{row}");
    }
    // B still serves.
    let after = b.post(
        "/v1/invocations",
        Some(&agent),
        &invoke_body("echo", "echo", json!({"value": "after"})),
    );
    assert_eq!(after.json()["status"], "succeeded", "{after:?}");
}

/// One request that may fail to connect or be cut (its node killed).
fn try_request(addr: &str, auth: &str, body: &Value) -> Option<support::http::Response> {
    // Refused at once once the node is gone: no panic to catch.
    std::net::TcpStream::connect(addr).ok()?;
    let addr = addr.to_string();
    let auth = auth.to_string();
    let body = body.to_string();
    std::panic::catch_unwind(move || {
        request(
            &addr,
            "POST",
            "/v1/invocations",
            &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    })
    .ok()
}
