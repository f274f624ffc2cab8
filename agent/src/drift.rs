//! Drift on the device: a tap per active model version that has a reference profile feeds
//! every answered request's inputs and outputs into a `WindowAccumulator`, and closes a
//! window every N seconds or M samples; the outbox keeps closed windows on disk (bounded)
//! and sends them when the broker is connected, resending the recently sent ones after a
//! reconnect. The plane keeps one copy per (device, model, version, seq), so a window is
//! counted once however often it travels.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fleetml_shared::bundle::{TensorData, TensorValues};
use fleetml_shared::drift::Side;
use fleetml_shared::drift::profile::Profile;
use fleetml_shared::drift::window::{self, DriftWindow, WindowAccumulator};
use fleetml_shared::now_ms;
use fleetml_shared::protocol::{self, DriftWindowReport, Telemetry};
use fleetml_shared::topics::Topics;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::host::ModelHost;
use crate::link::LinkHandle;

/// Closed windows waiting to be written to the outbox. When full (the disk is stalled), a
/// window is dropped and counted: the request path never waits on it.
pub const CLOSED_WINDOWS_CAPACITY: usize = 256;
/// How long a sent window is kept to be sent again if the connection drops before the broker
/// has it (QoS 1 acknowledgements are not tracked per message).
const SENT_KEEP: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(250);
const PENDING_SUFFIX: &str = "win";
const SENT_SUFFIX: &str = "sent";

/// A closed window on its way to the outbox.
#[derive(Debug)]
pub struct ClosedWindow {
    pub model: String,
    pub version: u64,
    pub window: DriftWindow,
}

/// Where taps send closed windows, and the agent's window overrides.
#[derive(Clone)]
pub struct DriftSink {
    pub sender: mpsc::Sender<ClosedWindow>,
    pub window: Option<Duration>,
    pub window_samples: Option<u64>,
}

struct TapState {
    accumulator: WindowAccumulator,
    started_at_ms: u64,
}

/// Summarises one active model version's traffic into drift windows.
pub struct DriftTap {
    pub model: String,
    pub version: u64,
    window_ms: u64,
    window_samples: u64,
    state: Mutex<TapState>,
    sink: DriftSink,
    /// Windows dropped because the outbox channel was full.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Requests whose tensors did not fit the profile (counted, not fatal).
    pub observe_errors: std::sync::atomic::AtomicU64,
}

impl DriftTap {
    pub fn new(profile: &Profile, model: &str, version: u64, sink: DriftSink) -> DriftTap {
        let spec = profile.window();
        DriftTap {
            model: model.to_string(),
            version,
            window_ms: sink.window.map(|window| window.as_millis() as u64).unwrap_or(spec.seconds.saturating_mul(1000)).max(1),
            window_samples: sink.window_samples.unwrap_or(spec.samples).max(1),
            state: Mutex::new(TapState { accumulator: WindowAccumulator::new(profile), started_at_ms: now_ms() }),
            sink,
            dropped: Default::default(),
            observe_errors: Default::default(),
        }
    }

    /// Feeds one answered request; closes the window when it holds enough samples.
    pub fn observe(&self, inputs: &[TensorData], outputs: &[TensorData]) {
        let Ok(mut state) = self.state.lock() else { return };
        let sides = [(Side::Input, inputs), (Side::Output, outputs)];
        for (side, tensors) in sides {
            for tensor in tensors {
                let values = match &tensor.values {
                    TensorValues::F32(values) => window::TensorValues::F32(values),
                    TensorValues::I64(values) => window::TensorValues::I64(values),
                };
                // A 1-D tensor is a batch of single values; otherwise rows are the first axis.
                let row_len: usize = if tensor.shape.len() <= 1 { 1 } else { tensor.shape[1..].iter().product::<u64>() as usize };
                if let Err(error) = state.accumulator.observe(side, &tensor.name, values, row_len) {
                    self.observe_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(model = %self.model, %error, "request not summarised for drift");
                }
            }
        }
        if state.accumulator.samples() >= self.window_samples {
            self.close(&mut state, now_ms());
        }
    }

    /// Closes the window if it is old enough and holds anything.
    pub fn close_if_due(&self, now_ms: u64) {
        let Ok(mut state) = self.state.lock() else { return };
        if now_ms.saturating_sub(state.started_at_ms) >= self.window_ms {
            self.close(&mut state, now_ms);
        }
    }

    /// Closes the window now, whatever its age (shutdown, or the version is replaced).
    pub fn close_now(&self, now_ms: u64) {
        if let Ok(mut state) = self.state.lock() {
            self.close(&mut state, now_ms);
        }
    }

    fn close(&self, state: &mut TapState, now_ms: u64) {
        let started_at_ms = std::mem::replace(&mut state.started_at_ms, now_ms);
        if let Some(window) = state.accumulator.take(started_at_ms, now_ms) {
            let closed = ClosedWindow { model: self.model.clone(), version: self.version, window };
            if self.sink.sender.try_send(closed).is_err() {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(model = %self.model, "drift window dropped: the outbox is not keeping up");
            }
        }
    }
}

