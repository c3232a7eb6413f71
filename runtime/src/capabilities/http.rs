//! `airlock:cap/http` and `wasi:http/outgoing-handler`: governed outbound
//! HTTP.
//!
//! Both interfaces share one grant and one path ([`crate::outbound`]):
//! the allow rules decide every hop, the client checks resolved addresses,
//! credentials are injected by the host at send time, and responses are
//! scrubbed of reflected secrets before the guest sees them.
//!
//! - `airlock:cap/http.send` takes an optional credential handle; the host
//!   follows redirects itself, only to allowed destinations, and drops the
//!   credential on any hop to another origin.
//! - `wasi:http` (wasmtime-wasi-http) goes through [`WasiHttpGate`], its
//!   send hook. Guests written with any toolchain get the same allowlist and
//!   address checks; credentials are attached by `inject` rules that match
//!   the destination. wasi:http never follows redirects (the guest sees the
//!   3xx and makes a new, separately checked request).

use super::bindings::airlock::cap::http as wit;
use super::catalog::{AIRLOCK_CAP_0_1, Interface, WASI_0_2};
use super::credentials::{CredentialHandle, CredentialStore, CredentialsGrant};
use super::{Capability, Resolving};
use crate::call::Target;
use crate::host_call::{Decision, HostCall, HostCalls};
use crate::host_call::{InvocationState, StateBuilder};
use crate::outbound::client::send_once;
use crate::outbound::headers::{drop_host_owned, is_host_owned};
use crate::outbound::policy::*;
use crate::outbound::{Destination, HttpPolicy, Origin, OutboundError, OutboundRequest, OutboundResponse, Redactor};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

/// `[actions.NAME.grants.http]` as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHttpGrant {
    #[serde(default)]
    pub allow: Vec<RawAllowRule>,
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_redirects: Option<u32>,
    pub max_requests: Option<u32>,
    /// Credentials attached to matching `wasi:http` requests.
    #[serde(default)]
    pub inject: Vec<RawInjectRule>,
}

/// `[[actions.NAME.grants.http.inject]]`: attach credential `credential`
/// to every `wasi:http` request to `destination`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawInjectRule {
    pub destination: String,
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectRule {
    pub destination: Destination,
    pub credential: String,
}

/// A validated `http` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    pub policy: HttpPolicy,
    pub inject: Vec<InjectRule>,
}

impl HttpGrant {
    /// Validate; `credentials` is the action's credentials grant, which
    /// every inject rule must name and allow.
    pub fn resolve(raw: &RawHttpGrant, credentials: Option<&CredentialsGrant>) -> Result<HttpGrant, String> {
        let allow = raw
            .allow
            .iter()
            .map(AllowRule::resolve)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("grants.http.allow: {e}"))?;
        let policy = HttpPolicy {
            allow,
            connect_timeout: Duration::from_millis(raw.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)),
            timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS)),
            max_request_bytes: raw.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes: raw.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            max_redirects: raw.max_redirects.unwrap_or(DEFAULT_MAX_REDIRECTS),
            max_requests: raw.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
        };
        policy.validate().map_err(|e| format!("grants.http: {e}"))?;
        let mut inject = Vec::new();
        for r in &raw.inject {
            let at = |e: String| format!("grants.http.inject {}: {e}", r.destination);
            let destination = Destination::parse(&r.destination).map_err(at)?;
            let binding = credentials
                .and_then(|c| c.bindings.get(&r.credential))
                .ok_or_else(|| at(format!("no credential `{}` under grants.credentials", r.credential)))?;
            if binding.inject.is_none() {
                return Err(at(format!("credential `{}` has no `inject` method", r.credential)));
            }
            if !binding.destinations.contains(&destination) {
                return Err(at(format!(
                    "credential `{}` may not be sent there (its destinations: {})",
                    r.credential,
                    binding.destination_list()
                )));
            }
            if !policy.allow.iter().any(|a| a.destination == destination) {
                return Err(at("the destination is not in grants.http.allow".into()));
            }
            inject.push(InjectRule {
                destination,
                credential: r.credential.clone(),
            });
        }
        Ok(HttpGrant { policy, inject })
    }
}

/// Per-invocation state of the `http` capability.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub grant: Arc<HttpGrant>,
    pub budget: Arc<RequestBudget>,
    /// `wasi:http` requests run as host tasks while the guest goes on; this
    /// bounds how many are in flight (and buffered) at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// `wasi:http` requests one invocation may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// The `http` capability.
pub struct HttpCapability;

