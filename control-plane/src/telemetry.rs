//! Inference figures from the devices' heartbeat windows, summed one way for every reader:
//! a version's stats, a rollout wave's gates, an A/B variant, a shadow's active baseline.

use std::collections::BTreeSet;

use fleetml_shared::histogram::Histogram;

use crate::store::InferenceWindow;

/// What a set of inference windows adds up to.
#[derive(Clone, Debug, Default)]
pub struct InferenceFigures {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Histogram,
    /// The devices that sent any of the windows.
    pub devices: BTreeSet<String>,
}

impl InferenceFigures {
    /// Sums windows. Counts saturate rather than wrap: each window's counts come from a device.
    pub fn sum<'a>(windows: impl IntoIterator<Item = &'a InferenceWindow>) -> Self {
        let mut figures = InferenceFigures::default();
        for window in windows {
            figures.requests = figures.requests.saturating_add(u64::try_from(window.requests).unwrap_or(0));
            figures.errors = figures.errors.saturating_add(u64::try_from(window.errors).unwrap_or(0));
            figures.latency_us.merge(&window.latency_us);
            if !figures.devices.contains(&window.device_id) {
                figures.devices.insert(window.device_id.clone());
            }
        }
        figures
    }

    /// Errors per request, when there were requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(device_id: &str, requests: i64, errors: i64, latency_us: &[u64]) -> InferenceWindow {
        let mut histogram = Histogram::default();
        for value in latency_us {
            histogram.record(*value);
        }
        InferenceWindow {
            device_id: device_id.into(),
            model: "m".into(),
            version: 1,
            window_end_ms: 0,
            window_ms: 1000,
            requests,
            errors,
            latency_us: histogram.snapshot(),
        }
    }

    #[test]
    fn windows_add_up_and_counts_saturate() {
        let windows = [window("a", 10, 1, &[100, 200]), window("b", 5, 0, &[300]), window("a", 5, 1, &[])];
        let figures = InferenceFigures::sum(&windows);
        assert_eq!((figures.requests, figures.errors, figures.error_rate()), (20, 2, Some(0.1)));
        assert_eq!(figures.latency_us.total(), 3);
        assert_eq!(figures.devices.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        let huge = [window("a", i64::MAX, 0, &[]), window("a", i64::MAX, 0, &[]), window("a", i64::MAX, 0, &[])];
        assert_eq!(InferenceFigures::sum(&huge).requests, u64::MAX);
        let none = InferenceFigures::sum(&[window("c", 0, 0, &[]), window("d", -4, -1, &[])]);
        assert_eq!((none.requests, none.errors, none.error_rate()), (0, 0, None));
    }
}
