//! Crash safety of the service under load: `airlock serve` is killed with
//! SIGKILL at random moments while 32 clients invoke actions over loopback,
//! then started again on the same data directory. After every restart:
//!
//! - every invocation a client saw acknowledged (200) is in the audit log,
//!   started and finished, and its status row (`GET /v1/invocations/{id}`
//!   and the database) says what the client was told;
//! - every invocation the log shows started has exactly one closing record:
//!   its `invocation-finished`, or the `invocation-cut-off` recovery wrote
//!   because the process ended first;
//! - every status row is final (nothing of the killed process still runs)
//!   and agrees with the log;
//! - the hash chain and the checkpoints verify.
//!
//! A second test has a live service and a killed `airlock invoke` share one
//! data directory: recovery closes the dead process's invocation, never the
//! ones the live service still runs.

mod support;

use airlock::store::sqlite::SqliteStore;
use airlock::store::{InvocationRecord, InvocationStatus, Store as _};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::http::Server;
use support::{component, toml_path};

/// Rounds of start → load → SIGKILL → restart → check.
const ROUNDS: usize = 8;
/// Concurrent clients during each round.
const CLIENTS: usize = 32;

struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    token: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        let hello = toml_path(&component("hello"));
        let probe = toml_path(&component("probe"));
        // `pure` holds no capability: its start record rides with its
        // close. `files` reaches outside its sandbox: its start is synced
        // before it runs, and its host calls are written as it goes.
        let text = format!(
            r#"
[runtime]
data-dir = "data"

[service]
rate-limit = {{ per-second = 1000000, burst = 1000000 }}

[actions.pure]
component = {hello}
[actions.pure.access]
invoke = ["role:agent"]

[actions.files]
component = {probe}
[actions.files.grants]
log = true
files = {{ dir = "work", mode = "read-write" }}
[actions.files.access]
invoke = ["role:agent", "local"]
[actions.files.limits]
timeout-ms = 60000
"#
        );
        let config = dir.path().join("airlock.toml");
        std::fs::write(&config, text).unwrap();
        let token = support::create_token(&config, "loader", "agent", &["agent"]);
        World { dir, config, token }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// A small xorshift generator: the test prints its seed, so a failing
/// schedule can be looked at again.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One request over a fresh connection; `None` when the server is gone
/// (refused, reset, or closed before a whole response arrived).
fn try_request(addr: &str, method: &str, path: &str, token: &str, body: &[u8]) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).ok()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A random request: a pure action, or one reaching outside its sandbox
/// that makes 0..300 host calls (past one eagerly written batch), sleeps,
/// or writes a file.
fn random_request(rng: &mut Rng, client: usize, n: u64) -> Value {
    match rng.below(5) {
        0 | 1 => json!({
            "action": "pure",
            "function": "greet",
            "args": {"who": {"name": format!("c{client}"), "title": null, "languages": ["en"]}},
        }),
        2 => json!({"action": "files", "function": "log-lines", "args": {"n": rng.below(300)}}),
        3 => json!({"action": "files", "function": "sleep-ms", "args": {"ms": rng.below(40)}}),
        _ => json!({
            "action": "files",
            "function": "write-file",
            "args": {"path": format!("c{client}-{n}.txt"), "data": "x".repeat(rng.below(2000) as usize)},
        }),
    }
}

/// What a client was told of a finished invocation.
#[derive(Debug, Clone)]
struct Told {
    status: String,
    result: Value,
}

/// Invocations the clients were told had finished, by id.
type Acknowledged = HashMap<String, Told>;

