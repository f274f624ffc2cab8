//! The rollout controller: a reconcile loop over the rollouts in the store. It moves devices
//! wave by wave by writing per-device deployments (the one path to desired state, so the
//! deployment controller signs and publishes), reads reported state and telemetry, evaluates
//! the gates, and on failure pauses or rolls the moved devices back. All of its state is in
//! the store, so it resumes after a restart without redoing finished devices.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetml_shared::selector::Selector;
use tokio_util::sync::CancellationToken;

use super::gates::{GateResult, Verdict, WaveFigures, evaluate};
use super::policy::{FailureAction, GateMetric, PolicyDocument};
use super::{MemberState, RolloutState, actions};
use crate::PlaneCore;
use crate::deployment::controller::ControllerCommand;
use crate::deployment::{self, Origin};
use crate::experiments;
use crate::reported;
use crate::store::{DeploymentRole, DeploymentTarget, DeviceRecord, RolloutDeviceRecord, RolloutRecord, StoreError};
use crate::telemetry::InferenceFigures;

const TICK: Duration = Duration::from_millis(500);
/// How long after its device timeout a completed rollout stops following offline devices.
const STRAGGLER_MARGIN_MS: u64 = 60_000;

fn describe(results: &[GateResult]) -> String {
    let parts: Vec<String> = results
        .iter()
        .map(|result| {
            let metric = serde_json::to_value(result.metric).ok().and_then(|value| value.as_str().map(str::to_string)).unwrap_or_default();
            let bound = match (result.max, result.min) {
                (Some(max), _) => format!("max {max}"),
                (None, Some(min)) => format!("min {min}"),
                (None, None) => String::new(),
            };
            let value = result.value.map(|value| format!("{value:.4}")).unwrap_or("-".into());
            format!("{metric} {value} ({bound}, {} samples): {:?}", result.samples, result.verdict)
        })
        .collect();
    parts.join("; ")
}

pub struct RolloutController {
    pub core: Arc<PlaneCore>,
}

fn now_ms() -> i64 {
    fleetml_shared::now_ms() as i64
}

