//! Record lines written straight into a buffer, byte for byte what
//! `serde_json` writes for the same [`Entry`](super::chain::Entry) (a test
//! holds the two to that).
//!
//! Host-call records are the bulk of any log, one per call, so they get a
//! hand-written encoder: no intermediate strings, no formatter, and a time
//! stamp that reuses the date while the second stays the same. The thread
//! that makes a call encodes its event ([`EncodedCalls`]) and frees what
//! the call allocated itself; the writer only frames each event with its
//! sequence number, time and chain hash ([`LineEncoder`]). Every other
//! event goes through `serde_json` on the writer.

use super::chain::{hex64, seal};
use super::event::{Event, HostCallEvent};
use crate::time::{STAMP_LEN, StampCache};

/// Host-call events encoded ahead of the writer: each event's JSON object,
/// one after another, in the order they were pushed.
#[derive(Debug, Default)]
pub struct EncodedCalls {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    stamps: StampCache,
}

impl EncodedCalls {
    pub fn push(&mut self, call: &HostCallEvent) {
        host_call(&mut self.bytes, call, &mut self.stamps);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The events so far, leaving this empty with as much room as they
    /// took (a caller that filled one batch is likely to fill another; one
    /// that made few calls never allocates much). The stamp cache stays.
    pub fn take(&mut self) -> EncodedCalls {
        let (bytes, ends) = (self.bytes.capacity(), self.ends.capacity());
        EncodedCalls {
            bytes: std::mem::replace(&mut self.bytes, Vec::with_capacity(bytes)),
            ends: std::mem::replace(&mut self.ends, Vec::with_capacity(ends)),
            stamps: self.stamps.clone(),
        }
    }

    /// Each event's JSON, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.bytes[start..end])
    }
}

/// Frames events as record lines in the writer's group buffer; keeps a
/// stamp cache, and the hex of the last hash it wrote (the next record's
/// `prev`).
#[derive(Debug, Default)]
pub struct LineEncoder {
    stamps: StampCache,
    last: Option<([u8; 32], [u8; 64])>,
}

impl LineEncoder {
    /// Append record `seq`, written at `ts`, chained after `prev`, with its
    /// hash and newline; returns the hash. On error `buf` is left as it was.
    pub fn append(
        &mut self,
        buf: &mut Vec<u8>,
        seq: u64,
        ts: &[u8; STAMP_LEN],
        prev: &[u8; 32],
        event: &Event,
    ) -> Result<[u8; 32], String> {
        let start = buf.len();
        self.header(buf, seq, ts, prev);
        match event {
            Event::HostCall(call) => host_call(buf, call, &mut self.stamps),
            other => {
                if let Err(e) = serde_json::to_writer(&mut *buf, other) {
                    buf.truncate(start);
                    return Err(format!("cannot serialize an audit record: {e}"));
                }
            }
        }
        Ok(self.end(buf, start, prev))
    }

    /// [`LineEncoder::append`] for an event encoded ahead
    /// ([`EncodedCalls`]).
    pub fn append_encoded(
        &mut self,
        buf: &mut Vec<u8>,
        seq: u64,
        ts: &[u8; STAMP_LEN],
        prev: &[u8; 32],
        event: &[u8],
    ) -> [u8; 32] {
        let start = buf.len();
        self.header(buf, seq, ts, prev);
        buf.extend_from_slice(event);
        self.end(buf, start, prev)
    }

    fn header(&mut self, buf: &mut Vec<u8>, seq: u64, ts: &[u8; STAMP_LEN], prev: &[u8; 32]) {
        buf.extend_from_slice(b"{\"seq\":");
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        buf.extend_from_slice(b",\"ts\":\"");
        buf.extend_from_slice(ts);
        buf.extend_from_slice(b"\",\"prev\":\"");
        match &self.last {
            Some((hash, hex)) if hash == prev => buf.extend_from_slice(hex),
            _ => buf.extend_from_slice(&hex64(prev)),
        }
        buf.extend_from_slice(b"\",\"event\":");
    }

    fn end(&mut self, buf: &mut Vec<u8>, start: usize, prev: &[u8; 32]) -> [u8; 32] {
        buf.push(b'}');
        let hash = seal(buf, start, prev);
        // `seal` ended the line with the hash's hex: keep it for the next
        // record's `prev`.
        let hex_at = buf.len() - 3 - 64;
        let mut hex = [0u8; 64];
        hex.copy_from_slice(&buf[hex_at..hex_at + 64]);
        self.last = Some((hash, hex));
        hash
    }
}

