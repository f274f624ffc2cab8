//! The drift tap of one active model version: its traffic summarised into drift windows,
//! each closed window handed to the outbox without ever making a request wait.

use std::sync::Mutex;

use fleetml_shared::bundle::{TensorData, TensorValues};
use fleetml_shared::drift::Side;
use fleetml_shared::drift::profile::Profile;
use fleetml_shared::drift::window::{self, WindowAccumulator};
use fleetml_shared::now_ms;

use super::{ClosedWindow, DriftSink};

struct TapState {
    accumulator: WindowAccumulator,
    started_at_ms: u64,
}

/// Summarises one active model version's traffic into drift windows.
pub struct DriftTap {
    pub model: String,
    pub version: u64,
    window_ms: u64,
    window_samples: u64,
    state: Mutex<TapState>,
    sink: DriftSink,
    /// Windows dropped because the outbox channel was full.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Requests whose tensors did not fit the profile (counted, not fatal).
    pub observe_errors: std::sync::atomic::AtomicU64,
}

impl DriftTap {
    pub fn new(profile: &Profile, model: &str, version: u64, sink: DriftSink) -> DriftTap {
        let spec = profile.window();
        DriftTap {
            model: model.to_string(),
            version,
            window_ms: sink.window.map(|window| window.as_millis() as u64).unwrap_or(spec.seconds.saturating_mul(1000)).max(1),
            window_samples: sink.window_samples.unwrap_or(spec.samples).max(1),
            state: Mutex::new(TapState { accumulator: WindowAccumulator::new(profile), started_at_ms: now_ms() }),
            sink,
            dropped: Default::default(),
            observe_errors: Default::default(),
        }
    }

    /// Feeds one answered request; closes the window when it holds enough samples.
    pub fn observe(&self, inputs: &[TensorData], outputs: &[TensorData]) {
        let Ok(mut state) = self.state.lock() else { return };
        let sides = [(Side::Input, inputs), (Side::Output, outputs)];
        for (side, tensors) in sides {
            for tensor in tensors {
                let values = match &tensor.values {
                    TensorValues::F32(values) => window::TensorValues::F32(values),
                    TensorValues::I64(values) => window::TensorValues::I64(values),
                };
                // A 1-D tensor is a batch of single values; otherwise rows are the first axis.
                let row_len: usize =
                    if tensor.shape.len() <= 1 { 1 } else { crate::api::element_count(&tensor.shape[1..]).unwrap_or(usize::MAX) };
                if let Err(error) = state.accumulator.observe(side, &tensor.name, values, row_len) {
                    self.observe_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(model = %self.model, %error, "request not summarised for drift");
                }
            }
        }
        if state.accumulator.samples() >= self.window_samples {
            self.close(&mut state, now_ms());
        }
    }

    /// Closes the window if it is old enough and holds anything.
    pub fn close_if_due(&self, now_ms: u64) {
        let Ok(mut state) = self.state.lock() else { return };
        if now_ms.saturating_sub(state.started_at_ms) >= self.window_ms {
            self.close(&mut state, now_ms);
        }
    }

    /// Closes the window now, whatever its age (shutdown, or the version is replaced).
    pub fn close_now(&self, now_ms: u64) {
        if let Ok(mut state) = self.state.lock() {
            self.close(&mut state, now_ms);
        }
    }

    fn close(&self, state: &mut TapState, now_ms: u64) {
        let started_at_ms = std::mem::replace(&mut state.started_at_ms, now_ms);
        if let Some(window) = state.accumulator.take(started_at_ms, now_ms) {
            let closed = ClosedWindow { model: self.model.clone(), version: self.version, window };
            if self.sink.sender.try_send(closed).is_err() {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(model = %self.model, "drift window dropped: the outbox is not keeping up");
            }
        }
    }
}
