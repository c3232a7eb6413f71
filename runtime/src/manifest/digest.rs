//! The digest that names a component: what pins, caches and signatures
//! refer to.

use std::fmt;

/// A blake3 digest of component bytes, written `blake3:<64 hex digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn parse(s: &str) -> Result<Digest, String> {
        let hex = s
            .strip_prefix("blake3:")
            .ok_or_else(|| format!("digest {s:?} must start with `blake3:`"))?;
        blake3::Hash::from_hex(hex)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| format!("digest {s:?} must be `blake3:` followed by 64 hex digits"))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.hex())
    }
}
