//! Drift metrics and decisions: pure functions from a profile and a merged window to a
//! `DriftReport`. Formulas and defaults follow Evidently (see `docs/drift.md`):
//! PSI and Jensen-Shannon on exact bin or category counts, Kolmogorov-Smirnov and normalised
//! Wasserstein on the KLL sketches, a chi-square test of homogeneity on exact category counts.

use datasketches::frequencies::ErrorType;
use serde::Serialize;

use super::kll_view::WeightedCdf;
use super::moments::Moments;
use super::profile::{FeatureKind, Metric, Profile, Reference, Thresholds};
use super::window::{MergedFeature, MergedWindow};
use super::{FloatKll, Side};

/// Share given to an empty bin by PSI (Evidently's smoothing), so the log stays finite.
pub const PSI_EMPTY_BIN_SHARE: f64 = 0.0001;
/// Floor on the reference standard deviation used as the Wasserstein and mean-shift unit, so a
/// constant reference column does not divide by zero (Evidently's choice).
pub const MIN_REFERENCE_STD: f64 = 0.001;

/// The verdict on one merged window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    pub samples: u64,
    pub features: Vec<FeatureDrift>,
    /// Features with samples that count towards the dataset decision (`channels` do not).
    pub n_counted: usize,
    pub n_drifted: usize,
    /// `n_drifted / n_counted` (0 when nothing is counted).
    pub share_drifted: f64,
    pub dataset_drifted: bool,
}

/// The verdict on one feature, with every figure computed for it (`None`: not applicable or
/// no samples).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeatureDrift {
    pub name: String,
    pub side: Side,
    pub kind: FeatureKind,
    pub metric: Metric,
    /// The decision statistic (for `chi_square`, the p-value).
    pub value: Option<f64>,
    /// What `value` is compared with; for `ks` it depends on the sample sizes, so it is
    /// `None` without samples. `chi_square` drifts when `value` is below it, the others at or above.
    pub threshold: Option<f64>,
    pub drifted: bool,
    /// Whether this feature counts in `share_drifted`.
    pub counted: bool,
    /// Non-null values in the window (for `channels`, summed over channels).
    pub samples: u64,
    pub nulls: u64,
    pub psi: Option<f64>,
    pub jensen_shannon: Option<f64>,
    pub ks: Option<f64>,
    pub ks_threshold: Option<f64>,
    pub wasserstein: Option<f64>,
    pub chi_square: Option<f64>,
    pub p_value: Option<f64>,
    pub mean: Option<f64>,
    pub reference_mean: Option<f64>,
    pub std_dev: Option<f64>,
    pub reference_std_dev: Option<f64>,
    /// Share of the window outside the reference vocabulary (categorical).
    pub other_share: Option<f64>,
    /// Largest per-channel |mean − reference mean| in reference standard deviations (`channels`).
    pub mean_shift: Option<f64>,
    /// The most frequent codes outside the vocabulary (categorical), heaviest first, at most
    /// `N_TOP_OTHER_CODES`, with the frequent-items sketch's estimate of their count.
    pub top_other_codes: Vec<OtherCode>,
}

/// A category code the reference never saw, with its estimated count in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct OtherCode {
    pub code: i64,
    pub estimate: u64,
}

/// How many unseen codes a report lists per categorical feature.
pub const N_TOP_OTHER_CODES: usize = 5;

/// Result of a chi-square test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChiSquare {
    pub statistic: f64,
    pub degrees_of_freedom: u64,
    pub p_value: f64,
}

/// Counts consecutive drifted windows so that one noisy window does not raise an alert: the
/// plane keeps one per monitored feature and per dataset, and feeds it each judged period in
/// order. It fires once per episode, when the run reaches `consecutive_windows`; a new episode
/// needs a period that did not drift first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriftStreak {
    pub n_consecutive: u32,
    /// Where the current run of drifted periods began (ms), to recognise its episode.
    pub started_ms: i64,
}

