//! The MLflow-compatible tracking and registry API (`/api/2.0/mlflow`, the artifact proxy
//! `/api/2.0/mlflow-artifacts`). It only translates: the store and its rules are the native
//! API's. GET requests carry their fields in the query string, others a JSON body; errors
//! are MLflow's `{"error_code", "message"}` with the codes its client branches on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::store::{ExperimentRecord, MetricPoint, ModelVersionRecord, RegisteredModelRecord, RunRecord, RunStatus, RunUpdate, StoreError};
use crate::{PlaneCore, PushOptions};

#[derive(Debug)]
pub struct MlflowError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn invalid(message: impl Into<String>) -> MlflowError {
    MlflowError { status: StatusCode::BAD_REQUEST, code: "INVALID_PARAMETER_VALUE", message: message.into() }
}

fn not_found(message: impl Into<String>) -> MlflowError {
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

impl From<StoreError> for MlflowError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => not_found(what),
            StoreError::Conflict(what) => MlflowError { status: StatusCode::BAD_REQUEST, code: "RESOURCE_ALREADY_EXISTS", message: what },
            StoreError::Invalid(what) => invalid(what),
            StoreError::Database(_) | StoreError::Migrate(_) | StoreError::UnsupportedUrl(_) | StoreError::Corrupt(_) => {
                tracing::error!(%error, "store error in an MLflow request");
                MlflowError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "INTERNAL_ERROR",
                    message: "internal error; see the plane's log".into(),
                }
            }
        }
    }
}

impl From<ApiError> for MlflowError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Store(store_error) => store_error.into(),
            ApiError::NotFound(message) => not_found(message),
            ApiError::Conflict(message) => MlflowError { status: StatusCode::BAD_REQUEST, code: "RESOURCE_ALREADY_EXISTS", message },
            ApiError::BadRequest(message) => invalid(message),
            ApiError::ModelRefused(model_error) => invalid(format!("model refused: {model_error}")),
            ApiError::Unauthorized => MlflowError { status: StatusCode::UNAUTHORIZED, code: "UNAUTHENTICATED", message: error.to_string() },
            ApiError::Internal(message) => {
                tracing::error!(%message, "MLflow request failed");
                MlflowError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "INTERNAL_ERROR",
                    message: "internal error; see the plane's log".into(),
                }
            }
        }
    }
}

type MlflowResult = Result<Json<Value>, MlflowError>;