/// A device's state in the rollout, from what it reports about the rollout's version.
pub fn device_state(device: Option<&DeviceRecord>, model: &str, version: i64) -> (MemberState, String) {
    let Some(device) = device else { return (MemberState::Installing, String::new()) };
    let Some(slot) = reported::slot(&device.slots, model) else { return (MemberState::Installing, String::new()) };
    let version = version as u64;
    if slot.runs(version) {
        return (MemberState::Healthy, String::new());
    }
    if let Some((kind, reason)) = slot.refused(version) {
        return (MemberState::Failed, format!("{}: {reason}", kind.as_str()));
    }
    match slot.phase {
        reported::ReportedPhase::Fetching { .. } => (MemberState::Downloading, String::new()),
        _ => (MemberState::Installing, String::new()),
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
            // A/B splits give devices that match later their variant.
            if let Err(error) = experiments::split::assign_late_devices(&self.core).await {
                tracing::error!(%error, "could not assign late devices to splits");
            }
            for rollout in &rollouts {
                let result = match rollout.state {
                    RolloutState::Running => self.step(rollout).await,
                    RolloutState::Completed => self.follow_stragglers(rollout).await,
                    RolloutState::Paused | RolloutState::Aborted | RolloutState::RolledBack => Ok(()),
                };
                if let Err(error) = result {
                    tracing::error!(rollout_id = rollout.id, %error, "rollout step failed; retrying");
                }
            }
        }
        Ok(())
    }

    async fn step(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        let policy = &rollout.policy;
        let now = now_ms();
        let devices: BTreeMap<String, DeviceRecord> =
            self.core.store.list_devices().await?.into_iter().map(|device| (device.device_id.clone(), device)).collect();
        let members = self.core.store.rollout_devices(rollout.id).await?;
        let wave = rollout.current_wave;
        if policy.target.include_new && self.include_new_devices(rollout, policy, &members, &devices, now).await? {
            return Ok(());
        }
        if wave == 0
            && members.iter().all(|member| member.state == MemberState::Pending)
            && !self.shadow_gates_pass(rollout, policy, now).await?
        {
            return Ok(());
        }
        let wave_members: Vec<&RolloutDeviceRecord> = members.iter().filter(|member| member.wave == wave).collect();
        let max_concurrent = policy.waves.get(wave as usize).and_then(|wave| wave.max_concurrent).unwrap_or(u64::MAX) as usize;
        let n_moving = self.refresh_members(rollout, policy, &members, &devices, now).await?;
        // Move pending devices of this wave, at most `max_concurrent` at once.
        let moving: Vec<&str> = wave_members
            .iter()
            .filter(|member| member.state == MemberState::Pending)
            .take(max_concurrent.saturating_sub(n_moving))
            .map(|member| member.device_id.as_str())
            .collect();
        if !moving.is_empty() {
            let targets: Vec<DeploymentTarget> = moving.iter().map(|device_id| DeploymentTarget::Device(device_id.to_string())).collect();
            let origin = Origin::Rollout { rollout_id: rollout.id, wave };
            deployment::deploy_for(&self.core, &rollout.model, rollout.version, DeploymentRole::Active, &targets, origin).await?;
            for device_id in &moving {
                self.core.store.update_rollout_device(rollout.id, device_id, MemberState::Installing, "", now).await?;
            }
            self.core.controller.request(ControllerCommand::ReconcileAll);
            return Ok(());
        }
        let members = self.core.store.rollout_devices(rollout.id).await?;
        let wave_members: Vec<&RolloutDeviceRecord> = members.iter().filter(|member| member.wave == wave).collect();
        // Offline devices do not hold a wave: they count against the offline gate.
        if !wave_members.iter().all(|member| member.state.lets_wave_end()) {
            return Ok(());
        }
        let settled_at = wave_members.iter().map(|member| member.updated_ms).max().unwrap_or(now);
        let bake_ms = policy.waves.get(wave as usize).map(|wave| wave.bake_seconds as i64 * 1000).unwrap_or(0);
        if now < settled_at + bake_ms {
            return Ok(());
        }
        let figures = self.wave_figures(rollout, &wave_members, &devices).await?;
        let (verdict, results) = evaluate(&policy.gates, &figures);
        let summary = describe(&results);
        match verdict {
            Verdict::Undecided => Ok(()),
            Verdict::Pass => {
                self.core.store.add_rollout_event(rollout.id, "gates_passed", &format!("wave {}: {summary}", wave + 1), now).await?;
                if wave as usize + 1 >= policy.waves.len() {
                    // The version becomes the standing assignment of the target, so devices
                    // that match it later receive it too.
                    if policy.target.include_new
                        && let Some(selector) = &policy.target.selector
                        && let Ok(selector) = Selector::parse(selector)
                    {
                        let origin = Origin::RolloutCompleted { rollout_id: rollout.id };
                        let targets = [DeploymentTarget::Selector(selector)];
                        deployment::deploy_for(&self.core, &rollout.model, rollout.version, DeploymentRole::Active, &targets, origin)
                            .await?;
                    }
                    self.core.store.update_rollout(rollout.id, RolloutState::Completed, wave, rollout.wave_started_ms, now).await?;
                    self.core.store.add_rollout_event(rollout.id, "completed", "every wave passed its gates", now).await?;
                } else {
                    self.core.store.update_rollout(rollout.id, RolloutState::Running, wave + 1, now, now).await?;
                    self.core.store.add_rollout_event(rollout.id, "wave_started", &format!("wave {}", wave + 2), now).await?;
                }
                Ok(())
            }
            Verdict::Fail => {
                self.core.store.add_rollout_event(rollout.id, "gates_failed", &format!("wave {}: {summary}", wave + 1), now).await?;
                match policy.on_failure {
                    FailureAction::Pause => {
                        self.core.store.update_rollout(rollout.id, RolloutState::Paused, wave, rollout.wave_started_ms, now).await?;
                        self.core.store.add_rollout_event(rollout.id, "paused", "a gate failed", now).await?;
                        Ok(())
                    }
                    FailureAction::Rollback => {
                        actions::roll_back(&self.core, rollout, "a gate failed").await?;
                        let detail = serde_json::json!({ "why": "a gate failed", "gates": summary });
                        crate::audit::by_plane(
                            &self.core,
                            "rollout-controller",
                            "rollout.rollback",
                            &format!("rollout {}", rollout.id),
                            detail,
                        )
                        .await;
                        Ok(())
                    }
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
        figures.installs_failed = wave_members.iter().filter(|member| member.state == MemberState::Failed).count() as u64;
        figures.devices_offline =
            wave_members.iter().filter(|member| !devices.get(&member.device_id).is_some_and(|device| device.online)).count() as u64;
        let in_wave: std::collections::BTreeSet<&str> = wave_members.iter().map(|member| member.device_id.as_str()).collect();
        let windows = self.core.store.windows_since(&rollout.model, Some(rollout.version), rollout.wave_started_ms).await?;
        let inference = InferenceFigures::sum(windows.iter().filter(|window| in_wave.contains(window.device_id.as_str())));
        figures.requests = inference.requests;
        figures.request_errors = inference.errors;
        figures.latency_samples = inference.latency_us.total();
        let (shadow_agreement, shadow_rows) = self.shadow_agreement(rollout).await?;
        figures.shadow_agreement = shadow_agreement;
        figures.shadow_rows = shadow_rows;
        // The share of drifted features on the wave's devices since the wave started, when
        // the version carries a reference profile.
        if let Ok(profile) = crate::drift::load_profile(&self.core, &rollout.model, rollout.version).await {
            let slice = crate::drift::DriftSlice {
                cohort: None,
                devices: Some(wave_members.iter().map(|member| member.device_id.clone()).collect()),
                since_ms: rollout.wave_started_ms,
                until_ms: now_ms() + 1,
            };
            let windows = crate::drift::slice_windows(&self.core, &rollout.model, rollout.version, &slice)
                .await
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            let (merged, _) = crate::drift::merge(&profile, windows.windows.iter().map(|(_, window)| window));
            let report = fleetml_shared::drift::metrics::evaluate(&profile, &merged, profile.thresholds());
            figures.drift_samples = report.samples;
            figures.drift_score = (report.samples > 0).then_some(report.share_drifted);
        }
        figures.p95_latency_us = inference.latency_us.quantile(0.95);
        let previous = wave_members.iter().filter_map(|member| member.from_version).max();
        if let Some(previous) = previous {
            let windows = self.core.store.windows_since(&rollout.model, Some(previous), rollout.wave_started_ms - 3_600_000).await?;
            figures.baseline_p95_latency_us = InferenceFigures::sum(&windows).latency_us.quantile(0.95);
        }
        Ok(figures)
    }

    /// Refreshes the states of the devices told so far (any wave: an offline device of an
    /// earlier wave installs when it returns) and times out the stuck ones. Returns how many
    /// of the current wave are installing.
    async fn refresh_members(
        &self,
        rollout: &RolloutRecord,
        policy: &PolicyDocument,
        members: &[RolloutDeviceRecord],
        devices: &BTreeMap<String, DeviceRecord>,
        now: i64,
    ) -> Result<usize, StoreError> {
        let device_timeout_ms = policy.device_timeout_seconds.saturating_mul(1000) as i64;
        let mut n_moving = 0usize;
        for member in members.iter().filter(|member| member.state.in_flight()) {
            let device = devices.get(&member.device_id);
            let (state, reason) = device_state(device, &rollout.model, rollout.version);
            let (state, reason) = if state.is_moving() && !device.is_some_and(|device| device.online) {
                (MemberState::Offline, "waiting for the device to come back".to_string())
            } else {
                (state, reason)
            };
            let (state, reason) = if state.in_flight() && now - member.updated_ms > device_timeout_ms {
                (MemberState::Failed, format!("timed out after {} s ({})", policy.device_timeout_seconds, state.as_str()))
            } else {
                (state, reason)
            };
            if state != member.state {
                self.core.store.update_rollout_device(rollout.id, &member.device_id, state, &reason, now).await?;
                if state == MemberState::Failed {
                    self.core.store.add_rollout_event(rollout.id, "device_failed", &format!("{}: {reason}", member.device_id), now).await?;
                }
            }
            if member.wave == rollout.current_wave && state.is_moving() {
                n_moving += 1;
            }
        }
        Ok(n_moving)
    }

    /// A completed rollout keeps following the devices that were offline when it finished.
    async fn follow_stragglers(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        let policy = &rollout.policy;
        // Past the device timeout every straggler has been marked failed: nothing to follow.
        let followed_ms = policy.device_timeout_seconds.saturating_mul(1000).saturating_add(STRAGGLER_MARGIN_MS) as i64;
        if now_ms() - rollout.updated_ms > followed_ms {
            return Ok(());
        }
        let members = self.core.store.rollout_devices(rollout.id).await?;
        if !members.iter().any(|member| member.state.in_flight()) {
            return Ok(());
        }
        let devices: BTreeMap<String, DeviceRecord> =
            self.core.store.list_devices().await?.into_iter().map(|device| (device.device_id.clone(), device)).collect();
        self.refresh_members(rollout, policy, &members, &devices, now_ms()).await?;
        Ok(())
    }

    /// The candidate's agreement with the active versions wherever it ran as a shadow.
    async fn shadow_agreement(&self, rollout: &RolloutRecord) -> Result<(Option<f64>, u64), StoreError> {
        let windows = self.core.store.shadow_windows(&rollout.model, Some(rollout.version), 0).await?;
        let summary = experiments::shadow::summarise(&windows);
        let figures = summary.get(&rollout.version);
        Ok((figures.and_then(|figures| figures.agreement()), figures.map(|figures| figures.rows).unwrap_or(0)))
    }

    /// Before the first wave moves anything, the shadow gates must pass: the candidate goes
    /// live only once it has agreed with the active model often enough. Returns whether the
    /// rollout may go on.
    async fn shadow_gates_pass(&self, rollout: &RolloutRecord, policy: &PolicyDocument, now: i64) -> Result<bool, StoreError> {
        let gates: Vec<_> = policy.gates.iter().filter(|gate| gate.metric == GateMetric::ShadowAgreement).cloned().collect();
        if gates.is_empty() {
            return Ok(true);
        }
        let (shadow_agreement, shadow_rows) = self.shadow_agreement(rollout).await?;
        let figures = WaveFigures { shadow_agreement, shadow_rows, ..WaveFigures::default() };
        let (verdict, results) = evaluate(&gates, &figures);
        match verdict {
            Verdict::Pass => {
                let detail = format!("before wave 1: {}", describe(&results));
                if !self.core.store.rollout_events(rollout.id).await?.iter().any(|event| event.kind == "shadow_gates_passed") {
                    self.core.store.add_rollout_event(rollout.id, "shadow_gates_passed", &detail, now).await?;
                }
                Ok(true)
            }
            Verdict::Undecided => Ok(false),
            Verdict::Fail => {
                self.core
                    .store
                    .add_rollout_event(rollout.id, "gates_failed", &format!("before wave 1: {}", describe(&results)), now)
                    .await?;
                self.core.store.update_rollout(rollout.id, RolloutState::Paused, 0, rollout.wave_started_ms, now).await?;
                self.core
                    .store
                    .add_rollout_event(rollout.id, "paused", "the shadow candidate disagreed too often; no device was moved", now)
                    .await?;
                Ok(false)
            }
        }
    }

    /// Adds devices that match the target now but are not members (new, or relabelled) to
    /// the current wave. Returns whether any joined.
    async fn include_new_devices(
        &self,
        rollout: &RolloutRecord,
        policy: &PolicyDocument,
        members: &[RolloutDeviceRecord],
        devices: &BTreeMap<String, DeviceRecord>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let selector = policy.target.selector.as_deref().and_then(|selector| Selector::parse(selector).ok());
        let known: std::collections::BTreeSet<&str> = members.iter().map(|member| member.device_id.as_str()).collect();
        let joining: Vec<RolloutDeviceRecord> = devices
            .values()
            .filter(|device| !known.contains(device.device_id.as_str()))
            .filter(|device| {
                policy.target.devices.contains(&device.device_id)
                    || selector.as_ref().is_some_and(|selector| selector.matches(&device.labels))
            })
            .map(|device| RolloutDeviceRecord {
                device_id: device.device_id.clone(),
                wave: rollout.current_wave,
                state: MemberState::Pending,
                reason: "joined after the start".into(),
                from_version: reported::slot(&device.slots, &rollout.model)
                    .and_then(|slot| slot.active_version)
                    .map(|version| version as i64),
                updated_ms: now,
            })
            .collect();
        if joining.is_empty() {
            return Ok(false);
        }
        self.core.store.add_rollout_devices(rollout.id, &joining).await?;
        let names: Vec<&str> = joining.iter().map(|member| member.device_id.as_str()).take(10).collect();
        let detail = format!("{} devices joined wave {}: {}", joining.len(), rollout.current_wave + 1, names.join(", "));
        self.core.store.add_rollout_event(rollout.id, "devices_joined", &detail, now).await?;
        Ok(true)
    }
}
