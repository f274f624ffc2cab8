//! Tokens and the audit log over REST: who am I, create, list, revoke, rotate the bootstrap
//! admin token, and read the audit log. The rules are `access` and `audit`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::error::ApiError;
use super::views::{AuditEntryView, AuditQuery, CreateToken, IssuedTokenView, TokenView, WhoAmIView};
use crate::PlaneCore;
use crate::access::{self, AccessError, NewToken, Principal, Role};

pub async fn whoami(Extension(principal): Extension<Principal>) -> Json<WhoAmIView> {
    Json(WhoAmIView::from_principal(&principal))
}

pub async fn list(State(core): State<Arc<PlaneCore>>) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(core.store.list_tokens().await?.iter().map(TokenView::from_record).collect()))
}

pub async fn create(
    State(core): State<Arc<PlaneCore>>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<CreateToken>,
) -> Result<(StatusCode, Json<IssuedTokenView>), ApiError> {
    let role = Role::parse(&request.role)?;
    let scopes = request.scopes.iter().map(|scope| access::Scope::parse(scope)).collect::<Result<Vec<_>, _>>()?;
    let expires_ms = match request.expires_in.as_deref() {
        Some(text) => {
            let duration_ms = crate::drift::parse_duration_ms(text)
                .ok_or_else(|| AccessError::Invalid(format!("expires_in `{text}`: expected e.g. 30d, 12h, 90m")))?;
            Some((fleetml_shared::now_ms() as i64).saturating_add(duration_ms))
        }
        None => None,
    };
    let name = request.name.unwrap_or_else(|| format!("{}-token", role.as_str()));
    let issued = access::create(&core, NewToken { name, role, scopes, expires_ms }, &principal.name).await?;
    Ok((StatusCode::CREATED, Json(IssuedTokenView { token: issued.token, details: TokenView::from_record(&issued.record) })))
}

pub async fn revoke(State(core): State<Arc<PlaneCore>>, Path(id): Path<i64>) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(TokenView::from_record(&access::revoke(&core, id).await?)))
}

pub async fn rotate_admin(
    State(core): State<Arc<PlaneCore>>,
    Extension(principal): Extension<Principal>,
) -> Result<(StatusCode, Json<IssuedTokenView>), ApiError> {
    let issued = access::rotate_admin(&core, &principal.name).await?;
    Ok((StatusCode::CREATED, Json(IssuedTokenView { token: issued.token, details: TokenView::from_record(&issued.record) })))
}

pub async fn audit(State(core): State<Arc<PlaneCore>>, Query(query): Query<AuditQuery>) -> Result<Json<Vec<AuditEntryView>>, ApiError> {
    let since_ms = match query.since.as_deref() {
        Some(text) => {
            let back_ms = crate::drift::parse_duration_ms(text)
                .ok_or_else(|| ApiError::BadRequest(format!("since `{text}`: expected e.g. 1h, 30m, 7d")))?;
            (fleetml_shared::now_ms() as i64).saturating_sub(back_ms)
        }
        None => query.since_ms.unwrap_or(0),
    };
    let limit = query.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(core.store.audit_since(since_ms, limit).await?.iter().map(AuditEntryView::from_record).collect()))
}
