//! Test support shared by the workspace's suites: what a suite does when something it needs
//! from the machine (a Python interpreter to install a tool with, a browser, a GPU) is missing.
//!
//! Locally such a suite passes after printing `SKIPPED: <suite>: <reason>` straight to the
//! process's stderr, past the test harness's output capture, so the line shows in the plain
//! `cargo test` output and nobody mistakes a skip for a run. Where the environment says the
//! suite must run, the same call fails the test with the reason instead:
//! - `CI` set (to anything but `false`, `0` or nothing) requires every [`Kind::Tool`] suite:
//!   CI installs tools from the package registries, so a missing one is a broken CI machine.
//!   [`Kind::Hardware`] suites (GPU) are not required there: CI machines have no GPU.
//! - `NEREID_REQUIRE_SUITES=<id>[,<id>...]` (or `all`) requires the named suites anywhere,
//!   hardware ones included (`gpu` on a GPU machine).
//!
//! Installer scripts (`*/ci/*-venv.sh`) share one convention, which [`run_installer`] reads:
//! exit status 0 with the result on stdout; 3 when the machine lacks what installing needs
//! (Python, its venv module, pip), which is a skip; anything else is a failure.
#![forbid(unsafe_code)]

pub mod fuzz;

use std::fmt::Display;
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// What a suite needs that a machine may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tool installable from a package registry (PyPI, Debian): required in CI.
    Tool,
    /// Hardware (a GPU): required only where `NEREID_REQUIRE_SUITES` names it.
    Hardware,
}

/// A suite that depends on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suite {
    /// Its id in `NEREID_REQUIRE_SUITES`.
    pub id: &'static str,
    /// How it is named in the skip line.
    pub title: &'static str,
    pub kind: Kind,
}

/// NVIDIA's `tritonclient` (Python) against the `nereid` binary.
pub const TRITONCLIENT: Suite = Suite {
    id: "tritonclient",
    title: "tritonclient compatibility tests",
    kind: Kind::Tool,
};
/// Mirroring runs to a real MLflow tracking server (Python).
pub const MLFLOW: Suite = Suite {
    id: "mlflow",
    title: "MLflow mirroring",
    kind: Kind::Tool,
};
/// Compiling every kernel with NVRTC from its PyPI wheel.
pub const NVRTC: Suite = Suite {
    id: "nvrtc",
    title: "NVRTC compile check",
    kind: Kind::Tool,
};
/// Drift scores against Evidently and scipy (Python).
pub const EVIDENTLY: Suite = Suite {
    id: "evidently",
    title: "Evidently comparison",
    kind: Kind::Tool,
};
/// The drift page rendered by a headless Chromium.
pub const CHROMIUM: Suite = Suite {
    id: "chromium",
    title: "drift page in headless Chromium",
    kind: Kind::Tool,
};
/// Model repositories on S3, against moto's S3 server (Python).
pub const S3: Suite = Suite {
    id: "s3",
    title: "S3 model repository tests",
    kind: Kind::Tool,
};
/// ONNX models served through ONNX Runtime's library from its PyPI wheel (Python).
pub const ONNX_RUNTIME: Suite = Suite {
    id: "onnxruntime",
    title: "ONNX Runtime backend tests",
    kind: Kind::Tool,
};
/// NVIDIA's perf_analyzer (PyPI wheel, run in a Debian 13 root) against a server.
pub const PERF_ANALYZER: Suite = Suite {
    id: "perf_analyzer",
    title: "perf_analyzer tests",
    kind: Kind::Tool,
};
/// Real Triton (2.51, from the nvidia-pytriton wheel) answering the same requests as Nereid.
pub const TRITON: Suite = Suite {
    id: "triton",
    title: "differential tests against Triton",
    kind: Kind::Tool,
};
/// Prometheus and promtool (Debian's package) against the alert rules and a live server.
pub const PROMETHEUS: Suite = Suite {
    id: "prometheus",
    title: "Prometheus alert rules",
    kind: Kind::Tool,
};
/// Anything that needs a CUDA GPU.
pub const GPU: Suite = Suite {
    id: "gpu",
    title: "GPU tests",
    kind: Kind::Hardware,
};

