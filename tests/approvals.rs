//! Identities, permissions and approval gates, end to end through the real
//! `airlock` binary: tokens, deny-by-default invoke permissions, the three
//! kinds of gate, quorum, expiry, denial, binding, restarts, races.

mod support;

use airlock::approval::Approvals;
use airlock::gateway::Submitted;
use airlock::identity::Caller;
use airlock::runtime::Runtime;
use airlock::store::{ApprovalRecord, ApprovalState, InvocationStatus, Verdict};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Run, airlock_with, component, toml_path};

/// One test's world: a config with two actions on the `gated` component,
/// a data directory, a work directory, and tokens. With
/// `AIRLOCK_TEST_STORE=postgres`, its store is a fresh PostgreSQL database
/// (`[store]` in the config) instead of SQLite in the data directory.
struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The PostgreSQL database, when the store is there.
    db: Option<support::postgres::TestDatabase>,
}

impl World {
    fn new() -> World {
        World::with("")
    }

    /// `extra` is appended to the config (more actions or sections).
    fn with(extra: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = support::postgres::for_env();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let gated = toml_path(&component("gated"));
        let text = format!(
            r#"
[runtime]
data-dir = "data"

# Host-call gate on writes under gated/, and guest-initiated approvals.
[actions.gated]
component = {gated}
service-identity = "svc-gated"
[actions.gated.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.gated.access]
invoke = ["role:agent", "local"]
approve = ["role:reviewer"]
agent-approvers = ["ops-bot"]
[actions.gated.approval]
wait-secs = 30
[[actions.gated.approval.host-calls]]
capability = "files"
path-prefix = "gated"

# Invocation-level gate with a quorum of two. (One component serves every
# action here, and it imports files and approval, so each holds both.)
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

# No gates; only `bot` may invoke.
[actions.plain]
component = {gated}
[actions.plain.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.plain.access]
invoke = ["bot"]
approve = ["role:reviewer"]
{extra}
{store}"#,
            store = db.as_ref().map(|d| d.store_section()).unwrap_or_default(),
        );
        let config = dir.path().join("airlock.toml");
        std::fs::write(&config, text).unwrap();
        World { dir, config, db }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// Create a token and return the path of a file holding it.
    fn token(&self, identity: &str, kind: &str, roles: &[&str]) -> PathBuf {
        let file = self.path(&format!("{identity}-{}.token", roles.join("-")));
        let run = support::token_create(&self.config, identity, kind, roles, Some(&file));
        assert_eq!(run.code, 0, "{run:?}");
        // The token is shown once, and here it went to the file only.
        assert!(run.stdout.is_empty(), "{run:?}");
        file
    }

    fn run(&self, args: &[&str], token: Option<&Path>) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        let token_arg;
        if let Some(t) = token {
            token_arg = t.to_str().unwrap().to_string();
            all.extend(["--token-file", &token_arg]);
        }
        all.extend(["--config", self.config()]);
        airlock_with(&all, b"", &[])
    }

    fn invoke(&self, action: &str, function: &str, args: Value, token: Option<&Path>, extra: &[&str]) -> Run {
        let args = args.to_string();
        let mut all = vec!["invoke", action, function, "--args", &args];
        all.extend(extra);
        self.run(&all, token)
    }

