//! Acceptance tests of the drift layer (issue "Drift monitoring"): sketch-based metrics against
//! exact values on raw data, false alarms on undrifted data, power on drifted data.

mod data;

use fleetml_shared::drift::metrics::{self, DriftReport, FeatureDrift, evaluate};
use fleetml_shared::drift::profile::{Metric, Profile, Reference, bin_of};

use data::{
    DataGen, SHAPES, Shape, build_profile, categorical_spec, exact_ks, exact_wasserstein, merged_window, numeric_spec, population_std,
};

fn feature<'a>(report: &'a DriftReport, name: &str) -> &'a FeatureDrift {
    report.features.iter().find(|drift| drift.name == name).expect("feature in report")
}

fn exact_bin_counts(edges: &[f64], values: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len() + 1];
    values.iter().for_each(|value| counts[bin_of(edges, *value)] += 1);
    counts
}

/// Sketch KS within 0.015 and normalised Wasserstein within 0.035 of the exact values on the
/// raw data; PSI and Jensen-Shannon from the device's bin counts equal the raw-data values.
/// Measured worst cases over the 36 cases (4 shapes × 3 reference/window sizes × 3 shifts,
/// k = 200, windows merged from 8 devices), in 20 runs (KLL compaction draws random bits, so
/// runs differ): |ΔKS| ≤ 0.0113 and |ΔW1/σ| ≤ 0.0183; the median of the runs' worst cases is
/// 0.0086 and 0.0126. History of the estimator on these cases: sketch step functions alone
/// were off by up to 0.035 in W1/σ (log-normal tails); calibrating each bin to its exact count
/// and mean brought that to 0.029, with a +0.02 bias on undrifted data; interpolating the CDFs
/// between retained items removed the bias and brought KS from 0.013 to 0.011. Each case is
/// printed with `--nocapture`.
#[test]
fn sketch_metrics_match_exact_values_on_raw_data() {
    let mut worst_ks: f64 = 0.0;
    let mut worst_wasserstein: f64 = 0.0;
    let mut case_seed = 0;
    for shape in SHAPES {
        for (reference_n, window_n) in [(50_000, 5_000), (50_000, 20_000), (20_000, 100_000)] {
            for shift in [0.0, 0.2, 1.0] {
                case_seed += 1;
                let mut data_gen = DataGen::new(case_seed);
                let reference = data_gen.column(shape, 0.0, reference_n);
                let current = data_gen.column(shape, shift, window_n);
                let profile = build_profile(&[numeric_spec("x", 0, None)], std::slice::from_ref(&reference));
                let (merged, _) = merged_window(&profile, std::slice::from_ref(&current), 8);
                let report = evaluate(&profile, &merged, profile.thresholds());
                let drift = feature(&report, "x");

                let ks_error = (drift.ks.unwrap() - exact_ks(&reference, &current)).abs();
                let exact_normed = exact_wasserstein(&reference, &current) / population_std(&reference);
                let wasserstein_error = (drift.wasserstein.unwrap() - exact_normed).abs();
                let case = format!("{shape:?} ref={reference_n} window={window_n} shift={shift}");
                assert!(ks_error <= 0.015, "{case}: KS off by {ks_error}");
                assert!(wasserstein_error <= 0.035, "{case}: normed Wasserstein off by {wasserstein_error}");
                println!("{case}: dKS={ks_error:.4} dW={wasserstein_error:.4} exactW={exact_normed:.4}");
                worst_ks = worst_ks.max(ks_error);
                worst_wasserstein = worst_wasserstein.max(wasserstein_error);

                let Reference::Numeric(numeric) = &profile.features()[0].reference else { unreachable!() };
                let reference_counts = exact_bin_counts(&numeric.bin_edges, &reference);
                let current_counts = exact_bin_counts(&numeric.bin_edges, &current);
                assert_eq!(reference_counts, numeric.bin_counts, "{case}");
                let exact_psi = metrics::psi(&reference_counts, &current_counts);
                let exact_js = metrics::jensen_shannon(&reference_counts, &current_counts);
                assert!((drift.psi.unwrap() - exact_psi).abs() <= 1e-12, "{case}: PSI {} vs {exact_psi}", drift.psi.unwrap());
                assert!((drift.jensen_shannon.unwrap() - exact_js).abs() <= 1e-12, "{case}: JS");
                assert_eq!(drift.samples, window_n as u64);
            }
        }
    }
    println!("worst |KS - exact| = {worst_ks:.5}, worst |W1/sigma - exact| = {worst_wasserstein:.5}");
}