impl Capability for HttpCapability {
    const INTERFACES: &'static [Interface] = &[
        Interface {
            family: &AIRLOCK_CAP_0_1,
            name: "airlock:cap/http",
            meaning: "outbound HTTP to allowed destinations, credentials injected by the host",
        },
        Interface {
            family: &WASI_0_2,
            name: "wasi:http/outgoing-handler",
            meaning: "outbound HTTP to allowed destinations, under the same rules as airlock:cap/http",
        },
        Interface {
            family: &WASI_0_2,
            name: "wasi:http/types",
            meaning: "HTTP request and response types for wasi:http/outgoing-handler",
        },
    ];
    type Raw = RawHttpGrant;
    type Grant = HttpGrant;
    const REACHES_OUTSIDE: bool = true;
    const EXAMPLE_GRANT: &'static str = r#"http = { allow = [{ destination = "https://HOST" }] }"#;
    const EXAMPLE_FLAG: &'static str = "a config file (http cannot be granted ad hoc)";

    fn resolve(raw: &RawHttpGrant, cx: &Resolving<'_>) -> Result<Option<HttpGrant>, String> {
        let mut raw = raw.clone();
        for rule in &mut raw.allow {
            rule.destination = cx
                .expand(&rule.destination)
                .map_err(|e| format!("grants.http.allow: {e}"))?;
        }
        for rule in &mut raw.inject {
            rule.destination = cx
                .expand(&rule.destination)
                .map_err(|e| format!("grants.http.inject: {e}"))?;
        }
        HttpGrant::resolve(&raw, cx.grants.credentials.as_ref()).map(Some)
    }

    fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<InvocationState, HasSelf<InvocationState>>(linker, |s| s)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
    }

    fn prepare(grant: &HttpGrant, state: &mut StateBuilder) -> anyhow::Result<()> {
        let http = HttpState {
            grant: Arc::new(grant.clone()),
            budget: Arc::new(RequestBudget::new(grant.policy.max_requests)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        };
        // The credentials capability is prepared first (`prepare_granted`),
        // so its store is in place for `wasi:http`'s inject rules.
        let creds = state.slots.get::<Arc<CredentialStore>>().cloned().unwrap_or_default();
        state.slots.insert(WasiHttp {
            hooks: WasiHttpGate::new(Some(http.clone()), creds, state.host_calls.clone()),
            ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
        });
        state.slots.insert(http);
        Ok(())
    }

    fn describe(grant: &HttpGrant) -> String {
        let p = &grant.policy;
        let rules: Vec<String> = p
            .allow
            .iter()
            .map(|r| {
                let mut s = r.destination.to_string();
                if let Some(m) = &r.methods {
                    s.push_str(&format!(" {}", m.join("|")));
                }
                if let Some(ps) = &r.path_prefixes {
                    s.push_str(&format!(" {}", ps.join(",")));
                }
                if r.allow_private {
                    s.push_str(" (private addresses allowed)");
                }
                s
            })
            .collect();
        let injects: Vec<String> = grant
            .inject
            .iter()
            .map(|i| format!("{} -> {}", i.credential, i.destination))
            .collect();
        format!(
            "to {}; connect {} ms, total {} ms, request {} B, response {} B, {} redirects, {} requests{}",
            if rules.is_empty() {
                "nowhere".to_string()
            } else {
                rules.join(", ")
            },
            p.connect_timeout.as_millis(),
            p.timeout.as_millis(),
            p.max_request_bytes,
            p.max_response_bytes,
            p.max_redirects,
            p.max_requests,
            if injects.is_empty() {
                String::new()
            } else {
                format!("; wasi:http credentials {}", injects.join(", "))
            }
        )
    }
}

/// Why a governed send failed, before it becomes a WIT or wasi:http error.
#[derive(Debug)]
enum SendFailure {
    Denied(String),
    /// A streamed `wasi:http` request body passed this many bytes.
    RequestTooLarge(u64),
    Credential(String),
    Outbound(OutboundError),
}

impl From<OutboundError> for SendFailure {
    fn from(e: OutboundError) -> Self {
        SendFailure::Outbound(e)
    }
}

impl SendFailure {
    /// The message of a WIT error, for records.
    fn describe_wit(e: &wit::HttpError) -> String {
        match e {
            wit::HttpError::Denied(m)
            | wit::HttpError::InvalidRequest(m)
            | wit::HttpError::Credential(m)
            | wit::HttpError::Dns(m)
            | wit::HttpError::Connect(m)
            | wit::HttpError::Tls(m)
            | wit::HttpError::Timeout(m)
            | wit::HttpError::TooLarge(m)
            | wit::HttpError::Protocol(m) => m.clone(),
        }
    }

