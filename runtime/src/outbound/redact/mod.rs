//! Reflected-secret redaction.
//!
//! An API may echo what it received (a debug endpoint, an error page, a
//! "whoami"). Before any part of a response reaches the guest, every
//! spelling of every secret the action could have sent is replaced with
//! [`MARKER`]. Two mechanisms together cover the spellings:
//!
//! - **Patterns**, searched for byte for byte: the raw secret, its hex (either
//!   case), and its base64 (standard and URL-safe, at every byte alignment,
//!   so the secret is found inside a longer encoded value such as a `Basic`
//!   header).
//! - **Decoded [`views`]**: escapes that can be applied to any subset of a
//!   secret's characters, in either hex case (JSON `\uXXXX`, HTML/XML
//!   character references, percent- and form-encoding, quoted-printable,
//!   line wrapping), cannot be listed as patterns. The response is decoded
//!   one carrier at a time, and two carriers deep (percent-encoding inside
//!   a JSON string, say), and the patterns are searched in every decoded
//!   view; a match is mapped back to the original bytes, escapes included.
//!
//! The patterns are secret-equivalent, so they live only in zeroizing
//! buffers; the search (memchr's `memmem`) borrows them rather than
//! compiling them into an automaton that would outlive them unwiped.
//!
//! Redaction is a last line of defence against echoing APIs, not against a
//! destination that transforms the secret on purpose (encrypts it, splits
//! it, encodes it three carriers deep): which destinations receive a
//! credential is the policy's decision.

mod views;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use std::borrow::Cow;
use views::{Decoder, View};
use zeroize::Zeroizing;

/// What a redacted secret becomes.
pub const MARKER: &str = "[REDACTED]";

/// Base64 and hex forms shorter than this are not redacted on their own: a
/// couple of characters would match everywhere and identify nothing.
const MIN_FRAGMENT: usize = 4;

/// How many carriers deep the views decode. Two covers an escape inside an
/// escape (a percent-encoded value in a JSON string, a JSON document in an
/// HTML attribute); each level multiplies the views searched by six.
const MAX_LAYERS: usize = 2;

/// Replaces every known spelling of a set of secrets.
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

    /// Every byte range of `bytes` that spells some pattern, directly or
    /// through decoded views, merged.
    fn covered(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        self.find(bytes, None, &mut ranges);
        // One reusable view per layer: a layer's views are decoded one after
        // another, each while the view it comes from is kept.
        let mut scratch: Vec<View> = (0..MAX_LAYERS).map(|_| View::default()).collect();
        self.find_decoded(bytes, None, &mut scratch, &mut ranges);
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

    /// Search every view decoded from `bytes` (`outer`'s bytes, or the
    /// original when `outer` is `None`), one more carrier deep for each
    /// view left in `scratch`.
    fn find_decoded(&self, bytes: &[u8], outer: Option<&View>, scratch: &mut [View], ranges: &mut Vec<(usize, usize)>) {
        let Some((view, deeper)) = scratch.split_first_mut() else {
            return;
        };
        for decoder in Decoder::ALL {
            if decoder.decode(bytes, outer, view) {
                self.find(&view.bytes, Some(view), ranges);
                self.find_decoded(&view.bytes, Some(view), deeper, ranges);
            }
        }
    }

    /// Every match of a pattern in `bytes`, as a range of the original
    /// bytes (through `view` when `bytes` are decoded).
    fn find(&self, bytes: &[u8], view: Option<&View>, ranges: &mut Vec<(usize, usize)>) {
        for p in &self.patterns {
            for start in memchr::memmem::find_iter(bytes, p.as_slice()) {
                let end = start + p.len();
                ranges.push(view.map_or((start, end), |v| v.source(start, end)));
            }
        }
    }

    /// `bytes` with every pattern replaced; borrowed when nothing matched.
    pub fn redact<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut current: Cow<'a, [u8]> = Cow::Borrowed(bytes);
        if self.patterns.is_empty() {
            return current;
        }
        // Replacing can butt two fragments together into a new match only in
        // contrived cases; a few passes settle it.
        for _ in 0..4 {
            let ranges = self.covered(&current);
            if ranges.is_empty() {
                return current;
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
        // Still a match after every pass (a secret that is part of the
        // marker itself, say): nothing of the text is handed out.
        if self.covered(&current).is_empty() {
            current
        } else {
            Cow::Owned(MARKER.as_bytes().to_vec())
        }
    }

    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

/// The patterns for `secret`: itself, its hex and its base64 cores.
/// Escaping carriers (JSON, HTML, percent, quoted-printable) need no
/// pattern: the decoded views undo them.
fn encodings(secret: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = vec![Zeroizing::new(secret.to_vec())];
    for upper in [true, false] {
        forms.push(Zeroizing::new(hex(secret, upper)));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    fn redactor(secret: &[u8]) -> Redactor {
        let mut r = Redactor::default();
        r.add(secret);
        r
    }

    #[test]
    fn every_encoding_is_redacted_at_every_alignment() {
        let secret = b"s3cr3t/t0ken+with=odd chars";
        let r = redactor(secret);
        let mut haystacks: Vec<Vec<u8>> = vec![
            secret.to_vec(),
            b"s3cr3t%2Ft0ken%2Bwith%3Dodd%20chars".to_vec(),
            b"s3cr3t%2ft0ken%2bwith%3dodd+chars".to_vec(),
            hex(secret, false),
            hex(secret, true),
        ];
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

    #[test]
    fn the_red_team_echo_is_redacted() {
        // Go's encoding/json escapes `&`, `<` and `>` and nothing else.
        let r = redactor(b"tok&en<x>");
        let body = br#"{"authorization":"Bearer tok\u0026en\u003cx\u003e"}"#;
        let out = r.redact(body);
        assert_eq!(out.as_ref(), br#"{"authorization":"Bearer [REDACTED]"}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(!parsed.to_string().contains("tok&en"));
    }

    fn text(alphabet: &str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> + use<> {
        prop::collection::vec(prop::sample::select(alphabet.chars().collect::<Vec<_>>()), len)
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Base64 and hex of the secret wrapped over lines, as MIME and PEM
        /// write them.
        #[test]
        fn a_wrapped_encoding_is_redacted(
            secret in text("abcXYZ019 /+=&%\\\"é😀", 6..40),
            before in text("abc xyz\n", 0..60),
            after in text("abc xyz\n", 0..60),
            width in 4usize..80,
            crlf in any::<bool>(),
        ) {
            let r = redactor(secret.as_bytes());
            let data = format!("{before}{secret}{after}");
            for encoded in [STANDARD.encode(data.as_bytes()).into_bytes(), hex(data.as_bytes(), true)] {
                let eol = if crlf { "\r\n" } else { "\n" };
                let wrapped = encoded
                    .chunks(width)
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect::<Vec<_>>()
                    .join(eol);
                let out = r.redact(wrapped.as_bytes());
                let unfolded: Vec<u8> = out.iter().copied().filter(|b| !matches!(b, b'\r' | b'\n')).collect();
                for form in encodings(secret.as_bytes()) {
                    prop_assert!(form.len() < MIN_FRAGMENT
                        || memchr::memmem::find(&unfolded, &form).is_none(), "{wrapped:?}");
                }
            }
        }
    }
}
