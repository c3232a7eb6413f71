//! The append-only audit log and its writer thread.
//!
//! Appends join one queue. Whoever holds the writer commits everything
//! queued in one `write` and one `fdatasync` before acknowledging any
//! durable append in it (group commit: concurrent invocations share
//! fsyncs). A durable append that finds the writer free commits the queue
//! itself, on its own thread (no hand-off to another thread and back: a
//! lone invocation pays its sync and little else); otherwise it waits in
//! the queue for the writer thread, which commits whatever gathered while
//! the writer was busy, and which also writes queued (non-durable) records
//! and the periodic checkpoints.
//!
//! Fail closed: when a write or sync fails, the partial group is cut off
//! again (the file is truncated to its last good length), every append in
//! the group gets the error, and [`AuditLog::is_healthy`] turns false, so
//! callers refuse new work. The next append tries again, so the log heals
//! by itself once the disk does.
//!
//! Several processes may append to one log (an agent's invocation waiting
//! for approval while a reviewer's `airlock approvals approve` records the
//! decision): each group is written under an exclusive `flock` on the
//! file, and a writer that finds the file longer than it left it first
//! reads the new head from the tail, so the chain stays one chain.
//!
//! Each process with the log open holds a runner lease on it
//! ([`super::lease`]): its start records name the lease, and once the
//! process is gone, recovery ([`super::recovery`]) closes what it left open.
//!
//! Here: the public face (`AuditLog`: open, append, checkpoint) and the
//! state its callers share. By job: `writer` (group commit, the writer
//! thread, rolling a failed group back), `tail` (cutting the torn tail a
//! crash left), `checkpoints` (when and how they are signed, reading the
//! last one back), `file` (one handle per path, the append lock, syncing
//! the directory).

mod checkpoints;
mod file;
mod tail;
mod writer;

use checkpoints::*;
use file::*;
use tail::*;
use writer::*;
pub use writer::{EAGER_BATCH, LAZY_COMMIT};

use super::chain::{self, GENESIS};
use super::checkpoint::{Checkpoint, CheckpointKey};
use super::encode::{EncodedCalls, LineEncoder};
use super::event::{Event, Recovered};
use super::lease::{Lease, Tracked};
use super::pg::mirror::Mirror;
use super::settings::Backend;
use crate::time::{now_micros, stamp};
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

pub const LOG_FILE: &str = "audit.log";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const KEY_FILE: &str = "checkpoint.key";
/// A signed checkpoint is written after this many records (and at close),
/// at most one per [`CHECKPOINT_MIN_GAP`].
pub const CHECKPOINT_EVERY: u64 = 1000;
/// Shortest time between two checkpoints signed for [`CHECKPOINT_EVERY`]:
/// a busy log signs (and syncs) one a second, not one per thousand records,
/// so signing costs time rather than a share of every record.
pub const CHECKPOINT_MIN_GAP: std::time::Duration = std::time::Duration::from_secs(1);
/// A quiet log still gets a checkpoint of its newest records after this
/// long, so a crash of an idle service loses no more than this much of the
/// signed history (the records themselves are on disk either way).
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the audit log could not take a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {reason}; nothing runs until it can be written again")]
    Unavailable { path: String, reason: String },
    #[error("audit log {path}: {reason}")]
    Open { path: String, reason: String },
}

