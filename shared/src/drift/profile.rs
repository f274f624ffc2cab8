//! The reference profile: what the training data looked like, per monitored feature, in a
//! documented JSON container (`docs/drift.md`) that Python can write too
//! (`examples/make_profile.py`). `ProfileDocument` is the wire format; `Profile` is the
//! validated form every other part of the drift layer works with.
//!
//! Invariant: a `Profile` exists only through `Profile::from_json`, `Profile::from_document` or
//! `Profile::build`, so its bins are strictly increasing and finite, its counts have the right
//! lengths, its sketches decode, and feature names are unique.

use std::collections::HashSet;

use datasketches::kll::KllFloat;
use serde::{Deserialize, Serialize};

use super::moments::Moments;
use super::{DriftError, FloatKll, Side};

/// The `format` field every profile carries.
pub const PROFILE_FORMAT: &str = "fleetml.profile";
/// Bumped only for incompatible changes to the container.
pub const PROFILE_VERSION: u32 = 1;
/// KLL accuracy parameter used when nothing else is said: about 1.3% single-sided rank error.
pub const DEFAULT_KLL_K: u16 = 200;
/// Smallest and largest `kll_k` a profile may ask for (the KLL minimum is 8; above 4096 the
/// sketches stop being small enough to send every window).
pub const KLL_K_RANGE: std::ops::RangeInclusive<u16> = 8..=4096;
/// Number of equal-mass bins the builder aims for (fewer when quantiles coincide).
pub const DEFAULT_N_BINS: usize = 20;
/// Largest number of bin edges or vocabulary entries a profile may carry.
pub const MAX_BINS: usize = 10_000;

/// The JSON container, field for field. Unknown fields are refused so that typos in a
/// hand-written or Python-written profile surface at load time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDocument {
    /// Always `fleetml.profile`.
    pub format: String,
    /// Always 1 for this layout.
    pub version: u32,
    /// Number of reference rows the profile was built from.
    pub rows: u64,
    /// KLL `k` of the reference sketches and of every device window.
    pub kll_k: u16,
    #[serde(default)]
    pub window: WindowSpec,
    #[serde(default)]
    pub thresholds: Thresholds,
    pub features: Vec<FeatureDocument>,
}

/// How a device cuts windows: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub seconds: u64,
    pub samples: u64,
}

/// Decision thresholds; every field defaults to Evidently's choice.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Wasserstein-1 distance divided by the reference standard deviation: drift at or above.
    pub wasserstein: f64,
    /// Jensen-Shannon distance (natural log, square root of the divergence): drift at or above.
    pub jensen_shannon: f64,
    /// Population stability index: drift at or above.
    pub psi: f64,
    /// Chi-square test: drift when the p-value is below.
    pub chi_square_p: f64,
    /// Kolmogorov-Smirnov significance level α for the conservative sketch threshold.
    pub ks_alpha: f64,
    /// `channels` features: drift when some channel's mean moved by at least this many
    /// reference standard deviations (reported, not counted in the share).
    pub channel_mean_shift: f64,
    /// The dataset drifts when at least this share of counted features drifts.
    pub share: f64,
    /// How many consecutive drifted windows the plane waits for before it alerts
    /// (`metrics::DriftStreak`; `evaluate` judges one merged window).
    pub consecutive_windows: u32,
}

/// One feature as written in the container; which optional fields are required depends on `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDocument {
    pub name: String,
    pub side: Side,
    /// Name of the model input or output tensor the feature is read from.
    pub tensor: String,
    pub kind: FeatureKind,
    /// Column within a row of the `[batch, row_len]` tensor (numeric and categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Channel axis of the tensor's shape (`channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<u32>,
    /// Hex of the reference KLL float sketch in the Apache DataSketches compact format (numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kll: Option<String>,
    /// Inner bin edges, strictly increasing and finite (numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_edges: Option<Vec<f64>>,
    /// Exact reference counts per bin, one more than `bin_edges` (numeric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_counts: Option<Vec<u64>>,
    /// Exact sum of the reference values in each bin (numeric, optional): with the counts, each
    /// bin's mean, which sharpens the Wasserstein estimate (`docs/drift.md`, "Bin calibration").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_sums: Option<Vec<f64>>,
    /// One object (numeric) or one per channel (`channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moments: Option<MomentsDocument>,
    /// Category codes, sorted and distinct (categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Vec<i64>>,
    /// Human names of the codes, same length as `vocabulary` (categorical, optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Exact reference counts per vocabulary entry (categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Vec<u64>>,
    /// Reference rows where the value was missing (NaN).
    #[serde(default)]
    pub nulls: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
}

/// `moments` is an object for numeric features and an array for `channels`. Untagged is fine
/// here: the profile only ever travels as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MomentsDocument {
    One(Moments),
    PerChannel(Vec<Moments>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric,
    Categorical,
    Channels,
}

/// The statistic a feature's drift decision is made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Wasserstein-1 distance over the reference standard deviation (numeric default).
    Wasserstein,
    /// Population stability index over the profile's bins (numeric).
    Psi,
    /// Jensen-Shannon distance over bins (numeric) or categories (categorical default).
    JensenShannon,
    /// Two-sample Kolmogorov-Smirnov with a threshold widened by both sketches' rank errors (numeric).
    Ks,
    /// Chi-square test of homogeneity on the exact category counts (categorical).
    ChiSquare,
    /// Largest per-channel mean shift in reference standard deviations (`channels`, implied).
    MeanShift,
}