    fn into_wit(self, redactor: &Redactor) -> wit::HttpError {
        let r = |s: String| redactor.redact_str(&s).into_owned();
        match self {
            SendFailure::Denied(m) => wit::HttpError::Denied(r(m)),
            SendFailure::RequestTooLarge(cap) => wit::HttpError::TooLarge(format!("request body exceeds {cap} bytes")),
            SendFailure::Credential(m) => wit::HttpError::Credential(r(m)),
            SendFailure::Outbound(e) => match e {
                OutboundError::Denied(m) => wit::HttpError::Denied(r(m)),
                OutboundError::InvalidRequest(m) => wit::HttpError::InvalidRequest(r(m)),
                OutboundError::Dns(m) => wit::HttpError::Dns(r(m)),
                OutboundError::Connect(m) => wit::HttpError::Connect(r(m)),
                OutboundError::Tls(m) => wit::HttpError::Tls(r(m)),
                OutboundError::Timeout(m) => wit::HttpError::Timeout(r(m)),
                OutboundError::TooLarge(m) => wit::HttpError::TooLarge(r(m)),
                OutboundError::Protocol(m) => wit::HttpError::Protocol(r(m)),
            },
        }
    }

    fn into_wasi(self) -> wasmtime_wasi_http::Error {
        use wasmtime_wasi_http::Error as E;
        match self {
            SendFailure::Denied(_) => E::HttpRequestDenied,
            SendFailure::RequestTooLarge(cap) => E::HttpRequestBodySize(Some(cap)),
            SendFailure::Credential(m) => E::InternalError(Some(m)),
            SendFailure::Outbound(e) => match e {
                OutboundError::Denied(_) => E::DestinationIpProhibited,
                OutboundError::InvalidRequest(_) => E::HttpRequestUriInvalid,
                OutboundError::Dns(_) => E::DnsError {
                    rcode: None,
                    info_code: None,
                },
                OutboundError::Connect(_) => E::ConnectionRefused,
                OutboundError::Tls(_) => E::TlsProtocolError,
                OutboundError::Timeout(_) => E::ConnectionTimeout,
                OutboundError::TooLarge(_) => E::HttpResponseBodySize(None),
                OutboundError::Protocol(_) => E::HttpProtocolError,
            },
        }
    }
}

/// A request as the guest asked for it (no credential on it yet).
struct GuestRequest {
    method: http::Method,
    url: Url,
    headers: HeaderMap,
    body: Bytes,
}

/// A response after redaction, with where it finally came from.
struct Delivered {
    response: OutboundResponse,
    final_url: Url,
    redirects: u32,
}

/// Send `req` under `grant`, injecting `credential` where allowed and
/// following redirects if `follow`. The response is not yet redacted.
/// Whether redirects are followed, and which targets need approval (a
/// redirect never carries a call to one).
#[derive(Clone, Copy)]
struct Redirects<'a> {
    follow: bool,
    gated: &'a (dyn Fn(&str, &Url) -> bool + Send + Sync),
}

impl Redirects<'_> {
    const NONE: Redirects<'static> = Redirects {
        follow: false,
        gated: &|_, _| false,
    };
}

async fn send_governed(
    grant: &HttpGrant,
    budget: &RequestBudget,
    creds: &CredentialStore,
    mut req: GuestRequest,
    mut credential: Option<String>,
    redirects_allowed: Redirects<'_>,
    redactor: &Redactor,
) -> Result<Delivered, SendFailure> {
    let Redirects { follow, gated } = redirects_allowed;
    let policy = &grant.policy;
    let deadline = tokio::time::Instant::now() + policy.timeout;
    if req.body.len() as u64 > policy.max_request_bytes {
        return Err(OutboundError::TooLarge(format!(
            "request body of {} bytes exceeds {} bytes (grants.http.max-request-bytes)",
            req.body.len(),
            policy.max_request_bytes
        ))
        .into());
    }
    if req.method == http::Method::CONNECT {
        return Err(SendFailure::Denied("CONNECT is never allowed".into()));
    }
    let mut redirects = 0;
    loop {
        let rule = policy
            .permits(req.method.as_str(), &req.url)
            .map_err(SendFailure::Denied)?;
        budget.take().map_err(SendFailure::Denied)?;
        let origin = Origin::of(&req.url).map_err(|e| SendFailure::Outbound(OutboundError::InvalidRequest(e)))?;
        let mut wire_url = req.url.clone();
        let mut headers = req.headers.clone();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if let Some(name) = &credential {
            attach_credential(creds, name, &origin, &mut wire_url, &mut headers)?;
        }
        let response = send_once(
            OutboundRequest {
                method: req.method.clone(),
                url: wire_url,
                headers,
                body: req.body.clone(),
            },
            rule,
            policy,
            deadline,
        )
        .await?;

        let location = response.headers.get(header::LOCATION).map(|v| v.as_bytes().to_vec());
        let (true, true, Some(location)) = (follow, response.status.is_redirection(), location) else {
            return Ok(Delivered {
                response,
                final_url: req.url,
                redirects,
            });
        };
        if redirects >= policy.max_redirects {
            return Err(OutboundError::Protocol(format!(
                "more than {} redirects (grants.http.max-redirects)",
                policy.max_redirects
            ))
            .into());
        }
        let next = std::str::from_utf8(&location)
            .ok()
            .and_then(|l| req.url.join(l).ok())
            .ok_or_else(|| OutboundError::Protocol(format!("{origin} sent a redirect to an invalid location")))?;
        // Checked before and after parsing: the parser drops tabs and
        // newlines, which could otherwise split a secret past the first check.
        let reflects = |bytes: &[u8]| !matches!(redactor.redact(bytes), std::borrow::Cow::Borrowed(_));
        if reflects(&location) || reflects(next.as_str().as_bytes()) {
            return Err(SendFailure::Denied(format!(
                "the redirect from {origin} carries a credential in its location; not followed"
            )));
        }
        let next_origin =
            Origin::of(&next).map_err(|e| SendFailure::Denied(format!("redirect from {origin} refused: {e}")))?;
        let status = response.status.as_u16();
        if status == 303 && req.method != http::Method::HEAD
            || (status == 301 || status == 302) && req.method == http::Method::POST
        {
            req.method = http::Method::GET;
            req.body = Bytes::new();
            req.headers.remove(header::CONTENT_TYPE);
        }
        policy
            .permits(req.method.as_str(), &next)
            .map_err(|e| SendFailure::Denied(format!("redirect from {origin} to {next_origin} refused: {e}")))?;
        // Approval was asked for the first request only; a redirect must
        // not carry the call to a target that needs its own approval.
        if gated(req.method.as_str(), &next) {
            return Err(SendFailure::Denied(format!(
                "the redirect from {origin} leads to {next_origin}{}, which needs approval; not followed",
                next.path()
            )));
        }
        if next_origin != origin {
            // Never carry a credential across origins, even to a destination
            // the credential could be sent to directly.
            credential = None;
        }
        req.url = next;
        redirects += 1;
    }
}

