//! The HTTP API's handlers (the routes are listed in `super::openapi`,
//! authentication is `super::auth`).
//!
//! | method | path | who |
//! |---|---|---|
//! | GET | `/v1/health`, `/v1/ready` | anyone (readiness names actions only to an identity) |
//! | GET | `/v1/openapi.json` | anyone |
//! | GET | `/v1/actions` | any identity: the actions it may invoke or approve |
//! | POST | `/v1/invocations` | identities the action's `access.invoke` names |
//! | GET | `/v1/invocations/{id}` | its caller, or an approver of its action |
//! | GET | `/v1/approvals`, `/v1/approvals/{id}` | approvers of the action, or the requester |
//! | POST | `/v1/approvals/{id}/approve`, `/deny` | approvers of the action |
//! | GET | `/v1/audit`, `/v1/audit/verify` | `service.audit-readers` |
//! | GET | `/metrics` | `service.metrics-readers` (see `super::observe`) |
//!
//! `POST /v1/invocations` waits up to `wait-ms` for the outcome, the
//! decision of an invocation-level gate included: 200 when it ends in time,
//! otherwise 202 with how it stands and the approval request it waits for.
//! Every failure, a request axum rejects included, is a JSON error.
//! Every request passes the gate (`super::gate`) first: it is
//! authenticated on its head, and its body is read only afterwards.

use super::Service;
use super::auth::{Authenticated, awaited_approval, first_visible, may_see_approval};
use super::error::ApiError;
use super::model::{
    ActionList, ActionView, Alive, ApprovalList, ApprovalSettings, ApprovalsQuery, AuditQuery, AuditRecord,
    AuditRecords, Availability, Cluster, Decided, DecisionBody, ErrorBody, Head, Health, InvocationPage,
    InvocationView, InvocationsQuery, InvokeRequest, NodeVerification, Readiness, Verification,
};
use crate::gateway::Submitted;
use crate::identity::Caller;
use crate::store::{ApprovalRecord, ApprovalState, InvocationRecord, InvocationStatus, StoreError, Verdict};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Shared = Arc<Service>;

/// How long a request that stopped waiting gives its invocation to be
/// stored, so the id it answers with can be fetched at once (with a
/// `wait-ms` of 0 the answer may come before the invocation's task starts).
const STORED_WITHIN: Duration = Duration::from_secs(2);
/// How often the store is read meanwhile.
const STORED_POLL: Duration = Duration::from_millis(2);
/// Approval requests listed by default, and at most.
const DEFAULT_LIST: usize = 1000;
const MAX_LIST: usize = 10_000;

/// Liveness
#[utoipa::path(get, path = "/v1/health", operation_id = "health", security(()),
    responses((status = 200, description = "alive", body = Health)))]
pub(super) async fn health() -> Json<Health> {
    Json(Health { status: Alive::Ok })
}

/// Readiness: the audit log is writable
///
/// With a bearer token (optional), also `actions`: the loaded actions that
/// identity may invoke or approve (as in `/v1/actions`); never to anyone
/// else.
#[utoipa::path(get, path = "/v1/ready", operation_id = "ready", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "not ready", body = Readiness),
        (status = 401, description = "a token was sent and is unknown or revoked", body = ErrorBody)))]
pub(super) async fn ready(State(service): State<Shared>, caller: Option<axum::Extension<Caller>>) -> Response {
    let audit_ok = service.runtime.audit_opened().is_some_and(|a| a.is_healthy());
    // On a shared store, the heartbeat (every second) says whether the
    // database answers, without a query per readiness probe.
    let database_ok = service
        .runtime
        .approvals_opened()
        .is_some_and(|a| a.heartbeat_healthy());
    let ok = audit_ok && database_ok;
    let body = Readiness {
        ready: ok,
        audit: Availability::of(audit_ok),
        database: Availability::of(database_ok),
        node: crate::cluster::node_id().to_string(),
        actions: caller.map(|axum::Extension(caller)| visible_actions(&service, &caller)),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The live nodes sharing this store, and their versions
///
/// The nodes whose heartbeat is recent (this one alone on a store no other
/// machine shares).
#[utoipa::path(get, path = "/v1/cluster", operation_id = "cluster", security(("bearer" = [])),
    responses((status = 200, description = "the nodes", body = Cluster)))]
