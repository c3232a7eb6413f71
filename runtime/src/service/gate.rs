//! The request gate: what every request passes, on its head alone, before
//! any handler (or the MCP transport) sees it, and before its body is read:
//!
//! 1. **Ambiguous credentials are refused** (400): more than one
//!    `Authorization` header, on every route; more than one console
//!    session or sign-in cookie, on console routes. Which of two
//!    credentials counts is never guessed.
//! 2. **Console form posts from another site are refused** (403): a
//!    `Sec-Fetch-Site` other than `same-origin`, or an `Origin` other than
//!    the console's own (its `Host`, or one of `service.console-origins`).
//!    A post without either header (not from a browser) still needs the
//!    form's CSRF token, as every console post does.
//! 3. **The caller is authenticated** by the route's scheme ([`scheme`]):
//!    a bearer token for `/v1/*` and `/mcp`, the session cookie for the
//!    console. A failure is answered at once (401, or a redirect to the
//!    sign-in page), the body is never read, and a connection that sent
//!    one is closed. Health, readiness, the OpenAPI document, the sign-in
//!    page and the stylesheet need no credentials and never read a body.
//! 4. **Only then is the body read**, in full, within `max-body-bytes`
//!    (413) and `body-timeout-ms` (408, and the connection is closed).
//!    The console sign-in, the one request whose credential is in its body,
//!    gets [`SIGN_IN_MAX_BODY`] bytes within [`SIGN_IN_BODY_TIMEOUT`], and
//!    each source address [`SIGN_IN_RATE`] attempts.
//!
//! A request that authenticates takes its connection out of the
//! unauthenticated pool (see [`super::unauthenticated`]), so only
//! connections that have shown no credential compete for its places.

use super::Service;
use super::auth::cookie_count;
use super::connections::Peer;
use super::console;
use super::error::ApiError;
use super::ratelimit::RateLimit;
use super::unauthenticated::Source;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// Largest console sign-in form read (a token and a CSRF nonce need about
/// 150 bytes).
pub const SIGN_IN_MAX_BODY: usize = 4096;
/// Longest a console sign-in form may take to arrive.
pub const SIGN_IN_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Console sign-in attempts per source address.
pub const SIGN_IN_RATE: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 10.0,
};

/// How a route authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Anyone; the body is never read.
    Public,
    /// Anyone, and a caller with a bearer token is authenticated (and told
    /// more); the body is never read.
    OptionalBearer,
    /// `Authorization: Bearer TOKEN`.
    Bearer,
    /// A console session cookie.
    Session,
    /// The console sign-in form: the token is in the body.
    SignIn,
}

/// The scheme of a route. Anything under `/v1/` and `/mcp` that is not
/// listed as public needs a token, so a route added later is closed until
/// it is listed here; paths outside every prefix are answered 404 by the
/// router and never read a body.
pub fn scheme(method: &Method, path: &str) -> Scheme {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    match path {
        "/v1/health" | "/console/style.css" => Scheme::Public,
        "/v1/ready" | "/v1/openapi.json" => Scheme::OptionalBearer,
        "/console/login" if method == Method::POST => Scheme::SignIn,
        "/console/login" => Scheme::Public,
        _ if under("/console") => Scheme::Session,
        _ if under("/mcp") || path.starts_with("/v1/") || path == "/metrics" => Scheme::Bearer,
        _ => Scheme::Public,
    }
}

/// Who answers: JSON errors for the API and MCP, HTML pages for the
/// console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Face {
    Api,
    Console,
}

impl Face {
    fn of(path: &str) -> Face {
        if path == "/console" || path.starts_with("/console/") {
            Face::Console
        } else {
            Face::Api
        }
    }

    fn error(self, status: StatusCode, code: &'static str, message: String) -> Response {
        match self {
            Face::Api => ApiError::new(status, code, message).into_response(),
            Face::Console => console::error_page(status, &message),
        }
    }
}

/// Does the request say a body follows?
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `response`, telling the client the connection closes: a body it sent
/// was not read, and must not be taken for its next request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Refuse credentials that could mean two callers.
fn ambiguous(headers: &HeaderMap, face: Face) -> Option<String> {
    let authorizations = headers.get_all(header::AUTHORIZATION).iter().count();
    if authorizations > 1 {
        return Some(format!(
            "the request carries {authorizations} Authorization headers: send exactly one (Authorization: Bearer TOKEN)"
        ));
    }
    if face == Face::Console {
        for name in [console::SESSION_COOKIE, console::LOGIN_COOKIE] {
            if cookie_count(headers, name) > 1 {
                return Some(format!(
                    "the request carries more than one {name} cookie, so which session it is cannot be told: \
                     delete this site's cookies in the browser and sign in again"
                ));
            }
        }
    }
    None
}

