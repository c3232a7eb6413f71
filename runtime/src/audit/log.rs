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

/// Where an append's outcome goes: a blocked thread, or an awaiting task
/// (woken directly by the writer, with no blocking thread in between: each
/// hand-off between threads costs a wake-up on the invocation's path).
enum Ack {
    Thread(mpsc::SyncSender<Result<u64, AuditError>>),
    Task(tokio::sync::oneshot::Sender<Result<u64, AuditError>>),
}

impl Ack {
    fn send(self, result: Result<u64, AuditError>) {
        match self {
            Ack::Thread(tx) => {
                let _ = tx.send(result);
            }
            Ack::Task(tx) => {
                let _ = tx.send(result);
            }
        }
    }
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

/// The queue of requests and the writer that commits them. Lock order:
/// `writer` before `queue`, so whoever holds the writer takes the queue in
/// arrival order and nothing queued is written out of order.
struct Pipeline {
    /// Rounds of the writer thread's loop (for tests: an idle writer
    /// thread sleeps).
    wakeups: std::sync::atomic::AtomicU64,
    queue: Mutex<Queue>,
    /// Signalled when a request is queued (or the log closes).
    ready: std::sync::Condvar,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Queue {
    requests: Vec<Request>,
    /// Someone waits for the queue to be committed (a durable append or a
    /// checkpoint): the writer thread takes it at once. Records queued
    /// without waiting wait up to [`LAZY_COMMIT`] for a durable append to
    /// take them along, so a lone invocation's records go out in one write.
    urgent: bool,
    closed: bool,
}

/// The group buffer is kept for the next group up to this capacity (a
/// larger one, after an unusually large group, is freed).
const KEPT_BUFFER: usize = 4 << 20;

/// Queued batches at least this large are written by the writer thread
/// without waiting for company (see [`AuditLog::append_queued`]).
pub const EAGER_BATCH: usize = 64;

/// How long after a failed checkpoint the next attempt waits.
const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest time a record queued with [`AuditLog::append_queued`] stays in
/// memory before the writer thread writes it (unsynced) on its own; records
/// queued with [`AuditLog::append_deferred`] wait for their caller instead.
pub const LAZY_COMMIT: std::time::Duration = std::time::Duration::from_millis(2);

impl Pipeline {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Requests are pushed whole; a poisoned lock still holds a valid queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: commit whatever is queued whenever the writer is
    /// free, and sign checkpoints when they are due.
    fn run(&self) {
        // However the thread ends (a panic included), the log is closed
        // for appends and waiting requests get "the writer has stopped"
        // (their acknowledgements are dropped), instead of waiting forever.
        struct CloseOnExit<'a>(&'a Pipeline);
        impl Drop for CloseOnExit<'_> {
            fn drop(&mut self) {
                let mut queue = self.0.queue();
                queue.closed = true;
                queue.requests.clear();
            }
        }
        let _close = CloseOnExit(self);
        loop {
            // Sleep until work arrives, or the oldest unsigned record is an
            // interval old.
            let wait = {
                let mut writer = self.writer();
                let wait = writer.checkpoint_wait();
                writer.sleeps_until = Some(std::time::Instant::now() + wait);
                wait
            };
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            {
                let mut queue = self.queue();
                loop {
                    if queue.closed && queue.requests.is_empty() {
                        return;
                    }
                    if queue.urgent || queue.closed {
                        break;
                    }
                    let timeout = if queue.requests.is_empty() { wait } else { LAZY_COMMIT };
                    let (q, waited) = self
                        .ready
                        .wait_timeout(queue, timeout)
                        .unwrap_or_else(|p| p.into_inner());
                    queue = q;
                    if waited.timed_out() {
                        break;
                    }
                }
            }
            let mut writer = self.writer();
            writer.sleeps_until = None;
            let group = {
                let mut queue = self.queue();
                queue.urgent = false;
                std::mem::take(&mut queue.requests)
            };
            if group.is_empty() {
                // Woken by time, or a committer took the queue first.
                writer.checkpoint_if_due();
                continue;
            }
            writer.commit(group, Committer::WriterThread);
        }
    }
}