pub(super) async fn cluster(
    State(service): State<Shared>,
    Authenticated(_): Authenticated,
) -> Result<Json<Cluster>, ApiError> {
    let store = service.runtime.store()?;
    let shared = store.shared();
    let nodes = if shared {
        tokio::task::spawn_blocking(move || crate::cluster::live_nodes(store.as_ref()))
            .await
            .map_err(|e| ApiError::from(crate::error::Error::internal(e)))??
    } else {
        vec![crate::cluster::node_record()]
    };
    Ok(Json(Cluster {
        this_node: crate::cluster::node_id().to_string(),
        shared_store: shared,
        nodes,
    }))
}

/// The names of the loaded actions `caller` may invoke or approve.
fn visible_actions(service: &Service, caller: &Caller) -> Vec<String> {
    service
        .runtime
        .action_names()
        .into_iter()
        .filter(|name| {
            service
                .runtime
                .action(name)
                .is_some_and(|a| a.decisions.may_list(caller))
                || service.runtime.may_review_action(caller, name)
        })
        .collect()
}

/// Actions the identity may invoke or approve
///
/// With their functions' JSON Schemas and capability manifests.
#[utoipa::path(get, path = "/v1/actions", operation_id = "listActions", security(("bearer" = [])),
    responses((status = 200, description = "actions", body = ActionList)))]
pub(super) async fn actions(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
) -> Result<Json<ActionList>, ApiError> {
    let mut out = Vec::new();
    for name in service.runtime.action_names() {
        let Some(action) = service.runtime.action(&name) else {
            continue;
        };
        let p = &action.policy;
        let may_invoke = action.decisions.may_list(&caller);
        let may_approve = service.runtime.may_review_action(&caller, &name);
        if !may_invoke && !may_approve {
            continue;
        }
        out.push(ActionView {
            name,
            description: p.description.clone(),
            service_identity: p.service_identity.clone(),
            may_invoke,
            may_approve,
            approval: ApprovalSettings {
                invocation: p.approval.invocation,
                quorum: p.approval.quorum,
                host_calls: p.approval.host_calls.iter().map(|r| r.describe()).collect(),
            },
            capabilities: p
                .grants
                .describe()
                .into_iter()
                .map(|(k, w)| format!("{k}: {w}"))
                .collect(),
            manifest: action.manifest.to_json(),
            upgrade: action.upgrade.as_ref().map(|u| u.diff.to_json(Some(&u.grants))),
        });
    }
    Ok(Json(ActionList { actions: out }))
}

/// What an invocation held for its invocation-level `approval` shows.
fn awaiting_view(invocation: &str, approval: &ApprovalRecord) -> InvocationView {
    InvocationView::new(invocation, InvocationStatus::AwaitingApproval).waiting_for(approval)
}

/// 202 for an invocation the request stopped waiting for: how it stands
/// (which may be final by now), with the request it waits for, if any.
fn unfinished_response(service: &Service, record: &InvocationRecord) -> Result<Response, ApiError> {
    let mut view = InvocationView::stored(record);
    if !record.state.is_final()
        && let Some(a) = awaited_approval(service.runtime.store()?.as_ref(), record)?
    {
        view = view.waiting_for(&a);
    }
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

fn submitted_response(service: &Service, submitted: Submitted) -> Result<Response, ApiError> {
    match submitted {
        Submitted::Ran(report) => Ok((StatusCode::OK, Json(InvocationView::ran(&report))).into_response()),
        Submitted::Done(record) if record.state.is_final() => {
            Ok((StatusCode::OK, Json(InvocationView::stored(&record))).into_response())
        }
        // Approved and claimed by another runtime, which has not finished.
        Submitted::Done(record) => unfinished_response(service, &record),
        Submitted::Pending { invocation, approval } => {
            Ok((StatusCode::ACCEPTED, Json(awaiting_view(&invocation, &approval))).into_response())
        }
    }
}

/// The answer for an invocation task that ended.
fn joined_response(
    service: &Service,
    joined: Result<Result<Submitted, crate::error::Error>, impl std::fmt::Display>,
) -> Result<Response, ApiError> {
    match joined {
        Ok(Ok(submitted)) => submitted_response(service, submitted),
        Ok(Err(e)) => Err(e.into()),
        Err(join) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the invocation task failed: {join}"),
        )),
    }
}

