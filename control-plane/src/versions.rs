//! Model versions: registering one (checked and signed into a bundle, or without a bundle when
//! its artifacts hold no ONNX file), references (`NAME@VERSION`, `NAME@ALIAS`), aliases, the
//! "can this be deployed" rule, and the version history. Every change to a version writes its
//! history here, whichever API, controller or experiment made it.

use std::path::PathBuf;

use fleetml_shared::bundle::BundleDigest;
use fleetml_shared::topics::is_valid_name;

use crate::PlaneCore;
use crate::registry::{self, BundleOptions, DEFAULT_SELF_TEST_TOLERANCE, ModelError, ModelSchema};
use crate::store::{BundleRecord, ModelVersionRecord, StoreError};
use crate::uploads::Upload;

const DEFAULT_EXPIRY_DAYS: u64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("`{0}` is not a valid model name (A-Z a-z 0-9 - _ .)")]
    InvalidModelName(String),
    #[error("`{0}` is not a valid alias (a name, not a number)")]
    InvalidAlias(String),
    #[error("{model}@{version}")]
    NotFound { model: String, version: i64 },
    #[error("no model `{0}`")]
    NoSuchModel(String),
    #[error("model `{model}` has no alias `{alias}`")]
    NoSuchAlias { model: String, alias: String },
    #[error("{model}@{version} has no signed bundle (no ONNX file among its artifacts), so it cannot be {purpose}")]
    NotDeployable { model: String, version: i64, purpose: &'static str },
    #[error("no profile {0}: upload it to /api/v1/profiles first")]
    NoSuchProfile(String),
    #[error("model refused: {0}")]
    Refused(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// What a version's history records. Stored as its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryKind {
    Registered,
    Alias,
    Deployed,
    Rollback,
    Rollout,
    Shadow,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Registered => "registered",
            HistoryKind::Alias => "alias",
            HistoryKind::Deployed => "deployed",
            HistoryKind::Rollback => "rollback",
            HistoryKind::Rollout => "rollout",
            HistoryKind::Shadow => "shadow",
        }
    }
}

/// Appends to a version's history.
pub async fn record_history(core: &PlaneCore, model: &str, version: i64, kind: HistoryKind, detail: &str) -> Result<(), StoreError> {
    core.store.add_version_event(model, version, kind.as_str(), detail, fleetml_shared::now_ms() as i64).await
}

/// What a push may say besides the model itself.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub description: String,
    /// Days until devices refuse the bundle (default 365; 0: never).
    pub expires_in_days: Option<u64>,
    pub latency_budget_ms: Option<u32>,
    /// Where the model came from (an artifact URI) and the run that made it, when known.
    pub source: String,
    pub run_id: String,
    /// A reference profile (JSON) attached to the bundle for drift monitoring.
    pub profile: Option<Vec<u8>>,
}

/// A version just registered with its bundle.
#[derive(Clone, Debug)]
pub struct PushedVersion {
    pub model: String,
    pub version: i64,
    pub digest: BundleDigest,
    pub schema: ModelSchema,
    pub self_test_ms: f32,
    pub bundle_bytes: u64,
}

pub fn check_model_name(name: &str) -> Result<(), VersionError> {
    if is_valid_name(name) { Ok(()) } else { Err(VersionError::InvalidModelName(name.to_string())) }
}

pub fn bundle_path(core: &PlaneCore, digest: &BundleDigest) -> PathBuf {
    core.data_dir.join("bundles").join(format!("{}.bundle", digest.to_hex()))
}

/// The ONNX file of a push: in memory (MLflow artifacts, the demo) or still on disk as it was
/// uploaded, read only once the push's turn comes, so waiting pushes hold no model in memory.
pub enum Onnx {
    Bytes(Vec<u8>),
    Upload(Upload),
}

/// Registers the next version of `model`: checks it with tract, builds and signs the bundle,
/// stores it. One push at a time holds its model in memory; the CPU work runs off the reactor.
pub async fn push(core: &PlaneCore, model: &str, onnx: Onnx, push: PushOptions) -> Result<PushedVersion, VersionError> {
    check_model_name(model)?;
    let PushOptions { description, expires_in_days, latency_budget_ms, source, run_id, profile } = push;
    let _guard = core.push_lock.lock().await;
    let onnx = match onnx {
        Onnx::Bytes(bytes) => bytes,
        Onnx::Upload(upload) => {
            tokio::fs::read(upload.path()).await.map_err(|error| VersionError::Internal(format!("reading the upload: {error}")))?
        }
    };
    let version = core.store.latest_version(model).await?.unwrap_or(0) + 1;
    let expires_in_days = expires_in_days.unwrap_or(DEFAULT_EXPIRY_DAYS);
    let options = BundleOptions {
        model: model.to_string(),
        version: version as u64,
        expires_in_ms: (expires_in_days > 0).then(|| expires_in_days.saturating_mul(86_400_000)),
        latency_budget_ms,
        tolerance: DEFAULT_SELF_TEST_TOLERANCE,
        profile: profile.clone(),
    };
    let key_pair = core.signer.clone();
    let onnx_len = onnx.len();
    let onnx_sha256 = hex::encode(fleetml_shared::bundle::sha256(&onnx));
    let built = tokio::task::spawn_blocking(move || registry::build_bundle(&onnx, &options, &key_pair, fleetml_shared::now_ms()))
        .await
        .map_err(|error| VersionError::Internal(error.to_string()))??;
    let digest = built.signed_manifest.digest();
    let path = bundle_path(core, &digest);
    let temporary = path.with_extension("tmp");
    let internal = |error: std::io::Error| VersionError::Internal(format!("writing bundle: {error}"));
    crate::storage::write_private_file(&temporary, &built.file_bytes).await.map_err(internal)?;
    tokio::fs::rename(&temporary, &path).await.map_err(internal)?;
    let schema_json = serde_json::to_string(&built.schema).map_err(|error| VersionError::Internal(error.to_string()))?;
    let record = ModelVersionRecord {
        model: model.to_string(),
        version,
        digest: digest.to_hex(),
        created_ms: built.manifest.created_at_ms as i64,
        description,
        schema_json,
        onnx_sha256,
        onnx_bytes: onnx_len as i64,
        bundle_bytes: built.file_bytes.len() as i64,
        source,
        run_id,
    };
    let bundle = BundleRecord {
        digest: digest.to_hex(),
        model: model.to_string(),
        version,
        signed_manifest: postcard::to_stdvec(&built.signed_manifest).map_err(|error| VersionError::Internal(error.to_string()))?,
    };
    core.store.insert_version(&record, Some(&bundle)).await?;
    if let Some(profile) = &profile {
        let profile_sha256 = hex::encode(fleetml_shared::bundle::sha256(profile));
        core.store.put_profile(&profile_sha256, profile, fleetml_shared::now_ms() as i64).await?;
        core.store.set_version_profile(model, version, &profile_sha256).await?;
    }
    record_history(core, model, version, HistoryKind::Registered, &format!("bundle {}", digest.short())).await?;
    tracing::info!(%model, version, digest = %digest.short(), "model version registered");
    Ok(PushedVersion {
        model: model.to_string(),
        version,
        digest,
        schema: built.schema,
        self_test_ms: built.self_test_ms,
        bundle_bytes: built.file_bytes.len() as u64,
    })
}