/// Who commits a group: the writer thread also signs checkpoints that are
/// due; an appender committing on its own thread leaves them to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committer {
    WriterThread,
    Appender,
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

/// How a queued request wakes the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Commit at once: someone waits.
    Now,
    /// Within [`LAZY_COMMIT`], unless a durable append takes it first.
    Soon,
    /// Not at all: the caller follows with a durable append, or calls
    /// [`AuditLog::write_queued`].
    Caller,
}

/// Logs open in this process, so two runtimes on one data directory share
/// a writer instead of waiting on each other's file lock.
fn open_logs() -> &'static Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<Inner>>> {
    static OPEN: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<Inner>>>> =
        std::sync::OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// fsync a directory, so names created in it are durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How long to wait for another process to release the log.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Take the exclusive lock on the log file, waiting up to [`LOCK_WAIT`]
/// for another process to finish its group.
fn lock_file(file: &File) -> Result<(), String> {
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
        let path = dir.join(LOG_FILE);
        let open_err = |reason: String| AuditError::Open {
            path: path.display().to_string(),
            reason,
        };
        crate::data_dir::create_private_dir(dir).map_err(|e| open_err(format!("cannot create its directory: {e}")))?;
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut registry = open_logs().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inner) = registry.get(&canonical).and_then(std::sync::Weak::upgrade) {
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
        registry.insert(canonical, Arc::downgrade(&inner));
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

/// Where the intact log ends.
struct Tail {
    good_len: u64,
    next_seq: u64,
    head: [u8; 32],
    truncated: u64,
    reason: String,
}

/// Find the last intact record; cut off anything after it (a torn write).
/// Only the tail is read: records are small, so the last one lies within
/// the final 1 MiB unless the file is damaged beyond a torn write.
fn recover_tail(file: &mut File, dir: &Path) -> Result<Tail, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let window = 1 << 20;
    let start = len.saturating_sub(window);
    file.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let len = start + buf.len() as u64;
    // Complete lines in the window (skip a partial first line unless the
    // window is the whole file).
    let mut lines: Vec<(u64, &[u8])> = Vec::new();
    let mut pos = 0usize;
    if start > 0 {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => pos = i + 1,
            None => {
                return Err(format!(
                    "the last 1 MiB holds no complete record; run `{}`",
                    crate::hint::command("audit verify")
                ));
            }
        }
    }
    while let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') {
        lines.push((start + pos as u64, &buf[pos..pos + i]));
        pos += i + 1;
    }
    let mut reason = if pos < buf.len() {
        "the last record was only partly written".to_string()
    } else {
        String::new()
    };
    // Walk back over lines that do not check out against their own `prev`.
    while let Some(&(offset, line)) = lines.last() {
        match self_checked(line) {
            Ok((seq, hash)) => {
                let good_len = offset + line.len() as u64 + 1;
                let truncated = len.saturating_sub(good_len);
                let next_seq = seq
                    .checked_add(1)
                    .ok_or("the last record's sequence number is out of range")?;
                if truncated > 0 {
                    let cut = buf.get((good_len - start) as usize..).unwrap_or_default();
                    reason = cut_tail(file, dir, cut, good_len, reason)?;
                }
                return Ok(Tail {
                    good_len,
                    next_seq,
                    head: hash,
                    truncated,
                    reason,
                });
            }
            Err(e) => {
                reason = format!("the last record was damaged ({e})");
                lines.pop();
            }
        }
    }
    if start > 0 {
        return Err(format!(
            "no intact record in the last 1 MiB; run `{}`",
            crate::hint::command("audit verify")
        ));
    }
    if len > 0 {
        reason = cut_tail(file, dir, &buf, 0, reason)?;
    }
    Ok(Tail {
        good_len: 0,
        next_seq: 0,
        head: GENESIS,
        truncated: len,
        reason,
    })
}

