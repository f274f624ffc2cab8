//! fleetml-plane: the control plane.
//!
//! The domain modules own the rules: `versions` (registry lifecycle and history),
//! `deployment` (standing assignments and the controller that turns them into desired
//! state), `rollout` (staged rollouts), `experiments` (A/B splits, shadows), `drift`,
//! `tracking`, `artifacts`, `telemetry`, `reported`. `api` (axum) only extracts, calls them
//! and converts to views; `cli` is the command line. The actors share one `PlaneCore`: the
//! `store`, the signing key and the MQTT publish handle. `broker` embeds rumqttd; `registry`
//! checks models and builds signed bundles.

pub mod access;
pub mod api;
pub mod artifacts;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deployment;
pub mod distributor;
pub mod drift;
pub mod experiments;
pub mod figures;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod mqtt;
pub mod registry;
pub mod reported;
pub mod rollout;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tracking;
pub mod uploads;
pub mod versions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use fleetml_shared::signing::SigningKeyPair;
use fleetml_shared::topics::Topics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::artifacts::ArtifactStore;
use crate::config::{BrokerConfig, PlaneConfig};
use crate::deployment::controller::{ControllerCommand, ControllerQueue, DeploymentController};
use crate::distributor::Distributor;
use crate::ingest::Ingest;
use crate::mqtt::{PlaneLink, PlaneMqtt};
use crate::store::Store;

/// Device messages waiting for ingest or the distributor; when full, the MQTT link stops
/// reading, which pushes back on the broker.
const INBOUND_CAPACITY: usize = 4096;
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Large uploads (pushes, artifacts) arriving at once; more are answered 429. Each costs a
/// frame of memory while it arrives, then a push holds its model in memory while it is
/// checked and signed, one at a time (`push_lock`).
pub const MAX_CONCURRENT_UPLOADS: usize = 4;

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
    pub artifacts: ArtifactStore,
    /// Caps the large uploads (pushes, artifacts) that may arrive at once.
    pub uploads: uploads::UploadPermits,
    /// When each token's last use was written (`audit::token_used`).
    pub last_token_use: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
    /// Serialises pushes so version numbers are assigned without races.
    pub(crate) push_lock: tokio::sync::Mutex<()>,
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

/// The bootstrap admin token: the configured one, else the data folder's, else a new one
/// (printed once). A configured token replaces earlier bootstrap tokens; a token that was
/// rotated away (revoked) is not taken back.
async fn ensure_admin_token(store: &dyn Store, config: &PlaneConfig) -> anyhow::Result<Option<String>> {
    let path = config.data_dir.join(keys::ADMIN_TOKEN_FILE);
    let (token, from_config) = match &config.admin_token {
        Some(token) => (token.clone(), true),
        None => match std::fs::read_to_string(&path) {
            Ok(token) => (token.trim().to_string(), false),
            Err(_) => {
                if !store.list_tokens().await?.is_empty() {
                    return Ok(None);
                }
                let token = keys::new_token()?;
                keys::write_private(&path, token.as_bytes())?;
                if config.announce_token {
                    // Printed once, on first start; it is also in the data folder, readable by the owner only.
                    println!("admin token (shown once; also in {}): {token}", path.display());
                }
                (token, false)
            }
        },
    };
    let now_ms = fleetml_shared::now_ms() as i64;
    let hash = keys::token_hash(&token);
    let id = match store.token_by_hash(&hash).await? {
        Some(record) if record.revoked_ms.is_some() => {
            tracing::error!(token = %record.name, "the configured admin token was revoked (rotated): it is not valid; use the new one in {}", path.display());
            return Ok(None);
        }
        Some(record) => record.id,
        None => {
            let record = store::TokenRecord {
                id: 0,
                token_sha256: hash,
                name: if from_config { "admin (configured)".into() } else { "admin".into() },
                role: access::Role::Admin.as_str().into(),
                scopes: String::new(),
                bootstrap: true,
                created_ms: now_ms,
                created_by: "serve".into(),
                expires_ms: None,
                revoked_ms: None,
                last_used_ms: None,
            };
            store.insert_token(&record).await?
        }
    };
    // One bootstrap token at a time: a new `--admin-token` ends the old one.
    for record in store.list_tokens().await? {
        if record.bootstrap && record.id != id && record.revoked_ms.is_none() {
            store.revoke_token(record.id, now_ms).await?;
            tracing::info!(token_id = record.id, "an earlier bootstrap admin token was revoked");
        }
    }
    Ok(Some(token))
}

