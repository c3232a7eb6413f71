//! Capabilities: the authority a policy can grant an action.
//!
//! Each capability is one module holding its grant (as configured), the
//! wiring that links its WIT interfaces into an action's linker, and the
//! per-invocation state its host functions use. The [`Capability`] trait is
//! that contract; adding a capability means adding one module, one field in
//! [`Grants`], and one line in [`link_granted`].
//!
//! The linker for an action is built from its grants, so an interface that
//! is not granted is not defined at all: the component cannot reach it by
//! construction. Host functions still go through
//! [`crate::host_call`] so every call is decided and recorded in one place.

pub mod approval;
pub mod baseline;
pub mod config;
pub mod credentials;
pub mod files;
pub mod filesystem;
pub mod http;
pub mod log;

use crate::catalog::CapabilityKind;
use crate::host_call::InvocationState;
use std::path::Path;
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
    /// Which catalog entry this is.
    const KIND: CapabilityKind;
    /// The validated grant.
    type Grant;
    /// The grant as a config line, for refusals that say how to grant it.
    const EXAMPLE_GRANT: &'static str;
    /// The equivalent `airlock invoke` flag for ad hoc invocations.
    const EXAMPLE_FLAG: &'static str;

    /// Define this capability's interfaces in an action's linker. Called
    /// only for actions that hold the grant.
    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()>;

    /// Install the per-invocation state for one invocation under `grant`.
    fn prepare(grant: &Self::Grant, state: &mut crate::host_call::StateBuilder) -> anyhow::Result<()>;

    /// A one-line summary of the grant for `airlock check`.
    fn describe(grant: &Self::Grant) -> String;
}

/// The grants section of an action as written in a config.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGrants {
    #[serde(default)]
    pub log: bool,
    pub files: Option<files::RawFilesGrant>,
    #[serde(default)]
    pub credentials: Option<std::collections::BTreeMap<String, credentials::RawCredential>>,
    pub http: Option<http::RawHttpGrant>,
    /// `approval = true`: the action may ask for a human check mid-run.
    #[serde(default)]
    pub approval: bool,
}

/// Everything one action is granted, validated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grants {
    pub log: Option<log::LogGrant>,
    pub files: Option<files::FilesGrant>,
    pub credentials: Option<credentials::CredentialsGrant>,
    pub http: Option<http::HttpGrant>,
    pub approval: Option<approval::ApprovalGrant>,
    /// `[actions.NAME.config]`: non-secret values the action reads.
    pub config: Option<config::ConfigGrant>,
}

/// `raw` with every `${config.KEY}` in its destinations replaced by the
/// value (http allow and inject rules, credential destinations).
fn expand_references(raw: &RawGrants, config: &config::ConfigGrant) -> Result<RawGrants, String> {
    let mut raw = raw.clone();
    if let Some(http) = &mut raw.http {
        for rule in &mut http.allow {
            rule.destination = config
                .expand(&rule.destination)
                .map_err(|e| format!("grants.http.allow: {e}"))?;
        }
        for rule in &mut http.inject {
            rule.destination = config
                .expand(&rule.destination)
                .map_err(|e| format!("grants.http.inject: {e}"))?;
        }
    }
    if let Some(credentials) = &mut raw.credentials {
        for (name, c) in credentials.iter_mut() {
            for d in &mut c.destinations {
                *d = config
                    .expand(d)
                    .map_err(|e| format!("grants.credentials.{name}.destinations: {e}"))?;
            }
        }
    }
    Ok(raw)
}

impl Grants {
    /// Validate a grants section; `resolve` makes config-relative paths
    /// absolute. `config` is the action's `[config]` section: it grants the
    /// `config` capability, and its values may be written into destinations
    /// as `${config.KEY}`.
    pub fn resolve(
        raw: &RawGrants,
        config: Option<&toml::Table>,
        resolve: &dyn Fn(&Path) -> std::path::PathBuf,
    ) -> Result<Grants, String> {
        let config = config.map(config::ConfigGrant::resolve).transpose()?;
        let expanded;
        let raw = match &config {
            Some(c) => {
                expanded = expand_references(raw, c)?;
                &expanded
            }
            None => raw,
        };
        let credentials = raw
            .credentials
            .as_ref()
            .map(credentials::CredentialsGrant::resolve)
            .transpose()?;
        let http = raw
            .http
            .as_ref()
            .map(|h| http::HttpGrant::resolve(h, credentials.as_ref()))
            .transpose()?;
        Ok(Grants {
            log: raw.log.then_some(log::LogGrant),
            files: raw
                .files
                .as_ref()
                .map(|f| files::FilesGrant::resolve(f, resolve))
                .transpose()?,
            credentials,
            http,
            approval: raw.approval.then_some(approval::ApprovalGrant),
            config,
        })
    }

