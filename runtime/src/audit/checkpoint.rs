//! Signed checkpoints: (sequence, head hash) signed with the log's ed25519
//! key, so a truncated or rewritten log is detectable against a checkpoint
//! kept elsewhere.

use super::chain::{hex, parse_hex};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use zeroize::Zeroizing;

pub const FORMAT: &str = "airlock.checkpoint/v1";

/// A signed statement that record `seq` of the log has hash `head`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Checkpoint {
    pub format: String,
    pub seq: u64,
    pub head: String,
    pub ts: String,
    pub public_key: String,
    pub signature: String,
}

fn message(seq: u64, head: &str, ts: &str) -> Vec<u8> {
    format!("{FORMAT}\n{seq}\n{head}\n{ts}").into_bytes()
}

impl Checkpoint {
    /// Check the signature (by the key named in the checkpoint).
    pub fn verify_signature(&self) -> Result<VerifyingKey, String> {
        if self.format != FORMAT {
            return Err(format!("unsupported checkpoint format {:?}", self.format));
        }
        let key_bytes = parse_hex(self.public_key.as_bytes()).ok_or("public-key is not 64 hex digits")?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| "public-key is not an ed25519 key")?;
        let sig_bytes: Vec<u8> = (0..self.signature.len())
            .step_by(2)
            .filter_map(|i| {
                self.signature
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| "signature is not 64 bytes of hex")?;
        key.verify(&message(self.seq, &self.head, &self.ts), &sig)
            .map_err(|_| "the signature does not match (the checkpoint was altered or signed by another key)")?;
        Ok(key)
    }
}

/// The log's signing key, kept in `audit/checkpoint.key` (mode 0600).
pub struct CheckpointKey(SigningKey);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey(public {})", hex(self.0.verifying_key().as_bytes()))
    }
}

impl CheckpointKey {
    /// Load the key, creating it on first use. A key file others can read
    /// is refused.
    pub fn load_or_create(path: &Path) -> Result<CheckpointKey, String> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if !meta.file_type().is_file() || mode & 0o077 != 0 {
                    return Err(format!(
                        "checkpoint key {} must be a regular file readable only by its owner (run `chmod 600 {}`)",
                        path.display(),
                        path.display()
                    ));
                }
                let text = Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                );
                let seed = parse_hex(text.trim().as_bytes())
                    .ok_or_else(|| format!("checkpoint key {} is not 64 hex digits", path.display()))?;
                Ok(CheckpointKey(SigningKey::from_bytes(&seed)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = Zeroizing::new([0u8; 32]);
                getrandom::fill(seed.as_mut()).map_err(|e| format!("cannot get random bytes: {e}"))?;
                // Written aside and published with a hard link, so a
                // process opening the log at the same moment sees either
                // no key or the whole key, and both end up with the same.
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
                let text = Zeroizing::new(format!("{}\n", hex(seed.as_ref())));
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(CheckpointKey(SigningKey::from_bytes(&seed))),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => CheckpointKey::load_or_create(path),
                    Err(e) => Err(format!("cannot create {}: {e}", path.display())),
                }
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// A key for keyed digests of sensitive values, derived from the
    /// signing key: digests in the log cannot be checked against guesses
    /// without the data directory's key file.
    pub fn digest_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(
            "airlock 2026 audit sensitive-value digests v1",
            self.0.as_bytes(),
        ))
    }

    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    pub fn sign(&self, seq: u64, head: &[u8; 32], ts: String) -> Checkpoint {
        let head = hex(head);
        let signature = self.0.sign(&message(seq, &head, &ts));
        Checkpoint {
            format: FORMAT.into(),
            seq,
            head,
            public_key: self.public_hex(),
            signature: hex(&signature.to_bytes()),
            ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_and_tampering_is_caught() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let key = CheckpointKey::load_or_create(&dir.path().join("k"))?;
        let cp = key.sign(41, &[7; 32], "2026-11-24T00:00:00.000000Z".into());
        cp.verify_signature()?;
        let mut bad = cp.clone();
        bad.seq = 40;
        assert!(bad.verify_signature().is_err());
        let again = CheckpointKey::load_or_create(&dir.path().join("k"))?;
        assert_eq!(again.public_hex(), key.public_hex());
        Ok(())
    }
}