/// Move the bytes after `keep` into a quarantine file (so nothing is lost
/// silently), then cut them off. Returns the reason, naming the file and
/// the bytes' digest.
fn cut_tail(file: &mut File, dir: &Path, cut: &[u8], keep: u64, reason: String) -> Result<String, String> {
    let name = format!("torn-{}.bin", now_micros());
    let path = dir.join(&name);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut q = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot save the torn tail to {}: {e}", path.display()))?;
        q.write_all(cut)
            .and_then(|()| q.sync_all())
            .map_err(|e| format!("cannot save the torn tail to {}: {e}", path.display()))?;
    }
    file.set_len(keep)
        .map_err(|e| format!("cannot cut off the torn tail: {e}"))?;
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(format!(
        "{reason}; the {} cut bytes are kept in {name} (blake3:{})",
        cut.len(),
        blake3::hash(cut).to_hex()
    ))
}

/// The sequence number of the newest checkpoint on file, so the periodic
/// schedule continues across restarts.
fn last_checkpoint_seq(path: &Path) -> Option<u64> {
    last_checkpoint(path).map(|c| c.seq)
}

/// The newest checkpoint in the file, read from its end (the file grows by
/// a line every 1000 records; reading all of it at every checkpoint would
/// make signing slower as the log grows).
fn last_checkpoint(path: &Path) -> Option<Checkpoint> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut window: u64 = 4096;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).ok()?;
        let text = String::from_utf8_lossy(&tail);
        let mut lines = text.lines().rev().filter(|l| !l.trim().is_empty());
        let last = lines.next()?;
        // The last line is whole if something precedes it in the window,
        // or the window is the whole file.
        if start == 0 || lines.next().is_some() {
            return serde_json::from_str::<Checkpoint>(last).ok();
        }
        window = window.checked_mul(4)?;
    }
}

/// Cut a torn last line off the checkpoints file (a crash mid-write), so
/// the next checkpoint starts on a line of its own.
fn repair_checkpoints(path: &Path) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return;
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_len(keep as u64).and_then(|()| f.sync_all());
        tracing::warn!(target: "airlock::audit", path = %path.display(), "cut a torn checkpoint line");
    }
}

/// Check a line against the `prev` it names (enough for the tail: the full
/// chain is `airlock audit verify`'s job).
fn self_checked(line: &[u8]) -> Result<(u64, [u8; 32]), String> {
    #[derive(serde::Deserialize)]
    struct Prev {
        prev: String,
    }
    let body_end = line.len().saturating_sub(75);
    let mut body = line.get(..body_end).ok_or("too short")?.to_vec();
    body.push(b'}');
    let p: Prev = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let prev = chain::parse_hex(p.prev.as_bytes()).ok_or("bad prev")?;
    let rec = chain::decode(line, &prev)?;
    Ok((rec.entry.seq, rec.hash))
}

struct Writer {
    file: File,
    /// State as of the last successful sync: what a failure rolls back to.
    synced_len: u64,
    synced_seq: u64,
    synced_head: [u8; 32],
    /// The file could not be rolled back after a failure; nothing more is
    /// written until the log is reopened (which repairs its tail).
    poisoned: bool,
    good_len: u64,
    next_seq: u64,
    head: [u8; 32],
    last_checkpoint_seq: Option<u64>,
    /// Longest a new record waits for a checkpoint while the log is quiet.
    checkpoint_interval: std::time::Duration,
    /// When the last checkpoint was written (or the log opened).
    last_checkpoint_at: std::time::Instant,
    /// When the last attempt to write one failed, if it did.
    checkpoint_failed_at: Option<std::time::Instant>,
    key: CheckpointKey,
    checkpoints: PathBuf,
    dir: PathBuf,
    path: PathBuf,
    shared: Arc<Shared>,
    /// Whether this writer holds the file lock now.
    locked: bool,
    /// A torn tail another process left (found when catching up), to be
    /// recorded at the head of the next group.
    recovered: Option<Event>,
    encoder: LineEncoder,
    /// The group buffer, kept between groups so its pages stay mapped.
    buf: Vec<u8>,
    /// When the writer thread, asleep, wakes by itself.
    sleeps_until: Option<std::time::Instant>,
    /// PostgreSQL's copy of the log, with that backend: a sync counts
    /// only once what it synced is there too.
    mirror: Option<Mirror>,
}

