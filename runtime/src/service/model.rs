//! The HTTP API's request and response bodies, as types.
//!
//! The handlers (`super::api`) serialize these, and the OpenAPI document
//! (`super::openapi`) describes them by the same derive (`utoipa`), so the
//! document cannot drift from what is sent. Field names are kebab-case, as
//! everywhere in the API. A field that a kind of answer never carries is
//! left out of it rather than sent as `null`.

use crate::store::{ApprovalKind, ApprovalRecord, InvocationRecord, InvocationStatus, NodeRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code and a sentence for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`unauthenticated`, `bad-json`, ...).
    pub code: String,
    pub message: String,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: Alive,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Alive {
    Ok,
}

/// Whether a part the service needs can be used now.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Availability {
    Ok,
    Unavailable,
}

impl Availability {
    pub fn of(ok: bool) -> Availability {
        if ok {
            Availability::Ok
        } else {
            Availability::Unavailable
        }
    }
}

/// `GET /v1/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// The audit log is writable and the database answers.
    pub ready: bool,
    pub audit: Availability,
    pub database: Availability,
    /// This node's id (`--node-id`).
    pub node: String,
    /// Asked with a token: the loaded actions that identity may invoke or
    /// approve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub this_node: String,
    /// Whether other machines may share this store (PostgreSQL).
    pub shared_store: bool,
    /// The nodes whose heartbeat is recent.
    pub nodes: Vec<NodeRecord>,
}

/// `GET /v1/actions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionList {
    pub actions: Vec<ActionView>,
}

/// An action as an identity that may invoke or approve it sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = Action)]
pub struct ActionView {
    pub name: String,
    /// The operator's description (`actions.NAME.description`).
    pub description: Option<String>,
    pub service_identity: String,
    pub may_invoke: bool,
    pub may_approve: bool,
    pub approval: ApprovalSettings,
    /// What each granted capability reaches, as `capability: what`.
    pub capabilities: Vec<String>,
    /// The capability manifest: imports, functions with their JSON
    /// Schemas and docs, the component's digest.
    #[schema(value_type = Object)]
    pub manifest: Value,
    /// What changed since the pinned version, when an upgrade is loaded.
    pub upgrade: Option<Value>,
}

/// The approvals an action's config asks for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ApprovalSettings {
    /// Every invocation waits for approval.
    pub invocation: bool,
    /// Approvals needed from distinct identities.
    pub quorum: u32,
    /// The host-call gates, described.
    pub host_calls: Vec<String>,
}

/// `POST /v1/invocations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InvokeRequest {
    pub action: String,
    pub function: String,
    /// Keyed by the function's parameter names (see its JSON Schema).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub args: Value,
    /// Wait this long for the result (default 30000, at most 300000); `0`
    /// submits and returns at once.
    #[schema(minimum = 0)]
    pub wait_ms: Option<u64>,
    /// Why the agent asks, in its own words: recorded, shown to reviewers,
    /// readable by policies (`context.reason`).
    pub reason: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// An invocation: how it stands, and its outcome once it has one. An
/// invocation that waits for a reviewer names the request it waits for
/// (`approval`, `approval-kind`, `binding`, `expires-at`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = Invocation)]
pub struct InvocationView {
    pub invocation: String,
    pub status: InvocationStatus,
    /// The function's result, as JSON (null unless it succeeded).
    #[schema(required = true)]
    pub result: Option<Value>,
    /// Why it failed (null unless it did).
    #[schema(required = true)]
    pub error: Option<String>,
    /// The CLI's exit code for its outcome (0 on success; null while it
    /// has none).
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The identity that asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Why the agent said it asked (null when it did not say).
    #[schema(required = true)]
    pub stated_reason: Option<String>,
    /// The W3C trace it belongs to (null when none was named).
    #[schema(required = true)]
    pub traceparent: Option<String>,
    /// The approval request it waits for (or that released it); null when
    /// none.
    #[schema(required = true)]
    pub approval: Option<String>,
    /// What that request holds back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_kind: Option<ApprovalKind>,
    /// The digest a decision on it is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl InvocationView {
    /// `invocation` in `status`, nothing else known yet.
    pub fn new(invocation: &str, status: InvocationStatus) -> InvocationView {
        InvocationView {
            invocation: invocation.to_string(),
            status,
            result: None,
            error: None,
            exit_code: None,
            action: None,
            function: None,
            caller: None,
            created_at: None,
            stated_reason: None,
            traceparent: None,
            approval: None,
            approval_kind: None,
            binding: None,
            expires_at: None,
        }
    }

    /// An invocation that ran in this request.
    pub fn ran(report: &crate::invocation::Report) -> InvocationView {
        let outcome = crate::gateway::outcome_of(report);
        let status = if report.outcome.is_ok() {
            InvocationStatus::Succeeded
        } else {
            InvocationStatus::Failed
        };
        InvocationView {
            result: outcome.result,
            error: outcome.error,
            exit_code: Some(outcome.exit_code),
            ..InvocationView::new(&report.invocation, status)
        }
    }

