//! The spine end to end: push, deploy by selector, serve, roll a second version, late joiners.

use fleetml_firmware_tests::{Agent, AgentOptions, Plane, Setup, TIMEOUT, demo_models, features_request, test_dir, wait_for};

fn labels(site: &str) -> AgentOptions {
    AgentOptions { labels: vec![("site".into(), site.into())], ..AgentOptions::default() }
}

/// Runs a scenario on each of the three setups: embedded broker + SQLite, the machine's
/// Mosquitto + SQLite, embedded broker + PostgreSQL.
macro_rules! on_every_setup {
    ($scenario:ident) => {
        mod $scenario {
            use fleetml_firmware_tests::Setup;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_broker_and_sqlite() {
                super::$scenario(Setup::EmbeddedBrokerSqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mosquitto_and_sqlite() {
                super::$scenario(Setup::MosquittoSqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_broker_and_postgres() {
                super::$scenario(Setup::EmbeddedBrokerPostgres).await
            }
        }
    };
}

on_every_setup!(selector_deploy_serves_v1_then_v2_and_reaches_a_device_that_joins_later);
on_every_setup!(a_killed_agent_is_marked_offline_by_its_last_will_and_serves_again_after_restart);

async fn selector_deploy_serves_v1_then_v2_and_reaches_a_device_that_joins_later(setup: Setup) {
    let Some(options) = setup.plane_options().await else { return };
    let dir = test_dir();
    let plane = Plane::start(dir.path(), options).await;
    let north_1 = Agent::start(&plane, "north-1", labels("north")).await;
    let north_2 = Agent::start(&plane, "north-2", labels("north")).await;
    let south_1 = Agent::start(&plane, "south-1", labels("south")).await;
    wait_for("three devices online", TIMEOUT, || async {
        (plane.devices().await.iter().filter(|device| device.online).count() == 3).then_some(())
    })
    .await;

    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    assert_eq!(v1, 1, "versions start at 1");
    let deployment = plane.deploy("classifier", v1, ("selector", "site=north")).await;
    let mut matched: Vec<String> = serde_json::from_value(deployment["matched_devices"].clone()).unwrap();
    matched.sort();
    assert_eq!(matched, ["north-1", "north-2"]);
    for agent in [&north_1, &north_2] {
        plane.wait_active(&agent.device_id, "classifier", v1).await;
    }
    let request = features_request(&[[1.0, 1.0, 0.0, 0.5], [-1.0, -1.0, 0.1, 0.2]]);
    let (status, answer) = north_1.infer("classifier", &request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], "1");
    let probabilities = answer["outputs"].as_array().unwrap().iter().find(|output| output["name"] == "probabilities").unwrap();
    assert_eq!(probabilities["shape"], serde_json::json!([2, 3]));
    let row_sum: f64 = probabilities["data"].as_array().unwrap()[..3].iter().map(|value| value.as_f64().unwrap()).sum();
    assert!((row_sum - 1.0).abs() < 1e-5, "softmax rows sum to 1, got {row_sum}");
    // The south device is not targeted: it has no such model.
    assert_eq!(south_1.infer("classifier", &request).await.0, 404);
    assert!(plane.slot("south-1", "classifier").await.is_none());

    let v2 = plane.push_ok("classifier", v2_onnx).await;
    assert_eq!(v2, 2);
    plane.deploy("classifier", v2, ("selector", "site=north")).await;
    for agent in [&north_1, &north_2] {
        plane.wait_active(&agent.device_id, "classifier", v2).await;
        let (status, answer) = agent.infer("classifier", &request).await;
        assert_eq!((status, answer["model_version"].as_str()), (200, Some("2")), "{answer}");
        let slot = plane.slot(&agent.device_id, "classifier").await.unwrap();
        assert_eq!(slot.previous_version, Some(1), "the previous model is kept for rollback");
    }

    // A standing assignment: a device that joins later receives the current version.
    let north_3 = Agent::start(&plane, "north-3", labels("north")).await;
    plane.wait_active("north-3", "classifier", v2).await;
    assert_eq!(north_3.infer("classifier", &request).await.1["model_version"], "2");

    // Heartbeats carry per-version figures the plane merges.
    let stats = wait_for("inference figures from the devices", TIMEOUT, || async {
        let (_, stats) = plane.get("/api/v1/models/classifier/versions/2/stats").await;
        (stats["requests"].as_i64() >= Some(3)).then_some(stats)
    })
    .await;
    assert_eq!(stats["errors"], 0);
    assert!(stats["latency_p95_us"].as_f64().unwrap() > 0.0);
    plane.clear_retained().await;
}

async fn a_killed_agent_is_marked_offline_by_its_last_will_and_serves_again_after_restart(setup: Setup) {
    let Some(options) = setup.plane_options().await else { return };
    let dir = test_dir();
    let plane = Plane::start(dir.path(), options).await;
    let mut agent = Agent::start(&plane, "edge-1", labels("north")).await;
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    plane.deploy("classifier", v1, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v1).await;

    agent.process.kill();
    wait_for("edge-1 offline", TIMEOUT, || async { plane.device("edge-1").await.filter(|device| !device.online).map(|_| ()) }).await;

    // Restarted on the same state folder: the model is restored from disk, no new transfer.
    let fetches_before = plane.status().await["fetch_requests"].as_u64().unwrap();
    let agent = Agent::start(&plane, "edge-1", labels("north")).await;
    let (status, answer) = agent.infer("classifier", &features_request(&[[0.0; 4]])).await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some("1")), "{answer}");
    wait_for("edge-1 online", TIMEOUT, || async { plane.device("edge-1").await.filter(|device| device.online).map(|_| ()) }).await;
    assert_eq!(plane.status().await["fetch_requests"].as_u64().unwrap(), fetches_before);
    plane.clear_retained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_an_alias_back_and_deploying_it_rolls_the_fleet_back_with_a_signed_permission() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), fleetml_firmware_tests::PlaneOptions::default()).await;
    let agents = [Agent::start(&plane, "r-1", labels("north")).await, Agent::start(&plane, "r-2", labels("north")).await];
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    let set_alias = |version: i64| {
        let http = plane.http.clone();
        let url = format!("{}/api/v1/models/classifier/aliases/champion", plane.api);
        let token = plane.token.clone();
        async move {
            let response = http.put(url).bearer_auth(token).json(&serde_json::json!({ "version": version })).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
        }
    };
    set_alias(v2).await;
    plane.deploy_alias("classifier", "champion", ("selector", "site=north")).await;
    for agent in &agents {
        plane.wait_active(&agent.device_id, "classifier", v2).await;
    }
    set_alias(v1).await;
    plane.deploy_alias("classifier", "champion", ("selector", "site=north")).await;
    for agent in &agents {
        plane.wait_active(&agent.device_id, "classifier", v1).await;
        assert_eq!(agent.infer("classifier", &features_request(&[[0.2; 4]])).await.1["model_version"], "1");
        let slot = plane.slot(&agent.device_id, "classifier").await.unwrap();
        assert_eq!(slot.previous_version, Some(2));
        assert!(slot.last_result.unwrap().ok);
    }
    let (_, history) = plane.get("/api/v1/models/classifier/versions/1").await;
    let kinds: Vec<&str> = history["history"].as_array().unwrap().iter().map(|event| event["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"rollback"), "the rollback is recorded in the version's history: {kinds:?}");
}