impl DriftStreak {
    /// Records one period that began at `period_start_ms`; true when the run just reached
    /// `consecutive_windows`.
    pub fn record(&mut self, drifted: bool, period_start_ms: i64, consecutive_windows: u32) -> bool {
        if !drifted {
            self.n_consecutive = 0;
            return false;
        }
        if self.n_consecutive == 0 {
            self.started_ms = period_start_ms;
        }
        self.n_consecutive = self.n_consecutive.saturating_add(1);
        self.n_consecutive == consecutive_windows.max(1)
    }
}

/// Judges `merged` against `profile` with `thresholds` (usually `profile.thresholds()`).
pub fn evaluate(profile: &Profile, merged: &MergedWindow, thresholds: &Thresholds) -> DriftReport {
    let features: Vec<FeatureDrift> = profile
        .features()
        .iter()
        .zip(merged.features())
        .map(|(feature, merged_feature)| {
            let mut drift = FeatureDrift {
                name: feature.name.clone(),
                side: feature.side,
                kind: feature.reference.kind(),
                metric: feature.metric,
                value: None,
                threshold: threshold_of(feature.metric, thresholds),
                drifted: false,
                counted: false,
                samples: 0,
                nulls: 0,
                psi: None,
                jensen_shannon: None,
                ks: None,
                ks_threshold: None,
                wasserstein: None,
                chi_square: None,
                p_value: None,
                mean: None,
                reference_mean: None,
                std_dev: None,
                reference_std_dev: None,
                other_share: None,
                mean_shift: None,
                top_other_codes: Vec::new(),
            };
            match (&feature.reference, merged_feature) {
                (Reference::Numeric(reference), MergedFeature::Numeric { kll, bin_counts, bin_sums, moments, nulls }) => {
                    drift.samples = moments.count;
                    drift.nulls = *nulls;
                    drift.reference_mean = Some(reference.moments.mean);
                    drift.reference_std_dev = Some(reference.moments.std_dev());
                    if moments.count > 0 && reference.moments.count > 0 {
                        drift.counted = true;
                        drift.mean = Some(moments.mean);
                        drift.std_dev = Some(moments.std_dev());
                        drift.psi = Some(psi(&reference.bin_counts, bin_counts));
                        drift.jensen_shannon = Some(jensen_shannon(&reference.bin_counts, bin_counts));
                        let calibration = Some(BinCalibration {
                            bin_edges: &reference.bin_edges,
                            reference_counts: &reference.bin_counts,
                            reference_sums: reference.bin_sums.as_deref(),
                            current_counts: bin_counts,
                            current_sums: Some(bin_sums),
                        });
                        let ks_figure = ks(&reference.kll, kll, calibration, thresholds.ks_alpha);
                        drift.ks = Some(ks_figure.statistic);
                        drift.ks_threshold = Some(ks_figure.threshold);
                        drift.wasserstein =
                            Some(wasserstein(&reference.kll, kll, calibration) / reference.moments.std_dev().max(MIN_REFERENCE_STD));
                        let value = match feature.metric {
                            Metric::Psi => drift.psi,
                            Metric::JensenShannon => drift.jensen_shannon,
                            Metric::Ks => drift.ks,
                            Metric::Wasserstein | Metric::ChiSquare | Metric::MeanShift => drift.wasserstein,
                        };
                        drift.value = value;
                        drift.drifted = match feature.metric {
                            Metric::Ks => ks_figure.statistic > ks_figure.threshold,
                            _ => value.zip(drift.threshold).is_some_and(|(value, threshold)| value >= threshold),
                        };
                        if feature.metric == Metric::Ks {
                            drift.threshold = Some(ks_figure.threshold);
                        }
                    }
                }
                (Reference::Categorical(reference), MergedFeature::Categorical { counts, other, other_items, nulls }) => {
                    let window_total: u64 = counts.iter().sum::<u64>() + other;
                    drift.samples = window_total;
                    drift.nulls = *nulls;
                    let mut rows = other_items.frequent_items(ErrorType::NoFalsePositives);
                    rows.sort_by_key(|row| std::cmp::Reverse(row.estimate()));
                    drift.top_other_codes =
                        rows.iter().take(N_TOP_OTHER_CODES).map(|row| OtherCode { code: *row.item(), estimate: row.estimate() }).collect();
                    if window_total > 0 && reference.counts.iter().any(|count| *count > 0) {
                        drift.counted = true;
                        let mut reference_counts = reference.counts.clone();
                        reference_counts.push(0);
                        let mut window_counts = counts.clone();
                        window_counts.push(*other);
                        drift.other_share = Some(*other as f64 / window_total as f64);
                        drift.jensen_shannon = Some(jensen_shannon(&reference_counts, &window_counts));
                        let test = chi_square(&reference_counts, &window_counts);
                        drift.chi_square = Some(test.statistic);
                        drift.p_value = Some(test.p_value);
                        (drift.value, drift.drifted) = match feature.metric {
                            Metric::ChiSquare => (Some(test.p_value), test.p_value < thresholds.chi_square_p),
                            _ => (drift.jensen_shannon, drift.jensen_shannon.is_some_and(|value| value >= thresholds.jensen_shannon)),
                        };
                    }
                }
                (Reference::Channels(reference), MergedFeature::Channels { moments }) => {
                    drift.samples = moments.iter().map(|moments| moments.count).sum();
                    let shift = mean_shift(&reference.moments, moments);
                    drift.mean_shift = shift;
                    drift.value = shift;
                    drift.drifted = shift.is_some_and(|shift| shift >= thresholds.channel_mean_shift);
                }
                // A merged window is always built from the same profile (MergedWindow::new);
                // a mismatch means the caller paired the wrong ones: report nothing.
                _ => {}
            }
            drift
        })
        .collect();
    let n_counted = features.iter().filter(|drift| drift.counted).count();
    let n_drifted = features.iter().filter(|drift| drift.counted && drift.drifted).count();
    let share_drifted = if n_counted == 0 { 0.0 } else { n_drifted as f64 / n_counted as f64 };
    DriftReport {
        samples: merged.samples(),
        features,
        n_counted,
        n_drifted,
        share_drifted,
        dataset_drifted: n_counted > 0 && share_drifted >= thresholds.share,
    }
}