    /// Whether an action holding these grants can do anything visible
    /// outside its sandbox while it runs: every capability but `log` can
    /// (files, the network, the vault, approval requests). A pure action's
    /// only output is its result.
    pub fn reach_outside(&self) -> bool {
        // `config` reads the operator's own values: no effect outside.
        self.files.is_some() || self.credentials.is_some() || self.http.is_some() || self.approval.is_some()
    }

    /// Whether the capability of this kind is granted.
    pub fn holds(&self, kind: CapabilityKind) -> bool {
        match kind {
            CapabilityKind::Log => self.log.is_some(),
            CapabilityKind::Files => self.files.is_some(),
            // `airlock:cap/http` names the credential type, so an http grant
            // links the interface too (with no credentials bound, `get`
            // refuses every name).
            CapabilityKind::Credentials => self.credentials.is_some() || self.http.is_some(),
            CapabilityKind::Http => self.http.is_some(),
            CapabilityKind::Approval => self.approval.is_some(),
            CapabilityKind::Config => self.config.is_some(),
        }
    }

    /// How to grant a capability, in config or flag form.
    pub fn how_to_grant(kind: CapabilityKind, in_config: bool) -> &'static str {
        match (kind, in_config) {
            (CapabilityKind::Log, true) => log::LogCapability::EXAMPLE_GRANT,
            (CapabilityKind::Log, false) => log::LogCapability::EXAMPLE_FLAG,
            (CapabilityKind::Files, true) => files::FilesCapability::EXAMPLE_GRANT,
            (CapabilityKind::Files, false) => files::FilesCapability::EXAMPLE_FLAG,
            (CapabilityKind::Credentials, true) => credentials::CredentialsCapability::EXAMPLE_GRANT,
            (CapabilityKind::Credentials, false) => credentials::CredentialsCapability::EXAMPLE_FLAG,
            (CapabilityKind::Http, true) => http::HttpCapability::EXAMPLE_GRANT,
            (CapabilityKind::Http, false) => http::HttpCapability::EXAMPLE_FLAG,
            (CapabilityKind::Approval, true) => approval::ApprovalCapability::EXAMPLE_GRANT,
            (CapabilityKind::Approval, false) => approval::ApprovalCapability::EXAMPLE_FLAG,
            (CapabilityKind::Config, true) => config::ConfigCapability::EXAMPLE_GRANT,
            (CapabilityKind::Config, false) => config::ConfigCapability::EXAMPLE_FLAG,
        }
    }

    /// One line per granted capability, for `airlock check`.
    pub fn describe(&self) -> Vec<(CapabilityKind, String)> {
        let mut out = Vec::new();
        if let Some(g) = &self.log {
            out.push((CapabilityKind::Log, log::LogCapability::describe(g)));
        }
        if let Some(g) = &self.files {
            out.push((CapabilityKind::Files, files::FilesCapability::describe(g)));
        }
        if let Some(g) = &self.credentials {
            out.push((
                CapabilityKind::Credentials,
                credentials::CredentialsCapability::describe(g),
            ));
        }
        if let Some(g) = &self.http {
            out.push((CapabilityKind::Http, http::HttpCapability::describe(g)));
        }
        if let Some(g) = &self.approval {
            out.push((CapabilityKind::Approval, approval::ApprovalCapability::describe(g)));
        }
        if let Some(g) = &self.config {
            out.push((CapabilityKind::Config, config::ConfigCapability::describe(g)));
        }
        out
    }
}

/// Link the inert baseline and every granted capability, and nothing else.
pub fn link_granted(linker: &mut Linker<InvocationState>, grants: &Grants) -> wasmtime::Result<()> {
    baseline::link(linker)?;
    if grants.log.is_some() {
        log::LogCapability::link(linker)?;
    }
    if grants.files.is_some() {
        files::FilesCapability::link(linker)?;
    }
    if grants.holds(CapabilityKind::Credentials) {
        credentials::CredentialsCapability::link(linker)?;
    }
    if grants.http.is_some() {
        http::HttpCapability::link(linker)?;
    }
    if grants.approval.is_some() {
        approval::ApprovalCapability::link(linker)?;
    }
    if grants.config.is_some() {
        config::ConfigCapability::link(linker)?;
    }
    Ok(())
}

/// Install per-invocation state for every granted capability.
pub fn prepare_granted(grants: &Grants, state: &mut crate::host_call::StateBuilder) -> anyhow::Result<()> {
    if let Some(g) = &grants.log {
        log::LogCapability::prepare(g, state)?;
    }
    if let Some(g) = &grants.files {
        files::FilesCapability::prepare(g, state)?;
    }
    if let Some(g) = &grants.credentials {
        credentials::CredentialsCapability::prepare(g, state)?;
    }
    if let Some(g) = &grants.http {
        http::HttpCapability::prepare(g, state)?;
    }
    if let Some(g) = &grants.approval {
        approval::ApprovalCapability::prepare(g, state)?;
    }
    if let Some(g) = &grants.config {
        config::ConfigCapability::prepare(g, state)?;
    }
    Ok(())
}
