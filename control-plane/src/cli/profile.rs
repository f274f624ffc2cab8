//! `fleetml profile build|inspect`: reference profiles of training data, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum ProfileCommand {
    /// Build a profile from a CSV of training data (header row; numbers; empty/NA/NaN are nulls).
    Build {
        #[arg(long)]
        csv: PathBuf,
        /// Columns in the order of the input tensor's elements (default: all but --output ones);
        /// `NAME:INDEX` pins a column to an element.
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Columns holding category codes (vocabulary and exact counts instead of a sketch).
        #[arg(long, value_delimiter = ',')]
        categorical: Vec<String>,
        /// `COLUMN=TENSOR`: a column holding a model output (e.g. `label=label`).
        #[arg(long = "output")]
        outputs: Vec<String>,
        /// The model input the columns map to (default: the model's first input with --model, else `input`).
        #[arg(long)]
        input_tensor: Option<String>,
        /// An ONNX model to take the input name from and check the profile against.
        #[arg(long)]
        model: Option<PathBuf>,
        /// KLL sketch size.
        #[arg(long, default_value_t = 200)]
        k: u16,
        /// Equal-mass bins per numeric column.
        #[arg(long, default_value_t = 20)]
        bins: usize,
        /// Device window: seconds (a window closes at whichever limit comes first).
        #[arg(long, default_value_t = 60)]
        window_seconds: u64,
        /// Device window: samples.
        #[arg(long, default_value_t = 5000)]
        window_samples: u64,
        /// Consecutive drifted windows before the plane raises a drift event.
        #[arg(long, default_value_t = 3)]
        consecutive_windows: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a profile file and summarise it.
    Inspect { file: PathBuf },
}

pub fn run(command: ProfileCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProfileCommand::Build {
            csv,
            columns,
            categorical,
            outputs,
            input_tensor,
            model,
            k,
            bins,
            window_seconds,
            window_samples,
            consecutive_windows,
            out,
        } => {
            let specs = match &model {
                Some(path) => {
                    let onnx = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    Some(crate::registry::inspect(&onnx)?)
                }
                None => None,
            };
            let input_tensor = input_tensor
                .or_else(|| specs.as_ref().and_then(|(inputs, _)| inputs.first().map(|spec| spec.name.clone())))
                .unwrap_or_else(|| "input".into());
            let mut options = fleetml_shared::drift::profile::BuildOptions { kll_k: k, n_bins: bins, ..Default::default() };
            options.window.seconds = window_seconds;
            options.window.samples = window_samples;
            options.thresholds.consecutive_windows = consecutive_windows;
            let profile = profile_build(&ProfileBuildArgs { csv: &csv, columns, categorical, outputs, input_tensor, options })?;
            if let Some((inputs, outputs)) = &specs {
                crate::registry::check_profile(&profile, inputs, outputs)?;
            }
            std::fs::write(&out, profile.to_json()).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} features from {} rows, KLL k={k})", out.display(), profile.features().len(), profile.rows());
        }
        ProfileCommand::Inspect { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let profile = fleetml_shared::drift::profile::Profile::from_json(&bytes)
                .with_context(|| format!("{} is not a valid profile", file.display()))?;
            println!("{}: {} rows, window {:?}", file.display(), profile.rows(), profile.window());
            for feature in profile.features() {
                println!(
                    "  {} ({:?} {}, {:?}, metric {:?})",
                    feature.name,
                    feature.side,
                    feature.tensor,
                    feature.reference.kind(),
                    feature.metric
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a profile file, checks it, and applies window overrides.
pub(super) fn read_profile(path: &Path, window_seconds: Option<u64>, window_samples: Option<u64>) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let profile =
        fleetml_shared::drift::profile::Profile::from_json(&bytes).with_context(|| format!("{} is not a valid profile", path.display()))?;
    if window_seconds.is_none() && window_samples.is_none() {
        return Ok(bytes);
    }
    let mut document = profile.to_document();
    if let Some(seconds) = window_seconds {
        anyhow::ensure!(seconds > 0, "--drift-window-seconds must be at least 1");
        document.window.seconds = seconds;
    }
    if let Some(samples) = window_samples {
        anyhow::ensure!(samples > 0, "--drift-window-samples must be at least 1");
        document.window.samples = samples;
    }
    let profile = fleetml_shared::drift::profile::Profile::from_document(document)?;
    Ok(profile.to_json())
}

/// What `fleetml profile build` reads from a CSV.
struct ProfileBuildArgs<'a> {
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
fn profile_build(args: &ProfileBuildArgs<'_>) -> anyhow::Result<fleetml_shared::drift::profile::Profile> {
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
