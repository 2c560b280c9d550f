//! Runs the `tritonclient` (NVIDIA's Python client) compatibility suite in `clients/python/`
//! against the `nereid` binary built by this package, so that `cargo test --workspace` checks
//! protocol compatibility with the real client. The script installs its own virtualenv; where
//! no usable Python 3.11+ exists it exits 3 and this test skips, saying why, or fails where the
//! suite is required (CI; see nereid-testkit).

use std::path::Path;

#[test]
fn tritonclient_suite_passes() {
    nereid_testkit::run_python_suite(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        &nereid_testkit::TRITONCLIENT,
        None,
        &[("NEREID_BIN", env!("CARGO_BIN_EXE_nereid").as_ref())],
    );
}
