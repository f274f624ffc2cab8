//! Seeded test data and exact reference computations on raw values.

use fleetml_shared::drift::Side;
use fleetml_shared::drift::profile::{BuildOptions, ColumnKind, ColumnSpec, Metric, Profile};
use fleetml_shared::drift::window::{DriftWindow, MergedWindow, TensorValues, WindowAccumulator};

pub struct DataGen {
    rng: fastrand::Rng,
}

/// The shapes the accuracy and false-alarm tests run on.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    Normal,
    LogNormal,
    Bimodal,
    ZeroInflated,
}

pub const SHAPES: [Shape; 4] = [Shape::Normal, Shape::LogNormal, Shape::Bimodal, Shape::ZeroInflated];

impl DataGen {
    pub fn new(seed: u64) -> DataGen {
        DataGen { rng: fastrand::Rng::with_seed(seed) }
    }

    /// Standard normal by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.f64(); // in (0, 1]
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn uniform(&mut self) -> f64 {
        self.rng.f64()
    }

    /// One value of `shape`, moved by `shift` (in units of roughly one standard deviation).
    pub fn sample(&mut self, shape: Shape, shift: f64) -> f64 {
        let value = match shape {
            Shape::Normal => 10.0 + 2.0 * (self.normal() + shift),
            Shape::LogNormal => (0.5 * self.normal() + 0.5 * shift).exp(),
            Shape::Bimodal => {
                let centre = if self.rng.bool() { -3.0 } else { 3.0 };
                centre + self.normal() + 3.0 * shift
            }
            Shape::ZeroInflated => {
                if self.rng.f64() < 0.4 {
                    0.0
                } else {
                    -self.uniform().max(f64::MIN_POSITIVE).ln() * (1.0 + shift)
                }
            }
        };
        // Devices see f32: make the raw data exactly what the sketches see.
        value as f32 as f64
    }

    pub fn column(&mut self, shape: Shape, shift: f64, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.sample(shape, shift)).collect()
    }

    /// Category codes 0..shares.len() drawn with the given shares.
    pub fn categories(&mut self, shares: &[f64], n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let mut draw = self.rng.f64();
                for (code, share) in shares.iter().enumerate() {
                    if draw < *share {
                        return code as f64;
                    }
                    draw -= share;
                }
                (shares.len() - 1) as f64
            })
            .collect()
    }
}

pub fn numeric_spec(name: &str, index: u32, metric: Option<Metric>) -> ColumnSpec {
    ColumnSpec { name: name.into(), side: Side::Input, tensor: "input".into(), kind: ColumnKind::Numeric { index }, metric }
}

pub fn categorical_spec(name: &str, index: u32, metric: Option<Metric>) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        side: Side::Input,
        tensor: "input".into(),
        kind: ColumnKind::Categorical { index, labels: None },
        metric,
    }
}

pub fn build_profile(columns: &[ColumnSpec], data: &[Vec<f64>]) -> Profile {
    let slices: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    Profile::build(columns, &slices, &BuildOptions::default()).expect("reference profile builds")
}

/// Feeds `data` (one vector per column of the `input` tensor) to `n_devices` accumulators in
/// batches of up to 32 rows, as the agent would, and merges their windows on the "plane".
pub fn merged_window(profile: &Profile, data: &[Vec<f64>], n_devices: usize) -> (MergedWindow, Vec<DriftWindow>) {
    let n_rows = data[0].len();
    let row_len = data.len();
    let mut accumulators: Vec<WindowAccumulator> = (0..n_devices).map(|_| WindowAccumulator::new(profile)).collect();
    let mut batch = Vec::with_capacity(32 * row_len);
    for (batch_idx, start) in (0..n_rows).step_by(32).enumerate() {
        batch.clear();
        for row in start..(start + 32).min(n_rows) {
            batch.extend(data.iter().map(|column| column[row] as f32));
        }
        accumulators[batch_idx % n_devices].observe(Side::Input, "input", TensorValues::F32(&batch), row_len).expect("observe");
    }
    let mut merged = MergedWindow::new(profile);
    let mut windows = Vec::new();
    for (device_idx, accumulator) in accumulators.iter_mut().enumerate() {
        if let Some(window) = accumulator.take(device_idx as u64, 60_000) {
            merged.merge(&window).expect("a device's own window merges");
            windows.push(window);
        }
    }
    (merged, windows)
}

/// Exact two-sample KS statistic on raw values.
pub fn exact_ks(reference: &[f64], current: &[f64]) -> f64 {
    let (reference, current) = (sorted(reference), sorted(current));
    let mut statistic: f64 = 0.0;
    for x in reference.iter().chain(&current) {
        let f_reference = reference.partition_point(|value| value <= x) as f64 / reference.len() as f64;
        let f_current = current.partition_point(|value| value <= x) as f64 / current.len() as f64;
        statistic = statistic.max((f_reference - f_current).abs());
    }
    statistic
}

/// Exact Wasserstein-1 distance on raw values: ∫|F_ref − F_cur| dx over the pooled jump points.
pub fn exact_wasserstein(reference: &[f64], current: &[f64]) -> f64 {
    let (reference, current) = (sorted(reference), sorted(current));
    let mut pooled: Vec<f64> = reference.iter().chain(&current).copied().collect();
    pooled.sort_by(f64::total_cmp);
    pooled.dedup();
    pooled
        .windows(2)
        .map(|pair| {
            let f_reference = reference.partition_point(|value| *value <= pair[0]) as f64 / reference.len() as f64;
            let f_current = current.partition_point(|value| *value <= pair[0]) as f64 / current.len() as f64;
            (f_reference - f_current).abs() * (pair[1] - pair[0])
        })
        .sum()
}

pub fn population_std(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|value| (value - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}
