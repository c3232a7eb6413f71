//! Capabilities: the authority a policy can grant an action.
//!
//! Each capability is one module holding its grant (as configured), the
//! wiring that links its WIT interfaces into an action's linker, and the
//! per-invocation state its host functions use. The [`Capability`] trait is
//! that contract, and the `registry!` list below is the
//! only place that names every capability: adding one means adding its
//! module (grant, the interfaces it serves, linker wiring, state) and one
//! line there, from which [`CapabilityKind`], the [`catalog`]'s entries and
//! the grants tables are built. Its WIT lives in `wit/`; host functions
//! that are async are also named in the `bindgen!` block below (wasmtime
//! generates one world's bindings in one place).
//!
//! The linker for an action is built from its grants, so an interface that
//! is not granted is not defined at all: the component cannot reach it by
//! construction. Host functions still go through
//! [`crate::host_call`] so every call is decided and recorded in one place.

pub mod approval;
pub mod baseline;
pub mod catalog;
pub mod config;
pub mod credentials;
pub mod files;
pub mod http;
pub mod log;

use crate::host_call::InvocationState;
use catalog::Interface;
use std::fmt;
use std::path::{Path, PathBuf};
use wasmtime::component::Linker;

/// Host bindings for the `airlock:cap` WIT package, generated from `wit/`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "airlock:cap/capabilities",
        imports: {
            "airlock:cap/http.send": async | trappable,
            "airlock:cap/files.read": async | trappable,
            "airlock:cap/files.write": async | trappable,
            "airlock:cap/files.list": async | trappable,
            "airlock:cap/files.delete": async | trappable,
            "airlock:cap/approval.request": async | trappable,
            default: trappable,
        },
        with: {
            "airlock:cap/credentials.credential": crate::capabilities::credentials::CredentialHandle,
        },
    });
}

/// One grantable capability.
pub trait Capability {
    /// The interfaces it serves (the catalog's entries for it): an action
    /// importing one needs this grant.
    const INTERFACES: &'static [Interface];
    /// The grant as written: the value of `grants.KEY` (or, for a capability
    /// not written under `grants`, of its own section).
    type Raw: serde::de::DeserializeOwned + fmt::Debug + Clone;
    /// The validated grant.
    type Grant: fmt::Debug + Clone + PartialEq + Eq;
    /// Whether the grant is written under `[actions.NAME.grants]` as
    /// `KEY = ...`. `false` for `config`, whose grant is the action's own
    /// `[actions.NAME.config]` section.
    const UNDER_GRANTS: bool = true;
    /// Whether an action holding the grant can do anything visible outside
    /// its sandbox while it runs (see [`Grants::reach_outside`]).
    const REACHES_OUTSIDE: bool;
    /// The grant as a config line, for refusals that say how to grant it.
    const EXAMPLE_GRANT: &'static str;
    /// The equivalent `airlock invoke` flag for ad hoc invocations.
    const EXAMPLE_FLAG: &'static str;

    /// Validate the grant as written. `None` when it grants nothing
    /// (`log = false`). `cx` holds the grants resolved before this one:
    /// sections of their own (`config`) first, then earlier registry lines.
    fn resolve(raw: &Self::Raw, cx: &Resolving<'_>) -> Result<Option<Self::Grant>, String>;

    /// Whether another capability's grant needs this one's interfaces
    /// linked too, without granting it.
    fn linked_by(_grants: &Grants) -> bool {
        false
    }

    /// Define this capability's interfaces in an action's linker. Called
    /// only for actions that hold the grant.
    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()>;

    /// Install the per-invocation state for one invocation under `grant`.
    fn prepare(grant: &Self::Grant, state: &mut crate::host_call::StateBuilder) -> anyhow::Result<()>;

    /// A one-line summary of the grant for `airlock check`.
    fn describe(grant: &Self::Grant) -> String;
}

/// What resolving one grant may consult.
pub struct Resolving<'a> {
    /// The grants resolved so far: sections of their own (`config`), then
    /// earlier registry lines.
    pub grants: &'a Grants,
    /// Makes a config-relative path absolute.
    pub path: &'a dyn Fn(&Path) -> PathBuf,
}

impl Resolving<'_> {
    /// `text` with every `${config.KEY}` replaced by the action's value.
    /// Without a `[config]` section the text is returned as it is (a
    /// destination that still holds `${` then fails to parse).
    pub fn expand(&self, text: &str) -> Result<String, String> {
        match &self.grants.config {
            Some(config) => config.expand(text),
            None => Ok(text.to_owned()),
        }
    }
}

