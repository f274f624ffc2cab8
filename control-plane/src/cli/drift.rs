//! `fleetml drift show|events`: a version's drift against its reference profile, over REST.

use std::process::ExitCode;

use super::output::{print_drift, print_json};
use super::{ClientArgs, parse_reference};

#[derive(clap::Subcommand)]
pub enum DriftCommand {
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

pub async fn run(command: DriftCommand) -> anyhow::Result<ExitCode> {
    match command {
        DriftCommand::Show { reference, cohort, window, step, json, client } => {
            let (model, version, alias) = parse_reference(&reference)?;
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
                print_json(&view)?;
            } else {
                print_drift(&view);
            }
            Ok(if view["dataset_drifted"] == true { ExitCode::from(3) } else { ExitCode::SUCCESS })
        }
        DriftCommand::Events { name, json, client } => {
            let events: serde_json::Value = client.client()?.get(&format!("/api/v1/models/{name}/drift/events")).await?;
            if json {
                print_json(&events)?;
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
