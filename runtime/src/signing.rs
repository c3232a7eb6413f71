//! Signed components.
//!
//! A signature is embedded in the component in the WebAssembly signatures
//! format (`wasmsign2`): a `signature` custom section placed first, holding
//! ed25519 signatures over the SHA-256 of every byte after it. A signed
//! component still loads anywhere; a changed byte, a stripped section or
//! another key's signature fails verification. Keys are PEM files: PKCS#8
//! for the secret key (kept `0600`), SPKI for the public key, so other tools
//! (`wasmsign2 verify`, OpenSSL) read them too.
//!
//! What holds: with `trusted-signers` in force for an action, the bytes
//! airlock compiles are exactly the bytes it verified (read once), and a
//! component that is unsigned or signed by no trusted key is refused before
//! it is compiled. The signer's name is recorded in `invocation-started`.

use std::path::Path;

/// A public key airlock trusts, under the name the config gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct Signer {
    pub name: String,
    key: wasmsign2::PublicKey,
    /// `ed25519:` and the first 16 bytes of the key's blake3, in hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} {})", self.name, self.fingerprint)
    }
}

impl Signer {
    /// Read a public key (PEM or DER SPKI, or wasmsign2's raw form).
    pub fn load(name: &str, path: &Path) -> Result<Signer, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read public key {}: {e}", path.display()))?;
        let key = public_key(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Signer {
            name: name.to_string(),
            fingerprint: fingerprint(&key),
            key,
        })
    }

    /// The raw key bytes, for config versions.
    pub fn key_bytes(&self) -> Vec<u8> {
        self.key.to_bytes()
    }
}

fn public_key(bytes: &[u8]) -> Result<wasmsign2::PublicKey, String> {
    let key = match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => wasmsign2::PublicKey::from_pem(text),
        _ => wasmsign2::PublicKey::from_any(bytes),
    };
    // Key ids are hints; verification tries every trusted key.
    key.map(|mut k| {
        k.key_id = None;
        k
    })
    .map_err(|_| "not an ed25519 public key (expected PEM `BEGIN PUBLIC KEY`, as `airlock keygen` writes)".into())
}

/// `ed25519:<32 hex>`: how keys are named in output.
fn fingerprint(key: &wasmsign2::PublicKey) -> String {
    let raw = key.pk.as_ref();
    let hash = blake3::hash(raw);
    let hex: String = hash.as_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("ed25519:{hex}")
}

/// The key id written into signatures: the fingerprint's first 12 bytes.
fn key_id(key: &wasmsign2::PublicKey) -> Vec<u8> {
    blake3::hash(key.pk.as_ref()).as_bytes()[..12].to_vec()
}

/// Why a component did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("it is not signed (no `signature` section first)")]
    Unsigned,
    #[error("no trusted signer's signature matches it: it was changed after signing, or signed by another key")]
    Mismatch,
    #[error("its signature section is malformed ({0})")]
    Malformed(String),
}

/// Verify `bytes` against `trusted`; the first trusted signer whose
/// signature holds.
pub fn verify<'a>(bytes: &[u8], trusted: &'a [Signer]) -> Result<&'a Signer, SignatureError> {
    sections_fit(bytes)?;
    let mut set = wasmsign2::PublicKeySet::empty();
    for s in trusted {
        // Two names for one key are one key.
        if set.items().iter().any(|k| k.pk.as_ref() == s.key.pk.as_ref()) {
            continue;
        }
        set.insert(s.key.clone())
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    }
    let verified = set.verify(&mut &bytes[..], None).map_err(|e| match e {
        wasmsign2::WSError::NoSignatures => SignatureError::Unsigned,
        wasmsign2::WSError::VerificationFailed => SignatureError::Mismatch,
        other => SignatureError::Malformed(other.to_string()),
    })?;
    trusted
        .iter()
        .find(|s| verified.iter().any(|k| k.pk.as_ref() == s.key.pk.as_ref()))
        .ok_or(SignatureError::Mismatch)
}

