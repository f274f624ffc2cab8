//! The plane's store: one trait, two implementations (SQLite and PostgreSQL) sharing their
//! SQL text, each with its own migrations folder. Rows are converted to the domain types
//! below at this boundary; nothing above it sees SQL types.

mod sql;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use fleetml_shared::histogram::HistogramSnapshot;
use fleetml_shared::selector::Selector;

pub use sql::{PostgresStore, SqliteStore};

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
    /// JSON array of `api::SlotView`s, as last reported.
    pub slots_json: String,
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
    pub slots_json: String,
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
    pub version: i64,
    pub target: DeploymentTarget,
    pub created_ms: i64,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    // devices
    async fn apply_reported(&self, update: &ReportedUpdate) -> StoreResult<DeviceChange>;
    async fn mark_offline(&self, device_id: &str, at_ms: i64) -> StoreResult<()>;
    async fn record_vitals(&self, device_id: &str, vitals: &DeviceVitals) -> StoreResult<()>;
    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>>;
    async fn get_device(&self, device_id: &str) -> StoreResult<Option<DeviceRecord>>;

    // registry
    /// Stores a new version; fails with `Conflict` if the number is taken.
    async fn insert_version(&self, version: &ModelVersionRecord, bundle: &BundleRecord) -> StoreResult<()>;
    async fn latest_version(&self, model: &str) -> StoreResult<Option<i64>>;
    async fn get_version(&self, model: &str, version: i64) -> StoreResult<Option<ModelVersionRecord>>;
    async fn list_versions(&self, model: Option<&str>) -> StoreResult<Vec<ModelVersionRecord>>;
    async fn get_bundle(&self, digest: &str) -> StoreResult<Option<BundleRecord>>;
    async fn set_alias(&self, model: &str, alias: &str, version: i64, at_ms: i64) -> StoreResult<()>;
    async fn resolve_alias(&self, model: &str, alias: &str) -> StoreResult<Option<i64>>;
    async fn list_aliases(&self, model: &str) -> StoreResult<Vec<(String, i64)>>;

    // deployments and desired state
    async fn insert_deployment(&self, model: &str, version: i64, target: &DeploymentTarget, at_ms: i64) -> StoreResult<i64>;
    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>>;
    async fn get_desired(&self, device_id: &str, model: &str) -> StoreResult<Option<DesiredRecord>>;
    async fn put_desired(&self, desired: &DesiredRecord) -> StoreResult<()>;
    async fn list_desired(&self) -> StoreResult<Vec<DesiredRecord>>;

    // telemetry
    async fn insert_windows(&self, windows: &[InferenceWindow]) -> StoreResult<()>;
    async fn windows_since(&self, model: &str, version: Option<i64>, since_ms: i64) -> StoreResult<Vec<InferenceWindow>>;

    // tokens
    async fn insert_token(&self, token_sha256: &str, name: &str, at_ms: i64) -> StoreResult<()>;
    async fn token_exists(&self, token_sha256: &str) -> StoreResult<bool>;
    async fn count_tokens(&self) -> StoreResult<i64>;
}