/// Starts the plane's actors and HTTP server on `tracker`.
pub async fn start(config: PlaneConfig, tracker: &TaskTracker, cancel: &CancellationToken) -> anyhow::Result<PlaneHandle> {
    // Folders 0700, files 0600: the data folder holds keys, tokens, models and run artifacts.
    storage::make_private_data_dir(&config.data_dir, &config.database_url)?;
    let store = store::open(&config.database_url).await.with_context(|| format!("opening the store {}", redact(&config.database_url)))?;
    let signer = keys::load_or_create(config.signing_key.as_deref(), &config.data_dir)?;
    let public_key_pem = signer.public_key().to_pem()?;
    let public_key_path = config.data_dir.join(keys::PUBLIC_KEY_FILE);
    if std::fs::read_to_string(&public_key_path).ok().as_deref() != Some(public_key_pem.as_str()) {
        std::fs::write(&public_key_path, &public_key_pem).with_context(|| format!("writing {}", public_key_path.display()))?;
    }
    let broker_wanted = match &config.broker {
        BrokerConfig::Embedded { max_connections, .. } => Some(*max_connections),
        BrokerConfig::External { .. } => None,
    };
    let budget = http::descriptor_budget(config.http_limits.max_connections, broker_wanted);
    tracing::info!(
        open_file_limit = budget.limit,
        http_connections = budget.http_connections,
        broker_connections = budget.broker_connections,
        reserved = http::RESERVED_DESCRIPTORS,
        "descriptor budget"
    );
    if budget.http_connections < config.http_limits.max_connections || budget.broker_connections < broker_wanted {
        tracing::warn!(
            open_file_limit = budget.limit,
            "the open-file limit cannot hold the configured connection caps; lowered them (raise `ulimit -n` to keep them)"
        );
    }
    let http_limits = http::ServerLimits { max_connections: budget.http_connections, ..config.http_limits };
    let admin_token = ensure_admin_token(store.as_ref(), &config).await?;
    let (host, port) = match &config.broker {
        BrokerConfig::Embedded { listen, max_connections } => {
            let max_connections = budget.broker_connections.unwrap_or(*max_connections).max(4);
            let embedded = broker::start_embedded(*listen, max_connections).await?;
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
        artifacts: ArtifactStore::new(config.data_dir.join("artifacts")),
        uploads: uploads::UploadPermits::new(MAX_CONCURRENT_UPLOADS),
        last_token_use: Default::default(),
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
    tracing::info!(
        header_read_timeout_s = http_limits.header_read_timeout.as_secs_f64(),
        body_read_timeout_s = http_limits.body_read_timeout.as_secs_f64(),
        max_connections = http_limits.max_connections,
        "HTTP limits"
    );
    spawn_actor(tracker, "http", async move { http::serve(listener, router, http_limits, shutdown).await.context("HTTP server") });
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

#[cfg(test)]
pub(crate) mod testing {
    //! A plane core for unit and route tests: a fresh SQLite store in a folder, an MQTT handle
    //! that is never connected, no actors (tests drive what they need).

    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use fleetml_shared::signing::SigningKeyPair;
    use fleetml_shared::topics::Topics;
    use tokio::sync::mpsc;

    use super::*;

    pub async fn core(data_dir: &Path) -> Arc<PlaneCore> {
        std::fs::create_dir_all(data_dir.join("bundles")).unwrap();
        let store = crate::store::open(&format!("sqlite://{}", data_dir.join("plane.db").display())).await.unwrap();
        let signer = SigningKeyPair::generate().unwrap();
        let public_key_pem = signer.public_key().to_pem().unwrap();
        let topics = Topics::new("fleetml");
        let (ingest_sender, _) = mpsc::channel(1);
        let (fetch_sender, _) = mpsc::channel(1);
        let controller = Arc::new(ControllerQueue::default());
        let counters = Arc::new(PlaneCounters::default());
        let (_link, mqtt) =
            PlaneLink::new("127.0.0.1", 1, topics.clone(), ingest_sender, fetch_sender, controller.clone(), counters.clone());
        Arc::new(PlaneCore {
            store,
            signer,
            public_key_pem,
            topics,
            data_dir: data_dir.to_path_buf(),
            broker_url: "mqtt://127.0.0.1:1".into(),
            mqtt,
            counters,
            controller,
            coalesce_window: Duration::from_millis(10),
            drift_latest: crate::drift::LatestDrift::default(),
            artifacts: ArtifactStore::new(data_dir.join("artifacts")),
            uploads: uploads::UploadPermits::new(MAX_CONCURRENT_UPLOADS),
            last_token_use: Default::default(),
            push_lock: tokio::sync::Mutex::new(()),
        })
    }
}

#[cfg(test)]
mod tidy;
