//! fleetml-plane: the control plane.
//!
//! `api` (axum) and the actors share one `PlaneCore`: the `store`, the signing key and the
//! MQTT publish handle. Actors: `mqtt` (the link), `ingest` (reported state, heartbeats),
//! `distributor` (coalesced chunk publishes) and the `deployment` controller (desired
//! state). `broker` embeds rumqttd; `registry` checks models and builds signed bundles.

pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deployment;
pub mod distributor;
pub mod drift;
pub mod ingest;
pub mod keys;
pub mod mqtt;
pub mod registry;
pub mod rollout;
pub mod store;
pub mod tracking;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use fleetml_shared::bundle::BundleDigest;
use fleetml_shared::signing::SigningKeyPair;
use fleetml_shared::topics::Topics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::error::ApiError;
use crate::api::views::PushResponse;
use crate::config::{BrokerConfig, PlaneConfig};
use crate::deployment::{ControllerCommand, ControllerQueue, DeploymentController};
use crate::distributor::Distributor;
use crate::ingest::Ingest;
use crate::mqtt::{PlaneLink, PlaneMqtt};
use crate::registry::{BundleOptions, DEFAULT_SELF_TEST_TOLERANCE};
use crate::store::{BundleRecord, ModelVersionRecord, Store};

/// Device messages waiting for ingest or the distributor; when full, the MQTT link stops
/// reading, which pushes back on the broker.
const INBOUND_CAPACITY: usize = 4096;
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_EXPIRY_DAYS: u64 = 365;

#[derive(Default)]
pub struct PlaneCounters {
    pub refused_messages: AtomicU64,
    pub fetch_requests: AtomicU64,
    pub chunks_published: AtomicU64,
    pub chunk_bytes_published: AtomicU64,
    pub desired_published: AtomicU64,
    /// Fetch requests dropped because the distributor was behind (devices ask again).
    pub fetch_requests_dropped: AtomicU64,
}

impl PlaneCounters {
    pub fn count_refused(&self) {
        self.refused_messages.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the API handlers and the actors share.
pub struct PlaneCore {
    pub store: Arc<dyn Store>,
    pub signer: SigningKeyPair,
    pub public_key_pem: String,
    pub topics: Topics,
    pub data_dir: PathBuf,
    pub broker_url: String,
    pub mqtt: PlaneMqtt,
    pub counters: Arc<PlaneCounters>,
    pub controller: Arc<ControllerQueue>,
    pub coalesce_window: Duration,
    /// The latest judged drift period per version (for `/metrics`).
    pub drift_latest: drift::LatestDrift,
    /// Serialises pushes so version numbers are assigned without races.
    push_lock: tokio::sync::Mutex<()>,
}

impl PlaneCore {
    pub fn bundle_path(&self, digest: &BundleDigest) -> PathBuf {
        self.data_dir.join("bundles").join(format!("{}.bundle", digest.to_hex()))
    }

    /// `NAME@REF`'s REF: an integer is a version, anything else an alias.
    pub async fn resolve_reference(&self, model: &str, reference: &str) -> Result<i64, ApiError> {
        if let Ok(version) = reference.parse::<i64>() {
            return Ok(version);
        }
        self.store
            .resolve_alias(model, reference)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("model `{model}` has no alias `{reference}`")))
    }

