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
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fleetml_shared::histogram::Histogram;
use fleetml_shared::selector::Selector;
use fleetml_shared::topics::is_valid_name;
use serde::Deserialize;

use self::error::ApiError;
use self::views::{AliasRequest, DeployRequest, DeploymentView, DeviceView, StatsView, StatusView, VersionView};
use crate::PlaneCore;
use crate::deployment::{ControllerCommand, targets};
use crate::keys::token_hash;
use crate::store::DeploymentTarget;

/// The largest ONNX file `model push` accepts.
pub const MAX_MODEL_BYTES: usize = 512 * 1024 * 1024;

pub fn router(core: Arc<PlaneCore>) -> Router {
    let authenticated = Router::new()
        .route("/status", get(status))
        .route("/models", get(list_models))
        .route("/models/{name}/versions", post(push_version).get(list_versions).layer(DefaultBodyLimit::max(MAX_MODEL_BYTES)))
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

fn check_model_name(name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) { Ok(()) } else { Err(ApiError::BadRequest(format!("`{name}` is not a valid model name (A-Z a-z 0-9 - _ .)"))) }
}

#[derive(Deserialize)]
struct PushQuery {
    description: Option<String>,
    /// Days until devices refuse the bundle (default 365; 0: never).
    expires_in_days: Option<u64>,
    latency_budget_ms: Option<u32>,
    /// The SHA-256 of a profile uploaded to `/api/v1/profiles`, attached to the bundle.
    profile: Option<String>,
}

async fn push_version(
    State(core): State<Arc<PlaneCore>>,
    Path(name): Path<String>,
    Query(query): Query<PushQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<views::PushResponse>), ApiError> {
    check_model_name(&name)?;
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body must be the ONNX file".into()));
    }
    let profile = match &query.profile {
        Some(sha256) => Some(
            core.store
                .get_profile(sha256)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no profile {sha256}: upload it to /api/v1/profiles first")))?,
        ),
        None => None,
    };
    let push = crate::PushOptions {
        profile,
        description: query.description.unwrap_or_default(),
        expires_in_days: query.expires_in_days,
        latency_budget_ms: query.latency_budget_ms,
        ..crate::PushOptions::default()
    };
    let pushed = core.push_model(&name, body.to_vec(), push).await?;
    Ok((StatusCode::CREATED, Json(pushed)))
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
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let version = core.resolve_reference(&name, &version).await?;
    let record = core.store.get_version(&name, version).await?.ok_or_else(|| ApiError::NotFound(format!("{name}@{version}")))?;
    let aliases =
        core.store.list_aliases(&name).await?.into_iter().filter(|(_, aliased)| *aliased == version).map(|(alias, _)| alias).collect();
    let mut view = VersionView::from_record(&record, aliases);
    view.history = core
        .store
        .version_events(&name, version)
        .await?
        .into_iter()
        .map(|event| views::VersionEventView { at_ms: event.at_ms, kind: event.kind, detail: event.detail })
        .collect();
    Ok(Json(view))
}

