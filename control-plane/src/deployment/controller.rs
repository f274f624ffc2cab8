//! The deployment controller: turns standing deployments (model version → device or
//! selector) into each device's signed desired state, and keeps the retained copies on the
//! broker. It only writes desired state; agents do the rest and report back. The queue of
//! its work (`ControllerQueue`) is what the rest of the plane pokes.
//!
//! Invariant: for each (device, model) the generation only grows; a target older than what
//! the device was last told or runs carries an explicit rollback permission.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleetml_shared::bundle::SignedManifest;
use fleetml_shared::protocol::{self, DesiredSlot, DesiredTarget, RollbackPermission, SignedDesiredState, SlotRole};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deciding_deployment_in;
use crate::PlaneCore;
use crate::reported;
use crate::store::{DeploymentRecord, DeploymentRole, DesiredRecord, DeviceRecord, StoreError};

#[derive(Debug)]
pub enum ControllerCommand {
    ReconcileDevice(String),
    ReconcileAll,
    RepublishAll,
}

/// Work for the controller. Commands are idempotent, so they merge into one pending set:
/// bounded by the number of devices, and a sender never waits (the MQTT link sends here,
/// and the controller publishes through the link, so a wait could deadlock the two).
#[derive(Default)]
pub struct ControllerQueue {
    pending: Mutex<PendingWork>,
    notify: Notify,
}

#[derive(Default)]
struct PendingWork {
    devices: BTreeSet<String>,
    all: bool,
    republish: bool,
}

impl PendingWork {
    fn is_empty(&self) -> bool {
        self.devices.is_empty() && !self.all && !self.republish
    }
}

impl ControllerQueue {
    pub fn request(&self, command: ControllerCommand) {
        if let Ok(mut pending) = self.pending.lock() {
            match command {
                ControllerCommand::ReconcileDevice(device_id) => {
                    pending.devices.insert(device_id);
                }
                ControllerCommand::ReconcileAll => pending.all = true,
                ControllerCommand::RepublishAll => pending.republish = true,
            }
        }
        self.notify.notify_one();
    }

    /// Everything requested since the last call; waits while there is nothing.
    async fn take(&self) -> PendingWork {
        loop {
            if let Ok(mut pending) = self.pending.lock()
                && !pending.is_empty()
            {
                return std::mem::take(&mut *pending);
            }
            // A notification sent before this await is kept as a permit, so none is lost.
            self.notify.notified().await;
        }
    }
}

pub struct DeploymentController {
    pub core: Arc<PlaneCore>,
}

