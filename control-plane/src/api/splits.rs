//! A/B splits over REST: start, status, list, promote the winner into a staged rollout, stop.
//! The rules are `experiments::split`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::error::ApiError;
use super::views::{Promote, RolloutView, SplitView, StartSplit};
use crate::PlaneCore;
use crate::access::Principal;
use crate::experiments::ExperimentError;
use crate::experiments::split::{self, SplitVariant, Winner};
use crate::rollout::actions;

pub async fn start(State(core): State<Arc<PlaneCore>>, Json(request): Json<StartSplit>) -> Result<(StatusCode, Json<SplitView>), ApiError> {
    let variants = request.variants.iter().map(|variant| SplitVariant { version: variant.version, weight: variant.weight }).collect();
    let status = split::start(&core, &request.model, &request.selector, variants).await?;
    Ok((StatusCode::CREATED, Json(SplitView::from_status(status))))
}

pub async fn status(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<SplitView>, ApiError> {
    Ok(Json(SplitView::from_status(split::status(&core, id).await?)))
}

pub async fn list(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<SplitView>>, ApiError> {
    Ok(Json(split::list(&core).await?.into_iter().map(SplitView::from_status).collect()))
}

/// Promotes the winner: a staged rollout of its version to the split's cohort.
pub async fn promote(
    State(core): State<Arc<PlaneCore>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<i64>,
    Json(request): Json<Promote>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let winner = match (request.version, request.rule) {
        (Some(version), None) => Winner::Version(version),
        (None, Some(rule)) => Winner::Rule { rule: rule.into(), min_requests: request.min_requests.unwrap_or(100) },
        _ => return Err(ExperimentError::WinnerOrRule.into()),
    };
    let policy = request.policy.as_ref().map(actions::parse_policy).transpose().map_err(ExperimentError::from)?;
    let rollout = split::promote(&core, id, winner, policy, &principal.name).await?;
    Ok((StatusCode::CREATED, Json(RolloutView::from_status(actions::status(&core, rollout).await?))))
}

/// Ends a split without a winner: its devices keep their variants, later devices get none.
pub async fn stop(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<SplitView>, ApiError> {
    Ok(Json(SplitView::from_status(split::stop(&core, id).await?)))
}
