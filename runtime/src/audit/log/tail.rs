//! Finding where the log ends. Opening a log a crash left behind: the
//! torn tail (a partial last line, or records whose chain does not check
//! out) is cut off, and the cut recorded, so the log is one valid chain
//! again before anything is appended ([`recover_tail`]). Catching up with
//! what other processes appended since this one's last group: only those
//! records are read when they simply continue its chain
//! ([`appended_tail`]).

use super::*;

/// How much of the log's end is read to find its last intact record.
pub(super) const TAIL_WINDOW: usize = 1 << 20;

/// Where the intact log ends.
pub(super) struct Tail {
    pub(super) good_len: u64,
    pub(super) next_seq: u64,
    pub(super) head: [u8; 32],
    pub(super) truncated: u64,
    pub(super) reason: String,
}

/// Find the last intact record; cut off anything after it (a torn write).
/// Only the tail is read: records are small, so the last one lies within
/// the final 1 MiB unless the file is damaged beyond a torn write.
pub(super) fn recover_tail(file: &mut File, dir: &Path) -> Result<Tail, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let start = len.saturating_sub(TAIL_WINDOW as u64);
    file.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let len = start + buf.len() as u64;
    // Complete lines in the window (skip a partial first line unless the
    // window is the whole file).
    let mut lines: Vec<(u64, &[u8])> = Vec::new();
    let mut pos = 0usize;
    if start > 0 {
        match memchr::memchr(b'\n', &buf) {
            Some(i) => pos = i + 1,
            None => {
                return Err(format!(
                    "the last 1 MiB holds no complete record; run `{}`",
                    crate::hint::command("audit verify")
                ));
            }
        }
    }
    let from = pos;
    for end in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| from + i) {
        lines.push((start + pos as u64, &buf[pos..end]));
        pos = end + 1;
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

/// What other processes appended after this writer's own last record,
/// read from where that record ends (`from`) to `len`: `None` unless it
/// is at most the window [`recover_tail`] reads and ends with a whole
/// line, its first line chains from `head` with sequence `next_seq`, and
/// its last line checks out against its own `prev` (the check
/// [`recover_tail`] makes; lines between are not read, by either). Then
/// nothing needs repair, and the log's tail is the last of those lines;
/// otherwise [`recover_tail`] finds it.
/// With several processes appending in turn (an `airlock mcp` per agent
/// beside `airlock serve`), every group of each begins here, under the
/// log's lock: reading only the new records keeps that short.
pub(super) fn appended_tail(file: &File, from: u64, len: u64, head: &[u8; 32], next_seq: u64) -> Option<Tail> {
    use std::os::unix::fs::FileExt as _;
    let size = usize::try_from(len.checked_sub(from)?).ok()?;
    if size == 0 || size > TAIL_WINDOW {
        return None;
    }
    let mut buf = vec![0u8; size];
    file.read_exact_at(&mut buf, from).ok()?;
    let body = buf.strip_suffix(b"\n")?;
    let first_end = memchr::memchr(b'\n', body).unwrap_or(body.len());
    let first = chain::decode(&body[..first_end], head).ok()?;
    if first.entry.seq != next_seq || chain::parse_hex(first.entry.prev.as_bytes()) != Some(*head) {
        return None;
    }
    let (seq, hash) = match memchr::memrchr(b'\n', body) {
        None => (first.entry.seq, first.hash),
        Some(i) => self_checked(&body[i + 1..]).ok()?,
    };
    Some(Tail {
        good_len: len,
        next_seq: seq.checked_add(1)?,
        head: hash,
        truncated: 0,
        reason: String::new(),
    })
}

/// Move the bytes after `keep` into a quarantine file (so nothing is lost
/// silently), then cut them off. Returns the reason, naming the file and
/// the bytes' digest.
pub(super) fn cut_tail(file: &mut File, dir: &Path, cut: &[u8], keep: u64, reason: String) -> Result<String, String> {
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

/// Check a line against the `prev` it names (enough for the tail: the full
/// chain is `airlock audit verify`'s job).
pub(super) fn self_checked(line: &[u8]) -> Result<(u64, [u8; 32]), String> {
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
