//! Shadow experiments over REST: put a candidate version beside the active one on a cohort
//! (it runs on live requests and never answers), read its agreement and latency, stop it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use fleetml_shared::histogram::Histogram;
use fleetml_shared::protocol::shadow_slot;
use fleetml_shared::selector::Selector;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::PlaneCore;
use crate::api::views::parse_slots;
use crate::deployment::ControllerCommand;
use crate::store::{DeploymentRole, DeploymentTarget, ShadowWindowRecord};

#[derive(Deserialize)]
pub struct StartShadow {
    pub model: String,
    pub version: i64,
    /// Label selector of the cohort (default: every device, unless `devices` is given).
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Deserialize, Default)]
pub struct StopShadow {
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Deserialize)]
pub struct ShadowQuery {
    /// Only reports newer than this (ms since the epoch).
    #[serde(default)]
    pub since_ms: Option<i64>,
}

/// One candidate's figures, summed over the devices that ran it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CandidateFigures {
    pub candidate_version: i64,
    /// Devices whose shadow slot holds this version now.
    pub devices_running: usize,
    /// Devices that reported figures for it.
    pub devices_reporting: usize,
    pub requests: i64,
    pub errors: i64,
    pub skipped: i64,
    pub rows: i64,
    pub rows_agreed: i64,
    /// Share of compared rows where the candidate agreed with the active model.
    pub agreement: Option<f64>,
    pub mean_delta: Option<f64>,
    pub max_delta: Option<f64>,
    pub candidate_latency_p50_us: Option<f64>,
    pub candidate_latency_p95_us: Option<f64>,
    /// The active versions' p95 on the same devices over the same period.
    pub active_latency_p95_us: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowView {
    pub model: String,
    pub candidates: Vec<CandidateFigures>,
}

/// Sums shadow reports per candidate version.
pub fn summarise(windows: &[ShadowWindowRecord]) -> BTreeMap<i64, (CandidateFigures, Histogram)> {
    let mut by_candidate: BTreeMap<i64, (CandidateFigures, Histogram, f64, std::collections::BTreeSet<String>)> = BTreeMap::new();
    for window in windows {
        let (figures, latency, delta_sum, devices) = by_candidate.entry(window.candidate_version).or_default();
        figures.candidate_version = window.candidate_version;
        figures.requests += window.requests;
        figures.errors += window.errors;
        figures.skipped += window.skipped;
        figures.rows += window.rows;
        figures.rows_agreed += window.rows_agreed;
        figures.max_delta = Some(figures.max_delta.unwrap_or(0.0).max(window.delta_max));
        *delta_sum += window.delta_sum;
        latency.merge(&window.latency_us);
        devices.insert(window.device_id.clone());
    }
    by_candidate
        .into_iter()
        .map(|(version, (mut figures, latency, delta_sum, devices))| {
            figures.devices_reporting = devices.len();
            figures.agreement = (figures.rows > 0).then(|| figures.rows_agreed as f64 / figures.rows as f64);
            figures.mean_delta = (figures.rows > 0).then(|| delta_sum / figures.rows as f64);
            figures.candidate_latency_p50_us = latency.quantile(0.5);
            figures.candidate_latency_p95_us = latency.quantile(0.95);
            (version, (figures, latency))
        })
        .collect()
}

fn target(selector: Option<&str>, devices: &[String]) -> Result<Vec<DeploymentTarget>, ApiError> {
    if !devices.is_empty() {
        if selector.is_some() {
            return Err(ApiError::BadRequest("give a selector or device ids, not both".into()));
        }
        return Ok(devices.iter().map(|device_id| DeploymentTarget::Device(device_id.clone())).collect());
    }
    let selector = Selector::parse(selector.unwrap_or("")).map_err(|error| ApiError::BadRequest(format!("selector: {error}")))?;
    Ok(vec![DeploymentTarget::Selector(selector)])
}

pub async fn start(
    State(core): State<Arc<PlaneCore>>,
    Json(request): Json<StartShadow>,
) -> Result<(StatusCode, Json<ShadowView>), ApiError> {
    let record = core
        .store
        .get_version(&request.model, request.version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{}@{}", request.model, request.version)))?;
    if !record.is_deployable() {
        return Err(ApiError::BadRequest(format!("{}@{} has no signed bundle", request.model, request.version)));
    }
    let now_ms = fleetml_shared::now_ms() as i64;
    for target in target(request.selector.as_deref(), &request.devices)? {
        core.store.insert_deployment_as(&request.model, request.version, DeploymentRole::Shadow, &target, now_ms).await?;
    }
    core.controller.request(ControllerCommand::ReconcileAll);
    Ok((StatusCode::CREATED, Json(view(&core, &request.model, None).await?)))
}

pub async fn stop(
    State(core): State<Arc<PlaneCore>>,
    Path(model): Path<String>,
    body: Option<Json<StopShadow>>,
) -> Result<Json<ShadowView>, ApiError> {
    let request = body.map(|Json(body)| body).unwrap_or_default();
    let now_ms = fleetml_shared::now_ms() as i64;
    for target in target(request.selector.as_deref(), &request.devices)? {
        core.store.insert_deployment_as(&model, 0, DeploymentRole::Shadow, &target, now_ms).await?;
    }
    core.controller.request(ControllerCommand::ReconcileAll);
    Ok(Json(view(&core, &model, None).await?))
}

pub async fn status(
    State(core): State<Arc<PlaneCore>>,
    Path(model): Path<String>,
    Query(query): Query<ShadowQuery>,
) -> Result<Json<ShadowView>, ApiError> {
    Ok(Json(view(&core, &model, query.since_ms).await?))
}

async fn view(core: &PlaneCore, model: &str, since_ms: Option<i64>) -> Result<ShadowView, ApiError> {
    let since_ms = since_ms.unwrap_or(0);
    let windows = core.store.shadow_windows(model, None, since_ms).await?;
    let devices = core.store.list_devices().await?;
    let slot_key = shadow_slot(model);
    let mut running: BTreeMap<i64, usize> = BTreeMap::new();
    for device in &devices {
        for slot in parse_slots(&device.slots_json).iter().filter(|slot| slot.model == slot_key) {
            if let Some(version) = slot.active_version {
                *running.entry(version as i64).or_default() += 1;
            }
        }
    }
    let active_windows = core.store.windows_since(model, None, since_ms).await?;
    let mut candidates = Vec::new();
    let mut summaries = summarise(&windows);
    for version in running.keys() {
        summaries
            .entry(*version)
            .or_insert_with(|| (CandidateFigures { candidate_version: *version, ..Default::default() }, Histogram::default()));
    }
    for (version, (mut figures, _)) in summaries {
        figures.devices_running = running.get(&version).copied().unwrap_or(0);
        let reporting: std::collections::BTreeSet<&str> =
            windows.iter().filter(|window| window.candidate_version == version).map(|window| window.device_id.as_str()).collect();
        let mut active_latency = Histogram::default();
        for window in active_windows.iter().filter(|window| window.version != version && reporting.contains(window.device_id.as_str())) {
            active_latency.merge(&window.latency_us);
        }
        figures.active_latency_p95_us = active_latency.quantile(0.95);
        candidates.push(figures);
    }
    Ok(ShadowView { model: model.to_string(), candidates })
}
