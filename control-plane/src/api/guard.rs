//! Every route is declared once, with what it asks of a token (`Access`), and wrapped in the
//! guard: it authenticates the bearer token (401 when missing, unknown, expired or revoked),
//! checks the token's role and scopes against the route (403), hands the `Principal` to the
//! handler, and writes every change (and every refused change) to the audit log with who,
//! what, when, from where and the outcome. `routes()` lists the declarations, so tests can
//! walk all of them and a route cannot be added without saying who may use it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use crate::PlaneCore;
use crate::access::{self, AccessError, Area, Need};
use crate::audit;

/// What a route asks of the token that calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token (health, the signing key, Prometheus).
    Public,
    /// Reads, for any valid token allowed in the area.
    Read,
    /// A change, recorded in the audit log under `action`.
    Change { need: Need, action: &'static str },
}

/// Which error shape a refusal takes: the native API's or MLflow's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Native,
    Mlflow,
}

/// One route: method, path (as the router knows it), who may call it, and the handler.
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub area: Area,
    pub dialect: Dialect,
    pub handler: MethodRouter<Arc<PlaneCore>>,
}

/// The router for `specs`, each route wrapped in its guard.
pub fn build(core: &Arc<PlaneCore>, specs: Vec<RouteSpec>) -> Router<Arc<PlaneCore>> {
    let mut router = Router::new();
    for spec in specs {
        let guard = Guard { access: spec.access, area: spec.area.clone(), dialect: spec.dialect, core: core.clone() };
        let handler = spec.handler.layer(middleware::from_fn_with_state(Arc::new(guard), guard_request));
        router = router.route(spec.path, handler);
    }
    router
}

struct Guard {
    access: Access,
    area: Area,
    dialect: Dialect,
    core: Arc<PlaneCore>,
}

/// JSON bodies up to this size are kept as the audit entry's detail; larger ones are named.
const AUDITED_BODY_BYTES: usize = 16 * 1024;

fn bearer(request: &Request) -> Option<&str> {
    request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(|value| value.strip_prefix("Bearer "))
}

fn refusal(dialect: Dialect, error: &AccessError) -> Response {
    let (status, native_code, mlflow_code) = match error {
        AccessError::Unauthenticated | AccessError::Expired(_) | AccessError::Revoked(_) => {
            (StatusCode::UNAUTHORIZED, "unauthorized", "UNAUTHENTICATED")
        }
        AccessError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", "PERMISSION_DENIED"),
        AccessError::Invalid(_) | AccessError::NotFound(_) => (StatusCode::BAD_REQUEST, "bad_request", "INVALID_PARAMETER_VALUE"),
        AccessError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "INTERNAL_ERROR"),
    };
    let message = match error {
        AccessError::Store(store_error) => {
            tracing::error!(error = %store_error, "checking a token failed");
            "internal error; see the plane's log".to_string()
        }
        AccessError::Unauthenticated if dialect == Dialect::Mlflow => "missing or invalid bearer token (set MLFLOW_TRACKING_TOKEN)".into(),
        other => other.to_string(),
    };
    let body = match dialect {
        Dialect::Native => serde_json::json!({ "error": native_code, "message": message }),
        Dialect::Mlflow => serde_json::json!({ "error_code": mlflow_code, "message": message }),
    };
    (status, axum::Json(body)).into_response()
}

/// What an audit entry says the request asked: its JSON body when small, else its query.
fn detail_of(body: &[u8], query: Option<&str>) -> String {
    let mut value = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value,
        Err(_) if body.is_empty() => serde_json::json!({}),
        Err(_) => serde_json::json!({ "body_bytes": body.len() }),
    };
    if let Some(object) = value.as_object_mut() {
        // Never keep a credential in the log.
        for key in ["token", "password", "secret"] {
            if object.contains_key(key) {
                object.insert(key.into(), serde_json::json!("<redacted>"));
            }
        }
        if let Some(query) = query {
            object.insert("query".into(), serde_json::json!(query));
        }
    }
    value.to_string()
}

async fn guard_request(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let (need, action) = match guard.access {
        Access::Public => return next.run(request).await,
        Access::Read => (Need::Read, None),
        Access::Change { need, action } => (need, Some(action)),
    };
    let core = &guard.core;
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip().to_string())
        .unwrap_or_else(|| "-".into());
    let target = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let principal = match access::authenticate(core, bearer(&request)).await {
        Ok(principal) => principal,
        Err(error) => {
            if let Some(action) = action {
                let reason = error.to_string();
                audit::refused(core, None, "-", &address, action, &target, &reason, StatusCode::UNAUTHORIZED).await;
            }
            return refusal(guard.dialect, &error);
        }
    };
    let what = action.map(|action| format!("{action} ({} {target})", request.method())).unwrap_or_else(|| format!("read {target}"));
    if let Err(error) = principal.allows(&guard.area, need, &what) {
        if let Some(action) = action {
            let reason = error.to_string();
            audit::refused(core, Some(principal.token_id), &principal.name, &address, action, &target, &reason, StatusCode::FORBIDDEN)
                .await;
        }
        return refusal(guard.dialect, &error);
    }
    audit::token_used(core, &principal).await;
    let Some(action) = action else {
        request.extensions_mut().insert(principal);
        return next.run(request).await;
    };
    // A change: keep a small JSON body for the log, and pass it on unchanged.
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|content_type| content_type.starts_with("application/json"));
    let small = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|length| length.parse::<usize>().ok())
        .is_some_and(|length| length <= AUDITED_BODY_BYTES);
    let detail = if is_json && small {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, AUDITED_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(error) => return (StatusCode::BAD_REQUEST, format!("reading the request body: {error}")).into_response(),
        };
        let detail = detail_of(&bytes, query.as_deref());
        request = Request::from_parts(parts, Body::from(bytes));
        detail
    } else {
        detail_of(&[], query.as_deref())
    };
    let (token_id, token_name) = (principal.token_id, principal.name.clone());
    request.extensions_mut().insert(principal);
    let response = next.run(request).await;
    audit::answered(core, Some(token_id), &token_name, &address, action, &target, &detail, response.status()).await;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_detail_keeps_parameters_and_drops_credentials() {
        let detail = detail_of(br#"{"model":"m","token":"fml_secret"}"#, Some("a=1"));
        let value: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(value["model"], "m");
        assert_eq!(value["token"], "<redacted>");
        assert_eq!(value["query"], "a=1");
        assert!(!detail.contains("fml_secret"));
        assert_eq!(detail_of(b"\x00\x01binary", None), r#"{"body_bytes":8}"#);
    }
}
