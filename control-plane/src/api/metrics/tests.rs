//! `/metrics` through the router (no socket), checked with a small parser of the text format.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fleetml_shared::histogram::Histogram;
use fleetml_shared::protocol::FailureKind;
use fleetml_shared::selector::Selector;
use tower::ServiceExt;

use super::*;
use crate::experiments::split::{SplitState, SplitVariant};
use crate::reported::{InstallVerdict, LastInstall};
use crate::rollout::policy::PolicyDocument;
use crate::store::{InferenceWindow, ReportedUpdate, RolloutDeviceRecord};

async fn test_core(data_dir: &Path) -> Arc<PlaneCore> {
    crate::testing::core(data_dir).await
}

// ---------------------------------------------------------------- a parser of the text format

#[derive(Debug, Default)]
struct ParsedFamily {
    help: Option<String>,
    kind: Option<String>,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

#[derive(Debug, Default)]
struct Parsed {
    /// In the order of the text.
    names: Vec<String>,
    families: BTreeMap<String, ParsedFamily>,
}

impl Parsed {
    /// The value of the one sample named `name` with exactly these labels.
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(label, value)| (label.to_string(), value.to_string())).collect();
        let found: Vec<f64> = self
            .families
            .values()
            .flat_map(|family| &family.samples)
            .filter(|(sample_name, sample_labels, _)| sample_name == name && *sample_labels == wanted)
            .map(|(_, _, value)| *value)
            .collect();
        assert_eq!(found.len(), 1, "{name}{wanted:?}: {found:?}");
        found[0]
    }

    fn samples_of(&self, family: &str) -> &[(String, BTreeMap<String, String>, f64)] {
        self.families.get(family).map(|family| family.samples.as_slice()).unwrap_or_default()
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_' || rest == ':')
}

/// `{a="x",b="y\"z"}` after the metric name: the labels and the rest of the line.
#[track_caller]
fn parse_labels(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').expect("labels open with {");
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
        assert!(is_name(label) && !labels.contains_key(label), "label name `{label}` in {text}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("label value ends with a quote") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    other => panic!("unknown escape \\{other} in {text}"),
                },
                (index, '"') => break index,
                (_, '\n') => panic!("raw newline in a label value"),
                (_, other) => value.push(other),
            }
        };
        labels.insert(label.to_string(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().unwrap_or_else(|_| panic!("value `{number}`")),
    }
}

/// Parses and checks the text: HELP then TYPE once per family before its samples; every
/// sample line `name{labels} value` of the current family; families sorted by name.
#[track_caller]
fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "the text ends with a line feed");
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, help) = help.split_once(' ').expect("# HELP name text");
            assert!(is_name(name) && !parsed.families.contains_key(name), "HELP of `{name}` once");
            parsed.families.insert(name.to_string(), ParsedFamily { help: Some(help.to_string()), ..ParsedFamily::default() });
            parsed.names.push(name.to_string());
            current = Some(name.to_string());
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind.split_once(' ').expect("# TYPE name kind");
            assert_eq!(current.as_deref(), Some(name), "TYPE right after HELP");
            let family = parsed.families.get_mut(name).expect("family");
            assert!(family.kind.is_none() && family.samples.is_empty(), "TYPE of `{name}` once, before the samples");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "type `{kind}`");
            family.kind = Some(kind.to_string());
        } else {
            assert!(!line.starts_with('#'), "comment line `{line}`");
            let name_end = line.find(['{', ' ']).expect("name then labels or value");
            let name = &line[..name_end];
            let (labels, rest) =
                if line[name_end..].starts_with('{') { parse_labels(&line[name_end..]) } else { (BTreeMap::new(), &line[name_end..]) };
            let value = rest.strip_prefix(' ').expect("one space before the value");
            assert!(!value.contains(' '), "no timestamp: `{line}`");
            let family_name = current.as_deref().expect("a sample after HELP and TYPE");
            let family = parsed.families.get_mut(family_name).expect("family");
            let kind = family.kind.as_deref().expect("TYPE before samples");
            let suffixes: &[&str] = if kind == "histogram" { &["_bucket", "_sum", "_count"] } else { &[""] };
            assert!(suffixes.iter().any(|suffix| name == format!("{family_name}{suffix}")), "`{name}` in family `{family_name}`");
            family.samples.push((name.to_string(), labels, parse_value(value)));
        }
    }
    let mut sorted = parsed.names.clone();
    sorted.sort();
    assert_eq!(parsed.names, sorted, "families sorted by name");
    for (name, family) in &parsed.families {
        assert!(family.help.is_some() && family.kind.is_some(), "`{name}` has HELP and TYPE");
        if family.kind.as_deref() == Some("histogram") {
            check_histogram(name, family);
        }
    }
    parsed
}

