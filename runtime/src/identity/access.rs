//! Who may invoke and approve an action: the `[actions.NAME.access]` config
//! section.

use super::{AccessRule, Caller, IdentityKind};

/// `[actions.NAME.access]` as written.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAccess {
    /// Defaults to `["local"]`: the local operator only.
    pub invoke: Option<Vec<String>>,
    #[serde(default)]
    pub approve: Vec<String>,
    #[serde(default)]
    pub agent_approvers: Vec<String>,
}

/// Who may invoke and who may approve one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Deny by default: a token holder may invoke only when named here (by
    /// identity or role). Without an `invoke` key only the local operator
    /// may (it already holds every key in the data directory).
    pub invoke: Vec<AccessRule>,
    /// Human identities or roles that may approve.
    pub approve: Vec<AccessRule>,
    /// Agents that may approve: an agent never approves through `approve`,
    /// only when the config names it (or a role of it) here.
    pub agent_approvers: Vec<AccessRule>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            invoke: vec![AccessRule::Local],
            approve: Vec::new(),
            agent_approvers: Vec::new(),
        }
    }
}

fn rules(list: &[String], key: &str) -> Result<Vec<AccessRule>, String> {
    list.iter()
        .map(|s| AccessRule::parse(s).map_err(|e| format!("access.{key}: {s:?}: {e}")))
        .collect()
}

impl AccessPolicy {
    pub fn resolve(raw: &RawAccess) -> Result<AccessPolicy, String> {
        let invoke = match &raw.invoke {
            Some(list) => rules(list, "invoke")?,
            None => vec![AccessRule::Local],
        };
        let approve = rules(&raw.approve, "approve")?;
        let agent_approvers = rules(&raw.agent_approvers, "agent-approvers")?;
        if approve.iter().chain(&agent_approvers).any(|r| *r == AccessRule::Local) {
            return Err("access.approve: `local` cannot approve; reviewers approve with their own token".into());
        }
        Ok(AccessPolicy {
            invoke,
            approve,
            agent_approvers,
        })
    }

    pub fn may_invoke(&self, caller: &Caller) -> bool {
        self.invoke.iter().any(|r| caller.matches(r))
    }

    /// Whether `caller` may approve (before self-approval is considered).
    pub fn may_approve(&self, caller: &Caller) -> bool {
        if caller.is_local() {
            return false;
        }
        let list = match caller.kind {
            IdentityKind::Human => &self.approve,
            IdentityKind::Agent => &self.agent_approvers,
        };
        list.iter().any(|r| caller.matches(r))
    }

    /// The approver lists as written, for requests and messages.
    pub fn approvers_text(&self) -> Vec<String> {
        let mut out: Vec<String> = self.approve.iter().map(ToString::to_string).collect();
        out.extend(self.agent_approvers.iter().map(|r| format!("{r} (agent)")));
        out
    }

    pub fn has_approvers(&self) -> bool {
        !self.approve.is_empty() || !self.agent_approvers.is_empty()
    }
}
