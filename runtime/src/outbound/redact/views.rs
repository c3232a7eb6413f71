//! Decoded views of a response, each mapped back to the bytes it came from.
//!
//! A secret can come back escaped one character at a time, in any mix: a
//! JSON encoder may write `&` as `\u0026` and leave the rest alone, another
//! escapes every character, in either hex case. Such spellings cannot be
//! listed as patterns (a 30-character secret has 2^30 of them), so the
//! redactor decodes instead: each [`Decoder`] turns every escape of its
//! carrier it finds into the bytes it stands for, whatever the escape's
//! case or padding, and leaves every other byte as it is. The secret is then
//! searched for in the decoded bytes, and a match is mapped back to the
//! span of the original bytes that produced it, escapes included, which is
//! what gets redacted.
//!
//! Decoding is lenient on purpose: it decodes sequences that the carrier's
//! grammar would not produce at that place (a `%41` outside a URL, say),
//! because a false match costs a redacted stretch of text while a missed
//! one hands the secret to the guest.

use zeroize::Zeroizing;

/// A carrier whose escapes are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    /// JSON string escapes: `\uXXXX` in either hex case (surrogate pairs
    /// joined), `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`.
    Json,
    /// HTML and XML character references: `&#DDD;` and `&#xHHH;` (`x` or
    /// `X`, either hex case, any leading zeros, the `;` optional) and the
    /// five XML entities `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;` in
    /// either case.
    Html,
    /// Percent-encoding: `%HH` in either hex case; `+` stays `+`.
    Percent,
    /// `application/x-www-form-urlencoded`: `%HH` in either hex case and `+`
    /// for a space.
    Form,
    /// MIME quoted-printable: `=HH` in either hex case, and soft line breaks
    /// (`=` before a line end, with any trailing blanks) removed.
    QuotedPrintable,
    /// Line breaks (CR, LF) removed with the blanks (spaces, tabs) that
    /// indent the next line, as MIME, PEM, YAML block scalars and many
    /// encoders wrap long base64 or hex values.
    Unfold,
}

impl Decoder {
    pub const ALL: [Decoder; 6] = [
        Decoder::Json,
        Decoder::Html,
        Decoder::Percent,
        Decoder::Form,
        Decoder::QuotedPrintable,
        Decoder::Unfold,
    ];

    /// Where the next byte that could start one of this carrier's escapes
    /// is, at or after `from`.
    fn next_trigger(self, input: &[u8], from: usize) -> Option<usize> {
        let rest = input.get(from..)?;
        let found = match self {
            Decoder::Json => memchr::memchr(b'\\', rest),
            Decoder::Html => memchr::memchr(b'&', rest),
            Decoder::Percent => memchr::memchr(b'%', rest),
            Decoder::Form => memchr::memchr2(b'%', b'+', rest),
            Decoder::QuotedPrintable => memchr::memchr(b'=', rest),
            Decoder::Unfold => memchr::memchr2(b'\r', b'\n', rest),
        };
        found.map(|at| from + at)
    }

    /// `input` decoded, or `None` when no escape was found (the view would
    /// equal its input). When `input` is itself a view's bytes, `outer` is
    /// that view, and the spans of the result are in the coordinates of
    /// `outer`'s input, so a view decoded two carriers deep maps straight
    /// back to the original bytes.
    ///
    /// The view is written into `view`, whose buffers are reused (a
    /// response of a few MiB is decoded dozens of times, and fresh buffers
    /// each time cost more in page faults than the decoding itself).
    /// Returns whether anything was decoded; when not, `view` holds nothing
    /// meaningful.
    pub fn decode(self, input: &[u8], outer: Option<&View>, view: &mut View) -> bool {
        let Some(mut next) = self.next_trigger(input, 0) else {
            return false;
        };
        if u32::try_from(input.len()).is_err() {
            return false;
        }
        let mut out = Builder::new(view, outer);
        let mut i = 0;
        loop {
            // Bytes up to the next possible escape are copied as a run.
            out.copy(input, i, next);
            i = next;
            if i >= input.len() {
                break;
            }
            let step = match self {
                Decoder::Json => json_escape(input, i, &mut out),
                Decoder::Html => html_reference(input, i, &mut out),
                Decoder::Percent => percent_escape(input, i, b'%', &mut out),
                Decoder::Form if input[i] == b'+' => {
                    out.push(b' ', i, i + 1);
                    out.changed = true;
                    Some(1)
                }
                Decoder::Form => percent_escape(input, i, b'%', &mut out),
                Decoder::QuotedPrintable => quoted_printable(input, i, &mut out),
                Decoder::Unfold => {
                    out.changed = true;
                    let blanks = input[i + 1..]
                        .iter()
                        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                        .count();
                    Some(1 + blanks)
                }
            };
            match step {
                Some(n) => i += n,
                None => {
                    out.copy(input, i, i + 1);
                    i += 1;
                }
            }
            next = self.next_trigger(input, i).unwrap_or(input.len());
        }
        out.changed
    }
}

