//! Wire messages: postcard in a versioned envelope (one version byte, then the body).
//!
//! Invariant: messages evolve only by appending enum variants and never by reordering or
//! changing fields; a payload with an unknown version is refused, never guessed at.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bundle::{BundleDigest, SignedManifest};
use crate::histogram::HistogramSnapshot;
use crate::signing::{KeyId, SignatureDomain, SigningError, SigningKeyPair, TrustedKeys};

pub const PROTOCOL_VERSION: u8 = 1;
/// The biggest message either side decodes; a chunk is at most `bundle::MAX_CHUNK_SIZE`.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Signature(#[from] SigningError),
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = vec![PROTOCOL_VERSION];
    // Invariant: our messages contain only types postcard can always serialise into a Vec.
    bytes.extend(postcard::to_stdvec(message).unwrap_or_default());
    bytes
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (&version, body) = bytes.split_first().ok_or(ProtocolError::Empty)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge(bytes.len()));
    }
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    decode_exact(body)
}

/// Decodes postcard bytes that must hold exactly one value (no trailing bytes).
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|error| ProtocolError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

// ---------------------------------------------------------------- desired state

/// `d/{device}/desired/{model}`, retained: the plane's signed wish for one model slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDesiredState {
    pub key_id: KeyId,
    /// postcard of `DesiredSlot`, verified before it is decoded.
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredSlot {
    pub device_id: String,
    pub model: String,
    /// Grows with every change for this device and slot; a device accepts only newer ones.
    pub generation: u64,
    pub issued_at_ms: u64,
    pub target: DesiredTarget,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DesiredTarget {
    /// The slot should hold nothing (the model is withdrawn from this device).
    Empty,
    Bundle {
        manifest: SignedManifest,
        role: SlotRole,
        /// Present when the plane means to go back to an older version.
        rollback: Option<RollbackPermission>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotRole {
    /// Serves requests.
    Active,
    /// Runs beside the active model of the same name on live requests, never answers, and
    /// reports agreement and latency. Its slot key is `{model}@shadow` ([`shadow_slot`]).
    Shadow,
}

/// The suffix of a shadow slot's key. `@` is not allowed in model names, so no model's slot
/// can collide with another model's shadow slot.
pub const SHADOW_SUFFIX: &str = "@shadow";

/// The slot key of `model`'s shadow candidate.
pub fn shadow_slot(model: &str) -> String {
    format!("{model}{SHADOW_SUFFIX}")
}

/// The model name and role of a slot key: `m` → (`m`, Active), `m@shadow` → (`m`, Shadow).
pub fn split_slot(slot: &str) -> (&str, SlotRole) {
    match slot.strip_suffix(SHADOW_SUFFIX) {
        Some(model) => (model, SlotRole::Shadow),
        None => (slot, SlotRole::Active),
    }
}

/// Allows installing the desired bundle over any version up to `up_to_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPermission {
    pub up_to_version: u64,
}

impl SignedDesiredState {
    pub fn sign(slot: &DesiredSlot, key_pair: &SigningKeyPair) -> Self {
        let body = postcard::to_stdvec(slot).unwrap_or_default();
        let signature = key_pair.sign(SignatureDomain::DesiredState, &body).to_vec();
        SignedDesiredState { key_id: key_pair.key_id(), body, signature }
    }

    pub fn verify(&self, trusted_keys: &TrustedKeys) -> Result<DesiredSlot, ProtocolError> {
        trusted_keys.verify(self.key_id, SignatureDomain::DesiredState, &self.body, &self.signature)?;
        decode_exact(&self.body)
    }
}

// ---------------------------------------------------------------- reported state

/// `d/{device}/reported`, retained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reported {
    Online(ReportedState),
    /// The last will, published by the broker when the connection drops.
    Offline {
        device_id: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportedState {
    pub device_id: String,
    pub agent_version: String,
    pub labels: Vec<(String, String)>,
    pub started_at_ms: u64,
    pub reported_at_ms: u64,
    pub slots: Vec<SlotReport>,
    /// The last message this device refused (a replayed or unverifiable desired state, say).
    pub last_refusal: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotReport {
    pub model: String,
    /// The generation of the last desired state the device accepted.
    pub generation: u64,
    pub phase: SlotPhase,
    pub active: Option<InstalledBundle>,
    pub previous: Option<InstalledBundle>,
    /// The bundle being fetched or installed.
    pub target: Option<InstalledBundle>,
    pub last_result: Option<InstallOutcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledBundle {
    pub version: u64,
    pub digest: BundleDigest,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SlotPhase {
    Idle,
    /// `attempts`: fetch requests sent for this transfer; more than one means it stalled and was retried.
    Fetching {
        received_bytes: u64,
        total_bytes: u64,
        attempts: u32,
    },
    Verifying,
    Installing,
    Active,
    Failed {
        kind: FailureKind,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    Signature,
    Expired,
    Integrity,
    RollbackNotPermitted,
    Transfer,
    Storage,
    Load,
    SelfTest,
    Manifest,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Signature => "signature",
            FailureKind::Expired => "expired",
            FailureKind::Integrity => "integrity",
            FailureKind::RollbackNotPermitted => "rollback_not_permitted",
            FailureKind::Transfer => "transfer",
            FailureKind::Storage => "storage",
            FailureKind::Load => "load",
            FailureKind::SelfTest => "self_test",
            FailureKind::Manifest => "manifest",
        }
    }

    /// The kind `as_str` names (stored and shown as text by the plane).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "signature" => FailureKind::Signature,
            "expired" => FailureKind::Expired,
            "integrity" => FailureKind::Integrity,
            "rollback_not_permitted" => FailureKind::RollbackNotPermitted,
            "transfer" => FailureKind::Transfer,
            "storage" => FailureKind::Storage,
            "load" => FailureKind::Load,
            "self_test" => FailureKind::SelfTest,
            "manifest" => FailureKind::Manifest,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstallOutcome {
    pub version: u64,
    pub generation: u64,
    pub at_ms: u64,
    pub result: InstallResult,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InstallResult {
    Installed { self_test_ms: f32 },
    Refused { kind: FailureKind, reason: String },
}

// ---------------------------------------------------------------- telemetry

/// `d/{device}/telemetry`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Telemetry {
    Heartbeat(Heartbeat),
    /// Sent with a heartbeat when shadow candidates ran since the previous one.
    Shadow(ShadowReport),
    /// One closed drift window of one model version, QoS 1. Buffered on the device's disk
    /// while offline; the plane drops a `(device, model, version, seq)` it already has.
    Drift(DriftWindowReport),
}

/// A device's drift window for one model version (see `drift::window`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftWindowReport {
    pub device_id: String,
    pub model: String,
    pub version: u64,
    /// Grows by one per window this device closes (across restarts); the plane's dedup key.
    pub seq: u64,
    /// Windows this device discarded unsent since the previous report (its outbox was full).
    pub dropped_before: u64,
    pub window: crate::drift::window::DriftWindow,
}

/// What the shadow candidates did since the previous report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub device_id: String,
    pub sent_at_ms: u64,
    pub window_ms: u64,
    pub figures: Vec<ShadowFigures>,
}

/// One shadow candidate beside one active version. A row agrees when every output agrees:
/// integer outputs equal, score vectors with the same top-1 index, single scores within
/// 1e-3 (relative above 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowFigures {
    pub model: String,
    pub active_version: u64,
    pub candidate_version: u64,
    /// Requests the candidate ran on (after the active answered).
    pub requests: u64,
    /// Requests the candidate failed on.
    pub errors: u64,
    /// Requests not mirrored because the shadow queue was full (shadowing never slows serving).
    pub skipped: u64,
    /// Rows (batch elements) compared, and those that agreed.
    pub rows: u64,
    pub rows_agreed: u64,
    /// Sum and maximum of the largest absolute output difference per row, over float outputs.
    pub delta_sum: f64,
    pub delta_max: f64,
    pub candidate_latency_us: HistogramSnapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub device_id: String,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub uptime_s: u64,
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub process_rss_bytes: u64,
    /// Figures since the previous heartbeat, per model version served.
    pub window_ms: u64,
    pub models: Vec<ModelFigures>,
    /// Messages this device refused to decode or verify since it started.
    pub refused_messages: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFigures {
    pub model: String,
    pub version: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency_us: HistogramSnapshot,
}

// ---------------------------------------------------------------- transfer

/// `d/{device}/fetch`: "send me these chunks of this bundle".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub device_id: String,
    pub digest: BundleDigest,
    pub missing: Vec<ChunkRange>,
}

/// Chunk indexes `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    pub start: u32,
    pub end: u32,
}

/// `b/{digest}/chunks`: one chunk of a bundle's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMessage {
    pub digest: BundleDigest,
    pub index: u32,
    pub data: Vec<u8>,
}

/// Collapses sorted indexes into ranges.
pub fn ranges_of(indexes: impl IntoIterator<Item = u32>) -> Vec<ChunkRange> {
    let mut ranges: Vec<ChunkRange> = Vec::new();
    for index in indexes {
        match ranges.last_mut() {
            Some(last) if last.end == index => last.end += 1,
            _ => ranges.push(ChunkRange { start: index, end: index + 1 }),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_kind_parses_back_from_its_name() {
        let kinds = [
            FailureKind::Signature,
            FailureKind::Expired,
            FailureKind::Integrity,
            FailureKind::RollbackNotPermitted,
            FailureKind::Transfer,
            FailureKind::Storage,
            FailureKind::Load,
            FailureKind::SelfTest,
            FailureKind::Manifest,
        ];
        for kind in kinds {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FailureKind::parse("Load"), None);
    }

    #[test]
    fn envelope_refuses_garbage_and_other_versions() {
        let heartbeat = Telemetry::Heartbeat(Heartbeat {
            device_id: "d".into(),
            seq: 1,
            sent_at_ms: 2,
            uptime_s: 3,
            cpu_percent: 4.0,
            memory_used_bytes: 5,
            memory_total_bytes: 6,
            process_rss_bytes: 7,
            window_ms: 8,
            models: vec![],
            refused_messages: 0,
        });
        let bytes = encode(&heartbeat);
        assert_eq!(decode::<Telemetry>(&bytes).unwrap(), heartbeat);
        assert!(matches!(decode::<Telemetry>(&[]), Err(ProtocolError::Empty)));
        let mut other_version = bytes.clone();
        other_version[0] = 2;
        assert!(matches!(decode::<Telemetry>(&other_version), Err(ProtocolError::UnsupportedVersion(2))));
        assert!(matches!(decode::<Telemetry>(&[1, 0xff, 0xff]), Err(ProtocolError::Malformed(_))));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(decode::<Telemetry>(&trailing), Err(ProtocolError::Malformed(_))));
        // An enum variant this build does not know (appended by a newer peer) is refused.
        assert!(matches!(decode::<Reported>(&[1, 9]), Err(ProtocolError::Malformed(_))));
    }

    #[test]
    fn wire_encoding_is_stable() {
        // A snapshot of the bytes: changing it breaks deployed devices.
        let fetch = FetchRequest {
            device_id: "d1".into(),
            digest: BundleDigest([0xab; 32]),
            missing: vec![ChunkRange { start: 0, end: 2 }, ChunkRange { start: 300, end: 301 }],
        };
        assert_eq!(hex::encode(encode(&fetch)), "01026431abababababababababababababababababababababababababababababababab020002ac02ad02");
    }

    #[test]
    fn desired_state_signature_covers_the_body() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let trusted = TrustedKeys::new(vec![key_pair.public_key()]);
        let slot = DesiredSlot { device_id: "d".into(), model: "m".into(), generation: 3, issued_at_ms: 9, target: DesiredTarget::Empty };
        let signed = SignedDesiredState::sign(&slot, &key_pair);
        assert_eq!(signed.verify(&trusted).unwrap(), slot);
        let mut tampered = signed.clone();
        tampered.body[0] ^= 1;
        assert!(matches!(tampered.verify(&trusted), Err(ProtocolError::Signature(_))));
    }

    #[test]
    fn ranges_collapse_runs() {
        assert_eq!(
            ranges_of([0, 1, 2, 5, 7, 8]),
            vec![ChunkRange { start: 0, end: 3 }, ChunkRange { start: 5, end: 6 }, ChunkRange { start: 7, end: 9 }]
        );
        assert!(ranges_of([]).is_empty());
    }
}
