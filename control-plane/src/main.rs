//! `fleetml`: parses the command line, starts tracing and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetml_plane::api::rollouts::RolloutView;
use fleetml_plane::api::runs::{RunComparison, RunView};
use fleetml_plane::api::shadows::ShadowView;
use fleetml_plane::api::splits::SplitView;
use fleetml_plane::api::views::{AliasRequest, DeployRequest, VersionView};
use fleetml_plane::cli::{self, Client};
use fleetml_plane::config::{self, ConfigError, FileConfig, ServeArgs};
use fleetml_plane::demo::{self, DemoOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleetml", version, about = "fleetml: MLOps for fleets of devices")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "FLEETML_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// The plane's API.
    #[arg(long, env = "FLEETML_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token (default: DATA_DIR/admin.token when readable).
    #[arg(long, env = "FLEETML_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where to look for admin.token when no token is given.
    #[arg(long, env = "FLEETML_DATA_DIR", default_value = "fleetml-data")]
    data_dir: PathBuf,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let token = self
            .token
            .clone()
            .or_else(|| std::fs::read_to_string(self.data_dir.join("admin.token")).ok().map(|token| token.trim().to_string()));
        Client::new(&self.server, token)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on one machine: plane, broker, a simulated fleet, two model versions.
    Demo {
        /// Exit 0 after the scenario instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Keep the demo's data here (default: a new temporary folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// API address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        http: SocketAddr,
        /// Inference requests sent per version.
        #[arg(long, default_value_t = 400)]
        requests: usize,
    },
    /// Run the control plane.
    Serve(ServeArgs),
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Model registry.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Deploy NAME@VERSION or NAME@ALIAS to a device or a label selector (a standing assignment).
    Deploy {
        reference: String,
        #[arg(long, conflicts_with = "selector")]
        device: Option<String>,
        /// Kubernetes-style selector: k=v, k!=v, k in (a,b), k notin (a,b), k, !k; comma means AND.
        #[arg(long)]
        selector: Option<String>,
        /// Wait, with a progress bar, until the matched devices run the version.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List devices: status, labels, and per model the active and installing versions.
    Devices {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Staged rollouts with health gates.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Reference profiles of training data, for drift monitoring.
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Drift of a model version's inputs and outputs against its reference profile.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// Fleet experiments: A/B splits between versions, and shadow candidates.
    Split {
        #[command(subcommand)]
        command: SplitCommand,
    },
    /// Run a candidate beside the active version on live requests (it never answers).
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// Experiment runs logged by the MLflow client or the API.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Offline bundle tools.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write DIR/signing.key (ed25519 private key, PEM) and DIR/signing.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Register the next version of NAME; prints the version number.
    Push {
        name: String,
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// A reference profile (`fleetml profile build`, or examples/make_profile.py) to attach
        /// to the bundle for drift monitoring.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Override the profile's drift window: seconds per window on the devices.
        #[arg(long)]
        drift_window_seconds: Option<u64>,
        /// Override the profile's drift window: samples per window on the devices.
        #[arg(long)]
        drift_window_samples: Option<u64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List models and versions.
    List {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Point an alias (champion, challenger, ...) at a version.
    Alias {
        name: String,
        alias: String,
        version: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Build a profile from a CSV of training data (header row; numbers; empty/NA/NaN are nulls).
    Build {
        #[arg(long)]
        csv: PathBuf,
        /// Columns in the order of the input tensor's elements (default: all but --output ones);
        /// `NAME:INDEX` pins a column to an element.
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Columns holding category codes (vocabulary and exact counts instead of a sketch).
        #[arg(long, value_delimiter = ',')]
        categorical: Vec<String>,
        /// `COLUMN=TENSOR`: a column holding a model output (e.g. `label=label`).
        #[arg(long = "output")]
        outputs: Vec<String>,
        /// The model input the columns map to (default: the model's first input with --model, else `input`).
        #[arg(long)]
        input_tensor: Option<String>,
        /// An ONNX model to take the input name from and check the profile against.
        #[arg(long)]
        model: Option<PathBuf>,
        /// KLL sketch size.
        #[arg(long, default_value_t = 200)]
        k: u16,
        /// Equal-mass bins per numeric column.
        #[arg(long, default_value_t = 20)]
        bins: usize,
        /// Device window: seconds (a window closes at whichever limit comes first).
        #[arg(long, default_value_t = 60)]
        window_seconds: u64,
        /// Device window: samples.
        #[arg(long, default_value_t = 5000)]
        window_samples: u64,
        /// Consecutive drifted windows before the plane raises a drift event.
        #[arg(long, default_value_t = 3)]
        consecutive_windows: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a profile file and summarise it.
    Inspect { file: PathBuf },
}

#[derive(Subcommand)]
enum DriftCommand {
    /// Per feature and output: the drift metric, its value, the threshold and the decision.
    Show {
        reference: String,
        /// Only devices matching this label selector.
        #[arg(long)]
        cohort: Option<String>,
        /// How far back (`1h`, `30m`, `90s`).
        #[arg(long, default_value = "1h")]
        window: String,
        /// Also judge each step of the window (a time series), e.g. `5m`.
        #[arg(long)]
        step: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drift events raised for a model.
    Events {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum SplitCommand {
    /// Split the devices matching SELECTOR between versions of NAME: `--variant 1=0.5 --variant 2=0.5`.
    Start {
        name: String,
        #[arg(long, default_value = "")]
        selector: String,
        /// VERSION=WEIGHT, at least two.
        #[arg(long = "variant", required = true)]
        variants: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Per-variant figures side by side.
    Status {
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a split without a winner: its devices keep their variants; devices that match later get none.
    Stop {
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Promote the winner into a staged rollout: `--version V`, or `--rule lowest_error_rate|lowest_p95_latency`.
    Promote {
        id: i64,
        #[arg(long, conflicts_with = "rule")]
        version: Option<i64>,
        #[arg(long, required_unless_present = "version")]
        rule: Option<String>,
        /// Variants with fewer requests cannot win by rule.
        #[arg(long, default_value_t = 100)]
        min_requests: i64,
        /// A rollout policy file (default: 10% then 100% of the split's cohort).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ShadowCommand {
    /// Put NAME@VERSION beside the active version on the devices matching SELECTOR.
    Start {
        reference: String,
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Agreement with the active version, and latency, per candidate.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove the shadow candidate from the devices matching SELECTOR.
    Stop {
        name: String,
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Start rolling NAME@VERSION or NAME@ALIAS out with a policy (TOML or JSON file).
    Start {
        reference: String,
        #[arg(long)]
        policy: PathBuf,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Devices per state, wave, gate results and events.
    Status {
        id: i64,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    Pause {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Resume {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Abort {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send every device the rollout moved back to its previous version (signed rollback).
    Rollback {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs, newest first (or by --order-by).
    List {
        /// Experiment name or id (default: all).
        #[arg(long)]
        experiment: Option<String>,
        /// MLflow filter syntax, e.g. "metrics.acc > 0.9 and params.lr = '0.1'".
        #[arg(long)]
        filter: Option<String>,
        /// e.g. "metrics.acc DESC".
        #[arg(long)]
        order_by: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One run: status, params, tags, latest metrics.
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Runs side by side: every param and metric.
    Compare {
        #[arg(required = true, num_args = 2..)]
        run_ids: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Check an ONNX file with tract and write a signed bundle.
    Build {
        #[arg(long)]
        onnx: PathBuf,
        #[arg(long)]
        model: String,
        #[arg(long)]
        version: u64,
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Days until devices refuse the bundle (0: never).
        #[arg(long, default_value_t = 365)]
        expires_in_days: u64,
        /// A reference profile to attach for drift monitoring.
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Verify signature, expiry, lengths and hashes.
    Verify {
        file: PathBuf,
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<PathBuf>,
    },
    /// Print the manifest (without verifying it).
    Inspect { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the client commands print what matters; the server logs.
    let default_filter = match &cli.command {
        Command::Serve(_) => "info,rumqttd=warn,rumqttc=warn",
        _ => "warn,rumqttd=off,rumqttc=error",
    };
    init_tracing(&cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fleetml: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                eprintln!("fleetml: {config_error}");
                return ExitCode::from(64);
            }
            eprintln!("fleetml: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo { once, devices, data_dir, http, requests } => {
            if devices == 0 {
                return Err(ConfigError { field: "devices".into(), reason: "must be at least 1".into() }.into());
            }
            let cancel = CancellationToken::new();
            spawn_signal_handler(cancel.clone());
            demo::run(DemoOptions { devices, once, data_dir, http, requests }, cancel).await?;
        }
        Command::Serve(args) => {
            let file = match &args.config {
                Some(path) => FileConfig::read(path)?,
                None => FileConfig::default(),
            };
            let plane_config = config::resolve(&args, &file)?;
            let cancel = CancellationToken::new();
            spawn_signal_handler(cancel.clone());
            fleetml_plane::serve(plane_config, cancel).await?;
        }
        Command::Keys { command: KeysCommand::Generate { out } } => {
            let (private_path, public_path, key_pair) = fleetml_plane::keys::generate(&out)?;
            println!("wrote {} and {} (key id {})", private_path.display(), public_path.display(), key_pair.key_id());
        }
        Command::Model { command } => model_command(command).await?,
        Command::Deploy { reference, device, selector, wait, timeout_s, json, client } => {
            let (model, version, alias) = cli::parse_reference(&reference)?;
            if device.is_none() && selector.is_none() {
                anyhow::bail!("give --device ID or --selector SELECTOR");
            }
            let client = client.client()?;
            let deployment = client.deploy(&DeployRequest { model: model.clone(), version, alias, device, selector }).await?;
            if !json {
                let target = deployment
                    .device
                    .clone()
                    .map(|device| format!("device {device}"))
                    .unwrap_or_else(|| format!("selector `{}`", deployment.selector.clone().unwrap_or_default()));
                println!(
                    "deployment {}: {model}@{} to {target}; {} devices match now",
                    deployment.id,
                    deployment.version,
                    deployment.matched_devices.len()
                );
            }
            if wait {
                let outcome = cli::wait_for_rollout(
                    &client,
                    &model,
                    deployment.version,
                    &deployment.matched_devices,
                    Duration::from_secs(timeout_s),
                    json,
                )
                .await?;
                if json {
                    cli::print_json(&serde_json::json!({ "deployment": deployment, "outcome": outcome }))?;
                } else {
                    println!(
                        "{} installed, {} failed, {} pending after {:.1} s",
                        outcome.converged.len(),
                        outcome.failed.len(),
                        outcome.pending.len(),
                        outcome.elapsed.as_secs_f32()
                    );
                    for (device_id, reason) in &outcome.failed {
                        println!("  {device_id}: {reason}");
                    }
                }
                if !outcome.failed.is_empty() || !outcome.pending.is_empty() {
                    return Ok(ExitCode::from(2));
                }
            } else if json {
                cli::print_json(&deployment)?;
            }
        }
        Command::Runs { command } => runs_command(command).await?,
        Command::Rollout { command } => return rollout_command(command).await,
        Command::Split { command } => split_command(command).await?,
        Command::Profile { command } => profile_command(command)?,
        Command::Drift { command } => return drift_command(command).await,
        Command::Shadow { command } => shadow_command(command).await?,
        Command::Devices { json, client } => {
            let devices = client.client()?.devices().await?;
            if json { cli::print_json(&devices)? } else { cli::print_devices(&devices) }
        }
        Command::Bundle { command } => match command {
            BundleCommand::Build { onnx, model, version, signing_key, out, expires_in_days, profile } => {
                let profile = profile.map(|path| read_profile(&path, None, None)).transpose()?;
                let digest = cli::bundle_build(&onnx, &model, version, &signing_key, &out, expires_in_days, profile)?;
                println!("wrote {} ({model}@{version}, digest {digest})", out.display());
            }
            BundleCommand::Verify { file, trusted_keys } => match cli::bundle_verify(&file, &trusted_keys) {
                Ok(summary) => println!("{summary}"),
                Err(error) => {
                    eprintln!("fleetml: {}: INVALID: {error:#}", file.display());
                    return Ok(ExitCode::from(1));
                }
            },
            BundleCommand::Inspect { file } => cli::print_json(&cli::bundle_inspect(&file)?)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

async fn rollout_command(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (view, watch, json, client) = match command {
        RolloutCommand::Start { reference, policy, watch, json, client } => {
            let (model, version, alias) = cli::parse_reference(&reference)?;
            let text = std::fs::read_to_string(&policy).with_context(|| format!("reading {}", policy.display()))?;
            let body = serde_json::json!({ "model": model, "version": version, "alias": alias, "policy": text });
            let http = client.client()?;
            let view: RolloutView = http.post_json("/api/v1/rollouts", &body).await?;
            if !json {
                println!(
                    "rollout {} of {}@{}: {} devices in {} waves",
                    view.id,
                    view.model,
                    view.version,
                    view.devices.len(),
                    view.n_waves
                );
            }
            (view, watch, json, http)
        }
        RolloutCommand::Status { id, watch, json, client } => {
            let http = client.client()?;
            (http.get(&format!("/api/v1/rollouts/{id}")).await?, watch, json, http)
        }
        RolloutCommand::List { json, client } => {
            let views: Vec<RolloutView> = client.client()?.get("/api/v1/rollouts").await?;
            if json {
                cli::print_json(&views)?;
            } else {
                println!("{:>4} {:<24} {:>7} {:<12} {:>6}  DEVICES", "ID", "MODEL", "VERSION", "STATE", "WAVE");
                for view in &views {
                    let states: Vec<String> = view.devices_by_state.iter().map(|(state, n)| format!("{state}={n}")).collect();
                    println!(
                        "{:>4} {:<24} {:>7} {:<12} {:>3}/{:<2}  {}",
                        view.id,
                        view.model,
                        view.version,
                        view.state,
                        view.current_wave,
                        view.n_waves,
                        states.join(" ")
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        RolloutCommand::Pause { id, client } => (rollout_action(&client, id, "pause").await?, false, false, client.client()?),
        RolloutCommand::Resume { id, client } => (rollout_action(&client, id, "resume").await?, false, false, client.client()?),
        RolloutCommand::Abort { id, client } => (rollout_action(&client, id, "abort").await?, false, false, client.client()?),
        RolloutCommand::Rollback { id, client } => (rollout_action(&client, id, "rollback").await?, false, false, client.client()?),
    };
    let view = if watch { cli::watch_rollout(&client, view.id, json).await? } else { view };
    if json {
        cli::print_json(&view)?;
    } else {
        cli::print_rollout(&view);
    }
    Ok(match view.state.as_str() {
        "rolled_back" | "aborted" if watch => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// Reads a profile file, checks it, and applies window overrides.
fn read_profile(path: &std::path::Path, window_seconds: Option<u64>, window_samples: Option<u64>) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let profile =
        fleetml_shared::drift::profile::Profile::from_json(&bytes).with_context(|| format!("{} is not a valid profile", path.display()))?;
    if window_seconds.is_none() && window_samples.is_none() {
        return Ok(bytes);
    }
    let mut document = profile.to_document();
    if let Some(seconds) = window_seconds {
        anyhow::ensure!(seconds > 0, "--drift-window-seconds must be at least 1");
        document.window.seconds = seconds;
    }
    if let Some(samples) = window_samples {
        anyhow::ensure!(samples > 0, "--drift-window-samples must be at least 1");
        document.window.samples = samples;
    }
    let profile = fleetml_shared::drift::profile::Profile::from_document(document)?;
    Ok(profile.to_json())
}

fn profile_command(command: ProfileCommand) -> anyhow::Result<()> {
    match command {
        ProfileCommand::Build {
            csv,
            columns,
            categorical,
            outputs,
            input_tensor,
            model,
            k,
            bins,
            window_seconds,
            window_samples,
            consecutive_windows,
            out,
        } => {
            let specs = match &model {
                Some(path) => {
                    let onnx = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    Some(fleetml_plane::registry::inspect(&onnx)?)
                }
                None => None,
            };
            let input_tensor = input_tensor
                .or_else(|| specs.as_ref().and_then(|(inputs, _)| inputs.first().map(|spec| spec.name.clone())))
                .unwrap_or_else(|| "input".into());
            let mut options = fleetml_shared::drift::profile::BuildOptions { kll_k: k, n_bins: bins, ..Default::default() };
            options.window.seconds = window_seconds;
            options.window.samples = window_samples;
            options.thresholds.consecutive_windows = consecutive_windows;
            let profile = cli::profile_build(&cli::ProfileBuildArgs { csv: &csv, columns, categorical, outputs, input_tensor, options })?;
            if let Some((inputs, outputs)) = &specs {
                fleetml_plane::registry::check_profile(&profile, inputs, outputs)?;
            }
            std::fs::write(&out, profile.to_json()).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} features from {} rows, KLL k={k})", out.display(), profile.features().len(), profile.rows());
        }
        ProfileCommand::Inspect { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let profile = fleetml_shared::drift::profile::Profile::from_json(&bytes)
                .with_context(|| format!("{} is not a valid profile", file.display()))?;
            println!("{}: {} rows, window {:?}", file.display(), profile.rows(), profile.window());
            for feature in profile.features() {
                println!(
                    "  {} ({:?} {}, {:?}, metric {:?})",
                    feature.name,
                    feature.side,
                    feature.tensor,
                    feature.reference.kind(),
                    feature.metric
                );
            }
        }
    }
    Ok(())
}

async fn drift_command(command: DriftCommand) -> anyhow::Result<ExitCode> {
    match command {
        DriftCommand::Show { reference, cohort, window, step, json, client } => {
            let (model, version, alias) = cli::parse_reference(&reference)?;
            let http = client.client()?;
            let version = match (version, alias) {
                (Some(version), _) => version.to_string(),
                (None, Some(alias)) => alias,
                (None, None) => anyhow::bail!("give NAME@VERSION or NAME@ALIAS"),
            };
            let mut query = vec![("window", window)];
            if let Some(cohort) = cohort {
                query.push(("cohort", cohort));
            }
            if let Some(step) = step {
                query.push(("step", step));
            }
            let view: serde_json::Value = http.get_query(&format!("/api/v1/models/{model}/versions/{version}/drift"), &query).await?;
            if json {
                cli::print_json(&view)?;
            } else {
                cli::print_drift(&view);
            }
            Ok(if view["dataset_drifted"] == true { ExitCode::from(3) } else { ExitCode::SUCCESS })
        }
        DriftCommand::Events { name, json, client } => {
            let events: serde_json::Value = client.client()?.get(&format!("/api/v1/models/{name}/drift/events")).await?;
            if json {
                cli::print_json(&events)?;
            } else {
                for event in events.as_array().into_iter().flatten() {
                    let text = |key: &str| event[key].as_str().unwrap_or("").to_string();
                    let number = |key: &str| event[key].as_f64().map(|value| format!("{value:.4}")).unwrap_or_else(|| "-".into());
                    println!(
                        "{} {}@{} {} {}: value {} threshold {} over {} samples (window {}..{})",
                        event["at_ms"],
                        text("model"),
                        event["version"],
                        text("scope"),
                        text("feature"),
                        number("value"),
                        number("threshold"),
                        event["samples"],
                        event["window_start_ms"],
                        event["window_end_ms"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn split_command(command: SplitCommand) -> anyhow::Result<()> {
    match command {
        SplitCommand::Start { name, selector, variants, json, client } => {
            let variants = variants
                .iter()
                .map(|text| {
                    let (version, weight) = text.split_once('=').context(format!("variant `{text}`: VERSION=WEIGHT"))?;
                    let version: i64 = version.trim().parse().context(format!("variant `{text}`: the version is not a number"))?;
                    let weight: f64 = weight.trim().parse().context(format!("variant `{text}`: the weight is not a number"))?;
                    Ok(serde_json::json!({ "version": version, "weight": weight }))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = serde_json::json!({ "model": name, "selector": selector, "variants": variants });
            let view: SplitView = client.client()?.post_json("/api/v1/splits", &body).await?;
            if json { cli::print_json(&view)? } else { cli::print_split(&view) }
        }
        SplitCommand::Status { id, json, client } => {
            let view: SplitView = client.client()?.get(&format!("/api/v1/splits/{id}")).await?;
            if json { cli::print_json(&view)? } else { cli::print_split(&view) }
        }
        SplitCommand::Stop { id, json, client } => {
            let view: SplitView = client.client()?.post_json(&format!("/api/v1/splits/{id}/stop"), &serde_json::json!({})).await?;
            if json { cli::print_json(&view)? } else { cli::print_split(&view) }
        }
        SplitCommand::List { json, client } => {
            let views: Vec<SplitView> = client.client()?.get("/api/v1/splits").await?;
            if json { cli::print_json(&views)? } else { views.iter().for_each(cli::print_split) }
        }
        SplitCommand::Promote { id, version, rule, min_requests, policy, json, client } => {
            let policy = policy
                .map(|path| std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display())))
                .transpose()?
                .map(serde_json::Value::String);
            let body = serde_json::json!({ "version": version, "rule": rule, "min_requests": min_requests, "policy": policy });
            let view: RolloutView = client.client()?.post_json(&format!("/api/v1/splits/{id}/promote"), &body).await?;
            if json { cli::print_json(&view)? } else { cli::print_rollout(&view) }
        }
    }
    Ok(())
}

async fn shadow_command(command: ShadowCommand) -> anyhow::Result<()> {
    let (view, json): (ShadowView, bool) = match command {
        ShadowCommand::Start { reference, selector, json, client } => {
            let (model, version, _) = cli::parse_reference(&reference)?;
            let version = version.context("give NAME@VERSION")?;
            let body = serde_json::json!({ "model": model, "version": version, "selector": selector });
            let view: ShadowView = client.client()?.post_json("/api/v1/shadows", &body).await?;
            if !json {
                println!(
                    "{model}@{version} is the shadow candidate on the devices matching `{selector}`; `fleetml shadow status {model}` follows it"
                );
                return Ok(());
            }
            (view, json)
        }
        ShadowCommand::Status { name, json, client } => (client.client()?.get(&format!("/api/v1/shadows/{name}")).await?, json),
        ShadowCommand::Stop { name, selector, json, client } => {
            let body = serde_json::json!({ "selector": selector });
            (client.client()?.post_json(&format!("/api/v1/shadows/{name}/stop"), &body).await?, json)
        }
    };
    if json {
        cli::print_json(&view)?;
    } else {
        cli::print_shadow(&view);
    }
    Ok(())
}

async fn rollout_action(client: &ClientArgs, id: i64, action: &str) -> anyhow::Result<RolloutView> {
    client.client()?.post_json(&format!("/api/v1/rollouts/{id}/{action}"), &serde_json::json!({})).await
}

async fn runs_command(command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::List { experiment, filter, order_by, json, client } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(experiment.map(|value| ("experiment", value)));
            query.extend(filter.map(|value| ("filter", value)));
            query.extend(order_by.map(|value| ("order_by", value)));
            let runs: Vec<RunView> = client.client()?.get_query("/api/v1/runs", &query).await?;
            if json { cli::print_json(&runs)? } else { cli::print_runs(&runs) }
        }
        RunsCommand::Show { run_id, json, client } => {
            let run: RunView = client.client()?.get(&format!("/api/v1/runs/{run_id}")).await?;
            if json { cli::print_json(&run)? } else { cli::print_run(&run) }
        }
        RunsCommand::Compare { run_ids, json, client } => {
            let comparison: RunComparison = client.client()?.get_query("/api/v1/runs/compare", &[("ids", run_ids.join(","))]).await?;
            if json { cli::print_json(&comparison)? } else { cli::print_comparison(&comparison) }
        }
    }
    Ok(())
}

async fn model_command(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Push { name, file, description, profile, drift_window_seconds, drift_window_samples, json, client } => {
            let onnx = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let profile = match profile {
                Some(path) => Some(read_profile(&path, drift_window_seconds, drift_window_samples)?),
                None if drift_window_seconds.is_some() || drift_window_samples.is_some() => {
                    anyhow::bail!("--drift-window-* set the window of a profile: give --profile too")
                }
                None => None,
            };
            let pushed = client.client()?.push_with_profile(&name, onnx, &description, profile).await?;
            if json {
                cli::print_json(&pushed)?;
            } else {
                println!("{}", pushed.version);
                eprintln!(
                    "registered {}@{} (bundle {}, {} bytes)",
                    pushed.model,
                    pushed.version,
                    &pushed.digest[..12],
                    pushed.bundle_bytes
                );
            }
        }
        ModelCommand::List { name, json, client } => {
            let path = match &name {
                Some(name) => format!("/api/v1/models/{name}/versions"),
                None => "/api/v1/models".to_string(),
            };
            let versions: Vec<VersionView> = client.client()?.get(&path).await?;
            if json { cli::print_json(&versions)? } else { cli::print_versions(&versions) }
        }
        ModelCommand::Alias { name, alias, version, client } => {
            let _: serde_json::Value =
                client.client()?.put_json(&format!("/api/v1/models/{name}/aliases/{alias}"), &AliasRequest { version }).await?;
            println!("{name}@{alias} → version {version}");
        }
    }
    Ok(())
}

fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
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
        tracing::info!("shutting down");
        cancel.cancel();
    });
}

fn init_tracing(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETML_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
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
