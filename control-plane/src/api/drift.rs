//! Drift over REST: upload a reference profile (content-addressed, validated), read a
//! version's profile, judge a version's drift over a range and cohort (optionally as a time
//! series), and list drift events.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetml_shared::drift::profile::Profile;
use fleetml_shared::selector::Selector;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::PlaneCore;
use crate::drift::{DriftEvent, DriftSlice, DriftView, judge, parse_duration_ms};
use crate::versions;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileView {
    pub sha256: String,
    pub rows: u64,
    pub features: Vec<String>,
    pub window_seconds: u64,
    pub window_samples: u64,
}

fn describe(sha256: String, profile: &Profile) -> ProfileView {
    let window = profile.window();
    ProfileView {
        sha256,
        rows: profile.rows(),
        features: profile.features().iter().map(|feature| feature.name.clone()).collect(),
        window_seconds: window.seconds,
        window_samples: window.samples,
    }
}

/// `POST /api/v1/profiles`: the body is a profile container (JSON); answers its SHA-256, which
/// `POST /api/v1/models/NAME/versions?profile=SHA256` attaches to the bundle.
pub async fn upload_profile(State(core): State<Arc<PlaneCore>>, body: Bytes) -> Result<(StatusCode, Json<ProfileView>), ApiError> {
    let profile = Profile::from_json(&body).map_err(|error| ApiError::BadRequest(format!("profile refused: {error}")))?;
    let sha256 = hex::encode(fleetml_shared::bundle::sha256(&body));
    core.store.put_profile(&sha256, &body, fleetml_shared::now_ms() as i64).await?;
    Ok((StatusCode::CREATED, Json(describe(sha256, &profile))))
}

/// `GET /api/v1/models/NAME/versions/V/profile`: the profile the version's bundle carries.
pub async fn version_profile(State(core): State<Arc<PlaneCore>>, Path((name, version)): Path<(String, i64)>) -> Result<Response, ApiError> {
    let (_, body) =
        core.store.version_profile(&name, version).await?.ok_or_else(|| ApiError::NotFound(format!("{name}@{version} has no profile")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
pub struct DriftQuery {
    /// A label selector: only devices that match.
    #[serde(default)]
    pub cohort: Option<String>,
    /// How far back: `1h` (default), `30m`, `90s`, `2d`.
    #[serde(default)]
    pub window: Option<String>,
    /// The range's end in ms since the epoch (default: now).
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// With a step (`5m`), the view carries a series judged per step.
    #[serde(default)]
    pub step: Option<String>,
}

/// `GET /api/v1/models/NAME/versions/V/drift`.
pub async fn version_drift(
    State(core): State<Arc<PlaneCore>>,
    Path((name, reference)): Path<(String, String)>,
    Query(query): Query<DriftQuery>,
) -> Result<Json<DriftView>, ApiError> {
    // A version number or an alias.
    let version = versions::resolve(&core, &name, &reference).await?;
    let window = query.window.unwrap_or_else(|| "1h".into());
    let window_ms =
        parse_duration_ms(&window).ok_or_else(|| ApiError::BadRequest(format!("window `{window}`: expected e.g. 1h, 30m, 90s")))?;
    let step_ms = match &query.step {
        Some(step) => Some(parse_duration_ms(step).ok_or_else(|| ApiError::BadRequest(format!("step `{step}`: expected e.g. 5m")))?),
        None => None,
    };
    if step_ms.is_some_and(|step| window_ms / step > 1_000) {
        return Err(ApiError::BadRequest("at most 1,000 steps per query".into()));
    }
    let cohort = query
        .cohort
        .as_deref()
        .filter(|cohort| !cohort.trim().is_empty())
        .map(Selector::parse)
        .transpose()
        .map_err(|error| ApiError::BadRequest(format!("cohort: {error}")))?;
    let until_ms = query.until_ms.unwrap_or_else(|| fleetml_shared::now_ms() as i64 + 1);
    let slice = DriftSlice { cohort, devices: None, since_ms: until_ms.saturating_sub(window_ms), until_ms };
    Ok(Json(judge(&core, &name, version, &slice, &window, step_ms).await?))
}

/// `GET /api/v1/models/NAME/drift/events`.
pub async fn drift_events(State(core): State<Arc<PlaneCore>>, Path(name): Path<String>) -> Result<Json<Vec<DriftEvent>>, ApiError> {
    let records = core.store.drift_events(&name, None).await?;
    let events = records
        .iter()
        .filter_map(|record| serde_json::from_str::<DriftEvent>(&record.detail).ok().map(|event| DriftEvent { id: record.id, ..event }))
        .collect();
    Ok(Json(events))
}
