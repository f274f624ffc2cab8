//! What the client commands print for people (tables, progress bars) and for scripts
//! (`--json`), and the waits that follow a deployment or a rollout.

use std::time::Duration;

use serde::Serialize;

use super::client::Client;
use crate::api::views::{DeviceView, RolloutView, RunComparison, RunView, ShadowView, SplitView, VersionView};
use crate::rollout::MemberState;

pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn print_devices(devices: &[DeviceView]) {
    println!("{:<16} {:<8} {:<34} {:<18} {:<24} LAST RESULT", "DEVICE", "STATUS", "LABELS", "MODEL", "ACTIVE / INSTALLING");
    for device in devices {
        let labels = device.labels.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",");
        let status = if device.online { "online" } else { "offline" };
        if device.slots.is_empty() {
            println!("{:<16} {:<8} {:<34} {:<18} {:<24} -", device.device_id, status, labels, "-", "-");
        }
        for slot in &device.slots {
            let active = slot.active_version.map(|version| format!("v{version}")).unwrap_or_else(|| "-".into());
            let installing = match (slot.target_version, slot.received_bytes, slot.total_bytes) {
                (Some(version), Some(received), Some(total)) if total > 0 => {
                    format!(" → v{version} {}%", received * 100 / total)
                }
                (Some(version), _, _) => format!(" → v{version} ({})", slot.phase),
                (None, _, _) if slot.desired_version.is_some() && slot.desired_version != slot.active_version => {
                    format!(" → v{} ({})", slot.desired_version.unwrap_or_default(), slot.phase)
                }
                _ => String::new(),
            };
            let result = match &slot.last_result {
                Some(result) if result.ok => format!("v{} installed", result.version),
                Some(result) => format!(
                    "v{} refused ({}): {}",
                    result.version,
                    result.kind.as_deref().unwrap_or("?"),
                    result.reason.as_deref().unwrap_or("")
                ),
                None => "-".into(),
            };
            println!(
                "{:<16} {:<8} {:<34} {:<18} {:<24} {result}",
                device.device_id,
                status,
                labels,
                slot.model,
                format!("{active}{installing}")
            );
        }
    }
}

pub fn print_versions(versions: &[VersionView]) {
    println!("{:<20} {:>7} {:<14} {:>10}  {:<20} DESCRIPTION", "MODEL", "VERSION", "DIGEST", "BYTES", "ALIASES");
    for version in versions {
        println!(
            "{:<20} {:>7} {:<14} {:>10}  {:<20} {}",
            version.model,
            version.version,
            &version.digest[..12.min(version.digest.len())],
            version.onnx_bytes,
            version.aliases.join(","),
            version.description
        );
    }
}

fn format_metric(value: Option<f64>) -> String {
    value.map(|value| format!("{value:.6}").trim_end_matches('0').trim_end_matches('.').to_string()).unwrap_or_else(|| "-".into())
}

pub fn print_runs(runs: &[RunView]) {
    println!("{:<34} {:<20} {:<9} {:>5}  METRICS", "RUN", "NAME", "STATUS", "EXP");
    for run in runs {
        let metrics: Vec<String> = run.metrics.iter().map(|(key, metric)| format!("{key}={}", format_metric(metric.value))).collect();
        println!("{:<34} {:<20} {:<9} {:>5}  {}", run.run_id, run.run_name, run.status, run.experiment_id, metrics.join(" "));
    }
}

pub fn print_run(run: &RunView) {
    println!("run {} ({}) in experiment {}: {}", run.run_id, run.run_name, run.experiment_id, run.status);
    println!("artifacts: {}", run.artifact_uri);
    for (title, pairs) in [("params", &run.params), ("tags", &run.tags)] {
        println!("{title}:");
        for (key, value) in pairs {
            println!("  {key} = {value}");
        }
    }
    println!("metrics (latest):");
    for (key, metric) in &run.metrics {
        println!("  {key} = {} (step {})", format_metric(metric.value), metric.step);
    }
}

