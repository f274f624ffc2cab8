//! Drift on the device: a tap per active model version that has a reference profile feeds
//! every answered request's inputs and outputs into a `WindowAccumulator`, and closes a
//! window every N seconds or M samples; the outbox keeps closed windows on disk (bounded)
//! and sends them when the broker is connected, resending the recently sent ones after a
//! reconnect. The plane keeps one copy per (device, model, version, seq), so a window is
//! counted once however often it travels.

use std::collections::BTreeMap;
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

/// Where a kept window stands. Invariant: the file `{seq}.win` exists for `Pending` and
/// `{seq}.sent` for `Sent`; the index is read from the folder once, at start.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kept {
    Pending,
    /// Handed to the link at this instant, not yet known to have reached the broker.
    Sent(tokio::time::Instant),
}

fn file_seq(path: &Path) -> Option<(u64, bool)> {
    let name = path.file_name()?.to_str()?;
    let (seq, suffix) = name.split_once('.')?;
    Some((seq.parse().ok()?, suffix == SENT_SUFFIX))
}

impl DriftOutbox {
    fn path(&self, seq: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}.{suffix}"))
    }

    /// The windows on disk after a restart, all pending again: anything sent before the
    /// restart may not have reached the broker.
    fn load(&self) -> BTreeMap<u64, Kept> {
        let mut kept = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let Some((seq, sent)) = file_seq(&entry.path()) else { continue };
            if sent {
                let _ = fs::rename(entry.path(), self.path(seq, PENDING_SUFFIX));
            }
            kept.insert(seq, Kept::Pending);
        }
        kept
    }

    /// Writes a window as the next sequence number (write, fsync, rename), dropping the
    /// oldest kept windows beyond the bound.
    fn persist(&self, kept: &mut BTreeMap<u64, Kept>, next_seq: &mut u64, dropped: &mut u64, closed: ClosedWindow) -> std::io::Result<()> {
        while kept.len() >= self.max_windows {
            let Some((seq, state)) = kept.pop_first() else { break };
            let suffix = if state == Kept::Pending { PENDING_SUFFIX } else { SENT_SUFFIX };
            fs::remove_file(self.path(seq, suffix))?;
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
        kept.insert(*next_seq, Kept::Pending);
        *next_seq += 1;
        write_seq(&self.dir, *next_seq);
        Ok(())
    }

    /// Sends every pending window in order while the broker is connected, marking each sent.
    async fn flush(&self, kept: &mut BTreeMap<u64, Kept>) {
        let topic = self.topics.telemetry(&self.device_id);
        let pending: Vec<u64> = kept.iter().filter(|(_, state)| **state == Kept::Pending).map(|(seq, _)| *seq).collect();
        for seq in pending {
            if !*self.link.connection().borrow() {
                return;
            }
            let Ok(payload) = fs::read(self.path(seq, PENDING_SUFFIX)) else {
                kept.remove(&seq);
                continue;
            };
            self.link.publish(topic.clone(), false, payload).await;
            if fs::rename(self.path(seq, PENDING_SUFFIX), self.path(seq, SENT_SUFFIX)).is_ok() {
                kept.insert(seq, Kept::Sent(tokio::time::Instant::now()));
            }
        }
    }

    /// Marks every sent window pending again (after a reconnect).
    fn resend_sent(&self, kept: &mut BTreeMap<u64, Kept>) {
        for (seq, state) in kept.iter_mut() {
            if matches!(state, Kept::Sent(_)) && fs::rename(self.path(*seq, SENT_SUFFIX), self.path(*seq, PENDING_SUFFIX)).is_ok() {
                *state = Kept::Pending;
            }
        }
    }

    /// Forgets windows sent `SENT_KEEP` ago over the connection that is still up.
    fn prune_sent(&self, kept: &mut BTreeMap<u64, Kept>) {
        if !*self.link.connection().borrow() {
            return;
        }
        let old: Vec<u64> =
            kept.iter().filter(|(_, state)| matches!(state, Kept::Sent(at) if at.elapsed() >= SENT_KEEP)).map(|(seq, _)| *seq).collect();
        for seq in old {
            let _ = fs::remove_file(self.path(seq, SENT_SUFFIX));
            kept.remove(&seq);
        }
    }

    #[tracing::instrument(name = "drift_outbox", skip_all, fields(device_id = %self.device_id))]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let _ = fs::remove_file(self.dir.join("incoming.tmp"));
        let mut kept = self.load();
        let mut next_seq = kept.last_key_value().map(|(seq, _)| seq + 1).unwrap_or(0).max(read_seq(&self.dir));
        let mut dropped = 0u64;
        let mut connection = self.link.connection();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: mpsc::Receiver::recv.
                closed = self.receiver.recv() => {
                    let Some(closed) = closed else { break };
                    if let Err(error) = self.persist(&mut kept, &mut next_seq, &mut dropped, closed) {
                        tracing::error!(%error, "could not keep a drift window on disk");
                    }
                }
                changed = connection.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Sent windows whose acknowledgement may have been lost with the connection
                    // go again; the plane keeps one copy per sequence number.
                    if *connection.borrow_and_update() {
                        self.resend_sent(&mut kept);
                    }
                }
                _ = tick.tick() => {
                    self.host.close_due_drift_windows(now_ms());
                    self.prune_sent(&mut kept);
                }
            }
            self.flush(&mut kept).await;
        }
        // Close what is open so a restart does not lose it.
        self.host.close_all_drift_windows(now_ms());
        while let Ok(closed) = self.receiver.try_recv() {
            let _ = self.persist(&mut kept, &mut next_seq, &mut dropped, closed);
        }
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