/// The key ids of the signatures `bytes` carries (hex), for `inspect`;
/// `None` when it is not signed.
pub fn signature_key_ids(bytes: &[u8]) -> Option<Vec<String>> {
    // Most components are unsigned: look at the first section before
    // parsing (and copying) them all.
    if !first_section_is_signature(bytes) {
        return None;
    }
    sections_fit(bytes).ok()?;
    let module = wasmsign2::Module::deserialize(&mut &bytes[..]).ok()?;
    let info = module.signature_info().ok()?;
    let mut ids: Vec<String> = info
        .key_ids()
        .iter()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    for _ in ids.len()..info.signature_count() {
        ids.push("(no key id)".into());
    }
    Some(ids)
}

/// A cursor over untrusted bytes: every length is checked against what is
/// left before anything is read (or allocated) for it.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn leb(&mut self) -> Option<u64> {
        let (mut value, mut shift) = (0u64, 0u32);
        loop {
            let b = *self.bytes.get(self.pos)?;
            self.pos += 1;
            if shift > 28 {
                return None;
            }
            value |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
    }

    /// `len` bytes, if that many are left.
    fn take(&mut self, len: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(len).ok()?)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    /// A length-prefixed slice.
    fn sized(&mut self) -> Option<&'a [u8]> {
        let len = self.leb()?;
        self.take(len)
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

/// Whether the first section is a custom section named `signature`.
fn first_section_is_signature(bytes: &[u8]) -> bool {
    let mut r = Reader { bytes, pos: 8 };
    r.take(1) == Some(&[0][..])
        && r.sized()
            .is_some_and(|section| Reader { bytes: section, pos: 0 }.sized() == Some(&b"signature"[..]))
}

/// Check every length `wasmsign2` will trust before it allocates a buffer
/// of that size: each top-level section's, each custom section's name's,
/// and, in a leading `signature` section, every nested one.
fn sections_fit(bytes: &[u8]) -> Result<(), SignatureError> {
    let bad = |what: &str| SignatureError::Malformed(what.to_string());
    if bytes.len() < 8 {
        return Err(bad("shorter than a WebAssembly header"));
    }
    let mut r = Reader { bytes, pos: 8 };
    let mut first = true;
    while !r.done() {
        let id = r.take(1).ok_or_else(|| bad("a section is cut short"))?[0];
        let section = r
            .sized()
            .ok_or_else(|| bad("a section runs past the end of the file"))?;
        if id == 0 {
            let mut s = Reader { bytes: section, pos: 0 };
            let name = s
                .sized()
                .ok_or_else(|| bad("a custom section's name runs past the section"))?;
            if first && name == b"signature" {
                signature_fits(&section[s.pos..])
                    .ok_or_else(|| bad("the signature section's lengths do not add up"))?;
            }
        }
        first = false;
    }
    Ok(())
}

/// The signature section's payload: three header bytes' worth of varints,
/// then sets of hashes and signatures, each length-prefixed.
fn signature_fits(payload: &[u8]) -> Option<()> {
    let mut r = Reader { bytes: payload, pos: 0 };
    for _ in 0..3 {
        r.leb()?; // version, content type, hash function
    }
    let sets = r.leb()?;
    // Every round reads at least one byte, so the loops end with the payload.
    for _ in 0..sets {
        let mut set = Reader {
            bytes: r.sized()?,
            pos: 0,
        };
        let hashes = set.leb()?;
        set.take(hashes.checked_mul(32)?)?;
        let signatures = set.leb()?;
        for _ in 0..signatures {
            let mut sig = Reader {
                bytes: set.sized()?,
                pos: 0,
            };
            sig.sized()?; // key id
            sig.take(1)?; // algorithm
            sig.sized()?; // the signature
        }
    }
    Some(())
}

/// The key id a signature by `signer` carries (hex).
pub fn signer_key_id(signer: &Signer) -> String {
    key_id(&signer.key).iter().map(|b| format!("{b:02x}")).collect()
}

