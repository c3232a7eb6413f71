//! The audit trail on PostgreSQL (`[audit] backend = "postgres"`), on a
//! real server: two nodes appending at once keep two chains that verify
//! and answer queries across nodes; an acknowledged record is in the
//! database; nothing runs while the database is gone and the trail heals
//! when it is back; every kind of tampering with the rows is found and
//! named; a node id stays with its data directory.

mod support;

use airlock::action::PreparedAction;
use airlock::audit::settings::{AuditSettings, Backend, BackendKind};
use airlock::audit::{AuditLog, Event};
use airlock::capabilities::Grants;
use airlock::capabilities::files::{FilesGrant, Mode};
use airlock::capabilities::log::LogGrant;
use airlock::identity::{Caller, IdentityKind};
use airlock::policy::{ActionPolicy, Limits, RuntimeSettings};
use airlock::runtime::Runtime;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use support::postgres::{self, TestDatabase};
use support::{airlock_with, component, toml_path};

/// The server is shared by the tests of this process; the one that stops
/// it runs alone.
static SERVER: RwLock<()> = RwLock::new(());

fn shared_server() -> RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(|p| p.into_inner())
}

fn settings(db: &TestDatabase, data: &Path, node: &str) -> RuntimeSettings {
    RuntimeSettings {
        data_dir: data.to_path_buf(),
        max_concurrent_instances: 16,
        store: db.settings(),
        audit: AuditSettings {
            backend: BackendKind::Postgres,
            node_id: Some(node.to_string()),
        },
    }
}

fn backend(db: &TestDatabase, node: &str) -> Backend {
    Backend::Postgres {
        pg: db.settings().postgres.expect("a PostgreSQL store"),
        node: Some(node.to_string()),
    }
}

/// A config naming `data` and `node`, for the `airlock audit` commands.
fn config(dir: &Path, db: &TestDatabase, data: &Path, node: &str) -> PathBuf {
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "[runtime]\ndata-dir = {}\n\n[audit]\nbackend = \"postgres\"\nnode-id = \"{node}\"\n{}",
            toml_path(data),
            db.store_section()
        ),
    )
    .unwrap();
    path
}

/// The probe as action `name`, granted the log and `granted`.
fn probe(runtime: &mut Runtime, name: &str, granted: &Path) -> Arc<PreparedAction> {
    std::fs::create_dir_all(granted).unwrap();
    let grants = Grants {
        log: Some(LogGrant),
        files: Some(FilesGrant::new(granted.to_path_buf(), Mode::ReadWrite).unwrap()),
        ..Grants::default()
    };
    runtime
        .prepare(ActionPolicy::ad_hoc(
            name,
            component("probe"),
            grants,
            Limits::default(),
        ))
        .unwrap()
}