/// A host-call event's JSON object, as `serde_json` writes it.
fn host_call(buf: &mut Vec<u8>, call: &HostCallEvent, stamps: &mut StampCache) {
    buf.extend_from_slice(b"{\"kind\":\"host-call\",\"invocation\":");
    string(buf, &call.invocation);
    buf.extend_from_slice(b",\"call\":");
    buf.extend_from_slice(itoa::Buffer::new().format(call.call).as_bytes());
    buf.extend_from_slice(b",\"at\":\"");
    if call.at != 0 {
        buf.extend_from_slice(stamps.format(call.at));
    }
    buf.extend_from_slice(b"\",\"interface\":");
    string(buf, &call.interface);
    buf.extend_from_slice(b",\"function\":");
    string(buf, &call.function);
    buf.extend_from_slice(b",\"args\":[");
    for (i, (key, value)) in call.args.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.push(b'[');
        string(buf, key);
        buf.push(b',');
        string(buf, value);
        buf.push(b']');
    }
    buf.extend_from_slice(if call.allowed {
        b"],\"allowed\":true,\"rule\":"
    } else {
        b"],\"allowed\":false,\"rule\":"
    });
    string(buf, &call.rule);
    buf.extend_from_slice(b",\"reason\":");
    match &call.reason {
        Some(reason) => string(buf, reason),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"status\":");
    string(buf, &call.status);
    buf.extend_from_slice(b",\"duration-us\":");
    buf.extend_from_slice(itoa::Buffer::new().format(call.duration_us).as_bytes());
    buf.push(b'}');
}

pub use crate::hex::hex_into;

