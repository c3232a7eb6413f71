//! Token lookups kept in memory, for the SQLite store, that a revocation
//! made by any process on the same data directory ends at once.
//!
//! Every authenticated request looks its token up. On SQLite that is a
//! query whose pages the status-row writer has usually just changed, so it
//! re-reads them: tens of microseconds on every request. This cache
//! answers from memory instead, and stays exact:
//!
//! - A small file beside the database, [`FILE_NAME`], holds a change
//!   counter and the number of token changes in progress, written under an
//!   exclusive `flock` by every process that changes a token (the
//!   `airlock token revoke` CLI as much as the service).
//! - A change first marks itself in progress, then commits to the database,
//!   then counts itself done (a new counter value) and unmarks itself.
//! - A lookup reads the file first: while a change is in progress, or if
//!   the file cannot be read or is damaged, it asks the database and keeps
//!   nothing. Otherwise a cached answer counts only if it was stored under
//!   the counter value read now, and a fresh answer is stored under the
//!   value read before the query. (Reading it is a `pread` of the file kept
//!   open and a `stat` of its path.)
//!
//! So a lookup that starts after a revocation returned never sees the token
//! live. A process that dies in the middle of a change leaves it marked in
//! progress: the cache then stays off (every lookup asks the database, and
//! a warning says so) until the file is removed while no airlock process
//! runs. A file removed, renamed or replaced (another inode at the path)
//! is opened again and everything cached is dropped; a new one starts from
//! a random counter; a counter that goes back (an old copy written over it)
//! drops everything too. Writers check that the file they locked is still
//! the one at the path.
//!
//! Found tokens are kept (revoked ones too: they are refused from the
//! record); an unknown token is asked for every time. At most [`CAPACITY`].

use crate::identity::TokenRecord;
use crate::store::StoreError;
use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file, in the data directory.
pub const FILE_NAME: &str = "tokens.changes";

/// How many tokens' answers are kept; when full, all are dropped.
const CAPACITY: usize = 4096;

/// One change in progress, in the state word's top 16 bits; the change
/// counter is the low 48.
const IN_PROGRESS: u64 = 1 << 48;
const COUNTER: u64 = IN_PROGRESS - 1;

pub struct TokenCache {
    path: PathBuf,
    /// The change file as last opened, and what was last read from it.
    file: Mutex<Reader>,
    entries: Mutex<HashMap<[u8; 32], (u64, TokenRecord)>>,
}

/// The change file as a reader holds it.
#[derive(Default)]
struct Reader {
    /// The open file and its (device, inode): read in place while that is
    /// still what the path names.
    open: Option<(std::fs::File, (u64, u64))>,
    /// The highest counter read from that file.
    seen: Option<u64>,
    /// Since when every read found a change in progress.
    marked_since: Option<std::time::Instant>,
    warned: bool,
}

/// A change marked for longer than this is taken for one whose process
/// died, and a warning says so.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The file's 16 bytes: the state word, then its complement (a read torn by
/// a concurrent write fails that check and counts as unreadable).
fn encode(state: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&state.to_le_bytes());
    out[8..].copy_from_slice(&(!state).to_le_bytes());
    out
}

fn decode(bytes: &[u8; 16]) -> Option<u64> {
    let (a, b) = bytes.split_at(8);
    let state = u64::from_le_bytes(a.try_into().ok()?);
    let check = u64::from_le_bytes(b.try_into().ok()?);
    (state == !check).then_some(state)
}

fn random_counter() -> Result<u64, StoreError> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| StoreError(format!("cannot get random bytes: {e}")))?;
    Ok(u64::from_le_bytes(seed) & COUNTER)
}

impl TokenCache {
    /// The cache for the store in `data_dir`, creating its change file if
    /// there is none yet.
    pub fn open(data_dir: &Path) -> Result<TokenCache, StoreError> {
        let cache = TokenCache {
            path: data_dir.join(FILE_NAME),
            file: Mutex::new(Reader::default()),
            entries: Mutex::new(HashMap::new()),
        };
        // Under the lock, so two processes starting at once agree on one.
        cache.update(|state| state)?;
        Ok(cache)
    }

