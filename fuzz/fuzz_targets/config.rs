//! The config file and Cedar policy files: arbitrary text parsed and
//! validated as `airlock.toml` (in a directory of its own, so relative
//! paths it names resolve there) and as a policy file.
#![no_main]

use airlock::policy::Policy;
use airlock::policy::source::{Groups, parse};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("a temporary directory"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = DIR.path().join("airlock.toml");
    if let Err(e) = Policy::parse(text, &path) {
        // Errors are one line and name the file.
        let message = e.to_string();
        assert!(!message.is_empty());
    }
    let _ = parse("fuzz.cedar", text, &Groups::new());
});