/// Sign `bytes` with the PEM secret key `secret_pem`; any earlier
/// signature is replaced.
pub fn sign(bytes: &[u8], secret_pem: &str) -> Result<(Vec<u8>, String), String> {
    let sk = wasmsign2::SecretKey::from_pem(secret_pem).map_err(|_| {
        "the key is not an ed25519 secret key (expected PEM `BEGIN PRIVATE KEY`, as `airlock keygen` writes)"
            .to_string()
    })?;
    let pk = wasmsign2::PublicKey {
        pk: sk.sk.public_key(),
        key_id: None,
    };
    let module = wasmsign2::Module::deserialize(&mut &bytes[..])
        .map_err(|e| format!("not a WebAssembly component or module ({e})"))?;
    let signed = sk
        .sign(module, Some(&key_id(&pk)))
        .map_err(|e| format!("cannot sign: {e}"))?;
    let mut out = Vec::with_capacity(bytes.len() + 128);
    signed.serialize(&mut out).map_err(|e| format!("cannot write: {e}"))?;
    Ok((out, fingerprint(&pk)))
}

/// A new key pair: (secret key PEM, public key PEM, fingerprint).
pub fn generate() -> (zeroize::Zeroizing<String>, String, String) {
    let pair = wasmsign2::KeyPair::generate();
    let fp = fingerprint(&pair.pk);
    (zeroize::Zeroizing::new(pair.sk.to_pem()), pair.pk.to_pem(), fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0\x00\x06\x04note!";

    #[test]
    fn round_trip_and_refusals() {
        let (sk, pk_pem, fp) = generate();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pub"), &pk_pem).unwrap();
        let signer = Signer::load("ci", &dir.path().join("k.pub")).unwrap();
        assert_eq!(signer.fingerprint, fp);
        assert!(!format!("{signer:?}").contains("BEGIN"));
        let (signed, by) = sign(MODULE, &sk).unwrap();
        assert_eq!(by, fp);
        assert_eq!(verify(&signed, std::slice::from_ref(&signer)).unwrap().name, "ci");
        assert_eq!(signature_key_ids(&signed).unwrap(), vec![signer_key_id(&signer)]);
        assert_eq!(
            verify(MODULE, std::slice::from_ref(&signer)),
            Err(SignatureError::Unsigned)
        );
        let mut tampered = signed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            verify(&tampered, std::slice::from_ref(&signer)),
            Err(SignatureError::Mismatch)
        );
        let (_, other_pem, _) = generate();
        std::fs::write(dir.path().join("o.pub"), &other_pem).unwrap();
        let other = Signer::load("other", &dir.path().join("o.pub")).unwrap();
        assert_eq!(verify(&signed, &[other]), Err(SignatureError::Mismatch));
        assert!(sign(MODULE, "nope").unwrap_err().contains("not an ed25519 secret key"));
        // One key under two names is one key, not a malformed set.
        let twice = [
            signer.clone(),
            Signer {
                name: "ci-again".into(),
                ..signer.clone()
            },
        ];
        assert_eq!(verify(&signed, &twice).unwrap().name, "ci");
        // A section claiming more bytes than the file holds is refused
        // before anything is allocated for it.
        let huge = b"\0asm\x01\0\0\0\x00\xff\xff\xff\xff\x0f\x04note";
        assert!(matches!(
            verify(huge, std::slice::from_ref(&signer)),
            Err(SignatureError::Malformed(_))
        ));
        assert_eq!(signature_key_ids(huge), None);
        // ... and so is a length inside a section: a custom section's name,
        // or a set inside the signature section.
        let name = b"\0asm\x01\0\0\0\x00\x06\xff\xff\xff\xff\x0fx";
        let set = b"\0asm\x01\0\0\0\x00\x13\x09signature\x01\x01\x01\x01\xff\xff\xff\xff\x0f";
        for bytes in [&name[..], &set[..]] {
            let e = verify(bytes, std::slice::from_ref(&signer)).unwrap_err();
            assert!(matches!(e, SignatureError::Malformed(_)), "{e}");
        }
        assert_eq!(
            sections_fit(set).unwrap_err(),
            SignatureError::Malformed("the signature section's lengths do not add up".into())
        );
        assert!(first_section_is_signature(set));
        assert!(first_section_is_signature(&signed));
        assert!(!first_section_is_signature(MODULE));
    }
}
