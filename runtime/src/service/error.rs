//! Structured JSON errors: every failure is
//! `{"error": {"code": "...", "message": "..."}}` with a fitting status,
//! including requests axum's extractors reject (a malformed body, query
//! string or path), which would otherwise be answered in plain text.

use crate::error::Error;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API failure.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: `unauthenticated`, `forbidden`, ...
    pub code: &'static str,
    pub message: String,
    /// Seconds until a refused request may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = super::model::ErrorBody {
            error: super::model::ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"airlock\""),
            );
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, code) = match &e {
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::UnknownAction { .. } => (StatusCode::NOT_FOUND, "unknown-action"),
            Error::UnknownFunction { .. } => (StatusCode::NOT_FOUND, "unknown-function"),
            Error::Args(_) | Error::ArgsSyntax(_) | Error::NotInvocable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "bad-arguments")
            }
            Error::Usage(_) | Error::Config(_) | Error::InvalidComponent { .. } => {
                (StatusCode::BAD_REQUEST, "bad-request")
            }
            Error::Refused(_) | Error::ApprovalRefused(_) => (StatusCode::CONFLICT, "refused"),
            Error::PendingApproval { .. } => (StatusCode::ACCEPTED, "pending-approval"),
            Error::AuditUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable"),
            Error::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "database-unavailable"),
            Error::AuditTampered(_) => (StatusCode::INTERNAL_SERVER_ERROR, "audit-tampered"),
            Error::Limit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "limit"),
            Error::Cancelled(_) => (StatusCode::CONFLICT, "cancelled"),
            Error::HostCallDenied(_)
            | Error::Exited(_)
            | Error::Trapped(_)
            | Error::Panicked(_)
            | Error::ActionError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "action-failed"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Error::LimitReached { .. } => (StatusCode::TOO_MANY_REQUESTS, "limit-reached"),
        };
        let mut error = ApiError::new(status, code, e.to_string());
        if let Error::LimitReached { retry_after_secs, .. } = e {
            error.retry_after = Some(retry_after_secs);
        }
        error
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::from(Error::from(e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        match e {
            JsonRejection::BytesRejection(b) => ApiError::new(b.status(), "bad-body", b.body_text()),
            other => ApiError::new(StatusCode::BAD_REQUEST, "bad-json", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-query", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        let status = e.status();
        // A path that matched a route but lacks its parameters is our bug,
        // not the client's.
        let code = if status.is_server_error() {
            "internal"
        } else {
            "bad-path"
        };
        ApiError::new(status, code, e.body_text())
    }
}