impl Writer {
    fn unlock(&mut self) {
        if self.locked {
            let _ = self.file.unlock();
            self.locked = false;
        }
    }

    /// Take the file lock and pick up records other processes appended
    /// since this writer last wrote (repairing a tail one of them tore).
    fn lock_and_catch_up(&mut self) -> Result<(), String> {
        if !self.locked {
            lock_file(&self.file)?;
            self.locked = true;
        }
        let len = self.file.metadata().map_err(|e| e.to_string())?.len();
        if len == self.good_len {
            return Ok(());
        }
        let tail = recover_tail(&mut self.file, &self.dir)?;
        if tail.truncated > 0 {
            self.recovered = Some(Event::Recovered(Recovered {
                truncated_bytes: tail.truncated,
                last_good_seq: tail.next_seq.checked_sub(1),
                reason: tail.reason,
            }));
        }
        // Others' records are theirs to sync; ours start from here.
        (self.good_len, self.next_seq, self.head) = (tail.good_len, tail.next_seq, tail.head);
        (self.synced_len, self.synced_seq, self.synced_head) = (tail.good_len, tail.next_seq, tail.head);
        Ok(())
    }

    /// Whether records exist that no checkpoint covers yet.
    fn unsigned_records(&self) -> bool {
        self.next_seq
            .checked_sub(1)
            .is_some_and(|last| self.last_checkpoint_seq.is_none_or(|c| last > c))
    }

    /// Whether [`CHECKPOINT_EVERY`] records or more are unsigned.
    fn many_unsigned(&self) -> bool {
        self.next_seq
            .checked_sub(1)
            .is_some_and(|last| self.last_checkpoint_seq.is_none_or(|c| last >= c + CHECKPOINT_EVERY))
    }

    /// How long the writer thread may sleep before a checkpoint is due.
    fn checkpoint_wait(&self) -> std::time::Duration {
        let since = self.last_checkpoint_at.elapsed();
        let wait = if self.many_unsigned() {
            CHECKPOINT_MIN_GAP.saturating_sub(since)
        } else if self.unsigned_records() {
            self.checkpoint_interval.saturating_sub(since)
        } else {
            // Records committed by other threads meanwhile do not wake the
            // writer thread: it looks again within one interval.
            self.checkpoint_interval
        };
        // A checkpoint that cannot be written (disk full, directory gone)
        // is tried again after CHECKPOINT_RETRY; until then the thread
        // sleeps instead of waking to find it may not try yet.
        match self.checkpoint_failed_at {
            Some(failed) => wait.max(CHECKPOINT_RETRY.saturating_sub(failed.elapsed())),
            None => wait,
        }
    }

    /// When a checkpoint falls due with no further records, if any is to.
    fn checkpoint_due_at(&self) -> Option<std::time::Instant> {
        let due = if self.many_unsigned() {
            self.last_checkpoint_at + CHECKPOINT_MIN_GAP
        } else if self.unsigned_records() {
            self.last_checkpoint_at + self.checkpoint_interval
        } else {
            return None;
        };
        Some(match self.checkpoint_failed_at {
            Some(failed) => due.max(failed + CHECKPOINT_RETRY),
            None => due,
        })
    }

