//! Shared setup for airlock's benchmarks. Run them with
//! `bash scripts/build-components.sh && cargo bench -p airlock-benches`.
//!
//! - [`component`]: where `scripts/build-components.sh` put a component.
//! - [`bare`]: the baseline every figure is a ratio to, bare wasmtime on
//!   airlock's engine settings.
//! - [`http1`]: the load generator's keep-alive HTTP/1.1 client.
//! - [`flood`]: slow-client floods for `loadgen flood`.
//! - [`pg`]: a throw-away PostgreSQL server for `loadgen store`,
//!   `cluster` and `lookup`; [`cpu`]: where the cores went meanwhile.

use airlock::action::PreparedAction;
use airlock::capabilities::Grants;
use airlock::capabilities::log::LogGrant;
use airlock::policy::{ActionPolicy, Limits, RuntimeSettings};
use airlock::runtime::Runtime;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod bare;
pub mod cpu;
pub mod flood;
pub mod http1;
pub mod pg;

/// The target directory (`CARGO_TARGET_DIR`, else the workspace's).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Path of a component built by `scripts/build-components.sh`.
pub fn component(name: &str) -> PathBuf {
    let path = target_dir().join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-components.sh first",
        path.display()
    );
    path
}

/// An action prepared by a runtime of its own.
pub struct Airlock {
    /// Kept for the life of the benchmark: it owns the audit log.
    pub runtime: Runtime,
    pub action: Arc<PreparedAction>,
}

/// The bench component as airlock runs it in the benchmarks: `log`
/// granted, in a fresh data directory.
pub fn airlock_bench_action(settings: &RuntimeSettings) -> Airlock {
    let grants = Grants {
        log: Some(LogGrant),
        ..Grants::default()
    };
    airlock_action(settings, "bench_component", grants)
}

/// Component `name` prepared by a runtime of its own with `grants` and a
/// log cap no benchmark reaches.
pub fn airlock_action(settings: &RuntimeSettings, name: &str, grants: Grants) -> Airlock {
    let mut runtime = Runtime::new(settings).expect("a runtime on the benchmark's data directory");
    let limits = Limits {
        max_log_bytes: 1 << 30,
        ..Limits::default()
    };
    let action = runtime
        .prepare(ActionPolicy::ad_hoc(name, component(name), grants, limits))
        .expect("the component prepares");
    Airlock { runtime, action }
}

/// What the in-process benchmarks share: a multi-threaded tokio runtime, a
/// fresh data directory, airlock's bench action and bare wasmtime on the
/// same component and engine settings.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    pub data: tempfile::TempDir,
    pub settings: RuntimeSettings,
    pub airlock: Airlock,
    pub bare: bare::BareHost,
}

impl InProcess {
    pub fn new() -> InProcess {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let data = tempfile::tempdir().expect("a temporary data directory");
        let settings = RuntimeSettings {
            data_dir: data.path().to_path_buf(),
            max_concurrent_instances: 32,
            store: Default::default(),
            audit: Default::default(),
        };
        let airlock = airlock_bench_action(&settings);
        let bare = bare::BareHost::new(&settings, &component("bench_component")).expect("bare wasmtime");
        InProcess {
            rt,
            data,
            settings,
            airlock,
            bare,
        }
    }
}

impl Default for InProcess {
    fn default() -> InProcess {
        InProcess::new()
    }
}

/// The least that durability costs: one 400-byte append and `fdatasync`
/// of a file in `dir` (the audit log's directory, so the same disk), each
/// time the returned function is called.
pub fn fsync_baseline(dir: &Path) -> impl FnMut() {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-baseline"))
        .expect("the fsync baseline's file");
    let record = [b'x'; 400];
    move || {
        file.write_all(&record).expect("append");
        file.sync_data().expect("fdatasync");
    }
}