/// The validated profile.
#[derive(Clone, Debug)]
pub struct Profile {
    rows: u64,
    kll_k: u16,
    window: WindowSpec,
    thresholds: Thresholds,
    features: Vec<Feature>,
}

/// One validated feature.
#[derive(Clone, Debug)]
pub struct Feature {
    pub name: String,
    pub side: Side,
    pub tensor: String,
    pub metric: Metric,
    pub reference: Reference,
}

/// What the reference data looked like for one feature.
#[derive(Clone, Debug)]
pub enum Reference {
    Numeric(NumericReference),
    Categorical(CategoricalReference),
    Channels(ChannelsReference),
}

#[derive(Clone, Debug)]
pub struct NumericReference {
    pub index: usize,
    pub kll: FloatKll,
    /// Inner edges; bin `i` is `(edges[i-1], edges[i]]` with `edges[-1] = -inf`, `edges[len] = +inf`.
    pub bin_edges: Vec<f64>,
    pub bin_counts: Vec<u64>,
    /// `None` in a profile written without `bin_sums`.
    pub bin_sums: Option<Vec<f64>>,
    pub moments: Moments,
    pub nulls: u64,
}

#[derive(Clone, Debug)]
pub struct CategoricalReference {
    pub index: usize,
    pub vocabulary: Vec<i64>,
    pub labels: Option<Vec<String>>,
    pub counts: Vec<u64>,
    pub nulls: u64,
}

#[derive(Clone, Debug)]
pub struct ChannelsReference {
    pub axis: usize,
    pub moments: Vec<Moments>,
}

/// One reference column handed to `Profile::build`.
#[derive(Clone, Debug)]
pub struct ColumnSpec {
    pub name: String,
    pub side: Side,
    pub tensor: String,
    pub kind: ColumnKind,
    /// `None`: the kind's default (Wasserstein for numeric, Jensen-Shannon for categorical).
    pub metric: Option<Metric>,
}

#[derive(Clone, Debug)]
pub enum ColumnKind {
    /// Values are the column `index` of a `[batch, row_len]` tensor; NaN is a null.
    Numeric { index: u32 },
    /// Values are integral category codes in column `index`; NaN is a null.
    Categorical { index: u32, labels: Option<Vec<(i64, String)>> },
    /// Values are a whole row-major tensor of `shape`; moments are kept per index of `axis`.
    Channels { axis: u32, shape: Vec<usize> },
}

/// Knobs of `Profile::build`.
#[derive(Clone, Copy, Debug)]
pub struct BuildOptions {
    pub kll_k: u16,
    pub n_bins: usize,
    pub window: WindowSpec,
    pub thresholds: Thresholds,
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec { seconds: 60, samples: 5_000 }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            wasserstein: 0.1,
            jensen_shannon: 0.1,
            psi: 0.1,
            chi_square_p: 0.05,
            ks_alpha: 0.05,
            channel_mean_shift: 0.5,
            share: 0.5,
            consecutive_windows: 3,
        }
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { kll_k: DEFAULT_KLL_K, n_bins: DEFAULT_N_BINS, window: WindowSpec::default(), thresholds: Thresholds::default() }
    }
}

impl FeatureKind {
    fn default_metric(self) -> Metric {
        match self {
            FeatureKind::Numeric => Metric::Wasserstein,
            FeatureKind::Categorical => Metric::JensenShannon,
            FeatureKind::Channels => Metric::MeanShift,
        }
    }

    fn allows(self, metric: Metric) -> bool {
        match self {
            FeatureKind::Numeric => matches!(metric, Metric::Wasserstein | Metric::Psi | Metric::JensenShannon | Metric::Ks),
            FeatureKind::Categorical => matches!(metric, Metric::JensenShannon | Metric::ChiSquare),
            FeatureKind::Channels => metric == Metric::MeanShift,
        }
    }
}

impl Reference {
    pub fn kind(&self) -> FeatureKind {
        match self {
            Reference::Numeric(_) => FeatureKind::Numeric,
            Reference::Categorical(_) => FeatureKind::Categorical,
            Reference::Channels(_) => FeatureKind::Channels,
        }
    }
}

