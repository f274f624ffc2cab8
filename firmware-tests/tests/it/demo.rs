//! The README's first command: `fleetml demo --once` runs the whole spine and exits 0, beside
//! whatever else listens on 1883 and 8080.

use std::process::Command;

use fleetml_firmware_tests::binary;

#[test]
fn the_demo_converges_twice_serves_and_exits_zero() {
    let output = Command::new(binary("fleetml")).args(["demo", "--once", "--devices", "6", "--requests", "60"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("6 devices online"), "{stdout}");
    for version in [1, 2] {
        assert!(stdout.contains(&format!("fleet converged on v{version} in")), "{stdout}");
        assert!(stdout.contains(&format!("pushed machine-state version {version}")), "{stdout}");
    }
    assert_eq!(stdout.matches("6 installed, 0 failed, 0 pending").count(), 2, "{stdout}");
    assert!(stdout.contains("60 inference requests over 6 devices"), "{stdout}");
    assert!(stdout.contains("API http://127.0.0.1:") && stdout.contains("broker mqtt://127.0.0.1:"), "{stdout}");
    // v2 (an MLP) answers better than v1 (softmax regression) on the same held-out data.
    let correct: Vec<f64> = stdout
        .lines()
        .filter(|line| line.contains("% correct"))
        .filter_map(|line| line.rsplit("; ").next()?.split('%').next()?.parse().ok())
        .collect();
    assert_eq!(correct.len(), 2, "{stdout}");
    assert!(correct[1] > correct[0] + 10.0, "v2 {} vs v1 {}", correct[1], correct[0]);
}