/// Per series: `le` ascending, counts not decreasing, the last bucket `+Inf` and equal to `_count`.
#[track_caller]
fn check_histogram(name: &str, family: &ParsedFamily) {
    let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
    let mut sums = 0;
    for (sample_name, labels, value) in &family.samples {
        let mut series = labels.clone();
        if sample_name.ends_with("_bucket") {
            let le = series.remove("le").expect("a bucket has le");
            buckets.entry(series).or_default().push((parse_value(&le), *value));
        } else if sample_name.ends_with("_count") {
            assert!(counts.insert(series, *value).is_none(), "one _count per series of {name}");
        } else {
            sums += 1;
        }
    }
    assert_eq!(sums, counts.len(), "one _sum per series of {name}");
    assert_eq!(buckets.len(), counts.len(), "buckets and _count for the same series of {name}");
    for (series, series_buckets) in &buckets {
        assert!(
            series_buckets.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1),
            "{name}{series:?}: {series_buckets:?}"
        );
        let last = series_buckets.last().expect("buckets");
        assert_eq!(last.0, f64::INFINITY, "{name}{series:?} ends in +Inf");
        assert_eq!(Some(&last.1), counts.get(series), "{name}{series:?}: +Inf equals _count");
    }
}

// ---------------------------------------------------------------- the route

fn slot(model: &str, phase: ReportedPhase) -> ReportedSlot {
    ReportedSlot {
        model: model.into(),
        generation: 1,
        phase,
        active_version: None,
        previous_version: None,
        target_version: None,
        last_result: None,
    }
}

fn fetching() -> ReportedPhase {
    ReportedPhase::Fetching { received_bytes: Some(1), total_bytes: Some(2), attempts: Some(1) }
}

fn reported(device_id: &str, site: &str, slots: &[ReportedSlot]) -> ReportedUpdate {
    ReportedUpdate {
        device_id: device_id.into(),
        labels: [("site".to_string(), site.to_string())].into_iter().collect(),
        agent_version: "0.1.0".into(),
        slots: slots.to_vec(),
        last_refusal: None,
        at_ms: 1,
    }
}

fn window(device_id: &str, version: i64, latencies_us: &[u64], errors: i64) -> InferenceWindow {
    let mut histogram = Histogram::default();
    latencies_us.iter().for_each(|latency_us| histogram.record(*latency_us));
    InferenceWindow {
        device_id: device_id.into(),
        model: "m".into(),
        version,
        window_end_ms: 1,
        window_ms: 10_000,
        requests: latencies_us.len() as i64,
        errors,
        latency_us: histogram.snapshot(),
    }
}

