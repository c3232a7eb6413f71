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
//! - Every page is a compile-time template ([`views`], `maud`): what came
//!   from a request, a guest or the audit log is escaped by the template,
//!   never by hand, and control and bidirectional-formatting characters are
//!   shown as `\u{...}` (so no text can reorder what a reviewer reads).
//!   The pages load no scripts and no inline styles
//!   (`Content-Security-Policy: default-src 'none'; style-src 'self'`).

pub mod views;

use super::Service;
use crate::identity::Caller;
use crate::store::{ApprovalState, SessionRecord, Store, StoreError, Verdict};
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
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
    crate::hex::hex(&b)
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

/// The value of cookie `name`, if the request carries exactly one of that
/// name: of two, neither is taken (the gate refuses such requests first).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    if super::auth::cookie_count(headers, name) != 1 {
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

/// `html` with every control character but newline and tab, and every
/// bidirectional-formatting character, shown as `\u{...}`. Applied to each
/// whole page: the escapes contain no markup, and the console's own
/// markup uses none of these characters.
fn visible(html: String) -> String {
    let hidden = |c: char| (c.is_control() && c != '\n' && c != '\t') || crate::values::is_bidi_format(c);
    if !html.contains(hidden) {
        return html;
    }
    let mut out = String::with_capacity(html.len() + 16);
    for c in html.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn page(title: &str, who: Option<(&Caller, &str)>, body: maud::Markup) -> Response {
    let html = visible(views::page(title, who, body).into_string());
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
    let mut r = page("Error", None, views::error(message));
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
    let mut r = page("Sign in", None, views::sign_in(&nonce));
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

async fn home(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    if let Err(e) = service.runtime.sweep_approvals().await {
        tracing::warn!("approval sweep failed: {e}");
    }
    // Only what this caller may see, read until enough are found: other
    // callers' requests cannot push its own off the page.
    let list = service.runtime.store().and_then(|s| {
        Ok(super::auth::first_visible(
            LIST_LENGTH,
            |n| s.approvals(Some(ApprovalState::Pending), n),
            |a| super::auth::may_see_approval(&service, &caller, a),
        )?)
    });
    match list {
        Ok(list) => page(
            "Pending approvals",
            Some((&caller, &session.csrf)),
            views::pending(&list),
        ),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn approval_page(
    State(service): State<Shared>,
    SignedIn { caller, session }: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let approval = match service.runtime.store().and_then(|s| Ok(s.approval(&id)?)) {
        Ok(Some(a)) if super::auth::may_see_approval(&service, &caller, &a) => a,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, &format!("no approval request {id}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let a = &approval;
    let may_decide =
        a.state == ApprovalState::Pending && a.caller != caller.name && service.runtime.may_review(&caller, a);
    let body = views::approval(a, may_decide.then_some(session.csrf.as_str()));
    page(&format!("Request {}", a.id), Some((&caller, &session.csrf)), body)
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
        Ok(super::auth::first_visible(
            LIST_LENGTH,
            |n| s.invocations(None, n),
            |i| service.runtime.may_see_invocation(&caller, i),
        )?)
    });
    match list {
        Ok(list) => page("Invocations", Some((&caller, &session.csrf)), views::invocations(&list)),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn invocation_page(
    State(service): State<Shared>,
    SignedIn { caller, session }: SignedIn,
    Path(id): Path<String>,
) -> Response {
    let record = match service.runtime.store().and_then(|s| Ok(s.invocation(&id)?)) {
        Ok(Some(i)) if service.runtime.may_see_invocation(&caller, &i) => i,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, &format!("no invocation {id}")),
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    page(
        &format!("Invocation {}", record.id),
        Some((&caller, &session.csrf)),
        views::invocation(&record),
    )
}

/// Records the audit browser lists, newest last.
const AUDIT_ROWS: usize = 200;
/// Characters of a record's line shown.
const AUDIT_LINE: usize = 400;

async fn audit_page(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    if !service.may_read_audit(&caller) {
        return error_page(
            StatusCode::FORBIDDEN,
            "the audit browser needs a role in service.audit-readers",
        );
    }
    if let Some(pg) = service.policy.runtime.audit_database() {
        return audit_page_pg(pg.clone(), &caller, &session.csrf).await;
    }
    let dir = crate::audit::dir(&service.policy.runtime.data_dir);
    let read = tokio::task::spawn_blocking(move || {
        let verified = crate::audit::read::verify(&dir, None);
        let mut recent: std::collections::VecDeque<views::AuditRow> = Default::default();
        let _ = crate::audit::read::scan(&dir, |record, line| {
            let kind = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["event"]["kind"].as_str().map(str::to_string))
                .unwrap_or_default();
            recent.push_back(views::AuditRow {
                node: None,
                seq: record.entry.seq,
                ts: record.entry.ts.clone(),
                kind,
                line: String::from_utf8_lossy(line).chars().take(AUDIT_LINE).collect(),
            });
            if recent.len() > AUDIT_ROWS {
                recent.pop_front();
            }
            true
        });
        (verified, Vec::from(recent))
    })
    .await;
    let Ok((verified, recent)) = read else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "the audit reader failed");
    };
    let chain = verified
        .map(|v| {
            format!(
                "Chain intact: {} records, {} checkpoint(s) match.",
                v.records, v.checkpoints
            )
        })
        .map_err(|e| e.to_string());
    page(
        "Audit trail",
        Some((&caller, &session.csrf)),
        views::audit(chain, Ok(&recent), false),
    )
}

/// The audit browser with PostgreSQL: every node's chain verified, and the
/// newest records across nodes.
async fn audit_page_pg(pg: crate::store::settings::PgSettings, caller: &Caller, csrf: &str) -> Response {
    let read = tokio::task::spawn_blocking(move || {
        let db = crate::audit::pg::reader(&pg).map_err(crate::audit::pg::verify::PgVerifyError::Db)?;
        let verified = crate::audit::pg::verify::verify(&db, None, None);
        let mut recent = Vec::new();
        let listed = crate::audit::pg::query::select(&db, &Default::default(), Some(AUDIT_ROWS), |hit| {
            recent.push(views::AuditRow {
                node: Some(hit.node.clone()),
                seq: hit.record.entry.seq,
                ts: hit.record.entry.ts.clone(),
                kind: crate::audit::pg::row::kind_of(&hit.record.entry.event).to_string(),
                line: hit.line.chars().take(AUDIT_LINE).collect(),
            });
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
    let chain = verified
        .map(|nodes| {
            format!(
                "Chains intact: {} node(s), {} records, {} checkpoint(s) match.",
                nodes.len(),
                nodes.iter().map(|n| n.records).sum::<u64>(),
                nodes.iter().map(|n| n.checkpoints).sum::<usize>()
            )
        })
        .map_err(|e| e.to_string());
    let rows = recent.as_deref().map_err(|e| e.to_string());
    page("Audit trail", Some((caller, csrf)), views::audit(chain, rows, true))
}

async fn actions_page(State(service): State<Shared>, SignedIn { caller, session }: SignedIn) -> Response {
    let names = service.runtime.action_names();
    // As in /v1/actions: only what the caller may invoke or approve.
    let shown: Vec<(&str, &crate::action::PreparedAction)> = names
        .iter()
        .filter_map(|name| Some((name.as_str(), service.runtime.action(name)?.as_ref())))
        .filter(|(name, action)| action.decisions.may_list(&caller) || service.runtime.may_review_action(&caller, name))
        .collect();
    page("Actions", Some((&caller, &session.csrf)), views::actions(&shown))
}
