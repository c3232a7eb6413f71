//! The on-disk form of the log: one JSON object per line, hash-chained.
//!
//! ```text
//! {"seq":7,"ts":"2026-11-24T09:41:26.123456Z","prev":"<64 hex>","event":{...},"hash":"<64 hex>"}
//! ```
//!
//! `hash` is blake3 over the previous record's hash (32 bytes) followed by
//! the line's *body*: the exact bytes of the line with the trailing
//! `,"hash":"…"` removed and `}` restored. The body is what `serde_json`
//! wrote, so verification hashes the stored bytes themselves, never a
//! re-serialization. The first record's `prev` is all zeros.

use super::event::Event;
use crate::hex::DIGITS;
use serde::{Deserialize, Serialize};

/// `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];
/// What follows a record's body: `,"hash":"`, 64 hex digits, `"}`.
pub(crate) const HASH_SUFFIX: &[u8] = b",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_SUFFIX.len() + 64 + 2;

/// One record as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub ts: String,
    pub prev: String,
    pub event: Event,
}

/// A parsed, hash-checked line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub entry: Entry,
    pub hash: [u8; 32],
}

/// Serialize `entry` (whose `prev` must be `prev`) into one line with its
/// hash, newline included.
pub fn encode(entry: &Entry, prev: &[u8; 32]) -> Result<(Vec<u8>, [u8; 32]), String> {
    let mut line = Vec::new();
    let hash = encode_into(&mut line, entry, prev)?;
    Ok((line, hash))
}

/// [`encode`], appending the line to `buf`. On error `buf` is left as it
/// was. The writer uses [`super::encode::LineEncoder`], which writes the
/// same bytes without going through `serde_json` for host calls.
pub fn encode_into(buf: &mut Vec<u8>, entry: &Entry, prev: &[u8; 32]) -> Result<[u8; 32], String> {
    let start = buf.len();
    if let Err(e) = serde_json::to_writer(&mut *buf, entry) {
        buf.truncate(start);
        return Err(format!("cannot serialize an audit record: {e}"));
    }
    Ok(seal(buf, start, prev))
}

/// Hash the body `buf[start..]` (a complete JSON object) after `prev` and
/// replace its closing `}` with the hash field, the `}` and a newline.
#[inline]
pub fn seal(buf: &mut Vec<u8>, start: usize, prev: &[u8; 32]) -> [u8; 32] {
    let hash = chain_hash(prev, &buf[start..]);
    buf.pop();
    buf.extend_from_slice(HASH_SUFFIX);
    buf.extend_from_slice(&hex64(&hash));
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// Lowercase hex of a hash.
#[inline]
pub(super) fn hex64(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

pub fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Parse one line (without its newline) and check that its stored hash is
/// the hash of its body after `prev`. The caller checks sequence and `prev`.
pub fn decode(line: &[u8], prev: &[u8; 32]) -> Result<Record, String> {
    if line.len() <= HASH_SUFFIX_LEN {
        return Err("too short to be a record".into());
    }
    let (head, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let hex_hash = suffix
        .strip_prefix(b",\"hash\":\"")
        .and_then(|s| s.strip_suffix(b"\"}"))
        .ok_or("the line does not end with its hash")?;
    let stored = parse_hex(hex_hash).ok_or("the stored hash is not 64 hex digits")?;
    let mut body = head.to_vec();
    body.push(b'}');
    let entry: Entry = serde_json::from_slice(&body).map_err(|e| format!("not a valid record: {e}"))?;
    let computed = chain_hash(prev, &body);
    if computed != stored {
        return Err("its hash does not match its contents and the previous record".into());
    }
    Ok(Record { entry, hash: stored })
}

pub use crate::hex::hex;

/// Parse 64 lowercase hex digits (the only spelling airlock writes, so a
/// case change is a change).
pub fn parse_hex(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return None;
    }
    let nibble = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Recovered;

    #[test]
    fn lines_round_trip_and_any_flipped_byte_breaks_them() -> Result<(), String> {
        let entry = Entry {
            seq: 0,
            ts: "2026-11-24T00:00:00.000000Z".into(),
            prev: hex(&GENESIS),
            event: Event::Recovered(Recovered {
                truncated_bytes: 3,
                last_good_seq: None,
                reason: "test".into(),
            }),
        };
        let (line, hash) = encode(&entry, &GENESIS)?;
        let body = &line[..line.len() - 1];
        let rec = decode(body, &GENESIS)?;
        assert_eq!(rec.entry, entry);
        assert_eq!(rec.hash, hash);
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] ^= 0x01;
            assert!(decode(&bad, &GENESIS).is_err(), "flip at {i} undetected");
        }
        assert!(decode(body, &[1; 32]).is_err(), "wrong prev undetected");
        Ok(())
    }

    #[test]
    fn hex_round_trips_and_only_lowercase_parses() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let text = hex(&bytes);
        assert_eq!(text.len(), 64);
        assert_eq!(&text[..6], "0b3055");
        assert_eq!(parse_hex(text.as_bytes()), Some(bytes));
        assert_eq!(parse_hex(text.to_uppercase().as_bytes()), None);
        assert_eq!(parse_hex(&text.as_bytes()[..62]), None);
    }
}
