//! Moments of a feature's values (count, mean, variance, min, max) that merge exactly across
//! windows and devices: the reference profile stores them, device windows carry them, and
//! the plane merges and compares them.

use serde::{Deserialize, Serialize};

/// Count, mean, population variance (divided by `count`), min and max of the non-null values.
/// With `count == 0` the other fields are 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
    pub variance: f64,
    pub min: f64,
    pub max: f64,
}

impl Moments {
    /// Exact moments of `values` (two passes).
    pub fn of_values(values: &[f64]) -> Moments {
        if values.is_empty() {
            return Moments::default();
        }
        let count = values.len() as f64;
        let mean = values.iter().sum::<f64>() / count;
        let variance = values.iter().map(|value| (value - mean) * (value - mean)).sum::<f64>() / count;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Moments { count: values.len() as u64, mean, variance, min, max }
    }

    /// Chan et al.'s parallel combination: the moments of the union of both samples.
    pub fn merge(&self, other: &Moments) -> Moments {
        if other.count == 0 {
            return *self;
        }
        if self.count == 0 {
            return *other;
        }
        // Counts come from devices: they saturate rather than wrap.
        let count = self.count.saturating_add(other.count);
        let (left_n, right_n, total_n) = (self.count as f64, other.count as f64, count as f64);
        let delta = other.mean - self.mean;
        let mean = self.mean + delta * right_n / total_n;
        let m2 = self.variance * left_n + other.variance * right_n + delta * delta * left_n * right_n / total_n;
        Moments { count, mean, variance: m2 / total_n, min: self.min.min(other.min), max: self.max.max(other.max) }
    }

    pub fn std_dev(&self) -> f64 {
        self.variance.sqrt()
    }
}
