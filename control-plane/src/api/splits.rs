//! A/B splits over REST: a cohort divided between model versions by a stable hash of the
//! device id (`rollout::assignment`), per-variant figures side by side, and promotion of the
//! winner into a staged rollout.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fleetml_shared::histogram::Histogram;
use fleetml_shared::selector::Selector;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::rollouts::{RolloutView, StartRollout};
use crate::PlaneCore;
use crate::api::views::parse_slots;
use crate::deployment::ControllerCommand;
use crate::rollout::assignment::assign;
use crate::store::{DeploymentTarget, SplitRecord};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub version: i64,
    pub weight: f64,
}

#[derive(Deserialize)]
pub struct StartSplit {
    pub model: String,
    pub selector: String,
    pub variants: Vec<Variant>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantView {
    pub version: i64,
    pub weight: f64,
    pub devices: Vec<String>,
    /// Devices of this variant that run its version now.
    pub active: usize,
    pub requests: i64,
    pub errors: i64,
    pub error_rate: Option<f64>,
    pub latency_p50_us: Option<f64>,
    pub latency_p95_us: Option<f64>,
    /// The variant's outputs on its devices since the split started, from the drift windows
    /// (present when the version's bundle carries a reference profile with output features).
    #[serde(default)]
    pub outputs: Vec<OutputDistribution>,
}

/// One model output's distribution over a variant's traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputDistribution {
    pub name: String,
    pub samples: u64,
    /// Categorical outputs: share per class (the profile's vocabulary), and outside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<(i64, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_share: Option<f64>,
    /// Numeric outputs (scores): mean, standard deviation and quartiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std_dev: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quartiles: Vec<f64>,
}