fn threshold_of(metric: Metric, thresholds: &Thresholds) -> Option<f64> {
    match metric {
        Metric::Wasserstein => Some(thresholds.wasserstein),
        Metric::Psi => Some(thresholds.psi),
        Metric::JensenShannon => Some(thresholds.jensen_shannon),
        Metric::Ks => None,
        Metric::ChiSquare => Some(thresholds.chi_square_p),
        Metric::MeanShift => Some(thresholds.channel_mean_shift),
    }
}

fn mean_shift(reference: &[Moments], current: &[Moments]) -> Option<f64> {
    reference
        .iter()
        .zip(current)
        .filter(|(reference, current)| reference.count > 0 && current.count > 0)
        .map(|(reference, current)| (current.mean - reference.mean).abs() / reference.std_dev().max(MIN_REFERENCE_STD))
        .reduce(f64::max)
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    let total = total.max(1) as f64;
    counts.iter().map(|count| *count as f64 / total).collect()
}

/// Population stability index, Evidently's form: Σ (r − c)·ln(r / c) over bins, where r and c
/// are the reference and current shares and an empty bin's share is replaced by 0.0001.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    let smooth = |share: f64| if share == 0.0 { PSI_EMPTY_BIN_SHARE } else { share };
    shares(reference)
        .into_iter()
        .zip(shares(current))
        .map(|(reference, current)| {
            let (reference, current) = (smooth(reference), smooth(current));
            (reference - current) * (reference / current).ln()
        })
        .sum()
}

