//! Shared setup for airlock's benchmarks. Run them with
//! `bash scripts/build-components.sh && cargo bench -p airlock-benches`.
//!
//! - [`component`]: where `scripts/build-components.sh` put a component.
//! - [`bare`]: the baseline every figure is a ratio to, bare wasmtime on
//!   airlock's engine settings.
//! - [`http1`]: the load generator's keep-alive HTTP/1.1 client.

use std::path::PathBuf;

pub mod bare;
pub mod http1;

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
