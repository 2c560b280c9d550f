//! Runs the differential suite in `clients/python/differential/` (the same requests to a real
//! Triton 2.51 and to the `nereid` binary, serving the same identity models; their answers must
//! agree except for the listed differences) with the tritonclient suite's virtualenv. Triton
//! comes from the nvidia-pytriton wheel (`differential/triton.sh`); where it cannot be
//! installed, or Python is missing, the test skips saying why, or fails where the suite is
//! required (CI; see nereid-testkit).

use std::path::Path;
use std::process::Command;

#[test]
fn nereid_answers_as_triton_does() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let installer = Path::new(root).join("clients/python/differential/triton.sh");
    let triton = match nereid_testkit::run_installer(&installer) {
        Ok(dir) => dir,
        Err(reason) => {
            nereid_testkit::skip(&nereid_testkit::TRITON, reason);
            return;
        }
    };
    let output = Command::new("bash")
        .arg(format!("{root}/clients/python/run-tests.sh"))
        .env("NEREID_BIN", env!("CARGO_BIN_EXE_nereid"))
        .env("NEREID_PYTHON_TESTS", "clients/python/differential")
        .env("TRITON_SERVER_DIR", triton)
        .current_dir(root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        nereid_testkit::skip(&nereid_testkit::TRITON, stderr.trim());
        return;
    }
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "differential suite failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l.contains(" passed")),
        "differential suite ran no tests:\n{stdout}"
    );
}
