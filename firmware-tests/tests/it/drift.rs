//! Drift monitoring with the real binaries: devices summarise their traffic into windows
//! against the reference profile their bundle carries, the plane merges and judges them,
//! and drift that lasts raises an event on MQTT and at a webhook; windows closed while a
//! device is offline arrive later, none lost and none counted twice.

use std::sync::{Arc, Mutex};

use fleetml_firmware_tests::{Agent, AgentOptions, MqttProbe, Plane, PlaneOptions, PrivateMosquitto, Sim, TIMEOUT, test_dir, wait_for};
use fleetml_plane::demo::classifier::{Classifier, dataset};
use fleetml_shared::drift::Side;
use fleetml_shared::drift::profile::{BuildOptions, ColumnKind, ColumnSpec, Profile};
use serde_json::{Value, json};

/// The demo classifier and a profile of its training data: four numeric inputs and the
/// predicted class; windows of one second, two drifted windows before an event.
fn model_and_profile() -> (Vec<u8>, Vec<u8>, Vec<[f32; 4]>) {
    let (features, labels) = dataset(3000, 11);
    let model = Classifier::train(&features, &labels, 0, 60, 0.5, 5);
    let mut columns: Vec<ColumnSpec> = (0..4)
        .map(|index| ColumnSpec {
            name: format!("f{index}"),
            side: Side::Input,
            tensor: "features".into(),
            kind: ColumnKind::Numeric { index },
            metric: None,
        })
        .collect();
    columns.push(ColumnSpec {
        name: "label".into(),
        side: Side::Output,
        tensor: "label".into(),
        kind: ColumnKind::Categorical { index: 0, labels: None },
        metric: None,
    });
    let predicted: Vec<f64> = features
        .iter()
        .map(|row| {
            let probabilities = model.predict_proba(row);
            (0..probabilities.len()).max_by(|&left, &right| probabilities[left].total_cmp(&probabilities[right])).unwrap_or(0) as f64
        })
        .collect();
    let mut data: Vec<Vec<f64>> = (0..4).map(|index| features.iter().map(|row| row[index] as f64).collect()).collect();
    data.push(predicted);
    let data_refs: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    let mut options = BuildOptions::default();
    options.window.seconds = 1;
    options.window.samples = 100_000;
    options.thresholds.consecutive_windows = 2;
    let profile = Profile::build(&columns, &data_refs, &options).unwrap();
    (model.to_onnx("drift"), profile.to_json(), features)
}

async fn push_with_profile(plane: &Plane, onnx: Vec<u8>, profile: Vec<u8>) -> i64 {
    let uploaded: Value = plane
        .http
        .post(format!("{}/api/v1/profiles", plane.api))
        .bearer_auth(&plane.token)
        .body(profile)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sha256 = uploaded["sha256"].as_str().unwrap_or_else(|| panic!("{uploaded}")).to_string();
    let pushed: Value = plane
        .http
        .post(format!("{}/api/v1/models/classifier/versions?profile={sha256}", plane.api))
        .bearer_auth(&plane.token)
        .body(onnx)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    pushed["version"].as_i64().unwrap_or_else(|| panic!("{pushed}"))
}

fn rows_request(rows: &[[f32; 4]]) -> Value {
    json!({ "inputs": [{ "name": "features", "datatype": "FP32", "shape": [rows.len(), 4], "data": rows.concat() }] })
}

