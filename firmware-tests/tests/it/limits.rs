//! What the plane spends on large requests: pushes stream to disk while they arrive and only
//! one at a time holds its model in memory, so several large pushes at once cost about one.

use fleetml_firmware_tests::{Plane, PlaneOptions, test_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_large_pushes_at_once_cost_about_one_in_memory() {
    const BODY_BYTES: usize = 96 * 1024 * 1024;
    let dir = test_dir();
    let plane = Plane::start(dir.path(), PlaneOptions::default()).await;
    let baseline = plane.process.peak_rss_bytes();
    // Not ONNX: each is refused once its turn comes, after it arrived in full.
    let body = vec![0x2au8; BODY_BYTES];
    let pushes = (0..3).map(|idx| {
        let body = body.clone();
        let plane = &plane;
        async move { plane.push(&format!("big-{idx}"), body).await }
    });
    let answers = futures_util::future::join_all(pushes).await;
    drop(body);
    for (status, answer) in &answers {
        assert_eq!(*status, 422, "{answer}");
        assert!(answer["message"].as_str().unwrap_or_default().contains("not an ONNX model"), "{answer}");
    }
    let peak = plane.process.peak_rss_bytes();
    let spent = peak.saturating_sub(baseline);
    // Before: each body in memory as it arrived, copied again before its check: 3 × 2 × 96 MB.
    assert!(spent < 3 * BODY_BYTES as u64, "three {} MB pushes raised the plane's peak memory by {} MB", BODY_BYTES >> 20, spent >> 20);
    eprintln!("three {} MB pushes at once: peak RSS {} MB above the start's", BODY_BYTES >> 20, spent >> 20);
    let uploads = std::fs::read_dir(plane.dir.join("plane").join("uploads")).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(uploads, 0, "no upload is left on disk");
}
