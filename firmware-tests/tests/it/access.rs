//! Who may do what, through the real CLI and plane: tokens with roles are made, refused where
//! their role does not reach, revoked and rotated; every change of a rollout scenario is in the
//! audit log with who asked, from where, and how it ended.

use fleetml_firmware_tests::{Plane, PlaneOptions, Sim, TIMEOUT, demo_models, test_dir, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

fn created_token(output: (i32, String, String)) -> String {
    let (code, stdout, stderr) = output;
    assert_eq!(code, 0, "{stderr}");
    stdout.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_beyond_their_role_revoked_rotated_and_every_change_is_audited() {
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let admin = plane.token.clone();
    let _sim = Sim::start(&plane, 3, "acl-", &["--label", "fleet=acl"]).await;
    plane.wait_online(3).await;

    let viewer = created_token(plane.cli(&admin, &["tokens", "create", "--role", "viewer", "--name", "dashboard"]));
    let operator =
        created_token(plane.cli(&admin, &["tokens", "create", "--role", "operator", "--name", "release-bot", "--expires", "1d"]));

    // The viewer reads, and may not change anything.
    assert_eq!(plane.request_as(&viewer, Method::GET, "/api/v1/devices", None).await.0, 200);
    let model = dir.path().join("v1.onnx");
    std::fs::write(&model, demo_models().0).unwrap();
    let (code, _, stderr) = plane.cli(&viewer, &["model", "push", "classifier", model.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("token `dashboard` (viewer) may not model.push"), "{stderr}");
    let (code, _, stderr) = plane.cli(&viewer, &["tokens", "create", "--role", "admin"]);
    assert!(code != 0 && stderr.contains("may not token.create"), "{stderr}");

    // The operator changes the fleet, and may not make tokens.
    let (code, _, stderr) = plane.cli(&operator, &["model", "push", "classifier", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = plane.cli(&operator, &["model", "alias", "classifier", "champion", "1"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        plane.cli(&operator, &["deploy", "classifier@champion", "--selector", "fleet=acl", "--wait", "--timeout-s", "60"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = plane.cli(&operator, &["tokens", "list"]);
    assert!(code != 0 && stderr.contains("may not token.list"), "{stderr}");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[target]\nselector = \"fleet=acl\"\n[[waves]]\nsize = 1\nbake_seconds = 600\n[[waves]]\nsize = \"100%\"\n")
        .unwrap();
    let (code, stdout, stderr) =
        plane.cli(&operator, &["rollout", "start", "classifier@1", "--policy", policy.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let rollout_id = serde_json::from_str::<Value>(&stdout).unwrap()["id"].as_i64().unwrap();
    for action in ["pause", "resume", "abort"] {
        let (code, _, stderr) = plane.cli(&operator, &["rollout", action, &rollout_id.to_string()]);
        assert_eq!(code, 0, "{action}: {stderr}");
    }

    // Revoked: refused at once. Rotated: the old admin token stops working.
    let tokens: Value = serde_json::from_str(&plane.cli(&admin, &["tokens", "list", "--json"]).1).unwrap();
    let bot_id = tokens.as_array().unwrap().iter().find(|token| token["name"] == "release-bot").unwrap()["id"].as_i64().unwrap();
    assert!(tokens.as_array().unwrap().iter().all(|token| token.get("token").is_none()), "listing never shows values");
    let (code, _, stderr) = plane.cli(&admin, &["tokens", "revoke", &bot_id.to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let (status, refusal) = plane.request_as(&operator, Method::GET, "/api/v1/devices", None).await;
    assert_eq!((status, refusal["message"].as_str()), (401, Some("token `release-bot` was revoked")));
    let new_admin = created_token(plane.cli(&admin, &["tokens", "rotate-admin"]));
    assert_ne!(new_admin, admin);
    assert_eq!(plane.request_as(&admin, Method::GET, "/api/v1/status", None).await.0, 401, "the old admin token is gone");
    assert_eq!(plane.request_as(&new_admin, Method::GET, "/api/v1/status", None).await.0, 200);
    let on_disk = std::fs::read_to_string(plane.dir.join("plane").join("admin.token")).unwrap();
    assert_eq!(on_disk.trim(), new_admin, "the data folder holds the new token");

    // The audit log: who, what, from where, how it ended.
    let (code, stdout, stderr) = plane.cli(&new_admin, &["audit", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let entries: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let find = |action: &str, by: &str, outcome: &str| {
        entries.iter().find(|entry| entry["action"] == action && entry["token_name"] == by && entry["outcome"] == outcome).cloned()
    };
    for (action, by) in [
        ("token.create", "admin (configured)"),
        ("model.push", "release-bot"),
        ("alias.set", "release-bot"),
        ("deploy", "release-bot"),
        ("rollout.start", "release-bot"),
        ("token.revoke", "admin (configured)"),
        ("token.rotate_admin", "admin (configured)"),
    ] {
        let entry = find(action, by, "ok").unwrap_or_else(|| panic!("no {action} by {by} in {entries:#?}"));
        assert_eq!(entry["address"], "127.0.0.1", "{entry}");
        assert!(entry["status"].as_i64().unwrap() < 300, "{entry}");
    }
    let actions: Vec<&str> =
        entries.iter().filter(|entry| entry["action"] == "rollout.action").filter_map(|entry| entry["target"].as_str()).collect();
    assert_eq!(
        actions,
        [
            format!("/api/v1/rollouts/{rollout_id}/pause"),
            format!("/api/v1/rollouts/{rollout_id}/resume"),
            format!("/api/v1/rollouts/{rollout_id}/abort")
        ]
    );
    let deploy = find("deploy", "release-bot", "ok").unwrap();
    assert_eq!(deploy["detail"]["selector"], "fleet=acl", "{deploy}");
    let refused = find("model.push", "dashboard", "refused").expect("the viewer's refused push is logged");
    assert_eq!(refused["status"], 403);
    assert!(find("token.list", "release-bot", "refused").is_some());
    let after_revocation = entries.iter().any(|entry| entry["token_name"] == "release-bot" && entry["status"] == 401);
    assert!(!after_revocation, "reads are not audited, so the revoked read leaves no entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_configured_admin_token_ends_the_old_one_and_a_rotated_one_is_not_taken_back() {
    let dir = test_dir();
    let mut plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let first = plane.token.clone();
    let second = format!("second-admin-token-{:08x}", fastrand::u32(..));
    plane.restart_with_admin_token(&second).await;
    wait_for("the restarted plane", TIMEOUT, || async {
        (plane.request_as(&second, Method::GET, "/api/v1/status", None).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(plane.request_as(&first, Method::GET, "/api/v1/status", None).await.0, 401, "the earlier admin token ended");
    // Rotated away, then configured again: it stays revoked.
    let rotated: Value = plane.request_as(&second, Method::POST, "/api/v1/tokens/rotate-admin", Some(&json!({}))).await.1;
    let third = rotated["token"].as_str().unwrap().to_string();
    plane.restart_with_admin_token(&second).await;
    assert_eq!(plane.request_as(&second, Method::GET, "/api/v1/status", None).await.0, 401, "a rotated token is not taken back");
    assert_eq!(plane.request_as(&third, Method::GET, "/api/v1/status", None).await.0, 200);
}