/// Put credential `name` on a request to `origin`, if policy allows it there.
fn attach_credential(
    creds: &CredentialStore,
    name: &str,
    origin: &Origin,
    url: &mut Url,
    headers: &mut HeaderMap,
) -> Result<(), SendFailure> {
    let binding = creds
        .binding(name)
        .ok_or_else(|| SendFailure::Credential(format!("credential `{name}` is not bound to this action")))?;
    let inject = binding.inject.as_ref().ok_or_else(|| {
        SendFailure::Credential(format!(
            "credential `{name}` has no `inject` method in policy; it can only sign"
        ))
    })?;
    if !binding.allows(origin) {
        return Err(SendFailure::Denied(format!(
            "credential `{name}` may not be sent to {origin} (grants.credentials.{name}.destinations: {})",
            binding.destination_list()
        )));
    }
    let secret = creds
        .secret(name)
        .map_err(|e| SendFailure::Credential(format!("{e}")))?;
    inject
        .apply(&secret, url, headers)
        .map_err(|e| SendFailure::Credential(format!("credential `{name}`: {e}")))
}

/// Bodies up to this size are redacted on the invocation's own task; larger
/// ones on a blocking thread, so scanning a body of several MiB (tens of
/// milliseconds when it is dense with escapes) never stalls an async worker.
const REDACT_INLINE_BYTES: usize = 64 << 10;

/// [`redact_response`], off the async workers for a large body.
async fn redact_response_async(
    response: &mut OutboundResponse,
    redactor: &std::sync::Arc<Redactor>,
) -> Result<(), SendFailure> {
    if redactor.is_empty() || response.body.len() <= REDACT_INLINE_BYTES {
        return redact_response(response, redactor);
    }
    let redactor = redactor.clone();
    let mut taken = std::mem::replace(response, empty_response());
    let (back, result) = tokio::task::spawn_blocking(move || {
        let result = redact_response(&mut taken, &redactor);
        (taken, result)
    })
    .await
    .map_err(|e| SendFailure::Outbound(OutboundError::Protocol(format!("the redaction task failed: {e}"))))?;
    *response = back;
    result
}

/// A placeholder while a response is away being redacted.
fn empty_response() -> OutboundResponse {
    OutboundResponse {
        status: http::StatusCode::OK,
        reason: Vec::new(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

/// Scrub a response and refuse encodings the redactor cannot see into.
fn redact_response(response: &mut OutboundResponse, redactor: &Redactor) -> Result<(), SendFailure> {
    if redactor.is_empty() {
        return Ok(());
    }
    // Every value and every comma-separated token must be a coding the
    // redactor can see through (hyper has already removed chunked framing).
    let opaque = |name: header::HeaderName, allowed: &[&str]| {
        response.headers.get_all(name).iter().any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .any(|t| !t.is_empty() && !allowed.contains(&t.as_str()))
            })
        })
    };
    if opaque(header::CONTENT_ENCODING, &["identity"]) || opaque(header::TRANSFER_ENCODING, &["chunked", "identity"]) {
        return Err(OutboundError::Protocol(
            "the response is content-encoded, so airlock cannot check it for reflected secrets; the server ignored `accept-encoding: identity`".into(),
        )
        .into());
    }
    response.reason = redactor.redact(&response.reason).into_owned();
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for (name, value) in response.headers.iter() {
        let clean_name = redactor.redact(name.as_str().as_bytes());
        let Ok(name) = HeaderName::from_bytes(&clean_name) else {
            continue; // a header named after a secret: dropped
        };
        let clean = redactor.redact(value.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&clean) {
            headers.append(name, v);
        }
    }
    let body = redactor.redact(&response.body);
    if let std::borrow::Cow::Owned(body) = body {
        response.body = Bytes::from(body);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(response.body.len()));
    }
    response.headers = headers;
    Ok(())
}

