//! Black-box tests of the real binaries: one test binary, one module per area.

#![allow(clippy::unwrap_used)]

mod access;
mod api_snapshot;
mod bad_input;
mod demo;
mod drift;
mod experiments;
mod hostile_input;
mod limits;
mod mlflow;
mod models;
mod rollouts;
mod spine;
mod transfer;
