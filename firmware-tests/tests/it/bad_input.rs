//! Bad input from the network, disk or user: a clear error, and the previous good state
//! keeps working.

use std::process::Command;

use fleetml_firmware_tests::{
    Agent, AgentOptions, MqttProbe, Plane, PlaneOptions, TIMEOUT, binary, demo_models, features_request, fixture, test_dir, wait_for,
};
use fleetml_shared::bundle::SignedManifest;
use fleetml_shared::protocol::{self, DesiredSlot, DesiredTarget, RollbackPermission, SignedDesiredState, SlotRole};
use fleetml_shared::signing::{SigningKeyPair, TrustedKeys};
use fleetml_shared::topics::Topics;
use serde_json::json;

async fn serves(agent: &Agent, version: &str) {
    let (status, answer) = agent.infer("classifier", &features_request(&[[0.5; 4]])).await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some(version)), "{answer}");
}

/// The desired state the plane retains for the device, decoded.
async fn retained_desired(probe: &mut MqttProbe, topic: &str, key_pair: &SigningKeyPair) -> (Vec<u8>, DesiredSlot) {
    probe.subscribe(topic).await;
    let payload = probe.next_on(topic).await;
    let signed: SignedDesiredState = protocol::decode(&payload).unwrap();
    let slot = signed.verify(&TrustedKeys::new(vec![key_pair.public_key()])).unwrap();
    probe.client.unsubscribe(topic).await.unwrap();
    (payload, slot)
}

fn manifest_of(slot: &DesiredSlot) -> SignedManifest {
    match &slot.target {
        DesiredTarget::Bundle { manifest, .. } => manifest.clone(),
        DesiredTarget::Empty => panic!("no bundle in {slot:?}"),
    }
}