/// Fields of a request: the query string for GET (and DELETE without a body), else JSON.
fn fields<T: DeserializeOwned>(method: &Method, query: &HashMap<String, String>, body: &Bytes) -> Result<T, MlflowError> {
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
struct Fields<T>(T);

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
fn flexible_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
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
fn flexible_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
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

fn json_f64(value: f64) -> Value {
    if value.is_nan() {
        json!("NaN")
    } else if value.is_infinite() {
        json!(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(value)
    }
}

#[derive(Deserialize, Default)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

fn pairs_json(pairs: &[(String, String)]) -> Vec<Value> {
    pairs.iter().map(|(key, value)| json!({ "key": key, "value": value })).collect()
}

fn now_ms() -> i64 {
    fleetml_shared::now_ms() as i64
}

/// MLflow clients send MLFLOW_TRACKING_TOKEN as a bearer token.
pub async fn require_token(
    State(core): State<Arc<PlaneCore>>,
    headers: axum::http::HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, MlflowError> {
    if super::authorized(&core, &headers).await.map_err(MlflowError::from)? {
        Ok(next.run(request).await)
    } else {
        Err(MlflowError {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHENTICATED",
            message: "missing or invalid bearer token (set MLFLOW_TRACKING_TOKEN)".into(),
        })
    }
}

pub fn router() -> Router<Arc<PlaneCore>> {
    Router::new()
        .route("/api/2.0/mlflow/experiments/create", post(create_experiment))
        .route("/api/2.0/mlflow/experiments/get", get(get_experiment))
        .route("/api/2.0/mlflow/experiments/get-by-name", get(get_experiment_by_name))
        .route("/api/2.0/mlflow/experiments/search", post(search_experiments).get(search_experiments))
        .route("/api/2.0/mlflow/experiments/list", get(search_experiments))
        .route("/api/2.0/mlflow/experiments/delete", post(delete_experiment))
        .route("/api/2.0/mlflow/experiments/restore", post(restore_experiment))
        .route("/api/2.0/mlflow/experiments/set-experiment-tag", post(set_experiment_tag))
        .route("/api/2.0/mlflow/runs/create", post(create_run))
        .route("/api/2.0/mlflow/runs/get", get(get_run))
        .route("/api/2.0/mlflow/runs/update", post(update_run))
        .route("/api/2.0/mlflow/runs/delete", post(delete_run))
        .route("/api/2.0/mlflow/runs/restore", post(restore_run))
        .route("/api/2.0/mlflow/runs/search", post(search_runs).get(search_runs))
        .route("/api/2.0/mlflow/runs/log-metric", post(log_metric))
        .route("/api/2.0/mlflow/runs/log-parameter", post(log_parameter))
        .route("/api/2.0/mlflow/runs/set-tag", post(set_tag))
        .route("/api/2.0/mlflow/runs/delete-tag", post(delete_tag))
        .route("/api/2.0/mlflow/runs/log-batch", post(log_batch))
        .route("/api/2.0/mlflow/runs/log-model", post(accept_and_ignore))
        .route("/api/2.0/mlflow/runs/log-inputs", post(accept_and_ignore))
        .route("/api/2.0/mlflow/metrics/get-history", get(metric_history))
        .route("/api/2.0/mlflow/logged-models/search", post(search_logged_models))
        .route("/api/2.0/mlflow/registered-models/create", post(create_registered_model))
        .route("/api/2.0/mlflow/registered-models/get", get(get_registered_model))
        .route("/api/2.0/mlflow/registered-models/search", get(search_registered_models))
        .route("/api/2.0/mlflow/registered-models/update", axum::routing::patch(update_registered_model))
        .route("/api/2.0/mlflow/registered-models/set-tag", post(set_registered_model_tag))
        .route("/api/2.0/mlflow/registered-models/get-latest-versions", post(get_latest_versions).get(get_latest_versions))
        .route("/api/2.0/mlflow/registered-models/alias", post(set_alias).delete(delete_alias).get(get_by_alias))
        .route("/api/2.0/mlflow/model-versions/create", post(create_model_version))
        .route("/api/2.0/mlflow/model-versions/get", get(get_model_version))
        .route("/api/2.0/mlflow/model-versions/search", get(search_model_versions))
        .route("/api/2.0/mlflow/model-versions/update", axum::routing::patch(update_model_version))
        .route("/api/2.0/mlflow/model-versions/set-tag", post(set_model_version_tag))
        .route("/api/2.0/mlflow/model-versions/get-download-uri", get(get_download_uri))
        .route("/api/2.0/mlflow-artifacts/artifacts", get(list_artifacts))
        .route("/api/2.0/mlflow-artifacts/artifacts/{*path}", get(download_artifact).put(upload_artifact).delete(delete_artifact))
        .route("/api/3.0/mlflow/server-info", get(server_info))
        .route("/api/2.0/mlflow/{*rest}", axum::routing::any(unsupported))
        .route("/api/3.0/mlflow/{*rest}", axum::routing::any(unsupported))
        .route("/api/2.0/mlflow-artifacts/{*rest}", axum::routing::any(unsupported))
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

// ------------------------------------------------------------------ experiments

fn experiment_json(experiment: &ExperimentRecord) -> Value {
    json!({
        "experiment_id": experiment.experiment_id.to_string(),
        "name": experiment.name,
        "artifact_location": experiment.artifact_location,
        "lifecycle_stage": experiment.lifecycle_stage,
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "tags": pairs_json(&experiment.tags),
    })
}

fn parse_experiment_id(text: &str) -> Result<i64, MlflowError> {
    text.parse::<i64>().map_err(|_| invalid(format!("Invalid experiment ID: '{text}'")))
}

async fn experiment(core: &PlaneCore, experiment_id: &str) -> Result<ExperimentRecord, MlflowError> {
    let id = parse_experiment_id(experiment_id)?;
    core.store.get_experiment(id).await?.ok_or_else(|| not_found(format!("No Experiment with id={experiment_id} exists")))
}

#[derive(Deserialize)]
struct CreateExperiment {
    name: Option<String>,
    artifact_location: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateExperiment>) -> MlflowResult {
    let name = request.name.filter(|name| !name.trim().is_empty()).ok_or_else(|| invalid("Invalid experiment name: ''"))?;
    let tags: Vec<(String, String)> = request.tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
    let artifact_location = request.artifact_location.filter(|location| !location.is_empty());
    let id = core.store.create_experiment(&name, artifact_location.as_deref(), &tags, now_ms()).await.map_err(|error| match error {
        StoreError::Conflict(_) => MlflowError {
            status: StatusCode::BAD_REQUEST,
            code: "RESOURCE_ALREADY_EXISTS",
            message: format!("Experiment '{name}' already exists."),
        },
        other => other.into(),
    })?;
    Ok(Json(json!({ "experiment_id": id.to_string() })))
}

#[derive(Deserialize)]
struct ExperimentId {
    experiment_id: Option<String>,
    experiment_name: Option<String>,
}

async fn get_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let id = request.experiment_id.ok_or_else(|| invalid("Missing value for required parameter 'experiment_id'"))?;
    Ok(Json(json!({ "experiment": experiment_json(&experiment(&core, &id).await?) })))
}

async fn get_experiment_by_name(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let name = request.experiment_name.ok_or_else(|| invalid("Missing value for required parameter 'experiment_name'"))?;
    let found = core
        .store
        .get_experiment_by_name(&name)
        .await?
        .ok_or_else(|| not_found(format!("Could not find experiment with name '{name}'")))?;
    Ok(Json(json!({ "experiment": experiment_json(&found) })))
}

#[derive(Deserialize, Default)]
struct SearchExperiments {
    filter: Option<String>,
    view_type: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    max_results: Option<i64>,
}

/// The filter subset supported for experiments: `name = 'x'`, `name LIKE 'x%'`, `name ILIKE ...`.
fn name_matches(filter: Option<&str>, name: &str) -> Result<bool, MlflowError> {
    let Some(filter) = filter.map(str::trim).filter(|filter| !filter.is_empty()) else { return Ok(true) };
    let lowered = filter.to_ascii_lowercase();
    let value = filter.split_once('\'').and_then(|(_, rest)| rest.rsplit_once('\'')).map(|(value, _)| value.to_string());
    let Some(value) = value else { return Err(invalid(format!("unsupported filter `{filter}`"))) };
    let like = |pattern: &str, text: &str| -> bool {
        let regex_free: Vec<&str> = pattern.split('%').collect();
        let mut rest = text;
        for (part_idx, part) in regex_free.iter().enumerate() {
            if part_idx == 0 {
                if !rest.starts_with(part) {
                    return false;
                }
                rest = &rest[part.len()..];
            } else if let Some(position) = rest.find(part) {
                rest = &rest[position + part.len()..];
            } else {
                return false;
            }
        }
        regex_free.last().is_some_and(|last| last.is_empty()) || rest.is_empty()
    };
    if lowered.contains(" ilike ") {
        Ok(like(&value.to_lowercase(), &name.to_lowercase()))
    } else if lowered.contains(" like ") {
        Ok(like(&value, name))
    } else if lowered.contains("!=") {
        Ok(name != value)
    } else if lowered.contains('=') {
        Ok(name == value)
    } else {
        Err(invalid(format!("unsupported filter `{filter}`")))
    }
}

async fn search_experiments(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<SearchExperiments>) -> MlflowResult {
    let view = request.view_type.unwrap_or_else(|| "ACTIVE_ONLY".into());
    let mut found = Vec::new();
    for experiment in core.store.list_experiments().await? {
        let stage_ok = match view.as_str() {
            "ALL" => true,
            "DELETED_ONLY" => experiment.lifecycle_stage == "deleted",
            _ => experiment.lifecycle_stage == "active",
        };
        if stage_ok && name_matches(request.filter.as_deref(), &experiment.name)? {
            found.push(experiment_json(&experiment));
        }
    }
    found.reverse();
    found.truncate(request.max_results.unwrap_or(1000).clamp(1, 50_000) as usize);
    Ok(Json(json!({ "experiments": found })))
}

async fn delete_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let found = experiment(&core, &request.experiment_id.unwrap_or_default()).await?;
    core.store.set_experiment_lifecycle(found.experiment_id, "deleted", now_ms()).await?;
    Ok(Json(json!({})))
}

async fn restore_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let found = experiment(&core, &request.experiment_id.unwrap_or_default()).await?;
    core.store.set_experiment_lifecycle(found.experiment_id, "active", now_ms()).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct ExperimentTag {
    experiment_id: String,
    key: String,
    #[serde(default)]
    value: String,
}

async fn set_experiment_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentTag>) -> MlflowResult {
    let found = experiment(&core, &request.experiment_id).await?;
    core.store.set_experiment_tag(found.experiment_id, &request.key, &request.value).await?;
    Ok(Json(json!({})))
}

// ------------------------------------------------------------------ runs

fn run_info_json(run: &RunRecord) -> Value {
    let mut info = json!({
        "run_id": run.run_id,
        "run_uuid": run.run_id,
        "run_name": run.run_name,
        "experiment_id": run.experiment_id.to_string(),
        "user_id": run.user_id,
        "status": run.status.as_str(),
        "start_time": run.start_time,
        "artifact_uri": run.artifact_uri,
        "lifecycle_stage": run.lifecycle_stage,
    });
    if let Some(end_time) = run.end_time {
        info["end_time"] = json!(end_time);
    }
    info
}

fn metric_json(metric: &MetricPoint) -> Value {
    json!({ "key": metric.key, "value": json_f64(metric.value), "timestamp": metric.timestamp, "step": metric.step })
}

fn run_json(run: &RunRecord) -> Value {
    json!({
        "info": run_info_json(run),
        "data": {
            "metrics": run.latest_metrics.iter().map(metric_json).collect::<Vec<_>>(),
            "params": pairs_json(&run.params),
            "tags": pairs_json(&run.tags),
        },
        "inputs": {},
    })
}

async fn run(core: &PlaneCore, run_id: &str) -> Result<RunRecord, MlflowError> {
    core.store.get_run(run_id).await?.ok_or_else(|| not_found(format!("Run with id={run_id} not found")))
}

fn new_run_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[derive(Deserialize)]
struct CreateRun {
    experiment_id: Option<String>,
    user_id: Option<String>,
    run_name: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateRun>) -> MlflowResult {
    let found = experiment(&core, request.experiment_id.as_deref().unwrap_or("0")).await?;
    if found.lifecycle_stage != "active" {
        return Err(invalid(format!("The experiment {} must be in the 'active' state.", found.experiment_id)));
    }
    let run_id = new_run_id();
    let mut tags: Vec<(String, String)> = request.tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
    let run_name = request
        .run_name
        .filter(|name| !name.is_empty())
        .or_else(|| tags.iter().find(|(key, _)| key == "mlflow.runName").map(|(_, value)| value.clone()))
        .unwrap_or_else(|| format!("run-{}", &run_id[..8]));
    if !tags.iter().any(|(key, _)| key == "mlflow.runName") {
        tags.push(("mlflow.runName".into(), run_name.clone()));
    }
    let record = RunRecord {
        run_id: run_id.clone(),
        experiment_id: found.experiment_id,
        run_name,
        user_id: request.user_id.unwrap_or_default(),
        status: RunStatus::Running,
        start_time: request.start_time.unwrap_or_else(now_ms),
        end_time: None,
        lifecycle_stage: "active".into(),
        artifact_uri: format!("{}/{run_id}/artifacts", found.artifact_location.trim_end_matches('/')),
        params: Vec::new(),
        tags,
        latest_metrics: Vec::new(),
    };
    core.store.create_run(&record).await?;
    Ok(Json(json!({ "run": run_json(&run(&core, &run_id).await?) })))
}

#[derive(Deserialize)]
struct RunId {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

impl RunId {
    fn id(self) -> Result<String, MlflowError> {
        self.run_id.or(self.run_uuid).filter(|id| !id.is_empty()).ok_or_else(|| invalid("Missing value for required parameter 'run_id'"))
    }
}

async fn get_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<RunId>) -> MlflowResult {
    Ok(Json(json!({ "run": run_json(&run(&core, &request.id()?).await?) })))
}

#[derive(Deserialize)]
struct UpdateRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

async fn update_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<UpdateRun>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    let status = match request.status.as_deref() {
        Some(text) => Some(RunStatus::parse(text).ok_or_else(|| invalid(format!("Invalid run status '{text}'")))?),
        None => None,
    };
    run(&core, &run_id).await?;
    let run_name = request.run_name.filter(|name| !name.is_empty());
    core.store.update_run(&run_id, &RunUpdate { status, end_time: request.end_time, run_name: run_name.clone() }).await?;
    if let Some(name) = run_name {
        core.store.log_batch(&run_id, &[], &[], &[("mlflow.runName".into(), name)]).await?;
    }
    Ok(Json(json!({ "run_info": run_info_json(&run(&core, &run_id).await?) })))
}