/// Validate a guest's `airlock:cap/http` request.
fn parse_guest_request(req: wit::Request, injected: Option<HeaderName>) -> Result<GuestRequest, wit::HttpError> {
    let invalid = |m: String| wit::HttpError::InvalidRequest(m);
    let method = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| invalid(format!("{:?} is not an HTTP method", truncate(&req.method))))?;
    if method == http::Method::CONNECT {
        return Err(invalid("CONNECT is not supported".into()));
    }
    let url = Url::parse(&req.url).map_err(|e| invalid(format!("{:?} is not a URL: {e}", truncate(&req.url))))?;
    Origin::of(&url).map_err(invalid)?;
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("{:?} is not a header name", truncate(&name))))?;
        if is_host_owned(&name) {
            return Err(invalid(format!("header {name} is set by the host")));
        }
        if injected.as_ref() == Some(&name) {
            return Err(invalid(format!("header {name} is set by the credential")));
        }
        if name == header::ACCEPT_ENCODING {
            continue; // the host asks for identity so it can scan responses
        }
        let value =
            HeaderValue::from_str(&value).map_err(|_| invalid(format!("header {name} has an invalid value")))?;
        headers.append(name, value);
    }
    Ok(GuestRequest {
        method,
        url,
        headers,
        body: Bytes::from(req.body),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// blake3 over request headers (name and value, each length-prefixed, in
/// the order given), for host-call records and approval bindings: a
/// decision covers exactly these headers, while the record shows only their
/// names (a value may be something the guest should not have shown). A
/// credential the host injects is added after this and is never part of it.
fn headers_digest<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (name, value) in headers {
        for part in [name, value] {
            hasher.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
            hasher.update(part);
        }
    }
    hasher.finalize().to_hex().to_string()
}

/// The headers of a guest's `wasi:http` request that will be sent, sorted
/// by name (each name's values in order): wasmtime adds `host`, and the
/// host removes what it owns before sending.
fn sent_guest_headers(headers: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue)> {
    let mut sent: Vec<(&HeaderName, &HeaderValue)> = headers
        .iter()
        .filter(|(name, _)| !is_host_owned(name) && **name != header::ACCEPT_ENCODING)
        .collect();
    sent.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    sent
}

const IFACE: &str = "airlock:cap/http";

impl wit::Host for InvocationState {
    async fn send(
        &mut self,
        request: wit::Request,
        credential: Option<Resource<CredentialHandle>>,
    ) -> wasmtime::Result<Result<wit::Response, wit::HttpError>> {
        let credential = match credential {
            Some(handle) => Some(self.table.get(&handle)?.name.clone()),
            None => None,
        };
        let injected = credential
            .as_deref()
            .and_then(|c| super::credentials::bound_in(self)?.binding(c))
            .and_then(|b| b.inject.as_ref())
            .and_then(|i| i.header_name());
        let follow = request.follow_redirects;
        // The URL is recorded without its query (it may carry secrets) and
        // the headers by name; the digests bind the whole URL, the guest's
        // headers and the body, so an approval for a held request covers
        // exactly this request.
        let header_names: Vec<&str> = request.headers.iter().map(|(name, _)| name.as_str()).collect();
        let mut call = HostCall::new(IFACE, "send")
            .arg("method", truncate(&request.method))
            .arg("url", redacted_url(&request.url))
            .arg("url-blake3", blake3::hash(request.url.as_bytes()).to_hex())
            .arg("headers", header_names.join(", "))
            .arg(
                "headers-blake3",
                headers_digest(
                    request
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_bytes(), value.as_bytes())),
                ),
            )
            .arg("body-bytes", request.body.len())
            .arg("body-blake3", blake3::hash(&request.body).to_hex());
        if let Some(c) = &credential {
            call = call.arg("credential", c);
        }
        // A malformed request is recorded as refused like a policy denial:
        // either way nothing left the host.
        let parsed = parse_guest_request(request, injected);
        if let Ok(g) = &parsed {
            call = call.target(Target::Http {
                method: g.method.to_string(),
                url: g.url.clone(),
            });
        }
        let gate = self.host_calls.gate();
        let function = call.function_name();
        let gated = move |method: &str, url: &Url| {
            gate.as_ref().is_some_and(|g| {
                g.holds_back(
                    &[Target::Http {
                        method: method.to_string(),
                        url: url.clone(),
                    }],
                    &function,
                )
            })
        };
        let http = self.slots.get::<HttpState>().cloned();
        let decision = match (&parsed, &http) {
            (Err(e), _) => Decision::deny("request checks", SendFailure::describe_wit(e)),
            (Ok(_), None) => Decision::deny("grants.http", "no http grant"),
            (Ok(g), Some(h)) => match h.grant.policy.permits(g.method.as_str(), &g.url) {
                Ok(rule) => Decision::allow(format!("grants.http.allow {}", rule.destination)),
                Err(why) => Decision::deny("grants.http.allow", why),
            },
        };
        let (Ok(guest), Some(HttpState { grant, budget, .. })) = (parsed, http) else {
            let invalid = decision.rule == "request checks";
            let reason = decision.reason.as_deref().unwrap_or_default().to_string();
            let _ = self.host_calls.begin(call, decision);
            return Ok(Err(if invalid {
                wit::HttpError::InvalidRequest(reason)
            } else {
                wit::HttpError::Denied(reason)
            }));
        };
        let creds = super::credentials::credentials_of(self);
        let outcome = self
            .host_call_async(
                call,
                |_| decision,
                async move |_| SendOutcome(send_one(grant, budget, creds, guest, credential, follow, &gated).await),
            )
            .await;
        Ok(match outcome {
            Ok(SendOutcome(result)) => result,
            Err(denied) => Err(wit::HttpError::Denied(denied.reason)),
        })
    }
}

