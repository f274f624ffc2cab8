//! The rollout controller: a reconcile loop over the rollouts in the store. It moves devices
//! wave by wave by writing per-device deployments (the one path to desired state, so the
//! deployment controller signs and publishes), reads reported state and telemetry, evaluates
//! the gates, and on failure pauses or rolls the moved devices back. All of its state is in
//! the store, so it resumes after a restart without redoing finished devices.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetml_shared::histogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::gates::{Verdict, WaveFigures, evaluate};
use super::policy::{FailureAction, PolicyDocument};
use crate::PlaneCore;
use crate::api::views::parse_slots;
use crate::deployment::ControllerCommand;
use crate::store::{DeploymentTarget, DeviceRecord, RolloutDeviceRecord, RolloutRecord, StoreError};

const TICK: Duration = Duration::from_millis(500);
/// A device that has not settled this long after it was told is marked failed.
pub const DEVICE_TIMEOUT_MS: i64 = 10 * 60 * 1000;

pub struct RolloutController {
    pub core: Arc<PlaneCore>,
}

fn now_ms() -> i64 {
    fleetml_shared::now_ms() as i64
}

/// A device's state in the rollout, from what it reports about the rollout's version.
pub fn device_state(device: Option<&DeviceRecord>, model: &str, version: i64) -> (&'static str, String) {
    let Some(device) = device else { return ("installing", String::new()) };
    let slots = parse_slots(&device.slots_json);
    let Some(slot) = slots.iter().find(|slot| slot.model == model) else { return ("installing", String::new()) };
    if slot.active_version == Some(version as u64) {
        return ("healthy", String::new());
    }
    if let Some(result) = &slot.last_result
        && !result.ok
        && result.version == version as u64
    {
        return ("failed", format!("{}: {}", result.kind.as_deref().unwrap_or("refused"), result.reason.as_deref().unwrap_or("")));
    }
    match slot.phase.as_str() {
        "fetching" => ("downloading", String::new()),
        _ => ("installing", String::new()),
    }
}

