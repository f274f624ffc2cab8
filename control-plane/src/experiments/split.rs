//! A/B splits: a cohort divided between model versions by a stable hash of the device id.
//! Membership (`variant_of`) is the one rule the start, the status, `/metrics` and the late
//! devices all use; each device's variant becomes its deployment, so desired state keeps one
//! writer path. A winner is promoted into a staged rollout of its version.

use std::collections::BTreeSet;

use fleetml_shared::selector::Selector;

use super::ExperimentError;
use super::assignment::assign;
use crate::PlaneCore;
use crate::deployment::controller::ControllerCommand;
use crate::deployment::{self, Origin};
use crate::reported;
use crate::rollout::actions;
use crate::rollout::policy::PolicyDocument;
use crate::store::{DeploymentRole, DeploymentTarget, DeviceRecord, RolloutRecord, SplitRecord, StoreError};
use crate::telemetry::InferenceFigures;
use crate::versions;

/// Whether devices that match later still get a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitState {
    /// Devices that match later are assigned a variant too.
    Running,
    /// A winner was promoted: its rollout owns the cohort now.
    Promoted,
    /// Ended without a winner: devices keep their variants, later ones get none.
    Stopped,
}

impl SplitState {
    pub const ALL: [SplitState; 3] = [SplitState::Running, SplitState::Promoted, SplitState::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            SplitState::Running => "running",
            SplitState::Promoted => "promoted",
            SplitState::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        SplitState::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitVariant {
    pub version: i64,
    pub weight: f64,
}

/// How a winner is picked from the per-variant figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinnerRule {
    LowestErrorRate,
    LowestP95Latency,
}

/// The winner of a promotion: named, or picked by a rule among variants with enough requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Winner {
    Version(i64),
    Rule { rule: WinnerRule, min_requests: u64 },
}

/// One variant's devices and figures since the split started.
#[derive(Clone, Debug)]
pub struct VariantFigures {
    pub version: i64,
    pub weight: f64,
    pub devices: Vec<String>,
    /// Devices of this variant that run its version now.
    pub active: usize,
    pub inference: InferenceFigures,
    /// From the drift windows, when the version carries a profile with output features.
    pub outputs: Vec<OutputDistribution>,
}

/// One model output's distribution over a variant's traffic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputDistribution {
    pub name: String,
    pub samples: u64,
    /// Categorical outputs: share per class (the profile's vocabulary), and outside it.
    pub classes: Vec<(i64, f64)>,
    pub other_share: Option<f64>,
    /// Numeric outputs (scores): mean, standard deviation and quartiles.
    pub mean: Option<f64>,
    pub std_dev: Option<f64>,
    pub quartiles: Vec<f64>,
}

pub struct SplitStatus {
    pub split: SplitRecord,
    pub variants: Vec<VariantFigures>,
}

fn salt(split: &SplitRecord) -> String {
    format!("split-{}", split.id)
}

fn weights(variants: &[SplitVariant]) -> Vec<(String, f64)> {
    variants.iter().map(|variant| (variant.version.to_string(), variant.weight)).collect()
}

/// The variant (version) a split gives a device, if the device is in its cohort.
pub fn variant_of(split: &SplitRecord, device: &DeviceRecord) -> Option<i64> {
    if !split.selector.matches(&device.labels) {
        return None;
    }
    assign(&salt(split), &device.device_id, &weights(&split.variants)).and_then(|version| version.parse().ok())
}

/// Starts a split of the devices matching `selector` between deployable versions of `model`.
pub async fn start(core: &PlaneCore, model: &str, selector: &str, variants: Vec<SplitVariant>) -> Result<SplitStatus, ExperimentError> {
    let selector = Selector::parse(selector).map_err(|error| ExperimentError::InvalidSelector(error.to_string()))?;
    if variants.len() < 2 || variants.iter().any(|variant| !(variant.weight.is_finite() && variant.weight > 0.0)) {
        return Err(ExperimentError::TooFewVariants);
    }
    for variant in &variants {
        versions::deployable(core, model, variant.version, "split").await?;
    }
    let now_ms = fleetml_shared::now_ms() as i64;
    let mut split = SplitRecord { id: 0, model: model.to_string(), selector, variants, created_ms: now_ms, state: SplitState::Running };
    split.id = core.store.create_split(&split).await?;
    let devices = core.store.list_devices().await?;
    assign_variants(core, &split, devices.iter()).await?;
    core.controller.request(ControllerCommand::ReconcileAll);
    status_of(core, split).await
}

