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
pub mod detached;
pub mod error;
pub mod gate;
pub mod mcp;
pub mod model;
pub mod observe;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod stdio;
pub mod unauthenticated;

use crate::error::Error;
use crate::identity::Caller;
use crate::policy::Policy;
use crate::runtime::Runtime;
use ratelimit::RateLimiter;
use std::sync::Arc;
use std::time::Duration;

pub use crate::policy::service::*;

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