/// Decoded bytes and, for each, the span of input bytes it came from.
#[derive(Default)]
pub struct View {
    /// Zeroized on drop: a decoded view may hold a secret in the clear.
    pub bytes: Zeroizing<Vec<u8>>,
    starts: Vec<u32>,
    ends: Vec<u32>,
}

impl View {
    /// The input span that produced decoded bytes `start..end` (non-empty).
    pub fn source(&self, start: usize, end: usize) -> (usize, usize) {
        (self.starts[start] as usize, self.ends[end - 1] as usize)
    }
}

struct Builder<'a> {
    view: &'a mut View,
    /// The view the input was decoded from, if it is one.
    outer: Option<&'a View>,
    changed: bool,
}

impl<'a> Builder<'a> {
    fn new(view: &'a mut View, outer: Option<&'a View>) -> Builder<'a> {
        view.bytes.clear();
        view.starts.clear();
        view.ends.clear();
        Builder {
            view,
            outer,
            changed: false,
        }
    }

    /// Input bytes `from..to`, unchanged. Callers only pass offsets within
    /// an input whose length fits in `u32` (checked in `decode`).
    fn copy(&mut self, input: &[u8], from: usize, to: usize) {
        let view = &mut *self.view;
        view.bytes.extend_from_slice(&input[from..to]);
        match self.outer {
            Some(outer) => {
                view.starts.extend_from_slice(&outer.starts[from..to]);
                view.ends.extend_from_slice(&outer.ends[from..to]);
            }
            None => {
                view.starts.extend(from as u32..to as u32);
                view.ends.extend(from as u32 + 1..to as u32 + 1);
            }
        }
    }

    /// One decoded byte from input `start..end`.
    fn push(&mut self, byte: u8, start: usize, end: usize) {
        let (start, end) = match self.outer {
            Some(outer) => outer.source(start, end),
            None => (start, end),
        };
        self.view.bytes.push(byte);
        self.view.starts.push(start as u32);
        self.view.ends.push(end as u32);
    }

    /// A decoded code point from input `start..end`, as UTF-8.
    fn push_char(&mut self, c: char, start: usize, end: usize) {
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            self.push(b, start, end);
        }
        self.changed = true;
    }
}

fn hex_digit(b: u8) -> Option<u32> {
    char::from(b).to_digit(16)
}

/// The value of exactly `n` hex digits at `input[at..]`.
fn hex_at(input: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = input.get(at..at.checked_add(n)?)?;
    digits.iter().try_fold(0u32, |acc, &b| Some(acc * 16 + hex_digit(b)?))
}

/// A JSON escape at `i`; the number of input bytes it took.
fn json_escape(input: &[u8], i: usize, out: &mut Builder) -> Option<usize> {
    if input[i] != b'\\' {
        return None;
    }
    let simple = match *input.get(i + 1)? {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'u' => return unicode_escape(input, i, out),
        _ => return None,
    };
    out.push(simple, i, i + 2);
    out.changed = true;
    Some(2)
}

/// `\uXXXX` at `i`, joined with a following low surrogate when it is a high
/// one. A lone surrogate stands for no character and is left as it is.
fn unicode_escape(input: &[u8], i: usize, out: &mut Builder) -> Option<usize> {
    let unit = hex_at(input, i + 2, 4)?;
    let (code, len) = match unit {
        0xD800..=0xDBFF => {
            if input.get(i + 6..i + 8) != Some(b"\\u".as_slice()) {
                return None;
            }
            let low = hex_at(input, i + 8, 4).filter(|l| (0xDC00..=0xDFFF).contains(l))?;
            (0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00), 12)
        }
        0xDC00..=0xDFFF => return None,
        _ => (unit, 6),
    };
    out.push_char(char::from_u32(code)?, i, i + len);
    Some(len)
}

/// More significant digits than this cannot name a code point (U+10FFFF
/// is 6 hex or 7 decimal digits); leading zeros are skipped however many.
const MAX_REFERENCE_DIGITS: usize = 8;

/// An HTML/XML character reference at `i`.
fn html_reference(input: &[u8], i: usize, out: &mut Builder) -> Option<usize> {
    if input[i] != b'&' {
        return None;
    }
    let rest = &input[i + 1..];
    if rest.first() == Some(&b'#') {
        let hex = matches!(rest.get(1), Some(b'x' | b'X'));
        let start = if hex { 2 } else { 1 };
        let radix = if hex { 16 } else { 10 };
        let digits = rest[start..]
            .iter()
            .take_while(|b| char::from(**b).is_digit(radix))
            .count();
        if digits == 0 {
            return None;
        }
        let all = &rest[start..start + digits];
        let zeros = all.iter().take_while(|b| **b == b'0').count();
        let significant = &all[zeros..];
        if significant.len() > MAX_REFERENCE_DIGITS {
            return None;
        }
        let code = significant
            .iter()
            .try_fold(0u32, |acc, &b| Some(acc * radix + char::from(b).to_digit(radix)?))?;
        let c = char::from_u32(code).filter(|c| *c != '\0')?;
        let mut len = 1 + start + digits;
        if rest.get(start + digits) == Some(&b';') {
            len += 1;
        }
        out.push_char(c, i, i + len);
        return Some(len);
    }
    const NAMED: [(&[u8], char); 5] = [
        (b"amp", '&'),
        (b"lt", '<'),
        (b"gt", '>'),
        (b"quot", '"'),
        (b"apos", '\''),
    ];
    for (name, c) in NAMED {
        if rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name) {
            let mut len = 1 + name.len();
            if rest.get(name.len()) == Some(&b';') {
                len += 1;
            }
            out.push_char(c, i, i + len);
            return Some(len);
        }
    }
    None
}

