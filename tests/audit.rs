//! The audit trail: one record per host call in order, tamper evidence,
//! truncation against an exported checkpoint, crash safety under SIGKILL,
//! and fail-closed behaviour when the log cannot be written.

mod support;

use airlock::audit::chain::{self, Entry, GENESIS};
use airlock::audit::{Checkpoint, Event, read};
use airlock::capabilities::Grants;
use airlock::capabilities::baseline::FUNCTIONS;
use airlock::capabilities::files::{FilesGrant, Mode};
use airlock::capabilities::log::LogGrant;
use airlock::policy::{ActionPolicy, Limits, RuntimeSettings};
use airlock::runtime::Runtime;
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use support::{Run, airlock_with, component};

fn data_arg(dir: &Path) -> String {
    dir.to_str().unwrap().to_string()
}

/// `airlock invoke COMPONENT FUNCTION` ad hoc, with the data dir `data`.
/// The probe gets the log and a directory (`DATA/granted` unless `extra`
/// names one).
fn invoke(data: &Path, component_name: &str, function: &str, args: Value, extra: &[&str]) -> Run {
    let wasm = component(component_name);
    let args = args.to_string();
    let granted = data.join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    let granted = data_arg(&granted);
    let data = data_arg(data);
    let mut argv = vec![
        "invoke",
        wasm.to_str().unwrap(),
        function,
        "--args",
        &args,
        "--data-dir",
        &data,
        "-q",
    ];
    argv.extend_from_slice(extra);
    if component_name == "probe" {
        argv.push("--grant-log");
        if !extra.contains(&"--grant-dir") {
            argv.extend_from_slice(&["--grant-dir", &granted]);
        }
    }
    airlock_with(&argv, b"", &[])
}

/// Every record of the log in `data`, verified.
fn records(data: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    read::scan(&airlock::audit::dir(data), |r, _| {
        out.push(r.entry.clone());
        true
    })
    .unwrap();
    out
}

fn log_path(data: &Path) -> PathBuf {
    airlock::audit::dir(data).join("audit.log")
}

#[test]
fn every_host_call_is_one_record_in_order() {
    let data = tempfile::tempdir().unwrap();
    // 600 calls: more than one chunk handed to the writer mid-invocation.
    let run = invoke(data.path(), "probe", "log-lines", json!({"n": 600}), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let recs = records(data.path());
    assert_eq!(recs.len(), 1 + 600 + 1, "start, 600 calls, finish");
    let Event::InvocationStarted(start) = &recs[0].event else {
        panic!("first record is {:?}", recs[0].event)
    };
    assert_eq!(start.function, "log-lines");
    assert_eq!(start.args, json!({"n": 600}));
    assert!(start.grants.iter().any(|g| g.starts_with("log")), "{:?}", start.grants);
    for (i, rec) in recs[1..601].iter().enumerate() {
        let Event::HostCall(call) = &rec.event else {
            panic!("record {} is {:?}", i + 1, rec.event)
        };
        assert_eq!(call.call, i as u64);
        assert_eq!((&*call.interface, &*call.function), ("airlock:cap/log", "write"));
        assert!(call.allowed);
        assert_eq!(*call.invocation, start.invocation);
    }
    let Event::InvocationFinished(done) = &recs[601].event else {
        panic!("last record is {:?}", recs[601].event)
    };
    assert_eq!((done.outcome.as_str(), done.exit_code, done.host_calls), ("ok", 0, 600));
    assert!(done.result_blake3.is_some());
    // Sequence numbers are consecutive from 0.
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
    }
}

