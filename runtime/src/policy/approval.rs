//! What needs approval: the `[actions.NAME.approval]` config section (who
//! may approve is `[actions.NAME.access]`, [`crate::identity::AccessPolicy`]).

pub use crate::call::Target;
use crate::outbound::destination::{Destination, Origin, path_within};
use std::time::Duration;

/// Default time an invocation-level request stays open.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
/// Default time a suspended host call or guest request waits.
pub const DEFAULT_WAIT_SECS: u64 = 300;
/// Longest a request may stay open (30 days).
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
pub const MAX_QUORUM: u32 = 16;

/// `[actions.NAME.approval]` as written.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawApproval {
    /// Every invocation waits for approval before it starts.
    #[serde(default)]
    pub invocation: bool,
    pub quorum: Option<u32>,
    pub ttl_secs: Option<u64>,
    pub wait_secs: Option<u64>,
    #[serde(default)]
    pub host_calls: Vec<RawCallRule>,
}

/// One `[[actions.NAME.approval.host-calls]]` rule as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCallRule {
    /// `http` (both `airlock:cap/http` and `wasi:http`) or `files` (both
    /// `airlock:cap/files` and `wasi:filesystem`).
    pub capability: String,
    /// http: methods that need approval (any, when absent).
    pub methods: Option<Vec<String>>,
    /// http: only requests to this destination.
    pub destination: Option<String>,
    /// http: URL path prefix; files: path prefix inside the granted
    /// directory.
    pub path_prefix: Option<String>,
    /// files: `write` (writes, creation, deletion, renames) and/or `read`;
    /// defaults to `["write"]`.
    pub operations: Option<Vec<String>>,
}

/// What an action's approvals require.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    pub invocation: bool,
    /// Approvals from distinct identities needed.
    pub quorum: u32,
    /// How long an invocation-level request stays open.
    pub ttl: Duration,
    /// How long a suspended host call (or guest request) waits before it
    /// fails; the request expires with it.
    pub wait: Duration,
    pub host_calls: Vec<CallRule>,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            invocation: false,
            quorum: 1,
            ttl: Duration::from_secs(DEFAULT_TTL_SECS),
            wait: Duration::from_secs(DEFAULT_WAIT_SECS),
            host_calls: Vec::new(),
        }
    }
}

impl ApprovalPolicy {
    pub fn resolve(raw: &RawApproval) -> Result<ApprovalPolicy, String> {
        let quorum = raw.quorum.unwrap_or(1);
        if !(1..=MAX_QUORUM).contains(&quorum) {
            return Err(format!("approval.quorum must be between 1 and {MAX_QUORUM}"));
        }
        let ttl = raw.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(format!("approval.ttl-secs must be between 1 and {MAX_TTL_SECS}"));
        }
        let wait = raw.wait_secs.unwrap_or(DEFAULT_WAIT_SECS);
        if !(1..=MAX_TTL_SECS).contains(&wait) {
            return Err(format!("approval.wait-secs must be between 1 and {MAX_TTL_SECS}"));
        }
        let host_calls = raw
            .host_calls
            .iter()
            .enumerate()
            .map(|(i, r)| CallRule::resolve(r, i).map_err(|e| format!("approval.host-calls[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ApprovalPolicy {
            invocation: raw.invocation,
            quorum,
            ttl: Duration::from_secs(ttl),
            wait: Duration::from_secs(wait),
            host_calls,
        })
    }

    /// Whether anything of this action can need a decision.
    pub fn gates_anything(&self) -> bool {
        self.invocation || !self.host_calls.is_empty()
    }

