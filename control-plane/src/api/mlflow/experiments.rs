//! MLflow experiments: create, get (by id or name), search, delete, restore, tags.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Fields, KeyValue, MlflowError, MlflowResult, flexible_i64, invalid, not_found, now_ms, pairs_json};
use crate::PlaneCore;
use crate::store::{ExperimentRecord, StoreError};

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

pub(super) fn parse_experiment_id(text: &str) -> Result<i64, MlflowError> {
    text.parse::<i64>().map_err(|_| invalid(format!("Invalid experiment ID: '{text}'")))
}

pub(super) async fn experiment(core: &PlaneCore, experiment_id: &str) -> Result<ExperimentRecord, MlflowError> {
    let id = parse_experiment_id(experiment_id)?;
    core.store.get_experiment(id).await?.ok_or_else(|| not_found(format!("No Experiment with id={experiment_id} exists")))
}

#[derive(Deserialize)]
pub(super) struct CreateExperiment {
    name: Option<String>,
    artifact_location: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub(super) async fn create_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateExperiment>) -> MlflowResult {
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
pub(super) struct ExperimentId {
    experiment_id: Option<String>,
    experiment_name: Option<String>,
}

pub(super) async fn get_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let id = request.experiment_id.ok_or_else(|| invalid("Missing value for required parameter 'experiment_id'"))?;
    Ok(Json(json!({ "experiment": experiment_json(&experiment(&core, &id).await?) })))
}

pub(super) async fn get_experiment_by_name(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let name = request.experiment_name.ok_or_else(|| invalid("Missing value for required parameter 'experiment_name'"))?;
    let found = core
        .store
        .get_experiment_by_name(&name)
        .await?
        .ok_or_else(|| not_found(format!("Could not find experiment with name '{name}'")))?;
    Ok(Json(json!({ "experiment": experiment_json(&found) })))
}

#[derive(Deserialize, Default)]
pub(super) struct SearchExperiments {
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

pub(super) async fn search_experiments(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<SearchExperiments>) -> MlflowResult {
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

pub(super) async fn delete_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let found = experiment(&core, &request.experiment_id.unwrap_or_default()).await?;
    core.store.set_experiment_lifecycle(found.experiment_id, "deleted", now_ms()).await?;
    Ok(Json(json!({})))
}

pub(super) async fn restore_experiment(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentId>) -> MlflowResult {
    let found = experiment(&core, &request.experiment_id.unwrap_or_default()).await?;
    core.store.set_experiment_lifecycle(found.experiment_id, "active", now_ms()).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct ExperimentTag {
    experiment_id: String,
    key: String,
    #[serde(default)]
    value: String,
}

pub(super) async fn set_experiment_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ExperimentTag>) -> MlflowResult {
    let found = experiment(&core, &request.experiment_id).await?;
    core.store.set_experiment_tag(found.experiment_id, &request.key, &request.value).await?;
    Ok(Json(json!({})))
}
