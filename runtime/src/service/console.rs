//! The reviewer console: server-rendered HTML, no front-end build.
//!
//! - Sign-in with a token (a reviewer's, or any identity's); the session
//!   lives in this process's memory behind an `HttpOnly`, `SameSite=Strict`
//!   cookie and is checked against the token store on every request, so a
//!   revoked token ends its sessions at once.
//! - Every form carries the session's CSRF token (sign-in uses a
//!   double-submit cookie); a post without it is refused. Before that, the
//!   gate (`super::gate`) refuses a post a browser sent from another site
//!   (`Sec-Fetch-Site`, `Origin`), and a request with two session cookies.
//! - Everything shown that came from a request, a guest or the audit log
//!   is HTML-escaped; the pages load no scripts (`Content-Security-Policy:
//!   default-src 'none'`).

use super::Service;
use crate::identity::Caller;
use crate::store::{ApprovalRecord, ApprovalState, InvocationRecord, SessionRecord, Store, StoreError, Verdict};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

pub(super) const SESSION_COOKIE: &str = "airlock_session";
pub(super) const LOGIN_COOKIE: &str = "airlock_login";
/// A session ends after this long idle.
const SESSION_IDLE: Duration = Duration::from_secs(3600);
const MAX_SESSIONS: usize = 10_000;
/// Rows shown on the pending and history pages.
const LIST_LENGTH: usize = 500;

type Shared = Arc<Service>;

/// One signed-in reviewer.
#[derive(Debug, Clone)]
struct Session {
    token_hash: [u8; 32],
    csrf: String,
}

/// Console sessions, kept in the store: on PostgreSQL every node sees a
/// session made on any other (a load balancer may send a reviewer's next
/// request anywhere), and on either backend a session outlives a restart.
/// The store holds each session id's blake3 hash, never the id.
#[derive(Debug, Default)]
pub struct Sessions;

/// A session's `last_seen` is written at most this often.
const SESSION_TOUCH: Duration = Duration::from_secs(60);

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    if getrandom::fill(&mut b).is_err() {
        // No randomness: no session can be made safely.
        return String::new();
    }
    crate::audit::chain::hex(&b)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn session_key(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

impl Sessions {
    fn create(&self, store: &dyn Store, token_hash: [u8; 32]) -> Result<Option<(String, String)>, StoreError> {
        let (id, csrf) = (random_hex(32), random_hex(32));
        if id.is_empty() || csrf.is_empty() {
            return Ok(None);
        }
        let now = crate::time::now_micros();
        let live = store.prune_sessions(now.saturating_sub(micros(SESSION_IDLE)))?;
        if live >= MAX_SESSIONS {
            return Ok(None);
        }
        store.create_session(&SessionRecord {
            id_hash: session_key(&id),
            token_hash,
            csrf: csrf.clone(),
            created_at: now,
            last_seen: now,
        })?;
        Ok(Some((id, csrf)))
    }

    fn get(&self, store: &dyn Store, id: &str) -> Result<Option<Session>, StoreError> {
        let now = crate::time::now_micros();
        let record = store.session(
            &session_key(id),
            now.saturating_sub(micros(SESSION_IDLE)),
            now,
            micros(SESSION_TOUCH),
        )?;
        Ok(record.map(|r| Session {
            token_hash: r.token_hash,
            csrf: r.csrf,
        }))
    }

    fn remove(&self, store: &dyn Store, id: &str) -> Result<(), StoreError> {
        store.remove_session(&session_key(id))
    }
}

pub fn router() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/style.css", get(style))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/approvals/{id}", get(approval_page))
        .route("/console/approvals/{id}/decide", post(decide))
        .route("/console/invocations", get(invocations_page))
        .route("/console/invocations/{id}", get(invocation_page))
        .route("/console/audit", get(audit_page))
        .route("/console/actions", get(actions_page))
}

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The value of cookie `name`, if the request carries exactly one of that
/// name: of two, neither is taken (the gate refuses such requests first).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    if super::gate::cookie_count(headers, name) != 1 {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: no other site learns a console URL,
    // and the console's own form posts carry their real `Origin` (under
    // `no-referrer` browsers send `Origin: null`, which the gate refuses).
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

