//! The SQL behind `AccessStore` (tokens and the audit log), shared by SQLite and PostgreSQL
//! like `sql.rs`.

use async_trait::async_trait;
use sqlx::Row;

use super::sql::{PostgresStore, SqliteStore};
use super::{AccessStore, AuditRecord, StoreResult, TokenRecord};

macro_rules! row_to_token {
    ($row:expr) => {{
        let row = $row;
        TokenRecord {
            id: row.try_get("id")?,
            token_sha256: row.try_get("token_sha256")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            scopes: row.try_get("scopes")?,
            bootstrap: row.try_get("bootstrap")?,
            created_ms: row.try_get("created_ms")?,
            created_by: row.try_get("created_by")?,
            expires_ms: row.try_get("expires_ms")?,
            revoked_ms: row.try_get("revoked_ms")?,
            last_used_ms: row.try_get("last_used_ms")?,
        }
    }};
}

macro_rules! impl_access_store {
    ($store:ty) => {
        #[async_trait]
        impl AccessStore for $store {
            async fn insert_token(&self, token: &TokenRecord) -> StoreResult<i64> {
                let row = sqlx::query(
                    "INSERT INTO tokens (token_sha256, name, role, scopes, bootstrap, created_ms, created_by, expires_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .bind(&token.token_sha256)
                .bind(&token.name)
                .bind(&token.role)
                .bind(&token.scopes)
                .bind(token.bootstrap)
                .bind(token.created_ms)
                .bind(&token.created_by)
                .bind(token.expires_ms)
                .fetch_one(&self.pool)
                .await
                .map_err(|error| super::sql::conflict_or(error, || "a token with this value exists".into()))?;
                Ok(row.try_get("id")?)
            }

            async fn token_by_hash(&self, token_sha256: &str) -> StoreResult<Option<TokenRecord>> {
                let row = sqlx::query("SELECT * FROM tokens WHERE token_sha256 = $1").bind(token_sha256).fetch_optional(&self.pool).await?;
                row.map(|row| Ok(row_to_token!(&row))).transpose()
            }

            async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>> {
                let row = sqlx::query("SELECT * FROM tokens WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
                row.map(|row| Ok(row_to_token!(&row))).transpose()
            }

            async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
                let rows = sqlx::query("SELECT * FROM tokens ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter().map(|row| Ok(row_to_token!(row))).collect()
            }

            async fn revoke_token(&self, id: i64, at_ms: i64) -> StoreResult<()> {
                sqlx::query("UPDATE tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL")
                    .bind(id)
                    .bind(at_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_token_bootstrap(&self, id: i64) -> StoreResult<()> {
                sqlx::query("UPDATE tokens SET bootstrap = TRUE WHERE id = $1").bind(id).execute(&self.pool).await?;
                Ok(())
            }

            async fn token_used(&self, id: i64, at_ms: i64) -> StoreResult<()> {
                sqlx::query("UPDATE tokens SET last_used_ms = $2 WHERE id = $1").bind(id).bind(at_ms).execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_audit(&self, entry: &AuditRecord) -> StoreResult<i64> {
                let row = sqlx::query(
                    "INSERT INTO audit_log (at_ms, token_id, token_name, address, action, target, detail, outcome, status) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(entry.at_ms)
                .bind(entry.token_id)
                .bind(&entry.token_name)
                .bind(&entry.address)
                .bind(&entry.action)
                .bind(&entry.target)
                .bind(&entry.detail)
                .bind(&entry.outcome)
                .bind(entry.status)
                .fetch_one(&self.pool)
                .await?;
                Ok(row.try_get("id")?)
            }

            async fn audit_since(&self, since_ms: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
                let rows = sqlx::query("SELECT * FROM audit_log WHERE at_ms >= $1 ORDER BY id LIMIT $2")
                    .bind(since_ms)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(AuditRecord {
                            id: row.try_get("id")?,
                            at_ms: row.try_get("at_ms")?,
                            token_id: row.try_get("token_id")?,
                            token_name: row.try_get("token_name")?,
                            address: row.try_get("address")?,
                            action: row.try_get("action")?,
                            target: row.try_get("target")?,
                            detail: row.try_get("detail")?,
                            outcome: row.try_get("outcome")?,
                            status: row.try_get("status")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

impl_access_store!(SqliteStore);
impl_access_store!(PostgresStore);
