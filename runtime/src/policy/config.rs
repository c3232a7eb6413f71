//! The TOML config file (`airlock.toml`), parsed once into typed policy.

use super::context::Offset;
use super::source::{ACTION_GROUP, Groups, PolicyFiles};
use crate::capabilities::{Grants, RawGrants};
use crate::error::Error;
use crate::identity::{AccessPolicy, RawAccess};
use crate::limits::{LimitOverrides, Limits};
use crate::policy::approval::{ApprovalPolicy, RawApproval};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default number of instances that may run at once (pooling allocator size).
pub const DEFAULT_MAX_CONCURRENT_INSTANCES: u32 = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    actions: BTreeMap<String, toml::Spanned<RawAction>>,
    #[serde(default)]
    service: super::service::RawServiceSettings,
    #[serde(default)]
    store: crate::store::settings::RawStoreSettings,
    #[serde(default)]
    audit: crate::audit::settings::RawAuditSettings,
    #[serde(default)]
    policy: RawPolicySection,
    #[serde(default)]
    approval_groups: BTreeMap<String, RawGroup>,
    #[serde(default)]
    notifications: crate::notify::RawNotifications,
    /// `[signers.NAME]`: public keys components may be signed with.
    #[serde(default)]
    signers: BTreeMap<String, RawSigner>,
    #[serde(default)]
    signing: RawSigning,
}

/// `[signers.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSigner {
    /// A PEM public key file (`airlock keygen` writes one), relative to
    /// the config file.
    public_key: PathBuf,
}

/// `[signing]`: what every action requires unless it says otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSigning {
    /// Every component must be signed by one of these `[signers]`.
    trusted_signers: Option<Vec<String>>,
}

/// `[policy]`: Cedar policy files and the clock they read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPolicySection {
    /// Cedar policy files, relative to the config file.
    #[serde(default)]
    files: Vec<PathBuf>,
    /// The time zone of `context.now` (`UTC`, or a fixed offset such as
    /// `+01:00`).
    timezone: Option<String>,
}

/// `[approval-groups.NAME]`: reviewers a policy can ask with
/// `@approval("NAME")`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGroup {
    #[serde(default)]
    approve: Vec<String>,
    #[serde(default)]
    agent_approvers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRuntime {
    data_dir: Option<PathBuf>,
    max_concurrent_instances: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAction {
    component: PathBuf,
    description: Option<String>,
    digest: Option<String>,
    #[serde(default)]
    grants: RawGrants,
    /// `[actions.NAME.config]`: non-secret values (`airlock:cap/config`).
    config: Option<toml::Table>,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    audit: RawAudit,
    /// The identity the action runs under; `action:NAME` by default.
    service_identity: Option<String>,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    approval: RawApproval,
    #[serde(default)]
    mcp: McpHints,
    /// Every invocation must carry the agent's stated reason.
    #[serde(default)]
    require_reason: bool,
    /// Rate and budget windows.
    #[serde(default)]
    windows: Vec<super::windows::RawWindow>,
    /// The component must be signed by one of these `[signers]` (replaces
    /// `[signing] trusted-signers`; `[]` requires no signature).
    trusted_signers: Option<Vec<String>>,
    /// Imports a new pinned version may add (names, with or without the
    /// version, or capability keys).
    #[serde(default)]
    accept_new_imports: Vec<String>,
}

/// `[actions.NAME.mcp]`: hints for MCP clients about the action's tools.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct McpHints {
    /// The tools only read (MCP `readOnlyHint`).
    pub read_only: Option<bool>,
    /// The tools may destroy or overwrite (MCP `destructiveHint`).
    pub destructive: Option<bool>,
}

/// `[actions.NAME.audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAudit {
    /// Argument paths recorded by digest only, e.g. `["password", "ticket.body"]`.
    #[serde(default)]
    sensitive_args: Vec<String>,
}

/// Runtime-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Where airlock keeps its state (compile cache, and later vault and audit).
    pub data_dir: PathBuf,
    /// How many instances may be live at once.
    pub max_concurrent_instances: u32,
    /// `[store]`: where identities, approvals and invocations live.
    pub store: crate::store::settings::StoreSettings,
    /// `[audit]`: where the audit trail is kept (the data directory's log,
    /// and with `backend = "postgres"` also the store's database).
    pub audit: crate::audit::settings::AuditSettings,
}

