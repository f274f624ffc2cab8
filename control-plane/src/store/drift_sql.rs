//! The SQL behind `DriftStore`, shared by SQLite and PostgreSQL like `sql.rs`.

use async_trait::async_trait;
use sqlx::Row;

use super::sql::{PostgresStore, SqliteStore};
use super::{DriftEventRecord, DriftStore, DriftWindowRecord, StoreResult};

macro_rules! impl_drift_store {
    ($store:ty) => {
        #[async_trait]
        impl DriftStore for $store {
            async fn put_profile(&self, sha256: &str, body: &[u8], at_ms: i64) -> StoreResult<()> {
                sqlx::query("INSERT INTO profiles (sha256, body, created_ms) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
                    .bind(sha256)
                    .bind(body)
                    .bind(at_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_profile(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
                let row = sqlx::query("SELECT body FROM profiles WHERE sha256 = $1").bind(sha256).fetch_optional(&self.pool).await?;
                row.map(|row| Ok(row.try_get("body")?)).transpose()
            }

            async fn set_version_profile(&self, model: &str, version: i64, sha256: &str) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO version_profiles (model, version, sha256) VALUES ($1, $2, $3) \
                     ON CONFLICT (model, version) DO UPDATE SET sha256 = excluded.sha256",
                )
                .bind(model)
                .bind(version)
                .bind(sha256)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn version_profile(&self, model: &str, version: i64) -> StoreResult<Option<(String, Vec<u8>)>> {
                let row = sqlx::query(
                    "SELECT p.sha256, p.body FROM version_profiles v JOIN profiles p ON p.sha256 = v.sha256 \
                     WHERE v.model = $1 AND v.version = $2",
                )
                .bind(model)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| Ok((row.try_get("sha256")?, row.try_get("body")?))).transpose()
            }

            async fn versions_with_profiles(&self) -> StoreResult<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT model, version FROM version_profiles ORDER BY model, version").fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok((row.try_get("model")?, row.try_get("version")?))).collect()
            }

            async fn insert_drift_window(&self, window: &DriftWindowRecord) -> StoreResult<bool> {
                let result = sqlx::query(
                    "INSERT INTO drift_windows (device_id, model, version, seq, started_ms, ended_ms, received_ms, samples, body) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (device_id, model, version, seq) DO NOTHING",
                )
                .bind(&window.device_id)
                .bind(&window.model)
                .bind(window.version)
                .bind(window.seq)
                .bind(window.started_ms)
                .bind(window.ended_ms)
                .bind(window.received_ms)
                .bind(window.samples)
                .bind(&window.body)
                .execute(&self.pool)
                .await?;
                Ok(result.rows_affected() > 0)
            }

            async fn drift_windows(&self, model: &str, version: i64, since_ms: i64, until_ms: i64) -> StoreResult<Vec<DriftWindowRecord>> {
                let rows = sqlx::query(
                    "SELECT * FROM drift_windows WHERE model = $1 AND version = $2 AND ended_ms >= $3 AND ended_ms < $4 ORDER BY ended_ms, id",
                )
                .bind(model)
                .bind(version)
                .bind(since_ms)
                .bind(until_ms)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(DriftWindowRecord {
                            device_id: row.try_get("device_id")?,
                            model: row.try_get("model")?,
                            version: row.try_get("version")?,
                            seq: row.try_get("seq")?,
                            started_ms: row.try_get("started_ms")?,
                            ended_ms: row.try_get("ended_ms")?,
                            received_ms: row.try_get("received_ms")?,
                            samples: row.try_get("samples")?,
                            body: row.try_get("body")?,
                        })
                    })
                    .collect()
            }

            async fn insert_drift_event(&self, event: &DriftEventRecord) -> StoreResult<i64> {
                let row = sqlx::query(
                    "INSERT INTO drift_events (model, version, at_ms, window_start_ms, window_end_ms, scope, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                )
                .bind(&event.model)
                .bind(event.version)
                .bind(event.at_ms)
                .bind(event.window_start_ms)
                .bind(event.window_end_ms)
                .bind(&event.scope)
                .bind(&event.detail)
                .fetch_one(&self.pool)
                .await?;
                Ok(row.try_get("id")?)
            }

            async fn drift_events(&self, model: &str, version: Option<i64>) -> StoreResult<Vec<DriftEventRecord>> {
                let rows = sqlx::query(
                    "SELECT * FROM drift_events WHERE model = $1 AND ($2 IS NULL OR version = $2) ORDER BY at_ms, id",
                )
                .bind(model)
                .bind(version)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(DriftEventRecord {
                            id: row.try_get("id")?,
                            model: row.try_get("model")?,
                            version: row.try_get("version")?,
                            at_ms: row.try_get("at_ms")?,
                            window_start_ms: row.try_get("window_start_ms")?,
                            window_end_ms: row.try_get("window_end_ms")?,
                            scope: row.try_get("scope")?,
                            detail: row.try_get("detail")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

impl_drift_store!(SqliteStore);
impl_drift_store!(PostgresStore);