async fn get_metrics(core: &Arc<PlaneCore>) -> (StatusCode, String, String) {
    let response = crate::api::router(core.clone()).oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).map(|value| value.to_str().unwrap().to_string()).unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, content_type, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_route_exports_the_fleet_inference_rollouts_splits_and_counters_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path()).await;
    let store = &core.store;

    let active = ReportedSlot { active_version: Some(2), ..slot("m", ReportedPhase::Active) };
    let fetching = ReportedSlot { active_version: Some(2), target_version: Some(3), ..slot("m", fetching()) };
    let refused = LastInstall {
        version: 3,
        generation: 1,
        at_ms: 1,
        verdict: InstallVerdict::Refused { kind: FailureKind::SelfTest, reason: "outputs differ".into() },
    };
    let failed = ReportedSlot { active_version: Some(2), last_result: Some(refused), ..slot("m", ReportedPhase::Failed) };
    store.apply_reported(&reported("d1", "a", std::slice::from_ref(&active))).await.unwrap();
    store.apply_reported(&reported("d2", "a", &[fetching])).await.unwrap();
    store.apply_reported(&reported("d3", "b", &[failed])).await.unwrap();
    store.apply_reported(&reported("d4", "a", &[])).await.unwrap();
    store.mark_offline("d3", 2).await.unwrap();
    store
        .record_vitals("d1", &crate::store::DeviceVitals { refused_messages: 4, last_heartbeat_ms: 3, ..Default::default() })
        .await
        .unwrap();
    store
        .put_desired(&DesiredRecord {
            device_id: "d4".into(),
            model: "m".into(),
            generation: 1,
            version: Some(2),
            digest: None,
            deployment_id: None,
            payload: Vec::new(),
            updated_ms: 1,
        })
        .await
        .unwrap();

    // Two heartbeats of d1 at 100 µs and 5 ms, one of d2, and a version with no latency yet.
    store.insert_windows(&[window("d1", 2, &[100, 100, 100, 5_000], 1), window("d2", 2, &[100, 100, 5_000, 5_000], 0)]).await.unwrap();
    store.insert_windows(&[window("d1", 2, &[2_000_000], 1), window("d2", 3, &[300], 0)]).await.unwrap();

    let now_ms = fleetml_shared::now_ms() as i64;
    let rollout = RolloutRecord {
        id: 0,
        model: "m".into(),
        version: 3,
        policy: PolicyDocument::parse(r#"{"target": {"devices": ["d2"]}, "waves": [{"size": 1}]}"#).unwrap(),
        state: RolloutState::Running,
        current_wave: 1,
        wave_started_ms: now_ms,
        created_by: "admin".into(),
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    let member = |device_id: &str, wave: i64, state: MemberState| RolloutDeviceRecord {
        device_id: device_id.into(),
        wave,
        state,
        reason: String::new(),
        from_version: Some(2),
        updated_ms: now_ms,
    };
    let rollout_id = store
        .create_rollout(
            &rollout,
            &[member("d2", 0, MemberState::Downloading), member("d3", 0, MemberState::Failed), member("d4", 1, MemberState::Pending)],
        )
        .await
        .unwrap();
    // Ended long ago: no longer exported.
    let old_id = store.create_rollout(&rollout, &[]).await.unwrap();
    store.update_rollout(old_id, RolloutState::Completed, 1, now_ms, now_ms - ENDED_ROLLOUT_RETENTION_MS - 1).await.unwrap();
    let split_id = store
        .create_split(&SplitRecord {
            id: 0,
            model: "m".into(),
            selector: Selector::parse("site=a").unwrap(),
            variants: vec![SplitVariant { version: 2, weight: 0.75 }, SplitVariant { version: 3, weight: 0.25 }],
            created_ms: 1,
            state: SplitState::Running,
        })
        .await
        .unwrap();
    core.counters.refused_messages.store(3, Ordering::Relaxed);
    core.counters.chunks_published.store(12, Ordering::Relaxed);

    let (status, content_type, text) = get_metrics(&core).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let parsed = parse(&text);

    // The fleet.
    assert_eq!(parsed.value("fleetml_devices", &[]), 4.0);
    assert_eq!(parsed.value("fleetml_devices_online", &[]), 3.0);
    assert_eq!(parsed.value("fleetml_devices_offline", &[]), 1.0);
    assert_eq!(parsed.value("fleetml_device_refused_messages", &[]), 4.0);
    let slots =
        |version: &str, state: &str| parsed.value("fleetml_model_devices", &[("model", "m"), ("version", version), ("state", state)]);
    assert_eq!((slots("2", "active"), slots("3", "fetching"), slots("3", "failed"), slots("2", "pending")), (1.0, 1.0, 1.0, 1.0));
    assert_eq!(parsed.samples_of("fleetml_model_devices").len(), 4);

    // Inference: counters and a histogram whose buckets are exact.
    let version = |version: &'static str| [("model", "m"), ("version", version)];
    assert_eq!(parsed.value("fleetml_inference_requests_total", &version("2")), 9.0);
    assert_eq!(parsed.value("fleetml_inference_errors_total", &version("2")), 2.0);
    assert_eq!(parsed.value("fleetml_inference_requests_total", &version("3")), 1.0);
    let bucket = |version: &'static str, le: &'static str| {
        parsed.value("fleetml_inference_latency_seconds_bucket", &[("model", "m"), ("version", version), ("le", le)])
    };
    assert_eq!(bucket("2", "0.000064"), 0.0);
    assert_eq!(bucket("2", "0.000128"), 5.0);
    assert_eq!(bucket("2", "0.004096"), 5.0);
    assert_eq!(bucket("2", "0.006144"), 8.0);
    assert_eq!(bucket("2", "1.572864"), 8.0);
    assert_eq!(bucket("2", "2.097152"), 9.0);
    assert_eq!(bucket("2", "+Inf"), 9.0);
    assert_eq!(parsed.value("fleetml_inference_latency_seconds_count", &version("2")), 9.0);
    let sum = parsed.value("fleetml_inference_latency_seconds_sum", &version("2"));
    let exact_sum = (5.0 * 100.0 + 3.0 * 5_000.0 + 2_000_000.0) / 1e6;
    assert!((sum - exact_sum).abs() / exact_sum < 0.0625, "sum {sum} vs {exact_sum}");
    assert_eq!(bucket("3", "0.000256"), 0.0);
    assert_eq!(bucket("3", "0.000384"), 1.0);
    let n_bounds = latency_bounds_us().len();
    assert_eq!(parsed.samples_of("fleetml_inference_latency_seconds").len(), 2 * (n_bounds + 3));

    // Rollouts: every state a 0/1 gauge, devices per state including the empty ones.
    let id = rollout_id.to_string();
    for state in RolloutState::ALL {
        let labels = [("rollout", id.as_str()), ("model", "m"), ("version", "3"), ("state", state.as_str())];
        assert_eq!(parsed.value("fleetml_rollout_state", &labels), if state == RolloutState::Running { 1.0 } else { 0.0 }, "{state:?}");
    }
    assert_eq!(parsed.value("fleetml_rollout_wave", &[("rollout", &id), ("model", "m"), ("version", "3")]), 1.0);
    let rollout_devices = |state: &str| parsed.value("fleetml_rollout_devices", &[("rollout", &id), ("state", state)]);
    assert_eq!((rollout_devices("downloading"), rollout_devices("failed"), rollout_devices("pending")), (1.0, 1.0, 1.0));
    assert_eq!((rollout_devices("healthy"), rollout_devices("offline")), (0.0, 0.0));
    let old_id = old_id.to_string();
    assert!(parsed.families.values().flat_map(|family| &family.samples).all(|(_, labels, _)| labels.get("rollout") != Some(&old_id)));

    // The A/B split: weights, and the site=a devices (d1, d2, d4) all assigned.
    let split = split_id.to_string();
    assert_eq!(parsed.value("fleetml_split_weight", &[("split", &split), ("model", "m"), ("version", "2")]), 0.75);
    let assigned: f64 = parsed.samples_of("fleetml_split_devices").iter().map(|(_, _, value)| value).sum();
    assert_eq!(assigned, 3.0);

    // No drift source yet: the families are declared, empty.
    assert!(parsed.families.contains_key("fleetml_drift_value"));
    assert!(parsed.samples_of("fleetml_drift_value").is_empty());

    // The plane's counters keep their names.
    assert_eq!(parsed.value("fleetml_refused_messages_total", &[]), 3.0);
    assert_eq!(parsed.value("fleetml_chunks_published_total", &[]), 12.0);
    for name in ["fleetml_fetch_requests_total", "fleetml_chunk_bytes_published_total", "fleetml_desired_published_total"] {
        assert_eq!(parsed.value(name, &[]), 0.0, "{name}");
    }
    assert_eq!(parsed.families["fleetml_refused_messages_total"].kind.as_deref(), Some("counter"));

    // Counters only grow: another batch adds to them.
    store.insert_windows(&[window("d3", 2, &[100], 0)]).await.unwrap();
    let (_, _, text) = get_metrics(&core).await;
    assert_eq!(parse(&text).value("fleetml_inference_requests_total", &version("2")), 10.0);
}

#[tokio::test]
async fn an_empty_plane_renders_every_family_declared_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path()).await;
    let (status, _, text) = get_metrics(&core).await;
    assert_eq!(status, StatusCode::OK);
    let parsed = parse(&text);
    assert_eq!(parsed.value("fleetml_devices", &[]), 0.0);
    assert!(parsed.samples_of("fleetml_inference_latency_seconds").is_empty());
}

