//! The vault: secrets encrypted at rest in the data directory.
//!
//! Guarantees:
//! - Each secret is sealed with XChaCha20-Poly1305 under the master key
//!   ([`key`]), with a fresh random 192-bit nonce, and the secret's name as
//!   associated data, so a sealed value cannot be moved to another name.
//! - The vault file holds names, timestamps, lengths and ciphertext only.
//!   A key-check entry lets a wrong master key fail with a clear error
//!   instead of garbage.
//! - Plaintext exists only in [`SecretValue`]s, which zeroize on drop and
//!   never print. Nothing here puts a value into an error message.
//! - Writes are atomic (temp file, fsync, rename) and serialized by an
//!   advisory lock, so a crash or a concurrent `secret set` cannot leave a
//!   torn vault.
//! - Nodes sharing a PostgreSQL store share the vault through it
//!   ([`shared`]): the same document, ciphertext only, replaced atomically
//!   by compare and swap; the master key stays on each node.

pub mod key;
pub mod live;
pub mod secret;
pub mod shared;

pub use key::{KeySource, MasterKey};
pub use live::LiveVault;
pub use secret::SecretValue;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// File name of the vault inside the data directory.
pub const VAULT_FILE: &str = "vault.json";
const FORMAT: &str = "airlock.vault/v1";
const KEY_CHECK_AAD: &[u8] = b"airlock.vault/v1\0key-check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"airlock vault key check";
const NONCE_LEN: usize = 24;

/// Why a vault operation failed. Messages name secrets and files, never values.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{0}")]
    Key(String),
    #[error(
        "the master key does not open the vault {path} ({source_desc} is not the key it was created with); supply the original key, or move the vault aside to start a new one"
    )]
    WrongKey { path: PathBuf, source_desc: String },
    /// (The message names no path: it can reach an action through a
    /// credential error. Operator-facing callers add the full command.)
    #[error("no secret named `{0}` in the vault")]
    NotFound(String),
    #[error("vault {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid secret name: names are 1-128 characters of A-Z a-z 0-9 . _ - and start with a letter or digit")]
    InvalidName,
    #[error("vault I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Check a secret name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
pub fn validate_name(name: &str) -> Result<(), VaultError> {
    let ok = (1..=128).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(VaultError::InvalidName) }
}

/// Whether a name looks like a credential value rather than a name: long,
/// with upper case, lower case and digits mixed (`sk_live_4eC39HqLy...`).
/// Names such as `github-token-prod` or `API_KEY_2` do not.
pub fn looks_like_a_value(name: &str) -> bool {
    let has = |f: fn(&u8) -> bool| name.as_bytes().iter().any(f);
    let digits = name.bytes().filter(u8::is_ascii_digit).count();
    name.len() >= 20 && has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && digits >= 3
}

