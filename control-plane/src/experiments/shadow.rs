//! Shadow experiments: a candidate version in a model's shadow slot on a cohort, run on live
//! requests beside the active version without ever answering. Its figures (agreement, output
//! deltas, candidate and active latency) are summed here for the API, `/metrics` and the
//! rollout gate `shadow_agreement` alike.

use std::collections::{BTreeMap, BTreeSet};

use fleetml_shared::histogram::Histogram;
use fleetml_shared::protocol::shadow_slot;
use fleetml_shared::selector::Selector;

use super::ExperimentError;
use crate::PlaneCore;
use crate::deployment::controller::ControllerCommand;
use crate::deployment::{self, Origin};
use crate::reported;
use crate::store::{DeploymentRole, DeploymentTarget, ShadowWindowRecord};
use crate::telemetry::InferenceFigures;
use crate::versions::{self, VersionError};

/// One candidate's reports, summed over the devices that ran it.
#[derive(Clone, Debug, Default)]
pub struct CandidateSummary {
    pub requests: u64,
    pub errors: u64,
    pub skipped: u64,
    pub rows: u64,
    pub rows_agreed: u64,
    pub delta_sum: f64,
    pub max_delta: Option<f64>,
    pub latency_us: Histogram,
    pub devices: BTreeSet<String>,
}

impl CandidateSummary {
    /// Share of compared rows where the candidate agreed with the active model.
    pub fn agreement(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.rows_agreed as f64 / self.rows as f64)
    }

    pub fn mean_delta(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.delta_sum / self.rows as f64)
    }
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Sums shadow reports per candidate version.
pub fn summarise(windows: &[ShadowWindowRecord]) -> BTreeMap<i64, CandidateSummary> {
    let mut by_candidate: BTreeMap<i64, CandidateSummary> = BTreeMap::new();
    for window in windows {
        let summary = by_candidate.entry(window.candidate_version).or_default();
        summary.requests = summary.requests.saturating_add(count(window.requests));
        summary.errors = summary.errors.saturating_add(count(window.errors));
        summary.skipped = summary.skipped.saturating_add(count(window.skipped));
        summary.rows = summary.rows.saturating_add(count(window.rows));
        summary.rows_agreed = summary.rows_agreed.saturating_add(count(window.rows_agreed));
        summary.max_delta = Some(summary.max_delta.unwrap_or(0.0).max(window.delta_max));
        summary.delta_sum += window.delta_sum;
        summary.latency_us.merge(&window.latency_us);
        summary.devices.insert(window.device_id.clone());
    }
    by_candidate
}

/// A candidate as the status shows it.
#[derive(Clone, Debug)]
pub struct CandidateStatus {
    pub candidate_version: i64,
    /// Devices whose shadow slot holds this version now.
    pub devices_running: usize,
    pub summary: CandidateSummary,
    /// The active versions' p95 on the devices that reported, over the same period.
    pub active_latency_p95_us: Option<f64>,
}

pub struct ShadowStatus {
    pub model: String,
    pub candidates: Vec<CandidateStatus>,
}

/// A cohort: a selector (every device when empty) or device ids, not both.
fn cohort(selector: Option<&str>, devices: &[String]) -> Result<Vec<DeploymentTarget>, ExperimentError> {
    if !devices.is_empty() {
        if selector.is_some() {
            return Err(ExperimentError::ShadowCohort("give a selector or device ids, not both".into()));
        }
        return Ok(devices.iter().map(|device_id| DeploymentTarget::Device(device_id.clone())).collect());
    }
    let selector = Selector::parse(selector.unwrap_or("")).map_err(|error| ExperimentError::ShadowCohort(format!("selector: {error}")))?;
    Ok(vec![DeploymentTarget::Selector(selector)])
}

/// Puts `model@version` in the shadow slot of the cohort's devices.
pub async fn start(
    core: &PlaneCore,
    model: &str,
    version: i64,
    selector: Option<&str>,
    devices: &[String],
) -> Result<ShadowStatus, ExperimentError> {
    versions::deployable(core, model, version, "shadowed").await?;
    let targets = cohort(selector, devices)?;
    deployment::deploy_for(core, model, version, DeploymentRole::Shadow, &targets, Origin::Shadow).await?;
    core.controller.request(ControllerCommand::ReconcileAll);
    status(core, model, None).await
}

/// Empties the shadow slot of `model` on the cohort's devices.
pub async fn stop(core: &PlaneCore, model: &str, selector: Option<&str>, devices: &[String]) -> Result<ShadowStatus, ExperimentError> {
    if core.store.latest_version(model).await?.is_none() {
        return Err(ExperimentError::Version(VersionError::NoSuchModel(model.to_string())));
    }
    let targets = cohort(selector, devices)?;
    // Version 0 withdraws the slot.
    deployment::deploy_for(core, model, 0, DeploymentRole::Shadow, &targets, Origin::Shadow).await?;
    core.controller.request(ControllerCommand::ReconcileAll);
    status(core, model, None).await
}

/// Every candidate that runs or reported since `since_ms` (default: ever).
pub async fn status(core: &PlaneCore, model: &str, since_ms: Option<i64>) -> Result<ShadowStatus, ExperimentError> {
    let since_ms = since_ms.unwrap_or(0);
    let windows = core.store.shadow_windows(model, None, since_ms).await?;
    let devices = core.store.list_devices().await?;
    let slot_key = shadow_slot(model);
    let mut running: BTreeMap<i64, usize> = BTreeMap::new();
    for device in &devices {
        if let Some(version) = reported::slot(&device.slots, &slot_key).and_then(|slot| slot.active_version) {
            *running.entry(version as i64).or_default() += 1;
        }
    }
    let active_windows = core.store.windows_since(model, None, since_ms).await?;
    let mut summaries = summarise(&windows);
    for version in running.keys() {
        summaries.entry(*version).or_default();
    }
    let candidates = summaries
        .into_iter()
        .map(|(version, summary)| {
            let active = InferenceFigures::sum(
                active_windows.iter().filter(|window| window.version != version && summary.devices.contains(&window.device_id)),
            );
            CandidateStatus {
                candidate_version: version,
                devices_running: running.get(&version).copied().unwrap_or(0),
                active_latency_p95_us: active.latency_us.quantile(0.95),
                summary,
            }
        })
        .collect();
    Ok(ShadowStatus { model: model.to_string(), candidates })
}
