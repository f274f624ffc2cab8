//! Transfers under faults: killed agents, cut and stalled connections, a restarted broker.

use fleetml_firmware_tests::proxy::FaultProxy;
use fleetml_firmware_tests::{
    Agent, AgentOptions, MqttProbe, Plane, PlaneOptions, PrivateMosquitto, TIMEOUT, big_model, demo_models, features_request, test_dir,
    wait_for,
};
use fleetml_shared::topics::Topics;

const CHUNK_SIZE: u64 = 64 * 1024;

fn broker_address(plane: &Plane) -> std::net::SocketAddr {
    plane.mqtt_url.trim_start_matches("mqtt://").parse().unwrap()
}

/// Waits until the device reports at least `share` of the transfer; returns the bytes received.
async fn wait_for_progress(plane: &Plane, device_id: &str, share: f64) -> (u64, u64) {
    wait_for(&format!("{device_id} to receive {:.0}% of the bundle", share * 100.0), TIMEOUT, || async {
        let slot = plane.slot(device_id, "big").await?;
        let (received, total) = (slot.received_bytes?, slot.total_bytes?);
        (received as f64 >= share * total as f64).then_some((received, total))
    })
    .await
}

async fn chunks_published(plane: &Plane) -> u64 {
    plane.status().await["chunks_published"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_transfer_fetches_only_the_missing_chunks_after_restart() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let proxy = FaultProxy::start(broker_address(&plane)).await;
    proxy.set_rate(3 * 1024 * 1024);
    let mut agent = Agent::start_with_broker(&plane, &proxy.url(), "edge-1", AgentOptions::default()).await;
    let version = plane.push_ok("big", big_model(8)).await;
    plane.deploy("big", version, ("device", "edge-1")).await;
    let (received, total) = wait_for_progress(&plane, "edge-1", 0.3).await;
    agent.process.kill();
    assert!(received < total, "killed before the transfer finished");
    let n_chunks = total.div_ceil(CHUNK_SIZE);
    let published_before_restart = chunks_published(&plane).await;

    proxy.set_rate(0);
    let agent = Agent::start_with_broker(&plane, &proxy.url(), "edge-1", AgentOptions::default()).await;
    plane.wait_active("edge-1", "big", version).await;
    let published_after_restart = chunks_published(&plane).await - published_before_restart;
    let on_disk_at_kill = received / CHUNK_SIZE;
    assert!(published_after_restart > 0, "the missing chunks were fetched");
    assert!(
        published_after_restart <= n_chunks - on_disk_at_kill,
        "after the restart the plane published {published_after_restart} chunks; the device lacked at most {} of {n_chunks}",
        n_chunks - on_disk_at_kill
    );
    let log = std::fs::read_to_string(&agent.process.log_path).unwrap();
    assert!(log.contains("resuming a transfer from disk"), "the agent says it resumed");
    let (status, _) = agent
        .infer("big", &serde_json::json!({"inputs": [{"name": "features", "shape": [1, 256], "datatype": "FP32", "data": vec![0.5; 256]}]}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_transfer_resumes_with_only_the_missing_chunks() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let proxy = FaultProxy::start(broker_address(&plane)).await;
    proxy.set_rate(3 * 1024 * 1024);
    let _agent = Agent::start_with_broker(&plane, &proxy.url(), "edge-1", AgentOptions::default()).await;
    let version = plane.push_ok("big", big_model(8)).await;
    plane.deploy("big", version, ("device", "edge-1")).await;
    let (received, total) = wait_for_progress(&plane, "edge-1", 0.3).await;
    proxy.set_rate(0);
    proxy.cut();
    let published_at_cut = chunks_published(&plane).await;
    plane.wait_active("edge-1", "big", version).await;
    let published_after_cut = chunks_published(&plane).await - published_at_cut;
    let n_chunks = total.div_ceil(CHUNK_SIZE);
    assert!(
        published_after_cut > 0 && published_after_cut <= n_chunks - received / CHUNK_SIZE,
        "{published_after_cut} of {n_chunks} chunks again"
    );
}

/// Seconds since midnight of a log line's RFC 3339 timestamp.
fn log_seconds(line: &str) -> f64 {
    let time = line.split_whitespace().next().and_then(|stamp| stamp.split('T').nth(1)).unwrap_or_default().trim_end_matches('Z');
    time.split(':').zip([3600.0, 60.0, 1.0]).map(|(part, scale)| part.parse::<f64>().unwrap_or(0.0) * scale).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_is_asked_again_with_backoff_reported_and_completes() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let proxy = FaultProxy::start(broker_address(&plane)).await;
    proxy.set_rate(3 * 1024 * 1024);
    let agent = Agent::start_with_broker(&plane, &proxy.url(), "edge-1", AgentOptions::default()).await;
    let version = plane.push_ok("big", big_model(8)).await;
    plane.deploy("big", version, ("device", "edge-1")).await;
    wait_for_progress(&plane, "edge-1", 0.2).await;
    // Nothing flows (the broker stops reading a connection it cannot write to, so both
    // directions hold); the agent's stall timer (2 s in tests) asks again, with backoff.
    proxy.stall();
    let retries = wait_for("the agent to ask again twice", TIMEOUT, || async {
        let log = std::fs::read_to_string(&agent.process.log_path).ok()?;
        let retries: Vec<f64> = log.lines().filter(|line| line.contains("transfer stalled; asking again")).map(log_seconds).collect();
        (retries.len() >= 2).then_some(retries)
    })
    .await;
    let gap = retries[1] - retries[0];
    assert!(gap >= 3.5, "the second retry waits twice the stall timeout (4 s), not {gap:.1} s");
    let fetches_at_resume = plane.status().await["fetch_requests"].as_u64().unwrap();
    proxy.resume();
    let attempts = wait_for("the retries to be reported", TIMEOUT, || async {
        plane.slot("edge-1", "big").await?.fetch_attempts.filter(|attempts| *attempts >= 3)
    })
    .await;
    assert!(attempts >= 3);
    plane.wait_active("edge-1", "big", version).await;
    assert!(plane.status().await["fetch_requests"].as_u64().unwrap() > fetches_at_resume, "the queued requests reached the plane");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_agents_reconnect_and_the_fleet_converges() {
    let dir = test_dir();
    let Some(mut broker) = PrivateMosquitto::start(dir.path()).await else { return };
    let plane = Plane::start(dir.path(), PlaneOptions { mqtt_url: Some(broker.url()), ..PlaneOptions::default() }).await;
    let options = AgentOptions { labels: vec![("fleet".into(), "x".into())], ..AgentOptions::default() };
    let agents = [Agent::start(&plane, "a-1", options.clone()).await, Agent::start(&plane, "a-2", options.clone()).await];
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    plane.deploy("classifier", v1, ("selector", "fleet=x")).await;
    for agent in &agents {
        plane.wait_active(&agent.device_id, "classifier", v1).await;
    }

    broker.restart().await;
    // The restarted broker lost every retained message; the plane publishes its desired
    // states again when it reconnects.
    let topic = Topics::new(&plane.topic_root).desired("a-1", "classifier");
    let mut probe = MqttProbe::connect(&broker.url()).await;
    probe.subscribe(&topic).await;
    let retained = probe.next_on(&topic).await;
    assert!(!retained.is_empty(), "the desired state is retained again");

    plane.deploy("classifier", v2, ("selector", "fleet=x")).await;
    for agent in &agents {
        plane.wait_active(&agent.device_id, "classifier", v2).await;
        let (status, answer) = agent.infer("classifier", &features_request(&[[0.1; 4]])).await;
        assert_eq!((status, answer["model_version"].as_str()), (200, Some("2")));
    }
    let late = Agent::start(&plane, "a-3", options).await;
    plane.wait_active("a-3", "classifier", v2).await;
    assert_eq!(late.infer("classifier", &features_request(&[[0.1; 4]])).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_devices_fetching_one_bundle_cost_the_plane_about_one_copy() {
    let dir = test_dir();
    // A wider quiet window than the default 50 ms, so a loaded CI machine that spreads the
    // ten first fetches over more time still lands them in one burst.
    let options = PlaneOptions { extra_args: vec!["--coalesce-ms".into(), "250".into()], ..PlaneOptions::default() };
    let plane = Plane::start(dir.path(), options).await;
    let sim = fleetml_firmware_tests::Sim::start(&plane, 10, "fan-", &["--label", "fleet=fan"]).await;
    plane.wait_online(10).await;
    let onnx = big_model(2);
    let bundle_bytes = onnx.len() as u64;
    let version = plane.push_ok("big", onnx).await;
    plane.deploy("big", version, ("selector", "fleet=fan")).await;
    plane.wait_all_active(&sim.device_ids, "big", version, TIMEOUT).await;
    let published = plane.status().await["chunk_bytes_published"].as_u64().unwrap();
    let copies = published as f64 / bundle_bytes as f64;
    assert!(copies >= 1.0, "every byte was published at least once ({copies:.2} copies)");
    assert!(copies < 4.0, "coalesced: {copies:.2} copies of the bundle for 10 devices, not one each");
}
