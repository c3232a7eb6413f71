//! What the targets that serve actions share: the example component, a
//! service started from a config, and tokens for it.

use airlock::identity::IdentityKind;
use airlock::service::Service;
use std::sync::Arc;

/// The `hello` example's component, as a TOML string (built by
/// scripts/build-components.sh, which scripts/fuzz.sh runs).
pub fn hello_component() -> String {
    let dir = std::env::var_os("AIRLOCK_FUZZ_COMPONENTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip2/release").into());
    let hello = dir.join("hello.wasm");
    assert!(
        hello.exists(),
        "{} is missing: run scripts/build-components.sh (scripts/fuzz.sh does)",
        hello.display()
    );
    format!("{:?}", hello.display().to_string())
}

/// The service `config` (an `airlock.toml`) describes, in a directory of
/// its own that lives as long as the returned guard.
pub fn start(config: &str) -> (tempfile::TempDir, Arc<Service>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("airlock.toml");
    std::fs::write(&path, config).expect("write the config");
    let policy = airlock::policy::Policy::load(&path).expect("the fuzz config loads");
    (dir, Arc::new(Service::load(policy).expect("the service starts")))
}

/// A new token for identity `name`.
pub fn token(service: &Service, name: &str, kind: IdentityKind, roles: &[&str]) -> String {
    let store = service.runtime.store().expect("the store opens");
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let (minted, _) = airlock::identity::create_token(store.as_ref(), name, kind, &roles).expect("a token is made");
    minted.value.as_str().to_string()
}
