//! Loading an action: read and pin the component, check its imports against
//! the policy, and prepare it for fast instantiation.
//!
//! Everything that can be decided before a request arrives is decided here,
//! once: an action that loads is one whose every import is granted.

use crate::cache::ArtifactCache;
use crate::capabilities::catalog::ImportClass;
use crate::capabilities::{self, Grants};
use crate::error::Error;
use crate::host_call::InvocationState;
use crate::manifest::Manifest;
use crate::policy::{ActionPolicy, Digest, GrantOrigin};
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::{InstancePre, Linker};

/// Largest component file airlock reads. Bounds host memory and compile
/// time for a hostile file.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// An action ready to invoke.
pub struct PreparedAction {
    pub policy: ActionPolicy,
    pub manifest: Manifest,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// The trusted signer whose signature on the component was verified,
    /// when the action requires one (`trusted-signers`).
    pub signer: Option<crate::signing::Signer>,
    /// What changed since the component this data directory loaded under
    /// the previous digest pin (pinned actions only).
    pub upgrade: Option<Upgrade>,
    /// For a pinned action: the pin record as the load saw it, to be
    /// committed once the load is final ([`crate::runtime::Runtime::commit_pins`]).
    pub(crate) pin_seen: Option<Option<crate::pins::PinEntry>>,
    pub(crate) pre: InstancePre<InvocationState>,
    /// The vault, for actions with credentials.
    pub(crate) vault: Option<std::sync::Arc<crate::vault::LiveVault>>,
    /// Where every invocation and host call is recorded.
    pub(crate) audit: crate::audit::AuditLog,
    /// The approval service, for actions that can need approvals.
    pub(crate) approvals: Option<crate::approval::Approvals>,
    /// Who may invoke what, and what waits for approval: the action's
    /// Cedar policies.
    pub decisions: std::sync::Arc<crate::policy::engine::ToolPolicy>,
}

impl std::fmt::Debug for PreparedAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedAction")
            .field("name", &self.policy.name)
            .field("digest", &self.manifest.digest)
            .finish()
    }
}

