//! The one place where errors become HTTP statuses. The match is exhaustive, so a new
//! variant must be given a status; 5xx are logged and never leak internals to clients.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::registry::ModelError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("model refused: {0}")]
    ModelRefused(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(format!("{error:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::ModelRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "model_refused"),
            ApiError::Store(StoreError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Store(StoreError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Store(StoreError::Invalid(_)) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Store(StoreError::Database(_) | StoreError::Migrate(_) | StoreError::UnsupportedUrl(_) | StoreError::Corrupt(_))
            | ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; see the plane's log".to_string()
        } else {
            self.to_string()
        };
        (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
    }
}
