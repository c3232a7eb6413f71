//! What the audit log records.
//!
//! Events name things (actions, paths, destinations, credential names) and
//! carry digests and sizes of payloads; they never carry secret values.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// Written before the action's instance is created. For an action
    /// holding any capability that reaches outside its sandbox it is synced
    /// first (nothing with an effect runs without this record on disk); a
    /// pure action's is synced with its closing record, before the result
    /// is returned.
    InvocationStarted(InvocationStarted),
    /// One capability call: its own record, in call order.
    HostCall(HostCallEvent),
    /// How the invocation ended; written (and synced) before its result is
    /// returned.
    InvocationFinished(InvocationFinished),
    /// A request refused before anything ran (no permission, unknown
    /// function, bad arguments), or an invocation that waited for approval
    /// and ended without running: denied, expired, or failed (`state` says
    /// which, `approval` names the request).
    InvocationRefused(InvocationRefused),
    /// An invocation whose process ended (crash, SIGKILL, power loss)
    /// before it finished: written by the next airlock process that found
    /// it, so every invocation that started ends in the log. Only ever
    /// written once the process that ran it is provably gone (see
    /// [`crate::audit::lease`]).
    InvocationCutOff(InvocationCutOff),
    /// The log was found with a torn tail at open and repaired.
    Recovered(Recovered),
    /// An approval was asked for: what it is bound to and who must decide.
    ApprovalRequested(ApprovalRequested),
    /// One approver's decision.
    ApprovalDecision(ApprovalDecision),
    /// A request reached its end: approved, denied, expired or failed.
    ApprovalResolved(ApprovalResolved),
    /// One attempt to deliver a notification of a request to a webhook.
    Notification(NotificationEvent),
    /// A request nobody decided in time went to its escalation group too.
    ApprovalEscalated(ApprovalEscalated),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApprovalEscalated {
    pub approval: String,
    pub invocation: String,
    pub action: String,
    /// The group asked first, and the one it went to.
    pub from_group: String,
    pub to_group: String,
    /// Who may decide it now.
    pub approvers: Vec<String>,
}

/// One delivery attempt of a notification ([`crate::notify`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NotificationEvent {
    pub approval: String,
    pub invocation: String,
    pub action: String,
    pub webhook: String,
    /// The webhook's origin (`https://hooks.slack.com:443`), never its URL.
    pub destination: String,
    /// `requested`, `decided` or `expired`.
    pub event: String,
    /// The same for every attempt of one delivery (`X-Airlock-Delivery`).
    pub delivery: String,
    pub attempt: u32,
    /// `delivered`, `failed` (retried) or `gave-up`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_us: u64,
}