impl RuntimeSettings {
    /// The database of the audit trail, when `[audit] backend = "postgres"`.
    pub fn audit_database(&self) -> Option<&crate::store::settings::PgSettings> {
        match self.audit.backend {
            crate::audit::settings::BackendKind::Postgres => self.store.postgres.as_ref(),
            crate::audit::settings::BackendKind::File => None,
        }
    }
}

pub use crate::manifest::Digest;

/// Where an action's grants came from, so refusals can say how to fix them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOrigin {
    /// `[actions.NAME]` in a config file, starting at `line`.
    Config { path: PathBuf, line: usize },
    /// Ad hoc invocation: grants come from command-line flags.
    Flags,
}

/// One action's policy, validated.
#[derive(Debug, Clone)]
pub struct ActionPolicy {
    pub name: String,
    pub description: Option<String>,
    pub component: PathBuf,
    /// When set, the component's digest must match or the action is refused.
    pub digest: Option<Digest>,
    pub grants: Grants,
    pub limits: Limits,
    pub origin: GrantOrigin,
    /// Argument paths (`ticket.body`) recorded in the audit log by digest
    /// only.
    pub sensitive_args: Vec<String>,
    /// The identity the action runs under (its grants and credentials are
    /// this identity's, never the caller's).
    pub service_identity: String,
    /// Who may invoke and approve.
    pub access: AccessPolicy,
    /// What needs approval.
    pub approval: ApprovalPolicy,
    /// blake3 of the config text the policy came from (`ad-hoc` for
    /// command-line grants); approvals are bound to it.
    pub config_version: String,
    /// Hints for MCP clients.
    pub mcp: McpHints,
    /// Every invocation must carry the agent's stated reason (shorthand
    /// for a `forbid … unless { context has reason }`).
    pub require_reason: bool,
    /// Rate and budget windows, charged as invocations are admitted.
    pub windows: Vec<super::windows::Window>,
    /// The config's Cedar policy files (shared by every action).
    pub policy_files: Arc<PolicyFiles>,
    /// The time zone policies read the clock in.
    pub timezone: Offset,
    /// The component must carry a signature by one of these keys; `None`
    /// (or empty) requires none.
    pub trusted_signers: Option<Arc<Vec<crate::signing::Signer>>>,
    /// Imports a new version of a pinned component may add (see
    /// [`crate::pins`]).
    pub accept_new_imports: Vec<String>,
}

impl ActionPolicy {
    /// Whether anything of this action can wait for a reviewer: its own
    /// approval keys or grant, or (conservatively) any policy file.
    pub fn may_need_approvals(&self) -> bool {
        self.approval.gates_anything() || self.grants.approval.is_some() || !self.policy_files.rules.is_empty()
    }

    /// A policy for an ad hoc invocation of a component file: exactly the
    /// given grants (from command-line flags), no digest pin.
    pub fn ad_hoc(name: impl Into<String>, component: PathBuf, grants: Grants, limits: Limits) -> ActionPolicy {
        let name = name.into();
        ActionPolicy {
            service_identity: format!("action:{name}"),
            name,
            description: None,
            component,
            digest: None,
            grants,
            limits,
            origin: GrantOrigin::Flags,
            sensitive_args: Vec::new(),
            access: AccessPolicy::default(),
            approval: ApprovalPolicy::default(),
            config_version: "ad-hoc".into(),
            mcp: McpHints::default(),
            require_reason: false,
            windows: Vec::new(),
            policy_files: Arc::default(),
            timezone: Offset::default(),
            trusted_signers: None,
            accept_new_imports: Vec::new(),
        }
    }
}

/// A whole config, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    pub runtime: RuntimeSettings,
    pub actions: BTreeMap<String, ActionPolicy>,
    /// blake3 of the config text, `blake3:<hex>`.
    pub version: String,
    /// `[service]`: how `airlock serve` listens and limits.
    pub service: super::service::ServiceSettings,
    /// `[policy] files`, parsed.
    pub policy_files: Arc<PolicyFiles>,
    /// `[[notifications.webhooks]]`: where approval requests are announced.
    pub webhooks: Vec<crate::notify::Webhook>,
}

