//! The native tracking API under `/api/v1`: experiments, runs and their comparison. The
//! MLflow routes (`api::mlflow`) read the same store through the same rules (`tracking`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};

use super::error::ApiError;
use super::views::{CompareQuery, ExperimentView, MetricView, RunComparison, RunView, RunsQuery};
use crate::PlaneCore;
use crate::tracking::{self, RunLifecycle};

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
    let order_by: Vec<String> = query
        .order_by
        .iter()
        .flat_map(|text| text.split(','))
        .map(|term| term.trim().to_string())
        .filter(|term| !term.is_empty())
        .collect();
    let filter = query.filter.as_deref().unwrap_or("");
    let mut runs = tracking::search_runs(core.store.as_ref(), &experiment_ids, filter, RunLifecycle::ActiveOnly, &order_by).await?;
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
    Ok(Json(points.iter().map(MetricView::from_point).collect()))
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
