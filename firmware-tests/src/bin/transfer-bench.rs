//! Transfer figures for docs/benchmarks.md, on the real binaries (build them first, in the
//! same profile: `cargo build --release --workspace --bins`):
//!
//! `cargo run --release -p fleetml-firmware-tests --bin transfer-bench [-- --runs 3]`
//!
//! 1. bytes the plane publishes per device when 1, 10 and 100 devices fetch one bundle;
//! 2. time to finish a 10 MB transfer after the agent was killed at 50%, against a whole one;
//! 3. deploy-to-serving time on the three setups (embedded broker + SQLite, Mosquitto +
//!    SQLite, embedded broker + PostgreSQL).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fleetml_firmware_tests::proxy::FaultProxy;
use fleetml_firmware_tests::{Agent, AgentOptions, Plane, PlaneOptions, Setup, Sim, big_model, demo_models, test_dir, wait_for};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn fan_out(n_devices: usize, onnx: &[u8]) -> (f64, f64) {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let sim = Sim::start(&plane, n_devices, "fan-", &["--label", "fleet=fan"]).await;
    plane.wait_online(n_devices).await;
    let version = plane.push_ok("big", onnx.to_vec()).await;
    let started = Instant::now();
    plane.deploy("big", version, ("selector", "fleet=fan")).await;
    plane.wait_all_active(&sim.device_ids, "big", version, Duration::from_secs(600)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let published = plane.status().await["chunk_bytes_published"].as_u64().unwrap() as f64;
    (published / n_devices as f64, elapsed)
}

async fn transfer_seconds(kill_at: Option<f64>) -> f64 {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let proxy = FaultProxy::start(plane.mqtt_url.trim_start_matches("mqtt://").parse().unwrap()).await;
    // A 10 MB/s link, so that "50%" is a moment the test can catch.
    proxy.set_rate(10 * 1024 * 1024);
    let mut agent = Agent::start_with_broker(&plane, &proxy.url(), "edge-1", AgentOptions::default()).await;
    let version = plane.push_ok("big", big_model(10)).await;
    let started = Instant::now();
    plane.deploy("big", version, ("device", "edge-1")).await;
    let Some(share) = kill_at else {
        plane.wait_active("edge-1", "big", version).await;
        return started.elapsed().as_secs_f64();
    };
    wait_for("half the transfer", Duration::from_secs(120), || async {
        let slot = plane.slot("edge-1", "big").await?;
        (slot.received_bytes? as f64 >= share * slot.total_bytes? as f64).then_some(())
    })
    .await;
    agent.process.kill();
    let restarted = Instant::now();
    let _agent = Agent::start_with_broker(&plane, &proxy.url(), "edge-1", AgentOptions::default()).await;
    plane.wait_active("edge-1", "big", version).await;
    restarted.elapsed().as_secs_f64()
}

async fn deploy_to_serving(setup: Setup) -> Option<f64> {
    let options = setup.plane_options().await?;
    let dir = test_dir();
    let plane = Plane::start(dir.path(), options).await;
    let agent = Agent::start(&plane, "edge-1", AgentOptions::default()).await;
    plane.wait_online(1).await;
    let (onnx, _) = demo_models();
    let version = plane.push_ok("classifier", onnx).await;
    let started = Instant::now();
    plane.deploy("classifier", version, ("device", "edge-1")).await;
    let body = fleetml_firmware_tests::features_request(&[[0.5; 4]]);
    wait_for("the device to serve", Duration::from_secs(60), || async { (agent.infer("classifier", &body).await.0 == 200).then_some(()) })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    plane.clear_retained().await;
    Some(elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args().skip_while(|arg| arg != "--runs").nth(1).and_then(|value| value.parse().ok()).unwrap_or(3);
    println!("transfer-bench: {runs} runs each, medians; binaries from {}", fleetml_firmware_tests::bin_dir().display());

    let onnx = big_model(4);
    println!("\n## bytes the plane publishes per device, one {:.2} MB bundle", onnx.len() as f64 / 1e6);
    println!("| devices | bytes published per device | copies of the bundle in all | deploy to all active (s) |");
    println!("|---:|---:|---:|---:|");
    for n_devices in [1usize, 10, 100] {
        let (mut per_device, mut seconds) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (bytes, elapsed) = fan_out(n_devices, &onnx).await;
            per_device.push(bytes);
            seconds.push(elapsed);
        }
        let bytes = median(&mut per_device);
        println!("| {n_devices} | {bytes:.0} | {:.2} | {:.2} |", bytes * n_devices as f64 / onnx.len() as f64, median(&mut seconds));
    }

    println!("\n## 10 MB transfer over a 10 MB/s link");
    let (mut whole, mut resumed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        whole.push(transfer_seconds(None).await);
        resumed.push(transfer_seconds(Some(0.5)).await);
    }
    println!("| case | seconds (median) |\n|---|---:|");
    println!("| whole transfer, deploy to active | {:.2} |", median(&mut whole));
    println!("| killed at 50%, restart to active | {:.2} |", median(&mut resumed));

    println!("\n## deploy to serving, small model, one device");
    println!("| setup | seconds (median) |\n|---|---:|");
    for setup in [Setup::EmbeddedBrokerSqlite, Setup::MosquittoSqlite, Setup::EmbeddedBrokerPostgres] {
        let mut seconds = Vec::new();
        for _ in 0..runs {
            if let Some(elapsed) = deploy_to_serving(setup).await {
                seconds.push(elapsed);
            }
        }
        if seconds.is_empty() {
            println!("| {setup:?} | skipped (service missing) |");
        } else {
            println!("| {setup:?} | {:.3} |", median(&mut seconds));
        }
    }
}