/// Invoke an action
///
/// Waits up to `wait-ms` (default 30000, at most 300000) for the result, a
/// reviewer's decision on an invocation-level gate included; `0` submits
/// and returns at once. Asked with a token, the document lists one body
/// per function the identity may invoke, with its argument schema.
#[utoipa::path(post, path = "/v1/invocations", operation_id = "invoke", security(("bearer" = [])),
    request_body = InvokeRequest,
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context the invocation continues"),
        ("tracestate" = Option<String>, Header, description = "W3C trace state that goes with traceparent")),
    responses(
        (status = 200, description = "finished (status succeeded or failed)", body = InvocationView),
        (status = 202, description = "not finished within wait-ms: still running, or awaiting approval (approval, approval-kind, binding, expires-at name the request it waits for)", body = InvocationView),
        (status = 404, description = "unknown action or function", body = ErrorBody),
        (status = 408, description = "the body did not arrive within service.body-timeout-ms", body = ErrorBody),
        (status = 413, description = "body too large (service.max-body-bytes)", body = ErrorBody),
        (status = 422, description = "arguments do not fit the function", body = ErrorBody)))]
pub(super) async fn invoke(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    request: Result<Json<InvokeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    // The W3C trace the agent's request belongs to continues here.
    let (traceparent, tracestate) = super::trace_headers(&headers);
    let (intent, _ignored) = crate::request::Intent::new(request.reason.as_deref(), traceparent)?;
    let intent = intent.with_tracestate(tracestate.as_deref());
    let wait = request
        .wait_ms
        .map_or(super::DEFAULT_WAIT, Duration::from_millis)
        .min(super::MAX_WAIT);
    // Everything counts towards the wait: admission, running, and the
    // decision of an invocation-level gate.
    let deadline = Instant::now() + wait;
    // Refusals (permission, unknown function, bad arguments) are answered
    // here, before anything is stored or started.
    let admitted = service
        .runtime
        .admit(&caller, &request.action, &request.function, &request.args, &intent)
        .await?;
    let invocation = crate::request::new_invocation_id();
    // Run here while this request waits for it; a task of its own from
    // when it stops waiting (its wait ran out, or its client went away and
    // the handler was dropped), so the invocation goes on, stored, its
    // status at /v1/invocations/{id}.
    let mut running = {
        let service = service.clone();
        let invocation = invocation.clone();
        super::detached::Detachable::new(async move {
            let runtime = &service.runtime;
            let submitted = runtime
                .run_stored(&invocation, &caller, &admitted, &request.function, &request.args)
                .await;
            match submitted {
                // Held for approval: follow the request until the deadline.
                // A decision in time settles it, and an approval runs it
                // (here, unless another process claims it first).
                Ok(Submitted::Pending { invocation, .. }) => runtime.await_invocation(&invocation, deadline).await,
                other => other,
            }
        })
    };
    // `wait-ms: 0` submits: the answer is 202 and the id, even when the
    // invocation is quick enough to have finished already.
    if !wait.is_zero()
        && let Ok(joined) = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), &mut running).await
    {
        return joined_response(&service, joined);
    }
    let Some(task) = running.detach() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the invocation ended without its result (a bug)",
        ));
    };
    // Still running or waiting for a decision: answer with how it stands,
    // once it is stored.
    let store = service.runtime.store()?;
    let stored_by = Instant::now() + STORED_WITHIN;
    loop {
        if let Some(record) = store.invocation(&invocation)? {
            return unfinished_response(&service, &record);
        }
        if task.is_finished() {
            // It may have been stored (and finished) since the look above.
            if let Some(record) = store.invocation(&invocation)? {
                return unfinished_response(&service, &record);
            }
            // It ended without being stored: it failed before it could be.
            return joined_response(&service, task.await.map_err(|e| e.to_string()));
        }
        if Instant::now() >= stored_by {
            return Ok((
                StatusCode::ACCEPTED,
                Json(InvocationView::new(&invocation, InvocationStatus::Running)),
            )
                .into_response());
        }
        tokio::time::sleep(STORED_POLL).await;
    }
}

/// An invocation's status and result
///
/// For its caller, or an approver of its action.
#[utoipa::path(get, path = "/v1/invocations/{id}", operation_id = "getInvocation", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invocation's id")),
    responses(
        (status = 200, description = "the invocation", body = InvocationView),
        (status = 404, description = "no such invocation", body = ErrorBody)))]
