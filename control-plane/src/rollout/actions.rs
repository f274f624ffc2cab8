//! What operators and promotions do to rollouts: start one (the plan of its waves is fixed
//! here), pause, resume, abort, roll back, and read its status. The controller drives what
//! these start; both change the rollout only through the store.

use fleetml_shared::selector::Selector;

use super::plan::plan_waves;
use super::policy::{PolicyDocument, PolicyError};
use super::{MemberState, RolloutState};
use crate::PlaneCore;
use crate::deployment::controller::ControllerCommand;
use crate::deployment::{self, Origin};
use crate::store::{DeploymentRole, DeploymentTarget, RolloutDeviceRecord, RolloutEvent, RolloutRecord, StoreError};
use crate::versions::{self, HistoryKind, VersionError};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("rollout {0}")]
    NotFound(i64),
    #[error(transparent)]
    InvalidPolicy(#[from] PolicyError),
    #[error("give exactly one of `version` and `alias`")]
    VersionOrAlias,
    #[error("the target matches no known device")]
    NoDevices,
    #[error("rollout {id} of {model}@{version} is {state}; abort or finish it before starting another for this model")]
    AlreadyRunning { id: i64, model: String, version: i64, state: &'static str },
    #[error("no rollout action `{0}` (pause, resume, abort, rollback)")]
    UnknownAction(String),
    #[error("rollout {id} is {state}; cannot {action} it")]
    NotNow { id: i64, state: &'static str, action: &'static str },
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An operator's action on a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
    /// Every device the rollout moved goes back to the version it had.
    Rollback,
}

impl RolloutAction {
    pub fn parse(text: &str) -> Result<Self, RolloutError> {
        Ok(match text {
            "pause" => RolloutAction::Pause,
            "resume" => RolloutAction::Resume,
            "abort" => RolloutAction::Abort,
            "rollback" => RolloutAction::Rollback,
            other => return Err(RolloutError::UnknownAction(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
            RolloutAction::Rollback => "rollback",
        }
    }

    /// The states the action applies to, and the state it leads to.
    fn transition(self) -> (&'static [RolloutState], RolloutState) {
        use RolloutState::*;
        match self {
            RolloutAction::Pause => (&[Running], Paused),
            RolloutAction::Resume => (&[Paused], Running),
            RolloutAction::Abort => (&[Running, Paused], Aborted),
            RolloutAction::Rollback => (&[Running, Paused, Completed, Aborted], RolledBack),
        }
    }
}

/// A rollout with its devices and its history, oldest event first.
pub struct RolloutStatus {
    pub rollout: RolloutRecord,
    pub members: Vec<RolloutDeviceRecord>,
    pub events: Vec<RolloutEvent>,
}

/// A policy given as a TOML or JSON document in a string, or as a JSON object.
pub fn parse_policy(policy: &serde_json::Value) -> Result<PolicyDocument, RolloutError> {
    let policy = match policy {
        serde_json::Value::String(text) => PolicyDocument::parse(text),
        other => PolicyDocument::parse(&other.to_string()),
    }?;
    Ok(policy)
}

/// Starts a rollout of `model@version`: plans its waves over the devices its target matches
/// now and records it; the controller moves the first wave.
pub async fn start(
    core: &PlaneCore,
    model: &str,
    version: i64,
    policy: PolicyDocument,
    created_by: &str,
) -> Result<RolloutRecord, RolloutError> {
    versions::deployable(core, model, version, "rolled out").await?;
    // One rollout per model at a time, so no device is in two.
    if let Some(open) = core.store.list_rollouts().await?.into_iter().find(|rollout| rollout.model == model && rollout.state.is_open()) {
        return Err(RolloutError::AlreadyRunning { id: open.id, model: open.model, version: open.version, state: open.state.as_str() });
    }
    let selector = policy.target.selector.as_deref().map(Selector::parse).transpose().map_err(|error| PolicyError(error.to_string()))?;
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
        return Err(RolloutError::NoDevices);
    }
    let desired = core.store.list_desired().await?;
    let now_ms = fleetml_shared::now_ms() as i64;
    let sizes: Vec<_> = policy.waves.iter().map(|wave| wave.size).collect();
    let waves = plan_waves(&format!("{model}@{version}"), &targeted, &sizes);
    let mut members = Vec::new();
    for (wave_idx, wave) in waves.iter().enumerate() {
        for device_id in wave {
            let from_version =
                desired.iter().find(|record| record.device_id == *device_id && record.model == model).and_then(|record| record.version);
            members.push(RolloutDeviceRecord {
                device_id: device_id.clone(),
                wave: wave_idx as i64,
                state: MemberState::Pending,
                reason: String::new(),
                from_version,
                updated_ms: now_ms,
            });
        }
    }
    let rollout = RolloutRecord {
        id: 0,
        model: model.to_string(),
        version,
        policy,
        state: RolloutState::Running,
        current_wave: 0,
        wave_started_ms: now_ms,
        created_by: created_by.to_string(),
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    let id = core.store.create_rollout(&rollout, &members).await?;
    let detail = format!("{model}@{version} to {} devices in {} waves", members.len(), waves.len());
    core.store.add_rollout_event(id, "started", &detail, now_ms).await?;
    versions::record_history(core, model, version, HistoryKind::Rollout, &format!("rollout {id} started: {detail}")).await?;
    Ok(RolloutRecord { id, ..rollout })
}

pub async fn get(core: &PlaneCore, id: i64) -> Result<RolloutRecord, RolloutError> {
    core.store.get_rollout(id).await?.ok_or(RolloutError::NotFound(id))
}

pub async fn status(core: &PlaneCore, rollout: RolloutRecord) -> Result<RolloutStatus, RolloutError> {
    let members = core.store.rollout_devices(rollout.id).await?;
    let events = core.store.rollout_events(rollout.id).await?;
    Ok(RolloutStatus { rollout, members, events })
}

/// Applies an operator's action; refused when the rollout's state does not allow it.
pub async fn act(core: &PlaneCore, id: i64, action: RolloutAction) -> Result<RolloutRecord, RolloutError> {
    let current = get(core, id).await?;
    let (from_states, to_state) = action.transition();
    if !from_states.contains(&current.state) {
        return Err(RolloutError::NotNow { id, state: current.state.as_str(), action: action.as_str() });
    }
    let now_ms = fleetml_shared::now_ms() as i64;
    if action == RolloutAction::Rollback {
        roll_back(core, &current, "rolled back by the operator").await?;
    } else {
        core.store.update_rollout(id, to_state, current.current_wave, current.wave_started_ms, now_ms).await?;
        core.store.add_rollout_event(id, to_state.as_str(), &format!("{} by the operator", action.as_str()), now_ms).await?;
    }
    get(core, id).await
}

/// Sends every device the rollout moved back to the version it had (the deployment controller
/// signs the rollback permission, as the target is older), and ends the rollout.
pub async fn roll_back(core: &PlaneCore, rollout: &RolloutRecord, why: &str) -> Result<(), StoreError> {
    let now = fleetml_shared::now_ms() as i64;
    let members: Vec<RolloutDeviceRecord> = core
        .store
        .rollout_devices(rollout.id)
        .await?
        .into_iter()
        .filter(|member| member.state.in_flight() || matches!(member.state, MemberState::Healthy | MemberState::Failed))
        .collect();
    // Deployments first, states after: a plane stopped in between rolls back again on restart
    // (the rollout is still open), which sends the same versions again.
    let mut sent_back: std::collections::BTreeMap<i64, Vec<DeploymentTarget>> = std::collections::BTreeMap::new();
    for member in &members {
        if let Some(from_version) = member.from_version {
            sent_back.entry(from_version).or_default().push(DeploymentTarget::Device(member.device_id.clone()));
        }
    }
    let origin = Origin::RolloutRollback { rollout_id: rollout.id };
    for (from_version, targets) in &sent_back {
        deployment::deploy_for(core, &rollout.model, *from_version, DeploymentRole::Active, targets, origin).await?;
    }
    let mut n_rolled_back = 0;
    for member in &members {
        match member.from_version {
            Some(from_version) => {
                let reason = format!("back to version {from_version}");
                core.store.update_rollout_device(rollout.id, &member.device_id, MemberState::RolledBack, &reason, now).await?;
                n_rolled_back += 1;
            }
            None => {
                let reason = "no earlier version to roll back to";
                core.store.update_rollout_device(rollout.id, &member.device_id, MemberState::Failed, reason, now).await?;
            }
        }
    }
    core.store.update_rollout(rollout.id, RolloutState::RolledBack, rollout.current_wave, rollout.wave_started_ms, now).await?;
    core.store.add_rollout_event(rollout.id, "rolled_back", &format!("{why}: {n_rolled_back} devices sent back"), now).await?;
    core.controller.request(ControllerCommand::ReconcileAll);
    Ok(())
}
