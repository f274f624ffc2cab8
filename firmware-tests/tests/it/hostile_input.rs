//! Hostile input against the real binaries (issue 11): forged device numbers, slow and
//! half-sent HTTP requests, pathological run filters, foreign Host headers and browser
//! content types on the agent, and the permissions of what the plane writes to disk.

use std::time::{Duration, Instant};

use fleetml_firmware_tests::{
    Agent, AgentOptions, MqttProbe, Plane, PlaneOptions, TIMEOUT, demo_models, features_request, test_dir, wait_for,
};
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

/// Sends `head` (and nothing more) on a fresh connection and returns how long the server
/// took to close it, or `None` if it was still open after `limit`.
async fn seconds_until_closed(address: &str, head: &str, limit: Duration) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        // A 4xx answer may come first; the connection must then close.
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_within_the_timeouts_on_the_plane_and_the_agent() {
    let dir = test_dir();
    let timeouts = ["--http-header-timeout-seconds", "1", "--http-body-timeout-seconds", "1"].map(String::from).to_vec();
    let plane = Plane::start(dir.path(), PlaneOptions { extra_args: timeouts.clone(), ..PlaneOptions::default() }).await;
    let agent = Agent::start(&plane, "edge-1", AgentOptions { extra_args: timeouts, ..AgentOptions::default() }).await;
    let limit = Duration::from_secs(8);
    let token = &plane.token;
    let cases = [
        ("plane, headers without a token", plane.api.clone(), "GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1".to_string()),
        (
            "plane, a body cut short",
            plane.api.clone(),
            format!(
                "POST /api/v1/profiles HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"half\":"
            ),
        ),
        ("agent, headers", agent.api.clone(), "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1".to_string()),
        (
            "agent, a body cut short",
            agent.api.clone(),
            "POST /v2/models/classifier/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"inputs\":".to_string(),
        ),
    ];
    for (what, address, head) in cases {
        let seconds = seconds_until_closed(&address, &head, limit).await;
        let seconds = seconds.unwrap_or_else(|| panic!("{what}: the connection was still open after {limit:?}"));
        assert!(seconds >= 0.5, "{what}: closed after {seconds:.2} s, before the timeout");
    }
    // Both still serve.
    assert_eq!(plane.get("/api/v1/health").await.0, 200);
    let live = reqwest::get(format!("{}/v2/health/live", agent.api)).await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_foreign_hosts_browser_content_types_and_shapes_that_overflow() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let agent_options = AgentOptions { extra_args: vec!["--allowed-host".into(), "edge-1.local".into()], ..AgentOptions::default() };
    let agent = Agent::start(&plane, "edge-1", agent_options).await;
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    plane.deploy("classifier", v1, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v1).await;
    let url = format!("{}/v2/models/classifier/infer", agent.api);
    let body = serde_json::to_vec(&features_request(&[[0.5; 4]])).unwrap();
    let http = reqwest::Client::new();
    let post = |host: Option<&str>, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = http.post(&url).body(body);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let port = agent.api.rsplit(':').next().unwrap().to_string();
    for (host, content_type, expected) in [
        (None, None, 200),
        (None, Some("application/json"), 200),
        (None, Some("application/json; charset=utf-8"), 200),
        (None, Some("application/octet-stream"), 200),
        (Some(format!("localhost:{port}")), Some("application/json"), 200),
        (Some("[::1]".to_string()), None, 200),
        (Some("EDGE-1.local".to_string()), None, 200),
        (Some(format!("attacker.example:{port}")), Some("application/json"), 403),
        (Some("127.0.0.1.nip.io".to_string()), None, 403),
        (None, Some("text/plain"), 415),
        (None, Some("text/plain;charset=UTF-8"), 415),
        (None, Some("application/x-www-form-urlencoded"), 415),
        (None, Some("multipart/form-data; boundary=x"), 415),
    ] {
        let (status, answer) = post(host.as_deref(), content_type, body.clone()).await;
        assert_eq!(status, expected, "Host {host:?}, Content-Type {content_type:?}: {answer}");
        if expected != 200 {
            assert!(answer["error"].as_str().is_some_and(|error| !error.is_empty()), "{answer}");
        }
    }

    let overflowing = serde_json::json!({ "inputs": [{ "name": "features", "shape": [1u64 << 62, 4], "datatype": "FP32", "data": [] }] });
    let (status, answer) = agent.infer("classifier", &overflowing).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|error| error.contains("`features`")), "{answer}");
    let (status, _) = agent.infer("classifier", &features_request(&[[0.5; 4]])).await;
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&agent.process.log_path).unwrap();
    assert!(!log.contains("inference failed"), "a client error is not counted as a model failure:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pathological_run_filter_answers_fast_while_health_keeps_answering() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let (status, experiment) = plane.post("/api/2.0/mlflow/experiments/create", &serde_json::json!({ "name": "slow-filters" })).await;
    assert_eq!(status, 200, "{experiment}");
    let experiment_id = experiment["experiment_id"].as_str().unwrap().to_string();
    let long_value = "a".repeat(2_000);
    for _ in 0..20 {
        let (status, run) = plane.post("/api/2.0/mlflow/runs/create", &serde_json::json!({ "experiment_id": experiment_id })).await;
        assert_eq!(status, 200, "{run}");
        let run_id = run["run"]["info"]["run_id"].as_str().unwrap();
        let tag = serde_json::json!({ "run_id": run_id, "key": "note", "value": long_value });
        assert_eq!(plane.post("/api/2.0/mlflow/runs/set-tag", &tag).await.0, 200);
    }
    let health_probe = {
        let http = plane.http.clone();
        let url = format!("{}/api/v1/health", plane.api);
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..40 {
                let started = Instant::now();
                let status = http.get(&url).send().await.map(|response| response.status().as_u16()).unwrap_or(0);
                assert_eq!(status, 200);
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            slowest
        })
    };
    // Seven wildcards: exponential for the old matcher on these 2,000-character values.
    let filter = format!("tags.note LIKE '{}b'", "%a".repeat(7));
    let search = serde_json::json!({ "experiment_ids": [experiment_id], "filter": filter });
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(Duration::from_secs(20), plane.post("/api/2.0/mlflow/runs/search", &search))
        .await
        .expect("the search finishes well within 20 s");
    assert_eq!(status, 200, "{answer}");
    assert!(answer["runs"].as_array().is_none_or(|runs| runs.is_empty()), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "the search took {:?}", started.elapsed());
    let slowest_health = health_probe.await.unwrap();
    assert!(slowest_health < Duration::from_secs(1), "health took {slowest_health:?} during the search");
    let too_long = serde_json::json!({ "experiment_ids": [experiment_id], "filter": format!("tags.note LIKE '{}'", "%".repeat(300)) });
    let (status, answer) = plane.post("/api/2.0/mlflow/runs/search", &too_long).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("at most 256 characters"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_planes_data_folder_is_0700_and_its_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let (v1_onnx, _) = demo_models();
    plane.push_ok("classifier", v1_onnx).await;
    let artifact = plane
        .http
        .put(format!("{}/api/2.0/mlflow-artifacts/artifacts/1/run-a/artifacts/notes.txt", plane.api))
        .bearer_auth(&plane.token)
        .body("private notes")
        .send()
        .await
        .unwrap();
    assert_eq!(artifact.status().as_u16(), 200);
    let data_dir = dir.path().join("plane");
    let mut seen = (0, 0);
    let mut pending = vec![data_dir.clone()];
    while let Some(folder) = pending.pop() {
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", folder.display());
        seen.0 += 1;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
                seen.1 += 1;
            }
        }
    }
    for name in ["fleetml.db", "fleetml.db-wal", "fleetml.db-shm", "signing.pub"] {
        assert!(data_dir.join(name).exists(), "{name} was checked");
    }
    assert!(std::fs::read_dir(data_dir.join("bundles")).unwrap().count() >= 1, "a bundle was checked");
    assert!(seen.0 >= 4 && seen.1 >= 5, "checked {seen:?} folders and files");
}