/// `send`'s outcome as its record states it: the status code, and the size
/// and digest of the (redacted) body the guest receives.
struct SendOutcome(Result<wit::Response, wit::HttpError>);

impl crate::host_call::CallStatus for SendOutcome {
    fn status(&self) -> std::borrow::Cow<'static, str> {
        let text = match &self.0 {
            Ok(r) => format!(
                "ok {}; received {} body bytes (blake3:{})",
                r.status,
                r.body.len(),
                blake3::hash(&r.body).to_hex()
            ),
            Err(e) => format!("error: {e}"),
        };
        text.into()
    }
}

/// One allowed `airlock:cap/http` request: sent, redirects followed as the
/// policy allows, the response redacted.
async fn send_one(
    grant: Arc<HttpGrant>,
    budget: Arc<RequestBudget>,
    creds: Arc<CredentialStore>,
    guest: GuestRequest,
    credential: Option<String>,
    follow: bool,
    gated: &(dyn Fn(&str, &Url) -> bool + Send + Sync),
) -> Result<wit::Response, wit::HttpError> {
    let redactor = match creds.redactor() {
        Ok(r) => r,
        Err(e) => return Err(wit::HttpError::Credential(e)),
    };
    let sent = send_governed(
        &grant,
        &budget,
        &creds,
        guest,
        credential,
        Redirects { follow, gated: &gated },
        &redactor,
    )
    .await;
    let delivered = match sent {
        Ok(mut d) => match redact_response_async(&mut d.response, &redactor).await {
            Ok(()) => d,
            Err(e) => return Err(e.into_wit(&redactor)),
        },
        Err(e) => return Err(e.into_wit(&redactor)),
    };
    Ok(to_wit_response(delivered, &redactor))
}

fn to_wit_response(d: Delivered, redactor: &Redactor) -> wit::Response {
    let r = d.response;
    wit::Response {
        status: r.status.as_u16(),
        reason: String::from_utf8_lossy(&r.reason).into_owned(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: r.body.to_vec(),
        final_url: redactor.redact_str(d.final_url.as_str()).into_owned(),
        redirects: d.redirects,
    }
}

/// A URL for the host-call record: origin and path only (a query may
/// carry data the record should not keep).
fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => format!(
            "{}{}{}",
            Origin::of(&u)
                .map(|o| o.to_string())
                .unwrap_or_else(|_| u.scheme().to_string()),
            u.path(),
            if u.query().is_some() { "?…" } else { "" }
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

/// `wasi:http`'s per-invocation state: the send hook and wasmtime-wasi-http's
/// own context.
pub struct WasiHttp {
    hooks: WasiHttpGate,
    ctx: wasmtime_wasi_http::WasiHttpCtx,
}

impl wasmtime_wasi_http::WasiHttpView for InvocationState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        // `wasi:http` is linked only for actions holding an http grant, whose
        // `prepare` put this in place; should it be missing, every request is
        // denied (and recorded) as having no grant.
        let calls = &self.host_calls;
        let WasiHttp { hooks, ctx } = self.slots.get_or_insert_with(|| WasiHttp {
            hooks: WasiHttpGate::new(None, Arc::default(), calls.clone()),
            ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
        });
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks,
            table: &mut self.table,
            ctx,
        }
    }
}

