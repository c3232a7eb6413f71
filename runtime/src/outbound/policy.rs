//! The outbound HTTP policy of one action: allow rules, timeouts, caps.

use super::destination::{Destination, Origin, path_within};
use std::time::Duration;
use url::Url;

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;
pub const DEFAULT_MAX_REQUESTS: u32 = 100;
/// Upper bounds a config may set, so one action cannot hold a host
/// connection or buffer for arbitrarily long.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
pub const MAX_BODY_BYTES: u64 = 256 << 20;
pub const MAX_REDIRECTS: u32 = 20;
pub const MAX_REQUESTS: u32 = 100_000;

/// One `[[actions.NAME.grants.http.allow]]` entry as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAllowRule {
    pub destination: String,
    pub methods: Option<Vec<String>>,
    pub path_prefixes: Option<Vec<String>>,
    #[serde(default)]
    pub allow_private: bool,
}

/// One allow rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub destination: Destination,
    /// Upper-case methods; `None` allows any.
    pub methods: Option<Vec<String>>,
    /// `None` allows any path.
    pub path_prefixes: Option<Vec<String>>,
    /// Whether loopback, private, link-local and metadata addresses may be
    /// reached through this rule.
    pub allow_private: bool,
}

impl AllowRule {
    pub fn resolve(raw: &RawAllowRule) -> Result<AllowRule, String> {
        let destination = Destination::parse(&raw.destination)?;
        let methods = raw.methods.as_deref().map(rule_methods).transpose()?;
        let path_prefixes = raw
            .path_prefixes
            .as_ref()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        if p.starts_with('/') && !p.contains(['?', '#']) && !p.split('/').any(|s| s == ".." || s == ".")
                        {
                            Ok(p.clone())
                        } else {
                            Err(format!(
                                "path prefix {p:?} must start with `/` and hold no `?`, `#`, `.` or `..` segment"
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(AllowRule {
            destination,
            methods,
            path_prefixes,
            allow_private: raw.allow_private,
        })
    }

    fn permits(&self, origin: &Origin, method: &str, path: &str) -> Result<(), String> {
        if !self.destination.matches(origin) {
            return Err(String::new());
        }
        if let Some(ms) = &self.methods
            && !ms.iter().any(|m| m == method)
        {
            return Err(format!("method {method} is not among {}", ms.join(", ")));
        }
        if let Some(ps) = &self.path_prefixes {
            if let Some(why) = ambiguous_path(path) {
                return Err(format!(
                    "path {path} {why}, which servers may resolve outside the allowed prefixes"
                ));
            }
            if !ps.iter().any(|p| path_within(path, p)) {
                return Err(format!("path {path} is not under {}", ps.join(", ")));
            }
        }
        Ok(())
    }
}

/// Why `path` cannot be judged by prefix, if it cannot: servers differ on
/// encoded separators, encoded dot segments and `..;` (Tomcat, Spring), so
/// a path that only looks under a prefix is refused rather than guessed at.
/// The `url` crate has already removed plain dot segments.
pub(crate) fn ambiguous_path(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return Some("holds an encoded `/` or a `\\`");
    }
    for segment in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        let bare = decoded.split(';').next().unwrap_or_default();
        if bare == "." || bare == ".." || decoded.contains('\\') {
            return Some("holds an encoded or parameterized dot segment");
        }
    }
    None
}

/// HTTP methods as written in a rule, upper-cased; `CONNECT` (a tunnel no
/// rule can see into) is refused.
pub fn rule_methods(methods: &[String]) -> Result<Vec<String>, String> {
    methods
        .iter()
        .map(|m| {
            let up = m.to_ascii_uppercase();
            match http::Method::from_bytes(up.as_bytes()) {
                Ok(_) if !up.is_empty() && up != "CONNECT" => Ok(up),
                _ => Err(format!("method {m:?} is not allowed in a rule")),
            }
        })
        .collect()
}

/// The outbound settings of an `http` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    pub allow: Vec<AllowRule>,
    pub connect_timeout: Duration,
    /// Whole request, every redirect hop included.
    pub timeout: Duration,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub max_redirects: u32,
    /// Requests (redirect hops included) one invocation may send.
    pub max_requests: u32,
}

impl HttpPolicy {
    /// The rule that allows `method` on `url`, or why none does.
    pub fn permits(&self, method: &str, url: &Url) -> Result<&AllowRule, String> {
        let origin = Origin::of(url)?;
        let mut reasons = Vec::new();
        for rule in &self.allow {
            match rule.permits(&origin, method, url.path()) {
                Ok(()) => return Ok(rule),
                Err(why) if !why.is_empty() => reasons.push(format!("{}: {why}", rule.destination)),
                Err(_) => {}
            }
        }
        if reasons.is_empty() {
            Err(format!("{origin} is not an allowed destination"))
        } else {
            Err(reasons.join("; "))
        }
    }

    /// Bounds-check the numeric settings.
    pub fn validate(&self) -> Result<(), String> {
        let ms = |d: Duration| d.as_millis() as u64;
        if !(1..=MAX_TIMEOUT_MS).contains(&ms(self.connect_timeout))
            || !(1..=MAX_TIMEOUT_MS).contains(&ms(self.timeout))
        {
            return Err(format!("http timeouts must be between 1 and {MAX_TIMEOUT_MS} ms"));
        }
        if !(1..=MAX_BODY_BYTES).contains(&self.max_request_bytes)
            || !(1..=MAX_BODY_BYTES).contains(&self.max_response_bytes)
        {
            return Err(format!("http body caps must be between 1 and {MAX_BODY_BYTES} bytes"));
        }
        if self.max_redirects > MAX_REDIRECTS {
            return Err(format!("max-redirects must be at most {MAX_REDIRECTS}"));
        }
        if !(1..=MAX_REQUESTS).contains(&self.max_requests) {
            return Err(format!("max-requests must be between 1 and {MAX_REQUESTS}"));
        }
        Ok(())
    }
}

/// How many requests an invocation has left, shared by `airlock:cap/http`
/// and `wasi:http` so a guest cannot exceed the cap by mixing them.
#[derive(Debug)]
pub struct RequestBudget {
    used: std::sync::atomic::AtomicU32,
    max: u32,
}

impl RequestBudget {
    pub fn new(max: u32) -> RequestBudget {
        RequestBudget {
            used: std::sync::atomic::AtomicU32::new(0),
            max,
        }
    }

    /// Take one request from the budget, or say why not.
    pub fn take(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let taken = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < self.max).then_some(n + 1)
        });
        taken.map(drop).map_err(|_| {
            format!(
                "this invocation already sent {} requests (grants.http.max-requests)",
                self.max
            )
        })
    }
}
