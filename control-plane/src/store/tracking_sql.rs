//! The SQL behind `TrackingStore`, shared by SQLite and PostgreSQL like `sql.rs`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::Row;

use super::sql::{PostgresStore, SqliteStore};
use super::{
    ExperimentRecord, MetricPoint, RegisteredModelRecord, RunRecord, RunStatus, RunUpdate, StoreError, StoreResult, TrackingStore,
    VersionEvent,
};

/// Rows per multi-row INSERT: 6 parameters each stays under SQLite's 32,766-parameter limit.
const METRIC_ROWS_PER_INSERT: usize = 500;

fn unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database_error) if database_error.is_unique_violation())
}

/// NaN travels as a flag: SQLite stores NaN as NULL.
fn metric_value(value: f64, is_nan: bool) -> f64 {
    if is_nan { f64::NAN } else { value }
}

macro_rules! pairs {
    ($rows:expr) => {
        $rows
            .iter()
            .map(|row| Ok((row.try_get::<String, _>("key")?, row.try_get::<String, _>("value")?)))
            .collect::<StoreResult<Vec<_>>>()?
    };
}

macro_rules! row_to_run {
    ($row:expr) => {{
        let row = $row;
        let status: String = row.try_get("status")?;
        RunRecord {
            run_id: row.try_get("run_id")?,
            experiment_id: row.try_get("experiment_id")?,
            run_name: row.try_get("run_name")?,
            user_id: row.try_get("user_id")?,
            status: RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("run status `{status}`")))?,
            start_time: row.try_get("start_time")?,
            end_time: row.try_get("end_time")?,
            lifecycle_stage: row.try_get("lifecycle_stage")?,
            artifact_uri: row.try_get("artifact_uri")?,
            params: Vec::new(),
            tags: Vec::new(),
            latest_metrics: Vec::new(),
        }
    }};
}

macro_rules! row_to_metric {
    ($row:expr) => {{
        let row = $row;
        MetricPoint {
            key: row.try_get("key")?,
            value: metric_value(row.try_get::<Option<f64>, _>("value")?.unwrap_or(0.0), row.try_get("is_nan")?),
            timestamp: row.try_get("timestamp")?,
            step: row.try_get("step")?,
        }
    }};
}

