//! The SQL behind `Store`, written once with `$n` placeholders and instantiated for SQLite
//! and PostgreSQL by a macro (sqlx::Any cannot decode SQLite booleans, so it is not used).
//! Invariant: every integer column is BIGINT and read as i64; timestamps are milliseconds.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use fleetml_shared::histogram::{Histogram, HistogramSnapshot};
use fleetml_shared::selector::Selector;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{
    BundleRecord, DeploymentRecord, DeploymentRole, DeploymentTarget, DesiredRecord, DeviceChange, DeviceRecord, DeviceVitals,
    InferenceTotals, InferenceWindow, ModelVersionRecord, ReportedUpdate, Store, StoreError, StoreResult,
};

pub struct SqliteStore {
    pub(super) pool: SqlitePool,
}

pub struct PostgresStore {
    pub(super) pool: PgPool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

impl SqliteStore {
    /// `BEGIN IMMEDIATE`: take the write lock up front. A deferred transaction that reads and
    /// then writes fails with SQLITE_BUSY_SNAPSHOT when another writer committed in between,
    /// and the busy timeout cannot help it.
    pub(super) async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

impl PostgresStore {
    pub(super) async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new().max_connections(16).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

fn parse_labels(text: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("device labels: {error}")))
}

pub(super) fn encode_histogram(snapshot: &HistogramSnapshot) -> Vec<u8> {
    postcard::to_stdvec(snapshot).unwrap_or_default()
}

pub(super) fn decode_histogram(bytes: &[u8]) -> StoreResult<HistogramSnapshot> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt(format!("latency histogram: {error}")))
}

/// What a batch of windows adds to the running totals, per model version: merged here so a
/// batch of hundreds of windows costs one upsert per version and histogram bucket.
fn batch_totals(windows: &[InferenceWindow]) -> Vec<InferenceTotals> {
    let mut by_version: BTreeMap<(&str, i64), (InferenceTotals, Histogram)> = BTreeMap::new();
    for window in windows {
        let (totals, latency) = by_version.entry((window.model.as_str(), window.version)).or_insert_with(|| {
            (InferenceTotals { model: window.model.clone(), version: window.version, ..InferenceTotals::default() }, Histogram::default())
        });
        // Clamped at 0: the upserts add these to running totals and rely on them not being negative.
        totals.requests = totals.requests.saturating_add(window.requests.max(0));
        totals.errors = totals.errors.saturating_add(window.errors.max(0));
        latency.merge(&window.latency_us);
    }
    by_version.into_values().map(|(totals, latency)| InferenceTotals { latency_us: latency.snapshot(), ..totals }).collect()
}

fn target_columns(target: &DeploymentTarget) -> (&'static str, String) {
    match target {
        DeploymentTarget::Device(device_id) => ("device", device_id.clone()),
        DeploymentTarget::Selector(selector) => ("selector", selector.to_string()),
    }
}

fn parse_target(kind: &str, text: &str) -> StoreResult<DeploymentTarget> {
    match kind {
        "device" => Ok(DeploymentTarget::Device(text.to_string())),
        "selector" => Selector::parse(text)
            .map(DeploymentTarget::Selector)
            .map_err(|error| StoreError::Corrupt(format!("deployment selector: {error}"))),
        other => Err(StoreError::Corrupt(format!("deployment target kind `{other}`"))),
    }
}

pub(super) fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(database_error) if database_error.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(error),
    }
}

macro_rules! row_to_device {
    ($row:expr) => {{
        let row = $row;
        DeviceRecord {
            device_id: row.try_get("device_id")?,
            labels: parse_labels(&row.try_get::<String, _>("labels")?)?,
            online: row.try_get("online")?,
            first_seen_ms: row.try_get("first_seen_ms")?,
            last_seen_ms: row.try_get("last_seen_ms")?,
            agent_version: row.try_get("agent_version")?,
            slots: super::slots::decode(&row.try_get::<String, _>("slots")?)?,
            last_refusal: row.try_get("last_refusal")?,
            vitals: DeviceVitals {
                cpu_percent: row.try_get("cpu_percent")?,
                memory_used_bytes: row.try_get("memory_used_bytes")?,
                memory_total_bytes: row.try_get("memory_total_bytes")?,
                process_rss_bytes: row.try_get("process_rss_bytes")?,
                uptime_s: row.try_get("uptime_s")?,
                refused_messages: row.try_get("refused_messages")?,
                last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
            },
        }
    }};
}

