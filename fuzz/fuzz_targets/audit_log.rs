//! The audit reader and recovery: arbitrary bytes as `audit.log` (torn
//! tails, bad lines, broken chains) and, after a `\0\0CHECKPOINTS\0\0`
//! separator, as `checkpoints.jsonl`, next to a fixed checkpoint key (the
//! seeds were written with it, so the fuzzer starts from valid chains).
//!
//! Beyond "no panic": verifying is deterministic, and a log that recovery
//! opened once opens again (recovery leaves a log it accepts).
#![no_main]

use airlock::audit::log::{AuditLog, CHECKPOINTS_FILE, KEY_FILE, LOG_FILE};
use airlock::audit::read::{scan, verify};
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A throw-away key, used for nothing but these seeds.
const KEY: &[u8] = include_bytes!("../keys/checkpoint.key");
const SEPARATOR: &[u8] = b"\0\0CHECKPOINTS\0\0";

static ROOT: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("a temporary directory"));
static NEXT: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let (log, checkpoints) = match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(at) => (&data[..at], Some(&data[at + SEPARATOR.len()..])),
        None => (data, None),
    };
    // A directory per input: a process opens each log once and shares it.
    let dir = ROOT.path().join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir(&dir).expect("a log directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("0700");
    let key = dir.join(KEY_FILE);
    std::fs::write(&key, KEY).expect("the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("0600");
    std::fs::write(dir.join(LOG_FILE), log).expect("the log");
    if let Some(c) = checkpoints {
        std::fs::write(dir.join(CHECKPOINTS_FILE), c).expect("the checkpoints");
    }
    let first = verify(&dir, None).map(|v| format!("{v:?}")).map_err(|e| e.to_string());
    let second = verify(&dir, None).map(|v| format!("{v:?}")).map_err(|e| e.to_string());
    assert_eq!(first, second, "verifying the same log twice differs");
    let mut records = 0u64;
    let _ = scan(&dir, |_, _| {
        records += 1;
        records < 100_000
    });
    if let Ok(opened) = AuditLog::open(&dir) {
        drop(opened);
        if let Err(e) = AuditLog::open(&dir) {
            panic!("a log recovery opened does not open again: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
