//! The reconciler: compares each slot's desired state with what the device holds and works
//! towards it (verify, fetch, install, swap), then reports. It is the only writer of slot
//! state; transfers and installs report back to it as events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetml_shared::bundle::{BundleDigest, SignedManifest, VerifiedManifest};
use fleetml_shared::now_ms;
use fleetml_shared::protocol::{
    self, ChunkMessage, DesiredSlot, DesiredTarget, FailureKind, FetchRequest, InstallOutcome, InstallResult, InstalledBundle, Reported,
    ReportedState, RollbackPermission, SignedDesiredState, SlotPhase, SlotReport, SlotRole,
};
use fleetml_shared::topics::Topics;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::DeviceConfig;
use crate::host::ModelHost;
use crate::install::{self, InstallFailure, Installed, PayloadSource};
use crate::link::{LinkEvent, LinkHandle};
use crate::storage::{PersistedBundle, PersistedSlot, PersistedState, StateDir};
use crate::transfer::{ChunkOutcome, Transfer};

/// Finished installs waiting for the reconciler; installs are few, so this never fills.
const INSTALL_RESULTS_CAPACITY: usize = 16;
/// Progress reports while fetching are sent at most this often.
const PROGRESS_REPORT_INTERVAL: Duration = Duration::from_millis(500);

struct Slot {
    generation: u64,
    phase: SlotPhase,
    active: Option<InstalledBundle>,
    previous: Option<InstalledBundle>,
    target: Option<Target>,
    last_result: Option<InstallOutcome>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot { generation: 0, phase: SlotPhase::Idle, active: None, previous: None, target: None, last_result: None }
    }
}

struct Target {
    generation: u64,
    verified: VerifiedManifest,
    work: TargetWork,
}

enum TargetWork {
    Transferring(Box<Transfer>),
    Installing,
}

struct InstallDone {
    model: String,
    digest: BundleDigest,
    generation: u64,
    result: Result<Installed, InstallFailure>,
}

pub struct Reconciler {
    config: DeviceConfig,
    topics: Topics,
    link: LinkHandle,
    state_dir: StateDir,
    host: Arc<ModelHost>,
    slots: BTreeMap<String, Slot>,
    events: mpsc::Receiver<LinkEvent>,
    install_sender: mpsc::Sender<InstallDone>,
    install_results: mpsc::Receiver<InstallDone>,
    started_at_ms: u64,
    last_report_at: Instant,
    report_pending: bool,
    last_refusal: Option<String>,
}

impl Reconciler {
    pub fn new(
        config: DeviceConfig,
        link: LinkHandle,
        state_dir: StateDir,
        host: Arc<ModelHost>,
        events: mpsc::Receiver<LinkEvent>,
    ) -> Self {
        let (install_sender, install_results) = mpsc::channel(INSTALL_RESULTS_CAPACITY);
        let topics = Topics::new(&config.link.topic_root);
        Reconciler {
            config,
            topics,
            link,
            state_dir,
            host,
            slots: BTreeMap::new(),
            events,
            install_sender,
            install_results,
            started_at_ms: now_ms(),
            last_report_at: Instant::now(),
            report_pending: true,
            last_refusal: None,
        }
    }