macro_rules! row_to_version {
    ($row:expr) => {{
        let row = $row;
        ModelVersionRecord {
            model: row.try_get("model")?,
            version: row.try_get("version")?,
            digest: row.try_get("digest")?,
            created_ms: row.try_get("created_ms")?,
            description: row.try_get("description")?,
            schema_json: row.try_get("schema")?,
            onnx_sha256: row.try_get("onnx_sha256")?,
            onnx_bytes: row.try_get("onnx_bytes")?,
            bundle_bytes: row.try_get("bundle_bytes")?,
            source: row.try_get("source")?,
            run_id: row.try_get("run_id")?,
        }
    }};
}

macro_rules! row_to_desired {
    ($row:expr) => {{
        let row = $row;
        DesiredRecord {
            device_id: row.try_get("device_id")?,
            model: row.try_get("model")?,
            generation: row.try_get("generation")?,
            version: row.try_get("version")?,
            digest: row.try_get("digest")?,
            deployment_id: row.try_get("deployment_id")?,
            payload: row.try_get("payload")?,
            updated_ms: row.try_get("updated_ms")?,
        }
    }};
}

macro_rules! row_to_window {
    ($row:expr) => {{
        let row = $row;
        InferenceWindow {
            device_id: row.try_get("device_id")?,
            model: row.try_get("model")?,
            version: row.try_get("version")?,
            window_end_ms: row.try_get("window_end_ms")?,
            window_ms: row.try_get("window_ms")?,
            requests: row.try_get("requests")?,
            errors: row.try_get("errors")?,
            latency_us: decode_histogram(&row.try_get::<Vec<u8>, _>("latency")?)?,
        }
    }};
}