fn caller(name: &str) -> Caller {
    Caller {
        name: name.into(),
        kind: IdentityKind::Agent,
        roles: Vec::new(),
        token_id: Some(format!("tok-{name}")),
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// `airlock audit ARGS --config CONFIG`.
fn audit(config: &Path, args: &[&str]) -> support::Run {
    let mut argv = vec!["audit"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--config", config.to_str().unwrap()]);
    airlock_with(&argv, b"", &[])
}

/// JSON lines of a run's stdout.
fn json_lines(run: &support::Run) -> Vec<Value> {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The lines of `data`'s log file.
fn file_lines(data: &Path) -> Vec<String> {
    std::fs::read_to_string(airlock::audit::dir(data).join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The lines of `node`'s chain in the database, in order.
fn db_lines(db: &TestDatabase, node: &str) -> Vec<String> {
    db.psql(&format!(
        "SELECT line FROM audit_records WHERE node = '{node}' ORDER BY seq"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// A record as exported, without the `node` member (the stored line).
fn without_node(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("node");
    v
}

#[test]
fn two_nodes_appending_at_once_keep_verified_chains_and_queries_answer_across_them() {
    let _server = shared_server();
    let db = postgres::database();
    let root = tempfile::tempdir().unwrap();
    let rt = tokio_rt();
    // (node, action, caller) of every invocation, by id.
    let mut ran: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    {
        let mut nodes = Vec::new();
        for node in ["node-a", "node-b"] {
            let data = root.path().join(node);
            let mut runtime = Runtime::new(&settings(&db, &data, node)).unwrap();
            let own = probe(&mut runtime, &format!("only-{node}"), &data.join("granted"));
            let both = probe(&mut runtime, "shared", &data.join("granted"));
            nodes.push((node, runtime, own, both));
        }
        // Both nodes at once, several invocations in flight on each.
        let mut tasks = Vec::new();
        for (node, _, own, both) in &nodes {
            for i in 0..12 {
                let action = if i % 2 == 0 { own.clone() } else { both.clone() };
                let who = if i % 3 == 0 { "alice" } else { "bob" };
                let node = node.to_string();
                tasks.push(rt.spawn(async move {
                    let report = action
                        .invoke_as(&caller(who), "log-lines", &json!({"n": 3}), None)
                        .await;
                    (node, action.policy.name.clone(), who.to_string(), report)
                }));
            }
        }
        for task in tasks {
            let (node, action, who, report) = rt.block_on(task).unwrap();
            assert!(report.outcome.is_ok(), "{:?}", report.outcome);
            ran.insert(report.invocation, (node, action, who));
        }
        for (_, _, own, both) in nodes {
            drop((own, both));
        }
    }
    assert_eq!(ran.len(), 24);

    // Each node's chain in the database is its log, line for line (the
    // closing checkpoints included the last records).
    for node in ["node-a", "node-b"] {
        let data = root.path().join(node);
        let file = file_lines(&data);
        assert!(file.len() >= 12 * 5, "{node}: {} records", file.len());
        assert_eq!(db_lines(&db, node), file, "{node}'s chain in PostgreSQL is its log");
    }
    let checkpoints = db.psql("SELECT node, seq FROM audit_checkpoints ORDER BY node");
    assert!(
        checkpoints.contains("node-a|") && checkpoints.contains("node-b|"),
        "{checkpoints}"
    );

    let cfg = config(root.path(), &db, &root.path().join("node-a"), "node-a");
    let verified = audit(&cfg, &["verify"]);
    assert_eq!(verified.code, 0, "{verified:?}");
    for node in ["node-a", "node-b"] {
        let n = file_lines(&root.path().join(node)).len();
        assert!(
            verified
                .stdout
                .contains(&format!("ok: node {node}: {n} records, chain intact")),
            "{verified:?}"
        );
    }

    // By invocation, from node a's config: a node b invocation, whole.
    let (b_id, _) = ran.iter().find(|(_, (n, _, _))| n == "node-b").unwrap();
    let shown = json_lines(&audit(&cfg, &["show", "--invocation", b_id, "--json"]));
    let in_file: Vec<Value> = file_lines(&root.path().join("node-b"))
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"]["invocation"] == json!(b_id))
        .collect();
    assert_eq!(shown.len(), in_file.len());
    assert!(shown.iter().all(|v| v["node"] == "node-b"));
    assert_eq!(shown.iter().map(without_node).collect::<Vec<_>>(), in_file);
    assert_eq!(shown[0]["event"]["kind"], "invocation-started");
    assert_eq!(shown.last().unwrap()["event"]["kind"], "invocation-finished");

    // By action, caller, and both: exactly the invocations that match,
    // from both nodes, in time order.
    let invocations_of = |records: &[Value]| -> BTreeSet<String> {
        records
            .iter()
            .filter_map(|v| v["event"]["invocation"].as_str().map(str::to_string))
            .collect()
    };
    let expect = |keep: &dyn Fn(&(String, String, String)) -> bool| -> BTreeSet<String> {
        ran.iter().filter(|(_, r)| keep(r)).map(|(id, _)| id.clone()).collect()
    };
    for (args, keep) in [
        (
            vec!["export", "--action", "shared"],
            Box::new(|r: &(String, String, String)| r.1 == "shared") as Box<dyn Fn(&(String, String, String)) -> bool>,
        ),
        (
            vec!["show", "--json", "--caller", "alice"],
            Box::new(|r| r.2 == "alice"),
        ),
        (
            vec!["show", "--json", "--action", "shared", "--caller", "bob"],
            Box::new(|r| r.1 == "shared" && r.2 == "bob"),
        ),
        (
            vec!["export", "--action", "only-node-b"],
            Box::new(|r| r.1 == "only-node-b"),
        ),
    ] {
        let records = json_lines(&audit(&cfg, &args));
        let want = expect(&*keep);
        assert!(!want.is_empty());
        assert_eq!(invocations_of(&records), want, "{args:?}");
        let nodes: BTreeSet<&str> = records.iter().filter_map(|v| v["node"].as_str()).collect();
        let want_nodes: BTreeSet<&str> = want.iter().map(|id| ran[id].0.as_str()).collect();
        assert_eq!(nodes, want_nodes, "{args:?}");
        // Five records per invocation: start, three log calls, finish.
        assert_eq!(records.len(), want.len() * 5, "{args:?}");
        let times: Vec<&str> = records.iter().map(|v| v["ts"].as_str().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{args:?}: not in time order");
    }

    // Unfiltered: every record of both chains; the newest few with tail.
    let all = json_lines(&audit(&cfg, &["export"]));
    let total = file_lines(&root.path().join("node-a")).len() + file_lines(&root.path().join("node-b")).len();
    assert_eq!(all.len(), total);
    let tail = json_lines(&audit(&cfg, &["tail", "-n", "7", "--json"]));
    assert_eq!(tail, all[all.len() - 7..].to_vec());
    let text = audit(&cfg, &["show", "--invocation", b_id]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.lines().all(|l| l.starts_with("node-b ")), "{text:?}");
}

#[test]
fn an_acknowledged_record_is_in_the_database_before_the_answer() {
    let _server = shared_server();
    let db = postgres::database();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let rt = tokio_rt();
    let mut runtime = Runtime::new(&settings(&db, &data, "durable")).unwrap();
    let action = probe(&mut runtime, "probe", &root.path().join("granted"));
    for _ in 0..3 {
        let report = rt.block_on(action.invoke("log-lines", &json!({"n": 2})));
        assert!(report.outcome.is_ok(), "{:?}", report.outcome);
        // Read on a connection of its own, while the runtime still runs.
        let kinds = db.psql(&format!(
            "SELECT kind FROM audit_records WHERE invocation = '{}' ORDER BY seq",
            report.invocation
        ));
        assert_eq!(
            kinds.lines().collect::<Vec<_>>(),
            ["invocation-started", "host-call", "host-call", "invocation-finished"],
            "{}",
            report.invocation
        );
    }
    // A durable append: acknowledged means there.
    let log = runtime.audit().unwrap();
    let seq = log.append_durable(vec![recovered(7)]).unwrap();
    let stored = db.psql(&format!(
        "SELECT line FROM audit_records WHERE node = 'durable' AND seq = {seq}"
    ));
    assert_eq!(stored.trim(), file_lines(&data).last().unwrap());
}

fn recovered(n: u64) -> Event {
    Event::Recovered(airlock::audit::event::Recovered {
        truncated_bytes: n,
        last_good_seq: None,
        reason: "test".into(),
    })
}

#[test]
fn nothing_runs_while_the_database_is_gone_and_the_trail_heals_when_it_is_back() {
    let _alone = SERVER.write().unwrap_or_else(|p| p.into_inner());
    let db = postgres::database();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let granted = root.path().join("granted");
    let rt = tokio_rt();
    let mut runtime = Runtime::new(&settings(&db, &data, "flaky")).unwrap();
    let action = probe(&mut runtime, "probe", &granted);
    let log = runtime.audit().unwrap();
    let write = |name: &str| rt.block_on(action.invoke("write-file", &json!({"path": name, "data": "x"})));
    assert!(write("before.txt").outcome.is_ok());

    let cluster = postgres::cluster();
    cluster.stop_server();
    let refused = write("during.txt");
    let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(
            matches!(&refused.outcome, Err(airlock::Error::AuditUnavailable(m))
                if m.contains("PostgreSQL") && m.contains("nothing runs")),
            "{:?}",
            refused.outcome
        );
        assert!(!granted.join("during.txt").exists(), "the action ran unrecorded");
        assert!(!log.is_healthy());
        // A plain append fails too, with the same clear error.
        let e = log.append_durable(vec![recovered(1)]).unwrap_err();
        assert!(e.to_string().contains("cannot store the records in PostgreSQL"), "{e}");
    }));
    cluster.start_server();
    if let Err(panic) = restarted {
        std::panic::resume_unwind(panic);
    }

    // Back: the same process appends again, without a restart (the first
    // attempts may still meet connections the restart broke).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let healed = loop {
        let report = write("after.txt");
        if report.outcome.is_ok() || std::time::Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(healed.outcome.is_ok(), "{:?}", healed.outcome);
    assert!(granted.join("after.txt").exists());
    assert!(log.is_healthy());
    drop((action, log));
    drop(runtime);

    // The refused invocation left nothing anywhere; the chain is whole.
    assert_eq!(db_lines(&db, "flaky"), file_lines(&data));
    assert!(!file_lines(&data).iter().any(|l| l.contains(&refused.invocation)));
    let cfg = config(root.path(), &db, &data, "flaky");
    let verified = audit(&cfg, &["verify"]);
    assert_eq!(verified.code, 0, "{verified:?}");
}

#[test]
fn every_kind_of_tampering_with_the_rows_is_found_and_named() {
    let _server = shared_server();
    let db = postgres::database();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let rt = tokio_rt();
    let mut ids = Vec::new();
    {
        let mut runtime = Runtime::new(&settings(&db, &data, "n1")).unwrap();
        let action = probe(&mut runtime, "probe", &root.path().join("granted"));
        for _ in 0..4 {
            let report = rt.block_on(action.invoke("log-lines", &json!({"n": 2})));
            assert!(report.outcome.is_ok(), "{:?}", report.outcome);
            ids.push(report.invocation);
        }
    }
    let n: u64 = db
        .psql("SELECT count(*) FROM audit_records WHERE node = 'n1'")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, 16);
    let cfg = config(root.path(), &db, &data, "n1");
    db.psql(
        "CREATE TABLE saved_records AS SELECT * FROM audit_records;\n\
         CREATE TABLE saved_nodes AS SELECT * FROM audit_nodes;\n\
         CREATE TABLE saved_checkpoints AS SELECT * FROM audit_checkpoints;",
    );
    let restore = || {
        db.psql(
            "BEGIN;\n\
             DELETE FROM audit_records; INSERT INTO audit_records SELECT * FROM saved_records;\n\
             DELETE FROM audit_nodes; INSERT INTO audit_nodes SELECT * FROM saved_nodes;\n\
             DELETE FROM audit_checkpoints; INSERT INTO audit_checkpoints SELECT * FROM saved_checkpoints;\n\
             COMMIT;",
        );
    };
    let hash_of = |seq: u64| {
        db.psql(&format!(
            "SELECT encode(hash, 'hex') FROM audit_records WHERE node = 'n1' AND seq = {seq}"
        ))
        .trim()
        .to_string()
    };
    // A checkpoint of a real record, properly signed, by a key not the
    // node's.
    let other_key = {
        let dir = tempfile::tempdir().unwrap();
        airlock::audit::checkpoint::CheckpointKey::load_or_create(&dir.path().join("k")).unwrap()
    };
    let head9 = airlock::audit::chain::parse_hex(hash_of(9).as_bytes()).unwrap();
    let foreign = other_key.sign(9, &head9, "2026-12-01T00:00:00.000000Z".into());
    let last = n - 1;
    let cases: Vec<(&str, String, u64, &str)> = vec![
        (
            "a line changed",
            "UPDATE audit_records SET line = replace(line, '\"seq\":5,', '\"seq\":5 ,') WHERE node = 'n1' AND seq = 5"
                .into(),
            5,
            "hash does not match",
        ),
        (
            "a row deleted",
            "DELETE FROM audit_records WHERE node = 'n1' AND seq = 7".into(),
            7,
            "missing",
        ),
        (
            "two rows' seqs swapped",
            "UPDATE audit_records SET seq = -1 WHERE node = 'n1' AND seq = 3;\n\
             UPDATE audit_records SET seq = 3 WHERE node = 'n1' AND seq = 4;\n\
             UPDATE audit_records SET seq = 4 WHERE node = 'n1' AND seq = -1;"
                .into(),
            3,
            "prev_hash",
        ),
        (
            "two rows' lines swapped",
            "UPDATE audit_records r SET line = s.line FROM saved_records s \
             WHERE r.node = 'n1' AND s.node = 'n1' AND ((r.seq = 10 AND s.seq = 11) OR (r.seq = 11 AND s.seq = 10))"
                .into(),
            10,
            "",
        ),
        (
            "the newest rows deleted",
            format!("DELETE FROM audit_records WHERE node = 'n1' AND seq >= {}", n - 3),
            n - 3,
            "truncated",
        ),
        (
            "the newest rows deleted and the head moved back",
            format!(
                "DELETE FROM audit_records WHERE node = 'n1' AND seq >= {0};\n\
                 UPDATE audit_nodes SET next_seq = {0}, head = decode('{1}', 'hex') WHERE node = 'n1';",
                n - 3,
                hash_of(n - 4)
            ),
            last,
            "truncated",
        ),
        (
            "an invocation column changed",
            "UPDATE audit_records SET invocation = 'ffffffffffffffffffffffffffffffff' WHERE node = 'n1' AND seq = 6"
                .into(),
            6,
            "invocation column",
        ),
        (
            "an action column changed",
            "UPDATE audit_records SET action = 'other' WHERE node = 'n1' AND seq = 4".into(),
            4,
            "action column",
        ),
        (
            "a time column changed",
            "UPDATE audit_records SET ts = ts - 1000000 WHERE node = 'n1' AND seq = 8".into(),
            8,
            "ts column",
        ),
        (
            "a checkpoint's head changed",
            format!(
                "UPDATE audit_checkpoints SET head = '{}' WHERE node = 'n1' AND seq = {last}",
                hash_of(2)
            ),
            last,
            "signature",
        ),
        (
            "a checkpoint moved to another record",
            format!("UPDATE audit_checkpoints SET seq = 9 WHERE node = 'n1' AND seq = {last}"),
            9,
            "signature",
        ),
        (
            "a checkpoint signed by another key",
            format!(
                "INSERT INTO audit_checkpoints VALUES ('n1', 9, '{}', '{}', '{}', '{}')",
                foreign.head, foreign.ts, foreign.public_key, foreign.signature
            ),
            9,
            "not the node's",
        ),
    ];
    assert_eq!(audit(&cfg, &["verify"]).code, 0);
    for (what, sql, seq, says) in &cases {
        db.psql(sql);
        let run = audit(&cfg, &["verify"]);
        assert_eq!(run.code, 6, "{what}: {run:?}");
        assert!(
            run.stderr.contains(&format!("node \"n1\", record {seq}:")) && run.stderr.contains(says),
            "{what}: {}",
            run.stderr
        );
        restore();
        let clean = audit(&cfg, &["verify"]);
        assert_eq!(clean.code, 0, "after restoring from {what}: {clean:?}");
    }

    // A row moved out of an invocation's answer by its column: the query
    // reads the chain between what it returned and names the row.
    let rows = db.psql(&format!(
        "SELECT seq FROM audit_records WHERE invocation = '{}' ORDER BY seq",
        ids[1]
    ));
    let seqs: Vec<u64> = rows.lines().map(|l| l.trim().parse().unwrap()).collect();
    let hidden = seqs[2];
    db.psql(&format!(
        "UPDATE audit_records SET invocation = 'ffffffffffffffffffffffffffffffff' WHERE node = 'n1' AND seq = {hidden}"
    ));
    let shown = audit(&cfg, &["show", "--invocation", &ids[1]]);
    assert_eq!(shown.code, 6, "{shown:?}");
    assert!(
        shown.stderr.contains(&format!("node \"n1\", record {hidden}:")),
        "{shown:?}"
    );
    restore();
    // An opening row relabelled: an action query that finds the others
    // reads past it, and names it.
    let opening = seqs[0];
    db.psql(&format!(
        "UPDATE audit_records SET action = 'elsewhere' WHERE node = 'n1' AND seq = {opening}"
    ));
    let by_action = audit(&cfg, &["show", "--action", "probe"]);
    assert_eq!(by_action.code, 6, "{by_action:?}");
    assert!(
        by_action.stderr.contains(&format!("record {opening}:")),
        "{by_action:?}"
    );
    restore();
    assert_eq!(
        json_lines(&audit(&cfg, &["show", "--action", "probe", "--json"])).len(),
        16
    );
}

#[test]
fn a_node_id_belongs_to_one_data_directory_and_a_log_catches_up_when_switched_on() {
    let _server = shared_server();
    let db = postgres::database();
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| airlock::audit::dir(&root.path().join(name));

    // A node whose data directory is lost cannot come back under its id
    // with a new one: that would fork its chain.
    let log = AuditLog::open_backend(&dir("first"), &backend(&db, "n-lost")).unwrap();
    log.append_durable(vec![recovered(1), recovered(2)]).unwrap();
    drop(log);
    let e = AuditLog::open_backend(&dir("replacement"), &backend(&db, "n-lost")).unwrap_err();
    assert!(e.to_string().contains("node id of its own"), "{e}");
    // Nor does a data directory change its node id.
    let e = AuditLog::open_backend(&dir("first"), &backend(&db, "n-renamed")).unwrap_err();
    assert!(e.to_string().contains("keeps its node id"), "{e}");

    // A log that was restored from an older copy is behind its chain in
    // the database: refused, saying what to do.
    let path = dir("first").join("audit.log");
    let lines = std::fs::read_to_string(&path).unwrap();
    let first_line = lines.lines().next().unwrap();
    std::fs::write(&path, format!("{first_line}\n")).unwrap();
    let e = AuditLog::open_backend(&dir("first"), &backend(&db, "n-lost")).unwrap_err();
    assert!(
        e.to_string().contains("restore the data directory") && e.to_string().contains("new node"),
        "{e}"
    );

    // A log kept as a file, switched to PostgreSQL: everything it holds
    // goes there at open; records written as a file again meanwhile (the
    // database off) are caught up on the next open.
    let log = AuditLog::open(&dir("switched")).unwrap();
    log.append_durable((0..50).map(recovered).collect::<Vec<_>>()).unwrap();
    drop(log);
    let log = AuditLog::open_backend(&dir("switched"), &backend(&db, "n-switched")).unwrap();
    log.append_durable(vec![recovered(99)]).unwrap();
    drop(log);
    let data = root.path().join("switched");
    assert_eq!(db_lines(&db, "n-switched"), file_lines(&data));
    let log = AuditLog::open(&dir("switched")).unwrap();
    log.append_durable(vec![recovered(100), recovered(101)]).unwrap();
    drop(log);
    assert_ne!(db_lines(&db, "n-switched"), file_lines(&data));
    drop(AuditLog::open_backend(&dir("switched"), &backend(&db, "n-switched")).unwrap());
    assert_eq!(db_lines(&db, "n-switched"), file_lines(&data));
    let cfg = config(root.path(), &db, &data, "n-switched");
    let verified = audit(&cfg, &["verify"]);
    assert_eq!(verified.code, 0, "{verified:?}");
}

#[test]
fn the_service_answers_audit_queries_across_nodes() {
    use support::http::Server;
    let _server = shared_server();
    let db = postgres::database();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("work")).unwrap();
    let gated = toml_path(&component("gated"));
    // No node-id in the config: each serve names its node with --node-id.
    let cfg = root.path().join("airlock.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
data-dir = "data-cli"

[audit]
backend = "postgres"

[service]
audit-readers = ["role:auditor"]

[actions.echo]
component = {gated}
[actions.echo.grants]
approval = true
files = {{ dir = "work", mode = "read-write" }}
[actions.echo.access]
invoke = ["role:agent"]
approve = ["role:reviewer"]
{store}"#,
            store = db.store_section()
        ),
    )
    .unwrap();
    let agent = support::create_token(&cfg, "bot", "agent", &["agent"]);
    let auditor = support::create_token(&cfg, "eve", "human", &["auditor"]);
    let node = |name: &str| {
        let data = root.path().join(format!("data-{name}"));
        Server::start_with(&cfg, &["--node-id", name, "--data-dir", data.to_str().unwrap()])
    };
    let (a, b) = (node("node-a"), node("node-b"));
    let mut ids = BTreeMap::new();
    for (name, server) in [("node-a", &a), ("node-b", &b), ("node-a", &a)] {
        let r = server.post(
            "/v1/invocations",
            Some(&agent),
            &json!({"action": "echo", "function": "echo", "args": {"value": name}}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        ids.insert(r.json()["invocation"].as_str().unwrap().to_string(), name.to_string());
    }
    // Either node answers for both.
    for server in [&a, &b] {
        let r = server.get("/v1/audit?action=echo", Some(&auditor));
        assert_eq!(r.status, 200, "{r:?}");
        let records = r.json()["records"].as_array().unwrap().clone();
        let found: BTreeMap<String, String> = records
            .iter()
            .map(|v| {
                (
                    v["event"]["invocation"].as_str().unwrap().to_string(),
                    v["node"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(found, ids);
        let (id, _) = ids.iter().find(|(_, n)| *n == "node-b").unwrap();
        let one = server.get(&format!("/v1/audit?invocation={id}"), Some(&auditor));
        let one = one.json();
        let kinds: Vec<&str> = one["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["event"]["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.first(), Some(&"invocation-started"), "{one:?}");
        assert_eq!(kinds.last(), Some(&"invocation-finished"), "{one:?}");
        let verified = server.get("/v1/audit/verify", Some(&auditor));
        assert_eq!(verified.json()["intact"], true, "{verified:?}");
        let verified = verified.json();
        let nodes: Vec<&str> = verified["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        assert_eq!(nodes, ["node-a", "node-b"]);
    }
    // Not for others.
    let denied = a.get("/v1/audit", Some(&agent));
    assert_eq!(denied.status, 403, "{denied:?}");
    // A row changed in the database: every node's verify says where.
    db.psql(
        "UPDATE audit_records SET line = replace(line, '\"seq\":1,', '\"seq\":1 ,') WHERE node = 'node-b' AND seq = 1",
    );
    let broken = a.get("/v1/audit/verify", Some(&auditor));
    assert_eq!(broken.json()["intact"], false, "{broken:?}");
    assert!(
        broken.json()["error"]
            .as_str()
            .unwrap()
            .contains("node \"node-b\", record 1:"),
        "{broken:?}"
    );
}