pub(super) async fn invocation(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<InvocationView>, ApiError> {
    let Path(id) = id?;
    let record = service
        .runtime
        .store()?
        .invocation(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no invocation {id}")))?;
    if !service.runtime.may_see_invocation(&caller, &record) {
        // Not found rather than forbidden: ids of others are not confirmed.
        return Err(ApiError::not_found(format!("no invocation {id}")));
    }
    Ok(Json(InvocationView::stored(&record)))
}

/// Invocations listed per page by default, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Where a page ends: the last invocation's creation time and id, in the
/// store's order (newest first, then by id).
fn page_cursor(record: &InvocationRecord) -> String {
    format!("{}.{}", record.created_at, record.id)
}

/// Invocations the identity may see, a page at a time
///
/// Its own, and those of actions it may approve, newest first, filtered;
/// `next` is the cursor of the following page (`after=`), or null. One
/// request reads at most 10000 rows: a page can be shorter than `limit`
/// (even empty) while `next` says where to go on.
#[utoipa::path(get, path = "/v1/invocations", operation_id = "listInvocations", security(("bearer" = [])),
    params(InvocationsQuery),
    responses((status = 200, description = "a page", body = InvocationPage)))]
pub(super) async fn list_invocations(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    query: Result<Query<InvocationsQuery>, QueryRejection>,
) -> Result<Json<InvocationPage>, ApiError> {
    let Query(query) = query?;
    let state = match query.state.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(InvocationStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state {s:?}: use awaiting-approval, approved, running, succeeded, failed, denied, expired or all"
            ))
        })?),
    };
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(crate::time::parse_utc)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let (since, until) = (time(&query.since)?, time(&query.until)?);
    let after = match query.after.as_deref() {
        None => None,
        Some(cursor) => {
            let parsed = cursor
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<u64>().ok()?, id.to_string())));
            Some(parsed.ok_or_else(|| {
                ApiError::bad_request(format!(
                    "after {cursor:?} is not a cursor: pass the `next` of the page before"
                ))
            })?)
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let mut selector = crate::store::InvocationQuery {
        state,
        action: query.action,
        caller: query.caller,
        since,
        until,
        after,
    };
    let store = service.runtime.store()?;
    let service2 = service.clone();
    // The filters are the store's (read by its indexes); what the caller
    // may see is checked here, in batches from the cursor on, and at most
    // SCAN_CAP rows per request: a page cut short there still says where
    // to go on (`next`), so every request costs a bounded read.
    let (page, next) = tokio::task::spawn_blocking(move || {
        let batch = (limit * 4).max(64);
        let mut page = Vec::new();
        let mut scanned = 0;
        loop {
            let want = batch.min(SCAN_CAP - scanned);
            let rows = store.invocation_page(&selector, want)?;
            let exhausted = rows.len() < want;
            for r in rows {
                scanned += 1;
                selector.after = Some((r.created_at, r.id.clone()));
                if service2.runtime.may_see_invocation(&caller, &r) {
                    if page.len() == limit {
                        // One more than a page: another follows.
                        let next = page.last().map(page_cursor);
                        return Ok((page, next));
                    }
                    page.push(r);
                }
            }
            if exhausted {
                return Ok((page, None));
            }
            if scanned >= SCAN_CAP {
                let next = selector.after.as_ref().map(|(at, id)| format!("{at}.{id}"));
                return Ok((page, next));
            }
        }
    })
    .await
    .map_err(|e| ApiError::from(crate::error::Error::internal(e)))?
    .map_err(|e: StoreError| ApiError::from(crate::error::Error::from(e)))?;
    Ok(Json(InvocationPage {
        invocations: page.iter().map(InvocationView::stored).collect(),
        next,
    }))
}

/// Rows one `GET /v1/invocations` reads at most.
const SCAN_CAP: usize = 10_000;

/// Approval requests visible to the identity
///
/// Pending unless `state` says otherwise, the newest `limit`: requests of
/// actions it may approve, and its own.
#[utoipa::path(get, path = "/v1/approvals", operation_id = "listApprovals", security(("bearer" = [])),
    params(ApprovalsQuery),
    responses((status = 200, description = "requests", body = ApprovalList)))]
