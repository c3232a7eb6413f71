//! The HTTP API: routes, authentication, and the handlers.
//!
//! | method | path | who |
//! |---|---|---|
//! | GET | `/v1/health`, `/v1/ready` | anyone |
//! | GET | `/v1/openapi.json` | anyone |
//! | GET | `/v1/actions` | any identity: the actions it may invoke or approve |
//! | POST | `/v1/invocations` | identities the action's `access.invoke` names |
//! | GET | `/v1/invocations/{id}` | its caller, or an approver of its action |
//! | GET | `/v1/approvals`, `/v1/approvals/{id}` | approvers of the action, or the requester |
//! | POST | `/v1/approvals/{id}/approve`, `/deny` | approvers of the action |
//! | GET | `/v1/audit`, `/v1/audit/verify` | `service.audit-readers` |

use super::Service;
use super::error::ApiError;
use crate::gateway::Submitted;
use crate::identity::Caller;
use crate::store::{ApprovalRecord, ApprovalState, InvocationRecord, Verdict};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type Shared = Arc<Service>;

pub fn router(service: Shared) -> Router {
    let limit = service.settings.max_body_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/actions", get(actions))
        .route("/v1/invocations", post(invoke))
        .route("/v1/invocations/{id}", get(invocation))
        .route("/v1/approvals", get(approvals))
        .route("/v1/approvals/{id}", get(approval))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/verify", get(audit_verify))
        .merge(super::console::router())
        .merge(
            Router::new()
                .nest_service("/mcp", super::mcp::http_service(service.clone()))
                .layer(axum::middleware::from_fn_with_state(service.clone(), require_token)),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(service.clone(), read_body))
        .with_state(service)
}

/// Every request body is read in full, within `body-timeout-ms` and
/// `max-body-bytes`, before any handler (or the MCP transport, which reads
/// bodies itself) sees it: a client trickling a body is answered 408 and
/// cannot hold a handler, an oversized one 413.
async fn read_body(
    State(service): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = service.settings.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("request bodies are limited to {limit} bytes (service.max-body-bytes)"),
        )
        .into_response()
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let timeout = service.settings.body_timeout;
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return too_large();
            }
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-body",
                format!("reading the request body failed: {e}"),
            )
            .into_response();
        }
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                format!(
                    "the request body did not arrive within {} ms (service.body-timeout-ms)",
                    timeout.as_millis()
                ),
            )
            .into_response();
            // The rest of the body may still be on its way: do not read it
            // as the next request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The caller behind the `Authorization: Bearer` header, rate limited.
fn authenticate(service: &Service, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer TOKEN",
        )
    })?;
    let bearer = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the Authorization header must be `Bearer TOKEN`",
            )
        })?;
    let caller = service.authenticate(bearer)?;
    if let Err(wait) = service.limiter.take(&caller.name) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!("too many requests from {}; retry in {:.2} s", caller.name, wait),
        ));
    }
    Ok(caller)
}

/// `/mcp` speaks to authenticated callers only: no session starts without
/// a valid token (each MCP request is authenticated again by the handler).
async fn require_token(
    State(service): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = authenticate(&service, request.headers()) {
        return e.into_response();
    }
    let is_delete = request.method() == axum::http::Method::DELETE;
    let mut response = next.run(request).await;
    // rmcp answers a session DELETE with 202, which clients read as a failed
    // termination (the spec's examples, and the Python SDK, expect 200/204).
    // The session is closed by then, so say so plainly.
    if is_delete && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// A JSON body, or a structured 400 saying what is wrong with it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(|e| match e {
        JsonRejection::BytesRejection(b) => ApiError::new(b.status(), "bad-body", b.body_text()),
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad-json", other.body_text()),
    })
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(service): State<Shared>) -> Response {
    let audit_ok = service.runtime.audit_opened().is_some_and(|a| a.is_healthy());
    let actions = service.runtime.action_names();
    let body = json!({"ready": audit_ok, "audit": if audit_ok {"ok"} else {"unavailable"}, "actions": actions});
    let status = if audit_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

async fn actions(State(service): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&service, &headers)?;
    let mut out = Vec::new();
    for name in service.runtime.action_names() {
        let Some(action) = service.runtime.action(&name) else {
            continue;
        };
        let p = &action.policy;
        let may_invoke = p.access.may_invoke(&caller);
        let may_approve = p.access.may_approve(&caller);
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
    })
}

fn submitted_response(submitted: Submitted) -> Response {
    match submitted {
        Submitted::Ran(report) => (StatusCode::OK, Json(ran_view(&report))).into_response(),
        Submitted::Done(record) => (StatusCode::OK, Json(record_view(&record))).into_response(),
        Submitted::Pending { invocation, approval } => (
            StatusCode::ACCEPTED,
            Json(json!({
                "invocation": invocation,
                "status": "awaiting-approval",
                "approval": approval.id,
                "binding": approval.binding,
                "expires-at": crate::time::rfc3339_micros(approval.expires_at),
            })),
        )
            .into_response(),
    }
}

