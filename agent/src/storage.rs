//! The agent's state folder: installed bundles, transfers in progress, and the small
//! state file that says which bundle each slot serves.
//!
//! Layout (all under `state_dir`):
//! - `state.json`: per slot the accepted generation, active and previous bundle;
//! - `bundles/<digest>/`: an installed bundle (`manifest.bin` and its files), complete and verified;
//! - `transfers/<digest>.part` + `.manifest`: a payload being received, chunk by chunk.
//!
//! Invariant: every file that matters is written to a temporary name, fsynced and renamed,
//! so a power cut leaves either the old or the new version, never a torn one.
//!
//! Invariant: folders are created 0700 and files 0600 (`create_private_dir_all`,
//! `create_private_file`), and `StateDir::open` tightens a folder an older agent left open.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fleetml_shared::bundle::{BundleDigest, SignedManifest};
use fleetml_shared::protocol::InstalledBundle;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct StorageError {
    pub action: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.display().to_string();
    move |source| StorageError { action, path, source }
}

/// What survives a restart, per model slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedSlot {
    pub generation: u64,
    pub active: Option<PersistedBundle>,
    pub previous: Option<PersistedBundle>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersistedBundle {
    pub version: u64,
    pub digest: String,
}

impl PersistedBundle {
    pub fn from_installed(installed: &InstalledBundle) -> Self {
        PersistedBundle { version: installed.version, digest: installed.digest.to_hex() }
    }

    pub fn to_installed(&self) -> Option<InstalledBundle> {
        Some(InstalledBundle { version: self.version, digest: BundleDigest::from_hex(&self.digest)? })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub slots: BTreeMap<String, PersistedSlot>,
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        for folder in [root.to_path_buf(), root.join("bundles"), root.join("transfers")] {
            create_private_dir_all(&folder)?;
            fs::set_permissions(&folder, fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(io_error("restricting", &folder))?;
        }
        // Leftovers of an install interrupted before its rename.
        if let Ok(entries) = fs::read_dir(root.join("bundles")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".staging") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(StateDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn load_state(&self) -> Result<PersistedState, StorageError> {
        let path = self.root.join("state.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| StorageError {
                action: "parsing",
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(error) => Err(io_error("reading", &path)(error)),
        }
    }

    pub fn save_state(&self, state: &PersistedState) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|error| StorageError {
            action: "encoding",
            path: "state.json".into(),
            source: std::io::Error::other(error),
        })?;
        write_atomically(&self.root.join("state.json"), &bytes)
    }

    pub fn bundle_dir(&self, digest: &BundleDigest) -> PathBuf {
        self.root.join("bundles").join(digest.to_hex())
    }

    pub fn staging_dir(&self, digest: &BundleDigest) -> PathBuf {
        self.root.join("bundles").join(format!("{}.staging", digest.to_hex()))
    }

    pub fn transfer_part(&self, digest: &BundleDigest) -> PathBuf {
        self.root.join("transfers").join(format!("{}.part", digest.to_hex()))
    }

    pub fn transfer_manifest(&self, digest: &BundleDigest) -> PathBuf {
        self.root.join("transfers").join(format!("{}.manifest", digest.to_hex()))
    }

    /// The signed manifest of an installed bundle, if the bundle is held.
    pub fn installed_manifest(&self, digest: &BundleDigest) -> Option<SignedManifest> {
        let bytes = fs::read(self.bundle_dir(digest).join("manifest.bin")).ok()?;
        postcard::from_bytes(&bytes).ok()
    }

    /// Removes installed bundles and transfers except those in `keep`.
    pub fn collect_garbage(&self, keep: &[BundleDigest]) {
        let keep_hex: Vec<String> = keep.iter().map(BundleDigest::to_hex).collect();
        for folder in ["bundles", "transfers"] {
            let Ok(entries) = fs::read_dir(self.root.join(folder)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let stem = name.split('.').next().unwrap_or_default();
                if !keep_hex.iter().any(|hex| hex == stem) {
                    let path = entry.path();
                    let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                    if let Err(error) = removed {
                        tracing::warn!(path = %path.display(), %error, "could not remove old bundle files");
                    }
                }
            }
        }
    }
}

pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// `fs::create_dir_all`, with every folder it creates 0700.
pub fn create_private_dir_all(path: &Path) -> Result<(), StorageError> {
    fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(path).map_err(io_error("creating", path))
}

/// `File::create`, 0600 when it creates the file.
pub fn create_private_file(path: &Path) -> Result<File, StorageError> {
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(PRIVATE_FILE_MODE).open(path).map_err(io_error("creating", path))
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, then fsyncs the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temporary = path.with_extension("tmp");
    let mut file = create_private_file(&temporary)?;
    file.write_all(bytes).map_err(io_error("writing", &temporary))?;
    file.sync_all().map_err(io_error("syncing", &temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error("renaming", &temporary))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(io_error("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_reopen_and_garbage_collection_keeps_what_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = StateDir::open(dir.path()).unwrap();
        assert_eq!(state_dir.load_state().unwrap(), PersistedState::default());
        let mut state = PersistedState::default();
        state.slots.insert(
            "m".into(),
            PersistedSlot { generation: 4, active: Some(PersistedBundle { version: 2, digest: "ab".into() }), previous: None },
        );
        state_dir.save_state(&state).unwrap();
        let keep = BundleDigest([1; 32]);
        let drop = BundleDigest([2; 32]);
        fs::create_dir_all(state_dir.bundle_dir(&keep)).unwrap();
        fs::create_dir_all(state_dir.bundle_dir(&drop)).unwrap();
        fs::write(state_dir.transfer_part(&drop), b"x").unwrap();
        fs::create_dir_all(state_dir.staging_dir(&drop)).unwrap();
        let reopened = StateDir::open(dir.path()).unwrap();
        assert!(!reopened.staging_dir(&drop).exists(), "staging leftovers are removed at start");
        assert_eq!(reopened.load_state().unwrap(), state);
        reopened.collect_garbage(&[keep]);
        assert!(reopened.bundle_dir(&keep).exists());
        assert!(!reopened.bundle_dir(&drop).exists());
        assert!(!reopened.transfer_part(&drop).exists());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = StateDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let error = state_dir.load_state().unwrap_err();
        assert!(error.to_string().contains("state.json"), "{error}");
    }
}
