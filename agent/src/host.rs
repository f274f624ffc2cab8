//! What one device serves: per model name the loaded version, and the request figures the
//! telemetry actor drains into heartbeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fleetml_shared::histogram::Histogram;
use fleetml_shared::protocol::{ModelFigures, ShadowFigures};

use crate::drift::{DriftSink, DriftTap};
use crate::inference::LoadedModel;
use fleetml_shared::drift::profile::Profile;

#[derive(Default)]
struct WindowFigures {
    requests: u64,
    errors: u64,
    latency_us: Histogram,
}

#[derive(Default)]
struct ShadowWindow {
    requests: u64,
    errors: u64,
    skipped: u64,
    rows: u64,
    rows_agreed: u64,
    delta_sum: f64,
    delta_max: f64,
    latency_us: Histogram,
}

/// How one mirrored request compared with the active model's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    pub rows: u64,
    pub rows_agreed: u64,
    pub delta_sum: f64,
    pub delta_max: f64,
}

pub struct ModelHost {
    pub device_id: String,
    /// Invariant: swapping a model is one pointer store under a short write lock; requests
    /// in flight hold their own `Arc` and finish on the model they started with.
    models: RwLock<HashMap<String, Arc<LoadedModel>>>,
    /// Shadow candidates by the name of the model they shadow.
    shadows: RwLock<HashMap<String, Arc<LoadedModel>>>,
    figures: Mutex<HashMap<(String, u64), WindowFigures>>,
    shadow_figures: Mutex<HashMap<(String, u64, u64), ShadowWindow>>,
    /// Where drift windows go; `None` until the device's outbox runs.
    drift_sink: Mutex<Option<DriftSink>>,
    /// Drift taps by model name, for the active version when it carries a profile.
    drift_taps: RwLock<HashMap<String, Arc<DriftTap>>>,
    ready: AtomicBool,
    /// Messages refused (undecodable, unverifiable, replayed) since start.
    pub refused_messages: AtomicU64,
}

impl ModelHost {
    pub fn new(device_id: &str) -> Self {
        ModelHost {
            device_id: device_id.to_string(),
            models: RwLock::new(HashMap::new()),
            shadows: RwLock::new(HashMap::new()),
            figures: Mutex::new(HashMap::new()),
            shadow_figures: Mutex::new(HashMap::new()),
            drift_sink: Mutex::new(None),
            drift_taps: RwLock::new(HashMap::new()),
            ready: AtomicBool::new(false),
            refused_messages: AtomicU64::new(0),
        }
    }

    pub fn get(&self, model: &str) -> Option<Arc<LoadedModel>> {
        self.models.read().ok()?.get(model).cloned()
    }

    pub fn swap(&self, loaded: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        self.models.write().ok()?.insert(loaded.model.clone(), loaded)
    }

    pub fn remove(&self, model: &str) -> Option<Arc<LoadedModel>> {
        self.models.write().ok()?.remove(model)
    }

    pub fn enable_drift(&self, sink: DriftSink) {
        if let Ok(mut drift_sink) = self.drift_sink.lock() {
            *drift_sink = Some(sink);
        }
    }

    /// Sets the profile of `model`'s active `version` (or none): the old tap's window closes.
    pub fn set_drift_profile(&self, model: &str, version: u64, profile: Option<&Profile>) {
        let sink = self.drift_sink.lock().ok().and_then(|sink| sink.clone());
        let tap = match (profile, sink) {
            (Some(profile), Some(sink)) => Some(Arc::new(DriftTap::new(profile, model, version, sink))),
            _ => None,
        };
        let Ok(mut taps) = self.drift_taps.write() else { return };
        let previous = match tap {
            Some(tap) => taps.insert(model.to_string(), tap),
            None => taps.remove(model),
        };
        drop(taps);
        if let Some(previous) = previous {
            previous.close_now(fleetml_shared::now_ms());
        }
    }

    pub fn drift_tap(&self, model: &str) -> Option<Arc<DriftTap>> {
        self.drift_taps.read().ok()?.get(model).cloned()
    }

