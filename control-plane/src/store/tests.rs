//! One suite, run on SQLite and on PostgreSQL. PostgreSQL comes from FLEETML_TEST_POSTGRES_URL
//! (default postgres://postgres@127.0.0.1:5432/test); each test gets a fresh database. Outside
//! CI a missing server skips the PostgreSQL half with a message; with CI=true it fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetml_shared::histogram::HistogramSnapshot;
use fleetml_shared::selector::Selector;
use sqlx::Connection;

use super::*;
use crate::experiments::split::{SplitState, SplitVariant};
use crate::rollout::{MemberState, RolloutState};

fn postgres_admin_url() -> String {
    std::env::var("FLEETML_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL database, or `None` (outside CI) when no server answers.
pub async fn fresh_postgres_url() -> Option<String> {
    let admin_url = postgres_admin_url();
    let mut connection = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(connection) => connection,
        Err(error) => {
            if std::env::var("CI").is_ok_and(|value| value == "true") {
                panic!("CI=true but PostgreSQL at {admin_url} is not reachable: {error}");
            }
            eprintln!("SKIPPED the PostgreSQL half: no server at {admin_url} ({error})");
            return None;
        }
    };
    let name = format!("fleetml_test_{:016x}", fastrand::u64(..));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut connection).await.expect("create database");
    let base = admin_url.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap_or(admin_url);
    Some(format!("{base}/{name}"))
}

async fn stores() -> Vec<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("test.db").display());
    let mut stores: Vec<(Arc<dyn Store>, tempfile::TempDir)> = vec![(open(&sqlite_url).await.unwrap(), dir)];
    if let Some(url) = fresh_postgres_url().await {
        stores.push((open(&url).await.unwrap(), tempfile::tempdir().unwrap()));
    }
    stores
}

fn update(device_id: &str, labels: &[(&str, &str)], at_ms: i64) -> ReportedUpdate {
    ReportedUpdate {
        device_id: device_id.into(),
        labels: labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect::<BTreeMap<_, _>>(),
        agent_version: "0.1.0".into(),
        slots: Vec::new(),
        last_refusal: None,
        at_ms,
    }
}

fn version(model: &str, number: i64) -> (ModelVersionRecord, BundleRecord) {
    let digest = format!("{model}-{number}-digest");
    (
        ModelVersionRecord {
            model: model.into(),
            version: number,
            digest: digest.clone(),
            created_ms: 10 * number,
            description: format!("v{number}"),
            schema_json: "{}".into(),
            onnx_sha256: "00".into(),
            onnx_bytes: 100,
            bundle_bytes: 200,
            source: "mlflow-artifacts:/1/run/artifacts/model".into(),
            run_id: "run".into(),
        },
        BundleRecord { digest, model: model.into(), version: number, signed_manifest: vec![1, 2, 3, number as u8] },
    )
}

#[tokio::test]
async fn devices_report_change_labels_and_go_offline() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        assert_eq!(store.apply_reported(&update("d1", &[("site", "a")], 1)).await.unwrap(), DeviceChange::New, "{backend}");
        assert_eq!(store.apply_reported(&update("d1", &[("site", "a")], 2)).await.unwrap(), DeviceChange::Unchanged, "{backend}");
        assert_eq!(store.apply_reported(&update("d1", &[("site", "b")], 3)).await.unwrap(), DeviceChange::Relabelled, "{backend}");
        store.mark_offline("d1", 4).await.unwrap();
        let vitals =
            DeviceVitals { cpu_percent: 12.5, memory_used_bytes: 1 << 40, uptime_s: 9, last_heartbeat_ms: 5, ..DeviceVitals::default() };
        store.record_vitals("d1", &vitals).await.unwrap();
        let device = store.get_device("d1").await.unwrap().unwrap();
        assert!(!device.online, "{backend}");
        assert_eq!((device.first_seen_ms, device.last_seen_ms), (1, 5), "{backend}");
        assert_eq!(device.labels.get("site").map(String::as_str), Some("b"), "{backend}");
        assert_eq!(device.vitals, vitals, "{backend}");
        assert!(store.get_device("nobody").await.unwrap().is_none());
        store.apply_reported(&update("d0", &[], 6)).await.unwrap();
        let ids: Vec<String> = store.list_devices().await.unwrap().into_iter().map(|device| device.device_id).collect();
        assert_eq!(ids, ["d0", "d1"], "{backend}");
    }
}

