//! The error paths of the rollout, split, shadow and MLflow handlers through the router, with
//! no socket: each refusal answers the status and the words a client branches on, and leaves
//! the previous state as it was.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::PlaneCore;
use crate::demo::classifier::Classifier;
use crate::reported::{ReportedPhase, ReportedSlot};
use crate::store::ReportedUpdate;
use crate::versions::{self, PushOptions};

const TOKEN: &str = "route-test-token";

struct Fixture {
    _dir: tempfile::TempDir,
    core: Arc<PlaneCore>,
}

/// A plane with `classifier` v1 and v2 (deployable), v3 without a bundle, and two devices
/// labelled `fleet=t` that run v1.
async fn fixture() -> Fixture {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let dir = tempfile::tempdir().unwrap();
    let core = crate::testing::core(dir.path()).await;
    let token = crate::store::TokenRecord {
        id: 0,
        token_sha256: crate::keys::token_hash(TOKEN),
        name: "test".into(),
        role: "admin".into(),
        scopes: String::new(),
        bootstrap: true,
        created_ms: 1,
        created_by: "test".into(),
        expires_ms: None,
        revoked_ms: None,
        last_used_ms: None,
    };
    core.store.insert_token(&token).await.unwrap();
    for seed in [1, 2] {
        let onnx = Classifier::random(4, 0, seed).to_onnx("t");
        versions::push(&core, "classifier", versions::Onnx::Bytes(onnx), PushOptions::default()).await.unwrap();
    }
    versions::register_without_bundle(&core, "classifier", PushOptions::default()).await.unwrap();
    for device_id in ["d1", "d2"] {
        let slot = ReportedSlot {
            model: "classifier".into(),
            generation: 1,
            phase: ReportedPhase::Active,
            active_version: Some(1),
            previous_version: None,
            target_version: None,
            last_result: None,
        };
        let update = ReportedUpdate {
            device_id: device_id.into(),
            labels: [("fleet".to_string(), "t".to_string())].into_iter().collect(),
            agent_version: "test".into(),
            slots: vec![slot],
            last_refusal: None,
            at_ms: 1,
        };
        core.store.apply_reported(&update).await.unwrap();
    }
    Fixture { _dir: dir, core }
}

async fn call(core: &Arc<PlaneCore>, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_as(core, method, uri, body, Some(TOKEN)).await
}