/// What one append writes, all or nothing, in order: host-call records
/// encoded ahead by the invocation that made them, then events.
#[derive(Debug, Default)]
pub struct Records {
    pub calls: EncodedCalls,
    pub events: Vec<Event>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.calls.len() + self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<Event>> for Records {
    fn from(events: Vec<Event>) -> Records {
        Records {
            calls: EncodedCalls::default(),
            events,
        }
    }
}

impl From<EncodedCalls> for Records {
    fn from(calls: EncodedCalls) -> Records {
        Records {
            calls,
            events: Vec::new(),
        }
    }
}

enum Request {
    Append {
        events: Records,
        /// Sync before acknowledging.
        sync: bool,
        /// Refuse the append if a write failed since this epoch (records
        /// it depends on were cut off).
        expect_epoch: Option<u64>,
        ack: Option<Ack>,
    },
    Checkpoint {
        ack: mpsc::SyncSender<Result<Option<Checkpoint>, AuditError>>,
    },
}

struct Shared {
    healthy: AtomicBool,
    /// Bumped on every failed write: unsynced records written before it
    /// were cut off, so work that depended on them must not be acknowledged.
    epoch: std::sync::atomic::AtomicU64,
    /// Syncs issued, and durable appends they covered (group commit).
    syncs: std::sync::atomic::AtomicU64,
    durable_appends: std::sync::atomic::AtomicU64,
    /// Test hook: when set, writes fail with this error kind.
    fault: Mutex<Option<std::io::ErrorKind>>,
    /// Catch-ups that had to read the log's last window again (what
    /// others appended did not simply continue this writer's chain).
    #[cfg(test)]
    tail_rereads: std::sync::atomic::AtomicU64,
}

/// Handle on the audit log of one data directory. Cloning shares the
/// writer; within a process, every open of the same directory shares it
/// too. The last handle to go writes a closing checkpoint.
#[derive(Clone)]
pub struct AuditLog(Arc<Inner>);

struct Inner {
    pipeline: Arc<Pipeline>,
    digest_key: zeroize::Zeroizing<[u8; 32]>,
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This process's runner lease on the log.
    lease: Arc<Lease>,
    /// The node id the log is kept under in PostgreSQL, if it is.
    node: Option<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The closing checkpoint, then the thread ends.
        let (ack, done) = mpsc::sync_channel(1);
        if self.push(Request::Checkpoint { ack }, true).is_ok() {
            let _ = done.recv();
        }
        self.pipeline.queue().closed = true;
        self.pipeline.ready.notify_all();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        self.lease.release();
    }
}

impl Inner {
    /// Queue `request`; an `urgent` one wakes the writer thread at once.
    fn push(&self, request: Request, urgent: bool) -> Result<(), ()> {
        self.push_as(request, if urgent { Wake::Now } else { Wake::Soon })
    }

    fn push_as(&self, request: Request, wake: Wake) -> Result<(), ()> {
        let mut queue = self.pipeline.queue();
        if queue.closed {
            return Err(());
        }
        let was_empty = queue.requests.is_empty();
        queue.requests.push(request);
        // The thread sleeps until the checkpoint is due while the queue is
        // empty: the first request wakes it (to wait LAZY_COMMIT for
        // company, or to commit at once if urgent), unless its caller
        // takes care of that itself.
        let urgent = wake == Wake::Now;
        let wake = (urgent && !queue.urgent) || (was_empty && wake == Wake::Soon);
        queue.urgent |= urgent;
        drop(queue);
        if wake {
            self.pipeline.ready.notify_one();
        }
        Ok(())
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.0.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open (or create) the log in `dir`, repairing a torn tail, and start
    /// its writer. Every group of records is written under an exclusive
    /// lock on the file, so processes never interleave records.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        Self::open_with_interval(dir, CHECKPOINT_INTERVAL)
    }

    /// [`AuditLog::open`] with the records also kept where `backend` says
    /// (with [`Backend::Postgres`], a group is acknowledged only once it
    /// is in PostgreSQL too: see [`super::pg`]). Within a process, a data
    /// directory's log is opened once: a second open shares the first.
    pub fn open_backend(dir: &Path, backend: &Backend) -> Result<AuditLog, AuditError> {
        Self::open_backend_with_interval(dir, backend, CHECKPOINT_INTERVAL)
    }

    /// [`AuditLog::open`] with a checkpoint interval of its own (tests).
    #[doc(hidden)]
    pub fn open_with_interval(dir: &Path, checkpoint_interval: std::time::Duration) -> Result<AuditLog, AuditError> {
        Self::open_backend_with_interval(dir, &Backend::File, checkpoint_interval)
    }

    /// [`AuditLog::open_backend`] with a checkpoint interval of its own
    /// (tests).
    #[doc(hidden)]
    pub fn open_backend_with_interval(
        dir: &Path,
        backend: &Backend,
        checkpoint_interval: std::time::Duration,
    ) -> Result<AuditLog, AuditError> {
        Self::open_as(dir, backend, checkpoint_interval, true)
    }

    /// A handle of its own on the log, as another process would open it
    /// (tests of several writers taking turns).
    #[cfg(test)]
    fn open_unshared(dir: &Path) -> Result<AuditLog, AuditError> {
        Self::open_as(dir, &Backend::File, CHECKPOINT_INTERVAL, false)
    }