    /// Whether a checkpoint is due: [`CHECKPOINT_EVERY`] records unsigned
    /// and [`CHECKPOINT_MIN_GAP`] since the last one, or any unsigned and
    /// the interval since the last one (and no failed attempt is still
    /// waiting out its retry delay: no busy loop while the disk is full).
    fn checkpoint_due(&self) -> bool {
        if self
            .checkpoint_failed_at
            .is_some_and(|t| t.elapsed() < CHECKPOINT_RETRY)
        {
            return false;
        }
        let since = self.last_checkpoint_at.elapsed();
        (self.many_unsigned() && since >= CHECKPOINT_MIN_GAP)
            || (self.unsigned_records() && since >= self.checkpoint_interval)
    }

    /// Sign a checkpoint if one is due.
    fn checkpoint_if_due(&mut self) {
        if self.checkpoint_due() {
            let _ = self.write_checkpoint();
        }
    }

    /// [`Writer::write_checkpoint_locked`] under the file lock, noting a
    /// failure so the next attempt waits [`CHECKPOINT_RETRY`].
    fn write_checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        let result = match self.lock_and_catch_up() {
            Ok(()) => self.write_checkpoint_locked(),
            Err(reason) => Err(self.fail(reason)),
        };
        self.unlock();
        self.checkpoint_failed_at = result.is_err().then(std::time::Instant::now);
        result
    }

    /// Commit one group of requests: every append written, one sync, then
    /// the acknowledgements; checkpoints asked for (or due) after it.
    /// Returns each request's result, in order (`None` for checkpoints and
    /// for appends whose result went to their acknowledgement).
    fn commit(&mut self, group: Vec<Request>, by: Committer) -> Vec<Option<Result<u64, AuditError>>> {
        let mut appends = Vec::new();
        let mut acks = Vec::new();
        let mut positions = Vec::new();
        let mut checkpoint_acks = Vec::new();
        let mut out: Vec<Option<Result<u64, AuditError>>> = Vec::with_capacity(group.len());
        for r in group {
            match r {
                Request::Append {
                    events,
                    sync,
                    expect_epoch,
                    ack,
                } => {
                    appends.push((events, sync, expect_epoch));
                    acks.push(ack);
                    positions.push(out.len());
                    out.push(None);
                }
                Request::Checkpoint { ack } => {
                    checkpoint_acks.push(ack);
                    out.push(None);
                }
            }
        }
        let results = self.write_group(&mut appends);
        for ((ack, result), at) in acks.into_iter().zip(results).zip(positions) {
            match ack {
                Some(ack) => ack.send(result),
                None => out[at] = Some(result),
            }
        }
        if checkpoint_acks.is_empty() {
            if by == Committer::WriterThread {
                self.checkpoint_if_due();
            }
        } else {
            let cp = self.write_checkpoint();
            for ack in checkpoint_acks {
                let _ = ack.send(cp.clone());
            }
        }
        out
    }

    fn fail(&self, reason: String) -> AuditError {
        self.shared.healthy.store(false, Ordering::Release);
        tracing::error!(target: "airlock::audit", path = %self.path.display(), %reason, "audit log write failed");
        AuditError::Unavailable {
            path: self.path.display().to_string(),
            reason,
        }
    }

    /// Write every append of a group, syncing once if any asked for
    /// durability. Returns each append's last sequence number, or why it
    /// failed.
    fn write_group(&mut self, appends: &mut [(Records, bool, Option<u64>)]) -> Vec<Result<u64, AuditError>> {
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let results: Vec<Option<Result<u64, AuditError>>> = vec![None; appends.len()];
        if self.poisoned {
            let e = self.fail("an earlier failure could not be rolled back; restart airlock to repair the log".into());
            return vec![Err(e); appends.len()];
        }
        if let Err(reason) = self.lock_and_catch_up() {
            self.unlock();
            let e = self.fail(reason);
            return vec![Err(e); appends.len()];
        }
        let results = self.write_locked(appends, epoch, results);
        self.unlock();
        results
    }

    fn write_locked(
        &mut self,
        appends: &mut [(Records, bool, Option<u64>)],
        epoch: u64,
        mut results: Vec<Option<Result<u64, AuditError>>>,
    ) -> Vec<Result<u64, AuditError>> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut sync = false;
        // Every record of a group is handed to the kernel in one write, so
        // they share the time they were written.
        let ts = stamp(now_micros());
        // Taken for good only once written: a failed group keeps it for the
        // next one.
        if let Some(event) = &self.recovered
            && let Ok(hash) = self.encoder.append(&mut buf, self.next_seq, &ts, &self.head, event)
        {
            self.head = hash;
            self.next_seq += 1;
            sync = true;
        }
        for (i, (events, durable, expect)) in appends.iter_mut().enumerate() {
            if expect.is_some_and(|e| e != epoch) {
                results[i] = Some(Err(AuditError::Unavailable {
                    path: self.path.display().to_string(),
                    reason: "a write failed while this invocation ran, and some of its records were lost".into(),
                }));
                continue;
            }
            // All of an append's records, or none of them.
            let (mark_len, mark_seq, mark_head) = (buf.len(), self.next_seq, self.head);
            let mut failed = None;
            for call in events.calls.iter() {
                self.head = self
                    .encoder
                    .append_encoded(&mut buf, self.next_seq, &ts, &self.head, call);
                self.next_seq += 1;
            }
            for event in events.events.drain(..) {
                match self.encoder.append(&mut buf, self.next_seq, &ts, &self.head, &event) {
                    Ok(hash) => {
                        self.head = hash;
                        self.next_seq += 1;
                    }
                    Err(e) => {
                        tracing::error!(target: "airlock::audit", error = %e, "an audit record could not be encoded");
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(reason) = failed {
                buf.truncate(mark_len);
                (self.next_seq, self.head) = (mark_seq, mark_head);
                results[i] = Some(Err(AuditError::Unavailable {
                    path: self.path.display().to_string(),
                    reason: format!("a record could not be encoded: {reason}"),
                }));
                continue;
            }
            sync |= *durable;
            results[i] = Some(Ok(self.next_seq.saturating_sub(1)));
        }
        let injected = self.shared.fault.lock().ok().and_then(|f| *f);
        // A group whose appends were all refused writes nothing, and so
        // proves nothing about the log's health.
        let attempted = !buf.is_empty() || sync;
        let writing = std::time::Instant::now();
        let written = if !attempted {
            Ok(())
        } else {
            match injected {
                Some(kind) => Err(std::io::Error::new(kind, "injected fault")),
                None => self
                    .file
                    .write_all(&buf)
                    .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) }),
            }
        };
        let written_len = buf.len() as u64;
        // Durable means in PostgreSQL too: a group whose transaction did
        // not commit fails like one whose sync failed (cut off, retried).
        let written = written
            .map_err(|e| e.to_string())
            .and_then(|()| match &mut self.mirror {
                Some(mirror) if sync => mirror.push(&self.file, self.good_len + written_len, self.next_seq, self.head),
                _ => Ok(()),
            });
        if buf.capacity() <= KEPT_BUFFER {
            self.buf = buf;
        }
        match written {
            Ok(()) => {
                self.recovered = None;
                self.good_len += written_len;
                if sync {
                    (self.synced_len, self.synced_seq, self.synced_head) = (self.good_len, self.next_seq, self.head);
                    let metrics = crate::metrics::metrics();
                    metrics.audit_sync_seconds.observe(writing.elapsed().as_secs_f64());
                    metrics.audit_group_appends.observe(appends.len() as f64);
                    metrics
                        .audit_head_sequence
                        .set(i64::try_from(self.synced_seq.saturating_sub(1)).unwrap_or(i64::MAX));
                    let durable = appends.iter().filter(|(_, d, _)| *d).count() as u64;
                    self.shared.syncs.fetch_add(1, Ordering::AcqRel);
                    self.shared.durable_appends.fetch_add(durable, Ordering::AcqRel);
                }
                if attempted {
                    self.shared.healthy.store(true, Ordering::Release);
                }
                results.into_iter().map(|r| r.unwrap_or(Ok(0))).collect()
            }
            Err(e) => {
                crate::metrics::metrics().audit_write_failures.inc();
                let err = self.roll_back(e);
                results
                    .into_iter()
                    .map(|r| match r {
                        Some(Err(e)) => Err(e),
                        _ => Err(err.clone()),
                    })
                    .collect()
            }
        }
    }

    /// After a failed write or sync, go back to the last sync: the kernel
    /// may already have dropped unsynced pages (and reports that only
    /// once), so nothing written since is trusted. Work that depended on it
    /// sees the epoch change and is not acknowledged.
    fn roll_back(&mut self, reason: String) -> AuditError {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        if self.file.set_len(self.synced_len).is_err() {
            self.poisoned = true;
        }
        (self.good_len, self.next_seq, self.head) = (self.synced_len, self.synced_seq, self.synced_head);
        self.fail(reason)
    }

    fn write_checkpoint_locked(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        // Sign only what is on disk: a checkpoint that outlived the records
        // it names (power lost between the two writes) would read as a
        // truncated log. Always synced, because records another process
        // wrote (caught up with, not written here) may not be synced yet.
        if let Err(e) = self.file.sync_data() {
            return Err(self.roll_back(format!("cannot sync the log for a checkpoint: {e}")));
        }
        // A checkpoint names records PostgreSQL holds, with that backend.
        if let Some(mirror) = &mut self.mirror
            && let Err(e) = mirror.push(&self.file, self.good_len, self.next_seq, self.head)
        {
            return Err(self.roll_back(e));
        }
        if self.good_len > self.synced_len {
            self.shared.syncs.fetch_add(1, Ordering::AcqRel);
        }
        (self.synced_len, self.synced_seq, self.synced_head) = (self.good_len, self.next_seq, self.head);
        let Some(seq) = self.synced_seq.checked_sub(1) else {
            return Ok(None);
        };
        let head = self.synced_head;
        // Another process may have signed this head already.
        if let Some(cp) = last_checkpoint(&self.checkpoints)
            && cp.seq == seq
        {
            self.store_checkpoint(&cp)?;
            self.last_checkpoint_seq = Some(seq);
            self.last_checkpoint_at = std::time::Instant::now();
            return Ok(Some(cp));
        }
        let cp = self.key.sign(seq, &head, crate::time::rfc3339_micros(now_micros()));
        let mut line = serde_json::to_vec(&cp).map_err(|e| AuditError::Unavailable {
            path: self.checkpoints.display().to_string(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let written = {
            use std::os::unix::fs::OpenOptionsExt as _;
            let existed = self.checkpoints.exists();
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.checkpoints)
                .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()))
                .and_then(|()| if existed { Ok(()) } else { sync_dir(&self.dir) })
        };
        if let Err(e) = written {
            // The log itself is fine; only its signed summary is missing.
            tracing::warn!(target: "airlock::audit", error = %e, "cannot write an audit checkpoint");
            return Err(AuditError::Unavailable {
                path: self.checkpoints.display().to_string(),
                reason: format!("cannot write checkpoint: {e}"),
            });
        }
        self.store_checkpoint(&cp)?;
        self.last_checkpoint_seq = Some(seq);
        self.last_checkpoint_at = std::time::Instant::now();
        Ok(Some(cp))
    }

    /// Store `cp` in PostgreSQL too, with that backend. A failure is a
    /// failed checkpoint (tried again), not a failed log.
    fn store_checkpoint(&self, cp: &Checkpoint) -> Result<(), AuditError> {
        match &self.mirror {
            Some(mirror) => mirror.checkpoint(cp).map_err(|reason| {
                tracing::warn!(target: "airlock::audit", error = %reason, "cannot store an audit checkpoint");
                AuditError::Unavailable {
                    path: self.checkpoints.display().to_string(),
                    reason,
                }
            }),
            None => Ok(()),
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
}