// ---------------------------------------------------------------- pure parts

#[test]
fn drift_gauges_render_per_feature_with_the_share_of_drifted_features() {
    let gauge = |version: i64, feature: &str, metric: &str, value: f64, drifted: bool| DriftGauge {
        model: "m".into(),
        version,
        feature: feature.into(),
        metric: metric.into(),
        value,
        threshold: 0.2,
        drifted,
    };
    let scrape = Scrape {
        drift_gauges: vec![
            gauge(1, "temp", "psi", 0.3, true),
            gauge(1, "temp", "ks", 0.1, false),
            gauge(1, "odd \"name\"\nwith \\", "psi", 0.05, false),
            gauge(1, "humidity", "psi", 0.01, false),
            gauge(2, "temp", "psi", 0.0, false),
        ],
        ..Scrape::default()
    };
    let parsed = parse(&render(&scrape, &PlaneCounters::default()).render());
    let labels = |feature: &'static str, metric: &'static str| [("model", "m"), ("version", "1"), ("feature", feature), ("metric", metric)];
    assert_eq!(parsed.value("fleetml_drift_value", &labels("temp", "psi")), 0.3);
    assert_eq!(parsed.value("fleetml_drift_threshold", &labels("temp", "ks")), 0.2);
    assert_eq!(parsed.value("fleetml_drift_drifted", &labels("temp", "psi")), 1.0);
    assert_eq!(parsed.value("fleetml_drift_drifted", &labels("odd \"name\"\nwith \\", "psi")), 0.0);
    // One of three features drifted on some statistic.
    assert_eq!(parsed.value("fleetml_drift_share_drifted", &[("model", "m"), ("version", "1")]), 1.0 / 3.0);
    assert_eq!(parsed.value("fleetml_drift_share_drifted", &[("model", "m"), ("version", "2")]), 0.0);
}

#[test]
fn latency_bounds_are_boundaries_of_the_device_histogram() {
    let bounds_us = latency_bounds_us();
    assert!(bounds_us.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!((bounds_us[0], bounds_us[bounds_us.len() - 1]), (64, 1 << 24));
    for bound_us in bounds_us {
        assert_eq!(bucket_lower_bound(bucket_of(bound_us)), bound_us, "{bound_us} µs starts a bucket");
    }
}

#[test]
fn slot_states_name_the_version_they_are_about() {
    #[track_caller]
    fn check(slot: ReportedSlot, expected: (&str, &str)) {
        let (version, state) = slot_state(&slot);
        assert_eq!((version.as_str(), state), expected);
    }
    check(ReportedSlot { active_version: Some(2), ..slot("m", ReportedPhase::Active) }, ("2", "active"));
    check(ReportedSlot { active_version: Some(2), target_version: Some(3), ..slot("m", ReportedPhase::Installing) }, ("3", "installing"));
    check(ReportedSlot { active_version: None, target_version: Some(3), ..slot("m", ReportedPhase::Failed) }, ("3", "failed"));
    check(slot("m", ReportedPhase::Idle), ("", "idle"));
}
