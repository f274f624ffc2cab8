//! Heartbeats: uptime, CPU and memory, and per model version the request and error counts
//! and a mergeable latency histogram for the window since the previous heartbeat; and shadow
//! candidates' agreement and latency when any ran.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetml_shared::now_ms;
use fleetml_shared::protocol::{self, Heartbeat, ShadowReport, Telemetry};
use fleetml_shared::topics::Topics;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::host::ModelHost;
use crate::link::LinkHandle;

/// Host figures, shared by every agent of a process (a simulated fleet reads them once).
pub struct HostProbe {
    state: Mutex<ProbeState>,
}

struct ProbeState {
    /// `None` where sysinfo cannot read this system: heartbeats then carry zeros.
    system: Option<System>,
    pid: Option<Pid>,
    refreshed_at: Option<Instant>,
    cached: HostFigures,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct HostFigures {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub process_rss_bytes: u64,
}

impl HostProbe {
    pub fn new() -> Arc<Self> {
        let state = ProbeState {
            system: System::new().ok(),
            pid: sysinfo::get_current_pid().ok(),
            refreshed_at: None,
            cached: HostFigures::default(),
        };
        Arc::new(HostProbe { state: Mutex::new(state) })
    }

    /// Refreshes at most once a second.
    pub fn figures(&self) -> HostFigures {
        let Ok(mut state) = self.state.lock() else {
            return HostFigures::default();
        };
        let state = &mut *state;
        let fresh = state.refreshed_at.is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if let (false, Some(system)) = (fresh, state.system.as_mut()) {
            system.refresh_cpu_usage();
            system.refresh_memory();
            let mut process_rss_bytes = 0;
            if let Some(pid) = state.pid {
                system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, ProcessRefreshKind::nothing().with_memory());
                process_rss_bytes = system.process(pid).map(|process| process.memory()).unwrap_or(0);
            }
            state.refreshed_at = Some(Instant::now());
            state.cached = HostFigures {
                cpu_percent: system.global_cpu_usage(),
                memory_used_bytes: system.used_memory(),
                memory_total_bytes: system.total_memory(),
                process_rss_bytes,
            };
        }
        state.cached
    }
}

pub struct TelemetryActor {
    pub host: Arc<ModelHost>,
    pub probe: Arc<HostProbe>,
    pub link: LinkHandle,
    pub topics: Topics,
    pub interval: Duration,
}

impl TelemetryActor {
    #[tracing::instrument(name = "telemetry", skip_all, fields(device_id = %self.host.device_id))]
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_sent = Instant::now();
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            seq += 1;
            let figures = self.probe.figures();
            let window_ms = last_sent.elapsed().as_millis() as u64;
            let heartbeat = Heartbeat {
                device_id: self.host.device_id.clone(),
                seq,
                sent_at_ms: now_ms(),
                uptime_s: started.elapsed().as_secs(),
                cpu_percent: figures.cpu_percent,
                memory_used_bytes: figures.memory_used_bytes,
                memory_total_bytes: figures.memory_total_bytes,
                process_rss_bytes: figures.process_rss_bytes,
                window_ms,
                models: self.host.drain_figures(),
                refused_messages: self.host.refused_messages.load(std::sync::atomic::Ordering::Relaxed),
            };
            last_sent = Instant::now();
            let payload = protocol::encode(&Telemetry::Heartbeat(heartbeat));
            if !self.link.publish_or_drop(self.topics.telemetry(&self.host.device_id), payload) {
                tracing::debug!(seq, "heartbeat dropped: the link's queue is full (offline?)");
            }
            let shadow_figures = self.host.drain_shadow_figures();
            if !shadow_figures.is_empty() {
                let report =
                    ShadowReport { device_id: self.host.device_id.clone(), sent_at_ms: now_ms(), window_ms, figures: shadow_figures };
                if !self.link.publish_or_drop(self.topics.telemetry(&self.host.device_id), protocol::encode(&Telemetry::Shadow(report))) {
                    tracing::debug!(seq, "shadow report dropped: the link's queue is full (offline?)");
                }
            }
        }
        Ok(())
    }
}