pub(super) async fn approvals(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    query: Result<Query<ApprovalsQuery>, QueryRejection>,
) -> Result<Json<ApprovalList>, ApiError> {
    let Query(query) = query?;
    let state = match query.state.as_deref() {
        None => Some(ApprovalState::Pending),
        Some("all") => None,
        Some(s) => Some(ApprovalState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state {s:?}: use pending, approved, denied, expired, failed or all"
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    let store = service.runtime.store()?;
    let list: Vec<ApprovalRecord> = first_visible(
        limit,
        |n| store.approvals(state, n),
        |a| may_see_approval(&service, &caller, a),
    )?;
    Ok(Json(ApprovalList { approvals: list }))
}

fn visible_approval(service: &Service, caller: &Caller, id: &str) -> Result<ApprovalRecord, ApiError> {
    let approval = service
        .runtime
        .store()?
        .approval(id)?
        .filter(|a| may_see_approval(service, caller, a))
        .ok_or_else(|| ApiError::not_found(format!("no approval request {id}")))?;
    Ok(approval)
}

/// One request: exactly what would run
#[utoipa::path(get, path = "/v1/approvals/{id}", operation_id = "getApproval", security(("bearer" = [])),
    params(("id" = String, Path, description = "the request's id")),
    responses(
        (status = 200, description = "the request", body = ApprovalRecord),
        (status = 404, description = "no such request", body = ErrorBody)))]
pub(super) async fn approval(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let Path(id) = id?;
    Ok(Json(visible_approval(&service, &caller, &id)?))
}

/// A decision, once the caller is known (the gate authenticates before the
/// body is read): what is wrong with the request (its path or body) is
/// answered only to an authenticated caller.
async fn decide(
    service: Shared,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    verdict: Verdict,
    decision: Result<DecisionBody, ApiError>,
) -> Result<Json<Decided>, ApiError> {
    let Path(id) = id?;
    let decision = decision?;
    visible_approval(&service, &caller, &id)?;
    if verdict == Verdict::Deny && decision.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::bad_request("a deny needs a reason"));
    }
    let approval = service
        .decide(
            &id,
            &caller,
            verdict,
            decision.reason.as_deref(),
            decision.binding.as_deref(),
        )
        .await?;
    Ok(Json(Decided { approval }))
}

/// Approve, optionally pinned to the binding reviewed
///
/// The body is optional: none (no `Content-Type`) approves without a reason.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", operation_id = "approve", security(("bearer" = [])),
    params(("id" = String, Path, description = "the request's id")),
    request_body(content = Option<DecisionBody>, description = "optional"),
    responses(
        (status = 200, description = "the request after the decision", body = Decided),
        (status = 404, description = "no such request", body = ErrorBody),
        (status = 409, description = "not pending, expired, self-approval, already decided, or binding mismatch", body = ErrorBody)))]
pub(super) async fn approve(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    decision: Result<Option<Json<DecisionBody>>, JsonRejection>,
) -> Result<Json<Decided>, ApiError> {
    let decision = decision
        .map(|d| d.map(|Json(d)| d).unwrap_or_default())
        .map_err(ApiError::from);
    decide(service, caller, id, Verdict::Approve, decision).await
}

/// Deny; any deny ends the request
///
/// A deny needs a reason.
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", operation_id = "deny", security(("bearer" = [])),
    params(("id" = String, Path, description = "the request's id")),
    request_body = super::model::DenyBodyDoc,
    responses(
        (status = 200, description = "the request after the decision", body = Decided),
        (status = 404, description = "no such request", body = ErrorBody),
        (status = 409, description = "not pending or not allowed", body = ErrorBody)))]