    /// Restores the models that were active before a restart. A model that no longer loads
    /// or passes its self-test falls back to the previous one.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        let persisted = self.state_dir.load_state()?;
        for (model, persisted_slot) in persisted.slots {
            let mut slot = Slot { generation: persisted_slot.generation, ..Slot::default() };
            let candidates = [persisted_slot.active.clone(), persisted_slot.previous.clone()];
            for (candidate_idx, candidate) in candidates.into_iter().flatten().enumerate() {
                let Some(installed) = candidate.to_installed() else {
                    continue;
                };
                match self.load_installed(installed.digest).await {
                    Ok(loaded) => {
                        tracing::info!(%model, version = installed.version, "restored active model");
                        serve(&self.host, &model, &loaded);
                        slot.active = Some(installed);
                        slot.previous = if candidate_idx == 0 {
                            persisted_slot.previous.as_ref().and_then(PersistedBundle::to_installed)
                        } else {
                            None
                        };
                        slot.phase = SlotPhase::Active;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%model, version = installed.version, %error, "installed bundle does not load")
                    }
                }
            }
            self.slots.insert(model, slot);
        }
        self.persist();
        self.host.set_ready();
        Ok(())
    }

    async fn load_installed(&self, digest: BundleDigest) -> Result<Installed, InstallFailure> {
        let signed = self
            .state_dir
            .installed_manifest(&digest)
            .ok_or_else(|| InstallFailure { kind: FailureKind::Storage, reason: "manifest missing".into() })?;
        // Expiry bounds when a bundle may be accepted, not how long it may serve: check the
        // signature as of its installation.
        let verified = signed.verify(&self.config.trusted_keys, 0)?;
        let state_dir = self.state_dir.clone();
        let testing = self.config.testing.clone();
        tokio::task::spawn_blocking(move || install::install(&state_dir, &verified, PayloadSource::Held, &testing))
            .await
            .map_err(|error| InstallFailure { kind: FailureKind::Load, reason: error.to_string() })?
    }

    #[tracing::instrument(name = "reconciler", skip_all, fields(device_id = %self.config.device_id))]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.link.subscribe(self.topics.desired_filter(&self.config.device_id)).await;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: mpsc::Receiver::recv loses nothing when another branch wins.
                event = self.events.recv() => match event {
                    Some(event) => self.on_link_event(event).await,
                    None => break,
                },
                Some(done) = self.install_results.recv() => self.on_install_done(done).await,
                _ = tick.tick() => self.on_tick().await,
            }
            self.report_if_due(false).await;
        }
        Ok(())
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected => {
                self.report_if_due(true).await;
                let now = Instant::now();
                for slot in self.slots.values_mut() {
                    if let Some(Target { work: TargetWork::Transferring(transfer), .. }) = &mut slot.target {
                        transfer.next_request_at = now;
                    }
                }
                self.on_tick().await;
            }
            LinkEvent::Disconnected => {}
            LinkEvent::Desired { model, payload } => self.on_desired(&model, &payload).await,
            LinkEvent::Chunk { payload } => self.on_chunk(&payload).await,
        }
    }

    fn refuse(&mut self, what: String) {
        tracing::warn!(refused = %what, "message refused");
        self.host.count_refused();
        self.last_refusal = Some(what);
        self.report_pending = true;
    }

    async fn on_desired(&mut self, topic_model: &str, payload: &[u8]) {
        let signed: SignedDesiredState = match protocol::decode(payload) {
            Ok(signed) => signed,
            Err(error) => {
                return self.refuse(format!("desired state for `{topic_model}`: {error}"));
            }
        };
        let desired: DesiredSlot = match signed.verify(&self.config.trusted_keys) {
            Ok(desired) => desired,
            Err(error) => {
                return self.refuse(format!("desired state for `{topic_model}`: {error}"));
            }
        };
        if desired.device_id != self.config.device_id || desired.model != topic_model {
            return self.refuse(format!(
                "desired state for {}/{} arrived on the topic of {}/{topic_model}",
                desired.device_id, desired.model, self.config.device_id
            ));
        }
        let slot = self.slots.entry(desired.model.clone()).or_default();
        if desired.generation == slot.generation {
            // The same state again (a retained redelivery). Work on it only if it was cut
            // short: after a restart mid-transfer the slot has no target and does not yet run
            // the desired bundle (and no attempt at this generation failed in this run).
            let settled = slot.target.is_some()
                || slot.last_result.as_ref().is_some_and(|result| result.generation == desired.generation)
                || match &desired.target {
                    DesiredTarget::Empty => slot.active.is_none(),
                    DesiredTarget::Bundle { manifest, .. } => slot.active.is_some_and(|active| active.digest == manifest.digest()),
                };
            if settled {
                return;
            }
            tracing::info!(model = %desired.model, generation = desired.generation, "resuming work on the accepted desired state");
            if let DesiredTarget::Bundle { manifest, rollback, .. } = &desired.target {
                self.start_target(&desired.model, desired.generation, manifest, *rollback).await;
            }
            return;
        }
        if desired.generation < slot.generation {
            let accepted = slot.generation;
            return self.refuse(format!(
                "desired state for `{topic_model}` has generation {}, older than the accepted {accepted} (replay)",
                desired.generation
            ));
        }
        tracing::info!(model = %desired.model, generation = desired.generation, "accepted desired state");
        slot.generation = desired.generation;
        self.report_pending = true;
        match desired.target {
            DesiredTarget::Empty => {
                if let Some(target) = slot.target.take() {
                    self.drop_target(target);
                }
                let slot = self.slots.entry(desired.model.clone()).or_default();
                if let Some(active) = slot.active.take() {
                    slot.previous = Some(active);
                }
                slot.phase = SlotPhase::Idle;
                match protocol::split_slot(&desired.model) {
                    (model, SlotRole::Active) => {
                        self.host.set_drift_profile(model, 0, None);
                        self.host.remove(model)
                    }
                    (model, SlotRole::Shadow) => self.host.remove_shadow(model),
                };
                self.persist();
            }
            DesiredTarget::Bundle { manifest, role: _, rollback } => {
                self.persist();
                self.start_target(&desired.model, desired.generation, &manifest, rollback).await;
            }
        }
    }

    fn drop_target(&self, target: Target) {
        if let TargetWork::Transferring(transfer) = target.work {
            let link = self.link.clone();
            let filter = self.topics.chunks(&transfer.verified.digest.to_hex());
            tokio::spawn(async move { link.unsubscribe(filter).await });
            transfer.discard(&self.state_dir);
        }
    }

    fn fail(&mut self, model: &str, generation: u64, version: u64, kind: FailureKind, reason: String) {
        tracing::warn!(%model, version, kind = kind.as_str(), %reason, "bundle refused; the previous model keeps serving");
        let slot = self.slots.entry(model.to_string()).or_default();
        slot.phase = SlotPhase::Failed { kind, reason: reason.clone() };
        slot.last_result = Some(InstallOutcome { version, generation, at_ms: now_ms(), result: InstallResult::Refused { kind, reason } });
        if let Some(target) = slot.target.take() {
            self.drop_target(target);
        }
        self.report_pending = true;
    }

    async fn start_target(&mut self, model: &str, generation: u64, signed: &SignedManifest, rollback: Option<RollbackPermission>) {
        let verified = match signed.verify(&self.config.trusted_keys, now_ms()) {
            Ok(verified) => verified,
            Err(error) => {
                let version = signed.decode_unverified().map(|manifest| manifest.version).unwrap_or(0);
                let failure = InstallFailure::from(error);
                return self.fail(model, generation, version, failure.kind, format!("bundle refused: {}", failure.reason));
            }
        };
        let version = verified.manifest.version;
        let (slot_model, _) = protocol::split_slot(model);
        if verified.manifest.model != slot_model {
            let reason = format!("bundle is for model `{}`, not `{slot_model}`", verified.manifest.model);
            return self.fail(model, generation, version, FailureKind::Manifest, reason);
        }
        let slot = self.slots.entry(model.to_string()).or_default();
        if let Some(active) = slot.active {
            if active.digest == verified.digest {
                if let Some(target) = slot.target.take() {
                    self.drop_target(target);
                }
                let slot = self.slots.entry(model.to_string()).or_default();
                slot.phase = SlotPhase::Active;
                return;
            }
            let permitted = rollback.is_some_and(|permission| permission.up_to_version >= active.version);
            if version < active.version && !permitted {
                let reason = format!(
                    "version {version} is older than the active {} and the desired state carries no rollback permission",
                    active.version
                );
                return self.fail(model, generation, version, FailureKind::RollbackNotPermitted, reason);
            }
        }
        if let Some(existing) = slot.target.take() {
            if existing.verified.digest == verified.digest {
                // Same bundle, newer generation: keep the work already done.
                let slot = self.slots.entry(model.to_string()).or_default();
                slot.target = Some(Target { generation, ..existing });
                return;
            }
            self.drop_target(existing);
        }
        if self.state_dir.bundle_dir(&verified.digest).exists() {
            tracing::info!(%model, version, "bundle already held; installing without a transfer");
            return self.spawn_install(model, generation, verified, PayloadSource::Held);
        }
        let transfer = match Transfer::open(&self.state_dir, verified.clone(), self.config.transfer.stall_timeout) {
            Ok(transfer) => transfer,
            Err(error) => {
                return self.fail(model, generation, version, FailureKind::Storage, error.to_string());
            }
        };
        if transfer.resumed_chunks > 0 {
            tracing::info!(%model, version, resumed_chunks = transfer.resumed_chunks, "resuming a transfer from disk");
        }
        let slot = self.slots.entry(model.to_string()).or_default();
        slot.phase = SlotPhase::Fetching {
            received_bytes: transfer.received_bytes(),
            total_bytes: transfer.total_bytes(),
            attempts: transfer.n_requests,
        };
        if transfer.is_complete() {
            return self.complete_transfer(model, generation, transfer).await;
        }
        self.link.subscribe(self.topics.chunks(&verified.digest.to_hex())).await;
        slot.target = Some(Target { generation, verified, work: TargetWork::Transferring(Box::new(transfer)) });
        self.request_missing(model).await;
    }

    async fn request_missing(&mut self, model: &str) {
        let Some(slot) = self.slots.get_mut(model) else {
            return;
        };
        let Some(Target { verified, work: TargetWork::Transferring(transfer), .. }) = &mut slot.target else {
            return;
        };
        let request = FetchRequest { device_id: self.config.device_id.clone(), digest: verified.digest, missing: transfer.missing() };
        transfer.n_requests += 1;
        if transfer.n_requests > 1 {
            tracing::info!(%model, attempt = transfer.n_requests, missing = request.missing.len(), "transfer stalled; asking again");
            // Each retry waits twice as long as the one before, up to the maximum.
            transfer.backoff = (transfer.backoff * 2).min(self.config.transfer.max_backoff);
        }
        transfer.next_request_at = Instant::now() + transfer.backoff;
        let phase = SlotPhase::Fetching {
            received_bytes: transfer.received_bytes(),
            total_bytes: transfer.total_bytes(),
            attempts: transfer.n_requests,
        };
        slot.phase = phase;
        self.report_pending = true;
        self.link.publish(self.topics.fetch(&self.config.device_id), false, protocol::encode(&request)).await;
    }

    async fn on_chunk(&mut self, payload: &[u8]) {
        let chunk: ChunkMessage = match protocol::decode(payload) {
            Ok(chunk) => chunk,
            Err(error) => return self.refuse(format!("chunk message: {error}")),
        };
        let Some((model, slot)) = self.slots.iter_mut().find(|(_, slot)| {
            matches!(&slot.target, Some(Target { verified, work: TargetWork::Transferring(_), .. }) if verified.digest == chunk.digest)
        }) else {
            return; // A chunk for a bundle this device does not want (others share the topic).
        };
        let model = model.clone();
        let Some(Target { generation, work: TargetWork::Transferring(transfer), .. }) = &mut slot.target else {
            return;
        };
        let generation = *generation;
        match transfer.accept_chunk(chunk.index, &chunk.data) {
            Ok(ChunkOutcome::Stored) => {
                transfer.backoff = self.config.transfer.stall_timeout;
                transfer.next_request_at = Instant::now() + transfer.backoff;
                slot.phase = SlotPhase::Fetching {
                    received_bytes: transfer.received_bytes(),
                    total_bytes: transfer.total_bytes(),
                    attempts: transfer.n_requests,
                };
                self.report_pending = true;
                if transfer.is_complete() {
                    let Some(Target { work: TargetWork::Transferring(transfer), verified, .. }) = slot.target.take() else {
                        return;
                    };
                    self.link.unsubscribe(self.topics.chunks(&verified.digest.to_hex())).await;
                    self.complete_transfer(&model, generation, *transfer).await;
                }
            }
            Ok(ChunkOutcome::Duplicate) => {}
            Err(error) => {
                // A corrupt chunk is dropped; the stall timer asks for it again.
                self.host.count_refused();
                tracing::warn!(%model, index = chunk.index, %error, "chunk refused");
            }
        }
    }

    async fn complete_transfer(&mut self, model: &str, generation: u64, transfer: Transfer) {
        let verified = transfer.verified.clone();
        let version = verified.manifest.version;
        match transfer.finish() {
            Ok(part_path) => self.spawn_install(model, generation, verified, PayloadSource::Transfer(part_path)),
            Err(error) => self.fail(model, generation, version, FailureKind::Storage, error.to_string()),
        }
    }

    fn spawn_install(&mut self, model: &str, generation: u64, verified: VerifiedManifest, source: PayloadSource) {
        let slot = self.slots.entry(model.to_string()).or_default();
        // A received payload is verified as a whole first; a held bundle only re-hashes its files.
        slot.phase = match source {
            PayloadSource::Transfer(_) => SlotPhase::Verifying,
            PayloadSource::Held => SlotPhase::Installing,
        };
        slot.target = Some(Target { generation, verified: verified.clone(), work: TargetWork::Installing });
        self.report_pending = true;
        let state_dir = self.state_dir.clone();
        let testing = self.config.testing.clone();
        let sender = self.install_sender.clone();
        let model = model.to_string();
        tokio::task::spawn_blocking(move || {
            let result = install::install(&state_dir, &verified, source, &testing);
            let done = InstallDone { model, digest: verified.digest, generation, result };
            let _ = sender.blocking_send(done);
        });
    }

    async fn on_install_done(&mut self, done: InstallDone) {
        let Some(slot) = self.slots.get_mut(&done.model) else {
            return;
        };
        let is_current =
            matches!(&slot.target, Some(target) if target.verified.digest == done.digest && matches!(target.work, TargetWork::Installing));
        if !is_current {
            tracing::info!(model = %done.model, "install finished for a bundle no longer desired; ignored");
            return;
        }
        let Some(target) = slot.target.take() else {
            return;
        };
        let version = target.verified.manifest.version;
        match done.result {
            Ok(installed) => {
                serve(&self.host, &done.model, &installed);
                let new_active = InstalledBundle { version, digest: done.digest };
                if let Some(old) = slot.active.replace(new_active) {
                    slot.previous = Some(old);
                }
                slot.phase = SlotPhase::Active;
                slot.last_result = Some(InstallOutcome {
                    version,
                    generation: done.generation,
                    at_ms: now_ms(),
                    result: InstallResult::Installed { self_test_ms: installed.self_test_ms },
                });
                tracing::info!(model = %done.model, version, self_test_ms = installed.self_test_ms, "installed and serving");
                self.report_pending = true;
                self.persist();
                self.collect_garbage();
            }
            Err(failure) => self.fail(&done.model, done.generation, version, failure.kind, failure.reason),
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| matches!(&slot.target, Some(Target { work: TargetWork::Transferring(transfer), .. }) if transfer.next_request_at <= now))
            .map(|(model, _)| model.clone())
            .collect();
        for model in due {
            self.request_missing(&model).await;
        }
    }

    fn persist(&self) {
        let state = PersistedState {
            slots: self
                .slots
                .iter()
                .map(|(model, slot)| {
                    let persisted = PersistedSlot {
                        generation: slot.generation,
                        active: slot.active.as_ref().map(PersistedBundle::from_installed),
                        previous: slot.previous.as_ref().map(PersistedBundle::from_installed),
                    };
                    (model.clone(), persisted)
                })
                .collect(),
        };
        if let Err(error) = self.state_dir.save_state(&state) {
            tracing::error!(%error, "could not persist agent state");
        }
    }

    fn collect_garbage(&self) {
        let mut keep = Vec::new();
        for slot in self.slots.values() {
            keep.extend(slot.active.iter().chain(slot.previous.iter()).map(|installed| installed.digest));
            if let Some(target) = &slot.target {
                keep.push(target.verified.digest);
            }
        }
        self.state_dir.collect_garbage(&keep);
    }

    pub fn reported_state(&self) -> ReportedState {
        ReportedState {
            device_id: self.config.device_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            labels: self.config.labels.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
            started_at_ms: self.started_at_ms,
            reported_at_ms: now_ms(),
            slots: self
                .slots
                .iter()
                .map(|(model, slot)| SlotReport {
                    model: model.clone(),
                    generation: slot.generation,
                    phase: slot.phase.clone(),
                    active: slot.active,
                    previous: slot.previous,
                    target: slot
                        .target
                        .as_ref()
                        .map(|target| InstalledBundle { version: target.verified.manifest.version, digest: target.verified.digest }),
                    last_result: slot.last_result.clone(),
                })
                .collect(),
            last_refusal: self.last_refusal.clone(),
        }
    }

    async fn report_if_due(&mut self, force: bool) {
        if !(force || self.report_pending) {
            return;
        }
        let fetching = self.slots.values().any(|slot| matches!(slot.phase, SlotPhase::Fetching { .. }));
        if !force && fetching && self.last_report_at.elapsed() < PROGRESS_REPORT_INTERVAL {
            return;
        }
        self.report_pending = false;
        self.last_report_at = Instant::now();
        let report = Reported::Online(self.reported_state());
        self.link.publish(self.topics.reported(&self.config.device_id), true, protocol::encode(&report)).await;
    }
}

/// Puts a loaded model in service in its slot's role: answering (with its drift tap when
/// the bundle carries a profile), or shadowing.
fn serve(host: &ModelHost, slot_key: &str, installed: &Installed) {
    let loaded = installed.model.clone();
    match protocol::split_slot(slot_key).1 {
        SlotRole::Active => {
            host.set_drift_profile(&loaded.model, loaded.version, installed.profile.as_deref());
            host.swap(loaded);
        }
        SlotRole::Shadow => {
            host.swap_shadow(loaded);
        }
    }
}
