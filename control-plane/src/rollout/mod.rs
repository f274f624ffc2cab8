//! Staged rollouts: the policy document (`policy`), wave planning (`plan`), health gates
//! (`gates`, pure), the operations an operator or a promotion starts (`actions`: start, pause,
//! resume, abort, roll back, status), and the controller that drives running rollouts through
//! desired state (`controller`). The states of a rollout and of its devices are below; they
//! become text only at the store edge and in the HTTP views.

pub mod actions;
pub mod controller;
pub mod gates;
pub mod plan;
pub mod policy;

/// Where a staged rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    Aborted,
    RolledBack,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] =
        [RolloutState::Running, RolloutState::Paused, RolloutState::Completed, RolloutState::Aborted, RolloutState::RolledBack];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        RolloutState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Running or paused: it still owns its model (one such rollout per model at a time).
    pub fn is_open(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// Where one device is in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Its wave has not come yet.
    Pending,
    Downloading,
    Installing,
    /// Told, but not connected: it installs when it returns, or fails at the device timeout.
    Offline,
    Healthy,
    Failed,
    RolledBack,
}

impl MemberState {
    /// In lifecycle order.
    pub const ALL: [MemberState; 7] = [
        MemberState::Pending,
        MemberState::Downloading,
        MemberState::Installing,
        MemberState::Offline,
        MemberState::Healthy,
        MemberState::Failed,
        MemberState::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Pending => "pending",
            MemberState::Downloading => "downloading",
            MemberState::Installing => "installing",
            MemberState::Offline => "offline",
            MemberState::Healthy => "healthy",
            MemberState::Failed => "failed",
            MemberState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        MemberState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Told and not settled yet.
    pub fn in_flight(self) -> bool {
        matches!(self, MemberState::Downloading | MemberState::Installing | MemberState::Offline)
    }

    /// Installing or downloading: counts against a wave's `max_concurrent`.
    pub fn is_moving(self) -> bool {
        matches!(self, MemberState::Downloading | MemberState::Installing)
    }

    /// Done with its wave: healthy, failed, or offline (an offline device does not hold a
    /// wave; it counts against the offline gate).
    pub fn lets_wave_end(self) -> bool {
        matches!(self, MemberState::Healthy | MemberState::Failed | MemberState::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_back_from_their_names() {
        for state in RolloutState::ALL {
            assert_eq!(RolloutState::parse(state.as_str()), Some(state));
        }
        for state in MemberState::ALL {
            assert_eq!(MemberState::parse(state.as_str()), Some(state));
        }
        assert_eq!(RolloutState::parse("Running"), None);
        assert_eq!(MemberState::parse(""), None);
    }
}