pub fn print_comparison(comparison: &RunComparison) {
    let header: Vec<String> = comparison.runs.iter().map(|run| format!("{:<16}", &run.run_name)).collect();
    println!("{:<24} {}", "", header.join(" "));
    for (key, values) in &comparison.params {
        let cells: Vec<String> = values.iter().map(|value| format!("{:<16}", value.as_deref().unwrap_or("-"))).collect();
        println!("{:<24} {}", format!("params.{key}"), cells.join(" "));
    }
    for (key, values) in &comparison.metrics {
        let cells: Vec<String> = values.iter().map(|value| format!("{:<16}", format_metric(*value))).collect();
        println!("{:<24} {}", format!("metrics.{key}"), cells.join(" "));
    }
}

fn micros(value: Option<f64>) -> String {
    value.map(|value| format!("{value:.0} µs")).unwrap_or_else(|| "-".into())
}

fn percent(value: Option<f64>) -> String {
    value.map(|value| format!("{:.2}%", value * 100.0)).unwrap_or_else(|| "-".into())
}

/// The drift table: one line per feature and output.
pub fn print_drift(view: &serde_json::Value) {
    let cohort = view["cohort"].as_str().unwrap_or("all devices");
    println!(
        "{}@{} over the last {} ({cohort}): {} samples from {} devices, {} windows",
        view["model"].as_str().unwrap_or(""),
        view["version"],
        view["window"].as_str().unwrap_or(""),
        view["samples"],
        view["devices"],
        view["windows"]
    );
    println!("  {:<20} {:<7} {:<15} {:>10} {:>10}  DRIFTED", "FEATURE", "SIDE", "METRIC", "VALUE", "THRESHOLD");
    for feature in view["features"].as_array().into_iter().flatten() {
        let value = feature["value"].as_f64().map(|value| format!("{value:.4}")).unwrap_or_else(|| "-".into());
        println!(
            "  {:<20} {:<7} {:<15} {:>10} {:>10}  {}",
            feature["name"].as_str().unwrap_or(""),
            feature["side"].as_str().unwrap_or(""),
            feature["metric"].as_str().unwrap_or(""),
            value,
            feature["threshold"].as_f64().map(|threshold| format!("{threshold}")).unwrap_or_default(),
            if feature["drifted"] == true { "yes" } else { "no" }
        );
    }
    println!(
        "share of features drifted: {:.0}% ({} of {}); dataset drifted: {}",
        view["share_drifted"].as_f64().unwrap_or(0.0) * 100.0,
        view["n_drifted"],
        view["n_counted"],
        if view["dataset_drifted"] == true { "yes" } else { "no" }
    );
}

pub fn print_split(view: &SplitView) {
    println!("split {} of {} over `{}` ({})", view.id, view.model, view.selector, view.state);
    println!(
        "  {:>7} {:>6} {:>7} {:>6} {:>9} {:>8} {:>10} {:>10}",
        "VERSION", "WEIGHT", "DEVICES", "ACTIVE", "REQUESTS", "ERRORS", "P50", "P95"
    );
    for variant in &view.variants {
        println!(
            "  {:>7} {:>6.2} {:>7} {:>6} {:>9} {:>8} {:>10} {:>10}",
            variant.version,
            variant.weight,
            variant.devices.len(),
            variant.active,
            variant.requests,
            percent(variant.error_rate),
            micros(variant.latency_p50_us),
            micros(variant.latency_p95_us)
        );
    }
}

