//! The retained items of a KLL sketch with their weights, read from the sketch's standard
//! compact serialization (the crate's `SortedView` does not expose its entries). KS and
//! Wasserstein need the whole weighted step function, not a few quantiles.

use datasketches::kll::{KllFloat, KllSketch};

pub(crate) type FloatKll = KllSketch<KllFloat<f32>>;

// Layout constants of the Apache DataSketches KLL compact format (datasketches-java
// `KllPreambleUtil`, datasketches-cpp `kll_sketch`).
const PREAMBLE_BYTES: usize = 8;
const FULL_HEADER_BYTES: usize = 20;
const FLAG_EMPTY: u8 = 1;
const FLAG_SINGLE_ITEM: u8 = 1 << 2;

/// A weighted empirical distribution: distinct items in increasing order with the cumulative
/// weight of all items less than or equal to each.
#[derive(Clone, Debug, Default)]
pub(crate) struct WeightedCdf {
    pub items: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub total: u64,
}

impl WeightedCdf {
    /// The step function of a sketch. Invariant: `total == sketch.n()`.
    pub fn of_sketch(sketch: &FloatKll) -> WeightedCdf {
        let bytes = sketch.serialize();
        let mut weighted = retained_items(&bytes);
        weighted.sort_unstable_by(|left, right| left.0.total_cmp(&right.0));
        let mut cdf = WeightedCdf::default();
        for (item, weight) in weighted {
            cdf.total += weight;
            match cdf.items.last() {
                Some(&last) if last == item => {
                    if let Some(cumulative) = cdf.cumulative.last_mut() {
                        *cumulative = cdf.total;
                    }
                }
                _ => {
                    cdf.items.push(item);
                    cdf.cumulative.push(cdf.total);
                }
            }
        }
        cdf
    }

    /// Exact step function of raw values (used by the builder and tests).
    #[cfg(test)]
    pub fn of_values(values: &[f64]) -> WeightedCdf {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|value| !value.is_nan()).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let mut cdf = WeightedCdf::default();
        for item in sorted {
            cdf.total += 1;
            match cdf.items.last() {
                Some(&last) if last == item => {
                    if let Some(cumulative) = cdf.cumulative.last_mut() {
                        *cumulative = cdf.total;
                    }
                }
                _ => {
                    cdf.items.push(item);
                    cdf.cumulative.push(cdf.total);
                }
            }
        }
        cdf
    }
}

/// `(item, weight)` pairs of a serialized float KLL sketch, in storage order. The bytes come
/// from `KllSketch::serialize` of a sketch we hold, so they are well formed; a short image
/// yields fewer items rather than a panic.
fn retained_items(bytes: &[u8]) -> Vec<(f64, u64)> {
    let Some(&flags) = bytes.get(3) else { return Vec::new() };
    if flags & FLAG_EMPTY != 0 {
        return Vec::new();
    }
    if flags & FLAG_SINGLE_ITEM != 0 {
        return read_f32(bytes, PREAMBLE_BYTES).map(|item| vec![(item, 1)]).unwrap_or_default();
    }
    let Some(&n_levels) = bytes.get(18) else { return Vec::new() };
    let n_levels = n_levels as usize;
    let offsets: Vec<usize> = (0..n_levels).filter_map(|level| read_u32(bytes, FULL_HEADER_BYTES + 4 * level)).collect();
    // After the offsets come the minimum and maximum items, then the retained items.
    let items_start = FULL_HEADER_BYTES + 4 * n_levels + 8;
    let n_items = bytes.len().saturating_sub(items_start) / 4;
    let (Some(&first_offset), true) = (offsets.first(), offsets.len() == n_levels) else { return Vec::new() };
    let mut weighted = Vec::with_capacity(n_items);
    for level in 0..n_levels {
        let start = offsets[level] - first_offset;
        let end = offsets.get(level + 1).map(|offset| offset - first_offset).unwrap_or(n_items).min(n_items);
        for index in start..end {
            if let Some(item) = read_f32(bytes, items_start + 4 * index) {
                weighted.push((item, 1u64 << level));
            }
        }
    }
    weighted
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw) as usize)
}

fn read_f32(bytes: &[u8], at: usize) -> Option<f64> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(f32::from_le_bytes(raw) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_n_and_match_the_sketch_ranks() {
        for n in [0usize, 1, 2, 150, 5_000, 100_000] {
            let mut sketch = FloatKll::new(200).unwrap();
            for index in 0..n {
                sketch.update(KllFloat::<f32>::new(((index * 7919) % 1000) as f32).unwrap());
            }
            let cdf = WeightedCdf::of_sketch(&sketch);
            assert_eq!(cdf.total, n as u64, "n={n}");
            for (item, cumulative) in cdf.items.iter().zip(&cdf.cumulative).step_by(17) {
                let rank = sketch.rank(&KllFloat::<f32>::new(*item as f32).unwrap(), datasketches::common::SearchCriteria::Inclusive);
                assert_eq!(rank, Some(*cumulative as f64 / n as f64), "n={n} item={item}");
            }
        }
    }
}
