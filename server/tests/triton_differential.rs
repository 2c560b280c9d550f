//! Runs the differential suite in `clients/python/differential/` (the same requests to a real
//! Triton 2.51 and to the `nereid` binary, serving the same identity models; their answers must
//! agree except for the listed differences) with the tritonclient suite's virtualenv. Triton
//! comes from the nvidia-pytriton wheel (`differential/triton.sh`); where it cannot be
//! installed, or Python is missing, the test skips saying why, or fails where the suite is
//! required (CI; see nereid-testkit).

use std::path::Path;

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
    nereid_testkit::run_python_suite(
        Path::new(root),
        &nereid_testkit::TRITON,
        Some("clients/python/differential"),
        &[
            ("NEREID_BIN", env!("CARGO_BIN_EXE_nereid").as_ref()),
            ("TRITON_SERVER_DIR", triton.as_ref()),
        ],
    );
}