    /// The first rule that holds `target` back.
    pub fn gate_for(&self, target: &Target) -> Option<&CallRule> {
        self.host_calls.iter().find(|r| r.matches(target))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatedCapability {
    Http,
    Files,
}

/// One host-call gate rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRule {
    /// `approval.host-calls[N]`, for messages and records.
    pub name: String,
    pub capability: GatedCapability,
    pub methods: Option<Vec<String>>,
    pub destination: Option<Destination>,
    pub path_prefix: Option<String>,
    pub reads: bool,
    pub writes: bool,
}

impl CallRule {
    fn resolve(raw: &RawCallRule, index: usize) -> Result<CallRule, String> {
        let capability = match raw.capability.as_str() {
            "http" => GatedCapability::Http,
            "files" => GatedCapability::Files,
            other => return Err(format!("capability {other:?}: gates apply to `http` or `files`")),
        };
        let mut rule = CallRule {
            name: format!("approval.host-calls[{index}]"),
            capability,
            methods: None,
            destination: None,
            path_prefix: raw.path_prefix.clone(),
            reads: false,
            writes: true,
        };
        match capability {
            GatedCapability::Http => {
                if raw.operations.is_some() {
                    return Err("`operations` applies to files rules; http rules use `methods`".into());
                }
                rule.methods = raw
                    .methods
                    .as_deref()
                    .map(crate::outbound::policy::rule_methods)
                    .transpose()?;
                rule.destination = raw.destination.as_deref().map(Destination::parse).transpose()?;
                if let Some(p) = &rule.path_prefix
                    && !p.starts_with('/')
                {
                    return Err(format!("path-prefix {p:?} of an http rule must start with `/`"));
                }
            }
            GatedCapability::Files => {
                if raw.methods.is_some() || raw.destination.is_some() {
                    return Err("`methods` and `destination` apply to http rules".into());
                }
                let ops = raw.operations.clone().unwrap_or_else(|| vec!["write".into()]);
                if ops.is_empty() {
                    return Err("operations must name `read` and/or `write`".into());
                }
                rule.writes = false;
                for op in &ops {
                    match op.as_str() {
                        "read" => rule.reads = true,
                        "write" => rule.writes = true,
                        other => return Err(format!("operation {other:?}: use `read` or `write`")),
                    }
                }
                if let Some(p) = &rule.path_prefix
                    && (p.starts_with('/') || p.split('/').any(|s| s == ".."))
                {
                    return Err(format!(
                        "path-prefix {p:?} of a files rule is relative to the granted directory, without `..`"
                    ));
                }
            }
        }
        Ok(rule)
    }

    pub fn matches(&self, target: &Target) -> bool {
        match (self.capability, target) {
            (GatedCapability::Http, Target::Http { method, url }) => {
                let method = method.to_ascii_uppercase();
                let method_ok = self.methods.as_ref().is_none_or(|ms| ms.contains(&method));
                let destination_ok = self
                    .destination
                    .as_ref()
                    .is_none_or(|d| Origin::of(url).is_ok_and(|o| d.matches(&o)));
                // A path a server could read as under the prefix is held:
                // decoded, `//` collapsed, `;params` dropped, and anything
                // ambiguous (encoded separators or dot segments) held outright.
                let path_ok = self.path_prefix.as_deref().is_none_or(|p| {
                    crate::outbound::policy::ambiguous_path(url.path()).is_some()
                        || path_within(&normalized_http_path(url.path()), p)
                });
                method_ok && destination_ok && path_ok
            }
            (GatedCapability::Files, Target::Files { write, path }) => {
                let op_ok = if *write { self.writes } else { self.reads };
                op_ok
                    && match (self.path_prefix.as_deref(), path) {
                        (None, _) | (Some(_), None) => true,
                        // Renaming or removing a parent of the prefix moves
                        // what the rule protects: a write there is held too.
                        (Some(prefix), Some(path)) => {
                            files_path_within(path, prefix) || (*write && files_ancestor_of(path, prefix))
                        }
                    }
            }
            _ => false,
        }
    }

