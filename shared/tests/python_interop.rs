//! Interoperability with Apache DataSketches for Python: a profile written by
//! `examples/make_profile.py` loads and agrees with the Rust builder, and the sketches in a
//! device's `DriftWindow` read back in Python with the same quantiles and frequencies.
//!
//! Needs `FLEETML_DRIFT_PYTHON` (a Python with `firmware-tests/drift/requirements.txt`
//! installed). Without it the tests print `SKIPPED` and pass, except under `CI=true`, where a
//! missing interpreter is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use datasketches::common::SearchCriteria;
use datasketches::frequencies::FrequentItemsSketch;
use datasketches::kll::{KllFloat, KllSketch};
use fleetml_shared::drift::Side;
use fleetml_shared::drift::profile::{BuildOptions, ColumnKind, ColumnSpec, Profile, Reference};
use fleetml_shared::drift::window::{FeatureSummary, TensorValues, WindowAccumulator};

/// Interior ranks only: at exactly 0 and 1 the Rust crate answers the stream's exact minimum
/// and maximum while the C++/Python library answers the smallest and largest retained item;
/// the exact extremes are compared separately.
const RANKS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

fn python() -> Option<String> {
    match std::env::var("FLEETML_DRIFT_PYTHON") {
        Ok(python) if !python.is_empty() => Some(python),
        _ => {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!(
                    "FLEETML_DRIFT_PYTHON is not set: in CI the Python interop tests must run (pip install -r firmware-tests/drift/requirements.txt)"
                );
            }
            println!("SKIPPED: set FLEETML_DRIFT_PYTHON to a Python with firmware-tests/drift/requirements.txt installed");
            None
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("shared/ has a parent").to_path_buf()
}

fn run_python(python: &str, args: &[&str]) -> String {
    let output = Command::new(python).args(args).output().expect("python starts");
    assert!(output.status.success(), "python {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("python prints UTF-8")
}

/// x ~ N(5, 2), y log-normal, c in {0, 1, 2, 7}; every 97th x missing.
fn reference_columns(n: usize) -> Vec<Vec<f64>> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut normal = move || {
        let (u1, u2) = (1.0 - rng.f64(), rng.f64());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let x = (0..n).map(|row| if row % 97 == 0 { f64::NAN } else { (5.0 + 2.0 * normal()) as f32 as f64 }).collect();
    let y = (0..n).map(|_| (0.5 * normal()).exp() as f32 as f64).collect();
    let c = (0..n).map(|row| [0.0, 1.0, 1.0, 2.0, 7.0][(row * 7919) % 5]).collect();
    vec![x, y, c]
}

fn column_specs() -> Vec<ColumnSpec> {
    let spec = |name: &str, kind| ColumnSpec { name: name.into(), side: Side::Input, tensor: "input".into(), kind, metric: None };
    vec![
        spec("x", ColumnKind::Numeric { index: 0 }),
        spec("y", ColumnKind::Numeric { index: 1 }),
        spec("c", ColumnKind::Categorical { index: 2, labels: None }),
    ]
}

#[test]
fn profile_written_by_python_loads_and_matches_the_rust_builder() {
    let Some(python) = python() else { return };
    let columns = reference_columns(20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv_path = dir.path().join("train.csv");
    let mut csv = String::from("x,y,c\n");
    let cell = |value: f64| if value.is_nan() { String::new() } else { format!("{}", value as f32) };
    for ((x, y), c) in columns[0].iter().zip(&columns[1]).zip(&columns[2]) {
        csv.push_str(&format!("{},{},{}\n", cell(*x), cell(*y), cell(*c)));
    }
    std::fs::write(&csv_path, csv).expect("write csv");
    let profile_path = dir.path().join("profile.json");
    let script = repo_root().join("examples/make_profile.py");
    run_python(
        &python,
        &[
            script.to_str().expect("utf-8 path"),
            "--csv",
            csv_path.to_str().expect("utf-8 path"),
            "--column",
            "x:numeric",
            "--column",
            "y:numeric",
            "--column",
            "c:categorical",
            "--out",
            profile_path.to_str().expect("utf-8 path"),
        ],
    );
    let from_python = Profile::from_json(&std::fs::read(&profile_path).expect("profile written")).expect("Python profile is valid");
    let slices: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
    let from_rust = Profile::build(&column_specs(), &slices, &BuildOptions::default()).expect("Rust profile");
    assert_eq!(from_python.rows(), from_rust.rows());

    for (python_feature, rust_feature) in from_python.features().iter().zip(from_rust.features()) {
        match (&python_feature.reference, &rust_feature.reference) {
            (Reference::Numeric(python_numeric), Reference::Numeric(rust_numeric)) => {
                let name = &python_feature.name;
                assert_eq!(python_numeric.bin_edges, rust_numeric.bin_edges, "{name}: edges");
                assert_eq!(python_numeric.bin_counts, rust_numeric.bin_counts, "{name}: counts");
                assert_eq!(python_numeric.bin_sums, rust_numeric.bin_sums, "{name}: sums");
                assert_eq!(python_numeric.nulls, rust_numeric.nulls, "{name}: nulls");
                let (python_moments, rust_moments) = (python_numeric.moments, rust_numeric.moments);
                assert_eq!(
                    (python_moments.count, python_moments.min, python_moments.max),
                    (rust_moments.count, rust_moments.min, rust_moments.max)
                );
                assert!((python_moments.mean - rust_moments.mean).abs() < 1e-9 * rust_moments.mean.abs().max(1.0), "{name}: mean");
                assert!((python_moments.variance - rust_moments.variance).abs() < 1e-9 * rust_moments.variance, "{name}: variance");

                // Both sketches' quantiles sit within their rank error of the requested rank in
                // the raw data.
                let mut sorted: Vec<f64> = columns[python_numeric.index].iter().copied().filter(|value| !value.is_nan()).collect();
                sorted.sort_by(f64::total_cmp);
                let exact_rank = |value: f32| sorted.partition_point(|item| *item <= value as f64) as f64 / sorted.len() as f64;
                let tolerance = python_numeric.kll.normalized_rank_error() + rust_numeric.kll.normalized_rank_error();
                assert_eq!((python_numeric.kll.k(), python_numeric.kll.n()), (rust_numeric.kll.k(), rust_numeric.kll.n()));
                for rank in (1..100).map(|percent| percent as f64 / 100.0) {
                    let python_quantile = *python_numeric.kll.quantile(rank, SearchCriteria::Inclusive).expect("rank").expect("non-empty");
                    let rust_quantile = *rust_numeric.kll.quantile(rank, SearchCriteria::Inclusive).expect("rank").expect("non-empty");
                    let (python_rank, rust_rank) = (exact_rank(python_quantile), exact_rank(rust_quantile));
                    assert!((python_rank - rank).abs() <= tolerance, "{name}: Python q{rank} = {python_quantile} has rank {python_rank}");
                    assert!(
                        (python_rank - rust_rank).abs() <= tolerance,
                        "{name}: q{rank}: Python rank {python_rank}, Rust rank {rust_rank}"
                    );
                }
            }
            (Reference::Categorical(python_categorical), Reference::Categorical(rust_categorical)) => {
                assert_eq!(python_categorical.vocabulary, rust_categorical.vocabulary);
                assert_eq!(python_categorical.counts, rust_categorical.counts);
                assert_eq!(python_categorical.nulls, rust_categorical.nulls);
            }
            (python_reference, rust_reference) => panic!("kinds differ: {python_reference:?} vs {rust_reference:?}"),
        }
    }
}

#[test]
fn window_sketches_read_back_in_python_with_the_same_answers() {
    let Some(python) = python() else { return };
    let columns = reference_columns(5_000);
    let slices: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
    let profile = Profile::build(&column_specs(), &slices, &BuildOptions::default()).expect("profile");

    // 50,000 rows put the device sketch well into estimation mode; codes 40..50 are unseen.
    let mut accumulator = WindowAccumulator::new(&profile);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..500 {
        let batch: Vec<f32> =
            (0..100).flat_map(|_| [rng.f32() * 10.0, rng.f32(), if rng.u8(..) < 40 { rng.i64(40..50) as f32 } else { 1.0 }]).collect();
        accumulator.observe(Side::Input, "input", TensorValues::F32(&batch), 3).expect("observe");
    }
    let window = accumulator.take(0, 60_000).expect("window");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = repo_root().join("firmware-tests/drift/read_sketch.py");
    let script = script.to_str().expect("utf-8 path");

    let FeatureSummary::Numeric { kll, .. } = &window.features[0] else { panic!("x is numeric") };
    let kll_path = dir.path().join("x.kll");
    std::fs::write(&kll_path, kll).expect("write sketch");
    let mut args = vec![script.to_owned(), "kll".into(), kll_path.to_str().expect("utf-8 path").into()];
    args.extend(RANKS.iter().map(f64::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let answer: serde_json::Value = serde_json::from_str(&run_python(&python, &args)).expect("JSON from Python");
    let sketch = KllSketch::<KllFloat<f32>>::deserialize(kll).expect("our own sketch");
    assert_eq!(answer["n"], 50_000);
    assert_eq!(answer["k"], 200);
    let python_quantiles: Vec<f64> =
        answer["quantiles"].as_array().expect("quantiles").iter().map(|value| value.as_f64().expect("number")).collect();
    let rust_quantiles: Vec<f64> =
        RANKS.iter().map(|rank| *sketch.quantile(*rank, SearchCriteria::Inclusive).expect("rank").expect("non-empty") as f64).collect();
    assert_eq!(python_quantiles, rust_quantiles);
    assert_eq!(answer["min"].as_f64(), sketch.min_item().map(|min| **min as f64));
    assert_eq!(answer["max"].as_f64(), sketch.max_item().map(|max| **max as f64));

    let FeatureSummary::Categorical { other_items, other, .. } = &window.features[2] else { panic!("c is categorical") };
    let items_path = dir.path().join("c.freq");
    std::fs::write(&items_path, other_items).expect("write sketch");
    let answer: serde_json::Value =
        serde_json::from_str(&run_python(&python, &[script, "frequent", items_path.to_str().expect("utf-8 path")]))
            .expect("JSON from Python");
    assert_eq!(answer["total_weight"].as_u64(), Some(*other));
    let rust_items = FrequentItemsSketch::<i64>::deserialize(other_items).expect("our own sketch");
    let python_items = answer["items"].as_array().expect("items");
    assert_eq!(python_items.len(), 10, "codes 40..50 are all tracked: {python_items:?}");
    for item in python_items {
        let (code, estimate) = (item[0].as_i64().expect("code"), item[1].as_u64().expect("estimate"));
        assert_eq!(rust_items.estimate(&code), estimate, "code {code}");
    }
}

/// `channels` through the Python builder's library API: per-channel moments of a whole
/// tensor agree with the Rust builder's.
#[test]
fn channel_moments_from_python_match_the_rust_builder() {
    let Some(python) = python() else { return };
    let shape = [6usize, 3, 5, 4];
    // Deterministic values both sides can compute: v(position) = sin(position) * (1 + channel).
    let values: Vec<f64> =
        (0..shape.iter().product::<usize>()).map(|position| (position as f64).sin() * (1 + (position / 20) % 3) as f64).collect();
    let program = format!(
        "import sys, json, numpy as np\n\
         sys.path.insert(0, {examples:?})\n\
         import make_profile\n\
         positions = np.arange(360)\n\
         tensor = (np.sin(positions) * (1 + (positions // 20) % 3)).reshape(6, 3, 5, 4)\n\
         profile = make_profile.build_profile([{{'name': 'img', 'kind': 'channels', 'tensor': 'image', 'axis': 1}}], {{'img': tensor}})\n\
         print(json.dumps(profile))\n",
        examples = repo_root().join("examples").to_str().expect("utf-8 path"),
    );
    let from_python = Profile::from_json(run_python(&python, &["-c", &program]).as_bytes()).expect("Python profile is valid");
    let spec = ColumnSpec {
        name: "img".into(),
        side: Side::Input,
        tensor: "image".into(),
        kind: ColumnKind::Channels { axis: 1, shape: shape.to_vec() },
        metric: None,
    };
    let from_rust = Profile::build(&[spec], &[&values], &BuildOptions::default()).expect("Rust profile");
    let (Reference::Channels(python_channels), Reference::Channels(rust_channels)) =
        (&from_python.features()[0].reference, &from_rust.features()[0].reference)
    else {
        panic!("both are channels features");
    };
    assert_eq!(python_channels.axis, rust_channels.axis);
    assert_eq!(python_channels.moments.len(), 3);
    for (python_moments, rust_moments) in python_channels.moments.iter().zip(&rust_channels.moments) {
        // numpy's and Rust's sin may differ in the last bit: compare to 1e-12.
        assert_eq!(python_moments.count, rust_moments.count);
        assert!((python_moments.min - rust_moments.min).abs() < 1e-12 && (python_moments.max - rust_moments.max).abs() < 1e-12);
        assert!((python_moments.mean - rust_moments.mean).abs() < 1e-12);
        assert!((python_moments.variance - rust_moments.variance).abs() < 1e-12);
    }
}
