//! Isolation guarantees, tested in process against the real `probe`
//! component: the files grant cannot be escaped, the baseline carries no
//! authority, and limits trap without harming the host, which then serves
//! the next invocation correctly.

mod support;

use airlock::audit::Event;
use airlock::audit::event::HostCallEvent;
use airlock::capabilities::Grants;
use airlock::capabilities::files::{FilesGrant, Mode};
use airlock::capabilities::log::LogGrant;
use airlock::invocation::Report;
use airlock::policy::{ActionPolicy, Limits, RuntimeSettings};
use airlock::{Error, LimitExceeded, Runtime};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Sandbox {
    _data: tempfile::TempDir,
    root: tempfile::TempDir,
    runtime: Runtime,
}

impl Sandbox {
    /// `root/granted` is the granted directory; `root/outside.txt` is not.
    fn new() -> Sandbox {
        let data = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("granted")).unwrap();
        std::fs::write(root.path().join("outside.txt"), "top secret").unwrap();
        std::fs::write(root.path().join("granted/inside.txt"), "hello").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.txt"), root.path().join("granted/link-out")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("granted/etc")).unwrap();
        let settings = RuntimeSettings {
            data_dir: data.path().to_path_buf(),
            max_concurrent_instances: 8,
            store: Default::default(),
            audit: Default::default(),
        };
        let runtime = Runtime::new(&settings).unwrap();
        Sandbox {
            _data: data,
            root,
            runtime,
        }
    }

    /// The audit records of the host calls invocation `report` made.
    fn host_calls(&self, report: &Report) -> Vec<HostCallEvent> {
        let mut calls = Vec::new();
        airlock::audit::read::scan(&airlock::audit::dir(self._data.path()), |rec, _| {
            if let Event::HostCall(call) = &rec.entry.event
                && *call.invocation == report.invocation
            {
                calls.push(call.clone());
            }
            true
        })
        .unwrap();
        calls
    }

    fn granted(&self) -> std::path::PathBuf {
        self.root.path().join("granted")
    }

    fn probe(&mut self, mode: Mode, limits: Limits) -> Arc<airlock::action::PreparedAction> {
        let grants = Grants {
            log: Some(LogGrant),
            files: Some(FilesGrant::new(self.granted(), mode).unwrap()),
            ..Grants::default()
        };
        let policy = ActionPolicy::ad_hoc("probe", support::component("probe"), grants, limits);
        self.runtime.prepare(policy).unwrap()
    }
}

/// Recognizes the error an attack must end with.
type ExpectedError = fn(&Error) -> bool;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ok(report: &Report) -> &Value {
    match &report.outcome {
        Ok(v) => v,
        Err(e) => panic!(
            "expected success, got {e}: stderr {:?}",
            String::from_utf8_lossy(&report.stderr)
        ),
    }
}

fn action_error(report: &Report) -> String {
    match &report.outcome {
        Err(Error::ActionError(Value::String(s))) => s.clone(),
        other => panic!("expected the action's error case, got {other:?}"),
    }
}

fn outside_untouched(s: &Sandbox) {
    assert_eq!(
        std::fs::read_to_string(s.root.path().join("outside.txt")).unwrap(),
        "top secret"
    );
    assert!(!s.root.path().join("escaped.txt").exists());
}

#[test]
fn files_capability_cannot_escape_its_directory() {
    let mut s = Sandbox::new();
    let probe = s.probe(Mode::ReadWrite, Limits::default());
    rt().block_on(async {
        let r = probe.invoke("read-file", &json!({"path": "inside.txt"})).await;
        assert_eq!(ok(&r), &json!("hello"));

        for path in [
            "../outside.txt",
            "a/../../outside.txt",
            "/etc/passwd",
            &s.root.path().join("outside.txt").display().to_string(),
        ] {
            let r = probe.invoke("read-file", &json!({"path": path})).await;
            let e = action_error(&r);
            assert!(e.starts_with("invalid path"), "{path}: {e}");
        }
        for path in ["link-out", "etc/passwd"] {
            let r = probe.invoke("read-file", &json!({"path": path})).await;
            let e = action_error(&r);
            assert!(!e.contains("top secret") && !e.contains("root:"), "{path}: {e}");
            assert!(e.contains("not reachable inside the granted directory"), "{path}: {e}");
        }
        for path in ["../escaped.txt", "/escaped.txt", "link-out", "etc/escaped"] {
            let r = probe
                .invoke("write-file", &json!({"path": path, "data": "pwned"}))
                .await;
            assert!(
                matches!(r.outcome, Err(Error::ActionError(_))),
                "{path}: {:?}",
                r.outcome
            );
        }
        let r = probe
            .invoke("delete-file", &json!({"path": "link-out/../outside.txt"}))
            .await;
        assert!(matches!(r.outcome, Err(Error::ActionError(_))));
        let r = probe.invoke("list-dir", &json!({"path": ".."})).await;
        assert!(action_error(&r).starts_with("invalid path"));
        let r = probe.invoke("list-dir", &json!({"path": "etc"})).await;
        assert!(matches!(r.outcome, Err(Error::ActionError(_))), "{:?}", r.outcome);

        // Writes inside work, and every call went through the choke point.
        let r = probe
            .invoke("write-file", &json!({"path": "sub/dir/new.txt", "data": "ok"}))
            .await;
        ok(&r);
        assert_eq!(r.host_calls.total, 1);
        let calls = s.host_calls(&r);
        assert_eq!(calls.len(), 1);
        assert_eq!(&*calls[0].function, "write");
        assert!(calls[0].allowed);
        assert_eq!(
            std::fs::read_to_string(s.granted().join("sub/dir/new.txt")).unwrap(),
            "ok"
        );
    });
    outside_untouched(&s);
}

