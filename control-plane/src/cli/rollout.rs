//! `fleetml rollout start|status|list|pause|resume|abort|rollback`: staged rollouts over REST.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::client::Client;
use super::output::{print_json, print_rollout, watch_rollout};
use super::{ClientArgs, parse_reference};
use crate::api::views::{RolloutView, StartRollout};
use crate::rollout::RolloutState;
use crate::rollout::actions::RolloutAction;

#[derive(clap::Subcommand)]
pub enum RolloutCommand {
    /// Start rolling NAME@VERSION or NAME@ALIAS out with a policy (TOML or JSON file).
    Start {
        /// NAME@VERSION or NAME@ALIAS.
        reference: String,
        /// The policy: target, waves, gates, failure action (README, "A rollout policy").
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
        /// The rollout's id.
        id: i64,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every rollout, one line each.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop moving devices (the ones moved keep the new version).
    Pause {
        /// The rollout's id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Go on after a pause.
    Resume {
        /// The rollout's id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End it where it is.
    Abort {
        /// The rollout's id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send every device the rollout moved back to its previous version (signed rollback).
    Rollback {
        /// The rollout's id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

async fn act(client: &Client, id: i64, action: RolloutAction) -> anyhow::Result<RolloutView> {
    client.post_json(&format!("/api/v1/rollouts/{id}/{}", action.as_str()), &serde_json::json!({})).await
}

pub async fn run(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (view, watch, json, client) = match command {
        RolloutCommand::Start { reference, policy, watch, json, client } => {
            let (model, version, alias) = parse_reference(&reference)?;
            let text = std::fs::read_to_string(&policy).with_context(|| format!("reading {}", policy.display()))?;
            let request = StartRollout { model, version, alias, policy: serde_json::Value::String(text) };
            let http = client.client()?;
            let view: RolloutView = http.post_json("/api/v1/rollouts", &request).await?;
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
                print_json(&views)?;
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
        RolloutCommand::Pause { id, client } => (act(&client.client()?, id, RolloutAction::Pause).await?, false, false, client.client()?),
        RolloutCommand::Resume { id, client } => (act(&client.client()?, id, RolloutAction::Resume).await?, false, false, client.client()?),
        RolloutCommand::Abort { id, client } => (act(&client.client()?, id, RolloutAction::Abort).await?, false, false, client.client()?),
        RolloutCommand::Rollback { id, client } => {
            (act(&client.client()?, id, RolloutAction::Rollback).await?, false, false, client.client()?)
        }
    };
    let view = if watch { watch_rollout(&client, view.id, json).await? } else { view };
    if json {
        print_json(&view)?;
    } else {
        print_rollout(&view);
    }
    let ended_badly = matches!(RolloutState::parse(&view.state), Some(RolloutState::RolledBack | RolloutState::Aborted));
    Ok(if watch && ended_badly { ExitCode::from(2) } else { ExitCode::SUCCESS })
}
