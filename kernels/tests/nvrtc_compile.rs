//! CI check: every embedded kernel compiles with NVRTC. No GPU is needed, only the NVRTC
//! library, found in this order:
//! 1. the directories of `NEREID_CUDA_LIB_DIRS`;
//! 2. the loader path (a CUDA toolkit on `LD_LIBRARY_PATH` / in the ldconfig cache);
//! 3. `kernels/ci/nvrtc-venv.sh`, which installs the `nvidia-cuda-nvrtc` wheel into
//!    `kernels/.venv-nvrtc` and prints its library directory; the library is then loaded by
//!    absolute path (`load_cuda_libraries`), since a running test cannot change its loader path.
//!
//! A kernel that does not compile (or compiles with warnings, or lacks an entry point) fails the
//! test. The only skip, printed as `SKIPPED: NVRTC compile check: <reason>`, is a machine
//! without Python/pip to install the wheel with; under CI that fails too (nereid-testkit).

use std::path::PathBuf;
use std::sync::OnceLock;

use nereid_kernels::{
    compile, load_cuda_libraries, nvrtc_present, nvrtc_version, ptx_entry_points, CompileTarget,
    KernelError, KernelSource, KERNEL_SOURCES,
};

/// `Ok(description of where NVRTC came from)`, or `Err(reason to skip)`. Panics (fails the test)
/// when NVRTC should have been installable but was not.
fn setup() -> &'static Result<String, String> {
    static SETUP: OnceLock<Result<String, String>> = OnceLock::new();
    SETUP.get_or_init(|| {
        if nvrtc_present() {
            return Ok("NVRTC from NEREID_CUDA_LIB_DIRS or the loader path".into());
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/nvrtc-venv.sh");
        let dir = match nereid_testkit::run_installer(&script) {
            Ok(dir) => PathBuf::from(dir),
            Err(reason) => return Err(format!("no Python/pip to install NVRTC: {reason}")),
        };
        let loaded = load_cuda_libraries(std::slice::from_ref(&dir))
            .unwrap_or_else(|e| panic!("loading NVRTC from {}: {e}", dir.display()));
        assert!(
            nvrtc_present(),
            "loaded {loaded:?} from {} but cudarc still cannot find NVRTC",
            dir.display()
        );
        Ok(format!("NVRTC wheel in {}", dir.display()))
    })
}

/// Runs `f` when NVRTC is available, else skips (or fails where the suite is required).
fn with_nvrtc(f: impl FnOnce()) {
    match setup() {
        Ok(how) => {
            let (major, minor) = nvrtc_version().expect("nvrtcVersion");
            println!("NVRTC {major}.{minor} ({how})");
            f();
        }
        Err(reason) => nereid_testkit::skip(&nereid_testkit::NVRTC, reason),
    }
}

/// Targets CI compiles for: portable PTX (what the entry points are checked in) and the H100's
/// machine code (what `Gpu` loads there).
fn targets() -> [CompileTarget; 2] {
    [
        CompileTarget::Ptx("compute_75".into()),
        CompileTarget::Cubin("sm_90".into()),
    ]
}

#[test]
fn every_kernel_compiles_with_nvrtc_without_warnings() {
    with_nvrtc(|| {
        let mut failures = Vec::new();
        for target in targets() {
            for src in &KERNEL_SOURCES {
                match compile(src, &target) {
                    Ok(m) => {
                        assert!(!m.image.is_empty(), "{} {target}: empty image", src.name);
                        if m.log.contains("warning") {
                            failures.push(format!("{} {target}: warnings:\n{}", src.name, m.log));
                        }
                        if let Some(ptx) = m.ptx() {
                            let entries = ptx_entry_points(ptx);
                            for want in src.entry_points {
                                if !entries.iter().any(|e| e == want) {
                                    failures.push(format!(
                                        "{} {target}: entry point {want} missing (has {entries:?})",
                                        src.name
                                    ));
                                }
                            }
                        }
                        println!(
                            "compiled {} for {target}: {} bytes",
                            src.name,
                            m.image.len()
                        );
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    });
}

#[test]
fn a_kernel_with_a_compile_error_is_reported_with_the_compiler_log() {
    with_nvrtc(|| {
        let broken = KernelSource {
            name: "broken.cu",
            source: "extern \"C\" __global__ void broken(float* y /* [n] */) {\n  y[0] = undefined_name;\n}\n",
            entry_points: &["broken"],
        };
        let err = compile(&broken, &CompileTarget::Ptx("compute_75".into()))
            .expect_err("an undefined identifier must not compile");
        match &err {
            KernelError::Compile { module, log, .. } => {
                assert_eq!(*module, "broken.cu");
                assert!(log.contains("undefined_name"), "log: {log}");
                assert!(
                    log.contains("broken.cu(2)"),
                    "log points at the file and line: {log}"
                );
            }
            other => panic!("expected a compile error, got {other}"),
        }
    });
}
