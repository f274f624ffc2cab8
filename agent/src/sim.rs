//! A simulated fleet: N independent devices in one process, each with its own MQTT
//! connection, identity and state folder, on exactly the code path of a real agent. They
//! share the inference threads and one local API listener routed by device.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DeviceConfig, SimConfig, TestingConfig};
use crate::{Shared, api, start_device};

pub struct SimHandle {
    pub api_addr: SocketAddr,
    pub device_ids: Vec<String>,
}

pub fn device_id(config: &SimConfig, device_idx: usize) -> String {
    format!("{}{:04}", config.id_prefix, config.first_index + device_idx)
}

pub fn device_labels(config: &SimConfig, device_idx: usize) -> BTreeMap<String, String> {
    let mut labels = config.base_labels.clone();
    for (key, values) in &config.label_cycles {
        if !values.is_empty() {
            labels.insert(key.clone(), values[device_idx % values.len()].clone());
        }
    }
    labels
}

/// Starts the fleet on `tracker` and returns once every device restored its state.
pub async fn start(config: &SimConfig, tracker: &TaskTracker, cancel: &CancellationToken) -> anyhow::Result<SimHandle> {
    let shared = Shared::new(config.inference_threads)?;
    let listener = tokio::net::TcpListener::bind(config.http).await.with_context(|| format!("binding the local API to {}", config.http))?;
    let api_addr = listener.local_addr()?;
    let api_state = api::ApiState::new(shared.pool.clone(), None, api::HostAllowList::new(api_addr, &config.api.allowed_hosts));
    let mut device_ids = Vec::with_capacity(config.count);
    let started = tokio::time::Instant::now();
    for device_idx in 0..config.count {
        if let Some(rate) = config.connect_rate {
            // Device i starts at i / rate seconds: a steady ramp, whatever each start costs.
            tokio::time::sleep_until(started + Duration::from_secs_f64(device_idx as f64 / rate)).await;
        }
        let device_id = device_id(config, device_idx);
        let labels = device_labels(config, device_idx);
        let testing = if config.testing_selector.matches(&labels) { config.testing.clone() } else { TestingConfig::default() };
        let device = DeviceConfig {
            device_id: device_id.clone(),
            labels,
            state_dir: config.state_dir.join(&device_id),
            trusted_keys: config.trusted_keys.clone(),
            link: config.link.clone(),
            telemetry: config.telemetry.clone(),
            transfer: config.transfer.clone(),
            testing,
        };
        let host = start_device(device, &shared, tracker, cancel).await?;
        api_state.add_host(host);
        device_ids.push(device_id);
    }
    crate::serve_api(tracker, listener, api_state, config.api.limits, cancel.clone());
    tracing::info!(count = config.count, api = %api_addr, "simulated fleet running");
    Ok(SimHandle { api_addr, device_ids })
}
