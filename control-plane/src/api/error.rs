//! The one place where errors become HTTP statuses. Every match is exhaustive, down to the
//! domain errors' variants, so a new variant must be given a status; 5xx are logged and never
//! leak internals to clients.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::access::AccessError;
use crate::artifacts::ArtifactError;
use crate::deployment::DeployError;
use crate::drift::DriftQueryError;
use crate::experiments::ExperimentError;
use crate::rollout::actions::RolloutError;
use crate::store::StoreError;
use crate::tracking::TrackingError;
use crate::uploads::UploadError;
use crate::versions::VersionError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (a parameter the handler could not read).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    #[error(transparent)]
    Drift(#[from] DriftQueryError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Tracking(#[from] TrackingError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// An HTTP status and the machine-readable code that goes with it.
pub type Status = (StatusCode, &'static str);

const BAD_REQUEST: Status = (StatusCode::BAD_REQUEST, "bad_request");
const NOT_FOUND: Status = (StatusCode::NOT_FOUND, "not_found");
const CONFLICT: Status = (StatusCode::CONFLICT, "conflict");
const INTERNAL: Status = (StatusCode::INTERNAL_SERVER_ERROR, "internal");

pub fn store_status(error: &StoreError) -> Status {
    match error {
        StoreError::NotFound(_) => NOT_FOUND,
        StoreError::Conflict(_) => CONFLICT,
        StoreError::Invalid(_) => BAD_REQUEST,
        StoreError::Database(_) | StoreError::Migrate(_) | StoreError::UnsupportedUrl(_) | StoreError::Corrupt(_) => INTERNAL,
    }
}

pub fn version_status(error: &VersionError) -> Status {
    match error {
        VersionError::InvalidModelName(_) | VersionError::InvalidAlias(_) | VersionError::NotDeployable { .. } => BAD_REQUEST,
        VersionError::NotFound { .. }
        | VersionError::NoSuchModel(_)
        | VersionError::NoSuchAlias { .. }
        | VersionError::NoSuchProfile(_) => NOT_FOUND,
        VersionError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "model_refused"),
        VersionError::Store(error) => store_status(error),
        VersionError::Internal(_) => INTERNAL,
    }
}

pub fn deploy_status(error: &DeployError) -> Status {
    match error {
        DeployError::VersionOrAlias | DeployError::DeviceOrSelector | DeployError::InvalidDeviceId(_) | DeployError::InvalidSelector(_) => {
            BAD_REQUEST
        }
        DeployError::Version(error) => version_status(error),
        DeployError::Store(error) => store_status(error),
    }
}

pub fn rollout_status(error: &RolloutError) -> Status {
    match error {
        RolloutError::NotFound(_) | RolloutError::UnknownAction(_) => NOT_FOUND,
        RolloutError::InvalidPolicy(_) | RolloutError::VersionOrAlias | RolloutError::NoDevices => BAD_REQUEST,
        RolloutError::AlreadyRunning { .. } | RolloutError::NotNow { .. } => CONFLICT,
        RolloutError::Version(error) => version_status(error),
        RolloutError::Store(error) => store_status(error),
    }
}

pub fn experiment_status(error: &ExperimentError) -> Status {
    match error {
        ExperimentError::SplitNotFound(_) => NOT_FOUND,
        ExperimentError::TooFewVariants
        | ExperimentError::InvalidSelector(_)
        | ExperimentError::WinnerOrRule
        | ExperimentError::NotAVariant { .. }
        | ExperimentError::ShadowCohort(_) => BAD_REQUEST,
        ExperimentError::NoWinner(_) => CONFLICT,
        ExperimentError::Version(error) => version_status(error),
        ExperimentError::Rollout(error) => rollout_status(error),
        ExperimentError::Store(error) => store_status(error),
    }
}

pub fn drift_status(error: &DriftQueryError) -> Status {
    match error {
        DriftQueryError::NoProfile(..) => NOT_FOUND,
        DriftQueryError::BadProfile(..) => INTERNAL,
        DriftQueryError::Store(error) => store_status(error),
    }
}

pub fn artifact_status(error: &ArtifactError) -> Status {
    match error {
        ArtifactError::InvalidPath { .. } | ArtifactError::RootNotDeletable | ArtifactError::BadModelFile { .. } => BAD_REQUEST,
        ArtifactError::NotFound(_) => NOT_FOUND,
        ArtifactError::Io { .. } => INTERNAL,
    }
}

pub fn tracking_status(error: &TrackingError) -> Status {
    match error {
        TrackingError::InvalidQuery(_) => BAD_REQUEST,
        TrackingError::Store(error) => store_status(error),
    }
}

pub fn upload_status(error: &UploadError) -> Status {
    match error {
        UploadError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        UploadError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
        UploadError::Body(_) => BAD_REQUEST,
        UploadError::Io(_) => INTERNAL,
    }
}

pub fn access_status(error: &AccessError) -> Status {
    match error {
        AccessError::Unauthenticated | AccessError::Expired(_) | AccessError::Revoked(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        AccessError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        AccessError::Invalid(_) => BAD_REQUEST,
        AccessError::NotFound(_) => NOT_FOUND,
        AccessError::Store(error) => store_status(error),
    }
}

impl ApiError {
    pub fn status(&self) -> Status {
        match self {
            ApiError::BadRequest(_) => BAD_REQUEST,
            ApiError::NotFound(_) => NOT_FOUND,
            ApiError::Version(error) => version_status(error),
            ApiError::Deploy(error) => deploy_status(error),
            ApiError::Rollout(error) => rollout_status(error),
            ApiError::Experiment(error) => experiment_status(error),
            ApiError::Drift(error) => drift_status(error),
            ApiError::Artifact(error) => artifact_status(error),
            ApiError::Tracking(error) => tracking_status(error),
            ApiError::Upload(error) => upload_status(error),
            ApiError::Access(error) => access_status(error),
            ApiError::Store(error) => store_status(error),
            ApiError::Internal(_) => INTERNAL,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(format!("{error:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; see the plane's log".to_string()
        } else {
            self.to_string()
        };
        let mut response = (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}
