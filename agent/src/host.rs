//! What one device serves: per model name the loaded version, and the request figures the
//! telemetry actor drains into heartbeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fleetml_shared::histogram::Histogram;
use fleetml_shared::protocol::ModelFigures;

use crate::inference::LoadedModel;

#[derive(Default)]
struct WindowFigures {
    requests: u64,
    errors: u64,
    latency_us: Histogram,
}

pub struct ModelHost {
    pub device_id: String,
    /// Invariant: swapping a model is one pointer store under a short write lock; requests
    /// in flight hold their own `Arc` and finish on the model they started with.
    models: RwLock<HashMap<String, Arc<LoadedModel>>>,
    figures: Mutex<HashMap<(String, u64), WindowFigures>>,
    ready: AtomicBool,
    /// Messages refused (undecodable, unverifiable, replayed) since start.
    pub refused_messages: AtomicU64,
}

impl ModelHost {
    pub fn new(device_id: &str) -> Self {
        ModelHost {
            device_id: device_id.to_string(),
            models: RwLock::new(HashMap::new()),
            figures: Mutex::new(HashMap::new()),
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