/// Jensen-Shannon distance with natural logs, as scipy's `jensenshannon`: the square root of
/// ½·KL(p‖m) + ½·KL(q‖m) with m = (p + q)/2, between 0 and √ln 2 ≈ 0.833.
pub fn jensen_shannon(reference: &[u64], current: &[u64]) -> f64 {
    let relative_entropy = |p: f64, m: f64| if p > 0.0 { p * (p / m).ln() } else { 0.0 };
    let divergence: f64 = shares(reference)
        .into_iter()
        .zip(shares(current))
        .map(|(p, q)| {
            let m = (p + q) / 2.0;
            relative_entropy(p, m) + relative_entropy(q, m)
        })
        .sum::<f64>()
        / 2.0;
    divergence.max(0.0).sqrt()
}

/// Chi-square test of homogeneity on a 2×k table (reference counts, current counts), without
/// continuity correction, as scipy's `chi2_contingency(correction=False)`. Categories empty
/// on both sides are dropped; with fewer than two left the p-value is 1. Unlike Evidently's
/// goodness-of-fit form, this accounts for the reference being a sample too, so it holds its
/// level when the reference is not much larger than the window.
pub fn chi_square(reference: &[u64], current: &[u64]) -> ChiSquare {
    let reference_total: u64 = reference.iter().sum();
    let current_total: u64 = current.iter().sum();
    let total = (reference_total + current_total) as f64;
    let mut statistic = 0.0;
    let mut n_categories = 0u64;
    for (&reference_count, &current_count) in reference.iter().zip(current) {
        let column = (reference_count + current_count) as f64;
        if column == 0.0 {
            continue;
        }
        n_categories += 1;
        for (observed, row_total) in [(reference_count, reference_total), (current_count, current_total)] {
            let expected = row_total as f64 * column / total;
            if expected > 0.0 {
                statistic += (observed as f64 - expected).powi(2) / expected;
            }
        }
    }
    if n_categories < 2 || reference_total == 0 || current_total == 0 {
        return ChiSquare { statistic: 0.0, degrees_of_freedom: 0, p_value: 1.0 };
    }
    let degrees_of_freedom = n_categories - 1;
    ChiSquare { statistic, degrees_of_freedom, p_value: regularized_gamma_q(degrees_of_freedom as f64 / 2.0, statistic / 2.0) }
}

/// Kolmogorov-Smirnov statistic between two sketches and the conservative threshold it is
/// compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KsFigure {
    /// sup over both sketches' retained items of |F_ref(x) − F_cur(x)|, with each CDF
    /// interpolated as for `wasserstein` (from both sides at every item).
    pub statistic: f64,
    /// c(α)·√((n+m)/(n·m)) + ε_ref + ε_cur, with c(α) = √(−ln(α/2)/2) and ε a sketch's
    /// normalised single-sided rank error (0 while it is still exact).
    pub threshold: f64,
}

/// Exact counts of both sides in shared bins: when given, each sketch's step function is
/// calibrated bin by bin to the exact counts and means (`docs/drift.md`, "Bin calibration"),
/// which removes the sketch's rank error at every bin edge and pins each bin's mean.
#[derive(Clone, Copy, Debug)]
pub struct BinCalibration<'a> {
    pub bin_edges: &'a [f64],
    pub reference_counts: &'a [u64],
    /// Per-bin sums; the means are used only when both sides have them.
    pub reference_sums: Option<&'a [f64]>,
    pub current_counts: &'a [u64],
    pub current_sums: Option<&'a [f64]>,
}

/// What a calibration uses: KS only the counts, Wasserstein counts and means.
#[derive(Clone, Copy, PartialEq)]
enum CalibrateWith {
    Counts,
    CountsAndMeans,
}

fn step_functions(
    reference: &FloatKll,
    current: &FloatKll,
    calibration: Option<BinCalibration<'_>>,
    with: CalibrateWith,
) -> (WeightedCdf, WeightedCdf) {
    let means = with == CalibrateWith::CountsAndMeans
        && calibration.is_some_and(|bins| bins.reference_sums.is_some() && bins.current_sums.is_some());
    match calibration {
        Some(bins) => (
            WeightedCdf::of_sketch_in_bins(reference, bins.bin_edges, bins.reference_counts, bins.reference_sums.filter(|_| means)),
            WeightedCdf::of_sketch_in_bins(current, bins.bin_edges, bins.current_counts, bins.current_sums.filter(|_| means)),
        ),
        None => (WeightedCdf::of_sketch(reference), WeightedCdf::of_sketch(current)),
    }
}