async fn invoke(
    State(service): State<Shared>,
    headers: HeaderMap,
    request: Result<Json<InvokeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&service, &headers)?;
    let request = body(request)?;
    let wait = request
        .wait_ms
        .map_or(super::DEFAULT_WAIT, Duration::from_millis)
        .min(super::MAX_WAIT);
    // Refusals (permission, unknown function, bad arguments) are answered
    // here, before anything is stored or started.
    service
        .runtime
        .admit(&caller, &request.action, &request.function, &request.args)
        .await?;
    let invocation = crate::invocation::new_invocation_id();
    let task = {
        let service = service.clone();
        let invocation = invocation.clone();
        tokio::spawn(async move {
            service
                .runtime
                .run_stored(&invocation, &caller, &request.action, &request.function, &request.args)
                .await
        })
    };
    let mut task = task;
    match tokio::time::timeout(wait, &mut task).await {
        Ok(Ok(Ok(submitted))) => Ok(submitted_response(submitted)),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(join)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the invocation task failed: {join}"),
        )),
        // Still running: it is stored, so the caller can fetch it later.
        Err(_) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"invocation": invocation, "status": "running"})),
        )
            .into_response()),
    }
}

async fn invocation(
    State(service): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&service, &headers)?;
    let record = service
        .runtime
        .store()?
        .invocation(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no invocation {id}")))?;
    let approver = service
        .runtime
        .action(&record.action)
        .is_some_and(|a| a.policy.access.may_approve(&caller));
    if record.caller.name != caller.name && !approver {
        // Not found rather than forbidden: ids of others are not confirmed.
        return Err(ApiError::not_found(format!("no invocation {id}")));
    }
    Ok(Json(record_view(&record)))
}

fn visible(service: &Service, caller: &Caller, approval: &ApprovalRecord) -> bool {
    approval.caller == caller.name
        || service
            .runtime
            .action(&approval.action)
            .is_some_and(|a| a.policy.access.may_approve(caller))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsQuery {
    state: Option<String>,
}

async fn approvals(
    State(service): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<ApprovalsQuery>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&service, &headers)?;
    let state = match query.state.as_deref() {
        None => Some(ApprovalState::Pending),
        Some("all") => None,
        Some(s) => Some(ApprovalState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state {s:?}: use pending, approved, denied, expired, failed or all"
            ))
        })?),
    };
    let list: Vec<ApprovalRecord> = service
        .runtime
        .store()?
        .approvals(state, 1000)?
        .into_iter()
        .filter(|a| visible(&service, &caller, a))
        .collect();
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let caller = authenticate(&service, &headers)?;
    Ok(Json(visible_approval(&service, &caller, &id)?))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
    /// Refuse unless the request is bound to this digest.
    binding: Option<String>,
}

async fn decide(
    service: Shared,
    headers: HeaderMap,
    id: String,
    verdict: Verdict,
    decision: DecisionBody,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&service, &headers)?;
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

async fn approve(
    State(service): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    decision: Option<Json<DecisionBody>>,
) -> Result<Json<Value>, ApiError> {
    decide(
        service,
        headers,
        id,
        Verdict::Approve,
        decision.map(|Json(d)| d).unwrap_or_default(),
    )
    .await
}

async fn deny(
    State(service): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    decision: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(service, headers, id, Verdict::Deny, body(decision)?).await
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
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let caller = authenticate(&service, &headers)?;
    if !service.may_read_audit(&caller) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reading the audit trail needs a role in service.audit-readers",
        ));
    }
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(crate::time::parse_utc)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let mut matcher = crate::audit::query::Filter {
        invocation: query.invocation,
        action: query.action,
        caller: query.caller,
        since: time(&query.since)?,
        until: time(&query.until)?,
    }
    .matcher();
    let limit = query.limit.unwrap_or(1000).min(10_000);
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let records = tokio::task::spawn_blocking(move || {
        let mut out: std::collections::VecDeque<Value> = std::collections::VecDeque::new();
        let scanned = crate::audit::read::scan(&dir, |record, line| {
            if matcher.matches(record) {
                if let Ok(v) = serde_json::from_slice::<Value>(line) {
                    out.push_back(v);
                }
                // Keep the newest `limit`.
                if out.len() > limit {
                    out.pop_front();
                }
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

async fn audit_verify(State(service): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = authenticate(&service, &headers)?;
    if !service.may_read_audit(&caller) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "verifying the audit trail needs a role in service.audit-readers",
        ));
    }
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let verified = tokio::task::spawn_blocking(move || crate::audit::read::verify(&dir, None))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(match verified {
        Ok(v) => Json(json!({
            "intact": true,
            "records": v.records,
            "head": v.head.map(|(seq, hash)| json!({"seq": seq, "hash": crate::audit::chain::hex(&hash)})),
            "checkpoints": v.checkpoints,
        }))
        .into_response(),
        Err(e) => (StatusCode::OK, Json(json!({"intact": false, "error": e.to_string()}))).into_response(),
    })
}
