//! The plane's HTTP API: native REST under `/api/v1`, Prometheus at `/metrics`.
//! Every `/api/v1` route but `health` and `signing-key` needs a bearer token.

pub mod drift;
pub mod error;
pub mod metrics;
pub mod mlflow;
pub mod rollouts;
pub mod runs;
pub mod shadows;
pub mod splits;
#[cfg(test)]
mod tests;
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fleetml_shared::bundle::BundleDigest;
use serde::Deserialize;

use self::error::ApiError;
use self::views::{AliasRequest, AliasView, DeployRequest, DeploymentView, DeviceView, StatsView, StatusView, VersionView};
use crate::PlaneCore;
use crate::deployment::{self, DeployError};
use crate::keys::token_hash;
use crate::telemetry::InferenceFigures;
use crate::uploads;
use crate::versions::{self, PushOptions, VersionError};

/// The largest ONNX file `model push` accepts.
pub const MAX_MODEL_BYTES: usize = 512 * 1024 * 1024;

pub fn router(core: Arc<PlaneCore>) -> Router {
    let authenticated = Router::new()
        .route("/status", get(status))
        .route("/models", get(list_models))
        .route("/models/{name}/versions", post(push_version).get(list_versions))
        .route("/models/{name}/versions/{version}", get(get_version))
        .route("/models/{name}/versions/{version}/bundle", get(download_bundle))
        .route("/models/{name}/versions/{version}/stats", get(version_stats))
        .route("/models/{name}/versions/{version}/profile", get(drift::version_profile))
        .route("/models/{name}/versions/{version}/drift", get(drift::version_drift))
        .route("/models/{name}/drift/events", get(drift::drift_events))
        .route("/profiles", post(drift::upload_profile).layer(DefaultBodyLimit::max(MAX_MODEL_BYTES)))
        .route("/models/{name}/aliases/{alias}", put(set_alias))
        .route("/deployments", post(deploy).get(list_deployments))
        .route("/devices", get(list_devices))
        .route("/rollouts", post(rollouts::start).get(rollouts::list))
        .route("/rollouts/{id}", get(rollouts::status))
        .route("/rollouts/{id}/{action}", post(rollouts::action))
        .route("/shadows", post(shadows::start))
        .route("/shadows/{model}", get(shadows::status))
        .route("/shadows/{model}/stop", post(shadows::stop))
        .route("/splits", post(splits::start).get(splits::list))
        .route("/splits/{id}", get(splits::status))
        .route("/splits/{id}/promote", post(splits::promote))
        .route("/splits/{id}/stop", post(splits::stop))
        .route("/experiments", get(runs::list_experiments))
        .route("/runs", get(runs::list_runs))
        .route("/runs/compare", get(runs::compare_runs))
        .route("/runs/{run_id}", get(runs::get_run))
        .route("/runs/{run_id}/metrics/{key}", get(runs::metric_history))
        .route("/devices/{device_id}", get(get_device))
        .route_layer(middleware::from_fn_with_state(core.clone(), require_token));
    let api = Router::new().route("/health", get(health)).route("/signing-key", get(signing_key)).merge(authenticated);
    let mlflow = mlflow::router()
        .layer(DefaultBodyLimit::max(MAX_MODEL_BYTES))
        .route_layer(middleware::from_fn_with_state(core.clone(), mlflow::require_token));
    Router::new()
        .nest("/api/v1", api)
        .merge(mlflow)
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(core)
}

/// Whether the request carries a bearer token the store knows.
pub async fn authorized(core: &PlaneCore, headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(token) =
        headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| value.strip_prefix("Bearer "))
    else {
        return Ok(false);
    };
    Ok(core.store.token_exists(&token_hash(token.trim())).await?)
}

async fn require_token(State(core): State<Arc<PlaneCore>>, headers: HeaderMap, request: Request, next: Next) -> Result<Response, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if !core.store.token_exists(&token_hash(token.trim())).await? {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

async fn health(State(core): State<Arc<PlaneCore>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "store": core.store.backend(), "broker": core.broker_url }))
}

async fn signing_key(State(core): State<Arc<PlaneCore>>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], core.public_key_pem.clone()).into_response()
}

