//! The native tracking API under `/api/v1`: experiments, runs and their comparison. The
//! MLflow routes (`api::mlflow`) read the same store through the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::PlaneCore;
use crate::store::{MetricPoint, RunRecord};
use crate::tracking::{RunFilter, order_runs};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    pub experiment_id: i64,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub creation_time: i64,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricView {
    pub value: Option<f64>,
    pub step: i64,
    pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub run_id: String,
    pub experiment_id: i64,
    pub run_name: String,
    pub user_id: String,
    pub status: String,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub artifact_uri: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// The newest point of each metric; NaN is `null`.
    pub metrics: BTreeMap<String, MetricView>,
}

fn metric_view(point: &MetricPoint) -> MetricView {
    MetricView { value: point.value.is_finite().then_some(point.value), step: point.step, timestamp: point.timestamp }
}

impl RunView {
    fn from_record(run: &RunRecord) -> Self {
        RunView {
            run_id: run.run_id.clone(),
            experiment_id: run.experiment_id,
            run_name: run.run_name.clone(),
            user_id: run.user_id.clone(),
            status: run.status.as_str().to_string(),
            start_time: run.start_time,
            end_time: run.end_time,
            artifact_uri: run.artifact_uri.clone(),
            params: run.params.iter().cloned().collect(),
            tags: run.tags.iter().cloned().collect(),
            metrics: run.latest_metrics.iter().map(|point| (point.key.clone(), metric_view(point))).collect(),
        }
    }
}

/// Runs side by side: every param and metric key with each run's value (absent: `null`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunComparison {
    pub runs: Vec<RunView>,
    pub params: BTreeMap<String, Vec<Option<String>>>,
    pub metrics: BTreeMap<String, Vec<Option<f64>>>,
}

pub async fn list_experiments(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<ExperimentView>>, ApiError> {
    let experiments = core.store.list_experiments().await?;
    Ok(Json(
        experiments
            .into_iter()
            .map(|experiment| ExperimentView {
                experiment_id: experiment.experiment_id,
                name: experiment.name,
                artifact_location: experiment.artifact_location,
                lifecycle_stage: experiment.lifecycle_stage,
                creation_time: experiment.creation_time,
                tags: experiment.tags.into_iter().collect(),
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    /// An experiment name or id (default: every experiment).
    experiment: Option<String>,
    /// MLflow filter syntax: `metrics.acc > 0.9 and params.lr = '0.1'`.
    filter: Option<String>,
    /// Comma-separated MLflow order_by terms, e.g. `metrics.acc DESC`.
    order_by: Option<String>,
    max_results: Option<usize>,
}

pub async fn list_runs(State(core): State<Arc<PlaneCore>>, Query(query): Query<RunsQuery>) -> Result<Json<Vec<RunView>>, ApiError> {
    let experiment_ids: Vec<i64> = match &query.experiment {
        Some(reference) => {
            let by_name = core.store.get_experiment_by_name(reference).await?;
            let experiment = match (by_name, reference.parse::<i64>()) {
                (Some(experiment), _) => experiment,
                (None, Ok(id)) => {
                    core.store.get_experiment(id).await?.ok_or_else(|| ApiError::NotFound(format!("experiment `{reference}`")))?
                }
                (None, Err(_)) => return Err(ApiError::NotFound(format!("experiment `{reference}`"))),
            };
            vec![experiment.experiment_id]
        }
        None => core.store.list_experiments().await?.iter().map(|experiment| experiment.experiment_id).collect(),
    };
    let filter = RunFilter::parse(query.filter.as_deref().unwrap_or("")).map_err(ApiError::BadRequest)?;
    let mut runs: Vec<RunRecord> = core
        .store
        .list_runs(&experiment_ids)
        .await?
        .into_iter()
        .filter(|run| run.lifecycle_stage == "active" && filter.matches(run))
        .collect();
    let order_by: Vec<String> = query
        .order_by
        .iter()
        .flat_map(|text| text.split(','))
        .map(|term| term.trim().to_string())
        .filter(|term| !term.is_empty())
        .collect();
    order_runs(&mut runs, &order_by).map_err(ApiError::BadRequest)?;
    runs.truncate(query.max_results.unwrap_or(1000));
    Ok(Json(runs.iter().map(RunView::from_record).collect()))
}

pub async fn get_run(State(core): State<Arc<PlaneCore>>, Path(run_id): Path<String>) -> Result<Json<RunView>, ApiError> {
    let run = core.store.get_run(&run_id).await?.ok_or_else(|| ApiError::NotFound(format!("run `{run_id}`")))?;
    Ok(Json(RunView::from_record(&run)))
}

pub async fn metric_history(
    State(core): State<Arc<PlaneCore>>,
    Path((run_id, key)): Path<(String, String)>,
) -> Result<Json<Vec<MetricView>>, ApiError> {
    core.store.get_run(&run_id).await?.ok_or_else(|| ApiError::NotFound(format!("run `{run_id}`")))?;
    let points = core.store.metric_history(&run_id, &key).await?;
    Ok(Json(points.iter().map(metric_view).collect()))
}

#[derive(Deserialize)]
pub struct CompareQuery {
    /// Comma-separated run ids.
    ids: String,
}

pub fn compare(runs: Vec<RunView>) -> RunComparison {
    let param_keys: BTreeSet<String> = runs.iter().flat_map(|run| run.params.keys().cloned()).collect();
    let metric_keys: BTreeSet<String> = runs.iter().flat_map(|run| run.metrics.keys().cloned()).collect();
    let params = param_keys.into_iter().map(|key| (key.clone(), runs.iter().map(|run| run.params.get(&key).cloned()).collect())).collect();
    let metrics = metric_keys
        .into_iter()
        .map(|key| (key.clone(), runs.iter().map(|run| run.metrics.get(&key).and_then(|metric| metric.value)).collect()))
        .collect();
    RunComparison { runs, params, metrics }
}

pub async fn compare_runs(State(core): State<Arc<PlaneCore>>, Query(query): Query<CompareQuery>) -> Result<Json<RunComparison>, ApiError> {
    let mut runs = Vec::new();
    for run_id in query.ids.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        let run = core.store.get_run(run_id).await?.ok_or_else(|| ApiError::NotFound(format!("run `{run_id}`")))?;
        runs.push(RunView::from_record(&run));
    }
    if runs.len() < 2 {
        return Err(ApiError::BadRequest("compare needs at least two run ids (ids=a,b)".into()));
    }
    Ok(Json(compare(runs)))
}
