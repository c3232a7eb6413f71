//! Who is asking, and what they may see: shared by the API, the console
//! and MCP, which never import one another.
//!
//! - A bearer token (`Authorization: Bearer TOKEN`, exactly one header) is
//!   looked up in the store on every request, so a revoked token stops
//!   working at once, and each identity is rate limited
//!   ([`authenticate`], [`Authenticated`]).
//! - Cookies are counted by name over every `Cookie` header, so a request
//!   carrying two session cookies can be refused ([`cookie_count`]).
//! - Lists show a caller only what it may see, however the store pages
//!   them ([`first_visible`]); an invocation names the approval request it
//!   waits for ([`awaited_approval`]).

use super::Service;
use super::error::ApiError;
use crate::identity::Caller;
use crate::store::{ApprovalRecord, ApprovalState, InvocationRecord, InvocationStatus, Store, StoreError};
use axum::http::{HeaderMap, StatusCode, header};
use std::sync::Arc;

type Shared = Arc<Service>;

/// The token of an `Authorization` header value `Bearer TOKEN`. The scheme
/// is matched case-insensitively, as RFC 7235 (section 2.1) says, so
/// `bearer TOKEN` is the same credential.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The caller behind the `Authorization: Bearer` header, rate limited.
pub(crate) async fn authenticate(service: &Service, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let mut headers = headers.get_all(header::AUTHORIZATION).iter();
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

/// How many cookies named `name` the request carries, over all its
/// `Cookie` headers.
pub fn cookie_count(headers: &HeaderMap, name: &str) -> usize {
    headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| {
            // A header that is not text may hide the name; count it as one.
            v.to_str().map_or(1, |v| {
                v.split(';')
                    .filter(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == name))
                    .count()
            })
        })
        .sum()
}

/// The approval request an unfinished invocation waits for now, if any:
/// its invocation-level request while that is pending, or a pending request
/// its running instance made (a held host call, or the guest's own).
pub(crate) fn awaited_approval(
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

/// Whether `caller` may see approval request `approval`: its own
/// invocation's, or one it may review.
pub(crate) fn may_see_approval(service: &Service, caller: &Caller, approval: &ApprovalRecord) -> bool {
    approval.caller == caller.name || service.runtime.may_review(caller, approval)
}

/// The first `want` records `fetch` reads (newest first) that `keep`
/// accepts. The store filters by state only, so one read of a fixed size,
/// filtered afterwards, could be filled with records of other callers and
/// hide the caller's own: read ever longer prefixes until `want` are kept
/// or the store has no more.
pub(crate) fn first_visible<T>(
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
