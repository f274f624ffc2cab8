//! Staged rollouts with the real binaries: a canary that fails its gate rolls back and leaves
//! the rest of the fleet untouched; a plane killed mid-rollout finishes it after a restart.

use fleetml_firmware_tests::{Agent, AgentOptions, Plane, PlaneOptions, PrivateMosquitto, TIMEOUT, demo_models, test_dir, wait_for};
use fleetml_plane::rollout::plan::plan_waves;
use fleetml_plane::rollout::policy::WaveSize;
use serde_json::{Value, json};

async fn rollout_status(plane: &Plane, id: i64) -> Value {
    plane.get(&format!("/api/v1/rollouts/{id}")).await.1
}

async fn wait_rollout_state(plane: &Plane, id: i64, state: &str) -> Value {
    wait_for(&format!("rollout {id} to be {state}"), TIMEOUT, || async {
        let status = rollout_status(plane, id).await;
        (status["state"] == state).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_fails_its_gate_is_rolled_back_and_the_rest_of_the_fleet_is_untouched() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let ids: Vec<String> = (0..5).map(|device_idx| format!("fleet-{device_idx}")).collect();
    // The plan is a stable hash of model@version and the ids: make one canary fail its self-test.
    let waves = plan_waves("classifier@2", &ids, &[WaveSize::Count(2), WaveSize::Percent(100.0)]);
    let flaky = waves[0][0].clone();
    let mut agents = Vec::new();
    for device_id in &ids {
        let mut options = AgentOptions { labels: vec![("fleet".into(), "r".into())], ..AgentOptions::default() };
        if *device_id == flaky {
            options.extra_args = vec!["--testing-fail-self-test".into(), "classifier@2".into()];
        }
        agents.push(Agent::start(&plane, device_id, options).await);
    }
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    plane.deploy("classifier", v1, ("selector", "fleet=r")).await;
    for device_id in &ids {
        plane.wait_active(device_id, "classifier", v1).await;
    }

    let policy = r#"
on_failure = "rollback"
[target]
selector = "fleet=r"
[[waves]]
size = 2
[[waves]]
size = "100%"
[[gates]]
metric = "install_failure_rate"
max = 0.0
min_samples = 1
"#;
    // Through the CLI, followed with --watch until it ends: a rolled-back rollout exits 2.
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let output = std::process::Command::new(fleetml_firmware_tests::binary("fleetml"))
        .args(["rollout", "start", "classifier@2", "--watch", "--json", "--server", &plane.api, "--token", &plane.token])
        .arg("--policy")
        .arg(&policy_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    let watched: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((watched["state"].as_str(), watched["version"].as_i64()), (Some("rolled_back"), Some(v2)), "{watched}");
    let id = watched["id"].as_i64().unwrap();

    let finished = wait_rollout_state(&plane, id, "rolled_back").await;
    let kinds: Vec<&str> = finished["events"].as_array().unwrap().iter().map(|event| event["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"device_failed") && kinds.contains(&"gates_failed") && kinds.contains(&"rolled_back"), "{kinds:?}");
    assert!(!kinds.contains(&"wave_started"), "the rollout stopped at the canary wave: {kinds:?}");
    for device_id in &ids {
        plane.wait_active(device_id, "classifier", v1).await;
        let slot = plane.slot(device_id, "classifier").await.unwrap();
        if waves[0].contains(device_id) {
            assert_eq!(slot.desired_version, Some(1), "{device_id}: the canary is told v1 again");
        } else {
            assert_eq!(slot.previous_version, None, "{device_id}: never touched by the rollout");
            assert!(slot.last_result.unwrap().version == 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plane_killed_mid_rollout_finishes_it_after_restart_without_redoing_devices() {
    let dir = test_dir();
    let Some(broker) = PrivateMosquitto::start(dir.path()).await else { return };
    let mut plane = Plane::start(dir.path(), PlaneOptions { mqtt_url: Some(broker.url()), ..PlaneOptions::default() }).await;
    let ids: Vec<String> = (0..4).map(|device_idx| format!("node-{device_idx}")).collect();
    let mut agents = Vec::new();
    for device_id in &ids {
        agents.push(
            Agent::start(&plane, device_id, AgentOptions { labels: vec![("fleet".into(), "k".into())], ..AgentOptions::default() }).await,
        );
    }
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let policy = json!({
        "target": { "selector": "fleet=k" },
        "waves": [{ "size": 1, "bake_seconds": 2 }, { "size": 2, "bake_seconds": 2 }, { "size": "100%" }],
        "gates": [{ "metric": "install_failure_rate", "max": 0.0 }]
    });
    let (status, started) = plane.post("/api/v1/rollouts", &json!({ "model": "classifier", "version": v1, "policy": policy })).await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_i64().unwrap();
    let (status, conflict) = plane.post("/api/v1/rollouts", &json!({ "model": "classifier", "version": v1, "policy": policy })).await;
    assert_eq!(status, 409, "one rollout per model at a time: {conflict}");
    wait_for("the second wave", TIMEOUT, || async { (rollout_status(&plane, id).await["current_wave"].as_i64()? >= 2).then_some(()) })
        .await;

    plane.kill_and_restart().await;
    let finished = wait_rollout_state(&plane, id, "completed").await;
    for device_id in &ids {
        plane.wait_active(device_id, "classifier", v1).await;
    }
    assert_eq!(finished["devices_by_state"]["healthy"], 4, "{finished}");
    let kinds: Vec<&str> = finished["events"].as_array().unwrap().iter().map(|event| event["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|kind| **kind == "wave_started").count(), 2, "each wave started once: {kinds:?}");
    assert_eq!(kinds.iter().filter(|kind| **kind == "gates_passed").count(), 3, "{kinds:?}");
    let deployments = plane.get("/api/v1/deployments").await.1;
    let per_device = deployments.as_array().unwrap().iter().filter(|deployment| deployment["device"].is_string()).count();
    assert_eq!(per_device, 4, "one deployment per device, none redone: {deployments}");
    // At completion the version becomes the target's standing assignment, for devices that come later.
    assert_eq!(deployments.as_array().unwrap().len(), 5, "{deployments}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reaches_a_thousand_simulated_agents() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let sim = fleetml_firmware_tests::Sim::start(&plane, 1000, "k-", &["--label", "fleet=big", "--heartbeat-seconds", "30"]).await;
    plane.wait_online(1000).await;
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let policy = json!({
        "target": { "selector": "fleet=big" },
        "waves": [{ "size": "1%" }, { "size": "10%" }, { "size": "100%" }],
        "gates": [{ "metric": "install_failure_rate", "max": 0.0, "min_samples": 5 }]
    });
    let (status, started) = plane.post("/api/v1/rollouts", &json!({ "model": "classifier", "version": v1, "policy": policy })).await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_i64().unwrap();
    let finished = wait_for("the rollout over 1,000 agents", std::time::Duration::from_secs(300), || async {
        let status = rollout_status(&plane, id).await;
        (status["state"] != "running").then_some(status)
    })
    .await;
    assert_eq!(finished["state"], "completed", "{}", finished["events"]);
    assert_eq!(finished["devices_by_state"]["healthy"], 1000);
    plane.wait_all_active(&sim.device_ids, "classifier", v1, TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_split_assigns_by_stable_hash_reports_per_variant_and_promotes_the_winner() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let sim = fleetml_firmware_tests::Sim::start(&plane, 8, "ab-", &["--label", "fleet=ab"]).await;
    plane.wait_online(8).await;
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    let body = json!({ "model": "classifier", "selector": "fleet=ab", "variants": [{ "version": v1, "weight": 0.5 }, { "version": v2, "weight": 0.5 }] });
    let (status, split) = plane.post("/api/v1/splits", &body).await;
    assert_eq!(status, 201, "{split}");
    let id = split["id"].as_i64().unwrap();
    let members: Vec<Vec<String>> =
        split["variants"].as_array().unwrap().iter().map(|variant| serde_json::from_value(variant["devices"].clone()).unwrap()).collect();
    assert_eq!(members.iter().map(Vec::len).sum::<usize>(), 8, "every device has one variant");
    // The assignment is a pure function of the split and the device: asking again gives the same.
    let again = plane.get(&format!("/api/v1/splits/{id}")).await.1;
    assert_eq!(again["variants"][0]["devices"], split["variants"][0]["devices"]);
    for (variant_members, version) in members.iter().zip([v1, v2]) {
        plane.wait_all_active(variant_members, "classifier", version, TIMEOUT).await;
        if let Some(device_id) = variant_members.first() {
            let url = format!("{}/devices/{device_id}/v2/models/classifier/infer", sim.api);
            let answer: Value = reqwest::Client::new()
                .post(url)
                .json(&fleetml_firmware_tests::features_request(&[[0.3; 4]]))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["model_version"], version.to_string());
        }
    }
    let with_figures = wait_for("per-variant figures", TIMEOUT, || async {
        let view = plane.get(&format!("/api/v1/splits/{id}")).await.1;
        let variants = view["variants"].as_array()?.clone();
        variants
            .iter()
            .zip(&members)
            .all(|(variant, variant_members)| variant_members.is_empty() || variant["requests"].as_i64() >= Some(1))
            .then_some(view)
    })
    .await;
    assert_eq!(with_figures["variants"][1]["errors"], 0);

    // A device that matches after the split started gets its variant by the same hash.
    let late = fleetml_firmware_tests::Agent::start(
        &plane,
        "ab-late",
        fleetml_firmware_tests::AgentOptions { labels: vec![("fleet".into(), "ab".into())], ..Default::default() },
    )
    .await;
    let assigned = wait_for("the late device to get a variant", TIMEOUT, || async {
        let view = plane.get(&format!("/api/v1/splits/{id}")).await.1;
        view["variants"]
            .as_array()?
            .iter()
            .find(|variant| variant["devices"].as_array().is_some_and(|devices| devices.iter().any(|device| device == "ab-late")))
            .and_then(|variant| variant["version"].as_i64())
    })
    .await;
    plane.wait_active(&late.device_id, "classifier", assigned).await;
    assert_eq!(plane.get(&format!("/api/v1/splits/{id}")).await.1["state"], "running");

    let (status, rollout) = plane.post(&format!("/api/v1/splits/{id}/promote"), &json!({ "version": v2 })).await;
    assert_eq!(status, 201, "{rollout}");
    wait_rollout_state(&plane, rollout["id"].as_i64().unwrap(), "completed").await;
    plane.wait_all_active(&sim.device_ids, "classifier", v2, TIMEOUT).await;
    plane.wait_active(&late.device_id, "classifier", v2).await;
    assert_eq!(plane.get(&format!("/api/v1/splits/{id}")).await.1["state"], "promoted");
}
