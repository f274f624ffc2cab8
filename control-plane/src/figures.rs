//! Checked conversion of the numbers devices send (heartbeats, shadow reports, drift windows,
//! reported generations and versions) into the store's `i64` columns.
//!
//! Every number from a device is untrusted. A message with a number that does not fit, or
//! that cannot be true (more errors than requests, a per-window count above
//! `MAX_WINDOW_COUNT`), is refused whole with the field named; nothing of it is stored. The
//! bounds are chosen so that sums of stored figures over any realistic number of rows fit an
//! `i64` (release builds have no overflow checks); the store's running totals saturate on
//! top of that (`store/sql.rs`).

use fleetml_shared::histogram::{HistogramSnapshot, N_BUCKETS};
use fleetml_shared::protocol::{DriftWindowReport, Heartbeat, ReportedState, ShadowReport, SlotPhase};
use fleetml_shared::topics::is_valid_name;

use crate::store::{DeviceVitals, DriftWindowRecord, InferenceWindow, ShadowWindowRecord};

/// The largest count one window may carry (requests, errors, rows, samples, histogram
/// observations): 2^32, thousands of times what a device serves between two heartbeats, and
/// small enough that the sum of 2^31 windows still fits an `i64`.
pub const MAX_WINDOW_COUNT: u64 = 1 << 32;
/// The largest value of a counter a device keeps since it started (`refused_messages`): 2^40,
/// so a fleet of 2^23 devices still sums within an `i64`.
pub const MAX_DEVICE_COUNTER: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FigureError {
    #[error("{field} = {value} is out of range (at most {max})")]
    OutOfRange { field: String, value: u64, max: u64 },
    #[error("{field} = {value} exceeds {bound_field} = {bound}")]
    Exceeds { field: String, value: u64, bound_field: String, bound: u64 },
    #[error("{field} is not a finite number from 0 to {max}: {value}")]
    NotFinite { field: String, value: f64, max: f64 },
    #[error("{field} is not a valid name")]
    InvalidName { field: String },
    #[error("{field}: {reason}")]
    Histogram { field: String, reason: String },
}

/// `value` as an `i64`, refused with `field` named when it does not fit.
pub fn to_i64(field: &str, value: u64) -> Result<i64, FigureError> {
    i64::try_from(value).map_err(|_| FigureError::OutOfRange { field: field.to_string(), value, max: i64::MAX as u64 })
}

/// A per-window count: at most `MAX_WINDOW_COUNT`.
pub fn window_count(field: &str, value: u64) -> Result<i64, FigureError> {
    bounded(field, value, MAX_WINDOW_COUNT)
}

fn bounded(field: &str, value: u64, max: u64) -> Result<i64, FigureError> {
    if value > max {
        return Err(FigureError::OutOfRange { field: field.to_string(), value, max });
    }
    to_i64(field, value)
}

fn at_most(field: &str, value: u64, bound_field: &str, bound: u64) -> Result<(), FigureError> {
    if value > bound {
        return Err(FigureError::Exceeds { field: field.to_string(), value, bound_field: bound_field.to_string(), bound });
    }
    Ok(())
}

fn name(field: &str, text: &str) -> Result<(), FigureError> {
    if is_valid_name(text) { Ok(()) } else { Err(FigureError::InvalidName { field: field.to_string() }) }
}

/// A latency histogram: known buckets in order, each count and the total within a window's
/// bound and at most `max_total` observations.
fn histogram(field: &str, snapshot: &HistogramSnapshot, max_total: u64, max_field: &str) -> Result<(), FigureError> {
    let fail = |reason: String| FigureError::Histogram { field: field.to_string(), reason };
    let mut previous: Option<u16> = None;
    for &(bucket, count) in &snapshot.buckets {
        if usize::from(bucket) >= N_BUCKETS {
            return Err(fail(format!("bucket {bucket} does not exist (there are {N_BUCKETS})")));
        }
        if previous.is_some_and(|previous| previous >= bucket) {
            return Err(fail(format!("bucket {bucket} is out of order or repeated")));
        }
        previous = Some(bucket);
        window_count(&format!("{field}[{bucket}]"), count)?;
    }
    let total = snapshot.checked_total().ok_or_else(|| fail("the observation count overflows".into()))?;
    at_most(&format!("{field} observations"), total, max_field, max_total)
}