#[test]
fn categorical_metrics_equal_the_raw_data_values() {
    let mut data_gen = DataGen::new(7);
    let reference = data_gen.categories(&[0.5, 0.3, 0.15, 0.05], 10_000);
    // The window also holds code 9, outside the reference vocabulary.
    let mut current = data_gen.categories(&[0.4, 0.3, 0.2, 0.1], 5_000);
    current.iter_mut().step_by(50).for_each(|value| *value = 9.0);
    let profile = build_profile(&[categorical_spec("c", 0, None)], std::slice::from_ref(&reference));
    let (merged, _) = merged_window(&profile, std::slice::from_ref(&current), 5);
    let drift = evaluate(&profile, &merged, profile.thresholds()).features.remove(0);
    let count = |values: &[f64], code: f64| values.iter().filter(|value| **value == code).count() as u64;
    let reference_counts: Vec<u64> =
        vec![count(&reference, 0.0), count(&reference, 1.0), count(&reference, 2.0), count(&reference, 3.0), 0];
    let current_counts: Vec<u64> =
        vec![count(&current, 0.0), count(&current, 1.0), count(&current, 2.0), count(&current, 3.0), count(&current, 9.0)];
    assert_eq!(drift.jensen_shannon, Some(metrics::jensen_shannon(&reference_counts, &current_counts)));
    assert_eq!(drift.p_value, Some(metrics::chi_square(&reference_counts, &current_counts).p_value));
    assert_eq!(drift.other_share, Some(100.0 / 5_000.0));
    assert_eq!(drift.top_other_codes, vec![metrics::OtherCode { code: 9, estimate: 100 }]);
}

struct AlarmCounts {
    per_feature: Vec<(String, usize)>,
    dataset: usize,
    chi_square_below_alpha: usize,
}

/// Same-distribution reference (10,000 rows) and window (5,000 samples from 4 devices).
fn false_alarms(n_seeds: u64) -> AlarmCounts {
    let columns = [
        numeric_spec("normal", 0, None),
        numeric_spec("lognormal", 1, None),
        numeric_spec("bimodal", 2, Some(Metric::Psi)),
        numeric_spec("zero_inflated", 3, Some(Metric::Ks)),
        numeric_spec("normal_js", 4, Some(Metric::JensenShannon)),
        categorical_spec("category", 5, None),
    ];
    let shapes = [Shape::Normal, Shape::LogNormal, Shape::Bimodal, Shape::ZeroInflated, Shape::Normal];
    let shares = [0.5, 0.3, 0.15, 0.05];
    let mut counts =
        AlarmCounts { per_feature: columns.iter().map(|column| (column.name.clone(), 0)).collect(), dataset: 0, chi_square_below_alpha: 0 };
    for seed in 0..n_seeds {
        let mut data_gen = DataGen::new(1_000 + seed);
        let make = |data_gen: &mut DataGen, n: usize| -> Vec<Vec<f64>> {
            let mut data: Vec<Vec<f64>> = shapes.iter().map(|shape| data_gen.column(*shape, 0.0, n)).collect();
            data.push(data_gen.categories(&shares, n));
            data
        };
        let reference = make(&mut data_gen, 10_000);
        let current = make(&mut data_gen, 5_000);
        let profile = build_profile(&columns, &reference);
        let (merged, _) = merged_window(&profile, &current, 4);
        let report = evaluate(&profile, &merged, profile.thresholds());
        for (drift, (_, alarms)) in report.features.iter().zip(&mut counts.per_feature) {
            *alarms += drift.drifted as usize;
        }
        counts.dataset += report.dataset_drifted as usize;
        counts.chi_square_below_alpha += (feature(&report, "category").p_value.expect("categorical p-value") < 0.05) as usize;
    }
    counts
}

