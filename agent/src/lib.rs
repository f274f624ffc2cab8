//! fleetml-agent: the device side of fleetml.
//!
//! Each device runs a few actors with bounded channels: the MQTT `link`, the `reconciler`
//! (desired vs actual state, driving `transfer` and `install`), `telemetry`, and the local
//! Open Inference Protocol `api` backed by the `inference` pool. `sim` runs many devices
//! in one process on the very same code path.

pub mod api;
pub mod config;
pub mod drift;
pub mod host;
pub mod http;
pub mod inference;
pub mod install;
pub mod link;
pub mod reconciler;
pub mod shadow;
pub mod sim;
pub mod storage;
pub mod telemetry;
pub mod transfer;

#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetml_shared::topics::Topics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, DeviceConfig};
use crate::host::ModelHost;
use crate::inference::InferencePool;
use crate::link::Link;
use crate::reconciler::Reconciler;
use crate::storage::StateDir;
use crate::telemetry::{HostProbe, TelemetryActor};

/// Link events waiting for the reconciler; when full the link stops reading the socket,
/// which pushes back on the broker.
const LINK_EVENTS_CAPACITY: usize = 256;
/// How long actors get to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the devices of one process share.
#[derive(Clone)]
pub struct Shared {
    pub pool: InferencePool,
    pub probe: Arc<HostProbe>,
}

impl Shared {
    pub fn new(inference_threads: usize) -> anyhow::Result<Self> {
        Ok(Shared { pool: InferencePool::start(inference_threads).context("starting inference threads")?, probe: HostProbe::new() })
    }
}

/// Starts one device's actors on `tracker`: restores its installed models first, then
/// connects. Returns what the local API serves for it.
pub async fn start_device(
    config: DeviceConfig,
    shared: &Shared,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Arc<ModelHost>> {
    let state_dir = StateDir::open(&config.state_dir).context("opening the state folder")?;
    let host = Arc::new(ModelHost::new(&config.device_id));
    let (event_sender, event_receiver) = mpsc::channel(LINK_EVENTS_CAPACITY);
    let (link, link_handle) = Link::new(&config.device_id, &config.link, event_sender);
    let telemetry = TelemetryActor {
        host: host.clone(),
        probe: shared.probe.clone(),
        link: link_handle.clone(),
        topics: Topics::new(&config.link.topic_root),
        interval: config.telemetry.heartbeat_interval,
    };
    let (drift_sender, drift_receiver) = mpsc::channel(drift::CLOSED_WINDOWS_CAPACITY);
    host.enable_drift(drift::DriftSink {
        sender: drift_sender,
        window: config.telemetry.drift_window,
        window_samples: config.telemetry.drift_window_samples,
    });
    let outbox = drift::DriftOutbox {
        dir: config.state_dir.join("drift-outbox"),
        device_id: config.device_id.clone(),
        host: host.clone(),
        link: link_handle.clone(),
        topics: Topics::new(&config.link.topic_root),
        receiver: drift_receiver,
        max_windows: config.telemetry.drift_outbox_windows,
    };
    let device_id = config.device_id.clone();
    let mut reconciler = Reconciler::new(config, link_handle, state_dir, host.clone(), event_receiver);
    reconciler.restore().await.with_context(|| format!("restoring the state of device {device_id}"))?;
    spawn_actor(tracker, "link", link.run(cancel.clone()));
    spawn_actor(tracker, "reconciler", reconciler.run(cancel.clone()));
    spawn_actor(tracker, "telemetry", telemetry.run(cancel.clone()));
    spawn_actor(tracker, "drift_outbox", outbox.run(cancel.clone()));
    Ok(host)
}

fn spawn_actor(tracker: &TaskTracker, name: &'static str, actor: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
    tracker.spawn(async move {
        if let Err(error) = actor.await {
            tracing::error!(actor = name, error = format!("{error:#}"), "actor stopped");
        }
    });
}

/// A running device.
pub struct AgentHandle {
    pub api_addr: std::net::SocketAddr,
}

/// Starts one device and its local API on `tracker`.
pub async fn start(config: AgentConfig, tracker: &TaskTracker, cancel: &CancellationToken) -> anyhow::Result<AgentHandle> {
    let shared = Shared::new(config.inference_threads)?;
    let device_id = config.device.device_id.clone();
    let host = start_device(config.device, &shared, tracker, cancel).await?;
    let listener = tokio::net::TcpListener::bind(config.http).await.with_context(|| format!("binding the local API to {}", config.http))?;
    let api_addr = listener.local_addr()?;
    let api_state =
        api::ApiState::new(shared.pool.clone(), Some(device_id.clone()), api::HostAllowList::new(api_addr, &config.api.allowed_hosts));
    api_state.add_host(host);
    tracing::info!(%device_id, api = %api_addr, "agent running");
    serve_api(tracker, listener, api_state, config.api.limits, cancel.clone());
    Ok(AgentHandle { api_addr })
}

/// Waits for `cancel`, then gives the actors `SHUTDOWN_GRACE` to finish.
pub async fn wait_for_shutdown(tracker: TaskTracker, cancel: CancellationToken) {
    cancel.cancelled().await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some actors did not stop within the grace period");
    }
}

pub fn serve_api(
    tracker: &TaskTracker,
    listener: tokio::net::TcpListener,
    state: api::ApiState,
    limits: http::ServerLimits,
    cancel: CancellationToken,
) {
    tracing::info!(
        header_read_timeout_s = limits.header_read_timeout.as_secs_f64(),
        body_read_timeout_s = limits.body_read_timeout.as_secs_f64(),
        max_connections = limits.max_connections,
        "local API limits"
    );
    spawn_actor(tracker, "api", async move { http::serve(listener, api::router(state), limits, cancel).await.context("local API server") });
}
