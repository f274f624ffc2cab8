//! Drift on the plane: device windows merged per model version, cohort and time range and
//! judged against the version's reference profile (`fleetml_shared::drift`), and the monitor
//! that judges each closed window period and raises drift events (store, MQTT, webhook) when
//! drift lasts `consecutive_windows` periods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleetml_shared::drift::metrics::{DriftReport, DriftStreak, FeatureDrift, evaluate};
use fleetml_shared::drift::profile::Profile;
use fleetml_shared::drift::window::{DriftWindow, MergedWindow};
use fleetml_shared::selector::Selector;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::PlaneCore;
use crate::config::DriftConfig;
use crate::store::{DriftEventRecord, DriftWindowRecord, StoreError};

const TICK: Duration = Duration::from_millis(500);
/// Window periods the monitor catches up on after a pause, and looks back at when it first
/// sees a version (after a restart); older ones are skipped.
const MAX_CATCH_UP_PERIODS: i64 = 10;
/// Webhook deliveries in flight; beyond this an event is stored and published but not POSTed.
const MAX_WEBHOOKS_IN_FLIGHT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DriftQueryError {
    #[error("{0}@{1} has no reference profile (push it with --profile)")]
    NoProfile(String, i64),
    #[error("the stored profile of {0}@{1} does not load: {2}")]
    BadProfile(String, i64, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which windows to merge.
#[derive(Clone, Debug, Default)]
pub struct DriftSlice {
    /// Only devices whose labels match.
    pub cohort: Option<Selector>,
    /// Only these devices.
    pub devices: Option<BTreeSet<String>>,
    pub since_ms: i64,
    pub until_ms: i64,
}

/// `fleetml drift show --json` and `GET .../drift`: one object per query. The field names
/// of the contract (`model` … `dataset_drifted`) are stable; the rest may grow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftView {
    pub model: String,
    pub version: i64,
    pub cohort: Option<String>,
    /// The range as asked (`1h`), and its bounds.
    pub window: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub samples: u64,
    pub features: Vec<FeatureDrift>,
    pub share_drifted: f64,
    pub dataset_drifted: bool,
    pub n_drifted: usize,
    pub n_counted: usize,
    /// Device windows merged, the devices they came from, and windows refused as malformed.
    pub windows: usize,
    pub devices: usize,
    pub refused_windows: usize,
    /// With `step`: the same judged per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<DriftPoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftPoint {
    pub from_ms: i64,
    pub to_ms: i64,
    pub samples: u64,
    pub share_drifted: f64,
    pub dataset_drifted: bool,
    pub features: Vec<PointFeature>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointFeature {
    pub name: String,
    pub value: Option<f64>,
    pub drifted: bool,
}

/// `1h`, `30m`, `90s`, `2d`, `500ms` → milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(unit_ms).filter(|ms| *ms > 0)
}

/// The profile of a version, loaded.
pub async fn load_profile(core: &PlaneCore, model: &str, version: i64) -> Result<Profile, DriftQueryError> {
    let (_, body) = core.store.version_profile(model, version).await?.ok_or_else(|| DriftQueryError::NoProfile(model.into(), version))?;
    Profile::from_json(&body).map_err(|error| DriftQueryError::BadProfile(model.into(), version, error.to_string()))
}

/// The windows of a slice, decoded; refused ones are counted, not merged.
pub struct SliceWindows {
    pub windows: Vec<(DriftWindowRecord, DriftWindow)>,
    pub refused: usize,
}

pub async fn slice_windows(core: &PlaneCore, model: &str, version: i64, slice: &DriftSlice) -> Result<SliceWindows, DriftQueryError> {
    let records = core.store.drift_windows(model, version, slice.since_ms, slice.until_ms).await?;
    let labels: Option<BTreeMap<String, BTreeMap<String, String>>> = match &slice.cohort {
        Some(_) => Some(core.store.list_devices().await?.into_iter().map(|device| (device.device_id, device.labels)).collect()),
        None => None,
    };
    let mut windows = Vec::with_capacity(records.len());
    let mut refused = 0;
    for record in records {
        if let Some(devices) = &slice.devices
            && !devices.contains(&record.device_id)
        {
            continue;
        }
        if let (Some(cohort), Some(labels)) = (&slice.cohort, &labels)
            && !labels.get(&record.device_id).is_some_and(|device_labels| cohort.matches(device_labels))
        {
            continue;
        }
        match postcard::from_bytes::<DriftWindow>(&record.body) {
            Ok(window) => windows.push((record, window)),
            Err(_) => refused += 1,
        }
    }
    Ok(SliceWindows { windows, refused })
}

/// Merges windows into one; a window that does not fit the profile is refused, not merged.
pub fn merge<'a>(profile: &Profile, windows: impl Iterator<Item = &'a DriftWindow>) -> (MergedWindow, usize) {
    let mut merged = MergedWindow::new(profile);
    let mut refused = 0;
    for window in windows {
        if merged.merge(window).is_err() {
            refused += 1;
        }
    }
    (merged, refused)
}

