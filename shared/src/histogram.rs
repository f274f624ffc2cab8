//! A mergeable log-linear latency histogram (HDR-style: 8 sub-buckets per power of two,
//! so any recorded value is known within 12.5%). Devices send sparse snapshots of their
//! per-window counts; the plane merges them by addition and reads fleet-wide percentiles.

use serde::{Deserialize, Serialize};

const SUB_BUCKET_BITS: u32 = 3;
const SUB_BUCKETS: u32 = 1 << SUB_BUCKET_BITS;
/// 40 octaves of 8 buckets: the last bucket starts at 2^42 µs (about 51 days) and takes all above.
pub const N_BUCKETS: usize = (40 * SUB_BUCKETS + 1) as usize;

/// Dense recorder used on the device.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
}

/// Sparse `(bucket, count)` pairs in bucket order: what travels and what is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(u16, u64)>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; N_BUCKETS] }
    }
}

pub fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS as u64 {
        return value as usize;
    }
    let log2 = 63 - value.leading_zeros();
    let sub = (value >> (log2 - SUB_BUCKET_BITS)) & (SUB_BUCKETS as u64 - 1);
    let index = ((log2 - SUB_BUCKET_BITS + 1) * SUB_BUCKETS) as u64 + sub;
    (index as usize).min(N_BUCKETS - 1)
}

/// The smallest value that lands in `bucket`.
pub fn bucket_lower_bound(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_BUCKETS as u64 {
        return bucket;
    }
    let octave = bucket / SUB_BUCKETS as u64 - 1;
    let sub = bucket % SUB_BUCKETS as u64;
    (SUB_BUCKETS as u64 + sub) << octave
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        let count = &mut self.counts[bucket_of(value)];
        *count = count.saturating_add(1);
    }

    /// Saturating: counts merged from devices are untrusted and may be huge.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |sum, count| sum.saturating_add(*count))
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(bucket, count)| (bucket as u16, *count))
                .collect(),
        }
    }

    pub fn reset(&mut self) {
        self.counts.iter_mut().for_each(|count| *count = 0);
    }

    pub fn merge(&mut self, snapshot: &HistogramSnapshot) {
        for &(bucket, count) in &snapshot.buckets {
            if let Some(slot) = self.counts.get_mut(bucket as usize) {
                *slot = slot.saturating_add(count);
            }
        }
    }

    /// The value below which a share `quantile` of recordings fall, as the midpoint of
    /// its bucket; `None` when empty.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(count);
            if seen >= rank {
                let lower = bucket_lower_bound(bucket) as f64;
                let upper = bucket_lower_bound(bucket + 1) as f64;
                return Some((lower + upper) / 2.0);
            }
        }
        None
    }
}

impl HistogramSnapshot {
    /// Saturating, like `Histogram::total`.
    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0u64, |sum, (_, count)| sum.saturating_add(*count))
    }

    /// The total, or `None` when it overflows a `u64` (a forged snapshot).
    pub fn checked_total(&self) -> Option<u64> {
        self.buckets.iter().try_fold(0u64, |sum, (_, count)| sum.checked_add(*count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotone() {
        for bucket in 0..N_BUCKETS - 1 {
            let lower = bucket_lower_bound(bucket);
            assert_eq!(bucket_of(lower), bucket, "lower bound of {bucket}");
            let next = bucket_lower_bound(bucket + 1);
            assert!(next > lower);
            assert_eq!(bucket_of(next - 1), bucket);
        }
        assert_eq!(bucket_of(u64::MAX), N_BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_the_bucket_width() {
        let mut histogram = Histogram::default();
        for value in 1..=10_000u64 {
            histogram.record(value);
        }
        for (quantile, exact) in [(0.5, 5_000.0), (0.95, 9_500.0), (0.99, 9_900.0)] {
            let estimate = histogram.quantile(quantile).unwrap();
            assert!((estimate - exact).abs() / exact < 0.07, "q{quantile}: {estimate} vs {exact}");
        }
    }

    #[test]
    fn merged_snapshots_equal_one_histogram() {
        let mut left = Histogram::default();
        let mut right = Histogram::default();
        let mut both = Histogram::default();
        for value in 0..500u64 {
            let histogram = if value % 3 == 0 { &mut left } else { &mut right };
            histogram.record(value * 37);
            both.record(value * 37);
        }
        let mut merged = Histogram::default();
        merged.merge(&left.snapshot());
        merged.merge(&right.snapshot());
        assert_eq!(merged.snapshot(), both.snapshot());
        assert_eq!(merged.total(), 500);
    }

    #[test]
    fn forged_counts_saturate_instead_of_overflowing() {
        let forged = HistogramSnapshot { buckets: vec![(3, u64::MAX), (9, u64::MAX), (N_BUCKETS as u16 + 5, 1)] };
        assert_eq!(forged.total(), u64::MAX);
        assert_eq!(forged.checked_total(), None);
        let mut merged = Histogram::default();
        merged.merge(&forged);
        merged.merge(&forged);
        assert_eq!(merged.total(), u64::MAX);
        assert!(merged.quantile(0.99).is_some());
        assert_eq!(HistogramSnapshot { buckets: vec![(1, 2), (2, 3)] }.checked_total(), Some(5));
    }
}