/// Keeps closed windows on disk until they are sent; bounded by `max_windows` (the oldest
/// are dropped first, and the count travels with the next window).
pub struct DriftOutbox {
    pub dir: PathBuf,
    pub device_id: String,
    pub host: Arc<ModelHost>,
    pub link: LinkHandle,
    pub topics: Topics,
    pub receiver: mpsc::Receiver<ClosedWindow>,
    pub max_windows: usize,
}

fn file_seq(path: &Path) -> Option<(u64, bool)> {
    let name = path.file_name()?.to_str()?;
    let (seq, suffix) = name.split_once('.')?;
    Some((seq.parse().ok()?, suffix == SENT_SUFFIX))
}

impl DriftOutbox {
    fn entries(&self) -> Vec<(u64, bool, PathBuf)> {
        let mut entries: Vec<(u64, bool, PathBuf)> = fs::read_dir(&self.dir)
            .map(|listing| {
                listing.flatten().filter_map(|entry| file_seq(&entry.path()).map(|(seq, sent)| (seq, sent, entry.path()))).collect()
            })
            .unwrap_or_default();
        entries.sort();
        entries
    }

    fn path(&self, seq: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}.{suffix}"))
    }

    /// Writes a window as the next sequence number (write, fsync, rename).
    fn persist(&self, next_seq: &mut u64, dropped: &mut u64, closed: ClosedWindow) -> std::io::Result<()> {
        let mut entries = self.entries();
        while entries.len() >= self.max_windows {
            let (_, _, oldest) = entries.remove(0);
            fs::remove_file(&oldest)?;
            *dropped += 1;
        }
        let report = DriftWindowReport {
            device_id: self.device_id.clone(),
            model: closed.model,
            version: closed.version,
            seq: *next_seq,
            dropped_before: std::mem::take(dropped),
            window: closed.window,
        };
        let payload = protocol::encode(&Telemetry::Drift(report));
        let temporary = self.dir.join("incoming.tmp");
        {
            use std::io::Write;
            let mut file = fs::File::create(&temporary)?;
            file.write_all(&payload)?;
            file.sync_all()?;
        }
        fs::rename(&temporary, self.path(*next_seq, PENDING_SUFFIX))?;
        *next_seq += 1;
        Ok(())
    }

    /// Sends every pending window in order, marking each sent.
    async fn flush(&self) {
        let topic = self.topics.telemetry(&self.device_id);
        for (seq, sent, path) in self.entries() {
            if sent {
                continue;
            }
            if !*self.link.connection().borrow() {
                return;
            }
            let Ok(payload) = fs::read(&path) else { continue };
            self.link.publish(topic.clone(), false, payload).await;
            let _ = fs::rename(&path, self.path(seq, SENT_SUFFIX));
        }
    }

    /// Marks every sent window pending again (after a reconnect or a restart).
    fn resend_sent(&self) {
        for (seq, sent, path) in self.entries() {
            if sent {
                let _ = fs::rename(&path, self.path(seq, PENDING_SUFFIX));
            }
        }
    }

    /// Forgets windows sent long enough ago over a connection that stayed up.
    fn prune_sent(&self, connected_since: tokio::time::Instant) {
        if connected_since.elapsed() < SENT_KEEP {
            return;
        }
        let now = std::time::SystemTime::now();
        for (_, sent, path) in self.entries() {
            let old = fs::metadata(&path)
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() >= SENT_KEEP);
            if sent && old {
                let _ = fs::remove_file(&path);
            }
        }
    }

    #[tracing::instrument(name = "drift_outbox", skip_all, fields(device_id = %self.device_id))]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let _ = fs::remove_file(self.dir.join("incoming.tmp"));
        let mut next_seq = self.entries().last().map(|(seq, _, _)| seq + 1).unwrap_or_else(|| read_seq(&self.dir));
        // Anything sent before a restart may not have reached the broker.
        self.resend_sent();
        let mut dropped = 0u64;
        let mut connection = self.link.connection();
        let mut connected_since = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: mpsc::Receiver::recv.
                closed = self.receiver.recv() => {
                    let Some(closed) = closed else { break };
                    if let Err(error) = self.persist(&mut next_seq, &mut dropped, closed) {
                        tracing::error!(%error, "could not keep a drift window on disk");
                    }
                    write_seq(&self.dir, next_seq);
                }
                changed = connection.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if *connection.borrow_and_update() {
                        connected_since = tokio::time::Instant::now();
                        self.resend_sent();
                    }
                }
                _ = tick.tick() => {
                    self.host.close_due_drift_windows(now_ms());
                    self.prune_sent(connected_since);
                }
            }
            self.flush().await;
        }
        // Close what is open so a restart does not lose it.
        self.host.close_all_drift_windows(now_ms());
        while let Ok(closed) = self.receiver.try_recv() {
            let _ = self.persist(&mut next_seq, &mut dropped, closed);
        }
        write_seq(&self.dir, next_seq);
        Ok(())
    }
}

/// The next sequence number survives an empty outbox in a small file.
fn read_seq(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("next_seq")).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

fn write_seq(dir: &Path, next_seq: u64) {
    let _ = fs::write(dir.join("next_seq"), next_seq.to_string());
}
