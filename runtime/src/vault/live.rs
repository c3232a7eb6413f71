//! The vault as a long-running process holds it.
//!
//! `airlock serve` opens the vault once, but secrets are rotated while it
//! runs (`airlock secret set` from another process). A [`LiveVault`]
//! notices: before each read it compares the vault file's identity (device,
//! inode, size, modification time) with what it last loaded, and re-reads
//! the file when it changed. Writes replace the file by rename, so a
//! rotation always shows as a new inode, and a reader never sees half a
//! write. The next invocation uses the new value; one already running keeps
//! the value it opened (credentials are decrypted once per invocation).
//!
//! A vault that can no longer be read (removed key, damaged file) fails the
//! reads with that error rather than serving stale secrets.

use super::{SecretValue, Vault, VaultError};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::RwLock;

/// What identifies one version of the vault: the file's identity, or the
/// shared document's version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    File(FileStamp),
    Version(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Result<Option<FileStamp>, VaultError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VaultError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

struct Loaded {
    vault: Vault,
    stamp: Option<Stamp>,
    /// Why the last reload failed; reads fail with it until the file changes.
    broken: Option<String>,
}

/// A [`Vault`] that follows changes to its file. See the module docs.
pub struct LiveVault {
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for LiveVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveVault").finish_non_exhaustive()
    }
}

impl LiveVault {
    /// Open the vault in `data_dir` (see [`Vault::open`]).
    pub fn open(data_dir: &Path) -> Result<LiveVault, VaultError> {
        Self::open_in(data_dir, None)
    }

    /// Open the vault in `shared` if given (see [`Vault::open_in`]).
    pub fn open_in(
        data_dir: &Path,
        shared: Option<std::sync::Arc<dyn super::shared::SharedVault>>,
    ) -> Result<LiveVault, VaultError> {
        // Stamp first: a change racing the open is then seen as a change.
        let stamp = match &shared {
            Some(s) => s
                .version()
                .map_err(|e| VaultError::Io {
                    path: s.describe().into(),
                    source: std::io::Error::other(e),
                })?
                .map(Stamp::Version),
            None => stamp(&data_dir.join(super::VAULT_FILE))?.map(Stamp::File),
        };
        let vault = Vault::open_in(data_dir, shared, false)?;
        Ok(LiveVault {
            loaded: RwLock::new(Loaded {
                vault,
                stamp,
                broken: None,
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // The state is replaced whole under the write lock, so a poisoned
        // lock still guards a consistent value.
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The stamp of the vault as it is now.
    fn current(vault: &Vault) -> Result<Option<Stamp>, VaultError> {
        match vault.shared_version() {
            Some(version) => Ok(version?.map(Stamp::Version)),
            None => Ok(stamp(vault.path())?.map(Stamp::File)),
        }
    }

    /// Re-read the vault if it changed since it was last loaded.
    fn refresh(&self) -> Result<(), VaultError> {
        let path = self.read().vault.path().to_path_buf();
        let now = Self::current(&self.read().vault)?;
        if self.read().stamp == now {
            return Ok(());
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        let now = Self::current(&loaded.vault)?;
        if loaded.stamp == now {
            return Ok(());
        }
        loaded.stamp = now;
        match loaded.vault.reload() {
            Ok(()) => {
                loaded.broken = None;
                tracing::info!(vault = %path.display(), "vault changed on disk; reloaded");
            }
            Err(e) => {
                tracing::warn!(vault = %path.display(), error = %e, "vault changed on disk and cannot be read");
                loaded.broken = Some(e.to_string());
            }
        }
        Ok(())
    }

    fn fresh(&self) -> Result<std::sync::RwLockReadGuard<'_, Loaded>, VaultError> {
        self.refresh()?;
        let loaded = self.read();
        if let Some(reason) = &loaded.broken {
            return Err(VaultError::Corrupt {
                path: loaded.vault.path().to_path_buf(),
                reason: reason.clone(),
            });
        }
        Ok(loaded)
    }

    /// Decrypt one secret from the current version of the vault.
    pub fn get(&self, name: &str) -> Result<SecretValue, VaultError> {
        self.fresh()?.vault.get(name)
    }

    /// Whether the current version of the vault holds `name`.
    pub fn contains(&self, name: &str) -> Result<bool, VaultError> {
        Ok(self.fresh()?.vault.contains(name))
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.read().vault.path().to_path_buf()
    }
}