impl Policy {
    /// Read and validate a config file. Relative paths in it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config {}: {e}", path.display())))?;
        Policy::parse(&text, path)
    }

    /// Validate config text that was read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, Error> {
        let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
        let raw: RawConfig = toml::from_str(text).map_err(|e| bad(one_line(&e.to_string())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };

        let max_concurrent_instances = raw
            .runtime
            .max_concurrent_instances
            .unwrap_or(DEFAULT_MAX_CONCURRENT_INSTANCES);
        if !(1..=10_000).contains(&max_concurrent_instances) {
            return Err(bad(
                "runtime.max-concurrent-instances must be between 1 and 10000".into()
            ));
        }
        let store = crate::store::settings::StoreSettings::resolve(&raw.store, &resolve).map_err(bad)?;
        let audit = crate::audit::settings::AuditSettings::resolve(&raw.audit, &store).map_err(bad)?;
        let runtime = RuntimeSettings {
            data_dir: raw
                .runtime
                .data_dir
                .as_deref()
                .map_or_else(|| base.join(".airlock"), resolve),
            max_concurrent_instances,
            store,
            audit,
        };

        let timezone = raw
            .policy
            .timezone
            .as_deref()
            .map(Offset::parse)
            .transpose()
            .map_err(|e| bad(format!("policy.{e}")))?
            .unwrap_or_default();
        let mut groups = Groups::new();
        for (name, g) in &raw.approval_groups {
            crate::identity::validate_name(name, "approval group")
                .map_err(|e| bad(format!("approval-groups.{name}: {e}")))?;
            if name == ACTION_GROUP {
                return Err(bad(format!(
                    "approval-groups.{ACTION_GROUP}: the name is reserved for each action's own access.approve"
                )));
            }
            let access = AccessPolicy::resolve(&RawAccess {
                invoke: Some(Vec::new()),
                approve: g.approve.clone(),
                agent_approvers: g.agent_approvers.clone(),
            })
            .map_err(|e| bad(format!("approval-groups.{name}: {e}")))?;
            if !access.has_approvers() {
                return Err(bad(format!(
                    "approval-groups.{name}: nobody may approve; add approve = [\"role:reviewer\"] (or names)"
                )));
            }
            groups.insert(name.clone(), access);
        }
        let files: Vec<(String, PathBuf)> = raw
            .policy
            .files
            .iter()
            .map(|p| (p.display().to_string(), resolve(p)))
            .collect();
        let policy_files = Arc::new(
            PolicyFiles::load(&files, groups)
                .map_err(|errors| Error::Config(format!("policy files refused:\n  {}", errors.join("\n  "))))?,
        );
        // Approvals are bound to the config version: it covers the policy
        // files too, so editing one voids requests made under the old text.
        let mut signers = BTreeMap::new();
        for (name, s) in &raw.signers {
            validate_action_name(name).map_err(|e| bad(format!("signers.{name}: {e}")))?;
            let signer = crate::signing::Signer::load(name, &resolve(&s.public_key))
                .map_err(|e| bad(format!("signers.{name}: {e}")))?;
            signers.insert(name.clone(), signer);
        }
        let trusted = |names: &[String], at: &str| -> Result<Arc<Vec<crate::signing::Signer>>, Error> {
            names
                .iter()
                .map(|n| {
                    signers
                        .get(n)
                        .cloned()
                        .ok_or_else(|| bad(format!("{at}: no signer `{n}` under [signers]")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Arc::new)
        };
        let default_signers = raw
            .signing
            .trusted_signers
            .as_deref()
            .map(|n| trusted(n, "signing.trusted-signers"))
            .transpose()?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(text.as_bytes());
        // Trust is part of the version too: a replaced key file voids
        // approvals made while the old key was trusted.
        for (name, signer) in &signers {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&signer.key_bytes());
        }
        for (name, source) in &policy_files.sources {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&(source.len() as u64).to_le_bytes());
            hasher.update(source.as_bytes());
        }
        let version = format!("blake3:{}", hasher.finalize().to_hex());
        let webhooks = raw
            .notifications
            .webhooks
            .iter()
            .map(crate::notify::Webhook::resolve)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        if let Some((_, dup)) = webhooks
            .iter()
            .enumerate()
            .find(|(i, w)| webhooks[..*i].iter().any(|o| o.name == w.name))
        {
            return Err(bad(format!(
                "notifications.webhooks: two webhooks are named `{}`",
                dup.name
            )));
        }
        let mut actions = BTreeMap::new();
        for (name, spanned) in raw.actions {
            let line = line_of(text, spanned.span().start);
            let raw = spanned.into_inner();
            let at = |msg: String| bad(format!("line {line}: action `{name}`: {msg}"));
            validate_action_name(&name).map_err(&at)?;
            let digest = raw.digest.as_deref().map(Digest::parse).transpose().map_err(&at)?;
            let grants = Grants::resolve(&raw.grants, raw.config.as_ref(), &resolve).map_err(&at)?;
            let limits = raw.limits.resolve().map_err(|e| at(format!("limits: {e}")))?;
            for p in &raw.audit.sensitive_args {
                if p.is_empty() || p.len() > 256 || p.split('.').any(str::is_empty) {
                    return Err(at(format!(
                        "audit.sensitive-args: {p:?} must be a dotted path of argument and field names, e.g. \"ticket.body\""
                    )));
                }
            }
            let service_identity = match raw.service_identity {
                Some(id) => {
                    crate::identity::validate_name(&id, "service identity").map_err(&at)?;
                    id
                }
                None => format!("action:{name}"),
            };
            if raw.windows.len() > super::windows::MAX_WINDOWS {
                return Err(at(format!(
                    "at most {} windows per action",
                    super::windows::MAX_WINDOWS
                )));
            }
            let trusted_signers = match raw.trusted_signers.as_deref() {
                Some(names) => Some(trusted(
                    names,
                    &format!("line {line}: action `{name}`: trusted-signers"),
                )?),
                None => default_signers.clone(),
            };
            let windows = raw
                .windows
                .iter()
                .map(super::windows::Window::resolve)
                .collect::<Result<Vec<_>, _>>()
                .map_err(&at)?;
            if let Some(dup) = windows
                .iter()
                .enumerate()
                .find(|(i, w)| windows[..*i].iter().any(|o| o.name == w.name))
            {
                return Err(at(format!("windows: two windows are named `{}`", dup.1.name)));
            }
            let access = AccessPolicy::resolve(&raw.access).map_err(&at)?;
            let approval = ApprovalPolicy::resolve(&raw.approval).map_err(&at)?;
            if (approval.gates_anything() || grants.approval.is_some()) && !access.has_approvers() {
                return Err(at(
                    "approvals are configured but nobody may approve; add access.approve = [\"role:reviewer\"] (or names)".into(),
                ));
            }
            for rule in &approval.host_calls {
                let granted = match rule.capability {
                    crate::policy::approval::GatedCapability::Http => grants.http.is_some(),
                    crate::policy::approval::GatedCapability::Files => grants.files.is_some(),
                };
                if !granted {
                    return Err(at(format!(
                        "{} gates a capability the action is not granted, so it could never apply",
                        rule.name
                    )));
                }
            }
            actions.insert(
                name.clone(),
                ActionPolicy {
                    name: name.clone(),
                    description: raw.description,
                    component: resolve(&raw.component),
                    digest,
                    grants,
                    limits,
                    origin: GrantOrigin::Config {
                        path: path.to_path_buf(),
                        line,
                    },
                    sensitive_args: raw.audit.sensitive_args,
                    service_identity,
                    access,
                    approval,
                    config_version: version.clone(),
                    mcp: raw.mcp,
                    require_reason: raw.require_reason,
                    windows,
                    policy_files: policy_files.clone(),
                    timezone,
                    trusted_signers,
                    accept_new_imports: raw.accept_new_imports,
                },
            );
        }
        Ok(Policy {
            path: path.to_path_buf(),
            runtime,
            actions,
            version,
            service: super::service::ServiceSettings::resolve(&raw.service).map_err(bad)?,
            policy_files,
            webhooks,
        })
    }
}

/// Action names appear in CLI arguments, logs and (later) URLs.
fn validate_action_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err("action names are 1-64 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit".into())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1)
}

/// toml errors span several lines with a source excerpt; keep the message on
/// one line so every failure prints one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| {
            let excerpt = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
                .starts_with('|');
            !l.is_empty() && !excerpt
        })
        .collect::<Vec<_>>()
        .join(" ")
}
