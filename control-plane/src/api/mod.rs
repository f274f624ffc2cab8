//! The plane's HTTP API: native REST under `/api/v1`, MLflow's under `/api/2.0`, Prometheus at
//! `/metrics`. Every route is declared in a `routes()` table with what it asks of a token
//! (`guard`); all but health, the signing key and `/metrics` need one.

pub mod drift;
pub mod error;
pub mod guard;
pub mod metrics;
pub mod mlflow;
pub mod rollouts;
pub mod runs;
pub mod shadows;
pub mod splits;
#[cfg(test)]
mod tests;
pub mod tokens;
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use fleetml_shared::bundle::BundleDigest;
use serde::Deserialize;

use self::error::ApiError;
use self::guard::{Access, Dialect, RouteSpec};
use self::views::{AliasRequest, AliasView, DeployRequest, DeploymentView, DeviceView, StatsView, StatusView, VersionView};
use crate::PlaneCore;
use crate::access::{Area, Need};
use crate::deployment::{self, DeployError};
use crate::telemetry::InferenceFigures;
use crate::uploads;
use crate::versions::{self, PushOptions, VersionError};

/// The largest ONNX file `model push` accepts.
pub const MAX_MODEL_BYTES: usize = 512 * 1024 * 1024;

pub fn router(core: Arc<PlaneCore>) -> Router {
    let mlflow_routes = guard::build(&core, mlflow::routes()).layer(DefaultBodyLimit::max(MAX_MODEL_BYTES));
    guard::build(&core, routes()).merge(mlflow_routes).fallback(|| async { ApiError::NotFound("no such route".into()) }).with_state(core)
}

/// Every native route and what it asks of a token (`guard::Access`).
pub fn routes() -> Vec<RouteSpec> {
    use Method as M;
    let read = Access::Read;
    let operate = |action| Access::Change { need: Need::Operate, action };
    let administer = |action| Access::Change { need: Need::Administer, action };
    let native = |method: Method, path, access, handler: MethodRouter<Arc<PlaneCore>>| RouteSpec {
        method,
        path,
        access,
        area: Area::Native,
        dialect: Dialect::Native,
        handler,
    };
    vec![
        native(M::GET, "/api/v1/health", Access::Public, get(health)),
        native(M::GET, "/api/v1/signing-key", Access::Public, get(signing_key)),
        native(M::GET, "/metrics", Access::Public, get(metrics::metrics)),
        native(M::GET, "/api/v1/status", read, get(status)),
        native(M::GET, "/api/v1/whoami", read, get(tokens::whoami)),
        native(M::GET, "/api/v1/models", read, get(list_models)),
        native(M::GET, "/api/v1/models/{name}/versions", read, get(list_versions)),
        native(M::POST, "/api/v1/models/{name}/versions", operate("model.push"), post(push_version)),
        native(M::GET, "/api/v1/models/{name}/versions/{version}", read, get(get_version)),
        native(M::GET, "/api/v1/models/{name}/versions/{version}/bundle", read, get(download_bundle)),
        native(M::GET, "/api/v1/models/{name}/versions/{version}/stats", read, get(version_stats)),
        native(M::GET, "/api/v1/models/{name}/versions/{version}/profile", read, get(drift::version_profile)),
        native(M::GET, "/api/v1/models/{name}/versions/{version}/drift", read, get(drift::version_drift)),
        native(M::GET, "/api/v1/models/{name}/drift/events", read, get(drift::drift_events)),
        native(
            M::POST,
            "/api/v1/profiles",
            operate("profile.upload"),
            post(drift::upload_profile).layer(DefaultBodyLimit::max(MAX_MODEL_BYTES)),
        ),
        native(M::PUT, "/api/v1/models/{name}/aliases/{alias}", operate("alias.set"), put(set_alias)),
        native(M::GET, "/api/v1/deployments", read, get(list_deployments)),
        native(M::POST, "/api/v1/deployments", operate("deploy"), post(deploy)),
        native(M::GET, "/api/v1/devices", read, get(list_devices)),
        native(M::GET, "/api/v1/devices/{device_id}", read, get(get_device)),
        native(M::GET, "/api/v1/rollouts", read, get(rollouts::list)),
        native(M::POST, "/api/v1/rollouts", operate("rollout.start"), post(rollouts::start)),
        native(M::GET, "/api/v1/rollouts/{id}", read, get(rollouts::status)),
        native(M::POST, "/api/v1/rollouts/{id}/{action}", operate("rollout.action"), post(rollouts::action)),
        native(M::POST, "/api/v1/shadows", operate("shadow.start"), post(shadows::start)),
        native(M::GET, "/api/v1/shadows/{model}", read, get(shadows::status)),
        native(M::POST, "/api/v1/shadows/{model}/stop", operate("shadow.stop"), post(shadows::stop)),
        native(M::GET, "/api/v1/splits", read, get(splits::list)),
        native(M::POST, "/api/v1/splits", operate("split.start"), post(splits::start)),
        native(M::GET, "/api/v1/splits/{id}", read, get(splits::status)),
        native(M::POST, "/api/v1/splits/{id}/promote", operate("split.promote"), post(splits::promote)),
        native(M::POST, "/api/v1/splits/{id}/stop", operate("split.stop"), post(splits::stop)),
        native(M::GET, "/api/v1/experiments", read, get(runs::list_experiments)),
        native(M::GET, "/api/v1/runs", read, get(runs::list_runs)),
        native(M::GET, "/api/v1/runs/compare", read, get(runs::compare_runs)),
        native(M::GET, "/api/v1/runs/{run_id}", read, get(runs::get_run)),
        native(M::GET, "/api/v1/runs/{run_id}/metrics/{key}", read, get(runs::metric_history)),
        // Who holds which token is trust: admins only, also to read.
        native(M::GET, "/api/v1/tokens", Access::Change { need: Need::Administer, action: "token.list" }, get(tokens::list)),
        native(M::POST, "/api/v1/tokens", administer("token.create"), post(tokens::create)),
        native(M::POST, "/api/v1/tokens/rotate-admin", administer("token.rotate_admin"), post(tokens::rotate_admin)),
        native(M::POST, "/api/v1/tokens/{id}/revoke", administer("token.revoke"), post(tokens::revoke)),
        native(M::GET, "/api/v1/audit", read, get(tokens::audit)),
    ]
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
