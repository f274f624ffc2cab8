//! The `fleetml` command line: one file per subcommand, each a thin caller of the REST API
//! (through `client::Client`, with the request and answer types the server uses) or an offline
//! tool (`keys`, `bundle`, `profile`); `serve` and `demo` start the plane. `main.rs` only
//! parses, starts tracing and calls `run`.

mod bundle;
pub mod client;
mod deploy;
mod drift;
mod experiments;
mod keys;
mod model;
pub mod output;
mod profile;
mod rollout;
mod runs;
mod serve;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use self::client::Client;

#[derive(Parser)]
#[command(name = "fleetml", version, about = "fleetml: MLOps for fleets of devices")]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "FLEETML_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Where a client command finds the plane and its token.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// The plane's API.
    #[arg(long, env = "FLEETML_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token. Prefer FLEETML_TOKEN or --token-file: a flag's value is visible to
    /// other users in the process list.
    #[arg(long, env = "FLEETML_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, env = "FLEETML_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Where to look for admin.token when no token is given.
    #[arg(long, env = "FLEETML_DATA_DIR", default_value = "fleetml-data")]
    data_dir: PathBuf,
}

impl ClientArgs {
    /// The token: given, or from --token-file, else DATA_DIR/admin.token when readable.
    pub fn client(&self) -> anyhow::Result<Client> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?.trim().to_string(),
            ),
            (None, None) => std::fs::read_to_string(self.data_dir.join("admin.token")).ok().map(|token| token.trim().to_string()),
        };
        Client::new(&self.server, token)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run everything on one machine: plane, broker, a simulated fleet, two model versions.
    Demo(serve::DemoArgs),
    /// Run the control plane.
    Serve(crate::config::ServeArgs),
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Model registry.
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Deploy NAME@VERSION or NAME@ALIAS to a device or a label selector (a standing assignment).
    Deploy(deploy::DeployArgs),
    /// List devices: status, labels, and per model the active and installing versions.
    Devices(deploy::DevicesArgs),
    /// Staged rollouts with health gates.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Reference profiles of training data, for drift monitoring.
    Profile {
        #[command(subcommand)]
        command: profile::ProfileCommand,
    },
    /// Drift of a model version's inputs and outputs against its reference profile.
    Drift {
        #[command(subcommand)]
        command: drift::DriftCommand,
    },
    /// Fleet experiments: A/B splits between versions, and shadow candidates.
    Split {
        #[command(subcommand)]
        command: experiments::SplitCommand,
    },
    /// Run a candidate beside the active version on live requests (it never answers).
    Shadow {
        #[command(subcommand)]
        command: experiments::ShadowCommand,
    },
    /// Experiment runs logged by the MLflow client or the API.
    Runs {
        #[command(subcommand)]
        command: runs::RunsCommand,
    },
    /// API tokens: roles (viewer, operator, admin), scopes, expiry, revocation.
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// The audit log: every change to the fleet and to trust, who asked, from where, how it ended.
    Audit(tokens::AuditArgs),
    /// Offline bundle tools.
    Bundle {
        #[command(subcommand)]
        command: bundle::BundleCommand,
    },
}

impl Command {
    /// The log filter when `FLEETML_LOG`/`RUST_LOG` say nothing: the server logs, the client
    /// commands and the demo print what matters.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info,rumqttd=warn,rumqttc=warn",
            _ => "warn,rumqttd=off,rumqttc=error",
        }
    }
}

/// Runs one command to its exit code.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo(args) => serve::demo(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Keys { command } => keys::run(command),
        Command::Model { command } => model::run(command).await,
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Devices(args) => deploy::devices(args).await,
        Command::Rollout { command } => rollout::run(command).await,
        Command::Profile { command } => profile::run(command),
        Command::Drift { command } => drift::run(command).await,
        Command::Split { command } => experiments::split(command).await,
        Command::Shadow { command } => experiments::shadow(command).await,
        Command::Runs { command } => runs::run(command).await,
        Command::Tokens { command } => tokens::run(command).await,
        Command::Audit(args) => tokens::audit(args).await,
        Command::Bundle { command } => bundle::run(command),
    }
}

/// `NAME@REF` → (name, Some(version)) or (name, alias).
pub fn parse_reference(text: &str) -> anyhow::Result<(String, Option<i64>, Option<String>)> {
    let (name, reference) = text.split_once('@').with_context(|| format!("`{text}`: expected NAME@VERSION or NAME@ALIAS"))?;
    if name.is_empty() || reference.is_empty() {
        bail!("`{text}`: expected NAME@VERSION or NAME@ALIAS");
    }
    Ok(match reference.parse::<i64>() {
        Ok(version) => (name.to_string(), Some(version), None),
        Err(_) => (name.to_string(), None, Some(reference.to_string())),
    })
}

/// Cancels `cancel` on SIGINT or SIGTERM (systemd and Kubernetes stop with SIGTERM).
pub fn spawn_signal_handler(cancel: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_version_or_alias() {
        assert_eq!(parse_reference("m@3").unwrap(), ("m".into(), Some(3), None));
        assert_eq!(parse_reference("m@champion").unwrap(), ("m".into(), None, Some("champion".into())));
        assert!(parse_reference("m").is_err());
        assert!(parse_reference("@1").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