#[tokio::test]
async fn reported_slots_come_back_typed() {
    use crate::reported::{InstallVerdict, LastInstall, ReportedPhase, ReportedSlot};
    use fleetml_shared::protocol::FailureKind;
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let slots = vec![
            ReportedSlot {
                model: "m".into(),
                generation: 4,
                phase: ReportedPhase::Fetching { received_bytes: Some(10), total_bytes: Some(30), attempts: Some(2) },
                active_version: Some(1),
                previous_version: None,
                target_version: Some(2),
                last_result: Some(LastInstall {
                    version: 2,
                    generation: 3,
                    at_ms: 7,
                    verdict: InstallVerdict::Refused { kind: FailureKind::Integrity, reason: "chunk 3".into() },
                }),
            },
            ReportedSlot {
                model: "m@shadow".into(),
                generation: 1,
                phase: ReportedPhase::Active,
                active_version: Some(5),
                previous_version: Some(4),
                target_version: None,
                last_result: Some(LastInstall {
                    version: 5,
                    generation: 1,
                    at_ms: 8,
                    verdict: InstallVerdict::Installed { self_test_ms: Some(0.5) },
                }),
            },
        ];
        store.apply_reported(&ReportedUpdate { slots: slots.clone(), ..update("d1", &[], 1) }).await.unwrap();
        assert_eq!(store.get_device("d1").await.unwrap().unwrap().slots, slots, "{backend}");
    }
}

#[tokio::test]
async fn versions_are_unique_per_model_and_aliases_resolve() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        assert_eq!(store.latest_version("m").await.unwrap(), None, "{backend}");
        for number in [1, 2] {
            let (record, bundle) = version("m", number);
            store.insert_version(&record, Some(&bundle)).await.unwrap();
        }
        let (duplicate, bundle) = version("m", 2);
        assert!(matches!(store.insert_version(&duplicate, Some(&bundle)).await, Err(StoreError::Conflict(_))), "{backend}");
        assert_eq!(store.latest_version("m").await.unwrap(), Some(2), "{backend}");
        assert_eq!(store.get_version("m", 1).await.unwrap().unwrap(), version("m", 1).0, "{backend}");
        assert_eq!(store.get_bundle("m-2-digest").await.unwrap().unwrap().signed_manifest, vec![1, 2, 3, 2], "{backend}");
        store.set_alias("m", "champion", 1, 5).await.unwrap();
        store.set_alias("m", "champion", 2, 6).await.unwrap();
        assert_eq!(store.resolve_alias("m", "champion").await.unwrap(), Some(2), "{backend}");
        assert_eq!(store.resolve_alias("m", "nobody").await.unwrap(), None, "{backend}");
        assert_eq!(store.list_aliases("m").await.unwrap(), vec![("champion".to_string(), 2)], "{backend}");
        assert_eq!(store.list_versions(None).await.unwrap().len(), 2, "{backend}");
    }
}

#[tokio::test]
async fn deployments_desired_states_windows_and_tokens_round_trip() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let (record, bundle) = version("m", 1);
        store.insert_version(&record, Some(&bundle)).await.unwrap();
        let selector = DeploymentTarget::Selector(Selector::parse("site in (a,b),!gpu").unwrap());
        let first = store.insert_deployment("m", 1, &selector, 1).await.unwrap();
        let second = store.insert_deployment("m", 1, &DeploymentTarget::Device("d1".into()), 2).await.unwrap();
        assert!(second > first, "{backend}");
        let deployments = store.list_deployments().await.unwrap();
        assert_eq!(
            deployments.iter().map(|deployment| deployment.target.clone()).collect::<Vec<_>>(),
            [selector, DeploymentTarget::Device("d1".into())]
        );

        let mut desired = DesiredRecord {
            device_id: "d1".into(),
            model: "m".into(),
            generation: 1,
            version: Some(1),
            digest: Some("m-1-digest".into()),
            deployment_id: Some(first),
            payload: vec![9; 300],
            updated_ms: 3,
        };
        store.put_desired(&desired).await.unwrap();
        desired.generation = 2;
        desired.version = None;
        store.put_desired(&desired).await.unwrap();
        assert_eq!(store.get_desired("d1", "m").await.unwrap().unwrap(), desired, "{backend}");
        assert_eq!(store.list_desired().await.unwrap().len(), 1, "{backend}");

        let window = |end: i64, device: &str| InferenceWindow {
            device_id: device.into(),
            model: "m".into(),
            version: 1,
            window_end_ms: end,
            window_ms: 1000,
            requests: 10,
            errors: 1,
            latency_us: HistogramSnapshot { buckets: vec![(3, 7), (90, 3)] },
        };
        store.insert_windows(&[window(100, "d1"), window(200, "d2"), window(300, "d1")]).await.unwrap();
        let since = store.windows_since("m", Some(1), 150).await.unwrap();
        assert_eq!(since, vec![window(200, "d2"), window(300, "d1")], "{backend}");
        assert!(store.windows_since("m", Some(2), 0).await.unwrap().is_empty());
        assert_eq!(store.windows_since("m", None, 0).await.unwrap().len(), 3);
    }
}