    pub fn close_due_drift_windows(&self, now_ms: u64) {
        let taps: Vec<Arc<DriftTap>> = self.drift_taps.read().map(|taps| taps.values().cloned().collect()).unwrap_or_default();
        for tap in taps {
            tap.close_if_due(now_ms);
        }
    }

    pub fn close_all_drift_windows(&self, now_ms: u64) {
        let taps: Vec<Arc<DriftTap>> = self.drift_taps.read().map(|taps| taps.values().cloned().collect()).unwrap_or_default();
        for tap in taps {
            tap.close_now(now_ms);
        }
    }

    pub fn shadow(&self, model: &str) -> Option<Arc<LoadedModel>> {
        self.shadows.read().ok()?.get(model).cloned()
    }

    pub fn swap_shadow(&self, loaded: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        self.shadows.write().ok()?.insert(loaded.model.clone(), loaded)
    }

    pub fn remove_shadow(&self, model: &str) -> Option<Arc<LoadedModel>> {
        self.shadows.write().ok()?.remove(model)
    }

    /// Records one mirrored request: `None` when the candidate failed.
    pub fn record_shadow(&self, model: &str, active_version: u64, candidate_version: u64, latency_us: u64, comparison: Option<Comparison>) {
        if let Ok(mut figures) = self.shadow_figures.lock() {
            let window = figures.entry((model.to_string(), active_version, candidate_version)).or_default();
            window.requests += 1;
            match comparison {
                Some(comparison) => {
                    window.latency_us.record(latency_us);
                    window.rows += comparison.rows;
                    window.rows_agreed += comparison.rows_agreed;
                    window.delta_sum += comparison.delta_sum;
                    window.delta_max = window.delta_max.max(comparison.delta_max);
                }
                None => window.errors += 1,
            }
        }
    }

    /// Counts a request that was not mirrored because the shadow queue was full.
    pub fn record_shadow_skipped(&self, model: &str, active_version: u64, candidate_version: u64) {
        if let Ok(mut figures) = self.shadow_figures.lock() {
            figures.entry((model.to_string(), active_version, candidate_version)).or_default().skipped += 1;
        }
    }

    /// The shadow figures since the last drain; resets the window.
    pub fn drain_shadow_figures(&self) -> Vec<ShadowFigures> {
        let Ok(mut figures) = self.shadow_figures.lock() else {
            return Vec::new();
        };
        let mut drained: Vec<ShadowFigures> = figures
            .drain()
            .map(|((model, active_version, candidate_version), window)| ShadowFigures {
                model,
                active_version,
                candidate_version,
                requests: window.requests,
                errors: window.errors,
                skipped: window.skipped,
                rows: window.rows,
                rows_agreed: window.rows_agreed,
                delta_sum: window.delta_sum,
                delta_max: window.delta_max,
                candidate_latency_us: window.latency_us.snapshot(),
            })
            .collect();
        drained.sort_by(|left, right| (&left.model, left.candidate_version).cmp(&(&right.model, right.candidate_version)));
        drained
    }

    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.models.read().map(|models| models.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn count_refused(&self) {
        self.refused_messages.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, model: &str, version: u64, latency_us: u64, ok: bool) {
        if let Ok(mut figures) = self.figures.lock() {
            let window = figures.entry((model.to_string(), version)).or_default();
            window.requests += 1;
            if ok {
                window.latency_us.record(latency_us);
            } else {
                window.errors += 1;
            }
        }
    }

    /// The figures since the last drain, per model version; resets the window.
    pub fn drain_figures(&self) -> Vec<ModelFigures> {
        let Ok(mut figures) = self.figures.lock() else {
            return Vec::new();
        };
        let mut drained: Vec<ModelFigures> = figures
            .drain()
            .map(|((model, version), window)| ModelFigures {
                model,
                version,
                requests: window.requests,
                errors: window.errors,
                latency_us: window.latency_us.snapshot(),
            })
            .collect();
        drained.sort_by(|left, right| (&left.model, left.version).cmp(&(&right.model, right.version)));
        drained
    }
}