    /// Start an invocation in the background.
    fn spawn_invoke(&self, action: &str, function: &str, args: Value, token: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args([
                "invoke",
                action,
                function,
                "--args",
                &args.to_string(),
                "--config",
                self.config(),
            ])
            .args(["--token-file", token.to_str().unwrap()])
            .env_remove("AIRLOCK_DATA_DIR")
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A reviewer's token for looking at requests (`approvals list | show`
    /// need one). Made on first use, so a test that looks at no request
    /// has no extra identity.
    fn viewer(&self) -> PathBuf {
        let file = self.path("auditor-reviewer.token");
        if file.exists() {
            return file;
        }
        self.token("auditor", "human", &["reviewer"])
    }

    fn approvals(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["approvals", "list", "--json"];
        if all {
            args.push("--all");
        }
        let run = self.run(&args, Some(&self.viewer()));
        assert_eq!(run.code, 0, "{run:?}");
        run.json().as_array().cloned().unwrap_or_default()
    }

    fn approval(&self, id: &str) -> Value {
        let run = self.run(&["approvals", "show", id, "--json"], Some(&self.viewer()));
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
    }

    /// Wait for exactly one pending request and return it.
    fn pending_one(&self) -> Value {
        self.pending_of(None)
    }

    /// Wait for exactly one pending request (of `kind`, when given).
    fn pending_of(&self, kind: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut list = self.approvals(false);
            list.retain(|a| kind.is_none_or(|k| a["kind"] == k));
            if let [one] = list.as_slice() {
                return one.clone();
            }
            assert!(list.len() <= 1, "more than one pending request: {list:?}");
            assert!(Instant::now() < deadline, "no pending request appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn decide(&self, verb: &str, id: &str, token: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["approvals", verb, id];
        args.extend(extra);
        self.run(&args, Some(token))
    }

    fn audit(&self) -> Vec<Value> {
        let run = self.run(&["audit", "show", "--json"], None);
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn audit_kinds(&self) -> Vec<String> {
        self.audit()
            .iter()
            .map(|r| r["event"]["kind"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// The audit records of one invocation (`audit show --invocation`).
    fn audit_of(&self, invocation: &str) -> Vec<Value> {
        let run = self.run(&["audit", "show", "--invocation", invocation, "--json"], None);
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Every byte the store holds: SQLite's database file and its WAL, or
    /// a dump of every row of the PostgreSQL database.
    fn stored_bytes(&self) -> Vec<u8> {
        match &self.db {
            Some(db) => db.dump().into_bytes(),
            None => {
                let mut bytes = std::fs::read(self.path("data/airlock.db")).unwrap();
                if let Ok(wal) = std::fs::read(self.path("data/airlock.db-wal")) {
                    bytes.extend(wal);
                }
                bytes
            }
        }
    }

    /// Make the database refuse (or again accept) every change to an
    /// approval request, as a failing disk would: a trigger, in whichever
    /// database the store is.
    fn refuse_approval_updates(&self, refuse: bool) {
        match (&self.db, refuse) {
            (Some(db), true) => {
                db.psql(
                    "CREATE FUNCTION refuse_updates() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the disk is failing'; END $$;
                     CREATE TRIGGER refuse_updates BEFORE UPDATE ON approvals FOR EACH ROW EXECUTE FUNCTION refuse_updates();",
                );
            }
            (Some(db), false) => {
                db.psql("DROP TRIGGER refuse_updates ON approvals; DROP FUNCTION refuse_updates();");
            }
            (None, refuse) => {
                let db = rusqlite::Connection::open(self.path("data/airlock.db")).unwrap();
                db.execute_batch(if refuse {
                    "CREATE TRIGGER refuse_updates BEFORE UPDATE ON approvals BEGIN SELECT RAISE(ABORT, 'the disk is failing'); END;"
                } else {
                    "DROP TRIGGER refuse_updates;"
                })
                .unwrap();
            }
        }
    }

    /// A runtime in this process over the same config and data directory,
    /// with every action loaded and approvals open.
    fn in_process(&self) -> Runtime {
        let policy = airlock::policy::Policy::load(&self.config).unwrap();
        let mut runtime = Runtime::new(&policy.runtime).unwrap();
        runtime.approvals().unwrap();
        for (name, loaded) in runtime.load_all(&policy) {
            if let Err(e) = loaded {
                panic!("action {name} does not load: {e}");
            }
        }
        runtime
    }
}

/// Who the token in `file` authenticates as.
fn caller_of(runtime: &Runtime, file: &Path) -> Caller {
    let bearer = std::fs::read_to_string(file).unwrap();
    airlock::identity::authenticate(runtime.store().unwrap().as_ref(), bearer.trim()).unwrap()
}

fn async_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Ask for `function` of invocation-gated `action` in this process; returns
/// (approval, invocation) of the pending request.
fn submit_pending(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    caller: &Caller,
    action: &str,
    value: &str,
) -> (ApprovalRecord, String) {
    let submitted = rt
        .block_on(runtime.submit(
            caller,
            action,
            "echo",
            &json!({ "value": value }),
            &Default::default(),
            Duration::ZERO,
        ))
        .unwrap();
    match submitted {
        Submitted::Pending { invocation, approval } => (approval, invocation),
        other => panic!("not held for approval: {other:?}"),
    }
}

/// The events of `kind` among `records`.
fn events_of<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["event"]["kind"] == kind)
        .map(|r| &r["event"])
        .collect()
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A pending invocation-level request for `deploy`, made by `agent`.
fn pending_deploy(w: &World, agent: &Path, value: &str) -> (String, String) {
    let run = w.invoke("deploy", "echo", json!({ "value": value }), Some(agent), &[]);
    assert_eq!(run.code, 7, "{run:?}");
    let pending = run.json();
    assert_eq!(pending["status"], "pending-approval");
    (
        pending["approval"].as_str().unwrap().to_string(),
        pending["invocation"].as_str().unwrap().to_string(),
    )
}

#[test]
fn tokens_authenticate_and_a_revoked_token_stops_at_once() {
    let w = World::new();
    let bot = w.token("bot", "agent", &[]);
    let ok = w.invoke("plain", "echo", json!({"value": "hi"}), Some(&bot), &[]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(ok.json(), json!("hi"));

    let token = std::fs::read_to_string(&bot).unwrap();
    let list = w.run(&["token", "list", "--json"], None);
    let id = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["identity"] == "bot")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!list.stdout.contains(token.trim()));
    // The database holds no token value, only hashes (and the token's id,
    // which shows that what was read is where tokens are kept).
    let stored = w.stored_bytes();
    assert!(stored.windows(id.len()).any(|win| win == id.as_bytes()));
    assert!(!stored.windows(20).any(|win| win == &token.as_bytes()[..20]));
    let revoke = w.run(&["token", "revoke", &id], None);
    assert_eq!(revoke.code, 0, "{revoke:?}");
    let after = w.invoke("plain", "echo", json!({"value": "hi"}), Some(&bot), &[]);
    assert_eq!(after.code, 3, "{after:?}");
    assert!(after.error_line().contains("revoked"), "{after:?}");

    // Garbage and unknown tokens, never echoed.
    let junk = w.path("junk.token");
    std::fs::write(
        &junk,
        "alk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let unknown = w.invoke("plain", "echo", json!({"value": "hi"}), Some(&junk), &[]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
    assert!(unknown.error_line().contains("unknown token"), "{unknown:?}");
    assert!(!unknown.stderr.contains("AAAAAAAA"), "{unknown:?}");
    std::fs::write(&junk, "hunter2-password\n").unwrap();
    let bad = w.invoke("plain", "echo", json!({"value": "hi"}), Some(&junk), &[]);
    assert_eq!(bad.code, 3, "{bad:?}");
    assert!(!bad.stderr.contains("hunter2"), "{bad:?}");
}

#[test]
fn an_identity_without_invoke_permission_is_refused_before_anything_runs() {
    let w = World::new();
    let stranger = w.token("stranger", "agent", &["agent"]);
    let run = w.invoke("plain", "echo", json!({"value": "hi"}), Some(&stranger), &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.error_line()
            .contains("agent `stranger` may not invoke action `plain`"),
        "{run:?}"
    );
    // Deny by default: the local operator is not on plain's list either.
    let local = w.invoke("plain", "echo", json!({"value": "hi"}), None, &[]);
    assert_eq!(local.code, 3, "{local:?}");
    // Refused and recorded, never started.
    let kinds = w.audit_kinds();
    assert_eq!(kinds, ["invocation-refused", "invocation-refused"], "{kinds:?}");
    let records = w.audit();
    assert_eq!(records[0]["event"]["caller"], "stranger");
    assert_eq!(records[0]["event"]["service-identity"], "action:plain");
    // A gated action is refused the same way: no request is opened for an
    // identity that may not invoke it, and no file is touched.
    let nobody = w.token("nobody", "agent", &[]);
    let run = w.invoke(
        "gated",
        "write-between",
        json!({"path": "gated/x", "data": "y"}),
        Some(&nobody),
        &[],
    );
    assert_eq!(run.code, 3, "{run:?}");
    let refused = w.audit();
    let last = &refused[refused.len() - 1]["event"];
    assert_eq!(last["kind"], "invocation-refused");
    assert_eq!(last["caller"], "nobody");
    assert_eq!(last["service-identity"], "svc-gated");
    assert!(w.approvals(true).is_empty());
    assert!(!w.path("work/before.txt").exists());
}

#[test]
fn an_invocation_gate_needs_a_quorum_of_distinct_approvers_and_runs_after_a_restart() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);

    // The invoking process ends with the request pending: nothing ran.
    let (id, invocation) = pending_deploy(&w, &agent, "v1");
    assert!(!w.audit_kinds().contains(&"invocation-started".to_string()));
    let shown = w.approval(&id);
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["caller"], "deploy-bot");
    assert_eq!(shown["action"], "deploy");
    assert_eq!(shown["function"], "echo");
    assert_eq!(shown["args"], json!({"value": "v1"}));
    assert!(shown["component-digest"].as_str().unwrap().starts_with("blake3:"));
    let text = w.run(&["approvals", "show", &id], Some(&w.viewer()));
    for part in [
        "deploy-bot",
        "deploy",
        "echo",
        "\"v1\"",
        "blake3:",
        "approval.invocation",
        "binding",
    ] {
        assert!(text.stdout.contains(part), "show lacks {part}: {text:?}");
    }

    // One approval of two: still pending; the same identity again counts once.
    let first = w.decide("approve", &id, &alice, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(w.approval(&id)["state"], "pending");
    let again = w.decide("approve", &id, &alice, &[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(again.error_line().contains("already decided"), "{again:?}");
    // Another token of the same identity is still the same approver.
    let alice_again = w.token("alice", "human", &["reviewer", "laptop"]);
    let twin = w.decide("approve", &id, &alice_again, &[]);
    assert_eq!(twin.code, 3, "{twin:?}");
    assert!(
        twin.error_line().contains("alice has already decided request"),
        "{twin:?}"
    );
    assert_eq!(w.approval(&id)["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(w.approval(&id)["state"], "pending");
    let status = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(status.code, 7, "{status:?}");

    // The second distinct approver completes the quorum; the invocation
    // runs in that process, under its original caller.
    let second = w.decide("approve", &id, &bob, &[]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(w.approval(&id)["state"], "approved");
    let done = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(done.json(), json!("v1"));

    // The audit trail has the request, both decisions, the resolution, and
    // the run attributed to the caller with the approval that released it.
    let records = w.audit();
    let kinds: Vec<&str> = records.iter().map(|r| r["event"]["kind"].as_str().unwrap()).collect();
    for k in [
        "approval-requested",
        "approval-decision",
        "approval-resolved",
        "invocation-started",
        "invocation-finished",
    ] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let started = records
        .iter()
        .find(|r| r["event"]["kind"] == "invocation-started")
        .unwrap();
    assert_eq!(started["event"]["caller"], "deploy-bot");
    assert_eq!(started["event"]["approval"], id.as_str());
    assert_eq!(started["event"]["invocation"], invocation.as_str());
    assert_eq!(started["event"]["service-identity"], "action:deploy");
    let verify = w.run(&["audit", "verify"], None);
    assert_eq!(verify.code, 0, "{verify:?}");

    // Redeeming the used approval does not run it again.
    let redeem = w.invoke(
        "deploy",
        "echo",
        json!({"value": "v1"}),
        Some(&agent),
        &["--approval", &id],
    );
    assert_eq!(redeem.code, 0, "{redeem:?}");
    let started = w.audit_kinds().iter().filter(|k| *k == "invocation-started").count();
    assert_eq!(started, 1);
}

#[test]
fn nobody_approves_their_own_request_and_agents_need_an_explicit_grant() {
    let w = World::new();
    // deploy-bot holds the reviewer role too; it still cannot approve its
    // own request, and as an agent it cannot approve at all.
    let agent = w.token("deploy-bot", "agent", &["agent", "reviewer"]);
    let (id, _) = pending_deploy(&w, &agent, "v1");
    let own = w.decide("approve", &id, &agent, &[]);
    assert_eq!(own.code, 3, "{own:?}");
    assert!(
        own.error_line()
            .contains("deploy-bot made this request and cannot approve it"),
        "{own:?}"
    );

    let other_agent = w.token("helper-bot", "agent", &["reviewer"]);
    let refused = w.decide("approve", &id, &other_agent, &[]);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(
        refused
            .error_line()
            .contains("agent helper-bot may not approve action `deploy`"),
        "{refused:?}"
    );
    // A human reviewer requesting cannot approve their own request either.
    let carol = w.token("carol", "human", &["reviewer", "agent"]);
    let (own_id, _) = pending_deploy(&w, &carol, "v2");
    let selfie = w.decide("approve", &own_id, &carol, &[]);
    assert_eq!(selfie.code, 3, "{selfie:?}");
    assert!(
        selfie
            .error_line()
            .contains("carol made this request and cannot approve it"),
        "{selfie:?}"
    );
    assert_eq!(w.approval(&own_id)["decisions"], json!([]));
    // Without a token nobody approves.
    let anonymous = w.run(&["approvals", "approve", &id], None);
    assert_eq!(anonymous.code, 3, "{anonymous:?}");
    assert!(
        anonymous.error_line().contains("approving needs a reviewer token"),
        "{anonymous:?}"
    );
    assert_eq!(w.approval(&id)["decisions"], json!([]));

    // `gated` names ops-bot in agent-approvers: that agent may approve.
    let requester = w.token("runner", "agent", &["agent"]);
    let ops = w.token("ops-bot", "agent", &[]);
    let child = w.spawn_invoke(
        "gated",
        "ask",
        json!({"summary": "rotate keys", "detail": "all of them"}),
        &requester,
    );
    let pending = w.pending_of(Some("guest"));
    assert_eq!(pending["kind"], "guest");
    assert_eq!(pending["subject"]["summary"], "rotate keys");
    let ok = w.decide("approve", pending["id"].as_str().unwrap(), &ops, &[]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), json!("approved"));
    assert_eq!(
        std::fs::read_to_string(w.path("work/approved.txt")).unwrap(),
        "rotate keys"
    );
}

#[test]
fn a_deny_ends_the_request_and_nothing_runs() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);
    let (id, invocation) = pending_deploy(&w, &agent, "v1");
    let approve = w.decide("approve", &id, &alice, &[]);
    assert_eq!(approve.code, 0, "{approve:?}");
    let no_reason = w.run(&["approvals", "deny", &id, "--token-file", bob.to_str().unwrap()], None);
    assert_eq!(no_reason.code, 2, "a deny needs a reason: {no_reason:?}");
    let deny = w.decide("deny", &id, &bob, &["--reason", "not during the freeze"]);
    assert_eq!(deny.code, 0, "{deny:?}");
    let record = w.approval(&id);
    assert_eq!(record["state"], "denied");
    assert!(record["reason"].as_str().unwrap().contains("not during the freeze"));
    let late = w.decide("approve", &id, &bob, &[]);
    assert_eq!(late.code, 3, "{late:?}");
    assert!(late.error_line().contains("already denied"), "{late:?}");
    let status = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(status.code, 3, "{status:?}");
    assert!(!w.audit_kinds().contains(&"invocation-started".to_string()));
}

/// A world with action `quick`: every invocation waits for a reviewer, and
/// its request lives `ttl` seconds.
fn quick_world(ttl: u32) -> World {
    World::with(
        &r#"
[actions.quick]
component = "COMPONENT"
[actions.quick.grants]
approval = true
files = { dir = "work", mode = "read-write" }
[actions.quick.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.quick.approval]
invocation = true
ttl-secs = TTL
"#
        .replace("COMPONENT", component("gated").to_str().unwrap())
        .replace("TTL", &ttl.to_string()),
    )
}

#[test]
fn requests_expire() {
    let w = quick_world(1);
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let run = w.invoke("quick", "echo", json!({"value": "x"}), Some(&agent), &[]);
    assert_eq!(run.code, 7, "{run:?}");
    let id = run.json()["approval"].as_str().unwrap().to_string();
    let invocation = run.json()["invocation"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let late = w.decide("approve", &id, &alice, &[]);
    assert_eq!(late.code, 3, "{late:?}");
    assert!(late.error_line().contains("expired"), "{late:?}");
    assert_eq!(w.approval(&id)["state"], "expired");
    let status = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(status.code, 3, "{status:?}");
    assert!(
        w.audit()
            .iter()
            .any(|r| r["event"]["kind"] == "approval-resolved" && r["event"]["state"] == "expired")
    );
    // The invocation's end is on record once, under its own id.
    let records = w.audit_of(&invocation);
    let ended = events_of(&records, "invocation-refused");
    assert_eq!(ended.len(), 1, "{records:?}");
    assert_eq!(ended[0]["state"], "expired");
    assert_eq!(ended[0]["approval"], id.as_str());
    assert_eq!(ended[0]["service-identity"], "action:quick");
    assert!(events_of(&records, "invocation-started").is_empty());
}

#[test]
fn a_decision_cannot_be_replayed_for_other_arguments() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);
    let (id, _) = pending_deploy(&w, &agent, "small change");
    let binding = w.approval(&id)["binding"].as_str().unwrap().to_string();

    // A reviewer can pin the digest they reviewed; a wrong one decides nothing.
    let wrong = w.decide("approve", &id, &alice, &["--binding", "blake3:0000"]);
    assert_eq!(wrong.code, 3, "{wrong:?}");
    assert_eq!(w.approval(&id)["decisions"], json!([]));
    assert_eq!(w.decide("approve", &id, &alice, &["--binding", &binding]).code, 0);

    // Before the quorum, the approval cannot be used for other arguments,
    // and after it neither; the approved request runs with its own.
    for value in ["drop the database", "small change "] {
        let replay = w.invoke(
            "deploy",
            "echo",
            json!({ "value": value }),
            Some(&agent),
            &["--approval", &id],
        );
        assert_eq!(replay.code, 3, "{replay:?}");
        assert!(
            replay.error_line().contains("does not cover this request"),
            "{replay:?}"
        );
    }
    // A reviewer working from another config (here: the same one with a
    // comment added) cannot decide it: approvers are those of the config
    // the request was made under.
    let other_config = w.path("other.toml");
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text.push_str("\n# edited\n");
    std::fs::write(&other_config, text).unwrap();
    let elsewhere = airlock_with(
        &[
            "approvals",
            "approve",
            &id,
            "--config",
            other_config.to_str().unwrap(),
            "--token-file",
            bob.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(elsewhere.code, 3, "{elsewhere:?}");
    assert!(elsewhere.error_line().contains("made under config"), "{elsewhere:?}");
    // Another caller cannot redeem it either.
    let other = w.token("other-bot", "agent", &["agent"]);
    let theirs = w.invoke(
        "deploy",
        "echo",
        json!({"value": "small change"}),
        Some(&other),
        &["--approval", &id],
    );
    assert_eq!(theirs.code, 3, "{theirs:?}");
    assert_eq!(w.decide("approve", &id, &bob, &[]).code, 0);
    let replay = w.invoke(
        "deploy",
        "echo",
        json!({"value": "drop the database"}),
        Some(&agent),
        &["--approval", &id],
    );
    assert_eq!(replay.code, 3, "{replay:?}");
    let runs: Vec<Value> = w
        .audit()
        .into_iter()
        .filter(|r| r["event"]["kind"] == "invocation-started")
        .collect();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["event"]["args"], json!({"value": "small change"}));
}

#[test]
fn a_host_call_gate_suspends_the_guest_and_resumes_it_on_approval() {
    let w = World::new();
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let child = w.spawn_invoke(
        "gated",
        "write-between",
        json!({"path": "gated/plan.txt", "data": "go"}),
        &agent,
    );
    let pending = w.pending_one();
    // Suspended mid-run: the write before the gate happened, the gated one
    // and everything after it did not.
    assert!(w.path("work/before.txt").exists());
    assert!(!w.path("work/gated/plan.txt").exists());
    assert!(!w.path("work/after.txt").exists());
    assert_eq!(pending["kind"], "host-call");
    assert_eq!(pending["subject"]["interface"], "airlock:cap/files");
    assert_eq!(pending["subject"]["function"], "write");
    assert!(
        pending["subject"]["args"]["path"]
            .as_str()
            .unwrap()
            .contains("gated/plan.txt")
    );
    assert!(pending["rule"].as_str().unwrap().contains("approval.host-calls[0]"));
    let ok = w.decide("approve", pending["id"].as_str().unwrap(), &alice, &[]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), json!("written"));
    assert_eq!(std::fs::read_to_string(w.path("work/gated/plan.txt")).unwrap(), "go");
    assert!(w.path("work/after.txt").exists());
    let call = w
        .audit()
        .into_iter()
        .find(|r| r["event"]["kind"] == "host-call" && r["event"]["args"].to_string().contains("gated/plan.txt"))
        .unwrap();
    assert!(
        call["event"]["rule"].as_str().unwrap().contains("released by approval"),
        "{call}"
    );
    // Writes outside the gated prefix never wait.
    let free = w.invoke(
        "gated",
        "write-between",
        json!({"path": "free.txt", "data": "x"}),
        Some(&agent),
        &[],
    );
    assert_eq!(free.code, 0, "{free:?}");
}

#[test]
fn a_held_call_fails_cleanly_on_deny_and_on_timeout() {
    let w = World::with(
        r#"
[actions.impatient]
component = "COMPONENT"
[actions.impatient.grants]
approval = true
files = { dir = "work", mode = "read-write" }
[actions.impatient.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.impatient.approval]
wait-secs = 1
[[actions.impatient.approval.host-calls]]
capability = "files"
path-prefix = "gated"
"#
        .replace("COMPONENT", component("gated").to_str().unwrap())
        .as_str(),
    );
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);

    let child = w.spawn_invoke(
        "gated",
        "write-between",
        json!({"path": "gated/a", "data": "x"}),
        &agent,
    );
    let pending = w.pending_one();
    let deny = w.decide(
        "deny",
        pending["id"].as_str().unwrap(),
        &alice,
        &["--reason", "wrong file"],
    );
    assert_eq!(deny.code, 0, "{deny:?}");
    let run = finish(child);
    // The guest got an error from the gated call, carried on, and returned it.
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("wrong file"), "{run:?}");
    assert!(!w.path("work/gated/a").exists());
    assert!(w.path("work/after.txt").exists());

    let started = Instant::now();
    let timeout = w.invoke(
        "impatient",
        "write-between",
        json!({"path": "gated/b", "data": "x"}),
        Some(&agent),
        &[],
    );
    assert_eq!(timeout.code, 1, "{timeout:?}");
    assert!(timeout.stderr.contains("no decision within 1 s"), "{timeout:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!w.path("work/gated/b").exists());
    let expired = w
        .approvals(true)
        .into_iter()
        .filter(|a| a["state"] == "expired")
        .count();
    assert_eq!(expired, 1);
}

#[test]
fn a_request_whose_instance_died_is_marked_failed() {
    let w = World::new();
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let mut child = w.spawn_invoke(
        "gated",
        "write-between",
        json!({"path": "gated/a", "data": "x"}),
        &agent,
    );
    let pending = w.pending_one();
    child.kill().unwrap();
    child.wait().unwrap();
    let id = pending["id"].as_str().unwrap();
    // The next runtime to look finds the waiter gone and fails the request:
    // on SQLite (one machine) at once, by its pid; on PostgreSQL, shared by
    // machines where a pid tells nothing, once the waiter's heartbeats
    // have been silent for `PROCESS_STALE` (SIGKILL: it could not say it
    // was leaving).
    let record = match &w.db {
        None => w.approval(id),
        Some(_) => {
            let deadline = Instant::now() + airlock::store::PROCESS_STALE + Duration::from_secs(20);
            loop {
                let record = w.approval(id);
                if record["state"] != "pending" || Instant::now() > deadline {
                    break record;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    assert_eq!(record["state"], "failed", "{record}");
    let gone = if w.db.is_some() {
        "stopped sending heartbeats"
    } else {
        "is gone"
    };
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.contains("ended before a decision") && reason.contains(gone),
        "{record}"
    );
    let late = w.decide("approve", id, &alice, &[]);
    assert_eq!(late.code, 3, "{late:?}");
    assert!(!w.path("work/gated/a").exists());
}

#[test]
fn simultaneous_decisions_are_each_counted_once() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);
    let (id, invocation) = pending_deploy(&w, &agent, "v1");
    // Two approvers at the same moment: both count, the quorum of two is
    // met, and the invocation runs exactly once.
    let spawn = |id: &str, token: &Path| {
        Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args([
                "approvals",
                "approve",
                id,
                "--config",
                w.config(),
                "--token-file",
                token.to_str().unwrap(),
            ])
            .env_remove("AIRLOCK_DATA_DIR")
            .env_remove("AIRLOCK_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&id, &alice), spawn(&id, &bob));
    let (a, b) = (finish(a), finish(b));
    assert_eq!((a.code, b.code), (0, 0), "{a:?} {b:?}");
    let record = w.approval(&id);
    assert_eq!(record["state"], "approved");
    assert_eq!(record["decisions"].as_array().unwrap().len(), 2);
    let done = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(done.code, 0, "{done:?}");
    let started = w.audit_kinds().iter().filter(|k| *k == "invocation-started").count();
    assert_eq!(started, 1);

    // One approver twice at the same moment counts once.
    let (id, _) = pending_deploy(&w, &agent, "v2");
    let (a, b) = (spawn(&id, &alice), spawn(&id, &alice));
    let (a, b) = (finish(a), finish(b));
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [0, 3], "{a:?} {b:?}");
    let record = w.approval(&id);
    assert_eq!(record["state"], "pending");
    assert_eq!(record["decisions"].as_array().unwrap().len(), 1);
}

#[test]
fn wasi_filesystem_writes_and_symlinks_meet_the_same_gate() {
    let w = World::new();
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    std::fs::create_dir(w.path("work/gated")).unwrap();

    // Rust std (wasi:filesystem) is held like airlock:cap/files.
    let child = w.spawn_invoke(
        "gated",
        "wasi-write",
        json!({"path": "gated/std.txt", "data": "s"}),
        &agent,
    );
    let pending = w.pending_one();
    assert_eq!(pending["subject"]["interface"], "wasi:filesystem/types");
    assert_eq!(pending["subject"]["function"], "[method]descriptor.open-at");
    assert!(!w.path("work/gated/std.txt").exists());
    let deny = w.decide("deny", pending["id"].as_str().unwrap(), &alice, &["--reason", "no"]);
    assert_eq!(deny.code, 0, "{deny:?}");
    let run = finish(child);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!w.path("work/gated/std.txt").exists());

    // A symlink to the gated directory, a dangling link into it, or `..`
    // detours, are all seen through.
    std::os::unix::fs::symlink("gated", w.path("work/link")).unwrap();
    std::fs::create_dir(w.path("work/free")).unwrap();
    std::os::unix::fs::symlink("../gated/dangling.txt", w.path("work/free/dangling")).unwrap();
    for path in [
        "free/dangling",
        "link/through-link.txt",
        "free/../gated/dotdot.txt",
        "./gated//slashes.txt",
    ] {
        let child = w.spawn_invoke("gated", "write", json!({"path": path, "data": "x"}), &agent);
        let pending = w.pending_one();
        let deny = w.decide("deny", pending["id"].as_str().unwrap(), &alice, &["--reason", "no"]);
        assert_eq!(deny.code, 0, "{deny:?}");
        let run = finish(child);
        assert_eq!(run.code, 1, "{path}: {run:?}");
    }
    let written: Vec<_> = std::fs::read_dir(w.path("work/gated")).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");
}

#[test]
fn time_waiting_for_approval_does_not_count_towards_the_timeout() {
    let w = World::with(
        r#"
[actions.brief]
component = "COMPONENT"
[actions.brief.grants]
approval = true
files = { dir = "work", mode = "read-write" }
[actions.brief.limits]
timeout-ms = 1500
[actions.brief.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[[actions.brief.approval.host-calls]]
capability = "files"
path-prefix = "gated"
"#
        .replace("COMPONENT", component("gated").to_str().unwrap())
        .as_str(),
    );
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    // Held for longer than the whole timeout, then 400 ms of work: fine.
    let child = w.spawn_invoke(
        "brief",
        "write-then-spin",
        json!({"path": "gated/a", "ms": 400}),
        &agent,
    );
    let pending = w.pending_one();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        w.decide("approve", pending["id"].as_str().unwrap(), &alice, &[]).code,
        0
    );
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    // The action's own running time still counts.
    let child = w.spawn_invoke(
        "brief",
        "write-then-spin",
        json!({"path": "gated/b", "ms": 5000}),
        &agent,
    );
    let pending = w.pending_one();
    assert_eq!(
        w.decide("approve", pending["id"].as_str().unwrap(), &alice, &[]).code,
        0
    );
    let run = finish(child);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
}

/// The `exfil` component against a loopback server, with DELETEs and
/// `/echo/admin` held for approval.
fn http_world(server: &support::echo_server::EchoServer) -> World {
    let port = server.port;
    World::with(
        &r#"
[actions.web]
component = "COMPONENT"
[actions.web.grants]
log = true
files = { dir = "work", mode = "read-write" }
[actions.web.grants.http]
timeout-ms = 5000
[[actions.web.grants.http.allow]]
destination = "http://127.0.0.1:PORT"
allow-private = true
[actions.web.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[[actions.web.approval.host-calls]]
capability = "http"
methods = ["DELETE"]
[[actions.web.approval.host-calls]]
capability = "http"
destination = "http://127.0.0.1:PORT"
path-prefix = "/echo/admin"
"#
        .replace("COMPONENT", component("exfil").to_str().unwrap())
        .replace("PORT", &port.to_string()),
    )
}

fn outgoing(method: &str, url: &str) -> Value {
    json!({"req": {"method": method, "url": url, "credential": null, "headers": [], "body": "", "follow-redirects": true}})
}

#[test]
fn http_gates_hold_requests_until_approved_and_redirects_cannot_dodge_them() {
    let server = support::echo_server::EchoServer::start("unused");
    let w = http_world(&server);
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);

    // airlock:cap/http: the DELETE leaves only after approval.
    let child = w.spawn_invoke(
        "web",
        "cap-send",
        outgoing("DELETE", &server.url("/echo/item/7")),
        &agent,
    );
    let pending = w.pending_one();
    assert_eq!(pending["subject"]["interface"], "airlock:cap/http");
    assert_eq!(pending["subject"]["args"]["method"], "DELETE");
    assert!(server.requests().is_empty(), "sent before approval");
    assert_eq!(
        w.decide("approve", pending["id"].as_str().unwrap(), &alice, &[]).code,
        0
    );
    let run = finish(child);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["status"], 200);
    assert_eq!(server.requests().len(), 1);

    // Method case does not matter.
    let child = w.spawn_invoke(
        "web",
        "cap-send",
        outgoing("delete", &server.url("/echo/item/9")),
        &agent,
    );
    let pending = w.pending_one();
    let deny = w.decide("deny", pending["id"].as_str().unwrap(), &alice, &["--reason", "no"]);
    assert_eq!(deny.code, 0, "{deny:?}");
    assert_ne!(finish(child).code, 0);
    assert_eq!(server.requests().len(), 1);

    // A GET is not held.
    let get = w.invoke(
        "web",
        "cap-send",
        outgoing("GET", &server.url("/echo/x")),
        Some(&agent),
        &[],
    );
    assert_eq!(get.code, 0, "{get:?}");
    assert_eq!(server.requests().len(), 2);

    // wasi:http: same rule; a deny means nothing is sent.
    let args = json!({"method": "DELETE", "url": server.url("/echo/item/8"), "headers": [], "body": ""});
    let child = w.spawn_invoke("web", "wasi-send", args, &agent);
    let pending = w.pending_one();
    assert_eq!(pending["subject"]["interface"], "wasi:http/outgoing-handler");
    let deny = w.decide(
        "deny",
        pending["id"].as_str().unwrap(),
        &alice,
        &["--reason", "keep item 8"],
    );
    assert_eq!(deny.code, 0, "{deny:?}");
    let run = finish(child);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(server.requests().len(), 2);

    // An ungated request redirected to a gated path is not followed.
    let to = server.url("/echo/admin/drop");
    let redirect = format!(
        "{}?to={}",
        server.url("/redirect"),
        to.replace(':', "%3A").replace('/', "%2F")
    );
    let run = w.invoke("web", "cap-send", outgoing("GET", &redirect), Some(&agent), &[]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("needs approval"), "{run:?}");
    assert!(
        !server.requests().iter().any(|r| r.target.starts_with("/echo/admin")),
        "the gated target was reached"
    );
}

#[test]
fn approvals_list_and_show_need_a_token_and_show_only_what_it_may_see() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let other = w.token("other-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let (id, _) = pending_deploy(&w, &agent, "v1");

    // No token, no view.
    for args in [
        vec!["approvals", "list", "--json"],
        vec!["approvals", "show", id.as_str(), "--json"],
    ] {
        let anonymous = w.run(&args, None);
        assert_eq!(anonymous.code, 3, "{anonymous:?}");
        assert!(
            anonymous.error_line().contains("needs a reviewer token"),
            "{anonymous:?}"
        );
        assert!(!anonymous.stdout.contains(&id), "{anonymous:?}");
    }

    // An approver of the action and the requester see it; anyone else
    // sees nothing, and cannot tell it exists.
    let listed = |token: &Path| -> Vec<String> {
        let run = w.run(&["approvals", "list", "--all", "--json"], Some(token));
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&alice), vec![id.to_string()]);
    assert_eq!(listed(&agent), vec![id.to_string()]);
    assert!(listed(&other).is_empty());
    for token in [&alice, &agent] {
        let shown = w.run(&["approvals", "show", &id, "--json"], Some(token));
        assert_eq!(shown.code, 0, "{shown:?}");
        assert_eq!(shown.json()["id"], id.as_str());
    }
    let hidden = w.run(&["approvals", "show", &id, "--json"], Some(&other));
    assert_ne!(hidden.code, 0, "{hidden:?}");
    assert!(hidden.error_line().contains("that other-bot may see"), "{hidden:?}");
    assert!(!hidden.stdout.contains("v1"), "{hidden:?}");
    let unknown = w.run(&["approvals", "show", "000000000000", "--json"], Some(&other));
    assert_eq!(unknown.code, hidden.code, "{unknown:?}");
}

#[test]
fn every_end_of_a_waiting_invocation_is_audited() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);

    // Denied.
    let (denied, denied_invocation) = pending_deploy(&w, &agent, "v1");
    let deny = w.decide("deny", &denied, &alice, &["--reason", "not today"]);
    assert_eq!(deny.code, 0, "{deny:?}");

    // Approved, but the requester's token was revoked meanwhile: refused
    // at the start, and that ending is recorded too.
    let (revoked, revoked_invocation) = pending_deploy(&w, &agent, "v2");
    let tokens = w.run(&["token", "list", "--json"], None);
    let token_id = tokens
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["identity"] == "deploy-bot")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(w.run(&["token", "revoke", &token_id], None).code, 0);
    assert_eq!(w.decide("approve", &revoked, &alice, &[]).code, 0);
    let last = w.decide("approve", &revoked, &bob, &[]);
    assert_eq!(last.code, 3, "{last:?}");
    assert!(last.error_line().contains("was revoked"), "{last:?}");

