//! `[service]` in the config: where `airlock serve` listens, its limits and
//! who may read what, validated. The service itself is [`crate::service`].

use crate::identity::AccessRule;
use std::net::SocketAddr;
use std::time::Duration;

/// Default listening address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";
/// Largest request body accepted by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// How long a synchronous invocation waits for its result by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Longest wait a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Time a connection has to deliver a request head by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request has to deliver its body by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Unauthenticated connections from one source address by default.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE: usize = 32;

/// `[service]` in the config.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServiceSettings {
    pub listen: Option<String>,
    pub max_body_bytes: Option<usize>,
    /// Time to deliver a request head (also the keep-alive idle limit).
    pub header_timeout_ms: Option<u64>,
    /// Time to deliver a request body.
    pub body_timeout_ms: Option<u64>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: Option<usize>,
    /// Connections open at once that have not authenticated; default half
    /// of `max-connections`.
    pub max_unauthenticated: Option<usize>,
    /// Of those, from one source address (IPv4, or IPv6 /64).
    pub max_unauthenticated_per_source: Option<usize>,
    pub rate_limit: Option<RawRateLimit>,
    /// Who may read and verify the audit trail; default `["role:auditor"]`.
    pub audit_readers: Option<Vec<String>>,
    /// How long an MCP tool call waits for an approval before it returns a
    /// pending result.
    pub mcp_wait_ms: Option<u64>,
    /// Browser origins allowed to reach `/mcp` (requests without an
    /// `Origin` header, i.e. not from a browser, are unaffected).
    pub allowed_origins: Option<Vec<String>>,
    /// Host names `/mcp` answers to besides loopback and the listen address.
    pub allowed_hosts: Option<Vec<String>>,
    /// Origins (`https://airlock.example`) the console takes form posts
    /// from besides its own `Host`: for a proxy that rewrites `Host`.
    pub console_origins: Option<Vec<String>>,
    /// Who may read `/metrics`; default `["role:monitoring"]`.
    pub metrics_readers: Option<Vec<String>>,
    /// A second address serving only `GET /metrics`, without a token.
    pub metrics_listen: Option<String>,
    /// Where clients reach the service (`https://airlock.example`), when a
    /// proxy in front of it terminates TLS: named in the MCP resource
    /// metadata.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// The service settings, validated.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_source: usize,
    pub rate_limit: RateLimit,
    pub audit_readers: Vec<AccessRule>,
    pub mcp_wait: Duration,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub console_origins: Vec<String>,
    pub metrics_readers: Vec<AccessRule>,
    pub metrics_listen: Option<SocketAddr>,
    pub public_url: Option<String>,
}

/// Default wait of an MCP call for an approval.
pub const DEFAULT_MCP_WAIT: Duration = Duration::from_secs(30);

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8420))),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated: DEFAULT_MAX_CONNECTIONS / 2,
            max_unauthenticated_per_source: DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE,
            rate_limit: RateLimit::default(),
            audit_readers: vec![AccessRule::Role("auditor".into())],
            mcp_wait: DEFAULT_MCP_WAIT,
            allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
            allowed_hosts: Vec::new(),
            console_origins: Vec::new(),
            metrics_readers: vec![AccessRule::Role("monitoring".into())],
            metrics_listen: None,
            public_url: None,
        }
    }
}

