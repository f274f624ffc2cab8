//! The audit log: every change to the fleet and to trust, who asked (token name and id), what,
//! when, from which address, and how it ended. The API guard records each change it lets
//! through and each it refuses; controllers record what they do on their own (a rollback a
//! failed gate triggered). A failure to write the log is itself logged, never hidden.

use axum::http::StatusCode;

use crate::PlaneCore;
use crate::access::Principal;
use crate::store::AuditRecord;

/// How often a token's last use is written (a request more often than this updates nothing).
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

fn outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "failed"
    } else if status.is_client_error() {
        "refused"
    } else {
        "ok"
    }
}

async fn write(core: &PlaneCore, entry: AuditRecord) {
    if let Err(error) = core.store.insert_audit(&entry).await {
        tracing::error!(%error, action = %entry.action, target = %entry.target, by = %entry.token_name, "could not write the audit log");
    }
}

/// A change the API answered (whatever the outcome).
#[allow(clippy::too_many_arguments)]
pub async fn answered(
    core: &PlaneCore,
    token_id: Option<i64>,
    token_name: &str,
    address: &str,
    action: &str,
    target: &str,
    detail: &str,
    status: StatusCode,
) {
    let entry = AuditRecord {
        id: 0,
        at_ms: fleetml_shared::now_ms() as i64,
        token_id,
        token_name: token_name.to_string(),
        address: address.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail: detail.to_string(),
        outcome: outcome(status).to_string(),
        status: i64::from(status.as_u16()),
    };
    write(core, entry).await;
}

/// A change refused before it reached its handler (no token, or not allowed).
#[allow(clippy::too_many_arguments)]
pub async fn refused(
    core: &PlaneCore,
    token_id: Option<i64>,
    token_name: &str,
    address: &str,
    action: &str,
    target: &str,
    reason: &str,
    status: StatusCode,
) {
    let detail = serde_json::json!({ "refused": reason }).to_string();
    answered(core, token_id, token_name, address, action, target, &detail, status).await;
}

/// A change the plane made on its own (`actor`: the controller that made it).
pub async fn by_plane(core: &PlaneCore, actor: &str, action: &str, target: &str, detail: serde_json::Value) {
    let entry = AuditRecord {
        id: 0,
        at_ms: fleetml_shared::now_ms() as i64,
        token_id: None,
        token_name: actor.to_string(),
        address: "-".into(),
        action: action.to_string(),
        target: target.to_string(),
        detail: detail.to_string(),
        outcome: "ok".into(),
        status: 0,
    };
    write(core, entry).await;
}

/// Notes that a token was used (at most once a minute per token).
pub async fn token_used(core: &PlaneCore, principal: &Principal) {
    let now_ms = fleetml_shared::now_ms() as i64;
    let due = match core.last_token_use.lock() {
        Ok(mut last_use) => {
            let previous = last_use.get(&principal.token_id).copied().unwrap_or(i64::MIN);
            let due = now_ms.saturating_sub(previous) >= LAST_USED_RESOLUTION_MS;
            if due {
                // Bounded: one entry per token that exists.
                last_use.insert(principal.token_id, now_ms);
            }
            due
        }
        Err(_) => false,
    };
    if due && let Err(error) = core.store.token_used(principal.token_id, now_ms).await {
        tracing::warn!(%error, token_id = principal.token_id, "could not note a token's last use");
    }
}
