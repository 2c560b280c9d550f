//! Finding the CUDA libraries at run time.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` lazily by *bare* file names
//! (`libnvrtc.so`, `libnvrtc.so.13`, `libnvrtc.so.12`, ...) through the dynamic loader, so normally
//! `LD_LIBRARY_PATH` / the ldconfig cache decide. A process cannot change its own loader path
//! after it started, so for libraries that sit elsewhere (the `nvidia-cuda-nvrtc` wheel in a
//! virtualenv, PyTorch's bundled cuBLAS) [`load_cuda_libraries`] opens them first by absolute
//! path: glibc then answers cudarc's later bare-name `dlopen` with the already-loaded library
//! whose SONAME matches. The directories can also come from the `NEREID_CUDA_LIB_DIRS`
//! environment variable (colon-separated), which every [`crate::Gpu`] and NVRTC entry point
//! honours once per process.
//!
//! Presence checks ([`driver_present`], ...) let callers return a typed error instead of hitting
//! cudarc's panic for a missing library; [`guard`] turns any remaining binding panic (a symbol
//! missing from an old driver) into [`KernelError::Binding`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::KernelError;

/// Environment variable naming directories (colon-separated) whose NVRTC and cuBLAS libraries
/// are loaded by absolute path before cudarc looks for them.
pub const LIB_DIRS_ENV: &str = "NEREID_CUDA_LIB_DIRS";

/// Library families loaded from a directory, in dependency order (NVRTC loads its builtins
/// library by SONAME at compile time; cuBLAS needs cuBLASLt).
const FAMILIES: [&str; 4] = ["libnvrtc-builtins", "libnvrtc", "libcublasLt", "libcublas"];

/// Libraries opened by absolute path; kept for the life of the process (never unloaded, so the
/// symbols cudarc resolved from them stay valid).
static LOADED: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());

struct Loaded {
    family: &'static str,
    _lib: libloading::Library,
}

/// For each library family, the file in `dir` to load: `<family>.so` or `<family>.so.<digits...>`
/// (the shortest such name, normally the SONAME link), skipping NVIDIA's `.alt.` variants.
fn pick(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut picked = Vec::new();
    for family in FAMILIES {
        let prefix = format!("{family}.so");
        let best = names
            .iter()
            .filter(|n| {
                n.strip_prefix(&prefix).is_some_and(|rest| {
                    rest.is_empty()
                        || (rest.starts_with('.')
                            && rest[1..].chars().all(|c| c.is_ascii_digit() || c == '.'))
                })
            })
            .min_by_key(|n| (n.len(), n.to_string()));
        if let Some(name) = best {
            picked.push((family, dir.join(name)));
        }
    }
    picked
}

/// Opens, by absolute path, the NVRTC and cuBLAS libraries found in `dirs` (files named
/// `libnvrtc-builtins.so.*`, `libnvrtc.so.*`, `libcublasLt.so.*`, `libcublas.so.*`), so that
/// cudarc finds them even though they are not on the loader path. Earlier directories win: a
/// library family already loaded (by this or an earlier call) is skipped. Returns the files
/// loaded by this call. Directories that do not exist or hold none of these files are ignored.
///
/// Only libraries whose SONAME is one cudarc asks for are found this way: with this crate's
/// CUDA 13 bindings that is `lib*.so`, `lib*.so.13`, `lib*.so.12`, `lib*.so.11`.
pub fn load_cuda_libraries(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, KernelError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let mut new = Vec::new();
    for dir in dirs {
        for (family, path) in pick(dir) {
            // The first directory that has a library wins; a second copy of the same library
            // would only shadow or be shadowed by the first.
            if loaded.iter().any(|l| l.family == family) {
                continue;
            }
            // SAFETY: loading a shared library runs its initialisers. These are NVIDIA's NVRTC
            // and cuBLAS libraries, picked by their exact file names; their initialisers only set
            // up internal state. The handle is kept in `LOADED` for the life of the process, so
            // nothing resolved from it is ever unloaded.
            let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
                KernelError::LibraryLoad {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            loaded.push(Loaded { family, _lib: lib });
            new.push(path);
        }
    }
    Ok(new)
}

/// The directories named by `NEREID_CUDA_LIB_DIRS`, if set.
pub fn lib_dirs_from_env() -> Vec<PathBuf> {
    std::env::var_os(LIB_DIRS_ENV)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Loads the libraries of `NEREID_CUDA_LIB_DIRS` once per process; later calls return the first
/// call's outcome.
pub(crate) fn load_env_libraries() -> Result<(), KernelError> {
    static ONCE: OnceLock<Result<(), (PathBuf, String)>> = OnceLock::new();
    let outcome = ONCE.get_or_init(|| {
        load_cuda_libraries(&lib_dirs_from_env())
            .map(|_| ())
            .map_err(|e| match e {
                KernelError::LibraryLoad { path, message } => (path, message),
                other => (PathBuf::new(), other.to_string()),
            })
    });
    outcome
        .clone()
        .map_err(|(path, message)| KernelError::LibraryLoad { path, message })
}

/// Runs `f`, turning a panic inside the CUDA bindings into [`KernelError::Binding`].
pub(crate) fn guard<T>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, KernelError>,
) -> Result<T, KernelError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(KernelError::Binding { op, message })
        }
    }
}

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on cudarc's candidate names for libcuda and
    // drops the handles; loading the NVIDIA driver library has no other side effect.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded (after `NEREID_CUDA_LIB_DIRS` has been honoured).
pub fn nvrtc_present() -> bool {
    if load_env_libraries().is_err() {
        return false;
    }
    // SAFETY: as for `driver_present`, for cudarc's NVRTC candidates.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded (after `NEREID_CUDA_LIB_DIRS` has been honoured).
pub fn cublas_present() -> bool {
    if load_env_libraries().is_err() {
        return false;
    }
    // SAFETY: as for `driver_present`, for cudarc's cuBLAS candidates.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_soname_files_and_skips_alt_variants() {
        let dir = std::env::temp_dir().join(format!("nereid-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "libnvrtc.so.13",
            "libnvrtc.so.13.0.88",
            "libnvrtc.alt.so.13",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc-builtins.alt.so.13.0",
            "libcublas.so.13",
            "libcublasLt.so.13",
            "libcublas.so.13.bak",
            "nvrtc.h",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let picked: Vec<String> = pick(&dir)
            .iter()
            .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            picked,
            [
                "libnvrtc-builtins.so.13.0",
                "libnvrtc.so.13",
                "libcublasLt.so.13",
                "libcublas.so.13"
            ]
        );
        assert!(pick(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guard_turns_panics_into_errors() {
        let e = guard::<()>("test", || panic!("symbol cuFoo not found")).unwrap_err();
        assert!(e.to_string().contains("symbol cuFoo not found"), "{e}");
        assert_eq!(guard("test", || Ok(3)).unwrap(), 3);
    }
}
