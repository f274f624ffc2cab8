//! `fleetml split ...` (A/B splits) and `fleetml shadow ...` (shadow candidates) over REST.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::output::{print_json, print_rollout, print_shadow, print_split};
use super::{ClientArgs, parse_reference};
use crate::api::views::{Promote, RolloutView, ShadowView, SplitView, StartShadow, StartSplit, StopShadow, Variant, WinnerRuleView};

#[derive(clap::Subcommand)]
pub enum SplitCommand {
    /// Split the devices matching SELECTOR between versions of NAME: `--variant 1=0.5 --variant 2=0.5`.
    Start {
        /// The model.
        name: String,
        /// The cohort (default: every device).
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
        /// The split's id.
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every split.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a split without a winner: its devices keep their variants; devices that match later get none.
    Stop {
        /// The split's id.
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Promote the winner into a staged rollout: `--version V`, or `--rule lowest_error_rate|lowest_p95_latency`.
    Promote {
        /// The split's id.
        id: i64,
        /// The winner, by hand.
        #[arg(long, conflicts_with = "rule")]
        version: Option<i64>,
        /// The rule that picks the winner: lowest_error_rate or lowest_p95_latency.
        #[arg(long, required_unless_present = "version")]
        rule: Option<String>,
        /// Variants with fewer requests cannot win by rule.
        #[arg(long, default_value_t = 100)]
        min_requests: u64,
        /// A rollout policy file (default: 10% then 100% of the split's cohort).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ShadowCommand {
    /// Put NAME@VERSION beside the active version on the devices matching SELECTOR.
    Start {
        /// NAME@VERSION: the candidate.
        reference: String,
        /// The cohort (default: every device).
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Agreement with the active version, and latency, per candidate.
    Status {
        /// The model.
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove the shadow candidate from the devices matching SELECTOR.
    Stop {
        /// The model.
        name: String,
        /// The cohort (default: every device).
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_variant(text: &str) -> anyhow::Result<Variant> {
    let (version, weight) = text.split_once('=').context(format!("variant `{text}`: VERSION=WEIGHT"))?;
    let version: i64 = version.trim().parse().context(format!("variant `{text}`: the version is not a number"))?;
    let weight: f64 = weight.trim().parse().context(format!("variant `{text}`: the weight is not a number"))?;
    Ok(Variant { version, weight })
}

pub async fn split(command: SplitCommand) -> anyhow::Result<ExitCode> {
    match command {
        SplitCommand::Start { name, selector, variants, json, client } => {
            let variants = variants.iter().map(|text| parse_variant(text)).collect::<anyhow::Result<Vec<_>>>()?;
            let view: SplitView = client.client()?.post_json("/api/v1/splits", &StartSplit { model: name, selector, variants }).await?;
            if json { print_json(&view)? } else { print_split(&view) }
        }
        SplitCommand::Status { id, json, client } => {
            let view: SplitView = client.client()?.get(&format!("/api/v1/splits/{id}")).await?;
            if json { print_json(&view)? } else { print_split(&view) }
        }
        SplitCommand::Stop { id, json, client } => {
            let view: SplitView = client.client()?.post_json(&format!("/api/v1/splits/{id}/stop"), &serde_json::json!({})).await?;
            if json { print_json(&view)? } else { print_split(&view) }
        }
        SplitCommand::List { json, client } => {
            let views: Vec<SplitView> = client.client()?.get("/api/v1/splits").await?;
            if json { print_json(&views)? } else { views.iter().for_each(print_split) }
        }
        SplitCommand::Promote { id, version, rule, min_requests, policy, json, client } => {
            let policy = policy
                .map(|path| std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display())))
                .transpose()?
                .map(serde_json::Value::String);
            let rule = rule
                .map(|rule| {
                    serde_json::from_value::<WinnerRuleView>(serde_json::Value::String(rule.clone()))
                        .with_context(|| format!("--rule `{rule}`: expected lowest_error_rate or lowest_p95_latency"))
                })
                .transpose()?;
            let request = Promote { version, rule, min_requests: Some(min_requests), policy };
            let view: RolloutView = client.client()?.post_json(&format!("/api/v1/splits/{id}/promote"), &request).await?;
            if json { print_json(&view)? } else { print_rollout(&view) }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn shadow(command: ShadowCommand) -> anyhow::Result<ExitCode> {
    let (view, json): (ShadowView, bool) = match command {
        ShadowCommand::Start { reference, selector, json, client } => {
            let (model, version, _) = parse_reference(&reference)?;
            let version = version.context("give NAME@VERSION")?;
            let request = StartShadow { model: model.clone(), version, selector: Some(selector.clone()), devices: Vec::new() };
            let view: ShadowView = client.client()?.post_json("/api/v1/shadows", &request).await?;
            if !json {
                println!(
                    "{model}@{version} is the shadow candidate on the devices matching `{selector}`; `fleetml shadow status {model}` follows it"
                );
                return Ok(ExitCode::SUCCESS);
            }
            (view, json)
        }
        ShadowCommand::Status { name, json, client } => (client.client()?.get(&format!("/api/v1/shadows/{name}")).await?, json),
        ShadowCommand::Stop { name, selector, json, client } => {
            let request = StopShadow { selector: Some(selector), devices: Vec::new() };
            (client.client()?.post_json(&format!("/api/v1/shadows/{name}/stop"), &request).await?, json)
        }
    };
    if json {
        print_json(&view)?;
    } else {
        print_shadow(&view);
    }
    Ok(ExitCode::SUCCESS)
}