#[test]
fn wasi_filesystem_sees_only_the_granted_directory() {
    let mut s = Sandbox::new();
    let probe = s.probe(Mode::ReadWrite, Limits::default());
    rt().block_on(async {
        let r = probe.invoke("wasi-read", &json!({"path": "/inside.txt"})).await;
        assert_eq!(ok(&r), &json!("hello"));
        for path in [
            "/../outside.txt",
            "../outside.txt",
            "/link-out",
            "/etc/passwd",
            "/etc/hostname",
        ] {
            let r = probe.invoke("wasi-read", &json!({"path": path})).await;
            assert!(
                matches!(r.outcome, Err(Error::ActionError(_))),
                "{path}: {:?}",
                r.outcome
            );
        }
        for path in ["/../escaped.txt", "/link-out", "/etc/escaped"] {
            let r = probe
                .invoke("wasi-write", &json!({"path": path, "data": "pwned"}))
                .await;
            assert!(
                matches!(r.outcome, Err(Error::ActionError(_))),
                "{path}: {:?}",
                r.outcome
            );
        }
    });
    outside_untouched(&s);
}

#[test]
fn read_only_grant_refuses_writes_and_deletes_on_both_interfaces() {
    let mut s = Sandbox::new();
    let probe = s.probe(Mode::ReadOnly, Limits::default());
    rt().block_on(async {
        let r = probe.invoke("read-file", &json!({"path": "inside.txt"})).await;
        assert_eq!(ok(&r), &json!("hello"));
        let r = probe
            .invoke("write-file", &json!({"path": "new.txt", "data": "x"}))
            .await;
        assert_eq!(action_error(&r), "the files grant is read-only");
        let rec = &s.host_calls(&r)[0];
        assert!(!rec.allowed);
        assert_eq!(rec.rule, "grants.files (read-only)");
        let r = probe.invoke("delete-file", &json!({"path": "inside.txt"})).await;
        assert_eq!(action_error(&r), "the files grant is read-only");
        let r = probe
            .invoke("wasi-write", &json!({"path": "/new.txt", "data": "x"}))
            .await;
        assert!(matches!(r.outcome, Err(Error::ActionError(_))), "{:?}", r.outcome);
    });
    assert!(!s.granted().join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(s.granted().join("inside.txt")).unwrap(),
        "hello"
    );
}

#[test]
fn baseline_has_no_authority_environment_args_and_stdin_are_empty() {
    // SAFETY: the variable is set before any thread of this test reads it.
    unsafe { std::env::set_var("AIRLOCK_TEST_SECRET", "must-not-leak") };
    let mut s = Sandbox::new();
    let probe = s.probe(Mode::ReadOnly, Limits::default());
    rt().block_on(async {
        assert_eq!(ok(&probe.invoke("env-vars", &json!({})).await), &json!([]));
        assert_eq!(ok(&probe.invoke("cli-args", &json!({})).await), &json!([]));
        assert_eq!(ok(&probe.invoke("read-stdin", &json!({})).await), &json!(""));
    });
}

#[test]
fn stdout_is_captured_per_invocation_and_capped() {
    let mut s = Sandbox::new();
    let limits = Limits {
        max_output_bytes: 10_000,
        ..Limits::default()
    };
    let probe = s.probe(Mode::ReadOnly, limits);
    rt().block_on(async {
        let r = probe.invoke("print", &json!({"bytes": 1500})).await;
        ok(&r);
        assert_eq!(r.stdout, vec![b'x'; 1500]);
        let r = probe.invoke("print", &json!({"bytes": 10})).await;
        assert_eq!(r.stdout, vec![b'x'; 10], "no output carries over");
        let r = probe.invoke("print", &json!({"bytes": 50_000})).await;
        assert!(
            matches!(
                r.outcome,
                Err(Error::Limit(LimitExceeded::Output {
                    stream: "stdout",
                    cap: 10_000
                }))
            ),
            "{:?}",
            r.outcome
        );
        assert_eq!(r.stdout.len(), 10_000, "the bytes before the cap are kept");
    });
}

