//! MLflow runs: create, get, update, delete, restore, search, metrics, params, tags, batches.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::experiments::{experiment, parse_experiment_id};
use super::{
    Fields, KeyValue, MlflowError, MlflowResult, fields, flexible_f64, flexible_i64, invalid, json_f64, not_found, now_ms, pairs_json,
};
use crate::PlaneCore;
use crate::store::{MetricPoint, RunRecord, RunStatus, RunUpdate};
use crate::tracking::{self, RunLifecycle};

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

pub(super) fn run_json(run: &RunRecord) -> Value {
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

pub(super) async fn run(core: &PlaneCore, run_id: &str) -> Result<RunRecord, MlflowError> {
    core.store.get_run(run_id).await?.ok_or_else(|| not_found(format!("Run with id={run_id} not found")))
}

fn new_run_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[derive(Deserialize)]
pub(super) struct CreateRun {
    experiment_id: Option<String>,
    user_id: Option<String>,
    run_name: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub(super) async fn create_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateRun>) -> MlflowResult {
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
pub(super) struct RunId {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

impl RunId {
    fn id(self) -> Result<String, MlflowError> {
        self.run_id.or(self.run_uuid).filter(|id| !id.is_empty()).ok_or_else(|| invalid("Missing value for required parameter 'run_id'"))
    }
}

pub(super) async fn get_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<RunId>) -> MlflowResult {
    Ok(Json(json!({ "run": run_json(&run(&core, &request.id()?).await?) })))
}

#[derive(Deserialize)]
pub(super) struct UpdateRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

pub(super) async fn update_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<UpdateRun>) -> MlflowResult {
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

pub(super) async fn delete_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<RunId>) -> MlflowResult {
    let run_id = request.id()?;
    run(&core, &run_id).await?;
    core.store.set_run_lifecycle(&run_id, "deleted").await?;
    Ok(Json(json!({})))
}

pub(super) async fn restore_run(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<RunId>) -> MlflowResult {
    let run_id = request.id()?;
    run(&core, &run_id).await?;
    core.store.set_run_lifecycle(&run_id, "active").await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct MetricInput {
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
pub(super) struct LogMetric {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    metric: MetricInput,
}

pub(super) async fn active_run(core: &PlaneCore, run_id: &str) -> Result<(), MlflowError> {
    let found = run(core, run_id).await?;
    if found.lifecycle_stage != "active" {
        return Err(invalid(format!("The run {run_id} must be in the 'active' state. Current state is {}.", found.lifecycle_stage)));
    }
    Ok(())
}

pub(super) async fn log_metric(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogMetric>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    core.store.log_batch(&run_id, &[request.metric.point()?], &[], &[]).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct LogKeyValue {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: String,
    #[serde(default)]
    value: String,
}

pub(super) async fn log_parameter(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogKeyValue>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    core.store.log_batch(&run_id, &[], &[(request.key, request.value)], &[]).await?;
    Ok(Json(json!({})))
}

pub(super) async fn set_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogKeyValue>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    if request.key == "mlflow.runName" {
        core.store.update_run(&run_id, &RunUpdate { run_name: Some(request.value.clone()), ..RunUpdate::default() }).await?;
    }
    core.store.log_batch(&run_id, &[], &[], &[(request.key, request.value)]).await?;
    Ok(Json(json!({})))
}

pub(super) async fn delete_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogKeyValue>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    active_run(&core, &run_id).await?;
    core.store.delete_run_tag(&run_id, &request.key).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct LogBatch {
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

pub(super) async fn log_batch(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<LogBatch>) -> MlflowResult {
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
pub(super) struct MetricHistory {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: String,
}

pub(super) async fn metric_history(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<MetricHistory>) -> MlflowResult {
    let run_id = RunId { run_id: request.run_id, run_uuid: request.run_uuid }.id()?;
    run(&core, &run_id).await?;
    let points = core.store.metric_history(&run_id, &request.metric_key).await?;
    Ok(Json(json!({ "metrics": points.iter().map(metric_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize, Default)]
pub(super) struct SearchRuns {
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

pub(super) async fn search_runs(
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
    let lifecycle = RunLifecycle::parse(request.run_view_type.as_deref().unwrap_or("ACTIVE_ONLY"));
    let filter = request.filter.as_deref().unwrap_or("");
    let runs = tracking::search_runs(core.store.as_ref(), &experiment_ids, filter, lifecycle, &request.order_by).await?;
    let offset: usize = request.page_token.as_deref().and_then(|token| token.parse().ok()).unwrap_or(0);
    let max_results = request.max_results.unwrap_or(1000).clamp(1, 50_000) as usize;
    let page: Vec<Value> = runs.iter().skip(offset).take(max_results).map(run_json).collect();
    let mut answer = json!({ "runs": page });
    if offset + max_results < runs.len() {
        answer["next_page_token"] = json!((offset + max_results).to_string());
    }
    Ok(Json(answer))
}
