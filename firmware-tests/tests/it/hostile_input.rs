//! Hostile input against the real binaries (issue 11): forged device numbers, slow and
//! half-sent HTTP requests, pathological run filters, foreign Host headers and browser
//! content types on the agent, and the permissions of what the plane writes to disk.

use std::time::{Duration, Instant};

use fleetml_firmware_tests::{MqttProbe, Plane, PlaneOptions, TIMEOUT, test_dir, wait_for};
use fleetml_shared::histogram::HistogramSnapshot;
use fleetml_shared::protocol::{self, Heartbeat, ModelFigures, Telemetry};
use fleetml_shared::topics::Topics;

fn heartbeat(seq: u64, requests: u64, errors: u64, buckets: Vec<(u16, u64)>) -> Vec<u8> {
    protocol::encode(&Telemetry::Heartbeat(Heartbeat {
        device_id: "edge-9".into(),
        seq,
        sent_at_ms: fleetml_shared::now_ms(),
        uptime_s: 60,
        cpu_percent: 5.0,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 1 << 32,
        process_rss_bytes: 1 << 24,
        window_ms: 1000,
        models: vec![ModelFigures { model: "classifier".into(), version: 1, requests, errors, latency_us: HistogramSnapshot { buckets } }],
        refused_messages: 0,
    }))
}

/// `/metrics` as (status, text).
async fn metrics(plane: &Plane) -> (u16, String) {
    let response = plane.http.get(format!("{}/metrics", plane.api)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

const REQUESTS_SAMPLE: &str = "fleetml_inference_requests_total{model=\"classifier\",version=\"1\"}";

/// The request counter in `/metrics`, once it answers 200 with one.
async fn requests_total(plane: &Plane) -> Option<u64> {
    let (status, text) = metrics(plane).await;
    let line = text.lines().find(|line| line.starts_with(REQUESTS_SAMPLE))?;
    (status == 200).then(|| line.rsplit(' ').next()?.parse().ok()).flatten()
}

/// Waits until `/metrics` answers 200 with the request counter at `expected`.
async fn wait_requests_total(plane: &Plane, expected: u64) {
    let wanted = format!("{REQUESTS_SAMPLE} {expected}");
    let mut last = (0, String::new());
    let started = Instant::now();
    while started.elapsed() < TIMEOUT {
        last = metrics(plane).await;
        if last.0 == 200 && last.1.lines().any(|line| line == wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sample = last.1.lines().find(|line| line.starts_with(REQUESTS_SAMPLE)).unwrap_or("none").to_string();
    panic!("/metrics never showed `{wanted}`: last answered {} with {sample}", last.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_with_u64_max_counts_are_refused_and_metrics_keep_answering_after_a_restart() {
    let dir = test_dir();
    let mut plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let probe = MqttProbe::connect(&plane.mqtt_url).await;
    let topic = Topics::new(&plane.topic_root).telemetry("edge-9");
    // The plane may not have subscribed yet when it prints its address: send until one counts.
    let started = Instant::now();
    let base = loop {
        probe.publish(&topic, false, heartbeat(1, 5, 0, vec![(3, 5)])).await;
        if let Ok(Some(total)) = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Some(total) = requests_total(&plane).await {
                    return Some(total);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        {
            break total;
        }
        assert!(started.elapsed() < TIMEOUT, "no heartbeat ever counted");
    };
    let refused_before = plane.status().await["refused_messages"].as_u64().unwrap();

    let forged = [
        heartbeat(2, u64::MAX, u64::MAX, vec![(3, u64::MAX)]),
        heartbeat(3, i64::MAX as u64, 0, vec![]),
        heartbeat(4, 10, 0, vec![(3, u64::MAX), (4, u64::MAX)]),
        heartbeat(5, 10, 11, vec![]),
    ];
    let n_forged = forged.len() as u64;
    for payload in forged {
        probe.publish(&topic, false, payload).await;
    }
    // A good heartbeat after the forged ones: once it counts, they have all been handled.
    probe.publish(&topic, false, heartbeat(6, 3, 1, vec![(3, 2)])).await;
    wait_requests_total(&plane, base + 3).await;
    wait_for("the forged heartbeats to be counted as refused", TIMEOUT, || async {
        (plane.status().await["refused_messages"].as_u64()? >= refused_before + n_forged).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&plane.process.log_path).unwrap();
    assert!(log.contains("models[0].requests = 18446744073709551615 is out of range"), "the log names the field:\n{log}");

    plane.kill_and_restart().await;
    wait_requests_total(&plane, base + 3).await;
    let (status, text) = metrics(&plane).await;
    assert_eq!(status, 200, "{text}");
}
