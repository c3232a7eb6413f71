//! Runner leases: which process runs which invocation, and whether that
//! process still lives.
//!
//! Every process that opens the audit log holds a lease: a file
//! `audit/runners/ID.lease` on which it keeps an exclusive `flock` for as
//! long as it has the log open. The kernel drops the lock when the process
//! ends, however it ends (exit, panic, SIGKILL), so another process that
//! can take the lock knows for certain that the lease's process is gone.
//! No pid is trusted: pids are reused, a lock is not. Start records
//! (`runner`) and status rows name the lease of the process that runs the
//! invocation, and recovery ([`super::recovery`]) closes only invocations
//! whose runner's lock it holds, so an invocation another live process
//! still runs is never touched.
//!
//! A lease is created under a temporary name, locked, and only then renamed
//! into place, so no one ever finds an unlocked lease of a live process.
//!
//! A lease also keeps a floor: a byte offset of the log before which its
//! process has nothing unsettled (no invocation whose closing record or
//! status row it has not finished writing). Recovery after the process
//! died reads the log from there, not from its beginning. The floor is
//! rewritten at most once per [`FLOOR_EVERY`]; an older floor only makes
//! recovery read more.
//!
//! A process that closes the log with nothing unsettled removes its lease;
//! one that leaves an invocation unsettled (a task dropped mid-run, a
//! closing record that could not be written) leaves it for recovery.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The directory of leases, inside the audit directory.
pub const RUNNERS_DIR: &str = "runners";
/// A lease file's name: `ID` and this suffix.
const SUFFIX: &str = ".lease";
/// A lease being created: `.ID` and this suffix (never read as a lease).
const NEW_SUFFIX: &str = ".new";
/// Longest time between two rewrites of a busy process's floor.
pub const FLOOR_EVERY: Duration = Duration::from_secs(1);

/// This process's lease on one audit directory.
pub struct Lease {
    id: String,
    path: PathBuf,
    /// Holds the lock for as long as the lease lives.
    file: File,
    /// The log, for its current length.
    log: File,
    pid: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Floors of unsettled invocations (a multiset: floor → count).
    open: BTreeMap<u64, usize>,
    /// An invocation was dropped unsettled: recovery must look at it once
    /// this process is gone (its floor stays in `open`).
    abandoned: bool,
    /// Tracked invocations not yet settled or dropped.
    in_flight: usize,
    written: u64,
    written_at: Option<Instant>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The file's contents: fixed width, so a rewrite is one `pwrite` of the
/// same length (a process killed mid-rewrite cannot tear it).
fn contents(pid: u32, floor: u64) -> String {
    format!("airlock runner lease\npid {pid:010}\nfloor {floor:020}\n")
}

/// The floor a lease file names; `None` if it does not parse (recovery then
/// reads the whole log).
fn parse_floor(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("floor "))
        .and_then(|f| f.trim().parse().ok())
}

fn runners_dir(audit_dir: &Path) -> PathBuf {
    audit_dir.join(RUNNERS_DIR)
}

/// The path of lease `id` in `audit_dir`.
pub fn path_of(audit_dir: &Path, id: &str) -> PathBuf {
    runners_dir(audit_dir).join(format!("{id}{SUFFIX}"))
}

