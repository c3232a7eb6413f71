//! The rows the store keeps, as typed records.

use crate::identity::{Caller, IdentityKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name { $($(#[$vmeta])* $variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// What an approval request holds back.
    ApprovalKind { Invocation = "invocation", HostCall = "host-call", Guest = "guest" }
}

text_enum! {
    /// Where an approval request stands. Only `pending` ever changes.
    ApprovalState {
        Pending = "pending",
        Approved = "approved",
        Denied = "denied",
        Expired = "expired",
        /// The instance waiting on it ended first, or what it was bound
        /// to changed; `reason` says which.
        Failed = "failed",
    }
}

text_enum! {
    /// One approver's answer.
    Verdict { Approve = "approve", Deny = "deny" }
}

text_enum! {
    /// An invocation's life.
    InvocationStatus {
        /// Waiting for its invocation-level approval.
        AwaitingApproval = "awaiting-approval",
        /// Approved, not yet picked up by a runtime.
        Approved = "approved",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Denied = "denied",
        Expired = "expired",
    }
}

impl InvocationStatus {
    /// No further transition happens from a final state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            InvocationStatus::Succeeded
                | InvocationStatus::Failed
                | InvocationStatus::Denied
                | InvocationStatus::Expired
        )
    }
}

/// One approver's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct DecisionRecord {
    pub identity: String,
    pub kind: IdentityKind,
    pub verdict: Verdict,
    pub reason: Option<String>,
    /// Unix microseconds.
    pub at: u64,
}

/// One approval request: what exactly will happen if it is approved, and
/// who said what about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = Approval)]
pub struct ApprovalRecord {
    pub id: String,
    pub kind: ApprovalKind,
    pub state: ApprovalState,
    pub action: String,
    pub function: String,
    /// The requester: it can never approve its own request.
    pub caller: String,
    pub caller_kind: IdentityKind,
    pub service_identity: String,
    pub component_digest: String,
    /// The invocation's arguments, canonical JSON (sensitive fields masked).
    pub args: Value,
    /// blake3 over everything the decision is bound to (see
    /// [`crate::approval::binding`]); decisions apply to this digest only.
    pub binding: String,
    /// blake3 of the config text the request was made under.
    pub config_version: String,
    /// The config rule that demanded approval.
    pub rule: String,
    /// For a host-call gate the call itself (interface, function,
    /// arguments); for a guest request its summary and detail.
    pub subject: Value,
    /// The capabilities the action holds.
    pub capabilities: Vec<String>,
    /// Approvals needed from distinct identities.
    pub quorum: u32,
    /// Who may approve, as written in the config.
    pub approvers: Vec<String>,
    /// Unix microseconds.
    pub created_at: u64,
    pub expires_at: u64,
    pub decided_at: Option<u64>,
    /// Why it was denied, expired or failed.
    pub reason: Option<String>,
    /// The invocation this request belongs to.
    pub invocation: String,
    /// The runtime process holding the waiting instance (host-call and
    /// guest requests), `PID:NONCE`.
    pub owner: Option<String>,
    pub decisions: Vec<DecisionRecord>,
    /// Identities whose approvals no longer counted at the last decision:
    /// every token they could approve with had been revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncounted: Vec<String>,
    /// The reviewers asked: `action` (the action's own `access.approve`)
    /// or an `[approval-groups]` name. Absent before policies named groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Who may decide, as the request was made: decisions are judged
    /// against these, not against whatever the config says later. Absent
    /// in requests made before policies named groups (the action's
    /// `access` decides those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ApproverRules>,
    /// Further groups that must each approve too, to their own quorum
    /// (`group`/`rules`/`quorum` are the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_groups: Vec<GroupRules>,
    /// The policies that asked for approval (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Why reviewers are asked: the deciding policy's `@reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The agent's stated reason and trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<crate::request::Intent>,
    /// Who may decide too from `escalate_at` on (the group's reviewers
    /// join the first group's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<GroupRules>,
    /// Unix microseconds; cleared once escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_at: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
}

/// One charge against a usage window (`[[actions.NAME.windows]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// `ACTION \x1f WINDOW \x1f CALLER` (`*` for a window over all callers).
    pub key: String,
    /// Unix microseconds: the window's start, aligned to its period.
    pub window_start: i64,
    pub window_end: i64,
    /// What this call adds: 1, or the value of the summed argument.
    pub amount: i64,
    /// The most `used` may reach.
    pub max: i64,
}

/// A charge that would take a window past its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// Which of the charges.
    pub index: usize,
    /// What the window had used before this call.
    pub used: i64,
}

/// One more group a request needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GroupRules {
    pub group: String,
    pub rules: ApproverRules,
    pub quorum: u32,
}

/// Who may decide a request, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ApproverRules {
    pub approve: Vec<String>,
    pub agent_approvers: Vec<String>,
}