pub fn ks(reference: &FloatKll, current: &FloatKll, calibration: Option<BinCalibration<'_>>, alpha: f64) -> KsFigure {
    let (reference_cdf, current_cdf) = step_functions(reference, current, calibration, CalibrateWith::Counts);
    let statistic = ks_interpolated(&reference_cdf, &current_cdf);
    let (n, m) = (reference.n().max(1) as f64, current.n().max(1) as f64);
    let c_alpha = (-(alpha / 2.0).ln() / 2.0).sqrt();
    let threshold = c_alpha * ((n + m) / (n * m)).sqrt() + sketch_rank_error(reference) + sketch_rank_error(current);
    KsFigure { statistic, threshold }
}

fn sketch_rank_error(sketch: &FloatKll) -> f64 {
    if sketch.is_estimation_mode() { sketch.normalized_rank_error() } else { 0.0 }
}

/// Wasserstein-1 distance ∫ |F_ref(x) − F_cur(x)| dx between the sketches' distributions, in
/// the feature's units. Each sketch's CDF is interpolated linearly between its retained items
/// (an item's mass spread evenly since the previous one), except that repeated items and the
/// smallest keep their mass as a jump: two step functions of the same smooth distribution
/// would otherwise differ by their random step positions (measured: a bias of about +0.02 σ on
/// undrifted log-normal data, gone with interpolation).
pub fn wasserstein(reference: &FloatKll, current: &FloatKll, calibration: Option<BinCalibration<'_>>) -> f64 {
    let (reference_cdf, current_cdf) = step_functions(reference, current, calibration, CalibrateWith::CountsAndMeans);
    wasserstein_interpolated(&reference_cdf, &current_cdf)
}

#[cfg(test)]
/// Walks the union of both step functions' jump points in order, calling `visit(x, F_a(x),
/// F_b(x), next_x)` after each jump point x has been included.
fn walk_steps(a: &WeightedCdf, b: &WeightedCdf, mut visit: impl FnMut(f64, f64, f64, Option<f64>)) {
    if a.is_empty() || b.is_empty() {
        return;
    }
    let (mut a_idx, mut b_idx) = (0usize, 0usize);
    let (mut a_cdf, mut b_cdf) = (0.0, 0.0);
    while a_idx < a.items.len() || b_idx < b.items.len() {
        let x = match (a.items.get(a_idx), b.items.get(b_idx)) {
            (Some(&a_item), Some(&b_item)) => a_item.min(b_item),
            (Some(&a_item), None) => a_item,
            (None, Some(&b_item)) => b_item,
            (None, None) => break,
        };
        if a.items.get(a_idx) == Some(&x) {
            a_cdf = a.cumulative[a_idx];
            a_idx += 1;
        }
        if b.items.get(b_idx) == Some(&x) {
            b_cdf = b.cumulative[b_idx];
            b_idx += 1;
        }
        let next = match (a.items.get(a_idx), b.items.get(b_idx)) {
            (Some(&a_item), Some(&b_item)) => Some(a_item.min(b_item)),
            (Some(&a_item), None) => Some(a_item),
            (None, Some(&b_item)) => Some(b_item),
            (None, None) => None,
        };
        visit(x, a_cdf, b_cdf, next);
    }
}

#[cfg(test)]
pub(crate) fn ks_statistic(a: &WeightedCdf, b: &WeightedCdf) -> f64 {
    let mut statistic: f64 = 0.0;
    walk_steps(a, b, |_, a_cdf, b_cdf, _| statistic = statistic.max((a_cdf - b_cdf).abs()));
    statistic
}