    /// Registers the next version of `model`: checks it with tract, builds and signs the
    /// bundle, stores it. The CPU work runs off the reactor.
    pub async fn push_model(&self, model: &str, onnx: Vec<u8>, push: PushOptions) -> Result<PushResponse, ApiError> {
        let PushOptions { description, expires_in_days, latency_budget_ms, source, run_id, profile } = push;
        let _guard = self.push_lock.lock().await;
        let version = self.store.latest_version(model).await?.unwrap_or(0) + 1;
        let expires_in_days = expires_in_days.unwrap_or(DEFAULT_EXPIRY_DAYS);
        let options = BundleOptions {
            model: model.to_string(),
            version: version as u64,
            expires_in_ms: (expires_in_days > 0).then(|| expires_in_days * 86_400_000),
            latency_budget_ms,
            tolerance: DEFAULT_SELF_TEST_TOLERANCE,
            profile: profile.clone(),
        };
        let key_pair = self.signer.clone();
        let onnx_len = onnx.len();
        let onnx_sha256 = hex::encode(fleetml_shared::bundle::sha256(&onnx));
        let built = tokio::task::spawn_blocking(move || registry::build_bundle(&onnx, &options, &key_pair, fleetml_shared::now_ms()))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))??;
        let digest = built.signed_manifest.digest();
        let bundle_path = self.bundle_path(&digest);
        let temporary = bundle_path.with_extension("tmp");
        tokio::fs::write(&temporary, &built.file_bytes).await.map_err(|error| ApiError::Internal(format!("writing bundle: {error}")))?;
        tokio::fs::rename(&temporary, &bundle_path).await.map_err(|error| ApiError::Internal(format!("writing bundle: {error}")))?;
        let schema_json = serde_json::to_string(&built.schema).map_err(|error| ApiError::Internal(error.to_string()))?;
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
            signed_manifest: postcard::to_stdvec(&built.signed_manifest).map_err(|error| ApiError::Internal(error.to_string()))?,
        };
        self.store.insert_version(&record, Some(&bundle)).await?;
        let now_ms = fleetml_shared::now_ms() as i64;
        if let Some(profile) = &profile {
            let profile_sha256 = hex::encode(fleetml_shared::bundle::sha256(profile));
            self.store.put_profile(&profile_sha256, profile, now_ms).await?;
            self.store.set_version_profile(model, version, &profile_sha256).await?;
        }
        self.store.add_version_event(model, version, "registered", &format!("bundle {}", digest.short()), now_ms).await?;
        tracing::info!(%model, version, digest = %digest.short(), "model version registered");
        Ok(PushResponse {
            model: model.to_string(),
            version,
            digest: digest.to_hex(),
            schema: built.schema,
            self_test_ms: built.self_test_ms,
            bundle_bytes: built.file_bytes.len() as i64,
        })
    }
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

impl PlaneCore {
    /// Registers a version that has no ONNX file (so no bundle): it can be tracked, not deployed.
    pub async fn register_without_bundle(&self, model: &str, push: PushOptions) -> Result<i64, ApiError> {
        let _guard = self.push_lock.lock().await;
        let version = self.store.latest_version(model).await?.unwrap_or(0) + 1;
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
        self.store.insert_version(&record, None).await?;
        self.store.add_version_event(model, version, "registered", "no ONNX file among its artifacts: not deployable", now_ms).await?;
        Ok(version)
    }

    pub fn artifact_root(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }
}

/// A running plane.
pub struct PlaneHandle {
    pub http_addr: SocketAddr,
    pub broker_url: String,
    pub public_key_path: PathBuf,
    /// The admin token when this start created it or read it from the data folder.
    pub admin_token: Option<String>,
    pub core: Arc<PlaneCore>,
}

async fn ensure_admin_token(store: &dyn Store, config: &PlaneConfig) -> anyhow::Result<Option<String>> {
    if let Some(token) = &config.admin_token {
        store.insert_token(&keys::token_hash(token), "admin (configured)", fleetml_shared::now_ms() as i64).await?;
        return Ok(Some(token.clone()));
    }
    let path = config.data_dir.join(keys::ADMIN_TOKEN_FILE);
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_string();
        store.insert_token(&keys::token_hash(&token), "admin", fleetml_shared::now_ms() as i64).await?;
        return Ok(Some(token));
    }
    if store.count_tokens().await? > 0 {
        return Ok(None);
    }
    let token = keys::new_token()?;
    keys::write_private(&path, token.as_bytes())?;
    store.insert_token(&keys::token_hash(&token), "admin", fleetml_shared::now_ms() as i64).await?;
    if config.announce_token {
        // Printed once, on first start; it is also in the data folder, readable by the owner only.
        println!("admin token (shown once; also in {}): {token}", path.display());
    }
    Ok(Some(token))
}