#[tokio::test]
async fn tokens_are_found_by_hash_revoked_once_and_the_audit_log_reads_back_in_order() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        assert!(store.list_tokens().await.unwrap().is_empty(), "{backend}");
        let token = TokenRecord {
            id: 0,
            token_sha256: "abc".into(),
            name: "ci".into(),
            role: "operator".into(),
            scopes: "tracking".into(),
            bootstrap: false,
            created_ms: 1,
            created_by: "admin".into(),
            expires_ms: Some(99),
            revoked_ms: None,
            last_used_ms: None,
        };
        let id = store.insert_token(&token).await.unwrap();
        assert!(matches!(store.insert_token(&token).await, Err(StoreError::Conflict(_))), "{backend}: the same value twice");
        assert_eq!(store.token_by_hash("abc").await.unwrap(), Some(TokenRecord { id, ..token.clone() }), "{backend}");
        assert_eq!(store.token_by_hash("abd").await.unwrap(), None);
        store.token_used(id, 5).await.unwrap();
        store.revoke_token(id, 7).await.unwrap();
        store.revoke_token(id, 8).await.unwrap();
        let stored = store.get_token(id).await.unwrap().unwrap();
        assert_eq!((stored.revoked_ms, stored.last_used_ms), (Some(7), Some(5)), "{backend}: the first revocation stands");
        store.set_token_bootstrap(id).await.unwrap();
        assert!(store.list_tokens().await.unwrap()[0].bootstrap, "{backend}");

        let entry = |at_ms: i64, action: &str| AuditRecord {
            id: 0,
            at_ms,
            token_id: Some(id),
            token_name: "ci".into(),
            address: "127.0.0.1".into(),
            action: action.into(),
            target: "/api/v1/deployments".into(),
            detail: "{}".into(),
            outcome: "ok".into(),
            status: 201,
        };
        for (at_ms, action) in [(10, "deploy"), (20, "rollout.start"), (30, "alias.set")] {
            store.insert_audit(&entry(at_ms, action)).await.unwrap();
        }
        let since: Vec<String> = store.audit_since(20, 10).await.unwrap().into_iter().map(|entry| entry.action).collect();
        assert_eq!(since, ["rollout.start", "alias.set"], "{backend}");
        assert_eq!(store.audit_since(0, 1).await.unwrap().len(), 1, "{backend}");
    }
}

#[tokio::test]
async fn unsupported_database_urls_are_refused() {
    assert!(matches!(open("mysql://localhost/x").await, Err(StoreError::UnsupportedUrl(_))));
}

