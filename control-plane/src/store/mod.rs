//! The plane's store: one trait, two implementations (SQLite and PostgreSQL) sharing their
//! SQL text, each with its own migrations folder. Rows are converted to the domain types
//! below at this boundary; nothing above it sees SQL types.

mod access_sql;
mod drift_sql;
mod rollout_sql;
pub(crate) mod slots;
mod sql;
#[cfg(test)]
pub(crate) mod tests;
mod tracking_sql;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use fleetml_shared::histogram::HistogramSnapshot;
use fleetml_shared::selector::Selector;

pub use sql::{PostgresStore, SqliteStore};

use crate::experiments::split::{SplitState, SplitVariant};
use crate::reported::ReportedSlot;
use crate::rollout::policy::PolicyDocument;
use crate::rollout::{MemberState, RolloutState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database URL `{0}`: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A request the store's rules refuse (a parameter logged twice with another value, say).
    #[error("{0}")]
    Invalid(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens (and migrates) the store a URL names.
pub async fn open(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::connect(database_url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(database_url.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub labels: BTreeMap<String, String>,
    pub online: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub agent_version: String,
    /// As last reported (stored as JSON, see `store::slots`).
    pub slots: Vec<ReportedSlot>,
    pub last_refusal: Option<String>,
    pub vitals: DeviceVitals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceVitals {
    pub cpu_percent: f64,
    pub memory_used_bytes: i64,
    pub memory_total_bytes: i64,
    pub process_rss_bytes: i64,
    pub uptime_s: i64,
    pub refused_messages: i64,
    pub last_heartbeat_ms: i64,
}

/// What a reported-state message changes.
#[derive(Clone, Debug)]
pub struct ReportedUpdate {
    pub device_id: String,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub slots: Vec<ReportedSlot>,
    pub last_refusal: Option<String>,
    pub at_ms: i64,
}

/// Whether an update made the device newly known or changed its labels (so standing
/// deployments must be re-evaluated for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    New,
    Relabelled,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelVersionRecord {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub created_ms: i64,
    pub description: String,
    /// JSON of `registry::ModelSchema`.
    pub schema_json: String,
    pub onnx_sha256: String,
    pub onnx_bytes: i64,
    pub bundle_bytes: i64,
    /// Where the model came from (an artifact URI for versions registered through MLflow).
    pub source: String,
    pub run_id: String,
}

impl ModelVersionRecord {
    /// A version is deployable when it has a signed bundle (its artifacts held an ONNX file).
    pub fn is_deployable(&self) -> bool {
        !self.digest.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BundleRecord {
    pub digest: String,
    pub model: String,
    pub version: i64,
    pub signed_manifest: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DeploymentTarget {
    Device(String),
    Selector(Selector),
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentRecord {
    pub id: i64,
    pub model: String,
    /// 0 withdraws the slot (the device is told to hold nothing in it).
    pub version: i64,
    pub role: DeploymentRole,
    pub target: DeploymentTarget,
    pub created_ms: i64,
}

/// Which of a model's slots a deployment fills on its devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeploymentRole {
    /// The version that answers requests.
    Active,
    /// A candidate that runs beside the active version and never answers.
    Shadow,
}

impl DeploymentRole {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentRole::Active => "active",
            DeploymentRole::Shadow => "shadow",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(DeploymentRole::Active),
            "shadow" => Some(DeploymentRole::Shadow),
            _ => None,
        }
    }

    /// The device's slot key for `model` in this role (`m` or `m@shadow`).
    pub fn slot_key(self, model: &str) -> String {
        match self {
            DeploymentRole::Active => model.to_string(),
            DeploymentRole::Shadow => fleetml_shared::protocol::shadow_slot(model),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredRecord {
    pub device_id: String,
    pub model: String,
    pub generation: i64,
    /// `None` when the slot should be empty.
    pub version: Option<i64>,
    pub digest: Option<String>,
    pub deployment_id: Option<i64>,
    /// The signed, encoded message as published (retained) on the device's topic.
    pub payload: Vec<u8>,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InferenceWindow {
    pub device_id: String,
    pub model: String,
    pub version: i64,
    pub window_end_ms: i64,
    pub window_ms: i64,
    pub requests: i64,
    pub errors: i64,
    pub latency_us: HistogramSnapshot,
}

/// Everything the stored windows of one model version add up to. Windows are per-heartbeat
/// deltas, so each field only grows: a counter, whatever the agents do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferenceTotals {
    pub model: String,
    pub version: i64,
    pub requests: i64,
    pub errors: i64,
    /// The merge of the windows' latency histograms (those stored since migration 0005).
    pub latency_us: HistogramSnapshot,
}

#[async_trait]
pub trait Store: TrackingStore + RolloutStore + DriftStore + AccessStore + Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    // devices
    async fn apply_reported(&self, update: &ReportedUpdate) -> StoreResult<DeviceChange>;
    async fn mark_offline(&self, device_id: &str, at_ms: i64) -> StoreResult<()>;
    async fn record_vitals(&self, device_id: &str, vitals: &DeviceVitals) -> StoreResult<()>;
    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>>;
    async fn get_device(&self, device_id: &str) -> StoreResult<Option<DeviceRecord>>;

    // registry
    /// Stores a new version (with its bundle when deployable); `Conflict` if the number is taken.
    async fn insert_version(&self, version: &ModelVersionRecord, bundle: Option<&BundleRecord>) -> StoreResult<()>;
    async fn latest_version(&self, model: &str) -> StoreResult<Option<i64>>;
    async fn get_version(&self, model: &str, version: i64) -> StoreResult<Option<ModelVersionRecord>>;
    async fn list_versions(&self, model: Option<&str>) -> StoreResult<Vec<ModelVersionRecord>>;
    async fn get_bundle(&self, digest: &str) -> StoreResult<Option<BundleRecord>>;
    async fn set_alias(&self, model: &str, alias: &str, version: i64, at_ms: i64) -> StoreResult<()>;
    async fn resolve_alias(&self, model: &str, alias: &str) -> StoreResult<Option<i64>>;
    async fn list_aliases(&self, model: &str) -> StoreResult<Vec<(String, i64)>>;

    // deployments and desired state
    async fn insert_deployment(&self, model: &str, version: i64, target: &DeploymentTarget, at_ms: i64) -> StoreResult<i64> {
        self.insert_deployment_as(model, version, DeploymentRole::Active, target, at_ms).await
    }
    async fn insert_deployment_as(
        &self,
        model: &str,
        version: i64,
        role: DeploymentRole,
        target: &DeploymentTarget,
        at_ms: i64,
    ) -> StoreResult<i64>;
    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>>;
    async fn get_desired(&self, device_id: &str, model: &str) -> StoreResult<Option<DesiredRecord>>;
    async fn put_desired(&self, desired: &DesiredRecord) -> StoreResult<()>;
    async fn list_desired(&self) -> StoreResult<Vec<DesiredRecord>>;

    // telemetry
    async fn insert_windows(&self, windows: &[InferenceWindow]) -> StoreResult<()>;
    async fn windows_since(&self, model: &str, version: Option<i64>, since_ms: i64) -> StoreResult<Vec<InferenceWindow>>;
    /// Totals over every window stored, per model version, ordered by model and version.
    /// Kept up to date by `insert_windows`, so this reads a few rows per version.
    async fn inference_totals(&self) -> StoreResult<Vec<InferenceTotals>>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentRecord {
    pub experiment_id: i64,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub creation_time: i64,
    pub last_update_time: i64,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "RUNNING" => RunStatus::Running,
            "SCHEDULED" => RunStatus::Scheduled,
            "FINISHED" => RunStatus::Finished,
            "FAILED" => RunStatus::Failed,
            "KILLED" => RunStatus::Killed,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    pub key: String,
    pub value: f64,
    pub timestamp: i64,
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub experiment_id: i64,
    pub run_name: String,
    pub user_id: String,
    pub status: RunStatus,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub lifecycle_stage: String,
    pub artifact_uri: String,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub latest_metrics: Vec<MetricPoint>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunUpdate {
    pub status: Option<RunStatus>,
    pub end_time: Option<i64>,
    pub run_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredModelRecord {
    pub name: String,
    pub created_ms: i64,
    pub last_updated_ms: i64,
    pub description: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VersionEvent {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
}

/// Experiment tracking and the registry's MLflow fields.
#[async_trait]
pub trait TrackingStore: Send + Sync + 'static {
    /// `Conflict` if the name is taken. The artifact location defaults to `mlflow-artifacts:/<id>`.
    async fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &[(String, String)],
        now_ms: i64,
    ) -> StoreResult<i64>;
    async fn get_experiment(&self, experiment_id: i64) -> StoreResult<Option<ExperimentRecord>>;
    async fn get_experiment_by_name(&self, name: &str) -> StoreResult<Option<ExperimentRecord>>;
    async fn list_experiments(&self) -> StoreResult<Vec<ExperimentRecord>>;
    async fn set_experiment_tag(&self, experiment_id: i64, key: &str, value: &str) -> StoreResult<()>;
    async fn set_experiment_lifecycle(&self, experiment_id: i64, stage: &str, now_ms: i64) -> StoreResult<()>;

    async fn create_run(&self, run: &RunRecord) -> StoreResult<()>;
    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>>;
    async fn update_run(&self, run_id: &str, update: &RunUpdate) -> StoreResult<()>;
    async fn set_run_lifecycle(&self, run_id: &str, stage: &str) -> StoreResult<()>;
    /// Runs of these experiments, newest first, with params, tags and latest metrics.
    async fn list_runs(&self, experiment_ids: &[i64]) -> StoreResult<Vec<RunRecord>>;
    /// One transaction: all of it is stored, or none. A parameter already logged with
    /// another value is `Invalid`.
    async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[MetricPoint],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> StoreResult<()>;
    async fn metric_history(&self, run_id: &str, key: &str) -> StoreResult<Vec<MetricPoint>>;
    async fn delete_run_tag(&self, run_id: &str, key: &str) -> StoreResult<()>;

    /// `Conflict` if the model exists.
    async fn create_registered_model(&self, name: &str, description: &str, tags: &[(String, String)], now_ms: i64) -> StoreResult<()>;
    async fn get_registered_model(&self, name: &str) -> StoreResult<Option<RegisteredModelRecord>>;
    async fn list_registered_models(&self) -> StoreResult<Vec<RegisteredModelRecord>>;
    async fn update_registered_model(&self, name: &str, description: &str, now_ms: i64) -> StoreResult<()>;
    async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> StoreResult<()>;
    async fn set_model_version_tag(&self, name: &str, version: i64, key: &str, value: &str) -> StoreResult<()>;
    async fn model_version_tags(&self, name: &str, version: i64) -> StoreResult<Vec<(String, String)>>;
    async fn update_model_version_description(&self, name: &str, version: i64, description: &str) -> StoreResult<()>;
    async fn delete_alias(&self, name: &str, alias: &str) -> StoreResult<bool>;
    async fn add_version_event(&self, name: &str, version: i64, kind: &str, detail: &str, at_ms: i64) -> StoreResult<()>;
    async fn version_events(&self, name: &str, version: i64) -> StoreResult<Vec<VersionEvent>>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRecord {
    pub id: i64,
    pub model: String,
    pub version: i64,
    /// Stored as JSON.
    pub policy: PolicyDocument,
    pub state: RolloutState,
    pub current_wave: i64,
    pub wave_started_ms: i64,
    pub created_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutDeviceRecord {
    pub device_id: String,
    pub wave: i64,
    pub state: MemberState,
    pub reason: String,
    /// The version the device was told before the rollout, for rolling back.
    pub from_version: Option<i64>,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutEvent {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
}

#[async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    async fn create_rollout(&self, rollout: &RolloutRecord, devices: &[RolloutDeviceRecord]) -> StoreResult<i64>;
    async fn get_rollout(&self, id: i64) -> StoreResult<Option<RolloutRecord>>;
    async fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>>;
    async fn update_rollout(&self, id: i64, state: RolloutState, current_wave: i64, wave_started_ms: i64, now_ms: i64) -> StoreResult<()>;
    async fn rollout_devices(&self, id: i64) -> StoreResult<Vec<RolloutDeviceRecord>>;
    /// How many devices are in each state, per rollout that is running, paused, or changed
    /// since `updated_since_ms`: one query, ordered by rollout and state.
    async fn rollout_device_counts(&self, updated_since_ms: i64) -> StoreResult<Vec<RolloutDeviceCount>>;
    async fn update_rollout_device(&self, id: i64, device_id: &str, state: MemberState, reason: &str, now_ms: i64) -> StoreResult<()>;
    async fn add_rollout_event(&self, id: i64, kind: &str, detail: &str, at_ms: i64) -> StoreResult<()>;
    async fn rollout_events(&self, id: i64) -> StoreResult<Vec<RolloutEvent>>;
    async fn create_split(&self, split: &SplitRecord) -> StoreResult<i64>;
    async fn get_split(&self, id: i64) -> StoreResult<Option<SplitRecord>>;
    async fn list_splits(&self) -> StoreResult<Vec<SplitRecord>>;
    async fn update_split_state(&self, id: i64, state: SplitState) -> StoreResult<()>;
    /// Adds devices to a running rollout (devices that matched its target later).
    async fn add_rollout_devices(&self, id: i64, devices: &[RolloutDeviceRecord]) -> StoreResult<()>;
    async fn insert_shadow_window(&self, window: &ShadowWindowRecord) -> StoreResult<()>;
    async fn shadow_windows(&self, model: &str, candidate_version: Option<i64>, since_ms: i64) -> StoreResult<Vec<ShadowWindowRecord>>;
}

/// What one device's shadow candidate reported for one window.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowWindowRecord {
    pub device_id: String,
    pub model: String,
    pub active_version: i64,
    pub candidate_version: i64,
    pub window_end_ms: i64,
    pub requests: i64,
    pub errors: i64,
    pub skipped: i64,
    pub rows: i64,
    pub rows_agreed: i64,
    pub delta_sum: f64,
    pub delta_max: f64,
    pub latency_us: HistogramSnapshot,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutDeviceCount {
    pub rollout_id: i64,
    pub state: MemberState,
    pub n_devices: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SplitRecord {
    pub id: i64,
    pub model: String,
    pub selector: Selector,
    /// Stored as JSON: `[{"version": 1, "weight": 0.5}, ...]`.
    pub variants: Vec<SplitVariant>,
    pub created_ms: i64,
    pub state: SplitState,
}

/// Drift monitoring's records: reference profiles, device windows, drift events.
#[async_trait]
pub trait DriftStore: Send + Sync + 'static {
    /// Stores a profile under its SHA-256 (hex); storing the same one again is a no-op.
    async fn put_profile(&self, sha256: &str, body: &[u8], at_ms: i64) -> StoreResult<()>;
    async fn get_profile(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>>;
    async fn set_version_profile(&self, model: &str, version: i64, sha256: &str) -> StoreResult<()>;
    /// The profile a version's bundle carries: its SHA-256 and JSON.
    async fn version_profile(&self, model: &str, version: i64) -> StoreResult<Option<(String, Vec<u8>)>>;
    async fn versions_with_profiles(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Stores a device window; `false` when this device already sent this sequence number.
    async fn insert_drift_window(&self, window: &DriftWindowRecord) -> StoreResult<bool>;
    /// Windows of a version that ended in `[since_ms, until_ms)`.
    async fn drift_windows(&self, model: &str, version: i64, since_ms: i64, until_ms: i64) -> StoreResult<Vec<DriftWindowRecord>>;
    async fn insert_drift_event(&self, event: &DriftEventRecord) -> StoreResult<i64>;
    async fn drift_events(&self, model: &str, version: Option<i64>) -> StoreResult<Vec<DriftEventRecord>>;
}

/// One device's drift window as received.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftWindowRecord {
    pub device_id: String,
    pub model: String,
    pub version: i64,
    pub seq: i64,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub received_ms: i64,
    pub samples: i64,
    /// postcard of `drift::window::DriftWindow`.
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DriftEventRecord {
    pub id: i64,
    pub model: String,
    pub version: i64,
    pub at_ms: i64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// `dataset` or `feature:NAME`.
    pub scope: String,
    /// JSON: the event as published.
    pub detail: String,
}

/// An API token as stored (its value only as a SHA-256 hash).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub id: i64,
    pub token_sha256: String,
    pub name: String,
    /// viewer, operator or admin (`access::Role`).
    pub role: String,
    /// Space-separated `access::Scope`s; empty: the whole API.
    pub scopes: String,
    /// The token `serve` made or was given, which `tokens rotate-admin` replaces.
    pub bootstrap: bool,
    pub created_ms: i64,
    /// The name of the token that created it (`serve` for the bootstrap one).
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

/// One change to the fleet or to trust, asked through the API or made by a controller.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub token_id: Option<i64>,
    /// The token's name, or the controller's (`rollout-controller`).
    pub token_name: String,
    /// The client's address (`-` for the plane's own actions).
    pub address: String,
    /// What was asked: `deploy`, `rollout.start`, `token.create`, ...
    pub action: String,
    /// What it was asked of: `classifier@2`, `rollout 3`, `token 5`, ...
    pub target: String,
    /// JSON: the request's parameters (no token values).
    pub detail: String,
    /// `ok`, `refused` (4xx) or `failed` (5xx).
    pub outcome: String,
    /// The HTTP status answered (0 for the plane's own actions).
    pub status: i64,
}

/// Tokens and the audit log.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// `Conflict` if a token with this hash exists.
    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<i64>;
    async fn token_by_hash(&self, token_sha256: &str) -> StoreResult<Option<TokenRecord>>;
    async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>>;
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    async fn revoke_token(&self, id: i64, at_ms: i64) -> StoreResult<()>;
    async fn set_token_bootstrap(&self, id: i64) -> StoreResult<()>;
    async fn token_used(&self, id: i64, at_ms: i64) -> StoreResult<()>;
    async fn insert_audit(&self, entry: &AuditRecord) -> StoreResult<i64>;
    /// Entries at or after `since_ms`, oldest first, at most `limit`.
    async fn audit_since(&self, since_ms: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;
}
