//! The HTTP API: routes, authentication, and the handlers.
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
use super::error::ApiError;
use crate::gateway::Submitted;
use crate::identity::Caller;
use crate::store::{ApprovalRecord, ApprovalState, InvocationRecord, InvocationStatus, Store, StoreError, Verdict};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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

pub fn router(service: Shared) -> Router {
    let limit = service.settings.max_body_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/actions", get(actions))
        .route("/v1/invocations", post(invoke).get(list_invocations))
        .route("/v1/invocations/{id}", get(invocation))
        .route("/v1/approvals", get(approvals))
        .route("/v1/approvals/{id}", get(approval))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(super::observe::scrape))
        .route(
            "/.well-known/oauth-protected-resource",
            get(super::mcp::resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(super::mcp::resource_metadata),
        )
        .merge(super::console::router())
        .merge(
            Router::new()
                .nest_service("/mcp", super::mcp::http_service(service.clone()))
                .layer(axum::middleware::from_fn_with_state(service.clone(), super::mcp::guard)),
        )
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method; see /v1/openapi.json",
            )
        })
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(DefaultBodyLimit::max(limit))
        // Outermost: every request is authenticated on its head before its
        // body is read (see `gate`).
        .layer(axum::middleware::from_fn_with_state(service.clone(), super::gate::gate))
        // Around the gate: its refusals are logged and counted too.
        .layer(axum::middleware::from_fn(super::observe::access))
        .with_state(service)
}

/// The token of an `Authorization` header value `Bearer TOKEN`. The scheme
/// is matched case-insensitively, as RFC 7235 (section 2.1) says, so
/// `bearer TOKEN` is the same credential.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The caller behind the `Authorization: Bearer` header, rate limited.
pub(super) async fn authenticate(service: &Service, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let mut headers = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let header = headers.next().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer TOKEN",
        )
    })?;
    if headers.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous-credentials",
            "the request carries more than one Authorization header: send exactly one",
        ));
    }
    let bearer = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the Authorization header must be `Bearer TOKEN`",
        )
    })?;
    let caller = service.authenticate(bearer).await?;
    if let Err(wait) = service.limiter.take(&caller.name) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!("too many requests from {}; retry in {:.2} s", caller.name, wait),
        ));
    }
    Ok(caller)
}

/// The authenticated caller of a request: the one the gate authenticated
/// (see `gate`), or, for a request that reached a handler some other way,
/// authenticated here, so no handler can run for nobody.
pub struct Authenticated(pub Caller);

