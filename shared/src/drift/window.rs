//! The device-side window (`WindowAccumulator`: summarise every inference's tensors into
//! mergeable sketches, then `take` a `DriftWindow` to send) and its plane-side merge
//! (`MergedWindow`).
//!
//! Invariant: a `MergedWindow` only ever holds data that matched the profile's shape; an
//! untrusted window that does not is refused whole and leaves the merge unchanged.

use datasketches::frequencies::FrequentItemsSketch;
use datasketches::kll::KllFloat;
use serde::{Deserialize, Serialize};

use super::moments::Moments;
use super::profile::{Profile, Reference, bin_of};
use super::{DriftError, FloatKll, Side};

/// Map size of the frequent-items sketch of out-of-vocabulary codes: it tracks about the 24
/// heaviest unseen codes of a window (0.75 × 32); serialized, at most ~530 bytes.
pub const OTHER_ITEMS_MAP_SIZE: usize = 32;

/// One window of one device: what travels (postcard) from the agent to the plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftWindow {
    /// Rows observed: the largest batch total over the profile's tensors.
    pub samples: u64,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    /// One per profile feature, in profile order.
    pub features: Vec<FeatureSummary>,
}

/// The summary of one feature over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeatureSummary {
    Numeric {
        /// KLL float sketch, Apache DataSketches compact format, the profile's `k`.
        kll: Vec<u8>,
        /// Exact counts in the profile's bins.
        bin_counts: Vec<u64>,
        /// Sum of the values in each bin.
        bin_sums: Vec<f64>,
        moments: Moments,
        nulls: u64,
    },
    Categorical {
        /// Exact counts per vocabulary entry.
        counts: Vec<u64>,
        /// Values outside the vocabulary.
        other: u64,
        /// Frequent-items sketch (i64 items, Apache DataSketches format) of those values.
        other_items: Vec<u8>,
        nulls: u64,
    },
    Channels {
        moments: Vec<Moments>,
    },
}

/// A borrowed tensor's data, row-major.
#[derive(Clone, Copy, Debug)]
pub enum TensorValues<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// Summarises the tensors of every inference until `take`.
pub struct WindowAccumulator {
    kll_k: u16,
    bindings: Vec<TensorBinding>,
    features: Vec<FeatureState>,
}

/// Fleet-wide (or slice-wide) sum of device windows.
#[derive(Clone, Debug)]
pub struct MergedWindow {
    kll_k: u16,
    names: Vec<String>,
    samples: u64,
    n_windows: u64,
    started_at_ms: Option<u64>,
    ended_at_ms: Option<u64>,
    features: Vec<MergedFeature>,
}

/// The merged state of one feature.
#[derive(Clone, Debug)]
pub enum MergedFeature {
    Numeric { kll: FloatKll, bin_counts: Vec<u64>, bin_sums: Vec<f64>, moments: Moments, nulls: u64 },
    Categorical { counts: Vec<u64>, other: u64, other_items: FrequentItemsSketch<i64>, nulls: u64 },
    Channels { moments: Vec<Moments> },
}

/// The features read from one `(side, tensor)`.
struct TensorBinding {
    side: Side,
    tensor: String,
    feature_idxs: Vec<usize>,
    rows: u64,
}

enum FeatureState {
    Numeric { index: usize, kll: FloatKll, bin_edges: Vec<f64>, bins: Vec<BinTally>, moments: MomentsAccumulator, nulls: u64 },
    Categorical { index: usize, vocabulary: Vocabulary, counts: Vec<u64>, other: u64, other_items: FrequentItemsSketch<i64>, nulls: u64 },
    Channels { axis: usize, moments: Vec<MomentsAccumulator> },
}

/// Count and sum of one bin, kept together so one observation touches one cache line.
#[derive(Clone, Copy, Debug, Default)]
struct BinTally {
    count: u64,
    sum: f64,
}

enum Vocabulary {
    /// Codes `first..first + len`: a subtraction finds the slot.
    Dense {
        first: i64,
        len: usize,
    },
    Sorted(Vec<i64>),
}

/// Welford's running moments. Invariant: `m2` is the sum of squared deviations from `mean`.
#[derive(Clone, Copy, Debug)]
struct MomentsAccumulator {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl MomentsAccumulator {
    const EMPTY: MomentsAccumulator = MomentsAccumulator { count: 0, mean: 0.0, m2: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY };

    #[inline]
    fn push(&mut self, value: f64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    fn to_moments(self) -> Moments {
        if self.count == 0 {
            return Moments::default();
        }
        Moments { count: self.count, mean: self.mean, variance: self.m2 / self.count as f64, min: self.min, max: self.max }
    }
}

impl TensorValues<'_> {
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(values) => values.len(),
            TensorValues::I64(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Vocabulary {
    fn new(codes: &[i64]) -> Vocabulary {
        let first = codes.first().copied().unwrap_or(0);
        let dense = codes.iter().enumerate().all(|(position, code)| first.checked_add(position as i64) == Some(*code));
        if dense { Vocabulary::Dense { first, len: codes.len() } } else { Vocabulary::Sorted(codes.to_vec()) }
    }

    #[inline]
    fn slot(&self, code: i64) -> Option<usize> {
        match self {
            Vocabulary::Dense { first, len } => {
                let offset = code.checked_sub(*first)?;
                (0..*len as i64).contains(&offset).then_some(offset as usize)
            }
            Vocabulary::Sorted(codes) => codes.binary_search(&code).ok(),
        }
    }
}

impl WindowAccumulator {
    pub fn new(profile: &Profile) -> WindowAccumulator {
        let mut bindings: Vec<TensorBinding> = Vec::new();
        let mut features = Vec::with_capacity(profile.features().len());
        for (feature_idx, feature) in profile.features().iter().enumerate() {
            match bindings.iter_mut().find(|binding| binding.side == feature.side && binding.tensor == feature.tensor) {
                Some(binding) => binding.feature_idxs.push(feature_idx),
                None => bindings.push(TensorBinding {
                    side: feature.side,
                    tensor: feature.tensor.clone(),
                    feature_idxs: vec![feature_idx],
                    rows: 0,
                }),
            }
            features.push(match &feature.reference {
                Reference::Numeric(numeric) => FeatureState::Numeric {
                    index: numeric.index,
                    kll: new_kll(profile.kll_k()),
                    bin_edges: numeric.bin_edges.clone(),
                    bins: vec![BinTally::default(); numeric.bin_counts.len()],
                    moments: MomentsAccumulator::EMPTY,
                    nulls: 0,
                },
                Reference::Categorical(categorical) => FeatureState::Categorical {
                    index: categorical.index,
                    vocabulary: Vocabulary::new(&categorical.vocabulary),
                    counts: vec![0; categorical.vocabulary.len()],
                    other: 0,
                    other_items: new_other_items(),
                    nulls: 0,
                },
                Reference::Channels(channels) => {
                    FeatureState::Channels { axis: channels.axis, moments: vec![MomentsAccumulator::EMPTY; channels.moments.len()] }
                }
            });
        }
        WindowAccumulator { kll_k: profile.kll_k(), bindings, features }
    }

    /// Observes a `[batch, row_len]` row-major tensor (a rank-1 tensor is one row).
    pub fn observe(&mut self, side: Side, tensor: &str, values: TensorValues<'_>, row_len: usize) -> Result<(), DriftError> {
        if row_len == 0 || !values.len().is_multiple_of(row_len) {
            return Err(DriftError::Observe {
                tensor: tensor.to_owned(),
                reason: format!("{} values do not make rows of {row_len}", values.len()),
            });
        }
        self.observe_shaped(side, tensor, values, &[values.len() / row_len, row_len])
    }

    /// Observes a tensor of any shape: tabular features read `[shape[0], product(rest)]` rows;
    /// `channels` features use `shape` to find their axis. A tensor no feature reads is ignored.
    pub fn observe_shaped(&mut self, side: Side, tensor: &str, values: TensorValues<'_>, shape: &[usize]) -> Result<(), DriftError> {
        let Some(binding) = self.bindings.iter_mut().find(|binding| binding.side == side && binding.tensor == tensor) else {
            return Ok(());
        };
        let observe_error = |reason: String| DriftError::Observe { tensor: tensor.to_owned(), reason };
        let n_values: usize = shape.iter().product();
        if shape.is_empty() || n_values != values.len() {
            return Err(observe_error(format!("shape {shape:?} does not hold {} values", values.len())));
        }
        let (n_rows, row_len) = if shape.len() == 1 { (1, shape[0]) } else { (shape[0], n_values / shape[0].max(1)) };
        // Check every feature before touching any, so an error leaves the window unchanged.
        for &feature_idx in &binding.feature_idxs {
            match &self.features[feature_idx] {
                FeatureState::Numeric { index, .. } | FeatureState::Categorical { index, .. } => {
                    if *index >= row_len {
                        return Err(observe_error(format!("column {index} is outside rows of {row_len}")));
                    }
                }
                FeatureState::Channels { axis, moments } => {
                    if shape.get(*axis) != Some(&moments.len()) {
                        return Err(observe_error(format!("axis {axis} of shape {shape:?} is not {} channels", moments.len())));
                    }
                }
            }
        }
        binding.rows += n_rows as u64;
        for &feature_idx in &binding.feature_idxs {
            match &mut self.features[feature_idx] {
                FeatureState::Numeric { index, kll, bin_edges, bins, moments, nulls } => match values {
                    TensorValues::F32(data) => {
                        for row in data.chunks_exact(row_len) {
                            observe_numeric(row[*index], kll, bin_edges, bins, moments, nulls);
                        }
                    }
                    TensorValues::I64(data) => {
                        for row in data.chunks_exact(row_len) {
                            observe_numeric(row[*index] as f32, kll, bin_edges, bins, moments, nulls);
                        }
                    }
                },
                FeatureState::Categorical { index, vocabulary, counts, other, other_items, nulls } => {
                    // Non-integral floats can match no code; they count as `other` under
                    // their truncation.
                    let mut count_code = |code: i64, integral: bool| match vocabulary.slot(code).filter(|_| integral) {
                        Some(slot) => counts[slot] += 1,
                        None => {
                            *other += 1;
                            other_items.update(code);
                        }
                    };
                    match values {
                        TensorValues::F32(data) => {
                            for row in data.chunks_exact(row_len) {
                                let value = row[*index];
                                if value.is_nan() {
                                    *nulls += 1;
                                } else {
                                    let code = value as i64;
                                    count_code(code, code as f32 == value);
                                }
                            }
                        }
                        TensorValues::I64(data) => {
                            for row in data.chunks_exact(row_len) {
                                count_code(row[*index], true);
                            }
                        }
                    }
                }
                FeatureState::Channels { axis, moments } => {
                    let n_channels = moments.len();
                    let inner: usize = shape[*axis + 1..].iter().product();
                    let block = n_channels * inner;
                    if block == 0 {
                        continue;
                    }
                    let mut push_block = |channel: usize, value: f64| {
                        if !value.is_nan() {
                            moments[channel].push(value);
                        }
                    };
                    match values {
                        TensorValues::F32(data) => {
                            for outer in data.chunks_exact(block) {
                                for (channel, plane) in outer.chunks_exact(inner).enumerate() {
                                    plane.iter().for_each(|value| push_block(channel, *value as f64));
                                }
                            }
                        }
                        TensorValues::I64(data) => {
                            for outer in data.chunks_exact(block) {
                                for (channel, plane) in outer.chunks_exact(inner).enumerate() {
                                    plane.iter().for_each(|value| push_block(channel, *value as f64));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Rows observed since the last `take`.
    pub fn samples(&self) -> u64 {
        self.bindings.iter().map(|binding| binding.rows).max().unwrap_or(0)
    }

    /// The window so far, resetting the accumulator; `None` (and nothing reset) if no rows came.
    pub fn take(&mut self, started_at_ms: u64, ended_at_ms: u64) -> Option<DriftWindow> {
        let samples = self.samples();
        if samples == 0 {
            return None;
        }
        self.bindings.iter_mut().for_each(|binding| binding.rows = 0);
        let kll_k = self.kll_k;
        let features = self
            .features
            .iter_mut()
            .map(|state| match state {
                FeatureState::Numeric { kll, bins, moments, nulls, .. } => {
                    let summary = FeatureSummary::Numeric {
                        kll: kll.serialize(),
                        bin_counts: bins.iter().map(|bin| bin.count).collect(),
                        bin_sums: bins.iter().map(|bin| bin.sum).collect(),
                        moments: moments.to_moments(),
                        nulls: *nulls,
                    };
                    *kll = new_kll(kll_k);
                    bins.iter_mut().for_each(|bin| *bin = BinTally::default());
                    *moments = MomentsAccumulator::EMPTY;
                    *nulls = 0;
                    summary
                }
                FeatureState::Categorical { counts, other, other_items, nulls, .. } => {
                    let summary = FeatureSummary::Categorical {
                        counts: counts.clone(),
                        other: *other,
                        other_items: other_items.serialize(),
                        nulls: *nulls,
                    };
                    counts.iter_mut().for_each(|count| *count = 0);
                    *other = 0;
                    other_items.reset();
                    *nulls = 0;
                    summary
                }
                FeatureState::Channels { moments, .. } => {
                    let summary = FeatureSummary::Channels { moments: moments.iter().map(|moments| moments.to_moments()).collect() };
                    moments.iter_mut().for_each(|moments| *moments = MomentsAccumulator::EMPTY);
                    summary
                }
            })
            .collect();
        Some(DriftWindow { samples, started_at_ms, ended_at_ms, features })
    }
}

#[inline]
fn observe_numeric(
    value: f32,
    kll: &mut FloatKll,
    bin_edges: &[f64],
    bins: &mut [BinTally],
    moments: &mut MomentsAccumulator,
    nulls: &mut u64,
) {
    // NaN and ±inf are nulls: a single infinity would make the moments useless.
    if !value.is_finite() {
        *nulls += 1;
        return;
    }
    let Ok(item) = KllFloat::<f32>::new(value) else { return };
    kll.update(item);
    let value = value as f64;
    let bin = &mut bins[bin_of(bin_edges, value)];
    bin.count += 1;
    bin.sum += value;
    moments.push(value);
}

fn new_kll(kll_k: u16) -> FloatKll {
    // `Profile` guarantees k is in KLL_K_RANGE, which the sketch accepts.
    FloatKll::new(kll_k).unwrap_or_default()
}

fn new_other_items() -> FrequentItemsSketch<i64> {
    // OTHER_ITEMS_MAP_SIZE is a power of two in the accepted range.
    FrequentItemsSketch::new(OTHER_ITEMS_MAP_SIZE).unwrap_or_else(|_| unreachable!("constant map size is valid"))
}

impl MergedWindow {
    pub fn new(profile: &Profile) -> MergedWindow {
        let features = profile
            .features()
            .iter()
            .map(|feature| match &feature.reference {
                Reference::Numeric(numeric) => MergedFeature::Numeric {
                    kll: new_kll(profile.kll_k()),
                    bin_counts: vec![0; numeric.bin_counts.len()],
                    bin_sums: vec![0.0; numeric.bin_counts.len()],
                    moments: Moments::default(),
                    nulls: 0,
                },
                Reference::Categorical(categorical) => MergedFeature::Categorical {
                    counts: vec![0; categorical.counts.len()],
                    other: 0,
                    other_items: new_other_items(),
                    nulls: 0,
                },
                Reference::Channels(channels) => MergedFeature::Channels { moments: vec![Moments::default(); channels.moments.len()] },
            })
            .collect();
        let names = profile.features().iter().map(|feature| feature.name.clone()).collect();
        MergedWindow { kll_k: profile.kll_k(), names, samples: 0, n_windows: 0, started_at_ms: None, ended_at_ms: None, features }
    }

    /// Adds one untrusted device window; on error nothing changes.
    pub fn merge(&mut self, window: &DriftWindow) -> Result<(), DriftError> {
        if window.features.len() != self.features.len() {
            return Err(DriftError::Window(format!("{} features, the profile has {}", window.features.len(), self.features.len())));
        }
        if window.started_at_ms > window.ended_at_ms {
            return Err(DriftError::Window(format!("starts at {} after it ends at {}", window.started_at_ms, window.ended_at_ms)));
        }
        let samples = self.samples.checked_add(window.samples).ok_or_else(|| DriftError::Window("sample count overflows".into()))?;
        // Decode and check everything first; apply only once all of it is known good.
        let mut decoded = Vec::with_capacity(self.features.len());
        for ((merged, summary), name) in self.features.iter().zip(&window.features).zip(&self.names) {
            let fail = |reason: String| DriftError::WindowFeature { feature: name.clone(), reason };
            decoded.push(decode_summary(merged, summary, self.kll_k, window.samples).map_err(fail)?);
        }
        for (merged, decoded) in self.features.iter_mut().zip(decoded) {
            match (merged, decoded) {
                (MergedFeature::Numeric { kll, bin_counts, bin_sums, moments, nulls }, Decoded::Numeric { kll: window_kll, summary }) => {
                    let FeatureSummary::Numeric {
                        bin_counts: window_counts,
                        bin_sums: window_sums,
                        moments: window_moments,
                        nulls: window_nulls,
                        ..
                    } = summary
                    else {
                        continue;
                    };
                    // Cannot fail: same m (checked by deserialize) and the weight sum was checked.
                    kll.merge(&window_kll).map_err(|error| DriftError::Window(format!("kll merge: {error}")))?;
                    add_counts(bin_counts, window_counts);
                    bin_sums.iter_mut().zip(window_sums).for_each(|(merged, window)| *merged += window);
                    *moments = moments.merge(window_moments);
                    *nulls += window_nulls;
                }
                (
                    MergedFeature::Categorical { counts, other, other_items, nulls },
                    Decoded::Categorical { other_items: window_items, summary },
                ) => {
                    let FeatureSummary::Categorical { counts: window_counts, other: window_other, nulls: window_nulls, .. } = summary
                    else {
                        continue;
                    };
                    add_counts(counts, window_counts);
                    *other += window_other;
                    other_items.merge(&window_items);
                    *nulls += window_nulls;
                }
                (MergedFeature::Channels { moments }, Decoded::Channels { summary }) => {
                    let FeatureSummary::Channels { moments: window_moments } = summary else { continue };
                    for (merged, window_moments) in moments.iter_mut().zip(window_moments) {
                        *merged = merged.merge(window_moments);
                    }
                }
                // Invariant: decode_summary only returns a Decoded of the merged feature's own
                // kind for a summary of that kind, so no other pairing reaches this loop.
                _ => {}
            }
        }
        self.samples = samples;
        self.n_windows += 1;
        self.started_at_ms = Some(self.started_at_ms.map_or(window.started_at_ms, |start| start.min(window.started_at_ms)));
        self.ended_at_ms = Some(self.ended_at_ms.map_or(window.ended_at_ms, |end| end.max(window.ended_at_ms)));
        Ok(())
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn n_windows(&self) -> u64 {
        self.n_windows
    }

    /// Earliest start and latest end of the merged windows.
    pub fn span_ms(&self) -> Option<(u64, u64)> {
        Some((self.started_at_ms?, self.ended_at_ms?))
    }

    /// One per profile feature, in profile order.
    pub fn features(&self) -> &[MergedFeature] {
        &self.features
    }
}

enum Decoded<'a> {
    Numeric { kll: FloatKll, summary: &'a FeatureSummary },
    Categorical { other_items: FrequentItemsSketch<i64>, summary: &'a FeatureSummary },
    Channels { summary: &'a FeatureSummary },
}

fn decode_summary<'a>(merged: &MergedFeature, summary: &'a FeatureSummary, kll_k: u16, samples: u64) -> Result<Decoded<'a>, String> {
    match (merged, summary) {
        (
            MergedFeature::Numeric { kll, bin_counts, moments, nulls, .. },
            FeatureSummary::Numeric {
                kll: kll_bytes,
                bin_counts: window_counts,
                bin_sums: window_sums,
                moments: window_moments,
                nulls: window_nulls,
            },
        ) => {
            if window_counts.len() != bin_counts.len() {
                return Err(format!("{} bin counts, the profile has {} bins", window_counts.len(), bin_counts.len()));
            }
            if window_sums.len() != bin_counts.len() || window_sums.iter().any(|sum| !sum.is_finite()) {
                return Err(format!("bin sums must be {} finite numbers", bin_counts.len()));
            }
            let window_kll = FloatKll::deserialize(kll_bytes).map_err(|error| format!("kll is not a KLL float sketch: {error}"))?;
            if window_kll.k() != kll_k {
                return Err(format!("kll has k={}, the profile has k={kll_k}", window_kll.k()));
            }
            check_window_moments(window_moments)?;
            let binned = sum_counts(window_counts).ok_or("bin counts overflow")?;
            if binned != window_moments.count || window_kll.n() != window_moments.count {
                return Err(format!("bins hold {binned} values, kll {}, moments {}", window_kll.n(), window_moments.count));
            }
            if window_moments.count.checked_add(*window_nulls).is_none_or(|rows| rows > samples) {
                return Err(format!("{} values and {window_nulls} nulls in a window of {samples} samples", window_moments.count));
            }
            check_room(bin_counts, window_counts)?;
            if kll.n().checked_add(window_kll.n()).is_none()
                || moments.count.checked_add(window_moments.count).is_none()
                || nulls.checked_add(*window_nulls).is_none()
            {
                return Err("counts overflow".into());
            }
            Ok(Decoded::Numeric { kll: window_kll, summary })
        }
        (
            MergedFeature::Categorical { counts, other, other_items, nulls },
            FeatureSummary::Categorical { counts: window_counts, other: window_other, other_items: items_bytes, nulls: window_nulls },
        ) => {
            if window_counts.len() != counts.len() {
                return Err(format!("{} category counts, the profile has {} categories", window_counts.len(), counts.len()));
            }
            // The crate allocates 2^lg_cur_map_size slots up front, up to 2^30, and checks that
            // lg_cur <= lg_max (header byte 3): refuse maps larger than the devices' first.
            let lg_max_map_size = items_bytes.get(3).copied().unwrap_or(0);
            if lg_max_map_size > OTHER_ITEMS_MAP_SIZE.trailing_zeros() as u8 {
                return Err(format!("other_items map size 2^{lg_max_map_size} exceeds {OTHER_ITEMS_MAP_SIZE}"));
            }
            let window_items = FrequentItemsSketch::<i64>::deserialize(items_bytes)
                .map_err(|error| format!("other_items is not a frequent-items sketch: {error}"))?;
            if window_items.total_weight() != *window_other {
                return Err(format!("other_items holds {} values but other is {window_other}", window_items.total_weight()));
            }
            let rows =
                sum_counts(window_counts).and_then(|sum| sum.checked_add(*window_other)).and_then(|sum| sum.checked_add(*window_nulls));
            if rows.is_none_or(|rows| rows > samples) {
                return Err(format!("{rows:?} values in a window of {samples} samples"));
            }
            check_room(counts, window_counts)?;
            if other.checked_add(*window_other).is_none()
                || other_items.total_weight().checked_add(window_items.total_weight()).is_none()
                || nulls.checked_add(*window_nulls).is_none()
            {
                return Err("counts overflow".into());
            }
            Ok(Decoded::Categorical { other_items: window_items, summary })
        }
        (MergedFeature::Channels { moments }, FeatureSummary::Channels { moments: window_moments }) => {
            if window_moments.len() != moments.len() {
                return Err(format!("{} channels, the profile has {}", window_moments.len(), moments.len()));
            }
            for (merged, window_moments) in moments.iter().zip(window_moments) {
                check_window_moments(window_moments)?;
                if merged.count.checked_add(window_moments.count).is_none() {
                    return Err("counts overflow".into());
                }
            }
            Ok(Decoded::Channels { summary })
        }
        (expected, _) => Err(format!("summary kind does not match the profile's {}", merged_kind_name(expected))),
    }
}

fn merged_kind_name(merged: &MergedFeature) -> &'static str {
    match merged {
        MergedFeature::Numeric { .. } => "numeric feature",
        MergedFeature::Categorical { .. } => "categorical feature",
        MergedFeature::Channels { .. } => "channels feature",
    }
}

fn check_window_moments(moments: &Moments) -> Result<(), String> {
    let finite = [moments.mean, moments.variance, moments.min, moments.max].iter().all(|value| value.is_finite());
    if !finite || moments.variance < 0.0 || (moments.count > 0 && moments.min > moments.max) {
        return Err(format!("moments are not valid: {moments:?}"));
    }
    Ok(())
}

fn sum_counts(counts: &[u64]) -> Option<u64> {
    counts.iter().try_fold(0u64, |sum, count| sum.checked_add(*count))
}

fn check_room(merged: &[u64], window: &[u64]) -> Result<(), String> {
    if merged.iter().zip(window).any(|(merged, window)| merged.checked_add(*window).is_none()) {
        return Err("counts overflow".into());
    }
    Ok(())
}

fn add_counts(merged: &mut [u64], window: &[u64]) {
    merged.iter_mut().zip(window).for_each(|(merged, window)| *merged += window);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::profile::{BuildOptions, ColumnKind, ColumnSpec};

    fn profile() -> Profile {
        let x: Vec<f64> = (0..500).map(|row| (row % 50) as f64).collect();
        let code: Vec<f64> = (0..500).map(|row| (row % 3 + 10) as f64).collect();
        let pixels: Vec<f64> = (0..2 * 2 * 3).map(|position| position as f64).collect();
        let columns = [
            ColumnSpec { name: "x".into(), side: Side::Input, tensor: "in".into(), kind: ColumnKind::Numeric { index: 0 }, metric: None },
            ColumnSpec {
                name: "code".into(),
                side: Side::Input,
                tensor: "in".into(),
                kind: ColumnKind::Categorical { index: 1, labels: None },
                metric: None,
            },
            ColumnSpec {
                name: "class".into(),
                side: Side::Output,
                tensor: "label".into(),
                kind: ColumnKind::Categorical { index: 0, labels: None },
                metric: None,
            },
            ColumnSpec {
                name: "img".into(),
                side: Side::Input,
                tensor: "img".into(),
                kind: ColumnKind::Channels { axis: 1, shape: vec![2, 2, 3] },
                metric: None,
            },
        ];
        Profile::build(&columns, &[&x, &code, &code, &pixels], &BuildOptions::default()).unwrap()
    }

    fn window(profile: &Profile, rows: &[[f32; 2]]) -> DriftWindow {
        let mut accumulator = WindowAccumulator::new(profile);
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        accumulator.observe(Side::Input, "in", TensorValues::F32(&flat), 2).unwrap();
        let labels: Vec<i64> = rows.iter().map(|row| row[1] as i64).collect();
        accumulator.observe(Side::Output, "label", TensorValues::I64(&labels), 1).unwrap();
        accumulator.observe_shaped(Side::Input, "img", TensorValues::F32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), &[1, 2, 3]).unwrap();
        accumulator.take(1_000, 2_000).unwrap()
    }

    #[test]
    fn chan_merge_equals_one_pass_moments() {
        let values: Vec<f64> = (0..1_000).map(|index| ((index * 7919) % 1_013) as f64 * 0.37 - 50.0).collect();
        let whole = Moments::of_values(&values);
        for split in [0, 1, 10, 500, 999, 1_000] {
            let merged = Moments::of_values(&values[..split]).merge(&Moments::of_values(&values[split..]));
            assert_eq!(merged.count, whole.count);
            assert!((merged.mean - whole.mean).abs() < 1e-12, "split {split}");
            assert!((merged.variance - whole.variance).abs() < 1e-9 * whole.variance, "split {split}");
            assert_eq!((merged.min, merged.max), (whole.min, whole.max));
        }
        let mut accumulator = MomentsAccumulator::EMPTY;
        values.iter().for_each(|value| accumulator.push(*value));
        let welford = accumulator.to_moments();
        assert!((welford.mean - whole.mean).abs() < 1e-12 && (welford.variance - whole.variance).abs() < 1e-9 * whole.variance);
    }

    #[test]
    fn window_counts_every_value_once_and_resets_on_take() {
        let profile = profile();
        let mut accumulator = WindowAccumulator::new(&profile);
        assert!(accumulator.take(0, 1).is_none());
        let rows: Vec<f32> = vec![1.0, 10.0, f32::NAN, 11.0, 60.0, 99.0, 2.5, 12.5];
        accumulator.observe(Side::Input, "in", TensorValues::F32(&rows), 2).unwrap();
        accumulator.observe(Side::Input, "not-monitored", TensorValues::F32(&rows), 2).unwrap();
        let window = accumulator.take(5, 6).unwrap();
        assert_eq!(window.samples, 4);
        let FeatureSummary::Numeric { kll, bin_counts, moments, nulls, .. } = &window.features[0] else { panic!("numeric") };
        assert_eq!((moments.count, *nulls, bin_counts.iter().sum::<u64>()), (3, 1, 3));
        assert_eq!(FloatKll::deserialize(kll).unwrap().n(), 3);
        assert_eq!((moments.min, moments.max), (1.0, 60.0));
        let FeatureSummary::Categorical { counts, other, other_items, nulls } = &window.features[1] else { panic!("categorical") };
        assert_eq!((counts.as_slice(), *other, *nulls), (&[1, 1, 0][..], 2, 0));
        let items = FrequentItemsSketch::<i64>::deserialize(other_items).unwrap();
        assert_eq!((items.estimate(&99), items.estimate(&12)), (1, 1), "12.5 is counted under its truncation");
        assert!(accumulator.take(7, 8).is_none(), "take resets the window");
    }

    #[test]
    fn observe_refuses_bad_shapes_without_counting() {
        let profile = profile();
        let mut accumulator = WindowAccumulator::new(&profile);
        #[track_caller]
        fn check(result: Result<(), DriftError>, expected: &str) {
            let error = result.unwrap_err().to_string();
            assert!(error.contains(expected), "expected `{expected}` in `{error}`");
        }
        check(accumulator.observe(Side::Input, "in", TensorValues::F32(&[1.0, 2.0, 3.0]), 2), "3 values do not make rows of 2");
        check(accumulator.observe(Side::Input, "in", TensorValues::F32(&[1.0]), 1), "column 1 is outside rows of 1");
        check(accumulator.observe(Side::Input, "in", TensorValues::F32(&[1.0]), 0), "do not make rows of 0");
        check(
            accumulator.observe_shaped(Side::Input, "img", TensorValues::F32(&[0.0; 6]), &[1, 3, 2]),
            "axis 1 of shape [1, 3, 2] is not 2 channels",
        );
        check(accumulator.observe_shaped(Side::Input, "img", TensorValues::F32(&[0.0; 6]), &[1, 2, 2]), "does not hold 6 values");
        assert!(accumulator.take(0, 1).is_none());
    }

    #[test]
    fn merged_windows_add_up() {
        let profile = profile();
        let mut merged = MergedWindow::new(&profile);
        merged.merge(&window(&profile, &[[1.0, 10.0], [2.0, 11.0]])).unwrap();
        merged.merge(&window(&profile, &[[3.0, 12.0], [f32::NAN, 13.0], [5.0, 10.0]])).unwrap();
        assert_eq!((merged.samples(), merged.n_windows(), merged.span_ms()), (5, 2, Some((1_000, 2_000))));
        let MergedFeature::Numeric { kll, moments, nulls, .. } = &merged.features()[0] else { panic!("numeric") };
        assert_eq!((kll.n(), moments.count, *nulls), (4, 4, 1));
        assert_eq!(moments.mean, 2.75);
        let MergedFeature::Categorical { counts, other, other_items, .. } = &merged.features()[2] else { panic!("categorical") };
        assert_eq!((counts.as_slice(), *other, other_items.estimate(&13)), (&[2, 1, 1][..], 1, 1));
        let MergedFeature::Channels { moments } = &merged.features()[3] else { panic!("channels") };
        assert_eq!((moments[0].count, moments[0].mean, moments[1].mean), (6, 2.0, 5.0));
    }

    /// Each case corrupts one field of a valid window; the merge must refuse it by name and
    /// leave the merged state exactly as it was.
    #[test]
    fn merge_refuses_mismatched_windows_without_changing_state() {
        let profile = profile();
        let good = window(&profile, &[[1.0, 10.0], [2.0, 11.0], [3.0, 77.0]]);
        let mut merged = MergedWindow::new(&profile);
        merged.merge(&good).unwrap();
        let before = format!("{merged:?}");
        type Corruption = Box<dyn Fn(&mut DriftWindow)>;
        let cases: Vec<(&str, Corruption)> = vec![
            ("3 features, the profile has 4", Box::new(|window| drop(window.features.pop()))),
            ("starts at 5 after it ends at 1", Box::new(|window| (window.started_at_ms, window.ended_at_ms) = (5, 1))),
            ("sample count overflows", Box::new(|window| window.samples = u64::MAX)),
            ("feature `x`: summary kind does not match the profile's numeric feature", Box::new(|window| window.features.swap(0, 1))),
            (
                "feature `x`: 2 bin counts",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { bin_counts, .. } = &mut window.features[0] {
                        bin_counts.truncate(2)
                    }
                }),
            ),
            (
                "feature `x`: bin sums must be",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { bin_sums, .. } = &mut window.features[0] {
                        bin_sums[0] = f64::INFINITY
                    }
                }),
            ),
            (
                "feature `x`: kll is not a KLL float sketch",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { kll, .. } = &mut window.features[0] {
                        kll.truncate(9)
                    }
                }),
            ),
            (
                "feature `x`: kll has k=100",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { kll, .. } = &mut window.features[0] {
                        let mut other = FloatKll::new(100).unwrap();
                        for value in [1.0, 2.0, 3.0] {
                            other.update(KllFloat::<f32>::new(value).unwrap());
                        }
                        *kll = other.serialize();
                    }
                }),
            ),
            (
                "feature `x`: bins hold 4 values",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { bin_counts, .. } = &mut window.features[0] {
                        bin_counts[0] += 1
                    }
                }),
            ),
            (
                "feature `x`: moments are not valid",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { moments, .. } = &mut window.features[0] {
                        moments.mean = f64::NAN
                    }
                }),
            ),
            (
                "feature `x`: 3 values and 9 nulls in a window of 3 samples",
                Box::new(|window| {
                    if let FeatureSummary::Numeric { nulls, .. } = &mut window.features[0] {
                        *nulls = 9
                    }
                }),
            ),
            (
                "feature `code`: 2 category counts",
                Box::new(|window| {
                    if let FeatureSummary::Categorical { counts, .. } = &mut window.features[1] {
                        counts.pop();
                    }
                }),
            ),
            (
                "feature `code`: other_items is not a frequent-items sketch",
                Box::new(|window| {
                    if let FeatureSummary::Categorical { other_items, .. } = &mut window.features[1] {
                        *other_items = vec![1, 2, 3]
                    }
                }),
            ),
            (
                "feature `code`: other_items holds 1 values but other is 5",
                Box::new(|window| {
                    if let FeatureSummary::Categorical { other, .. } = &mut window.features[1] {
                        *other = 5
                    }
                }),
            ),
            (
                "feature `class`: Some(4) values in a window of 3 samples",
                Box::new(|window| {
                    if let FeatureSummary::Categorical { counts, .. } = &mut window.features[2] {
                        counts[0] += 1
                    }
                }),
            ),
            (
                "feature `img`: 1 channels, the profile has 2",
                Box::new(|window| {
                    if let FeatureSummary::Channels { moments } = &mut window.features[3] {
                        moments.pop();
                    }
                }),
            ),
        ];
        for (expected, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let error = merged.merge(&bad).unwrap_err().to_string();
            assert!(error.contains(expected), "expected `{expected}` in `{error}`");
            assert_eq!(format!("{merged:?}"), before, "state changed after: {expected}");
        }
    }

    #[test]
    fn window_survives_postcard() {
        let profile = profile();
        let window = window(&profile, &[[1.0, 10.0], [2.0, 99.0]]);
        let bytes = postcard::to_allocvec(&window).unwrap();
        assert_eq!(postcard::from_bytes::<DriftWindow>(&bytes).unwrap(), window);
    }
}