impl Profile {
    /// Parses and validates an untrusted profile.
    pub fn from_json(bytes: &[u8]) -> Result<Profile, DriftError> {
        // Read the features one by one so that a type error names the feature it is in.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Envelope {
            format: String,
            version: u32,
            rows: u64,
            kll_k: u16,
            #[serde(default)]
            window: WindowSpec,
            #[serde(default)]
            thresholds: Thresholds,
            features: Vec<serde_json::Value>,
        }
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        check_header(&envelope.format, envelope.version)?;
        let mut features = Vec::with_capacity(envelope.features.len());
        for (feature_idx, value) in envelope.features.into_iter().enumerate() {
            let name = value.get("name").and_then(|name| name.as_str()).map(str::to_owned).unwrap_or_else(|| format!("#{feature_idx}"));
            let feature = serde_json::from_value::<FeatureDocument>(value)
                .map_err(|error| DriftError::ProfileFeature { feature: name, reason: error.to_string() })?;
            features.push(feature);
        }
        Profile::from_document(ProfileDocument {
            format: envelope.format,
            version: envelope.version,
            rows: envelope.rows,
            kll_k: envelope.kll_k,
            window: envelope.window,
            thresholds: envelope.thresholds,
            features,
        })
    }

    /// Validates a document (see the module invariant).
    pub fn from_document(document: ProfileDocument) -> Result<Profile, DriftError> {
        check_header(&document.format, document.version)?;
        if !KLL_K_RANGE.contains(&document.kll_k) {
            return Err(DriftError::Profile(format!("kll_k must be in {KLL_K_RANGE:?}, got {}", document.kll_k)));
        }
        if document.window.seconds == 0 || document.window.samples == 0 {
            return Err(DriftError::Profile("window seconds and samples must be positive".into()));
        }
        check_thresholds(&document.thresholds)?;
        if document.features.is_empty() {
            return Err(DriftError::Profile("no features".into()));
        }
        let mut names = HashSet::new();
        let mut features = Vec::with_capacity(document.features.len());
        for feature_document in document.features {
            if !names.insert(feature_document.name.clone()) {
                return Err(feature_error(&feature_document.name, "duplicate feature name"));
            }
            features.push(validate_feature(feature_document, document.kll_k)?);
        }
        Ok(Profile { rows: document.rows, kll_k: document.kll_k, window: document.window, thresholds: document.thresholds, features })
    }

    pub fn to_document(&self) -> ProfileDocument {
        ProfileDocument {
            format: PROFILE_FORMAT.to_owned(),
            version: PROFILE_VERSION,
            rows: self.rows,
            kll_k: self.kll_k,
            window: self.window,
            thresholds: self.thresholds,
            features: self.features.iter().map(Feature::to_document).collect(),
        }
    }

    /// Pretty JSON; `from_json(to_json())` gives back an equal profile.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and finite numbers into memory cannot fail.
        serde_json::to_vec_pretty(&self.to_document()).unwrap_or_default()
    }

    /// Builds a profile from raw reference values: `data[i]` holds the values of `columns[i]`
    /// (one per row, NaN for a null; for `channels`, the whole row-major tensor).
    pub fn build(columns: &[ColumnSpec], data: &[&[f64]], options: &BuildOptions) -> Result<Profile, DriftError> {
        if columns.len() != data.len() {
            return Err(DriftError::Profile(format!("{} column specs but {} data columns", columns.len(), data.len())));
        }
        if options.n_bins == 0 || options.n_bins > MAX_BINS {
            return Err(DriftError::Profile(format!("n_bins must be in 1..={MAX_BINS}, got {}", options.n_bins)));
        }
        let mut rows = 0u64;
        let mut features = Vec::with_capacity(columns.len());
        for (column, values) in columns.iter().zip(data) {
            let column_error = |reason: String| DriftError::Column { column: column.name.clone(), reason };
            let feature = match &column.kind {
                ColumnKind::Numeric { index } => {
                    rows = rows.max(values.len() as u64);
                    build_numeric(*index, values, options).map_err(column_error)?
                }
                ColumnKind::Categorical { index, labels } => {
                    rows = rows.max(values.len() as u64);
                    build_categorical(*index, labels.as_deref(), values).map_err(column_error)?
                }
                ColumnKind::Channels { axis, shape } => build_channels(*axis, shape, values).map_err(column_error)?,
            };
            features.push(FeatureDocument {
                name: column.name.clone(),
                side: column.side,
                tensor: column.tensor.clone(),
                metric: column.metric,
                ..feature
            });
        }
        Profile::from_document(ProfileDocument {
            format: PROFILE_FORMAT.to_owned(),
            version: PROFILE_VERSION,
            rows,
            kll_k: options.kll_k,
            window: options.window,
            thresholds: options.thresholds,
            features,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn kll_k(&self) -> u16 {
        self.kll_k
    }

    pub fn window(&self) -> WindowSpec {
        self.window
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }
}

impl Feature {
    fn to_document(&self) -> FeatureDocument {
        let mut document = empty_feature(self.reference.kind());
        document.name = self.name.clone();
        document.side = self.side;
        document.tensor = self.tensor.clone();
        document.metric = Some(self.metric);
        match &self.reference {
            Reference::Numeric(numeric) => {
                document.index = Some(numeric.index as u32);
                document.kll = Some(hex::encode(numeric.kll.serialize()));
                document.bin_edges = Some(numeric.bin_edges.clone());
                document.bin_counts = Some(numeric.bin_counts.clone());
                document.bin_sums = numeric.bin_sums.clone();
                document.moments = Some(MomentsDocument::One(numeric.moments));
                document.nulls = numeric.nulls;
            }
            Reference::Categorical(categorical) => {
                document.index = Some(categorical.index as u32);
                document.vocabulary = Some(categorical.vocabulary.clone());
                document.labels = categorical.labels.clone();
                document.counts = Some(categorical.counts.clone());
                document.nulls = categorical.nulls;
            }
            Reference::Channels(channels) => {
                document.axis = Some(channels.axis as u32);
                document.moments = Some(MomentsDocument::PerChannel(channels.moments.clone()));
            }
        }
        document
    }
}

fn check_header(format: &str, version: u32) -> Result<(), DriftError> {
    if format != PROFILE_FORMAT {
        return Err(DriftError::Profile(format!("format must be `{PROFILE_FORMAT}`, got `{format}`")));
    }
    if version != PROFILE_VERSION {
        return Err(DriftError::Profile(format!("unsupported version {version} (this build reads {PROFILE_VERSION})")));
    }
    Ok(())
}

fn check_thresholds(thresholds: &Thresholds) -> Result<(), DriftError> {
    let non_negative = [
        ("wasserstein", thresholds.wasserstein),
        ("jensen_shannon", thresholds.jensen_shannon),
        ("psi", thresholds.psi),
        ("channel_mean_shift", thresholds.channel_mean_shift),
    ];
    for (name, value) in non_negative {
        if !(value.is_finite() && value >= 0.0) {
            return Err(DriftError::Profile(format!("threshold {name} must be finite and non-negative, got {value}")));
        }
    }
    for (name, value) in [("chi_square_p", thresholds.chi_square_p), ("ks_alpha", thresholds.ks_alpha)] {
        if !(value > 0.0 && value < 1.0) {
            return Err(DriftError::Profile(format!("threshold {name} must be in (0, 1), got {value}")));
        }
    }
    if !(thresholds.share > 0.0 && thresholds.share <= 1.0) {
        return Err(DriftError::Profile(format!("threshold share must be in (0, 1], got {}", thresholds.share)));
    }
    if thresholds.consecutive_windows == 0 {
        return Err(DriftError::Profile("threshold consecutive_windows must be at least 1".into()));
    }
    Ok(())
}

fn feature_error(feature: &str, reason: impl Into<String>) -> DriftError {
    DriftError::ProfileFeature { feature: feature.to_owned(), reason: reason.into() }
}

fn validate_feature(document: FeatureDocument, kll_k: u16) -> Result<Feature, DriftError> {
    let name = document.name.as_str();
    let fail = |reason: String| feature_error(name, reason);
    if name.is_empty() {
        return Err(fail("empty name".into()));
    }
    if document.tensor.is_empty() {
        return Err(fail("empty tensor name".into()));
    }
    let metric = document.metric.unwrap_or(document.kind.default_metric());
    if !document.kind.allows(metric) {
        return Err(fail(format!("metric {metric:?} does not apply to a {:?} feature", document.kind)));
    }
    let reference = match document.kind {
        FeatureKind::Numeric => {
            let index = require(name, "index", document.index)? as usize;
            let kll_hex = require(name, "kll", document.kll.as_ref())?;
            let kll_bytes = hex::decode(kll_hex).map_err(|error| fail(format!("kll is not hex: {error}")))?;
            let kll = FloatKll::deserialize(&kll_bytes).map_err(|error| fail(format!("kll is not a KLL float sketch: {error}")))?;
            if kll.k() != kll_k {
                return Err(fail(format!("kll sketch has k={} but the profile says kll_k={kll_k}", kll.k())));
            }
            let bin_edges = require(name, "bin_edges", document.bin_edges.clone())?;
            let bin_counts = require(name, "bin_counts", document.bin_counts.clone())?;
            check_edges(&bin_edges).map_err(fail)?;
            if bin_counts.len() != bin_edges.len() + 1 {
                return Err(fail(format!("bin_counts has {} entries, expected {} (bin_edges + 1)", bin_counts.len(), bin_edges.len() + 1)));
            }
            let bin_sums = document.bin_sums.clone();
            if let Some(bin_sums) = &bin_sums {
                if bin_sums.len() != bin_counts.len() {
                    return Err(fail(format!("bin_sums has {} entries, expected {} (one per bin)", bin_sums.len(), bin_counts.len())));
                }
                if let Some(bad) = bin_sums.iter().position(|sum| !sum.is_finite()) {
                    return Err(fail(format!("bin_sums[{bad}] is not finite")));
                }
            }
            let Some(MomentsDocument::One(moments)) = document.moments.clone() else {
                return Err(fail("numeric feature needs `moments` as one object".into()));
            };
            check_moments(&moments).map_err(|reason| fail(format!("moments: {reason}")))?;
            let binned = bin_counts.iter().try_fold(0u64, |sum, count| sum.checked_add(*count));
            if binned != Some(moments.count) {
                return Err(fail(format!("bin_counts sum to {binned:?} but moments.count is {}", moments.count)));
            }
            if kll.n() != moments.count {
                return Err(fail(format!("kll holds {} values but moments.count is {}", kll.n(), moments.count)));
            }
            Reference::Numeric(NumericReference { index, kll, bin_edges, bin_counts, bin_sums, moments, nulls: document.nulls })
        }
        FeatureKind::Categorical => {
            let index = require(name, "index", document.index)? as usize;
            let vocabulary = require(name, "vocabulary", document.vocabulary.clone())?;
            let counts = require(name, "counts", document.counts.clone())?;
            if vocabulary.is_empty() || vocabulary.len() > MAX_BINS {
                return Err(fail(format!("vocabulary must have 1..={MAX_BINS} entries, got {}", vocabulary.len())));
            }
            if vocabulary.windows(2).any(|pair| pair[0] >= pair[1]) {
                return Err(fail("vocabulary must be sorted and distinct".into()));
            }
            if counts.len() != vocabulary.len() {
                return Err(fail(format!("counts has {} entries but vocabulary has {}", counts.len(), vocabulary.len())));
            }
            if let Some(labels) = document.labels.as_ref().filter(|labels| labels.len() != vocabulary.len()) {
                return Err(fail(format!("labels has {} entries but vocabulary has {}", labels.len(), vocabulary.len())));
            }
            if counts.iter().try_fold(0u64, |sum, count| sum.checked_add(*count)).is_none() {
                return Err(fail("counts overflow".into()));
            }
            Reference::Categorical(CategoricalReference {
                index,
                vocabulary,
                labels: document.labels.clone(),
                counts,
                nulls: document.nulls,
            })
        }
        FeatureKind::Channels => {
            let axis = require(name, "axis", document.axis)? as usize;
            let Some(MomentsDocument::PerChannel(moments)) = document.moments.clone() else {
                return Err(fail("channels feature needs `moments` as an array, one per channel".into()));
            };
            if moments.is_empty() || moments.len() > MAX_BINS {
                return Err(fail(format!("channels needs 1..={MAX_BINS} moments, got {}", moments.len())));
            }
            for (channel, channel_moments) in moments.iter().enumerate() {
                check_moments(channel_moments).map_err(|reason| fail(format!("moments[{channel}]: {reason}")))?;
            }
            Reference::Channels(ChannelsReference { axis, moments })
        }
    };
    let fields_of_other_kinds = match document.kind {
        FeatureKind::Numeric => {
            [("axis", document.axis.is_some()), ("vocabulary", document.vocabulary.is_some()), ("counts", document.counts.is_some())]
        }
        FeatureKind::Categorical => {
            [("axis", document.axis.is_some()), ("kll", document.kll.is_some()), ("bin_edges", document.bin_edges.is_some())]
        }
        FeatureKind::Channels => {
            [("index", document.index.is_some()), ("kll", document.kll.is_some()), ("vocabulary", document.vocabulary.is_some())]
        }
    };
    if let Some((field, _)) = fields_of_other_kinds.iter().find(|(_, present)| *present) {
        return Err(fail(format!("field `{field}` does not belong to a {:?} feature", document.kind)));
    }
    Ok(Feature { name: document.name.clone(), side: document.side, tensor: document.tensor.clone(), metric, reference })
}

fn require<T>(feature: &str, field: &str, value: Option<T>) -> Result<T, DriftError> {
    value.ok_or_else(|| feature_error(feature, format!("missing `{field}`")))
}

fn check_edges(edges: &[f64]) -> Result<(), String> {
    if edges.len() > MAX_BINS {
        return Err(format!("at most {MAX_BINS} bin_edges, got {}", edges.len()));
    }
    if let Some(bad) = edges.iter().position(|edge| !edge.is_finite()) {
        return Err(format!("bin_edges[{bad}] is not finite"));
    }
    if let Some(bad) = edges.windows(2).position(|pair| pair[0] >= pair[1]) {
        return Err(format!(
            "bin_edges must be strictly increasing: bin_edges[{bad}]={} >= bin_edges[{}]={}",
            edges[bad],
            bad + 1,
            edges[bad + 1]
        ));
    }
    Ok(())
}

fn check_moments(moments: &Moments) -> Result<(), String> {
    let fields = [("mean", moments.mean), ("variance", moments.variance), ("min", moments.min), ("max", moments.max)];
    if let Some((field, _)) = fields.iter().find(|(_, value)| !value.is_finite()) {
        return Err(format!("{field} is not finite"));
    }
    if moments.variance < 0.0 {
        return Err("variance is negative".into());
    }
    if moments.count > 0 && moments.min > moments.max {
        return Err("min is greater than max".into());
    }
    Ok(())
}

fn empty_feature(kind: FeatureKind) -> FeatureDocument {
    FeatureDocument {
        name: String::new(),
        side: Side::Input,
        tensor: String::new(),
        kind,
        index: None,
        axis: None,
        kll: None,
        bin_edges: None,
        bin_counts: None,
        bin_sums: None,
        moments: None,
        vocabulary: None,
        labels: None,
        counts: None,
        nulls: 0,
        metric: None,
    }
}

/// Inner edges at equal-mass quantiles of `sorted` (finite values in increasing order):
/// `edge_i = sorted[ceil(i·n/n_bins) − 1]`, so that with distinct values exactly `i·n/n_bins`
/// values fall at or below it; repeated quantiles (zero-inflated data) are merged.
pub fn equal_mass_edges(sorted: &[f64], n_bins: usize) -> Vec<f64> {
    let n = sorted.len();
    let mut edges: Vec<f64> = Vec::with_capacity(n_bins.saturating_sub(1));
    if n == 0 {
        return edges;
    }
    for bin in 1..n_bins {
        let rank = (bin * n).div_ceil(n_bins).max(1);
        let edge = sorted[rank - 1];
        if edge.is_finite() && edges.last().is_none_or(|last| edge > *last) {
            edges.push(edge);
        }
    }
    edges
}

/// The bin of `value`: the number of edges strictly below it (bins are closed on the right).
#[inline]
pub fn bin_of(edges: &[f64], value: f64) -> usize {
    // Up to a few dozen edges a branch-free count beats a binary search, whose branches
    // mispredict on every value (measured: about 20 ns of the device's per-value cost).
    const LINEAR_SCAN_MAX_EDGES: usize = 64;
    if edges.len() <= LINEAR_SCAN_MAX_EDGES {
        edges.iter().map(|edge| (*edge < value) as usize).sum()
    } else {
        edges.partition_point(|edge| *edge < value)
    }
}

fn build_numeric(index: u32, values: &[f64], options: &BuildOptions) -> Result<FeatureDocument, String> {
    let mut kll = FloatKll::new(options.kll_k).map_err(|error| format!("kll_k: {error}"))?;
    let mut finite: Vec<f64> = Vec::with_capacity(values.len());
    let mut nulls = 0u64;
    // Devices see f32 values and count NaN and ±inf as nulls: so does the reference.
    for &value in values {
        let value = value as f32;
        match KllFloat::<f32>::new(value) {
            Ok(item) if value.is_finite() => {
                kll.update(item);
                finite.push(value as f64);
            }
            _ => nulls += 1,
        }
    }
    let moments = Moments::of_values(&finite);
    finite.sort_unstable_by(f64::total_cmp);
    let bin_edges = equal_mass_edges(&finite, options.n_bins);
    let mut bin_counts = vec![0u64; bin_edges.len() + 1];
    let mut bin_sums = vec![0.0f64; bin_edges.len() + 1];
    for &value in &finite {
        let bin = bin_of(&bin_edges, value);
        bin_counts[bin] += 1;
        bin_sums[bin] += value;
    }
    let mut document = empty_feature(FeatureKind::Numeric);
    document.index = Some(index);
    document.kll = Some(hex::encode(kll.serialize()));
    document.bin_edges = Some(bin_edges);
    document.bin_counts = Some(bin_counts);
    document.bin_sums = Some(bin_sums);
    document.moments = Some(MomentsDocument::One(moments));
    document.nulls = nulls;
    Ok(document)
}

fn build_categorical(index: u32, labels: Option<&[(i64, String)]>, values: &[f64]) -> Result<FeatureDocument, String> {
    let mut codes = Vec::with_capacity(values.len());
    let mut nulls = 0u64;
    for (row, &value) in values.iter().enumerate() {
        if value.is_nan() {
            nulls += 1;
        } else if value.fract() != 0.0 || value.abs() > 9.0e15 {
            return Err(format!("row {row}: {value} is not an integral category code"));
        } else {
            codes.push(value as i64);
        }
    }
    codes.sort_unstable();
    let mut vocabulary: Vec<i64> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    for code in codes {
        if vocabulary.last() == Some(&code) {
            if let Some(count) = counts.last_mut() {
                *count += 1;
            }
        } else {
            vocabulary.push(code);
            counts.push(1);
        }
    }
    if vocabulary.is_empty() {
        return Err("no non-null values: a categorical column needs at least one category".into());
    }
    let labels = labels.map(|pairs| {
        vocabulary
            .iter()
            .map(|code| {
                pairs.iter().find(|(labelled, _)| labelled == code).map(|(_, label)| label.clone()).unwrap_or_else(|| code.to_string())
            })
            .collect()
    });

    let mut document = empty_feature(FeatureKind::Categorical);
    document.index = Some(index);
    document.vocabulary = Some(vocabulary);
    document.labels = labels;
    document.counts = Some(counts);
    document.nulls = nulls;
    Ok(document)
}

fn build_channels(axis: u32, shape: &[usize], values: &[f64]) -> Result<FeatureDocument, String> {
    let axis_idx = axis as usize;
    let Some(&n_channels) = shape.get(axis_idx) else {
        return Err(format!("axis {axis} is outside shape {shape:?}"));
    };
    let expected: usize = shape.iter().product();
    if expected != values.len() {
        return Err(format!("shape {shape:?} holds {expected} values but {} were given", values.len()));
    }
    let inner: usize = shape[axis_idx + 1..].iter().product();
    let mut per_channel = vec![Vec::new(); n_channels];
    for (position, &value) in values.iter().enumerate() {
        if !value.is_nan() {
            per_channel[(position / inner.max(1)) % n_channels.max(1)].push(value);
        }
    }
    let mut document = empty_feature(FeatureKind::Channels);
    document.axis = Some(axis);
    document.moments = Some(MomentsDocument::PerChannel(per_channel.iter().map(|values| Moments::of_values(values)).collect()));
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_profile() -> Profile {
        let numeric: Vec<f64> = (0..1_000).map(|row| ((row * 37) % 101) as f64 / 10.0).collect();
        let zero_inflated: Vec<f64> = (0..1_000).map(|row| if row % 2 == 0 { 0.0 } else { row as f64 }).collect();
        let colour: Vec<f64> = (0..1_000).map(|row| [0.0, 1.0, 1.0, 2.0, f64::NAN][row % 5]).collect();
        let pixels: Vec<f64> = (0..2 * 3 * 4).map(|position| position as f64).collect();
        let columns = [
            ColumnSpec {
                name: "x0".into(),
                side: Side::Input,
                tensor: "input".into(),
                kind: ColumnKind::Numeric { index: 0 },
                metric: None,
            },
            ColumnSpec {
                name: "zeros".into(),
                side: Side::Input,
                tensor: "input".into(),
                kind: ColumnKind::Numeric { index: 1 },
                metric: Some(Metric::Psi),
            },
            ColumnSpec {
                name: "colour".into(),
                side: Side::Input,
                tensor: "input".into(),
                kind: ColumnKind::Categorical { index: 2, labels: Some(vec![(0, "red".into()), (1, "green".into()), (2, "blue".into())]) },
                metric: None,
            },
            ColumnSpec {
                name: "pixels".into(),
                side: Side::Input,
                tensor: "image".into(),
                kind: ColumnKind::Channels { axis: 1, shape: vec![2, 3, 4] },
                metric: None,
            },
        ];
        Profile::build(&columns, &[&numeric, &zero_inflated, &colour, &pixels], &BuildOptions::default()).unwrap()
    }

    #[test]
    fn built_profile_has_equal_mass_bins_and_exact_counts() {
        let profile = sample_profile();
        assert_eq!(profile.rows(), 1_000);
        let Reference::Numeric(x0) = &profile.features()[0].reference else { panic!("x0 is numeric") };
        assert_eq!(x0.bin_edges.len(), 19);
        assert_eq!(x0.bin_counts.iter().sum::<u64>(), 1_000);
        assert!(x0.bin_counts.iter().all(|count| (40..=60).contains(count)), "{:?}", x0.bin_counts);
        let Reference::Numeric(zeros) = &profile.features()[1].reference else { panic!("zeros is numeric") };
        assert_eq!(zeros.bin_edges[0], 0.0, "zero-inflated edges are deduplicated: {:?}", zeros.bin_edges);
        assert_eq!(zeros.bin_counts[0], 500);
        let Reference::Categorical(colour) = &profile.features()[2].reference else { panic!("colour is categorical") };
        assert_eq!((colour.vocabulary.as_slice(), colour.counts.as_slice(), colour.nulls), (&[0, 1, 2][..], &[200, 400, 200][..], 200));
        assert_eq!(colour.labels.as_deref(), Some(&["red".to_owned(), "green".to_owned(), "blue".to_owned()][..]));
        let Reference::Channels(pixels) = &profile.features()[3].reference else { panic!("pixels is channels") };
        // Channel 1 holds positions 4..8 and 16..20.
        assert_eq!(pixels.moments[1].count, 8);
        assert_eq!(pixels.moments[1].mean, 11.5);
    }

    #[test]
    fn json_round_trip_gives_back_the_same_profile() {
        let profile = sample_profile();
        let json = profile.to_json();
        let reloaded = Profile::from_json(&json).unwrap();
        assert_eq!(reloaded.to_document(), profile.to_document());
        assert_eq!(reloaded.to_json(), json);
    }

    #[test]
    fn equal_mass_edges_follow_the_documented_rule() {
        #[track_caller]
        fn check(sorted: &[f64], n_bins: usize, expected: &[f64]) {
            assert_eq!(equal_mass_edges(sorted, n_bins), expected);
        }
        check(&[], 4, &[]);
        check(&[1.0, 2.0, 3.0, 4.0], 4, &[1.0, 2.0, 3.0]);
        check(&[5.0; 10], 4, &[5.0]);
        check(&[0.0, 0.0, 0.0, 1.0, 2.0, 3.0], 3, &[0.0, 1.0]);
        check(&[1.0, 2.0, 3.0], 1, &[]);
    }

    #[test]
    fn bins_are_closed_on_the_right() {
        let edges = [0.0, 1.0, 2.0];
        for (value, expected) in [(-5.0, 0), (0.0, 0), (0.5, 1), (1.0, 1), (2.0, 2), (2.1, 3), (f64::INFINITY, 3), (f64::NEG_INFINITY, 0)] {
            assert_eq!(bin_of(&edges, value), expected, "value {value}");
        }
    }

    /// Each case edits the JSON of a valid profile and names the error it must produce.
    #[test]
    fn invalid_profiles_are_refused_with_the_feature_and_the_reason() {
        let valid: serde_json::Value = serde_json::from_slice(&sample_profile().to_json()).unwrap();
        #[track_caller]
        fn check(valid: &serde_json::Value, edit: impl FnOnce(&mut serde_json::Value), expected: &str) {
            let mut document = valid.clone();
            edit(&mut document);
            let error = Profile::from_json(&serde_json::to_vec(&document).unwrap()).unwrap_err().to_string();
            assert!(error.contains(expected), "expected `{expected}` in `{error}`");
        }
        let json = &valid;
        check(json, |doc| doc["format"] = "other".into(), "format must be `fleetml.profile`");
        check(json, |doc| doc["version"] = 2.into(), "unsupported version 2");
        check(json, |doc| doc["kll_k"] = 4.into(), "kll_k must be in");
        check(json, |doc| doc["kll_k"] = 70_000.into(), "not valid JSON");
        check(json, |doc| doc["surprise"] = 1.into(), "unknown field `surprise`");
        check(json, |doc| doc["features"] = serde_json::json!([]), "no features");
        check(json, |doc| doc["window"]["samples"] = 0.into(), "window seconds and samples must be positive");
        check(json, |doc| doc["thresholds"]["share"] = 1.5.into(), "threshold share");
        check(json, |doc| doc["thresholds"]["chi_square_p"] = 0.0.into(), "threshold chi_square_p");
        check(json, |doc| doc["thresholds"]["wasserstein"] = (-1.0).into(), "threshold wasserstein");
        check(json, |doc| doc["thresholds"]["consecutive_windows"] = 0.into(), "consecutive_windows");
        check(json, |doc| doc["features"][1]["name"] = "x0".into(), "feature `x0`: duplicate feature name");
        check(json, |doc| doc["features"][0]["name"] = "".into(), "empty name");
        check(json, |doc| doc["features"][0]["tensor"] = "".into(), "`x0`: empty tensor name");
        check(json, |doc| doc["features"][0]["kind"] = "text".into(), "`x0`: unknown variant `text`");
        check(json, |doc| doc["features"][0]["side"] = "middle".into(), "`x0`: unknown variant `middle`");
        check(json, |doc| doc["features"][0]["metric"] = "entropy".into(), "`x0`: unknown variant `entropy`");
        check(json, |doc| doc["features"][0]["metric"] = "chi_square".into(), "`x0`: metric ChiSquare does not apply to a Numeric feature");
        check(json, |doc| doc["features"][2]["metric"] = "ks".into(), "`colour`: metric Ks does not apply");
        check(json, |doc| doc["features"][0]["kll"] = "zz".into(), "`x0`: kll is not hex");
        check(json, |doc| doc["features"][0]["kll"] = "05010f00".into(), "`x0`: kll is not a KLL float sketch");
        check(json, |doc| doc["features"][0].as_object_mut().unwrap().remove("kll").map(drop).unwrap_or(()), "`x0`: missing `kll`");
        check(json, |doc| doc["features"][0].as_object_mut().unwrap().remove("index").map(drop).unwrap_or(()), "`x0`: missing `index`");
        check(
            json,
            |doc| doc["features"][0]["bin_edges"][3] = 100.0.into(),
            "`x0`: bin_edges must be strictly increasing: bin_edges[3]=100",
        );
        check(json, |doc| doc["features"][0]["bin_edges"][0] = "inf".into(), "`x0`: invalid type");
        check(
            json,
            |doc| doc["features"][0]["bin_counts"].as_array_mut().unwrap().push(0.into()),
            "`x0`: bin_counts has 21 entries, expected 20",
        );
        check(json, |doc| doc["features"][0]["bin_counts"][0] = 0.into(), "`x0`: bin_counts sum to Some(");
        check(json, |doc| doc["features"][0]["bin_sums"].as_array_mut().unwrap().truncate(3), "`x0`: bin_sums has 3 entries, expected 20");
        check(json, |doc| doc["features"][0]["moments"]["count"] = 7.into(), "`x0`: bin_counts sum to Some(1000) but moments.count is 7");
        check(json, |doc| doc["features"][0]["moments"]["variance"] = (-1.0).into(), "`x0`: moments: variance is negative");
        check(json, |doc| doc["features"][0]["moments"]["min"] = 1e9.into(), "`x0`: moments: min is greater than max");
        check(json, |doc| doc["features"][0]["moments"] = serde_json::json!([]), "`x0`: numeric feature needs `moments` as one object");
        check(json, |doc| doc["features"][0]["vocabulary"] = serde_json::json!([1]), "`x0`: field `vocabulary` does not belong");
        check(
            json,
            |doc| doc["features"][2]["vocabulary"] = serde_json::json!([2, 1, 0]),
            "`colour`: vocabulary must be sorted and distinct",
        );
        check(json, |doc| doc["features"][2]["vocabulary"] = serde_json::json!([]), "`colour`: vocabulary must have");
        check(json, |doc| doc["features"][2]["counts"] = serde_json::json!([1, 2]), "`colour`: counts has 2 entries but vocabulary has 3");
        check(json, |doc| doc["features"][2]["labels"] = serde_json::json!(["red"]), "`colour`: labels has 1 entries");
        check(json, |doc| doc["features"][2]["vocabulary"][0] = 0.5.into(), "`colour`: invalid type");
        check(json, |doc| doc["features"][3].as_object_mut().unwrap().remove("axis").map(drop).unwrap_or(()), "`pixels`: missing `axis`");
        check(json, |doc| doc["features"][3]["moments"] = serde_json::json!([]), "`pixels`: channels needs 1..=");
        check(json, |doc| doc["features"][3]["moments"][0]["mean"] = "x".into(), "`pixels`: data did not match any variant");
    }

    #[test]
    fn bin_sums_are_optional() {
        let mut document: serde_json::Value = serde_json::from_slice(&sample_profile().to_json()).unwrap();
        document["features"][0].as_object_mut().unwrap().remove("bin_sums");
        let profile = Profile::from_json(&serde_json::to_vec(&document).unwrap()).unwrap();
        let Reference::Numeric(x0) = &profile.features()[0].reference else { panic!("x0 is numeric") };
        assert_eq!(x0.bin_sums, None);
        assert!(!String::from_utf8(profile.to_json()).unwrap().contains("\"bin_sums\": null"));
    }

    #[test]
    fn a_sketch_with_another_k_is_refused() {
        let mut document = sample_profile().to_document();
        let mut kll = FloatKll::new(100).unwrap();
        kll.update(KllFloat::<f32>::new(1.0).unwrap());
        document.features[0].kll = Some(hex::encode(kll.serialize()));
        let error = Profile::from_document(document).unwrap_err().to_string();
        assert!(error.contains("`x0`: kll sketch has k=100 but the profile says kll_k=200"), "{error}");
    }

    #[test]
    fn build_refuses_bad_columns() {
        let spec = |kind| ColumnSpec { name: "c".into(), side: Side::Output, tensor: "t".into(), kind, metric: None };
        #[track_caller]
        fn check(columns: &[ColumnSpec], data: &[&[f64]], expected: &str) {
            let error = Profile::build(columns, data, &BuildOptions::default()).unwrap_err().to_string();
            assert!(error.contains(expected), "expected `{expected}` in `{error}`");
        }
        check(
            &[spec(ColumnKind::Categorical { index: 0, labels: None })],
            &[&[1.0, 1.5]],
            "column `c`: row 1: 1.5 is not an integral category code",
        );
        check(&[spec(ColumnKind::Categorical { index: 0, labels: None })], &[&[f64::NAN]], "column `c`: no non-null values");
        check(&[spec(ColumnKind::Channels { axis: 3, shape: vec![1, 2] })], &[&[1.0, 2.0]], "axis 3 is outside shape");
        check(&[spec(ColumnKind::Channels { axis: 1, shape: vec![1, 3] })], &[&[1.0, 2.0]], "holds 3 values but 2 were given");
        check(&[spec(ColumnKind::Numeric { index: 0 })], &[], "1 column specs but 0 data columns");
    }
}