async fn delete_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<RunId>) -> MlflowResult {
    let run_id = request.id()?;
    run(&core, &run_id).await?;
    core.store.set_run_lifecycle(&run_id, "deleted").await?;
    Ok(Json(json!({})))
}

async fn restore_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<RunId>) -> MlflowResult {
    let run_id = request.id()?;
    run(&core, &run_id).await?;
    core.store.set_run_lifecycle(&run_id, "active").await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct MetricInput {
    key: String,
    #[serde(default, deserialize_with = "flexible_f64")]
    value: Option<f64>,
    #[serde(default, deserialize_with = "flexible_i64")]
    timestamp: Option<i64>,
    #[serde(default, deserialize_with = "flexible_i64")]
    step: Option<i64>,
}

impl MetricInput {
    fn point(self) -> Result<MetricPoint, MlflowError> {
        if self.key.is_empty() {
            return Err(invalid("Missing value for required parameter 'key'"));
        }
        let value = self.value.ok_or_else(|| invalid(format!("Missing value for required parameter 'value' of metric '{}'", self.key)))?;
        Ok(MetricPoint { key: self.key, value, timestamp: self.timestamp.unwrap_or_else(now_ms), step: self.step.unwrap_or(0) })
    }
}

#[derive(Deserialize)]
struct LogMetric {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    metric: MetricInput,
}

async fn active_run(core: &PlaneCore, run_id: &str) -> Result<(), MlflowError> {
    let found = run(core, run_id).await?;
    if found.lifecycle_stage != "active" {
        return Err(invalid(format!("The run {run_id} must be in the 'active' state. Current state is {}.", found.lifecycle_stage)));
    }
    Ok(())
}

async fn log_metric(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogMetric>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    core.store.log_batch(&run_id, &[request.metric.point()?], &[], &[]).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct LogKeyValue {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: String,
    #[serde(default)]
    value: String,
}

async fn log_parameter(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogKeyValue>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    core.store.log_batch(&run_id, &[], &[(request.key, request.value)], &[]).await?;
    Ok(Json(json!({})))
}

async fn set_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogKeyValue>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    if request.key == "mlflow.runName" {
        core.store.update_run(&run_id, &RunUpdate { run_name: Some(request.value.clone()), ..RunUpdate::default() }).await?;
    }
    core.store.log_batch(&run_id, &[], &[], &[(request.key, request.value)]).await?;
    Ok(Json(json!({})))
}

async fn delete_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogKeyValue>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    core.store.delete_run_tag(&run_id, &request.key).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct LogBatch {
    run_id: Option<String>,
    #[serde(default)]
    metrics: Vec<MetricInput>,
    #[serde(default)]
    params: Vec<KeyValue>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

/// MLflow's own limits for one log-batch request.
const MAX_BATCH_METRICS: usize = 1000;
const MAX_BATCH_PARAMS: usize = 100;
const MAX_BATCH_ENTITIES: usize = 1000;

async fn log_batch(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogBatch>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: None }.id()?;
    if request.metrics.len() > MAX_BATCH_METRICS
        || request.params.len() > MAX_BATCH_PARAMS
        || request.metrics.len() + request.params.len() + request.tags.len() > MAX_BATCH_ENTITIES
    {
        return Err(invalid(format!(
            "A batch logging request can contain at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} params and {MAX_BATCH_ENTITIES} entities in total"
        )));
    }
    active_run(&core, &run_id).await?;
    let metrics: Vec<MetricPoint> = request.metrics.into_iter().map(MetricInput::point).collect::<Result<_, _>>()?;
    let mut params: Vec<(String, String)> = Vec::with_capacity(request.params.len());
    for param in request.params {
        if let Some((_, earlier)) = params.iter().find(|(key, _)| *key == param.key)
            && *earlier != param.value
        {
            return Err(invalid(format!("Duplicate parameter keys have been submitted: {}", param.key)));
        }
        params.push((param.key, param.value));
    }
    let tags: Vec<(String, String)> = request.tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
    core.store.log_batch(&run_id, &metrics, &params, &tags).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct MetricHistory {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: String,
}

async fn metric_history(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<MetricHistory>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    run(&core, &run_id).await?;
    let points = core.store.metric_history(&run_id, &request.metric_key).await?;
    Ok(Json(json!({ "metrics": points.iter().map(metric_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize, Default)]
struct SearchRuns {
    #[serde(default)]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    run_view_type: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<String>,
    page_token: Option<String>,
}

async fn search_runs(
    State(core): State<Arc<PlaneCore>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> MlflowResult {
    let mut request: SearchRuns = fields(&method, &query, &body)?;
    if let Some(id) = query.get("experiment_ids") {
        request.experiment_ids.push(id.clone());
    }
    let experiment_ids: Vec<i64> = request.experiment_ids.iter().map(|id| parse_experiment_id(id)).collect::<Result<_, _>>()?;
    let filter = crate::tracking::RunFilter::parse(request.filter.as_deref().unwrap_or("")).map_err(invalid)?;
    let view = request.run_view_type.unwrap_or_else(|| "ACTIVE_ONLY".into());
    let mut runs: Vec<RunRecord> = core
        .store
        .list_runs(&experiment_ids)
        .await?
        .into_iter()
        .filter(|run| match view.as_str() {
            "ALL" => true,
            "DELETED_ONLY" => run.lifecycle_stage == "deleted",
            _ => run.lifecycle_stage == "active",
        })
        .filter(|run| filter.matches(run))
        .collect();
    crate::tracking::order_runs(&mut runs, &request.order_by).map_err(invalid)?;
    let offset: usize = request.page_token.as_deref().and_then(|token| token.parse().ok()).unwrap_or(0);
    let max_results = request.max_results.unwrap_or(1000).clamp(1, 50_000) as usize;
    let page: Vec<Value> = runs.iter().skip(offset).take(max_results).map(run_json).collect();
    let mut answer = json!({ "runs": page });
    if offset + max_results < runs.len() {
        answer["next_page_token"] = json!((offset + max_results).to_string());
    }
    Ok(Json(answer))
}

// ------------------------------------------------------------------ registry

fn alias_pairs(aliases: &[(String, i64)], version: Option<i64>) -> Vec<Value> {
    aliases
        .iter()
        .filter(|(_, aliased)| version.is_none_or(|version| version == *aliased))
        .map(|(alias, aliased)| json!({ "alias": alias, "version": aliased.to_string() }))
        .collect()
}

async fn model_version_json(core: &PlaneCore, record: &ModelVersionRecord) -> Result<Value, MlflowError> {
    let tags = core.store.model_version_tags(&record.model, record.version).await?;
    let aliases = core.store.list_aliases(&record.model).await?;
    let alias_names: Vec<String> =
        aliases.iter().filter(|(_, version)| *version == record.version).map(|(alias, _)| alias.clone()).collect();
    Ok(json!({
        "name": record.model,
        "version": record.version.to_string(),
        "creation_timestamp": record.created_ms,
        "last_updated_timestamp": record.created_ms,
        "current_stage": "None",
        "description": record.description,
        "source": record.source,
        "run_id": record.run_id,
        "status": "READY",
        "status_message": if record.is_deployable() { "deployable: signed bundle ready" } else { "not deployable: no ONNX file" },
        "tags": pairs_json(&tags),
        "aliases": alias_names,
        "run_link": "",
    }))
}

async fn registered_model_json(core: &PlaneCore, model: &RegisteredModelRecord) -> Result<Value, MlflowError> {
    let versions = core.store.list_versions(Some(&model.name)).await?;
    let aliases = core.store.list_aliases(&model.name).await?;
    let mut latest = Vec::new();
    if let Some(newest) = versions.last() {
        latest.push(model_version_json(core, newest).await?);
    }
    let last_updated = versions.iter().map(|version| version.created_ms).max().unwrap_or(0).max(model.last_updated_ms);
    Ok(json!({
        "name": model.name,
        "creation_timestamp": model.created_ms,
        "last_updated_timestamp": last_updated,
        "description": model.description,
        "latest_versions": latest,
        "tags": pairs_json(&model.tags),
        "aliases": alias_pairs(&aliases, None),
    }))
}

async fn registered_model(core: &PlaneCore, name: &str) -> Result<RegisteredModelRecord, MlflowError> {
    core.store.get_registered_model(name).await?.ok_or_else(|| not_found(format!("Registered Model with name={name} not found")))
}

fn check_name(name: &str) -> Result<(), MlflowError> {
    if fleetml_shared::topics::is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!("Invalid model name '{name}': fleetml model names use A-Z a-z 0-9 - _ . (they become MQTT topics and paths)")))
    }
}

#[derive(Deserialize)]
struct CreateRegisteredModel {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_registered_model(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateRegisteredModel>) -> MlflowResult {
    check_name(&request.name)?;
    let tags: Vec<(String, String)> = request.tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
    core.store.create_registered_model(&request.name, &request.description, &tags, now_ms()).await?;
    let model = registered_model(&core, &request.name).await?;
    Ok(Json(json!({ "registered_model": registered_model_json(&core, &model).await? })))
}

#[derive(Deserialize)]
struct ModelName {
    name: String,
}

async fn get_registered_model(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelName>) -> MlflowResult {
    let model = registered_model(&core, &request.name).await?;
    Ok(Json(json!({ "registered_model": registered_model_json(&core, &model).await? })))
}

#[derive(Deserialize, Default)]
struct SearchModels {
    filter: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    max_results: Option<i64>,
    page_token: Option<String>,
}

async fn search_registered_models(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<SearchModels>) -> MlflowResult {
    let filter = crate::tracking::ModelFilter::parse(request.filter.as_deref().unwrap_or("")).map_err(invalid)?;
    let found: Vec<RegisteredModelRecord> =
        core.store.list_registered_models().await?.into_iter().filter(|model| filter.matches(&model.name, &model.tags)).collect();
    let offset: usize = request.page_token.as_deref().and_then(|token| token.parse().ok()).unwrap_or(0);
    let max_results = request.max_results.unwrap_or(100).clamp(1, 1000) as usize;
    let mut page = Vec::new();
    for model in found.iter().skip(offset).take(max_results) {
        page.push(registered_model_json(&core, model).await?);
    }
    let mut answer = json!({ "registered_models": page });
    if offset + max_results < found.len() {
        answer["next_page_token"] = json!((offset + max_results).to_string());
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct UpdateDescription {
    name: String,
    version: Option<String>,
    #[serde(default)]
    description: String,
}

async fn update_registered_model(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<UpdateDescription>) -> MlflowResult {
    core.store.update_registered_model(&request.name, &request.description, now_ms()).await?;
    let model = registered_model(&core, &request.name).await?;
    Ok(Json(json!({ "registered_model": registered_model_json(&core, &model).await? })))
}

#[derive(Deserialize)]
struct ModelTag {
    name: String,
    version: Option<String>,
    key: String,
    #[serde(default)]
    value: String,
}

async fn set_registered_model_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelTag>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    core.store.set_registered_model_tag(&request.name, &request.key, &request.value).await?;
    Ok(Json(json!({})))
}

async fn get_latest_versions(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelName>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    let versions = core.store.list_versions(Some(&request.name)).await?;
    let mut latest = Vec::new();
    if let Some(newest) = versions.last() {
        latest.push(model_version_json(&core, newest).await?);
    }
    Ok(Json(json!({ "model_versions": latest })))
}

fn parse_version(text: &str) -> Result<i64, MlflowError> {
    text.parse::<i64>().map_err(|_| invalid(format!("Version must be an integer, got '{text}'")))
}

async fn model_version(core: &PlaneCore, name: &str, version: &str) -> Result<ModelVersionRecord, MlflowError> {
    let number = parse_version(version)?;
    core.store
        .get_version(name, number)
        .await?
        .ok_or_else(|| not_found(format!("Model Version (name={name}, version={version}) not found")))
}

#[derive(Deserialize)]
struct AliasRequest {
    name: String,
    alias: String,
    version: Option<String>,
}

async fn set_alias(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<AliasRequest>) -> MlflowResult {
    let version_text = request.version.ok_or_else(|| invalid("Missing value for required parameter 'version'"))?;
    if request.alias.parse::<i64>().is_ok()
        || request.alias.to_lowercase().starts_with('v') && request.alias[1..].parse::<i64>().is_ok()
        || !fleetml_shared::topics::is_valid_name(&request.alias)
    {
        return Err(invalid(format!(
            "Invalid alias name: '{}'. Aliases cannot be version numbers and use A-Z a-z 0-9 - _ .",
            request.alias
        )));
    }
    registered_model(&core, &request.name).await?;
    let record = model_version(&core, &request.name, &version_text).await?;
    let previous = core.store.resolve_alias(&request.name, &request.alias).await?;
    core.store.set_alias(&request.name, &request.alias, record.version, now_ms()).await?;
    let detail = match previous {
        Some(previous) if previous > record.version => format!("alias `{}` moved back from version {previous}", request.alias),
        Some(previous) => format!("alias `{}` moved from version {previous}", request.alias),
        None => format!("alias `{}` set", request.alias),
    };
    core.store.add_version_event(&request.name, record.version, "alias", &detail, now_ms()).await?;
    Ok(Json(json!({})))
}

async fn delete_alias(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<AliasRequest>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    // Like MLflow: deleting an alias that is not set succeeds.
    core.store.delete_alias(&request.name, &request.alias).await?;
    Ok(Json(json!({})))
}

async fn get_by_alias(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<AliasRequest>) -> MlflowResult {
    let version = core
        .store
        .resolve_alias(&request.name, &request.alias)
        .await?
        .ok_or_else(|| invalid(format!("Registered model alias {} not found.", request.alias)))?;
    let record = model_version(&core, &request.name, &version.to_string()).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

#[derive(Deserialize)]
struct CreateModelVersion {
    name: String,
    source: String,
    run_id: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_model_version(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateModelVersion>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    let run_id = request.run_id.unwrap_or_default();
    let onnx = match artifact_folder(&core, &request.source, &run_id).await? {
        Some(folder) => find_onnx(&folder).await,
        None => None,
    };
    let push =
        PushOptions { description: request.description, source: request.source.clone(), run_id: run_id.clone(), ..PushOptions::default() };
    let version = match onnx {
        Some(bytes) => core.push_model(&request.name, bytes, push).await?.version,
        None => {
            tracing::info!(model = %request.name, source = %request.source, "registered without an ONNX file: not deployable");
            core.register_without_bundle(&request.name, push).await?
        }
    };
    for tag in request.tags {
        core.store.set_model_version_tag(&request.name, version, &tag.key, &tag.value).await?;
    }
    let record = model_version(&core, &request.name, &version.to_string()).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

#[derive(Deserialize)]
struct VersionRequest {
    name: String,
    version: String,
}

async fn get_model_version(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<VersionRequest>) -> MlflowResult {
    let record = model_version(&core, &request.name, &request.version).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

async fn get_download_uri(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<VersionRequest>) -> MlflowResult {
    let record = model_version(&core, &request.name, &request.version).await?;
    Ok(Json(json!({ "artifact_uri": record.source })))
}

async fn update_model_version(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<UpdateDescription>) -> MlflowResult {
    let version = request.version.ok_or_else(|| invalid("Missing value for required parameter 'version'"))?;
    let record = model_version(&core, &request.name, &version).await?;
    core.store.update_model_version_description(&request.name, record.version, &request.description).await?;
    let record = model_version(&core, &request.name, &version).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

async fn set_model_version_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelTag>) -> MlflowResult {
    let record = model_version(&core, &request.name, request.version.as_deref().unwrap_or_default()).await?;
    core.store.set_model_version_tag(&request.name, record.version, &request.key, &request.value).await?;
    Ok(Json(json!({})))
}

async fn search_model_versions(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<SearchModels>) -> MlflowResult {
    let filter = crate::tracking::VersionFilter::parse(request.filter.as_deref().unwrap_or("")).map_err(invalid)?;
    let mut versions: Vec<ModelVersionRecord> =
        core.store.list_versions(filter.name.as_deref()).await?.into_iter().filter(|version| filter.matches(version)).collect();
    versions.sort_by(|left, right| left.model.cmp(&right.model).then(right.version.cmp(&left.version)));
    let offset: usize = request.page_token.as_deref().and_then(|token| token.parse().ok()).unwrap_or(0);
    let max_results = request.max_results.unwrap_or(10_000).clamp(1, 200_000) as usize;
    let mut page = Vec::new();
    for version in versions.iter().skip(offset).take(max_results) {
        page.push(model_version_json(&core, version).await?);
    }
    let mut answer = json!({ "model_versions": page });
    if offset + max_results < versions.len() {
        answer["next_page_token"] = json!((offset + max_results).to_string());
    }
    Ok(Json(answer))
}

// ------------------------------------------------------------------ artifacts

/// A relative artifact path, refused if it would leave the artifact root.
fn artifact_path(core: &PlaneCore, relative: &str) -> Result<PathBuf, MlflowError> {
    let relative = relative.trim_start_matches('/');
    let mut path = core.artifact_root();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!("Invalid artifact path: '{relative}'")));
            }
        }
    }
    Ok(path)
}

/// The local folder an artifact source URI names, if it is in this plane's store.
async fn artifact_folder(core: &PlaneCore, source: &str, run_id: &str) -> Result<Option<PathBuf>, MlflowError> {
    if let Some(relative) = source.strip_prefix("mlflow-artifacts:") {
        let relative = relative.trim_start_matches('/');
        // mlflow-artifacts://host/path carries a host first.
        let relative =
            if source.starts_with("mlflow-artifacts://") { relative.split_once('/').map(|(_, rest)| rest).unwrap_or("") } else { relative };
        return Ok(Some(artifact_path(core, relative)?));
    }
    if let Some(rest) = source.strip_prefix("runs:/") {
        let (source_run, path) = rest.split_once('/').unwrap_or((rest, ""));
        let source_run = if source_run.is_empty() { run_id } else { source_run };
        let found = run(core, source_run).await?;
        return Box::pin(artifact_folder(core, &format!("{}/{path}", found.artifact_uri), run_id)).await;
    }
    Ok(None)
}

/// The ONNX file of a model folder: the MLmodel's onnx flavor `data`, else the first `.onnx`.
async fn find_onnx(folder: &Path) -> Option<Vec<u8>> {
    if folder.extension().is_some_and(|extension| extension == "onnx") {
        return tokio::fs::read(folder).await.ok();
    }
    if let Ok(mlmodel) = tokio::fs::read_to_string(folder.join("MLmodel")).await {
        let data = mlmodel
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("onnx:"))
            .find_map(|line| line.trim().strip_prefix("data:").map(|value| value.trim().to_string()));
        if let Some(data) = data
            && !data.contains("..")
            && let Ok(bytes) = tokio::fs::read(folder.join(&data)).await
        {
            return Some(bytes);
        }
    }
    let mut entries = tokio::fs::read_dir(folder).await.ok()?;
    let mut candidates = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.path().extension().is_some_and(|extension| extension == "onnx") {
            candidates.push(entry.path());
        }
    }
    candidates.sort();
    tokio::fs::read(candidates.first()?).await.ok()
}

async fn upload_artifact(
    State(core): State<Arc<PlaneCore>>,
    UrlPath(relative): UrlPath<String>,
    body: Bytes,
) -> Result<Json<Value>, MlflowError> {
    let path = artifact_path(&core, &relative)?;
    let internal = |error: std::io::Error| MlflowError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "INTERNAL_ERROR",
        message: format!("storing the artifact: {error}"),
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(internal)?;
    }
    let temporary = path.with_extension(format!("upload-{:08x}", fastrand::u32(..)));
    tokio::fs::write(&temporary, &body).await.map_err(internal)?;
    tokio::fs::rename(&temporary, &path).await.map_err(internal)?;
    Ok(Json(json!({})))
}

async fn download_artifact(State(core): State<Arc<PlaneCore>>, UrlPath(relative): UrlPath<String>) -> Result<Response, MlflowError> {
    let path = artifact_path(&core, &relative)?;
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()),
        Err(_) => Err(not_found(format!("Artifact '{relative}' does not exist"))),
    }
}