/// Starts the plane's actors and HTTP server on `tracker`.
pub async fn start(config: PlaneConfig, tracker: &TaskTracker, cancel: &CancellationToken) -> anyhow::Result<PlaneHandle> {
    std::fs::create_dir_all(config.data_dir.join("bundles")).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = store::open(&config.database_url).await.with_context(|| format!("opening the store {}", redact(&config.database_url)))?;
    let signer = keys::load_or_create(config.signing_key.as_deref(), &config.data_dir)?;
    let public_key_pem = signer.public_key().to_pem()?;
    let public_key_path = config.data_dir.join(keys::PUBLIC_KEY_FILE);
    if std::fs::read_to_string(&public_key_path).ok().as_deref() != Some(public_key_pem.as_str()) {
        std::fs::write(&public_key_path, &public_key_pem).with_context(|| format!("writing {}", public_key_path.display()))?;
    }
    let admin_token = ensure_admin_token(store.as_ref(), &config).await?;
    let (host, port) = match &config.broker {
        BrokerConfig::Embedded { listen, max_connections } => {
            let embedded = broker::start_embedded(*listen, *max_connections).await?;
            (embedded.address.ip().to_string(), embedded.address.port())
        }
        BrokerConfig::External { address } => (address.host.clone(), address.port),
    };
    let broker_url = fleetml_shared::broker::BrokerAddress { host: host.clone(), port }.to_string();
    let topics = Topics::new(&config.topic_root);
    let (ingest_sender, ingest_receiver) = mpsc::channel(INBOUND_CAPACITY);
    let (fetch_sender, fetch_receiver) = mpsc::channel(INBOUND_CAPACITY);
    let controller = Arc::new(ControllerQueue::default());
    let counters = Arc::new(PlaneCounters::default());
    let (link, mqtt) = PlaneLink::new(&host, port, topics.clone(), ingest_sender, fetch_sender, controller.clone(), counters.clone());
    let core = Arc::new(PlaneCore {
        store,
        signer,
        public_key_pem,
        topics,
        data_dir: config.data_dir.clone(),
        broker_url: broker_url.clone(),
        mqtt,
        counters,
        controller,
        coalesce_window: config.coalesce_window,
        drift_latest: drift::LatestDrift::default(),
        push_lock: tokio::sync::Mutex::new(()),
    });
    spawn_actor(tracker, "mqtt", link.run(cancel.clone()));
    spawn_actor(tracker, "ingest", Ingest::new(core.clone(), ingest_receiver).run(cancel.clone()));
    spawn_actor(tracker, "distributor", Distributor::new(core.clone(), fetch_receiver).run(cancel.clone()));
    spawn_actor(tracker, "deployments", DeploymentController { core: core.clone() }.run(cancel.clone()));
    spawn_actor(tracker, "rollouts", rollout::controller::RolloutController { core: core.clone() }.run(cancel.clone()));
    spawn_actor(tracker, "drift", drift::DriftMonitor { core: core.clone(), config: config.drift.clone() }.run(cancel.clone()));
    // Devices may have joined or changed while the plane was down.
    core.controller.request(ControllerCommand::ReconcileAll);
    let listener = tokio::net::TcpListener::bind(config.http).await.with_context(|| format!("binding the HTTP API to {}", config.http))?;
    let http_addr = listener.local_addr()?;
    let router = api::router(core.clone());
    let shutdown = cancel.clone();
    spawn_actor(tracker, "http", async move {
        axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await.context("HTTP server")
    });
    tracing::info!(http = %http_addr, broker = %broker_url, store = core.store.backend(), "control plane running");
    Ok(PlaneHandle { http_addr, broker_url, public_key_path, admin_token, core })
}

/// `fleetml serve`: runs until `cancel`.
pub async fn serve(config: PlaneConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let handle = start(config, &tracker, &cancel).await?;
    println!(
        "fleetml control plane: API http://{}  broker {}  public key {}",
        handle.http_addr,
        handle.broker_url,
        handle.public_key_path.display()
    );
    cancel.cancelled().await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some actors did not stop within the grace period");
    }
    Ok(())
}

pub fn spawn_actor(tracker: &TaskTracker, name: &'static str, actor: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
    tracker.spawn(async move {
        if let Err(error) = actor.await {
            tracing::error!(actor = name, error = format!("{error:#}"), "actor stopped");
        }
    });
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