/// Registers a version that has no ONNX file (so no bundle): it can be tracked, not deployed.
pub async fn register_without_bundle(core: &PlaneCore, model: &str, push: PushOptions) -> Result<i64, VersionError> {
    check_model_name(model)?;
    let _guard = core.push_lock.lock().await;
    let version = core.store.latest_version(model).await?.unwrap_or(0) + 1;
    let now_ms = fleetml_shared::now_ms() as i64;
    let record = ModelVersionRecord {
        model: model.to_string(),
        version,
        digest: String::new(),
        created_ms: now_ms,
        description: push.description,
        schema_json: "null".into(),
        onnx_sha256: String::new(),
        onnx_bytes: 0,
        bundle_bytes: 0,
        source: push.source,
        run_id: push.run_id,
    };
    core.store.insert_version(&record, None).await?;
    record_history(core, model, version, HistoryKind::Registered, "no ONNX file among its artifacts: not deployable").await?;
    Ok(version)
}

/// `NAME@REF`'s REF: an integer is a version, anything else an alias.
pub async fn resolve(core: &PlaneCore, model: &str, reference: &str) -> Result<i64, VersionError> {
    if let Ok(version) = reference.parse::<i64>() {
        return Ok(version);
    }
    core.store
        .resolve_alias(model, reference)
        .await?
        .ok_or_else(|| VersionError::NoSuchAlias { model: model.to_string(), alias: reference.to_string() })
}

/// A version given by number or by alias (exactly one of them).
pub async fn resolve_either(core: &PlaneCore, model: &str, version: Option<i64>, alias: Option<&str>) -> Result<Option<i64>, VersionError> {
    match (version, alias) {
        (Some(version), None) => Ok(Some(version)),
        (None, Some(alias)) => resolve(core, model, alias).await.map(Some),
        _ => Ok(None),
    }
}

pub async fn get(core: &PlaneCore, model: &str, version: i64) -> Result<ModelVersionRecord, VersionError> {
    core.store.get_version(model, version).await?.ok_or_else(|| VersionError::NotFound { model: model.to_string(), version })
}

/// The version, if it has a signed bundle to put on devices; `purpose` says what the caller
/// meant to do with it ("deployed", "rolled out", ...).
pub async fn deployable(core: &PlaneCore, model: &str, version: i64, purpose: &'static str) -> Result<ModelVersionRecord, VersionError> {
    let record = get(core, model, version).await?;
    if !record.is_deployable() {
        return Err(VersionError::NotDeployable { model: model.to_string(), version, purpose });
    }
    Ok(record)
}

/// Whether `alias` may name a version: a name, not a number.
pub fn check_alias(alias: &str) -> Result<(), VersionError> {
    if alias.parse::<i64>().is_ok() || !is_valid_name(alias) { Err(VersionError::InvalidAlias(alias.to_string())) } else { Ok(()) }
}

/// Points `alias` at `version` and records the move in the version's history.
pub async fn set_alias(core: &PlaneCore, model: &str, alias: &str, version: i64) -> Result<(), VersionError> {
    get(core, model, version).await?;
    let previous = core.store.resolve_alias(model, alias).await?;
    core.store.set_alias(model, alias, version, fleetml_shared::now_ms() as i64).await?;
    let detail = match previous {
        Some(previous) if previous > version => format!("alias `{alias}` moved back from version {previous}"),
        Some(previous) => format!("alias `{alias}` moved from version {previous}"),
        None => format!("alias `{alias}` set"),
    };
    record_history(core, model, version, HistoryKind::Alias, &detail).await?;
    Ok(())
}

/// The aliases that point at `version`.
pub async fn aliases_of(core: &PlaneCore, model: &str, version: i64) -> Result<Vec<String>, StoreError> {
    Ok(core.store.list_aliases(model).await?.into_iter().filter(|(_, aliased)| *aliased == version).map(|(alias, _)| alias).collect())
}

pub fn artifact_root(core: &PlaneCore) -> PathBuf {
    core.data_dir.join("artifacts")
}