/// What `airlock secret list` shows about a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    /// Length of the value in bytes.
    pub bytes: usize,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct VaultFile {
    format: String,
    cipher: String,
    key_check: String,
    secrets: BTreeMap<String, SealedEntry>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SealedEntry {
    created: u64,
    updated: u64,
    bytes: usize,
    /// base64(nonce || ciphertext || tag).
    sealed: String,
}

/// An open vault: the sealed entries in memory and the key to open them.
pub struct Vault {
    /// The file, or (shared) a description of where the document is.
    path: PathBuf,
    key: MasterKey,
    key_source: KeySource,
    secrets: BTreeMap<String, SealedEntry>,
    /// Set when the document lives in a shared store, not in `path`.
    shared: Option<std::sync::Arc<dyn shared::SharedVault>>,
    /// The shared document's version as last read.
    version: Option<i64>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Open the vault in `data_dir` for reading. A missing vault opens empty
    /// (and needs no key); an existing one needs the key that created it.
    pub fn open(data_dir: &Path) -> Result<Vault, VaultError> {
        Self::open_in(data_dir, None, false)
    }

    /// Open the vault for `secret set`: creates the default key file (0600)
    /// if no key is configured and none exists yet.
    pub fn open_or_create(data_dir: &Path) -> Result<Vault, VaultError> {
        Self::open_in(data_dir, None, true)
    }

    /// Open the vault in `shared` (a shared store's document) if given,
    /// else the file in `data_dir`; `create` as in [`Vault::open_or_create`].
    /// The master key is found as for a file (in `data_dir` by default).
    pub fn open_in(
        data_dir: &Path,
        shared: Option<std::sync::Arc<dyn shared::SharedVault>>,
        create: bool,
    ) -> Result<Vault, VaultError> {
        let path = match &shared {
            Some(s) => PathBuf::from(s.describe()),
            None => data_dir.join(VAULT_FILE),
        };
        let source = key::locate(data_dir);
        let exists = match &shared {
            Some(s) => s.version().map_err(|e| shared_err(&path, e))?.is_some(),
            None => path.exists(),
        };
        let key = match key::load(&source).map_err(VaultError::Key)? {
            Some(k) => k,
            None => {
                let KeySource::File(key_path) = &source else {
                    return Err(VaultError::Key("master key unavailable".into()));
                };
                if exists {
                    return Err(VaultError::Key(format!(
                        "vault {} exists but its master key file {} does not; set ${} or ${} to the key it was created with",
                        path.display(),
                        key_path.display(),
                        key::MASTER_KEY_ENV,
                        key::MASTER_KEY_FILE_ENV
                    )));
                }
                if !create {
                    // Nothing stored and no key: an empty vault, never written.
                    return Ok(Vault {
                        path,
                        key: MasterKey::generate().map_err(VaultError::Key)?,
                        key_source: source,
                        secrets: BTreeMap::new(),
                        shared,
                        version: None,
                    });
                }
                crate::data_dir::create_private_dir(data_dir).map_err(|e| VaultError::Io {
                    path: data_dir.to_path_buf(),
                    source: e,
                })?;
                key::create_file(key_path).map_err(VaultError::Key)?
            }
        };
        let mut vault = Vault {
            path,
            key,
            key_source: source,
            secrets: BTreeMap::new(),
            shared,
            version: None,
        };
        if exists {
            vault.reload()?;
        }
        Ok(vault)
    }

    /// Re-read the vault (to pick up another process's changes).
    pub fn reload(&mut self) -> Result<(), VaultError> {
        if let Some(shared) = &self.shared {
            let loaded = shared.load().map_err(|e| shared_err(&self.path, e))?;
            return match loaded {
                Some((text, version)) => {
                    self.load_text(&text)?;
                    self.version = Some(version);
                    Ok(())
                }
                None => {
                    self.secrets.clear();
                    self.version = None;
                    Ok(())
                }
            };
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.secrets.clear();
                return Ok(());
            }
            Err(e) => {
                return Err(VaultError::Io {
                    path: self.path.clone(),
                    source: e,
                });
            }
        };
        self.load_text(&text)
    }

    /// Take the secrets from a vault document, checking it opens with the
    /// key.
    fn load_text(&mut self, text: &str) -> Result<(), VaultError> {
        let file: VaultFile = serde_json::from_str(text).map_err(|e| self.corrupt(e.to_string()))?;
        if file.format != FORMAT || file.cipher != "xchacha20poly1305" {
            return Err(self.corrupt(format!("unsupported format {} / cipher {}", file.format, file.cipher)));
        }
        match self.unseal(&file.key_check, KEY_CHECK_AAD) {
            Ok(check) if check.as_slice() == KEY_CHECK_PLAINTEXT => {}
            _ => {
                return Err(VaultError::WrongKey {
                    path: self.path.clone(),
                    source_desc: self.key_source.to_string(),
                });
            }
        }
        self.secrets = file.secrets;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names and metadata of every secret, sorted by name.
    pub fn list(&self) -> Vec<SecretInfo> {
        self.secrets
            .iter()
            .map(|(name, e)| SecretInfo {
                name: name.clone(),
                bytes: e.bytes,
                created: e.created,
                updated: e.updated,
            })
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// Decrypt one secret.
    pub fn get(&self, name: &str) -> Result<SecretValue, VaultError> {
        let entry = self.secrets.get(name).ok_or_else(|| self.not_found(name))?;
        self.unseal(&entry.sealed, &secret_aad(name))
            .map(SecretValue::new)
            .map_err(|reason| self.corrupt(format!("secret `{name}`: {reason}")))
    }

    /// Store (or replace) a secret and write the vault.
    pub fn set(&mut self, name: &str, value: &SecretValue) -> Result<(), VaultError> {
        validate_name(name)?;
        self.update(|vault| {
            let now = unix_now();
            let created = vault.secrets.get(name).map_or(now, |e| e.created);
            let sealed = vault.seal(value.expose(), &secret_aad(name))?;
            vault.secrets.insert(
                name.to_string(),
                SealedEntry {
                    created,
                    updated: now,
                    bytes: value.len(),
                    sealed,
                },
            );
            Ok(())
        })
    }

    /// Remove a secret and write the vault.
    pub fn remove(&mut self, name: &str) -> Result<(), VaultError> {
        self.update(|vault| {
            vault
                .secrets
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| vault.not_found(name))
        })
    }

    /// The document to write: the current secrets and a fresh key check.
    fn document(&self) -> Result<String, VaultError> {
        let file = VaultFile {
            format: FORMAT.into(),
            cipher: "xchacha20poly1305".into(),
            key_check: self.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)?,
            secrets: self.secrets.clone(),
        };
        serde_json::to_string_pretty(&file).map_err(|e| self.corrupt(e.to_string()))
    }

    /// Re-read, change, store if nobody stored meanwhile; else again.
    fn update_shared(
        &mut self,
        shared: &std::sync::Arc<dyn shared::SharedVault>,
        change: impl Fn(&mut Vault) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        const ATTEMPTS: usize = 20;
        for _ in 0..ATTEMPTS {
            self.reload()?;
            change(self)?;
            let text = self.document()?;
            if shared
                .replace(self.version, &text)
                .map_err(|e| shared_err(&self.path, e))?
            {
                // The version written is not known here: read it back on
                // the next use.
                self.version = None;
                return Ok(());
            }
        }
        Err(shared_err(
            &self.path,
            format!("{ATTEMPTS} concurrent changes in a row; try again"),
        ))
    }

    /// Lock, re-read, change, write atomically, unlock.
    fn update(&mut self, change: impl Fn(&mut Vault) -> Result<(), VaultError>) -> Result<(), VaultError> {
        if let Some(shared) = self.shared.clone() {
            return self.update_shared(&shared, change);
        }
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        crate::data_dir::create_private_dir(&dir).map_err(|e| VaultError::Io {
            path: dir.clone(),
            source: e,
        })?;
        let lock_path = dir.join("vault.lock");
        use std::os::unix::fs::OpenOptionsExt as _;
        let lock = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| VaultError::Io {
                path: lock_path.clone(),
                source: e,
            })?;
        lock.lock().map_err(|e| VaultError::Io {
            path: lock_path.clone(),
            source: e,
        })?;
        self.reload()?;
        change(self)?;
        let text = self.document()?;
        let tmp = dir.join(format!(".{VAULT_FILE}.{}.tmp", std::process::id()));
        let io = |source| VaultError::Io {
            path: tmp.clone(),
            source,
        };
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        drop(lock);
        Ok(())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.key.bytes().into())
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| VaultError::Key(format!("cannot get random bytes: {e}")))?;
        let ct = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .map_err(|_| self.corrupt("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    fn unseal(&self, sealed: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "sealed value is not base64".to_string())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err("sealed value is too short".into());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| "authentication failed (tampered, or sealed under another key)".to_string())
    }

    fn not_found(&self, name: &str) -> VaultError {
        VaultError::NotFound(name.to_string())
    }

    fn corrupt(&self, reason: String) -> VaultError {
        VaultError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

/// A shared vault's store failed (the message names no secret value).
fn shared_err(path: &Path, reason: String) -> VaultError {
    VaultError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(reason),
    }
}

/// The shared vault's version, for [`live::LiveVault`].
impl Vault {
    pub(crate) fn shared_version(&self) -> Option<Result<Option<i64>, VaultError>> {
        self.shared
            .as_ref()
            .map(|s| s.version().map_err(|e| shared_err(&self.path, e)))
    }
}

fn secret_aad(name: &str) -> Vec<u8> {
    let mut aad = b"airlock.vault/v1\0secret\0".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &[u8]) -> SecretValue {
        SecretValue::new(Zeroizing::new(s.to_vec()))
    }

    #[test]
    fn round_trip_and_no_plaintext_on_disk() -> Result<(), VaultError> {
        let dir = tempfile::tempdir().map_err(|e| VaultError::Key(e.to_string()))?;
        let mut vault = Vault::open_or_create(dir.path())?;
        vault.set("api", &value(b"plaintext-token-123"))?;
        let reopened = Vault::open(dir.path())?;
        assert_eq!(reopened.get("api")?.expose(), b"plaintext-token-123");
        let on_disk = std::fs::read(dir.path().join(VAULT_FILE)).map_err(|e| VaultError::Key(e.to_string()))?;
        assert!(!on_disk.windows(19).any(|w| w == b"plaintext-token-123"));
        assert!(matches!(reopened.get("other"), Err(VaultError::NotFound(_))));
        Ok(())
    }

    #[test]
    fn token_shaped_names_are_noticed() {
        assert!(looks_like_a_value("sk_live_4eC39HqLyjWDarjtT1zdp7dc"));
        assert!(looks_like_a_value("ghp_R2d2C3poX9y8Z7w6V5u4"));
        for name in [
            "github-token-prod",
            "API_KEY_2",
            "tickets-token",
            "StripeSecretKeyForProd",
        ] {
            assert!(!looks_like_a_value(name), "{name}");
        }
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".hidden", "a b", "a/b", "x=y", &"a".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "API_TOKEN", "tickets.prod-1"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }
}