/// False drift rate below 1% per feature and for the dataset at default thresholds on 200
/// seeds; the chi-square test holds its level (about 5%; asserted below 10%).
#[test]
fn undrifted_data_raises_almost_no_alarms() {
    let n_seeds = 200;
    let counts = false_alarms(n_seeds);
    for (name, alarms) in &counts.per_feature {
        assert!((*alarms as f64) < 0.01 * n_seeds as f64, "{name}: {alarms} false alarms in {n_seeds} seeds");
    }
    assert!((counts.dataset as f64) < 0.01 * n_seeds as f64, "dataset: {} false alarms", counts.dataset);
    let chi_square_rate = counts.chi_square_below_alpha as f64 / n_seeds as f64;
    assert!(chi_square_rate < 0.10, "chi-square rejects {chi_square_rate} of undrifted windows at α = 0.05");
    println!("false alarms per feature {:?}, dataset {}, chi-square p<0.05 in {chi_square_rate}", counts.per_feature, counts.dataset);
}

fn power_case(shift_sd: f64, reference_shares: &[f64], window_shares: &[f64], categorical_metric: Option<Metric>) -> DriftReport {
    let columns = [numeric_spec("x", 0, None), numeric_spec("y", 1, None), categorical_spec("c", 2, categorical_metric)];
    let mut data_gen = DataGen::new(99);
    let reference = vec![
        data_gen.column(Shape::Normal, 0.0, 10_000),
        data_gen.column(Shape::LogNormal, 0.0, 10_000),
        data_gen.categories(reference_shares, 10_000),
    ];
    let current = vec![
        data_gen.column(Shape::Normal, shift_sd, 5_000),
        data_gen.column(Shape::LogNormal, 0.0, 5_000),
        data_gen.categories(window_shares, 5_000),
    ];
    let profile = build_profile(&columns, &reference);
    let (merged, _) = merged_window(&profile, &current, 5);
    evaluate(&profile, &merged, profile.thresholds())
}

