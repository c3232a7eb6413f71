//! The reflected-secret redactor, with a structured input: a secret, and a
//! response body that spells it (raw, hex, base64 at any alignment inside a
//! longer value) under up to two carriers (JSON, HTML, percent, form,
//! quoted-printable, line folding), each escaping a chosen subset of its
//! characters in a chosen hex case, between arbitrary bytes.
//!
//! The claim tested is the module's own (`outbound::redact`): the redacted
//! body holds neither the secret nor the spelling that was put in it.
#![no_main]

use airlock::outbound::redact::Redactor;
use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;

/// Shorter secrets are not credentials (and a couple of bytes would match
/// everywhere).
const MIN_SECRET: usize = 8;

#[derive(Arbitrary, Debug)]
enum Base {
    Raw,
    Hex {
        upper: bool,
    },
    Base64 {
        url: bool,
        pad: bool,
        lead: Vec<u8>,
        trail: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Json,
    Html,
    Percent,
    Form,
    QuotedPrintable,
    Unfold,
}

#[derive(Arbitrary, Debug)]
struct Carrier {
    kind: Kind,
    /// Which characters are escaped (cycled over the text).
    mask: Vec<bool>,
    /// The hex case of each escape (cycled).
    upper: Vec<bool>,
    /// Named entities and short escapes where there are some.
    short: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    secret: Vec<u8>,
    others: Vec<Vec<u8>>,
    base: Base,
    carriers: Vec<Carrier>,
    before: Vec<u8>,
    after: Vec<u8>,
}

fn cycle(bits: &[bool], i: usize) -> bool {
    !bits.is_empty() && bits[i % bits.len()]
}

fn hex2(b: u8, upper: bool) -> String {
    if upper { format!("{b:02X}") } else { format!("{b:02x}") }
}

fn encode(base: &Base, secret: &[u8]) -> Vec<u8> {
    match base {
        Base::Raw => secret.to_vec(),
        Base::Hex { upper } => secret.iter().flat_map(|b| hex2(*b, *upper).into_bytes()).collect(),
        Base::Base64 { url, pad, lead, trail } => {
            let lead = &lead[..lead.len().min(2)];
            let trail = &trail[..trail.len().min(4)];
            let whole = [lead, secret, trail].concat();
            let engine = match (url, pad) {
                (false, true) => &STANDARD,
                (false, false) => &STANDARD_NO_PAD,
                (true, true) => &URL_SAFE,
                (true, false) => &URL_SAFE_NO_PAD,
            };
            engine.encode(whole).into_bytes()
        }
    }
}

/// `text` under carrier `c`, as a correct encoder writes it: the bytes the
/// carrier's decoder would read as an escape are always escaped; the others
/// as the mask says. Folding cannot carry a text with line breaks of its
/// own, so such a text is left as it is.
fn carry(c: &Carrier, text: &[u8]) -> Vec<u8> {
    if matches!(c.kind, Kind::Unfold) && text.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len() * 3);
    for (i, &b) in text.iter().enumerate() {
        let must = match c.kind {
            Kind::Json => b == b'\\',
            Kind::Html => b == b'&',
            Kind::Percent => b == b'%',
            Kind::Form => b == b'%' || b == b'+',
            Kind::QuotedPrintable => b == b'=',
            Kind::Unfold => false,
        };
        let on = must || cycle(&c.mask, i);
        let up = cycle(&c.upper, i);
        match c.kind {
            // JSON and HTML escapes name characters, not bytes: ASCII only.
            Kind::Json if on && (1..0x80).contains(&b) => {
                let short = match b {
                    b'"' => Some("\\\""),
                    b'\\' => Some("\\\\"),
                    b'/' => Some("\\/"),
                    b'\n' => Some("\\n"),
                    b'\t' => Some("\\t"),
                    _ => None,
                };
                match short.filter(|_| c.short) {
                    Some(s) => out.extend_from_slice(s.as_bytes()),
                    None => out.extend_from_slice(format!("\\u00{}", hex2(b, up)).as_bytes()),
                }
            }
            Kind::Html if on && (1..0x80).contains(&b) => {
                let named = match b {
                    b'&' => Some("&amp;"),
                    b'<' => Some("&lt;"),
                    b'>' => Some("&gt;"),
                    b'"' => Some("&quot;"),
                    b'\'' => Some("&apos;"),
                    _ => None,
                };
                match named.filter(|_| c.short) {
                    Some(s) => out.extend_from_slice(s.as_bytes()),
                    None if up => out.extend_from_slice(format!("&#x{};", hex2(b, i % 2 == 0)).as_bytes()),
                    None => out.extend_from_slice(format!("&#{b};").as_bytes()),
                }
            }
            Kind::Percent | Kind::Form if on => {
                if matches!(c.kind, Kind::Form) && b == b' ' && c.short && !must {
                    out.push(b'+');
                } else {
                    out.extend_from_slice(format!("%{}", hex2(b, up)).as_bytes());
                }
            }
            Kind::QuotedPrintable if on => {
                if c.short && i > 0 && !must {
                    // A soft line break, then the byte as it is.
                    out.extend_from_slice(b"=\r\n");
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("={}", hex2(b, up)).as_bytes());
                }
            }
            // Not before a blank: unfolding drops the indent after a break.
            Kind::Unfold if on && i > 0 && !matches!(b, b' ' | b'\t') => {
                out.extend_from_slice(if up { b"\r\n " } else { b"\n\t" });
                out.push(b);
            }
            _ => out.push(b),
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|input: Input| {
    if input.secret.len() < MIN_SECRET || input.secret.len() > 256 {
        return;
    }
    let mut redactor = Redactor::default();
    redactor.add(&input.secret);
    for other in input.others.iter().take(3) {
        redactor.add(other);
    }
    let mut spelled = encode(&input.base, &input.secret);
    // Two carriers deep at most: what the redactor decodes.
    for carrier in input.carriers.iter().take(2) {
        spelled = carry(carrier, &spelled);
    }
    // Set apart by a byte no carrier escapes or consumes, so the bytes
    // around cannot change what the spelling decodes to.
    let body = [&input.before[..], b"|", &spelled, b"|", &input.after[..]].concat();
    let out = redactor.redact(&body);
    assert!(
        !contains(&out, &input.secret),
        "the secret survived redaction: {:?}",
        String::from_utf8_lossy(&out)
    );
    let delimited = [&b"|"[..], &spelled, b"|"].concat();
    assert!(
        !contains(&out, &delimited),
        "its spelling {:?} survived redaction: {:?}",
        String::from_utf8_lossy(&spelled),
        String::from_utf8_lossy(&out)
    );
    // Nothing to redact, nothing changed.
    let quiet = Redactor::default().redact(&body);
    assert_eq!(&*quiet, &body[..]);
});
