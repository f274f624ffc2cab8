//! Fleet experiments and rollout edges with the real binaries: shadow candidates (agreement
//! for an identical and a different model, and the gate that keeps a disagreeing candidate
//! from going live), devices that join a running rollout, and devices offline when their
//! wave comes.

use fleetml_firmware_tests::{Agent, AgentOptions, Plane, PlaneOptions, Sim, TIMEOUT, demo_models, features_request, test_dir, wait_for};
use serde_json::{Value, json};

async fn rollout_view(plane: &Plane, id: i64) -> Value {
    plane.get(&format!("/api/v1/rollouts/{id}")).await.1
}

async fn infer_everywhere(sim: &Sim, n_requests: usize) {
    let client = reqwest::Client::new();
    // Rows spread over the feature space, so the two demo models disagree on some.
    let rows: Vec<[f32; 4]> = (0..8).map(|row_idx| [row_idx as f32 * 0.3 - 1.0, 0.5 - row_idx as f32 * 0.2, 0.1, -0.4]).collect();
    for device_id in &sim.device_ids {
        for _ in 0..n_requests {
            let url = format!("{}/devices/{device_id}/v2/models/classifier/infer", sim.api);
            let answer: Value = client.post(url).json(&features_request(&rows)).send().await.unwrap().json().await.unwrap();
            assert_eq!(answer["model_version"], "1", "the active model answers, never the shadow: {answer}");
        }
    }
}

async fn candidate_figures(plane: &Plane, version: i64, min_rows: i64) -> Value {
    wait_for(&format!("shadow figures of v{version} over {min_rows} rows"), TIMEOUT, || async {
        let view = plane.get("/api/v1/shadows/classifier").await.1;
        view["candidates"]
            .as_array()?
            .iter()
            .find(|candidate| candidate["candidate_version"] == version && candidate["rows"].as_i64() >= Some(min_rows))
            .cloned()
    })
    .await
}