macro_rules! impl_tracking_store {
    ($store:ty) => {
        impl $store {
            async fn experiment_with_tags(&self, row: Option<<Self as StoreBackend>::Row>) -> StoreResult<Option<ExperimentRecord>> {
                let Some(row) = row else { return Ok(None) };
                let experiment_id: i64 = row.try_get("experiment_id")?;
                let tag_rows = sqlx::query("SELECT key, value FROM experiment_tags WHERE experiment_id = $1 ORDER BY key")
                    .bind(experiment_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(Some(ExperimentRecord {
                    experiment_id,
                    name: row.try_get("name")?,
                    artifact_location: row.try_get("artifact_location")?,
                    lifecycle_stage: row.try_get("lifecycle_stage")?,
                    creation_time: row.try_get("creation_time")?,
                    last_update_time: row.try_get("last_update_time")?,
                    tags: pairs!(tag_rows),
                }))
            }

            async fn fill_run(&self, mut run: RunRecord) -> StoreResult<RunRecord> {
                let params = sqlx::query("SELECT key, value FROM run_params WHERE run_id = $1 ORDER BY key").bind(&run.run_id).fetch_all(&self.pool).await?;
                let tags = sqlx::query("SELECT key, value FROM run_tags WHERE run_id = $1 ORDER BY key").bind(&run.run_id).fetch_all(&self.pool).await?;
                let metrics = sqlx::query("SELECT key, value, is_nan, timestamp, step FROM latest_metrics WHERE run_id = $1 ORDER BY key")
                    .bind(&run.run_id)
                    .fetch_all(&self.pool)
                    .await?;
                run.params = pairs!(params);
                run.tags = pairs!(tags);
                run.latest_metrics = metrics.iter().map(|row| Ok(row_to_metric!(row))).collect::<StoreResult<_>>()?;
                Ok(run)
            }

            async fn model_tags(&self, name: &str) -> StoreResult<Vec<(String, String)>> {
                let rows = sqlx::query("SELECT key, value FROM model_tags WHERE model = $1 ORDER BY key").bind(name).fetch_all(&self.pool).await?;
                Ok(pairs!(rows))
            }
        }

        #[async_trait]
        impl TrackingStore for $store {
            async fn create_experiment(&self, name: &str, artifact_location: Option<&str>, tags: &[(String, String)], now_ms: i64) -> StoreResult<i64> {
                let mut transaction = self.write_transaction().await?;
                let row = sqlx::query(
                    "INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time) \
                     VALUES ($1, $2, 'active', $3, $3) RETURNING experiment_id",
                )
                .bind(name)
                .bind(artifact_location.unwrap_or(""))
                .bind(now_ms)
                .fetch_one(&mut *transaction)
                .await
                .map_err(|error| if unique_violation(&error) { StoreError::Conflict(format!("experiment `{name}` exists already")) } else { error.into() })?;
                let experiment_id: i64 = row.try_get("experiment_id")?;
                if artifact_location.is_none() {
                    sqlx::query("UPDATE experiments SET artifact_location = $2 WHERE experiment_id = $1")
                        .bind(experiment_id)
                        .bind(format!("mlflow-artifacts:/{experiment_id}"))
                        .execute(&mut *transaction)
                        .await?;
                }
                for (key, value) in tags {
                    sqlx::query("INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3) ON CONFLICT (experiment_id, key) DO UPDATE SET value = $3")
                        .bind(experiment_id)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *transaction)
                        .await?;
                }
                transaction.commit().await?;
                Ok(experiment_id)
            }

            async fn get_experiment(&self, experiment_id: i64) -> StoreResult<Option<ExperimentRecord>> {
                let row = sqlx::query("SELECT * FROM experiments WHERE experiment_id = $1").bind(experiment_id).fetch_optional(&self.pool).await?;
                self.experiment_with_tags(row).await
            }

            async fn get_experiment_by_name(&self, name: &str) -> StoreResult<Option<ExperimentRecord>> {
                let row = sqlx::query("SELECT * FROM experiments WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
                self.experiment_with_tags(row).await
            }

            async fn list_experiments(&self) -> StoreResult<Vec<ExperimentRecord>> {
                let rows = sqlx::query("SELECT * FROM experiments ORDER BY experiment_id").fetch_all(&self.pool).await?;
                let mut experiments = Vec::with_capacity(rows.len());
                for row in rows {
                    experiments.extend(self.experiment_with_tags(Some(row)).await?);
                }
                Ok(experiments)
            }

            async fn set_experiment_tag(&self, experiment_id: i64, key: &str, value: &str) -> StoreResult<()> {
                sqlx::query("INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3) ON CONFLICT (experiment_id, key) DO UPDATE SET value = $3")
                    .bind(experiment_id)
                    .bind(key)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_experiment_lifecycle(&self, experiment_id: i64, stage: &str, now_ms: i64) -> StoreResult<()> {
                sqlx::query("UPDATE experiments SET lifecycle_stage = $2, last_update_time = $3 WHERE experiment_id = $1")
                    .bind(experiment_id)
                    .bind(stage)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_run(&self, run: &RunRecord) -> StoreResult<()> {
                let mut transaction = self.write_transaction().await?;
                sqlx::query(
                    "INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time, end_time, lifecycle_stage, artifact_uri) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&run.run_id)
                .bind(run.experiment_id)
                .bind(&run.run_name)
                .bind(&run.user_id)
                .bind(run.status.as_str())
                .bind(run.start_time)
                .bind(run.end_time)
                .bind(&run.lifecycle_stage)
                .bind(&run.artifact_uri)
                .execute(&mut *transaction)
                .await?;
                for (key, value) in &run.tags {
                    sqlx::query("INSERT INTO run_tags (run_id, key, value) VALUES ($1, $2, $3) ON CONFLICT (run_id, key) DO UPDATE SET value = $3")
                        .bind(&run.run_id)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *transaction)
                        .await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
                let Some(row) = sqlx::query("SELECT * FROM runs WHERE run_id = $1").bind(run_id).fetch_optional(&self.pool).await? else {
                    return Ok(None);
                };
                let run = row_to_run!(&row);
                Ok(Some(self.fill_run(run).await?))
            }

            async fn update_run(&self, run_id: &str, update: &RunUpdate) -> StoreResult<()> {
                let result = sqlx::query(
                    "UPDATE runs SET status = COALESCE($2, status), end_time = COALESCE($3, end_time), run_name = COALESCE($4, run_name) WHERE run_id = $1",
                )
                .bind(run_id)
                .bind(update.status.map(RunStatus::as_str))
                .bind(update.end_time)
                .bind(&update.run_name)
                .execute(&self.pool)
                .await?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("run `{run_id}`")));
                }
                Ok(())
            }

            async fn set_run_lifecycle(&self, run_id: &str, stage: &str) -> StoreResult<()> {
                sqlx::query("UPDATE runs SET lifecycle_stage = $2 WHERE run_id = $1").bind(run_id).bind(stage).execute(&self.pool).await?;
                Ok(())
            }

            async fn list_runs(&self, experiment_ids: &[i64]) -> StoreResult<Vec<RunRecord>> {
                let mut runs = Vec::new();
                for experiment_id in experiment_ids {
                    let rows = sqlx::query("SELECT * FROM runs WHERE experiment_id = $1 ORDER BY start_time DESC, run_id")
                        .bind(experiment_id)
                        .fetch_all(&self.pool)
                        .await?;
                    for row in &rows {
                        let run = row_to_run!(row);
                        runs.push(self.fill_run(run).await?);
                    }
                }
                runs.sort_by(|left, right| right.start_time.cmp(&left.start_time).then(left.run_id.cmp(&right.run_id)));
                Ok(runs)
            }

            async fn log_batch(&self, run_id: &str, metrics: &[MetricPoint], params: &[(String, String)], tags: &[(String, String)]) -> StoreResult<()> {
                let mut transaction = self.write_transaction().await?;
                let exists = sqlx::query("SELECT lifecycle_stage FROM runs WHERE run_id = $1").bind(run_id).fetch_optional(&mut *transaction).await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("run `{run_id}`")));
                }
                for (key, value) in params {
                    let existing = sqlx::query("SELECT value FROM run_params WHERE run_id = $1 AND key = $2")
                        .bind(run_id)
                        .bind(key)
                        .fetch_optional(&mut *transaction)
                        .await?
                        .map(|row| row.try_get::<String, _>("value"))
                        .transpose()?;
                    match existing {
                        Some(old) if old != *value => {
                            return Err(StoreError::Invalid(format!(
                                "Changing param values is not allowed. Param with key='{key}' was already logged with value='{old}' for run ID='{run_id}'. Attempted logging new value '{value}'."
                            )));
                        }
                        Some(_) => {}
                        None => {
                            sqlx::query("INSERT INTO run_params (run_id, key, value) VALUES ($1, $2, $3)")
                                .bind(run_id)
                                .bind(key)
                                .bind(value)
                                .execute(&mut *transaction)
                                .await?;
                        }
                    }
                }
                for (key, value) in tags {
                    sqlx::query("INSERT INTO run_tags (run_id, key, value) VALUES ($1, $2, $3) ON CONFLICT (run_id, key) DO UPDATE SET value = $3")
                        .bind(run_id)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *transaction)
                        .await?;
                }
                // The newest point per key in this batch, to fold into latest_metrics once.
                let mut newest: BTreeMap<&str, &MetricPoint> = BTreeMap::new();
                // Multi-row inserts: a 1,000-metric batch is a few statements, not a thousand.
                for rows in metrics.chunks(METRIC_ROWS_PER_INSERT) {
                    let mut insert = sqlx::QueryBuilder::new("INSERT INTO metrics (run_id, key, value, is_nan, timestamp, step) ");
                    insert.push_values(rows, |mut row, metric| {
                        let is_nan = metric.value.is_nan();
                        row.push_bind(run_id)
                            .push_bind(&metric.key)
                            .push_bind(if is_nan { 0.0 } else { metric.value })
                            .push_bind(is_nan)
                            .push_bind(metric.timestamp)
                            .push_bind(metric.step);
                    });
                    insert.build().execute(&mut *transaction).await?;
                }
                for metric in metrics {
                    let entry = newest.entry(metric.key.as_str()).or_insert(metric);
                    if (metric.step, metric.timestamp) >= (entry.step, entry.timestamp) {
                        *entry = metric;
                    }
                }
                for metric in newest.values() {
                    let is_nan = metric.value.is_nan();
                    sqlx::query(
                        "INSERT INTO latest_metrics (run_id, key, value, is_nan, timestamp, step) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (run_id, key) DO UPDATE SET value = $3, is_nan = $4, timestamp = $5, step = $6 \
                         WHERE latest_metrics.step < $6 OR (latest_metrics.step = $6 AND latest_metrics.timestamp <= $5)",
                    )
                    .bind(run_id)
                    .bind(&metric.key)
                    .bind(if is_nan { 0.0 } else { metric.value })
                    .bind(is_nan)
                    .bind(metric.timestamp)
                    .bind(metric.step)
                    .execute(&mut *transaction)
                    .await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            async fn metric_history(&self, run_id: &str, key: &str) -> StoreResult<Vec<MetricPoint>> {
                let rows = sqlx::query("SELECT key, value, is_nan, timestamp, step FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step, timestamp")
                    .bind(run_id)
                    .bind(key)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|row| Ok(row_to_metric!(row))).collect()
            }

            async fn delete_run_tag(&self, run_id: &str, key: &str) -> StoreResult<()> {
                let result = sqlx::query("DELETE FROM run_tags WHERE run_id = $1 AND key = $2").bind(run_id).bind(key).execute(&self.pool).await?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("tag `{key}` of run `{run_id}`")));
                }
                Ok(())
            }

            async fn create_registered_model(&self, name: &str, description: &str, tags: &[(String, String)], now_ms: i64) -> StoreResult<()> {
                let mut transaction = self.write_transaction().await?;
                sqlx::query("INSERT INTO models (name, created_ms, description, last_updated_ms) VALUES ($1, $2, $3, $2)")
                    .bind(name)
                    .bind(now_ms)
                    .bind(description)
                    .execute(&mut *transaction)
                    .await
                    .map_err(|error| {
                        if unique_violation(&error) { StoreError::Conflict(format!("Registered Model (name={name}) already exists.")) } else { error.into() }
                    })?;
                for (key, value) in tags {
                    sqlx::query("INSERT INTO model_tags (model, key, value) VALUES ($1, $2, $3) ON CONFLICT (model, key) DO UPDATE SET value = $3")
                        .bind(name)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *transaction)
                        .await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            async fn get_registered_model(&self, name: &str) -> StoreResult<Option<RegisteredModelRecord>> {
                let Some(row) = sqlx::query("SELECT * FROM models WHERE name = $1").bind(name).fetch_optional(&self.pool).await? else {
                    return Ok(None);
                };
                let created_ms: i64 = row.try_get("created_ms")?;
                let last_updated_ms: i64 = row.try_get("last_updated_ms")?;
                Ok(Some(RegisteredModelRecord {
                    name: row.try_get("name")?,
                    created_ms,
                    last_updated_ms: last_updated_ms.max(created_ms),
                    description: row.try_get("description")?,
                    tags: self.model_tags(name).await?,
                }))
            }

            async fn list_registered_models(&self) -> StoreResult<Vec<RegisteredModelRecord>> {
                let rows = sqlx::query("SELECT name FROM models ORDER BY name").fetch_all(&self.pool).await?;
                let mut models = Vec::with_capacity(rows.len());
                for row in rows {
                    let name: String = row.try_get("name")?;
                    models.extend(self.get_registered_model(&name).await?);
                }
                Ok(models)
            }

            async fn update_registered_model(&self, name: &str, description: &str, now_ms: i64) -> StoreResult<()> {
                let result = sqlx::query("UPDATE models SET description = $2, last_updated_ms = $3 WHERE name = $1")
                    .bind(name)
                    .bind(description)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("Registered Model with name={name} not found")));
                }
                Ok(())
            }

            async fn set_registered_model_tag(&self, name: &str, key: &str, value: &str) -> StoreResult<()> {
                sqlx::query("INSERT INTO model_tags (model, key, value) VALUES ($1, $2, $3) ON CONFLICT (model, key) DO UPDATE SET value = $3")
                    .bind(name)
                    .bind(key)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_model_version_tag(&self, name: &str, version: i64, key: &str, value: &str) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO model_version_tags (model, version, key, value) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (model, version, key) DO UPDATE SET value = $4",
                )
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(value)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn model_version_tags(&self, name: &str, version: i64) -> StoreResult<Vec<(String, String)>> {
                let rows = sqlx::query("SELECT key, value FROM model_version_tags WHERE model = $1 AND version = $2 ORDER BY key")
                    .bind(name)
                    .bind(version)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(pairs!(rows))
            }

            async fn update_model_version_description(&self, name: &str, version: i64, description: &str) -> StoreResult<()> {
                sqlx::query("UPDATE model_versions SET description = $3 WHERE model = $1 AND version = $2")
                    .bind(name)
                    .bind(version)
                    .bind(description)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_alias(&self, name: &str, alias: &str) -> StoreResult<bool> {
                let result = sqlx::query("DELETE FROM aliases WHERE model = $1 AND alias = $2").bind(name).bind(alias).execute(&self.pool).await?;
                Ok(result.rows_affected() > 0)
            }

            async fn add_version_event(&self, name: &str, version: i64, kind: &str, detail: &str, at_ms: i64) -> StoreResult<()> {
                sqlx::query("INSERT INTO version_events (model, version, at_ms, kind, detail) VALUES ($1, $2, $3, $4, $5)")
                    .bind(name)
                    .bind(version)
                    .bind(at_ms)
                    .bind(kind)
                    .bind(detail)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn version_events(&self, name: &str, version: i64) -> StoreResult<Vec<VersionEvent>> {
                let rows = sqlx::query("SELECT at_ms, kind, detail FROM version_events WHERE model = $1 AND version = $2 ORDER BY id")
                    .bind(name)
                    .bind(version)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|row| Ok(VersionEvent { at_ms: row.try_get("at_ms")?, kind: row.try_get("kind")?, detail: row.try_get("detail")? })).collect()
            }
        }
    };
}

/// The row type of each backend, so one macro body serves both.
trait StoreBackend {
    type Row: sqlx::Row;
}

impl StoreBackend for SqliteStore {
    type Row = sqlx::sqlite::SqliteRow;
}

impl StoreBackend for PostgresStore {
    type Row = sqlx::postgres::PgRow;
}

impl_tracking_store!(SqliteStore);
impl_tracking_store!(PostgresStore);