    /// The change counter, if no change is in progress and the file reads
    /// back whole. Drops every cached answer when the file is another one
    /// than last time, or its counter went back.
    fn counter(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt as _;
        let mut reader = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // What the path names now; the kept file is read only if it is that.
        let Ok(at_path) = std::fs::metadata(&self.path).map(|m| identity(&m)) else {
            reader.open = None;
            return None;
        };
        if reader.open.as_ref().is_none_or(|(_, id)| *id != at_path) {
            let file = std::fs::File::open(&self.path).ok()?;
            let id = identity(&file.metadata().ok()?);
            // Another file than the answers were cached under.
            self.forget();
            *reader = Reader {
                open: Some((file, id)),
                ..Reader::default()
            };
        }
        let mut bytes = [0u8; 16];
        let (file, _) = reader.open.as_ref()?;
        file.read_exact_at(&mut bytes, 0).ok()?;
        let state = decode(&bytes)?;
        if state & !COUNTER != 0 {
            let since = *reader.marked_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > STUCK_AFTER && !reader.warned {
                reader.warned = true;
                tracing::warn!(
                    file = %self.path.display(),
                    "a token change has been marked in progress for over a minute: its process probably died; \
                     every token is looked up in the database until the file is removed while no airlock process runs"
                );
            }
            return None;
        }
        reader.marked_since = None;
        reader.warned = false;
        if reader.seen.is_some_and(|seen| state < seen) {
            self.forget();
        }
        reader.seen = Some(state);
        Some(state)
    }

    fn forget(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Rewrite the state word under the file's exclusive lock (a missing or
    /// damaged file starts again from a random counter).
    fn update(&self, change: impl FnOnce(u64) -> u64) -> Result<(), StoreError> {
        let failed = |e: std::io::Error| {
            StoreError(format!(
                "cannot record a token change in {}: {e}; check that the data directory is writable by this user",
                self.path.display()
            ))
        };
        // The file locked must still be the one at the path: one removed
        // or replaced meanwhile is let go and the new one taken.
        let mut tries = 0;
        let mut file = loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(failed)?;
            file.lock().map_err(failed)?;
            let locked = identity(&file.metadata().map_err(failed)?);
            if std::fs::metadata(&self.path).is_ok_and(|m| identity(&m) == locked) {
                break file;
            }
            tries += 1;
            if tries >= 8 {
                return Err(failed(std::io::Error::other("it keeps being replaced")));
            }
        };
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        let mut bytes = [0u8; 16];
        let state = match file.read_exact(&mut bytes) {
            Ok(()) => decode(&bytes),
            Err(_) => None,
        };
        let state = match state {
            Some(state) => state,
            None => random_counter()?,
        };
        file.seek(SeekFrom::Start(0)).map_err(failed)?;
        file.write_all(&encode(change(state))).map_err(failed)?;
        // The lock goes with the file.
        Ok(())
    }

    /// Make a change to stored tokens (`commit`), so that no process
    /// answers from its cache while it is made, nor afterwards from what it
    /// cached before. Fails, changing nothing, if the change cannot be
    /// marked.
    pub fn changing<T>(&self, commit: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.update(|state| state.wrapping_add(IN_PROGRESS))?;
        let result = commit();
        // Counted done even if the commit failed: a new counter only
        // empties the caches. (A word without a mark, from a file replaced
        // meanwhile, only gets a new counter.)
        let done = self.update(|state| {
            let marks = (state >> 48).saturating_sub(1);
            (marks << 48) | (state.wrapping_add(1) & COUNTER)
        });
        self.forget();
        if let Err(e) = done {
            // The change is made; its mark stays (caches stay off), unless
            // the file kept being replaced, and then the new one's
            // counter is not the one anything was cached under.
            tracing::warn!("{}", e.0);
        }
        result
    }