#[test]
fn half_a_standard_deviation_shift_is_flagged_by_wasserstein() {
    let report = power_case(0.5, &[0.5, 0.3, 0.2], &[0.5, 0.3, 0.2], None);
    let x = feature(&report, "x");
    assert_eq!(x.metric, Metric::Wasserstein);
    assert!(x.drifted, "W1/σ = {:?}", x.wasserstein);
    assert!(!feature(&report, "y").drifted && !feature(&report, "c").drifted);
    // One of three features: below the 50% share.
    assert!(!report.dataset_drifted);
    assert!((report.share_drifted - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn twenty_point_category_change_is_flagged_by_jensen_shannon() {
    let report = power_case(0.0, &[0.5, 0.3, 0.2], &[0.3, 0.5, 0.2], None);
    let c = feature(&report, "c");
    assert_eq!(c.metric, Metric::JensenShannon);
    assert!(c.drifted, "JS = {:?}", c.jensen_shannon);
}

#[test]
fn ten_point_category_change_is_flagged_by_chi_square() {
    let report = power_case(0.0, &[0.5, 0.3, 0.2], &[0.4, 0.4, 0.2], Some(Metric::ChiSquare));
    let c = feature(&report, "c");
    assert_eq!(c.metric, Metric::ChiSquare);
    assert!(c.drifted, "p = {:?}", c.p_value);
    assert_eq!(c.value, c.p_value);
}

#[test]
fn dataset_drifts_when_half_the_features_drift() {
    let report = power_case(1.0, &[0.5, 0.3, 0.2], &[0.2, 0.3, 0.5], None);
    assert_eq!((report.n_counted, report.n_drifted), (3, 2));
    assert!(report.dataset_drifted);
}

#[test]
fn features_without_samples_are_reported_but_not_drifted() {
    let columns = [numeric_spec("x", 0, None), numeric_spec("empty", 1, None)];
    let mut data_gen = DataGen::new(3);
    let reference = vec![data_gen.column(Shape::Normal, 0.0, 2_000), data_gen.column(Shape::Normal, 0.0, 2_000)];
    let profile = build_profile(&columns, &reference);
    let current = vec![data_gen.column(Shape::Normal, 3.0, 500), vec![f64::NAN; 500]];
    let (merged, _) = merged_window(&profile, &current, 2);
    let report = evaluate(&profile, &merged, profile.thresholds());
    let empty = feature(&report, "empty");
    assert_eq!((empty.samples, empty.nulls, empty.value, empty.drifted, empty.counted), (0, 500, None, false, false));
    assert_eq!((report.n_counted, report.n_drifted, report.dataset_drifted), (1, 1, true));
    // An empty merge reports every feature without a verdict.
    let empty_report = evaluate(&profile, &fleetml_shared::drift::window::MergedWindow::new(&profile), profile.thresholds());
    assert!(empty_report.features.iter().all(|drift| !drift.drifted && drift.value.is_none()));
    assert!(!empty_report.dataset_drifted);
}

#[test]
fn channel_mean_shift_is_reported_in_reference_standard_deviations() {
    use fleetml_shared::drift::Side;
    use fleetml_shared::drift::profile::{BuildOptions, ColumnKind, ColumnSpec};
    use fleetml_shared::drift::window::{MergedWindow, TensorValues, WindowAccumulator};
    let mut data_gen = DataGen::new(11);
    // 100 images of 3 channels × 16 pixels, channel c ~ N(c, 1).
    let image = |data_gen: &mut DataGen, shift: f64| -> Vec<f64> {
        (0..100 * 3 * 16)
            .map(|position| ((position / 16) % 3) as f64 + data_gen.normal() + if (position / 16) % 3 == 2 { shift } else { 0.0 })
            .collect()
    };
    let spec = ColumnSpec {
        name: "img".into(),
        side: Side::Input,
        tensor: "image".into(),
        kind: ColumnKind::Channels { axis: 1, shape: vec![100, 3, 16] },
        metric: None,
    };
    let profile = Profile::build(&[spec], &[&image(&mut data_gen, 0.0)], &BuildOptions::default()).unwrap();
    let mut accumulator = WindowAccumulator::new(&profile);
    let shifted: Vec<f32> = image(&mut data_gen, 0.8).iter().map(|value| *value as f32).collect();
    accumulator.observe_shaped(Side::Input, "image", TensorValues::F32(&shifted), &[100, 3, 16]).unwrap();
    let mut merged = MergedWindow::new(&profile);
    merged.merge(&accumulator.take(0, 1).unwrap()).unwrap();
    let report = evaluate(&profile, &merged, profile.thresholds());
    let drift = &report.features[0];
    assert_eq!(drift.metric, Metric::MeanShift);
    let shift = drift.mean_shift.unwrap();
    assert!((0.6..1.0).contains(&shift), "mean shift {shift}");
    assert!(drift.drifted && !drift.counted && !report.dataset_drifted);
}

/// A hand-written or older profile without `bin_sums` still gets Wasserstein (calibrated on
/// counts only) within the same bound.
#[test]
fn wasserstein_without_reference_bin_sums_stays_accurate() {
    let mut data_gen = DataGen::new(5);
    let reference = data_gen.column(Shape::LogNormal, 0.0, 50_000);
    let current = data_gen.column(Shape::LogNormal, 0.3, 20_000);
    let built = build_profile(&[numeric_spec("x", 0, None)], std::slice::from_ref(&reference));
    let mut document = built.to_document();
    document.features[0].bin_sums = None;
    let profile = Profile::from_document(document).expect("a profile without bin_sums is valid");
    let (merged, _) = merged_window(&profile, std::slice::from_ref(&current), 4);
    let drift = evaluate(&profile, &merged, profile.thresholds()).features.remove(0);
    let exact = exact_wasserstein(&reference, &current) / population_std(&reference);
    assert!((drift.wasserstein.expect("samples") - exact).abs() <= 0.035, "{:?} vs {exact}", drift.wasserstein);
}