/// The `wasi:http` send hook: the same policy, applied to requests built by
/// wasmtime-wasi-http from the guest's `outgoing-request`.
pub struct WasiHttpGate {
    http: Option<HttpState>,
    creds: Arc<CredentialStore>,
    calls: HostCalls,
}

impl WasiHttpGate {
    pub fn new(http: Option<HttpState>, creds: Arc<CredentialStore>, calls: HostCalls) -> WasiHttpGate {
        WasiHttpGate { http, creds, calls }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for WasiHttpGate {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(is_host_owned)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let (parts, body) = request.into_parts();
        let url = Url::parse(&parts.uri.to_string()).ok();
        let sent = sent_guest_headers(&parts.headers);
        let header_names: Vec<&str> = sent.iter().map(|(name, _)| name.as_str()).collect();
        let headers_blake3 = headers_digest(
            sent.iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
        );
        let mut call = HostCall::new("wasi:http/outgoing-handler", "handle")
            .arg("method", parts.method.as_str())
            .arg("url", redacted_url(&parts.uri.to_string()))
            .arg("url-blake3", blake3::hash(parts.uri.to_string().as_bytes()).to_hex())
            .arg("headers", header_names.join(", "))
            .arg("headers-blake3", headers_blake3);
        if let Some(u) = &url {
            call = call.target(Target::Http {
                method: parts.method.to_string(),
                url: u.clone(),
            });
        }
        let decision = match (&self.http, &url) {
            (None, _) => Decision::deny("grants.http", "no http grant"),
            (_, None) => Decision::deny("grants.http", "the request URL is not absolute http(s)"),
            (Some(h), Some(u)) => match h.grant.policy.permits(parts.method.as_str(), u) {
                Ok(rule) => Decision::allow(format!("grants.http.allow {}", rule.destination)),
                Err(why) => Decision::deny("grants.http.allow", why),
            },
        };
        // The credential an inject rule adds at send time, by name only.
        let injected = match (&self.http, &url) {
            (Some(h), Some(u)) if decision.allowed => Origin::of(u)
                .ok()
                .and_then(|o| h.grant.inject.iter().find(|r| r.destination.matches(&o)))
                .map(|r| r.credential.clone()),
            _ => None,
        };
        if let Some(name) = &injected {
            call = call.arg("credential", name);
        }
        let http = self.http.clone();
        let creds = self.creds.clone();
        let calls = self.calls.clone();
        let gated = decision.allowed
            && calls
                .gate()
                .is_some_and(|g| g.holds_back(&call.targets, &call.function_name()));
        Box::new(async move {
            let mut call = call;
            // The guest streams the body after `handle`. A request a gate
            // holds is bound to its body too, so its body is read first (in
            // full, up to max-request-bytes, within the request timeout) and
            // its digest is part of what reviewers decide; the bytes sent
            // are exactly those. Its in-flight slot is taken first and kept
            // while it waits, so bodies waiting for a decision stay bounded
            // (MAX_IN_FLIGHT of them). Requests no gate holds stream as they
            // are sent, and their records carry no body digest.
            let body = if gated && let Some(h) = &http {
                let early = async {
                    let slot = h.in_flight.clone().acquire_owned().await.map_err(|_| ending())?;
                    let bytes = read_body(&h.grant, body).await?;
                    Ok::<_, SendFailure>((slot, bytes))
                };
                let read = match tokio::time::timeout(h.grant.policy.timeout, early).await {
                    Ok(r) => r,
                    Err(_) => Err(SendFailure::Outbound(OutboundError::Timeout(format!(
                        "the request body was not complete within {} ms (grants.http.timeout-ms)",
                        h.grant.policy.timeout.as_millis()
                    )))),
                };
                match read {
                    Ok((slot, bytes)) => {
                        call = call
                            .arg("body-bytes", bytes.len())
                            .arg("body-blake3", blake3::hash(&bytes).to_hex());
                        RequestBody::Read(slot, bytes)
                    }
                    Err(failure) => {
                        let _ = calls.begin(call, Decision::deny("grants.http", failure.to_string()));
                        return Err(failure.into_wasi());
                    }
                }
            } else {
                RequestBody::Streaming(body)
            };
            // The guest waits on the response future while a gate holds the
            // request for approval.
            let (call, decision) = calls.admit(call, decision).await;
            let (seq, allowed) = calls.begin(call, decision);
            let (
                Ok(()),
                Some(HttpState {
                    grant,
                    budget,
                    in_flight,
                }),
                Some(url),
            ) = (allowed, http, url)
            else {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            };
            let started = Instant::now();
            // The total timeout covers waiting for a slot and for the guest
            // to finish streaming the body, not only the exchange (for a held
            // request, both happened before the gate, under a timeout of
            // their own).
            // What was sent, for the record (the body is complete only now).
            let sent = std::sync::Mutex::new(None::<String>);
            let work = async {
                let (_slot, body) = match body {
                    RequestBody::Read(slot, bytes) => (slot, bytes),
                    RequestBody::Streaming(stream) => {
                        let slot = in_flight.acquire_owned().await.map_err(|_| ending())?;
                        (slot, read_body(&grant, stream).await?)
                    }
                };
                if let Ok(mut s) = sent.lock() {
                    *s = Some(format!(
                        "{} body bytes (blake3:{})",
                        body.len(),
                        blake3::hash(&body).to_hex()
                    ));
                }
                wasi_send(&grant, &budget, &creds, parts, body, url, options).await
            };
            let result = match tokio::time::timeout(grant.policy.timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(SendFailure::Outbound(OutboundError::Timeout(format!(
                    "no complete exchange within {} ms (grants.http.timeout-ms)",
                    grant.policy.timeout.as_millis()
                )))),
            };
            let mut status = match &result {
                Ok(r) => format!("ok {}", r.status().as_u16()),
                Err(e) => format!("error: {e}"),
            };
            if let Some(sent) = sent.lock().ok().and_then(|s| s.clone()) {
                status.push_str("; sent ");
                status.push_str(&sent);
            }
            calls.finish(seq, status, started.elapsed());
            let response = result.map_err(SendFailure::into_wasi)?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::Denied(m) => write!(f, "denied: {m}"),
            SendFailure::RequestTooLarge(cap) => {
                write!(f, "request body exceeds {cap} bytes (grants.http.max-request-bytes)")
            }
            SendFailure::Credential(m) => write!(f, "credential: {m}"),
            SendFailure::Outbound(e) => write!(f, "{e}"),
        }
    }
}

/// A `wasi:http` request body, as the send hook holds it.
enum RequestBody {
    /// Still streaming from the guest: read when the request is sent.
    Streaming(WasiBody),
    /// Read before the approval gate (a held request is bound to its
    /// bytes), with the in-flight slot taken for it.
    Read(tokio::sync::OwnedSemaphorePermit, Bytes),
}

/// The invocation ended while a `wasi:http` request waited for a slot.
fn ending() -> SendFailure {
    SendFailure::Outbound(OutboundError::Protocol("the invocation is ending".into()))
}

/// Read a guest's streamed `wasi:http` request body, up to the grant's
/// max-request-bytes.
async fn read_body(grant: &HttpGrant, body: WasiBody) -> Result<Bytes, SendFailure> {
    use http_body_util::BodyExt as _;
    let cap = grant.policy.max_request_bytes;
    Ok(
        http_body_util::Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX))
            .collect()
            .await
            .map_err(|_| SendFailure::RequestTooLarge(cap))?
            .to_bytes(),
    )
}

