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

/// Take the exclusive lock on the log file, waiting up to [`LOCK_WAIT`]
/// for another process to finish its group.
pub(super) fn lock_file(file: &File) -> Result<(), String> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
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
