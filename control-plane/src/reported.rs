//! A device's reported state as the plane keeps it: one typed `ReportedSlot` per model slot,
//! decoded from the wire report (`protocol::SlotReport`). The deployment and rollout
//! controllers, the experiments and the API read these; the store keeps them as JSON
//! (`store::slots`), and the HTTP views are made from them (`api::views::SlotView`), so a
//! field renamed for API clients cannot change a controller's decision.

use fleetml_shared::protocol::{FailureKind, InstallResult, SlotPhase, SlotReport};

/// What a device last said about one of its model slots (`m`, or `m@shadow`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReportedSlot {
    pub model: String,
    /// The generation of the last desired state the device accepted.
    pub generation: u64,
    pub phase: ReportedPhase,
    pub active_version: Option<u64>,
    pub previous_version: Option<u64>,
    /// The version being fetched or installed.
    pub target_version: Option<u64>,
    pub last_result: Option<LastInstall>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportedPhase {
    Idle,
    /// `attempts`: fetch requests sent for this transfer (more than one: it stalled and was
    /// retried); unknown for reports stored before the agents counted them.
    Fetching {
        received_bytes: Option<u64>,
        total_bytes: Option<u64>,
        attempts: Option<u32>,
    },
    Verifying,
    Installing,
    Active,
    Failed,
}

impl ReportedPhase {
    /// Bytes received, bytes in all and fetch attempts, while fetching.
    pub fn transfer_progress(self) -> (Option<u64>, Option<u64>, Option<u32>) {
        match self {
            ReportedPhase::Fetching { received_bytes, total_bytes, attempts } => (received_bytes, total_bytes, attempts),
            ReportedPhase::Idle | ReportedPhase::Verifying | ReportedPhase::Installing | ReportedPhase::Active | ReportedPhase::Failed => {
                (None, None, None)
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportedPhase::Idle => "idle",
            ReportedPhase::Fetching { .. } => "fetching",
            ReportedPhase::Verifying => "verifying",
            ReportedPhase::Installing => "installing",
            ReportedPhase::Active => "active",
            ReportedPhase::Failed => "failed",
        }
    }
}

/// The outcome of the last install the device attempted in a slot.
#[derive(Clone, Debug, PartialEq)]
pub struct LastInstall {
    pub version: u64,
    pub generation: u64,
    pub at_ms: u64,
    pub verdict: InstallVerdict,
}

#[derive(Clone, Debug, PartialEq)]
pub enum InstallVerdict {
    Installed { self_test_ms: Option<f32> },
    Refused { kind: FailureKind, reason: String },
}

impl LastInstall {
    /// Whether it installed, the refusal's kind and reason, and the self-test's duration.
    pub fn parts(&self) -> (bool, Option<&'static str>, Option<&str>, Option<f32>) {
        match &self.verdict {
            InstallVerdict::Installed { self_test_ms } => (true, None, None, *self_test_ms),
            InstallVerdict::Refused { kind, reason } => (false, Some(kind.as_str()), Some(reason), None),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.verdict, InstallVerdict::Installed { .. })
    }

    /// The refusal's kind and reason, when the install was refused.
    pub fn refusal(&self) -> Option<(FailureKind, &str)> {
        match &self.verdict {
            InstallVerdict::Installed { .. } => None,
            InstallVerdict::Refused { kind, reason } => Some((*kind, reason)),
        }
    }
}

impl ReportedSlot {
    pub fn from_report(report: &SlotReport) -> Self {
        let phase = match &report.phase {
            SlotPhase::Idle => ReportedPhase::Idle,
            SlotPhase::Fetching { received_bytes, total_bytes, attempts } => ReportedPhase::Fetching {
                received_bytes: Some(*received_bytes),
                total_bytes: Some(*total_bytes),
                attempts: Some(*attempts),
            },
            SlotPhase::Verifying => ReportedPhase::Verifying,
            SlotPhase::Installing => ReportedPhase::Installing,
            SlotPhase::Active => ReportedPhase::Active,
            SlotPhase::Failed { .. } => ReportedPhase::Failed,
        };
        ReportedSlot {
            model: report.model.clone(),
            generation: report.generation,
            phase,
            active_version: report.active.map(|installed| installed.version),
            previous_version: report.previous.map(|installed| installed.version),
            target_version: report.target.map(|installed| installed.version),
            last_result: report.last_result.as_ref().map(|outcome| LastInstall {
                version: outcome.version,
                generation: outcome.generation,
                at_ms: outcome.at_ms,
                verdict: match &outcome.result {
                    InstallResult::Installed { self_test_ms } => InstallVerdict::Installed { self_test_ms: Some(*self_test_ms) },
                    InstallResult::Refused { kind, reason } => InstallVerdict::Refused { kind: *kind, reason: reason.clone() },
                },
            }),
        }
    }

    /// Whether the slot serves `version` now.
    pub fn runs(&self, version: u64) -> bool {
        self.active_version == Some(version)
    }

    /// The refusal of `version`, if the device's last install in this slot refused it.
    pub fn refused(&self, version: u64) -> Option<(FailureKind, &str)> {
        self.last_result.as_ref().filter(|result| result.version == version).and_then(LastInstall::refusal)
    }
}

/// The slot for `slot_key` among a device's reported slots.
pub fn slot<'a>(slots: &'a [ReportedSlot], slot_key: &str) -> Option<&'a ReportedSlot> {
    slots.iter().find(|slot| slot.model == slot_key)
}
