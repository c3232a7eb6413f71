//! Checkpoints: when the writer signs one (once any record is unsigned:
//! at once when [`CHECKPOINT_EVERY`] are, else the writer's checkpoint
//! interval after the last checkpoint), how it is written (and mirrored to
//! PostgreSQL), and reading the last one back from `checkpoints.jsonl`,
//! repairing a torn last line.

use super::*;

/// How long after a failed checkpoint the next attempt waits.
pub(super) const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    /// Whether records exist that no checkpoint covers yet.
    pub(super) fn unsigned_records(&self) -> bool {
        self.next_seq
            .checked_sub(1)
            .is_some_and(|last| self.last_checkpoint_seq.is_none_or(|c| last > c))
    }

    /// Whether [`CHECKPOINT_EVERY`] records or more are unsigned.
    pub(super) fn many_unsigned(&self) -> bool {
        self.next_seq
            .checked_sub(1)
            .is_some_and(|last| self.last_checkpoint_seq.is_none_or(|c| last >= c + CHECKPOINT_EVERY))
    }

    /// How long the writer thread may sleep before a checkpoint is due.
    pub(super) fn checkpoint_wait(&self) -> std::time::Duration {
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
    pub(super) fn checkpoint_due_at(&self) -> Option<std::time::Instant> {
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
    pub(super) fn checkpoint_due(&self) -> bool {
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
    pub(super) fn checkpoint_if_due(&mut self) {
        if self.checkpoint_due() {
            let _ = self.write_checkpoint();
        }
    }

    /// [`Writer::write_checkpoint_locked`] under the file lock, noting a
    /// failure so the next attempt waits [`CHECKPOINT_RETRY`].
    pub(super) fn write_checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        let result = match self.lock_and_catch_up() {
            Ok(()) => self.write_checkpoint_locked(),
            Err(reason) => Err(self.fail(reason)),
        };
        self.unlock();
        self.checkpoint_failed_at = result.is_err().then(std::time::Instant::now);
        result
    }

    pub(super) fn write_checkpoint_locked(&mut self) -> Result<Option<Checkpoint>, AuditError> {
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
    pub(super) fn store_checkpoint(&self, cp: &Checkpoint) -> Result<(), AuditError> {
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

/// The sequence number of the newest checkpoint on file, so the periodic
/// schedule continues across restarts.
pub(super) fn last_checkpoint_seq(path: &Path) -> Option<u64> {
    last_checkpoint(path).map(|c| c.seq)
}

/// The newest checkpoint in the file, read from its end (the file grows by
/// a line every 1000 records; reading all of it at every checkpoint would
/// make signing slower as the log grows).
pub(super) fn last_checkpoint(path: &Path) -> Option<Checkpoint> {
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
pub(super) fn repair_checkpoints(path: &Path) {
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