    /// The rule in words, for reviewers.
    pub fn describe(&self) -> String {
        let mut parts = vec![self.name.clone()];
        match self.capability {
            GatedCapability::Http => {
                parts.push("http".into());
                if let Some(ms) = &self.methods {
                    parts.push(ms.join("|"));
                }
                if let Some(d) = &self.destination {
                    parts.push(d.to_string());
                }
            }
            GatedCapability::Files => {
                parts.push("files".into());
                let ops = match (self.reads, self.writes) {
                    (true, true) => "read|write",
                    (true, false) => "read",
                    _ => "write",
                };
                parts.push(ops.into());
            }
        }
        if let Some(p) = &self.path_prefix {
            parts.push(format!("under {p}"));
        }
        parts.join(" ")
    }
}

/// The segments of a relative path with `.`, empty segments and `..`
/// resolved lexically (`..` above the top stays at the top: the call
/// itself is refused there).
pub(crate) fn segments(p: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

/// Segment-wise prefix match on relative paths, so `gated//x`,
/// `./gated/x` and `other/../gated/x` are all under `gated`.
fn files_path_within(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (segments(path), segments(prefix));
    path.len() >= prefix.len() && path[..prefix.len()] == prefix[..]
}

/// Whether `path` is a proper parent directory of `prefix`.
fn files_ancestor_of(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (segments(path), segments(prefix));
    !path.is_empty() && path.len() < prefix.len() && prefix[..path.len()] == path[..]
}

/// An HTTP path as a lenient server may read it: percent-decoded, with
/// repeated slashes collapsed and `;params` dropped from each segment.
pub(crate) fn normalized_http_path(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut out = String::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment.split(';').next().unwrap_or_default());
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Result<CallRule, String> {
        let raw: RawCallRule = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        CallRule::resolve(&raw, 0)
    }

    #[test]
    fn http_rules_match_method_destination_and_path() {
        let r = rule("capability = \"http\"\nmethods = [\"delete\"]\ndestination = \"https://api.example.com\"\npath-prefix = \"/v1\"").unwrap();
        let t = |m: &str, u: &str| Target::Http {
            method: m.into(),
            url: url::Url::parse(u).unwrap(),
        };
        assert!(r.matches(&t("DELETE", "https://api.example.com/v1/x")));
        assert!(!r.matches(&t("GET", "https://api.example.com/v1/x")));
        assert!(!r.matches(&t("DELETE", "https://other.example.com/v1/x")));
        assert!(!r.matches(&t("DELETE", "https://api.example.com/v2/x")));
        assert!(r.matches(&t("delete", "https://api.example.com/v1/x")));
        for sneaky in [
            "https://api.example.com//v1/x",
            "https://api.example.com/%76%31/x",
            "https://api.example.com/v1;a=b/x",
        ] {
            assert!(r.matches(&t("DELETE", sneaky)), "{sneaky}");
        }
    }

    #[test]
    fn files_rules_match_normalized_paths() {
        let r = rule("capability = \"files\"\npath-prefix = \"gated\"").unwrap();
        let w = |p: &str| Target::Files {
            write: true,
            path: Some(p.into()),
        };
        assert!(r.matches(&w("gated/a")));
        assert!(r.matches(&w("./gated//a")));
        assert!(r.matches(&w("gated")));
        assert!(!r.matches(&w("gatedx/a")));
        assert!(r.matches(&w("other/../gated/a")));
        assert!(!r.matches(&w("gated/../other")));
        assert!(!r.matches(&Target::Files {
            write: false,
            path: Some("gated/a".into())
        }));
        // An unknown path is held (fail closed).
        assert!(r.matches(&Target::Files {
            write: true,
            path: None
        }));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(rule("capability = \"sockets\"").is_err());
        assert!(rule("capability = \"files\"\nmethods = [\"GET\"]").is_err());
        assert!(rule("capability = \"files\"\npath-prefix = \"../x\"").is_err());
        assert!(rule("capability = \"http\"\nmethods = [\"NOT A METHOD\"]").is_err());
    }
}
