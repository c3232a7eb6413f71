//! What a request carries besides its arguments: the invocation id it runs
//! under, and what the agent says about it ([`Intent`]: its stated reason
//! and the W3C trace it belongs to). The intent is recorded with the
//! invocation, shown to reviewers, and readable by policies
//! (`context.reason`, `context.traceparent`); it never changes the tool's
//! arguments.
//!
//! Below everything that stores or judges requests (the store, approvals,
//! policies), so they all name these types without depending on the
//! invocation machinery.

use crate::error::Error;

/// A new random invocation id (128 bits, hex).
pub fn new_invocation_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness the time keeps ids unique within this process.
    if getrandom::fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&crate::time::now_micros().to_be_bytes());
    }
    crate::hex::hex(&bytes)
}

/// Longest stated reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// An invocation's stated reason and correlation id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Intent {
    /// Why the agent asks, in its own words (trimmed, at most
    /// [`MAX_REASON_BYTES`], no control characters but tab and newline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that came with `traceparent` (vendors' entries),
    /// passed on to the exported spans; never without a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Intent {
    pub fn is_empty(&self) -> bool {
        self.reason.is_none() && self.traceparent.is_none()
    }

    /// Build from what a request carried. A reason that is too long or
    /// holds control characters is refused (a usage error); an empty one is
    /// none. A `traceparent` that is not valid W3C is dropped, as the W3C
    /// spec says (`ignored` reports that it was).
    pub fn new(reason: Option<&str>, traceparent: Option<&str>) -> Result<(Intent, bool), Error> {
        let reason = match reason.map(str::trim) {
            None | Some("") => None,
            Some(r) if r.len() > MAX_REASON_BYTES => {
                return Err(Error::Usage(format!(
                    "the stated reason is {} bytes; at most {MAX_REASON_BYTES} are kept",
                    r.len()
                )));
            }
            Some(r)
                if r.chars()
                    .any(|c| (c.is_control() && c != '\n' && c != '\t') || invisible(c)) =>
            {
                return Err(Error::Usage(
                    "the stated reason holds control or invisible formatting characters (bidi overrides, zero-width, line separators); send plain text".into(),
                ));
            }
            Some(r) => Some(r.to_string()),
        };
        let (traceparent, ignored) = match traceparent.map(str::trim) {
            None | Some("") => (None, false),
            Some(t) if valid_traceparent(t) => (Some(t.to_string()), false),
            Some(_) => (None, true),
        };
        Ok((
            Intent {
                reason,
                traceparent,
                tracestate: None,
            },
            ignored,
        ))
    }

    /// Keep the `tracestate` that came with this intent's `traceparent`:
    /// dropped when there is no valid `traceparent` (as W3C says) or it is
    /// not a plausible header value (printable ASCII, at most
    /// [`MAX_TRACESTATE_BYTES`]).
    pub fn with_tracestate(mut self, tracestate: Option<&str>) -> Intent {
        self.tracestate = match tracestate.map(str::trim) {
            Some(t)
                if self.traceparent.is_some()
                    && !t.is_empty()
                    && t.len() <= MAX_TRACESTATE_BYTES
                    && t.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
            {
                Some(t.to_string())
            }
            _ => None,
        };
        self
    }
}

/// Longest `tracestate` passed on (W3C: 512 bytes is what every vendor
/// must accept).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// Characters that change how text shows without showing themselves:
/// bidi controls, zero-width characters, the Unicode line and paragraph
/// separators, the soft hyphen and the BOM.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// W3C Trace Context level 1: `00-` 32 hex trace id `-` 16 hex parent id
/// `-` 2 hex flags, lower case, ids not all zero.
pub fn valid_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_traceparents() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (i, ignored) = Intent::new(Some("  refund for order 7  "), Some(tp)).unwrap();
        assert_eq!(i.reason.as_deref(), Some("refund for order 7"));
        assert_eq!(i.traceparent.as_deref(), Some(tp));
        assert!(!ignored);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let (i, ignored) = Intent::new(None, Some(bad)).unwrap();
            assert!(i.traceparent.is_none() && ignored, "{bad}");
        }
        assert!(Intent::new(Some(&"x".repeat(1025)), None).is_err());
        assert!(Intent::new(Some("a\u{1b}[31m"), None).is_err());
        for sneaky in ["pay \u{202e}evil", "a\u{200b}b", "line\u{2028}break", "\u{feff}x"] {
            assert!(Intent::new(Some(sneaky), None).is_err(), "{sneaky:?}");
        }
        assert!(Intent::new(Some("   "), None).unwrap().0.is_empty());
        let (i, _) = Intent::new(None, Some(tp)).unwrap();
        assert_eq!(
            i.clone()
                .with_tracestate(Some(" congo=t61rcWkgMzE "))
                .tracestate
                .as_deref(),
            Some("congo=t61rcWkgMzE")
        );
        assert!(i.clone().with_tracestate(Some("a=\u{7}")).tracestate.is_none());
        assert!(i.with_tracestate(Some(&"a=b,".repeat(200))).tracestate.is_none());
        let (none, _) = Intent::new(None, Some("garbage")).unwrap();
        assert!(none.with_tracestate(Some("congo=x")).tracestate.is_none());
    }
}