async fn status(State(core): State<Arc<PlaneCore>>) -> Json<StatusView> {
    let counters = &core.counters;
    Json(StatusView {
        backend: core.store.backend().to_string(),
        broker: core.broker_url.clone(),
        topic_root: core.topics.root().to_string(),
        signing_key_id: core.signer.key_id().to_string(),
        refused_messages: counters.refused_messages.load(Ordering::Relaxed),
        fetch_requests: counters.fetch_requests.load(Ordering::Relaxed),
        chunks_published: counters.chunks_published.load(Ordering::Relaxed),
        chunk_bytes_published: counters.chunk_bytes_published.load(Ordering::Relaxed),
        desired_published: counters.desired_published.load(Ordering::Relaxed),
        fetch_requests_dropped: counters.fetch_requests_dropped.load(Ordering::Relaxed),
    })
}

/// `POST /api/v1/models/{name}/versions`: the body is the ONNX file, streamed to disk.
async fn push_version(
    State(core): State<Arc<PlaneCore>>,
    Path(name): Path<String>,
    Query(query): Query<views::PushQuery>,
    body: Body,
) -> Result<(StatusCode, Json<views::PushResponse>), ApiError> {
    versions::check_model_name(&name)?;
    let _permit = core.uploads.try_acquire()?;
    let upload = uploads::receive(&core.data_dir.join("uploads"), body, MAX_MODEL_BYTES as u64).await?;
    if upload.len == 0 {
        return Err(ApiError::BadRequest("the request body must be the ONNX file".into()));
    }
    let profile = match &query.profile {
        Some(sha256) => Some(core.store.get_profile(sha256).await?.ok_or_else(|| VersionError::NoSuchProfile(sha256.clone()))?),
        None => None,
    };
    let push = PushOptions {
        profile,
        description: query.description.unwrap_or_default(),
        expires_in_days: query.expires_in_days,
        latency_budget_ms: query.latency_budget_ms,
        ..PushOptions::default()
    };
    let pushed = versions::push(&core, &name, versions::Onnx::Upload(upload), push).await?;
    Ok((StatusCode::CREATED, Json(views::PushResponse::from_pushed(pushed))))
}

