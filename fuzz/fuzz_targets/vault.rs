//! The vault file: arbitrary bytes as `vault.json`, opened with a fixed
//! master key (the seeds in the corpus were written with it, so the fuzzer
//! starts past decryption). Every secret it lists is read: a tampered
//! sealed value is an error, never a panic.
#![no_main]

use airlock::vault::{VAULT_FILE, Vault};
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::LazyLock;

/// The seeds' key: `scripts/fuzz.sh seed` writes the vault seeds with it.
pub const KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = dir.path().join("master.key");
    std::fs::write(&key, format!("{KEY}\n")).expect("the key file");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("0600");
    dir
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(DIR.path().join(VAULT_FILE), data).expect("the vault file");
    let Ok(vault) = Vault::open(DIR.path()) else {
        return;
    };
    for info in vault.list() {
        let _ = vault.get(&info.name);
    }
});
