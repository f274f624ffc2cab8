//! `GET /metrics`: the fleet, its inference figures, rollouts, A/B splits, drift and the
//! plane's own counters in the Prometheus text format. One scrape is a handful of store
//! reads (no query per device or per rollout), then pure rendering.
//!
//! The families are listed, with their labels, in `docs/metrics.md`.

pub mod exposition;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use fleetml_shared::histogram::{HistogramSnapshot, N_BUCKETS, bucket_lower_bound, bucket_of};

use self::exposition::{Exposition, HistogramSample, MetricKind};
use super::error::ApiError;
use crate::experiments::split::variant_of;
use crate::reported::{ReportedPhase, ReportedSlot};
use crate::rollout::{MemberState, RolloutState};
use crate::store::{DesiredRecord, DeviceRecord, InferenceTotals, RolloutDeviceCount, RolloutRecord, SplitRecord};
use crate::{PlaneCore, PlaneCounters};

/// A drift figure of one feature of one model version, as the drift work computes it.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftGauge {
    pub model: String,
    pub version: i64,
    pub feature: String,
    /// The statistic, e.g. `psi` or `ks`.
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    pub drifted: bool,
}

/// The drift gauges to export: per version, the latest window period the drift monitor
/// judged (`drift::DriftMonitor`), one gauge per feature with its decision metric.
pub async fn drift_gauges(core: &PlaneCore) -> Result<Vec<DriftGauge>, ApiError> {
    let mut gauges = Vec::new();
    for ((model, version), report) in core.drift_latest.all() {
        for feature in &report.features {
            let (Some(value), Some(threshold)) = (feature.value, feature.threshold) else { continue };
            gauges.push(DriftGauge {
                model: model.clone(),
                version,
                feature: feature.name.clone(),
                metric: serde_json::to_value(feature.metric)
                    .ok()
                    .and_then(|metric| metric.as_str().map(str::to_string))
                    .unwrap_or_default(),
                value,
                threshold,
                drifted: feature.drifted,
            });
        }
    }
    Ok(gauges)
}

/// Everything one scrape reads, fetched up front so that rendering is pure.
#[derive(Debug, Default)]
pub struct Scrape {
    pub devices: Vec<DeviceRecord>,
    pub desired: Vec<DesiredRecord>,
    pub inference_totals: Vec<InferenceTotals>,
    pub rollouts: Vec<RolloutRecord>,
    pub rollout_device_counts: Vec<RolloutDeviceCount>,
    pub splits: Vec<SplitRecord>,
    pub drift_gauges: Vec<DriftGauge>,
    pub now_ms: i64,
}

/// The handler behind `GET /metrics` (no token, like the scrape targets Prometheus expects).
/// The six reads run concurrently, each a single query (two for the inference totals); they
/// are not one transaction, so families may be a few milliseconds apart.
pub async fn metrics(State(core): State<Arc<PlaneCore>>) -> Result<Response, ApiError> {
    let store = &core.store;
    let now_ms = fleetml_shared::now_ms() as i64;
    let (devices, desired, inference_totals, rollouts, rollout_device_counts, splits) = tokio::try_join!(
        store.list_devices(),
        store.list_desired(),
        store.inference_totals(),
        store.list_rollouts(),
        store.rollout_device_counts(now_ms - ENDED_ROLLOUT_RETENTION_MS),
        store.list_splits(),
    )?;
    let scrape = Scrape {
        devices,
        desired,
        inference_totals,
        rollouts,
        rollout_device_counts,
        splits,
        drift_gauges: drift_gauges(&core).await?,
        now_ms,
    };
    let text = render(&scrape, &core.counters).render();
    Ok(([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], text).into_response())
}

/// Every family of a scrape.
pub fn render(scrape: &Scrape, counters: &PlaneCounters) -> Exposition {
    let mut exposition = Exposition::default();
    fleet_families(&mut exposition, &scrape.devices, &scrape.desired);
    inference_families(&mut exposition, &scrape.inference_totals);
    rollout_families(&mut exposition, &scrape.rollouts, &scrape.rollout_device_counts, scrape.now_ms);
    split_families(&mut exposition, &scrape.splits, &scrape.devices);
    drift_families(&mut exposition, &scrape.drift_gauges);
    plane_families(&mut exposition, counters);
    exposition
}

// ---------------------------------------------------------------- fleet

