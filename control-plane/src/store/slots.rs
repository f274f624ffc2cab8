//! The stored form of a device's reported slots: the JSON array the `devices.slots` column has
//! held since the first migration. Only this file knows its field names; above the store the
//! slots are `reported::ReportedSlot`s. A row that does not decode is `StoreError::Corrupt`,
//! never an empty list.

use fleetml_shared::protocol::FailureKind;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::reported::{InstallVerdict, LastInstall, ReportedPhase, ReportedSlot};

#[derive(Serialize, Deserialize)]
struct StoredSlot {
    model: String,
    generation: u64,
    /// idle, fetching, verifying, installing, active, failed
    phase: String,
    received_bytes: Option<u64>,
    total_bytes: Option<u64>,
    #[serde(default)]
    fetch_attempts: Option<u32>,
    active_version: Option<u64>,
    previous_version: Option<u64>,
    target_version: Option<u64>,
    last_result: Option<StoredInstall>,
    // Always null in storage; kept so that rows written before the store owned this format
    // and rows written now are the same JSON.
    #[serde(default)]
    desired_version: Option<u64>,
    #[serde(default)]
    desired_generation: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredInstall {
    version: u64,
    generation: u64,
    at_ms: u64,
    ok: bool,
    kind: Option<String>,
    reason: Option<String>,
    self_test_ms: Option<f32>,
}

pub(crate) fn encode(slots: &[ReportedSlot]) -> String {
    let stored: Vec<StoredSlot> = slots.iter().map(stored_slot).collect();
    // Invariant: these structs hold only strings, integers, floats and options.
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn decode(json: &str) -> Result<Vec<ReportedSlot>, StoreError> {
    let stored: Vec<StoredSlot> = serde_json::from_str(json).map_err(|error| StoreError::Corrupt(format!("reported slots: {error}")))?;
    stored.into_iter().map(reported_slot).collect()
}

fn stored_slot(slot: &ReportedSlot) -> StoredSlot {
    let (received_bytes, total_bytes, fetch_attempts) = slot.phase.transfer_progress();
    StoredSlot {
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
            StoredInstall {
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

fn reported_slot(stored: StoredSlot) -> Result<ReportedSlot, StoreError> {
    let phase = match stored.phase.as_str() {
        "idle" => ReportedPhase::Idle,
        "fetching" => ReportedPhase::Fetching {
            received_bytes: stored.received_bytes,
            total_bytes: stored.total_bytes,
            attempts: stored.fetch_attempts,
        },
        "verifying" => ReportedPhase::Verifying,
        "installing" => ReportedPhase::Installing,
        "active" => ReportedPhase::Active,
        "failed" => ReportedPhase::Failed,
        other => return Err(StoreError::Corrupt(format!("reported slot `{}`: phase `{other}`", stored.model))),
    };
    let last_result = match stored.last_result {
        None => None,
        Some(result) => {
            let verdict = if result.ok {
                InstallVerdict::Installed { self_test_ms: result.self_test_ms }
            } else {
                let kind_text = result.kind.as_deref().unwrap_or("");
                let kind = FailureKind::parse(kind_text)
                    .ok_or_else(|| StoreError::Corrupt(format!("reported slot `{}`: failure kind `{kind_text}`", stored.model)))?;
                InstallVerdict::Refused { kind, reason: result.reason.unwrap_or_default() }
            };
            Some(LastInstall { version: result.version, generation: result.generation, at_ms: result.at_ms, verdict })
        }
    };
    Ok(ReportedSlot {
        model: stored.model,
        generation: stored.generation,
        phase,
        active_version: stored.active_version,
        previous_version: stored.previous_version,
        target_version: stored.target_version,
        last_result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_round_trip(json: &str) {
        let slots = decode(json).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&encode(&slots)).unwrap(),
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn the_stored_json_is_the_json_written_before_the_store_owned_it() {
        // Rows as `api::views::SlotView` wrote them until commit 82c100d.
        check_round_trip(
            r#"[{"model":"m","generation":3,"phase":"active","received_bytes":null,"total_bytes":null,"fetch_attempts":null,"active_version":2,"previous_version":1,"target_version":null,"last_result":{"version":2,"generation":3,"at_ms":9,"ok":true,"kind":null,"reason":null,"self_test_ms":0.5},"desired_version":null,"desired_generation":null}]"#,
        );
        check_round_trip(
            r#"[{"model":"m@shadow","generation":1,"phase":"fetching","received_bytes":10,"total_bytes":20,"fetch_attempts":2,"active_version":null,"previous_version":null,"target_version":4,"last_result":{"version":3,"generation":1,"at_ms":9,"ok":false,"kind":"self_test","reason":"off by 0.3","self_test_ms":null},"desired_version":null,"desired_generation":null}]"#,
        );
    }

    #[test]
    fn a_row_that_does_not_decode_is_corrupt_not_empty() {
        assert!(matches!(decode("not json"), Err(StoreError::Corrupt(_))));
        let unknown_phase = r#"[{"model":"m","generation":1,"phase":"dancing","received_bytes":null,"total_bytes":null,"active_version":null,"previous_version":null,"target_version":null,"last_result":null}]"#;
        let error = decode(unknown_phase).unwrap_err().to_string();
        assert!(error.contains("phase `dancing`"), "{error}");
        let unknown_kind = r#"[{"model":"m","generation":1,"phase":"failed","received_bytes":null,"total_bytes":null,"active_version":null,"previous_version":null,"target_version":null,"last_result":{"version":1,"generation":1,"at_ms":1,"ok":false,"kind":"gremlins","reason":"x","self_test_ms":null}}]"#;
        assert!(decode(unknown_kind).unwrap_err().to_string().contains("failure kind `gremlins`"));
    }
}
