//! The drift outbox: closed windows kept on disk in `{state}/drift-outbox/` until the broker
//! has them, sent in order while the link is up and resent after a reconnect.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetml_shared::now_ms;
use fleetml_shared::protocol::{self, DriftWindowReport, Telemetry};
use fleetml_shared::topics::Topics;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::ClosedWindow;
use crate::host::ModelHost;
use crate::link::LinkHandle;

/// How long a sent window is kept to be sent again if the connection drops before the broker
/// has it (QoS 1 acknowledgements are not tracked per message).
const SENT_KEEP: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(250);
const PENDING_SUFFIX: &str = "win";
const SENT_SUFFIX: &str = "sent";

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
            let mut file = crate::storage::create_private_file(&temporary).map_err(|error| error.source)?;
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
        crate::storage::create_private_dir_all(&self.dir)?;
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
    let _ = crate::storage::create_private_file(&dir.join("next_seq")).and_then(|mut file| {
        std::io::Write::write_all(&mut file, next_seq.to_string().as_bytes()).map_err(crate::storage::io_error("writing", dir))
    });
}
