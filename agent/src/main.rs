//! `fleetml-agent`: parses configuration, starts tracing and hands over to the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetml_agent::config::{self, AgentConfig, CommonArgs, ConfigError, DeviceConfig, FileConfig, SimConfig, TestingConfig};
use fleetml_shared::selector::{Selector, parse_label};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(name = "fleetml-agent", version, about = "fleetml device agent: installs signed models, serves local inference")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "FLEETML_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one device.
    Run {
        /// This device's id (letters, digits, - _ .).
        #[arg(long, env = "FLEETML_AGENT_DEVICE_ID")]
        device_id: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Run N simulated devices in one process (demos, tests, benchmarks).
    Sim {
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Device ids are PREFIX0000, PREFIX0001, ...
        #[arg(long, default_value = "sim-")]
        id_prefix: String,
        #[arg(long, default_value_t = 0)]
        first_index: usize,
        /// Spread a label over the fleet round-robin: key=a|b|c (repeatable).
        #[arg(long = "label-cycle")]
        label_cycles: Vec<String>,
        /// TESTING ONLY: restrict --testing-fail-self-test to devices matching this selector.
        #[arg(long, default_value = "")]
        testing_selector: String,
        /// Devices started per second, each opening its MQTT connection as it starts, so
        /// thousands do not reach the broker at once (default 0: all at once).
        #[arg(long, default_value_t = 0.0)]
        connect_rate: f64,
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn usage_error(error: ConfigError) -> ExitCode {
    eprintln!("fleetml-agent: {error}");
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fleetml-agent: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let default_http = "127.0.0.1:8081".parse().unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 8081)));
    let cancel = CancellationToken::new();
    let result: anyhow::Result<()> = match cli.command {
        Command::Run { device_id, common } => {
            let file = match common.config.as_deref().map(FileConfig::read).transpose() {
                Ok(file) => file.unwrap_or_default(),
                Err(error) => return usage_error(error),
            };
            let resolved = match config::resolve(&common, &file, default_http) {
                Ok(resolved) => resolved,
                Err(error) => return usage_error(error),
            };
            let Some(device_id) = device_id.or(file.device_id.clone()) else {
                return usage_error(ConfigError { field: "device_id".into(), reason: "required (--device-id)".into() });
            };
            if let Err(error) = config::check_device_id(&device_id) {
                return usage_error(error);
            }
            let agent_config = AgentConfig {
                device: DeviceConfig {
                    device_id,
                    labels: resolved.labels,
                    state_dir: resolved.state_dir,
                    trusted_keys: resolved.trusted_keys,
                    link: resolved.link,
                    telemetry: resolved.telemetry,
                    transfer: resolved.transfer,
                    testing: resolved.testing,
                },
                http: resolved.http,
                api: resolved.api,
                inference_threads: resolved.inference_threads,
            };
            let device_id = agent_config.device.device_id.clone();
            runtime.block_on(async {
                spawn_signal_handler(cancel.clone());
                let tracker = TaskTracker::new();
                let handle = fleetml_agent::start(agent_config, &tracker, &cancel).await?;
                println!("fleetml-agent: device {device_id} running, local API http://{}", handle.api_addr);
                fleetml_agent::wait_for_shutdown(tracker, cancel).await;
                Ok(())
            })
        }
        Command::Sim { count, id_prefix, first_index, label_cycles, testing_selector, connect_rate, common } => {
            let file = match common.config.as_deref().map(FileConfig::read).transpose() {
                Ok(file) => file.unwrap_or_default(),
                Err(error) => return usage_error(error),
            };
            let resolved = match config::resolve(&common, &file, default_http) {
                Ok(resolved) => resolved,
                Err(error) => return usage_error(error),
            };
            let sim_config = match sim_config(count, id_prefix, first_index, &label_cycles, &testing_selector, connect_rate, resolved) {
                Ok(sim_config) => sim_config,
                Err(error) => return usage_error(error),
            };
            runtime.block_on(async {
                spawn_signal_handler(cancel.clone());
                let tracker = TaskTracker::new();
                let handle = fleetml_agent::sim::start(&sim_config, &tracker, &cancel).await?;
                println!(
                    "fleetml-agent: simulated fleet of {} devices running, local API http://{}/devices/{{device}}/v2",
                    handle.device_ids.len(),
                    handle.api_addr
                );
                fleetml_agent::wait_for_shutdown(tracker, cancel).await;
                Ok(())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleetml-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn sim_config(
    count: usize,
    id_prefix: String,
    first_index: usize,
    label_cycles: &[String],
    testing_selector: &str,
    connect_rate: f64,
    resolved: config::Resolved,
) -> Result<SimConfig, ConfigError> {
    let field_error = |field: &str, reason: String| ConfigError { field: field.into(), reason };
    if count == 0 {
        return Err(field_error("count", "must be at least 1".into()));
    }
    if !(connect_rate.is_finite() && connect_rate >= 0.0) {
        return Err(field_error("connect_rate", format!("{connect_rate}: must be a non-negative number of devices per second")));
    }
    config::check_device_id(&format!("{id_prefix}0")).map_err(|error| field_error("id_prefix", error.reason))?;
    let mut cycles = Vec::new();
    for text in label_cycles {
        let (key, values) = text.split_once('=').ok_or_else(|| field_error("label_cycle", format!("`{text}`: expected key=a|b|c")))?;
        let values: Vec<String> = values.split('|').map(str::to_string).collect();
        for value in &values {
            parse_label(&format!("{key}={value}")).map_err(|error| field_error("label_cycle", error.to_string()))?;
        }
        cycles.push((key.to_string(), values));
    }
    let testing_selector = Selector::parse(testing_selector).map_err(|error| field_error("testing_selector", error.to_string()))?;
    let base_labels: BTreeMap<String, String> = resolved.labels;
    let state_dir: PathBuf = resolved.state_dir;
    Ok(SimConfig {
        count,
        id_prefix,
        first_index,
        base_labels,
        label_cycles: cycles,
        state_dir,
        trusted_keys: resolved.trusted_keys,
        link: resolved.link,
        telemetry: resolved.telemetry,
        transfer: resolved.transfer,
        http: resolved.http,
        api: resolved.api,
        inference_threads: resolved.inference_threads,
        testing: TestingConfig { fail_self_test: resolved.testing.fail_self_test },
        testing_selector,
        connect_rate: (connect_rate > 0.0).then_some(connect_rate),
    })
}

fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(_) => {
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETML_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
