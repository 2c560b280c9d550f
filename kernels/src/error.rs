//! The crate's one error type. Every fallible operation, CPU reference or GPU launch, returns
//! [`KernelError`]; nothing in this crate panics on a missing driver, library or device, or on
//! inputs of the wrong shape.

use std::path::PathBuf;

/// Everything that can go wrong in `nereid-kernels`.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The CUDA driver library could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver found (libcuda.so could not be loaded)")]
    NoDriver,

    /// The driver loaded but has no device with this ordinal.
    #[error("no CUDA device {ordinal} ({count} device(s) present)")]
    NoDevice { ordinal: usize, count: usize },

    /// NVRTC (the runtime compiler for the kernels) could not be loaded.
    #[error(
        "NVRTC not found (libnvrtc.so could not be loaded): install the CUDA toolkit or the \
         nvidia-cuda-nvrtc wheel and put its lib directory on LD_LIBRARY_PATH or in \
         NEREID_CUDA_LIB_DIRS"
    )]
    NoNvrtc,

    /// cuBLAS (used for GEMMs) could not be loaded.
    #[error(
        "cuBLAS not found (libcublas.so could not be loaded): install the CUDA toolkit or the \
         nvidia-cublas wheel and put its lib directory on LD_LIBRARY_PATH or in \
         NEREID_CUDA_LIB_DIRS"
    )]
    NoCublas,

    /// cuBLASLt (used for GEMMs with a fused epilogue, `Epilogue::CublasLt`) could not be loaded.
    #[error(
        "cuBLASLt not found (libcublasLt.so could not be loaded): install the CUDA toolkit or the \
         nvidia-cublas wheel and put its lib directory on LD_LIBRARY_PATH or in \
         NEREID_CUDA_LIB_DIRS"
    )]
    NoCublasLt,

    /// A library named by `NEREID_CUDA_LIB_DIRS` (or passed to `load_cuda_libraries`) failed to load.
    #[error("could not load {path}: {message}")]
    LibraryLoad { path: PathBuf, message: String },

    /// A CUDA driver call failed (context creation, allocation, copy, module load, launch...).
    #[error("CUDA driver error in {op}: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A cuBLAS call failed.
    #[error("cuBLAS error in {op}: {source}")]
    Cublas {
        op: &'static str,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },

    /// A cuBLASLt call failed.
    #[error("cuBLASLt error in {op}: {message}")]
    CublasLt { op: &'static str, message: String },

    /// NVRTC rejected a kernel source; `log` is the compiler's output.
    #[error("NVRTC failed to compile {module} for {target}: {status}\n{log}")]
    Compile {
        module: &'static str,
        target: String,
        status: String,
        log: String,
    },

    /// Another NVRTC call failed.
    #[error("NVRTC error in {op}: {message}")]
    Nvrtc { op: &'static str, message: String },

    /// Buffer lengths do not match the shape the caller gave.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// An argument is outside what the operation accepts (unsorted histogram edges, a dimension
    /// too large for a kernel's 32-bit index, ...).
    #[error("{op}: {detail}")]
    InvalidArgument { op: &'static str, detail: String },

    /// A CUDA binding panicked (for example a symbol missing from an old driver); caught and
    /// turned into an error so that callers never see a panic.
    #[error("CUDA binding failed in {op}: {message}")]
    Binding { op: &'static str, message: String },
}

impl KernelError {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        KernelError::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        KernelError::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }

    /// True when the error means "this machine has no usable GPU" (no driver, no device), as
    /// opposed to a failure on a GPU that exists. Tests and the server use it to decide whether
    /// to skip or fall back to the CPU.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            KernelError::NoDriver | KernelError::NoDevice { .. } | KernelError::NoNvrtc
        )
    }
}
