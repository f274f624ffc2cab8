//! The SQL behind `RolloutStore`, shared by SQLite and PostgreSQL like `sql.rs`.

use async_trait::async_trait;
use sqlx::Row;

use fleetml_shared::selector::Selector;

use super::sql::{PostgresStore, SqliteStore, decode_histogram, encode_histogram};
use super::{
    RolloutDeviceCount, RolloutDeviceRecord, RolloutEvent, RolloutRecord, RolloutStore, ShadowWindowRecord, SplitRecord, StoreError,
    StoreResult,
};
use crate::experiments::split::{SplitState, SplitVariant};
use crate::rollout::policy::PolicyDocument;
use crate::rollout::{MemberState, RolloutState};

fn rollout_state(text: &str) -> StoreResult<RolloutState> {
    RolloutState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("rollout state `{text}`")))
}

fn member_state(text: &str) -> StoreResult<MemberState> {
    MemberState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("rollout device state `{text}`")))
}

fn split_state(text: &str) -> StoreResult<SplitState> {
    SplitState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("split state `{text}`")))
}

fn policy(json: &str) -> StoreResult<PolicyDocument> {
    serde_json::from_str(json).map_err(|error| StoreError::Corrupt(format!("rollout policy: {error}")))
}

fn policy_json(policy: &PolicyDocument) -> StoreResult<String> {
    serde_json::to_string(policy).map_err(|error| StoreError::Corrupt(format!("rollout policy: {error}")))
}

/// The stored form of a split's variants: `[{"version": 1, "weight": 0.5}, ...]`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredVariant {
    version: i64,
    weight: f64,
}

fn variants(json: &str) -> StoreResult<Vec<SplitVariant>> {
    let stored: Vec<StoredVariant> = serde_json::from_str(json).map_err(|error| StoreError::Corrupt(format!("split variants: {error}")))?;
    Ok(stored.into_iter().map(|variant| SplitVariant { version: variant.version, weight: variant.weight }).collect())
}

fn variants_json(variants: &[SplitVariant]) -> String {
    let stored: Vec<StoredVariant> =
        variants.iter().map(|variant| StoredVariant { version: variant.version, weight: variant.weight }).collect();
    // Invariant: integers and floats only (weights are checked finite when a split starts).
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".into())
}

fn split_selector(text: &str) -> StoreResult<Selector> {
    Selector::parse(text).map_err(|error| StoreError::Corrupt(format!("split selector: {error}")))
}

macro_rules! row_to_rollout {
    ($row:expr) => {{
        let row = $row;
        RolloutRecord {
            id: row.try_get("id")?,
            model: row.try_get("model")?,
            version: row.try_get("version")?,
            policy: policy(&row.try_get::<String, _>("policy")?)?,
            state: rollout_state(&row.try_get::<String, _>("state")?)?,
            current_wave: row.try_get("current_wave")?,
            wave_started_ms: row.try_get("wave_started_ms")?,
            created_by: row.try_get("created_by")?,
            created_ms: row.try_get("created_ms")?,
            updated_ms: row.try_get("updated_ms")?,
        }
    }};
}

macro_rules! row_to_split {
    ($row:expr) => {{
        let row = $row;
        SplitRecord {
            id: row.try_get("id")?,
            model: row.try_get("model")?,
            selector: split_selector(&row.try_get::<String, _>("selector")?)?,
            variants: variants(&row.try_get::<String, _>("variants")?)?,
            created_ms: row.try_get("created_ms")?,
            state: split_state(&row.try_get::<String, _>("state")?)?,
        }
    }};
}

/// Adds rollout members in a transaction; a device already in the rollout is left as it is.
macro_rules! insert_members {
    ($transaction:ident, $id:expr, $devices:expr) => {
        for device in $devices {
            sqlx::query(
                "INSERT INTO rollout_devices (rollout_id, device_id, wave, state, reason, from_version, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (rollout_id, device_id) DO NOTHING",
            )
            .bind($id)
            .bind(&device.device_id)
            .bind(device.wave)
            .bind(device.state.as_str())
            .bind(&device.reason)
            .bind(device.from_version)
            .bind(device.updated_ms)
            .execute(&mut *$transaction)
            .await?;
        }
    };
}

