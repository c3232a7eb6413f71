//! The service's whole HTTP surface, assembled: the documented API
//! (`super::openapi::documented`), the console, MCP's endpoint behind its
//! guard, JSON answers for unknown routes and methods, the body limit, the
//! gate every request passes first, and the access log around it.

use super::Service;
use super::error::ApiError;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use std::sync::Arc;

type Shared = Arc<Service>;

pub fn router(service: Shared) -> Router {
    let limit = service.settings.max_body_bytes;
    // Rendered now, so a document that cannot be is found at start.
    std::sync::LazyLock::force(&super::openapi::BASE);
    let (documented, _) = super::openapi::documented().split_for_parts();
    documented
        .merge(super::console::router())
        .merge(
            Router::new()
                .nest_service("/mcp", super::mcp::http_service(service.clone()))
                .layer(axum::middleware::from_fn_with_state(service.clone(), super::mcp::guard)),
        )
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method; see /v1/openapi.json",
            )
        })
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(DefaultBodyLimit::max(limit))
        // Outermost: every request is authenticated on its head before its
        // body is read (see `gate`).
        .layer(axum::middleware::from_fn_with_state(service.clone(), super::gate::gate))
        // Around the gate: its refusals are logged and counted too.
        .layer(axum::middleware::from_fn(super::observe::access))
        .with_state(service)
}