impl ServiceSettings {
    pub fn resolve(raw: &RawServiceSettings) -> Result<ServiceSettings, String> {
        let mut s = ServiceSettings::default();
        if let Some(listen) = &raw.listen {
            s.listen = listen
                .parse()
                .map_err(|_| format!("service.listen {listen:?} must be IP:PORT, e.g. 127.0.0.1:8420"))?;
        }
        if let Some(n) = raw.max_body_bytes {
            if !(1024..=64 << 20).contains(&n) {
                return Err("service.max-body-bytes must be between 1024 and 67108864".into());
            }
            s.max_body_bytes = n;
        }
        let timeout = |key: &str, ms: Option<u64>, default: Duration| match ms {
            None => Ok(default),
            Some(ms) if (100..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            Some(_) => Err(format!("service.{key} must be between 100 and 600000 (ms)")),
        };
        s.header_timeout = timeout("header-timeout-ms", raw.header_timeout_ms, s.header_timeout)?;
        s.body_timeout = timeout("body-timeout-ms", raw.body_timeout_ms, s.body_timeout)?;
        if let Some(n) = raw.max_connections {
            if !(1..=65_536).contains(&n) {
                return Err("service.max-connections must be between 1 and 65536".into());
            }
            s.max_connections = n;
        }
        // Half the slots by default: the other half is always there for
        // authenticated clients.
        s.max_unauthenticated = (s.max_connections / 2).max(1);
        if let Some(n) = raw.max_unauthenticated {
            if !(1..=s.max_connections).contains(&n) {
                return Err(format!(
                    "service.max-unauthenticated must be between 1 and max-connections ({})",
                    s.max_connections
                ));
            }
            s.max_unauthenticated = n;
        }
        s.max_unauthenticated_per_source = s.max_unauthenticated_per_source.min(s.max_unauthenticated);
        if let Some(n) = raw.max_unauthenticated_per_source {
            if !(1..=s.max_unauthenticated).contains(&n) {
                return Err(format!(
                    "service.max-unauthenticated-per-source must be between 1 and max-unauthenticated ({})",
                    s.max_unauthenticated
                ));
            }
            s.max_unauthenticated_per_source = n;
        }
        if let Some(r) = &raw.rate_limit {
            if !(r.per_second > 0.0 && r.per_second.is_finite() && r.burst >= 1.0 && r.burst.is_finite()) {
                return Err("service.rate-limit needs per-second > 0 and burst >= 1".into());
            }
            s.rate_limit = RateLimit {
                per_second: r.per_second,
                burst: r.burst,
            };
        }
        if let Some(ms) = raw.mcp_wait_ms {
            if ms > MAX_WAIT.as_millis() as u64 {
                return Err(format!("service.mcp-wait-ms must be at most {}", MAX_WAIT.as_millis()));
            }
            s.mcp_wait = Duration::from_millis(ms);
        }
        if let Some(origins) = &raw.allowed_origins {
            s.allowed_origins = origins.clone();
        }
        if let Some(hosts) = &raw.allowed_hosts {
            s.allowed_hosts = hosts.clone();
        }
        if let Some(origins) = &raw.console_origins {
            for o in origins {
                let well_formed = o.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '@', '*'])
                });
                if !well_formed {
                    return Err(format!(
                        "service.console-origins: {o:?} must be an origin, scheme://host[:port] (http or https, no path), \
                         e.g. \"https://airlock.example\""
                    ));
                }
            }
            s.console_origins = origins.clone();
        }
        if let Some(list) = &raw.metrics_readers {
            s.metrics_readers = list
                .iter()
                .map(|r| AccessRule::parse(r).map_err(|e| format!("service.metrics-readers: {r:?}: {e}")))
                .collect::<Result<_, _>>()?;
        }
        if let Some(listen) = &raw.metrics_listen {
            let addr: SocketAddr = listen
                .parse()
                .map_err(|_| format!("service.metrics-listen {listen:?} must be IP:PORT, e.g. 127.0.0.1:9420"))?;
            if addr == s.listen {
                return Err(format!(
                    "service.metrics-listen {listen:?} is the service's own address: choose another port"
                ));
            }
            s.metrics_listen = Some(addr);
        }
        if let Some(url) = &raw.public_url {
            let url = url.trim_end_matches('/');
            // Kept as rebuilt from its parts: scheme and authority only.
            let parsed = url
                .parse::<axum::http::Uri>()
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some_and(|a| {
                            // A port that is not a u16 reads as no port at all.
                            let after_host = a.as_str().rsplit_once(']').map_or(a.as_str(), |(_, rest)| rest);
                            !a.as_str().contains('@') && (!after_host.contains(':') || a.port_u16().is_some())
                        })
                        && u.path_and_query()
                            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                        && url.is_ascii()
                        && !url.contains(['#', '?'])
                })
                .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)));
            let Some(parsed) = parsed else {
                return Err(format!(
                    "service.public-url {url:?} must be scheme://host[:port] (http or https, no path), e.g. \"https://airlock.example\""
                ));
            };
            s.public_url = Some(parsed);
        }
        if let Some(list) = &raw.audit_readers {
            s.audit_readers = list
                .iter()
                .map(|r| AccessRule::parse(r).map_err(|e| format!("service.audit-readers: {r:?}: {e}")))
                .collect::<Result<_, _>>()?;
        }
        Ok(s)
    }
}

/// Requests per second and burst, per identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 200.0,
            burst: 400.0,
        }
    }
}