#[cfg(test)]
pub(crate) fn wasserstein_distance(a: &WeightedCdf, b: &WeightedCdf) -> f64 {
    let mut area = 0.0;
    walk_steps(a, b, |x, a_cdf, b_cdf, next| {
        if let Some(next) = next {
            area += (a_cdf - b_cdf).abs() * (next - x);
        }
    });
    area
}

/// sup |F_a − F_b| between the linearly interpolated CDFs: the gap is linear between the
/// union's knots, so the supremum is at a knot, from one side or the other.
pub(crate) fn ks_interpolated(a: &WeightedCdf, b: &WeightedCdf) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut statistic: f64 = 0.0;
    for x in a.items.iter().chain(&b.items) {
        let ((a_left, a_right), (b_left, b_right)) = (a.interpolated_limits(*x), b.interpolated_limits(*x));
        statistic = statistic.max((a_left - b_left).abs()).max((a_right - b_right).abs());
    }
    statistic
}

/// ∫ |F_a − F_b| dx between the linearly interpolated CDFs (`interpolated_limits`). Both are
/// linear between consecutive knots of the union, so each piece is integrated exactly.
pub(crate) fn wasserstein_interpolated(a: &WeightedCdf, b: &WeightedCdf) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut knots: Vec<f64> = a.items.iter().chain(&b.items).copied().collect();
    knots.sort_unstable_by(f64::total_cmp);
    knots.dedup();
    let mut area = 0.0;
    for pair in knots.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        let start_gap = a.interpolated_limits(start).1 - b.interpolated_limits(start).1;
        let end_gap = a.interpolated_limits(end).0 - b.interpolated_limits(end).0;
        let width = end - start;
        area += if start_gap * end_gap >= 0.0 {
            width * (start_gap.abs() + end_gap.abs()) / 2.0
        } else {
            // The gap crosses zero inside the piece: two triangles.
            width * (start_gap * start_gap + end_gap * end_gap) / (2.0 * (start_gap.abs() + end_gap.abs()))
        };
    }
    area
}

/// Regularized upper incomplete gamma function Q(a, x) = Γ(a, x)/Γ(a), for a > 0, x ≥ 0: the
/// chi-square survival function is Q(k/2, χ²/2). Series below x = a + 1, Lentz's continued
/// fraction above (Numerical Recipes §6.2), both to about 1e-15 relative.
pub fn regularized_gamma_q(a: f64, x: f64) -> f64 {
    const MAX_ITERATIONS: usize = 1_000;
    const EPSILON: f64 = 1e-16;
    const TINY: f64 = 1e-300;
    if a.is_nan() || a <= 0.0 || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefactor = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut denominator = a;
        for _ in 0..MAX_ITERATIONS {
            denominator += 1.0;
            term *= x / denominator;
            sum += term;
            if term.abs() < sum.abs() * EPSILON {
                break;
            }
        }
        return (1.0 - sum * log_prefactor.exp()).clamp(0.0, 1.0);
    }
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut fraction = d;
    for iteration in 1..MAX_ITERATIONS {
        let iteration = iteration as f64;
        let an = -iteration * (iteration - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        fraction *= delta;
        if (delta - 1.0).abs() < EPSILON {
            break;
        }
    }
    (log_prefactor.exp() * fraction).clamp(0.0, 1.0)
}

