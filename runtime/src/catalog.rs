//! The import catalog: what every interface a component may import means to
//! airlock, and which class it falls in.
//!
//! - **Capability**: grants authority; linked only when the action's policy
//!   grants the capability that serves it.
//! - **Inert baseline**: WASI plumbing that airlock serves with no authority
//!   (empty environment and arguments, empty stdin, captured stdout/stderr,
//!   clocks, randomness). Always linked.
//! - **Unknown**: everything else (`wasi:sockets`, incoming `wasi:http`, other
//!   versions, made-up interfaces). Never linked, never grantable.

use std::fmt;

/// Which grant serves a capability interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapabilityKind {
    /// `airlock:cap/log`.
    Log,
    /// `airlock:cap/files` and `wasi:filesystem`, served as the granted directory.
    Files,
    /// `airlock:cap/credentials`: opaque handles on vault secrets.
    Credentials,
    /// `airlock:cap/http` and `wasi:http`: outbound requests to allowed destinations.
    Http,
    /// `airlock:cap/approval`: ask for a human decision mid-run.
    Approval,
    /// `airlock:cap/config`: non-secret values from the action's config.
    Config,
}

impl CapabilityKind {
    /// Every kind, in this order.
    pub const ALL: [CapabilityKind; 6] = [
        CapabilityKind::Log,
        CapabilityKind::Files,
        CapabilityKind::Credentials,
        CapabilityKind::Http,
        CapabilityKind::Approval,
        CapabilityKind::Config,
    ];

    /// The policy key under `[actions.NAME.grants]` that grants it.
    pub fn key(self) -> &'static str {
        match self {
            CapabilityKind::Log => "log",
            CapabilityKind::Files => "files",
            CapabilityKind::Credentials => "credentials",
            CapabilityKind::Http => "http",
            CapabilityKind::Approval => "approval",
            CapabilityKind::Config => "config",
        }
    }
}

impl fmt::Display for CapabilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The class of one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportClass {
    Capability(CapabilityKind),
    Baseline,
    Unknown,
}

impl ImportClass {
    /// Stable name used in manifests (`--json`).
    pub fn name(self) -> &'static str {
        match self {
            ImportClass::Capability(_) => "capability",
            ImportClass::Baseline => "baseline",
            ImportClass::Unknown => "unknown",
        }
    }
}

/// What airlock knows about one import name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub class: ImportClass,
    /// One line saying what the import gives the component under airlock.
    pub meaning: &'static str,
}

/// A package family and the versions of it airlock serves.
struct Family {
    namespace_package: &'static str,
    /// Accepted `major.minor` prefix; any patch level of it is served.
    version_prefix: &'static str,
}

const WASI_0_2: Family = Family {
    namespace_package: "wasi:",
    version_prefix: "0.2.",
};
const AIRLOCK_CAP_0_1: Family = Family {
    namespace_package: "airlock:cap/",
    version_prefix: "0.1.",
};

use CapabilityKind::*;
use ImportClass::*;

