//! `airlock serve`: the long-running service. An HTTP API (axum) for agents
//! and reviewers, bearer-token authenticated, over the same request path as
//! the command line: identity → policy → approval → run → audit.
//!
//! - Listens on loopback unless `[service] listen` says otherwise.
//! - Every request is authenticated on its head before its body is read
//!   ([`gate`]); request bodies are capped (`max-body-bytes`) and must
//!   arrive in time (`body-timeout-ms`), request heads too
//!   (`header-timeout-ms`), open connections are capped
//!   (`max-connections`), connections that have not authenticated more
//!   tightly, per source address and in all ([`unauthenticated`]), each
//!   identity is rate limited (`rate-limit`), every error is structured.
//! - Invocations can wait for their result (up to `wait-ms`) or be
//!   submitted and fetched later; either way they are stored, so their
//!   status survives the request that made them.
//! - A sweeper expires overdue approval requests and runs invocations
//!   approved from another process (the CLI).

pub mod api;
pub mod auth;
pub mod connections;
pub mod console;
pub mod error;
pub mod gate;
pub mod mcp;
pub mod model;
pub mod observe;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod unauthenticated;

use crate::error::Error;
use crate::identity::{AccessRule, Caller};
use crate::policy::Policy;
use crate::runtime::Runtime;
use ratelimit::{RateLimit, RateLimiter};
use std::net::SocketAddr;
use std::sync::Arc;
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

/// The running service: the runtime with every action loaded, and the
/// request-level machinery around it.
pub struct Service {
    pub runtime: Runtime,
    pub policy: Policy,
    pub settings: ServiceSettings,
    pub limiter: RateLimiter,
    /// Reviewer console sessions.
    pub sessions: console::Sessions,
    /// Console sign-in attempts, per source address.
    pub sign_in_limiter: RateLimiter,
    /// Set by a graceful stop: claim nothing new.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Which identity opened each streamable-HTTP MCP session.
    pub mcp_sessions: mcp::SessionOwners,
}

impl Service {
    /// Load every action of `policy` (refusals are logged and the action is
    /// left out) and open the audit log and the database.
    pub fn load(policy: Policy) -> Result<Service, Error> {
        let settings = policy.service.clone();
        let mut runtime = Runtime::new(&policy.runtime)?;
        let audit = runtime.audit()?;
        let approvals = runtime.approvals()?;
        if !policy.webhooks.is_empty() {
            let needs_vault = policy
                .webhooks
                .iter()
                .any(|w| w.url_secret.is_some() || w.hmac_secret.is_some());
            let vault = if needs_vault { Some(runtime.open_vault()?) } else { None };
            let notifier = crate::notify::Notifier::start(&policy.webhooks, vault.as_deref(), audit)?;
            approvals.set_notifier(notifier);
        }
        for (name, loaded) in runtime.load_all(&policy) {
            match loaded {
                Ok(a) => tracing::info!(action = %name, digest = %a.manifest.digest, "action loaded"),
                Err(e) => tracing::warn!(action = %name, "action refused: {e}"),
            }
        }
        runtime.commit_pins()?;
        Ok(Service {
            limiter: RateLimiter::new(settings.rate_limit, "identity"),
            runtime,
            policy,
            settings,
            sessions: console::Sessions,
            sign_in_limiter: RateLimiter::new(gate::SIGN_IN_RATE, "sign-in"),
            stopping: std::sync::atomic::AtomicBool::new(false),
            mcp_sessions: mcp::SessionOwners::default(),
        })
    }

    /// Who `bearer` is; every request looks the token up again, so a
    /// revoked token stops working at once.
    pub async fn authenticate(&self, bearer: &str) -> Result<Caller, Error> {
        crate::identity::authenticate_async(self.runtime.store()?.as_ref(), bearer).await
    }

    /// Record a reviewer's decision; an invocation it approves starts in
    /// the background (its status is at `/v1/invocations/{id}` and in the
    /// console), so the reviewer's request does not wait for the action.
    pub async fn decide(
        self: &Arc<Self>,
        id: &str,
        caller: &Caller,
        verdict: crate::store::Verdict,
        reason: Option<&str>,
        binding: Option<&str>,
    ) -> Result<crate::store::ApprovalRecord, Error> {
        use crate::store::{ApprovalKind, ApprovalState};
        let approval = self
            .runtime
            .record_decision(id, caller, verdict, reason, binding)
            .await?;
        if approval.kind == ApprovalKind::Invocation && approval.state == ApprovalState::Approved {
            let service = self.clone();
            let invocation = approval.invocation.clone();
            tokio::spawn(async move {
                if let Err(e) = service.runtime.run_approved(&invocation).await {
                    tracing::warn!(%invocation, "approved invocation did not run: {e}");
                }
            });
        }
        Ok(approval)
    }

    pub fn may_read_audit(&self, caller: &Caller) -> bool {
        self.settings.audit_readers.iter().any(|r| caller.matches(r))
    }
}

/// How long a graceful stop waits for the runs still going.
const RUNS_DEADLINE: Duration = Duration::from_secs(30);

/// How often the service looks for airlock processes that ended
/// mid-invocation (see [`Runtime::recover`]), and waits after a failed try.
const RECOVER_EVERY: Duration = Duration::from_secs(2);
const RECOVER_RETRY: Duration = Duration::from_secs(30);