/// A heartbeat's vitals and inference windows, checked; `now_ms` stamps them.
pub fn heartbeat(device_id: &str, heartbeat: &Heartbeat, now_ms: i64) -> Result<(DeviceVitals, Vec<InferenceWindow>), FigureError> {
    let cpu_percent = f64::from(heartbeat.cpu_percent);
    if !cpu_percent.is_finite() || cpu_percent < 0.0 {
        return Err(FigureError::NotFinite { field: "cpu_percent".into(), value: cpu_percent, max: 100.0 });
    }
    let vitals = DeviceVitals {
        // A host may round a little above 100; it is a gauge, so clamp rather than refuse.
        cpu_percent: cpu_percent.min(100.0),
        memory_used_bytes: to_i64("memory_used_bytes", heartbeat.memory_used_bytes)?,
        memory_total_bytes: to_i64("memory_total_bytes", heartbeat.memory_total_bytes)?,
        process_rss_bytes: to_i64("process_rss_bytes", heartbeat.process_rss_bytes)?,
        uptime_s: to_i64("uptime_s", heartbeat.uptime_s)?,
        refused_messages: bounded("refused_messages", heartbeat.refused_messages, MAX_DEVICE_COUNTER)?,
        last_heartbeat_ms: now_ms,
    };
    let window_ms = to_i64("window_ms", heartbeat.window_ms)?;
    let mut windows = Vec::with_capacity(heartbeat.models.len());
    for (model_idx, figures) in heartbeat.models.iter().enumerate() {
        let field = |name: &str| format!("models[{model_idx}].{name}");
        name(&field("model"), &figures.model)?;
        let requests = window_count(&field("requests"), figures.requests)?;
        let errors = window_count(&field("errors"), figures.errors)?;
        at_most(&field("errors"), figures.errors, &field("requests"), figures.requests)?;
        histogram(&field("latency_us"), &figures.latency_us, figures.requests, &field("requests"))?;
        let version = to_i64(&field("version"), figures.version)?;
        if requests > 0 {
            windows.push(InferenceWindow {
                device_id: device_id.to_string(),
                model: figures.model.clone(),
                version,
                window_end_ms: now_ms,
                window_ms,
                requests,
                errors,
                latency_us: figures.latency_us.clone(),
            });
        }
    }
    Ok((vitals, windows))
}

/// A shadow report's windows, checked.
pub fn shadow_windows(device_id: &str, report: &ShadowReport, now_ms: i64) -> Result<Vec<ShadowWindowRecord>, FigureError> {
    let mut windows = Vec::with_capacity(report.figures.len());
    for (figures_idx, figures) in report.figures.iter().enumerate() {
        let field = |name: &str| format!("figures[{figures_idx}].{name}");
        name(&field("model"), &figures.model)?;
        at_most(&field("errors"), figures.errors, &field("requests"), figures.requests)?;
        at_most(&field("rows_agreed"), figures.rows_agreed, &field("rows"), figures.rows)?;
        histogram(&field("candidate_latency_us"), &figures.candidate_latency_us, figures.requests, &field("requests"))?;
        windows.push(ShadowWindowRecord {
            device_id: device_id.to_string(),
            model: figures.model.clone(),
            active_version: to_i64(&field("active_version"), figures.active_version)?,
            candidate_version: to_i64(&field("candidate_version"), figures.candidate_version)?,
            window_end_ms: now_ms,
            requests: window_count(&field("requests"), figures.requests)?,
            errors: window_count(&field("errors"), figures.errors)?,
            skipped: window_count(&field("skipped"), figures.skipped)?,
            rows: window_count(&field("rows"), figures.rows)?,
            rows_agreed: window_count(&field("rows_agreed"), figures.rows_agreed)?,
            delta_sum: finite_or_zero(figures.delta_sum),
            delta_max: finite_or_zero(figures.delta_max),
            latency_us: figures.candidate_latency_us.clone(),
        });
    }
    Ok(windows)
}

/// Deltas are informational: a non-finite one counts as no difference rather than poisoning
/// the sums (the row agreement, which gates rollouts, is checked above).
fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() { value.clamp(-f64::MAX / 2.0, f64::MAX / 2.0) } else { 0.0 }
}

/// The version of a drift window report, checked (it keys the profile cache).
pub fn drift_version(report: &DriftWindowReport) -> Result<i64, FigureError> {
    to_i64("version", report.version)
}

