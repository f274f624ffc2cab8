//! The official MLflow Python client against the plane: tracking, artifacts, the registry
//! and aliases (firmware-tests/mlflow/e2e.py), the error codes it branches on (errors.py),
//! then `deploy NAME@champion` to an agent whose answers must match onnxruntime's.
//!
//! The client comes from FLEETML_MLFLOW_PYTHON (a Python with firmware-tests/mlflow/
//! requirements.txt installed; .ci/run makes one). Without it the test skips, except under CI.

use std::path::PathBuf;
use std::process::Command;

use fleetml_firmware_tests::{Agent, AgentOptions, Plane, PlaneOptions, ci, test_dir};
use serde_json::{Value, json};

fn mlflow_python() -> Option<PathBuf> {
    match std::env::var("FLEETML_MLFLOW_PYTHON") {
        Ok(path) if PathBuf::from(&path).exists() => Some(PathBuf::from(path)),
        _ if ci() => panic!("CI=true but FLEETML_MLFLOW_PYTHON does not name a Python with the MLflow client"),
        _ => {
            eprintln!("SKIPPED: set FLEETML_MLFLOW_PYTHON to a Python with firmware-tests/mlflow/requirements.txt installed");
            None
        }
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mlflow").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mlflow_client_logs_registers_and_its_champion_deploys_and_answers_like_onnxruntime() {
    let Some(python) = mlflow_python() else { return };
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let agent = Agent::start(&plane, "edge-1", AgentOptions::default()).await;
    // The data scientist's token: the MLflow API only (issue 16's `tracking` scope).
    let (code, stdout, stderr) =
        plane.cli(&plane.token, &["tokens", "create", "--role", "operator", "--scope", "tracking", "--name", "notebook"]);
    assert_eq!(code, 0, "{stderr}");
    let tracking_token = stdout.trim().to_string();
    let out = dir.path().join("e2e-out");
    let run = |name: &str, extra: &[&str]| {
        let output = Command::new(&python)
            .arg(script(name))
            .args(extra)
            .env("MLFLOW_TRACKING_URI", &plane.api)
            .env("MLFLOW_TRACKING_TOKEN", &tracking_token)
            .env("FLEETML_EXPECT_AUTH", "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{name} failed:\n{text}");
        text
    };
    run("e2e.py", &[out.to_str().unwrap()]);
    run("errors.py", &[]);

    let result: Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let model = result["model"].as_str().unwrap();
    // What the tracking token registered, it cannot deploy.
    let deploy = json!({ "model": model, "alias": "champion", "device": "edge-1" });
    let (status, refusal) = plane.request_as(&tracking_token, reqwest::Method::POST, "/api/v1/deployments", Some(&deploy)).await;
    assert_eq!(status, 403, "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("scoped to tracking"), "{refusal}");
    let answer = plane.deploy_alias(model, "champion", ("device", "edge-1")).await;
    let version = answer["version"].as_i64().unwrap();
    assert_eq!(version, result["version"].as_i64().unwrap(), "the alias names the version the client registered");
    plane.wait_active("edge-1", model, version).await;

    let rows = result["inputs"].as_array().unwrap();
    let data: Vec<f64> = rows.iter().flat_map(|row| row.as_array().unwrap().iter().map(|value| value.as_f64().unwrap())).collect();
    let request = json!({ "inputs": [{ "name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": data }] });
    let (status, answer) = agent.infer(model, &request).await;
    assert_eq!(status, 200, "{answer}");
    let outputs = answer["outputs"].as_array().unwrap();
    let labels = outputs.iter().find(|output| output["name"] == "label").unwrap();
    assert_eq!(labels["data"], result["onnxruntime_labels"]);
    let probabilities = outputs.iter().find(|output| output["name"] == "probabilities").unwrap();
    let expected: Vec<f64> = result["onnxruntime_probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|value| value.as_f64().unwrap()))
        .collect();
    for (got, want) in probabilities["data"].as_array().unwrap().iter().zip(&expected) {
        assert!((got.as_f64().unwrap() - want).abs() <= 1e-5, "tract {got} vs onnxruntime {want}");
    }

    // The same runs through the native CLI: list, show, compare.
    let fleetml = |args: &[&str]| -> Value {
        let output = Command::new(fleetml_firmware_tests::binary("fleetml"))
            .args(args)
            .args(["--json", "--server", &plane.api, "--token", &plane.token])
            .output()
            .unwrap();
        assert!(output.status.success(), "fleetml {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let runs = fleetml(&["runs", "list", "--order-by", "attributes.start_time DESC"]);
    let run_ids: Vec<&str> = runs.as_array().unwrap().iter().map(|run| run["run_id"].as_str().unwrap()).collect();
    let e2e_run = result["run_id"].as_str().unwrap();
    assert!(run_ids.contains(&e2e_run), "{run_ids:?}");
    let shown = fleetml(&["runs", "show", e2e_run]);
    assert!(shown["metrics"]["accuracy"]["value"].as_f64().unwrap() > 0.9, "{shown}");
    let other = run_ids.iter().find(|id| **id != e2e_run).unwrap();
    let comparison = fleetml(&["runs", "compare", e2e_run, other]);
    assert_eq!(comparison["runs"].as_array().unwrap().len(), 2);
    assert_eq!(comparison["metrics"]["accuracy"].as_array().unwrap().len(), 2, "{comparison}");

    // The registry history shows the alias and the deployment.
    let (_, version_view) = plane.get(&format!("/api/v1/models/{model}/versions/{version}")).await;
    let kinds: Vec<&str> = version_view["history"].as_array().unwrap().iter().map(|event| event["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"registered") && kinds.contains(&"alias") && kinds.contains(&"deployed"), "{kinds:?}");
}
