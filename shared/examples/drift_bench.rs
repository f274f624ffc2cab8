//! Drift layer figures for docs/benchmarks.md ("Drift sketches"):
//! ns per feature value in `WindowAccumulator::observe`, postcard bytes per feature per window,
//! time to merge 10,000 device windows, and KLL k=200 rank error next to Python's.
//!
//! `CARGO_TARGET_DIR=/var/tmp/fleetml-target-drift-release cargo run --release -p fleetml-shared --example drift_bench`
//! With `FLEETML_DRIFT_PYTHON` set, the same 10^6 values also go through Python's
//! `datasketches.kll_floats_sketch` (firmware-tests/drift/read_sketch.py rank-error).

use std::hint::black_box;
use std::time::Instant;

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};
use fleetml_shared::drift::Side;
use fleetml_shared::drift::metrics::evaluate;
use fleetml_shared::drift::profile::{BuildOptions, ColumnKind, ColumnSpec, Profile};
use fleetml_shared::drift::window::{DriftWindow, FeatureSummary, MergedWindow, TensorValues, WindowAccumulator};

const RUNS: usize = 7;

fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (1.0 - rng.f64(), rng.f64());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `n_numeric` normal features then `n_categorical` 5-code features, columns of tensor `input`.
fn bench_profile(n_numeric: usize, n_categorical: usize, rng: &mut fastrand::Rng) -> Profile {
    let mut columns = Vec::new();
    let mut data: Vec<Vec<f64>> = Vec::new();
    for index in 0..n_numeric + n_categorical {
        let categorical = index >= n_numeric;
        let kind = if categorical {
            ColumnKind::Categorical { index: index as u32, labels: None }
        } else {
            ColumnKind::Numeric { index: index as u32 }
        };
        columns.push(ColumnSpec { name: format!("f{index}"), side: Side::Input, tensor: "input".into(), kind, metric: None });
        data.push((0..10_000).map(|_| if categorical { rng.u8(0..5) as f64 } else { normal(rng) }).collect());
    }
    let slices: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    Profile::build(&columns, &slices, &BuildOptions::default()).expect("bench profile")
}