fn forged(
    device_id: &str,
    generation: u64,
    manifest: SignedManifest,
    rollback: Option<RollbackPermission>,
    key_pair: &SigningKeyPair,
) -> Vec<u8> {
    let slot = DesiredSlot {
        device_id: device_id.into(),
        model: "classifier".into(),
        generation,
        issued_at_ms: fleetml_shared::now_ms(),
        target: DesiredTarget::Bundle { manifest, role: SlotRole::Active, rollback },
    };
    protocol::encode(&SignedDesiredState::sign(&slot, key_pair))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_forged_tampered_expired_and_downgrade_desired_states_are_refused_while_v2_serves() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let agent = Agent::start(&plane, "edge-1", AgentOptions::default()).await;
    let key_pair = plane.signing_key_pair();
    let topic = Topics::new(&plane.topic_root).desired("edge-1", "classifier");
    let mut probe = MqttProbe::connect(&plane.mqtt_url).await;
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    plane.deploy("classifier", v1, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v1).await;
    let (generation_1_payload, generation_1) = retained_desired(&mut probe, &topic, &key_pair).await;
    plane.deploy("classifier", v2, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v2).await;
    let v1_manifest = manifest_of(&generation_1);

    // Replay of an older, genuinely signed desired state.
    probe.publish(&topic, false, generation_1_payload).await;
    let refusal = wait_for("the replay to be refused", TIMEOUT, || async {
        plane.device("edge-1").await?.last_refusal.filter(|text| text.contains("replay"))
    })
    .await;
    assert!(refusal.contains("generation 1"), "{refusal}");
    serves(&agent, "2").await;

    // A desired state signed by a key the device does not trust.
    let stranger = SigningKeyPair::generate().unwrap();
    probe.publish(&topic, false, forged("edge-1", 10, v1_manifest.clone(), None, &stranger)).await;
    wait_for("the foreign signature to be refused", TIMEOUT, || async {
        plane.device("edge-1").await?.last_refusal.filter(|text| text.contains("not among the trusted keys"))
    })
    .await;

    // Well-signed desired states carrying bad bundles: each refused with its own kind.
    let mut flipped = v1_manifest.clone();
    flipped.body[10] ^= 0x01;
    let foreign_manifest = {
        let manifest = v1_manifest.decode_unverified().unwrap();
        SignedManifest::sign(&manifest, &stranger).unwrap()
    };
    let expired_manifest = {
        let mut manifest = v1_manifest.decode_unverified().unwrap();
        manifest.expires_at_ms = Some(1_000);
        SignedManifest::sign(&manifest, &key_pair).unwrap()
    };
    let cases = [
        (11, flipped, None, "signature"),
        (12, foreign_manifest, None, "signature"),
        (13, expired_manifest, Some(RollbackPermission { up_to_version: 2 }), "expired"),
        (14, v1_manifest.clone(), None, "rollback_not_permitted"),
    ];
    for (generation, manifest, rollback, kind) in cases {
        probe.publish(&topic, false, forged("edge-1", generation, manifest, rollback, &key_pair)).await;
        let result = wait_for(&format!("generation {generation} to be refused"), TIMEOUT, || async {
            plane.slot("edge-1", "classifier").await?.last_result.filter(|result| result.generation == generation)
        })
        .await;
        assert!(!result.ok);
        assert_eq!(result.kind.as_deref(), Some(kind), "generation {generation}: {:?}", result.reason);
        serves(&agent, "2").await;
    }

    // With the permission, going back to v1 works, from the bundle the device still holds.
    let fetches_before = plane.status().await["fetch_requests"].as_u64().unwrap();
    probe.publish(&topic, false, forged("edge-1", 15, v1_manifest, Some(RollbackPermission { up_to_version: 2 }), &key_pair)).await;
    plane.wait_active("edge-1", "classifier", v1).await;
    serves(&agent, "1").await;
    assert_eq!(plane.status().await["fetch_requests"].as_u64().unwrap(), fetches_before, "a held bundle is not fetched again");

    // The plane goes above the generation the device reports, so its next deploy is accepted.
    plane.deploy("classifier", v2, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_subscribed_topic_is_counted_and_nothing_breaks() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let agent = Agent::start(&plane, "edge-1", AgentOptions::default()).await;
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    plane.deploy("classifier", v1, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v1).await;
    let digest = plane.get("/api/v1/models/classifier/versions/1").await.1["digest"].as_str().unwrap().to_string();

    let topics = Topics::new(&plane.topic_root);
    let probe = MqttProbe::connect(&plane.mqtt_url).await;
    let garbage: Vec<Vec<u8>> = vec![vec![], vec![0xff; 3], vec![1, 0xff, 0xff, 0xff], vec![2, 0, 0], b"{\"json\": true}".to_vec()];
    let plane_topics = [topics.reported("edge-1"), topics.telemetry("edge-1"), topics.fetch("edge-1"), topics.reported("ghost")];
    let agent_topics = [topics.desired("edge-1", "classifier"), topics.desired("edge-1", "other-model")];
    for payload in &garbage {
        for topic in plane_topics.iter().chain(&agent_topics) {
            probe.publish(topic, false, payload.clone()).await;
        }
        // Nobody listens on a finished transfer's chunk topic; garbage there must harm nothing.
        probe.publish(&topics.chunks(&digest), false, payload.clone()).await;
    }
    let n_garbage = garbage.len() as u64;
    wait_for("the plane to count the garbage", TIMEOUT, || async {
        (plane.status().await["refused_messages"].as_u64()? >= n_garbage * plane_topics.len() as u64).then_some(())
    })
    .await;
    wait_for("the agent to count the garbage", TIMEOUT, || async {
        (plane.device("edge-1").await?.refused_messages as u64 >= n_garbage * agent_topics.len() as u64).then_some(())
    })
    .await;
    serves(&agent, "1").await;
    assert!(plane.device("edge-1").await.unwrap().online, "garbage on its reported topic does not mark the device offline");
    assert!(plane.device("ghost").await.is_none(), "garbage creates no device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_self_test_is_reported_and_the_previous_model_keeps_serving() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let good = Agent::start(&plane, "good", AgentOptions { labels: vec![("fleet".into(), "t".into())], ..AgentOptions::default() }).await;
    let failing = Agent::start(
        &plane,
        "failing",
        AgentOptions {
            labels: vec![("fleet".into(), "t".into())],
            extra_args: vec!["--testing-fail-self-test".into(), "classifier@2".into()],
        },
    )
    .await;
    let (v1_onnx, v2_onnx) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    let v2 = plane.push_ok("classifier", v2_onnx).await;
    plane.deploy("classifier", v1, ("selector", "fleet=t")).await;
    plane.wait_active("failing", "classifier", v1).await;
    plane.deploy("classifier", v2, ("selector", "fleet=t")).await;
    plane.wait_active("good", "classifier", v2).await;
    let result = plane.wait_refused("failing", "classifier", v2).await;
    assert_eq!(result.kind.as_deref(), Some("self_test"));
    assert!(result.reason.unwrap().contains("self-test failed"));
    let slot = plane.slot("failing", "classifier").await.unwrap();
    assert_eq!((slot.phase.as_str(), slot.active_version), ("failed", Some(1)));
    serves(&failing, "1").await;
    serves(&good, "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_cannot_serve_are_refused_at_push_and_bad_requests_get_clear_errors() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let (status, answer) = plane.push("iris", std::fs::read(fixture("broken_zipmap.onnx")).unwrap()).await;
    assert_eq!(status, 422, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("tract cannot load this model") && message.contains("ZipMap"), "{message}");
    let (status, answer) = plane.push("iris", b"not a model at all".to_vec()).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("not an ONNX model"), "{answer}");
    assert_eq!(plane.push("iris", Vec::new()).await.0, 400);
    assert_eq!(plane.push("bad/name", b"x".to_vec()).await.0, 404, "a slash is not part of a model name route");
    assert_eq!(plane.get("/api/v1/models/iris/versions").await.1, json!([]), "nothing was registered");
    let unauthenticated = reqwest::get(format!("{}/api/v1/devices", plane.api)).await.unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);

    let agent = Agent::start(&plane, "edge-1", AgentOptions::default()).await;
    let (v1_onnx, _) = demo_models();
    let v1 = plane.push_ok("classifier", v1_onnx).await;
    plane.deploy("classifier", v1, ("device", "edge-1")).await;
    plane.wait_active("edge-1", "classifier", v1).await;
    let cases = [
        (json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}), 400, "shape"),
        (json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}), 400, "needs 4"),
        (json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}), 400, "datatype"),
        (json!({"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}), 400, "unknown input"),
        (json!({"inputs": []}), 400, "missing input"),
        (json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ["a", 2, 3, 4]}]}), 400, "not a valid"),
        (json!({"nothing": true}), 400, "not a valid"),
    ];
    for (body, status, part) in cases {
        let (got_status, answer) = agent.infer("classifier", &body).await;
        assert_eq!(got_status, status, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(part), "{body}: {answer}");
    }
    let (status, answer) = agent.infer("missing-model", &features_request(&[[0.0; 4]])).await;
    assert_eq!(status, 404, "{answer}");
    serves(&agent, "1").await;
}