    /// A stored invocation.
    pub fn stored(record: &InvocationRecord) -> InvocationView {
        InvocationView {
            result: record.outcome.as_ref().and_then(|o| o.result.clone()),
            error: record.outcome.as_ref().and_then(|o| o.error.clone()),
            exit_code: record.outcome.as_ref().map(|o| o.exit_code),
            action: Some(record.action.clone()),
            function: Some(record.function.clone()),
            caller: Some(record.caller.name.clone()),
            created_at: Some(crate::time::rfc3339_micros(record.created_at)),
            stated_reason: record.intent.as_ref().and_then(|i| i.reason.clone()),
            traceparent: record.intent.as_ref().and_then(|i| i.traceparent.clone()),
            approval: record.approval.clone(),
            ..InvocationView::new(&record.id, record.state)
        }
    }

    /// Name the pending request `approval` it waits for.
    pub fn waiting_for(mut self, approval: &ApprovalRecord) -> InvocationView {
        self.approval = Some(approval.id.clone());
        self.approval_kind = Some(approval.kind);
        self.binding = Some(approval.binding.clone());
        self.expires_at = Some(crate::time::rfc3339_micros(approval.expires_at));
        self
    }
}

/// `GET /v1/invocations`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationPage {
    pub invocations: Vec<InvocationView>,
    /// Pass as `after` for the next page; null on the last.
    pub next: Option<String>,
}

/// `GET /v1/invocations` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvocationsQuery {
    /// One status (`awaiting-approval`, `approved`, `running`, `succeeded`,
    /// `failed`, `denied`, `expired`), or `all` (the default).
    pub state: Option<String>,
    pub action: Option<String>,
    /// The identity that made them.
    pub caller: Option<String>,
    /// Created at or after (Unix seconds or `YYYY-MM-DD[THH:MM[:SS]][Z]`, UTC).
    pub since: Option<String>,
    /// Created before.
    pub until: Option<String>,
    /// At most this many.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<usize>,
    /// The `next` of the page before.
    pub after: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalList {
    pub approvals: Vec<ApprovalRecord>,
}

/// `GET /v1/approvals` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApprovalsQuery {
    /// `pending` (the default), `approved`, `denied`, `expired`, `failed`
    /// or `all`.
    pub state: Option<String>,
    /// The newest this many (at most 10000).
    #[param(minimum = 0, default = 1000)]
    pub limit: Option<usize>,
}

/// `POST /v1/approvals/{id}/approve` and `/deny`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (a deny needs one).
    pub reason: Option<String>,
    /// Refuse unless the request is bound to this digest (the one reviewed).
    pub binding: Option<String>,
}

/// `POST /v1/approvals/{id}/deny`, as the document describes it: a deny
/// needs a reason (the handler takes a [`DecisionBody`] and says so when
/// it is missing).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = DenyBody)]
pub struct DenyBodyDoc {
    /// Why.
    pub reason: String,
    /// Refuse unless the request is bound to this digest (the one reviewed).
    pub binding: Option<String>,
}

/// A request after a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decided {
    pub approval: ApprovalRecord,
}

/// `GET /v1/audit` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub invocation: Option<String>,
    pub action: Option<String>,
    pub caller: Option<String>,
    /// At or after (Unix seconds or `YYYY-MM-DD[THH:MM[:SS]][Z]`, UTC).
    pub since: Option<String>,
    pub until: Option<String>,
    /// The newest this many (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// `GET /v1/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecords {
    /// As written in the log (verified as read).
    pub records: Vec<AuditRecord>,
}

/// One audit record, as the log holds it: the hash chain's fields and the
/// event (its fields depend on `event.kind`; see the README's audit
/// section).
#[derive(Debug, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = AuditRecordFields)]
pub struct AuditRecord(pub Value);

/// The fields every audit record has (only for the document).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuditRecordFields {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub ts: String,
    /// The hash of the record before.
    pub prev: String,
    pub hash: String,
    /// `{"kind": ..., ...}`.
    #[schema(value_type = Object)]
    pub event: Value,
    /// The node that wrote it (PostgreSQL audit trail).
    pub node: Option<String>,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Verification {
    /// The chain and its checkpoints verify.
    pub intact: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// The last record (file log; null when the log is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Head>)]
    pub head: Option<Option<Head>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<usize>,
    /// Records up to this sequence number are covered by a signed
    /// checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub signed_through: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsigned_records: Option<u64>,
    /// Each node's chain (PostgreSQL audit trail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeVerification>>,
    /// How the index compares with the log (file log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<Value>,
}

impl Verification {
    /// A chain that does not verify, and why.
    pub fn broken(error: String) -> Verification {
        Verification {
            intact: false,
            error: Some(error),
            ..Verification::default()
        }
    }
}

/// A chain's last record.
#[derive(Debug, Serialize, ToSchema)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn of(head: Option<(u64, [u8; 32])>) -> Option<Head> {
        head.map(|(seq, hash)| Head {
            seq,
            hash: crate::hex::hex(&hash),
        })
    }
}

/// One node's chain in a PostgreSQL audit trail.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct NodeVerification {
    pub node: String,
    pub records: u64,
    pub head: Option<Head>,
    pub checkpoints: usize,
    pub signed_through: Option<u64>,
    pub unsigned_records: u64,
}

/// RFC 9728 protected resource metadata of `/mcp`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceMetadata {
    /// `ORIGIN/mcp`.
    pub resource: String,
    /// Always `["header"]`.
    pub bearer_methods_supported: Vec<String>,
    pub resource_name: String,
}