/// Whether `suite` must run here, read from the environment (see the crate docs).
pub fn is_required(suite: &Suite) -> bool {
    required_by(
        std::env::var("CI").ok().as_deref(),
        std::env::var("NEREID_REQUIRE_SUITES").ok().as_deref(),
        suite,
    )
}

fn required_by(ci: Option<&str>, named: Option<&str>, suite: &Suite) -> bool {
    let in_ci = ci.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"));
    let listed = named.is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|id| id == "all" || id == suite.id)
    });
    listed || (in_ci && suite.kind == Kind::Tool)
}

/// `suite` cannot run here because of `reason`: prints the skip line past the harness's capture
/// and returns, or panics (failing the test) when the suite is required.
pub fn skip(suite: &Suite, reason: impl Display) {
    let line = format!("SKIPPED: {}: {reason}", suite.title);
    if is_required(suite) {
        panic!(
            "{line}\nthe suite '{}' is required here (CI is set, or NEREID_REQUIRE_SUITES names it), so a missing prerequisite fails it",
            suite.id
        );
    }
    // `eprintln!` would be captured by the test harness and shown only on failure.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs an installer script (see the crate docs) with bash: `Ok(trimmed stdout)`, `Err(reason
/// to skip)` for exit status 3; panics on any other failure, printing its stderr.
pub fn run_installer(script: &Path) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script)
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(3) => Err(stderr.trim().to_string()),
        _ => panic!("{} failed ({}):\n{stderr}", script.display(), out.status),
    }
}

/// Runs `clients/python/run-tests.sh` (the tritonclient virtualenv's pytest) under `root`, on
/// the test folder `tests` (the script's default when `None`), with `env` added: a skip when the
/// script says Python is missing (exit status 3, reported for `suite`), else a failure unless
/// pytest passed and ran something. Prints pytest's output (shown with --nocapture).
pub fn run_python_suite(
    root: &Path,
    suite: &Suite,
    tests: Option<&str>,
    env: &[(&str, &std::ffi::OsStr)],
) {
    let mut command = Command::new("bash");
    command
        .arg(root.join("clients/python/run-tests.sh"))
        .envs(env.iter().copied())
        .current_dir(root);
    if let Some(tests) = tests {
        command.env("NEREID_PYTHON_TESTS", tests);
    }
    let output = command.output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        skip(suite, stderr.trim());
        return;
    }
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        suite.title
    );
    // pytest's own summary ("42 passed, 1 skipped in 12.3s"): a run that collected nothing fails.
    assert!(
        stdout.lines().any(|l| l.contains(" passed")),
        "{} ran no tests:\n{stdout}",
        suite.title
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_requires_tools_but_not_hardware() {
        assert!(required_by(Some("true"), None, &MLFLOW));
        assert!(required_by(Some("1"), None, &TRITONCLIENT));
        assert!(!required_by(Some("true"), None, &GPU));
        assert!(!required_by(Some("false"), None, &MLFLOW));
        assert!(!required_by(Some(""), None, &MLFLOW));
        assert!(!required_by(None, None, &NVRTC));
    }

    #[test]
    fn named_suites_are_required_anywhere() {
        assert!(required_by(None, Some("gpu"), &GPU));
        assert!(required_by(None, Some("mlflow, nvrtc"), &NVRTC));
        assert!(!required_by(None, Some("mlflow"), &NVRTC));
        assert!(required_by(None, Some("all"), &GPU));
    }

    #[test]
    fn installer_exit_codes() {
        let dir = std::env::temp_dir().join(format!("nereid-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, body).expect("script");
            path
        };
        let ok = script("ok.sh", "echo /some/dir\n");
        assert_eq!(run_installer(&ok), Ok("/some/dir".to_string()));
        let missing = script("skip.sh", "echo 'python3 not found' >&2; exit 3\n");
        assert_eq!(
            run_installer(&missing),
            Err("python3 not found".to_string())
        );
        let broken = script("fail.sh", "echo 'no network' >&2; exit 1\n");
        let panicked = std::panic::catch_unwind(|| run_installer(&broken));
        assert!(panicked.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