/// The stored record of a drift window whose contents `MergedWindow::merge` checked already.
pub fn drift_record(report: &DriftWindowReport, body: Vec<u8>, now_ms: i64) -> Result<DriftWindowRecord, FigureError> {
    name("model", &report.model)?;
    Ok(DriftWindowRecord {
        device_id: report.device_id.clone(),
        model: report.model.clone(),
        version: drift_version(report)?,
        seq: to_i64("seq", report.seq)?,
        started_ms: to_i64("window.started_at_ms", report.window.started_at_ms)?,
        ended_ms: to_i64("window.ended_at_ms", report.window.ended_at_ms)?,
        received_ms: now_ms,
        samples: window_count("window.samples", report.window.samples)?,
        body,
    })
}

/// Checks that every generation, version, time and byte count in a reported state fits the
/// store's `i64` columns (the plane compares and adds to them: `deployment.rs`).
pub fn check_reported(state: &ReportedState) -> Result<(), FigureError> {
    to_i64("started_at_ms", state.started_at_ms)?;
    to_i64("reported_at_ms", state.reported_at_ms)?;
    for (slot_idx, slot) in state.slots.iter().enumerate() {
        let field = |name: &str| format!("slots[{slot_idx}].{name}");
        to_i64(&field("generation"), slot.generation)?;
        for (what, installed) in [("active", &slot.active), ("previous", &slot.previous), ("target", &slot.target)] {
            if let Some(installed) = installed {
                to_i64(&field(&format!("{what}.version")), installed.version)?;
            }
        }
        if let SlotPhase::Fetching { received_bytes, total_bytes, .. } = &slot.phase {
            to_i64(&field("phase.total_bytes"), *total_bytes)?;
            at_most(&field("phase.received_bytes"), *received_bytes, &field("phase.total_bytes"), *total_bytes)?;
        }
        if let Some(outcome) = &slot.last_result {
            to_i64(&field("last_result.version"), outcome.version)?;
            to_i64(&field("last_result.generation"), outcome.generation)?;
            to_i64(&field("last_result.at_ms"), outcome.at_ms)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleetml_shared::protocol::{ModelFigures, ShadowFigures, SlotReport};

    use super::*;

    fn heartbeat_with(figures: ModelFigures) -> Heartbeat {
        Heartbeat {
            device_id: "d1".into(),
            seq: 1,
            sent_at_ms: 1,
            uptime_s: 10,
            cpu_percent: 12.5,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 1 << 32,
            process_rss_bytes: 1 << 24,
            window_ms: 1000,
            models: vec![figures],
            refused_messages: 0,
        }
    }

    fn figures(requests: u64, errors: u64, buckets: Vec<(u16, u64)>) -> ModelFigures {
        ModelFigures { model: "m".into(), version: 1, requests, errors, latency_us: HistogramSnapshot { buckets } }
    }

    #[track_caller]
    fn check(heartbeat: Heartbeat, expected: Result<(i64, i64), &str>) {
        let got = super::heartbeat("d1", &heartbeat, 5).map(|(_, windows)| (windows[0].requests, windows[0].errors));
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected),
            (Err(error), Err(expected)) => assert!(error.to_string().contains(expected), "`{error}` does not name `{expected}`"),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn heartbeat_figures_are_checked_and_out_of_range_fields_named() {
        check(heartbeat_with(figures(10, 2, vec![(3, 4), (9, 4)])), Ok((10, 2)));
        check(heartbeat_with(figures(MAX_WINDOW_COUNT, 0, vec![])), Ok((MAX_WINDOW_COUNT as i64, 0)));
        check(heartbeat_with(figures(u64::MAX, 0, vec![])), Err("models[0].requests = 18446744073709551615 is out of range"));
        check(heartbeat_with(figures(MAX_WINDOW_COUNT + 1, 0, vec![])), Err("models[0].requests"));
        check(heartbeat_with(figures(5, u64::MAX, vec![])), Err("models[0].errors"));
        check(heartbeat_with(figures(5, 6, vec![])), Err("models[0].errors = 6 exceeds models[0].requests = 5"));
        check(heartbeat_with(figures(5, 0, vec![(3, u64::MAX)])), Err("models[0].latency_us[3]"));
        check(heartbeat_with(figures(5, 0, vec![(3, 4), (4, 4)])), Err("models[0].latency_us observations = 8 exceeds models[0].requests"));
        check(heartbeat_with(figures(5, 0, vec![(4, 1), (3, 1)])), Err("out of order"));
        check(heartbeat_with(figures(5, 0, vec![(N_BUCKETS as u16, 1)])), Err("does not exist"));
        check(heartbeat_with(ModelFigures { version: u64::MAX, ..figures(5, 0, vec![]) }), Err("models[0].version"));
        check(heartbeat_with(ModelFigures { model: "a b".into(), ..figures(5, 0, vec![]) }), Err("models[0].model is not a valid name"));
        check(Heartbeat { memory_used_bytes: u64::MAX, ..heartbeat_with(figures(5, 0, vec![])) }, Err("memory_used_bytes"));
        check(Heartbeat { uptime_s: u64::MAX, ..heartbeat_with(figures(5, 0, vec![])) }, Err("uptime_s"));
        check(Heartbeat { window_ms: u64::MAX, ..heartbeat_with(figures(5, 0, vec![])) }, Err("window_ms"));
        check(Heartbeat { refused_messages: MAX_DEVICE_COUNTER + 1, ..heartbeat_with(figures(5, 0, vec![])) }, Err("refused_messages"));
        check(Heartbeat { cpu_percent: f32::NAN, ..heartbeat_with(figures(5, 0, vec![])) }, Err("cpu_percent"));
        check(Heartbeat { cpu_percent: -1.0, ..heartbeat_with(figures(5, 0, vec![])) }, Err("cpu_percent"));
    }

    #[test]
    fn shadow_figures_are_checked() {
        let good = ShadowFigures {
            model: "m".into(),
            active_version: 1,
            candidate_version: 2,
            requests: 10,
            errors: 1,
            skipped: 3,
            rows: 20,
            rows_agreed: 19,
            delta_sum: f64::INFINITY,
            delta_max: 0.5,
            candidate_latency_us: HistogramSnapshot { buckets: vec![(2, 9)] },
        };
        let report = |figures: ShadowFigures| ShadowReport { device_id: "d1".into(), sent_at_ms: 1, window_ms: 1, figures: vec![figures] };
        let windows = shadow_windows("d1", &report(good.clone()), 5).unwrap();
        assert_eq!((windows[0].requests, windows[0].rows_agreed, windows[0].delta_sum), (10, 19, 0.0));
        #[track_caller]
        fn refused(result: Result<Vec<ShadowWindowRecord>, FigureError>, field: &str) {
            let error = result.unwrap_err().to_string();
            assert!(error.contains(field), "`{error}` does not name `{field}`");
        }
        refused(shadow_windows("d1", &report(ShadowFigures { rows: u64::MAX, rows_agreed: 0, ..good.clone() }), 5), "figures[0].rows");
        refused(shadow_windows("d1", &report(ShadowFigures { rows_agreed: 21, ..good.clone() }), 5), "figures[0].rows_agreed = 21");
        refused(shadow_windows("d1", &report(ShadowFigures { skipped: u64::MAX, ..good.clone() }), 5), "figures[0].skipped");
        refused(shadow_windows("d1", &report(ShadowFigures { candidate_version: u64::MAX, ..good.clone() }), 5), "candidate_version");
    }

    #[test]
    fn reported_generations_and_versions_must_fit_the_store() {
        let slot = SlotReport {
            model: "m".into(),
            generation: 3,
            phase: SlotPhase::Fetching { received_bytes: 5, total_bytes: 10, attempts: 1 },
            active: None,
            previous: None,
            target: None,
            last_result: None,
        };
        let state = |slot: SlotReport| ReportedState {
            device_id: "d1".into(),
            agent_version: "0".into(),
            labels: vec![],
            started_at_ms: 1,
            reported_at_ms: 2,
            slots: vec![slot],
            last_refusal: None,
        };
        assert_eq!(check_reported(&state(slot.clone())), Ok(()));
        let error = check_reported(&state(SlotReport { generation: u64::MAX, ..slot.clone() })).unwrap_err();
        assert!(error.to_string().contains("slots[0].generation"), "{error}");
        let error = check_reported(&state(SlotReport {
            phase: SlotPhase::Fetching { received_bytes: 11, total_bytes: 10, attempts: 1 },
            ..slot.clone()
        }))
        .unwrap_err();
        assert!(error.to_string().contains("slots[0].phase.received_bytes"), "{error}");
    }
}
