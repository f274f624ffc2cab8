//! HTTP DTOs: every request and answer the REST API and the CLI exchange (JSON), shared by
//! both so that a renamed field breaks the build, not a user. Converted explicitly from the
//! domain's types and the store's records; nothing else derives serde for the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::experiments::shadow::ShadowStatus;
use crate::experiments::split::{OutputDistribution, SplitStatus, WinnerRule};
use crate::registry::ModelSchema;
use crate::reported::ReportedSlot;
use crate::rollout::MemberState;
use crate::rollout::actions::RolloutStatus;
use crate::store::{DeploymentRecord, DeploymentTarget, DeviceRecord, ModelVersionRecord, RunRecord};
use crate::versions::PushedVersion;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotView {
    pub model: String,
    pub generation: u64,
    /// idle, fetching, verifying, installing, active, failed
    pub phase: String,
    pub received_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// Fetch requests sent for the transfer in progress (more than one: it stalled and was retried).
    #[serde(default)]
    pub fetch_attempts: Option<u32>,
    pub active_version: Option<u64>,
    pub previous_version: Option<u64>,
    pub target_version: Option<u64>,
    pub last_result: Option<InstallResultView>,
    /// Filled from the plane's desired state when listing.
    #[serde(default)]
    pub desired_version: Option<u64>,
    #[serde(default)]
    pub desired_generation: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstallResultView {
    pub version: u64,
    pub generation: u64,
    pub at_ms: u64,
    pub ok: bool,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub self_test_ms: Option<f32>,
}

impl SlotView {
    /// A slot the plane has a desired state for but the device has not reported yet.
    pub fn pending(model: &str) -> Self {
        SlotView {
            model: model.to_string(),
            generation: 0,
            phase: "pending".into(),
            received_bytes: None,
            total_bytes: None,
            fetch_attempts: None,
            active_version: None,
            previous_version: None,
            target_version: None,
            last_result: None,
            desired_version: None,
            desired_generation: None,
        }
    }

    pub fn from_reported(slot: &ReportedSlot) -> Self {
        let (received_bytes, total_bytes, fetch_attempts) = slot.phase.transfer_progress();
        SlotView {
            model: slot.model.clone(),
            generation: slot.generation,
            phase: slot.phase.as_str().to_string(),
            received_bytes,
            total_bytes,
            fetch_attempts,
            active_version: slot.active_version,
            previous_version: slot.previous_version,
            target_version: slot.target_version,
            last_result: slot.last_result.as_ref().map(|result| {
                let (ok, kind, reason, self_test_ms) = result.parts();
                InstallResultView {
                    version: result.version,
                    generation: result.generation,
                    at_ms: result.at_ms,
                    ok,
                    kind: kind.map(str::to_string),
                    reason: reason.map(str::to_string),
                    self_test_ms,
                }
            }),
            desired_version: None,
            desired_generation: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub device_id: String,
    pub online: bool,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub slots: Vec<SlotView>,
    pub last_refusal: Option<String>,
    pub cpu_percent: f64,
    pub memory_used_bytes: i64,
    pub process_rss_bytes: i64,
    pub uptime_s: i64,
    pub refused_messages: i64,
}

impl DeviceView {
    pub fn from_record(record: &DeviceRecord) -> Self {
        DeviceView {
            device_id: record.device_id.clone(),
            online: record.online,
            labels: record.labels.clone(),
            agent_version: record.agent_version.clone(),
            first_seen_ms: record.first_seen_ms,
            last_seen_ms: record.last_seen_ms,
            slots: record.slots.iter().map(SlotView::from_reported).collect(),
            last_refusal: record.last_refusal.clone(),
            cpu_percent: record.vitals.cpu_percent,
            memory_used_bytes: record.vitals.memory_used_bytes,
            process_rss_bytes: record.vitals.process_rss_bytes,
            uptime_s: record.vitals.uptime_s,
            refused_messages: record.vitals.refused_messages,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionView {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub created_ms: i64,
    pub description: String,
    pub schema: Option<ModelSchema>,
    pub onnx_sha256: String,
    pub onnx_bytes: i64,
    pub bundle_bytes: i64,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// False for versions registered without an ONNX file (no bundle to deploy).
    #[serde(default)]
    pub deployable: bool,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub run_id: String,
    /// Registered, alias moves, deployments (rollbacks marked): oldest first. Filled when one
    /// version is asked for.
    #[serde(default)]
    pub history: Vec<VersionEventView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionEventView {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
}

impl VersionView {
    pub fn from_record(record: &ModelVersionRecord, aliases: Vec<String>) -> Self {
        VersionView {
            model: record.model.clone(),
            version: record.version,
            digest: record.digest.clone(),
            created_ms: record.created_ms,
            description: record.description.clone(),
            schema: serde_json::from_str(&record.schema_json).ok(),
            onnx_sha256: record.onnx_sha256.clone(),
            onnx_bytes: record.onnx_bytes,
            bundle_bytes: record.bundle_bytes,
            aliases,
            deployable: record.is_deployable(),
            source: record.source.clone(),
            run_id: record.run_id.clone(),
            history: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub schema: ModelSchema,
    pub self_test_ms: f32,
    pub bundle_bytes: i64,
}

impl PushResponse {
    pub fn from_pushed(pushed: PushedVersion) -> Self {
        PushResponse {
            model: pushed.model,
            version: pushed.version,
            digest: pushed.digest.to_hex(),
            schema: pushed.schema,
            self_test_ms: pushed.self_test_ms,
            bundle_bytes: i64::try_from(pushed.bundle_bytes).unwrap_or(i64::MAX),
        }
    }
}

/// `POST /api/v1/models/{name}/versions?...`: what a push may say besides the ONNX body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Days until devices refuse the bundle (default 365; 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<u32>,
    /// The SHA-256 of a profile uploaded to `/api/v1/profiles`, attached to the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub model: String,
    pub version: Option<i64>,
    pub alias: Option<String>,
    pub device: Option<String>,
    pub selector: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: i64,
    pub model: String,
    /// 0: the slot is withdrawn.
    pub version: i64,
    /// `active` (answers) or `shadow` (runs beside the active version).
    #[serde(default = "active_role")]
    pub role: String,
    pub device: Option<String>,
    pub selector: Option<String>,
    pub created_ms: i64,
    /// Devices known now that the deployment targets (more may match later).
    #[serde(default)]
    pub matched_devices: Vec<String>,
}

fn active_role() -> String {
    "active".into()
}

impl DeploymentView {
    pub fn from_record(record: &DeploymentRecord, matched_devices: Vec<String>) -> Self {
        let (device, selector) = match &record.target {
            DeploymentTarget::Device(device_id) => (Some(device_id.clone()), None),
            DeploymentTarget::Selector(selector) => (None, Some(selector.to_string())),
        };
        DeploymentView {
            id: record.id,
            model: record.model.clone(),
            version: record.version,
            role: record.role.as_str().to_string(),
            device,
            selector,
            created_ms: record.created_ms,
            matched_devices,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AliasRequest {
    pub version: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AliasView {
    pub model: String,
    pub alias: String,
    pub version: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub model: String,
    pub version: Option<i64>,
    pub since_ms: i64,
    pub devices: usize,
    pub requests: i64,
    pub errors: i64,
    pub latency_p50_us: Option<f64>,
    pub latency_p95_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub backend: String,
    pub broker: String,
    pub topic_root: String,
    pub signing_key_id: String,
    pub refused_messages: u64,
    pub fetch_requests: u64,
    pub chunks_published: u64,
    pub chunk_bytes_published: u64,
    pub desired_published: u64,
    pub fetch_requests_dropped: u64,
}

// ---------------------------------------------------------------- rollouts

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// pending, downloading, installing, offline, healthy, failed, rolled_back
    pub devices_by_state: BTreeMap<String, usize>,
    pub devices: Vec<RolloutDeviceView>,
    pub events: Vec<RolloutEventView>,
}

impl RolloutView {
    pub fn from_status(status: RolloutStatus) -> Self {
        let RolloutStatus { rollout, members, events } = status;
        let mut devices_by_state: BTreeMap<String, usize> = BTreeMap::new();
        for member in &members {
            *devices_by_state.entry(member.state.as_str().to_string()).or_insert(0) += 1;
        }
        RolloutView {
            id: rollout.id,
            model: rollout.model,
            version: rollout.version,
            state: rollout.state.as_str().to_string(),
            current_wave: rollout.current_wave + 1,
            n_waves: rollout.policy.waves.len(),
            devices_by_state,
            devices: members
                .into_iter()
                .map(|member| RolloutDeviceView {
                    device_id: member.device_id,
                    wave: member.wave + 1,
                    state: member.state.as_str().to_string(),
                    reason: member.reason,
                    from_version: member.from_version,
                })
                .collect(),
            events: events
                .into_iter()
                .map(|event| RolloutEventView { at_ms: event.at_ms, kind: event.kind, detail: event.detail })
                .collect(),
        }
    }

    /// How many devices are in `state`.
    pub fn count(&self, state: MemberState) -> usize {
        self.devices_by_state.get(state.as_str()).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------- A/B splits

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub version: i64,
    pub weight: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub outputs: Vec<OutputDistributionView>,
}

/// One model output's distribution over a variant's traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputDistributionView {
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

impl OutputDistributionView {
    fn from_distribution(distribution: OutputDistribution) -> Self {
        OutputDistributionView {
            name: distribution.name,
            samples: distribution.samples,
            classes: distribution.classes,
            other_share: distribution.other_share,
            mean: distribution.mean,
            std_dev: distribution.std_dev,
            quartiles: distribution.quartiles,
        }
    }
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

fn count_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SplitView {
    pub fn from_status(status: SplitStatus) -> Self {
        let SplitStatus { split, variants } = status;
        SplitView {
            id: split.id,
            model: split.model,
            selector: split.selector.to_string(),
            created_ms: split.created_ms,
            state: split.state.as_str().to_string(),
            variants: variants
                .into_iter()
                .map(|variant| VariantView {
                    version: variant.version,
                    weight: variant.weight,
                    devices: variant.devices,
                    active: variant.active,
                    requests: count_i64(variant.inference.requests),
                    errors: count_i64(variant.inference.errors),
                    error_rate: variant.inference.error_rate(),
                    latency_p50_us: variant.inference.latency_us.quantile(0.5),
                    latency_p95_us: variant.inference.latency_us.quantile(0.95),
                    outputs: variant.outputs.into_iter().map(OutputDistributionView::from_distribution).collect(),
                })
                .collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WinnerRuleView {
    LowestErrorRate,
    LowestP95Latency,
}

impl From<WinnerRuleView> for WinnerRule {
    fn from(rule: WinnerRuleView) -> Self {
        match rule {
            WinnerRuleView::LowestErrorRate => WinnerRule::LowestErrorRate,
            WinnerRuleView::LowestP95Latency => WinnerRule::LowestP95Latency,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Promote {
    /// The winner, picked by hand; or
    #[serde(default)]
    pub version: Option<i64>,
    /// a rule that picks it from the per-variant figures.
    #[serde(default)]
    pub rule: Option<WinnerRuleView>,
    /// Variants with fewer requests than this cannot win by rule (default 100).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// A rollout policy; its target defaults to the split's selector.
    #[serde(default)]
    pub policy: Option<Value>,
}

// ---------------------------------------------------------------- shadows

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartShadow {
    pub model: String,
    pub version: i64,
    /// Label selector of the cohort (default: every device, unless `devices` is given).
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopShadow {
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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

impl ShadowView {
    pub fn from_status(status: ShadowStatus) -> Self {
        ShadowView {
            model: status.model,
            candidates: status
                .candidates
                .into_iter()
                .map(|candidate| {
                    let summary = &candidate.summary;
                    CandidateFigures {
                        candidate_version: candidate.candidate_version,
                        devices_running: candidate.devices_running,
                        devices_reporting: summary.devices.len(),
                        requests: count_i64(summary.requests),
                        errors: count_i64(summary.errors),
                        skipped: count_i64(summary.skipped),
                        rows: count_i64(summary.rows),
                        rows_agreed: count_i64(summary.rows_agreed),
                        agreement: summary.agreement(),
                        mean_delta: summary.mean_delta(),
                        max_delta: summary.max_delta,
                        candidate_latency_p50_us: summary.latency_us.quantile(0.5),
                        candidate_latency_p95_us: summary.latency_us.quantile(0.95),
                        active_latency_p95_us: candidate.active_latency_p95_us,
                    }
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------- tracking

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    pub experiment_id: i64,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub creation_time: i64,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricView {
    pub value: Option<f64>,
    pub step: i64,
    pub timestamp: i64,
}

impl MetricView {
    pub fn from_point(point: &crate::store::MetricPoint) -> Self {
        MetricView { value: point.value.is_finite().then_some(point.value), step: point.step, timestamp: point.timestamp }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub run_id: String,
    pub experiment_id: i64,
    pub run_name: String,
    pub user_id: String,
    pub status: String,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub artifact_uri: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// The newest point of each metric; NaN is `null`.
    pub metrics: BTreeMap<String, MetricView>,
}

impl RunView {
    pub fn from_record(run: &RunRecord) -> Self {
        RunView {
            run_id: run.run_id.clone(),
            experiment_id: run.experiment_id,
            run_name: run.run_name.clone(),
            user_id: run.user_id.clone(),
            status: run.status.as_str().to_string(),
            start_time: run.start_time,
            end_time: run.end_time,
            artifact_uri: run.artifact_uri.clone(),
            params: run.params.iter().cloned().collect(),
            tags: run.tags.iter().cloned().collect(),
            metrics: run.latest_metrics.iter().map(|point| (point.key.clone(), MetricView::from_point(point))).collect(),
        }
    }
}

/// Runs side by side: every param and metric key with each run's value (absent: `null`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunComparison {
    pub runs: Vec<RunView>,
    pub params: BTreeMap<String, Vec<Option<String>>>,
    pub metrics: BTreeMap<String, Vec<Option<f64>>>,
}

/// `GET /api/v1/runs` query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunsQuery {
    /// An experiment name or id (default: every experiment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// MLflow filter syntax: `metrics.acc > 0.9 and params.lr = '0.1'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Comma-separated MLflow order_by terms, e.g. `metrics.acc DESC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareQuery {
    /// Comma-separated run ids.
    pub ids: String,
}

// ---------------------------------------------------------------- tokens and audit

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhoAmIView {
    pub token_id: i64,
    pub name: String,
    pub role: String,
    pub scopes: Vec<String>,
}

impl WhoAmIView {
    pub fn from_principal(principal: &crate::access::Principal) -> Self {
        WhoAmIView {
            token_id: principal.token_id,
            name: principal.name.clone(),
            role: principal.role.as_str().to_string(),
            scopes: principal.scopes.iter().map(ToString::to_string).collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// viewer, operator or admin.
    pub role: String,
    /// tracking, labels:MODEL, job:ID (none: the whole API the role allows).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A duration: `30d`, `12h`, `90m` (none: until revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// A token as listed: never its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub scopes: Vec<String>,
    /// The admin token `serve` made or was given (`tokens rotate-admin` replaces it).
    pub bootstrap: bool,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

impl TokenView {
    pub fn from_record(record: &crate::store::TokenRecord) -> Self {
        TokenView {
            id: record.id,
            name: record.name.clone(),
            role: record.role.clone(),
            scopes: record.scopes.split_whitespace().map(str::to_string).collect(),
            bootstrap: record.bootstrap,
            created_ms: record.created_ms,
            created_by: record.created_by.clone(),
            expires_ms: record.expires_ms,
            revoked_ms: record.revoked_ms,
            last_used_ms: record.last_used_ms,
        }
    }
}

/// A token just made: its value, shown this once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IssuedTokenView {
    pub token: String,
    #[serde(flatten)]
    pub details: TokenView,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// How far back: `1h`, `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntryView {
    pub id: i64,
    pub at_ms: i64,
    pub token_id: Option<i64>,
    pub token_name: String,
    pub address: String,
    pub action: String,
    pub target: String,
    pub detail: Value,
    /// ok, refused or failed.
    pub outcome: String,
    pub status: i64,
}

impl AuditEntryView {
    pub fn from_record(record: &crate::store::AuditRecord) -> Self {
        AuditEntryView {
            id: record.id,
            at_ms: record.at_ms,
            token_id: record.token_id,
            token_name: record.token_name.clone(),
            address: record.address.clone(),
            action: record.action.clone(),
            target: record.target.clone(),
            detail: serde_json::from_str(&record.detail).unwrap_or(Value::String(record.detail.clone())),
            outcome: record.outcome.clone(),
            status: record.status,
        }
    }
}