/// The output features of a version's drift windows from `devices` since `since_ms`.
async fn output_distribution(
    core: &PlaneCore,
    model: &str,
    version: i64,
    devices: BTreeSet<String>,
    since_ms: i64,
) -> Vec<OutputDistribution> {
    use fleetml_shared::drift::Side;
    use fleetml_shared::drift::profile::Reference;
    use fleetml_shared::drift::window::MergedFeature;
    let Ok(profile) = crate::drift::load_profile(core, model, version).await else { return Vec::new() };
    let slice = crate::drift::DriftSlice { cohort: None, devices: Some(devices), since_ms, until_ms: i64::MAX };
    let Ok(windows) = crate::drift::slice_windows(core, model, version, &slice).await else { return Vec::new() };
    let (merged, _) = crate::drift::merge(&profile, windows.windows.iter().map(|(_, window)| window));
    let mut outputs = Vec::new();
    for (feature, merged_feature) in profile.features().iter().zip(merged.features()) {
        if feature.side != Side::Output {
            continue;
        }
        let mut distribution = OutputDistribution { name: feature.name.clone(), ..OutputDistribution::default() };
        match (&feature.reference, merged_feature) {
            (Reference::Categorical(reference), MergedFeature::Categorical { counts, other, .. }) => {
                let total: u64 = counts.iter().sum::<u64>() + other;
                distribution.samples = total;
                if total > 0 {
                    distribution.classes =
                        reference.vocabulary.iter().zip(counts).map(|(code, count)| (*code, *count as f64 / total as f64)).collect();
                    distribution.other_share = Some(*other as f64 / total as f64);
                }
            }
            (Reference::Numeric(_), MergedFeature::Numeric { kll, moments, .. }) => {
                distribution.samples = moments.count;
                if moments.count > 0 {
                    distribution.mean = Some(moments.mean);
                    distribution.std_dev = Some(moments.std_dev());
                    distribution.quartiles = [0.25, 0.5, 0.75]
                        .iter()
                        .filter_map(|rank| kll.quantile(*rank, datasketches::common::SearchCriteria::Inclusive).ok().flatten())
                        .map(|value| f64::from(value.into_inner()))
                        .collect();
                }
            }
            _ => continue,
        }
        outputs.push(distribution);
    }
    outputs
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitView {
    pub id: i64,
    pub model: String,
    pub selector: String,
    pub created_ms: i64,
    /// `running`: devices that match later get a variant too; `promoted` or `stopped`: no longer.
    #[serde(default)]
    pub state: String,
    pub variants: Vec<VariantView>,
}

pub(super) fn salt(split: &SplitRecord) -> String {
    format!("split-{}", split.id)
}

pub(super) fn weights(variants: &[Variant]) -> Vec<(String, f64)> {
    variants.iter().map(|variant| (variant.version.to_string(), variant.weight)).collect()
}

async fn view(core: &PlaneCore, split: &SplitRecord) -> Result<SplitView, ApiError> {
    let variants: Vec<Variant> = serde_json::from_str(&split.variants_json).map_err(|error| ApiError::Internal(error.to_string()))?;
    let selector = Selector::parse(&split.selector).map_err(|error| ApiError::Internal(error.to_string()))?;
    let devices = core.store.list_devices().await?;
    let windows = core.store.windows_since(&split.model, None, split.created_ms).await?;
    let weights = weights(&variants);
    let mut views = Vec::new();
    for variant in &variants {
        let version_text = variant.version.to_string();
        let members: Vec<&crate::store::DeviceRecord> = devices
            .iter()
            .filter(|device| {
                selector.matches(&device.labels) && assign(&salt(split), &device.device_id, &weights) == Some(version_text.as_str())
            })
            .collect();
        let member_ids: BTreeSet<&str> = members.iter().map(|device| device.device_id.as_str()).collect();
        let active = members
            .iter()
            .filter(|device| {
                parse_slots(&device.slots_json)
                    .iter()
                    .any(|slot| slot.model == split.model && slot.active_version == Some(variant.version as u64))
            })
            .count();
        let (mut requests, mut errors, mut latency) = (0i64, 0i64, Histogram::default());
        for window in windows.iter().filter(|window| window.version == variant.version && member_ids.contains(window.device_id.as_str())) {
            requests += window.requests;
            errors += window.errors;
            latency.merge(&window.latency_us);
        }
        let outputs = output_distribution(
            core,
            &split.model,
            variant.version,
            member_ids.iter().map(|id| id.to_string()).collect(),
            split.created_ms,
        )
        .await;
        views.push(VariantView {
            outputs,
            version: variant.version,
            weight: variant.weight,
            devices: member_ids.iter().map(|id| id.to_string()).collect(),
            active,
            requests,
            errors,
            error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
            latency_p50_us: latency.quantile(0.5),
            latency_p95_us: latency.quantile(0.95),
        });
    }
    Ok(SplitView {
        id: split.id,
        model: split.model.clone(),
        selector: split.selector.clone(),
        created_ms: split.created_ms,
        state: split.state.clone(),
        variants: views,
    })
}

pub async fn start(State(core): State<Arc<PlaneCore>>, Json(request): Json<StartSplit>) -> Result<(StatusCode, Json<SplitView>), ApiError> {
    let selector = Selector::parse(&request.selector).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    if request.variants.len() < 2 || request.variants.iter().any(|variant| !(variant.weight.is_finite() && variant.weight > 0.0)) {
        return Err(ApiError::BadRequest("a split needs at least two variants with positive weights".into()));
    }
    for variant in &request.variants {
        let record = core
            .store
            .get_version(&request.model, variant.version)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("{}@{}", request.model, variant.version)))?;
        if !record.is_deployable() {
            return Err(ApiError::BadRequest(format!("{}@{} has no signed bundle", request.model, variant.version)));
        }
    }
    let now_ms = fleetml_shared::now_ms() as i64;
    let mut split = SplitRecord {
        id: 0,
        model: request.model.clone(),
        selector: selector.to_string(),
        variants_json: serde_json::to_string(&request.variants).map_err(|error| ApiError::Internal(error.to_string()))?,
        created_ms: now_ms,
        state: "running".into(),
    };
    split.id = core.store.create_split(&split).await?;
    // Each device's variant becomes its deployment: the one path to desired state.
    let weights = weights(&request.variants);
    for device in core.store.list_devices().await?.iter().filter(|device| selector.matches(&device.labels)) {
        if let Some(version) = assign(&salt(&split), &device.device_id, &weights).and_then(|version| version.parse::<i64>().ok()) {
            core.store.insert_deployment(&request.model, version, &DeploymentTarget::Device(device.device_id.clone()), now_ms).await?;
        }
    }
    core.controller.request(ControllerCommand::ReconcileAll);
    Ok((StatusCode::CREATED, Json(view(&core, &split).await?)))
}

