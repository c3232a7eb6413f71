//! What operators watch: `/metrics` (see [`crate::metrics`]) and the
//! access log.
//!
//! - `GET /metrics` on the service's address needs a bearer token whose
//!   identity matches `service.metrics-readers` (default
//!   `["role:monitoring"]`), like any other route that is not public.
//! - `service.metrics-listen` adds a second address that answers only
//!   `GET /metrics`, without a token: for a scraper on a private network
//!   that should hold no airlock credential. Bind it to an address only
//!   that network reaches.
//! - Every request answered (on either address) is one access-log line
//!   (target `airlock::access`: method, path without its query, status,
//!   time, peer) and is counted in `airlock_http_requests_total`.

use super::Service;
use super::auth::Authenticated;
use super::connections::Peer;
use super::error::ApiError;
use crate::metrics;
use crate::store::ApprovalState;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// How often the values read from the store are read again, however
/// often the metrics are scraped (by however many scrapers).
const STORE_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// When the store was last read for the metrics (one reader at a time).
static STORE_READ: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Prometheus metrics in the OpenMetrics text format
///
/// On the service's address, for `service.metrics-readers` (default
/// `role:monitoring`); `service.metrics-listen` serves them without a
/// token on an address of their own.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", security(("bearer" = [])),
    responses((status = 200, description = "the metrics", content_type = "application/openmetrics-text", body = String)))]
pub async fn scrape(State(service): State<Arc<Service>>, Authenticated(caller): Authenticated) -> Response {
    if !service.settings.metrics_readers.iter().any(|r| caller.matches(r)) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reading metrics needs an identity in service.metrics-readers (default role:monitoring)",
        )
        .into_response();
    }
    exposition(&service).await
}

/// The metrics text, with the values read at scrape time brought up to
/// date first.
async fn exposition(service: &Arc<Service>) -> Response {
    let due = {
        let mut last = STORE_READ.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= STORE_READ_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if due {
        let s = service.clone();
        let pending =
            tokio::task::spawn_blocking(move || s.runtime.store().ok()?.count_approvals(ApprovalState::Pending).ok())
                .await
                .ok()
                .flatten();
        // A store that cannot be read leaves the last value; the store's
        // own failures show in its operation counts.
        if let Some(n) = pending {
            metrics::metrics()
                .approvals_pending
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}

/// The router of `service.metrics-listen`: `GET /metrics`, no token.
pub fn metrics_router(service: Arc<Service>) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(|State(service): State<Arc<Service>>| async move { exposition(&service).await }),
        )
        .fallback(|| async { ApiError::not_found("this address serves only GET /metrics") })
        .layer(axum::middleware::from_fn(access))
        .with_state(service)
}

/// Which part of the service a path belongs to (the `surface` label).
fn surface(path: &str) -> &'static str {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/v1") {
        "api"
    } else if under("/mcp") {
        "mcp"
    } else if under("/console") {
        "console"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "other"
    }
}

/// Log and count every request, outermost (its time includes the gate).
pub async fn access(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let peer = request.extensions().get::<Peer>().map(|p| p.addr);
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status();
    let surface = surface(&path);
    let m = metrics::metrics();
    m.requests
        .get_or_create(&metrics::RequestLabels {
            surface: Cow::Borrowed(surface),
            status: Cow::Owned(status.as_u16().to_string()),
        })
        .inc();
    m.request_seconds
        .get_or_create(&metrics::SurfaceLabels {
            surface: Cow::Borrowed(surface),
        })
        .observe(took.as_secs_f64());
    tracing::info!(
        target: "airlock::access",
        %method,
        path = %path,
        status = status.as_u16(),
        duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        peer = peer.map(tracing::field::display),
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::surface;

    #[test]
    fn surfaces_match_whole_path_segments() {
        assert_eq!(surface("/v1/actions"), "api");
        assert_eq!(surface("/v1x"), "other");
        assert_eq!(surface("/mcp"), "mcp");
        assert_eq!(surface("/console/audit"), "console");
        assert_eq!(surface("/metrics"), "metrics");
        assert_eq!(surface("/metrics/x"), "other");
    }
}