#[test]
fn bundle_tools_refuse_a_flipped_byte_a_foreign_key_and_garbage() {
    let dir = test_dir();
    let keys = dir.path().join("keys");
    let other_keys = dir.path().join("other");
    let fleetml = binary("fleetml");
    for out in [&keys, &other_keys] {
        assert!(Command::new(&fleetml).args(["keys", "generate", "--out"]).arg(out).status().unwrap().success());
    }
    let (onnx, _) = demo_models();
    let onnx_path = dir.path().join("model.onnx");
    std::fs::write(&onnx_path, onnx).unwrap();
    let bundle_path = dir.path().join("model.bundle");
    let build = Command::new(&fleetml)
        .args(["bundle", "build", "--model", "classifier", "--version", "7", "--onnx"])
        .arg(&onnx_path)
        .arg("--signing-key")
        .arg(keys.join("signing.key"))
        .arg("--out")
        .arg(&bundle_path)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let verify = |path: &std::path::Path, key: &std::path::Path| {
        let output = Command::new(&fleetml).args(["bundle", "verify"]).arg(path).arg("--trusted-key").arg(key).output().unwrap();
        (output.status.code(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    };
    let (code, text) = verify(&bundle_path, &keys.join("signing.pub"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("valid bundle of classifier@7"), "{text}");

    let bytes = std::fs::read(&bundle_path).unwrap();
    let flipped_payload = dir.path().join("flipped-payload.bundle");
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    std::fs::write(&flipped_payload, &tampered).unwrap();
    let (code, text) = verify(&flipped_payload, &keys.join("signing.pub"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not match the manifest"), "{text}");

    let flipped_manifest = dir.path().join("flipped-manifest.bundle");
    let mut tampered = bytes.clone();
    tampered[40] ^= 0x01;
    std::fs::write(&flipped_manifest, &tampered).unwrap();
    let (code, text) = verify(&flipped_manifest, &keys.join("signing.pub"));
    assert_eq!(code, Some(1), "{text}");

    let (code, text) = verify(&bundle_path, &other_keys.join("signing.pub"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not among the trusted keys"), "{text}");

    let garbage = dir.path().join("garbage.bundle");
    std::fs::write(&garbage, b"hello").unwrap();
    let (code, text) = verify(&garbage, &keys.join("signing.pub"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not a fleetml bundle"), "{text}");

    let inspect = Command::new(&fleetml).args(["bundle", "inspect"]).arg(&bundle_path).output().unwrap();
    assert!(inspect.status.success());
    let manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!((manifest["model"].as_str(), manifest["version"].as_u64()), (Some("classifier"), Some(7)));
    assert_eq!(manifest["inputs"][0]["name"], "features");
}
