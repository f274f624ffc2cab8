//! Deployments: standing assignments of a model version to a device or a label selector, in
//! the active or the shadow slot. `deploy` is the one way to make them, for the operator's
//! API, the rollout controller, splits and shadows alike, and it writes the version history;
//! the newest deployment targeting a device decides (`deciding_deployment_in`), and the
//! `controller` turns that into the device's signed desired state.

pub mod controller;

use fleetml_shared::selector::Selector;
use fleetml_shared::topics::is_valid_name;

use self::controller::ControllerCommand;
use crate::PlaneCore;
use crate::store::{DeploymentRecord, DeploymentRole, DeploymentTarget, DeviceRecord, StoreError};
use crate::versions::{self, HistoryKind, VersionError};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("give exactly one of `version` and `alias`")]
    VersionOrAlias,
    #[error("give exactly one of `device` and `selector`")]
    DeviceOrSelector,
    #[error("`{0}` is not a valid device id")]
    InvalidDeviceId(String),
    #[error("{0}")]
    InvalidSelector(String),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asked for a deployment; it goes into the version's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Operator,
    /// A wave of a staged rollout.
    Rollout {
        rollout_id: i64,
        wave: i64,
    },
    /// A rollout sending its devices back to the versions they had.
    RolloutRollback {
        rollout_id: i64,
    },
    /// A rollout's version becoming its target's standing assignment at completion.
    RolloutCompleted {
        rollout_id: i64,
    },
    /// An A/B split giving devices their variants.
    Split {
        split_id: i64,
    },
    /// A shadow experiment.
    Shadow,
}

impl Origin {
    fn describe(self) -> String {
        match self {
            Origin::Operator => "by the operator".into(),
            Origin::Rollout { rollout_id, wave } => format!("by rollout {rollout_id}, wave {}", wave + 1),
            Origin::RolloutRollback { rollout_id } => format!("by rollout {rollout_id} rolling back"),
            Origin::RolloutCompleted { rollout_id } => format!("by rollout {rollout_id} at completion"),
            Origin::Split { split_id } => format!("by split {split_id}"),
            Origin::Shadow => "as a shadow candidate".into(),
        }
    }
}

/// The target of a deployment request: one device or a selector (exactly one).
pub fn target(device: Option<&str>, selector: Option<&str>) -> Result<DeploymentTarget, DeployError> {
    match (device, selector) {
        (Some(device_id), None) if is_valid_name(device_id) => Ok(DeploymentTarget::Device(device_id.to_string())),
        (Some(device_id), None) => Err(DeployError::InvalidDeviceId(device_id.to_string())),
        (None, Some(selector)) => {
            Selector::parse(selector).map(DeploymentTarget::Selector).map_err(|error| DeployError::InvalidSelector(error.to_string()))
        }
        _ => Err(DeployError::DeviceOrSelector),
    }
}

fn describe_target(target: &DeploymentTarget) -> String {
    match target {
        DeploymentTarget::Device(device_id) => format!("device {device_id}"),
        DeploymentTarget::Selector(selector) => format!("selector `{selector}`"),
    }
}

/// A new deployment the operator asked for, with the devices it targets now.
pub struct Deployed {
    pub record: DeploymentRecord,
    pub matched_devices: Vec<String>,
}

/// The operator's deploy: a standing assignment of a deployable version, recorded in the
/// version's history (with the rollback it implies for devices told a newer version).
pub async fn deploy(core: &PlaneCore, model: &str, version: i64, target: DeploymentTarget) -> Result<Deployed, DeployError> {
    versions::check_model_name(model)?;
    versions::deployable(core, model, version, "deployed").await?;
    // Devices told a newer version now get this one with a signed rollback permission.
    let newer_told = core
        .store
        .list_desired()
        .await?
        .iter()
        .filter(|desired| desired.model == model && desired.version.is_some_and(|told| told > version))
        .count();
    let now_ms = fleetml_shared::now_ms() as i64;
    let id = core.store.insert_deployment(model, version, &target, now_ms).await?;
    versions::record_history(core, model, version, HistoryKind::Deployed, &format!("deployment {id} to {}", describe_target(&target)))
        .await?;
    if newer_told > 0 {
        let detail = format!("deployment {id}: rollback from a newer version, signed rollback permission for up to {newer_told} devices");
        versions::record_history(core, model, version, HistoryKind::Rollback, &detail).await?;
    }
    let record = DeploymentRecord { id, model: model.to_string(), version, role: DeploymentRole::Active, target, created_ms: now_ms };
    let matched_devices = matching_devices(core, &record).await?;
    core.controller.request(ControllerCommand::ReconcileAll);
    tracing::info!(deployment_id = id, %model, version, "deployment created");
    Ok(Deployed { record, matched_devices })
}