/// Each device's variant becomes its deployment: the one path to desired state.
async fn assign_variants<'a>(
    core: &PlaneCore,
    split: &SplitRecord,
    devices: impl Iterator<Item = &'a DeviceRecord>,
) -> Result<usize, StoreError> {
    let mut by_version: std::collections::BTreeMap<i64, Vec<DeploymentTarget>> = std::collections::BTreeMap::new();
    for device in devices {
        if let Some(version) = variant_of(split, device) {
            by_version.entry(version).or_default().push(DeploymentTarget::Device(device.device_id.clone()));
        }
    }
    let origin = Origin::Split { split_id: split.id };
    let mut n_assigned = 0;
    for (version, targets) in &by_version {
        deployment::deploy_for(core, &split.model, *version, DeploymentRole::Active, targets, origin).await?;
        n_assigned += targets.len();
    }
    Ok(n_assigned)
}

pub async fn get(core: &PlaneCore, id: i64) -> Result<SplitRecord, ExperimentError> {
    core.store.get_split(id).await?.ok_or(ExperimentError::SplitNotFound(id))
}

pub async fn status(core: &PlaneCore, id: i64) -> Result<SplitStatus, ExperimentError> {
    status_of(core, get(core, id).await?).await
}

pub async fn list(core: &PlaneCore) -> Result<Vec<SplitStatus>, ExperimentError> {
    let mut statuses = Vec::new();
    for split in core.store.list_splits().await? {
        statuses.push(status_of(core, split).await?);
    }
    Ok(statuses)
}

/// The split's devices per variant, what they ran and what they answered since it started.
pub async fn status_of(core: &PlaneCore, split: SplitRecord) -> Result<SplitStatus, ExperimentError> {
    let devices = core.store.list_devices().await?;
    let windows = core.store.windows_since(&split.model, None, split.created_ms).await?;
    let mut variants = Vec::new();
    for variant in &split.variants {
        let members: Vec<&DeviceRecord> = devices.iter().filter(|device| variant_of(&split, device) == Some(variant.version)).collect();
        let member_ids: BTreeSet<&str> = members.iter().map(|device| device.device_id.as_str()).collect();
        let active = members
            .iter()
            .filter(|device| reported::slot(&device.slots, &split.model).is_some_and(|slot| slot.runs(variant.version as u64)))
            .count();
        let inference = InferenceFigures::sum(
            windows.iter().filter(|window| window.version == variant.version && member_ids.contains(window.device_id.as_str())),
        );
        let member_set = member_ids.iter().map(|id| id.to_string()).collect();
        let outputs = output_distribution(core, &split.model, variant.version, member_set, split.created_ms).await;
        variants.push(VariantFigures {
            version: variant.version,
            weight: variant.weight,
            devices: member_ids.iter().map(|id| id.to_string()).collect(),
            active,
            inference,
            outputs,
        });
    }
    Ok(SplitStatus { split, variants })
}

/// The output features of a version's drift windows from `devices` since `since_ms` (empty
/// when the version has no profile or the windows do not load).
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
                let total: u64 = counts.iter().fold(*other, |sum, count| sum.saturating_add(*count));
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