async fn list_models(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<VersionView>>, ApiError> {
    version_views(&core, None).await.map(Json)
}

async fn list_versions(State(core): State<Arc<PlaneCore>>, Path(name): Path<String>) -> Result<Json<Vec<VersionView>>, ApiError> {
    version_views(&core, Some(&name)).await.map(Json)
}

async fn version_views(core: &PlaneCore, model: Option<&str>) -> Result<Vec<VersionView>, ApiError> {
    let records = core.store.list_versions(model).await?;
    let mut aliases_by_model: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for record in &records {
        if !aliases_by_model.contains_key(&record.model) {
            aliases_by_model.insert(record.model.clone(), core.store.list_aliases(&record.model).await?);
        }
    }
    Ok(records
        .iter()
        .map(|record| {
            let aliases = aliases_by_model
                .get(&record.model)
                .map(|aliases| aliases.iter().filter(|(_, version)| *version == record.version).map(|(alias, _)| alias.clone()).collect())
                .unwrap_or_default();
            VersionView::from_record(record, aliases)
        })
        .collect())
}

async fn get_version(
    State(core): State<Arc<PlaneCore>>,
    Path((name, reference)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let version = versions::resolve(&core, &name, &reference).await?;
    let record = versions::get(&core, &name, version).await?;
    let mut view = VersionView::from_record(&record, versions::aliases_of(&core, &name, version).await?);
    view.history = core
        .store
        .version_events(&name, version)
        .await?
        .into_iter()
        .map(|event| views::VersionEventView { at_ms: event.at_ms, kind: event.kind, detail: event.detail })
        .collect();
    Ok(Json(view))
}

async fn download_bundle(
    State(core): State<Arc<PlaneCore>>,
    Path((name, reference)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = versions::resolve(&core, &name, &reference).await?;
    let record = versions::deployable(&core, &name, version, "downloaded").await?;
    let digest = BundleDigest::from_hex(&record.digest).ok_or_else(|| ApiError::Internal("bad digest".into()))?;
    let bytes = tokio::fs::read(versions::bundle_path(&core, &digest))
        .await
        .map_err(|error| ApiError::Internal(format!("reading bundle: {error}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct StatsQuery {
    /// Seconds back from now (default 300).
    since_s: Option<i64>,
}

async fn version_stats(
    State(core): State<Arc<PlaneCore>>,
    Path((name, reference)): Path<(String, String)>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let version = if reference == "all" { None } else { Some(versions::resolve(&core, &name, &reference).await?) };
    let since_s = query.since_s.unwrap_or(300).max(0);
    let since_ms = (fleetml_shared::now_ms() as i64).saturating_sub(since_s.saturating_mul(1000));
    let windows = core.store.windows_since(&name, version, since_ms).await?;
    let figures = InferenceFigures::sum(&windows);
    Ok(Json(StatsView {
        model: name,
        version,
        since_ms,
        devices: figures.devices.len(),
        requests: i64::try_from(figures.requests).unwrap_or(i64::MAX),
        errors: i64::try_from(figures.errors).unwrap_or(i64::MAX),
        latency_p50_us: figures.latency_us.quantile(0.5),
        latency_p95_us: figures.latency_us.quantile(0.95),
        latency_p99_us: figures.latency_us.quantile(0.99),
    }))
}

async fn set_alias(
    State(core): State<Arc<PlaneCore>>,
    Path((name, alias)): Path<(String, String)>,
    Json(request): Json<AliasRequest>,
) -> Result<Json<AliasView>, ApiError> {
    versions::check_alias(&alias)?;
    versions::set_alias(&core, &name, &alias, request.version).await?;
    Ok(Json(AliasView { model: name, alias, version: request.version }))
}

async fn deploy(
    State(core): State<Arc<PlaneCore>>,
    Json(request): Json<DeployRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    versions::check_model_name(&request.model)?;
    let version = versions::resolve_either(&core, &request.model, request.version, request.alias.as_deref())
        .await?
        .ok_or(DeployError::VersionOrAlias)?;
    let target = deployment::target(request.device.as_deref(), request.selector.as_deref())?;
    let deployed = deployment::deploy(&core, &request.model, version, target).await?;
    Ok((StatusCode::CREATED, Json(DeploymentView::from_record(&deployed.record, deployed.matched_devices))))
}

async fn list_deployments(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<DeploymentView>>, ApiError> {
    let records = core.store.list_deployments().await?;
    Ok(Json(records.iter().map(|record| DeploymentView::from_record(record, Vec::new())).collect()))
}

async fn device_views(core: &PlaneCore) -> Result<Vec<DeviceView>, ApiError> {
    let desired = core.store.list_desired().await?;
    let devices = core.store.list_devices().await?;
    let mut desired_by_device: BTreeMap<&str, Vec<&crate::store::DesiredRecord>> = BTreeMap::new();
    for record in &desired {
        desired_by_device.entry(record.device_id.as_str()).or_default().push(record);
    }
    Ok(devices
        .iter()
        .map(|device| {
            let mut view = DeviceView::from_record(device);
            for record in desired_by_device.get(device.device_id.as_str()).into_iter().flatten() {
                let slot_idx = match view.slots.iter().position(|slot| slot.model == record.model) {
                    Some(slot_idx) => slot_idx,
                    None => {
                        view.slots.push(views::SlotView::pending(&record.model));
                        view.slots.len() - 1
                    }
                };
                let slot = &mut view.slots[slot_idx];
                slot.desired_version = record.version.and_then(|version| u64::try_from(version).ok());
                slot.desired_generation = u64::try_from(record.generation).ok();
            }
            view
        })
        .collect())
}

async fn list_devices(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<DeviceView>>, ApiError> {
    device_views(&core).await.map(Json)
}

async fn get_device(State(core): State<Arc<PlaneCore>>, Path(device_id): Path<String>) -> Result<Json<DeviceView>, ApiError> {
    device_views(&core)
        .await?
        .into_iter()
        .find(|view| view.device_id == device_id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("device `{device_id}`")))
}
