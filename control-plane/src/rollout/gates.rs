//! Health gates: a pure function of a wave's figures. A gate with fewer samples than its
//! minimum cannot fail a wave (one device cannot decide), but it cannot pass it either.

use super::policy::{GateDocument, GateMetric};

/// What was observed for the devices of a wave (and the ones still on the previous version).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaveFigures {
    pub installs_attempted: u64,
    pub installs_failed: u64,
    pub requests: u64,
    pub request_errors: u64,
    pub p95_latency_us: Option<f64>,
    pub baseline_p95_latency_us: Option<f64>,
    pub latency_samples: u64,
    pub devices: u64,
    pub devices_offline: u64,
    pub drift_score: Option<f64>,
    pub drift_samples: u64,
    /// Rows compared by shadow runs of the candidate, and the share that agreed.
    pub shadow_agreement: Option<f64>,
    pub shadow_rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough samples yet: the wave waits (until its timeout).
    Undecided,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GateResult {
    pub metric: GateMetric,
    pub value: Option<f64>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub samples: u64,
    pub verdict: Verdict,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Evaluates every gate; the wave passes only when all pass, fails when any fails.
pub fn evaluate(gates: &[GateDocument], figures: &WaveFigures) -> (Verdict, Vec<GateResult>) {
    let results: Vec<GateResult> = gates
        .iter()
        .map(|gate| {
            let (value, samples) = match gate.metric {
                GateMetric::InstallFailureRate => (ratio(figures.installs_failed, figures.installs_attempted), figures.installs_attempted),
                GateMetric::InferenceErrorRate => (ratio(figures.request_errors, figures.requests), figures.requests),
                GateMetric::P95LatencyRegression => match (figures.p95_latency_us, figures.baseline_p95_latency_us) {
                    (Some(p95), Some(baseline)) if baseline > 0.0 => (Some(p95 / baseline - 1.0), figures.latency_samples),
                    _ => (None, 0),
                },
                GateMetric::OfflineRate => (ratio(figures.devices_offline, figures.devices), figures.devices),
                GateMetric::DriftScore => (figures.drift_score, figures.drift_samples),
                GateMetric::ShadowAgreement => (figures.shadow_agreement, figures.shadow_rows),
            };
            let verdict = match value {
                Some(_) if samples < gate.min_samples => Verdict::Undecided,
                Some(value) if gate.max.is_some_and(|max| value > max) || gate.min.is_some_and(|min| value < min) => Verdict::Fail,
                Some(_) => Verdict::Pass,
                None => Verdict::Undecided,
            };
            GateResult { metric: gate.metric, value, max: gate.max, min: gate.min, samples, verdict }
        })
        .collect();
    let overall = if results.iter().any(|result| result.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if results.iter().all(|result| result.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::Undecided
    };
    (overall, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(metric: GateMetric, max: f64, min_samples: u64) -> GateDocument {
        GateDocument { metric, max: Some(max), min: None, min_samples }
    }

    #[track_caller]
    fn check(gates: &[GateDocument], figures: WaveFigures, expected: Verdict) {
        assert_eq!(evaluate(gates, &figures).0, expected, "{figures:?}");
    }

    #[test]
    fn gates_decide_only_with_enough_samples() {
        let install = [gate(GateMetric::InstallFailureRate, 0.1, 5)];
        check(&install, WaveFigures { installs_attempted: 10, installs_failed: 1, ..WaveFigures::default() }, Verdict::Pass);
        check(&install, WaveFigures { installs_attempted: 10, installs_failed: 2, ..WaveFigures::default() }, Verdict::Fail);
        check(&install, WaveFigures { installs_attempted: 1, installs_failed: 1, ..WaveFigures::default() }, Verdict::Undecided);
        check(&install, WaveFigures::default(), Verdict::Undecided);

        let latency = [gate(GateMetric::P95LatencyRegression, 0.2, 100)];
        let slow = WaveFigures {
            p95_latency_us: Some(1300.0),
            baseline_p95_latency_us: Some(1000.0),
            latency_samples: 500,
            ..WaveFigures::default()
        };
        check(&latency, slow.clone(), Verdict::Fail);
        check(&latency, WaveFigures { p95_latency_us: Some(1100.0), ..slow.clone() }, Verdict::Pass);
        check(&latency, WaveFigures { baseline_p95_latency_us: None, ..slow }, Verdict::Undecided);

        let errors = [gate(GateMetric::InferenceErrorRate, 0.01, 100), gate(GateMetric::OfflineRate, 0.5, 2)];
        let figures = WaveFigures { requests: 1000, request_errors: 5, devices: 4, devices_offline: 1, ..WaveFigures::default() };
        check(&errors, figures.clone(), Verdict::Pass);
        check(&errors, WaveFigures { devices_offline: 3, ..figures }, Verdict::Fail);
        check(&[], WaveFigures::default(), Verdict::Pass);
    }

    #[test]
    fn a_min_gate_fails_below_its_bound() {
        let agreement = [GateDocument { metric: GateMetric::ShadowAgreement, max: None, min: Some(0.95), min_samples: 100 }];
        check(&agreement, WaveFigures { shadow_agreement: Some(0.99), shadow_rows: 500, ..WaveFigures::default() }, Verdict::Pass);
        check(&agreement, WaveFigures { shadow_agreement: Some(0.70), shadow_rows: 500, ..WaveFigures::default() }, Verdict::Fail);
        check(&agreement, WaveFigures { shadow_agreement: Some(0.70), shadow_rows: 50, ..WaveFigures::default() }, Verdict::Undecided);
        check(&agreement, WaveFigures::default(), Verdict::Undecided);
    }

    #[test]
    fn a_failing_gate_wins_over_an_undecided_one() {
        let gates = [gate(GateMetric::InstallFailureRate, 0.0, 1), gate(GateMetric::DriftScore, 0.1, 1000)];
        let figures =
            WaveFigures { installs_attempted: 2, installs_failed: 1, drift_score: Some(0.5), drift_samples: 3, ..WaveFigures::default() };
        let (verdict, results) = evaluate(&gates, &figures);
        assert_eq!(verdict, Verdict::Fail);
        assert_eq!(results[1].verdict, Verdict::Undecided);
        assert_eq!(results[0].value, Some(0.5));
    }
}