fn page(title: &str, who: Option<(&Caller, &str)>, body: &str) -> Response {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · airlock</title>\
         <link rel=\"stylesheet\" href=\"/console/style.css\"></head><body><header><strong>airlock</strong>",
        esc(title)
    );
    if let Some((caller, csrf)) = who {
        let _ = write!(
            html,
            " <nav><a href=\"/console\">Pending approvals</a> <a href=\"/console/invocations\">Invocations</a> \
             <a href=\"/console/audit\">Audit</a> <a href=\"/console/actions\">Actions</a></nav>\
             <form method=\"post\" action=\"/console/logout\" class=\"who\"><span id=\"who\">{} ({})</span> \
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            esc(&caller.name),
            caller.kind,
            esc(csrf)
        );
    }
    let _ = write!(
        html,
        "</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    secure_headers(
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
    )
}

pub(super) fn error_page(status: StatusCode, message: &str) -> Response {
    let mut r = page(
        "Error",
        None,
        &format!("<p class=\"error\" id=\"error\">{}</p>", esc(message)),
    );
    *r.status_mut() = status;
    r
}

/// A signed-in reviewer: the caller and the session (for its CSRF token).
#[derive(Debug, Clone)]
pub struct SignedIn {
    caller: Caller,
    session: Session,
}

impl axum::extract::FromRequestParts<Shared> for SignedIn {
    type Rejection = Response;

    /// The session the gate checked, or, for a request that reached a
    /// handler some other way, checked here: no page renders for nobody.
    async fn from_request_parts(parts: &mut axum::http::request::Parts, service: &Shared) -> Result<Self, Response> {
        match parts.extensions.get::<SignedIn>() {
            Some(signed_in) => Ok(signed_in.clone()),
            None => signed_in(service, &parts.headers).map_err(|r| *r),
        }
    }
}

/// The signed-in caller and the session's CSRF token, or a redirect to
/// sign in.
pub(super) fn signed_in(service: &Service, headers: &HeaderMap) -> Result<SignedIn, Box<Response>> {
    let to_login = || Box::new(Redirect::to("/console/login").into_response());
    let id = cookie(headers, SESSION_COOKIE).ok_or_else(to_login)?;
    let store = service
        .runtime
        .store()
        .map_err(|e| error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let session = service
        .sessions
        .get(store.as_ref(), id)
        .map_err(|e| error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))?
        .ok_or_else(to_login)?;
    let record = store
        .token_by_hash(&session.token_hash)
        .map_err(|e| error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    match record {
        Some(t) if t.revoked_at.is_none() => Ok(SignedIn {
            caller: Caller {
                name: t.identity,
                kind: t.kind,
                roles: t.roles,
                token_id: Some(t.id),
            },
            session,
        }),
        _ => {
            if let Err(e) = service.sessions.remove(store.as_ref(), id) {
                tracing::warn!("cannot remove a console session: {e}");
            }
            Err(to_login())
        }
    }
}

/// The answer to a sign-in post without the sign-in page's CSRF cookie.
pub(super) fn stale_sign_in() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "the sign-in form is stale or was not sent from this console; reload it",
    )
}

async fn style() -> Response {
    let css = "body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f}header{background:#14213d;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fca311;margin-right:1em}main{padding:1em 2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap;word-break:break-all}.error{color:#b00020}.who{margin-left:auto}.ok{color:#2d6a4f}form.inline{display:inline-block;margin-right:2em}";
    secure_headers(([(header::CONTENT_TYPE, HeaderValue::from_static("text/css"))], css).into_response())
}

