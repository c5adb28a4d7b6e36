//! API errors: each says which field and why, and maps to one HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is invalid; nothing was written.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// 404
    #[error("no {kind} named {name:?}")]
    NotFound { kind: &'static str, name: String },
    /// 409: valid alone, but conflicts with what exists; nothing was written.
    #[error("{field}: {reason}")]
    Conflict { field: String, reason: String },
    /// 401: a write without the configured bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// 405: this service does not own the state (Kubernetes mode: the
    /// cluster does); the text says where to write instead.
    #[error("{0}")]
    ReadOnly(String),
    /// 500: the store failed; nothing was acknowledged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn conflict(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Conflict {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &'static str, name: &str) -> Self {
        ApiError::NotFound {
            kind,
            name: name.to_owned(),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { field, .. } | ApiError::Conflict { field, .. } => Some(field),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ReadOnly(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of every error: `{"error": {"field": ..., "reason": ...}}`.
#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    reason: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = match &self {
            ApiError::Invalid { reason, .. } | ApiError::Conflict { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        let body = Body {
            error: Detail {
                field: self.field(),
                reason,
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::ReadOnly(_)) {
            // RFC 9110: a 405 lists the methods that do work.
            response.headers_mut().insert(
                axum::http::header::ALLOW,
                axum::http::HeaderValue::from_static("GET, HEAD"),
            );
        }
        response
    }
}