impl axum::extract::FromRequestParts<Shared> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, service: &Shared) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(Authenticated(caller.clone())),
            None => authenticate(service, &parts.headers).await.map(Authenticated),
        }
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: whether the audit log is writable. The loaded actions are
/// named only to an authenticated caller, and only those it may invoke or
/// approve (as in `/v1/actions`).
async fn ready(State(service): State<Shared>, caller: Option<axum::Extension<Caller>>) -> Response {
    let audit_ok = service.runtime.audit_opened().is_some_and(|a| a.is_healthy());
    // On a shared store, the heartbeat (every second) says whether the
    // database answers, without a query per readiness probe.
    let database_ok = service
        .runtime
        .approvals_opened()
        .is_some_and(|a| a.heartbeat_healthy());
    let ok = audit_ok && database_ok;
    let mut body = json!({
        "ready": ok,
        "audit": if audit_ok {"ok"} else {"unavailable"},
        "database": if database_ok {"ok"} else {"unavailable"},
        "node": crate::cluster::node_id(),
    });
    if let Some(axum::Extension(caller)) = caller {
        body["actions"] = json!(visible_actions(&service, &caller));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /v1/cluster`: the nodes whose heartbeat is recent (this one
/// alone on a store no other machine shares), with their versions.
async fn cluster(State(service): State<Shared>, Authenticated(_): Authenticated) -> Result<Json<Value>, ApiError> {
    let store = service.runtime.store()?;
    let shared = store.shared();
    let nodes = if shared {
        tokio::task::spawn_blocking(move || crate::cluster::live_nodes(store.as_ref()))
            .await
            .map_err(|e| ApiError::from(crate::error::Error::internal(e)))??
    } else {
        vec![crate::cluster::node_record()]
    };
    Ok(Json(json!({
        "this-node": crate::cluster::node_id(),
        "shared-store": shared,
        "nodes": nodes,
    })))
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

/// The OpenAPI document; asked with a token, with the schemas of the
/// functions that identity may invoke (never another's).
async fn openapi(State(service): State<Shared>, caller: Option<axum::Extension<Caller>>) -> Json<Value> {
    let actions: Vec<(String, Arc<crate::action::PreparedAction>)> = match caller {
        None => Vec::new(),
        Some(axum::Extension(caller)) => service
            .runtime
            .action_names()
            .into_iter()
            .filter_map(|name| {
                let action = service.runtime.action(&name)?.clone();
                action.decisions.may_list(&caller).then_some((name, action))
            })
            .collect(),
    };
    Json(super::openapi::document(&actions))
}

async fn actions(State(service): State<Shared>, Authenticated(caller): Authenticated) -> Result<Json<Value>, ApiError> {
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
        out.push(json!({
            "name": name,
            "description": p.description,
            "service-identity": p.service_identity,
            "may-invoke": may_invoke,
            "may-approve": may_approve,
            "approval": {
                "invocation": p.approval.invocation,
                "quorum": p.approval.quorum,
                "host-calls": p.approval.host_calls.iter().map(|r| r.describe()).collect::<Vec<_>>(),
            },
            "capabilities": p.grants.describe().into_iter().map(|(k, w)| format!("{k}: {w}")).collect::<Vec<_>>(),
            "manifest": action.manifest.to_json(),
            "upgrade": action.upgrade.as_ref().map(|u| u.diff.to_json(Some(&u.grants))),
        }));
    }
    Ok(Json(json!({ "actions": out })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct InvokeRequest {
    action: String,
    function: String,
    #[serde(default = "empty_object")]
    args: Value,
    /// Wait this long for the result; `0` submits and returns at once.
    wait_ms: Option<u64>,
    /// Why the agent asks, in its own words: recorded, shown to reviewers,
    /// readable by policies (`context.reason`).
    reason: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// The JSON view of an invocation that ran.
fn ran_view(report: &crate::invocation::Report) -> Value {
    let outcome = crate::gateway::outcome_of(report);
    json!({
        "invocation": report.invocation,
        "status": if report.outcome.is_ok() { "succeeded" } else { "failed" },
        "result": outcome.result,
        "error": outcome.error,
        "exit-code": outcome.exit_code,
    })
}

fn record_view(record: &InvocationRecord) -> Value {
    json!({
        "invocation": record.id,
        "status": record.state,
        "action": record.action,
        "function": record.function,
        "caller": record.caller.name,
        "approval": record.approval,
        "result": record.outcome.as_ref().and_then(|o| o.result.clone()),
        "error": record.outcome.as_ref().and_then(|o| o.error.clone()),
        "exit-code": record.outcome.as_ref().map(|o| o.exit_code),
        "created-at": crate::time::rfc3339_micros(record.created_at),
        "stated-reason": record.intent.as_ref().and_then(|i| i.reason.clone()),
        "traceparent": record.intent.as_ref().and_then(|i| i.traceparent.clone()),
    })
}

/// What an invocation held for its invocation-level `approval` shows.
fn awaiting_view(invocation: &str, approval: &ApprovalRecord) -> Value {
    json!({
        "invocation": invocation,
        "status": "awaiting-approval",
        "approval": approval.id,
        "approval-kind": approval.kind,
        "binding": approval.binding,
        "expires-at": crate::time::rfc3339_micros(approval.expires_at),
    })
}

/// The approval request an unfinished invocation waits for now, if any:
/// its invocation-level request while that is pending, or a pending request
/// its running instance made (a held host call, or the guest's own).
pub(super) fn awaited_approval(
    store: &dyn Store,
    record: &InvocationRecord,
) -> Result<Option<ApprovalRecord>, StoreError> {
    if let Some(id) = &record.approval
        && let Some(a) = store.approval(id)?.filter(|a| a.state == ApprovalState::Pending)
    {
        return Ok(Some(a));
    }
    if record.state != InvocationStatus::Running {
        return Ok(None);
    }
    // The store cannot look requests up by invocation. Pending ones are few
    // (each is an instance or a request waiting for a reviewer), so a scan
    // of them is cheap.
    Ok(store
        .approvals(Some(ApprovalState::Pending), usize::MAX)?
        .into_iter()
        .find(|a| a.invocation == record.id))
}

/// 202 for an invocation the request stopped waiting for: how it stands
/// (which may be final by now), with the request it waits for, if any.
fn unfinished_response(service: &Service, record: &InvocationRecord) -> Result<Response, ApiError> {
    let mut view = record_view(record);
    if !record.state.is_final()
        && let Some(a) = awaited_approval(service.runtime.store()?.as_ref(), record)?
    {
        view["approval"] = json!(a.id);
        view["approval-kind"] = json!(a.kind);
        view["binding"] = json!(a.binding);
        view["expires-at"] = json!(crate::time::rfc3339_micros(a.expires_at));
    }
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

fn submitted_response(service: &Service, submitted: Submitted) -> Result<Response, ApiError> {
    match submitted {
        Submitted::Ran(report) => Ok((StatusCode::OK, Json(ran_view(&report))).into_response()),
        Submitted::Done(record) if record.state.is_final() => {
            Ok((StatusCode::OK, Json(record_view(&record))).into_response())
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
    joined: Result<Result<Submitted, crate::error::Error>, tokio::task::JoinError>,
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

async fn invoke(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    request: Result<Json<InvokeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = request?;
    // The W3C trace the agent's request belongs to continues here.
    let (traceparent, tracestate) = super::trace_headers(&headers);
    let (intent, _ignored) = crate::invocation::Intent::new(request.reason.as_deref(), traceparent)?;
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
    let invocation = crate::invocation::new_invocation_id();
    // A task of its own, so the invocation goes on (stored, its status at
    // /v1/invocations/{id}) when this request stops waiting, or its client
    // goes away.
    let mut task = {
        let service = service.clone();
        let invocation = invocation.clone();
        tokio::spawn(async move {
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
        && let Ok(joined) = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), &mut task).await
    {
        return joined_response(&service, joined);
    }
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
            return joined_response(&service, task.await);
        }
        if Instant::now() >= stored_by {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({"invocation": invocation, "status": "running"})),
            )
                .into_response());
        }
        tokio::time::sleep(STORED_POLL).await;
    }
}

async fn invocation(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(record_view(&record)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InvocationsQuery {
    /// One status, or `all` (the default).
    state: Option<String>,
    action: Option<String>,
    /// The identity that made them.
    caller: Option<String>,
    /// Created at or after / before (RFC 3339, UTC).
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    /// The `next` of the page before.
    after: Option<String>,
}

/// Invocations listed per page by default, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Where a page ends: the last invocation's creation time and id, in the
/// store's order (newest first, then by id).
fn page_cursor(record: &InvocationRecord) -> String {
    format!("{}.{}", record.created_at, record.id)
}

/// `GET /v1/invocations`: the invocations the caller may see (its own, and
/// those of actions it may approve), newest first, filtered, a page at a
/// time: `next` is the cursor of the following page (`after=`), or null.
async fn list_invocations(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    query: Result<Query<InvocationsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "invocations": page.iter().map(record_view).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// Rows one `GET /v1/invocations` reads at most.
const SCAN_CAP: usize = 10_000;

fn visible(service: &Service, caller: &Caller, approval: &ApprovalRecord) -> bool {
    approval.caller == caller.name || service.runtime.may_review(caller, approval)
}

/// The first `want` records `fetch` reads (newest first) that `keep`
/// accepts. The store filters by state only, so one read of a fixed size,
/// filtered afterwards, could be filled with records of other callers and
/// hide the caller's own: read ever longer prefixes until `want` are kept
/// or the store has no more.
pub(super) fn first_visible<T>(
    want: usize,
    fetch: impl Fn(usize) -> Result<Vec<T>, StoreError>,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut limit = want.max(64);
    loop {
        let batch = fetch(limit)?;
        let exhausted = batch.len() < limit;
        let kept: Vec<T> = batch.into_iter().filter(&keep).take(want).collect();
        if kept.len() >= want || exhausted {
            return Ok(kept);
        }
        limit = limit.saturating_mul(4);
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn approvals(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    query: Result<Query<ApprovalsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let list: Vec<ApprovalRecord> =
        first_visible(limit, |n| store.approvals(state, n), |a| visible(&service, &caller, a))?;
    Ok(Json(json!({ "approvals": list })))
}

fn visible_approval(service: &Service, caller: &Caller, id: &str) -> Result<ApprovalRecord, ApiError> {
    let approval = service
        .runtime
        .store()?
        .approval(id)?
        .filter(|a| visible(service, caller, a))
        .ok_or_else(|| ApiError::not_found(format!("no approval request {id}")))?;
    Ok(approval)
}

async fn approval(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let Path(id) = id?;
    Ok(Json(visible_approval(&service, &caller, &id)?))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
    /// Refuse unless the request is bound to this digest.
    binding: Option<String>,
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
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "approval": approval })))
}

/// The body is optional: none (no `Content-Type`) approves without a reason.
async fn approve(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    decision: Result<Option<Json<DecisionBody>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let decision = decision
        .map(|d| d.map(|Json(d)| d).unwrap_or_default())
        .map_err(ApiError::from);
    decide(service, caller, id, Verdict::Approve, decision).await
}

async fn deny(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    id: Result<Path<String>, PathRejection>,
    decision: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let decision = decision.map(|Json(d)| d).map_err(ApiError::from);
    decide(service, caller, id, Verdict::Deny, decision).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    invocation: Option<String>,
    action: Option<String>,
    caller: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(service): State<Shared>,
    Authenticated(caller): Authenticated,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    if let Some(pg) = crate::audit::pg::settings_of(&service.policy.runtime) {
        return audit_pg(pg.clone(), filter, limit).await;
    }
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let records = tokio::task::spawn_blocking(move || {
        // The newest `limit` matches, through the index when filtered.
        let mut out = Vec::new();
        let scanned = crate::audit::index::select(&dir, &filter, Some(limit), |_, line| {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                out.push(v);
            }
            true
        });
        scanned.map(|_| out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit-tampered", e.to_string()))?;
    Ok(Json(json!({ "records": records })))
}

/// `GET /v1/audit` with PostgreSQL: the newest `limit` matches across
/// every node, each with its `node` (see [`crate::audit::pg::query`]).
async fn audit_pg(
    pg: crate::store::settings::PgSettings,
    filter: crate::audit::query::Filter,
    limit: usize,
) -> Result<Json<Value>, ApiError> {
    use crate::audit::pg::verify::PgVerifyError;
    let records = tokio::task::spawn_blocking(move || {
        let db = crate::audit::pg::reader(&pg).map_err(PgVerifyError::Db)?;
        let mut out = Vec::new();
        crate::audit::pg::query::select(&db, &filter, Some(limit), |hit| {
            if let Ok(v) = serde_json::from_str::<Value>(&hit.line_with_node()) {
                out.push(v);
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
    Ok(Json(json!({ "records": records })))
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
        Ok(nodes) => Json(json!({
            "intact": true,
            "records": nodes.iter().map(|n| n.records).sum::<u64>(),
            "nodes": nodes.iter().map(|n| json!({
                "node": n.node,
                "records": n.records,
                "head": n.head.map(|(seq, hash)| json!({"seq": seq, "hash": crate::audit::chain::hex(&hash)})),
                "checkpoints": n.checkpoints,
                "signed-through": n.signed_through,
                "unsigned-records": n.unsigned(),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(PgVerifyError::Db(reason)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                reason,
            ));
        }
        Err(e) => (StatusCode::OK, Json(json!({"intact": false, "error": e.to_string()}))).into_response(),
    })
}

async fn audit_verify(
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
    if let Some(pg) = crate::audit::pg::settings_of(&service.policy.runtime) {
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
        Ok((v, index)) => Json(json!({
            "intact": true,
            "records": v.records,
            "head": v.head.map(|(seq, hash)| json!({"seq": seq, "hash": crate::audit::chain::hex(&hash)})),
            "checkpoints": v.checkpoints,
            "signed-through": v.signed_through,
            "unsigned-records": v.unsigned(),
            "index": match index {
                Ok(check) => json!(check),
                Err(e) => json!({"error": e.to_string()}),
            },
        }))
        .into_response(),
        Err(e) => (StatusCode::OK, Json(json!({"intact": false, "error": e.to_string()}))).into_response(),
    })
}
