//! Reading the log back: full-chain verification, checkpoints, and the
//! record stream behind `airlock audit show` and `export`.

use super::chain::{self, GENESIS, Record};
use super::checkpoint::Checkpoint;
use super::log::{CHECKPOINTS_FILE, KEY_FILE, LOG_FILE};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;

/// Why verification failed. The sequence number is the first one that
/// cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("record {seq} (line {line}) is bad: {reason}")]
    BadRecord { seq: u64, line: u64, reason: String },
    #[error(
        "the log ends at record {last} but checkpoint {source_desc} vouches for record {seq}: the log was truncated"
    )]
    Truncated {
        seq: u64,
        last: String,
        source_desc: String,
    },
    #[error("record {seq} does not match checkpoint {source_desc}: history was rewritten")]
    Rewritten { seq: u64, source_desc: String },
    #[error("checkpoint {source_desc}: {reason}")]
    Checkpoint { source_desc: String, reason: String },
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub head: Option<(u64, [u8; 32])>,
    pub checkpoints: usize,
    /// The last record a verified checkpoint signs; records after it are
    /// covered by the hash chain only, not yet by a signature.
    pub signed_through: Option<u64>,
    /// A final line still being written by a live writer (not counted).
    pub in_progress: bool,
}

impl Verified {
    /// Records after the last signed checkpoint (all of them without one).
    pub fn unsigned(&self) -> u64 {
        match (self.head, self.signed_through) {
            (Some((head, _)), Some(signed)) => head.saturating_sub(signed),
            (Some(_), None) => self.records,
            (None, _) => 0,
        }
    }
}

/// Read every record in order, checking the chain as it goes; `visit` sees
/// each verified record and its raw line. Stops at the first bad record.
pub fn scan(dir: &Path, mut visit: impl FnMut(&Record, &[u8]) -> bool) -> Result<Verified, VerifyError> {
    let path = dir.join(LOG_FILE);
    let io = |e: std::io::Error| VerifyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verified {
                records: 0,
                head: None,
                checkpoints: 0,
                signed_through: None,
                in_progress: false,
            });
        }
        Err(e) => return Err(io(e)),
    };
    // Writers hold the exclusive lock only while they append a group, so
    // the scan runs unlocked; an incomplete last line is looked at again
    // under a shared lock (the writer finishes first): complete then, it
    // was in flight; still incomplete, it is torn.
    let mut locked = false;
    let mut live = false;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS;
    let mut expected = 0u64;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut in_progress = false;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') && !locked {
            if lock_shared_briefly(reader.get_ref()) {
                locked = true;
                reader.read_until(b'\n', &mut line).map_err(io)?;
            } else {
                live = true;
            }
        }
        if line.last() != Some(&b'\n') {
            if live {
                in_progress = true;
                break;
            }
            return Err(VerifyError::BadRecord {
                seq: expected,
                line: line_no,
                reason: "the last record is incomplete (torn write; opening the log with airlock repairs it)".into(),
            });
        }
        line.pop();
        let bad = |reason: String| VerifyError::BadRecord {
            seq: expected,
            line: line_no,
            reason,
        };
        let record = chain::decode(&line, &prev).map_err(bad)?;
        if record.entry.seq != expected {
            return Err(bad(format!(
                "it carries sequence number {}, expected {expected} (a record was deleted, inserted or moved)",
                record.entry.seq
            )));
        }
        if record.entry.prev != chain::hex(&prev) {
            return Err(bad("its `prev` does not name the previous record".into()));
        }
        prev = record.hash;
        expected += 1;
        if !visit(&record, &line) {
            break;
        }
    }
    if locked {
        let _ = reader.get_ref().unlock();
    }
    Ok(Verified {
        records: expected,
        head: expected.checked_sub(1).map(|s| (s, prev)),
        checkpoints: 0,
        signed_through: None,
        in_progress,
    })
}

/// A shared lock on the log, waiting up to a second for a writer to finish
/// its group; false if it did not (a writer stuck mid-group is live).
fn lock_shared_briefly(file: &std::fs::File) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match file.try_lock_shared() {
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Verify the whole chain, the log's own checkpoints, and `external` (a
/// checkpoint exported earlier and kept elsewhere).
pub fn verify(dir: &Path, external: Option<(&Checkpoint, String)>) -> Result<Verified, VerifyError> {
    let mut checkpoints: Vec<(Checkpoint, String)> = Vec::new();
    let local = dir.join(CHECKPOINTS_FILE);
    let text = match std::fs::read_to_string(&local) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // An unreadable checkpoints file must not quietly skip its checks.
        Err(e) => {
            return Err(VerifyError::Checkpoint {
                source_desc: local.display().to_string(),
                reason: format!("cannot read: {e}"),
            });
        }
    };
    if let Some(text) = text {
        for (i, line) in text.lines().enumerate() {
            let source_desc = format!("{}:{}", local.display(), i + 1);
            let cp: Checkpoint = serde_json::from_str(line).map_err(|e| VerifyError::Checkpoint {
                source_desc: source_desc.clone(),
                reason: e.to_string(),
            })?;
            checkpoints.push((cp, source_desc));
        }
    }
    if let Some((cp, source_desc)) = external {
        checkpoints.push((cp.clone(), source_desc));
    }
    let local_key = std::fs::read_to_string(dir.join(KEY_FILE)).ok().and_then(|k| {
        chain::parse_hex(k.trim().as_bytes())
            .map(|seed| chain::hex(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes()))
    });
    let mut wanted: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for (cp, source_desc) in &checkpoints {
        let key = cp.verify_signature().map_err(|reason| VerifyError::Checkpoint {
            source_desc: source_desc.clone(),
            reason,
        })?;
        if let Some(local) = &local_key
            && *local != chain::hex(key.as_bytes())
        {
            return Err(VerifyError::Checkpoint {
                source_desc: source_desc.clone(),
                reason: "signed by a different key than this log's".into(),
            });
        }
        wanted
            .entry(cp.seq)
            .or_default()
            .push((cp.head.clone(), source_desc.clone()));
    }
    let mut mismatch = None;
    let mut verified = scan(dir, |record, _| {
        if let Some(heads) = wanted.remove(&record.entry.seq) {
            for (head, source_desc) in heads {
                if head != chain::hex(&record.hash) {
                    mismatch = Some(VerifyError::Rewritten {
                        seq: record.entry.seq,
                        source_desc,
                    });
                    return false;
                }
            }
        }
        true
    })?;
    if let Some(e) = mismatch {
        return Err(e);
    }
    if let Some((seq, heads)) = wanted.into_iter().next() {
        return Err(VerifyError::Truncated {
            seq,
            last: verified.head.map_or("(empty log)".to_string(), |(s, _)| s.to_string()),
            source_desc: heads.into_iter().next().map(|(_, s)| s).unwrap_or_default(),
        });
    }
    verified.checkpoints = checkpoints.len();
    verified.signed_through = checkpoints.iter().map(|(cp, _)| cp.seq).max();
    Ok(verified)
}