async fn call_as(core: &Arc<PlaneCore>, method: Method, uri: &str, body: Option<Value>, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = crate::api::router(core.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[track_caller]
fn refused(answer: (StatusCode, Value), status: StatusCode, message: &str) {
    let (got_status, body) = answer;
    assert_eq!(got_status, status, "{body}");
    let text = body["message"].as_str().unwrap_or_default();
    assert!(text.contains(message), "`{text}` does not say `{message}`");
}

fn policy() -> Value {
    json!({ "target": { "selector": "fleet=t" }, "waves": [{ "size": 1 }, { "size": "100%" }] })
}

#[tokio::test]
async fn rollout_requests_that_cannot_be_met_are_refused_with_the_reason() {
    let Fixture { core, _dir } = fixture().await;
    let start = |body: Value| call(&core, Method::POST, "/api/v1/rollouts", Some(body));
    refused(
        start(json!({ "model": "classifier", "version": 2, "policy": "waves = 3" })).await,
        StatusCode::BAD_REQUEST,
        "invalid rollout policy",
    );
    refused(start(json!({ "model": "classifier", "version": 9, "policy": policy() })).await, StatusCode::NOT_FOUND, "classifier@9");
    refused(
        start(json!({ "model": "classifier", "alias": "champion", "policy": policy() })).await,
        StatusCode::NOT_FOUND,
        "no alias `champion`",
    );
    refused(
        start(json!({ "model": "classifier", "version": 2, "alias": "x", "policy": policy() })).await,
        StatusCode::BAD_REQUEST,
        "exactly one of `version` and `alias`",
    );
    refused(start(json!({ "model": "classifier", "version": 3, "policy": policy() })).await, StatusCode::BAD_REQUEST, "no signed bundle");
    let nobody = json!({ "target": { "selector": "fleet=none" }, "waves": [{ "size": "100%" }] });
    refused(
        start(json!({ "model": "classifier", "version": 2, "policy": nobody })).await,
        StatusCode::BAD_REQUEST,
        "matches no known device",
    );

    let (status, started) = start(json!({ "model": "classifier", "version": 2, "policy": policy() })).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!((started["state"].as_str(), started["n_waves"].as_u64()), (Some("running"), Some(2)));
    refused(
        start(json!({ "model": "classifier", "version": 1, "policy": policy() })).await,
        StatusCode::CONFLICT,
        "rollout 1 of classifier@2 is running",
    );
    refused(call(&core, Method::POST, "/api/v1/rollouts/1/jump", None).await, StatusCode::NOT_FOUND, "no rollout action `jump`");
    refused(call(&core, Method::POST, "/api/v1/rollouts/7/pause", None).await, StatusCode::NOT_FOUND, "rollout 7");
    refused(
        call(&core, Method::POST, "/api/v1/rollouts/1/resume", None).await,
        StatusCode::CONFLICT,
        "rollout 1 is running; cannot resume it",
    );

    let (status, paused) = call(&core, Method::POST, "/api/v1/rollouts/1/pause", None).await;
    assert_eq!((status, paused["state"].as_str()), (StatusCode::OK, Some("paused")));
    let (status, aborted) = call(&core, Method::POST, "/api/v1/rollouts/1/abort", None).await;
    assert_eq!((status, aborted["state"].as_str()), (StatusCode::OK, Some("aborted")));
    refused(
        call(&core, Method::POST, "/api/v1/rollouts/1/pause", None).await,
        StatusCode::CONFLICT,
        "rollout 1 is aborted; cannot pause it",
    );
    let events: Vec<&str> = aborted["events"].as_array().unwrap().iter().filter_map(|event| event["kind"].as_str()).collect();
    assert_eq!(events, ["started", "paused", "aborted"]);
}

#[tokio::test]
async fn split_requests_that_cannot_be_met_are_refused_with_the_reason() {
    let Fixture { core, _dir } = fixture().await;
    let start = |variants: Value, selector: &str| {
        call(&core, Method::POST, "/api/v1/splits", Some(json!({ "model": "classifier", "selector": selector, "variants": variants })))
    };
    let halves = json!([{ "version": 1, "weight": 0.5 }, { "version": 2, "weight": 0.5 }]);
    refused(start(json!([{ "version": 1, "weight": 1.0 }]), "").await, StatusCode::BAD_REQUEST, "at least two variants");
    refused(
        start(json!([{ "version": 1, "weight": 0.5 }, { "version": 2, "weight": -1.0 }]), "").await,
        StatusCode::BAD_REQUEST,
        "positive weights",
    );
    refused(start(halves.clone(), "fleet in (").await, StatusCode::BAD_REQUEST, "unclosed");
    refused(
        start(json!([{ "version": 1, "weight": 0.5 }, { "version": 9, "weight": 0.5 }]), "").await,
        StatusCode::NOT_FOUND,
        "classifier@9",
    );
    refused(
        start(json!([{ "version": 1, "weight": 0.5 }, { "version": 3, "weight": 0.5 }]), "").await,
        StatusCode::BAD_REQUEST,
        "no signed bundle",
    );
    assert_eq!(call(&core, Method::GET, "/api/v1/splits", None).await.1, json!([]), "nothing refused was stored");

    let (status, split) = start(halves, "fleet=t").await;
    assert_eq!(status, StatusCode::CREATED, "{split}");
    let members: usize = split["variants"].as_array().unwrap().iter().map(|variant| variant["devices"].as_array().unwrap().len()).sum();
    assert_eq!(members, 2);
    let promote = |body: Value| call(&core, Method::POST, "/api/v1/splits/1/promote", Some(body));
    refused(promote(json!({ "version": 2, "rule": "lowest_error_rate" })).await, StatusCode::BAD_REQUEST, "not both");
    refused(promote(json!({ "version": 3 })).await, StatusCode::BAD_REQUEST, "version 3 is not a variant of split 1");
    refused(promote(json!({ "rule": "lowest_error_rate" })).await, StatusCode::CONFLICT, "0 of 2 variants have at least 100 requests");
    refused(call(&core, Method::GET, "/api/v1/splits/5", None).await, StatusCode::NOT_FOUND, "split 5");
    let (status, stopped) = call(&core, Method::POST, "/api/v1/splits/1/stop", None).await;
    assert_eq!((status, stopped["state"].as_str()), (StatusCode::OK, Some("stopped")));
    let (status, promoted) = promote(json!({ "version": 2 })).await;
    assert_eq!((status, promoted["version"].as_i64()), (StatusCode::CREATED, Some(2)), "{promoted}");
    assert_eq!(call(&core, Method::GET, "/api/v1/splits/1", None).await.1["state"], "promoted");
}

#[tokio::test]
async fn shadow_requests_that_cannot_be_met_are_refused_with_the_reason() {
    let Fixture { core, _dir } = fixture().await;
    let start = |body: Value| call(&core, Method::POST, "/api/v1/shadows", Some(body));
    refused(start(json!({ "model": "classifier", "version": 9 })).await, StatusCode::NOT_FOUND, "classifier@9");
    refused(start(json!({ "model": "classifier", "version": 3 })).await, StatusCode::BAD_REQUEST, "no signed bundle");
    refused(
        start(json!({ "model": "classifier", "version": 2, "selector": "fleet=t", "devices": ["d1"] })).await,
        StatusCode::BAD_REQUEST,
        "a selector or device ids, not both",
    );
    refused(start(json!({ "model": "classifier", "version": 2, "selector": "a in (" })).await, StatusCode::BAD_REQUEST, "selector:");
    // Stopping the shadow of a model that does not exist: 404, not a store error.
    refused(call(&core, Method::POST, "/api/v1/shadows/nothing/stop", Some(json!({}))).await, StatusCode::NOT_FOUND, "no model `nothing`");
    let (status, view) = call(&core, Method::GET, "/api/v1/shadows/nothing", None).await;
    assert_eq!((status, view["candidates"].clone()), (StatusCode::OK, json!([])));

    let (status, started) = start(json!({ "model": "classifier", "version": 2, "selector": "fleet=t" })).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let deployments = call(&core, Method::GET, "/api/v1/deployments", None).await.1;
    assert_eq!(deployments.as_array().unwrap().iter().filter(|deployment| deployment["role"] == "shadow").count(), 1, "{deployments}");
    let history = call(&core, Method::GET, "/api/v1/models/classifier/versions/2", None).await.1["history"].clone();
    assert!(history.as_array().unwrap().iter().any(|event| event["kind"] == "shadow"), "{history}");
}

#[tokio::test]
async fn mlflow_errors_carry_the_codes_its_client_branches_on() {
    let Fixture { core, _dir } = fixture().await;
    let (status, body) = call_as(&core, Method::GET, "/api/2.0/mlflow/experiments/get?experiment_id=0", None, None).await;
    assert_eq!((status, body["error_code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED")));
    let code = |answer: (StatusCode, Value)| (answer.0, answer.1["error_code"].as_str().map(str::to_string));
    assert_eq!(
        code(call(&core, Method::GET, "/api/2.0/mlflow/experiments/get?experiment_id=42", None).await),
        (StatusCode::NOT_FOUND, Some("RESOURCE_DOES_NOT_EXIST".into()))
    );
    assert_eq!(
        code(call(&core, Method::GET, "/api/2.0/mlflow/experiments/get?experiment_id=x", None).await),
        (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE".into()))
    );
    let create = json!({ "name": "e" });
    assert_eq!(call(&core, Method::POST, "/api/2.0/mlflow/experiments/create", Some(create.clone())).await.0, StatusCode::OK);
    assert_eq!(
        code(call(&core, Method::POST, "/api/2.0/mlflow/experiments/create", Some(create)).await),
        (StatusCode::BAD_REQUEST, Some("RESOURCE_ALREADY_EXISTS".into()))
    );
    assert_eq!(
        code(call(&core, Method::POST, "/api/2.0/mlflow/model-versions/create", Some(json!({ "name": "ghost", "source": "x" }))).await),
        (StatusCode::NOT_FOUND, Some("RESOURCE_DOES_NOT_EXIST".into()))
    );
    assert_eq!(
        code(call(&core, Method::POST, "/api/2.0/mlflow/nothing/here", Some(json!({}))).await),
        (StatusCode::NOT_FOUND, Some("ENDPOINT_NOT_FOUND".into()))
    );
    // Artifact paths: a NUL byte and `..` are refused (400, not 500); the root is not deletable.
    assert_eq!(
        code(call(&core, Method::GET, "/api/2.0/mlflow-artifacts/artifacts/1/a%00b", None).await),
        (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE".into()))
    );
    assert_eq!(
        code(call(&core, Method::GET, "/api/2.0/mlflow-artifacts/artifacts/1/%2E%2E%2F%2E%2E%2Fplane.db", None).await),
        (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE".into()))
    );
    core.artifacts.put("1/run/keep.txt", b"kept").await.unwrap();
    assert_eq!(
        code(call(&core, Method::DELETE, "/api/2.0/mlflow-artifacts/artifacts/.", None).await),
        (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE".into()))
    );
    assert_eq!(core.artifacts.get("1/run/keep.txt").await.unwrap(), b"kept");
}

#[tokio::test]
async fn stats_take_any_lookback_without_wrapping() {
    let Fixture { core, _dir } = fixture().await;
    let (status, stats) = call(&core, Method::GET, &format!("/api/v1/models/classifier/versions/1/stats?since_s={}", i64::MAX), None).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let since_ms = stats["since_ms"].as_i64().unwrap();
    assert!(since_ms < 0 && since_ms > i64::MIN, "the lookback saturates instead of wrapping: {since_ms}");
    let (status, stats) = call(&core, Method::GET, "/api/v1/models/classifier/versions/1/stats?since_s=-5", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["since_ms"].as_i64().unwrap() <= fleetml_shared::now_ms() as i64);
}

#[tokio::test]
async fn pushes_past_the_upload_cap_are_told_to_come_back() {
    let Fixture { core, _dir } = fixture().await;
    let permits: Vec<_> = (0..crate::MAX_CONCURRENT_UPLOADS).map(|_| core.uploads.try_acquire().unwrap()).collect();
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/models/classifier/versions")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(Classifier::random(4, 0, 3).to_onnx("t")))
        .unwrap();
    let response = crate::api::router(core.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers().get("retry-after").and_then(|value| value.to_str().ok()), Some("5"));
    assert_eq!(core.store.latest_version("classifier").await.unwrap(), Some(3), "nothing was registered");
    drop(permits);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/models/classifier/versions")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(Classifier::random(4, 0, 3).to_onnx("t")))
        .unwrap();
    let response = crate::api::router(core.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let uploads = std::fs::read_dir(core.data_dir.join("uploads")).unwrap().count();
    assert_eq!(uploads, 0, "the upload's file is gone once the push is registered");
}

/// A token of `role` (with `scopes`), revoked or expired when asked; returns its value.
async fn token(core: &PlaneCore, name: &str, role: &str, scopes: &str, revoked: bool, expired: bool) -> String {
    let value = format!("tok-{name}-{:08x}", fastrand::u32(..));
    let record = crate::store::TokenRecord {
        id: 0,
        token_sha256: crate::keys::token_hash(&value),
        name: name.into(),
        role: role.into(),
        scopes: scopes.into(),
        bootstrap: false,
        created_ms: 1,
        created_by: "test".into(),
        expires_ms: expired.then_some(2),
        revoked_ms: None,
        last_used_ms: None,
    };
    let id = core.store.insert_token(&record).await.unwrap();
    if revoked {
        core.store.revoke_token(id, 3).await.unwrap();
    }
    value
}

/// A path the router matches, for a route template.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|part| match part {
            "{id}" | "{version}" => "1",
            part if part.starts_with('{') => "x",
            part => part,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_refuses_bad_tokens_and_every_change_refuses_a_viewer() {
    use crate::access::Need;
    use crate::api::guard::Access;
    let Fixture { core, _dir } = fixture().await;
    let viewer = token(&core, "viewer", "viewer", "", false, false).await;
    let operator = token(&core, "operator", "operator", "", false, false).await;
    let tracking = token(&core, "trainer", "operator", "tracking", false, false).await;
    let revoked = token(&core, "revoked", "admin", "", true, false).await;
    let expired = token(&core, "expired", "admin", "", false, true).await;
    let specs: Vec<_> = crate::api::routes().into_iter().chain(crate::api::mlflow::routes()).collect();
    assert!(specs.len() > 80, "the walk sees every route: {}", specs.len());
    let mut n_changes = 0;
    for spec in specs {
        let path = concrete(spec.path);
        let body = (spec.method != Method::GET).then(|| json!({}));
        let status_with = |token: Option<String>| {
            let (core, method, path, body) = (core.clone(), spec.method.clone(), path.clone(), body.clone());
            async move { call_as(&core, method, &path, body, token.as_deref()).await.0 }
        };
        let label = format!("{} {}", spec.method, spec.path);
        if spec.access == Access::Public {
            assert!(!matches!(status_with(None).await, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), "{label} is public");
            continue;
        }
        for (who, bad) in [("no token", None), ("revoked", Some(revoked.clone())), ("expired", Some(expired.clone()))] {
            assert_eq!(status_with(bad).await, StatusCode::UNAUTHORIZED, "{label} with a {who} token");
        }
        let native = spec.area == crate::access::Area::Native;
        match spec.access {
            Access::Public => {}
            Access::Read => {
                let status = status_with(Some(viewer.clone())).await;
                assert!(!matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), "{label} reads for a viewer: {status}");
            }
            Access::Change { need, .. } => {
                n_changes += 1;
                assert_eq!(status_with(Some(viewer.clone())).await, StatusCode::FORBIDDEN, "{label} changes: not for a viewer");
                let operator_status = status_with(Some(operator.clone())).await;
                match need {
                    Need::Administer => assert_eq!(operator_status, StatusCode::FORBIDDEN, "{label} is for admins"),
                    Need::Operate | Need::Read => assert_ne!(operator_status, StatusCode::FORBIDDEN, "{label} is for operators"),
                }
            }
        }
        // A tracking token works in the MLflow API and nowhere else.
        let tracking_status = status_with(Some(tracking.clone())).await;
        if native {
            assert_eq!(tracking_status, StatusCode::FORBIDDEN, "{label}: a tracking token is MLflow only");
        } else {
            assert_ne!(tracking_status, StatusCode::FORBIDDEN, "{label}: a tracking token may use MLflow");
        }
    }
    assert!(n_changes >= 40, "{n_changes} changing routes");
    // Every refused change is in the audit log with who asked.
    let refused = core.store.audit_since(0, 100_000).await.unwrap();
    assert!(refused.iter().any(|entry| entry.token_name == "viewer" && entry.outcome == "refused" && entry.status == 403));
    assert!(refused.iter().any(|entry| entry.token_name == "-" && entry.status == 401));
}