impl RolloutController {
    #[tracing::instrument(name = "rollout_controller", skip_all)]
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let rollouts = match self.core.store.list_rollouts().await {
                Ok(rollouts) => rollouts,
                Err(error) => {
                    tracing::error!(%error, "could not read rollouts");
                    continue;
                }
            };
            for rollout in rollouts.into_iter().filter(|rollout| rollout.state == "running") {
                if let Err(error) = self.step(&rollout).await {
                    tracing::error!(rollout_id = rollout.id, %error, "rollout step failed; retrying");
                }
            }
        }
        Ok(())
    }

    async fn deploy_to(&self, model: &str, version: i64, device_id: &str) -> Result<(), StoreError> {
        self.core.store.insert_deployment(model, version, &DeploymentTarget::Device(device_id.to_string()), now_ms()).await?;
        Ok(())
    }

    async fn step(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        let policy: PolicyDocument =
            serde_json::from_str(&rollout.policy_json).map_err(|error| StoreError::Corrupt(format!("rollout policy: {error}")))?;
        let now = now_ms();
        let devices: BTreeMap<String, DeviceRecord> =
            self.core.store.list_devices().await?.into_iter().map(|device| (device.device_id.clone(), device)).collect();
        let members = self.core.store.rollout_devices(rollout.id).await?;
        let wave = rollout.current_wave;
        let wave_members: Vec<&RolloutDeviceRecord> = members.iter().filter(|member| member.wave == wave).collect();
        let max_concurrent = policy.waves.get(wave as usize).and_then(|wave| wave.max_concurrent).unwrap_or(u64::MAX) as usize;

        // Refresh the states of the devices this wave moved, and time out the stuck ones.
        let mut in_flight = 0usize;
        for member in &wave_members {
            if !matches!(member.state.as_str(), "installing" | "downloading") {
                continue;
            }
            let (state, reason) = device_state(devices.get(&member.device_id), &rollout.model, rollout.version);
            let (state, reason) = if matches!(state, "installing" | "downloading") && now - member.updated_ms > DEVICE_TIMEOUT_MS {
                ("failed", "timed out".to_string())
            } else {
                (state, reason)
            };
            if state != member.state {
                self.core.store.update_rollout_device(rollout.id, &member.device_id, state, &reason, now).await?;
                if state == "failed" {
                    self.core.store.add_rollout_event(rollout.id, "device_failed", &format!("{}: {reason}", member.device_id), now).await?;
                }
            }
            if matches!(state, "installing" | "downloading") {
                in_flight += 1;
            }
        }
        // Move pending devices of this wave, at most `max_concurrent` at once.
        let mut moved = 0usize;
        for member in wave_members.iter().filter(|member| member.state == "pending") {
            if in_flight + moved >= max_concurrent {
                break;
            }
            self.deploy_to(&rollout.model, rollout.version, &member.device_id).await?;
            self.core.store.update_rollout_device(rollout.id, &member.device_id, "installing", "", now).await?;
            moved += 1;
        }
        if moved > 0 {
            self.core.controller.request(ControllerCommand::ReconcileAll);
            return Ok(());
        }
        let members = self.core.store.rollout_devices(rollout.id).await?;
        let wave_members: Vec<&RolloutDeviceRecord> = members.iter().filter(|member| member.wave == wave).collect();
        if wave_members.iter().any(|member| !matches!(member.state.as_str(), "healthy" | "failed")) {
            return Ok(());
        }
        let settled_at = wave_members.iter().map(|member| member.updated_ms).max().unwrap_or(now);
        let bake_ms = policy.waves.get(wave as usize).map(|wave| wave.bake_seconds as i64 * 1000).unwrap_or(0);
        if now < settled_at + bake_ms {
            return Ok(());
        }
        let figures = self.wave_figures(rollout, &wave_members, &devices).await?;
        let (verdict, results) = evaluate(&policy.gates, &figures);
        let summary: Vec<String> = results
            .iter()
            .map(|result| {
                format!(
                    "{:?} {} (max {}, {} samples): {:?}",
                    result.metric,
                    result.value.map(|value| format!("{value:.4}")).unwrap_or("-".into()),
                    result.max,
                    result.samples,
                    result.verdict
                )
            })
            .collect();
        match verdict {
            Verdict::Undecided => Ok(()),
            Verdict::Pass => {
                self.core
                    .store
                    .add_rollout_event(rollout.id, "gates_passed", &format!("wave {}: {}", wave + 1, summary.join("; ")), now)
                    .await?;
                if wave as usize + 1 >= policy.waves.len() {
                    self.core.store.update_rollout(rollout.id, "completed", wave, rollout.wave_started_ms, now).await?;
                    self.core.store.add_rollout_event(rollout.id, "completed", "every wave passed its gates", now).await?;
                } else {
                    self.core.store.update_rollout(rollout.id, "running", wave + 1, now, now).await?;
                    self.core.store.add_rollout_event(rollout.id, "wave_started", &format!("wave {}", wave + 2), now).await?;
                }
                Ok(())
            }
            Verdict::Fail => {
                self.core
                    .store
                    .add_rollout_event(rollout.id, "gates_failed", &format!("wave {}: {}", wave + 1, summary.join("; ")), now)
                    .await?;
                match policy.on_failure {
                    FailureAction::Pause => {
                        self.core.store.update_rollout(rollout.id, "paused", wave, rollout.wave_started_ms, now).await?;
                        self.core.store.add_rollout_event(rollout.id, "paused", "a gate failed", now).await?;
                        Ok(())
                    }
                    FailureAction::Rollback => self.roll_back(rollout, "a gate failed").await,
                }
            }
        }
    }

    async fn wave_figures(
        &self,
        rollout: &RolloutRecord,
        wave_members: &[&RolloutDeviceRecord],
        devices: &BTreeMap<String, DeviceRecord>,
    ) -> Result<WaveFigures, StoreError> {
        let mut figures = WaveFigures { devices: wave_members.len() as u64, ..WaveFigures::default() };
        figures.installs_attempted = wave_members.len() as u64;
        figures.installs_failed = wave_members.iter().filter(|member| member.state == "failed").count() as u64;
        figures.devices_offline =
            wave_members.iter().filter(|member| !devices.get(&member.device_id).is_some_and(|device| device.online)).count() as u64;
        let in_wave = |device_id: &str| wave_members.iter().any(|member| member.device_id == device_id);
        let mut latency = Histogram::default();
        for window in self.core.store.windows_since(&rollout.model, Some(rollout.version), rollout.wave_started_ms).await? {
            if in_wave(&window.device_id) {
                figures.requests += window.requests as u64;
                figures.request_errors += window.errors as u64;
                latency.merge(&window.latency_us);
            }
        }
        figures.latency_samples = latency.total();
        figures.p95_latency_us = latency.quantile(0.95);
        let previous = wave_members.iter().filter_map(|member| member.from_version).max();
        if let Some(previous) = previous {
            let mut baseline = Histogram::default();
            for window in self.core.store.windows_since(&rollout.model, Some(previous), rollout.wave_started_ms - 3_600_000).await? {
                baseline.merge(&window.latency_us);
            }
            figures.baseline_p95_latency_us = baseline.quantile(0.95);
        }
        Ok(figures)
    }

    /// Sends every moved device back to the version it had, with a signed rollback permission
    /// (the deployment controller issues it because the target is older).
    pub async fn roll_back(&self, rollout: &RolloutRecord, why: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let mut n_rolled_back = 0;
        for member in self.core.store.rollout_devices(rollout.id).await? {
            if !matches!(member.state.as_str(), "installing" | "downloading" | "healthy" | "failed") {
                continue;
            }
            match member.from_version {
                Some(from_version) => {
                    self.deploy_to(&rollout.model, from_version, &member.device_id).await?;
                    self.core
                        .store
                        .update_rollout_device(
                            rollout.id,
                            &member.device_id,
                            "rolled_back",
                            &format!("back to version {from_version}"),
                            now,
                        )
                        .await?;
                    n_rolled_back += 1;
                }
                None => {
                    self.core
                        .store
                        .update_rollout_device(rollout.id, &member.device_id, "failed", "no earlier version to roll back to", now)
                        .await?;
                }
            }
        }
        self.core.store.update_rollout(rollout.id, "rolled_back", rollout.current_wave, rollout.wave_started_ms, now).await?;
        self.core.store.add_rollout_event(rollout.id, "rolled_back", &format!("{why}: {n_rolled_back} devices sent back"), now).await?;
        self.core.controller.request(ControllerCommand::ReconcileAll);
        Ok(())
    }
}