async fn wait_shadow_slot(plane: &Plane, device_ids: &[String], version: Option<u64>) {
    wait_for(&format!("shadow slots at {version:?}"), TIMEOUT, || async {
        let devices = plane.devices().await;
        devices
            .iter()
            .filter(|device| device_ids.contains(&device.device_id))
            .all(|device| {
                let shadow = device.slots.iter().find(|slot| slot.model == "classifier@shadow");
                shadow.and_then(|slot| slot.active_version) == version && (version.is_some() || shadow.is_some())
            })
            .then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_agrees_fully_when_identical_and_partly_when_different_and_gates_the_rollout() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let sim = Sim::start(&plane, 3, "sh-", &["--label", "fleet=sh"]).await;
    plane.wait_online(3).await;
    let (linear_onnx, mlp_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", linear_onnx.clone()).await;
    let v2 = plane.push_ok("classifier", mlp_onnx).await;
    let v3 = plane.push_ok("classifier", linear_onnx).await;
    plane.deploy("classifier", v1, ("selector", "fleet=sh")).await;
    plane.wait_all_active(&sim.device_ids, "classifier", v1, TIMEOUT).await;

    // v3 is v1 again: it must agree on every row, with no output difference.
    let (status, started) = plane.post("/api/v1/shadows", &json!({ "model": "classifier", "version": v3, "selector": "fleet=sh" })).await;
    assert_eq!(status, 201, "{started}");
    wait_shadow_slot(&plane, &sim.device_ids, Some(v3 as u64)).await;
    infer_everywhere(&sim, 10).await;
    let identical = candidate_figures(&plane, v3, 3 * 10 * 8).await;
    assert_eq!(identical["rows_agreed"], identical["rows"], "{identical}");
    assert_eq!((identical["agreement"].as_f64(), identical["max_delta"].as_f64()), (Some(1.0), Some(0.0)), "{identical}");
    assert_eq!(identical["devices_running"], 3);
    assert!(identical["candidate_latency_p95_us"].as_f64().is_some(), "{identical}");

    // v2 is another model: it agrees on some rows, not all.
    plane.post("/api/v1/shadows", &json!({ "model": "classifier", "version": v2, "selector": "fleet=sh" })).await;
    wait_shadow_slot(&plane, &sim.device_ids, Some(v2 as u64)).await;
    infer_everywhere(&sim, 10).await;
    let different = candidate_figures(&plane, v2, 3 * 10 * 8).await;
    let agreement = different["agreement"].as_f64().unwrap();
    assert!(agreement > 0.2 && agreement < 0.99, "{different}");
    assert!(different["max_delta"].as_f64().unwrap() > 0.0, "{different}");

    // A rollout gated on shadow agreement: v2 stops before any device moves; v3 goes live.
    let policy = |version: i64| {
        json!({ "model": "classifier", "version": version, "policy": {
            "target": { "selector": "fleet=sh" }, "waves": [{ "size": 1 }, { "size": "100%" }],
            "gates": [{ "metric": "shadow_agreement", "min": 0.99, "min_samples": 100 }] } })
    };
    let (status, refused) = plane.post("/api/v1/rollouts", &policy(v2)).await;
    assert_eq!(status, 201, "{refused}");
    let refused_id = refused["id"].as_i64().unwrap();
    let paused = wait_for("the v2 rollout to pause", TIMEOUT, || async {
        let view = plane.get(&format!("/api/v1/rollouts/{refused_id}")).await.1;
        (view["state"] == "paused").then_some(view)
    })
    .await;
    assert_eq!(paused["devices_by_state"], json!({ "pending": 3 }), "no device moved: {paused}");
    let failed = paused["events"].as_array().unwrap().iter().find(|event| event["kind"] == "gates_failed").unwrap();
    assert!(failed["detail"].as_str().unwrap().contains("shadow_agreement"), "{failed}");
    assert_eq!(plane.post(&format!("/api/v1/rollouts/{refused_id}/abort"), &json!({})).await.0, 200);

    let (status, accepted) = plane.post("/api/v1/rollouts", &policy(v3)).await;
    assert_eq!(status, 201, "{accepted}");
    let accepted_id = accepted["id"].as_i64().unwrap();
    let completed = wait_for("the v3 rollout to complete", TIMEOUT, || async {
        let view = plane.get(&format!("/api/v1/rollouts/{accepted_id}")).await.1;
        (view["state"] == "completed").then_some(view)
    })
    .await;
    let kinds: Vec<&str> = completed["events"].as_array().unwrap().iter().filter_map(|event| event["kind"].as_str()).collect();
    assert!(kinds.contains(&"shadow_gates_passed"), "{kinds:?}");
    plane.wait_all_active(&sim.device_ids, "classifier", v3, TIMEOUT).await;

    // Stopping the shadow empties the slot on every device.
    let (status, _) = plane.post("/api/v1/shadows/classifier/stop", &json!({ "selector": "fleet=sh" })).await;
    assert_eq!(status, 200);
    wait_shadow_slot(&plane, &sim.device_ids, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_match_later_join_a_running_rollout_and_an_offline_device_installs_when_it_returns() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let labels = AgentOptions { labels: vec![("fleet".into(), "j".into())], ..AgentOptions::default() };
    let mut agents = Vec::new();
    for device_idx in 0..3 {
        agents.push(Agent::start(&plane, &format!("join-{device_idx}"), labels.clone()).await);
    }
    plane.wait_online(3).await;
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    plane.deploy("classifier", v1, ("selector", "fleet=j")).await;
    for agent in &agents {
        plane.wait_active(&agent.device_id, "classifier", v1).await;
    }
    let policy = json!({
        "target": { "selector": "fleet=j" },
        "waves": [{ "size": 1, "bake_seconds": 4 }, { "size": "100%" }],
        "gates": [{ "metric": "install_failure_rate", "max": 0.0 }, { "metric": "offline_rate", "max": 0.5 }],
        "device_timeout_seconds": 120
    });
    let (status, started) = plane.post("/api/v1/rollouts", &json!({ "model": "classifier", "version": v2, "policy": policy })).await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_i64().unwrap();
    // While the canary bakes: a second-wave device goes offline, and a new device appears.
    let first_wave = wait_for("the canary to be healthy", TIMEOUT, || async {
        let status = rollout_view(&plane, id).await;
        let devices = status["devices"].as_array()?.clone();
        devices.iter().any(|device| device["wave"] == 1 && device["state"] == "healthy").then_some(devices)
    })
    .await;
    let later: Vec<String> =
        first_wave.iter().filter(|device| device["wave"] == 2).map(|device| device["device_id"].as_str().unwrap().to_string()).collect();
    let away_idx = agents.iter().position(|agent| agent.device_id == later[0]).unwrap();
    agents[away_idx].process.kill();
    wait_for("the device to be offline", TIMEOUT, || async { (!plane.device(&later[0]).await?.online).then_some(()) }).await;
    let newcomer = Agent::start(&plane, "join-new", labels.clone()).await;

    let waiting = wait_for("the offline device to wait in the rollout", TIMEOUT, || async {
        let status = rollout_view(&plane, id).await;
        let devices = status["devices"].as_array()?.clone();
        devices.iter().any(|device| device["device_id"] == later[0].as_str() && device["state"] == "offline").then_some(status)
    })
    .await;
    let joined = waiting["devices"].as_array().unwrap().iter().find(|device| device["device_id"] == "join-new").cloned();
    assert!(joined.is_some(), "the new device joined the rollout: {waiting}");
    plane.wait_active(&newcomer.device_id, "classifier", v2).await;

    // The offline device comes back with its state and installs the version it missed.
    let returned = Agent::start(&plane, &later[0], labels.clone()).await;
    plane.wait_active(&returned.device_id, "classifier", v2).await;
    let finished = wait_for("the rollout to complete", TIMEOUT, || async {
        let status = rollout_view(&plane, id).await;
        (status["state"] == "completed").then_some(status)
    })
    .await;
    let kinds: Vec<&str> = finished["events"].as_array().unwrap().iter().filter_map(|event| event["kind"].as_str()).collect();
    assert!(kinds.contains(&"devices_joined"), "{kinds:?}");
    for device_id in ["join-0", "join-1", "join-2", "join-new"] {
        plane.wait_active(device_id, "classifier", v2).await;
    }
    // A device that appears after the rollout completed gets the version too.
    let late = Agent::start(&plane, "join-late", labels).await;
    plane.wait_active(&late.device_id, "classifier", v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stays_offline_past_the_device_timeout_is_marked_failed() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let labels = AgentOptions { labels: vec![("fleet".into(), "t".into())], ..AgentOptions::default() };
    let staying = Agent::start(&plane, "timeout-0", labels.clone()).await;
    let mut leaving = Agent::start(&plane, "timeout-1", labels).await;
    plane.wait_online(2).await;
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    leaving.process.kill();
    wait_for("the device to be offline", TIMEOUT, || async { (!plane.device("timeout-1").await?.online).then_some(()) }).await;
    let policy = json!({ "target": { "selector": "fleet=t" }, "waves": [{ "size": "100%" }],
        "gates": [{ "metric": "offline_rate", "max": 1.0 }], "device_timeout_seconds": 2 });
    let (status, started) = plane.post("/api/v1/rollouts", &json!({ "model": "classifier", "version": v1, "policy": policy })).await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_i64().unwrap();
    let finished = wait_for("the offline device to time out", TIMEOUT, || async {
        let view = rollout_view(&plane, id).await;
        let devices = view["devices"].as_array()?.clone();
        devices.iter().any(|device| device["device_id"] == "timeout-1" && device["state"] == "failed").then_some(view)
    })
    .await;
    let failed = finished["devices"].as_array().unwrap().iter().find(|device| device["device_id"] == "timeout-1").unwrap().clone();
    assert!(failed["reason"].as_str().unwrap().starts_with("timed out after 2 s (offline)"), "{failed}");
    plane.wait_active(&staying.device_id, "classifier", v1).await;
}