/// Every interface airlock can link, with its class and meaning.
const KNOWN: &[(&Family, &str, ImportClass, &str)] = &[
    (
        &AIRLOCK_CAP_0_1,
        "airlock:cap/log",
        Capability(Log),
        "structured log lines, captured per invocation",
    ),
    (
        &AIRLOCK_CAP_0_1,
        "airlock:cap/files",
        Capability(Files),
        "read/list (and write/delete if read-write) inside the granted directory",
    ),
    (
        &AIRLOCK_CAP_0_1,
        "airlock:cap/credentials",
        Capability(Credentials),
        "opaque handles on the credentials the policy binds; secrets never enter the sandbox",
    ),
    (
        &AIRLOCK_CAP_0_1,
        "airlock:cap/http",
        Capability(Http),
        "outbound HTTP to allowed destinations, credentials injected by the host",
    ),
    (
        &AIRLOCK_CAP_0_1,
        "airlock:cap/approval",
        Capability(Approval),
        "ask the action's approvers for a decision mid-run; the call waits for it",
    ),
    (
        &AIRLOCK_CAP_0_1,
        "airlock:cap/config",
        Capability(Config),
        "non-secret values from the action's [config] section; no authority",
    ),
    (
        &WASI_0_2,
        "wasi:http/outgoing-handler",
        Capability(Http),
        "outbound HTTP to allowed destinations, under the same rules as airlock:cap/http",
    ),
    (
        &WASI_0_2,
        "wasi:http/types",
        Capability(Http),
        "HTTP request and response types for wasi:http/outgoing-handler",
    ),
    (
        &WASI_0_2,
        "wasi:filesystem/types",
        Capability(Files),
        "filesystem access, served only as the granted directory",
    ),
    (
        &WASI_0_2,
        "wasi:filesystem/preopens",
        Capability(Files),
        "the granted directory, preopened as `/`",
    ),
    (
        &WASI_0_2,
        "wasi:cli/environment",
        Baseline,
        "environment variables and arguments: always empty",
    ),
    (
        &WASI_0_2,
        "wasi:cli/exit",
        Baseline,
        "ends the action early; the host keeps running",
    ),
    (&WASI_0_2, "wasi:cli/stdin", Baseline, "standard input: always empty"),
    (
        &WASI_0_2,
        "wasi:cli/stdout",
        Baseline,
        "standard output: captured per invocation, capped",
    ),
    (
        &WASI_0_2,
        "wasi:cli/stderr",
        Baseline,
        "standard error: captured per invocation, capped",
    ),
    (
        &WASI_0_2,
        "wasi:cli/terminal-input",
        Baseline,
        "terminal handles: there is never a terminal",
    ),
    (
        &WASI_0_2,
        "wasi:cli/terminal-output",
        Baseline,
        "terminal handles: there is never a terminal",
    ),
    (
        &WASI_0_2,
        "wasi:cli/terminal-stdin",
        Baseline,
        "terminal query: stdin is never a terminal",
    ),
    (
        &WASI_0_2,
        "wasi:cli/terminal-stdout",
        Baseline,
        "terminal query: stdout is never a terminal",
    ),
    (
        &WASI_0_2,
        "wasi:cli/terminal-stderr",
        Baseline,
        "terminal query: stderr is never a terminal",
    ),
    (
        &WASI_0_2,
        "wasi:io/error",
        Baseline,
        "error values of stream operations",
    ),
    (
        &WASI_0_2,
        "wasi:io/poll",
        Baseline,
        "waiting on the component's own streams and timers",
    ),
    (
        &WASI_0_2,
        "wasi:io/streams",
        Baseline,
        "byte streams (only those the component was handed)",
    ),
    (&WASI_0_2, "wasi:clocks/wall-clock", Baseline, "reads the current time"),
    (
        &WASI_0_2,
        "wasi:clocks/monotonic-clock",
        Baseline,
        "reads a monotonic clock; sleeps count against the timeout",
    ),
    (
        &WASI_0_2,
        "wasi:random/random",
        Baseline,
        "cryptographically secure random bytes",
    ),
    (
        &WASI_0_2,
        "wasi:random/insecure",
        Baseline,
        "fast non-cryptographic random bytes",
    ),
    (
        &WASI_0_2,
        "wasi:random/insecure-seed",
        Baseline,
        "a per-instance random seed",
    ),
];

/// Classify one import name such as `wasi:cli/stdout@0.2.3`.
///
/// Only instance imports with a served version are known; `is_instance`
/// false (a bare function, type or module import) is always unknown.
pub fn classify(name: &str, is_instance: bool) -> Classified {
    let (base, version) = match name.split_once('@') {
        Some((b, v)) => (b, Some(v)),
        None => (name, None),
    };
    if is_instance {
        for (family, known, class, meaning) in KNOWN {
            if *known == base {
                debug_assert!(known.starts_with(family.namespace_package));
                return match version {
                    Some(v) if v.starts_with(family.version_prefix) => Classified { class: *class, meaning },
                    _ => Classified {
                        class: Unknown,
                        meaning: if family.version_prefix == "0.2." {
                            "unsupported version: airlock serves WASI 0.2.x"
                        } else {
                            "unsupported version: airlock serves airlock:cap 0.1.x"
                        },
                    },
                };
            }
        }
    }
    let meaning = if base.starts_with("wasi:sockets/") {
        "raw network sockets: never linked by airlock (use the http capability)"
    } else if base.starts_with("wasi:http/") {
        "not served: airlock links only wasi:http/outgoing-handler and wasi:http/types"
    } else if !is_instance {
        "a bare function, type or module import: airlock links only interfaces"
    } else {
        "not an interface airlock serves: never linked"
    };
    Classified {
        class: Unknown,
        meaning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_served_range_are_unknown() {
        assert_eq!(classify("wasi:cli/stdout@0.2.6", true).class, Baseline);
        assert_eq!(classify("wasi:cli/stdout@0.3.0", true).class, Unknown);
        assert_eq!(classify("wasi:cli/stdout", true).class, Unknown);
        assert_eq!(classify("airlock:cap/files@0.1.0", true).class, Capability(Files));
        assert_eq!(classify("airlock:cap/files@0.2.0", true).class, Unknown);
        assert_eq!(classify("wasi:sockets/tcp@0.2.0", true).class, Unknown);
        assert_eq!(
            classify("wasi:http/outgoing-handler@0.2.3", true).class,
            Capability(Http)
        );
        assert_eq!(classify("wasi:http/incoming-handler@0.2.3", true).class, Unknown);
        assert_eq!(classify("airlock:cap/log@0.1.0", false).class, Unknown);
    }
}
