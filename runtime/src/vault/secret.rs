//! [`SecretValue`]: secret bytes that zeroize on drop and never print.

use std::fmt;
use zeroize::Zeroizing;

/// Largest secret the vault stores, in bytes. Credentials are tokens and
/// keys, not documents; the cap keeps a mistaken `secret set < big-file`
/// from landing in the vault.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Plaintext secret bytes.
///
/// The bytes are wiped when the value is dropped, and `Debug` prints only
/// the length, so a secret cannot reach a log line or an error through
/// formatting. Only host code inside this crate can read the bytes.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Take ownership of plaintext bytes (the caller's buffer moves in, so
    /// no unwiped copy stays behind).
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> SecretValue {
        SecretValue(bytes)
    }

    /// The plaintext, for the host functions that inject or sign with it.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<redacted, {} bytes>)", self.0.len())
    }
}

/// Read a secret value for `airlock secret set`: from the terminal without
/// echo when stdin is a terminal, otherwise all of stdin. One trailing
/// newline (`\n` or `\r\n`) is removed, so `echo "$TOKEN" | airlock secret
/// set NAME` stores the token itself.
pub fn read_from_stdin(name: &str) -> Result<SecretValue, String> {
    use std::io::{IsTerminal as _, Read as _};
    let stdin = std::io::stdin();
    let mut bytes = if stdin.is_terminal() {
        let typed = Zeroizing::new(
            rpassword::prompt_password(format!("value for secret {name} (input hidden): "))
                .map_err(|e| format!("cannot read the secret from the terminal: {e}"))?,
        );
        Zeroizing::new(typed.as_bytes().to_vec())
    } else {
        let mut buf = Zeroizing::new(Vec::new());
        stdin
            .lock()
            .take(MAX_SECRET_BYTES as u64 + 3)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
        buf
    };
    let len = bytes.len();
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(len - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(len - 1);
    }
    if bytes.is_empty() {
        return Err(
            "the secret value is empty: pipe it on stdin, e.g. `printf %s \"$TOKEN\" | airlock secret set NAME`".into(),
        );
    }
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(format!("the secret value is longer than {MAX_SECRET_BYTES} bytes"));
    }
    Ok(SecretValue::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = SecretValue::new(Zeroizing::new(b"hunter2-token".to_vec()));
        let shown = format!("{s:?} {:#?}", s);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("13 bytes"));
    }
}
