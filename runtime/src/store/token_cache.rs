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
//!   value read before the query.
//!
//! So a lookup that starts after a revocation returned never sees the token
//! live. A process that dies in the middle of a change leaves it marked in
//! progress: the cache then stays off (every lookup asks the database) until
//! the file is removed while no airlock process runs. A removed or
//! replaced file is noticed (its link count drops to zero) and opened again
//! by path, and a new one starts from a random counter, so replacing it
//! cannot revive an old answer either.
//!
//! Only live answers are kept (an unknown token is asked for every time),
//! at most [`CAPACITY`] of them.

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
    /// The change file as last opened: read in place while it is still
    /// the one at `path` (not unlinked).
    file: Mutex<Option<std::fs::File>>,
    entries: Mutex<HashMap<[u8; 32], (u64, TokenRecord)>>,
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
            file: Mutex::new(None),
            entries: Mutex::new(HashMap::new()),
        };
        // Under the lock, so two processes starting at once agree on one.
        cache.update(|state| state)?;
        Ok(cache)
    }

    /// The change counter, if no change is in progress and the file reads
    /// back whole.
    fn counter(&self) -> Option<u64> {
        use std::os::unix::fs::{FileExt as _, MetadataExt as _};
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = [0u8; 16];
        // Read through the open file while it is still linked: removed or
        // replaced, it is opened again by path.
        let read = |f: &std::fs::File, bytes: &mut [u8; 16]| {
            f.read_exact_at(bytes, 0).ok()?;
            (f.metadata().ok()?.nlink() > 0).then_some(())
        };
        if file.as_ref().and_then(|f| read(f, &mut bytes)).is_none() {
            *file = None;
            let opened = std::fs::File::open(&self.path).ok()?;
            read(&opened, &mut bytes)?;
            *file = Some(opened);
        }
        let state = decode(&bytes)?;
        (state & !COUNTER == 0).then_some(state)
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
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(failed)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        file.lock().map_err(failed)?;
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
    /// cached before.
    pub fn changing<T>(&self, commit: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.update(|state| state.wrapping_add(IN_PROGRESS))?;
        let result = commit();
        // Counted done even if the commit failed: a new counter only
        // empties the caches.
        let done = self.update(|state| {
            let counter = (state.wrapping_add(1)) & COUNTER;
            (state & !COUNTER).wrapping_sub(IN_PROGRESS) | counter
        });
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let value = result?;
        done?;
        Ok(value)
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
    fn the_state_word_reads_back_only_whole() {
        let bytes = encode(42);
        assert_eq!(decode(&bytes), Some(42));
        let mut torn = bytes;
        torn[3] ^= 1;
        assert_eq!(decode(&torn), None);
    }
}
