//! The outbound destination parser and allow rules: a rule's destination,
//! methods and path prefixes, and a request URL, all from the input.
//!
//! Beyond "no panic": a request the rule permits must lie under one of its
//! path prefixes however a server reads the path (percent-decoded, `\` as
//! `/`, `;parameters` dropped, dot segments resolved), and a destination
//! parsed from an origin's own text matches that origin.
#![no_main]

use airlock::outbound::destination::{Destination, Origin, path_within};
use airlock::outbound::policy::{AllowRule, HttpPolicy, RawAllowRule};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
struct Input {
    destination: String,
    methods: Option<Vec<String>>,
    prefixes: Option<Vec<String>>,
    method: String,
    url: String,
}

/// The path as a lenient server resolves it.
fn server_view(path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let decoded = percent_decode(path).replace('\\', "/");
    for segment in decoded.split('/').skip(1) {
        let bare = segment.split(';').next().unwrap_or_default();
        match bare {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    format!("/{}", out.join("/"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fuzz_target!(|input: Input| {
    let raw = RawAllowRule {
        destination: input.destination,
        methods: input.methods,
        path_prefixes: input.prefixes,
        allow_private: false,
    };
    let Ok(url) = url::Url::parse(&input.url) else {
        let _ = AllowRule::resolve(&raw);
        return;
    };
    if let Ok(origin) = Origin::of(&url) {
        // An origin's own text is a destination that matches it.
        let own = Destination::parse(&format!("{origin}"))
            .unwrap_or_else(|e| panic!("the origin {origin} is not a destination: {e}"));
        assert!(own.matches(&origin), "{own} does not match its own origin {origin}");
    }
    let Ok(rule) = AllowRule::resolve(&raw) else {
        return;
    };
    let policy = HttpPolicy {
        allow: vec![rule.clone()],
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        max_request_bytes: 1,
        max_response_bytes: 1,
        max_redirects: 0,
        max_requests: 1,
    };
    if policy.permits(&input.method, &url).is_err() {
        return;
    }
    assert!(
        rule.destination
            .matches(&Origin::of(&url).expect("a permitted URL has an origin"))
    );
    // Prefixes written with escapes or parameters are compared as written;
    // the others must hold for the path a server sees.
    if let Some(prefixes) = rule
        .path_prefixes
        .as_ref()
        .filter(|ps| ps.iter().all(|p| !p.contains(['%', ';'])))
    {
        let seen = server_view(url.path());
        assert!(
            prefixes.iter().any(|p| path_within(&seen, p)),
            "{url} permitted under {prefixes:?}, but a server reads its path as {seen}"
        );
    }
});