/// Why a console form post is refused as coming from another site, if it
/// is: `Sec-Fetch-Site` (set by browsers, not by scripts) must say
/// `same-origin`, and `Origin` must be the console's own.
fn cross_site(headers: &HeaderMap, allowed: &[String]) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("unreadable");
        if !site.eq_ignore_ascii_case("same-origin") {
            return Some(format!(
                "the browser sent it from a {site} page (Sec-Fetch-Site: {site})"
            ));
        }
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next()?;
    if origins.next().is_some() {
        return Some("it carries more than one Origin header".into());
    }
    let Ok(origin) = origin.to_str() else {
        return Some("its Origin header is not text".into());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if same_origin(origin, host) || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        None
    } else {
        Some(format!("it came from {origin}"))
    }
}

/// Is `origin` (`scheme://host[:port]`) the server at `host` (the `Host`
/// header), default ports aside?
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let (Some((scheme, authority)), Some(host)) = (origin.split_once("://"), host) else {
        return false;
    };
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let bare = |s: &str| s.strip_suffix(default_port).unwrap_or(s).to_ascii_lowercase();
    !authority.is_empty() && !authority.contains(['/', '@']) && bare(authority) == bare(host)
}

/// How much body a request may send, and how slowly.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    bytes: usize,
    timeout: Duration,
    /// Where the limits come from, for the error messages.
    from: (&'static str, &'static str),
}

/// Read the whole body within `limits`, and put it back as a buffered
/// body; or the error to answer.
async fn read_body(request: Request, limits: BodyLimits, face: Face) -> Result<Request, Response> {
    let BodyLimits {
        bytes: limit,
        timeout,
        from: (size_rule, time_rule),
    } = limits;
    let too_large = || {
        closing(face.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("this request's body is limited to {limit} bytes ({size_rule})"),
        ))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Err(too_large());
            }
            Err(closing(face.error(
                StatusCode::BAD_REQUEST,
                "bad-body",
                format!("reading the request body failed: {e}"),
            )))
        }
        // The rest of the body may still be on its way: the connection
        // closes rather than read it as the next request.
        Err(_) => Err(closing(face.error(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the request body did not arrive within {} ms ({time_rule})",
                timeout.as_millis()
            ),
        ))),
    }
}