/// ln Γ(x) for x > 0 by the Lanczos approximation (g = 7, 9 terms; about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (offset, coefficient) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += coefficient / (x + offset as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_fires_once_per_episode_and_remembers_where_it_began() {
        let mut streak = DriftStreak::default();
        let fired: Vec<bool> = [true, true, true, false, true, true]
            .iter()
            .enumerate()
            .map(|(idx, drifted)| streak.record(*drifted, idx as i64 * 10, 2))
            .collect();
        assert_eq!(fired, [false, true, false, false, false, true]);
        assert_eq!(streak.started_ms, 40);
    }

    #[test]
    fn regularized_gamma_q_matches_closed_forms() {
        // For integer a: Q(a, x) = e^-x Σ_{k<a} x^k / k!.
        fn integer_q(a: u32, x: f64) -> f64 {
            let (mut term, mut sum) = (1.0, 1.0);
            for k in 1..a {
                term *= x / k as f64;
                sum += term;
            }
            (-x).exp() * sum
        }
        #[track_caller]
        fn check(a: f64, x: f64, expected: f64) {
            let actual = regularized_gamma_q(a, x);
            let tolerance = 1e-12_f64.max(expected * 1e-10);
            assert!((actual - expected).abs() < tolerance, "Q({a}, {x}) = {actual}, expected {expected}");
        }
        for (a, x) in [(1, 0.5), (1, 3.0), (2, 0.1), (5, 3.0), (5, 12.0), (10, 9.5), (25, 20.0), (25, 40.0), (50, 60.0), (100, 80.0)] {
            check(a as f64, x, integer_q(a, x));
        }
        // Q(1/2, x) = erfc(√x); chi-square critical values from tables.
        check(0.5, 1.0, 0.157_299_207_050_285_1);
        check(0.5, 0.25, 0.479_500_122_186_953_5);
        check(0.5, 3.841_458_820_694_124 / 2.0, 0.05);
        check(5.0, 18.307_038_053_275_146 / 2.0, 0.05);
        check(0.5, 0.0, 1.0);
        assert!(regularized_gamma_q(0.0, 1.0).is_nan());
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut factorial = 1.0f64;
        for n in 1..30u32 {
            assert!((ln_gamma(n as f64) - factorial.ln()).abs() < 1e-12 * factorial.ln().max(1.0), "Γ({n})");
            factorial *= n as f64;
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
    }

    #[test]
    fn psi_and_jensen_shannon_match_hand_computed_values() {
        #[track_caller]
        fn check(reference: &[u64], current: &[u64], expected_psi: f64, expected_js: f64) {
            assert!((psi(reference, current) - expected_psi).abs() < 1e-12, "psi {reference:?} {current:?}: {}", psi(reference, current));
            let js = jensen_shannon(reference, current);
            assert!((js - expected_js).abs() < 1e-12, "js {reference:?} {current:?}: {js}");
        }
        let ln2 = std::f64::consts::LN_2;
        check(&[5, 5], &[5, 5], 0.0, 0.0);
        check(&[10, 30], &[1, 3], 0.0, 0.0);
        // p = (1, 0), q = (0, 1): disjoint, JS divergence ln 2; PSI with 0.0001 smoothing.
        check(&[4, 0], &[0, 4], 2.0 * (1.0 - 0.0001) * (1.0f64 / 0.0001).ln(), ln2.sqrt());
        // p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4).
        let divergence = (0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln() + (1.0f64 / 0.75).ln()) / 2.0;
        check(&[1, 1], &[2, 0], (0.5 - 1.0) * 0.5f64.ln() + (0.5 - 0.0001) * (0.5f64 / 0.0001).ln(), divergence.sqrt());
    }

    #[test]
    fn chi_square_matches_a_hand_computed_table() {
        // 2×3 table: row totals 60 and 40, column totals 30, 30, 40, so expected counts are
        // (18, 18, 24) and (12, 12, 16).
        let test = chi_square(&[20, 10, 30], &[10, 20, 10]);
        let expected = 4.0 / 18.0 + 64.0 / 18.0 + 36.0 / 24.0 + 4.0 / 12.0 + 64.0 / 12.0 + 36.0 / 16.0;
        assert!((test.statistic - expected).abs() < 1e-12);
        assert_eq!(test.degrees_of_freedom, 2);
        // With 2 degrees of freedom the survival function is exp(-χ²/2).
        assert!((test.p_value - (-expected / 2.0).exp()).abs() < 1e-14);
        assert_eq!(chi_square(&[5, 0], &[3, 0]).p_value, 1.0, "one category left");
        assert_eq!(chi_square(&[5, 1, 0], &[3, 1, 0]).degrees_of_freedom, 1, "empty categories are dropped");
    }

    #[test]
    fn step_function_metrics_match_hand_computed_values() {
        let cdf = WeightedCdf::of_values;
        #[track_caller]
        fn check(a: &WeightedCdf, b: &WeightedCdf, expected_ks: f64, expected_w1: f64) {
            assert!((ks_statistic(a, b) - expected_ks).abs() < 1e-12, "ks {}", ks_statistic(a, b));
            assert!((wasserstein_distance(a, b) - expected_w1).abs() < 1e-12, "w1 {}", wasserstein_distance(a, b));
        }
        check(&cdf(&[1.0, 2.0, 3.0]), &cdf(&[1.0, 2.0, 3.0]), 0.0, 0.0);
        check(&cdf(&[0.0, 1.0]), &cdf(&[5.0, 6.0]), 1.0, 5.0);
        check(&cdf(&[0.0, 0.0, 1.0, 1.0]), &cdf(&[0.0, 1.0, 1.0, 1.0]), 0.25, 0.25);
        check(&cdf(&[1.0, 2.0, 3.0, 4.0]), &cdf(&[2.0, 3.0]), 0.25, 0.5);
        check(&cdf(&[]), &cdf(&[1.0]), 0.0, 0.0);
    }

    #[test]
    fn interpolated_wasserstein_matches_hand_computed_values() {
        let cdf = WeightedCdf::of_values;
        #[track_caller]
        fn check(a: &WeightedCdf, b: &WeightedCdf, expected: f64) {
            let actual = wasserstein_interpolated(a, b);
            assert!((actual - expected).abs() < 1e-12, "{actual} vs {expected}");
            assert!((wasserstein_interpolated(b, a) - expected).abs() < 1e-12, "symmetric");
        }
        check(&cdf(&[0.0, 1.0]), &cdf(&[0.0, 1.0]), 0.0);
        // F_a jumps to 1/2 at 0 and rises linearly to 1 at 2; F_b the same but reaches 1 at 1.
        check(&cdf(&[0.0, 2.0]), &cdf(&[0.0, 1.0]), 0.25);
        // Point masses at 0 and 5 (a single item each): a shift of the whole mass by 5.
        check(&cdf(&[0.0]), &cdf(&[5.0]), 5.0);
        // A repeated item keeps its mass as a jump: a = {0, 1, 1} is 1/3 at 0 and 2/3 at 1;
        // b = {0, 0, 1} is 2/3 at 0, then its single 1 spread over (0, 1]:
        // ∫₀¹ (2/3 + x/3) − 1/3 dx = 1/2.
        check(&cdf(&[0.0, 1.0, 1.0]), &cdf(&[0.0, 0.0, 1.0]), 0.5);
        // The same shape moved by 1.
        check(&cdf(&[0.0, 2.0]), &cdf(&[1.0, 3.0]), 1.0);
        // a = {0, 2} against a point mass at 1: F_a = 1/2 + x/4 on [0, 2];
        // ∫₀¹ (1/2 + x/4) dx + ∫₁² (1/2 − x/4) dx = 5/8 + 1/8.
        check(&cdf(&[0.0, 2.0]), &cdf(&[1.0]), 0.75);
        // CDFs crossing inside a piece: a = {0, 4} (1/2 + x/8), b = {1, 3} (1/2 at 1, then
        // linear to 1 at 3). The gap 1/4 − x/8 on (1, 3) changes sign at 2:
        // 9/16 on (0, 1), two triangles of 1/16 on (1, 3), 1/16 on (3, 4).
        check(&cdf(&[0.0, 4.0]), &cdf(&[1.0, 3.0]), 0.75);
        // KS at the knots, both limits: at 1, F_a = 3/4 against F_b jumping from 0 to 1.
        assert!((ks_interpolated(&cdf(&[0.0, 2.0]), &cdf(&[1.0])) - 0.75).abs() < 1e-12);
        assert_eq!(ks_interpolated(&cdf(&[0.0, 1.0, 2.0]), &cdf(&[0.0, 1.0, 2.0])), 0.0);
    }
}
