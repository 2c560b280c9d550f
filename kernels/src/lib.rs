//! `nereid-kernels`: Nereid's custom CUDA kernels, its cuBLAS GEMMs, and the CPU reference
//! implementation of every kernel.
//!
//! What the crate owns:
//! - the CUDA C sources (`src/cuda/*.cu`, embedded with `include_str!`, listed in
//!   [`KERNEL_SOURCES`]): fused bias + activation over a GEMM output (f32, f16), row-wise
//!   softmax and top-k, per-feature standardisation, per-feature histogram counts;
//! - their CPU references ([`cpu`]), which define the semantics and serve as the test oracle;
//! - the device side ([`Gpu`], [`Linear`]): NVRTC compilation at first use, cached per process
//!   and architecture, modules loaded per device, safe wrappers that check shapes, lengths and
//!   launch errors, cuBLAS GEMMs and cuBLASLt GEMMs with a fused bias/ReLU epilogue
//!   ([`Epilogue`]), a stream per handle ([`Gpu::new_stream`]) and pinned host buffers
//!   ([`PinnedBuffer`]);
//! - GPU utilisation and memory through NVML ([`nvml`]), for metrics.
//!
//! Data flow on the GPU: host slices -> [`Gpu::upload`] -> device buffers (`CudaSlice<T>`) ->
//! kernels / GEMMs queued in order on the device's stream -> [`Gpu::download`]. The first use
//! of a kernel compiles its source with NVRTC for the device's architecture (CUBIN); later uses
//! and other handles reuse it.
//!
//! Everything CUDA is loaded at run time through cudarc (`dynamic-loading`): building needs no
//! CUDA toolkit, and on a machine without a driver, device, or NVRTC, [`Gpu::new`] returns a
//! [`KernelError`] ([`KernelError::is_unavailable`]) instead of panicking. NVRTC and cuBLAS are
//! found on the loader path or in the directories of `NEREID_CUDA_LIB_DIRS` (see
//! [`load_cuda_libraries`]).
//!
//! All `unsafe` code is in the `gpu` and `nvml` modules; the CPU references forbid it.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cpu;
mod error;
#[allow(unsafe_code)]
mod gpu;
/// GPU utilisation and memory through NVML, for the server's `nv_gpu_*` metrics.
#[allow(unsafe_code)]
pub mod nvml;
mod op;
mod source;
#[doc(hidden)]
pub mod testing;

pub use error::KernelError;
pub use gpu::libs::{
    cublas_present, driver_present, lib_dirs_from_env, load_cuda_libraries, nvrtc_present,
    LIB_DIRS_ENV,
};
pub use gpu::lt::cublaslt_present;
pub use gpu::nvrtc::{
    compile, compile_all, nvrtc_version, ptx_entry_points, CompileTarget, CompiledModule,
    NVRTC_OPTIONS,
};
pub use gpu::{
    DeviceHistogramEdges, DeviceTopK, Epilogue, Gpu, GpuFloat, Linear, PinnedBuffer, PinnedPurpose,
};
pub use op::{Activation, HistogramEdges, TopK};
pub use source::{KernelSource, KERNEL_SOURCES, PRELUDE};

/// Re-exported so that callers name the same cudarc and half versions as this crate.
pub use cudarc;
pub use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice};
pub use half;
