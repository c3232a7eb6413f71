//! The writer's encoder: record lines written straight into the group
//! buffer, byte for byte what `serde_json` writes for the same
//! [`Entry`](super::chain::Entry) (a test holds the two to that).
//!
//! Host-call records are the bulk of any log and are written on every
//! call's account, so they get a hand-written encoder: no intermediate
//! strings, no formatter, and a time stamp that reuses the date while the
//! second stays the same. Every other event goes through `serde_json`.

use super::chain::{HASH_SUFFIX, chain_hash};
use super::event::{Event, HostCallEvent};
use crate::time::{STAMP_LEN, StampCache};

/// Appends record lines to a buffer; keeps the stamp cache between them.
#[derive(Debug, Default)]
pub struct LineEncoder {
    stamps: StampCache,
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
        buf.extend_from_slice(b"{\"seq\":");
        buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        buf.extend_from_slice(b",\"ts\":\"");
        buf.extend_from_slice(ts);
        buf.extend_from_slice(b"\",\"prev\":\"");
        hex_into(buf, prev);
        buf.extend_from_slice(b"\",\"event\":");
        match event {
            Event::HostCall(call) => self.host_call(buf, call),
            other => {
                if let Err(e) = serde_json::to_writer(&mut *buf, other) {
                    buf.truncate(start);
                    return Err(format!("cannot serialize an audit record: {e}"));
                }
            }
        }
        buf.push(b'}');
        Ok(seal(buf, start, prev))
    }

    fn host_call(&mut self, buf: &mut Vec<u8>, call: &HostCallEvent) {
        buf.extend_from_slice(b"{\"kind\":\"host-call\",\"invocation\":");
        string(buf, &call.invocation);
        buf.extend_from_slice(b",\"call\":");
        buf.extend_from_slice(itoa::Buffer::new().format(call.call).as_bytes());
        buf.extend_from_slice(b",\"at\":\"");
        if call.at != 0 {
            buf.extend_from_slice(self.stamps.format(call.at));
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
}

/// Hash the body `buf[start..]` (a complete JSON object) after `prev` and
/// replace its closing `}` with the hash field, the `}` and a newline.
pub fn seal(buf: &mut Vec<u8>, start: usize, prev: &[u8; 32]) -> [u8; 32] {
    let hash = chain_hash(prev, &buf[start..]);
    buf.pop();
    buf.extend_from_slice(HASH_SUFFIX);
    hex_into(buf, &hash);
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// Lowercase hex of `bytes`, appended.
pub fn hex_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.reserve(bytes.len() * 2);
    for &b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// A JSON string, escaped as `serde_json` escapes it: `"`, `\` and the
/// control characters below U+0020 (the short forms where JSON has them,
/// else `\u00XX` with lowercase hex); everything else as it is.
fn string(buf: &mut Vec<u8>, text: &str) {
    buf.push(b'"');
    let bytes = text.as_bytes();
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
            at: if n % 3 == 0 { 0 } else { 1_795_510_709_123_456 + n % 1_000_000 * 7_777_777 },
            interface: Cow::Owned(format!("{text}/if")),
            function: Cow::Borrowed("write"),
            args: (0..n % 4).map(|i| (Cow::Owned(format!("k{i}{text}")), format!("{text}{i}"))).collect(),
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
            }),
        );
    }

    #[test]
    fn stamps_of_consecutive_records_in_other_seconds_and_days() {
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
            prev = enc
                .append(&mut buf, 0, &crate::time::stamp(0), &prev, &Event::HostCall(call))
                .unwrap();
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