impl DeploymentController {
    #[tracing::instrument(name = "deployment_controller", skip_all)]
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            let work = tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: `take` only removes work once it returns.
                work = self.core.controller.take() => work,
            };
            if work.republish
                && let Err(error) = self.republish_all().await
            {
                tracing::error!(%error, "could not republish desired states");
            }
            let result = if work.all {
                self.reconcile(None).await
            } else if work.devices.is_empty() {
                Ok(())
            } else {
                self.reconcile(Some(&work.devices)).await
            };
            if let Err(error) = result {
                tracing::error!(%error, "reconcile failed; it runs again on the next change");
            }
        }
        Ok(())
    }

    async fn republish_all(&self) -> Result<(), StoreError> {
        let desired = self.core.store.list_desired().await?;
        for record in &desired {
            self.core.mqtt.publish(self.core.topics.desired(&record.device_id, &record.model), true, record.payload.clone()).await;
        }
        tracing::info!(n_desired = desired.len(), "desired states published");
        Ok(())
    }

    async fn reconcile(&self, only: Option<&BTreeSet<String>>) -> Result<(), StoreError> {
        let deployments = self.core.store.list_deployments().await?;
        if deployments.is_empty() {
            return Ok(());
        }
        let slots: BTreeSet<(&str, DeploymentRole)> =
            deployments.iter().map(|deployment| (deployment.model.as_str(), deployment.role)).collect();
        let devices = self.core.store.list_devices().await?;
        let mut n_changed = 0usize;
        for device in devices.iter().filter(|device| only.is_none_or(|only| only.contains(&device.device_id))) {
            for (model, role) in &slots {
                let Some(deployment) = deciding_deployment_in(&deployments, model, *role, device) else {
                    continue;
                };
                if self.ensure_desired(device, deployment).await? {
                    n_changed += 1;
                }
            }
        }
        if n_changed > 0 {
            tracing::info!(n_changed, "desired states updated");
        }
        Ok(())
    }

    /// Writes and publishes a new desired state if the device is not yet told this version.
    async fn ensure_desired(&self, device: &DeviceRecord, deployment: &DeploymentRecord) -> Result<bool, StoreError> {
        let slot_key = deployment.role.slot_key(&deployment.model);
        let current = self.core.store.get_desired(&device.device_id, &slot_key).await?;
        let reported_slot = reported::slot(&device.slots, &slot_key);
        let reported_generation = reported_slot.as_ref().map(|slot| slot.generation as i64).unwrap_or(0);
        let current_generation = current.as_ref().map(|current| current.generation).unwrap_or(0);
        // Version 0 withdraws the slot.
        let wanted_version = (deployment.version > 0).then_some(deployment.version);
        // Told already, unless the device accepted a generation the plane never issued (the
        // database was restored from a backup, say): then the plane asserts its state again.
        let told_already = match &current {
            Some(current) => current.version == wanted_version,
            None => wanted_version.is_none(),
        };
        if told_already && reported_generation <= current_generation {
            return Ok(false);
        }
        let generation = current_generation.max(reported_generation).saturating_add(1);
        let Some(wanted_version) = wanted_version else {
            let slot = DesiredSlot {
                device_id: device.device_id.clone(),
                model: slot_key.clone(),
                generation: generation as u64,
                issued_at_ms: fleetml_shared::now_ms(),
                target: DesiredTarget::Empty,
            };
            return self.store_and_publish(device, deployment, &slot_key, &slot, None, None).await.map(|()| true);
        };
        let version = self
            .core
            .store
            .get_version(&deployment.model, wanted_version)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("version {wanted_version} of `{}`", deployment.model)))?;
        let bundle =
            self.core.store.get_bundle(&version.digest).await?.ok_or_else(|| StoreError::NotFound(format!("bundle {}", version.digest)))?;
        let manifest: SignedManifest =
            postcard::from_bytes(&bundle.signed_manifest).map_err(|error| StoreError::Corrupt(format!("signed manifest: {error}")))?;
        let reported_active = reported_slot.as_ref().and_then(|slot| slot.active_version).map(|version| version as i64);
        let told = current.as_ref().and_then(|current| current.version);
        let newest_known = told.into_iter().chain(reported_active).max();
        let rollback =
            newest_known.filter(|&newest| newest > wanted_version).map(|newest| RollbackPermission { up_to_version: newest as u64 });
        let role = match deployment.role {
            DeploymentRole::Active => SlotRole::Active,
            DeploymentRole::Shadow => SlotRole::Shadow,
        };
        // Above what the device reports too: it would refuse a lower generation as a replay.
        let slot = DesiredSlot {
            device_id: device.device_id.clone(),
            model: slot_key.clone(),
            generation: generation as u64,
            issued_at_ms: fleetml_shared::now_ms(),
            target: DesiredTarget::Bundle { manifest, role, rollback },
        };
        self.store_and_publish(device, deployment, &slot_key, &slot, Some(wanted_version), Some(version.digest.clone())).await?;
        tracing::debug!(device_id = %device.device_id, slot = %slot_key, version = wanted_version, generation, rollback = rollback.is_some(), "desired state set");
        Ok(true)
    }

    async fn store_and_publish(
        &self,
        device: &DeviceRecord,
        deployment: &DeploymentRecord,
        slot_key: &str,
        slot: &DesiredSlot,
        version: Option<i64>,
        digest: Option<String>,
    ) -> Result<(), StoreError> {
        let payload = protocol::encode(&SignedDesiredState::sign(slot, &self.core.signer));
        let record = DesiredRecord {
            device_id: device.device_id.clone(),
            model: slot_key.to_string(),
            generation: slot.generation as i64,
            version,
            digest,
            deployment_id: Some(deployment.id),
            payload: payload.clone(),
            updated_ms: fleetml_shared::now_ms() as i64,
        };
        // Invariant: stored before published, so a crash in between republishes on restart.
        self.core.store.put_desired(&record).await?;
        if self.core.mqtt.publish(self.core.topics.desired(&device.device_id, slot_key), true, payload).await {
            self.core.counters.desired_published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
