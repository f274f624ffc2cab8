//! The `fleetml` client commands: thin callers of the REST API (the dashboard will call the
//! same endpoints), plus the offline `bundle` and `keys` tools.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetml_shared::bundle::{check_payload, read_bundle_file};
use fleetml_shared::signing::{PublicKey, SigningKeyPair, TrustedKeys};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::rollouts::RolloutView;
use crate::api::runs::{RunComparison, RunView};
use crate::api::views::{DeployRequest, DeploymentView, DeviceView, PushResponse, VersionView};
use crate::registry::{self, BundleOptions, DEFAULT_SELF_TEST_TOLERANCE};

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().context("building the HTTP client")?;
        Ok(Client { base: server.trim_end_matches('/').to_string(), token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response = builder.send().await.with_context(|| format!("cannot reach the plane at {}", self.base))?;
        let status = response.status();
        let body = response.bytes().await.context("reading the plane's answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value.get("message").and_then(|message| message.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).to_string());
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!("{message} (give --token or FLEETML_TOKEN)");
            }
            bail!("{message} (HTTP {})", status.as_u16());
        }
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from the plane: {}", String::from_utf8_lossy(&body)))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn get_query<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path).query(query)).await
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn put_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::PUT, path).json(body)).await
    }

    pub async fn push(&self, model: &str, onnx: Vec<u8>, description: &str) -> anyhow::Result<PushResponse> {
        self.push_with_profile(model, onnx, description, None).await
    }

    /// Uploads `profile` (if any) to `/api/v1/profiles`, then pushes the model with it attached.
    pub async fn push_with_profile(
        &self,
        model: &str,
        onnx: Vec<u8>,
        description: &str,
        profile: Option<Vec<u8>>,
    ) -> anyhow::Result<PushResponse> {
        let mut query = vec![("description", description.to_string())];
        if let Some(profile) = profile {
            let builder = self
                .request(reqwest::Method::POST, "/api/v1/profiles")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(profile);
            let uploaded: serde_json::Value = self.send(builder).await?;
            let sha256 = uploaded["sha256"].as_str().context("the plane did not answer the profile's sha256")?;
            query.push(("profile", sha256.to_string()));
        }
        let builder = self
            .request(reqwest::Method::POST, &format!("/api/v1/models/{model}/versions"))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(onnx);
        self.send(builder).await
    }

    pub async fn devices(&self) -> anyhow::Result<Vec<DeviceView>> {
        self.get("/api/v1/devices").await
    }

    pub async fn deploy(&self, request: &DeployRequest) -> anyhow::Result<DeploymentView> {
        self.post_json("/api/v1/deployments", request).await
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

pub fn print_split(view: &crate::api::splits::SplitView) {
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

pub fn print_shadow(view: &crate::api::shadows::ShadowView) {
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
        progress.set_position(view.devices_by_state.get("healthy").copied().unwrap_or(0) as u64);
        let states: Vec<String> =
            view.devices_by_state.iter().filter(|(state, _)| *state != "healthy").map(|(state, n)| format!("{n} {state}")).collect();
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

/// `fleetml bundle build`: the same checks and signature as a push, offline.
pub fn bundle_build(
    onnx_path: &Path,
    model: &str,
    version: u64,
    signing_key: &Path,
    out: &Path,
    expires_in_days: u64,
    profile: Option<Vec<u8>>,
) -> anyhow::Result<String> {
    let onnx = std::fs::read(onnx_path).with_context(|| format!("reading {}", onnx_path.display()))?;
    let key_pair = SigningKeyPair::read(signing_key)?;
    let options = BundleOptions {
        model: model.to_string(),
        version,
        expires_in_ms: (expires_in_days > 0).then(|| expires_in_days * 86_400_000),
        latency_budget_ms: None,
        tolerance: DEFAULT_SELF_TEST_TOLERANCE,
        profile,
    };
    let built = registry::build_bundle(&onnx, &options, &key_pair, fleetml_shared::now_ms())?;
    std::fs::write(out, &built.file_bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(built.signed_manifest.digest().to_hex())
}

/// `fleetml bundle verify`: signature, expiry, lengths and hashes.
pub fn bundle_verify(path: &Path, trusted_keys: &[std::path::PathBuf]) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (signed, payload) = read_bundle_file(&mut bytes.as_slice())?;
    let keys = trusted_keys.iter().map(|path| PublicKey::read(path)).collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        bail!("give at least one --trusted-key");
    }
    let verified = signed.verify(&TrustedKeys::new(keys), fleetml_shared::now_ms())?;
    check_payload(&verified.manifest, &payload)?;
    Ok(format!(
        "{}: valid bundle of {}@{} signed by key {} ({} bytes, digest {})",
        path.display(),
        verified.manifest.model,
        verified.manifest.version,
        verified.manifest.key_id,
        payload.len(),
        verified.digest
    ))
}

/// `fleetml bundle inspect`: the manifest as JSON, unverified.
pub fn bundle_inspect(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (signed, payload) = read_bundle_file(&mut bytes.as_slice())?;
    let manifest = signed.decode_unverified()?;
    let schema = registry::schema_of(&manifest);
    Ok(serde_json::json!({
        "digest": signed.digest().to_hex(),
        "model": manifest.model,
        "version": manifest.version,
        "format_version": manifest.format_version,
        "created_at_ms": manifest.created_at_ms,
        "expires_at_ms": manifest.expires_at_ms,
        "key_id": manifest.key_id.to_string(),
        "files": manifest.files.iter().map(|file| serde_json::json!({
            "role": file.role, "name": file.name, "length": file.length, "sha256": hex::encode(file.sha256),
        })).collect::<Vec<_>>(),
        "chunk_size": manifest.chunk_size,
        "n_chunks": manifest.n_chunks(),
        "payload_bytes_in_file": payload.len(),
        "inputs": schema.inputs,
        "outputs": schema.outputs,
        "self_test": {
            "tolerance": manifest.self_test.tolerance,
            "latency_budget_ms": manifest.self_test.latency_budget_ms,
            "inputs": manifest.self_test.inputs.iter().map(|input| serde_json::json!({"name": input.name, "shape": input.shape})).collect::<Vec<_>>(),
        },
        "verified": false,
    }))
}

/// What `fleetml profile build` reads from a CSV.
pub struct ProfileBuildArgs<'a> {
    pub csv: &'a Path,
    /// CSV columns, in the order of the input tensor's elements (default: every column but
    /// `outputs`' in file order). `name:INDEX` pins a column to an element.
    pub columns: Option<Vec<String>>,
    /// Columns whose values are category codes.
    pub categorical: Vec<String>,
    /// `COLUMN=TENSOR`: a column that holds a model output (a class label, a score).
    pub outputs: Vec<String>,
    pub input_tensor: String,
    pub options: fleetml_shared::drift::profile::BuildOptions,
}

/// Builds a reference profile from a CSV: per column its KLL sketch, ~20 equal-mass bins with
/// exact counts and moments, or for categories the vocabulary and counts.
pub fn profile_build(args: &ProfileBuildArgs<'_>) -> anyhow::Result<fleetml_shared::drift::profile::Profile> {
    use fleetml_shared::drift::Side;
    use fleetml_shared::drift::profile::{ColumnKind, ColumnSpec, Profile};
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(args.csv)
        .with_context(|| format!("reading {}", args.csv.display()))?;
    let headers: Vec<String> =
        reader.headers().with_context(|| format!("reading the header of {}", args.csv.display()))?.iter().map(str::to_string).collect();
    let column_idx = |name: &str| -> anyhow::Result<usize> {
        headers
            .iter()
            .position(|header| header == name)
            .with_context(|| format!("no column `{name}` in the CSV (columns: {})", headers.join(", ")))
    };
    let mut outputs: Vec<(usize, String, String)> = Vec::new();
    for output in &args.outputs {
        let (column, tensor) = output.split_once('=').with_context(|| format!("--output `{output}`: expected COLUMN=TENSOR"))?;
        outputs.push((column_idx(column)?, column.to_string(), tensor.to_string()));
    }
    let selected: Vec<(usize, String, u32)> = match &args.columns {
        Some(columns) => columns
            .iter()
            .enumerate()
            .map(|(position, column)| {
                let (name, index) = match column.split_once(':') {
                    Some((name, index)) => {
                        (name, index.parse::<u32>().with_context(|| format!("--columns `{column}`: INDEX is not a number"))?)
                    }
                    None => (column.as_str(), position as u32),
                };
                Ok((column_idx(name)?, name.to_string(), index))
            })
            .collect::<anyhow::Result<_>>()?,
        None => headers
            .iter()
            .enumerate()
            .filter(|(csv_idx, _)| !outputs.iter().any(|(output_idx, _, _)| output_idx == csv_idx))
            .enumerate()
            .map(|(position, (csv_idx, name))| (csv_idx, name.clone(), position as u32))
            .collect(),
    };
    for name in &args.categorical {
        anyhow::ensure!(
            selected.iter().any(|(_, selected_name, _)| selected_name == name) || outputs.iter().any(|(_, output, _)| output == name),
            "--categorical `{name}` is not one of the profiled columns"
        );
    }
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); selected.len() + outputs.len()];
    let csv_indices: Vec<usize> =
        selected.iter().map(|(csv_idx, _, _)| *csv_idx).chain(outputs.iter().map(|(csv_idx, _, _)| *csv_idx)).collect();
    for (row_idx, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("CSV row {}", row_idx + 2))?;
        for (column_values, csv_idx) in values.iter_mut().zip(&csv_indices) {
            let field = record.get(*csv_idx).unwrap_or("");
            // Empty, NA and NaN are nulls; anything else must be a number.
            let value = if field.is_empty() || field.eq_ignore_ascii_case("na") || field.eq_ignore_ascii_case("nan") {
                f64::NAN
            } else {
                field
                    .parse::<f64>()
                    .with_context(|| format!("CSV row {}, column `{}`: `{field}` is not a number", row_idx + 2, headers[*csv_idx]))?
            };
            column_values.push(value);
        }
    }
    anyhow::ensure!(values.first().is_some_and(|column| !column.is_empty()), "the CSV has no data rows");
    let kind = |name: &str, index: u32| {
        if args.categorical.iter().any(|categorical| categorical == name) {
            ColumnKind::Categorical { index, labels: None }
        } else {
            ColumnKind::Numeric { index }
        }
    };
    let mut specs: Vec<ColumnSpec> = selected
        .iter()
        .map(|(_, name, index)| ColumnSpec {
            name: name.clone(),
            side: Side::Input,
            tensor: args.input_tensor.clone(),
            kind: kind(name, *index),
            metric: None,
        })
        .collect();
    specs.extend(outputs.iter().map(|(_, name, tensor)| ColumnSpec {
        name: name.clone(),
        side: Side::Output,
        tensor: tensor.clone(),
        kind: kind(name, 0),
        metric: None,
    }));
    let data: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
    Ok(Profile::build(&specs, &data, &args.options)?)
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
}
