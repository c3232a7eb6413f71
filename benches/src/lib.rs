//! Shared setup for airlock's benchmarks. Run them with
//! `bash scripts/build-components.sh && cargo bench -p airlock-benches`.

use std::path::PathBuf;

/// Path of a component built by `scripts/build-components.sh`.
pub fn component(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-components.sh first",
        path.display()
    );
    path
}