fn fleet_families(exposition: &mut Exposition, devices: &[DeviceRecord], desired: &[DesiredRecord]) {
    let n_online = devices.iter().filter(|device| device.online).count();
    // The names of these two predate this module; dashboards rely on them.
    exposition.family("fleetml_devices", MetricKind::Gauge, "Devices known to the plane.").sample(&[], devices.len() as f64);
    exposition.family("fleetml_devices_online", MetricKind::Gauge, "Devices connected now.").sample(&[], n_online as f64);
    exposition
        .family("fleetml_devices_offline", MetricKind::Gauge, "Devices known to the plane but not connected now.")
        .sample(&[], (devices.len() - n_online) as f64);
    let refused: i64 = devices.iter().map(|device| device.vitals.refused_messages).sum();
    exposition
        .family(
            "fleetml_device_refused_messages",
            MetricKind::Gauge,
            "Messages the agents refused since each started, summed over the fleet (a gauge: it drops when an agent restarts).",
        )
        .sample(&[], refused as f64);

    // Grouped once, so the pass over devices stays linear in the size of the fleet.
    let mut desired_by_device: BTreeMap<&str, Vec<&DesiredRecord>> = BTreeMap::new();
    for record in desired {
        desired_by_device.entry(record.device_id.as_str()).or_default().push(record);
    }
    let mut slots: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for device in devices {
        let reported = &device.slots;
        for slot in reported {
            let (version, state) = slot_state(slot);
            *slots.entry((slot.model.clone(), version, state.to_string())).or_default() += 1;
        }
        // A slot the plane asked for that the device has not reported yet (as in `GET /devices`).
        for record in desired_by_device.get(device.device_id.as_str()).into_iter().flatten() {
            if let Some(version) = record.version
                && !reported.iter().any(|slot| slot.model == record.model)
            {
                *slots.entry((record.model.clone(), version.to_string(), "pending".into())).or_default() += 1;
            }
        }
    }
    let family = exposition.family(
        "fleetml_model_devices",
        MetricKind::Gauge,
        "Devices per model slot, by the version concerned and the install state last reported (pending: not reported yet).",
    );
    for ((model, version, state), n_devices) in &slots {
        family.sample(&[("model", model), ("version", version), ("state", state)], *n_devices as f64);
    }
}

/// The version a slot's state is about, and the state: the active version when serving, the
/// target while installing, the refused one when failed. The version is empty when unknown.
fn slot_state(slot: &ReportedSlot) -> (String, &'static str) {
    let version = match slot.phase {
        ReportedPhase::Active | ReportedPhase::Idle => slot.active_version,
        ReportedPhase::Failed => {
            slot.last_result.as_ref().filter(|result| !result.is_ok()).map(|result| result.version).or(slot.target_version)
        }
        ReportedPhase::Fetching { .. } | ReportedPhase::Verifying | ReportedPhase::Installing => {
            slot.target_version.or(slot.active_version)
        }
    };
    (version.map(|version| version.to_string()).unwrap_or_default(), slot.phase.as_str())
}

// ---------------------------------------------------------------- inference

/// The upper bounds (µs) of the exported latency buckets: each power of two and the value
/// half-way to the next (1.5 × 2^k), from 64 µs to 2^24 µs (16.8 s).
///
/// Why a histogram and why these bounds: a Prometheus histogram aggregates across versions
/// and plane replicas (`sum by (le)`) and over any range (`rate`), and Grafana's
/// `histogram_quantile` and heatmaps take it as it is; a summary's quantiles can do neither.
/// Every bound is a bucket boundary of the devices' log-linear histogram
/// (`fleetml_shared::histogram`, 8 sub-buckets per power of two), so each cumulative count is
/// exact, not interpolated: it counts the observations below the bound. Steps of 1.5× and
/// 1.33× keep `histogram_quantile`'s in-bucket interpolation within a few tens of percent
/// over the whole range of on-device latencies, at 40 series per version (37 bounds, `+Inf`,
/// `_sum`, `_count`).
pub fn latency_bounds_us() -> Vec<u64> {
    let mut bounds: Vec<u64> = (6..24).flat_map(|power| [1u64 << power, 3u64 << (power - 1)]).collect();
    bounds.push(1 << 24);
    bounds
}

