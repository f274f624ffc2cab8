//! The MLflow-compatible tracking and registry API (`/api/2.0/mlflow`, the artifact proxy
//! `/api/2.0/mlflow-artifacts`), by area: `experiments`, `runs`, `registry`, `artifacts`. It
//! only translates: the store and its rules are the native API's (`tracking`, `versions`,
//! `artifacts`). GET requests carry their fields in the query string, others a JSON body;
//! errors are MLflow's `{"error_code", "message"}` with the codes its client branches on.

mod artifacts;
mod experiments;
mod registry;
mod runs;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::error::ApiError;
use super::guard::{Access, Dialect, RouteSpec};
use crate::PlaneCore;
use crate::access::{Area, Need};
use crate::artifacts::ArtifactError;
use crate::store::StoreError;
use crate::tracking::TrackingError;
use crate::versions::VersionError;

#[derive(Debug)]
pub struct MlflowError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

pub(super) fn invalid(message: impl Into<String>) -> MlflowError {
    MlflowError { status: StatusCode::BAD_REQUEST, code: "INVALID_PARAMETER_VALUE", message: message.into() }
}

pub(super) fn not_found(message: impl Into<String>) -> MlflowError {
    MlflowError { status: StatusCode::NOT_FOUND, code: "RESOURCE_DOES_NOT_EXIST", message: message.into() }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(message = %self.message, "MLflow request failed");
        }
        (self.status, Json(json!({ "error_code": self.code, "message": self.message }))).into_response()
    }
}

impl From<ApiError> for MlflowError {
    fn from(error: ApiError) -> Self {
        let (status, _) = error.status();
        match status {
            StatusCode::UNAUTHORIZED => MlflowError { status, code: "UNAUTHENTICATED", message: error.to_string() },
            StatusCode::NOT_FOUND => not_found(error.to_string()),
            StatusCode::CONFLICT => {
                MlflowError { status: StatusCode::BAD_REQUEST, code: "RESOURCE_ALREADY_EXISTS", message: error.to_string() }
            }
            status if status.is_server_error() => {
                tracing::error!(%error, "MLflow request failed");
                MlflowError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "INTERNAL_ERROR",
                    message: "internal error; see the plane's log".into(),
                }
            }
            _ => invalid(error.to_string()),
        }
    }
}

impl From<StoreError> for MlflowError {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<VersionError> for MlflowError {
    fn from(error: VersionError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<ArtifactError> for MlflowError {
    fn from(error: ArtifactError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<TrackingError> for MlflowError {
    fn from(error: TrackingError) -> Self {
        ApiError::from(error).into()
    }
}

pub(super) type MlflowResult = Result<Json<Value>, MlflowError>;

/// Fields of a request: the query string for GET (and DELETE without a body), else JSON.
pub(super) fn fields<T: DeserializeOwned>(method: &Method, query: &HashMap<String, String>, body: &Bytes) -> Result<T, MlflowError> {
    if *method == Method::GET || (body.is_empty() && !query.is_empty()) {
        let value = Value::Object(query.iter().map(|(key, value)| (key.clone(), Value::String(value.clone()))).collect());
        return serde_json::from_value(value).map_err(|error| invalid(format!("invalid request parameters: {error}")));
    }
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|error| MlflowError {
        status: StatusCode::BAD_REQUEST,
        code: "INVALID_PARAMETER_VALUE",
        message: format!("request body is not valid for this endpoint: {error}"),
    })
}

/// A request's fields: from the query string for GET (and for a DELETE without a body),
/// else from the JSON body. Malformed input is MLflow's INVALID_PARAMETER_VALUE.
pub(super) struct Fields<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Fields<T> {
    type Rejection = MlflowError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let query: HashMap<String, String> =
            Query::<HashMap<String, String>>::try_from_uri(request.uri()).map(|Query(query)| query).unwrap_or_default();
        let body = Bytes::from_request(request, state).await.map_err(|error| invalid(format!("reading the request body: {error}")))?;
        fields(&method, &query, &body).map(Fields)
    }
}

/// Protobuf JSON sends int64 as a string or a number.
pub(super) fn flexible_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|value| value as i64))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("not an integer")),
        Some(Value::String(text)) => text.parse::<i64>().map(Some).map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!("expected an integer, got {other}"))),
    }
}

/// Doubles as numbers or as "NaN", "Infinity", "-Infinity".
pub(super) fn flexible_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => Ok(number.as_f64()),
        Some(Value::String(text)) => match text.as_str() {
            "NaN" => Ok(Some(f64::NAN)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            other => other.parse::<f64>().map(Some).map_err(serde::de::Error::custom),
        },
        Some(other) => Err(serde::de::Error::custom(format!("expected a number, got {other}"))),
    }
}

