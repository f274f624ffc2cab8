//! Drift on the device: a tap per active model version that has a reference profile
//! (`tap`) feeds every answered request's inputs and outputs into a `WindowAccumulator` and
//! closes a window every N seconds or M samples; the outbox (`outbox`) keeps closed windows on
//! disk (bounded) and sends them when the broker is connected, resending the recently sent
//! ones after a reconnect. The plane keeps one copy per (device, model, version, seq), so a
//! window is counted once however often it travels.

mod outbox;
mod tap;

use std::time::Duration;

use fleetml_shared::drift::window::DriftWindow;
use tokio::sync::mpsc;

pub use outbox::DriftOutbox;
pub use tap::DriftTap;

/// Closed windows waiting to be written to the outbox. When full (the disk is stalled), a
/// window is dropped and counted: the request path never waits on it.
pub const CLOSED_WINDOWS_CAPACITY: usize = 256;

/// A closed window on its way to the outbox.
#[derive(Debug)]
pub struct ClosedWindow {
    pub model: String,
    pub version: u64,
    pub window: DriftWindow,
}

/// Where taps send closed windows, and the agent's window overrides.
#[derive(Clone)]
pub struct DriftSink {
    pub sender: mpsc::Sender<ClosedWindow>,
    pub window: Option<Duration>,
    pub window_samples: Option<u64>,
}
