//! Drift monitoring, the pure part shared by the agent and the plane: the reference profile of
//! the training data (`profile`), the per-window summaries a device sends and their merge on the
//! plane (`window`), and the drift metrics and decisions computed from them (`metrics`).
//!
//! Flow: a profile is built once from the training data (in Rust with `Profile::build` or in
//! Python with `examples/make_profile.py`) and shipped with the bundle. A device feeds every
//! inference's tensors to a `WindowAccumulator` and periodically `take`s a `DriftWindow`
//! (mergeable sketches: KLL quantiles, exact counts in the profile's bins, moments, category
//! counts). The plane merges the windows of a fleet slice into a `MergedWindow` and calls
//! `metrics::evaluate`, which compares it with the profile. The container and the window
//! message are documented in `docs/drift.md`.
//!
//! Invariant: nothing here does I/O or depends on a runtime; every input that crosses a trust
//! boundary (a profile file, a device's window) is validated before it can change any state.

use thiserror::Error;

pub mod metrics;
pub mod moments;
pub mod profile;
pub mod window;

mod kll_view;

/// The KLL sketch of every numeric feature: f32 items, Apache DataSketches compact format.
pub type FloatKll = datasketches::kll::KllSketch<datasketches::kll::KllFloat<f32>>;

/// Every way building, loading or merging drift data can fail. Messages name the feature (or
/// column) and what is wrong, since they end up in front of whoever wrote the profile.
#[derive(Debug, Error)]
pub enum DriftError {
    #[error("profile is not valid JSON: {0}")]
    ProfileJson(#[from] serde_json::Error),
    #[error("profile: {0}")]
    Profile(String),
    #[error("profile feature `{feature}`: {reason}")]
    ProfileFeature { feature: String, reason: String },
    #[error("reference column `{column}`: {reason}")]
    Column { column: String, reason: String },
    #[error("observe on tensor `{tensor}`: {reason}")]
    Observe { tensor: String, reason: String },
    #[error("window: {0}")]
    Window(String),
    #[error("window feature `{feature}`: {reason}")]
    WindowFeature { feature: String, reason: String },
}

/// Which side of the model a tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Input,
    Output,
}