    for (invocation, approval, state, why) in [
        (&denied_invocation, &denied, "denied", "denied by alice: not today"),
        (&revoked_invocation, &revoked, "failed", "was revoked"),
    ] {
        let records = w.audit_of(invocation);
        let ended = events_of(&records, "invocation-refused");
        assert_eq!(ended.len(), 1, "{records:?}");
        let e = ended[0];
        assert_eq!(e["state"], state, "{e}");
        assert_eq!(e["approval"], approval.as_str(), "{e}");
        assert_eq!(e["caller"], "deploy-bot", "{e}");
        assert_eq!(e["service-identity"], "action:deploy", "{e}");
        assert_eq!(e["exit-code"], 3, "{e}");
        assert!(e["error"].as_str().unwrap().contains(why), "{e}");
        assert!(events_of(&records, "invocation-started").is_empty(), "{records:?}");
        let shown = w.run(&["invocations", "show", invocation], None);
        assert_eq!(shown.code, 3, "{shown:?}");
    }
    let verify = w.run(&["audit", "verify"], None);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn an_approved_invocation_not_started_in_time_expires_on_record() {
    let w = quick_world(2);
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let rt = async_runtime();
    let runtime = w.in_process();
    let bot = caller_of(&runtime, &agent);
    let reviewer = caller_of(&runtime, &alice);

    let (approval, invocation) = submit_pending(&rt, &runtime, &bot, "quick", "x");
    // Approved without running it, as when the approver's process dies
    // before it starts the invocation.
    let approved = rt
        .block_on(runtime.record_decision(&approval.id, &reviewer, Verdict::Approve, None, None))
        .unwrap();
    assert_eq!(approved.state, ApprovalState::Approved);
    std::thread::sleep(Duration::from_millis(2300));
    rt.block_on(runtime.sweep_approvals()).unwrap();

    // Stored as expired, not left approved...
    let store = runtime.store().unwrap();
    let stored = store.approval(&approval.id).unwrap().unwrap();
    assert_eq!(stored.state, ApprovalState::Expired);
    assert!(
        stored.reason.as_deref().unwrap().contains("did not start"),
        "{stored:?}"
    );
    let ended = store.invocation(&invocation).unwrap().unwrap();
    assert_eq!(ended.state, InvocationStatus::Expired);
    // ...and on record, both the request and the invocation, once.
    let records = w.audit_of(&invocation);
    let resolved = events_of(&records, "approval-resolved");
    let states: Vec<&str> = resolved.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["approved", "expired"], "{records:?}");
    let refused = events_of(&records, "invocation-refused");
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_eq!(refused[0]["state"], "expired");
    assert_eq!(refused[0]["approval"], approval.id.as_str());
    assert!(events_of(&records, "invocation-started").is_empty());

