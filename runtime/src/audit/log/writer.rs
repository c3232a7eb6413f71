//! The writer: group commit (every append of a group written, one sync,
//! then every acknowledgement), the queue it drains, the writer thread, and
//! rolling a failed group back.

use super::*;

/// Where an append's outcome goes: a blocked thread, or an awaiting task
/// (woken directly by the writer, with no blocking thread in between: each
/// hand-off between threads costs a wake-up on the invocation's path).
pub(super) enum Ack {
    Thread(mpsc::SyncSender<Result<u64, AuditError>>),
    Task(tokio::sync::oneshot::Sender<Result<u64, AuditError>>),
}

impl Ack {
    pub(super) fn send(self, result: Result<u64, AuditError>) {
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

/// The queue of requests and the writer that commits them. Lock order:
/// `writer` before `queue`, so whoever holds the writer takes the queue in
/// arrival order and nothing queued is written out of order.
pub(super) struct Pipeline {
    /// Rounds of the writer thread's loop (for tests: an idle writer
    /// thread sleeps).
    pub(super) wakeups: std::sync::atomic::AtomicU64,
    pub(super) queue: Mutex<Queue>,
    /// Signalled when a request is queued (or the log closes).
    pub(super) ready: std::sync::Condvar,
    pub(super) writer: Mutex<Writer>,
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) requests: Vec<Request>,
    /// Someone waits for the queue to be committed (a durable append or a
    /// checkpoint): the writer thread takes it at once. Records queued
    /// without waiting wait up to [`LAZY_COMMIT`] for a durable append to
    /// take them along, so a lone invocation's records go out in one write.
    pub(super) urgent: bool,
    pub(super) closed: bool,
}

/// The group buffer is kept for the next group up to this capacity (a
/// larger one, after an unusually large group, is freed).
pub(super) const KEPT_BUFFER: usize = 4 << 20;

/// Queued batches at least this large are written by the writer thread
/// without waiting for company (see [`AuditLog::append_queued`]).
pub const EAGER_BATCH: usize = 64;

/// Longest time a record queued with [`AuditLog::append_queued`] stays in
/// memory before the writer thread writes it (unsynced) on its own; records
/// queued with [`AuditLog::append_deferred`] wait for their caller instead.
pub const LAZY_COMMIT: std::time::Duration = std::time::Duration::from_millis(2);

impl Pipeline {
    pub(super) fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Requests are pushed whole; a poisoned lock still holds a valid queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: commit whatever is queued whenever the writer is
    /// free, and sign checkpoints when they are due.
    pub(super) fn run(&self) {
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
pub(super) enum Committer {
    WriterThread,
    Appender,
}

/// How a queued request wakes the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// Commit at once: someone waits.
    Now,
    /// Within [`LAZY_COMMIT`], unless a durable append takes it first.
    Soon,
    /// Not at all: the caller follows with a durable append, or calls
    /// [`AuditLog::write_queued`].
    Caller,
}

pub(super) struct Writer {
    pub(super) file: File,
    /// State as of the last successful sync: what a failure rolls back to.
    pub(super) synced_len: u64,
    pub(super) synced_seq: u64,
    pub(super) synced_head: [u8; 32],
    /// The file could not be rolled back after a failure; nothing more is
    /// written until the log is reopened (which repairs its tail).
    pub(super) poisoned: bool,
    pub(super) good_len: u64,
    pub(super) next_seq: u64,
    pub(super) head: [u8; 32],
    pub(super) last_checkpoint_seq: Option<u64>,
    /// Longest a new record waits for a checkpoint while the log is quiet.
    pub(super) checkpoint_interval: std::time::Duration,
    /// When the last checkpoint was written (or the log opened).
    pub(super) last_checkpoint_at: std::time::Instant,
    /// When the last attempt to write one failed, if it did.
    pub(super) checkpoint_failed_at: Option<std::time::Instant>,
    pub(super) key: CheckpointKey,
    pub(super) checkpoints: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) shared: Arc<Shared>,
    /// Whether this writer holds the file lock now.
    pub(super) locked: bool,
    /// A torn tail another process left (found when catching up), to be
    /// recorded at the head of the next group.
    pub(super) recovered: Option<Event>,
    pub(super) encoder: LineEncoder,
    /// The group buffer, kept between groups so its pages stay mapped.
    pub(super) buf: Vec<u8>,
    /// When the writer thread, asleep, wakes by itself.
    pub(super) sleeps_until: Option<std::time::Instant>,
    /// PostgreSQL's copy of the log, with that backend: a sync counts
    /// only once what it synced is there too.
    pub(super) mirror: Option<Mirror>,
}

impl Writer {
    pub(super) fn unlock(&mut self) {
        if self.locked {
            let _ = self.file.unlock();
            self.locked = false;
        }
    }

    /// Take the file lock and pick up records other processes appended
    /// since this writer last wrote (repairing a tail one of them tore).
    pub(super) fn lock_and_catch_up(&mut self) -> Result<(), String> {
        if !self.locked {
            lock_file(&self.file)?;
            self.locked = true;
        }
        let len = self.file.metadata().map_err(|e| e.to_string())?.len();
        if len == self.good_len {
            return Ok(());
        }
        let tail = match appended_tail(&self.file, self.good_len, len, &self.head, self.next_seq) {
            Some(tail) => tail,
            None => {
                #[cfg(test)]
                self.shared.tail_rereads.fetch_add(1, Ordering::Relaxed);
                recover_tail(&mut self.file, &self.dir)?
            }
        };
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

    /// Commit one group of requests: every append written, one sync, then
    /// the acknowledgements; checkpoints asked for (or due) after it.
    /// Returns each request's result, in order (`None` for checkpoints and
    /// for appends whose result went to their acknowledgement).
    pub(super) fn commit(&mut self, group: Vec<Request>, by: Committer) -> Vec<Option<Result<u64, AuditError>>> {
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

    pub(super) fn fail(&self, reason: String) -> AuditError {
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
    pub(super) fn write_group(&mut self, appends: &mut [(Records, bool, Option<u64>)]) -> Vec<Result<u64, AuditError>> {
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

    pub(super) fn write_locked(
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
    pub(super) fn roll_back(&mut self, reason: String) -> AuditError {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        if self.file.set_len(self.synced_len).is_err() {
            self.poisoned = true;
        }
        (self.good_len, self.next_seq, self.head) = (self.synced_len, self.synced_seq, self.synced_head);
        self.fail(reason)
    }
}