impl Event {
    /// The invocation this event belongs to, if any.
    pub fn invocation(&self) -> Option<&str> {
        match self {
            Event::InvocationStarted(e) => Some(&e.invocation),
            Event::HostCall(e) => Some(&*e.invocation),
            Event::InvocationFinished(e) => Some(&e.invocation),
            Event::InvocationRefused(e) => Some(&e.invocation),
            Event::InvocationCutOff(e) => Some(&e.invocation),
            Event::ApprovalRequested(e) => Some(&e.invocation),
            Event::ApprovalDecision(e) => Some(&e.invocation),
            Event::ApprovalResolved(e) => Some(&e.invocation),
            Event::Notification(e) => Some(&e.invocation),
            Event::ApprovalEscalated(e) => Some(&e.invocation),
            Event::Recovered(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InvocationStarted {
    pub invocation: String,
    /// Who asked: an identity name, or `local:USER` for the local operator.
    pub caller: String,
    /// `agent` or `human` (absent in records written before identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_kind: Option<String>,
    /// The approval that released this invocation, if it needed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    pub action: String,
    /// The identity the action runs under.
    pub service_identity: String,
    pub component_digest: String,
    pub function: String,
    /// blake3 of the canonical (compact, key-ordered) JSON arguments (keyed
    /// with the log's digest key when the action has sensitive arguments).
    pub args_digest: String,
    /// The arguments, with sensitive fields replaced by their digest;
    /// `null` when larger than the audit cap (the digest still binds them).
    pub args: serde_json::Value,
    pub args_truncated: bool,
    /// One line per capability in force.
    pub grants: Vec<String>,
    /// The lease of the process that runs it (see
    /// [`crate::audit::lease`]): if that process ends before the closing
    /// record, recovery closes it; absent in records written before leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// The policies that decided it (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The agent's stated reason, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The W3C trace the request belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The trusted signer whose signature on the component was verified
    /// (`NAME (ed25519:…)`), when the action requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// One host call. Built on every call, so it borrows what it can: the
/// invocation id is shared, names and rules are the host's own strings,
/// and the time is kept as a number until the record is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostCallEvent {
    pub invocation: Arc<str>,
    /// Position among the invocation's host calls, from 0.
    pub call: u64,
    /// When the call was made, in microseconds since the Unix epoch,
    /// written as RFC 3339 text (the record's `ts` is when it was
    /// written); 0, written as empty text, in records from before this
    /// field existed.
    #[serde(default, with = "crate::time::rfc3339_text")]
    pub at: u64,
    pub interface: Cow<'static, str>,
    pub function: Cow<'static, str>,
    /// Summary of the arguments: paths, destinations, sizes, digests.
    pub args: Vec<(Cow<'static, str>, String)>,
    pub allowed: bool,
    pub rule: Cow<'static, str>,
    pub reason: Option<Cow<'static, str>>,
    pub status: Cow<'static, str>,
    pub duration_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InvocationFinished {
    pub invocation: String,
    pub action: String,
    /// `ok`, or the error class: `action-error`, `panic`, `denied`,
    /// `limit`, `trap`, `internal`.
    pub outcome: String,
    pub exit_code: i32,
    /// The error line, for failures.
    pub error: Option<String>,
    pub duration_us: u64,
    pub fuel_consumed: Option<u64>,
    pub peak_memory_bytes: u64,
    pub result_blake3: Option<String>,
    pub stdout_bytes: u64,
    pub stdout_blake3: String,
    pub stderr_bytes: u64,
    pub stderr_blake3: String,
    pub log_lines: u64,
    pub host_calls: u64,
    pub host_calls_denied: u64,
    /// Calls into the inert baseline, per function (`interface.function`).
    pub baseline_calls: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InvocationRefused {
    pub invocation: String,
    pub caller: String,
    pub action: String,
    /// The identity the action would have run under (absent in records
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_identity: Option<String>,
    pub function: String,
    pub exit_code: i32,
    pub error: String,
    /// For an invocation that waited for approval: the request it waited on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// For an invocation that waited for approval: how it ended (`denied`,
    /// `expired` or `failed`); nothing ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The policies that decided it (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The agent's stated reason, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The W3C trace the request belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Why an invocation was cut off, as recorded.
pub const CUT_OFF_REASON: &str = "the process ended before the invocation finished (crash or kill)";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InvocationCutOff {
    pub invocation: String,
    /// From its start record or status row; absent if neither names it.
    pub action: Option<String>,
    /// The lease of the process that ran it, when known.
    pub runner: Option<String>,
    /// Its `invocation-started` record; absent when the process ended
    /// before writing it (only its status row said it was running).
    pub started_seq: Option<u64>,
    /// Always `cut-off`: read beside `invocation-finished` outcomes.
    pub outcome: String,
    /// [`CUT_OFF_REASON`], or why the closing record is missing.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Recovered {
    /// Bytes of torn tail removed.
    pub truncated_bytes: u64,
    /// The last intact record before the tear.
    pub last_good_seq: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApprovalRequested {
    pub approval: String,
    /// `invocation`, `host-call` or `guest`.
    pub approval_kind: String,
    pub invocation: String,
    pub action: String,
    pub function: String,
    pub caller: String,
    /// The digest the decision is bound to.
    pub binding: String,
    /// The config rule that demanded approval.
    pub rule: String,
    pub quorum: u32,
    pub expires_at: String,
    /// The held-back host call or the guest's summary, summarized.
    pub subject: serde_json::Value,
    /// The policies that decided it (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The agent's stated reason, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The W3C trace the request belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The reviewers asked: `action` or an `[approval-groups]` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Why reviewers are asked (the deciding policy's `@reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApprovalDecision {
    pub approval: String,
    pub invocation: String,
    pub action: String,
    /// Who decided, and as what kind of identity.
    pub identity: String,
    pub identity_kind: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub reason: Option<String>,
    /// Approvals counted so far, of `quorum`: only votes whose identity
    /// still holds a live token with the approving role count.
    pub approvals: u32,
    pub quorum: u32,
    /// Identities whose earlier approvals no longer count (every token
    /// they approved with was revoked, or lost the approving role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncounted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApprovalResolved {
    pub approval: String,
    pub invocation: String,
    pub action: String,
    /// `approved`, `denied`, `expired` or `failed`.
    pub state: String,
    pub reason: Option<String>,
}

/// The events of audit records a store owes the log (see
/// [`crate::store::Store::drain_audit_outbox`]): each a JSON array of
/// events, in order.
pub fn decode_owed(bodies: &[String]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for body in bodies {
        let group: Vec<Event> = serde_json::from_str(body)
            .map_err(|e| format!("an audit record the database holds for the log does not parse ({e})"))?;
        events.extend(group);
    }
    Ok(events)
}
