//! The log file itself: one open handle per path in a process, the
//! advisory lock processes append under, and syncing its directory.

use super::*;

/// Logs open in this process, so two runtimes on one data directory share
/// a writer instead of waiting on each other's file lock.
pub(super) fn open_logs() -> &'static Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<Inner>>> {
    static OPEN: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<Inner>>>> =
        std::sync::OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// fsync a directory, so names created in it are durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How long to wait for another process to release the log.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The first and the longest pause between two tries for the log's lock.
/// Another process holds it for one group: a write and a sync (about a
/// millisecond or less on a local disk; longer with a slow disk, the
/// PostgreSQL backend, or a checkpoint). A fixed 2 ms pause made each
/// group of a process that found the lock taken wait 2 ms or more, and
/// with an `airlock mcp` per agent on one data directory, that was most of
/// their latency. The cap is short too, so a process that has waited long
/// tries about as often as one that has just begun to.
const LOCK_PAUSE_FIRST: std::time::Duration = std::time::Duration::from_micros(20);
const LOCK_PAUSE_MAX: std::time::Duration = std::time::Duration::from_micros(200);

/// Take the exclusive lock on the log file, waiting up to [`LOCK_WAIT`]
/// for another process to finish its group (trying again after a pause
/// that doubles from [`LOCK_PAUSE_FIRST`] to [`LOCK_PAUSE_MAX`]).
pub(super) fn lock_file(file: &File) -> Result<(), String> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = LOCK_PAUSE_FIRST;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(LOCK_PAUSE_MAX);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another airlock process has held it for {} s; wait for it to finish",
                    LOCK_WAIT.as_secs()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock: {e}")),
        }
    }
}