    // Nothing runs it later, and sweeping again adds nothing.
    assert!(rt.block_on(runtime.run_approved(&invocation)).is_err());
    rt.block_on(runtime.sweep_approvals()).unwrap();
    assert_eq!(w.audit_of(&invocation).len(), records.len());
}

#[test]
fn a_decision_that_was_not_stored_is_not_in_the_audit_log() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let (id, invocation) = pending_deploy(&w, &agent, "v1");
    let decisions = || events_of(&w.audit_of(&invocation), "approval-decision").len();

    // The database refuses to store the decision (as a failing disk would,
    // after the decision itself was checked): nothing was decided, and the
    // log says nothing was.
    w.refuse_approval_updates(true);
    let failed = w.decide("approve", &id, &alice, &[]);
    assert_eq!(failed.code, 5, "{failed:?}");
    assert_eq!(w.approval(&id)["decisions"], json!([]));
    assert_eq!(decisions(), 0);

    w.refuse_approval_updates(false);
    let stored = w.decide("approve", &id, &alice, &[]);
    assert_eq!(stored.code, 0, "{stored:?}");
    assert_eq!(decisions(), 1);
}

#[test]
fn a_decision_is_confirmed_only_once_logged_and_logged_before_what_it_releases_runs() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);
    let rt = async_runtime();
    let runtime = w.in_process();
    let (bot, a, b) = (
        caller_of(&runtime, &agent),
        caller_of(&runtime, &alice),
        caller_of(&runtime, &bob),
    );
    let (approval, invocation) = submit_pending(&rt, &runtime, &bot, "deploy", "v1");
    let audit = runtime.audit_opened().unwrap().clone();

    // The log cannot be written: alice's approval is stored, but she is
    // told it is not confirmed.
    audit.inject_fault(Some(std::io::ErrorKind::StorageFull));
    let unconfirmed = rt.block_on(runtime.decide(&approval.id, &a, Verdict::Approve, None, None));
    match unconfirmed {
        Err(airlock::Error::AuditUnavailable(m)) => assert!(m.contains("not confirmed"), "{m}"),
        other => panic!("confirmed without its record: {other:?}"),
    }
    audit.inject_fault(None);
    assert!(events_of(&w.audit_of(&invocation), "approval-decision").is_empty());

    // Once the log heals, bob's approval completes the quorum, and alice's
    // record reaches the log before his and before the invocation starts.
    let decided = rt
        .block_on(runtime.decide(&approval.id, &b, Verdict::Approve, None, None))
        .unwrap();
    assert_eq!(decided.approval.state, ApprovalState::Approved);
    assert!(matches!(decided.ran, Some(Submitted::Ran(_))), "{:?}", decided.ran);
    let records = w.audit_of(&invocation);
    let kinds: Vec<&str> = records.iter().map(|r| r["event"]["kind"].as_str().unwrap()).collect();
    let who: Vec<&str> = events_of(&records, "approval-decision")
        .iter()
        .map(|e| e["identity"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["alice", "bob"], "{kinds:?}");
    let started = kinds.iter().position(|k| *k == "invocation-started").unwrap();
    let last_decision = kinds.iter().rposition(|k| *k == "approval-decision").unwrap();
    let resolved = kinds.iter().position(|k| *k == "approval-resolved").unwrap();
    assert!(last_decision < resolved && resolved < started, "{kinds:?}");
    let verify = w.run(&["audit", "verify"], None);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn decisions_made_at_the_same_instant_are_each_counted_once() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let tokens = [
        w.token("alice", "human", &["reviewer"]),
        w.token("alice", "human", &["reviewer", "laptop"]),
        w.token("bob", "human", &["reviewer"]),
        w.token("carol", "human", &["reviewer"]),
        w.token("dave", "human", &["reviewer"]),
    ];
    let rt = async_runtime();
    let runtime = w.in_process();
    let bot = caller_of(&runtime, &agent);
    let callers: Vec<Caller> = tokens.iter().map(|t| caller_of(&runtime, t)).collect();
    let (alice, alice_again, others) = (&callers[0], &callers[1], &callers[2..]);
    let audit = runtime.audit_opened().unwrap().clone();
    let deploy = runtime.action("deploy").unwrap().clone();
    let (access, version) = (&deploy.policy.access, &deploy.policy.config_version);
    // The action's own reviewers, to its quorum: what its requests ask.
    let groups = [(access.clone(), deploy.policy.approval.quorum)];
    let groups = &groups[..];
    let data = w.path("data");
    let settings = runtime.store_settings().clone();

    // Every decider has a connection of its own, as separate processes
    // do, and all of them decide when the barrier opens.
    let at_once = |id: &str, who: &[&Caller]| -> Vec<Result<ApprovalRecord, airlock::Error>> {
        let barrier = std::sync::Barrier::new(who.len());
        std::thread::scope(|s| {
            let deciders: Vec<_> = who
                .iter()
                .map(|caller| {
                    let (barrier, audit, data, settings) = (&barrier, &audit, &data, &settings);
                    s.spawn(move || {
                        let store = airlock::store::open(settings, data).unwrap();
                        let approvals = Approvals::new(store, audit.clone());
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        barrier.wait();
                        rt.block_on(approvals.decide(id, caller, Verdict::Approve, None, groups, version, None))
                    })
                })
                .collect();
            deciders.into_iter().map(|d| d.join().unwrap()).collect()
        })
    };

    for round in 0..3 {
        let (approval, invocation) = submit_pending(&rt, &runtime, &bot, "deploy", &format!("v{round}"));
        // Two tokens of one identity at once: one decision.
        let first = at_once(&approval.id, &[alice, alice_again]);
        assert_eq!(first.iter().filter(|r| r.is_ok()).count(), 1, "{first:?}");
        for refused in first.iter().filter_map(|r| r.as_ref().err()) {
            assert!(refused.to_string().contains("alice has already decided"), "{refused}");
        }
        let stored = runtime.store().unwrap().approval(&approval.id).unwrap().unwrap();
        assert_eq!((stored.state, stored.decisions.len()), (ApprovalState::Pending, 1));

        // Four more at once, alice again among them: exactly one more
        // counts, which makes the quorum of two; the rest are refused.
        let mut who: Vec<&Caller> = others.iter().collect();
        who.push(alice_again);
        let second = at_once(&approval.id, &who);
        assert_eq!(second.iter().filter(|r| r.is_ok()).count(), 1, "{second:?}");
        for refused in second.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(refused, airlock::Error::Refused(_)), "{refused:?}");
        }
        let stored = runtime.store().unwrap().approval(&approval.id).unwrap().unwrap();
        assert_eq!(stored.state, ApprovalState::Approved);
        let mut deciders: Vec<&str> = stored.decisions.iter().map(|d| d.identity.as_str()).collect();
        assert_eq!(deciders.len(), 2, "{deciders:?}");
        assert_eq!(deciders[0], "alice");
        assert_ne!(deciders[1], "alice");

        // The log holds exactly the decisions that counted.
        let records = w.audit_of(&invocation);
        let mut logged: Vec<&str> = events_of(&records, "approval-decision")
            .iter()
            .map(|e| e["identity"].as_str().unwrap())
            .collect();
        logged.sort_unstable();
        deciders.sort_unstable();
        assert_eq!(logged, deciders, "{records:?}");
        assert_eq!(events_of(&records, "approval-resolved").len(), 1, "{records:?}");
    }
}