async fn delete_artifact(State(core): State<Arc<PlaneCore>>, UrlPath(relative): UrlPath<String>) -> Result<Json<Value>, MlflowError> {
    let path = artifact_path(&core, &relative)?;
    let removed = if path.is_dir() { tokio::fs::remove_dir_all(&path).await } else { tokio::fs::remove_file(&path).await };
    removed.map_err(|_| not_found(format!("Artifact '{relative}' does not exist")))?;
    Ok(Json(json!({})))
}

async fn list_artifacts(
    State(core): State<Arc<PlaneCore>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, MlflowError> {
    let relative = query.get("path").cloned().unwrap_or_default();
    let folder = artifact_path(&core, &relative)?;
    let mut files: BTreeMap<String, Value> = BTreeMap::new();
    if let Ok(mut entries) = tokio::fs::read_dir(&folder).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.contains(".upload-") {
                continue;
            }
            let Ok(metadata) = entry.metadata().await else { continue };
            let file = if metadata.is_dir() {
                json!({ "path": name, "is_dir": true })
            } else {
                json!({ "path": name, "is_dir": false, "file_size": metadata.len() })
            };
            files.insert(name, file);
        }
    }
    // Like MLflow: a file or a missing path lists as `{}`.
    if files.is_empty() {
        return Ok(Json(json!({})));
    }
    Ok(Json(json!({ "files": files.into_values().collect::<Vec<_>>() })))
}