    /// Open the log; with `share`, a handle this process already has on it
    /// is shared, and this one is shared from now on.
    fn open_as(
        dir: &Path,
        backend: &Backend,
        checkpoint_interval: std::time::Duration,
        share: bool,
    ) -> Result<AuditLog, AuditError> {
        let path = dir.join(LOG_FILE);
        let open_err = |reason: String| AuditError::Open {
            path: path.display().to_string(),
            reason,
        };
        crate::data_dir::create_private_dir(dir).map_err(|e| open_err(format!("cannot create its directory: {e}")))?;
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut registry = open_logs().lock().unwrap_or_else(|p| p.into_inner());
        if share && let Some(inner) = registry.get(&canonical).and_then(std::sync::Weak::upgrade) {
            return Ok(AuditLog(inner));
        }
        let key = CheckpointKey::load_or_create(&dir.join(KEY_FILE)).map_err(&open_err)?;
        let digest_key = key.digest_key();
        let existed = path.exists();
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| open_err(e.to_string()))?
        };
        if !existed {
            // The new file's name must survive a crash too, not only what
            // is written into it.
            sync_dir(dir).map_err(|e| open_err(format!("cannot sync its directory: {e}")))?;
        }
        lock_file(&file).map_err(&open_err)?;
        let tail = recover_tail(&mut file, dir);
        let tail = match tail {
            Ok(t) => t,
            Err(e) => {
                let _ = file.unlock();
                return Err(open_err(e));
            }
        };
        // With PostgreSQL: the node registered, and its chain there
        // brought up to this log's tail (or the open refused), before
        // anything new is written.
        let mirror = match backend {
            Backend::File => None,
            Backend::Postgres { pg, node } => {
                let opened = super::pg::mirror::resolve_node(dir, node.as_deref()).and_then(|node| {
                    Mirror::open(
                        pg,
                        dir,
                        &node,
                        &key.public_hex(),
                        &file,
                        tail.good_len,
                        tail.next_seq,
                        tail.head,
                    )
                });
                match opened {
                    Ok(m) => Some(m),
                    Err(e) => {
                        let _ = file.unlock();
                        return Err(open_err(e));
                    }
                }
            }
        };
        let node = mirror.as_ref().map(|m| m.node().to_string());
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            epoch: std::sync::atomic::AtomicU64::new(0),
            syncs: std::sync::atomic::AtomicU64::new(0),
            durable_appends: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            tail_rereads: std::sync::atomic::AtomicU64::new(0),
            fault: Mutex::new(None),
        });
        repair_checkpoints(&dir.join(CHECKPOINTS_FILE));
        let mut writer = Writer {
            file,
            synced_len: tail.good_len,
            synced_seq: tail.next_seq,
            synced_head: tail.head,
            poisoned: false,
            good_len: tail.good_len,
            next_seq: tail.next_seq,
            head: tail.head,
            last_checkpoint_seq: last_checkpoint_seq(&dir.join(CHECKPOINTS_FILE)),
            checkpoint_interval,
            last_checkpoint_at: std::time::Instant::now(),
            checkpoint_failed_at: None,
            key,
            checkpoints: dir.join(CHECKPOINTS_FILE),
            dir: dir.to_path_buf(),
            path: path.clone(),
            shared: shared.clone(),
            locked: true,
            recovered: None,
            encoder: LineEncoder::default(),
            buf: Vec::new(),
            sleeps_until: None,
            mirror,
        };
        if tail.truncated > 0 {
            let event = Event::Recovered(Recovered {
                truncated_bytes: tail.truncated,
                last_good_seq: tail.next_seq.checked_sub(1),
                reason: tail.reason,
            });
            tracing::warn!(target: "airlock::audit", truncated_bytes = tail.truncated, "audit log had a torn tail; repaired");
            let written = writer
                .write_group(&mut [(vec![event].into(), true, None)])
                .into_iter()
                .next()
                .transpose();
            if let Err(e) = written {
                let _ = writer.file.unlock();
                return Err(open_err(e.to_string()));
            }
        }
        writer.unlock();
        // Without a lease nothing may start: no one could close what this
        // process left open if it died. (A full disk lands here.)
        let lease = File::open(&path)
            .and_then(|log| Lease::acquire(dir, log))
            .map_err(|e| AuditError::Unavailable {
                path: path.display().to_string(),
                reason: format!("cannot take a runner lease in {}: {e}", dir.display()),
            })?;
        let pipeline = Arc::new(Pipeline {
            wakeups: std::sync::atomic::AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            ready: std::sync::Condvar::new(),
            writer: Mutex::new(writer),
        });
        let thread = {
            let pipeline = pipeline.clone();
            std::thread::Builder::new()
                .name("airlock-audit".into())
                .spawn(move || pipeline.run())
                .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?
        };
        let inner = Arc::new(Inner {
            pipeline,
            digest_key,
            shared,
            path,
            thread: Mutex::new(Some(thread)),
            lease,
            node,
        });
        registry.retain(|_, w| w.strong_count() > 0);
        if share {
            registry.insert(canonical, Arc::downgrade(&inner));
        }
        Ok(AuditLog(inner))
    }

    /// Queue `request` for the writer thread; `urgent` when someone waits
    /// for it.
    fn send(&self, request: Request, urgent: bool) -> Result<(), AuditError> {
        self.0
            .push(request, urgent)
            .map_err(|()| self.unavailable("the log is closed"))
    }

    /// Commit `events` (and everything queued before them) on this thread,
    /// if the writer is free; hands `events` back if it is not.
    fn commit_here(&self, events: Records, epoch: Option<u64>) -> Result<Result<u64, AuditError>, Records> {
        let pipeline = &self.0.pipeline;
        let mut writer = match pipeline.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(events),
        };
        let mut group = {
            let mut queue = pipeline.queue();
            if queue.closed {
                return Ok(Err(self.unavailable("the log is closed")));
            }
            queue.urgent = false;
            std::mem::take(&mut queue.requests)
        };
        group.push(Request::Append {
            events,
            sync: true,
            expect_epoch: epoch,
            ack: None,
        });
        let ours = writer.commit(group, Committer::Appender).pop().flatten();
        // A checkpoint that fell due is the writer thread's to sign: this
        // thread has an invocation waiting for its result. The thread is
        // also woken if it sleeps past the moment one falls due (it chose
        // its sleep before these records).
        let due_before_it_wakes = writer
            .checkpoint_due_at()
            .is_some_and(|due| writer.sleeps_until.is_some_and(|wakes| wakes > due + LAZY_COMMIT));
        if writer.checkpoint_due() || due_before_it_wakes {
            writer.sleeps_until = None;
            drop(writer);
            pipeline.queue().urgent = true;
            pipeline.ready.notify_one();
        }
        Ok(ours.unwrap_or_else(|| Err(self.unavailable("the append was not committed"))))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The node id this log's records are kept under in PostgreSQL
    /// (`None`: the file backend).
    pub fn node(&self) -> Option<&str> {
        self.0.node.as_deref()
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        self.0.path.parent().unwrap_or(Path::new("."))
    }

    /// The id of this process's runner lease (see [`super::lease`]), named
    /// by start records and status rows.
    pub fn runner(&self) -> &str {
        self.0.lease.id()
    }

    /// Note an invocation about to write its first record: until it is
    /// settled, recovery reads the log from before it if this process
    /// dies (see [`super::lease`]).
    pub fn track(&self) -> Tracked {
        self.0.lease.track()
    }

    /// This process's lease.
    pub fn lease(&self) -> &Arc<Lease> {
        &self.0.lease
    }

    /// False after a failed write, until a write succeeds again.
    pub fn is_healthy(&self) -> bool {
        self.0.shared.healthy.load(Ordering::Acquire)
    }

    fn unavailable(&self, reason: &str) -> AuditError {
        AuditError::Unavailable {
            path: self.0.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Append `events` and wait until they are on disk; returns the last
    /// sequence number.
    pub fn append_durable(&self, events: impl Into<Records>) -> Result<u64, AuditError> {
        self.append(events.into(), None)
    }

    /// Like [`AuditLog::append_durable`], but refused if any write failed
    /// since `epoch` (see [`AuditLog::epoch`]): records queued with
    /// [`AuditLog::append_queued`] since then may have been cut off.
    pub fn append_durable_since(&self, events: impl Into<Records>, epoch: u64) -> Result<u64, AuditError> {
        self.append(events.into(), Some(epoch))
    }

    /// Queue `events` without waiting; a later durable append syncs them,
    /// and [`AuditLog::append_durable_since`] tells whether they survived.
    ///
    /// A few records wait (up to [`LAZY_COMMIT`]) to ride along with the
    /// next durable append; a batch of [`EAGER_BATCH`] or more is a group
    /// of its own, so the writer thread takes it at once and encodes,
    /// hashes and writes it while the invocation that made it goes on.
    pub fn append_queued(&self, events: impl Into<Records>) {
        self.queue_append(events.into(), None);
    }

    /// [`AuditLog::append_queued`], dropped instead of written if a write
    /// failed since `epoch` (the records it follows may have been cut off:
    /// an invocation's host calls are not written without its start).
    pub fn append_queued_since(&self, events: impl Into<Records>, epoch: u64) {
        self.queue_append(events.into(), Some(epoch));
    }

    fn queue_append(&self, events: Records, expect_epoch: Option<u64>) {
        let eager = events.len() >= EAGER_BATCH;
        let _ = self.send(
            Request::Append {
                events,
                sync: false,
                expect_epoch,
                ack: None,
            },
            eager,
        );
    }

    /// Queue `events` to ride along with the caller's next durable append,
    /// without waking the writer thread: on the path of every invocation,
    /// that wake-up costs a futex call, and the woken thread on the other
    /// core makes every TLB shootdown of the invocation an interrupt to
    /// it. A caller that may not append again soon calls
    /// [`AuditLog::write_queued`].
    pub fn append_deferred(&self, events: impl Into<Records>) {
        let _ = self.0.push_as(
            Request::Append {
                events: events.into(),
                sync: false,
                expect_epoch: None,
                ack: None,
            },
            Wake::Caller,
        );
    }

    /// Have the writer thread write what is queued now (without syncing
    /// it), for records queued with [`AuditLog::append_deferred`] that
    /// have waited long enough.
    pub fn write_queued(&self) {
        let pipeline = &self.0.pipeline;
        let mut queue = pipeline.queue();
        if queue.requests.is_empty() || queue.urgent {
            return;
        }
        queue.urgent = true;
        drop(queue);
        pipeline.ready.notify_one();
    }

    /// (syncs issued, durable appends acknowledged) since open: with group
    /// commit, concurrent invocations need fewer syncs than appends.
    pub fn sync_stats(&self) -> (u64, u64) {
        (
            self.0.shared.syncs.load(Ordering::Acquire),
            self.0.shared.durable_appends.load(Ordering::Acquire),
        )
    }

    /// `keyed-blake3:HEX`: a digest of a sensitive value that only holders
    /// of this log's key can compare against guesses.
    pub fn sensitive_digest(&self, bytes: &[u8]) -> String {
        format!(
            "keyed-blake3:{}",
            blake3::keyed_hash(&self.0.digest_key, bytes).to_hex()
        )
    }

    /// The current failure epoch.
    pub fn epoch(&self) -> u64 {
        self.0.shared.epoch.load(Ordering::Acquire)
    }

    fn append(&self, events: Records, expect_epoch: Option<u64>) -> Result<u64, AuditError> {
        let events = match self.commit_here(events, expect_epoch) {
            Ok(result) => return result,
            Err(events) => events,
        };
        let (ack, done) = mpsc::sync_channel(1);
        self.send(
            Request::Append {
                events,
                sync: true,
                expect_epoch,
                ack: Some(Ack::Thread(ack)),
            },
            true,
        )?;
        done.recv().map_err(|_| self.unavailable("the writer has stopped"))?
    }

    /// [`AuditLog::append_durable_since`] for async callers: the task waits
    /// without holding a thread, and the writer wakes it when the group is
    /// synced.
    pub async fn append_durable_async(
        &self,
        events: impl Into<Records>,
        epoch: Option<u64>,
    ) -> Result<u64, AuditError> {
        let events = events.into();
        // With the writer free, this task commits itself: it holds its
        // thread for one write and sync, which costs less than handing the
        // group to the writer thread and being woken by it.
        let events = match self.commit_here(events, epoch) {
            Ok(result) => return result,
            Err(events) => events,
        };
        let (ack, done) = tokio::sync::oneshot::channel();
        self.send(
            Request::Append {
                events,
                sync: true,
                expect_epoch: epoch,
                ack: Some(Ack::Task(ack)),
            },
            true,
        )?;
        done.await.map_err(|_| self.unavailable("the writer has stopped"))?
    }

    /// Sign a checkpoint of the current head (after everything queued).
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (ack, done) = mpsc::sync_channel(1);
        self.send(Request::Checkpoint { ack }, true)?;
        done.recv().map_err(|_| self.unavailable("the writer has stopped"))?
    }

    /// Test hook: make every write fail with `kind` (or work again with
    /// `None`), as a full or failing disk would.
    #[doc(hidden)]
    pub fn inject_fault(&self, kind: Option<std::io::ErrorKind>) {
        if let Ok(mut f) = self.0.shared.fault.lock() {
            *f = kind;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Recovered;

    fn event(n: u64) -> Event {
        Event::Recovered(Recovered {
            truncated_bytes: n,
            last_good_seq: None,
            reason: "test".into(),
        })
    }

    fn tempdir() -> Result<tempfile::TempDir, AuditError> {
        tempfile::tempdir().map_err(|e| AuditError::Open {
            path: String::new(),
            reason: e.to_string(),
        })
    }

    /// Wait up to 10 s for `done`, failing with `what` if it never holds.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn open_file(path: &Path) -> Result<File, AuditError> {
        File::open(path).map_err(|e| AuditError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn queued_records_are_written_soon_and_in_order_with_durable_ones() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        let log = AuditLog::open(dir)?;
        // Queued alone: the writer thread writes it within LAZY_COMMIT.
        log.append_queued(vec![event(1)]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lines(dir).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            lines(dir).len(),
            1,
            "a queued record reaches the file without a durable append"
        );
        // Queued, then durable: the durable append commits both, in order,
        // with one sync, on this thread.
        let (syncs, _) = log.sync_stats();
        log.append_queued(vec![event(2)]);
        let seq = log.append_durable(vec![event(3)])?;
        assert_eq!(seq, 2);
        assert_eq!(log.sync_stats().0, syncs + 1);
        let all = lines(dir);
        assert!(
            all[1].contains("\"truncated-bytes\":2") && all[2].contains("\"truncated-bytes\":3"),
            "{all:?}"
        );
        // Many threads at once: every append is committed exactly once, and
        // they share syncs.
        let (syncs, appends) = log.sync_stats();
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let log = log.clone();
                scope.spawn(move || {
                    for i in 0..25 {
                        let _ = log.append_durable(vec![event(100 + t * 100 + i)]);
                    }
                });
            }
        });
        let (syncs_after, appends_after) = log.sync_stats();
        assert_eq!(appends_after - appends, 200);
        assert!(syncs_after - syncs <= 200, "{} syncs", syncs_after - syncs);
        assert_eq!(lines(dir).len(), 3 + 200);
        drop(log);
        assert!(crate::audit::read::verify(dir, None).is_ok());
        Ok(())
    }

    #[test]
    fn a_quiet_log_is_checkpointed_after_the_interval() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        let log = AuditLog::open_with_interval(dir, std::time::Duration::from_millis(100))?;
        log.append_durable(vec![event(1), event(2)])?;
        // Still open, no 1000 records, no close: only the interval signs it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let signed = loop {
            let last = last_checkpoint(&dir.join(CHECKPOINTS_FILE));
            if last.as_ref().is_some_and(|c| c.seq == 1) || std::time::Instant::now() > deadline {
                break last;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let signed = signed.map(|c| c.seq);
        assert_eq!(signed, Some(1), "a checkpoint of the head while the log stays open");
        // Nothing new: no further checkpoint is written.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let lines = std::fs::read_to_string(dir.join(CHECKPOINTS_FILE)).unwrap_or_default();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        drop(log);
        Ok(())
    }

    #[test]
    fn the_newest_checkpoint_is_read_from_the_end_of_a_long_file() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let path = tmp.path().join(CHECKPOINTS_FILE);
        let key = CheckpointKey::load_or_create(&tmp.path().join(KEY_FILE)).map_err(|reason| AuditError::Open {
            path: "key".into(),
            reason,
        })?;
        let line = |seq: u64| {
            let cp = key.sign(seq, &[seq as u8; 32], crate::time::rfc3339_micros(seq));
            format!("{}\n", serde_json::to_string(&cp).unwrap_or_default())
        };
        assert!(last_checkpoint(&path).is_none(), "no file, no checkpoint");
        std::fs::write(&path, line(7)).map_err(|e| AuditError::Open {
            path: "cp".into(),
            reason: e.to_string(),
        })?;
        assert_eq!(last_checkpoint(&path).map(|c| c.seq), Some(7), "a file of one line");
        // Ten thousand lines (a 10-million-record log): the last one, whose
        // start the first 4 KiB window may cut into.
        let text: String = (0..10_000).map(|i| line(i * 1000 + 999)).collect();
        for cut in [0, 1, 17, 150] {
            std::fs::write(&path, format!("{}{}", &text[cut..], line(10_000_999))).map_err(|e| AuditError::Open {
                path: "cp".into(),
                reason: e.to_string(),
            })?;
            assert_eq!(last_checkpoint(&path).map(|c| c.seq), Some(10_000_999));
        }
        // One line longer than the first window.
        let long = line(5).replace("\"ts\":\"", &format!("\"ts\":\"{}", "x".repeat(9000)));
        std::fs::write(&path, format!("{}{long}", line(4))).map_err(|e| AuditError::Open {
            path: "cp".into(),
            reason: e.to_string(),
        })?;
        assert_eq!(last_checkpoint(&path).map(|c| c.seq), Some(5));
        Ok(())
    }

    #[test]
    fn a_checkpoint_due_after_an_appenders_own_commit_is_signed_by_the_writer_thread() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        let log = AuditLog::open(dir)?;
        let events: Vec<Event> = (0..CHECKPOINT_EVERY).map(event).collect();
        // Committed on this thread (the writer is free): the 1000th record
        // makes a checkpoint due, which this append does not wait for.
        let seq = log.append_durable(events)?;
        assert_eq!(seq, CHECKPOINT_EVERY - 1);
        wait_until("the writer thread signed no checkpoint", || {
            last_checkpoint(&dir.join(CHECKPOINTS_FILE)).is_some_and(|c| c.seq == seq)
        });
        drop(log);
        Ok(())
    }

    #[test]
    fn a_checkpoint_names_only_synced_records() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        let log = AuditLog::open(dir)?;
        log.append_durable(vec![event(0)])?;
        // A batch big enough to be written at once, without a sync.
        log.append_queued((1..=EAGER_BATCH as u64).map(event).collect::<Vec<_>>());
        wait_until("the batch was not written", || lines(dir).len() > EAGER_BATCH);
        let (syncs, _) = log.sync_stats();
        let cp = log.checkpoint()?.ok_or_else(|| log.unavailable("no checkpoint"))?;
        assert_eq!(cp.seq, EAGER_BATCH as u64, "the checkpoint covers the batch");
        assert_eq!(
            log.sync_stats().0,
            syncs + 1,
            "the batch was synced before it was signed"
        );
        drop(log);
        Ok(())
    }

    #[test]
    fn a_checkpoint_that_cannot_be_written_does_not_keep_the_writer_awake() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        let log = AuditLog::open(dir)?;
        // The checkpoints file cannot be opened for appending: every
        // checkpoint fails (as on a full disk, or a deleted directory).
        std::fs::create_dir(dir.join(CHECKPOINTS_FILE)).map_err(|e| log.unavailable(&e.to_string()))?;
        log.append_durable((0..CHECKPOINT_EVERY + 1).map(event).collect::<Vec<_>>())?;
        std::thread::sleep(CHECKPOINT_MIN_GAP);
        let before = log.0.pipeline.wakeups.load(Ordering::Relaxed);
        // Appends go on meanwhile, each committed on this thread.
        for i in 0..40 {
            log.append_durable(vec![event(i)])?;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let woken = log.0.pipeline.wakeups.load(Ordering::Relaxed) - before;
        // One attempt per CHECKPOINT_RETRY: neither a busy loop nor a
        // wake-up per append.
        assert!(woken <= 8, "the writer thread woke {woken} times in 2 s");
        assert!(log.is_healthy(), "a missing checkpoint does not stop the log");
        log.append_durable(vec![event(7)])?;
        Ok(())
    }

    #[test]
    fn torn_and_damaged_tails_are_cut_kept_and_recorded() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        {
            let log = AuditLog::open(dir)?;
            log.append_durable(vec![event(1), event(2)])?;
        }
        // A partly written record (no newline).
        let path = dir.join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes.extend_from_slice(b"{\"seq\":2,\"ts\":\"20");
        std::fs::write(&path, &bytes).unwrap_or_default();
        {
            let log = AuditLog::open(dir)?;
            log.append_durable(vec![event(3)])?;
        }
        let after = lines(dir);
        assert_eq!(after.len(), 4, "two records, the recovery, one more: {after:?}");
        assert!(after[2].contains("\"kind\":\"recovered\"") && after[2].contains("partly written"));
        // A complete last line that fails its hash (e.g. a page lost in a
        // crash) is cut too, and kept aside.
        let mut damaged = after[..3].join("\n");
        damaged.push('\n');
        damaged.push_str(&after[3].replace("\"truncated-bytes\":3", "\"truncated-bytes\":4"));
        damaged.push('\n');
        std::fs::write(&path, damaged).unwrap_or_default();
        drop(AuditLog::open(dir)?);
        let last = lines(dir);
        assert!(last[3].contains("damaged"), "{last:?}");
        let kept = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("torn-"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(kept, 2, "both cut tails are kept");
        // That record had been synced and checkpointed at close, so cutting
        // it is loss of history, and verification says so.
        assert!(matches!(
            crate::audit::read::verify(dir, None),
            Err(crate::audit::read::VerifyError::Rewritten { seq: 3, .. })
        ));
        Ok(())
    }

    #[test]
    fn writers_taking_turns_catch_up_without_reading_the_tail_again() -> Result<(), AuditError> {
        let tmp = tempdir()?;
        let dir = tmp.path();
        // Two handles of their own, each with its own file lock, as two
        // processes have.
        let a = AuditLog::open_unshared(dir)?;
        let b = AuditLog::open_unshared(dir)?;
        for i in 0..20 {
            a.append_durable(vec![event(i)])?;
            b.append_durable(vec![event(100 + i), event(200 + i)])?;
        }
        for log in [&a, &b] {
            assert_eq!(
                log.0.shared.tail_rereads.load(Ordering::Relaxed),
                0,
                "each caught up with the other's records by reading only those"
            );
        }
        drop((a, b));
        let all = lines(dir);
        assert_eq!(all.len(), 60, "every record once, no recovery records: {all:?}");
        assert!(crate::audit::read::verify(dir, None).is_ok(), "one chain");

        // What `appended_tail` makes of a region another writer appended.
        let path = dir.join(LOG_FILE);
        let bytes = std::fs::read(&path).unwrap_or_default();
        let ends: Vec<u64> = memchr::memchr_iter(b'\n', &bytes).map(|i| i as u64 + 1).collect();
        let tail_of = |n: usize| -> ([u8; 32], u64) {
            let start = if n == 1 { 0 } else { ends[n - 2] as usize };
            let (seq, hash) = self_checked(&bytes[start..ends[n - 1] as usize - 1]).unwrap_or_default();
            (hash, seq + 1)
        };
        let file = open_file(&path)?;
        let (head, next) = tail_of(40);
        for upto in [41, 43, 60] {
            let got = appended_tail(&file, ends[39], ends[upto - 1], &head, next);
            let (want_head, want_next) = tail_of(upto);
            assert!(
                got.as_ref().is_some_and(|t| t.good_len == ends[upto - 1]
                    && t.head == want_head
                    && t.next_seq == want_next
                    && t.truncated == 0),
                "records 41..={upto} continue the chain"
            );
        }
        // Anything else is left to `recover_tail`: a region that does not
        // continue this writer's chain, a last line cut short, nothing new.
        assert!(
            appended_tail(&file, ends[39], ends[59], &GENESIS, next).is_none(),
            "another head"
        );
        assert!(
            appended_tail(&file, ends[39], ends[59], &head, next + 1).is_none(),
            "another sequence"
        );
        assert!(
            appended_tail(&file, ends[38], ends[59], &head, next).is_none(),
            "not where it ended"
        );
        assert!(
            appended_tail(&file, ends[39], ends[59] - 5, &head, next).is_none(),
            "a torn last line"
        );
        assert!(
            appended_tail(&file, ends[39], ends[39], &head, next).is_none(),
            "nothing appended"
        );
        // A region that would continue the chain but is longer than the
        // window `recover_tail` reads.
        {
            let big = tempdir()?;
            let path = big.path().join(LOG_FILE);
            let a = AuditLog::open_unshared(big.path())?;
            let b = AuditLog::open_unshared(big.path())?;
            a.append_durable(vec![event(0)])?;
            let first = std::fs::read(&path).unwrap_or_default();
            let (_, head) = self_checked(first.strip_suffix(b"\n").unwrap_or_default()).unwrap_or_default();
            let records = 2 + (TAIL_WINDOW / first.len().max(1)) as u64;
            b.append_durable((1..=records).map(event).collect::<Vec<_>>())?;
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            let from = first.len() as u64;
            assert!(len - from > TAIL_WINDOW as u64, "{len} bytes");
            let file = open_file(&path)?;
            assert!(
                appended_tail(&file, from, len, &head, 1).is_none(),
                "more than the window"
            );
        }
        // A last line whose hash does not check out.
        let mut damaged = bytes.clone();
        let digit = ends[59] as usize - 4;
        damaged[digit] = if damaged[digit] == b'0' { b'1' } else { b'0' };
        let damaged_path = dir.join("damaged.log");
        std::fs::write(&damaged_path, &damaged).unwrap_or_default();
        let damaged_file = open_file(&damaged_path)?;
        assert!(
            appended_tail(&damaged_file, ends[39], ends[58], &head, next).is_some(),
            "up to before it"
        );
        assert!(
            appended_tail(&damaged_file, ends[39], ends[59], &head, next).is_none(),
            "a damaged last line"
        );
        assert!(
            appended_tail(&damaged_file, ends[58], ends[59], &tail_of(59).0, tail_of(59).1).is_none(),
            "alone"
        );
        Ok(())
    }
}