    /// The record for `hash`: cached if still good, else from `lookup`.
    pub fn get(
        &self,
        hash: &[u8; 32],
        lookup: impl FnOnce() -> Result<Option<TokenRecord>, StoreError>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let Some(counter) = self.counter() else {
            return lookup();
        };
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, record)) = entries.get(hash)
                && *at == counter
            {
                return Ok(Some(record.clone()));
            }
        }
        let record = lookup()?;
        if let Some(record) = &record {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(*hash, (counter, record.clone()));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKind;

    fn record(revoked: bool) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            identity: "bot".into(),
            kind: IdentityKind::Agent,
            roles: vec![],
            created_at: 1,
            revoked_at: revoked.then_some(2),
        }
    }

    #[test]
    fn a_change_elsewhere_ends_what_was_cached() {
        let dir = tempfile::tempdir().unwrap();
        let here = TokenCache::open(dir.path()).unwrap();
        let there = TokenCache::open(dir.path()).unwrap();
        let hash = [7u8; 32];
        let live = here.get(&hash, || Ok(Some(record(false)))).unwrap();
        assert_eq!(live, Some(record(false)));
        // Cached: the lookup is not asked again.
        let again = here.get(&hash, || panic!("asked the database")).unwrap();
        assert_eq!(again, Some(record(false)));
        // Another process revokes it.
        there.changing(|| Ok(())).unwrap();
        let after = here.get(&hash, || Ok(Some(record(true)))).unwrap();
        assert_eq!(after, Some(record(true)));
    }

    #[test]
    fn nothing_is_cached_while_a_change_is_in_progress_or_the_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(dir.path()).unwrap();
        let hash = [1u8; 32];
        // A change that never finished (its process died).
        cache.update(|s| s + IN_PROGRESS).unwrap();
        let mut asked = 0;
        for _ in 0..3 {
            cache
                .get(&hash, || {
                    asked += 1;
                    Ok(Some(record(false)))
                })
                .unwrap();
        }
        assert_eq!(asked, 3);
        // A damaged file: asked every time as well.
        std::fs::write(dir.path().join(FILE_NAME), [0u8; 16]).unwrap();
        cache.get(&hash, || Ok(Some(record(false)))).unwrap();
        cache
            .get(&hash, || {
                asked += 1;
                Ok(None)
            })
            .unwrap();
        assert_eq!(asked, 4);
        // A missing one too.
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        cache.get(&hash, || Ok(Some(record(false)))).unwrap();
        assert_eq!(cache.get(&hash, || Ok(None)).unwrap(), None);
    }

    #[test]
    fn a_replaced_file_does_not_revive_an_old_answer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(dir.path()).unwrap();
        let hash = [2u8; 32];
        cache.get(&hash, || Ok(Some(record(false)))).unwrap();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        // A new file starts from a random counter, not the old one.
        let _other = TokenCache::open(dir.path()).unwrap();
        assert_eq!(cache.get(&hash, || Ok(None)).unwrap(), None);
    }

    #[test]
    fn a_renamed_file_or_an_old_copy_written_over_it_ends_what_was_cached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let cache = TokenCache::open(dir.path()).unwrap();
        let hash = [3u8; 32];
        cache.get(&hash, || Ok(Some(record(false)))).unwrap();
        // Renamed away: the kept file still reads, but is not the one at
        // the path, where a writer now counts its change.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        let writer = TokenCache::open(dir.path()).unwrap();
        writer.changing(|| Ok(())).unwrap();
        assert_eq!(cache.get(&hash, || Ok(Some(record(true)))).unwrap(), Some(record(true)));
        // An old copy written over the file in place (same inode): the
        // counter goes back, and nothing cached under it counts.
        let old = std::fs::read(&path).unwrap();
        cache.get(&hash, || Ok(Some(record(false)))).unwrap();
        writer.changing(|| Ok(())).unwrap();
        cache.get(&hash, || Ok(Some(record(true)))).unwrap();
        // Another token, cached under the counter before that change.
        let other = [5u8; 32];
        std::fs::write(&path, &old).unwrap();
        cache.get(&other, || Ok(Some(record(false)))).unwrap();
        writer.changing(|| Ok(())).unwrap();
        cache.get(&hash, || Ok(Some(record(true)))).unwrap();
        // The old copy back in place: its counter is the one `other` was
        // cached under, but having gone back it drops everything.
        std::fs::write(&path, &old).unwrap();
        assert_eq!(cache.get(&other, || Ok(None)).unwrap(), None);
        assert_eq!(cache.get(&hash, || Ok(None)).unwrap(), None);
    }

    #[test]
    fn a_change_whose_mark_went_missing_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(dir.path()).unwrap();
        // The file was replaced between mark and done: done finds no mark.
        cache
            .changing(|| {
                std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
                Ok(())
            })
            .unwrap();
        let hash = [4u8; 32];
        cache.get(&hash, || Ok(Some(record(false)))).unwrap();
        // Not stuck: the next lookup is answered from memory.
        assert_eq!(
            cache.get(&hash, || panic!("asked the database")).unwrap(),
            Some(record(false))
        );
    }

    #[test]
    fn the_state_word_reads_back_only_whole() {
        let bytes = encode(42);
        assert_eq!(decode(&bytes), Some(42));
        let mut torn = bytes;
        torn[3] ^= 1;
        assert_eq!(decode(&torn), None);
    }
}