pub(super) fn json_f64(value: f64) -> Value {
    if value.is_nan() {
        json!("NaN")
    } else if value.is_infinite() {
        json!(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(value)
    }
}

#[derive(Deserialize, Default)]
pub(super) struct KeyValue {
    pub(super) key: String,
    #[serde(default)]
    pub(super) value: String,
}

pub(super) fn pairs_json(pairs: &[(String, String)]) -> Vec<Value> {
    pairs.iter().map(|(key, value)| json!({ "key": key, "value": value })).collect()
}

pub(super) fn now_ms() -> i64 {
    fleetml_shared::now_ms() as i64
}

/// Every MLflow route and what it asks of a token: reads for any token allowed in the tracking
/// area (a `tracking`-scoped one among them), changes for operators.
pub fn routes() -> Vec<RouteSpec> {
    use Method as M;
    let read = Access::Read;
    let operate = |action| Access::Change { need: Need::Operate, action };
    let tracking = |method: Method, path, access, handler: MethodRouter<Arc<PlaneCore>>| RouteSpec {
        method,
        path,
        access,
        area: Area::Tracking,
        dialect: Dialect::Mlflow,
        handler,
    };
    vec![
        tracking(M::POST, "/api/2.0/mlflow/experiments/create", operate("mlflow.experiments.create"), post(experiments::create_experiment)),
        tracking(M::GET, "/api/2.0/mlflow/experiments/get", read, get(experiments::get_experiment)),
        tracking(M::GET, "/api/2.0/mlflow/experiments/get-by-name", read, get(experiments::get_experiment_by_name)),
        tracking(M::POST, "/api/2.0/mlflow/experiments/search", read, post(experiments::search_experiments)),
        tracking(M::GET, "/api/2.0/mlflow/experiments/search", read, get(experiments::search_experiments)),
        tracking(M::GET, "/api/2.0/mlflow/experiments/list", read, get(experiments::search_experiments)),
        tracking(M::POST, "/api/2.0/mlflow/experiments/delete", operate("mlflow.experiments.delete"), post(experiments::delete_experiment)),
        tracking(
            M::POST,
            "/api/2.0/mlflow/experiments/restore",
            operate("mlflow.experiments.restore"),
            post(experiments::restore_experiment),
        ),
        tracking(
            M::POST,
            "/api/2.0/mlflow/experiments/set-experiment-tag",
            operate("mlflow.experiments.set_experiment_tag"),
            post(experiments::set_experiment_tag),
        ),
        tracking(M::POST, "/api/2.0/mlflow/runs/create", operate("mlflow.runs.create"), post(runs::create_run)),
        tracking(M::GET, "/api/2.0/mlflow/runs/get", read, get(runs::get_run)),
        tracking(M::POST, "/api/2.0/mlflow/runs/update", operate("mlflow.runs.update"), post(runs::update_run)),
        tracking(M::POST, "/api/2.0/mlflow/runs/delete", operate("mlflow.runs.delete"), post(runs::delete_run)),
        tracking(M::POST, "/api/2.0/mlflow/runs/restore", operate("mlflow.runs.restore"), post(runs::restore_run)),
        tracking(M::POST, "/api/2.0/mlflow/runs/search", read, post(runs::search_runs)),
        tracking(M::GET, "/api/2.0/mlflow/runs/search", read, get(runs::search_runs)),
        tracking(M::POST, "/api/2.0/mlflow/runs/log-metric", operate("mlflow.runs.log_metric"), post(runs::log_metric)),
        tracking(M::POST, "/api/2.0/mlflow/runs/log-parameter", operate("mlflow.runs.log_parameter"), post(runs::log_parameter)),
        tracking(M::POST, "/api/2.0/mlflow/runs/set-tag", operate("mlflow.runs.set_tag"), post(runs::set_tag)),
        tracking(M::POST, "/api/2.0/mlflow/runs/delete-tag", operate("mlflow.runs.delete_tag"), post(runs::delete_tag)),
        tracking(M::POST, "/api/2.0/mlflow/runs/log-batch", operate("mlflow.runs.log_batch"), post(runs::log_batch)),
        tracking(M::POST, "/api/2.0/mlflow/runs/log-model", operate("mlflow.runs.log_model"), post(accept_and_ignore)),
        tracking(M::POST, "/api/2.0/mlflow/runs/log-inputs", operate("mlflow.runs.log_inputs"), post(accept_and_ignore)),
        tracking(M::GET, "/api/2.0/mlflow/metrics/get-history", read, get(runs::metric_history)),
        tracking(M::POST, "/api/2.0/mlflow/logged-models/search", read, post(search_logged_models)),
        tracking(
            M::POST,
            "/api/2.0/mlflow/registered-models/create",
            operate("mlflow.registered_models.create"),
            post(registry::create_registered_model),
        ),
        tracking(M::GET, "/api/2.0/mlflow/registered-models/get", read, get(registry::get_registered_model)),
        tracking(M::GET, "/api/2.0/mlflow/registered-models/search", read, get(registry::search_registered_models)),
        tracking(
            M::PATCH,
            "/api/2.0/mlflow/registered-models/update",
            operate("mlflow.registered_models.update"),
            axum::routing::patch(registry::update_registered_model),
        ),
        tracking(
            M::POST,
            "/api/2.0/mlflow/registered-models/set-tag",
            operate("mlflow.registered_models.set_tag"),
            post(registry::set_registered_model_tag),
        ),
        tracking(M::POST, "/api/2.0/mlflow/registered-models/get-latest-versions", read, post(registry::get_latest_versions)),
        tracking(M::GET, "/api/2.0/mlflow/registered-models/get-latest-versions", read, get(registry::get_latest_versions)),
        tracking(
            M::POST,
            "/api/2.0/mlflow/registered-models/alias",
            operate("mlflow.registered_models.set_alias"),
            post(registry::set_alias),
        ),
        tracking(
            M::DELETE,
            "/api/2.0/mlflow/registered-models/alias",
            operate("mlflow.registered_models.delete_alias"),
            axum::routing::delete(registry::delete_alias),
        ),
        tracking(M::GET, "/api/2.0/mlflow/registered-models/alias", read, get(registry::get_by_alias)),
        tracking(
            M::POST,
            "/api/2.0/mlflow/model-versions/create",
            operate("mlflow.model_versions.create"),
            post(registry::create_model_version),
        ),
        tracking(M::GET, "/api/2.0/mlflow/model-versions/get", read, get(registry::get_model_version)),
        tracking(M::GET, "/api/2.0/mlflow/model-versions/search", read, get(registry::search_model_versions)),
        tracking(
            M::PATCH,
            "/api/2.0/mlflow/model-versions/update",
            operate("mlflow.model_versions.update"),
            axum::routing::patch(registry::update_model_version),
        ),
        tracking(
            M::POST,
            "/api/2.0/mlflow/model-versions/set-tag",
            operate("mlflow.model_versions.set_tag"),
            post(registry::set_model_version_tag),
        ),
        tracking(M::GET, "/api/2.0/mlflow/model-versions/get-download-uri", read, get(registry::get_download_uri)),
        tracking(M::GET, "/api/2.0/mlflow-artifacts/artifacts", read, get(artifacts::list_artifacts)),
        tracking(M::GET, "/api/2.0/mlflow-artifacts/artifacts/{*path}", read, get(artifacts::download_artifact)),
        tracking(
            M::PUT,
            "/api/2.0/mlflow-artifacts/artifacts/{*path}",
            operate("mlflow.artifacts.upload"),
            axum::routing::put(artifacts::upload_artifact),
        ),
        tracking(
            M::DELETE,
            "/api/2.0/mlflow-artifacts/artifacts/{*path}",
            operate("mlflow.artifacts.delete"),
            axum::routing::delete(artifacts::delete_artifact),
        ),
        tracking(M::GET, "/api/3.0/mlflow/server-info", read, get(server_info)),
        tracking(M::GET, "/api/2.0/mlflow/{*rest}", read, axum::routing::any(unsupported)),
        tracking(M::GET, "/api/3.0/mlflow/{*rest}", read, axum::routing::any(unsupported)),
        tracking(M::GET, "/api/2.0/mlflow-artifacts/{*rest}", read, axum::routing::any(unsupported)),
    ]
}

async fn unsupported(method: Method, UrlPath(rest): UrlPath<String>) -> MlflowError {
    MlflowError {
        status: StatusCode::NOT_FOUND,
        code: "ENDPOINT_NOT_FOUND",
        message: format!("fleetml does not support {method} {rest} of the MLflow API (see docs/mlflow.md)"),
    }
}

async fn accept_and_ignore() -> Json<Value> {
    Json(json!({}))
}

async fn server_info() -> Json<Value> {
    Json(json!({ "store_type": "SqlStore", "workspaces_enabled": false }))
}

async fn search_logged_models() -> Json<Value> {
    Json(json!({ "models": [] }))
}
