//! Rollouts over REST: start (with a policy document), list, status, pause, resume, abort,
//! roll back. The CLI (`fleetml rollout ...`) calls these; the rules are `rollout::actions`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::error::ApiError;
use super::views::{RolloutView, StartRollout};
use crate::PlaneCore;
use crate::access::Principal;
use crate::rollout::actions::{self, RolloutAction, RolloutError};
use crate::versions;

async fn view(core: &PlaneCore, rollout: crate::store::RolloutRecord) -> Result<RolloutView, ApiError> {
    Ok(RolloutView::from_status(actions::status(core, rollout).await?))
}

pub async fn start(
    State(core): State<Arc<PlaneCore>>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<StartRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let policy = actions::parse_policy(&request.policy)?;
    let version = versions::resolve_either(&core, &request.model, request.version, request.alias.as_deref())
        .await?
        .ok_or(RolloutError::VersionOrAlias)?;
    let rollout = actions::start(&core, &request.model, version, policy, &principal.name).await?;
    Ok((StatusCode::CREATED, Json(view(&core, rollout).await?)))
}

pub async fn list(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let mut views = Vec::new();
    for rollout in core.store.list_rollouts().await? {
        views.push(view(&core, rollout).await?);
    }
    Ok(Json(views))
}

pub async fn status(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(view(&core, actions::get(&core, id).await?).await?))
}

pub async fn action(State(core): State<Arc<PlaneCore>>, Path((id, action)): Path<(i64, String)>) -> Result<Json<RolloutView>, ApiError> {
    let action = RolloutAction::parse(&action)?;
    let rollout = actions::act(&core, id, action).await?;
    Ok(Json(view(&core, rollout).await?))
}
