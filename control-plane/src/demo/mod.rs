//! `fleetml demo`: the whole spine on one machine. A plane on the embedded defaults (SQLite,
//! in-process broker on free ports), a simulated fleet of real agents, a model trained in
//! Rust, pushed, deployed and served, then a second version rolled over it.

pub mod classifier;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetml_agent::config::{LinkConfig, SimConfig, TelemetryConfig, TestingConfig, TransferConfig};
use fleetml_shared::broker::BrokerAddress;
use fleetml_shared::histogram::Histogram;
use fleetml_shared::selector::Selector;
use fleetml_shared::signing::{PublicKey, TrustedKeys};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::classifier::{Classifier, N_FEATURES, dataset};
use crate::api::views::{DeployRequest, StatsView};
use crate::cli::client::Client;
use crate::cli::output::{print_devices, wait_for_rollout};
use crate::config::{BrokerConfig, PlaneConfig};

pub struct DemoOptions {
    pub devices: usize,
    pub once: bool,
    pub data_dir: Option<PathBuf>,
    pub http: SocketAddr,
    pub requests: usize,
}

const MODEL: &str = "machine-state";

pub async fn run(options: DemoOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    let is_temporary = options.data_dir.is_none();
    let data_dir = match options.data_dir.clone() {
        Some(dir) => dir,
        None => tempfile_dir()?,
    };
    println!("fleetml demo: data in {}", data_dir.display());
    let tracker = TaskTracker::new();
    let plane_config = PlaneConfig {
        data_dir: data_dir.join("plane"),
        database_url: format!("sqlite://{}", data_dir.join("plane").join("fleetml.db").display()),
        broker: BrokerConfig::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: crate::broker::DEFAULT_MAX_CONNECTIONS,
        },
        topic_root: "fleetml".into(),
        http: options.http,
        http_limits: crate::http::ServerLimits::default(),
        signing_key: None,
        admin_token: None,
        coalesce_window: Duration::from_millis(50),
        drift: crate::config::DriftConfig::default(),
        announce_token: false,
    };
    let plane = crate::start(plane_config, &tracker, &cancel).await?;
    let token = plane.admin_token.clone().context("the demo's plane has no admin token")?;
    println!("control plane: API http://{}  MQTT broker {} (embedded)", plane.http_addr, plane.broker_url);
    println!("admin token: {token}");

    let broker = BrokerAddress::parse(&plane.broker_url)?;
    let public_key = PublicKey::read(&plane.public_key_path)?;
    let sim_config = SimConfig {
        count: options.devices,
        id_prefix: "demo-".into(),
        first_index: 0,
        base_labels: [("fleet".to_string(), "demo".to_string())].into_iter().collect(),
        label_cycles: vec![("site".into(), vec!["north".into(), "south".into()]), ("arch".into(), vec!["x86_64".into(), "arm64".into()])],
        state_dir: data_dir.join("devices"),
        trusted_keys: TrustedKeys::new(vec![public_key]),
        link: LinkConfig { broker, topic_root: "fleetml".into(), keep_alive: Duration::from_secs(15) },
        telemetry: TelemetryConfig {
            heartbeat_interval: Duration::from_secs(1),
            drift_window: None,
            drift_window_samples: None,
            drift_outbox_windows: 10_000,
        },
        transfer: TransferConfig { stall_timeout: Duration::from_secs(5), max_backoff: Duration::from_secs(30) },
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        api: fleetml_agent::config::ApiConfig::default(),
        inference_threads: 2,
        testing: TestingConfig::default(),
        testing_selector: Selector::everything(),
        connect_rate: None,
    };
    let fleet = fleetml_agent::sim::start(&sim_config, &tracker, &cancel).await?;
    println!("simulated fleet: {} agents, local inference API http://{}/devices/{{device}}/v2", fleet.device_ids.len(), fleet.api_addr);

    let client = Client::new(&format!("http://{}", plane.http_addr), Some(token))?;
    let online_started = tokio::time::Instant::now();
    loop {
        let online = client.devices().await?.iter().filter(|device| device.online).count();
        if online >= options.devices {
            println!("{online} devices online after {:.1} s", online_started.elapsed().as_secs_f32());
            break;
        }
        if online_started.elapsed() > Duration::from_secs(60) {
            bail!("only {online} of {} devices came online within 60 s", options.devices);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (train_features, train_labels) = dataset(3000, 1);
    let (test_features, test_labels) = dataset(900, 2);
    let mut rollout_seconds = Vec::new();
    for (version_step, (hidden_units, description)) in
        [(0usize, "softmax regression"), (16, "MLP, 16 hidden ReLU units")].into_iter().enumerate()
    {
        let model = Classifier::train(&train_features, &train_labels, hidden_units, 400, 0.5, 11);
        let accuracy = model.accuracy(&test_features, &test_labels);
        let onnx = model.to_onnx(MODEL);
        let onnx_path = data_dir.join(format!("{MODEL}-{}.onnx", version_step + 1));
        std::fs::write(&onnx_path, &onnx)?;
        println!(
            "\ntrained {description}: held-out accuracy {:.1}%, ONNX {} bytes ({})",
            accuracy * 100.0,
            onnx.len(),
            onnx_path.display()
        );
        let pushed = client.push(MODEL, onnx, description).await?;
        println!(
            "pushed {MODEL} version {} (bundle {}, self-test {:.2} ms on the plane)",
            pushed.version,
            &pushed.digest[..12],
            pushed.self_test_ms
        );
        let deployment = client
            .deploy(&DeployRequest {
                model: MODEL.into(),
                version: Some(pushed.version),
                selector: Some("fleet=demo".into()),
                ..DeployRequest::default()
            })
            .await?;
        println!("deployed {MODEL}@{} to selector `fleet=demo`: {} devices match", pushed.version, deployment.matched_devices.len());
        let outcome =
            wait_for_rollout(&client, MODEL, pushed.version, &deployment.matched_devices, Duration::from_secs(120), false).await?;
        println!(
            "fleet converged on v{} in {:.2} s: {} installed, {} failed, {} pending",
            pushed.version,
            outcome.elapsed.as_secs_f32(),
            outcome.converged.len(),
            outcome.failed.len(),
            outcome.pending.len()
        );
        for (device_id, reason) in &outcome.failed {
            println!("  {device_id}: {reason}");
        }
        if !outcome.pending.is_empty() || !outcome.failed.is_empty() {
            bail!("the fleet did not converge on version {}", pushed.version);
        }
        rollout_seconds.push(outcome.elapsed.as_secs_f32());
        infer_round(&fleet.api_addr, &fleet.device_ids, &test_features, &test_labels, options.requests, pushed.version).await?;
    }

    println!();
    print_devices(&client.devices().await?);
    // Heartbeats carry the devices' own latency figures; wait for one more round.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats: StatsView = client.get(&format!("/api/v1/models/{MODEL}/versions/2/stats?since_s=600")).await?;
    if let (Some(p50), Some(p95), Some(p99)) = (stats.latency_p50_us, stats.latency_p95_us, stats.latency_p99_us) {
        println!(
            "\nfleet-wide figures for {MODEL}@2 reported by {} devices: {} requests, {} errors, latency p50 {:.0} µs, p95 {:.0} µs, p99 {:.0} µs (device side)",
            stats.devices, stats.requests, stats.errors, p50, p95, p99
        );
    }
    println!("\nsummary: {} devices; v1 rollout {:.2} s, v2 rollout {:.2} s", options.devices, rollout_seconds[0], rollout_seconds[1]);
    println!(
        "API http://{}  broker {}  (try: FLEETML_SERVER=http://{} FLEETML_TOKEN=... fleetml devices)",
        plane.http_addr, plane.broker_url, plane.http_addr
    );
    if options.once {
        cancel.cancel();
    } else {
        println!("serving until Ctrl-C");
        cancel.cancelled().await;
    }
    tracker.close();
    let _ = tokio::time::timeout(crate::SHUTDOWN_GRACE, tracker.wait()).await;
    if is_temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleetml-demo-{}-{:08x}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Sends requests round-robin to the devices' local API and prints latency percentiles and
/// the accuracy of the answers.
async fn infer_round(
    api_addr: &SocketAddr,
    device_ids: &[String],
    features: &[[f32; N_FEATURES]],
    labels: &[usize],
    n_requests: usize,
    version: i64,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut histogram = Histogram::default();
    let mut correct = 0usize;
    for request_idx in 0..n_requests {
        let device_id = &device_ids[request_idx % device_ids.len()];
        let sample_idx = request_idx % features.len();
        let body = serde_json::json!({
            "inputs": [{ "name": "features", "shape": [1, N_FEATURES], "datatype": "FP32", "data": features[sample_idx] }]
        });
        let started = std::time::Instant::now();
        let response = http.post(format!("http://{api_addr}/devices/{device_id}/v2/models/{MODEL}/infer")).json(&body).send().await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await?;
        histogram.record(started.elapsed().as_micros() as u64);
        if !status.is_success() {
            bail!("device {device_id} answered {status}: {answer}");
        }
        let served_version = answer["model_version"].as_str().unwrap_or_default();
        if served_version != version.to_string() {
            bail!("device {device_id} served version {served_version}, expected {version}");
        }
        let label = answer["outputs"]
            .as_array()
            .and_then(|outputs| outputs.iter().find(|output| output["name"] == "label"))
            .and_then(|output| output["data"][0].as_u64());
        if label == Some(labels[sample_idx] as u64) {
            correct += 1;
        }
    }
    println!(
        "{n_requests} inference requests over {} devices (client side, HTTP included): p50 {:.0} µs, p95 {:.0} µs, p99 {:.0} µs; {:.1}% correct",
        device_ids.len(),
        histogram.quantile(0.5).unwrap_or_default(),
        histogram.quantile(0.95).unwrap_or_default(),
        histogram.quantile(0.99).unwrap_or_default(),
        correct as f32 * 100.0 / n_requests.max(1) as f32
    );
    Ok(())
}
