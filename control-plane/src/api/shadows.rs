//! Shadow experiments over REST: put a candidate version beside the active one on a cohort
//! (it runs on live requests and never answers), read its agreement and latency, stop it.
//! The rules are `experiments::shadow`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::error::ApiError;
use super::views::{ShadowQuery, ShadowView, StartShadow, StopShadow};
use crate::PlaneCore;
use crate::experiments::shadow;

pub async fn start(
    State(core): State<Arc<PlaneCore>>,
    Json(request): Json<StartShadow>,
) -> Result<(StatusCode, Json<ShadowView>), ApiError> {
    let status = shadow::start(&core, &request.model, request.version, request.selector.as_deref(), &request.devices).await?;
    Ok((StatusCode::CREATED, Json(ShadowView::from_status(status))))
}

pub async fn stop(
    State(core): State<Arc<PlaneCore>>,
    Path(model): Path<String>,
    body: Option<Json<StopShadow>>,
) -> Result<Json<ShadowView>, ApiError> {
    let request = body.map(|Json(body)| body).unwrap_or_default();
    let status = shadow::stop(&core, &model, request.selector.as_deref(), &request.devices).await?;
    Ok(Json(ShadowView::from_status(status)))
}

pub async fn status(
    State(core): State<Arc<PlaneCore>>,
    Path(model): Path<String>,
    Query(query): Query<ShadowQuery>,
) -> Result<Json<ShadowView>, ApiError> {
    Ok(Json(ShadowView::from_status(shadow::status(&core, &model, query.since_ms).await?)))
}