#[tokio::test]
async fn runs_log_batches_atomically_and_keep_a_long_metric_history() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let experiment_id = store.create_experiment("exp", None, &[("team".into(), "a".into())], 1).await.unwrap();
        assert!(matches!(store.create_experiment("exp", None, &[], 2).await, Err(StoreError::Conflict(_))), "{backend}");
        let experiment = store.get_experiment_by_name("exp").await.unwrap().unwrap();
        assert_eq!(experiment.artifact_location, format!("mlflow-artifacts:/{experiment_id}"), "{backend}");
        assert_eq!(store.get_experiment(0).await.unwrap().unwrap().name, "Default", "{backend}");
        let run = RunRecord {
            run_id: "r1".into(),
            experiment_id,
            run_name: "first".into(),
            user_id: "me".into(),
            status: RunStatus::Running,
            start_time: 10,
            end_time: None,
            lifecycle_stage: "active".into(),
            artifact_uri: "mlflow-artifacts:/1/r1/artifacts".into(),
            params: vec![],
            tags: vec![("mlflow.runName".into(), "first".into())],
            latest_metrics: vec![],
        };
        store.create_run(&run).await.unwrap();
        let points: Vec<MetricPoint> = (0..100_000)
            .map(|step| MetricPoint { key: "loss".into(), value: 1.0 / (step + 1) as f64, timestamp: 1_000 + step, step })
            .collect();
        for batch in points.chunks(1000) {
            store.log_batch("r1", batch, &[], &[]).await.unwrap();
        }
        store
            .log_batch(
                "r1",
                &[MetricPoint { key: "odd".into(), value: f64::NAN, timestamp: 5, step: 0 }],
                &[("lr".into(), "0.1".into())],
                &[],
            )
            .await
            .unwrap();
        // A batch with a conflicting parameter stores nothing at all.
        let conflicting = store
            .log_batch(
                "r1",
                &[MetricPoint { key: "extra".into(), value: 1.0, timestamp: 6, step: 0 }],
                &[("lr".into(), "0.2".into())],
                &[("t".into(), "v".into())],
            )
            .await;
        assert!(matches!(conflicting, Err(StoreError::Invalid(_))), "{backend}");
        let history = store.metric_history("r1", "loss").await.unwrap();
        assert_eq!(history.len(), 100_000, "{backend}");
        assert_eq!(history[99_999].step, 99_999);
        let stored = store.get_run("r1").await.unwrap().unwrap();
        assert_eq!(stored.params, vec![("lr".to_string(), "0.1".to_string())], "{backend}");
        assert!(stored.latest_metrics.iter().all(|metric| metric.key != "extra"), "{backend}: the failed batch left nothing");
        assert!(stored.tags.iter().all(|(key, _)| key != "t"), "{backend}");
        let loss = stored.latest_metrics.iter().find(|metric| metric.key == "loss").unwrap();
        assert_eq!((loss.step, loss.value), (99_999, 1.0 / 100_000.0), "{backend}");
        assert!(stored.latest_metrics.iter().find(|metric| metric.key == "odd").unwrap().value.is_nan(), "{backend}");
        store.update_run("r1", &RunUpdate { status: Some(RunStatus::Finished), end_time: Some(99), run_name: None }).await.unwrap();
        assert_eq!(store.get_run("r1").await.unwrap().unwrap().status, RunStatus::Finished);
        assert!(matches!(store.log_batch("nope", &[], &[], &[]).await, Err(StoreError::NotFound(_))), "{backend}");
        assert_eq!(store.list_runs(&[experiment_id]).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn inference_totals_add_up_every_batch_per_version() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        assert!(store.inference_totals().await.unwrap().is_empty(), "{backend}");
        let window = |device: &str, version: i64, requests: i64, buckets: Vec<(u16, u64)>| InferenceWindow {
            device_id: device.into(),
            model: "m".into(),
            version,
            window_end_ms: 1,
            window_ms: 1000,
            requests,
            errors: 1,
            latency_us: HistogramSnapshot { buckets },
        };
        store.insert_windows(&[window("d1", 1, 10, vec![(3, 7), (90, 3)]), window("d2", 1, 5, vec![(90, 5)])]).await.unwrap();
        store.insert_windows(&[window("d1", 1, 2, vec![(4, 2)]), window("d1", 2, 4, vec![(100, 4)])]).await.unwrap();
        let totals = store.inference_totals().await.unwrap();
        assert_eq!(
            totals,
            vec![
                InferenceTotals {
                    model: "m".into(),
                    version: 1,
                    requests: 17,
                    errors: 3,
                    latency_us: HistogramSnapshot { buckets: vec![(3, 7), (4, 2), (90, 8)] },
                },
                InferenceTotals {
                    model: "m".into(),
                    version: 2,
                    requests: 4,
                    errors: 1,
                    latency_us: HistogramSnapshot { buckets: vec![(100, 4)] },
                },
            ],
            "{backend}"
        );
    }
}