pub async fn status(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<SplitView>, ApiError> {
    let split = core.store.get_split(id).await?.ok_or_else(|| ApiError::NotFound(format!("split {id}")))?;
    Ok(Json(view(&core, &split).await?))
}

pub async fn list(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<SplitView>>, ApiError> {
    let mut views = Vec::new();
    for split in core.store.list_splits().await? {
        views.push(view(&core, &split).await?);
    }
    Ok(Json(views))
}

#[derive(Deserialize)]
pub struct Promote {
    /// The winner, picked by hand; or
    #[serde(default)]
    pub version: Option<i64>,
    /// a rule that picks it from the per-variant figures.
    #[serde(default)]
    pub rule: Option<WinnerRule>,
    /// Variants with fewer requests than this cannot win by rule (default 100).
    #[serde(default)]
    pub min_requests: Option<i64>,
    /// A rollout policy; its target defaults to the split's selector.
    pub policy: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WinnerRule {
    LowestErrorRate,
    LowestP95Latency,
}

/// The variant a rule picks among those with enough requests; ties go to the newer version.
pub fn pick_winner(variants: &[VariantView], rule: WinnerRule, min_requests: i64) -> Result<i64, String> {
    let eligible: Vec<(&VariantView, f64)> = variants
        .iter()
        .filter(|variant| variant.requests >= min_requests)
        .filter_map(|variant| {
            let value = match rule {
                WinnerRule::LowestErrorRate => variant.error_rate,
                WinnerRule::LowestP95Latency => variant.latency_p95_us,
            };
            value.map(|value| (variant, value))
        })
        .collect();
    if eligible.len() < 2 {
        return Err(format!(
            "{} of {} variants have at least {min_requests} requests and a value for the rule: a rule needs two to compare",
            eligible.len(),
            variants.len()
        ));
    }
    eligible
        .into_iter()
        .min_by(|(left, left_value), (right, right_value)| left_value.total_cmp(right_value).then(right.version.cmp(&left.version)))
        .map(|(variant, _)| variant.version)
        .ok_or_else(|| "no variant".to_string())
}

/// Promotes the winner: a staged rollout of its version to the split's cohort.
pub async fn promote(
    State(core): State<Arc<PlaneCore>>,
    Path(id): Path<i64>,
    Json(request): Json<Promote>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let split = core.store.get_split(id).await?.ok_or_else(|| ApiError::NotFound(format!("split {id}")))?;
    let variants: Vec<Variant> = serde_json::from_str(&split.variants_json).map_err(|error| ApiError::Internal(error.to_string()))?;
    let version = match (request.version, request.rule) {
        (Some(version), None) => version,
        (None, Some(rule)) => {
            let split_view = view(&core, &split).await?;
            pick_winner(&split_view.variants, rule, request.min_requests.unwrap_or(100)).map_err(ApiError::Conflict)?
        }
        _ => return Err(ApiError::BadRequest("give the winning `version` or a `rule` to pick it, not both".into())),
    };
    if !variants.iter().any(|variant| variant.version == version) {
        return Err(ApiError::BadRequest(format!("version {version} is not a variant of split {id}")));
    }
    let policy = request.policy.unwrap_or_else(|| {
        serde_json::json!({ "target": { "selector": split.selector }, "waves": [{ "size": "10%" }, { "size": "100%" }],
            "gates": [{ "metric": "install_failure_rate", "max": 0.0 }] })
    });
    let started =
        super::rollouts::start(State(core.clone()), Json(StartRollout { model: split.model, version: Some(version), alias: None, policy }))
            .await?;
    // The rollout owns the cohort now: devices that match later join it, not the split.
    core.store.update_split_state(id, "promoted").await?;
    Ok(started)
}

/// Ends a split without a winner: its devices keep their variants, later devices get none.
pub async fn stop(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<SplitView>, ApiError> {
    let split = core.store.get_split(id).await?.ok_or_else(|| ApiError::NotFound(format!("split {id}")))?;
    core.store.update_split_state(id, "stopped").await?;
    Ok(Json(view(&core, &SplitRecord { state: "stopped".into(), ..split }).await?))
}

/// Gives every device that matches a running split's selector, but has had no deployment of
/// the model since the split began, its variant (by the same stable hash). Returns how many.
/// A selector deployment made after the split began counts: it decides instead.
pub async fn assign_late_devices(core: &PlaneCore) -> Result<usize, crate::store::StoreError> {
    let splits: Vec<SplitRecord> = core.store.list_splits().await?.into_iter().filter(|split| split.state == "running").collect();
    if splits.is_empty() {
        return Ok(0);
    }
    let devices = core.store.list_devices().await?;
    let deployments = core.store.list_deployments().await?;
    let now_ms = fleetml_shared::now_ms() as i64;
    let mut n_assigned = 0;
    for split in &splits {
        let (Ok(selector), Ok(variants)) = (Selector::parse(&split.selector), serde_json::from_str::<Vec<Variant>>(&split.variants_json))
        else {
            continue;
        };
        let weights = weights(&variants);
        for device in devices.iter().filter(|device| selector.matches(&device.labels)) {
            // Its variant, or anything deployed to it since (a later deploy or rollout wins).
            let decided_since_split = deployments.iter().any(|deployment| {
                deployment.model == split.model
                    && deployment.role == crate::store::DeploymentRole::Active
                    && deployment.created_ms >= split.created_ms
                    && crate::deployment::targets(deployment, device)
            });
            if decided_since_split {
                continue;
            }
            if let Some(version) = assign(&salt(split), &device.device_id, &weights).and_then(|version| version.parse::<i64>().ok()) {
                core.store.insert_deployment(&split.model, version, &DeploymentTarget::Device(device.device_id.clone()), now_ms).await?;
                n_assigned += 1;
            }
        }
    }
    if n_assigned > 0 {
        core.controller.request(ControllerCommand::ReconcileAll);
    }
    Ok(n_assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(version: i64, requests: i64, error_rate: Option<f64>, latency_p95_us: Option<f64>) -> VariantView {
        VariantView {
            version,
            weight: 0.5,
            devices: Vec::new(),
            active: 0,
            requests,
            errors: 0,
            error_rate,
            latency_p50_us: None,
            latency_p95_us,
            outputs: Vec::new(),
        }
    }

    #[test]
    fn a_rule_picks_among_variants_with_enough_requests() {
        let variants =
            [variant(1, 500, Some(0.02), Some(900.0)), variant(2, 500, Some(0.01), Some(1200.0)), variant(3, 10, Some(0.0), Some(100.0))];
        assert_eq!(pick_winner(&variants, WinnerRule::LowestErrorRate, 100), Ok(2));
        assert_eq!(pick_winner(&variants, WinnerRule::LowestP95Latency, 100), Ok(1));
        // With the bar lowered the small variant wins; ties go to the newer version.
        assert_eq!(pick_winner(&variants, WinnerRule::LowestErrorRate, 1), Ok(3));
        let tied = [variant(1, 500, Some(0.0), None), variant(2, 500, Some(0.0), None)];
        assert_eq!(pick_winner(&tied, WinnerRule::LowestErrorRate, 100), Ok(2));
        let error = pick_winner(&variants, WinnerRule::LowestErrorRate, 1000).unwrap_err();
        assert!(error.contains("0 of 3 variants have at least 1000 requests"), "{error}");
    }
}