#[test]
fn log_lines_are_captured_and_capped() {
    let mut s = Sandbox::new();
    let probe = s.probe(
        Mode::ReadOnly,
        Limits {
            max_log_bytes: 100,
            ..Limits::default()
        },
    );
    rt().block_on(async {
        let r = probe.invoke("log-lines", &json!({"n": 50})).await;
        ok(&r);
        // "line" + "i" + the number: 10 lines of 6 bytes, then 5 of 7 fit in 100.
        assert_eq!(r.logs.len(), 15);
        assert_eq!(r.logs_dropped, 35);
        assert_eq!(r.logs[3].fields, vec![("i".to_string(), "3".to_string())]);
        assert_eq!(r.host_calls.total, 50);
    });
}

#[test]
fn limits_trap_and_the_same_runtime_serves_the_next_invocation() {
    let mut s = Sandbox::new();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        memory_bytes: 32 << 20,
        fuel: Some(2_000_000_000),
        ..Limits::default()
    };
    let probe = s.probe(Mode::ReadWrite, limits);
    rt().block_on(async {
        let attacks: Vec<(&str, Value, ExpectedError)> = vec![
            ("spin", json!({}), |e| {
                matches!(
                    e,
                    Error::Limit(LimitExceeded::Timeout(_)) | Error::Limit(LimitExceeded::Fuel { .. })
                )
            }),
            ("sleep-ms", json!({"ms": 60_000}), |e| {
                matches!(e, Error::Limit(LimitExceeded::Timeout(_)))
            }),
            (
                "allocate-mib",
                json!({"mib": 64}),
                |e| matches!(e, Error::Limit(LimitExceeded::Memory { limit }) if *limit == 32 << 20),
            ),
            ("recurse", json!({"depth": 1u64 << 40}), |e| {
                matches!(e, Error::Limit(LimitExceeded::StackOverflow))
            }),
            ("exit-with", json!({"code": 0}), |e| matches!(e, Error::Exited(0))),
            ("exit-with", json!({"code": 9}), |e| matches!(e, Error::Exited(_))),
            (
                "panic-with",
                json!({"message": "boom"}),
                |e| matches!(e, Error::Panicked(m) if m.contains("boom")),
            ),
        ];
        for (function, args, expected) in attacks {
            let started = std::time::Instant::now();
            let r = probe.invoke(function, &args).await;
            let err = r.outcome.as_ref().expect_err(function);
            assert!(expected(err), "{function}: unexpected {err:?}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{function} was not stopped promptly"
            );
            if !matches!(err, Error::Panicked(_)) {
                assert_eq!(err.exit_code(), 4, "{function}");
            }
            // The same process, runtime and action serve the next invocation.
            let next = probe.invoke("read-file", &json!({"path": "inside.txt"})).await;
            assert_eq!(ok(&next), &json!("hello"), "after {function}");
            let counter = probe.invoke("bump-counter", &json!({})).await;
            assert_eq!(ok(&counter), &json!(1), "after {function}: fresh instance state");
        }
    });
}

#[test]
fn no_state_carries_over_between_invocations() {
    let mut s = Sandbox::new();
    let probe = s.probe(Mode::ReadOnly, Limits::default());
    rt().block_on(async {
        for _ in 0..3 {
            assert_eq!(ok(&probe.invoke("bump-counter", &json!({})).await), &json!(1));
        }
    });
}

#[test]
fn fuel_is_metered_when_limited() {
    let mut s = Sandbox::new();
    let probe = s.probe(
        Mode::ReadOnly,
        Limits {
            fuel: Some(10_000_000),
            ..Limits::default()
        },
    );
    rt().block_on(async {
        let r = probe.invoke("bump-counter", &json!({})).await;
        ok(&r);
        let used = r.fuel_consumed.expect("metered");
        assert!(used > 0 && used < 10_000_000, "{used}");
        assert!(r.peak_memory_bytes > 0);
    });
}

#[test]
fn compiled_artifacts_are_cached_on_disk() {
    let data = tempfile::tempdir().unwrap();
    let settings = RuntimeSettings {
        data_dir: data.path().to_path_buf(),
        max_concurrent_instances: 2,
        store: Default::default(),
        audit: Default::default(),
    };
    let policy =
        |name: &str| ActionPolicy::ad_hoc(name, support::component("hello"), Grants::default(), Limits::default());
    let first = Runtime::new(&settings).unwrap().prepare(policy("a")).unwrap();
    assert!(!first.from_cache);
    let cached: Vec<_> = std::fs::read_dir(data.path().join("cache")).unwrap().collect();
    assert_eq!(cached.len(), 1);
    let second = Runtime::new(&settings).unwrap().prepare(policy("b")).unwrap();
    assert!(second.from_cache, "a second start skips compilation");
    let r = rt().block_on(second.invoke("greet", &json!({"who": {"name": "x", "languages": []}})));
    assert_eq!(ok(&r)["text"], "Hello, x!");
    assert!(Path::new(&data.path().join("cache")).is_dir());
}
