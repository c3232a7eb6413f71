//! Component bytes: what `airlock inspect` and loading do with a file an
//! author or an attacker hands over. Each input is compiled by the same
//! engine the runtime builds (validation, then Cranelift), its manifest is
//! read (import classification against the catalog, function signatures,
//! the embedded WIT, signatures), every function's JSON Schema is derived,
//! and the manifest is compared with the previous input's, as
//! `airlock diff` does.
//!
//! Beyond "no panic": a component that compiled has a manifest whose
//! digest is the input's, whose JSON rendering is an object, and whose
//! diff against itself is empty.
#![no_main]

use airlock::action::compile_bytes;
use airlock::cache::ArtifactCache;
use airlock::manifest::Manifest;
use airlock::manifest::diff::ComponentDiff;
use airlock::policy::Policy;
use airlock::values::schema;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

static ENGINE: LazyLock<wasmtime::Engine> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("airlock.toml");
    let policy = Policy::parse("", &config).expect("the empty config is valid");
    airlock::engine::build(&policy.runtime).expect("the runtime's engine builds")
});

/// The manifest of the last input that compiled, to diff the next against.
static LAST: Mutex<Option<Manifest>> = Mutex::new(None);

// The setup runs before the first input, not inside it (where it would
// count against libFuzzer's -timeout).
fuzz_target!(init: { LazyLock::force(&ENGINE); }, |data: &[u8]| {
    let cache = ArtifactCache::disabled();
    let Ok((bytes, _component, manifest, from_cache)) =
        compile_bytes(&ENGINE, &cache, Path::new("fuzz.wasm"), data.to_vec())
    else {
        return;
    };
    assert!(!from_cache, "a disabled cache never answers");
    assert_eq!(bytes, data);
    assert_eq!(manifest.digest, airlock::policy::Digest::of(data));
    assert_eq!(manifest.size, data.len() as u64);
    assert!(manifest.to_json().is_object());
    let _ = manifest.render();
    for f in &manifest.functions {
        let _ = f.unsupported();
        for (_, ty) in &f.params {
            let _ = schema(ty);
        }
        if let Some(ty) = &f.result {
            let _ = schema(ty);
        }
    }
    assert!(ComponentDiff::between(&manifest, &manifest).is_empty());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(old) = last.as_ref() {
        let diff = ComponentDiff::between(old, &manifest);
        let _ = diff.to_json(None);
        let _ = diff.render(None);
    }
    *last = Some(manifest);
});
