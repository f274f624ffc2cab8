//! Fleet experiments beside the rollouts: A/B splits between versions (`split`), shadow
//! candidates that run beside the active version without answering (`shadow`), and the
//! stable hash that assigns devices to variants (`assignment`).

pub mod assignment;
pub mod shadow;
pub mod split;

use crate::rollout::actions::RolloutError;
use crate::store::StoreError;
use crate::versions::VersionError;

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("split {0}")]
    SplitNotFound(i64),
    #[error("a split needs at least two variants with positive weights")]
    TooFewVariants,
    #[error("{0}")]
    InvalidSelector(String),
    #[error("give the winning `version` or a `rule` to pick it, not both")]
    WinnerOrRule,
    #[error("version {version} is not a variant of split {split_id}")]
    NotAVariant { version: i64, split_id: i64 },
    /// No rule winner: too few variants with enough requests.
    #[error("{0}")]
    NoWinner(String),
    #[error("{0}")]
    ShadowCohort(String),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