macro_rules! impl_store {
    ($store:ty, $backend:literal) => {
        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn apply_reported(&self, update: &ReportedUpdate) -> StoreResult<DeviceChange> {
                let mut transaction = self.write_transaction().await?;
                let previous: Option<String> = sqlx::query("SELECT labels FROM devices WHERE device_id = $1")
                    .bind(&update.device_id)
                    .fetch_optional(&mut *transaction)
                    .await?
                    .map(|row| row.try_get("labels"))
                    .transpose()?;
                let change = match previous {
                    None => DeviceChange::New,
                    Some(text) if parse_labels(&text)? != update.labels => DeviceChange::Relabelled,
                    Some(_) => DeviceChange::Unchanged,
                };
                sqlx::query(
                    "INSERT INTO devices (device_id, labels, online, first_seen_ms, last_seen_ms, agent_version, slots, last_refusal) \
                     VALUES ($1, $2, TRUE, $3, $3, $4, $5, $6) \
                     ON CONFLICT (device_id) DO UPDATE SET labels = $2, online = TRUE, last_seen_ms = $3, \
                     agent_version = $4, slots = $5, last_refusal = $6",
                )
                .bind(&update.device_id)
                .bind(labels_json(&update.labels))
                .bind(update.at_ms)
                .bind(&update.agent_version)
                .bind(super::slots::encode(&update.slots))
                .bind(&update.last_refusal)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(change)
            }

            async fn mark_offline(&self, device_id: &str, at_ms: i64) -> StoreResult<()> {
                sqlx::query("UPDATE devices SET online = FALSE, last_seen_ms = $2 WHERE device_id = $1")
                    .bind(device_id)
                    .bind(at_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn record_vitals(&self, device_id: &str, vitals: &DeviceVitals) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE devices SET cpu_percent = $2, memory_used_bytes = $3, memory_total_bytes = $4, process_rss_bytes = $5, \
                     uptime_s = $6, refused_messages = $7, last_heartbeat_ms = $8, last_seen_ms = $8 WHERE device_id = $1",
                )
                .bind(device_id)
                .bind(vitals.cpu_percent)
                .bind(vitals.memory_used_bytes)
                .bind(vitals.memory_total_bytes)
                .bind(vitals.process_rss_bytes)
                .bind(vitals.uptime_s)
                .bind(vitals.refused_messages)
                .bind(vitals.last_heartbeat_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>> {
                let rows = sqlx::query("SELECT * FROM devices ORDER BY device_id").fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(row_to_device!(row))).collect()
            }

            async fn get_device(&self, device_id: &str) -> StoreResult<Option<DeviceRecord>> {
                let row = sqlx::query("SELECT * FROM devices WHERE device_id = $1").bind(device_id).fetch_optional(&self.pool).await?;
                row.map(|row| Ok(row_to_device!(&row))).transpose()
            }

            async fn insert_version(&self, version: &ModelVersionRecord, bundle: Option<&BundleRecord>) -> StoreResult<()> {
                let mut transaction = self.write_transaction().await?;
                sqlx::query("INSERT INTO models (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(&version.model)
                    .bind(version.created_ms)
                    .execute(&mut *transaction)
                    .await?;
                if let Some(bundle) = bundle {
                sqlx::query(
                        "INSERT INTO bundles (digest, model, version, signed_manifest, created_ms) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .bind(&bundle.digest)
                    .bind(&bundle.model)
                    .bind(bundle.version)
                    .bind(&bundle.signed_manifest)
                    .bind(version.created_ms)
                    .execute(&mut *transaction)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO model_versions (model, version, digest, created_ms, description, schema, onnx_sha256, onnx_bytes, bundle_bytes, source, run_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&version.model)
                .bind(version.version)
                .bind(&version.digest)
                .bind(version.created_ms)
                .bind(&version.description)
                .bind(&version.schema_json)
                .bind(&version.onnx_sha256)
                .bind(version.onnx_bytes)
                .bind(version.bundle_bytes)
                .bind(&version.source)
                .bind(&version.run_id)
                .execute(&mut *transaction)
                .await
                .map_err(|error| conflict_or(error, || format!("version {} of model `{}` exists already", version.version, version.model)))?;
                transaction.commit().await?;
                Ok(())
            }

            async fn latest_version(&self, model: &str) -> StoreResult<Option<i64>> {
                let row = sqlx::query("SELECT MAX(version) AS latest FROM model_versions WHERE model = $1")
                    .bind(model)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(row.try_get("latest")?)
            }

            async fn get_version(&self, model: &str, version: i64) -> StoreResult<Option<ModelVersionRecord>> {
                let row = sqlx::query("SELECT * FROM model_versions WHERE model = $1 AND version = $2")
                    .bind(model)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| Ok(row_to_version!(&row))).transpose()
            }

            async fn list_versions(&self, model: Option<&str>) -> StoreResult<Vec<ModelVersionRecord>> {
                let rows = match model {
                    Some(model) => {
                        sqlx::query("SELECT * FROM model_versions WHERE model = $1 ORDER BY version").bind(model).fetch_all(&self.pool).await?
                    }
                    None => sqlx::query("SELECT * FROM model_versions ORDER BY model, version").fetch_all(&self.pool).await?,
                };
                rows.iter().map(|row| Ok(row_to_version!(row))).collect()
            }

            async fn get_bundle(&self, digest: &str) -> StoreResult<Option<BundleRecord>> {
                let row = sqlx::query("SELECT digest, model, version, signed_manifest FROM bundles WHERE digest = $1")
                    .bind(digest)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok(BundleRecord {
                        digest: row.try_get("digest")?,
                        model: row.try_get("model")?,
                        version: row.try_get("version")?,
                        signed_manifest: row.try_get("signed_manifest")?,
                    })
                })
                .transpose()
            }

            async fn set_alias(&self, model: &str, alias: &str, version: i64, at_ms: i64) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO aliases (model, alias, version, updated_ms) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (model, alias) DO UPDATE SET version = $3, updated_ms = $4",
                )
                .bind(model)
                .bind(alias)
                .bind(version)
                .bind(at_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn resolve_alias(&self, model: &str, alias: &str) -> StoreResult<Option<i64>> {
                let row = sqlx::query("SELECT version FROM aliases WHERE model = $1 AND alias = $2")
                    .bind(model)
                    .bind(alias)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|row| row.try_get("version")).transpose()?)
            }

            async fn list_aliases(&self, model: &str) -> StoreResult<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT alias, version FROM aliases WHERE model = $1 ORDER BY alias").bind(model).fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok((row.try_get("alias")?, row.try_get("version")?))).collect()
            }

            async fn insert_deployment_as(
                &self,
                model: &str,
                version: i64,
                role: DeploymentRole,
                target: &DeploymentTarget,
                at_ms: i64,
            ) -> StoreResult<i64> {
                let (kind, text) = target_columns(target);
                let row = sqlx::query(
                    "INSERT INTO deployments (model, version, target_kind, target, created_ms, role) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(model)
                .bind(version)
                .bind(kind)
                .bind(text)
                .bind(at_ms)
                .bind(role.as_str())
                .fetch_one(&self.pool)
                .await?;
                Ok(row.try_get("id")?)
            }

            async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>> {
                let rows = sqlx::query("SELECT id, model, version, role, target_kind, target, created_ms FROM deployments ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(DeploymentRecord {
                            id: row.try_get("id")?,
                            model: row.try_get("model")?,
                            version: row.try_get("version")?,
                            role: DeploymentRole::parse(&row.try_get::<String, _>("role")?)
                                .ok_or_else(|| StoreError::Corrupt("deployment role".into()))?,
                            target: parse_target(&row.try_get::<String, _>("target_kind")?, &row.try_get::<String, _>("target")?)?,
                            created_ms: row.try_get("created_ms")?,
                        })
                    })
                    .collect()
            }

            async fn get_desired(&self, device_id: &str, model: &str) -> StoreResult<Option<DesiredRecord>> {
                let row = sqlx::query("SELECT * FROM desired_states WHERE device_id = $1 AND model = $2")
                    .bind(device_id)
                    .bind(model)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| Ok(row_to_desired!(&row))).transpose()
            }

            async fn put_desired(&self, desired: &DesiredRecord) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO desired_states (device_id, model, generation, version, digest, deployment_id, payload, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (device_id, model) DO UPDATE SET generation = $3, version = $4, digest = $5, deployment_id = $6, \
                     payload = $7, updated_ms = $8",
                )
                .bind(&desired.device_id)
                .bind(&desired.model)
                .bind(desired.generation)
                .bind(desired.version)
                .bind(&desired.digest)
                .bind(desired.deployment_id)
                .bind(&desired.payload)
                .bind(desired.updated_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn list_desired(&self) -> StoreResult<Vec<DesiredRecord>> {
                let rows = sqlx::query("SELECT * FROM desired_states ORDER BY device_id, model").fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(row_to_desired!(row))).collect()
            }

            async fn insert_windows(&self, windows: &[InferenceWindow]) -> StoreResult<()> {
                let mut transaction = self.write_transaction().await?;
                for window in windows {
                    sqlx::query(
                        "INSERT INTO inference_windows (device_id, model, version, window_end_ms, window_ms, requests, errors, latency) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&window.device_id)
                    .bind(&window.model)
                    .bind(window.version)
                    .bind(window.window_end_ms)
                    .bind(window.window_ms)
                    .bind(window.requests)
                    .bind(window.errors)
                    .bind(encode_histogram(&window.latency_us))
                    .execute(&mut *transaction)
                    .await?;
                }
                // Additive upserts: concurrent writers (two planes on one PostgreSQL) lose nothing.
                // They saturate at i64::MAX: a plain `+` overflows into a REAL on SQLite (and
                // every later read of the row fails) or aborts the batch on PostgreSQL.
                // Invariant: the added values are >= 0 (`batch_totals`), so the subtraction fits.
                for totals in batch_totals(windows) {
                    sqlx::query(
                        "INSERT INTO inference_totals (model, version, requests, errors) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (model, version) DO UPDATE SET \
                         requests = CASE WHEN inference_totals.requests > 9223372036854775807 - excluded.requests \
                             THEN 9223372036854775807 ELSE inference_totals.requests + excluded.requests END, \
                         errors = CASE WHEN inference_totals.errors > 9223372036854775807 - excluded.errors \
                             THEN 9223372036854775807 ELSE inference_totals.errors + excluded.errors END",
                    )
                    .bind(&totals.model)
                    .bind(totals.version)
                    .bind(totals.requests)
                    .bind(totals.errors)
                    .execute(&mut *transaction)
                    .await?;
                    for &(bucket, observations) in &totals.latency_us.buckets {
                        sqlx::query(
                            "INSERT INTO inference_latency_buckets (model, version, bucket, observations) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (model, version, bucket) DO UPDATE SET \
                             observations = CASE WHEN inference_latency_buckets.observations > 9223372036854775807 - excluded.observations \
                                 THEN 9223372036854775807 ELSE inference_latency_buckets.observations + excluded.observations END",
                        )
                        .bind(&totals.model)
                        .bind(totals.version)
                        .bind(i64::from(bucket))
                        .bind(i64::try_from(observations).unwrap_or(i64::MAX))
                        .execute(&mut *transaction)
                        .await?;
                    }
                }
                transaction.commit().await?;
                Ok(())
            }

            async fn inference_totals(&self) -> StoreResult<Vec<InferenceTotals>> {
                let mut by_version: BTreeMap<(String, i64), InferenceTotals> = BTreeMap::new();
                let rows = sqlx::query("SELECT model, version, requests, errors FROM inference_totals").fetch_all(&self.pool).await?;
                for row in &rows {
                    let (model, version): (String, i64) = (row.try_get("model")?, row.try_get("version")?);
                    let totals = by_version.entry((model.clone(), version)).or_insert_with(|| InferenceTotals { model, version, ..InferenceTotals::default() });
                    totals.requests = row.try_get("requests")?;
                    totals.errors = row.try_get("errors")?;
                }
                let rows = sqlx::query("SELECT model, version, bucket, observations FROM inference_latency_buckets ORDER BY model, version, bucket")
                    .fetch_all(&self.pool)
                    .await?;
                for row in &rows {
                    let (model, version): (String, i64) = (row.try_get("model")?, row.try_get("version")?);
                    let bucket = u16::try_from(row.try_get::<i64, _>("bucket")?)
                        .map_err(|_| StoreError::Corrupt(format!("latency bucket of {model}@{version}")))?;
                    let observations = u64::try_from(row.try_get::<i64, _>("observations")?).unwrap_or(0);
                    let totals = by_version.entry((model.clone(), version)).or_insert_with(|| InferenceTotals { model, version, ..InferenceTotals::default() });
                    totals.latency_us.buckets.push((bucket, observations));
                }
                Ok(by_version.into_values().collect())
            }

            async fn windows_since(&self, model: &str, version: Option<i64>, since_ms: i64) -> StoreResult<Vec<InferenceWindow>> {
                let rows = match version {
                    Some(version) => sqlx::query(
                        "SELECT * FROM inference_windows WHERE model = $1 AND version = $2 AND window_end_ms >= $3 ORDER BY window_end_ms",
                    )
                    .bind(model)
                    .bind(version)
                    .bind(since_ms)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query("SELECT * FROM inference_windows WHERE model = $1 AND window_end_ms >= $2 ORDER BY window_end_ms")
                        .bind(model)
                        .bind(since_ms)
                        .fetch_all(&self.pool)
                        .await?,
                };
                rows.iter().map(|row| Ok(row_to_window!(row))).collect()
            }
        }
    };
}

impl_store!(SqliteStore, "sqlite");
impl_store!(PostgresStore, "postgres");
