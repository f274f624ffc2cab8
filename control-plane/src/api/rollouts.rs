//! Rollouts over REST: start (with a policy document), list, status, pause, resume, abort,
//! roll back. The CLI (`fleetml rollout ...`) calls these.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fleetml_shared::selector::Selector;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use crate::PlaneCore;
use crate::rollout::controller::RolloutController;
use crate::rollout::plan::plan_waves;
use crate::rollout::policy::PolicyDocument;
use crate::store::{RolloutDeviceRecord, RolloutRecord};

#[derive(Deserialize)]
pub struct StartRollout {
    pub model: String,
    pub version: Option<i64>,
    pub alias: Option<String>,
    /// The policy: a TOML or JSON document as a string, or a JSON object.
    pub policy: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutDeviceView {
    pub device_id: String,
    pub wave: i64,
    pub state: String,
    pub reason: String,
    pub from_version: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutEventView {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: i64,
    pub model: String,
    pub version: i64,
    /// running, paused, completed, aborted, rolled_back
    pub state: String,
    /// 1-based.
    pub current_wave: i64,
    pub n_waves: usize,
    pub devices_by_state: BTreeMap<String, usize>,
    pub devices: Vec<RolloutDeviceView>,
    pub events: Vec<RolloutEventView>,
}

async fn view(core: &PlaneCore, rollout: &RolloutRecord) -> Result<RolloutView, ApiError> {
    let devices = core.store.rollout_devices(rollout.id).await?;
    let n_waves = serde_json::from_str::<PolicyDocument>(&rollout.policy_json).map(|policy| policy.waves.len()).unwrap_or(0);
    let mut devices_by_state = BTreeMap::new();
    for device in &devices {
        *devices_by_state.entry(device.state.clone()).or_insert(0) += 1;
    }
    let events = core.store.rollout_events(rollout.id).await?;
    Ok(RolloutView {
        id: rollout.id,
        model: rollout.model.clone(),
        version: rollout.version,
        state: rollout.state.clone(),
        current_wave: rollout.current_wave + 1,
        n_waves,
        devices_by_state,
        devices: devices
            .into_iter()
            .map(|device| RolloutDeviceView {
                device_id: device.device_id,
                wave: device.wave + 1,
                state: device.state,
                reason: device.reason,
                from_version: device.from_version,
            })
            .collect(),
        events: events.into_iter().map(|event| RolloutEventView { at_ms: event.at_ms, kind: event.kind, detail: event.detail }).collect(),
    })
}

pub async fn start(
    State(core): State<Arc<PlaneCore>>,
    Json(request): Json<StartRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let policy = match &request.policy {
        Value::String(text) => PolicyDocument::parse(text),
        other => PolicyDocument::parse(&other.to_string()),
    }
    .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let version = match (request.version, request.alias.as_deref()) {
        (Some(version), None) => version,
        (None, Some(alias)) => core.resolve_reference(&request.model, alias).await?,
        _ => return Err(ApiError::BadRequest("give exactly one of `version` and `alias`".into())),
    };
    let record =
        core.store.get_version(&request.model, version).await?.ok_or_else(|| ApiError::NotFound(format!("{}@{version}", request.model)))?;
    if !record.is_deployable() {
        return Err(ApiError::BadRequest(format!("{}@{version} has no signed bundle, so it cannot be rolled out", request.model)));
    }
    // One rollout per model at a time, so no device is in two.
    if let Some(active) = core
        .store
        .list_rollouts()
        .await?
        .into_iter()
        .find(|rollout| rollout.model == request.model && matches!(rollout.state.as_str(), "running" | "paused"))
    {
        return Err(ApiError::Conflict(format!(
            "rollout {} of {}@{} is {}; abort or finish it before starting another for this model",
            active.id, active.model, active.version, active.state
        )));
    }
    let selector =
        policy.target.selector.as_deref().map(Selector::parse).transpose().map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let targeted: Vec<String> = core
        .store
        .list_devices()
        .await?
        .into_iter()
        .filter(|device| {
            policy.target.devices.contains(&device.device_id) || selector.as_ref().is_some_and(|selector| selector.matches(&device.labels))
        })
        .map(|device| device.device_id)
        .collect();
    if targeted.is_empty() {
        return Err(ApiError::BadRequest("the target matches no known device".into()));
    }
    let desired = core.store.list_desired().await?;
    let now_ms = fleetml_shared::now_ms() as i64;
    let sizes: Vec<_> = policy.waves.iter().map(|wave| wave.size).collect();
    let waves = plan_waves(&format!("{}@{version}", request.model), &targeted, &sizes);
    let mut members = Vec::new();
    for (wave_idx, wave) in waves.iter().enumerate() {
        for device_id in wave {
            let from_version = desired
                .iter()
                .find(|record| record.device_id == *device_id && record.model == request.model)
                .and_then(|record| record.version);
            members.push(RolloutDeviceRecord {
                device_id: device_id.clone(),
                wave: wave_idx as i64,
                state: "pending".into(),
                reason: String::new(),
                from_version,
                updated_ms: now_ms,
            });
        }
    }
    let policy_json = serde_json::to_string(&policy).map_err(|error| ApiError::Internal(error.to_string()))?;
    let rollout = RolloutRecord {
        id: 0,
        model: request.model.clone(),
        version,
        policy_json,
        state: "running".into(),
        current_wave: 0,
        wave_started_ms: now_ms,
        created_by: "admin".into(),
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    let id = core.store.create_rollout(&rollout, &members).await?;
    let detail = format!("{}@{version} to {} devices in {} waves", request.model, members.len(), waves.len());
    core.store.add_rollout_event(id, "started", &detail, now_ms).await?;
    core.store.add_version_event(&request.model, version, "rollout", &format!("rollout {id} started: {detail}"), now_ms).await?;
    let created = core.store.get_rollout(id).await?.ok_or_else(|| ApiError::Internal("rollout vanished".into()))?;
    Ok((StatusCode::CREATED, Json(view(&core, &created).await?)))
}

pub async fn list(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let mut views = Vec::new();
    for rollout in core.store.list_rollouts().await? {
        views.push(view(&core, &rollout).await?);
    }
    Ok(Json(views))
}

async fn rollout(core: &PlaneCore, id: i64) -> Result<RolloutRecord, ApiError> {
    core.store.get_rollout(id).await?.ok_or_else(|| ApiError::NotFound(format!("rollout {id}")))
}

pub async fn status(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(view(&core, &rollout(&core, id).await?).await?))
}

pub async fn action(State(core): State<Arc<PlaneCore>>, Path((id, action)): Path<(i64, String)>) -> Result<Json<RolloutView>, ApiError> {
    let current = rollout(&core, id).await?;
    let now_ms = fleetml_shared::now_ms() as i64;
    let (from_states, to_state): (&[&str], &str) = match action.as_str() {
        "pause" => (&["running"], "paused"),
        "resume" => (&["paused"], "running"),
        "abort" => (&["running", "paused"], "aborted"),
        "rollback" => (&["running", "paused", "completed", "aborted"], "rolled_back"),
        other => return Err(ApiError::NotFound(format!("no rollout action `{other}` (pause, resume, abort, rollback)"))),
    };
    if !from_states.contains(&current.state.as_str()) {
        return Err(ApiError::Conflict(format!("rollout {id} is {}; cannot {action} it", current.state)));
    }
    if action == "rollback" {
        RolloutController { core: core.clone() }.roll_back(&current, "rolled back by the operator").await?;
    } else {
        core.store.update_rollout(id, to_state, current.current_wave, current.wave_started_ms, now_ms).await?;
        core.store.add_rollout_event(id, to_state, &format!("{action} by the operator"), now_ms).await?;
    }
    Ok(Json(view(&core, &rollout(&core, id).await?).await?))
}
