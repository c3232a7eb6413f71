//! Bearer tokens: `alk_<id>_<secret>`, shown once, stored as a hash.
//!
//! The id (8 random bytes, hex) names the token in `token list` and
//! `token revoke` and in audit records; the secret (32 random bytes,
//! base64url) is what proves it. The database keeps blake3 of the whole
//! token, and lookups compare hashes, so neither the database nor a
//! timing side channel on the comparison reveals a usable token.

use base64::Engine as _;
use zeroize::Zeroizing;

const PREFIX: &str = "alk_";

/// A freshly minted token: its id and the one copy of its value.
pub struct NewToken {
    pub id: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Mint a token from the system's secure random source.
pub fn mint() -> Result<NewToken, String> {
    let mut id = [0u8; 8];
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut id).map_err(|e| format!("no secure randomness: {e}"))?;
    getrandom::fill(secret.as_mut()).map_err(|e| format!("no secure randomness: {e}"))?;
    let id = crate::hex::hex(&id);
    let encoded = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_ref()));
    Ok(NewToken {
        value: Zeroizing::new(format!("{PREFIX}{id}_{}", encoded.as_str())),
        id,
    })
}

/// The stored form of a token.
pub fn hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The id part of a well-formed token, or why it is not one. The message
/// never repeats the token.
pub fn id_of(token: &str) -> Result<&str, &'static str> {
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or("not an airlock token (tokens start with `alk_`)")?;
    let (id, secret) = rest.split_once('_').ok_or("malformed airlock token")?;
    let well_formed = id.len() == 16
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed {
        Ok(id)
    } else {
        Err("malformed airlock token")
    }
}

/// Read a token from a file (first line, surrounding whitespace dropped).
/// Tokens never come from argv, where every user of the machine can see them.
pub fn read_file(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?,
    );
    let token = Zeroizing::new(text.lines().next().unwrap_or("").trim().to_string());
    id_of(&token).map_err(|e| format!("token file {}: {e}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_differ() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert_ne!(a.value.as_str(), b.value.as_str());
        assert_eq!(id_of(&a.value).unwrap(), a.id);
        assert_ne!(hash(&a.value), hash(&b.value));
        assert!(!format!("{a:?}").contains(a.value.as_str()));
    }

    #[test]
    fn malformed_tokens_are_refused_without_echo() {
        for bad in ["", "alk_", "alk_zz_yy", "bearer abc", "alk_0123456789abcdef_short"] {
            let e = id_of(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad));
        }
    }
}