/// A sum that overflows i64 turned SQLite's running total into a REAL (every later read of
/// it failed, so `/metrics` answered 500 for good) and aborted the batch on PostgreSQL.
#[tokio::test]
async fn inference_totals_saturate_at_i64_max_and_stay_readable() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let window = |requests: i64, observations: u64| InferenceWindow {
            device_id: "d1".into(),
            model: "m".into(),
            version: 1,
            window_end_ms: 1,
            window_ms: 1000,
            requests,
            errors: requests,
            latency_us: HistogramSnapshot { buckets: vec![(3, observations)] },
        };
        store.insert_windows(&[window(5, 5)]).await.unwrap();
        store.insert_windows(&[window(i64::MAX, u64::MAX)]).await.unwrap();
        store.insert_windows(&[window(i64::MAX - 1, 1 << 62), window(7, 7)]).await.unwrap();
        let totals = store.inference_totals().await.unwrap();
        assert_eq!(totals.len(), 1, "{backend}");
        assert_eq!((totals[0].requests, totals[0].errors), (i64::MAX, i64::MAX), "{backend}");
        assert_eq!(totals[0].latency_us.buckets, vec![(3, i64::MAX as u64)], "{backend}");
        // A negative count (the store is not the place that checks them) adds nothing.
        store.insert_windows(&[window(-5, 0)]).await.unwrap();
        assert_eq!(store.inference_totals().await.unwrap()[0].requests, i64::MAX, "{backend}");
    }
}

#[tokio::test]
async fn rollout_devices_are_counted_per_state_and_splits_listed() {
    for (store, _dir) in stores().await {
        let backend = store.backend();
        let rollout = RolloutRecord {
            id: 0,
            model: "m".into(),
            version: 2,
            policy: crate::rollout::policy::PolicyDocument::parse(r#"{"target": {"devices": ["d1"]}, "waves": [{"size": 1}]}"#).unwrap(),
            state: RolloutState::Running,
            current_wave: 0,
            wave_started_ms: 1,
            created_by: "admin".into(),
            created_ms: 1,
            updated_ms: 1,
        };
        let member = |device_id: &str, state: MemberState| RolloutDeviceRecord {
            device_id: device_id.into(),
            wave: 0,
            state,
            reason: String::new(),
            from_version: Some(1),
            updated_ms: 1,
        };
        let (healthy, pending, failed) = (MemberState::Healthy, MemberState::Pending, MemberState::Failed);
        let first = store.create_rollout(&rollout, &[member("d1", healthy), member("d2", pending), member("d3", healthy)]).await.unwrap();
        let second = store.create_rollout(&rollout, &[member("d4", failed)]).await.unwrap();
        store.update_rollout(second, RolloutState::Paused, 0, 1, 2).await.unwrap();
        let ended = store.create_rollout(&rollout, &[member("d5", healthy)]).await.unwrap();
        store.update_rollout(ended, RolloutState::Completed, 0, 1, 5).await.unwrap();
        let count = |rollout_id: i64, state: MemberState, n_devices: i64| RolloutDeviceCount { rollout_id, state, n_devices };
        // Running and paused rollouts whatever their age; ended ones only when changed since.
        assert_eq!(
            store.rollout_device_counts(6).await.unwrap(),
            vec![count(first, healthy, 2), count(first, pending, 1), count(second, failed, 1)],
            "{backend}"
        );
        assert_eq!(store.rollout_device_counts(5).await.unwrap().last(), Some(&count(ended, healthy, 1)), "{backend}");
        let stored = store.get_rollout(first).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.policy.clone()), (RolloutState::Running, rollout.policy.clone()), "{backend}");

        assert!(store.list_splits().await.unwrap().is_empty(), "{backend}");
        let split = |model: &str| SplitRecord {
            id: 0,
            model: model.into(),
            selector: Selector::parse("site=a").unwrap(),
            variants: vec![SplitVariant { version: 1, weight: 0.5 }, SplitVariant { version: 2, weight: 0.5 }],
            created_ms: 5,
            state: SplitState::Running,
        };
        let a = store.create_split(&split("a")).await.unwrap();
        let b = store.create_split(&split("b")).await.unwrap();
        let listed = store.list_splits().await.unwrap();
        assert_eq!(listed.iter().map(|split| (split.id, split.model.as_str())).collect::<Vec<_>>(), [(a, "a"), (b, "b")], "{backend}");
        assert_eq!(listed[0], SplitRecord { id: a, ..split("a") }, "{backend}");
        store.update_split_state(a, SplitState::Promoted).await.unwrap();
        assert_eq!(store.get_split(a).await.unwrap().map(|split| split.state), Some(SplitState::Promoted), "{backend}");
    }
}