/// `%HH` (or `=HH`, with `mark`) at `i`.
fn percent_escape(input: &[u8], i: usize, mark: u8, out: &mut Builder) -> Option<usize> {
    if input[i] != mark {
        return None;
    }
    let byte = hex_at(input, i + 1, 2)?;
    // Two hex digits always fit a byte.
    out.push(byte as u8, i, i + 3);
    out.changed = true;
    Some(3)
}

/// A quoted-printable escape or soft line break at `i`.
fn quoted_printable(input: &[u8], i: usize, out: &mut Builder) -> Option<usize> {
    if input[i] != b'=' {
        return None;
    }
    if let Some(n) = percent_escape(input, i, b'=', out) {
        return Some(n);
    }
    // A soft line break: `=`, optional transport padding, then CRLF or LF.
    let blanks = input[i + 1..].iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let after = i + 1 + blanks;
    let eol = match input.get(after..) {
        Some([b'\r', b'\n', ..]) => 2,
        Some([b'\n', ..]) => 1,
        _ => return None,
    };
    out.changed = true;
    Some(1 + blanks + eol)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(d: Decoder, input: &str) -> String {
        let mut view = View::default();
        assert!(
            d.decode(input.as_bytes(), None, &mut view),
            "{d:?} changed nothing in {input:?}"
        );
        String::from_utf8(view.bytes.to_vec()).expect("utf-8")
    }

    #[test]
    fn each_carrier_decodes_its_escapes_in_any_case() {
        assert_eq!(
            decoded(Decoder::Json, r#"a\u0026b\u003C\u003e\/\"\\\n\uD83D\uDE00\ud83d\ude00"#),
            "a&b<>/\"\\\n😀😀"
        );
        assert_eq!(
            decoded(
                Decoder::Html,
                "&#x41;&#X6a;&#0065;&#97&amp;&LT;&gt&quot;&apos;&#x1F600;"
            ),
            "AjAa&<>\"'😀"
        );
        assert_eq!(decoded(Decoder::Percent, "%41%6a%4A+%2b"), "AjJ++");
        assert_eq!(decoded(Decoder::Form, "%41+%2B"), "A +");
        assert_eq!(decoded(Decoder::QuotedPrintable, "a=3Db=3d=\r\nc= \t\nd"), "a=b=cd");
        assert_eq!(decoded(Decoder::Unfold, "ab\r\ncd\nef\n  gh\r\n\tij"), "abcdefghij");
    }

    #[test]
    fn malformed_escapes_are_left_as_they_are() {
        for (d, input) in [
            (Decoder::Json, r"\u12 \uD800x \uDC00 \q \"),
            (Decoder::Html, "&#; &#x; &#xD800; &#0; &bogus; &"),
            (Decoder::Percent, "%4 %zz %"),
            (Decoder::QuotedPrintable, "=4 =zz ="),
        ] {
            assert!(
                !d.decode(input.as_bytes(), None, &mut View::default()),
                "{d:?} changed {input:?}"
            );
        }
    }

    #[test]
    fn spans_map_back_to_the_escapes_through_two_layers() {
        let input = br#"x%5Cu0041y"#;
        let (mut pct, mut json) = (View::default(), View::default());
        assert!(Decoder::Percent.decode(input, None, &mut pct));
        assert_eq!(pct.bytes.as_slice(), br"x\u0041y");
        assert!(Decoder::Json.decode(&pct.bytes, Some(&pct), &mut json));
        assert_eq!(json.bytes.as_slice(), b"xAy");
        assert_eq!(json.source(1, 2), (1, 9), "`A` came from `%5Cu0041`");
        assert_eq!(json.source(0, 3), (0, 10));
    }

    #[test]
    fn leading_zeros_do_not_hide_a_reference() {
        let input = format!("&#{}65;&#x{}41;", "0".repeat(10_000), "0".repeat(100));
        assert_eq!(decoded(Decoder::Html, &input), "AA");
        // Too many significant digits name no code point: left alone.
        assert!(!Decoder::Html.decode(b"&#123456789012;", None, &mut View::default()));
    }
}