/// A merged device histogram as a Prometheus histogram in seconds. The devices do not send
/// the sum of their latencies, so `sum` is estimated from the bucket midpoints (each value is
/// known within 12.5%, so the sum is within 6.25%).
pub fn latency_histogram(snapshot: &HistogramSnapshot, bounds_us: &[u64]) -> HistogramSample {
    let mut cumulative = Vec::with_capacity(bounds_us.len());
    let mut buckets = snapshot.buckets.iter().peekable();
    let mut seen = 0u64;
    for &bound_us in bounds_us {
        // Invariant: `bound_us` is a bucket boundary, so bucket `first_above` starts at it.
        let first_above = bucket_of(bound_us);
        while let Some(&&(bucket, count)) = buckets.peek() {
            if usize::from(bucket) >= first_above {
                break;
            }
            seen = seen.saturating_add(count);
            buckets.next();
        }
        cumulative.push((bound_us as f64 / 1e6, seen));
    }
    let count = snapshot.total();
    let sum_us: f64 = snapshot
        .buckets
        .iter()
        .map(|&(bucket, count)| {
            let bucket = usize::from(bucket).min(N_BUCKETS - 1);
            let midpoint = (bucket_lower_bound(bucket) as f64 + bucket_lower_bound(bucket + 1) as f64) / 2.0;
            midpoint * count as f64
        })
        .sum();
    HistogramSample { cumulative, sum: sum_us / 1e6, count }
}

fn inference_families(exposition: &mut Exposition, totals: &[InferenceTotals]) {
    // Windows are per-heartbeat deltas and the store only adds them up, so these are counters
    // even though agents restart: an agent restart begins a new window, it never rewinds one.
    let requests = exposition.family(
        "fleetml_inference_requests_total",
        MetricKind::Counter,
        "Inference requests served by the fleet, per model version, as reported in heartbeats.",
    );
    for version in totals {
        requests.sample(&[("model", &version.model), ("version", &version.version.to_string())], version.requests as f64);
    }
    let errors = exposition.family(
        "fleetml_inference_errors_total",
        MetricKind::Counter,
        "Inference requests that failed, per model version, as reported in heartbeats.",
    );
    for version in totals {
        errors.sample(&[("model", &version.model), ("version", &version.version.to_string())], version.errors as f64);
    }
    let bounds_us = latency_bounds_us();
    let latency = exposition.family(
        "fleetml_inference_latency_seconds",
        MetricKind::Histogram,
        "Inference latency on the devices, per model version: the merge of the histograms sent in heartbeats (sum estimated).",
    );
    for version in totals {
        latency.histogram(
            &[("model", &version.model), ("version", &version.version.to_string())],
            &latency_histogram(&version.latency_us, &bounds_us),
        );
    }
}

// ---------------------------------------------------------------- rollouts and splits

/// How long an ended rollout (completed, aborted, rolled back) stays exported, so the series
/// of old rollouts do not pile up.
pub const ENDED_ROLLOUT_RETENTION_MS: i64 = 24 * 3600 * 1000;

fn rollout_families(exposition: &mut Exposition, rollouts: &[RolloutRecord], device_counts: &[RolloutDeviceCount], now_ms: i64) {
    let exported: Vec<&RolloutRecord> =
        rollouts.iter().filter(|rollout| rollout.state.is_open() || now_ms - rollout.updated_ms <= ENDED_ROLLOUT_RETENTION_MS).collect();
    let state = exposition.family(
        "fleetml_rollout_state",
        MetricKind::Gauge,
        "1 for the state a staged rollout is in, 0 for the others (ended rollouts are kept for a day).",
    );
    // Every state a rollout can be in gets a sample (0 or 1), so a state change is a value
    // change rather than a new series.
    for rollout in &exported {
        let (id, version) = (rollout.id.to_string(), rollout.version.to_string());
        for known in RolloutState::ALL {
            let labels =
                [("rollout", id.as_str()), ("model", rollout.model.as_str()), ("version", version.as_str()), ("state", known.as_str())];
            state.sample(&labels, if known == rollout.state { 1.0 } else { 0.0 });
        }
    }
    let wave = exposition.family("fleetml_rollout_wave", MetricKind::Gauge, "The wave a staged rollout is at (0 is the first).");
    for rollout in &exported {
        let labels: [(&str, &str); 3] =
            [("rollout", &rollout.id.to_string()), ("model", &rollout.model), ("version", &rollout.version.to_string())];
        wave.sample(&labels, rollout.current_wave as f64);
    }
    let devices = exposition.family("fleetml_rollout_devices", MetricKind::Gauge, "Devices of a staged rollout, by their state in it.");
    for rollout in &exported {
        let mut by_state: BTreeMap<MemberState, i64> = MemberState::ALL.iter().map(|state| (*state, 0)).collect();
        for count in device_counts.iter().filter(|count| count.rollout_id == rollout.id) {
            *by_state.entry(count.state).or_default() += count.n_devices;
        }
        let id = rollout.id.to_string();
        // In lifecycle order.
        for (state, n_devices) in &by_state {
            devices.sample(&[("rollout", &id), ("state", state.as_str())], *n_devices as f64);
        }
    }
}