fn rows(n_rows: usize, n_numeric: usize, n_categorical: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    (0..n_rows)
        .flat_map(|_| {
            (0..n_numeric + n_categorical)
                .map(|index| if index >= n_numeric { rng.u8(0..6) as f32 } else { normal(rng) as f32 })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn observe_ns_per_value(n_numeric: usize, n_categorical: usize, batch: usize, rng: &mut fastrand::Rng) -> f64 {
    let profile = bench_profile(n_numeric, n_categorical, rng);
    let row_len = n_numeric + n_categorical;
    let n_rows = 200_000;
    let data = rows(n_rows, n_numeric, n_categorical, rng);
    let mut per_value = Vec::new();
    for _ in 0..RUNS {
        let mut accumulator = WindowAccumulator::new(&profile);
        let start = Instant::now();
        for chunk in data.chunks(batch * row_len) {
            accumulator.observe(Side::Input, "input", TensorValues::F32(chunk), row_len).expect("observe");
        }
        let elapsed = start.elapsed().as_nanos() as f64;
        black_box(accumulator.take(0, 1));
        per_value.push(elapsed / (n_rows * row_len) as f64);
    }
    median(per_value)
}

/// The floor: `KllSketch::update` alone on the same kind of values.
fn bare_kll_ns_per_value(rng: &mut fastrand::Rng) -> f64 {
    let values: Vec<f32> = (0..200_000).map(|_| normal(rng) as f32).collect();
    let mut per_value = Vec::new();
    for _ in 0..RUNS {
        let mut sketch = KllSketch::<KllFloat<f32>>::new(200).expect("k");
        let start = Instant::now();
        for value in &values {
            if let Ok(item) = KllFloat::<f32>::new(*value) {
                sketch.update(item);
            }
        }
        per_value.push(start.elapsed().as_nanos() as f64 / values.len() as f64);
        black_box(sketch.n());
    }
    median(per_value)
}

/// The floor of a numeric merge: the crate's own deserialize and merge of the same sketches.
fn bare_kll_merge_ms(windows: &[DriftWindow]) -> f64 {
    let sketches: Vec<&[u8]> = windows
        .iter()
        .filter_map(|window| match &window.features[0] {
            FeatureSummary::Numeric { kll, .. } => Some(kll.as_slice()),
            _ => None,
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let mut merged = KllSketch::<KllFloat<f32>>::new(200).expect("k");
        let start = Instant::now();
        for bytes in &sketches {
            merged.merge(&KllSketch::deserialize(bytes).expect("sketch")).expect("merge");
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
        black_box(merged.n());
    }
    median(times)
}

fn window_of(profile: &Profile, samples: usize, n_numeric: usize, n_categorical: usize, rng: &mut fastrand::Rng) -> DriftWindow {
    let mut accumulator = WindowAccumulator::new(profile);
    let data = rows(samples, n_numeric, n_categorical, rng);
    accumulator.observe(Side::Input, "input", TensorValues::F32(&data), n_numeric + n_categorical).expect("observe");
    accumulator.take(0, 60_000).expect("window")
}

fn max_rank_error(values: &[f32], k: u16) -> (f64, usize) {
    let mut sketch = KllSketch::<KllFloat<f32>>::new(k).expect("k");
    values.iter().for_each(|value| sketch.update(KllFloat::<f32>::new(*value).expect("not NaN")));
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let view = sketch.sorted_view();
    let mut worst: f64 = 0.0;
    for probe in 1..1000 {
        let rank = probe as f64 / 1000.0;
        let quantile = view.quantile(rank, SearchCriteria::Inclusive).expect("rank").expect("non-empty");
        let true_rank = sorted.partition_point(|value| *value <= *quantile) as f64 / sorted.len() as f64;
        worst = worst.max((true_rank - rank).abs());
    }
    (worst, sketch.serialize().len())
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(2026);
    println!("== observe: ns per feature value (median of {RUNS} runs of 200,000 rows)");
    for (label, n_numeric, n_categorical) in [("1 numeric", 1, 0), ("1 categorical", 0, 1), ("8 numeric + 2 categorical", 8, 2)] {
        for batch in [1, 32] {
            println!("{label:>26}, batch {batch:>2}: {:6.1} ns", observe_ns_per_value(n_numeric, n_categorical, batch, &mut rng));
        }
    }

    println!("{:>37}: {:6.1} ns", "KllSketch::update alone", bare_kll_ns_per_value(&mut rng));

    println!("== postcard bytes per feature per window (normal numeric; 5-code categorical with ~1/6 unseen)");
    let profile = bench_profile(1, 1, &mut rng);
    for samples in [100, 1_000, 10_000] {
        let window = window_of(&profile, samples, 1, 1, &mut rng);
        let numeric = postcard::to_allocvec(&window.features[0]).expect("encode").len();
        let categorical = postcard::to_allocvec(&window.features[1]).expect("encode").len();
        let whole = postcard::to_allocvec(&window).expect("encode").len();
        println!("{samples:>6} samples: numeric {numeric:>5} B, categorical {categorical:>4} B, whole window {whole:>5} B");
    }

    println!("== merge 10,000 device windows of one feature, then evaluate (median of {RUNS})");
    for (label, n_numeric, n_categorical) in [("numeric", 1, 0), ("categorical", 0, 1)] {
        let profile = bench_profile(n_numeric, n_categorical, &mut rng);
        for samples in [100, 1_000] {
            let windows: Vec<DriftWindow> = (0..10_000).map(|_| window_of(&profile, samples, n_numeric, n_categorical, &mut rng)).collect();
            let mut times = Vec::new();
            let mut evaluate_times = Vec::new();
            for _ in 0..RUNS {
                let mut merged = MergedWindow::new(&profile);
                let start = Instant::now();
                for window in &windows {
                    merged.merge(window).expect("merge");
                }
                times.push(start.elapsed().as_secs_f64() * 1e3);
                let start = Instant::now();
                black_box(evaluate(&profile, &merged, profile.thresholds()));
                evaluate_times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let floor = if n_numeric > 0 {
                format!(", bare KllSketch deserialize + merge {:6.1} ms", bare_kll_merge_ms(&windows))
            } else {
                String::new()
            };
            println!(
                "{label:>12}, {samples:>5} samples per window: merge {:6.1} ms, evaluate {:.2} ms{floor}",
                median(times),
                median(evaluate_times)
            );
        }
    }

    println!("== KLL k=200 max rank error, 10^6 normal f32 values (999 probe ranks)");
    let values: Vec<f32> = (0..1_000_000).map(|_| normal(&mut rng) as f32).collect();
    let (rust_error, rust_bytes) = max_rank_error(&values, 200);
    println!("Rust datasketches 0.6:  max rank error {rust_error:.4}, {rust_bytes} bytes");
    if let Ok(python) = std::env::var("FLEETML_DRIFT_PYTHON") {
        let dir = std::env::temp_dir().join(format!("drift-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("values.f32");
        std::fs::write(&path, values.iter().flat_map(|value| value.to_le_bytes()).collect::<Vec<u8>>()).expect("write values");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware-tests/drift/read_sketch.py");
        let output =
            std::process::Command::new(python).args([script, "rank-error", path.to_str().expect("utf-8"), "200"]).output().expect("python");
        println!("Python datasketches:    {}", String::from_utf8_lossy(&output.stdout).trim());
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("Python datasketches:    (set FLEETML_DRIFT_PYTHON to run it side by side)");
    }
}
