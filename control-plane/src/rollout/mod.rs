//! Staged rollouts (in progress): the policy document, wave planning, health gates and the
//! stable A/B assignment. These are the pure, unit-tested parts; the controller that drives
//! waves through desired state is not written yet (see the open rollout issue).

pub mod assignment;
pub mod controller;
pub mod gates;
pub mod plan;
pub mod policy;
