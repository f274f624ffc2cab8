//! Ingest: decodes what devices report (state, heartbeats) and writes it to the store,
//! batching inference windows. Undecodable or inconsistent messages are logged, counted
//! and dropped; they never stop the actor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetml_shared::protocol::{self, Reported, Telemetry};
use fleetml_shared::topics::TopicKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::PlaneCore;
use crate::deployment::controller::ControllerCommand;
use crate::mqtt::Inbound;
use crate::reported::ReportedSlot;
use crate::store::{DeviceChange, InferenceWindow, ReportedUpdate};
use fleetml_shared::drift::profile::Profile;
use fleetml_shared::drift::window::MergedWindow;
use fleetml_shared::protocol::DriftWindowReport;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::figures;

/// Windows buffered before a forced flush; the flush tick writes smaller batches.
const MAX_BUFFERED_WINDOWS: usize = 512;
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Attempts after a failed write of a reported state, waiting a little longer each time.
const STORE_RETRIES: u32 = 5;
const STORE_RETRY_DELAY: Duration = Duration::from_millis(100);

pub struct Ingest {
    pub core: Arc<PlaneCore>,
    pub inbound: mpsc::Receiver<Inbound>,
    /// Profiles by version, loaded on a version's first window (`None`: it has none).
    /// Bounded (`PROFILE_CACHE_CAPACITY`, least recently used goes): devices name the
    /// versions, so without a bound they could grow it without end.
    pub profiles: LruCache<(String, i64), Option<Arc<Profile>>>,
}

/// Versions whose reference profile ingest keeps parsed. A version beyond it is loaded
/// again from the store on its next window (one read and a parse).
pub const PROFILE_CACHE_CAPACITY: NonZeroUsize = NonZeroUsize::new(256).expect("non-zero");

fn now_ms() -> i64 {
    i64::try_from(fleetml_shared::now_ms()).unwrap_or(i64::MAX)
}

impl Ingest {
    pub fn new(core: Arc<PlaneCore>, inbound: mpsc::Receiver<Inbound>) -> Self {
        Ingest { core, inbound, profiles: LruCache::new(PROFILE_CACHE_CAPACITY) }
    }

    /// Checks a device's drift window against its version's profile and stores it once.
    async fn store_drift_window(&mut self, report: DriftWindowReport) -> Result<(), String> {
        let version = figures::drift_version(&report).map_err(|error| error.to_string())?;
        let key = (report.model.clone(), version);
        let profile = match self.profiles.get(&key) {
            Some(profile) => profile.clone(),
            None => {
                let profile = match crate::drift::load_profile(&self.core, &report.model, version).await {
                    Ok(profile) => Some(Arc::new(profile)),
                    Err(crate::drift::DriftQueryError::NoProfile(..)) => None,
                    Err(error) => return Err(error.to_string()),
                };
                self.profiles.put(key, profile.clone());
                profile
            }
        };
        let Some(profile) = profile else {
            return Err(format!("{}@{} has no reference profile", report.model, report.version));
        };
        // The whole window must fit the profile before it is kept.
        MergedWindow::new(&profile).merge(&report.window).map_err(|error| error.to_string())?;
        let body = postcard::to_stdvec(&report.window).map_err(|error| error.to_string())?;
        let record = figures::drift_record(&report, body, now_ms()).map_err(|error| error.to_string())?;
        let inserted = self.core.store.insert_drift_window(&record).await.map_err(|error| error.to_string())?;
        if !inserted {
            tracing::debug!(device_id = %report.device_id, seq = report.seq, "drift window already stored (redelivery)");
        }
        if report.dropped_before > 0 {
            tracing::warn!(device_id = %report.device_id, n_dropped = report.dropped_before, "device dropped drift windows (outbox full)");
        }
        Ok(())
    }
}

