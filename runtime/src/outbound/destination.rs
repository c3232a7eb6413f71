//! Destinations: where an outbound request may go, as policy states it.
//!
//! A destination is `scheme://host[:port]` (http or https; the port
//! defaults to 80/443). The host is a name, an IP literal, or `*.suffix`
//! for any subdomain of `suffix` (not `suffix` itself). URLs are parsed and
//! normalized (case, IDNA, IP spellings, dot segments) by the `url` crate
//! on both sides, so a rule and a request compare in the same form.

use std::fmt;
use url::Url;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The (scheme, host, port) a request goes to. Two URLs are same-origin
/// exactly when their `Origin`s are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub scheme: Scheme,
    /// Normalized host: lowercase name, or IP literal (IPv6 in brackets).
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of a request URL; refuses anything but plain http(s) URLs
    /// with a host and no credentials in them.
    pub fn of(url: &Url) -> Result<Origin, String> {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("scheme `{other}` is not supported (use http or https)")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("URLs with user info (user:password@) are refused; use a credential".into());
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?;
        // The URL parser takes `*` in a name; no host has one, and a rule's
        // `*.` means "any subdomain", so a request naming it is refused.
        if host.contains('*') {
            return Err(format!("the URL's host {host:?} holds `*`, which no host name does"));
        }
        Ok(Origin {
            scheme,
            host: host.to_string(),
            port: url.port().unwrap_or(scheme.default_port()),
        })
    }

    /// The host without IPv6 brackets, for DNS and TLS server names.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

/// A destination pattern from policy: exact origin or `*.suffix` wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: u16,
    /// As written in the config, for messages.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Subdomains(String),
}

impl Destination {
    /// Parse `scheme://host[:port]` (a trailing `/` is allowed; any other
    /// path, query or user info is refused so rules stay unambiguous).
    pub fn parse(text: &str) -> Result<Destination, String> {
        let bad = |why: &str| {
            format!("destination {text:?}: {why} (expected scheme://host[:port], e.g. https://api.example.com)")
        };
        let (wildcard, parse_text) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://wildcard.{rest}")),
            None => (false, text.to_string()),
        };
        let url = Url::parse(&parse_text).map_err(|e| bad(&e.to_string()))?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a destination has no path, query or fragment (use path-prefixes)"));
        }
        let origin = Origin::of(&url).map_err(|e| bad(&e))?;
        let host = if wildcard {
            let suffix = origin.host.trim_start_matches("wildcard").to_string();
            if suffix.matches('.').count() < 2 || url.host().is_some_and(|h| !matches!(h, url::Host::Domain(_))) {
                return Err(bad(
                    "a wildcard needs a domain of at least two labels, e.g. *.example.com",
                ));
            }
            HostPattern::Subdomains(suffix)
        } else {
            HostPattern::Exact(origin.host)
        };
        Ok(Destination {
            scheme: origin.scheme,
            host,
            port: origin.port,
            text: text.to_string(),
        })
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && match &self.host {
                HostPattern::Exact(h) => *h == origin.host,
                HostPattern::Subdomains(suffix) => {
                    origin.host.ends_with(suffix.as_str()) && origin.host.len() > suffix.len()
                }
            }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `path` is `prefix` or lies beneath it, segment-wise: `/tickets`
/// matches `/tickets` and `/tickets/7`, not `/ticketsX`.
pub fn path_within(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(u: &str) -> Origin {
        Url::parse(u).ok().and_then(|u| Origin::of(&u).ok()).unwrap_or(Origin {
            scheme: Scheme::Http,
            host: "invalid".into(),
            port: 0,
        })
    }

    /// Found by the `destination` fuzz target: the URL parser accepts
    /// `https://*.example.com/`, whose origin no destination could name.
    #[test]
    fn a_request_host_with_a_star_is_refused() {
        for u in ["https://*.example.com/", "https://*./", "http://a*b.example.com/x"] {
            let url = Url::parse(u).unwrap();
            let e = Origin::of(&url).unwrap_err();
            assert!(e.contains("holds `*`"), "{u}: {e}");
        }
    }

    #[test]
    fn destinations_match_exact_origins_only() -> Result<(), String> {
        let d = Destination::parse("https://API.example.com")?;
        assert!(d.matches(&origin("https://api.example.com/x")));
        assert!(d.matches(&origin("https://api.example.com:443/")));
        assert!(!d.matches(&origin("http://api.example.com/")));
        assert!(!d.matches(&origin("https://api.example.com:8443/")));
        assert!(!d.matches(&origin("https://api.example.com.evil.net/")));
        let w = Destination::parse("https://*.example.com")?;
        assert!(w.matches(&origin("https://a.b.example.com/")));
        assert!(!w.matches(&origin("https://example.com/")));
        assert!(!w.matches(&origin("https://badexample.com/")));
        let ip = Destination::parse("http://127.0.0.1:8080")?;
        assert!(ip.matches(&origin("http://2130706433:8080/")), "IP spellings normalize");
        for bad in [
            "ftp://x.com",
            "https://x.com/path",
            "https://u:p@x.com",
            "https://*.com",
            "x.com",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn path_prefixes_are_segment_wise() {
        assert!(path_within("/tickets", "/tickets"));
        assert!(path_within("/tickets/7", "/tickets"));
        assert!(!path_within("/ticketsX", "/tickets"));
        assert!(path_within("/v1/x", "/v1/"));
        assert!(!path_within("/admin", "/tickets"));
    }
}