#[test]
fn a_held_http_request_is_bound_to_its_headers_and_body() {
    let server = support::echo_server::EchoServer::start("unused");
    let w = http_world(&server);
    let agent = w.token("runner", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let body = "remove item 1 and all its history";
    // Hold one request, look at it, deny it.
    let held = |function: &str, args: Value| -> Value {
        let child = w.spawn_invoke("web", function, args, &agent);
        let pending = w.pending_one();
        let deny = w.decide(
            "deny",
            pending["id"].as_str().unwrap(),
            &alice,
            &["--reason", "checking the binding"],
        );
        assert_eq!(deny.code, 0, "{deny:?}");
        assert_ne!(finish(child).code, 0);
        pending
    };
    for function in ["cap-send", "wasi-send"] {
        let url = server.url("/echo/item/1");
        let request = |value: &str| match function {
            "cap-send" => json!({"req": {
                "method": "DELETE", "url": url, "credential": null,
                "headers": [["x-change-ticket", value]], "body": body, "follow-redirects": true
            }}),
            _ => json!({"method": "DELETE", "url": url, "headers": [["x-change-ticket", value]], "body": body}),
        };
        let first = held(function, request("ticket-secret-1"));
        let second = held(function, request("ticket-secret-2"));
        let (a, b) = (&first["subject"]["args"], &second["subject"]["args"]);
        // Names are shown, values only bound by digest; the body is bound
        // by its digest and size.
        assert_eq!(a["headers"], "x-change-ticket", "{function}: {first}");
        assert_eq!(a["headers-blake3"].as_str().unwrap().len(), 64, "{function}: {first}");
        assert_ne!(a["headers-blake3"], b["headers-blake3"], "{function}");
        assert_eq!(
            a["body-blake3"],
            blake3::hash(body.as_bytes()).to_hex().as_str(),
            "{function}: {first}"
        );
        assert_eq!(a["body-bytes"], body.len().to_string(), "{function}: {first}");
        assert_eq!(a["body-blake3"], b["body-blake3"], "{function}");
        assert_ne!(first["subject"], second["subject"], "{function}");
        for p in [&first, &second] {
            assert!(!p["subject"].to_string().contains("ticket-secret"), "{function}: {p}");
        }
    }
    assert!(server.requests().is_empty(), "a held request was sent");
}

/// The id of `identity`'s token created with exactly `roles`.
fn token_id(w: &World, identity: &str, roles: &[&str]) -> String {
    let list = w.run(&["token", "list", "--json"], None);
    assert_eq!(list.code, 0, "{list:?}");
    list.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["identity"] == identity && t["roles"] == json!(roles))
        .unwrap_or_else(|| panic!("no token of {identity} with {roles:?}: {list:?}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_vote_counts_only_while_its_identity_holds_a_live_approving_token() {
    let w = World::new();
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let bob = w.token("bob", "human", &["reviewer"]);
    let carol = w.token("carol", "human", &["reviewer"]);

    // alice approves, then her only token is revoked before the quorum of
    // two completes: bob's vote does not complete it.
    let (id, invocation) = pending_deploy(&w, &agent, "v1");
    assert_eq!(w.decide("approve", &id, &alice, &[]).code, 0);
    let revoke = w.run(&["token", "revoke", &token_id(&w, "alice", &["reviewer"])], None);
    assert_eq!(revoke.code, 0, "{revoke:?}");
    let bob_vote = w.decide("approve", &id, &bob, &[]);
    assert_eq!(bob_vote.code, 0, "{bob_vote:?}");
    assert!(bob_vote.stderr.contains("is pending (1/2 approvals)"), "{bob_vote:?}");
    let shown = w.approval(&id);
    assert_eq!(shown["state"], "pending", "a revoked approver's vote counted");
    assert_eq!(shown["uncounted"], json!(["alice"]), "{shown}");
    let status = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(status.code, 7, "nothing ran: {status:?}");
    let decision = w
        .audit()
        .into_iter()
        .rfind(|r| r["event"]["kind"] == "approval-decision")
        .unwrap();
    assert_eq!(decision["event"]["identity"], "bob");
    assert_eq!(decision["event"]["approvals"], 1, "{decision}");
    assert_eq!(decision["event"]["uncounted"], json!(["alice"]), "{decision}");
    // The revoked token itself can no longer vote on anything.
    let revoked = w.decide("approve", &id, &alice, &[]);
    assert_eq!(revoked.code, 3, "{revoked:?}");
    // A third live approver completes the quorum with bob; it runs.
    assert_eq!(w.decide("approve", &id, &carol, &[]).code, 0);
    assert_eq!(w.approval(&id)["state"], "approved");
    let done = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(done.code, 0, "{done:?}");

    // An identity keeps its vote while another of its tokens may approve,
    // and loses it when what is left cannot (no reviewer role).
    let dave = w.token("dave", "human", &["reviewer"]);
    let _dave_spare = w.token("dave", "human", &["reviewer", "laptop"]);
    let erin = w.token("erin", "human", &["reviewer"]);
    let _erin_plain = w.token("erin", "human", &["observer"]);
    let (kept, _) = pending_deploy(&w, &agent, "v2");
    assert_eq!(w.decide("approve", &kept, &dave, &[]).code, 0);
    assert_eq!(
        w.run(&["token", "revoke", &token_id(&w, "dave", &["reviewer"])], None)
            .code,
        0
    );
    assert_eq!(w.decide("approve", &kept, &bob, &[]).code, 0);
    assert_eq!(
        w.approval(&kept)["state"],
        "approved",
        "dave still holds a reviewer token"
    );

    let (lost, _) = pending_deploy(&w, &agent, "v3");
    assert_eq!(w.decide("approve", &lost, &erin, &[]).code, 0);
    assert_eq!(
        w.run(&["token", "revoke", &token_id(&w, "erin", &["reviewer"])], None)
            .code,
        0
    );
    assert_eq!(w.decide("approve", &lost, &bob, &[]).code, 0);
    assert_eq!(
        w.approval(&lost)["state"],
        "pending",
        "erin's remaining token may not approve"
    );
}

#[test]
fn an_approval_that_cannot_apply_here_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let swapped = dir.path().join("swapped.wasm");
    let original = std::fs::read(component("gated")).unwrap();
    std::fs::write(&swapped, &original).unwrap();
    let w = World::with(&format!(
        r#"
[actions.swap]
component = {swapped}
[actions.swap.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.swap.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
[actions.swap.approval]
invocation = true
"#,
        swapped = toml_path(&swapped)
    ));
    let agent = w.token("deploy-bot", "agent", &["agent"]);
    let alice = w.token("alice", "human", &["reviewer"]);
    let run = w.invoke("swap", "echo", json!({"value": "v1"}), Some(&agent), &[]);
    assert_eq!(run.code, 7, "{run:?}");
    let pending = run.json();
    let id = pending["approval"].as_str().unwrap().to_string();
    let invocation = pending["invocation"].as_str().unwrap().to_string();

    // The component on disk changes (one custom section more): what the
    // approver's process would run is no longer what was requested.
    let mut changed = original.clone();
    changed.extend_from_slice(&[0, 6, 4, b't', b'e', b's', b't', b'x']);
    std::fs::write(&swapped, &changed).unwrap();
    let refused = w.decide("approve", &id, &alice, &[]);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(refused.error_line().contains("nothing was decided"), "{refused:?}");
    let shown = w.approval(&id);
    assert_eq!(shown["state"], "pending", "{shown}");
    assert_eq!(shown["decisions"], json!([]), "{shown}");
    let status = w.run(&["invocations", "show", &invocation, "--json"], None);
    assert!(status.stdout.contains("awaiting-approval"), "{status:?}");
    assert!(
        !w.audit_kinds().contains(&"approval-decision".to_string()),
        "a refused decision is not on record"
    );

    // With the requested component back, the same approval applies and runs.
    std::fs::write(&swapped, &original).unwrap();
    let approved = w.decide("approve", &id, &alice, &[]);
    assert_eq!(approved.code, 0, "{approved:?}");
    let done = w.run(&["invocations", "show", &invocation], None);
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(done.json(), json!("v1"));
}