/// A lease id: pid (for people reading the log) and 48 random bits (so a
/// reused pid never names an earlier process's lease).
fn new_id() -> String {
    let mut nonce = [0u8; 6];
    if getrandom::fill(&mut nonce).is_err() {
        nonce.copy_from_slice(&crate::time::now_micros().to_be_bytes()[2..]);
    }
    format!("{}-{}", std::process::id(), super::chain::hex(&nonce))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Lease {
    /// Take a new lease in `audit_dir` for this process; `log` is the log
    /// file (its length is the first floor).
    pub fn acquire(audit_dir: &Path, log: File) -> std::io::Result<Arc<Lease>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = runners_dir(audit_dir);
        crate::data_dir::create_private_dir(&dir)?;
        let id = new_id();
        let new = dir.join(format!(".{id}{NEW_SUFFIX}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&new)?;
        let locked = file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => std::io::Error::other("a new lease file is locked by someone else"),
        });
        let floor = log.metadata().map_or(0, |m| m.len());
        let pid = std::process::id();
        let path = path_of(audit_dir, &id);
        let made = locked
            .and_then(|()| file.write_all_at(contents(pid, floor).as_bytes(), 0))
            .and_then(|()| std::fs::rename(&new, &path))
            // The name must survive a power failure as long as the start
            // records naming it do.
            .and_then(|()| sync_dir(&dir));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&new);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Arc::new(Lease {
            id,
            path,
            file,
            log,
            pid,
            state: Mutex::new(State {
                written: floor,
                ..State::default()
            }),
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters: a poisoned lock still holds valid ones.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_len(&self) -> u64 {
        self.log.metadata().map_or(0, |m| m.len())
    }

    /// Note an invocation about to write its first record; it stays
    /// unsettled until [`Tracked::settle`].
    pub fn track(self: &Arc<Self>) -> Tracked {
        // Its records go after everything in the log now.
        let floor = self.log_len();
        {
            let mut state = self.state();
            *state.open.entry(floor).or_default() += 1;
            state.in_flight += 1;
        }
        Tracked {
            lease: Some(self.clone()),
            floor,
        }
    }

    /// Rewrite the floor if it moved and the last rewrite is
    /// [`FLOOR_EVERY`] old (or `now`).
    pub fn refresh(&self, now: bool) {
        let mut state = self.state();
        if !now && state.written_at.is_some_and(|t| t.elapsed() < FLOOR_EVERY) {
            return;
        }
        let floor = match state.open.first_key_value() {
            Some((&floor, _)) => floor,
            None => self.log_len(),
        };
        if floor == state.written {
            return;
        }
        state.written_at = Some(Instant::now());
        if self.file.write_all_at(contents(self.pid, floor).as_bytes(), 0).is_ok() {
            state.written = floor;
        }
    }

    /// Invocations of this process tracked and not yet settled (or
    /// dropped): what a graceful stop waits for.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    /// The log handle is closing: a lease with nothing unsettled is
    /// removed; one with unsettled invocations is left (its lock goes with
    /// the process) for recovery.
    pub fn release(&self) {
        let state = self.state();
        if state.open.is_empty() && !state.abandoned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An unsettled invocation of this process (see [`Lease::track`]).
#[must_use = "an invocation dropped unsettled is left for recovery"]
pub struct Tracked {
    lease: Option<Arc<Lease>>,
    floor: u64,
}

impl Tracked {
    /// Its closing record and status row are written: recovery never needs
    /// to look at it.
    pub fn settle(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.untrack(self.floor, true);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.untrack(self.floor, false);
        }
    }
}

impl Lease {
    fn untrack(&self, floor: u64, settled: bool) {
        {
            let mut state = self.state();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        if !settled {
            // Its start may be in the log with no close, and only recovery
            // after this process ends can close it: it keeps holding the
            // floor down, so that recovery reads from before it.
            self.state().abandoned = true;
            return;
        }
        {
            let mut state = self.state();
            if let Some(n) = state.open.get_mut(&floor) {
                *n -= 1;
                if *n == 0 {
                    state.open.remove(&floor);
                }
            }
        }
        self.refresh(false);
    }
}

/// The lease of a process that has ended, locked by this process (so no
/// other recovery takes it at the same time) until [`DeadLease::remove`].
#[derive(Debug)]
pub struct DeadLease {
    pub id: String,
    /// Where recovery must start reading the log; `None`: the beginning.
    pub floor: Option<u64>,
    path: PathBuf,
    _lock: File,
}

impl DeadLease {
    /// Everything the process left is settled: the lease goes.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// What the leases in `audit_dir` say, besides `own`.
#[derive(Debug, Default)]
pub struct Census {
    /// Leases whose process has ended.
    pub dead: Vec<DeadLease>,
    /// Ids of leases whose process still runs.
    pub alive: Vec<String>,
}

/// How old a half-made lease file must be before another process removes
/// it; making one takes microseconds.
const HALF_MADE_STALE: std::time::Duration = std::time::Duration::from_secs(60);

/// Look at every lease but `own`: each one whose lock can be taken belongs
/// to a process that has ended. Half-made leases of ended processes are
/// removed on the way.
pub fn census(audit_dir: &Path, own: &str) -> std::io::Result<Census> {
    let dir = runners_dir(audit_dir);
    let mut census = Census::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(census),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (id, half_made) = match (name.strip_suffix(SUFFIX), name.strip_suffix(NEW_SUFFIX)) {
            (Some(id), _) => (id, false),
            (None, Some(new)) => (new.trim_start_matches('.'), true),
            _ => continue,
        };
        if id == own {
            continue;
        }
        let path = entry.path();
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // Removed meanwhile (its process closed it, or another
            // recovery took it over).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                if !half_made {
                    census.alive.push(id.to_string());
                }
                continue;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        if half_made {
            // A process that is making its lease holds no lock between
            // creating the file and locking it: only one left half-made
            // for a while belongs to a process that ended before the lease
            // was in place (and nothing can name it). Removing a fresh one
            // made another process's lease fail at its rename.
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= HALF_MADE_STALE);
            if stale {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let mut text = String::new();
        let floor = (&file).read_to_string(&mut text).ok().and_then(|_| parse_floor(&text));
        census.dead.push(DeadLease {
            id: id.to_string(),
            floor,
            path,
            _lock: file,
        });
    }
    Ok(census)
}

/// Whether lease `id` names a process that may still run: its file exists
/// and is locked. A missing file means its process closed it with nothing
/// unsettled or recovery took it over, so either way it runs nothing.
pub fn may_run(audit_dir: &Path, id: &str) -> bool {
    let Ok(file) = File::open(path_of(audit_dir, id)) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        // Cannot tell: assume it runs (never close a live invocation).
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_file(dir: &Path, len: usize) -> File {
        let path = dir.join("audit.log");
        std::fs::write(&path, vec![b'x'; len]).unwrap_or_default();
        File::open(path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_held_lease_is_alive_and_a_dropped_one_is_dead_with_its_floor() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let a = Lease::acquire(dir, log_file(dir, 100))?;
        let b = Lease::acquire(dir, log_file(dir, 100))?;
        assert_ne!(a.id(), b.id());
        // Each sees the other alive (the lock is per open file, so this
        // holds within one process as between two).
        let seen = census(dir, a.id())?;
        assert!(seen.dead.is_empty() && seen.alive == [b.id().to_string()], "{seen:?}");
        assert!(may_run(dir, b.id()));
        // b leaves an invocation unsettled, then its handle goes (as when
        // its process is killed): its lease stays, unlocked.
        let tracked = b.track();
        drop(tracked);
        b.release();
        let b_id = b.id().to_string();
        drop(b);
        assert!(!may_run(dir, &b_id));
        let seen = census(dir, a.id())?;
        assert_eq!(seen.dead.len(), 1, "{seen:?}");
        assert_eq!(seen.dead[0].id, b_id);
        assert_eq!(seen.dead[0].floor, Some(100));
        // Taken over: no other census sees it while it is held.
        let again = census(dir, "someone-else")?;
        assert!(again.dead.iter().all(|d| d.id != b_id), "{again:?}");
        for d in seen.dead {
            d.remove()?;
        }
        assert!(!path_of(dir, &b_id).exists());
        // A lease with nothing unsettled is removed at release.
        let t = a.track();
        t.settle();
        a.release();
        assert!(!path_of(dir, a.id()).exists());
        Ok(())
    }

    #[test]
    fn the_floor_follows_the_oldest_unsettled_invocation() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let lease = Lease::acquire(dir, log_file(dir, 10))?;
        let floor =
            || -> std::io::Result<Option<u64>> { Ok(parse_floor(&std::fs::read_to_string(path_of(dir, lease.id()))?)) };
        let first = lease.track();
        log_file(dir, 500);
        let second = lease.track();
        log_file(dir, 900);
        lease.refresh(true);
        assert_eq!(floor()?, Some(10), "the oldest unsettled invocation holds it");
        first.settle();
        lease.refresh(true);
        assert_eq!(floor()?, Some(500));
        second.settle();
        lease.refresh(true);
        assert_eq!(floor()?, Some(900), "nothing unsettled: the end of the log");
        // One dropped unsettled holds the floor for good: recovery must
        // read from before it once this process is gone.
        let dropped = lease.track();
        log_file(dir, 1200);
        drop(dropped);
        lease.refresh(true);
        assert_eq!(floor()?, Some(900));
        lease.release();
        assert!(
            path_of(dir, lease.id()).exists(),
            "a lease with an unsettled invocation stays"
        );
        // A half-made lease is left alone while it may still be in the
        // making (its process locks it only after creating it), and cleared
        // away once it is stale.
        let half = dir.join(RUNNERS_DIR).join(".1-abc.new");
        std::fs::write(&half, b"")?;
        let seen = census(dir, lease.id())?;
        assert!(seen.dead.is_empty() && seen.alive.is_empty(), "{seen:?}");
        assert!(half.exists(), "a fresh half-made lease was removed");
        let old = std::time::SystemTime::now() - HALF_MADE_STALE * 2;
        std::fs::File::options().write(true).open(&half)?.set_modified(old)?;
        let seen = census(dir, lease.id())?;
        assert!(seen.dead.is_empty() && seen.alive.is_empty(), "{seen:?}");
        assert!(!half.exists());
        Ok(())
    }
}
