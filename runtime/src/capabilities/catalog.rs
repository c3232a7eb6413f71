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

pub use super::CapabilityKind;

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
#[derive(Debug)]
pub struct Family {
    namespace_package: &'static str,
    /// Accepted `major.minor` prefix; any patch level of it is served.
    version_prefix: &'static str,
}

/// WASI 0.2.x.
pub const WASI_0_2: Family = Family {
    namespace_package: "wasi:",
    version_prefix: "0.2.",
};
/// airlock's own capability interfaces, 0.1.x.
pub const AIRLOCK_CAP_0_1: Family = Family {
    namespace_package: "airlock:cap/",
    version_prefix: "0.1.",
};

/// One interface airlock can link: its family, its name without version,
/// and what it gives the component. Each capability lists its own
/// ([`super::Capability::INTERFACES`]), the baseline its
/// ([`super::baseline::INTERFACES`]).
#[derive(Debug)]
pub struct Interface {
    pub family: &'static Family,
    pub name: &'static str,
    pub meaning: &'static str,
}

use ImportClass::*;

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
        let baseline = super::baseline::INTERFACES.iter().map(|i| (i, Baseline));
        let granted = super::INTERFACES
            .iter()
            .flat_map(|(kind, interfaces)| interfaces.iter().map(|i| (i, Capability(*kind))));
        for (interface, class) in baseline.chain(granted) {
            if interface.name == base {
                let family = interface.family;
                debug_assert!(base.starts_with(family.namespace_package));
                return match version {
                    Some(v) if v.starts_with(family.version_prefix) => Classified {
                        class,
                        meaning: interface.meaning,
                    },
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
    use super::CapabilityKind::*;
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

    #[test]
    fn every_interface_is_listed_once_under_its_family() {
        let baseline = crate::capabilities::baseline::INTERFACES.iter();
        let granted = crate::capabilities::INTERFACES.iter().flat_map(|(_, i)| i.iter());
        let mut seen = std::collections::BTreeSet::new();
        for i in baseline.chain(granted) {
            assert!(i.name.starts_with(i.family.namespace_package), "{i:?}");
            assert!(seen.insert(i.name), "{} is listed twice", i.name);
        }
        // Every capability serves at least one interface.
        for (kind, interfaces) in crate::capabilities::INTERFACES {
            assert!(!interfaces.is_empty(), "{kind} serves no interface");
        }
        assert!(seen.len() >= 28, "{seen:?}");
    }
}
