//! fleetml-shared: what the agent and the control plane must agree on.
//!
//! The wire protocol (`protocol`, `topics`), the signed bundle format (`bundle`, `signing`),
//! the label selector grammar (`selector`), the mergeable latency histogram (`histogram`) and
//! the pure drift layer (`drift`: reference profiles, device windows, drift metrics).
//! Invariant: this crate depends on no async runtime, web, database, MQTT or ONNX crate, so
//! both programs (and third parties) can link it cheaply.

pub mod broker;
pub mod bundle;
pub mod drift;
pub mod histogram;
pub mod protocol;
pub mod selector;
pub mod signing;
pub mod topics;

/// Milliseconds since the Unix epoch, the one timestamp unit on the wire and in the stores.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}
