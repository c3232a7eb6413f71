//! The escaping carriers airlock's redactor claims to see through, written
//! the way real encoders write them, and read back by other
//! implementations than airlock's (serde_json, percent-encoding, url,
//! html-escape, quoted_printable), so a test can check that what a guest
//! could decode holds no secret.
//!
//! Which characters an encoder escapes, and in which hex case, is chosen at
//! random per character: Go's JSON encoder escapes `&<>`, PHP's also `/`,
//! others every non-ASCII or every character.

/// A small deterministic generator for per-character choices.
pub struct Choices(pub u64);

impl Choices {
    pub fn new(seed: u64) -> Choices {
        Choices(seed | 1)
    }

    /// A number below `n`.
    pub fn next(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    fn hex(&mut self, value: u32, width: usize) -> String {
        let h = format!("{value:0width$x}");
        if self.next(2) == 0 { h } else { h.to_uppercase() }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Carrier {
    Json,
    Html,
    Percent,
    Form,
    QuotedPrintable,
}

pub const CARRIERS: [Carrier; 5] = [
    Carrier::Json,
    Carrier::Html,
    Carrier::Percent,
    Carrier::Form,
    Carrier::QuotedPrintable,
];

impl Carrier {
    /// `text` as this carrier's encoder could write it.
    pub fn encode(self, text: &str, c: &mut Choices) -> String {
        let mut out = String::new();
        for ch in text.chars() {
            match self {
                Carrier::Json => json_char(ch, c, &mut out),
                Carrier::Html => html_char(ch, c, &mut out),
                Carrier::Percent | Carrier::Form => percent_char(ch, matches!(self, Carrier::Form), c, &mut out),
                Carrier::QuotedPrintable => {
                    let must = ch == '=' || !(ch.is_ascii_graphic() || ch == ' ');
                    if !must && c.next(2) == 0 {
                        out.push(ch);
                    } else {
                        let mut buf = [0u8; 4];
                        for b in ch.encode_utf8(&mut buf).bytes() {
                            out.push_str(&format!("={}", c.hex(u32::from(b), 2)));
                        }
                    }
                    // A soft line break anywhere, as QP wraps long lines.
                    if c.next(8) == 0 {
                        out.push_str("=\r\n");
                    }
                }
            }
        }
        out
    }

    /// The text a guest's decoder reads back, or `None` when redaction
    /// broke the carrier's syntax (which hides the secret as well).
    pub fn decode(self, text: &str) -> Option<String> {
        match self {
            Carrier::Json => serde_json::from_str(&format!("\"{text}\"")).ok(),
            Carrier::Html => Some(html_escape::decode_html_entities(text).into_owned()),
            Carrier::Percent => percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned()),
            Carrier::Form => url::form_urlencoded::parse(format!("k={text}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned()),
            Carrier::QuotedPrintable => quoted_printable::decode(text.as_bytes(), quoted_printable::ParseMode::Robust)
                .ok()
                .and_then(|b| String::from_utf8(b).ok()),
        }
    }
}

fn json_char(ch: char, c: &mut Choices, out: &mut String) {
    let must = matches!(ch, '"' | '\\') || (ch as u32) < 0x20;
    match (must, c.next(3)) {
        (false, 0) => out.push(ch),
        (_, 1) if ch == '/' => out.push_str("\\/"),
        _ => {
            let mut units = [0u16; 2];
            for u in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{}", c.hex(u32::from(*u), 4)));
            }
        }
    }
}

fn html_char(ch: char, c: &mut Choices, out: &mut String) {
    let must = matches!(ch, '&' | '<' | '>' | '"' | '\'');
    match (must, c.next(4)) {
        (false, 0) => out.push(ch),
        (_, 1) => {
            let zeros = "0".repeat(c.next(3) as usize);
            out.push_str(&format!("&#{zeros}{};", ch as u32));
        }
        (true, 2) => out.push_str(match ch {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            _ => "&apos;",
        }),
        _ => {
            let x = if c.next(2) == 0 { "x" } else { "X" };
            out.push_str(&format!("&#{x}{};", c.hex(ch as u32, 1)));
        }
    }
}

fn percent_char(ch: char, form: bool, c: &mut Choices, out: &mut String) {
    let must = matches!(ch, '%' | '+' | '&' | '=' | ' ') || ch.is_control();
    if ch == ' ' && form && c.next(2) == 0 {
        out.push('+');
    } else if !must && c.next(2) == 0 {
        out.push(ch);
    } else {
        let mut buf = [0u8; 4];
        for b in ch.encode_utf8(&mut buf).bytes() {
            out.push_str(&format!("%{}", c.hex(u32::from(b), 2)));
        }
    }
}

/// `text` through one carrier, or one inside another (`layers[0]` applied
/// first), with per-character choices from `c`.
pub fn encode_layers(text: &str, layers: &[Carrier], c: &mut Choices) -> String {
    layers.iter().fold(text.to_string(), |t, carrier| carrier.encode(&t, c))
}

/// Whether `secret` can be read back from `body` by decoding `layers`
/// (outermost first) with the reference decoders.
pub fn reveals(body: &str, layers: &[Carrier], secret: &str) -> bool {
    let mut text = Some(body.to_string());
    for carrier in layers.iter().rev() {
        text = text.and_then(|t| carrier.decode(&t));
    }
    text.is_some_and(|t| t.contains(secret))
}