pub fn print_shadow(view: &ShadowView) {
    if view.candidates.is_empty() {
        println!("{}: no shadow candidate has run", view.model);
    }
    for candidate in &view.candidates {
        println!(
            "{}@{} shadow on {} devices ({} reporting): {} requests, {} rows, agreement {}, mean delta {}, max delta {}; \
             latency p95 {} (active {}); {} errors, {} skipped",
            view.model,
            candidate.candidate_version,
            candidate.devices_running,
            candidate.devices_reporting,
            candidate.requests,
            candidate.rows,
            percent(candidate.agreement),
            candidate.mean_delta.map(|value| format!("{value:.4}")).unwrap_or("-".into()),
            candidate.max_delta.map(|value| format!("{value:.4}")).unwrap_or("-".into()),
            micros(candidate.candidate_latency_p95_us),
            micros(candidate.active_latency_p95_us),
            candidate.errors,
            candidate.skipped
        );
    }
}

pub fn print_rollout(view: &RolloutView) {
    let states: Vec<String> = view.devices_by_state.iter().map(|(state, n)| format!("{n} {state}")).collect();
    println!(
        "rollout {} of {}@{}: {}, wave {}/{}; devices: {}",
        view.id,
        view.model,
        view.version,
        view.state,
        view.current_wave,
        view.n_waves,
        states.join(", ")
    );
    for device in view.devices.iter().filter(|device| !device.reason.is_empty()) {
        println!("  {} (wave {}): {} {}", device.device_id, device.wave, device.state, device.reason);
    }
    println!("events:");
    for event in &view.events {
        println!("  {} {}: {}", event.at_ms, event.kind, event.detail);
    }
}

/// Follows a rollout with a progress bar (devices healthy out of all) until it ends.
pub async fn watch_rollout(client: &Client, id: i64, quiet: bool) -> anyhow::Result<RolloutView> {
    let progress = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} healthy  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let view: RolloutView = client.get(&format!("/api/v1/rollouts/{id}")).await?;
        progress.set_length(view.devices.len() as u64);
        progress.set_position(view.count(MemberState::Healthy) as u64);
        let states: Vec<String> = view
            .devices_by_state
            .iter()
            .filter(|(state, _)| *state != MemberState::Healthy.as_str())
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        progress.set_message(format!("wave {}/{} {} {}", view.current_wave, view.n_waves, view.state, states.join(" ")));
        if !matches!(view.state.as_str(), "running") {
            progress.finish();
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every device a deployment matched runs the version (or refused it), with a
/// progress bar on a terminal and plain lines elsewhere.
pub async fn wait_for_rollout(
    client: &Client,
    model: &str,
    version: i64,
    devices: &[String],
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<WaitOutcome> {
    let progress = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(devices.len() as u64) };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} devices on v{msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = tokio::time::Instant::now();
    loop {
        let views = client.devices().await?;
        let mut outcome = WaitOutcome::default();
        for view in views.iter().filter(|view| devices.contains(&view.device_id)) {
            let slot = view.slots.iter().find(|slot| slot.model == model);
            match slot {
                Some(slot) if slot.active_version == Some(version as u64) => outcome.converged.push(view.device_id.clone()),
                Some(slot) if slot.last_result.as_ref().is_some_and(|result| !result.ok && result.version == version as u64) => {
                    let reason = slot.last_result.as_ref().and_then(|result| result.reason.clone()).unwrap_or_default();
                    outcome.failed.push((view.device_id.clone(), reason));
                }
                _ => outcome.pending.push(view.device_id.clone()),
            }
        }
        outcome.pending.extend(devices.iter().filter(|device| !views.iter().any(|view| &view.device_id == *device)).cloned());
        progress.set_position(outcome.converged.len() as u64);
        progress.set_message(format!("{version} ({} failed)", outcome.failed.len()));
        if outcome.pending.is_empty() || started.elapsed() >= timeout {
            progress.finish();
            outcome.elapsed = started.elapsed();
            return Ok(outcome);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct WaitOutcome {
    pub converged: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub pending: Vec<String>,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Milliseconds since the epoch as a UTC date and time, `2026-12-01 21:52:12`.
pub fn date_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::date_time;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(date_time(1_796_161_932_000), "2026-12-01 21:52:12");
        assert_eq!(date_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(date_time(-1_000), "1969-12-31 23:59:59");
    }
}