async fn wasi_send(
    grant: &HttpGrant,
    budget: &RequestBudget,
    creds: &CredentialStore,
    parts: http::request::Parts,
    body: Bytes,
    url: Url,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> Result<http::Response<WasiBody>, SendFailure> {
    use http_body_util::BodyExt as _;
    let mut headers = parts.headers;
    // wasmtime-wasi-http's forbidden-header hook already refuses them when
    // the guest sets them; removed here too, so no other way in can send one.
    drop_host_owned(&mut headers);
    headers.remove(header::ACCEPT_ENCODING);
    let origin = Origin::of(&url).map_err(|e| SendFailure::Outbound(OutboundError::InvalidRequest(e)))?;
    let credential = grant
        .inject
        .iter()
        .find(|r| r.destination.matches(&origin))
        .map(|r| r.credential.clone());
    if let Some(header) = credential
        .as_deref()
        .and_then(|c| creds.binding(c))
        .and_then(|b| b.inject.as_ref())
        .and_then(|i| i.header_name())
    {
        headers.remove(header); // the rule's credential replaces any guest value
    }
    let mut policy = grant.policy.clone();
    if let Some(t) = options.and_then(|o| o.connect_timeout) {
        policy.connect_timeout = policy.connect_timeout.min(t);
    }
    let grant = HttpGrant {
        policy,
        inject: Vec::new(),
    };
    let redactor = creds.redactor().map_err(SendFailure::Credential)?;
    let request = GuestRequest {
        method: parts.method,
        url,
        headers,
        body,
    };
    let mut delivered = send_governed(&grant, budget, creds, request, credential, Redirects::NONE, &redactor).await?;
    redact_response_async(&mut delivered.response, &redactor).await?;
    let r = delivered.response;
    let mut builder = http::Response::builder().status(r.status);
    if let Some(h) = builder.headers_mut() {
        *h = r.headers;
        h.remove(header::TRANSFER_ENCODING);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.body.len()));
    }
    builder
        .body(
            http_body_util::Full::new(r.body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| SendFailure::Outbound(OutboundError::Protocol(e.to_string())))
}