/// The gate, as axum middleware over the whole router.
pub async fn gate(State(service): State<Arc<Service>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let face = Face::of(&path);
    let has_body = declares_body(request.headers());
    // An answer given without reading the body the client sent.
    let refuse = |response: Response| if has_body { closing(response) } else { response };
    if let Some(why) = ambiguous(request.headers(), face) {
        return refuse(face.error(StatusCode::BAD_REQUEST, "ambiguous-credentials", why));
    }
    let peer = request.extensions().get::<Peer>().cloned();
    let authenticated = || {
        if let Some(peer) = &peer {
            peer.authenticated();
        }
    };
    let settings = &service.settings;
    let scheme = scheme(request.method(), &path);
    let form_post = face == Face::Console && ![Method::GET, Method::HEAD].contains(request.method());
    if form_post && let Some(why) = cross_site(request.headers(), &settings.console_origins) {
        return refuse(console::error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "refused: this form was posted from another site ({why}); the console accepts form posts only \
                 from its own pages, and nothing was done. Behind a proxy that changes the Host header, list the \
                 console's public origin in service.console-origins."
            ),
        ));
    }
    let limits = BodyLimits {
        bytes: settings.max_body_bytes,
        timeout: settings.body_timeout,
        from: ("service.max-body-bytes", "service.body-timeout-ms"),
    };
    match scheme {
        Scheme::Public | Scheme::OptionalBearer => {
            if scheme == Scheme::OptionalBearer && request.headers().contains_key(header::AUTHORIZATION) {
                match super::auth::authenticate(&service, request.headers()).await {
                    Ok(caller) => {
                        authenticated();
                        request.extensions_mut().insert(caller);
                    }
                    Err(e) => return refuse(e.into_response()),
                }
            }
            // Nothing here reads a body: drop it unread.
            *request.body_mut() = Body::empty();
            let response = next.run(request).await;
            return if has_body { closing(response) } else { response };
        }
        Scheme::Bearer => match super::auth::authenticate(&service, request.headers()).await {
            Ok(caller) => {
                authenticated();
                request.extensions_mut().insert(caller);
            }
            Err(e) => {
                let mut response = e.into_response();
                if response.status() == StatusCode::UNAUTHORIZED && (path == "/mcp" || path.starts_with("/mcp/")) {
                    super::mcp::advertise_metadata(&service, request.headers(), &mut response);
                }
                return refuse(response);
            }
        },
        Scheme::Session => match console::signed_in(&service, request.headers()) {
            Ok(signed_in) => {
                authenticated();
                request.extensions_mut().insert(signed_in);
            }
            Err(response) => return refuse(*response),
        },
        Scheme::SignIn => {
            if cookie_count(request.headers(), console::LOGIN_COOKIE) == 0 {
                return refuse(console::stale_sign_in());
            }
            let source = peer
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |p| format!("{:?}", Source::of(p.addr.ip())));
            if let Err(wait) = service.sign_in_limiter.take(&source) {
                return refuse(console::error_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("too many sign-in attempts from your address; retry in {wait:.1} s"),
                ));
            }
            // Reading it, the server waits for a client that has shown no
            // credential yet: its connection may be closed for room.
            let unshielded = peer.as_ref().map(Peer::unshielded);
            let limits = BodyLimits {
                bytes: SIGN_IN_MAX_BODY,
                timeout: SIGN_IN_BODY_TIMEOUT.min(settings.body_timeout),
                from: ("the console sign-in form's limit", "the console sign-in form's limit"),
            };
            return match read_body(request, limits, face).await {
                Ok(request) => {
                    drop(unshielded);
                    next.run(request).await
                }
                Err(response) => response,
            };
        }
    }
    match read_body(request, limits, face).await {
        Ok(request) => next.run(request).await,
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_outside_the_public_few_needs_credentials() {
        let get = Method::GET;
        let post = Method::POST;
        for path in ["/v1/health", "/console/style.css", "/", "/v2/x", "/mcpx"] {
            assert_eq!(scheme(&get, path), Scheme::Public, "{path}");
        }
        assert_eq!(scheme(&get, "/v1/ready"), Scheme::OptionalBearer);
        assert_eq!(scheme(&get, "/console/login"), Scheme::Public);
        assert_eq!(scheme(&post, "/console/login"), Scheme::SignIn);
        for path in [
            "/console",
            "/console/",
            "/console/approvals/x/decide",
            "/console/logout",
        ] {
            assert_eq!(scheme(&post, path), Scheme::Session, "{path}");
        }
        for path in [
            "/mcp",
            "/mcp/",
            "/v1/invocations",
            "/v1/approvals/x/approve",
            "/v1/new-route",
            "/v1/health/x",
            "/v1//health",
        ] {
            assert_eq!(scheme(&post, path), Scheme::Bearer, "{path}");
        }
    }

    #[test]
    fn same_origin_is_scheme_host_and_port_of_the_host_header() {
        assert!(same_origin("http://127.0.0.1:8420", Some("127.0.0.1:8420")));
        assert!(same_origin("https://airlock.example", Some("airlock.example:443")));
        assert!(same_origin("http://Airlock.Example:80", Some("airlock.example")));
        for (origin, host) in [
            ("http://127.0.0.1:8421", "127.0.0.1:8420"),
            ("http://localhost:8420", "127.0.0.1:8420"),
            ("null", "127.0.0.1:8420"),
            ("http://evil.example", "127.0.0.1:8420"),
            ("http://127.0.0.1:8420@evil.example", "127.0.0.1:8420"),
            ("ftp://127.0.0.1:8420", "127.0.0.1:8420"),
            ("http://", ""),
        ] {
            assert!(!same_origin(origin, Some(host)), "{origin} vs {host}");
        }
        assert!(!same_origin("http://127.0.0.1:8420", None));
    }

    #[test]
    fn cookies_are_counted_over_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; airlock_session=x"));
        assert_eq!(cookie_count(&h, "airlock_session"), 1);
        h.append(header::COOKIE, HeaderValue::from_static("airlock_session=y"));
        assert_eq!(cookie_count(&h, "airlock_session"), 2);
        let mut one = HeaderMap::new();
        one.append(
            header::COOKIE,
            HeaderValue::from_static("airlock_session=x; airlock_session=y"),
        );
        assert_eq!(cookie_count(&one, "airlock_session"), 2);
        assert_eq!(cookie_count(&one, "airlock"), 0);
    }
}
