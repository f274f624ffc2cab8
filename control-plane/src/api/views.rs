//! HTTP DTOs: what the REST API and the CLI exchange (JSON). Converted explicitly from the
//! wire types and the store's records; nothing else derives serde for the API.

use std::collections::BTreeMap;

use fleetml_shared::protocol::{InstallResult, SlotPhase, SlotReport};
use serde::{Deserialize, Serialize};

use crate::registry::ModelSchema;
use crate::store::{DeploymentRecord, DeploymentTarget, DeviceRecord, ModelVersionRecord};

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

    pub fn from_report(report: &SlotReport) -> Self {
        let (phase, received_bytes, total_bytes) = match &report.phase {
            SlotPhase::Idle => ("idle", None, None),
            SlotPhase::Fetching { received_bytes, total_bytes, .. } => ("fetching", Some(*received_bytes), Some(*total_bytes)),
            SlotPhase::Verifying => ("verifying", None, None),
            SlotPhase::Installing => ("installing", None, None),
            SlotPhase::Active => ("active", None, None),
            SlotPhase::Failed { .. } => ("failed", None, None),
        };
        SlotView {
            model: report.model.clone(),
            generation: report.generation,
            phase: phase.to_string(),
            received_bytes,
            total_bytes,
            fetch_attempts: match &report.phase {
                SlotPhase::Fetching { attempts, .. } => Some(*attempts),
                _ => None,
            },
            active_version: report.active.map(|installed| installed.version),
            previous_version: report.previous.map(|installed| installed.version),
            target_version: report.target.map(|installed| installed.version),
            last_result: report.last_result.as_ref().map(|outcome| match &outcome.result {
                InstallResult::Installed { self_test_ms } => InstallResultView {
                    version: outcome.version,
                    generation: outcome.generation,
                    at_ms: outcome.at_ms,
                    ok: true,
                    kind: None,
                    reason: None,
                    self_test_ms: Some(*self_test_ms),
                },
                InstallResult::Refused { kind, reason } => InstallResultView {
                    version: outcome.version,
                    generation: outcome.generation,
                    at_ms: outcome.at_ms,
                    ok: false,
                    kind: Some(kind.as_str().to_string()),
                    reason: Some(reason.clone()),
                    self_test_ms: None,
                },
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

pub fn parse_slots(slots_json: &str) -> Vec<SlotView> {
    serde_json::from_str(slots_json).unwrap_or_default()
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
            slots: parse_slots(&record.slots_json),
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
