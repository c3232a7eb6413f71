//! The database stopped under load, end to end: `airlock serve` on
//! PostgreSQL (store and audit trail) refuses with a clear error while the
//! database is gone, loses no acknowledged invocation, and serves again
//! when the database is back, without a restart. (A binary of its own: it
//! stops the test server every other test would share.)

mod support;

use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::http::{Response, Server, request};
use support::{component, toml_path};

fn invoke(addr: &str, auth: &str, value: &str) -> Option<Response> {
    std::net::TcpStream::connect(addr).ok()?;
    let body = json!({"action": "echo", "function": "echo", "args": {"value": value}}).to_string();
    Some(request(
        addr,
        "POST",
        "/v1/invocations",
        &[("Authorization", auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    ))
}

/// The tests here stop the shared server: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn with_the_database_stopped_mid_load_nothing_acknowledged_is_lost_and_service_resumes() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let db = support::postgres::database();
    let gated = toml_path(&component("gated"));
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\ndata-dir = \"data\"\n{store}\n[audit]\nbackend = \"postgres\"\n\n\
             [service]\nrate-limit = {{ per-second = 100000, burst = 100000 }}\n\n\
             [actions.echo]\ncomponent = {gated}\n[actions.echo.grants]\napproval = true\n\
             files = {{ dir = \"work\", mode = \"read-write\" }}\n[actions.echo.access]\n\
             invoke = [\"role:agent\"]\napprove = [\"role:reviewer\"]\n",
            store = db.store_section()
        ),
    )
    .unwrap();
    let agent = support::create_token(&config, "bot", "agent", &["agent"]);
    let auth = format!("Bearer {agent}");
    let server = Server::start_with(&config, &["--node-id", "node-a"]);

    // 8 clients for as long as the test runs; each keeps what was
    // acknowledged and every refusal's message.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, addr, auth) = (stop.clone(), server.addr.clone(), auth.clone());
            std::thread::spawn(move || {
                let (mut acked, mut refused) = (Vec::new(), Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let value = format!("c{i}-{n}");
                    let Some(r) = invoke(&addr, &auth, &value) else {
                        continue;
                    };
                    if r.status == 200 && r.json()["status"] == "succeeded" {
                        assert_eq!(r.json()["result"], value.as_str(), "{r:?}");
                        acked.push(r.json()["invocation"].as_str().unwrap().to_string());
                    } else {
                        refused.push((r.status, r.json()));
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                (acked, refused)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(800));
    let cluster = support::postgres::cluster();
    cluster.stop_server();
    std::thread::sleep(Duration::from_millis(1500));
    // While it is gone: refused, saying why.
    let during = invoke(&server.addr, &auth, "during").expect("the service still answers");
    cluster.start_server();
    // 503, saying which part is gone: the database (the first thing a
    // request needs is its token, from the database) or the audit trail.
    assert_eq!(during.status, 503, "{during:?}");
    let code = during.json()["error"]["code"].as_str().unwrap_or_default().to_string();
    assert!(
        code == "database-unavailable" || code == "audit-unavailable",
        "{during:?}"
    );
    let message = during.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("PostgreSQL"), "{during:?}");

    // Back: served again by the same process, within a bounded time.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = invoke(&server.addr, &auth, "after")
            && r.status == 200
            && r.json()["status"] == "succeeded"
        {
            break;
        }
        assert!(Instant::now() < deadline, "the service did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for t in clients {
        let (a, r) = t.join().unwrap();
        acked.extend(a);
        refused.extend(r);
    }
    assert!(!acked.is_empty());
    assert!(
        !refused.is_empty(),
        "no request was refused while the database was gone"
    );
    for (status, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert!(body["error"]["message"].is_string(), "{status} {body}");
    }

    // Nothing acknowledged is lost: each has its final row and its closing
    // record in the trail, which verifies.
    for id in &acked {
        let r = server.get(&format!("/v1/invocations/{id}"), Some(&agent));
        assert_eq!(r.json()["status"], "succeeded", "{id}: {r:?}");
    }
    let config_arg = config.to_str().unwrap();
    let show = support::airlock_with(&["audit", "show", "--json", "--config", config_arg], b"", &[]);
    assert_eq!(show.code, 0, "{show:?}");
    let finished: HashSet<String> = show
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"]["kind"] == "invocation-finished")
        .filter_map(|r| r["event"]["invocation"].as_str().map(str::to_string))
        .collect();
    for id in &acked {
        assert!(
            finished.contains(id),
            "{id} was acknowledged but is not closed in the trail"
        );
    }
    let verify = support::airlock_with(&["audit", "verify", "--config", config_arg], b"", &[]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// The store's async forms while the database is gone: a final row that
/// could not be committed is refused (the caller is not told it is
/// stored), stays queued, and is written once the database is back; a
/// token lookup says the database cannot be reached.
#[test]
fn a_final_row_refused_while_the_database_is_gone_is_written_when_it_returns() {
    use airlock::identity::{Caller, IdentityKind};
    use airlock::store::{InvocationOutcome, InvocationRecord, InvocationStatus};
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let db = support::postgres::database();
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt
        .block_on(async { airlock::store::open(&db.settings(), data.path()) })
        .unwrap();
    let row = |id: &str, state| InvocationRecord {
        id: id.into(),
        action: "echo".into(),
        function: "echo".into(),
        args: json!({}),
        caller: Caller {
            name: "bot".into(),
            kind: IdentityKind::Agent,
            roles: vec![],
            token_id: None,
        },
        state,
        approval: None,
        created_at: 1,
        updated_at: 1,
        outcome: (state != InvocationStatus::Running).then(|| InvocationOutcome {
            exit_code: 0,
            result: Some(json!(id)),
            error: None,
            finished_at: 2,
        }),
        runner: None,
        intent: None,
    };
    let before = row("before", InvocationStatus::Succeeded);
    rt.block_on(store.finish_run_async(&before)).unwrap();

    let cluster = support::postgres::cluster();
    cluster.stop_server();
    // The run's `running` row is queued first, and again after its final
    // row was refused: neither may stand in for the final row, and one
    // statement must not carry the invocation twice.
    store.record_run(&row("during", InvocationStatus::Running)).unwrap();
    let during = row("during", InvocationStatus::Succeeded);
    let refused = rt.block_on(store.finish_run_async(&during)).unwrap_err();
    store.record_run(&row("during", InvocationStatus::Running)).unwrap();
    let lookup = rt.block_on(store.token_by_hash_async(&[7; 32])).unwrap_err();
    cluster.start_server();
    assert!(refused.is_unreachable(), "{refused}");
    assert!(lookup.is_unreachable(), "{lookup}");

    // Back: the refused row was kept and is written by the next flush.
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        match store.invocation("during") {
            Ok(found) => break found,
            Err(e) => {
                assert!(Instant::now() < deadline, "the store did not come back: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(found.as_ref(), Some(&during));
    assert_eq!(store.invocation("before").unwrap().as_ref(), Some(&before));
    drop(store);
    drop(rt);
}