/// A JSON string, escaped as `serde_json` escapes it: `"`, `\` and the
/// control characters below U+0020 (the short forms where JSON has them,
/// else `\u00XX` with lowercase hex); everything else as it is.
fn string(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Nearly every string needs no escape: one branch-free pass (which the
    // compiler vectorizes) finds out, and the string is copied whole.
    let needs_escape = bytes
        .iter()
        .fold(false, |acc, &b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        buf.reserve(bytes.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(bytes);
        buf.push(b'"');
        return;
    }
    buf.push(b'"');
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        buf.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x0c => buf.extend_from_slice(b"\\f"),
            _ => {
                buf.extend_from_slice(b"\\u00");
                hex_into(buf, &[b]);
            }
        }
    }
    buf.extend_from_slice(&bytes[plain..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{self, Entry};
    use crate::audit::event::{InvocationRefused, Recovered};
    use proptest::prelude::*;
    use std::borrow::Cow;

    fn host_call(text: &str, n: u64, allowed: bool, reason: Option<&str>) -> Event {
        Event::HostCall(HostCallEvent {
            invocation: text.into(),
            call: n,
            at: if n.is_multiple_of(3) {
                0
            } else {
                1_795_510_709_123_456 + n % 1_000_000 * 7_777_777
            },
            interface: Cow::Owned(format!("{text}/if")),
            function: Cow::Borrowed("write"),
            args: (0..n % 4)
                .map(|i| (Cow::Owned(format!("k{i}{text}")), format!("{text}{i}")))
                .collect(),
            allowed,
            rule: Cow::Owned(text.to_string()),
            reason: reason.map(|r| Cow::Owned(r.to_string())),
            status: Cow::Owned(format!("ok: {text}")),
            duration_us: n.wrapping_mul(u64::MAX / 7),
        })
    }

    /// Encoded by the fast path and by `serde_json` through [`chain`]:
    /// the same bytes and the same hash, and the line decodes back.
    fn same_as_serde(seq: u64, event: Event) {
        let ts = crate::time::stamp(1_795_510_709_000_000 + seq % 1_000_000_000);
        let prev: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(seq as u8 | 1));
        let mut fast = b"earlier records\n".to_vec();
        let hash = LineEncoder::default()
            .append(&mut fast, seq, &ts, &prev, &event)
            .unwrap();
        let entry = Entry {
            seq,
            ts: String::from_utf8(ts.to_vec()).unwrap(),
            prev: chain::hex(&prev),
            event,
        };
        let (slow, slow_hash) = chain::encode(&entry, &prev).unwrap();
        let fast = &fast[b"earlier records\n".len()..];
        // A host call encoded ahead by its own thread and framed by the
        // writer: the same line again.
        if let Event::HostCall(call) = &entry.event {
            let mut ahead = EncodedCalls::default();
            ahead.push(call);
            ahead.push(call);
            let events: Vec<&[u8]> = ahead.iter().collect();
            assert_eq!(events.len(), 2);
            let mut framed = Vec::new();
            let framed_hash = LineEncoder::default().append_encoded(&mut framed, seq, &ts, &prev, events[1]);
            assert_eq!(String::from_utf8_lossy(&framed), String::from_utf8_lossy(fast));
            assert_eq!(framed_hash, hash);
        }
        assert_eq!(
            String::from_utf8_lossy(fast),
            String::from_utf8_lossy(&slow),
            "the fast encoder differs from serde_json"
        );
        assert_eq!(hash, slow_hash);
        let decoded = chain::decode(&fast[..fast.len() - 1], &prev).unwrap();
        assert_eq!(decoded.entry, entry);
    }

    #[test]
    fn host_call_lines_match_serde_json_byte_for_byte() {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        for (n, text) in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}",
            "unicode é ✓ 𝄞 \u{2028}\u{2029}",
            every_ascii.as_str(),
        ]
        .iter()
        .enumerate()
        {
            for n in [n as u64, n as u64 + 10, u64::MAX] {
                same_as_serde(n, host_call(text, n, true, None));
                same_as_serde(n, host_call(text, n, false, Some(text)));
            }
        }
    }

    #[test]
    fn other_events_go_through_serde_json_unchanged() {
        same_as_serde(
            0,
            Event::Recovered(Recovered {
                truncated_bytes: 3,
                last_good_seq: None,
                reason: "torn \"tail\"\n".into(),
            }),
        );
        same_as_serde(
            9,
            Event::InvocationRefused(InvocationRefused {
                invocation: "i".into(),
                caller: "c".into(),
                action: "a".into(),
                service_identity: None,
                function: "f".into(),
                exit_code: 2,
                error: "e".into(),
                approval: None,
                state: None,
                policies: vec!["p".into()],
                reason: Some("because".into()),
                traceparent: None,
            }),
        );
    }

    #[test]
    fn consecutive_records_chain_and_carry_their_own_stamps() {
        let mut enc = LineEncoder::default();
        let mut prev = [0u8; 32];
        let mut buf = Vec::new();
        // Across a second, a day and a year boundary, and back in time.
        for at in [
            1_798_761_599_999_999u64,
            1_798_761_600_000_000,
            1_798_761_600_000_001,
            1_795_510_709_123_456,
        ] {
            let Event::HostCall(mut call) = host_call("x", 1, true, None) else {
                unreachable!()
            };
            call.at = at;
            buf.clear();
            let before = prev;
            prev = enc
                .append(&mut buf, 0, &crate::time::stamp(0), &prev, &Event::HostCall(call))
                .unwrap();
            // `prev` comes from the encoder's copy of the last hash it wrote.
            let decoded = chain::decode(&buf[..buf.len() - 1], &before).unwrap();
            assert_eq!(decoded.entry.prev, chain::hex(&before));
            assert_eq!(decoded.hash, prev);
            let text = String::from_utf8(buf.clone()).unwrap();
            assert!(
                text.contains(&format!("\"at\":\"{}\"", crate::time::rfc3339_micros(at))),
                "{text}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_strings_encode_as_serde_json_does(
            invocation in ".*",
            rule in "\\PC*",
            reason in proptest::option::of(any::<String>()),
            key in any::<String>(),
            value in any::<String>(),
            call in any::<u64>(),
            at in 0u64..253_402_300_799_999_999,
            allowed in any::<bool>(),
        ) {
            let event = Event::HostCall(HostCallEvent {
                invocation: invocation.as_str().into(),
                call,
                at,
                interface: Cow::Owned(key.clone()),
                function: Cow::Owned(value.clone()),
                args: vec![(Cow::Owned(key), value)],
                allowed,
                rule: Cow::Owned(rule),
                reason: reason.map(Cow::Owned),
                status: Cow::Borrowed("ok"),
                duration_us: call / 3,
            });
            same_as_serde(call, event);
        }
    }
}