/// Collects what the webhook receives.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn drift_view(plane: &Plane, version: i64, window: &str) -> Value {
    plane.get(&format!("/api/v1/models/classifier/versions/{version}/drift?window={window}")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifting_inputs_raise_a_drift_event_on_mqtt_and_at_the_webhook() {
    let dir = test_dir();
    let (hook_url, received) = webhook().await;
    let options = PlaneOptions {
        extra_args: vec!["--drift-webhook".into(), hook_url, "--drift-grace-ms".into(), "300".into()],
        ..PlaneOptions::default()
    };
    let plane = Plane::start(dir.path(), options).await;
    let mut probe = MqttProbe::connect(&plane.mqtt_url).await;
    let events_topic = format!("{}/v1/events/drift", plane.topic_root);
    probe.subscribe(&events_topic).await;
    let sim = Sim::start(&plane, 3, "dr-", &["--label", "fleet=dr"]).await;
    plane.wait_online(3).await;
    let (onnx, profile, features) = model_and_profile();
    let version = push_with_profile(&plane, onnx, profile).await;
    assert_eq!(plane.get(&format!("/api/v1/models/classifier/versions/{version}/profile")).await.0, 200);
    plane.deploy("classifier", version, ("selector", "fleet=dr")).await;
    plane.wait_all_active(&sim.device_ids, "classifier", version, TIMEOUT).await;

    let client = reqwest::Client::new();
    let send = |rows: Vec<[f32; 4]>, device_id: String| {
        let client = client.clone();
        let url = format!("{}/devices/{device_id}/v2/models/classifier/infer", sim.api);
        async move {
            let response = client.post(url).json(&rows_request(&rows)).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    // Traffic like the training data: judged, not drifted.
    for (chunk_idx, chunk) in features.chunks(50).take(30).enumerate() {
        send(chunk.to_vec(), sim.device_ids[chunk_idx % 3].clone()).await;
    }
    let calm = wait_for("windows of undrifted traffic", TIMEOUT, || async {
        let view = drift_view(&plane, version, "10m").await;
        (view["samples"].as_u64() >= Some(1500)).then_some(view)
    })
    .await;
    assert_eq!(calm["dataset_drifted"], false, "{calm}");
    let f0 = calm["features"].as_array().unwrap().iter().find(|feature| feature["name"] == "f0").unwrap().clone();
    assert_eq!((f0["metric"].as_str(), f0["drifted"].as_bool()), (Some("wasserstein"), Some(false)), "{f0}");
    assert!(f0["value"].as_f64().unwrap() < 0.1 && f0["threshold"] == 0.1, "{f0}");

    // Feature 0 moves by two reference standard deviations, on every device, until an event.
    let shifted: Vec<[f32; 4]> = features.iter().map(|row| [row[0] + 2.0, row[1], row[2], row[3]]).collect();
    let event = wait_for("a drift event at the webhook", std::time::Duration::from_secs(60), || {
        let received = received.clone();
        let shifted = shifted.clone();
        let send = &send;
        let device_ids = sim.device_ids.clone();
        async move {
            for (chunk_idx, chunk) in shifted.chunks(100).take(6).enumerate() {
                send(chunk.to_vec(), device_ids[chunk_idx % 3].clone()).await;
            }
            received.lock().unwrap().iter().find(|event| event["feature"] == "f0").cloned()
        }
    })
    .await;
    assert_eq!(
        (event["model"].as_str(), event["version"].as_i64(), event["scope"].as_str()),
        (Some("classifier"), Some(version), Some("feature"))
    );
    assert_eq!(event["metric"], "wasserstein");
    assert!(event["value"].as_f64().unwrap() >= 0.1 && event["consecutive_windows"] == 2, "{event}");
    let published: Value = serde_json::from_slice(&probe.next_on(&events_topic).await).unwrap();
    assert_eq!(published["event"], "drift", "{published}");
    let stored = plane.get("/api/v1/models/classifier/drift/events").await.1;
    assert!(stored.as_array().unwrap().iter().any(|stored| stored["feature"] == "f0"), "{stored}");

    // The CLI's --json object, and the Prometheus gauges.
    let output = std::process::Command::new(fleetml_firmware_tests::binary("fleetml"))
        .args(["drift", "show", &format!("classifier@{version}"), "--window", "5s", "--cohort", "fleet=dr", "--json"])
        .args(["--server", &plane.api, "--token", &plane.token])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
    for key in ["model", "version", "cohort", "window", "samples", "features", "share_drifted", "dataset_drifted"] {
        assert!(shown.get(key).is_some(), "`{key}` missing: {shown}");
    }
    let f0 = shown["features"].as_array().unwrap().iter().find(|feature| feature["name"] == "f0").unwrap();
    assert_eq!(f0["drifted"], true, "{shown}");
    assert_eq!(shown["cohort"], "fleet=dr");
    let metrics = plane.http.get(format!("{}/metrics", plane.api)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|line| line.starts_with("fleetml_drift_value{") && line.contains("feature=\"f0\"")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_closed_while_offline_arrive_later_none_lost_none_counted_twice() {
    let dir = test_dir();
    let Some(mut broker) = PrivateMosquitto::start(dir.path()).await else { return };
    let plane = Plane::start(dir.path(), PlaneOptions { mqtt_url: Some(broker.url()), ..PlaneOptions::default() }).await;
    let agent = Agent::start(
        &plane,
        "drift-offline",
        AgentOptions { labels: vec![("fleet".into(), "off".into())], extra_args: vec!["--drift-window-seconds".into(), "0.5".into()] },
    )
    .await;
    let (onnx, profile, features) = model_and_profile();
    let version = push_with_profile(&plane, onnx, profile).await;
    plane.deploy("classifier", version, ("selector", "fleet=off")).await;
    plane.wait_active("drift-offline", "classifier", version).await;

    let mut rows_sent = 0u64;
    for chunk in features.chunks(40).take(10) {
        assert_eq!(agent.infer("classifier", &rows_request(chunk)).await.0, 200);
        rows_sent += chunk.len() as u64;
    }
    // The broker goes away: the device keeps serving, and each window it closes is kept on disk.
    broker.kill();
    let outbox = agent.state_dir.join("drift-outbox");
    let pending = || {
        std::fs::read_dir(&outbox)
            .map(|listing| listing.flatten().filter(|entry| entry.path().extension().is_some_and(|ext| ext == "win")).count())
            .unwrap_or(0)
    };
    for chunk in features.chunks(80).skip(5).take(3) {
        let before = pending();
        assert_eq!(agent.infer("classifier", &rows_request(chunk)).await.0, 200);
        rows_sent += chunk.len() as u64;
        wait_for("a window closed while offline to be kept on disk", TIMEOUT, || async { (pending() > before).then_some(()) }).await;
    }
    broker.restart().await;
    let view = wait_for("every row counted once on the plane", TIMEOUT, || async {
        let view = drift_view(&plane, version, "1h").await;
        (view["samples"].as_u64() == Some(rows_sent)).then_some(view)
    })
    .await;
    assert!(view["windows"].as_u64().unwrap() >= 3, "windows from before, during and after the outage: {view}");
    // Redeliveries after the reconnect (every recently sent window goes again) add nothing.
    wait_for("the outbox to be drained", TIMEOUT, || async { (pending() == 0).then_some(()) }).await;
    let status = plane.status().await;
    assert_eq!(drift_view(&plane, version, "1h").await["samples"].as_u64(), Some(rows_sent), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_built_from_csv_checked_against_the_model_and_refused_with_the_reason() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let (onnx, _, features) = model_and_profile();
    let model_path = dir.path().join("model.onnx");
    std::fs::write(&model_path, &onnx).unwrap();
    let mut csv = String::from("a,b,c,d,colour\n");
    for (row_idx, row) in features.iter().take(500).enumerate() {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            row[0],
            row[1],
            row[2],
            if row_idx % 50 == 0 { "NA".into() } else { row[3].to_string() },
            row_idx % 3
        ));
    }
    let csv_path = dir.path().join("train.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let fleetml = |args: &[&str]| {
        std::process::Command::new(fleetml_firmware_tests::binary("fleetml"))
            .args(args)
            .args(["--server", &plane.api, "--token", &plane.token])
            .output()
            .unwrap()
    };
    let offline = |args: &[&str]| std::process::Command::new(fleetml_firmware_tests::binary("fleetml")).args(args).output().unwrap();
    let profile_path = dir.path().join("ref.profile");
    // Four columns map in order to the model's `features` input.
    let built = offline(&[
        "profile",
        "build",
        "--csv",
        csv_path.to_str().unwrap(),
        "--columns",
        "a,b,c,d",
        "--model",
        model_path.to_str().unwrap(),
        "--out",
        profile_path.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let profile: Value = serde_json::from_slice(&std::fs::read(&profile_path).unwrap()).unwrap();
    assert_eq!(profile["rows"], 500);
    assert_eq!(profile["features"][3]["nulls"], 10, "NA counts as a null");
    assert_eq!(profile["features"][3]["tensor"], "features");
    // The fifth column does not fit a 4-element input: refused, naming the feature.
    let too_wide = offline(&[
        "profile",
        "build",
        "--csv",
        csv_path.to_str().unwrap(),
        "--categorical",
        "colour",
        "--model",
        model_path.to_str().unwrap(),
        "--out",
        dir.path().join("wide.profile").to_str().unwrap(),
    ]);
    assert!(!too_wide.status.success());
    assert!(
        String::from_utf8_lossy(&too_wide.stderr).contains("feature `colour` reads index 4 of input `features`, which has 4"),
        "{}",
        String::from_utf8_lossy(&too_wide.stderr)
    );

    let pushed = fleetml(&[
        "model",
        "push",
        "classifier",
        model_path.to_str().unwrap(),
        "--profile",
        profile_path.to_str().unwrap(),
        "--drift-window-seconds",
        "5",
    ]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let (status, attached) = plane.get("/api/v1/models/classifier/versions/1/profile").await;
    assert_eq!((status, &attached["window"]["seconds"]), (200, &json!(5)), "{attached}");

    // Garbage, and a profile for another model's tensors, are refused with the reason.
    let garbage =
        plane.http.post(format!("{}/api/v1/profiles", plane.api)).bearer_auth(&plane.token).body("{\"format\": 1}").send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    assert!(garbage.text().await.unwrap().contains("profile refused"));
    let mut other = profile.clone();
    other["features"][0]["tensor"] = json!("pixels");
    let uploaded: Value = plane
        .http
        .post(format!("{}/api/v1/profiles", plane.api))
        .bearer_auth(&plane.token)
        .body(other.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = plane
        .http
        .post(format!("{}/api/v1/models/classifier/versions?profile={}", plane.api, uploaded["sha256"].as_str().unwrap()))
        .bearer_auth(&plane.token)
        .body(onnx)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let reason: Value = refused.json().await.unwrap();
    let message = reason["message"].as_str().unwrap_or_default();
    assert!(message.contains("feature `a` reads input `pixels`, but the model's inputs are [\"features\"]"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_score_gate_stops_a_rollout_whose_canary_sees_drifted_inputs() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let sim = Sim::start(&plane, 4, "dg-", &["--label", "fleet=dg", "--drift-window-seconds", "0.5"]).await;
    plane.wait_online(4).await;
    let (onnx, profile, features) = model_and_profile();
    let v1 = push_with_profile(&plane, onnx.clone(), profile.clone()).await;
    let v2 = push_with_profile(&plane, onnx, profile).await;
    plane.deploy("classifier", v1, ("selector", "fleet=dg")).await;
    plane.wait_all_active(&sim.device_ids, "classifier", v1, TIMEOUT).await;
    let policy = json!({ "target": { "selector": "fleet=dg" }, "on_failure": "rollback",
        "waves": [{ "size": 1, "bake_seconds": 1 }, { "size": "100%" }],
        "gates": [{ "metric": "drift_score", "max": 0.0, "min_samples": 200 }] });
    let (status, started) = plane.post("/api/v1/rollouts", &json!({ "model": "classifier", "version": v2, "policy": policy })).await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_i64().unwrap();
    let canary = started["devices"].as_array().unwrap().iter().find(|device| device["wave"] == 1).unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    plane.wait_active(&canary, "classifier", v2).await;
    // The canary's traffic has every input shifted far from the training data.
    let shifted: Vec<[f32; 4]> = features.iter().map(|row| [row[0] + 3.0, row[1] - 3.0, row[2] + 3.0, row[3] + 3.0]).collect();
    let client = reqwest::Client::new();
    let finished = wait_for("the rollout to stop on its drift gate", std::time::Duration::from_secs(60), || {
        let client = client.clone();
        let url = format!("{}/devices/{canary}/v2/models/classifier/infer", sim.api);
        let rows = shifted[..100].to_vec();
        let plane = &plane;
        async move {
            client.post(url).json(&rows_request(&rows)).send().await.ok()?;
            let view = plane.get(&format!("/api/v1/rollouts/{id}")).await.1;
            (view["state"] != "running").then_some(view)
        }
    })
    .await;
    assert_eq!(finished["state"], "rolled_back", "{}", finished["events"]);
    let failed = finished["events"].as_array().unwrap().iter().find(|event| event["kind"] == "gates_failed").unwrap();
    assert!(failed["detail"].as_str().unwrap().contains("drift_score"), "{failed}");
    plane.wait_active(&canary, "classifier", v1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_split_reports_each_variants_output_distribution() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let sim = Sim::start(&plane, 6, "abd-", &["--label", "fleet=abd", "--drift-window-seconds", "0.5"]).await;
    plane.wait_online(6).await;
    let (onnx, profile, features) = model_and_profile();
    let v1 = push_with_profile(&plane, onnx.clone(), profile.clone()).await;
    let v2 = push_with_profile(&plane, onnx, profile).await;
    let body = json!({ "model": "classifier", "selector": "fleet=abd", "variants": [{ "version": v1, "weight": 0.5 }, { "version": v2, "weight": 0.5 }] });
    let (status, split) = plane.post("/api/v1/splits", &body).await;
    assert_eq!(status, 201, "{split}");
    let id = split["id"].as_i64().unwrap();
    let members: Vec<Vec<String>> =
        split["variants"].as_array().unwrap().iter().map(|variant| serde_json::from_value(variant["devices"].clone()).unwrap()).collect();
    for (variant_members, version) in members.iter().zip([v1, v2]) {
        plane.wait_all_active(variant_members, "classifier", version, TIMEOUT).await;
    }
    let client = reqwest::Client::new();
    for device_id in &sim.device_ids {
        let url = format!("{}/devices/{device_id}/v2/models/classifier/infer", sim.api);
        let response = client.post(url).json(&rows_request(&features[..300])).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let view = wait_for("per-variant output distributions", TIMEOUT, || async {
        let view = plane.get(&format!("/api/v1/splits/{id}")).await.1;
        let variants = view["variants"].as_array()?.clone();
        variants
            .iter()
            .zip(&members)
            .all(|(variant, variant_members)| {
                variant_members.is_empty() || variant["outputs"][0]["samples"].as_u64() == Some(300 * variant_members.len() as u64)
            })
            .then_some(view)
    })
    .await;
    for (variant, variant_members) in view["variants"].as_array().unwrap().iter().zip(&members) {
        if variant_members.is_empty() {
            continue;
        }
        let label = &variant["outputs"][0];
        assert_eq!(label["name"], "label", "{variant}");
        let total: f64 = label["classes"].as_array().unwrap().iter().map(|class| class[1].as_f64().unwrap()).sum::<f64>()
            + label["other_share"].as_f64().unwrap();
        assert!((total - 1.0).abs() < 1e-9, "{label}");
        assert_eq!(label["classes"].as_array().unwrap().len(), 3, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plane_restarted_during_a_drift_episode_does_not_raise_it_again() {
    let dir = test_dir();
    let Some(broker) = PrivateMosquitto::start(dir.path()).await else { return };
    let options =
        PlaneOptions { mqtt_url: Some(broker.url()), extra_args: vec!["--drift-grace-ms".into(), "300".into()], ..PlaneOptions::default() };
    let mut plane = Plane::start(dir.path(), options).await;
    let sim = Sim::start(&plane, 2, "rs-", &["--label", "fleet=rs"]).await;
    plane.wait_online(2).await;
    let (onnx, profile, features) = model_and_profile();
    let version = push_with_profile(&plane, onnx, profile).await;
    plane.deploy("classifier", version, ("selector", "fleet=rs")).await;
    plane.wait_all_active(&sim.device_ids, "classifier", version, TIMEOUT).await;
    let shifted: Vec<[f32; 4]> = features.iter().map(|row| [row[0] + 2.0, row[1], row[2], row[3]]).collect();
    let client = reqwest::Client::new();
    let drift_some = || {
        let client = client.clone();
        let urls: Vec<String> =
            sim.device_ids.iter().map(|device_id| format!("{}/devices/{device_id}/v2/models/classifier/infer", sim.api)).collect();
        let rows = shifted[..200].to_vec();
        async move {
            for url in urls {
                client.post(url).json(&rows_request(&rows)).send().await.unwrap();
            }
        }
    };
    let f0_events =
        |events: &Value| events.as_array().map(|events| events.iter().filter(|event| event["feature"] == "f0").count()).unwrap_or(0);
    wait_for("the first drift event", std::time::Duration::from_secs(60), || async {
        drift_some().await;
        (f0_events(&plane.get("/api/v1/models/classifier/drift/events").await.1) == 1).then_some(())
    })
    .await;

    plane.kill_and_restart().await;
    // The restarted monitor judges the recent periods again (the drift goes on) before it
    // publishes a gauge; by then a repeated event would be in the store.
    wait_for("the restarted plane to judge the ongoing drift", std::time::Duration::from_secs(60), || async {
        drift_some().await;
        let metrics = plane.http.get(format!("{}/metrics", plane.api)).send().await.ok()?.text().await.ok()?;
        metrics
            .lines()
            .any(|line| line.starts_with("fleetml_drift_drifted{") && line.contains("feature=\"f0\"") && line.ends_with(" 1"))
            .then_some(())
    })
    .await;
    let events = plane.get("/api/v1/models/classifier/drift/events").await.1;
    assert_eq!(f0_events(&events), 1, "one episode, one event: {events}");
}
