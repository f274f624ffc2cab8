//! MLflow's model registry: registered models, versions (a version whose artifacts hold an
//! ONNX file becomes a signed, deployable bundle through `versions::push`), aliases, tags.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::artifacts::artifact_folder;
use super::{Fields, KeyValue, MlflowError, MlflowResult, flexible_i64, invalid, not_found, now_ms, pairs_json};
use crate::PlaneCore;
use crate::store::{ModelVersionRecord, RegisteredModelRecord};
use crate::versions::{self, PushOptions};

fn alias_pairs(aliases: &[(String, i64)], version: Option<i64>) -> Vec<Value> {
    aliases
        .iter()
        .filter(|(_, aliased)| version.is_none_or(|version| version == *aliased))
        .map(|(alias, aliased)| json!({ "alias": alias, "version": aliased.to_string() }))
        .collect()
}

pub(super) async fn model_version_json(core: &PlaneCore, record: &ModelVersionRecord) -> Result<Value, MlflowError> {
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

pub(super) async fn registered_model_json(core: &PlaneCore, model: &RegisteredModelRecord) -> Result<Value, MlflowError> {
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

pub(super) async fn registered_model(core: &PlaneCore, name: &str) -> Result<RegisteredModelRecord, MlflowError> {
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
pub(super) struct CreateRegisteredModel {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub(super) async fn create_registered_model(
    State(core): State<Arc<PlaneCore>>,
    Fields(request): Fields<CreateRegisteredModel>,
) -> MlflowResult {
    check_name(&request.name)?;
    let tags: Vec<(String, String)> = request.tags.into_iter().map(|tag| (tag.key, tag.value)).collect();
    core.store.create_registered_model(&request.name, &request.description, &tags, now_ms()).await?;
    let model = registered_model(&core, &request.name).await?;
    Ok(Json(json!({ "registered_model": registered_model_json(&core, &model).await? })))
}

#[derive(Deserialize)]
pub(super) struct ModelName {
    name: String,
}

pub(super) async fn get_registered_model(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelName>) -> MlflowResult {
    let model = registered_model(&core, &request.name).await?;
    Ok(Json(json!({ "registered_model": registered_model_json(&core, &model).await? })))
}

#[derive(Deserialize, Default)]
pub(super) struct SearchModels {
    filter: Option<String>,
    #[serde(default, deserialize_with = "flexible_i64")]
    max_results: Option<i64>,
    page_token: Option<String>,
}

pub(super) async fn search_registered_models(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<SearchModels>) -> MlflowResult {
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
pub(super) struct UpdateDescription {
    name: String,
    version: Option<String>,
    #[serde(default)]
    description: String,
}

pub(super) async fn update_registered_model(
    State(core): State<Arc<PlaneCore>>,
    Fields(request): Fields<UpdateDescription>,
) -> MlflowResult {
    core.store.update_registered_model(&request.name, &request.description, now_ms()).await?;
    let model = registered_model(&core, &request.name).await?;
    Ok(Json(json!({ "registered_model": registered_model_json(&core, &model).await? })))
}

#[derive(Deserialize)]
pub(super) struct ModelTag {
    name: String,
    version: Option<String>,
    key: String,
    #[serde(default)]
    value: String,
}

pub(super) async fn set_registered_model_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelTag>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    core.store.set_registered_model_tag(&request.name, &request.key, &request.value).await?;
    Ok(Json(json!({})))
}

pub(super) async fn get_latest_versions(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelName>) -> MlflowResult {
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

pub(super) async fn model_version(core: &PlaneCore, name: &str, version: &str) -> Result<ModelVersionRecord, MlflowError> {
    let number = parse_version(version)?;
    core.store
        .get_version(name, number)
        .await?
        .ok_or_else(|| not_found(format!("Model Version (name={name}, version={version}) not found")))
}

#[derive(Deserialize)]
pub(super) struct AliasRequest {
    name: String,
    alias: String,
    version: Option<String>,
}

pub(super) async fn set_alias(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<AliasRequest>) -> MlflowResult {
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
    versions::set_alias(&core, &request.name, &request.alias, record.version).await?;
    Ok(Json(json!({})))
}

pub(super) async fn delete_alias(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<AliasRequest>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    // Like MLflow: deleting an alias that is not set succeeds.
    core.store.delete_alias(&request.name, &request.alias).await?;
    Ok(Json(json!({})))
}

pub(super) async fn get_by_alias(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<AliasRequest>) -> MlflowResult {
    let version = core
        .store
        .resolve_alias(&request.name, &request.alias)
        .await?
        .ok_or_else(|| invalid(format!("Registered model alias {} not found.", request.alias)))?;
    let record = model_version(&core, &request.name, &version.to_string()).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

#[derive(Deserialize)]
pub(super) struct CreateModelVersion {
    name: String,
    source: String,
    run_id: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub(super) async fn create_model_version(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<CreateModelVersion>) -> MlflowResult {
    registered_model(&core, &request.name).await?;
    let run_id = request.run_id.unwrap_or_default();
    let onnx = match artifact_folder(&core, &request.source, &run_id).await? {
        Some(folder) => core.artifacts.model_onnx(&folder).await?,
        None => None,
    };
    let push =
        PushOptions { description: request.description, source: request.source.clone(), run_id: run_id.clone(), ..PushOptions::default() };
    let version = match onnx {
        Some(bytes) => versions::push(&core, &request.name, versions::Onnx::Bytes(bytes), push).await?.version,
        None => {
            tracing::info!(model = %request.name, source = %request.source, "registered without an ONNX file: not deployable");
            versions::register_without_bundle(&core, &request.name, push).await?
        }
    };
    for tag in request.tags {
        core.store.set_model_version_tag(&request.name, version, &tag.key, &tag.value).await?;
    }
    let record = model_version(&core, &request.name, &version.to_string()).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

#[derive(Deserialize)]
pub(super) struct VersionRequest {
    name: String,
    version: String,
}

pub(super) async fn get_model_version(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<VersionRequest>) -> MlflowResult {
    let record = model_version(&core, &request.name, &request.version).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

pub(super) async fn get_download_uri(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<VersionRequest>) -> MlflowResult {
    let record = model_version(&core, &request.name, &request.version).await?;
    Ok(Json(json!({ "artifact_uri": record.source })))
}

pub(super) async fn update_model_version(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<UpdateDescription>) -> MlflowResult {
    let version = request.version.ok_or_else(|| invalid("Missing value for required parameter 'version'"))?;
    let record = model_version(&core, &request.name, &version).await?;
    core.store.update_model_version_description(&request.name, record.version, &request.description).await?;
    let record = model_version(&core, &request.name, &version).await?;
    Ok(Json(json!({ "model_version": model_version_json(&core, &record).await? })))
}

pub(super) async fn set_model_version_tag(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<ModelTag>) -> MlflowResult {
    let record = model_version(&core, &request.name, request.version.as_deref().unwrap_or_default()).await?;
    core.store.set_model_version_tag(&request.name, record.version, &request.key, &request.value).await?;
    Ok(Json(json!({})))
}

pub(super) async fn search_model_versions(State(core): State<Arc<PlaneCore>>, Fields(request): Fields<SearchModels>) -> MlflowResult {
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