async fn login_page(State(service): State<Shared>, headers: HeaderMap) -> Response {
    if signed_in(&service, &headers).is_ok() {
        return Redirect::to("/console").into_response();
    }
    let nonce = random_hex(16);
    let body = format!(
        "<form method=\"post\" action=\"/console/login\"><p><label>Token <input type=\"password\" name=\"token\" id=\"token\" \
         autocomplete=\"off\" required></label></p><input type=\"hidden\" name=\"csrf\" value=\"{nonce}\">\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>"
    );
    let mut r = page("Sign in", None, &body);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={nonce}; HttpOnly; SameSite=Strict; Path=/console; Max-Age=600"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: Option<String>,
}

async fn login(
    State(service): State<Shared>,
    peer: Option<axum::Extension<super::connections::Peer>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE);
    if expected.is_none() || form.csrf.as_deref() != expected {
        return stale_sign_in();
    }
    let token = form.token.trim();
    let caller = match service.authenticate(token).await {
        Ok(c) => c,
        Err(e) => return error_page(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let created = service
        .runtime
        .store()
        .map_err(|e| StoreError(e.to_string()))
        .and_then(|store| {
            service
                .sessions
                .create(store.as_ref(), crate::identity::token::hash(token))
        });
    let id = match created {
        Ok(Some((id, _))) => id,
        Ok(None) => return error_page(StatusCode::SERVICE_UNAVAILABLE, "cannot create a session now"),
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot create a session now: {e}"),
            );
        }
    };
    tracing::info!(identity = %caller.name, "console sign-in");
    if let Some(axum::Extension(peer)) = peer {
        peer.authenticated();
    }
    let mut r = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/console"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(service): State<Shared>,
    SignedIn { session, .. }: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if form.csrf.as_deref() != Some(session.csrf.as_str()) {
        return error_page(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        let removed = service
            .runtime
            .store()
            .map_err(|e| StoreError(e.to_string()))
            .and_then(|store| service.sessions.remove(store.as_ref(), id));
        if let Err(e) = removed {
            return error_page(StatusCode::SERVICE_UNAVAILABLE, &format!("cannot sign out now: {e}"));
        }
    }
    let mut r = Redirect::to("/console/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("airlock_session=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0"),
    );
    r
}

/// The agent's stated reason and trace, as table rows.
fn intent_rows(body: &mut String, intent: Option<&crate::invocation::Intent>) {
    let Some(intent) = intent else { return };
    if let Some(reason) = &intent.reason {
        let _ = write!(
            body,
            "<tr><th>Stated reason</th><td id=\"stated-reason\">{}</td></tr>",
            esc(reason)
        );
    }
    if let Some(tp) = &intent.traceparent {
        let _ = write!(body, "<tr><th>Trace</th><td id=\"traceparent\">{}</td></tr>", esc(tp));
    }
}

fn may_see_approval(service: &Service, caller: &Caller, a: &ApprovalRecord) -> bool {
    a.caller == caller.name || service.runtime.may_review(caller, a)
}

fn may_see_invocation(service: &Service, caller: &Caller, i: &InvocationRecord) -> bool {
    service.runtime.may_see_invocation(caller, i)
}

