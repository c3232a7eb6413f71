//! Reflected-secret redaction.
//!
//! An API may echo what it received (a debug endpoint, an error page, a
//! "whoami"). Before any part of a response reaches the guest, every
//! encoding of every secret the action could have sent is replaced with
//! [`MARKER`]: raw bytes, base64 (standard and URL-safe, at every byte
//! alignment, so the secret is found inside a longer encoded string),
//! percent-encoding (either hex case, `+` for space), hex, and JSON string
//! escaping. A secret inside a longer encoded value (a `Basic` header,
//! say) is found through the alignment-independent base64 fragments.
//!
//! The patterns are secret-equivalent, so they live only in zeroizing
//! buffers; the search (memchr's `memmem`) borrows them rather than
//! compiling them into an automaton that would outlive them unwiped.
//!
//! Redaction is a last line of defence against echoing APIs, not against a
//! destination that transforms the secret on purpose: which destinations
//! receive a credential is the policy's decision.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use std::borrow::Cow;
use zeroize::Zeroizing;

/// What a redacted secret becomes.
pub const MARKER: &str = "[REDACTED]";

/// Base64 fragments shorter than this are not redacted on their own: a
/// couple of characters would match everywhere and identify nothing.
const MIN_FRAGMENT: usize = 4;

/// Replaces every known encoding of a set of secrets.
#[derive(Default)]
pub struct Redactor {
    /// The patterns (zeroized on drop; they are secret-equivalent).
    patterns: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor(<{} patterns>)", self.patterns.len())
    }
}

impl Redactor {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Add a secret (or an injected wire value) in all its encodings.
    pub fn add(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        for form in encodings(secret) {
            if !form.is_empty()
                && (*form == secret || form.len() >= MIN_FRAGMENT)
                && !self.patterns.iter().any(|p| **p == *form)
            {
                self.patterns.push(form);
            }
        }
    }

    /// Every byte range of `bytes` covered by some pattern, merged.
    fn covered(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for p in &self.patterns {
            ranges.extend(memchr::memmem::find_iter(bytes, p.as_slice()).map(|start| (start, start + p.len())));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                // Overlapping or touching matches become one redaction.
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// `bytes` with every pattern replaced; borrowed when nothing matched.
    pub fn redact<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut current: Cow<'a, [u8]> = Cow::Borrowed(bytes);
        // Replacing can butt two fragments together into a new match only in
        // contrived cases; a few passes settle it.
        for _ in 0..4 {
            let ranges = self.covered(&current);
            if ranges.is_empty() {
                break;
            }
            let mut out = Vec::with_capacity(current.len());
            let mut at = 0;
            for (start, end) in ranges {
                out.extend_from_slice(&current[at..start]);
                out.extend_from_slice(MARKER.as_bytes());
                at = end;
            }
            out.extend_from_slice(&current[at..]);
            current = Cow::Owned(out);
        }
        current
    }

    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

/// Every encoding of `secret` that an echoing server plausibly produces.
fn encodings(secret: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = vec![Zeroizing::new(secret.to_vec())];
    for upper in [true, false] {
        forms.push(Zeroizing::new(percent_encode(secret, upper, false)));
        forms.push(Zeroizing::new(percent_encode(secret, upper, true)));
        forms.push(Zeroizing::new(hex(secret, upper)));
    }
    let json = json_escape(secret);
    // Some JSON encoders (PHP's, for one) also escape `/`.
    forms.push(Zeroizing::new(
        String::from_utf8_lossy(&json).replace('/', "\\/").into_bytes(),
    ));
    forms.push(Zeroizing::new(json));
    // application/x-www-form-urlencoded, exactly as query credentials are sent.
    forms.push(Zeroizing::new(
        url::form_urlencoded::byte_serialize(secret)
            .collect::<String>()
            .into_bytes(),
    ));
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            forms.push(base64_core(engine, secret, offset));
        }
    }
    forms
}

/// The characters of base64 that depend only on `secret`'s bytes when it
/// starts `offset` bytes into the encoded data.
fn base64_core(engine: &base64::engine::GeneralPurpose, secret: &[u8], offset: usize) -> Zeroizing<Vec<u8>> {
    let mut data = Zeroizing::new(vec![0u8; offset]);
    data.extend_from_slice(secret);
    let encoded = Zeroizing::new(engine.encode(data.as_slice()).into_bytes());
    let start = (offset * 8).div_ceil(6);
    let end = ((offset + secret.len()) * 8) / 6;
    Zeroizing::new(encoded.get(start..end).map(<[u8]>::to_vec).unwrap_or_default())
}

fn percent_encode(bytes: &[u8], upper: bool, plus_for_space: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else if b == b' ' && plus_for_space {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]);
        }
    }
    out
}

fn hex(bytes: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    bytes
        .iter()
        .flat_map(|&b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]])
        .collect()
}

fn json_escape(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let quoted = serde_json::to_string(&text).unwrap_or_default();
    quoted.trim_matches('"').as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn every_encoding_is_redacted_at_every_alignment() {
        let secret = b"s3cr3t/t0ken+with=odd chars";
        let mut r = Redactor::default();
        r.add(secret);
        let mut haystacks: Vec<Vec<u8>> =
            vec![secret.to_vec(), percent_encode(secret, true, false), hex(secret, false)];
        for prefix in ["", "a", "ab", "Bearer ", "user:"] {
            let mut data = prefix.as_bytes().to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"tail");
            haystacks.push(STANDARD.encode(&data).into_bytes());
            haystacks.push(URL_SAFE_NO_PAD.encode(&data).into_bytes());
        }
        for h in haystacks {
            let out = r.redact(&h);
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains(MARKER), "not redacted: {text}");
            assert!(!out.windows(secret.len()).any(|w| w == secret));
            assert!(!text.contains(&STANDARD.encode(secret)[..8]), "{text}");
        }
        assert_eq!(r.redact(b"nothing here"), Cow::Borrowed(b"nothing here".as_slice()));
    }
}