/// Run `CLIENTS` clients against `addr` until the server stops answering;
/// returns what was acknowledged.
fn load(
    addr: &str,
    token: &str,
    rng: &Rng,
    stop: &Arc<AtomicBool>,
    acks: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Acknowledged>> {
    (0..CLIENTS)
        .map(|client| {
            let (addr, token, stop, acks) = (addr.to_string(), token.to_string(), stop.clone(), acks.clone());
            let mut rng = Rng((rng.0 ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            std::thread::spawn(move || {
                let mut seen = Acknowledged::new();
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let body = random_request(&mut rng, client, n).to_string();
                    let Some((status, answer)) = try_request(&addr, "POST", "/v1/invocations", &token, body.as_bytes())
                    else {
                        break;
                    };
                    if status == 200 {
                        let id = answer["invocation"].as_str().unwrap_or_default().to_string();
                        let status = answer["status"].as_str().unwrap_or_default().to_string();
                        assert!(!id.is_empty(), "an acknowledgement without an id: {answer}");
                        let result = answer["result"].clone();
                        seen.insert(id, Told { status, result });
                        acks.fetch_add(1, Ordering::AcqRel);
                    }
                }
                seen
            })
        })
        .collect()
}

/// How the audit log says one invocation went.
#[derive(Debug, Default)]
struct Seen {
    started: usize,
    /// `invocation-finished` outcomes.
    finished: Vec<String>,
    cut_off: usize,
    refused: usize,
}

impl Seen {
    fn closings(&self) -> usize {
        self.finished.len() + self.cut_off + self.refused
    }
}

/// The log's record lines, by invocation (read as JSON, the way any reader
/// of the log would).
fn log_by_invocation(data: &Path) -> HashMap<String, Seen> {
    let text = std::fs::read_to_string(data.join("audit/audit.log")).unwrap();
    let mut out: HashMap<String, Seen> = HashMap::new();
    for line in text.lines() {
        let record: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line does not parse ({e}): {line}"));
        let event = &record["event"];
        let Some(id) = event["invocation"].as_str() else {
            continue;
        };
        let seen = out.entry(id.to_string()).or_default();
        match event["kind"].as_str().unwrap_or_default() {
            "invocation-started" => seen.started += 1,
            "invocation-finished" => seen
                .finished
                .push(event["outcome"].as_str().unwrap_or_default().to_string()),
            "invocation-cut-off" => seen.cut_off += 1,
            "invocation-refused" => seen.refused += 1,
            _ => {}
        }
    }
    out
}

/// The status a row must have given what the log says.
fn status_for(seen: &Seen) -> InvocationStatus {
    match seen.finished.first() {
        Some(outcome) if outcome == "ok" => InvocationStatus::Succeeded,
        _ => InvocationStatus::Failed,
    }
}

fn rows(data: &Path) -> Vec<InvocationRecord> {
    let store = SqliteStore::open(data).unwrap();
    store.invocations(None, usize::MAX).unwrap()
}

fn verify(world: &World) {
    let run = support::airlock_with(
        &["audit", "verify", "--config", world.config.to_str().unwrap()],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "the chain or a checkpoint does not verify: {run:?}");
}

/// Everything that must hold after a restart, for every invocation so
/// far (`fresh`: those acknowledged in this round, also asked of the
/// restarted service); returns how many invocations were cut off so far.
fn check(world: &World, server: &Server, acknowledged: &Acknowledged, fresh: &Acknowledged, round: usize) -> usize {
    let data = world.data();
    let log = log_by_invocation(&data);
    let rows: HashMap<String, InvocationRecord> = rows(&data).into_iter().map(|r| (r.id.clone(), r)).collect();
    for (id, told) in acknowledged {
        let seen = log
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: acknowledged invocation {id} is not in the audit log"));
        assert_eq!(
            (seen.started, seen.finished.len(), seen.cut_off),
            (1, 1, 0),
            "round {round}: acknowledged invocation {id} in the log: {seen:?}"
        );
        assert_eq!(
            status_for(seen).as_str(),
            told.status,
            "round {round}: {id} was acknowledged as {told:?}, the log says {seen:?}"
        );
        // The row the service itself wrote, result and all: one rebuilt
        // from the log after a crash would have the status but not the
        // result (the log keeps only its digest).
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: acknowledged invocation {id} has no status row"));
        let result = row
            .outcome
            .as_ref()
            .and_then(|o| o.result.clone())
            .unwrap_or(Value::Null);
        assert_eq!(
            (row.state.as_str(), &result),
            (told.status.as_str(), &told.result),
            "round {round}: {id} was acknowledged as {told:?}; its row: {row:?}"
        );
    }
    for (id, told) in fresh {
        let (status, answer) = try_request(&server.addr, "GET", &format!("/v1/invocations/{id}"), &world.token, b"")
            .unwrap_or_else(|| panic!("round {round}: the restarted service does not answer"));
        assert_eq!(status, 200, "round {round}: GET {id}: {answer}");
        assert_eq!(
            (answer["status"].as_str(), &answer["result"]),
            (Some(told.status.as_str()), &told.result),
            "round {round}: {id} was acknowledged as {told:?}; it reads now: {answer}"
        );
    }
    // Every started invocation ends in the log, exactly once.
    for (id, seen) in &log {
        if seen.started > 0 {
            assert_eq!(
                (seen.started, seen.closings()),
                (1, 1),
                "round {round}: invocation {id} does not start and end exactly once in the log: {seen:?}"
            );
        }
    }
    // Every row is final (the restarted service runs nothing), and says
    // what the log says.
    for row in rows.values() {
        assert!(
            row.state.is_final(),
            "round {round}: invocation {} is still {} after the restart",
            row.id,
            row.state
        );
        let seen = log.get(&row.id);
        match seen {
            Some(seen) if seen.started > 0 => assert_eq!(
                row.state,
                status_for(seen),
                "round {round}: row of {} says {}, the log {seen:?}",
                row.id,
                row.state
            ),
            // Stored, killed before its start record was written: the row
            // ends failed, and the log says why.
            Some(seen) => assert!(
                row.state == InvocationStatus::Failed && seen.cut_off == 1,
                "round {round}: row of {} says {}, the log {seen:?}",
                row.id,
                row.state
            ),
            None => panic!(
                "round {round}: invocation {} has a row ({}) but nothing in the log",
                row.id, row.state
            ),
        }
    }
    verify(world);
    log.values().filter(|s| s.cut_off > 0).count()
}

#[test]
fn sigkill_under_load_leaves_every_status_row_agreeing_with_the_audit_log() {
    let world = World::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test seed: {seed:#x}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut server = Server::start(&world.config);
    let mut acknowledged = Acknowledged::new();
    let mut cut_off = 0;
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let clients = load(&server.addr, &world.token, &rng, &stop, &acks);
        rng.next();
        // Once the service answers, let the load run a random while, then
        // kill it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.load(Ordering::Acquire) == 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: nothing was acknowledged in 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        stop.store(true, Ordering::Release);
        let mut fresh = Acknowledged::new();
        for c in clients {
            fresh.extend(c.join().unwrap());
        }
        acknowledged.extend(fresh.iter().map(|(k, v)| (k.clone(), v.clone())));
        server = Server::start(&world.config);
        cut_off = check(&world, &server, &acknowledged, &fresh, round);
    }
    drop(server);
    // The kills did land mid-invocation: recovery closed some.
    assert!(
        cut_off > 0,
        "no kill in {ROUNDS} rounds caught an invocation in flight; the test proves nothing"
    );
    eprintln!(
        "{ROUNDS} rounds, {} acknowledged invocations checked, {cut_off} cut off, in {:.1} s",
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The log's records as JSON, in order.
fn log_records(data: &Path) -> Vec<Value> {
    std::fs::read_to_string(data.join("audit/audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line does not parse ({e}): {l}")))
        .collect()
}

/// Wait up to `within` for `found` to find something in the log.
fn wait_for_record<T>(data: &Path, within: Duration, what: &str, mut found: impl FnMut(&[Value]) -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = found(&log_records(data)) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kind(record: &Value) -> &str {
    record["event"]["kind"].as_str().unwrap_or_default()
}

fn of(record: &Value) -> &str {
    record["event"]["invocation"].as_str().unwrap_or_default()
}

#[test]
fn a_killed_command_line_run_is_closed_while_the_live_service_keeps_its_own() {
    let world = World::new();
    let data = world.data();
    let server = Server::start(&world.config);
    // The service runs a slow invocation.
    let body = json!({"action": "files", "function": "sleep-ms", "args": {"ms": 25000}, "wait-ms": 0});
    let (status, answer) = try_request(
        &server.addr,
        "POST",
        "/v1/invocations",
        &world.token,
        body.to_string().as_bytes(),
    )
    .expect("the service answers");
    assert_eq!(status, 202, "{answer}");
    let served = answer["invocation"].as_str().expect("an invocation id").to_string();
    wait_for_record(&data, Duration::from_secs(20), "the service's start record", |log| {
        log.iter()
            .find(|r| kind(r) == "invocation-started" && of(r) == served)
            .map(|_| ())
    });
    // A command-line run on the same data directory, killed mid-run.
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "invoke",
            "files",
            "sleep-ms",
            "--args",
            r#"{"ms":30000}"#,
            "-q",
            "--config",
        ])
        .arg(&world.config)
        .env_remove("AIRLOCK_DATA_DIR")
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_TOKEN_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run airlock invoke");
    let (killed, killed_seq, killed_runner) = wait_for_record(
        &data,
        Duration::from_secs(30),
        "the command line's start record",
        |log| {
            log.iter()
                .find(|r| {
                    kind(r) == "invocation-started"
                        && r["event"]["caller"].as_str().is_some_and(|c| c.starts_with("local:"))
                })
                .map(|r| {
                    (
                        of(r).to_string(),
                        r["seq"].as_u64().expect("a sequence number"),
                        r["event"]["runner"].as_str().expect("a runner").to_string(),
                    )
                })
        },
    );
    let service_runner = log_records(&data)
        .iter()
        .find(|r| kind(r) == "invocation-started" && of(r) == served)
        .and_then(|r| r["event"]["runner"].as_str().map(str::to_string))
        .expect("the service's start names its runner");
    assert_ne!(killed_runner, service_runner);
    cli.kill().unwrap();
    cli.wait().unwrap();
    // The service looks every few seconds: the dead run is closed, with a
    // record naming its runner and its start.
    let cut = wait_for_record(&data, Duration::from_secs(15), "closing the killed run", |log| {
        log.iter()
            .find(|r| kind(r) == "invocation-cut-off" && of(r) == killed)
            .cloned()
    });
    assert_eq!(cut["event"]["runner"].as_str(), Some(killed_runner.as_str()), "{cut}");
    assert_eq!(cut["event"]["started-seq"].as_u64(), Some(killed_seq), "{cut}");
    assert_eq!(cut["event"]["outcome"].as_str(), Some("cut-off"), "{cut}");
    assert!(
        cut["event"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("crash or kill")),
        "{cut}"
    );
    let leases = data.join("audit/runners");
    let deadline = Instant::now() + Duration::from_secs(10);
    while leases.join(format!("{killed_runner}.lease")).exists() {
        assert!(
            Instant::now() < deadline,
            "the dead run's lease is still there 10 s after it was closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(leases.join(format!("{service_runner}.lease")).exists());
    // Another command-line process, recovering as it starts, leaves the
    // service's invocation alone too.
    let quick = support::airlock_with(
        &[
            "invoke",
            "files",
            "log-lines",
            "--args",
            r#"{"n":1}"#,
            "-q",
            "--config",
            world.config.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(quick.code, 0, "{quick:?}");
    let closings = |log: &[Value], id: &str| {
        log.iter()
            .filter(|r| of(r) == id && matches!(kind(r), "invocation-finished" | "invocation-cut-off"))
            .count()
    };
    assert_eq!(
        closings(&log_records(&data), &served),
        0,
        "the live service's run was closed"
    );
    let (_, now) = try_request(
        &server.addr,
        "GET",
        &format!("/v1/invocations/{served}"),
        &world.token,
        b"",
    )
    .unwrap();
    assert_eq!(now["status"].as_str(), Some("running"), "{now}");
    // It ends as it should, once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, now) = try_request(
            &server.addr,
            "GET",
            &format!("/v1/invocations/{served}"),
            &world.token,
            b"",
        )
        .unwrap();
        if now["status"] != "running" {
            break now;
        }
        assert!(Instant::now() < deadline, "the service's run never ended: {now}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"].as_str(), Some("succeeded"), "{done}");
    let log = log_records(&data);
    assert_eq!(closings(&log, &served), 1);
    assert!(
        log.iter()
            .any(|r| kind(r) == "invocation-finished" && of(r) == served && r["event"]["outcome"] == "ok")
    );
    assert_eq!(closings(&log, &killed), 1);
    drop(server);
    verify(&world);
}