/// Read component bytes, refusing anything that is not a component.
pub fn read_component(path: &Path) -> Result<Vec<u8>, Error> {
    let invalid = |reason: String| Error::InvalidComponent {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(invalid(format!(
            "{} bytes exceeds the {} byte limit",
            meta.len(),
            MAX_COMPONENT_BYTES
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    check_header(&bytes).map_err(|r| invalid(r.into()))?;
    Ok(bytes)
}

/// The 8-byte preamble tells components from core modules and non-Wasm.
fn check_header(bytes: &[u8]) -> Result<(), &'static str> {
    const MAGIC: &[u8; 4] = b"\0asm";
    if bytes.len() < 8 {
        return Err("too short to be a WebAssembly component");
    }
    if &bytes[..4] != MAGIC {
        return Err("not a WebAssembly binary (bad magic number)");
    }
    match &bytes[6..8] {
        [1, 0] => Ok(()),
        [0, 0] => Err(
            "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
                       (or wrap it with `wasm-tools component new`)",
        ),
        _ => Err("unknown WebAssembly binary layer"),
    }
}

/// Compile (or load from cache) a component and read its manifest.
pub fn compile(
    engine: &Engine,
    cache: &ArtifactCache,
    path: &Path,
) -> Result<(Vec<u8>, wasmtime::component::Component, Manifest, bool), Error> {
    compile_bytes(engine, cache, path, read_component(path)?)
}

/// Read an action's component once, verify its signature when the action
/// requires one, and compile those same bytes.
pub fn compile_verified(
    engine: &Engine,
    cache: &ArtifactCache,
    policy: &ActionPolicy,
) -> Result<(Vec<u8>, wasmtime::component::Component, Manifest, bool), Error> {
    let bytes = read_component(&policy.component)?;
    verify_signature(policy, &bytes)?;
    compile_bytes(engine, cache, &policy.component, bytes)
}

/// As [`compile`], for bytes already read from `path` (and verified).
pub fn compile_bytes(
    engine: &Engine,
    cache: &ArtifactCache,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(Vec<u8>, wasmtime::component::Component, Manifest, bool), Error> {
    let digest = Digest::of(&bytes);
    let (component, from_cache) =
        cache
            .load_or_compile(engine, &digest, &bytes)
            .map_err(|e| Error::InvalidComponent {
                path: path.display().to_string(),
                reason: one_line(&format!("{e:#}")),
            })?;
    let manifest = Manifest::read(engine, &component, &bytes).map_err(|e| Error::InvalidComponent {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((bytes, component, manifest, from_cache))
}

/// Load one action under its policy.
pub fn prepare(
    engine: &Engine,
    cache: &ArtifactCache,
    policy: ActionPolicy,
    vault: Option<std::sync::Arc<crate::vault::LiveVault>>,
    audit: crate::audit::AuditLog,
    approvals: Option<crate::approval::Approvals>,
    pins: Option<&crate::pins::PinHistory>,
) -> Result<PreparedAction, Error> {
    let bytes = read_component(&policy.component)?;
    // Verified before anything else reads the bytes; the same bytes are
    // compiled.
    let signer = verify_signature(&policy, &bytes)?;
    let (_, component, manifest, from_cache) = compile_bytes(engine, cache, &policy.component, bytes)?;
    if let Some(pin) = policy.digest
        && pin != manifest.digest
    {
        return Err(Error::Refused(format!(
            "action `{}` refused: component {} has digest {}, but the policy pins {}",
            policy.name,
            policy.component.display(),
            manifest.digest,
            pin
        )));
    }
    check_imports(&policy, &manifest)?;
    let pins = pins.filter(|_| policy.digest.is_some());
    let (upgrade, pin_seen) = match pins {
        Some(pins) => {
            let (upgrade, seen) = check_upgrade(engine, cache, &policy, &manifest, pins)?;
            (upgrade, Some(seen))
        }
        None => (None, None),
    };
    // Fail closed: gates without an approval service would be gates nobody
    // can pass, or (worse) gates silently skipped.
    for w in &policy.windows {
        w.check(&manifest.functions)
            .map_err(|e| Error::Config(format!("action `{}`: {e}", policy.name)))?;
    }
    let decisions =
        crate::policy::engine::ToolPolicy::build(&policy, &manifest.functions, &manifest.digest.to_string())
            .map_err(|e| Error::Config(format!("action `{}`: {e}", policy.name)))?;
    if (policy.may_need_approvals() || decisions.has_host_policies()) && approvals.is_none() {
        return Err(Error::internal(format!(
            "action `{}` has approval rules, but no approval service was set up to enforce them",
            policy.name
        )));
    }

    let mut linker = Linker::new(engine);
    capabilities::link_granted(&mut linker, &policy.grants).map_err(Error::internal)?;
    let pre = linker.instantiate_pre(&component).map_err(|e| {
        Error::Refused(format!(
            "action `{}` refused: an import does not match the interface airlock serves: {}",
            policy.name,
            one_line(&format!("{e:#}"))
        ))
    })?;
    Ok(PreparedAction {
        decisions: std::sync::Arc::new(decisions),
        policy,
        manifest,
        from_cache,
        signer,
        upgrade,
        pin_seen,
        pre,
        vault,
        audit,
        approvals,
    })
}

/// A pinned action's change of component, as this data directory saw it.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub diff: crate::manifest::diff::ComponentDiff,
    pub grants: crate::manifest::diff::GrantUse,
}

/// Compare a pinned action's component with the one this data directory
/// last loaded under an earlier pin; refuse new imports the config does
/// not accept. Fails closed: a pin that moves when the earlier component
/// cannot be compared is refused unless every new import is accepted
/// (`accept-new-imports = ["*"]`).
fn check_upgrade(
    engine: &Engine,
    cache: &ArtifactCache,
    policy: &ActionPolicy,
    manifest: &Manifest,
    pins: &crate::pins::PinHistory,
) -> Result<(Option<Upgrade>, Option<crate::pins::PinEntry>), Error> {
    use crate::manifest::diff::{ComponentDiff, GrantUse, accepts};
    let digest = manifest.digest.to_string();
    let entry = pins
        .entry(&policy.name)
        .map_err(|e| Error::Refused(format!("action `{}` refused: {e}", policy.name)))?;
    let old_digest = match &entry {
        Some(e) if e.current != digest => Some(e.current.clone()),
        Some(e) => e.previous.clone(),
        None => None,
    };
    let moving = entry.as_ref().is_some_and(|e| e.current != digest);
    let old = old_digest.as_deref().and_then(|d| {
        let old_bytes = pins.bytes(d)?;
        compile_bytes(engine, cache, &pins.path(d), old_bytes)
            .ok()
            .map(|(_, _, m, _)| m)
    });
    if moving && old.is_none() && !policy.accept_new_imports.iter().any(|a| a == "*") {
        let old = old_digest.unwrap_or_default();
        return Err(Error::Refused(format!(
            "action `{}` refused: its pin moved from {old} to {digest}, but this data directory no longer holds the earlier component ({}) to compare the two; review the upgrade (`airlock diff OLD.wasm NEW.wasm`) and acknowledge it with accept-new-imports = [\"*\"] under [actions.{}]",
            policy.name,
            pins.path(&old).display(),
            policy.name,
        )));
    }
    let upgrade = old.map(|old| Upgrade {
        diff: ComponentDiff::between(&old, manifest),
        grants: GrantUse::of(&old, manifest, &policy.grants),
    });
    if moving && let Some(u) = &upgrade {
        let unaccepted: Vec<String> = u
            .diff
            .grown_imports()
            .into_iter()
            .filter(|i| !accepts(&policy.accept_new_imports, i))
            .map(|i| i.name.clone())
            .collect();
        if !unaccepted.is_empty() {
            return Err(Error::Refused(format!(
                "action `{}` refused: the newly pinned component ({}) imports {}, which the component pinned before ({}) did not; review `airlock diff {} {}` and acknowledge with accept-new-imports = [{}] under [actions.{}]",
                policy.name,
                u.diff.new_digest,
                unaccepted.join(", "),
                u.diff.old_digest,
                crate::hint::shell_quote(&pins.path(&u.diff.old_digest).display().to_string()),
                crate::hint::shell_quote(&policy.component.display().to_string()),
                unaccepted
                    .iter()
                    .map(|n| format!("{:?}", n.split('@').next().unwrap_or(n)))
                    .collect::<Vec<_>>()
                    .join(", "),
                policy.name,
            )));
        }
    }
    Ok((upgrade, entry))
}

/// Check the component's signature when the action names trusted signers.
fn verify_signature(policy: &ActionPolicy, bytes: &[u8]) -> Result<Option<crate::signing::Signer>, Error> {
    let Some(trusted) = policy.trusted_signers.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    match crate::signing::verify(bytes, trusted) {
        Ok(signer) => Ok(Some(signer.clone())),
        Err(e) => {
            let names: Vec<&str> = trusted.iter().map(|s| s.name.as_str()).collect();
            Err(Error::Refused(format!(
                "action `{}` refused: component {} must be signed by {} ({}), but {e}; sign it with `airlock sign {} --key KEY`",
                policy.name,
                policy.component.display(),
                if names.len() == 1 {
                    "trusted signer"
                } else {
                    "one of the trusted signers"
                },
                names.join(", "),
                crate::hint::shell_quote(&policy.component.display().to_string()),
            )))
        }
    }
}

/// Refuse the action if any import is unknown or not granted, naming each
/// one and how it could be granted.
pub fn check_imports(policy: &ActionPolicy, manifest: &Manifest) -> Result<(), Error> {
    let mut problems = Vec::new();
    for import in &manifest.imports {
        match import.class {
            ImportClass::Baseline => {}
            ImportClass::Capability(kind) if policy.grants.holds(kind) => {}
            ImportClass::Capability(kind) => {
                let fix = match &policy.origin {
                    GrantOrigin::Config { path, line } => format!(
                        "grant it with `{}` under [actions.{}.grants] ({}:{line})",
                        Grants::how_to_grant(kind, true),
                        policy.name,
                        path.display()
                    ),
                    GrantOrigin::Flags => format!("grant it with {}", Grants::how_to_grant(kind, false)),
                };
                problems.push(format!("ungranted import {} (capability `{kind}`): {fix}", import.name));
            }
            ImportClass::Unknown => problems.push(format!(
                "unknown import {} ({}): it can never be granted",
                import.name, import.meaning
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "action `{}` refused: {}",
            policy.name,
            problems.join("; ")
        )))
    }
}

/// wasmtime errors carry multi-line context; every failure prints one line.
pub(crate) fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

impl PreparedAction {
    /// The per-invocation approval gate, for actions with host-call gate
    /// rules or the `approval` grant (and approvals set up).
    pub(crate) fn gate_for(
        &self,
        invocation: &str,
        caller: &crate::identity::Caller,
        function: &str,
        args: &serde_json::Value,
        intent: Option<&crate::request::Intent>,
    ) -> Option<std::sync::Arc<crate::approval::gate::Gate>> {
        let policy = &self.policy;
        if policy.approval.host_calls.is_empty()
            && policy.grants.approval.is_none()
            && !self.decisions.has_host_policies()
        {
            return None;
        }
        let approvals = self.approvals.clone()?;
        let template = self.request_template(invocation, caller, function, args, intent);
        Some(std::sync::Arc::new(
            crate::approval::gate::Gate::new(
                approvals,
                policy.approval.clone(),
                template,
                policy.grants.files.as_ref().map(|f| f.dir.clone()),
            )
            .with_host_policies(self.decisions.host_for(caller))
            .with_reviewers(policy.access.clone()),
        ))
    }

    /// An approval request for this action, bound to one invocation; the
    /// caller sets its kind, rule and subject.
    pub fn request_template(
        &self,
        invocation: &str,
        caller: &crate::identity::Caller,
        function: &str,
        args: &serde_json::Value,
        intent: Option<&crate::request::Intent>,
    ) -> crate::approval::NewRequest {
        let policy = &self.policy;
        crate::approval::NewRequest {
            kind: crate::store::ApprovalKind::Invocation,
            invocation: invocation.to_string(),
            action: policy.name.clone(),
            function: function.to_string(),
            caller: caller.clone(),
            service_identity: policy.service_identity.clone(),
            component_digest: self.manifest.digest.to_string(),
            args: self.shown_args(args),
            config_version: policy.config_version.clone(),
            rule: "approval.invocation".into(),
            subject: serde_json::Value::Null,
            capabilities: policy
                .grants
                .describe()
                .into_iter()
                .map(|(kind, what)| format!("{kind}: {what}"))
                .collect(),
            quorum: policy.approval.quorum,
            approvers: policy.access.approvers_text(),
            ttl: policy.approval.ttl,
            group: None,
            rules: None,
            more_groups: Vec::new(),
            policies: Vec::new(),
            why: None,
            intent: intent.filter(|i| !i.is_empty()).cloned(),
            escalation: None,
        }
    }
}