async fn download_bundle(State(core): State<Arc<PlaneCore>>, Path((name, version)): Path<(String, String)>) -> Result<Response, ApiError> {
    let version = core.resolve_reference(&name, &version).await?;
    let record = core.store.get_version(&name, version).await?.ok_or_else(|| ApiError::NotFound(format!("{name}@{version}")))?;
    let digest = fleetml_shared::bundle::BundleDigest::from_hex(&record.digest).ok_or_else(|| ApiError::Internal("bad digest".into()))?;
    let bytes = tokio::fs::read(core.bundle_path(&digest)).await.map_err(|error| ApiError::Internal(format!("reading bundle: {error}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct StatsQuery {
    /// Seconds back from now (default 300).
    since_s: Option<i64>,
}

async fn version_stats(
    State(core): State<Arc<PlaneCore>>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let version = if version == "all" { None } else { Some(core.resolve_reference(&name, &version).await?) };
    let since_ms = fleetml_shared::now_ms() as i64 - query.since_s.unwrap_or(300).max(0) * 1000;
    let windows = core.store.windows_since(&name, version, since_ms).await?;
    let mut histogram = Histogram::default();
    let mut devices = std::collections::BTreeSet::new();
    let (mut requests, mut errors) = (0i64, 0i64);
    for window in &windows {
        histogram.merge(&window.latency_us);
        requests += window.requests;
        errors += window.errors;
        devices.insert(window.device_id.as_str());
    }
    Ok(Json(StatsView {
        model: name,
        version,
        since_ms,
        devices: devices.len(),
        requests,
        errors,
        latency_p50_us: histogram.quantile(0.5),
        latency_p95_us: histogram.quantile(0.95),
        latency_p99_us: histogram.quantile(0.99),
    }))
}

async fn set_alias(
    State(core): State<Arc<PlaneCore>>,
    Path((name, alias)): Path<(String, String)>,
    Json(request): Json<AliasRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if alias.parse::<i64>().is_ok() || !is_valid_name(&alias) {
        return Err(ApiError::BadRequest(format!("`{alias}` is not a valid alias (a name, not a number)")));
    }
    core.store.get_version(&name, request.version).await?.ok_or_else(|| ApiError::NotFound(format!("{name}@{}", request.version)))?;
    core.store.set_alias(&name, &alias, request.version, fleetml_shared::now_ms() as i64).await?;
    Ok(Json(serde_json::json!({ "model": name, "alias": alias, "version": request.version })))
}

async fn deploy(
    State(core): State<Arc<PlaneCore>>,
    Json(request): Json<DeployRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    check_model_name(&request.model)?;
    let version = match (request.version, request.alias.as_deref()) {
        (Some(version), None) => version,
        (None, Some(alias)) => core.resolve_reference(&request.model, alias).await?,
        _ => {
            return Err(ApiError::BadRequest("give exactly one of `version` and `alias`".into()));
        }
    };
    let target = match (request.device, request.selector) {
        (Some(device_id), None) if is_valid_name(&device_id) => DeploymentTarget::Device(device_id),
        (Some(device_id), None) => {
            return Err(ApiError::BadRequest(format!("`{device_id}` is not a valid device id")));
        }
        (None, Some(selector)) => {
            DeploymentTarget::Selector(Selector::parse(&selector).map_err(|error| ApiError::BadRequest(error.to_string()))?)
        }
        _ => {
            return Err(ApiError::BadRequest("give exactly one of `device` and `selector`".into()));
        }
    };
    let version_record =
        core.store.get_version(&request.model, version).await?.ok_or_else(|| ApiError::NotFound(format!("{}@{version}", request.model)))?;
    if !version_record.is_deployable() {
        return Err(ApiError::BadRequest(format!(
            "{}@{version} has no signed bundle (no ONNX file among its artifacts), so it cannot be deployed",
            request.model
        )));
    }
    let now_ms = fleetml_shared::now_ms() as i64;
    // Devices told a newer version now get this one with a signed rollback permission.
    let newer_told = core
        .store
        .list_desired()
        .await?
        .iter()
        .filter(|desired| desired.model == request.model && desired.version.is_some_and(|told| told > version))
        .count();
    let id = core.store.insert_deployment(&request.model, version, &target, now_ms).await?;
    let target_text = match &target {
        DeploymentTarget::Device(device_id) => format!("device {device_id}"),
        DeploymentTarget::Selector(selector) => format!("selector `{selector}`"),
    };
    core.store.add_version_event(&request.model, version, "deployed", &format!("deployment {id} to {target_text}"), now_ms).await?;
    if newer_told > 0 {
        let detail = format!("deployment {id}: rollback from a newer version, signed rollback permission for up to {newer_told} devices");
        core.store.add_version_event(&request.model, version, "rollback", &detail, now_ms).await?;
    }
    let record = core
        .store
        .list_deployments()
        .await?
        .into_iter()
        .find(|deployment| deployment.id == id)
        .ok_or_else(|| ApiError::Internal("deployment vanished".into()))?;
    let matched =
        core.store.list_devices().await?.into_iter().filter(|device| targets(&record, device)).map(|device| device.device_id).collect();
    core.controller.request(ControllerCommand::ReconcileAll);
    tracing::info!(deployment_id = id, model = %record.model, version, "deployment created");
    Ok((StatusCode::CREATED, Json(DeploymentView::from_record(&record, matched))))
}

async fn list_deployments(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<DeploymentView>>, ApiError> {
    let records = core.store.list_deployments().await?;
    Ok(Json(records.iter().map(|record| DeploymentView::from_record(record, Vec::new())).collect()))
}

async fn device_views(core: &PlaneCore) -> Result<Vec<DeviceView>, ApiError> {
    let desired = core.store.list_desired().await?;
    let devices = core.store.list_devices().await?;
    Ok(devices
        .iter()
        .map(|device| {
            let mut view = DeviceView::from_record(device);
            for record in desired.iter().filter(|record| record.device_id == device.device_id) {
                let slot_idx = match view.slots.iter().position(|slot| slot.model == record.model) {
                    Some(slot_idx) => slot_idx,
                    None => {
                        view.slots.push(views::SlotView::pending(&record.model));
                        view.slots.len() - 1
                    }
                };
                let slot = &mut view.slots[slot_idx];
                slot.desired_version = record.version.map(|version| version as u64);
                slot.desired_generation = Some(record.generation as u64);
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
