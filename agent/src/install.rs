//! Installing a verified bundle: check the payload, stage its files, fsync, rename into
//! place, load with tract and run the self-test. Only a bundle that passes all of it is
//! handed back to be swapped in; on any failure the model that was serving keeps serving.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetml_shared::bundle::{BundleError, VerifiedManifest, check_payload, sha256};
use fleetml_shared::drift::profile::Profile;
use fleetml_shared::protocol::FailureKind;
use fleetml_shared::topics::is_valid_name;

use crate::config::TestingConfig;
use crate::inference::LoadedModel;
use crate::storage::{StateDir, StorageError, io_error, sync_dir};

#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct InstallFailure {
    pub kind: FailureKind,
    pub reason: String,
}

impl InstallFailure {
    fn new(kind: FailureKind, reason: impl ToString) -> Self {
        InstallFailure { kind, reason: reason.to_string() }
    }
}

impl From<StorageError> for InstallFailure {
    fn from(error: StorageError) -> Self {
        InstallFailure::new(FailureKind::Storage, error)
    }
}

impl From<BundleError> for InstallFailure {
    fn from(error: BundleError) -> Self {
        let kind = match &error {
            BundleError::Signature(_) => FailureKind::Signature,
            BundleError::Expired { .. } => FailureKind::Expired,
            BundleError::LengthMismatch { .. } | BundleError::HashMismatch { .. } => FailureKind::Integrity,
            BundleError::Io(_) => FailureKind::Storage,
            BundleError::Malformed(_)
            | BundleError::UnsupportedFormat(_)
            | BundleError::KeyIdMismatch { .. }
            | BundleError::Invalid(_)
            | BundleError::NotABundle(_) => FailureKind::Manifest,
        };
        InstallFailure::new(kind, error)
    }
}

/// Where the payload comes from.
pub enum PayloadSource {
    /// A completed transfer's file.
    Transfer(PathBuf),
    /// The bundle is already installed on this device (a rollback, or a restart).
    Held,
}

pub struct Installed {
    pub model: Arc<LoadedModel>,
    pub self_test_ms: f32,
    /// The reference profile the bundle carries, for drift monitoring.
    pub profile: Option<Arc<Profile>>,
}

fn file_name(name: &str, file_idx: usize) -> String {
    if is_valid_name(name) { name.to_string() } else { format!("file-{file_idx}") }
}

/// Runs on a blocking thread: it hashes, writes, fsyncs and runs the model.
pub fn install(
    state_dir: &StateDir,
    verified: &VerifiedManifest,
    source: PayloadSource,
    testing: &TestingConfig,
) -> Result<Installed, InstallFailure> {
    let manifest = &verified.manifest;
    let bundle_dir = state_dir.bundle_dir(&verified.digest);
    match source {
        PayloadSource::Transfer(part_path) => {
            let payload = fs::read(&part_path).map_err(io_error("reading", &part_path))?;
            check_payload(manifest, &payload)?;
            stage(state_dir, verified, &payload)?;
            let _ = fs::remove_file(&part_path);
            let _ = fs::remove_file(state_dir.transfer_manifest(&verified.digest));
        }
        PayloadSource::Held => {
            for (file_idx, file) in manifest.files.iter().enumerate() {
                let path = bundle_dir.join(file_name(&file.name, file_idx));
                let bytes = fs::read(&path).map_err(io_error("reading", &path))?;
                if sha256(&bytes) != file.sha256 {
                    return Err(InstallFailure::new(FailureKind::Integrity, format!("installed file {} was modified", path.display())));
                }
            }
        }
    }
    let model_idx = manifest.model_file_index().ok_or_else(|| InstallFailure::new(FailureKind::Manifest, "no model file"))?;
    let model_path = bundle_dir.join(file_name(&manifest.files[model_idx].name, model_idx));
    let profile = match manifest.profile_file_index() {
        Some(profile_idx) => {
            let path = bundle_dir.join(file_name(&manifest.files[profile_idx].name, profile_idx));
            let bytes = fs::read(&path).map_err(io_error("reading", &path))?;
            let profile = Profile::from_json(&bytes)
                .map_err(|error| InstallFailure::new(FailureKind::Manifest, format!("the reference profile does not load: {error}")))?;
            Some(Arc::new(profile))
        }
        None => None,
    };
    let installed = load_and_test(&model_path, verified, testing)?;
    Ok(Installed { profile, ..installed })
}

/// Loads an installed bundle's model and runs its self-test.
pub fn load_and_test(model_path: &Path, verified: &VerifiedManifest, testing: &TestingConfig) -> Result<Installed, InstallFailure> {
    let manifest = &verified.manifest;
    let loaded = LoadedModel::load(model_path, &manifest.model, manifest.version, manifest.inputs.clone(), manifest.outputs.clone())
        .map_err(|error| InstallFailure::new(FailureKind::Load, error))?;
    if testing.forces_self_test_failure(&manifest.model, manifest.version) {
        return Err(InstallFailure::new(FailureKind::SelfTest, "self-test failed: forced by the testing option fail_self_test"));
    }
    let self_test_ms = loaded
        .self_test(&manifest.self_test)
        .map_err(|reason| InstallFailure::new(FailureKind::SelfTest, format!("self-test failed: {reason}")))?;
    Ok(Installed { model: Arc::new(loaded), self_test_ms, profile: None })
}

/// Writes the files into a staging folder, fsyncs, and renames it into place.
fn stage(state_dir: &StateDir, verified: &VerifiedManifest, payload: &[u8]) -> Result<(), InstallFailure> {
    let manifest = &verified.manifest;
    let staging = state_dir.staging_dir(&verified.digest);
    let bundle_dir = state_dir.bundle_dir(&verified.digest);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_error("clearing", &staging))?;
    }
    crate::storage::create_private_dir_all(&staging)?;
    let write_file = |name: &str, bytes: &[u8]| -> Result<(), StorageError> {
        let path = staging.join(name);
        let mut file = crate::storage::create_private_file(&path)?;
        file.write_all(bytes).map_err(io_error("writing", &path))?;
        file.sync_all().map_err(io_error("syncing", &path))
    };
    for (file_idx, file) in manifest.files.iter().enumerate() {
        let range = manifest.file_range(file_idx);
        write_file(&file_name(&file.name, file_idx), &payload[range.start as usize..range.end as usize])?;
    }
    write_file("manifest.bin", &postcard::to_stdvec(&verified.signed).unwrap_or_default())?;
    sync_dir(&staging)?;
    if bundle_dir.exists() {
        fs::remove_dir_all(&bundle_dir).map_err(io_error("replacing", &bundle_dir))?;
    }
    fs::rename(&staging, &bundle_dir).map_err(io_error("renaming", &staging))?;
    sync_dir(bundle_dir.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}
