//! `fleetml model push|list|alias`: the registry over REST.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::ClientArgs;
use super::output::{print_json, print_versions};
use super::profile::read_profile;
use crate::api::views::{AliasRequest, AliasView, VersionView};

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Register the next version of NAME; prints the version number.
    Push {
        /// The model's name (A-Z a-z 0-9 - _ .).
        name: String,
        /// The ONNX file.
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
        /// Only this model's versions.
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Point an alias (champion, challenger, ...) at a version.
    Alias {
        /// The model.
        name: String,
        /// The alias: a name, not a number.
        alias: String,
        /// The version it names.
        version: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
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
                print_json(&pushed)?;
            } else {
                println!("{}", pushed.version);
                eprintln!(
                    "registered {}@{} (bundle {}, {} bytes)",
                    pushed.model,
                    pushed.version,
                    pushed.digest.get(..12).unwrap_or(&pushed.digest),
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
            if json { print_json(&versions)? } else { print_versions(&versions) }
        }
        ModelCommand::Alias { name, alias, version, client } => {
            let set: AliasView =
                client.client()?.put_json(&format!("/api/v1/models/{name}/aliases/{alias}"), &AliasRequest { version }).await?;
            println!("{}@{} → version {}", set.model, set.alias, set.version);
        }
    }
    Ok(ExitCode::SUCCESS)
}