#[test]
fn refusals_failures_and_baseline_calls_are_recorded() {
    let data = tempfile::tempdir().unwrap();
    let bad = invoke(data.path(), "probe", "no-such-function", json!({}), &[]);
    assert_eq!(bad.code, 2);
    let trapped = invoke(data.path(), "probe", "print", json!({"bytes": 100}), &[]);
    assert_eq!(trapped.code, 0, "{trapped:?}");
    let recs = records(data.path());
    assert!(
        matches!(&recs[0].event, Event::InvocationRefused(r) if r.function == "no-such-function" && r.exit_code == 2)
    );
    let Some(Event::InvocationFinished(done)) = recs.last().map(|r| &r.event) else {
        panic!("{recs:?}")
    };
    assert_eq!(done.stdout_bytes, 100);
    // Baseline calls are counted per function: `print` gets its stdout
    // once and writes through it; nothing else is touched.
    let calls = &done.baseline_calls;
    assert_eq!(calls.get("wasi:cli/stdout.get-stdout"), Some(&1), "{calls:?}");
    let writes: u64 = calls
        .iter()
        .filter(|(f, _)| f.starts_with("wasi:io/streams.[method]output-stream."))
        .map(|(_, n)| n)
        .sum();
    assert!(writes >= 1, "{calls:?}");
    assert!(
        !calls.keys().any(|f| f.starts_with("wasi:cli/environment")),
        "{calls:?}"
    );
    for function in calls.keys() {
        assert!(
            FUNCTIONS.contains(&function.as_str()),
            "unknown baseline function {function}"
        );
    }

    // Two distinct functions of one interface are told apart.
    let env = invoke(data.path(), "probe", "env-vars", json!({}), &[]);
    assert_eq!(env.code, 0, "{env:?}");
    let recs = records(data.path());
    let Some(Event::InvocationFinished(done)) = recs.last().map(|r| &r.event) else {
        panic!("no closing record: {recs:?}");
    };
    let calls = &done.baseline_calls;
    assert_eq!(calls.get("wasi:cli/environment.get-environment"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("wasi:cli/environment.get-arguments"), None, "{calls:?}");
}

/// A log with a few invocations, for the tampering tests.
fn sample_log() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    for n in [2, 3, 1] {
        let run = invoke(data.path(), "probe", "log-lines", json!({ "n": n }), &[]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    data
}

fn verify(data: &Path) -> Result<read::Verified, read::VerifyError> {
    read::verify(&airlock::audit::dir(data), None)
}

fn lines(data: &Path) -> Vec<Vec<u8>> {
    std::fs::read(log_path(data))
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(data: &Path, lines: &[Vec<u8>]) {
    std::fs::write(log_path(data), lines.concat()).unwrap();
}

#[test]
fn any_flipped_byte_deleted_moved_or_inserted_record_is_detected() {
    let data = sample_log();
    let original = std::fs::read(log_path(data.path())).unwrap();
    assert!(verify(data.path()).is_ok());
    // Every byte of the log, flipped one at a time.
    for i in 0..original.len() {
        let mut bad = original.clone();
        bad[i] ^= 0x20;
        std::fs::write(log_path(data.path()), &bad).unwrap();
        assert!(verify(data.path()).is_err(), "flipping byte {i} went unnoticed");
    }
    let good = lines(data.path());
    write_lines(data.path(), &good);
    let expect_bad_at = |mutated: Vec<Vec<u8>>, seq: u64, what: &str| {
        write_lines(data.path(), &mutated);
        match verify(data.path()) {
            Err(read::VerifyError::BadRecord { seq: s, .. }) => assert_eq!(s, seq, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    };
    let mut deleted = good.clone();
    deleted.remove(3);
    expect_bad_at(deleted, 3, "deleting record 3");
    let mut swapped = good.clone();
    swapped.swap(4, 5);
    expect_bad_at(swapped, 4, "swapping records 4 and 5");
    let mut inserted = good.clone();
    inserted.insert(2, good[6].clone());
    expect_bad_at(inserted, 2, "inserting a copy of record 6");
    // The command line names the first bad record and exits 6.
    let mut deleted = good.clone();
    deleted.remove(3);
    write_lines(data.path(), &deleted);
    let run = airlock_with(&["audit", "verify", "--data-dir", &data_arg(data.path())], b"", &[]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains("record 3"), "{run:?}");
}

#[test]
fn truncation_and_rewriting_are_caught_by_an_exported_checkpoint() {
    let data = sample_log();
    let dir = data_arg(data.path());
    let saved = data.path().join("../exported-checkpoint.json");
    let saved = tempfile::NamedTempFile::new()
        .map(|f| f.path().to_path_buf())
        .unwrap_or(saved);
    let run = airlock_with(
        &[
            "audit",
            "checkpoint",
            "--data-dir",
            &dir,
            "--out",
            saved.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let cp: Checkpoint = serde_json::from_str(run.stdout.trim()).unwrap();
    let good = lines(data.path());
    assert_eq!(cp.seq, good.len() as u64 - 1);

    // An attacker drops the tail and the log's own checkpoints: the chain
    // alone still verifies, the exported checkpoint does not.
    write_lines(data.path(), &good[..4]);
    std::fs::remove_file(airlock::audit::dir(data.path()).join("checkpoints.jsonl")).unwrap();
    assert!(verify(data.path()).is_ok(), "a clean truncation keeps a valid chain");
    let run = airlock_with(
        &[
            "audit",
            "verify",
            "--data-dir",
            &dir,
            "--checkpoint",
            saved.to_str().unwrap(),
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains("truncated"), "{run:?}");

    // Rewriting history with recomputed hashes: a valid chain, caught by the
    // checkpoint too.
    let (mut old_prev, mut prev) = (GENESIS, GENESIS);
    let mut rewritten = Vec::new();
    for line in &good {
        let rec = chain::decode(&line[..line.len() - 1], &old_prev).unwrap();
        old_prev = rec.hash;
        let mut entry = rec.entry.clone();
        if let Event::InvocationStarted(s) = &mut entry.event {
            s.caller = "local:someone-else".into();
        }
        entry.prev = chain::hex(&prev);
        let (new_line, hash) = chain::encode(&entry, &prev).unwrap();
        rewritten.push(new_line);
        prev = hash;
    }
    write_lines(data.path(), &rewritten);
    assert!(verify(data.path()).is_ok(), "a recomputed chain verifies on its own");
    let cp_arg = (&cp, saved.display().to_string());
    match read::verify(&airlock::audit::dir(data.path()), Some((cp_arg.0, cp_arg.1.clone()))) {
        Err(read::VerifyError::Rewritten { seq, .. }) => assert_eq!(seq, cp.seq),
        other => panic!("rewrite not caught: {other:?}"),
    }
    // A forged checkpoint (edited head) fails its signature.
    let mut forged = cp.clone();
    forged.head = chain::hex(&prev);
    assert!(forged.verify_signature().is_err());
}

#[test]
fn acknowledged_invocations_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let hello = component("hello");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "invoke",
            hello.to_str().unwrap(),
            "greet",
            "--args",
            r#"{"who": {"name": "Ada", "languages": ["en"]}}"#,
            "--data-dir",
            data.path().to_str().unwrap(),
            "--repeat",
            "1000000",
        ])
        .env_remove("AIRLOCK_DATA_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        acked.push(v["invocation"].as_str().unwrap().to_string());
        if acked.len() == 40 {
            break;
        }
    }
    // Kill it mid-stream, without any chance to clean up.
    unsafe_kill(child.id());
    let _ = child.wait();
    // Restart: opening the log repairs a torn tail (and records that).
    let again = invoke(
        data.path(),
        "hello",
        "greet",
        json!({"who": {"name": "Bo", "languages": []}}),
        &[],
    );
    assert_eq!(again.code, 0, "{again:?}");
    let run = airlock_with(&["audit", "verify", "--data-dir", &data_arg(data.path())], b"", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let finished: std::collections::HashSet<String> = records(data.path())
        .into_iter()
        .filter_map(|r| match r.event {
            Event::InvocationFinished(f) if f.outcome == "ok" => Some(f.invocation),
            _ => None,
        })
        .collect();
    for id in &acked {
        assert!(
            finished.contains(id),
            "acknowledged invocation {id} is missing from the log"
        );
    }
}

/// SIGKILL via the `kill` command (no libc binding needed).
fn unsafe_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A runtime in this process with the probe granted the log and
/// `granted` read-write, and its audit log.
fn in_process_probe(
    data: &Path,
    granted: &Path,
    instances: u32,
) -> (
    Runtime,
    std::sync::Arc<airlock::action::PreparedAction>,
    airlock::audit::AuditLog,
) {
    let mut runtime = Runtime::new(&RuntimeSettings {
        data_dir: data.to_path_buf(),
        max_concurrent_instances: instances,
        store: Default::default(),
        audit: Default::default(),
    })
    .unwrap();
    let grants = Grants {
        log: Some(LogGrant),
        files: Some(FilesGrant::new(granted.to_path_buf(), Mode::ReadWrite).unwrap()),
        ..Grants::default()
    };
    let action = runtime
        .prepare(ActionPolicy::ad_hoc(
            "probe",
            component("probe"),
            grants,
            Limits::default(),
        ))
        .unwrap();
    let audit = runtime.audit().unwrap();
    (runtime, action, audit)
}

#[test]
fn nothing_runs_while_the_log_cannot_be_written_and_it_heals_by_itself() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (runtime, action, audit) = in_process_probe(data.path(), &granted, 4);
    let write = |name: &str| rt.block_on(action.invoke("write-file", &json!({"path": name, "data": "x"})));

    audit.inject_fault(Some(std::io::ErrorKind::StorageFull));
    let refused = write("while-broken.txt");
    assert!(
        matches!(&refused.outcome, Err(airlock::Error::AuditUnavailable(m)) if m.contains("nothing runs")),
        "{:?}",
        refused.outcome
    );
    assert_eq!(refused.outcome.as_ref().err().map(airlock::Error::exit_code), Some(5));
    assert!(!granted.join("while-broken.txt").exists(), "the action ran unrecorded");
    assert!(!audit.is_healthy());

    audit.inject_fault(None);
    let healed = write("after.txt");
    assert!(healed.outcome.is_ok(), "{:?}", healed.outcome);
    assert!(granted.join("after.txt").exists());
    assert!(audit.is_healthy());
    drop(action);
    drop(runtime);
    drop(audit);
    let recs = records(data.path());
    assert!(
        recs.iter()
            .all(|r| r.event.invocation() != Some(refused.invocation.as_str()))
    );
    assert!(
        recs.iter()
            .any(|r| r.event.invocation() == Some(healed.invocation.as_str()))
    );
}

#[test]
fn a_full_filesystem_refuses_invocations_until_space_returns() {
    // A real full disk: a tiny tmpfs mounted over the audit directory. Needs
    // mount privileges; the fault-injection test above covers the same
    // logic where they are missing.
    let data = tempfile::tempdir().unwrap();
    let audit_dir = airlock::audit::dir(data.path());
    std::fs::create_dir_all(&audit_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", audit_dir.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // CI runs as root, where a tmpfs can be mounted: there the real
        // full disk must be tested, not skipped.
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs under CI; the full-disk test must run there"
        );
        eprintln!("note: cannot mount a tmpfs here; the full-disk case is covered by fault injection only");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(audit_dir.clone());
    let root = tempfile::tempdir().unwrap();
    let granted = root.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let grant = format!("{}", granted.display());
    let write = |name: &str| {
        invoke(
            data.path(),
            "probe",
            "write-file",
            json!({"path": name, "data": "x"}),
            &["--grant-dir", &grant],
        )
    };
    assert_eq!(write("first.txt").code, 0);
    // Fill the filesystem.
    let filler = audit_dir.join("filler");
    let chunk = vec![0u8; 4096];
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    }
    // The log may still have room in its last page for a record or two;
    // within a few invocations one must be refused, and must not run.
    let mut refused_one = false;
    for i in 0..64 {
        let name = format!("while-full-{i}.txt");
        let run = write(&name);
        if run.code == 5 && run.error_line().contains("withheld") {
            // Its start record fit but its closing one did not: it ran
            // recorded as started, and its result was not acknowledged.
            continue;
        }
        if run.code == 5 {
            assert!(run.error_line().contains("nothing runs"), "{run:?}");
            assert!(!granted.join(&name).exists(), "the action ran unrecorded");
            refused_one = true;
            break;
        }
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert!(refused_one, "a full disk never refused an invocation");
    std::fs::remove_file(&filler).unwrap();
    let after = write("after.txt");
    assert_eq!(after.code, 0, "{after:?}");
    assert!(granted.join("after.txt").exists());
    let run = airlock_with(&["audit", "verify", "--data-dir", &data_arg(data.path())], b"", &[]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_failure_during_an_invocation_withholds_its_result() {
    let data = tempfile::tempdir().unwrap();
    let granted = data.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (runtime, action, audit) = in_process_probe(data.path(), &granted, 4);
    let slow = {
        let action = action.clone();
        rt.spawn(async move { action.invoke("sleep-ms", &json!({"ms": 400})).await })
    };
    std::thread::sleep(std::time::Duration::from_millis(150));
    audit.inject_fault(Some(std::io::ErrorKind::Other));
    let report = rt.block_on(slow).unwrap();
    match &report.outcome {
        Err(airlock::Error::AuditUnavailable(m)) => assert!(m.contains("withheld"), "{m}"),
        other => panic!("the result was acknowledged without its records: {other:?}"),
    }
    assert!(report.stdout.is_empty() && report.logs.is_empty());
    audit.inject_fault(None);
    let next = rt.block_on(action.invoke("log-lines", &json!({"n": 3})));
    assert!(next.outcome.is_ok(), "{:?}", next.outcome);
    drop((action, runtime, audit));
    // The chain is intact, the withheld invocation shows as started only,
    // and the next one is complete.
    let recs = records(data.path());
    let of = |id: &str| recs.iter().filter(|r| r.event.invocation() == Some(id)).count();
    assert_eq!(of(&report.invocation), 1);
    assert_eq!(of(&next.invocation), 1 + 3 + 1);
}

#[test]
fn sensitive_arguments_are_recorded_by_digest_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
data-dir = "data"
[actions.hello]
component = {}
[actions.hello.audit]
sensitive-args = ["who.name"]
"#,
            support::toml_path(&component("hello"))
        ),
    )
    .unwrap();
    let run = airlock_with(
        &[
            "invoke",
            "--config",
            config.to_str().unwrap(),
            "hello",
            "greet",
            "--args",
            r#"{"who": {"name": "Zelda-Private-Name", "languages": ["en"]}}"#,
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let log = std::fs::read_to_string(log_path(&dir.path().join("data"))).unwrap();
    assert!(!log.contains("Zelda-Private-Name"), "{log}");
    assert!(log.contains("\"sensitive\":\"keyed-blake3:"), "{log}");
    assert!(
        log.contains("\"languages\":[\"en\"]"),
        "other arguments stay readable: {log}"
    );
    // A refused request does not quote argument values either.
    let bad = airlock_with(
        &[
            "invoke",
            "--config",
            config.to_str().unwrap(),
            "hello",
            "greet",
            "--args",
            r#"{"who": {"name": 12345678}}"#,
        ],
        b"",
        &[],
    );
    assert_eq!(bad.code, 2);
    let log = std::fs::read_to_string(log_path(&dir.path().join("data"))).unwrap();
    assert!(!log.contains("12345678"), "{log}");
}

#[test]
fn concurrent_invocations_share_syncs() {
    let data = tempfile::tempdir().unwrap();
    let granted = data.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_runtime, action, audit) = in_process_probe(data.path(), &granted, 32);
    let (syncs_before, appends_before) = audit.sync_stats();
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let action = action.clone();
            rt.spawn(async move { action.invoke("sleep-ms", &json!({"ms": 50})).await })
        })
        .collect();
    for t in tasks {
        assert!(rt.block_on(t).unwrap().outcome.is_ok());
    }
    let (syncs, appends) = audit.sync_stats();
    let (syncs, appends) = (syncs - syncs_before, appends - appends_before);
    assert_eq!(appends, 48, "a start and a finish per invocation");
    assert!(
        syncs < appends,
        "group commit shared no syncs: {syncs} syncs for {appends} appends"
    );
    eprintln!("group commit: {syncs} syncs for {appends} durable appends");
}

#[test]
fn wasi_filesystem_calls_are_each_recorded() {
    let data = tempfile::tempdir().unwrap();
    let run = invoke(
        data.path(),
        "probe",
        "wasi-write",
        json!({"path": "/w.txt", "data": "hello"}),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let calls: Vec<_> = records(data.path())
        .into_iter()
        .filter_map(|r| match r.event {
            Event::HostCall(c) if c.interface.starts_with("wasi:filesystem/") => Some(c),
            _ => None,
        })
        .collect();
    assert!(
        calls.iter().any(|c| c.function == "[method]descriptor.open-at"
            && c.args.iter().any(|(k, v)| k == "path" && v.contains("w.txt"))),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.interface == "wasi:filesystem/preopens"),
        "{calls:?}"
    );
    // In call order, numbered without gaps among the invocation's calls.
    assert!(calls.windows(2).all(|w| w[0].call < w[1].call), "{calls:?}");
    // The stream the write went through is metered: its record says how
    // many bytes were written, and what (blake3), though the bytes went
    // through wasi:io/streams.
    let digest = blake3::hash(b"hello").to_hex().to_string();
    let write = calls
        .iter()
        .find(|c| c.function == "[method]descriptor.write-via-stream")
        .unwrap_or_else(|| panic!("no write-via-stream record: {calls:?}"));
    assert_eq!(
        write.status,
        format!("ok: 5 bytes written (blake3:{digest})"),
        "{write:?}"
    );

    // And a read through a stream says how much was read.
    let run = invoke(data.path(), "probe", "wasi-read", json!({"path": "/w.txt"}), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let read = records(data.path())
        .into_iter()
        .rev()
        .find_map(|r| match r.event {
            Event::HostCall(c) if c.function == "[method]descriptor.read-via-stream" => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(read.status, "ok: 5 bytes read", "{read:?}");
}

#[test]
fn a_pure_action_costs_one_sync_and_a_lost_start_withholds_its_result() {
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runtime = Runtime::new(&RuntimeSettings {
        data_dir: data.path().to_path_buf(),
        max_concurrent_instances: 4,
        store: Default::default(),
        audit: Default::default(),
    })
    .unwrap();
    // `hello` holds no capability: nothing it does is visible outside until
    // its result is returned.
    let action = runtime
        .prepare(ActionPolicy::ad_hoc(
            "hello",
            component("hello"),
            Grants::default(),
            Limits::default(),
        ))
        .unwrap();
    let audit = runtime.audit().unwrap();
    let greet = || rt.block_on(action.invoke("greet", &json!({"who": {"name": "Ada", "languages": []}})));

    let (syncs_before, _) = audit.sync_stats();
    let ok: Vec<_> = (0..5).map(|_| greet()).collect();
    let (syncs, _) = audit.sync_stats();
    assert!(ok.iter().all(|r| r.outcome.is_ok()));
    assert_eq!(syncs - syncs_before, 5, "one sync per sequential pure invocation");

    // The start of a pure invocation is written without waiting; if that
    // write fails, the invocation's result is withheld, never returned
    // unrecorded.
    audit.inject_fault(Some(std::io::ErrorKind::StorageFull));
    let lost = greet();
    assert!(
        matches!(&lost.outcome, Err(airlock::Error::AuditUnavailable(m)) if m.contains("withheld")),
        "{:?}",
        lost.outcome
    );
    assert!(!audit.is_healthy());
    // Known to be failing: the next one is refused before it runs.
    let refused = greet();
    assert!(
        matches!(&refused.outcome, Err(airlock::Error::AuditUnavailable(m)) if m.contains("nothing runs")),
        "{:?}",
        refused.outcome
    );
    audit.inject_fault(None);
    let healed = greet();
    assert!(healed.outcome.is_ok(), "{:?}", healed.outcome);
    drop(action);
    drop(runtime);
    drop(audit);

    let recs = records(data.path());
    for r in ok.iter().chain([&healed]) {
        let kinds: Vec<_> = recs
            .iter()
            .filter(|e| e.event.invocation() == Some(r.invocation.as_str()))
            .map(|e| match &e.event {
                Event::InvocationStarted(_) => "started",
                Event::InvocationFinished(_) => "finished",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["started", "finished"], "{}", r.invocation);
    }
    for r in [&lost, &refused] {
        assert!(recs.iter().all(|e| e.event.invocation() != Some(r.invocation.as_str())));
    }
}

/// `airlock audit show --json` with `filter` flags, as (exit code, lines).
fn show(data: &Path, filter: &[&str]) -> (i32, Vec<String>) {
    let data = data_arg(data);
    let mut argv = vec!["audit", "show", "--json", "--data-dir", &data];
    argv.extend_from_slice(filter);
    let run = airlock_with(&argv, b"", &[]);
    (run.code, run.stdout.lines().map(str::to_string).collect())
}

/// The raw lines of the log whose records belong to an invocation `keep`
/// accepts (by its start record), in order: what a query must return.
fn expected(data: &Path, keep: impl Fn(&Event) -> bool) -> Vec<String> {
    let mut owners = std::collections::HashSet::new();
    let mut out = Vec::new();
    read::scan(&airlock::audit::dir(data), |r, line| {
        let id = r.entry.event.invocation().map(str::to_string);
        if matches!(r.entry.event, Event::InvocationStarted(_)) && keep(&r.entry.event) {
            owners.extend(id.clone());
        }
        if id.is_some_and(|i| owners.contains(&i)) {
            out.push(String::from_utf8_lossy(line).into_owned());
        }
        true
    })
    .unwrap();
    out
}

#[test]
fn queries_are_answered_by_the_index_and_follow_the_log() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for n in [2, 1] {
        assert_eq!(invoke(d, "probe", "log-lines", json!({ "n": n }), &[]).code, 0);
    }
    let who = json!({"who": {"name": "Ada", "title": null, "languages": ["fr"]}});
    assert_eq!(invoke(d, "hello", "greet", who.clone(), &[]).code, 0);
    let probe = |e: &Event| matches!(e, Event::InvocationStarted(s) if s.action == "probe");
    let hello = |e: &Event| matches!(e, Event::InvocationStarted(s) if s.action == "hello");

    // By action: exactly that action's records, in order, via the index.
    let (code, got) = show(d, &["--action", "probe"]);
    assert_eq!(code, 0);
    assert_eq!(got, expected(d, probe));
    assert_eq!(got.len(), 2 + 2 + 2 + 1, "two invocations: starts, closes, three calls");
    assert!(airlock::audit::dir(d).join(airlock::audit::index::INDEX_FILE).exists());

    // Records appended later are picked up by the next query.
    assert_eq!(invoke(d, "hello", "greet", who, &[]).code, 0);
    let (_, got) = show(d, &["--action", "hello"]);
    assert_eq!(got, expected(d, hello));
    assert_eq!(got.len(), 4, "two hello invocations, start and close each");

    // By caller, and by invocation id prefix.
    let start = records(d)
        .into_iter()
        .find_map(|e| match e.event {
            Event::InvocationStarted(s) if s.action == "hello" => Some(s),
            _ => None,
        })
        .unwrap();
    let (_, by_caller) = show(d, &["--caller", &start.caller]);
    assert_eq!(
        by_caller,
        expected(d, |_| true),
        "one local caller made every invocation"
    );
    let (_, by_id) = show(d, &["--invocation", &start.invocation[..10]]);
    assert_eq!(
        by_id,
        expected(
            d,
            |e| matches!(e, Event::InvocationStarted(s) if s.invocation == start.invocation)
        )
    );

    // A time range that starts after an invocation began still finds its
    // later records when filtered by action too.
    let all = records(d);
    let finish_ts = all
        .iter()
        .find(|e| matches!(&e.event, Event::InvocationFinished(f) if f.invocation == start.invocation))
        .map(|e| e.ts.clone())
        .unwrap();
    let (_, late) = show(d, &["--action", "hello", "--since", &finish_ts]);
    assert!(
        late.iter()
            .any(|l| l.contains("invocation-finished") && l.contains(&start.invocation)),
        "{late:?}"
    );

    // The log cut back to an earlier, intact prefix: the index notices it no
    // longer continues and rebuilds, so nothing it remembers is returned.
    let kept = lines(d)[..7].to_vec();
    write_lines(d, &kept);
    let (code, got) = show(d, &["--action", "hello"]);
    assert_eq!(code, 0);
    assert!(got.is_empty(), "{got:?}");
    let (_, got) = show(d, &["--action", "probe"]);
    assert_eq!(got, expected(d, probe));

    // A damaged index is thrown away and rebuilt, not trusted.
    let index_file = airlock::audit::dir(d).join(airlock::audit::index::INDEX_FILE);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index_file.display()));
    }
    std::fs::write(&index_file, vec![0x5a; 8192]).unwrap();
    let (code, got) = show(d, &["--action", "probe"]);
    assert_eq!(code, 0);
    assert_eq!(got, expected(d, probe));

    // A record a query returns is checked against its own hash.
    let mut tampered = lines(d);
    let at = tampered[1].iter().position(|&b| b == b'1').unwrap();
    tampered[1][at] = b'2';
    write_lines(d, &tampered);
    let (code, _) = show(d, &["--action", "probe"]);
    assert_eq!(code, 6, "a tampered record is refused, not shown");
}

#[test]
fn every_host_call_is_a_tracing_span_with_its_decision_and_status() {
    let data = tempfile::tempdir().unwrap();
    let wasm = component("probe");
    let granted = data.path().join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    let (d, g) = (data_arg(data.path()), data_arg(&granted));
    let run = airlock_with(
        &[
            "invoke",
            wasm.to_str().unwrap(),
            "wasi-write",
            "--args",
            r#"{"path": "/t.txt", "data": "traced"}"#,
            "--data-dir",
            &d,
            "--grant-log",
            "--grant-dir",
            &g,
            "-q",
        ],
        b"",
        &[("AIRLOCK_LOG", "airlock=info"), ("AIRLOCK_LOG_FORMAT", "json")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    // One JSON object per line; a closed span is a line of its own.
    let closed: Vec<Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "close")
        .collect();
    let spans: Vec<&Value> = closed.iter().filter(|v| v["span"]["name"] == "host_call").collect();
    let calls: Vec<_> = records(data.path())
        .into_iter()
        .filter_map(|r| match r.event {
            Event::HostCall(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(calls.len() >= 3, "open, write stream, preopens at least: {calls:?}");
    assert_eq!(spans.len(), calls.len(), "one span per recorded call: {spans:?}");
    for call in &calls {
        let span = spans
            .iter()
            .find(|s| s["span"]["call"] == call.call)
            .unwrap_or_else(|| panic!("no span for call {}: {spans:?}", call.call));
        assert_eq!(span["span"]["function"], &*call.function);
        assert_eq!(span["span"]["interface"], &*call.interface);
        assert_eq!(span["span"]["allowed"], call.allowed);
        assert_eq!(span["span"]["status"], &*call.status, "{span}");
    }
    // Host calls are nested in their invocation's span.
    assert!(closed.iter().any(|v| v["span"]["name"] == "invocation"));
    assert!(
        spans.iter().all(|s| s["spans"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == "invocation"))),
        "{spans:?}"
    );
}

#[test]
fn an_error_quoting_a_sensitive_argument_is_recorded_without_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = support::config(
        dir.path(),
        &format!(
            r#"
[runtime]
data-dir = "data"
[actions.probe]
component = {}
[actions.probe.grants]
log = true
files = {{ dir = "work", mode = "read-write" }}
[actions.probe.audit]
sensitive-args = ["message"]
"#,
            support::toml_path(&component("probe"))
        ),
    );
    // The guest panics with its (sensitive) argument as the message.
    let run = airlock_with(
        &[
            "invoke",
            "--config",
            config.to_str().unwrap(),
            "probe",
            "panic-with",
            "--args",
            r#"{"message": "Hunter2-Private-Phrase"}"#,
        ],
        b"",
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let log = std::fs::read_to_string(log_path(&dir.path().join("data"))).unwrap();
    assert!(!log.contains("Hunter2-Private-Phrase"), "{log}");
    let finished = records(&dir.path().join("data"))
        .into_iter()
        .find_map(|r| match r.event {
            Event::InvocationFinished(f) => Some(f),
            _ => None,
        })
        .unwrap();
    assert!(
        finished.error.as_deref().is_some_and(|e| e.contains("[sensitive]")),
        "the error is kept, the value masked: {finished:?}"
    );
}

#[test]
fn export_and_tail_print_verified_records_and_follow_new_ones() {
    let data = sample_log();
    let d = data_arg(data.path());
    // Export: every record, one JSON object per line, exactly as stored.
    let export = airlock_with(&["audit", "export", "--format", "jsonl", "--data-dir", &d], b"", &[]);
    assert_eq!(export.code, 0, "{export:?}");
    let stored: Vec<String> = lines(data.path())
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .collect();
    let exported: Vec<&str> = export.stdout.lines().collect();
    assert_eq!(exported, stored);
    let unknown = airlock_with(&["audit", "export", "--format", "csv", "--data-dir", &d], b"", &[]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.error_line().contains("jsonl"), "{unknown:?}");

    // Tail -n: the newest N.
    let tail = airlock_with(&["audit", "tail", "-n", "2", "--json", "--data-dir", &d], b"", &[]);
    assert_eq!(tail.stdout.lines().collect::<Vec<_>>(), stored[stored.len() - 2..]);

    // Tail -f: prints what is appended while it runs.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "tail", "-n", "0", "-f", "--json", "--data-dir", &d])
        .env_remove("AIRLOCK_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(invoke(data.path(), "probe", "log-lines", json!({"n": 1}), &[]).code, 0);
    let mut followed = Vec::new();
    while followed.len() < 3 {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => followed.push(line),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let now: Vec<String> = lines(data.path())
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .collect();
    assert_eq!(
        followed,
        now[stored.len()..],
        "start, one call, finish of the new invocation"
    );
}

/// Every query `audit show` can make of `d`'s log, with what the log says it
/// must return: by action, invocation, caller and time.
fn queries(d: &Path) -> Vec<(Vec<String>, Vec<String>)> {
    let all = records(d);
    let first_probe = all
        .iter()
        .find_map(|e| match &e.event {
            Event::InvocationStarted(s) if s.action == "probe" => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let probe = |e: &Event| matches!(e, Event::InvocationStarted(s) if s.action == "probe");
    let one = first_probe.invocation.clone();
    let mut out = vec![
        (vec!["--action".into(), "probe".into()], expected(d, probe)),
        (vec!["--invocation".into(), one[..12].to_string()], {
            expected(d, |e| matches!(e, Event::InvocationStarted(s) if s.invocation == one))
        }),
        (
            vec!["--caller".into(), first_probe.caller.clone()],
            expected(d, |_| true),
        ),
    ];
    // A prefix every invocation's id has: every record (each belongs to an
    // invocation here).
    out.push((vec!["--invocation".into(), String::new()], expected(d, |_| true)));
    // A window holding every record from the first probe's start on.
    let start_ts = all
        .iter()
        .find(|e| matches!(&e.event, Event::InvocationStarted(s) if s.invocation == one))
        .map(|e| e.ts.clone())
        .unwrap();
    let since = airlock::time::parse_utc(&start_ts).unwrap();
    let in_window: Vec<String> = lines(d)
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end_matches('\n').to_string())
        .filter(|l| {
            let e: Entry = serde_json::from_str(l).unwrap();
            airlock::time::parse_utc(&e.ts).unwrap() >= since
        })
        .collect();
    out.push((vec!["--since".into(), start_ts], in_window));
    out
}

#[test]
fn an_edited_index_never_changes_what_a_query_returns_and_verify_reports_it() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for n in [2, 1, 3] {
        assert_eq!(invoke(d, "probe", "log-lines", json!({ "n": n }), &[]).code, 0);
    }
    let who = json!({"who": {"name": "Ada", "title": null, "languages": ["fr"]}});
    assert_eq!(invoke(d, "hello", "greet", who, &[]).code, 0);
    let queries = queries(d);
    // A good index, kept to restore before each edit.
    for (filter, want) in &queries {
        let argv: Vec<&str> = filter.iter().map(String::as_str).collect();
        assert_eq!(show(d, &argv), (0, want.clone()), "untouched index, {filter:?}");
    }
    let audit = airlock::audit::dir(d);
    let index_file = audit.join(airlock::audit::index::INDEX_FILE);
    let db = |sql: &str| {
        let conn = rusqlite::Connection::open(&index_file).unwrap();
        conn.execute_batch(sql).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    };
    db("");
    let good = std::fs::read(&index_file).unwrap();
    let restore = || {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", index_file.display()));
        }
        std::fs::write(&index_file, &good).unwrap();
    };
    let all = records(d);
    let seq_of = |keep: &dyn Fn(&Event) -> bool| all.iter().find(|e| keep(&e.event)).unwrap().seq;
    let probe_ids: Vec<String> = all
        .iter()
        .filter_map(|e| match &e.event {
            Event::InvocationStarted(s) if s.action == "probe" => Some(s.invocation.clone()),
            _ => None,
        })
        .collect();
    let (p1, p2) = (&probe_ids[0], &probe_ids[1]);
    let call = seq_of(&|e| matches!(e, Event::HostCall(c) if *c.invocation == **p1 && c.call == 1));
    let finish = seq_of(&|e| matches!(e, Event::InvocationFinished(f) if f.invocation == *p1));
    let hello = seq_of(&|e| matches!(e, Event::InvocationStarted(s) if s.action == "hello"));
    let hello_id = all
        .iter()
        .find_map(|e| match &e.event {
            Event::InvocationStarted(s) if s.action == "hello" => Some(s.invocation.clone()),
            _ => None,
        })
        .unwrap();
    let inv = |id: &str| format!("(SELECT rowid FROM invocations WHERE id = '{id}')");
    let edits = [
        (
            "a host call's row deleted",
            format!("DELETE FROM records WHERE seq = {call}"),
        ),
        (
            "an invocation's rows deleted",
            format!("DELETE FROM records WHERE inv = {}", inv(p1)),
        ),
        (
            "a closing record re-pointed to another invocation",
            format!("UPDATE records SET inv = {} WHERE seq = {finish}", inv(p2)),
        ),
        (
            "a closing record made nobody's",
            format!("UPDATE records SET inv = NULL WHERE seq = {finish}"),
        ),
        (
            "a row pointed at another record",
            format!(
                "UPDATE records SET offset = (SELECT offset FROM records WHERE seq = {hello}), \
                 hash = (SELECT hash FROM records WHERE seq = {hello}) WHERE seq = {call}"
            ),
        ),
        (
            "an invocation relabelled",
            format!("UPDATE invocations SET action = 'hello' WHERE id = '{p1}'"),
        ),
        (
            "an invocation's caller changed",
            format!("UPDATE invocations SET caller = 'mallory' WHERE id = '{p2}'"),
        ),
        (
            "an invocation renamed",
            format!("UPDATE invocations SET id = 'zz{p1}' WHERE id = '{p1}'"),
        ),
        (
            "an invocation's row deleted",
            format!("DELETE FROM invocations WHERE id = '{p1}'"),
        ),
        (
            // Found by the audit_index fuzz target: the last invocation's
            // records, pointing at nothing, fell outside a prefix query's
            // answer after its last record, where nothing looked.
            "the last invocation's row deleted",
            format!("DELETE FROM invocations WHERE id = '{hello_id}'"),
        ),
        (
            "a record's time moved",
            format!("UPDATE records SET ts = 0 WHERE seq = {call}"),
        ),
        (
            "a bogus row",
            "INSERT INTO records (seq, offset, ts, inv, hash) VALUES (9999, 0, 0, NULL, x'00')".into(),
        ),
        (
            "the tables emptied",
            "DELETE FROM records; DELETE FROM invocations;".into(),
        ),
    ];
    let data_dir = data_arg(d);
    for (what, sql) in &edits {
        for (filter, want) in &queries {
            restore();
            db(sql);
            let argv: Vec<&str> = filter.iter().map(String::as_str).collect();
            assert_eq!(show(d, &argv), (0, want.clone()), "{what}: {filter:?}");
        }
        // The newest records, as `GET /v1/audit` asks for them.
        restore();
        db(sql);
        let mut newest = Vec::new();
        let filter = airlock::audit::query::Filter {
            action: Some("probe".into()),
            ..Default::default()
        };
        airlock::audit::index::select(&audit, &filter, Some(3), |_, line| {
            newest.push(String::from_utf8_lossy(line).into_owned());
            true
        })
        .unwrap();
        let want = &queries[0].1;
        assert_eq!(newest, want[want.len() - 3..], "{what}: newest");
        // `audit verify` compares every row, says so, and rebuilds.
        restore();
        db(sql);
        let verify = airlock_with(&["audit", "verify", "--data-dir", &data_dir], b"", &[]);
        assert_eq!(verify.code, 6, "{what}: {verify:?}");
        assert!(
            verify
                .error_line()
                .contains("is intact, but its index did not match it"),
            "{what}: {verify:?}"
        );
        let again = airlock_with(&["audit", "verify", "--data-dir", &data_dir], b"", &[]);
        assert_eq!(again.code, 0, "{what}: {again:?}");
        assert!(again.stdout.contains("the index matches the log"), "{what}: {again:?}");
    }
}

#[test]
fn verify_says_how_many_records_no_signature_covers_yet() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for n in [1, 2] {
        assert_eq!(invoke(d, "probe", "log-lines", json!({ "n": n }), &[]).code, 0);
    }
    let data_dir = data_arg(d);
    let total = records(d).len();
    let checkpoints = airlock::audit::dir(d).join(airlock::audit::log::CHECKPOINTS_FILE);
    let text = std::fs::read_to_string(&checkpoints).unwrap();
    // Keep only the first checkpoint: the records after it are unsigned.
    let first: Checkpoint = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    std::fs::write(&checkpoints, format!("{}\n", text.lines().next().unwrap())).unwrap();
    let run = airlock_with(&["audit", "verify", "--data-dir", &data_dir], b"", &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let unsigned = total as u64 - 1 - first.seq;
    assert!(unsigned > 0, "the first checkpoint signs everything: {text}");
    assert!(
        run.stdout.contains(&format!(
            "note: {unsigned} record(s) after record {}, the last one a checkpoint signs",
            first.seq
        )),
        "{run:?}"
    );
    std::fs::write(&checkpoints, "").unwrap();
    let run = airlock_with(&["audit", "verify", "--data-dir", &data_dir], b"", &[]);
    assert!(
        run.stdout
            .contains(&format!("no checkpoint signs this log: its {total} record(s)")),
        "{run:?}"
    );
    // Signing the head covers everything again.
    let sign = airlock_with(&["audit", "checkpoint", "--data-dir", &data_dir], b"", &[]);
    assert_eq!(sign.code, 0, "{sign:?}");
    let run = airlock_with(&["audit", "verify", "--data-dir", &data_dir], b"", &[]);
    assert!(!run.stdout.contains("note:"), "{run:?}");
}
