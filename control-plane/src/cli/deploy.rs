//! `fleetml deploy` (a standing assignment, optionally waited for) and `fleetml devices`.

use std::process::ExitCode;
use std::time::Duration;

use super::output::{print_devices, print_json, wait_for_rollout};
use super::{ClientArgs, parse_reference};
use crate::api::views::DeployRequest;

#[derive(clap::Args)]
pub struct DeployArgs {
    /// NAME@VERSION or NAME@ALIAS.
    reference: String,
    /// One device.
    #[arg(long, conflicts_with = "selector")]
    device: Option<String>,
    /// Kubernetes-style selector: k=v, k!=v, k in (a,b), k notin (a,b), k, !k; comma means AND.
    #[arg(long)]
    selector: Option<String>,
    /// Wait, with a progress bar, until the matched devices run the version.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Args)]
pub struct DevicesArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let DeployArgs { reference, device, selector, wait, timeout_s, json, client } = args;
    let (model, version, alias) = parse_reference(&reference)?;
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
        let outcome =
            wait_for_rollout(&client, &model, deployment.version, &deployment.matched_devices, Duration::from_secs(timeout_s), json)
                .await?;
        if json {
            print_json(&serde_json::json!({ "deployment": deployment, "outcome": outcome }))?;
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
        print_json(&deployment)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn devices(args: DevicesArgs) -> anyhow::Result<ExitCode> {
    let devices = args.client.client()?.devices().await?;
    if args.json {
        print_json(&devices)?
    } else {
        print_devices(&devices)
    }
    Ok(ExitCode::SUCCESS)
}
