//! Runs the `tritonclient` (NVIDIA's Python client) compatibility suite in `clients/python/`
//! against the `nereid` binary built by this package, so that `cargo test --workspace` checks
//! protocol compatibility with the real client. The script installs its own virtualenv; where
//! no usable Python 3.11+ exists it exits 3 and this test skips, saying why, or fails where the
//! suite is required (CI; see nereid-testkit).

use std::process::Command;

#[test]
fn tritonclient_suite_passes() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new("bash")
        .arg(format!("{root}/clients/python/run-tests.sh"))
        .env("NEREID_BIN", env!("CARGO_BIN_EXE_nereid"))
        .current_dir(root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        nereid_testkit::skip(&nereid_testkit::TRITONCLIENT, stderr.trim());
        return;
    }
    // Shown with --nocapture, and always on failure.
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "tritonclient suite failed:\n{stdout}\n{stderr}"
    );
    // pytest's own summary ("42 passed, 1 skipped in 12.3s"): a run that collected nothing fails.
    assert!(
        stdout.lines().any(|l| l.contains(" passed")),
        "tritonclient suite ran no tests:\n{stdout}"
    );
}