impl Ingest {
    #[tracing::instrument(name = "ingest", skip_all)]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut windows: Vec<InferenceWindow> = Vec::new();
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            let flush_due = tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: mpsc::Receiver::recv.
                inbound = self.inbound.recv() => match inbound {
                    Some(inbound) => {
                        self.handle(inbound, &mut windows).await;
                        windows.len() >= MAX_BUFFERED_WINDOWS
                    }
                    None => break,
                },
                _ = flush.tick() => true,
            };
            if flush_due && !windows.is_empty() {
                let batch = std::mem::take(&mut windows);
                if let Err(error) = self.core.store.insert_windows(&batch).await {
                    tracing::error!(%error, n_windows = batch.len(), "could not store inference windows");
                }
            }
        }
        if !windows.is_empty() {
            let _ = self.core.store.insert_windows(&windows).await;
        }
        Ok(())
    }

    fn refuse(&self, device_id: &str, what: &str, error: impl std::fmt::Display) {
        self.core.counters.count_refused();
        tracing::warn!(%device_id, what, %error, "device message refused");
    }

    async fn handle(&mut self, inbound: Inbound, windows: &mut Vec<InferenceWindow>) {
        match inbound.kind {
            TopicKind::Reported { device_id } => match protocol::decode::<Reported>(&inbound.payload) {
                Ok(Reported::Online(state)) if state.device_id == device_id => {
                    if let Err(error) = figures::check_reported(&state) {
                        return self.refuse(&device_id, "reported", error);
                    }
                    let labels: BTreeMap<String, String> = state.labels.into_iter().collect();
                    let update = ReportedUpdate {
                        device_id: device_id.clone(),
                        labels,
                        agent_version: state.agent_version,
                        slots: state.slots.iter().map(ReportedSlot::from_report).collect(),
                        last_refusal: state.last_refusal,
                        at_ms: fleetml_shared::now_ms() as i64,
                    };
                    // A reported state is sent once per change: retry a failed write rather than lose it.
                    let mut attempt = 0u32;
                    let applied = loop {
                        match self.core.store.apply_reported(&update).await {
                            Err(error) if attempt < STORE_RETRIES => {
                                attempt += 1;
                                tracing::warn!(%device_id, %error, attempt, "storing reported state failed; retrying");
                                tokio::time::sleep(STORE_RETRY_DELAY * attempt).await;
                            }
                            result => break result,
                        }
                    };
                    match applied {
                        Ok(DeviceChange::New | DeviceChange::Relabelled) => {
                            tracing::debug!(%device_id, "device joined or changed labels; evaluating deployments");
                            self.core.controller.request(ControllerCommand::ReconcileDevice(device_id));
                        }
                        Ok(DeviceChange::Unchanged) => {}
                        Err(error) => {
                            tracing::error!(%device_id, %error, "could not store reported state")
                        }
                    }
                }
                Ok(Reported::Offline { device_id: offline_id }) if offline_id == device_id => {
                    tracing::debug!(%device_id, "device offline");
                    if let Err(error) = self.core.store.mark_offline(&device_id, fleetml_shared::now_ms() as i64).await {
                        tracing::error!(%device_id, %error, "could not mark device offline");
                    }
                }
                Ok(_) => self.refuse(&device_id, "reported", "device id in the message differs from the topic"),
                Err(error) => self.refuse(&device_id, "reported", error),
            },
            TopicKind::Telemetry { device_id } => match protocol::decode::<Telemetry>(&inbound.payload) {
                Ok(Telemetry::Heartbeat(heartbeat)) if heartbeat.device_id == device_id => {
                    let (vitals, new_windows) = match figures::heartbeat(&device_id, &heartbeat, now_ms()) {
                        Ok(checked) => checked,
                        Err(error) => return self.refuse(&device_id, "heartbeat", error),
                    };
                    if let Err(error) = self.core.store.record_vitals(&device_id, &vitals).await {
                        tracing::error!(%device_id, %error, "could not store heartbeat");
                    }
                    windows.extend(new_windows);
                }
                Ok(Telemetry::Shadow(report)) if report.device_id == device_id => {
                    let shadow_windows = match figures::shadow_windows(&device_id, &report, now_ms()) {
                        Ok(checked) => checked,
                        Err(error) => return self.refuse(&device_id, "shadow report", error),
                    };
                    for window in shadow_windows {
                        if let Err(error) = self.core.store.insert_shadow_window(&window).await {
                            tracing::error!(%device_id, %error, "could not store a shadow report");
                        }
                    }
                }
                Ok(Telemetry::Drift(report)) if report.device_id == device_id => {
                    if let Err(error) = self.store_drift_window(report).await {
                        self.refuse(&device_id, "drift window", error);
                    }
                }
                Ok(_) => self.refuse(&device_id, "telemetry", "device id in the message differs from the topic"),
                Err(error) => self.refuse(&device_id, "telemetry", error),
            },
            TopicKind::Fetch { .. } | TopicKind::Desired { .. } | TopicKind::Chunks { .. } => {}
        }
    }
}