impl ApproverRules {
    /// These rules as an access policy; rules that no longer parse let
    /// nobody decide.
    pub fn access(&self) -> crate::identity::AccessPolicy {
        crate::identity::AccessPolicy::resolve(&crate::identity::RawAccess {
            invoke: Some(Vec::new()),
            approve: self.approve.clone(),
            agent_approvers: self.agent_approvers.clone(),
        })
        .unwrap_or(crate::identity::AccessPolicy {
            invoke: Vec::new(),
            approve: Vec::new(),
            agent_approvers: Vec::new(),
        })
    }

    pub fn of(access: &crate::identity::AccessPolicy) -> ApproverRules {
        ApproverRules {
            approve: access.approve.iter().map(ToString::to_string).collect(),
            agent_approvers: access.agent_approvers.iter().map(ToString::to_string).collect(),
        }
    }
}

impl ApprovalRecord {
    /// Who may decide this request: the rules it was made with, or (for a
    /// request made before requests carried them) `fallback`, the action's
    /// access policy. Rules that no longer parse let nobody decide.
    pub fn reviewers(&self, fallback: &crate::identity::AccessPolicy) -> crate::identity::AccessPolicy {
        match &self.rules {
            None => fallback.clone(),
            Some(rules) => rules.access(),
        }
    }

    /// Every group that must approve this request, each with its quorum:
    /// the first as [`ApprovalRecord::reviewers`] says, then
    /// [`ApprovalRecord::more_groups`].
    pub fn review_groups(&self, fallback: &crate::identity::AccessPolicy) -> Vec<(crate::identity::AccessPolicy, u32)> {
        let mut out = vec![(self.reviewers(fallback), self.quorum)];
        out.extend(self.more_groups.iter().map(|g| (g.rules.access(), g.quorum)));
        out
    }

    /// The groups this request needs, by name, each with its quorum
    /// (`action` for a request made before requests named groups).
    pub fn group_quorums(&self) -> Vec<(String, u32)> {
        let mut out = vec![(self.group.clone().unwrap_or_else(|| "action".into()), self.quorum)];
        out.extend(self.more_groups.iter().map(|g| (g.group.clone(), g.quorum)));
        out
    }

    /// Approvals that counted at the last decision.
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Approve && !self.uncounted.contains(&d.identity))
            .count()
    }
}

pub use crate::identity::TokenRecord;

/// How an invocation ended, as kept for `invocations show` and the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InvocationOutcome {
    /// The process exit code the CLI would use (0 success).
    pub exit_code: i32,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// Unix microseconds.
    pub finished_at: u64,
}

/// One invocation request and, once it ran, its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InvocationRecord {
    pub id: String,
    pub action: String,
    pub function: String,
    pub args: Value,
    pub caller: Caller,
    pub state: InvocationStatus,
    pub approval: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub outcome: Option<InvocationOutcome>,
    /// While `running`: the runner lease of the process that runs it (see
    /// [`crate::audit::lease`]), so that once that process is gone,
    /// recovery can end the row the way the audit log ended the
    /// invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// The agent's stated reason and trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<crate::request::Intent>,
}

/// Why an approval update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("request {id} is already {state}; nothing to decide")]
    NotPending { id: String, state: ApprovalState },
    #[error("request {0} has expired")]
    Expired(String),
    #[error("{0} made this request and cannot approve it")]
    SelfApproval(String),
    #[error("{identity} may not approve action `{action}` (approvers: {approvers})")]
    NotAnApprover {
        identity: String,
        action: String,
        approvers: String,
    },
    #[error("{identity} has already decided request {id}; each identity counts once")]
    AlreadyDecided { identity: String, id: String },
    #[error("the audit log cannot be written: {0}")]
    AuditUnavailable(String),
    #[error("{0}")]
    Other(String),
}

/// A node of the cluster, as its last heartbeat said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = Node)]
pub struct NodeRecord {
    /// `--node-id` (the host name by default).
    pub id: String,
    /// The airlock version it runs.
    pub version: String,
    /// Where its service listens, if it serves.
    pub address: Option<String>,
    /// Unix microseconds.
    pub started_at: u64,
    /// By the store's clock (the database server's, on PostgreSQL).
    pub last_seen: u64,
    /// How long ago that was, measured by the same clock: nodes' clocks
    /// may disagree, so liveness is never judged by comparing them.
    #[serde(skip)]
    pub silent_for_micros: u64,
}

/// A process that may hold work others must not touch while it lives: an
/// approval owner (a waiting instance) or a runner lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub id: String,
    pub node: String,
    /// Unix microseconds of its last heartbeat, by the store's clock.
    pub last_seen: u64,
    /// How long ago that was, by the same clock (see [`NodeRecord`]).
    pub silent_for_micros: u64,
}

/// A signed-in console session. The session id itself is never stored,
/// only its blake3 hash: whoever reads the database cannot sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: [u8; 32],
    /// The hash of the token it was opened with: revoking the token ends
    /// the session at once.
    pub token_hash: [u8; 32],
    pub csrf: String,
    /// Unix microseconds.
    pub created_at: u64,
    pub last_seen: u64,
}
