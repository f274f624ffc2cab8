//! MLflow's artifact proxy over the plane's `artifacts::ArtifactStore`: upload, download,
//! list and delete, and where a model version's source URI points in the store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::runs::run;
use super::{MlflowError, invalid};
use crate::PlaneCore;
use crate::api::MAX_MODEL_BYTES;
use crate::api::error::ApiError;
use crate::uploads;

/// The local folder an artifact source URI names, if it is in this plane's store.
pub(super) async fn artifact_folder(core: &PlaneCore, source: &str, run_id: &str) -> Result<Option<PathBuf>, MlflowError> {
    if let Some(relative) = source.strip_prefix("mlflow-artifacts:") {
        let relative = relative.trim_start_matches('/');
        // mlflow-artifacts://host/path carries a host first.
        let relative =
            if source.starts_with("mlflow-artifacts://") { relative.split_once('/').map(|(_, rest)| rest).unwrap_or("") } else { relative };
        return Ok(Some(core.artifacts.resolve(relative)?));
    }
    if let Some(rest) = source.strip_prefix("runs:/") {
        let (source_run, path) = rest.split_once('/').unwrap_or((rest, ""));
        let source_run = if source_run.is_empty() { run_id } else { source_run };
        let found = run(core, source_run).await?;
        if found.artifact_uri.starts_with("runs:/") {
            return Err(invalid(format!("run {source_run}'s artifact URI `{}` points at a run again", found.artifact_uri)));
        }
        return Box::pin(artifact_folder(core, &format!("{}/{path}", found.artifact_uri), run_id)).await;
    }
    Ok(None)
}

/// The body streams to disk first: an artifact costs a frame of memory, whatever its size.
pub(super) async fn upload_artifact(
    State(core): State<Arc<PlaneCore>>,
    UrlPath(relative): UrlPath<String>,
    body: Body,
) -> Result<Json<Value>, MlflowError> {
    core.artifacts.resolve(&relative)?;
    let _permit = core.uploads.try_acquire().map_err(ApiError::from)?;
    let upload = uploads::receive(&core.data_dir.join("uploads"), body, MAX_MODEL_BYTES as u64).await.map_err(ApiError::from)?;
    core.artifacts.put_upload(&relative, upload).await?;
    Ok(Json(json!({})))
}

pub(super) async fn download_artifact(
    State(core): State<Arc<PlaneCore>>,
    UrlPath(relative): UrlPath<String>,
) -> Result<Response, MlflowError> {
    let bytes = core.artifacts.get(&relative).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

pub(super) async fn delete_artifact(
    State(core): State<Arc<PlaneCore>>,
    UrlPath(relative): UrlPath<String>,
) -> Result<Json<Value>, MlflowError> {
    core.artifacts.delete(&relative).await?;
    Ok(Json(json!({})))
}

pub(super) async fn list_artifacts(
    State(core): State<Arc<PlaneCore>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, MlflowError> {
    let relative = query.get("path").cloned().unwrap_or_default();
    let entries = core.artifacts.list(&relative).await?;
    // Like MLflow: a file or a missing path lists as `{}`.
    if entries.is_empty() {
        return Ok(Json(json!({})));
    }
    let files: Vec<Value> = entries
        .iter()
        .map(|entry| {
            if entry.is_dir {
                json!({ "path": entry.name, "is_dir": true })
            } else {
                json!({ "path": entry.name, "is_dir": false, "file_size": entry.size })
            }
        })
        .collect();
    Ok(Json(json!({ "files": files })))
}
