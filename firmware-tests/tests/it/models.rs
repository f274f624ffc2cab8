//! Real models: scikit-learn exports (skl2onnx, ZipMap off, unnamed batch dimension) and
//! small MLP/CNN/INT64 graphs push, install side by side on one device (one slot each) and
//! answer like onnxruntime at any batch size. The expected outputs were recorded with
//! onnxruntime by fixtures/make_models.py.

use fleetml_firmware_tests::{Agent, AgentOptions, Plane, PlaneOptions, fixture, test_dir};
use serde_json::{Value, json};

const FIXTURES: [&str; 5] = ["logreg_iris", "mlp_digits", "mlp_regressor", "cnn_small", "int64_embed"];
const TOLERANCE: f64 = 1e-5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_models_serve_every_batch_size_like_onnxruntime() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let agent = Agent::start(&plane, "edge-1", AgentOptions::default()).await;
    for name in FIXTURES {
        let model = name.replace('_', "-");
        let version = plane.push_ok(&model, std::fs::read(fixture(&format!("{name}.onnx"))).unwrap()).await;
        plane.deploy(&model, version, ("device", "edge-1")).await;
    }
    for name in FIXTURES {
        let model = name.replace('_', "-");
        plane.wait_active("edge-1", &model, 1).await;
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap()).unwrap();
        for case in expected["cases"].as_array().unwrap() {
            let batch = case["batch"].as_u64().unwrap();
            let inputs: Vec<Value> = expected["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|input| {
                    let mut shape = vec![json!(batch)];
                    shape.extend(input["shape"].as_array().unwrap().iter().cloned());
                    json!({ "name": input["name"], "datatype": input["datatype"], "shape": shape, "data": case["inputs"][input["name"].as_str().unwrap()] })
                })
                .collect();
            let (status, answer) = agent.infer(&model, &json!({ "inputs": inputs })).await;
            assert_eq!(status, 200, "{model} batch {batch}: {answer}");
            for (output_name, want) in case["outputs"].as_object().unwrap() {
                let got = answer["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|output| output["name"] == *output_name)
                    .unwrap_or_else(|| panic!("{model}: no output {output_name} in {answer}"));
                assert_eq!(got["shape"], want["shape"], "{model} batch {batch} {output_name}");
                assert_eq!(got["datatype"], want["datatype"], "{model} batch {batch} {output_name}: the declared ONNX type");
                let got_data = got["data"].as_array().unwrap();
                let want_data = want["data"].as_array().unwrap();
                assert_eq!(got_data.len(), want_data.len());
                for (element_idx, (got_value, want_value)) in got_data.iter().zip(want_data).enumerate() {
                    let (got_value, want_value) = (got_value.as_f64().unwrap(), want_value.as_f64().unwrap());
                    assert!(
                        (got_value - want_value).abs() <= TOLERANCE,
                        "{model} batch {batch} {output_name}[{element_idx}]: tract {got_value}, onnxruntime {want_value}"
                    );
                }
            }
        }
    }
}