/// The registry: from one line per capability (`key / Kind => Type`) it
/// builds [`CapabilityKind`], the catalog's capability entries (from each
/// [`Capability::INTERFACES`]), the grants as written ([`RawGrants`]) and
/// as validated ([`Grants`]), and everything that goes over all of them.
///
/// The order of the lines is the order in which grants are resolved (after
/// the capabilities with a section of their own, like `config`) and
/// per-invocation state is prepared: a capability may look at the grants
/// resolved before it (`http` checks its inject rules against
/// `credentials`, both expand `${config.KEY}`) and at their state.
macro_rules! registry {
    ($( $(#[$doc:meta])* $key:ident / $Kind:ident => $cap:ty, )*) => {
        /// Which grant serves a capability interface.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum CapabilityKind {
            $( $(#[$doc])* $Kind, )*
        }

        impl CapabilityKind {
            /// Every kind, in registry order.
            pub const ALL: &[CapabilityKind] = &[$( CapabilityKind::$Kind, )*];

            /// The policy key that grants it (`[actions.NAME.grants] KEY`,
            /// or the action's `[KEY]` section for one not written under
            /// `grants`).
            pub fn key(self) -> &'static str {
                match self {
                    $( CapabilityKind::$Kind => stringify!($key), )*
                }
            }
        }

        /// Every capability's interfaces, for the catalog.
        const INTERFACES: &[(CapabilityKind, &[Interface])] = &[
            $( (CapabilityKind::$Kind, <$cap as Capability>::INTERFACES), )*
        ];

        /// The grants of an action as written: `[actions.NAME.grants]` (and,
        /// for `config`, the action's own section). Unknown keys are refused.
        #[derive(Debug, Default, Clone)]
        pub struct RawGrants {
            $( $(#[$doc])* pub $key: Option<<$cap as Capability>::Raw>, )*
        }

        /// Everything one action is granted, validated.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Grants {
            $( $(#[$doc])* pub $key: Option<<$cap as Capability>::Grant>, )*
        }

        impl<'de> serde::Deserialize<'de> for RawGrants {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Keys;
                impl<'de> serde::de::Visitor<'de> for Keys {
                    type Value = RawGrants;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a table of grants")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawGrants, A::Error> {
                        use serde::de::Error as _;
                        let mut raw = RawGrants::default();
                        // An unknown key is refused while it is read, so
                        // the error points at the key.
                        while let Some(key) = map.next_key_seed(GrantKey)? {
                            match key.as_str() {
                                $(
                                    stringify!($key) if <$cap as Capability>::UNDER_GRANTS => {
                                        if raw.$key.is_some() {
                                            return Err(A::Error::custom(format!("duplicate field `{key}`")));
                                        }
                                        raw.$key = Some(map.next_value()?);
                                    }
                                )*
                                _ => return Err(A::Error::custom(unknown_grant(&key))),
                            }
                        }
                        Ok(raw)
                    }
                }
                deserializer.deserialize_map(Keys)
            }
        }

        /// Every key, and whether it is written under `grants`, in registry order.
        const GRANT_KEYS: &[(&str, bool)] = &[$( (stringify!($key), <$cap as Capability>::UNDER_GRANTS), )*];

        impl Grants {
            /// Validate `raw`, one capability after the other in registry order.
            fn resolve_written(raw: &RawGrants, path: &dyn Fn(&Path) -> PathBuf) -> Result<Grants, String> {
                let mut grants = Grants::default();
                // Sections of their own first (grants may refer to their
                // values), then the grants in registry order.
                for sections in [true, false] {
                    $(
                        if let Some(written) = &raw.$key
                            && <$cap as Capability>::UNDER_GRANTS != sections
                        {
                            let cx = Resolving { grants: &grants, path };
                            grants.$key = <$cap as Capability>::resolve(written, &cx)?;
                        }
                    )*
                }
                Ok(grants)
            }

            /// Whether the capability of this kind is linked: granted, or
            /// needed by another grant (an http grant links credentials,
            /// whose handle type `airlock:cap/http` names).
            pub fn holds(&self, kind: CapabilityKind) -> bool {
                $(
                    if kind == CapabilityKind::$Kind {
                        return self.$key.is_some() || <$cap as Capability>::linked_by(self);
                    }
                )*
                false
            }

            /// Whether an action holding these grants can do anything visible
            /// outside its sandbox while it runs: every capability but `log`
            /// and `config` can (files, the network, the vault, approval
            /// requests). A pure action's only output is its result.
            pub fn reach_outside(&self) -> bool {
                false $( || (<$cap as Capability>::REACHES_OUTSIDE && self.$key.is_some()) )*
            }

            /// How to grant a capability, in config or flag form.
            pub fn how_to_grant(kind: CapabilityKind, in_config: bool) -> &'static str {
                $(
                    if kind == CapabilityKind::$Kind {
                        return if in_config {
                            <$cap as Capability>::EXAMPLE_GRANT
                        } else {
                            <$cap as Capability>::EXAMPLE_FLAG
                        };
                    }
                )*
                UNSERVED
            }

            /// One line per granted capability, for `airlock check`, in the
            /// catalog's order.
            pub fn describe(&self) -> Vec<(CapabilityKind, String)> {
                let mut out = Vec::new();
                $(
                    if let Some(g) = &self.$key {
                        out.push((CapabilityKind::$Kind, <$cap as Capability>::describe(g)));
                    }
                )*
                out.sort_by_key(|(kind, _)| *kind);
                out
            }
        }

        /// Link the inert baseline and every linked capability, and nothing else.
        pub fn link_granted(linker: &mut Linker<InvocationState>, grants: &Grants) -> wasmtime::Result<()> {
            baseline::link(linker)?;
            $(
                if grants.holds(CapabilityKind::$Kind) {
                    <$cap as Capability>::link(linker)?;
                }
            )*
            Ok(())
        }

        /// Install per-invocation state for every granted capability, in
        /// registry order.
        pub fn prepare_granted(grants: &Grants, state: &mut crate::host_call::StateBuilder) -> anyhow::Result<()> {
            $(
                if let Some(g) = &grants.$key {
                    <$cap as Capability>::prepare(g, state)?;
                }
            )*
            Ok(())
        }
    };
}

/// A key under `grants`, refused while it is read unless some capability
/// is written there.
struct GrantKey;

impl<'de> serde::de::DeserializeSeed<'de> for GrantKey {
    type Value = String;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = <String as serde::Deserialize>::deserialize(deserializer)?;
        if GRANT_KEYS.iter().any(|(k, under)| *under && *k == key) {
            Ok(key)
        } else {
            Err(<D::Error as serde::de::Error>::custom(unknown_grant(&key)))
        }
    }
}

/// What [`Grants::how_to_grant`] says of a kind no registry line serves.
const UNSERVED: &str = "nothing: this build serves no such capability";

/// The refusal of an unknown key under `grants`, naming the ones there are.
fn unknown_grant(key: &str) -> String {
    let known: Vec<String> = GRANT_KEYS
        .iter()
        .filter(|(_, under)| *under)
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    let hint = match GRANT_KEYS.iter().find(|(k, _)| *k == key) {
        Some(_) => format!(" (`{key}` is a section of its own: [actions.NAME.{key}])"),
        None => String::new(),
    };
    format!("unknown field `{key}`, expected one of {}{hint}", known.join(", "))
}

impl Grants {
    /// Validate an action's grants; `resolve` makes config-relative paths
    /// absolute. `config` is the action's `[config]` section: it grants the
    /// `config` capability, and its values may be written into destinations
    /// as `${config.KEY}`.
    pub fn resolve(
        raw: &RawGrants,
        config: Option<&toml::Table>,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Grants, String> {
        let raw = RawGrants {
            config: config.cloned(),
            ..raw.clone()
        };
        Grants::resolve_written(&raw, resolve)
    }
}

registry! {
    /// `airlock:cap/log`: `log = true`.
    log / Log => log::LogCapability,
    /// `airlock:cap/files` and `wasi:filesystem`: `files = { dir, mode }`.
    files / Files => files::FilesCapability,
    /// `airlock:cap/credentials`: `credentials.NAME = { ... }`. Before
    /// `http`, whose inject rules name credentials and whose state uses
    /// their store.
    credentials / Credentials => credentials::CredentialsCapability,
    /// `airlock:cap/http` and `wasi:http`: `http = { allow = [...], ... }`.
    http / Http => http::HttpCapability,
    /// `airlock:cap/approval`: `approval = true`, asking for a human
    /// decision mid-run.
    approval / Approval => approval::ApprovalCapability,
    /// `airlock:cap/config`: the action's `[config]` section, non-secret
    /// values it reads. Resolved before the grants, which may refer to its
    /// values as `${config.KEY}`.
    config / Config => config::ConfigCapability,
}

impl fmt::Display for CapabilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl serde::Serialize for CapabilityKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An action's table as the policy loader reads it: `grants` and the
    /// `config` section side by side.
    #[derive(serde::Deserialize)]
    struct Action {
        #[serde(default)]
        grants: RawGrants,
        config: Option<toml::Table>,
    }

    fn grants(text: &str) -> Result<Grants, String> {
        let action: Action = toml::from_str(text).map_err(|e| e.to_string())?;
        Grants::resolve(&action.grants, action.config.as_ref(), &|p: &Path| p.to_path_buf())
    }

    #[test]
    fn every_catalog_capability_is_registered() {
        for &kind in CapabilityKind::ALL {
            assert!(
                GRANT_KEYS.iter().any(|(k, _)| *k == kind.key()),
                "{kind} is not in the registry"
            );
            assert_ne!(Grants::how_to_grant(kind, true), UNSERVED, "{kind}");
            assert_ne!(Grants::how_to_grant(kind, false), UNSERVED, "{kind}");
        }
        assert_eq!(GRANT_KEYS.len(), CapabilityKind::ALL.len());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_known_ones() {
        let e = grants("[grants]\nlog = true\nsockets = true\n").unwrap_err();
        assert!(e.contains("line 3"), "the error points at the key: {e}");
        assert!(
            e.contains("unknown field `sockets`, expected one of `log`, `files`, `credentials`, `http`, `approval`"),
            "{e}"
        );
        // `config` is a grant, but not one written under `grants`.
        let e = grants("[grants.config]\napi = \"https://a.example\"\n").unwrap_err();
        assert!(
            e.contains("unknown field `config`") && e.contains("[actions.NAME.config]"),
            "{e}"
        );
    }

    #[test]
    fn errors_inside_a_grant_keep_their_place_in_the_file() {
        let e = grants("[grants]\nlog = true\n\n[grants.http]\nallow = 5\n").unwrap_err();
        assert!(e.contains("line 5"), "{e}");
        let e = grants("[grants.files]\ndir = \"/tmp\"\nmode = \"all\"\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("read-only"), "{e}");
    }

    #[test]
    fn later_grants_see_earlier_ones() {
        let g = grants(
            r#"
[config]
api = "https://api.example"

[grants.credentials.token]
secret = "api-token"
destinations = ["${config.api}"]
inject = { header = "authorization", template = "Bearer {}" }

[grants.http]
allow = [{ destination = "${config.api}" }]
inject = [{ destination = "${config.api}", credential = "token" }]
"#,
        )
        .unwrap();
        let http = g.http.as_ref().unwrap();
        assert_eq!(http.policy.allow[0].destination.to_string(), "https://api.example");
        assert_eq!(http.inject[0].credential, "token");
        assert_eq!(
            g.credentials.as_ref().unwrap().bindings["token"].destination_list(),
            "https://api.example"
        );
        // An inject rule must name a credential the action holds.
        let e = grants(
            "[grants.http]\nallow = [{ destination = \"https://a.example\" }]\ninject = [{ destination = \"https://a.example\", credential = \"token\" }]\n",
        )
        .unwrap_err();
        assert!(e.contains("no credential `token` under grants.credentials"), "{e}");
        let e = grants("[grants.http]\nallow = [{ destination = \"${config.api}\" }]\n[config]\n").unwrap_err();
        assert!(
            e.starts_with("grants.http.allow: ") && e.contains("no key `api`"),
            "{e}"
        );
    }

    #[test]
    fn what_is_linked_granted_and_described() {
        let g = grants(
            "[grants]\nlog = true\nhttp = { allow = [{ destination = \"https://a.example\" }] }\n[config]\nk = 1\n",
        )
        .unwrap();
        // http links credentials without granting it.
        assert!(g.holds(CapabilityKind::Credentials) && g.credentials.is_none());
        assert!(!g.holds(CapabilityKind::Files));
        assert!(g.reach_outside());
        let kinds: Vec<CapabilityKind> = g.describe().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            [CapabilityKind::Log, CapabilityKind::Http, CapabilityKind::Config]
        );

        let pure = grants("[grants]\nlog = true\napproval = false\n[config]\n").unwrap();
        assert!(!pure.reach_outside(), "log and config act only inside the sandbox");
        assert!(pure.approval.is_none());
        assert_eq!(grants("").unwrap(), Grants::default());
    }
}