async fn home(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    if let Err(e) = service.runtime.sweep_approvals().await {
        tracing::warn!("approval sweep failed: {e}");
    }
    // Only what this caller may see, read until enough are found: other
    // callers' requests cannot push its own off the page.
    let list = service.runtime.store().and_then(|s| {
        Ok(super::api::first_visible(
            LIST_LENGTH,
            |n| s.approvals(Some(ApprovalState::Pending), n),
            |a| may_see_approval(&service, &caller, a),
        )?)
    });
    let list = match list {
        Ok(l) => l,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut body = String::from(
        "<table id=\"pending\"><tr><th>Request</th><th>Kind</th><th>Action</th><th>Caller</th><th>Votes</th><th>Expires (UTC)</th></tr>",
    );
    let mut n = 0;
    for a in &list {
        n += 1;
        let _ = write!(
            body,
            "<tr><td><a class=\"approval\" href=\"/console/approvals/{id}\">{id}</a></td><td>{}</td><td>{}#{}</td><td>{}</td><td>{}/{}</td><td>{}</td></tr>",
            a.kind,
            esc(&a.action),
            esc(&a.function),
            esc(&a.caller),
            a.approvals(),
            a.quorum,
            crate::time::display_secs(a.expires_at / 1_000_000),
            id = esc(&a.id),
        );
    }
    body.push_str("</table>");
    if n == 0 {
        body = "<p id=\"none\">Nothing waits for you.</p>".into();
    }
    page("Pending approvals", Some((&caller, &session.csrf)), &body)
}

fn json_block(v: &serde_json::Value) -> String {
    format!(
        "<pre>{}</pre>",
        esc(&serde_json::to_string_pretty(v).unwrap_or_default())
    )
}

async fn approval_page(
    State(service): State<Shared>,
    SignedIn { caller, session }: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let approval = match service.runtime.store().and_then(|s| Ok(s.approval(&id)?)) {
        Ok(Some(a)) if may_see_approval(&service, &caller, &a) => a,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, &format!("no approval request {id}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let a = &approval;
    let mut body = String::new();
    let _ = write!(
        body,
        "<table id=\"request\">\
         <tr><th>State</th><td id=\"state\">{}</td></tr>\
         <tr><th>Kind</th><td>{}</td></tr>\
         <tr><th>Caller</th><td id=\"caller\">{} ({})</td></tr>\
         <tr><th>Action</th><td id=\"action\">{} (runs as {})</td></tr>\
         <tr><th>Function</th><td id=\"function\">{}</td></tr>\
         <tr><th>Arguments</th><td id=\"args\">{}</td></tr>\
         <tr><th>Component</th><td id=\"component\">{}</td></tr>\
         <tr><th>Capabilities</th><td id=\"capabilities\">{}</td></tr>\
         <tr><th>Rule</th><td id=\"rule\">{}</td></tr>",
        a.state,
        a.kind,
        esc(&a.caller),
        a.caller_kind,
        esc(&a.action),
        esc(&a.service_identity),
        esc(&a.function),
        json_block(&a.args),
        esc(&a.component_digest),
        if a.capabilities.is_empty() {
            "none (the inert baseline only)".to_string()
        } else {
            a.capabilities.iter().map(|c| esc(c)).collect::<Vec<_>>().join("<br>")
        },
        esc(&a.rule),
    );
    intent_rows(&mut body, a.intent.as_ref());
    // Why the reviewer is asked: the deciding policy's reason, the
    // policies that decided, and the group they asked.
    if let Some(why) = &a.why {
        let _ = write!(body, "<tr><th>Why</th><td id=\"why\">{}</td></tr>", esc(why));
    }
    if !a.policies.is_empty() {
        let _ = write!(
            body,
            "<tr><th>Policies</th><td id=\"policies\">{}</td></tr>",
            esc(&a.policies.join(", "))
        );
    }
    if let Some(group) = &a.group {
        let _ = write!(body, "<tr><th>Group</th><td id=\"group\">{}</td></tr>", esc(group));
    }
    if !a.subject.is_null() {
        let _ = write!(
            body,
            "<tr><th>What</th><td id=\"subject\">{}</td></tr>",
            json_block(&a.subject)
        );
    }
    let _ = write!(
        body,
        "<tr><th>Binding</th><td id=\"binding\">{}</td></tr><tr><th>Quorum</th><td>{} of {} ({})</td></tr>\
         <tr><th>Expires (UTC)</th><td>{}</td></tr><tr><th>Invocation</th><td><a id=\"invocation\" href=\"/console/invocations/{inv}\">{inv}</a></td></tr>",
        esc(&a.binding),
        a.approvals(),
        a.quorum,
        esc(&a.approvers.join(", ")),
        crate::time::rfc3339_micros(a.expires_at),
        inv = esc(&a.invocation),
    );
    if let Some(reason) = &a.reason {
        let _ = write!(body, "<tr><th>Reason</th><td id=\"reason\">{}</td></tr>", esc(reason));
    }
    body.push_str("</table><h2>Decisions</h2><ul id=\"decisions\">");
    for d in &a.decisions {
        let _ = write!(
            body,
            "<li>{} by {} {}{}</li>",
            d.verdict,
            d.kind,
            esc(&d.identity),
            d.reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default()
        );
    }
    body.push_str("</ul>");
    let may_decide =
        a.state == ApprovalState::Pending && a.caller != caller.name && service.runtime.may_review(&caller, a);
    if may_decide {
        let csrf = esc(&session.csrf);
        let _ = write!(
            body,
            "<form class=\"inline\" method=\"post\" action=\"/console/approvals/{id}/decide\" id=\"approve-form\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"verdict\" value=\"approve\">\
             <input type=\"hidden\" name=\"binding\" value=\"{binding}\">\
             <label>Reason <input name=\"reason\"></label> <button type=\"submit\" id=\"approve\">Approve</button></form>\
             <form class=\"inline\" method=\"post\" action=\"/console/approvals/{id}/decide\" id=\"deny-form\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"verdict\" value=\"deny\">\
             <label>Reason <input name=\"reason\" required></label> <button type=\"submit\" id=\"deny\">Deny</button></form>",
            id = esc(&a.id),
            binding = esc(&a.binding),
        );
    }
    page(&format!("Request {}", a.id), Some((&caller, &session.csrf)), &body)
}

#[derive(serde::Deserialize)]
pub struct DecideForm {
    csrf: Option<String>,
    verdict: String,
    reason: Option<String>,
    binding: Option<String>,
}

async fn decide(
    State(service): State<Shared>,
    SignedIn { caller, session }: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Response {
    if form.csrf.as_deref() != Some(session.csrf.as_str()) {
        return error_page(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token; nothing was decided",
        );
    }
    let verdict = match form.verdict.as_str() {
        "approve" => Verdict::Approve,
        "deny" => Verdict::Deny,
        _ => return error_page(StatusCode::BAD_REQUEST, "verdict must be approve or deny"),
    };
    let reason = form.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    if verdict == Verdict::Deny && reason.is_none() {
        return error_page(StatusCode::BAD_REQUEST, "a deny needs a reason");
    }
    let decided = service
        .decide(&id, &caller, verdict, reason, form.binding.as_deref())
        .await;
    match decided {
        Ok(approval) => Redirect::to(&format!("/console/approvals/{}", approval.id)).into_response(),
        Err(e) => error_page(StatusCode::CONFLICT, &e.to_string()),
    }
}

async fn invocations_page(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    let list = service.runtime.store().and_then(|s| {
        Ok(super::api::first_visible(
            LIST_LENGTH,
            |n| s.invocations(None, n),
            |i| may_see_invocation(&service, &caller, i),
        )?)
    });
    let list = match list {
        Ok(l) => l,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut body = String::from(
        "<table id=\"invocations\"><tr><th>Invocation</th><th>State</th><th>Action</th><th>Caller</th><th>Created (UTC)</th></tr>",
    );
    for i in &list {
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/invocations/{id}\">{id}</a></td><td>{}</td><td>{}#{}</td><td>{}</td><td>{}</td></tr>",
            i.state,
            esc(&i.action),
            esc(&i.function),
            esc(&i.caller.name),
            crate::time::display_secs(i.created_at / 1_000_000),
            id = esc(&i.id)
        );
    }
    body.push_str("</table>");
    page("Invocations", Some((&caller, &session.csrf)), &body)
}

async fn invocation_page(
    State(service): State<Shared>,
    SignedIn { caller, session }: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let record = match service.runtime.store().and_then(|s| Ok(s.invocation(&id)?)) {
        Ok(Some(i)) if may_see_invocation(&service, &caller, &i) => i,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, &format!("no invocation {id}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<table><tr><th>State</th><td id=\"state\">{}</td></tr><tr><th>Action</th><td>{}#{}</td></tr>\
         <tr><th>Caller</th><td>{}</td></tr><tr><th>Arguments</th><td>{}</td></tr>",
        record.state,
        esc(&record.action),
        esc(&record.function),
        esc(&record.caller.name),
        json_block(&record.args)
    );
    intent_rows(&mut body, record.intent.as_ref());
    if let Some(o) = &record.outcome {
        let _ = write!(
            body,
            "<tr><th>Exit code</th><td id=\"exit-code\">{}</td></tr>",
            o.exit_code
        );
        if let Some(r) = &o.result {
            let _ = write!(body, "<tr><th>Result</th><td id=\"result\">{}</td></tr>", json_block(r));
        }
        if let Some(e) = &o.error {
            let _ = write!(body, "<tr><th>Error</th><td id=\"error\">{}</td></tr>", esc(e));
        }
    }
    body.push_str("</table>");
    page(
        &format!("Invocation {}", record.id),
        Some((&caller, &session.csrf)),
        &body,
    )
}

async fn audit_page(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    if !service.may_read_audit(&caller) {
        return error_page(
            StatusCode::FORBIDDEN,
            "the audit browser needs a role in service.audit-readers",
        );
    }
    if let Some(pg) = crate::audit::pg::settings_of(&service.policy.runtime) {
        return audit_page_pg(pg.clone(), &caller, &session.csrf).await;
    }
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let read = tokio::task::spawn_blocking(move || {
        let verified = crate::audit::read::verify(&dir, None);
        let mut recent: std::collections::VecDeque<(u64, String, String, String)> = Default::default();
        let _ = crate::audit::read::scan(&dir, |record, line| {
            let kind = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["event"]["kind"].as_str().map(str::to_string))
                .unwrap_or_default();
            recent.push_back((
                record.entry.seq,
                record.entry.ts.clone(),
                kind,
                String::from_utf8_lossy(line).chars().take(400).collect(),
            ));
            if recent.len() > 200 {
                recent.pop_front();
            }
            true
        });
        (verified, recent)
    })
    .await;
    let Ok((verified, recent)) = read else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "the audit reader failed");
    };
    let mut body = match verified {
        Ok(v) => format!(
            "<p class=\"ok\" id=\"chain\">Chain intact: {} records, {} checkpoint(s) match.</p>",
            v.records, v.checkpoints
        ),
        Err(e) => format!(
            "<p class=\"error\" id=\"chain\">Verification FAILED: {}</p>",
            esc(&e.to_string())
        ),
    };
    body.push_str("<table id=\"records\"><tr><th>#</th><th>Time (UTC)</th><th>Kind</th><th>Record</th></tr>");
    for (seq, ts, kind, line) in recent.iter().rev() {
        let _ = write!(
            body,
            "<tr><td>{seq}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(ts),
            esc(kind),
            esc(line)
        );
    }
    body.push_str("</table>");
    page("Audit trail", Some((&caller, &session.csrf)), &body)
}

/// The audit browser with PostgreSQL: every node's chain verified, and the
/// newest records across nodes.
async fn audit_page_pg(pg: crate::store::settings::PgSettings, caller: &Caller, csrf: &str) -> Response {
    let read = tokio::task::spawn_blocking(move || {
        let db = crate::audit::pg::reader(&pg).map_err(crate::audit::pg::verify::PgVerifyError::Db)?;
        let verified = crate::audit::pg::verify::verify(&db, None, None);
        let mut recent = Vec::new();
        let listed = crate::audit::pg::query::select(&db, &Default::default(), Some(200), |hit| {
            recent.push((
                hit.node.clone(),
                hit.record.entry.seq,
                hit.record.entry.ts.clone(),
                crate::audit::pg::row::kind_of(&hit.record.entry.event),
                hit.line.chars().take(400).collect::<String>(),
            ));
            true
        });
        Ok::<_, crate::audit::pg::verify::PgVerifyError>((verified, listed.map(|_| recent)))
    })
    .await;
    let (verified, recent) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(_) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, "the audit reader failed"),
    };
    let mut body = match verified {
        Ok(nodes) => format!(
            "<p class=\"ok\" id=\"chain\">Chains intact: {} node(s), {} records, {} checkpoint(s) match.</p>",
            nodes.len(),
            nodes.iter().map(|n| n.records).sum::<u64>(),
            nodes.iter().map(|n| n.checkpoints).sum::<usize>()
        ),
        Err(e) => format!(
            "<p class=\"error\" id=\"chain\">Verification FAILED: {}</p>",
            esc(&e.to_string())
        ),
    };
    match recent {
        Ok(recent) => {
            body.push_str(
                "<table id=\"records\"><tr><th>Node</th><th>#</th><th>Time (UTC)</th><th>Kind</th><th>Record</th></tr>",
            );
            for (node, seq, ts, kind, line) in recent.iter().rev() {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{seq}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                    esc(node),
                    esc(ts),
                    esc(kind),
                    esc(line)
                );
            }
            body.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(
                body,
                "<p class=\"error\">Cannot list records: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    page("Audit trail", Some((caller, csrf)), &body)
}

async fn actions_page(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    let mut body = String::new();
    for name in service.runtime.action_names() {
        let Some(action) = service.runtime.action(&name) else {
            continue;
        };
        let p = &action.policy;
        // As in /v1/actions: only what the caller may invoke or approve.
        if !action.decisions.may_list(&caller) && !service.runtime.may_review_action(&caller, &name) {
            continue;
        }
        let _ = write!(
            body,
            "<section class=\"action\"><h2>{}</h2><p>{}</p><p>Runs as {}. Component {}.</p><h3>Capabilities</h3><ul>",
            esc(&name),
            esc(p.description.as_deref().unwrap_or("")),
            esc(&p.service_identity),
            esc(&action.manifest.digest.to_string())
        );
        for (kind, what) in p.grants.describe() {
            let _ = write!(body, "<li>{kind}: {}</li>", esc(&what));
        }
        body.push_str("</ul><h3>Imports</h3><ul>");
        for import in &action.manifest.imports {
            let _ = write!(
                body,
                "<li>{} ({}): {}</li>",
                esc(&import.name),
                import.class.name(),
                esc(import.meaning)
            );
        }
        body.push_str("</ul>");
        if let Some(u) = &action.upgrade
            && !u.diff.is_empty()
        {
            let _ = write!(
                body,
                "<h3>Changed since the previous pin</h3><pre class=\"diff\">{}</pre>",
                esc(&u.diff.render(Some(&u.grants)))
            );
        }
        if let Some(about) = action.manifest.description() {
            let _ = write!(body, "<p class=\"doc\">{}</p>", esc(&about));
        }
        body.push_str("<h3>Functions</h3><dl class=\"functions\">");
        for f in &action.manifest.functions {
            let _ = write!(body, "<dt><code>{}</code></dt><dd>", esc(&f.name));
            if let Some(doc) = f.doc() {
                let _ = write!(body, "<p class=\"doc\">{}</p>", esc(&doc));
            }
            if !f.params.is_empty() {
                body.push_str("<ul class=\"params\">");
                for (param, ty) in &f.params {
                    let type_name = f
                        .wit
                        .as_ref()
                        .and_then(|w| Some(w.component().type_name(w.param_type(param)?)))
                        .unwrap_or_else(|| ty.wit_name());
                    let _ = write!(body, "<li><code>{}: {}</code>", esc(param), esc(&type_name));
                    if let Some(doc) = f.param_doc(param) {
                        let _ = write!(body, " {}", esc(&doc));
                    }
                    body.push_str("</li>");
                }
                body.push_str("</ul>");
            }
            body.push_str("</dd>");
        }
        body.push_str("</dl></section>");
    }
    page("Actions", Some((&caller, &session.csrf)), &body)
}
