//! Runs the `tritonclient` (NVIDIA's Python client) compatibility suite in `clients/python/`
//! against the `nereid` binary built by this package, so that `cargo test --workspace` checks
//! protocol compatibility with the real client. The script installs its own virtualenv and
//! prints `SKIPPED: ...` (passing) only where no usable Python exists.

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
    // Shown with --nocapture, and always on failure.
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "tritonclient suite failed:\n{stdout}\n{stderr}"
    );
}