/// The W3C trace context of an HTTP request: its `traceparent` (none when
/// it carries several, which W3C counts as invalid) and its `tracestate`
/// (several headers joined, as W3C says). Both are checked when they
/// become an [`crate::request::Intent`].
pub(crate) fn trace_headers(headers: &axum::http::HeaderMap) -> (Option<&str>, Option<String>) {
    let mut parents = headers.get_all("traceparent").iter();
    let traceparent = match (parents.next(), parents.next()) {
        (Some(one), None) => one.to_str().ok(),
        _ => None,
    };
    let mut state = headers.get_all("tracestate").iter().filter_map(|v| v.to_str().ok());
    let tracestate = state.next().map(|first| {
        state.fold(first.to_string(), |mut all, more| {
            all.push(',');
            all.push_str(more);
            all
        })
    });
    (traceparent, tracestate)
}

/// Expire overdue requests and run invocations approved elsewhere, every
/// half second, and close what ended processes left open, every
/// [`RECOVER_EVERY`], for as long as the returned task lives.
pub fn spawn_sweeper(service: Arc<Service>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut recover_at = tokio::time::Instant::now() + RECOVER_EVERY;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if tokio::time::Instant::now() >= recover_at {
                let s = service.clone();
                let recovered = tokio::task::spawn_blocking(move || {
                    // Usage windows over a day past their end are history.
                    let day_ago = crate::time::now_micros().saturating_sub(86_400_000_000);
                    if let Err(e) = s
                        .runtime
                        .store()
                        .and_then(|st| Ok(st.prune_usage(i64::try_from(day_ago).unwrap_or(0))?))
                    {
                        tracing::warn!("pruning usage windows failed: {e}");
                    }
                    s.runtime.recover()
                })
                .await;
                recover_at = tokio::time::Instant::now()
                    + match recovered {
                        Ok(Ok(_)) => RECOVER_EVERY,
                        Ok(Err(e)) => {
                            tracing::warn!("{e}");
                            RECOVER_RETRY
                        }
                        Err(e) => {
                            tracing::warn!("recovery failed: {e}");
                            RECOVER_RETRY
                        }
                    };
            }
            if let Err(e) = service.runtime.sweep_approvals().await {
                tracing::warn!("approval sweep failed: {e}");
            }
            if service.stopping.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            if let Err(e) = service.runtime.run_released().await {
                tracing::warn!("running approved invocations failed: {e}");
            }
        }
    })
}

/// Run the service until `shutdown` resolves.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let sweeper = spawn_sweeper(service.clone());
    let limits = connections::ConnectionLimits {
        header_timeout: service.settings.header_timeout,
        max_connections: service.settings.max_connections,
        max_unauthenticated: service.settings.max_unauthenticated,
        max_unauthenticated_per_source: service.settings.max_unauthenticated_per_source,
    };
    let app = routes::router(service.clone());
    let metrics = match service.settings.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!(
                    "cannot listen on {addr} (service.metrics-listen): {e}; choose a free address"
                ))
            })?;
            tracing::info!(address = %addr, "serving /metrics without a token");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let router = observe::metrics_router(service.clone());
            let task = tokio::spawn(connections::serve(listener, router, limits, async {
                let _ = stopped.await;
            }));
            Some((stop, task))
        }
    };
    let result = connections::serve(listener, app, limits, shutdown).await;
    if let Some((stop, task)) = metrics {
        let _ = stop.send(());
        let _ = task.await;
    }
    // Runs still going (answered with 202, or started by the sweeper)
    // finish before the node stops, up to RUNS_DEADLINE; nothing new is
    // claimed meanwhile.
    service.stopping.store(true, std::sync::atomic::Ordering::Release);
    // Instances waiting for a decision here end now (their requests fail,
    // saying the node shuts down) rather than wait out `wait-secs`.
    if let Some(approvals) = service.runtime.approvals_opened()
        && let Err(e) = approvals.fail_own_requests().await
    {
        tracing::warn!("could not fail this node's waiting requests: {e}");
    }
    let deadline = tokio::time::Instant::now() + RUNS_DEADLINE;
    while service
        .runtime
        .audit_opened()
        .is_some_and(|a| a.lease().in_flight() > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweeper.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_url(url: &str) -> Result<Option<String>, String> {
        let raw = RawServiceSettings {
            public_url: Some(url.into()),
            ..RawServiceSettings::default()
        };
        ServiceSettings::resolve(&raw).map(|s| s.public_url)
    }

    #[test]
    fn a_public_url_is_a_scheme_and_an_authority_only() {
        assert_eq!(
            public_url("https://airlock.example/").unwrap().as_deref(),
            Some("https://airlock.example")
        );
        assert_eq!(
            public_url("http://10.0.0.5:8443").unwrap().as_deref(),
            Some("http://10.0.0.5:8443")
        );
        for bad in [
            "https://airlock.example#x",
            "https://airlock.example/#x",
            "https://airlock.example/mcp",
            "https://airlock.example?x=1",
            "https://user@airlock.example",
            "ftp://airlock.example",
            "airlock.example",
            "https://airlöck.example",
            "https://airlock.example:99999",
        ] {
            assert!(public_url(bad).is_err(), "{bad}");
        }
    }
}