/// The devices known now that a deployment targets (more may match later).
pub async fn matching_devices(core: &PlaneCore, deployment: &DeploymentRecord) -> Result<Vec<String>, StoreError> {
    Ok(core.store.list_devices().await?.into_iter().filter(|device| targets(deployment, device)).map(|device| device.device_id).collect())
}

/// Deployments a controller or an experiment makes, one per target, recorded as one history
/// event on `version` (version 0 withdraws the slot and is recorded nowhere). The caller asks
/// the controller to reconcile once it has made all it means to.
pub async fn deploy_for(
    core: &PlaneCore,
    model: &str,
    version: i64,
    role: DeploymentRole,
    targets: &[DeploymentTarget],
    origin: Origin,
) -> Result<Vec<i64>, StoreError> {
    let now_ms = fleetml_shared::now_ms() as i64;
    let mut ids = Vec::with_capacity(targets.len());
    for target in targets {
        ids.push(core.store.insert_deployment_as(model, version, role, target, now_ms).await?);
    }
    if version > 0 && !targets.is_empty() {
        let kind = match (role, origin) {
            (DeploymentRole::Shadow, _) => HistoryKind::Shadow,
            (DeploymentRole::Active, Origin::RolloutRollback { .. }) => HistoryKind::Rollback,
            (DeploymentRole::Active, _) => HistoryKind::Deployed,
        };
        let mut names: Vec<String> = targets.iter().take(5).map(describe_target).collect();
        if targets.len() > names.len() {
            names.push(format!("and {} more", targets.len() - names.len()));
        }
        let ids_text = match (ids.first(), ids.last()) {
            (Some(first), Some(last)) if first != last => format!("deployments {first}-{last}"),
            (Some(first), _) => format!("deployment {first}"),
            _ => String::new(),
        };
        versions::record_history(core, model, version, kind, &format!("{ids_text} {}: {}", origin.describe(), names.join(", "))).await?;
    }
    Ok(ids)
}

/// Whether a deployment targets a device.
pub fn targets(deployment: &DeploymentRecord, device: &DeviceRecord) -> bool {
    match &deployment.target {
        DeploymentTarget::Device(device_id) => *device_id == device.device_id,
        DeploymentTarget::Selector(selector) => selector.matches(&device.labels),
    }
}

/// The deployment that decides a model's active version on a device: the newest one targeting it.
pub fn deciding_deployment<'a>(deployments: &'a [DeploymentRecord], model: &str, device: &DeviceRecord) -> Option<&'a DeploymentRecord> {
    deciding_deployment_in(deployments, model, DeploymentRole::Active, device)
}

/// The deployment that decides what a device holds in one of a model's slots.
pub fn deciding_deployment_in<'a>(
    deployments: &'a [DeploymentRecord],
    model: &str,
    role: DeploymentRole,
    device: &DeviceRecord,
) -> Option<&'a DeploymentRecord> {
    deployments
        .iter()
        .filter(|deployment| deployment.model == model && deployment.role == role && targets(deployment, device))
        .max_by_key(|deployment| deployment.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeviceVitals;
    use fleetml_shared::selector::Selector;
    use std::collections::BTreeMap;

    fn device(device_id: &str, labels: &[(&str, &str)]) -> DeviceRecord {
        DeviceRecord {
            device_id: device_id.into(),
            labels: labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect::<BTreeMap<_, _>>(),
            online: true,
            first_seen_ms: 0,
            last_seen_ms: 0,
            agent_version: String::new(),
            slots: Vec::new(),
            last_refusal: None,
            vitals: DeviceVitals::default(),
        }
    }

    fn deployment(id: i64, model: &str, version: i64, target: DeploymentTarget) -> DeploymentRecord {
        DeploymentRecord { id, model: model.into(), version, role: DeploymentRole::Active, target, created_ms: 0 }
    }

    #[test]
    fn the_newest_matching_deployment_decides_per_model() {
        let deployments = vec![
            deployment(1, "m", 1, DeploymentTarget::Selector(Selector::parse("").unwrap())),
            deployment(2, "m", 2, DeploymentTarget::Selector(Selector::parse("site=a").unwrap())),
            deployment(3, "m", 3, DeploymentTarget::Device("d9".into())),
            deployment(4, "other", 7, DeploymentTarget::Selector(Selector::parse("site=b").unwrap())),
        ];
        let decide = |device: &DeviceRecord, model: &str| deciding_deployment(&deployments, model, device).map(|found| found.version);
        assert_eq!(decide(&device("d1", &[("site", "a")]), "m"), Some(2));
        assert_eq!(decide(&device("d2", &[("site", "b")]), "m"), Some(1));
        assert_eq!(decide(&device("d9", &[("site", "a")]), "m"), Some(3));
        assert_eq!(decide(&device("d2", &[("site", "b")]), "other"), Some(7));
        assert_eq!(decide(&device("d1", &[("site", "a")]), "other"), None);
    }
}