macro_rules! impl_rollout_store {
    ($store:ty) => {
        #[async_trait]
        impl RolloutStore for $store {
            async fn create_rollout(&self, rollout: &RolloutRecord, devices: &[RolloutDeviceRecord]) -> StoreResult<i64> {
                let mut transaction = self.write_transaction().await?;
                let row = sqlx::query(
                    "INSERT INTO rollouts (model, version, policy, state, current_wave, wave_started_ms, created_by, created_ms, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
                )
                .bind(&rollout.model)
                .bind(rollout.version)
                .bind(policy_json(&rollout.policy)?)
                .bind(rollout.state.as_str())
                .bind(rollout.current_wave)
                .bind(rollout.wave_started_ms)
                .bind(&rollout.created_by)
                .bind(rollout.created_ms)
                .fetch_one(&mut *transaction)
                .await?;
                let id: i64 = row.try_get("id")?;
                insert_members!(transaction, id, devices);
                transaction.commit().await?;
                Ok(id)
            }

            async fn get_rollout(&self, id: i64) -> StoreResult<Option<RolloutRecord>> {
                let row = sqlx::query("SELECT * FROM rollouts WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.map(|row| Ok(row_to_rollout!(&row))).transpose()
            }

            async fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
                let rows = sqlx::query("SELECT * FROM rollouts ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(row_to_rollout!(row))).collect()
            }

            async fn update_rollout(&self, id: i64, state: RolloutState, current_wave: i64, wave_started_ms: i64, now_ms: i64) -> StoreResult<()> {
                sqlx::query("UPDATE rollouts SET state = $2, current_wave = $3, wave_started_ms = $4, updated_ms = $5 WHERE id = $1")
                    .bind(id)
                    .bind(state.as_str())
                    .bind(current_wave)
                    .bind(wave_started_ms)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn rollout_devices(&self, id: i64) -> StoreResult<Vec<RolloutDeviceRecord>> {
                let rows = sqlx::query("SELECT * FROM rollout_devices WHERE rollout_id = $1 ORDER BY wave, device_id").bind(id).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(RolloutDeviceRecord {
                            device_id: row.try_get("device_id")?,
                            wave: row.try_get("wave")?,
                            state: member_state(&row.try_get::<String, _>("state")?)?,
                            reason: row.try_get("reason")?,
                            from_version: row.try_get("from_version")?,
                            updated_ms: row.try_get("updated_ms")?,
                        })
                    })
                    .collect()
            }

            async fn rollout_device_counts(&self, updated_since_ms: i64) -> StoreResult<Vec<RolloutDeviceCount>> {
                let rows = sqlx::query(
                    "SELECT d.rollout_id, d.state, COUNT(*) AS n_devices FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id \
                     WHERE r.state IN ('running', 'paused') OR r.updated_ms >= $1 \
                     GROUP BY d.rollout_id, d.state ORDER BY d.rollout_id, d.state",
                )
                .bind(updated_since_ms)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(RolloutDeviceCount {
                            rollout_id: row.try_get("rollout_id")?,
                            state: member_state(&row.try_get::<String, _>("state")?)?,
                            n_devices: row.try_get("n_devices")?,
                        })
                    })
                    .collect()
            }

            async fn update_rollout_device(&self, id: i64, device_id: &str, state: MemberState, reason: &str, now_ms: i64) -> StoreResult<()> {
                sqlx::query("UPDATE rollout_devices SET state = $3, reason = $4, updated_ms = $5 WHERE rollout_id = $1 AND device_id = $2")
                    .bind(id)
                    .bind(device_id)
                    .bind(state.as_str())
                    .bind(reason)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn add_rollout_event(&self, id: i64, kind: &str, detail: &str, at_ms: i64) -> StoreResult<()> {
                sqlx::query("INSERT INTO rollout_events (rollout_id, at_ms, kind, detail) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(at_ms)
                    .bind(kind)
                    .bind(detail)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn rollout_events(&self, id: i64) -> StoreResult<Vec<RolloutEvent>> {
                let rows = sqlx::query("SELECT at_ms, kind, detail FROM rollout_events WHERE rollout_id = $1 ORDER BY id").bind(id).fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(RolloutEvent { at_ms: row.try_get("at_ms")?, kind: row.try_get("kind")?, detail: row.try_get("detail")? })).collect()
            }

            async fn create_split(&self, split: &SplitRecord) -> StoreResult<i64> {
                let row = sqlx::query(
                    "INSERT INTO splits (model, selector, variants, created_ms, state) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(&split.model)
                .bind(split.selector.to_string())
                .bind(variants_json(&split.variants))
                .bind(split.created_ms)
                .bind(split.state.as_str())
                .fetch_one(&self.pool)
                .await?;
                Ok(row.try_get("id")?)
            }

            async fn update_split_state(&self, id: i64, state: SplitState) -> StoreResult<()> {
                sqlx::query("UPDATE splits SET state = $1 WHERE id = $2").bind(state.as_str()).bind(id).execute(&self.pool).await?;
                Ok(())
            }

            async fn get_split(&self, id: i64) -> StoreResult<Option<SplitRecord>> {
                let row = sqlx::query("SELECT * FROM splits WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.map(|row| Ok(row_to_split!(&row))).transpose()
            }

            async fn list_splits(&self) -> StoreResult<Vec<SplitRecord>> {
                let rows = sqlx::query("SELECT * FROM splits ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(row_to_split!(row))).collect()
            }

            async fn add_rollout_devices(&self, id: i64, devices: &[RolloutDeviceRecord]) -> StoreResult<()> {
                let mut transaction = self.write_transaction().await?;
                insert_members!(transaction, id, devices);
                transaction.commit().await?;
                Ok(())
            }

            async fn insert_shadow_window(&self, window: &ShadowWindowRecord) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO shadow_windows (device_id, model, active_version, candidate_version, window_end_ms, requests, errors, \
                     skipped, rows_compared, rows_agreed, delta_sum, delta_max, latency) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&window.device_id)
                .bind(&window.model)
                .bind(window.active_version)
                .bind(window.candidate_version)
                .bind(window.window_end_ms)
                .bind(window.requests)
                .bind(window.errors)
                .bind(window.skipped)
                .bind(window.rows)
                .bind(window.rows_agreed)
                .bind(window.delta_sum)
                .bind(window.delta_max)
                .bind(encode_histogram(&window.latency_us))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn shadow_windows(&self, model: &str, candidate_version: Option<i64>, since_ms: i64) -> StoreResult<Vec<ShadowWindowRecord>> {
                let rows = sqlx::query(
                    "SELECT * FROM shadow_windows WHERE model = $1 AND ($2 IS NULL OR candidate_version = $2) AND window_end_ms >= $3 \
                     ORDER BY window_end_ms",
                )
                .bind(model)
                .bind(candidate_version)
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(ShadowWindowRecord {
                            device_id: row.try_get("device_id")?,
                            model: row.try_get("model")?,
                            active_version: row.try_get("active_version")?,
                            candidate_version: row.try_get("candidate_version")?,
                            window_end_ms: row.try_get("window_end_ms")?,
                            requests: row.try_get("requests")?,
                            errors: row.try_get("errors")?,
                            skipped: row.try_get("skipped")?,
                            rows: row.try_get("rows_compared")?,
                            rows_agreed: row.try_get("rows_agreed")?,
                            delta_sum: row.try_get("delta_sum")?,
                            delta_max: row.try_get("delta_max")?,
                            latency_us: decode_histogram(&row.try_get::<Vec<u8>, _>("latency")?)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

impl_rollout_store!(SqliteStore);
impl_rollout_store!(PostgresStore);