/// The variant a rule picks among those with enough requests; ties go to the newer version.
pub fn pick_winner(variants: &[VariantFigures], rule: WinnerRule, min_requests: u64) -> Result<i64, String> {
    let eligible: Vec<(&VariantFigures, f64)> = variants
        .iter()
        .filter(|variant| variant.inference.requests >= min_requests)
        .filter_map(|variant| {
            let value = match rule {
                WinnerRule::LowestErrorRate => variant.inference.error_rate(),
                WinnerRule::LowestP95Latency => variant.inference.latency_us.quantile(0.95),
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

/// Promotes the winner: a staged rollout of its version to the split's cohort (by default 10%
/// then 100%, with no install failure allowed). The rollout owns the cohort from then on.
pub async fn promote(
    core: &PlaneCore,
    id: i64,
    winner: Winner,
    policy: Option<PolicyDocument>,
    promoted_by: &str,
) -> Result<RolloutRecord, ExperimentError> {
    let split = get(core, id).await?;
    let version = match winner {
        Winner::Version(version) => version,
        Winner::Rule { rule, min_requests } => {
            let status = status_of(core, split.clone()).await?;
            pick_winner(&status.variants, rule, min_requests).map_err(ExperimentError::NoWinner)?
        }
    };
    if !split.variants.iter().any(|variant| variant.version == version) {
        return Err(ExperimentError::NotAVariant { version, split_id: id });
    }
    let policy = match policy {
        Some(policy) => policy,
        None => actions::parse_policy(&serde_json::json!({
            "target": { "selector": split.selector.to_string() },
            "waves": [{ "size": "10%" }, { "size": "100%" }],
            "gates": [{ "metric": "install_failure_rate", "max": 0.0 }]
        }))?,
    };
    let rollout = actions::start(core, &split.model, version, policy, promoted_by).await?;
    // The rollout owns the cohort now: devices that match later join it, not the split.
    core.store.update_split_state(id, SplitState::Promoted).await?;
    Ok(rollout)
}

/// Ends a split without a winner: its devices keep their variants, later devices get none.
pub async fn stop(core: &PlaneCore, id: i64) -> Result<SplitStatus, ExperimentError> {
    let split = get(core, id).await?;
    core.store.update_split_state(id, SplitState::Stopped).await?;
    status_of(core, SplitRecord { state: SplitState::Stopped, ..split }).await
}

/// Gives every device that matches a running split's selector, but has had no deployment of
/// the model since the split began, its variant (by the same stable hash). Returns how many.
/// A deployment made after the split began counts: it decides instead.
pub async fn assign_late_devices(core: &PlaneCore) -> Result<usize, StoreError> {
    let splits: Vec<SplitRecord> = core.store.list_splits().await?.into_iter().filter(|split| split.state == SplitState::Running).collect();
    if splits.is_empty() {
        return Ok(0);
    }
    let devices = core.store.list_devices().await?;
    let deployments = core.store.list_deployments().await?;
    let mut n_assigned = 0;
    for split in &splits {
        // Its variant, or anything deployed to it since (a later deploy or rollout wins).
        let undecided = devices.iter().filter(|device| {
            !deployments.iter().any(|deployment| {
                deployment.model == split.model
                    && deployment.role == DeploymentRole::Active
                    && deployment.created_ms >= split.created_ms
                    && deployment::targets(deployment, device)
            })
        });
        n_assigned += assign_variants(core, split, undecided).await?;
    }
    if n_assigned > 0 {
        core.controller.request(ControllerCommand::ReconcileAll);
    }
    Ok(n_assigned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetml_shared::histogram::Histogram;

    fn variant(version: i64, requests: u64, errors: u64, latency_us: &[u64]) -> VariantFigures {
        let mut histogram = Histogram::default();
        for value in latency_us {
            histogram.record(*value);
        }
        VariantFigures {
            version,
            weight: 0.5,
            devices: Vec::new(),
            active: 0,
            inference: InferenceFigures { requests, errors, latency_us: histogram, devices: BTreeSet::new() },
            outputs: Vec::new(),
        }
    }

    #[test]
    fn a_rule_picks_among_variants_with_enough_requests() {
        let variants = [variant(1, 500, 10, &[900; 20]), variant(2, 500, 5, &[1200; 20]), variant(3, 10, 0, &[100; 20])];
        assert_eq!(pick_winner(&variants, WinnerRule::LowestErrorRate, 100), Ok(2));
        assert_eq!(pick_winner(&variants, WinnerRule::LowestP95Latency, 100), Ok(1));
        // With the bar lowered the small variant wins; ties go to the newer version.
        assert_eq!(pick_winner(&variants, WinnerRule::LowestErrorRate, 1), Ok(3));
        let tied = [variant(1, 500, 0, &[]), variant(2, 500, 0, &[])];
        assert_eq!(pick_winner(&tied, WinnerRule::LowestErrorRate, 100), Ok(2));
        let error = pick_winner(&variants, WinnerRule::LowestErrorRate, 1000).unwrap_err();
        assert!(error.contains("0 of 3 variants have at least 1000 requests"), "{error}");
        // No latency recorded: no value for the latency rule.
        assert!(pick_winner(&tied, WinnerRule::LowestP95Latency, 1).is_err());
    }

    #[test]
    fn membership_follows_the_selector_and_the_hash() {
        use std::collections::BTreeMap;
        let split = SplitRecord {
            id: 7,
            model: "m".into(),
            selector: Selector::parse("site=a").unwrap(),
            variants: vec![SplitVariant { version: 1, weight: 0.5 }, SplitVariant { version: 2, weight: 0.5 }],
            created_ms: 0,
            state: SplitState::Running,
        };
        let device = |device_id: &str, site: &str| DeviceRecord {
            device_id: device_id.into(),
            labels: BTreeMap::from([("site".to_string(), site.to_string())]),
            online: true,
            first_seen_ms: 0,
            last_seen_ms: 0,
            agent_version: String::new(),
            slots: Vec::new(),
            last_refusal: None,
            vitals: Default::default(),
        };
        assert_eq!(variant_of(&split, &device("d1", "b")), None);
        let versions: BTreeSet<i64> = (0..40).filter_map(|idx| variant_of(&split, &device(&format!("d{idx}"), "a"))).collect();
        assert_eq!(versions, BTreeSet::from([1, 2]), "both variants get devices");
        // The salt is the split: another split of the same devices is another assignment.
        let other = SplitRecord { id: 8, ..split.clone() };
        let differs = (0..40).any(|idx| {
            let device = device(&format!("d{idx}"), "a");
            variant_of(&split, &device) != variant_of(&other, &device)
        });
        assert!(differs);
    }
}
