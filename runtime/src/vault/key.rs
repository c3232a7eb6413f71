//! The vault's master key: from `AIRLOCK_MASTER_KEY`, or from a key file.
//!
//! Lookup order:
//! 1. `AIRLOCK_MASTER_KEY`: 32 bytes as 64 hex digits or as base64.
//! 2. `AIRLOCK_MASTER_KEY_FILE`: a file holding the key in the same form.
//! 3. `<data-dir>/master.key`, created with mode 0600 the first time a
//!    secret is stored.
//!
//! A key file readable or writable by group or others is refused, as is a
//! key file that is not a regular file.

use base64::Engine as _;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const MASTER_KEY_ENV: &str = "AIRLOCK_MASTER_KEY";
pub const MASTER_KEY_FILE_ENV: &str = "AIRLOCK_MASTER_KEY_FILE";
pub const DEFAULT_KEY_FILE: &str = "master.key";

/// A 256-bit key, wiped on drop, never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Where the key came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "${MASTER_KEY_ENV}"),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

impl MasterKey {
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A new random key.
    pub fn generate() -> Result<MasterKey, String> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|e| format!("cannot get random bytes for a master key: {e}"))?;
        Ok(MasterKey(key))
    }

    /// Parse 64 hex digits or base64 of exactly 32 bytes (surrounding
    /// whitespace ignored). The error never contains the input.
    pub fn parse(text: &str) -> Result<MasterKey, String> {
        let text = text.trim();
        let mut key = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, pair) in text.as_bytes().chunks(2).enumerate() {
                let hex = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
                key[i] = u8::from_str_radix(hex, 16).map_err(|_| "not hex".to_string())?;
            }
            return Ok(MasterKey(key));
        }
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "a master key is 32 bytes written as 64 hex digits or as base64".to_string())?,
        );
        if decoded.len() != 32 {
            return Err(format!(
                "a master key is 32 bytes written as 64 hex digits or as base64 (this one decodes to {} bytes)",
                decoded.len()
            ));
        }
        key.copy_from_slice(&decoded);
        Ok(MasterKey(key))
    }

    fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_ref()))
    }
}

/// Where to look for the key, given the data directory.
pub fn locate(data_dir: &Path) -> KeySource {
    if std::env::var_os(MASTER_KEY_ENV).is_some() {
        return KeySource::Env;
    }
    match std::env::var_os(MASTER_KEY_FILE_ENV) {
        Some(p) if !p.is_empty() => KeySource::File(PathBuf::from(p)),
        _ => KeySource::File(data_dir.join(DEFAULT_KEY_FILE)),
    }
}

/// Load the key from `source`. `Ok(None)` when the source is a key file
/// that does not exist yet.
pub fn load(source: &KeySource) -> Result<Option<MasterKey>, String> {
    match source {
        KeySource::Env => {
            let text = Zeroizing::new(
                std::env::var(MASTER_KEY_ENV).map_err(|_| format!("${MASTER_KEY_ENV} is not valid UTF-8"))?,
            );
            MasterKey::parse(&text)
                .map(Some)
                .map_err(|e| format!("${MASTER_KEY_ENV}: {e}"))
        }
        KeySource::File(path) => {
            let meta = match std::fs::symlink_metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("cannot read master key file {}: {e}", path.display())),
            };
            if !meta.file_type().is_file() {
                return Err(format!(
                    "master key file {} is not a regular file (symlinks are refused)",
                    path.display()
                ));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "master key file {} is accessible by other users (mode {mode:03o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read master key file {}: {e}", path.display()))?,
            );
            MasterKey::parse(&text)
                .map(Some)
                .map_err(|e| format!("master key file {}: {e}", path.display()))
        }
    }
}

/// Create a new key file with mode 0600; fails if it already exists.
pub fn create_file(path: &Path) -> Result<MasterKey, String> {
    let key = MasterKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create master key file {}: {e}", path.display()))?;
    let mut text = key.encode();
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write master key file {}: {e}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64_and_hides_input_in_errors() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(MasterKey::parse(&hex).map(|k| k.bytes()[31]), Ok(0xff));
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(MasterKey::parse(&b64).map(|k| k.bytes()[0]), Ok(7));
        let err = MasterKey::parse("c2VjcmV0LXRvby1zaG9ydA==").err().unwrap_or_default();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(err.contains("32 bytes"), "{err}");
    }
}
