//! One HTTP/1.1 exchange with a checked address.
//!
//! The client resolves the host itself, drops every address that is not
//! public unless the allow rule permits private ones, and connects to a
//! checked address, so what was checked is what is reached. Connect and
//! total deadlines and the response size cap are enforced here; redirects,
//! credentials and redaction are the callers' business.

use super::address::{is_metadata, non_public_reason};
use super::destination::{Origin, Scheme};
use super::policy::{AllowRule, HttpPolicy};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use url::Url;

/// A request as it goes on the wire (credentials already injected).
pub struct OutboundRequest {
    pub method: http::Method,
    pub url: Url,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A whole response, body read up to the cap.
#[derive(Debug)]
pub struct OutboundResponse {
    pub status: http::StatusCode,
    /// The status line's reason phrase as the server sent it.
    pub reason: Vec<u8>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Why an outbound request failed. Messages name origins, never full URLs
/// (an injected query credential lives in the URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("DNS lookup failed: {0}")]
    Dns(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("HTTP protocol error: {0}")]
    Protocol(String),
}

/// Send one request (no redirects) under `rule`, finishing by `deadline`.
pub async fn send_once(
    request: OutboundRequest,
    rule: &AllowRule,
    policy: &HttpPolicy,
    deadline: Instant,
) -> Result<OutboundResponse, OutboundError> {
    let origin = Origin::of(&request.url).map_err(OutboundError::InvalidRequest)?;
    let work = async {
        let addrs = resolve(&origin, rule, policy.connect_timeout).await?;
        let stream = connect(&origin, &addrs, policy.connect_timeout).await?;
        match origin.scheme {
            Scheme::Http => exchange(stream, &origin, request, policy.max_response_bytes).await,
            Scheme::Https => {
                let tls = tls_handshake(stream, &origin).await?;
                exchange(tls, &origin, request, policy.max_response_bytes).await
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(OutboundError::Timeout(format!(
            "no complete response from {origin} within the {} ms limit (grants.http.timeout-ms)",
            policy.timeout.as_millis()
        ))),
    }
}

/// The addresses of `origin` that `rule` lets us reach.
async fn resolve(origin: &Origin, rule: &AllowRule, timeout: Duration) -> Result<Vec<SocketAddr>, OutboundError> {
    let host = origin.bare_host();
    let all: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, origin.port)],
        Err(_) => match tokio::time::timeout(timeout, tokio::net::lookup_host((host, origin.port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(OutboundError::Dns(format!("{host}: {e}"))),
            Err(_) => return Err(OutboundError::Timeout(format!("resolving {host}"))),
        },
    };
    if all.is_empty() {
        return Err(OutboundError::Dns(format!("{host} has no addresses")));
    }
    if rule.allow_private {
        // allow-private opens loopback and private ranges, not metadata
        // endpoints: those only when the destination is the address itself.
        let literal = host.parse::<IpAddr>().ok();
        let (ok, metadata): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|a| !is_metadata(a.ip()) || literal == Some(a.ip()));
        if ok.is_empty() {
            return Err(OutboundError::Denied(format!(
                "{origin} resolves to {}, a cloud metadata address; only a destination naming that address can reach it",
                metadata[0].ip()
            )));
        }
        return Ok(ok);
    }
    let (public, refused): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| non_public_reason(a.ip()).is_none());
    if public.is_empty() {
        let first = refused[0].ip();
        return Err(OutboundError::Denied(format!(
            "{origin} resolves to {first}, {}; set allow-private = true on its allow rule ({}) only if that is intended",
            non_public_reason(first).unwrap_or("not public"),
            rule.destination
        )));
    }
    Ok(public)
}

async fn connect(origin: &Origin, addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, OutboundError> {
    let mut last = String::new();
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = format!("{origin} ({addr}): {e}"),
            Err(_) => {
                last = format!(
                    "{origin} ({addr}): no connection within {} ms (grants.http.connect-timeout-ms)",
                    timeout.as_millis()
                )
            }
        }
    }
    Err(OutboundError::Connect(last))
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config =
                match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
                    Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
                    // The ring provider supports the default versions; this arm
                    // only keeps a library change from becoming a panic.
                    Err(_) => rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                };
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

async fn tls_handshake(
    stream: TcpStream,
    origin: &Origin,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, OutboundError> {
    let name = rustls::pki_types::ServerName::try_from(origin.bare_host().to_string())
        .map_err(|e| OutboundError::Tls(format!("{origin}: {e}")))?;
    tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, stream)
        .await
        .map_err(|e| OutboundError::Tls(format!("{origin}: {e}")))
}

/// Aborts the connection task when the exchange ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<S>(
    stream: S,
    origin: &Origin,
    request: OutboundRequest,
    max_response_bytes: u64,
) -> Result<OutboundResponse, OutboundError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |e: hyper::Error| OutboundError::Protocol(format!("{origin}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(256 * 1024)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(protocol)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));

    let path = match request.url.query() {
        Some(q) => format!("{}?{q}", request.url.path()),
        None => request.url.path().to_string(),
    };
    let uri: http::Uri = path
        .parse()
        .map_err(|_| OutboundError::InvalidRequest("the URL path is not valid in a request line".into()))?;
    let mut builder = http::Request::builder().method(request.method).uri(uri);
    let host = if origin.port == origin.scheme.default_port() {
        origin.host.clone()
    } else {
        format!("{}:{}", origin.host, origin.port)
    };
    if let Some(headers) = builder.headers_mut() {
        *headers = request.headers;
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&host)
                .map_err(|_| OutboundError::InvalidRequest("host is not a valid header value".into()))?,
        );
    }
    let req = builder
        .body(Full::new(request.body))
        .map_err(|e| OutboundError::InvalidRequest(e.to_string()))?;
    let response = sender.send_request(req).await.map_err(protocol)?;
    let (parts, mut body) = response.into_parts();

    if let Some(len) = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max_response_bytes
    {
        return Err(too_large(origin, max_response_bytes));
    }
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(protocol)?;
        if let Ok(data) = frame.into_data() {
            if collected.len() as u64 + data.len() as u64 > max_response_bytes {
                return Err(too_large(origin, max_response_bytes));
            }
            collected.extend_from_slice(&data);
        }
    }
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes().to_vec())
        .unwrap_or_else(|| parts.status.canonical_reason().unwrap_or("").as_bytes().to_vec());
    Ok(OutboundResponse {
        status: parts.status,
        reason,
        headers: parts.headers,
        body: Bytes::from(collected),
    })
}

fn too_large(origin: &Origin, cap: u64) -> OutboundError {
    OutboundError::TooLarge(format!(
        "response from {origin} exceeds {cap} bytes (grants.http.max-response-bytes)"
    ))
}