/// Judges a slice of a version's windows against its profile.
pub async fn judge(
    core: &PlaneCore,
    model: &str,
    version: i64,
    slice: &DriftSlice,
    window_label: &str,
    step_ms: Option<i64>,
) -> Result<DriftView, DriftQueryError> {
    let profile = load_profile(core, model, version).await?;
    let SliceWindows { windows, refused } = slice_windows(core, model, version, slice).await?;
    let (merged, refused_in_merge) = merge(&profile, windows.iter().map(|(_, window)| window));
    let report = evaluate(&profile, &merged, profile.thresholds());
    let devices: BTreeSet<&str> = windows.iter().map(|(record, _)| record.device_id.as_str()).collect();
    let mut series = Vec::new();
    if let Some(step_ms) = step_ms.filter(|step| *step > 0) {
        let mut from_ms = slice.since_ms;
        while from_ms < slice.until_ms && series.len() < 1_000 {
            let to_ms = (from_ms + step_ms).min(slice.until_ms);
            let in_period = windows.iter().filter(|(record, _)| record.ended_ms >= from_ms && record.ended_ms < to_ms);
            let (period_merged, _) = merge(&profile, in_period.map(|(_, window)| window));
            let period_report = evaluate(&profile, &period_merged, profile.thresholds());
            series.push(DriftPoint {
                from_ms,
                to_ms,
                samples: period_report.samples,
                share_drifted: period_report.share_drifted,
                dataset_drifted: period_report.dataset_drifted,
                features: period_report
                    .features
                    .iter()
                    .map(|feature| PointFeature { name: feature.name.clone(), value: feature.value, drifted: feature.drifted })
                    .collect(),
            });
            from_ms = to_ms;
        }
    }
    Ok(view(model, version, slice, window_label, report, windows.len(), devices.len(), refused + refused_in_merge, series))
}

#[allow(clippy::too_many_arguments)]
fn view(
    model: &str,
    version: i64,
    slice: &DriftSlice,
    window_label: &str,
    report: DriftReport,
    n_windows: usize,
    n_devices: usize,
    refused: usize,
    series: Vec<DriftPoint>,
) -> DriftView {
    DriftView {
        model: model.to_string(),
        version,
        cohort: slice.cohort.as_ref().map(Selector::to_string),
        window: window_label.to_string(),
        from_ms: slice.since_ms,
        to_ms: slice.until_ms,
        samples: report.samples,
        features: report.features,
        share_drifted: report.share_drifted,
        dataset_drifted: report.dataset_drifted,
        n_drifted: report.n_drifted,
        n_counted: report.n_counted,
        windows: n_windows,
        devices: n_devices,
        refused_windows: refused,
        series,
    }
}

/// The latest judged period of each version, for `/metrics`.
#[derive(Default)]
pub struct LatestDrift {
    reports: std::sync::Mutex<BTreeMap<(String, i64), DriftReport>>,
}