pub(super) async fn deny(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    decision: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Decided>, ApiError> {
    let decision = decision.map(|Json(d)| d).map_err(ApiError::from);
    decide(service, caller, id, Verdict::Deny, decision).await
}

/// Audit records, verified as read
///
/// Filtered, the newest `limit` (default 1000); for
/// `service.audit-readers`.
#[utoipa::path(get, path = "/v1/audit", operation_id = "queryAudit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, description = "records", body = AuditRecords)))]
pub(super) async fn audit(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditRecords>, ApiError> {
    if !service.may_read_audit(&caller) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reading the audit trail needs a role in service.audit-readers",
        ));
    }
    let Query(query) = query?;
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(crate::time::parse_utc)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let filter = crate::audit::query::Filter {
        invocation: query.invocation,
        action: query.action,
        caller: query.caller,
        since: time(&query.since)?,
        until: time(&query.until)?,
    };
    let limit = query.limit.unwrap_or(1000).min(10_000);
    if let Some(pg) = service.policy.runtime.audit_database() {
        return audit_pg(pg.clone(), filter, limit).await;
    }
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let records = tokio::task::spawn_blocking(move || {
        // The newest `limit` matches, through the index when filtered.
        let mut out = Vec::new();
        let scanned = crate::audit::index::select(&dir, &filter, Some(limit), |_, line| {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                out.push(AuditRecord(v));
            }
            true
        });
        scanned.map(|_| out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit-tampered", e.to_string()))?;
    Ok(Json(AuditRecords { records }))
}

/// `GET /v1/audit` with PostgreSQL: the newest `limit` matches across
/// every node, each with its `node` (see [`crate::audit::pg::query`]).
async fn audit_pg(
    pg: crate::store::settings::PgSettings,
    filter: crate::audit::query::Filter,
    limit: usize,
) -> Result<Json<AuditRecords>, ApiError> {
    use crate::audit::pg::verify::PgVerifyError;
    let records = tokio::task::spawn_blocking(move || {
        let db = crate::audit::pg::reader(&pg).map_err(PgVerifyError::Db)?;
        let mut out = Vec::new();
        crate::audit::pg::query::select(&db, &filter, Some(limit), |hit| {
            if let Ok(v) = serde_json::from_str::<Value>(&hit.line_with_node()) {
                out.push(AuditRecord(v));
            }
            true
        })
        .map(|_| out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| match e {
        PgVerifyError::Db(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable", reason),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit-tampered", other.to_string()),
    })?;
    Ok(Json(AuditRecords { records }))
}

/// `GET /v1/audit/verify` with PostgreSQL: this data directory's log, then
/// every node's chain and checkpoints.
async fn audit_verify_pg(service: Shared, pg: crate::store::settings::PgSettings) -> Result<Response, ApiError> {
    use crate::audit::pg::verify::{LocalNode, PgVerifyError};
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let node = service.policy.runtime.audit.node_id.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let head = if dir.join(crate::audit::log::LOG_FILE).exists() {
            crate::audit::read::verify(&dir, None)
                .map_err(|e| PgVerifyError::Node {
                    node: "(this data directory's log)".into(),
                    reason: e.to_string(),
                })?
                .head
        } else {
            None
        };
        let local = LocalNode::of_data_dir(&dir, node.as_deref(), head).map_err(PgVerifyError::Db)?;
        let db = crate::audit::pg::reader(&pg).map_err(PgVerifyError::Db)?;
        crate::audit::pg::verify::verify(&db, Some(&local), None)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(match verified {
        Ok(nodes) => Json(Verification {
            intact: true,
            records: Some(nodes.iter().map(|n| n.records).sum::<u64>()),
            nodes: Some(
                nodes
                    .iter()
                    .map(|n| NodeVerification {
                        node: n.node.clone(),
                        records: n.records,
                        head: Head::of(n.head),
                        checkpoints: n.checkpoints,
                        signed_through: n.signed_through,
                        unsigned_records: n.unsigned(),
                    })
                    .collect(),
            ),
            ..Verification::default()
        })
        .into_response(),
        Err(PgVerifyError::Db(reason)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                reason,
            ));
        }
        Err(e) => (StatusCode::OK, Json(Verification::broken(e.to_string()))).into_response(),
    })
}

/// Verify the whole hash chain and its checkpoints
///
/// For `service.audit-readers`. A chain that does not verify is answered
/// 200 with `intact: false` and why.
#[utoipa::path(get, path = "/v1/audit/verify", operation_id = "verifyAudit", security(("bearer" = [])),
    responses((status = 200, description = "how the verification went", body = Verification)))]
pub(super) async fn audit_verify(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
) -> Result<Response, ApiError> {
    if !service.may_read_audit(&caller) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "verifying the audit trail needs a role in service.audit-readers",
        ));
    }
    if let Some(pg) = service.policy.runtime.audit_database() {
        let pg = pg.clone();
        return audit_verify_pg(service, pg).await;
    }
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let verified = tokio::task::spawn_blocking(move || {
        crate::audit::read::verify(&dir, None).map(|v| (v, crate::audit::index::compare_with_log(&dir)))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(match verified {
        Ok((v, index)) => Json(Verification {
            intact: true,
            records: Some(v.records),
            head: Some(Head::of(v.head)),
            checkpoints: Some(v.checkpoints),
            signed_through: Some(v.signed_through),
            unsigned_records: Some(v.unsigned()),
            index: Some(match index {
                Ok(check) => json!(check),
                Err(e) => json!({"error": e.to_string()}),
            }),
            ..Verification::default()
        })
        .into_response(),
        Err(e) => (StatusCode::OK, Json(Verification::broken(e.to_string()))).into_response(),
    })
}
