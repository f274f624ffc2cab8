//! `fleetml runs list|show|compare`: tracked runs over the native API.

use std::process::ExitCode;

use super::ClientArgs;
use super::output::{print_comparison, print_json, print_run, print_runs};
use crate::api::views::{CompareQuery, RunComparison, RunView, RunsQuery};

#[derive(clap::Subcommand)]
pub enum RunsCommand {
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

pub async fn run(command: RunsCommand) -> anyhow::Result<ExitCode> {
    match command {
        RunsCommand::List { experiment, filter, order_by, json, client } => {
            let query = RunsQuery { experiment, filter, order_by, max_results: None };
            let runs: Vec<RunView> = client.client()?.get_query("/api/v1/runs", &query).await?;
            if json { print_json(&runs)? } else { print_runs(&runs) }
        }
        RunsCommand::Show { run_id, json, client } => {
            let run: RunView = client.client()?.get(&format!("/api/v1/runs/{run_id}")).await?;
            if json { print_json(&run)? } else { print_run(&run) }
        }
        RunsCommand::Compare { run_ids, json, client } => {
            let comparison: RunComparison =
                client.client()?.get_query("/api/v1/runs/compare", &CompareQuery { ids: run_ids.join(",") }).await?;
            if json { print_json(&comparison)? } else { print_comparison(&comparison) }
        }
    }
    Ok(ExitCode::SUCCESS)
}
