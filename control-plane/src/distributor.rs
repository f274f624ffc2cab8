//! The distributor answers fetch requests with chunk publishes on the bundle's topic.
//! Requests for one bundle that arrive within the coalescing window are merged, so a burst
//! of N devices costs about one copy of the bundle: fan-out is the broker's job.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use fleetml_shared::bundle::{BundleDigest, Manifest, read_bundle_file};
use fleetml_shared::protocol::{self, ChunkMessage, FetchRequest};
use fleetml_shared::signing::TrustedKeys;
use fleetml_shared::topics::TopicKind;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::PlaneCore;
use crate::mqtt::Inbound;

/// Bundles whose payload stays in memory between bursts.
const CACHED_BUNDLES: usize = 8;

struct CachedBundle {
    manifest: Manifest,
    payload: Vec<u8>,
}

/// A burst is published once requests for its bundle stop arriving for one coalescing window
/// (devices told of a deployment one after another fetch a little apart), but never later
/// than this many windows after its first request.
const MAX_DELAY_WINDOWS: u32 = 20;

struct PendingBurst {
    first_request_at: Instant,
    due_at: Instant,
    chunks: BTreeSet<u32>,
}

pub struct Distributor {
    pub core: Arc<PlaneCore>,
    pub inbound: mpsc::Receiver<Inbound>,
    cache: HashMap<BundleDigest, Arc<CachedBundle>>,
    pending: HashMap<BundleDigest, PendingBurst>,
}

impl Distributor {
    pub fn new(core: Arc<PlaneCore>, inbound: mpsc::Receiver<Inbound>) -> Self {
        Distributor { core, inbound, cache: HashMap::new(), pending: HashMap::new() }
    }

    #[tracing::instrument(name = "distributor", skip_all)]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            let next_due = self.pending.values().map(|burst| burst.due_at).min();
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: mpsc::Receiver::recv.
                inbound = self.inbound.recv() => match inbound {
                    Some(inbound) => self.on_fetch(inbound).await,
                    None => break,
                },
                _ = sleep_until_or_forever(next_due) => self.publish_due().await,
            }
        }
        Ok(())
    }

    async fn on_fetch(&mut self, inbound: Inbound) {
        let TopicKind::Fetch { device_id } = inbound.kind else {
            return;
        };
        let request: FetchRequest = match protocol::decode::<FetchRequest>(&inbound.payload) {
            Ok(request) if request.device_id == device_id => request,
            Ok(_) => {
                return self.refuse(&device_id, "device id in the message differs from the topic");
            }
            Err(error) => return self.refuse(&device_id, &error.to_string()),
        };
        let Some(bundle) = self.bundle(&request.digest).await else {
            return self.refuse(&device_id, &format!("unknown bundle {}", request.digest.short()));
        };
        self.core.counters.fetch_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n_chunks = bundle.manifest.n_chunks();
        let window = self.core.coalesce_window;
        let burst = self.pending.entry(request.digest).or_insert_with(|| PendingBurst {
            first_request_at: Instant::now(),
            due_at: Instant::now(),
            chunks: BTreeSet::new(),
        });
        burst.due_at = (Instant::now() + window).min(burst.first_request_at + window * MAX_DELAY_WINDOWS);
        for range in &request.missing {
            burst.chunks.extend(range.start.min(n_chunks)..range.end.min(n_chunks));
        }
        tracing::debug!(%device_id, bundle = %request.digest.short(), pending = burst.chunks.len(), "fetch request");
    }

    fn refuse(&self, device_id: &str, reason: &str) {
        self.core.counters.count_refused();
        tracing::warn!(%device_id, reason, "fetch request refused");
    }

    async fn bundle(&mut self, digest: &BundleDigest) -> Option<Arc<CachedBundle>> {
        if let Some(bundle) = self.cache.get(digest) {
            return Some(bundle.clone());
        }
        let path = crate::versions::bundle_path(&self.core, digest);
        let bytes = tokio::fs::read(&path).await.ok()?;
        let (signed, payload) = read_bundle_file(&mut bytes.as_slice()).ok()?;
        // Invariant: only bundles this plane signed are served; verified once when cached.
        let trusted = TrustedKeys::new(vec![self.core.signer.public_key()]);
        let verified = signed.verify(&trusted, 0).ok()?;
        if verified.digest != *digest {
            return None;
        }
        if self.cache.len() >= CACHED_BUNDLES
            && let Some(evicted) = self.cache.keys().find(|cached| !self.pending.contains_key(*cached)).copied()
        {
            self.cache.remove(&evicted);
        }
        let bundle = Arc::new(CachedBundle { manifest: verified.manifest, payload });
        self.cache.insert(*digest, bundle.clone());
        Some(bundle)
    }

    async fn publish_due(&mut self) {
        let now = Instant::now();
        let due: Vec<BundleDigest> = self.pending.iter().filter(|(_, burst)| burst.due_at <= now).map(|(digest, _)| *digest).collect();
        for digest in due {
            let Some(burst) = self.pending.remove(&digest) else {
                continue;
            };
            let Some(bundle) = self.cache.get(&digest).cloned() else {
                continue;
            };
            let topic = self.core.topics.chunks(&digest.to_hex());
            tracing::debug!(bundle = %digest.short(), n_chunks = burst.chunks.len(), "publishing chunks");
            for index in burst.chunks {
                let range = bundle.manifest.chunk_range(index);
                let chunk = ChunkMessage { digest, index, data: bundle.payload[range.start as usize..range.end as usize].to_vec() };
                let payload = protocol::encode(&chunk);
                let n_bytes = payload.len() as u64;
                if self.core.mqtt.publish(topic.clone(), false, payload).await {
                    self.core.counters.chunks_published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.core.counters.chunk_bytes_published.fetch_add(n_bytes, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