fn split_families(exposition: &mut Exposition, splits: &[SplitRecord], devices: &[DeviceRecord]) {
    let weight = exposition.family("fleetml_split_weight", MetricKind::Gauge, "The weight of each version in an A/B split.");
    for split in splits {
        for variant in &split.variants {
            let labels: [(&str, &str); 3] =
                [("split", &split.id.to_string()), ("model", &split.model), ("version", &variant.version.to_string())];
            weight.sample(&labels, variant.weight);
        }
    }
    let assigned = exposition.family(
        "fleetml_split_devices",
        MetricKind::Gauge,
        "Devices known now that an A/B split assigns to each of its versions (a stable hash of the device id).",
    );
    for split in splits {
        let mut n_devices: BTreeMap<i64, u64> = BTreeMap::new();
        for version in devices.iter().filter_map(|device| variant_of(split, device)) {
            *n_devices.entry(version).or_default() += 1;
        }
        for variant in &split.variants {
            let labels: [(&str, &str); 3] =
                [("split", &split.id.to_string()), ("model", &split.model), ("version", &variant.version.to_string())];
            assigned.sample(&labels, n_devices.get(&variant.version).copied().unwrap_or(0) as f64);
        }
    }
}

// ---------------------------------------------------------------- drift

fn drift_families(exposition: &mut Exposition, gauges: &[DriftGauge]) {
    let mut gauges: Vec<&DriftGauge> = gauges.iter().collect();
    gauges.sort_by(|left, right| {
        (&left.model, left.version, &left.feature, &left.metric).cmp(&(&right.model, right.version, &right.feature, &right.metric))
    });
    drift_family(exposition, "fleetml_drift_value", "A drift statistic of one input feature of a model version.", &gauges, |gauge| {
        gauge.value
    });
    drift_family(
        exposition,
        "fleetml_drift_threshold",
        "The value of the drift statistic above which the feature counts as drifted.",
        &gauges,
        |gauge| gauge.threshold,
    );
    drift_family(
        exposition,
        "fleetml_drift_drifted",
        "1 when the drift statistic of the feature is past its threshold, else 0.",
        &gauges,
        |gauge| if gauge.drifted { 1.0 } else { 0.0 },
    );
    // A feature is drifted when any of its statistics is.
    let mut features: BTreeMap<(&str, i64), BTreeMap<&str, bool>> = BTreeMap::new();
    for gauge in &gauges {
        *features.entry((gauge.model.as_str(), gauge.version)).or_default().entry(gauge.feature.as_str()).or_default() |= gauge.drifted;
    }
    let share = exposition.family(
        "fleetml_drift_share_drifted",
        MetricKind::Gauge,
        "The share (0 to 1) of a model version's monitored features that drifted on any statistic.",
    );
    for ((model, version), drifted_by_feature) in &features {
        let n_drifted = drifted_by_feature.values().filter(|drifted| **drifted).count();
        share.sample(&[("model", model), ("version", &version.to_string())], n_drifted as f64 / drifted_by_feature.len() as f64);
    }
}

fn drift_family(
    exposition: &mut Exposition,
    name: &'static str,
    help: &'static str,
    gauges: &[&DriftGauge],
    value_of: impl Fn(&DriftGauge) -> f64,
) {
    let family = exposition.family(name, MetricKind::Gauge, help);
    for gauge in gauges {
        let version = gauge.version.to_string();
        let labels = [("model", gauge.model.as_str()), ("version", &version), ("feature", &gauge.feature), ("metric", &gauge.metric)];
        family.sample(&labels, value_of(gauge));
    }
}

// ---------------------------------------------------------------- the plane

fn plane_families(exposition: &mut Exposition, counters: &PlaneCounters) {
    let families: [(&'static str, &'static str, &std::sync::atomic::AtomicU64); 6] = [
        ("fleetml_refused_messages_total", "Device messages refused as malformed or inconsistent.", &counters.refused_messages),
        ("fleetml_fetch_requests_total", "Chunk fetch requests received.", &counters.fetch_requests),
        (
            "fleetml_fetch_requests_dropped_total",
            "Chunk fetch requests dropped because the distributor was behind (devices ask again).",
            &counters.fetch_requests_dropped,
        ),
        ("fleetml_chunks_published_total", "Bundle chunks published.", &counters.chunks_published),
        ("fleetml_chunk_bytes_published_total", "Bytes of bundle chunks published.", &counters.chunk_bytes_published),
        ("fleetml_desired_published_total", "Desired states published.", &counters.desired_published),
    ];
    for (name, help, counter) in families {
        exposition.family(name, MetricKind::Counter, help).sample(&[], counter.load(Ordering::Relaxed) as f64);
    }
}

#[cfg(test)]
mod tests;