impl LatestDrift {
    pub fn set(&self, model: &str, version: i64, report: DriftReport) {
        if let Ok(mut reports) = self.reports.lock() {
            reports.insert((model.to_string(), version), report);
        }
    }

    pub fn all(&self) -> Vec<((String, i64), DriftReport)> {
        self.reports.lock().map(|reports| reports.iter().map(|(key, report)| (key.clone(), report.clone())).collect()).unwrap_or_default()
    }
}

/// A drift event as stored, published on `{root}/v1/events/drift` and POSTed to the webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftEvent {
    pub id: i64,
    pub event: String,
    pub model: String,
    pub version: i64,
    /// `dataset`, or `feature` with `feature` set.
    pub scope: String,
    pub feature: Option<String>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub share_drifted: f64,
    pub consecutive_windows: u32,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub samples: u64,
    pub at_ms: i64,
}

#[derive(Default)]
struct Streaks {
    /// The end of the last judged period.
    judged_until_ms: i64,
    dataset: DriftStreak,
    features: HashMap<String, DriftStreak>,
}

/// Judges each closed window period of every version that has a profile.
pub struct DriftMonitor {
    pub core: Arc<PlaneCore>,
    pub config: DriftConfig,
}

impl DriftMonitor {
    #[tracing::instrument(name = "drift_monitor", skip_all)]
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let webhooks = Arc::new(tokio::sync::Semaphore::new(MAX_WEBHOOKS_IN_FLIGHT));
        let mut streaks: HashMap<(String, i64), Streaks> = HashMap::new();
        let mut profiles: HashMap<(String, i64), Profile> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let versions = match self.core.store.versions_with_profiles().await {
                Ok(versions) => versions,
                Err(error) => {
                    tracing::error!(%error, "could not list profiled versions");
                    continue;
                }
            };
            for (model, version) in versions {
                let key = (model.clone(), version);
                if !profiles.contains_key(&key) {
                    match load_profile(&self.core, &model, version).await {
                        Ok(profile) => {
                            profiles.insert(key.clone(), profile);
                        }
                        Err(error) => {
                            tracing::warn!(%model, version, %error, "profile not loaded");
                            continue;
                        }
                    }
                }
                let Some(profile) = profiles.get(&key) else { continue };
                let period_ms = self
                    .config
                    .evaluation_period
                    .map(|period| period.as_millis() as i64)
                    .unwrap_or(profile.window().seconds as i64 * 1000)
                    .max(1);
                let now_ms = fleetml_shared::now_ms() as i64 - self.config.grace.as_millis() as i64;
                let closed_until = now_ms.div_euclid(period_ms) * period_ms;
                // A version seen for the first time (after a restart, say) is judged from
                // MAX_CATCH_UP_PERIODS back, so a drift under way keeps its streak; `judge_period`
                // does not raise again an episode the store already has an event for.
                let state = streaks
                    .entry(key.clone())
                    .or_insert_with(|| Streaks { judged_until_ms: closed_until - MAX_CATCH_UP_PERIODS * period_ms, ..Streaks::default() });
                let mut from_ms = state.judged_until_ms.max(closed_until - MAX_CATCH_UP_PERIODS * period_ms);
                while from_ms + period_ms <= closed_until {
                    let to_ms = from_ms + period_ms;
                    if let Err(error) = self.judge_period(profile, &model, version, from_ms, to_ms, state, &http, &webhooks).await {
                        tracing::error!(%model, version, %error, "drift period not judged; retrying");
                        break;
                    }
                    state.judged_until_ms = to_ms;
                    from_ms = to_ms;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn judge_period(
        &self,
        profile: &Profile,
        model: &str,
        version: i64,
        from_ms: i64,
        to_ms: i64,
        state: &mut Streaks,
        http: &reqwest::Client,
        webhooks: &Arc<tokio::sync::Semaphore>,
    ) -> Result<(), DriftQueryError> {
        let slice = DriftSlice { since_ms: from_ms, until_ms: to_ms, ..DriftSlice::default() };
        let SliceWindows { windows, .. } = slice_windows(&self.core, model, version, &slice).await?;
        let (merged, _) = merge(profile, windows.iter().map(|(_, window)| window));
        let report = evaluate(profile, &merged, profile.thresholds());
        if report.samples == 0 {
            // No data neither continues nor breaks a streak.
            return Ok(());
        }
        self.core.drift_latest.set(model, version, report.clone());
        let needed = profile.thresholds().consecutive_windows.max(1);
        let base = DriftEvent {
            id: 0,
            event: "drift".into(),
            model: model.to_string(),
            version,
            scope: "dataset".into(),
            feature: None,
            metric: None,
            value: Some(report.share_drifted),
            threshold: Some(profile.thresholds().share),
            share_drifted: report.share_drifted,
            consecutive_windows: needed,
            window_start_ms: from_ms,
            window_end_ms: to_ms,
            samples: report.samples,
            at_ms: 0,
        };
        // Each event with the start of its episode.
        let mut events = Vec::new();
        if state.dataset.record(report.dataset_drifted, from_ms, needed) {
            events.push((base.clone(), state.dataset.started_ms));
        }
        for feature in report.features.iter().filter(|feature| feature.counted) {
            let streak = state.features.entry(feature.name.clone()).or_default();
            if streak.record(feature.drifted, from_ms, needed) {
                let event = DriftEvent {
                    scope: "feature".into(),
                    feature: Some(feature.name.clone()),
                    metric: serde_json::to_value(feature.metric).ok().and_then(|value| value.as_str().map(str::to_string)),
                    value: feature.value,
                    threshold: feature.threshold,
                    ..base.clone()
                };
                events.push((event, streak.started_ms));
            }
        }
        let earlier = if events.is_empty() { Vec::new() } else { self.core.store.drift_events(model, Some(version)).await? };
        for (mut event, episode_started_ms) in events {
            event.at_ms = fleetml_shared::now_ms() as i64;
            let scope = match &event.feature {
                Some(feature) => format!("feature:{feature}"),
                None => "dataset".into(),
            };
            // An event raised inside this episode (before a restart of the plane) stands for it:
            // a new episode starts only after a period that did not drift.
            if earlier.iter().any(|earlier| earlier.scope == scope && earlier.window_end_ms > episode_started_ms) {
                tracing::info!(%model, version, %scope, "drift episode already raised before a restart");
                continue;
            }
            let detail = serde_json::to_string(&event).unwrap_or_default();
            let record = DriftEventRecord {
                id: 0,
                model: model.to_string(),
                version,
                at_ms: event.at_ms,
                window_start_ms: from_ms,
                window_end_ms: to_ms,
                scope,
                detail,
            };
            event.id = self.core.store.insert_drift_event(&record).await?;
            tracing::warn!(%model, version, scope = %record.scope, share_drifted = report.share_drifted, "drift event");
            let payload = serde_json::to_vec(&event).unwrap_or_default();
            self.core.mqtt.publish(self.core.topics.drift_events(), false, payload.clone()).await;
            if let Some(url) = &self.config.webhook_url {
                let Ok(permit) = webhooks.clone().try_acquire_owned() else {
                    tracing::warn!(%url, "drift webhook skipped: too many deliveries in flight");
                    continue;
                };
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    deliver(&http, &url, payload).await;
                });
            }
        }
        Ok(())
    }
}

/// POSTs an event, retrying twice with backoff on failure.
async fn deliver(http: &reqwest::Client, url: &str, payload: Vec<u8>) {
    for attempt in 0..3u32 {
        let result = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.clone())
            .send()
            .await
            .and_then(|response| response.error_for_status());
        match result {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%url, attempt, %error, "drift webhook failed");
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("30m"), Some(1_800_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("2d"), Some(172_800_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        for bad in ["", "h", "10", "5y", "-1h", "0s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }
}
