//! `fleetml serve` (the plane, configured from TOML, FLEETML_* variables and flags) and
//! `fleetml demo` (the plane, a simulated fleet and two model versions on one machine).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::spawn_signal_handler;
use crate::config::{self, ConfigError, FileConfig, ServeArgs};
use crate::demo::{self, DemoOptions};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Exit 0 after the scenario instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Simulated devices.
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
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs { once, devices, data_dir, http, requests } = args;
    if devices == 0 {
        return Err(ConfigError { field: "devices".into(), reason: "must be at least 1".into() }.into());
    }
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    demo::run(DemoOptions { devices, once, data_dir, http, requests }, cancel).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    let plane_config = config::resolve(&args, &file)?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    crate::serve(plane_config, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
