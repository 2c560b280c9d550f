//! The GPU side: a device context ([`Gpu`]) with safe wrappers around every kernel and cuBLAS
//! GEMM, plus NVRTC compilation ([`nvrtc`]) and run-time library loading ([`libs`]).
//!
//! All of the crate's `unsafe` lives under this module. Every wrapper checks buffer lengths
//! against the shape it is given, the 32-bit limits of the kernels' parameters and that buffers
//! belong to this device before it launches, and maps launch failures to [`KernelError`].
//!
//! Concurrency: a [`Gpu`] is a cheap `Clone` handle (`Arc`) that is `Send + Sync`. All work of
//! a handle is queued on its stream, in call order: the context's default stream for
//! [`Gpu::new`], a non-blocking stream of its own for [`Gpu::new_stream`] (one per model
//! instance, so that instances on one device overlap). Reads back to the host
//! ([`Gpu::download`], [`Gpu::download_pinned`]) and [`Gpu::synchronize`] wait for the handle's
//! stream. Kernel modules are compiled by NVRTC on first use, once per process for each (module,
//! architecture) pair, and loaded once per device context (shared by the handles that
//! [`Gpu::new_stream`] derives); each handle creates its own cuBLAS handle on its first GEMM and
//! uses it under a mutex. Buffers may be used on any handle of the same context: cudarc orders
//! accesses from different streams with events.

pub(crate) mod libs;
pub(crate) mod lt;
pub(crate) mod nvrtc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::{result as cublas_result, sys as cublas_sys, CudaBlas};
use cudarc::driver::{
    sys as driver_sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream,
    DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, DriverError, LaunchConfig, PinnedHostSlice,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use self::libs::{cublas_present, driver_present, guard, load_env_libraries, nvrtc_present};
use self::nvrtc::{compile, CompileTarget};
use crate::op::{check_len, elements};
use crate::source::Module;
use crate::{Activation, HistogramEdges, KernelError, TopK};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// Element types the GPU kernels and GEMMs support: `f32` and `half::f16`.
pub trait GpuFloat:
    sealed::Sealed + DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + std::fmt::Debug + 'static
{
    /// `"f32"` or `"f16"`.
    const NAME: &'static str;
    /// The bias + activation entry point for this type.
    #[doc(hidden)]
    const BIAS_ACT_ENTRY: &'static str;
    /// Alignment (bytes) the vectorised elementwise path needs: 4 elements at once.
    #[doc(hidden)]
    const VEC_ALIGN: u64;
    /// cuBLAS data type.
    #[doc(hidden)]
    const CUDA_DATA_TYPE: cublas_sys::cudaDataType;
    /// cuBLASLt data type (the same value, cuBLASLt's binding of it).
    #[doc(hidden)]
    const LT_DATA_TYPE: cudarc::cublaslt::sys::cudaDataType;
    /// Widen to f32 (exact).
    fn to_f32(self) -> f32;
    /// Round from f32 (to nearest, ties to even).
    fn from_f32(v: f32) -> Self;
}

impl GpuFloat for f32 {
    const NAME: &'static str = "f32";
    const BIAS_ACT_ENTRY: &'static str = "bias_act_f32";
    const VEC_ALIGN: u64 = 16;
    const CUDA_DATA_TYPE: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_32F;
    const LT_DATA_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_32F;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl GpuFloat for f16 {
    const NAME: &'static str = "f16";
    const BIAS_ACT_ENTRY: &'static str = "bias_act_f16";
    const VEC_ALIGN: u64 = 8;
    const CUDA_DATA_TYPE: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_16F;
    const LT_DATA_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_16F;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Threads per block of the elementwise and row kernels.
const BLOCK: u32 = 256;
/// Threads per block of the histogram kernel (few large blocks, see `Gpu::histogram_f32`).
const HISTOGRAM_BLOCK: u32 = 512;
/// Largest k the one-warp-per-row top-k kernel handles (its per-lane candidate lists hold 32).
const TOPK_WARP_MAX_K: usize = 32;
/// Dynamic shared memory a kernel may use without opting in to more (48 KiB on every GPU).
const MAX_DEFAULT_SHARED: usize = 48 * 1024;

fn driver(op: &'static str) -> impl FnOnce(DriverError) -> KernelError {
    move |source| KernelError::Driver { op, source }
}

fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::invalid(op, format!("{what} = {v} exceeds i32::MAX")))
}

fn to_i64(op: &'static str, what: &str, v: usize) -> Result<i64, KernelError> {
    i64::try_from(v).map_err(|_| KernelError::invalid(op, format!("{what} = {v} exceeds i64::MAX")))
}

/// Functions of one loaded module.
struct LoadedModule {
    /// Keeps the module loaded while its functions are in use.
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// Process-wide cache of compiled images, keyed by (source name, target), so that several
/// [`Gpu`] handles on devices of the same architecture compile each module once.
static IMAGES: Mutex<Vec<CachedImage>> = Mutex::new(Vec::new());

/// (source name, target) -> compiled image.
type CachedImage = ((&'static str, CompileTarget), Arc<Vec<u8>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data inconsistent (every
    // critical section is a lookup or an insert), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every handle on one device shares: the context and the loaded kernel modules.
struct Device {
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    sm_count: u32,
    ctx: Arc<CudaContext>,
    /// Loaded kernel modules, indexed by `Module as usize`; filled on first use. Functions of a
    /// module may be launched on any stream of the context.
    modules: Mutex<[Option<Arc<LoadedModule>>; 5]>,
}

struct Inner {
    device: Arc<Device>,
    /// The stream every operation of this handle is queued on, in order: the context's default
    /// stream for [`Gpu::new`], a stream of its own for [`Gpu::new_stream`].
    stream: Arc<CudaStream>,
    /// cuBLAS handle bound to `stream`, created on the first GEMM (cuBLAS handles must not be
    /// used from two threads at once, hence the mutex).
    blas: Mutex<Option<CudaBlas>>,
    /// cuBLASLt handle and workspace, created on the first cuBLASLt GEMM; same rules.
    lt: Mutex<Option<lt::LtHandle>>,
}

/// A CUDA device: context, stream, kernel-module cache, cuBLAS handle. See the module docs.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.inner.device.ordinal)
            .field("name", &self.inner.device.name)
            .field("compute_capability", &self.inner.device.compute_capability)
            .finish()
    }
}

/// What a [`PinnedBuffer`] is for: the host writes and the device reads, or the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedPurpose {
    /// Host -> device staging (write-combined memory).
    Upload,
    /// Device -> host staging.
    Download,
}

/// Page-locked host memory for fast, asynchronous transfers (see [`Gpu::alloc_pinned`]). The
/// host views wait for any transfer still using the memory, so they never race with the device.
#[derive(Debug)]
pub struct PinnedBuffer<T> {
    host: PinnedHostSlice<T>,
    /// Elements usable (the allocation has at least one, even when this is 0).
    len: usize,
    /// Completion of the last upload that reads this memory, if not yet waited for.
    pending: Option<CudaEvent>,
}

impl<T: DeviceRepr + ValidAsZeroBits> PinnedBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn wait_pending(&mut self) -> Result<(), KernelError> {
        if let Some(event) = self.pending.take() {
            event.synchronize().map_err(driver("cuEventSynchronize"))?;
        }
        Ok(())
    }

    /// The host memory, to read (after [`Gpu::download_pinned`]).
    pub fn as_slice(&self) -> Result<&[T], KernelError> {
        let all = self.host.as_slice().map_err(driver("cuEventSynchronize"))?;
        Ok(&all[..self.len])
    }

    /// The host memory, to fill before [`Gpu::upload_pinned`]; waits for an upload still
    /// reading it.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T], KernelError> {
        self.wait_pending()?;
        let len = self.len;
        let all = self
            .host
            .as_mut_slice()
            .map_err(driver("cuEventSynchronize"))?;
        Ok(&mut all[..len])
    }
}

/// Top-k results on the device: `values` and `indices` are `[rows, k]`, `k` the effective k.
#[derive(Debug)]
pub struct DeviceTopK {
    pub rows: usize,
    pub k: usize,
    pub values: CudaSlice<f32>,
    pub indices: CudaSlice<u32>,
}

/// [`HistogramEdges`] uploaded to a device.
#[derive(Debug)]
pub struct DeviceHistogramEdges {
    edges: CudaSlice<f32>,
    features: usize,
    edges_per_feature: usize,
}

impl DeviceHistogramEdges {
    /// Number of features.
    pub fn features(&self) -> usize {
        self.features
    }
    /// Count slots per feature (bins, underflow, overflow, NaN).
    pub fn slots(&self) -> usize {
        self.edges_per_feature + 2
    }
    /// Length of the counts buffer: `features * slots`.
    pub fn counts_len(&self) -> usize {
        self.features * self.slots()
    }
}

fn device_count_inner() -> Result<usize, KernelError> {
    match CudaContext::device_count() {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
        Err(DriverError(driver_sys::cudaError_enum::CUDA_ERROR_NO_DEVICE)) => Ok(0),
        Err(e) => Err(KernelError::Driver {
            op: "cuInit/cuDeviceGetCount",
            source: e,
        }),
    }
}

impl Gpu {
    /// Number of CUDA devices; [`KernelError::NoDriver`] when there is no driver.
    pub fn device_count() -> Result<usize, KernelError> {
        load_env_libraries()?;
        if !driver_present() {
            return Err(KernelError::NoDriver);
        }
        guard("Gpu::device_count", device_count_inner)
    }

    /// Opens device `ordinal` (its primary context). Fails with [`KernelError::NoDriver`],
    /// [`KernelError::NoDevice`] or [`KernelError::NoNvrtc`] on machines that cannot run the
    /// kernels, never panics. Kernels are compiled lazily; see [`Gpu::warm_up`].
    pub fn new(ordinal: usize) -> Result<Gpu, KernelError> {
        let count = Gpu::device_count()?;
        if ordinal >= count {
            return Err(KernelError::NoDevice { ordinal, count });
        }
        if !nvrtc_present() {
            return Err(KernelError::NoNvrtc);
        }
        guard("Gpu::new", || {
            let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
            let name = ctx.name().map_err(driver("cuDeviceGetName"))?;
            let compute_capability = ctx
                .compute_capability()
                .map_err(driver("cuDeviceGetAttribute"))?;
            let sm_count = ctx
                .attribute(driver_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver("cuDeviceGetAttribute"))?;
            let stream = ctx.default_stream();
            Ok(Gpu {
                inner: Arc::new(Inner {
                    device: Arc::new(Device {
                        ordinal,
                        name,
                        compute_capability,
                        sm_count: u32::try_from(sm_count).unwrap_or(1).max(1),
                        ctx,
                        modules: Mutex::new(Default::default()),
                    }),
                    stream,
                    blas: Mutex::new(None),
                    lt: Mutex::new(None),
                }),
            })
        })
    }

    /// Opens every device; empty when there is no driver or no device. Tests run each GPU test
    /// once per entry.
    pub fn all() -> Result<Vec<Gpu>, KernelError> {
        let count = match Gpu::device_count() {
            Ok(n) => n,
            Err(KernelError::NoDriver) => 0,
            Err(e) => return Err(e),
        };
        (0..count).map(Gpu::new).collect()
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.device.ordinal
    }

    /// Device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.inner.device.name
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.device.compute_capability
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.inner.device.sm_count
    }

    /// The cudarc context, for callers that need more than this crate wraps.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.device.ctx
    }

    /// The stream every operation of this handle is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// A handle on the same device (same context, same loaded kernels) whose work goes to a new
    /// non-blocking stream of its own, with its own cuBLAS handle: work queued on two such
    /// handles may run concurrently. A model instance takes one each.
    pub fn new_stream(&self) -> Result<Gpu, KernelError> {
        let ctx = &self.inner.device.ctx;
        let stream = guard("Gpu::new_stream", || {
            ctx.new_stream().map_err(driver("cuStreamCreate"))
        })?;
        Ok(Gpu {
            inner: Arc::new(Inner {
                device: Arc::clone(&self.inner.device),
                stream,
                blas: Mutex::new(None),
                lt: Mutex::new(None),
            }),
        })
    }

    /// Page-locked host memory of `len` elements, zero-filled, for [`Gpu::upload_pinned`]
    /// (`purpose` [`PinnedPurpose::Upload`]: write-combined, fast for the host to write and the
    /// device to read, slow for the host to read) or [`Gpu::download_pinned`]
    /// ([`PinnedPurpose::Download`]: ordinary cached pinned memory). Copies from and to pinned
    /// memory run at full PCIe/NVLink speed and asynchronously. Allocating is slow (it maps and
    /// locks pages): do it once, up front.
    pub fn alloc_pinned<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        purpose: PinnedPurpose,
    ) -> Result<PinnedBuffer<T>, KernelError> {
        const OP: &str = "Gpu::alloc_pinned";
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .filter(|b| *b < isize::MAX as usize)
            .ok_or_else(|| KernelError::invalid(OP, format!("{len} elements overflow")))?;
        // cuMemHostAlloc rejects 0 bytes; one element backs an empty buffer.
        let alloc_len = len.max(1);
        let flags = match purpose {
            PinnedPurpose::Upload => driver_sys::CU_MEMHOSTALLOC_WRITECOMBINED,
            PinnedPurpose::Download => 0,
        };
        let ctx = &self.inner.device.ctx;
        let mut host = guard(OP, || {
            // SAFETY: the memory is uninitialised after this call; it is zero-filled below
            // before any `&[T]` to it exists, and all-zero bytes are a valid T
            // (`ValidAsZeroBits`).
            unsafe { ctx.alloc_pinned_with_flags::<T>(alloc_len, flags) }
                .map_err(driver("cuMemHostAlloc"))
        })?;
        let ptr = host.as_mut_ptr().map_err(driver("cuEventSynchronize"))?;
        // SAFETY: `ptr` points to `alloc_len` elements of page-locked memory owned by `host`,
        // which nothing else references yet; writing zero bytes over all of them initialises
        // them (`bytes` <= alloc_len * size_of::<T>() was checked not to overflow).
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, bytes.max(std::mem::size_of::<T>())) };
        Ok(PinnedBuffer {
            host,
            len,
            pending: None,
        })
    }

    /// Queues the copy of the first `dst.len()` elements of `src` to `dst` and returns without
    /// waiting; `src` stays borrowed by the transfer until it completes (its host view waits
    /// for that, see [`PinnedBuffer::as_mut_slice`]).
    pub fn upload_pinned<T: DeviceRepr + ValidAsZeroBits, D: DevicePtrMut<T>>(
        &self,
        src: &mut PinnedBuffer<T>,
        dst: &mut D,
    ) -> Result<(), KernelError> {
        const OP: &str = "Gpu::upload_pinned";
        self.check_owner(OP, dst)?;
        let n = dst.len();
        if n > src.len {
            return Err(KernelError::shape(
                OP,
                format!("dst has {n} elements, the pinned buffer only {}", src.len),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let stream = &self.inner.stream;
        let host = src.as_slice()?;
        stream
            .memcpy_htod(&host[..n], dst)
            .map_err(driver("cuMemcpyHtoDAsync"))?;
        let event = stream.record_event(None).map_err(driver("cuEventRecord"))?;
        src.pending = Some(event);
        Ok(())
    }

    /// Copies `src` into the first `src.len()` elements of `dst` and waits for it (and for all
    /// work queued before it on this handle's stream).
    pub fn download_pinned<T: DeviceRepr + ValidAsZeroBits, S: DevicePtr<T>>(
        &self,
        src: &S,
        dst: &mut PinnedBuffer<T>,
    ) -> Result<(), KernelError> {
        const OP: &str = "Gpu::download_pinned";
        self.check_owner(OP, src)?;
        let n = src.len();
        if n > dst.len {
            return Err(KernelError::shape(
                OP,
                format!("src has {n} elements, the pinned buffer only {}", dst.len),
            ));
        }
        if n == 0 {
            return self.synchronize();
        }
        let stream = &self.inner.stream;
        let host = dst.as_mut_slice()?;
        stream
            .memcpy_dtoh(src, &mut host[..n])
            .map_err(driver("cuMemcpyDtoHAsync"))?;
        // The copy writes into `dst` behind the borrow checker's back: wait before anyone can
        // look at it.
        self.synchronize()
    }

    /// Compiles (or fetches from the process cache) and loads every kernel module now, so that
    /// the first request does not pay for NVRTC.
    pub fn warm_up(&self) -> Result<(), KernelError> {
        for m in [
            Module::BiasAct,
            Module::Softmax,
            Module::TopK,
            Module::Standardize,
            Module::Histogram,
        ] {
            self.module(m)?;
        }
        Ok(())
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.inner
            .stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, KernelError> {
        if host.is_empty() {
            return self.empty();
        }
        self.inner
            .stream
            .clone_htod(host)
            .map_err(driver("cuMemcpyHtoDAsync"))
    }

    /// Copies a device buffer (or view) back to the host, waiting for queued work.
    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, dev: &S) -> Result<Vec<T>, KernelError> {
        self.check_owner("download", dev)?;
        if dev.len() == 0 {
            self.synchronize()?;
            return Ok(Vec::new());
        }
        self.inner
            .stream
            .clone_dtoh(dev)
            .map_err(driver("cuMemcpyDtoH"))
    }

    /// A new zero-filled device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        if len == 0 {
            return self.empty();
        }
        self.inner
            .stream
            .alloc_zeros(len)
            .map_err(driver("cuMemAllocAsync"))
    }

    /// An empty buffer. The driver rejects 0-byte allocations (`cuMemAlloc` documents
    /// CUDA_ERROR_INVALID_VALUE), so this allocates one element and hands it to a
    /// zero-length slice, which frees it when dropped.
    fn empty<T: DeviceRepr>(&self) -> Result<CudaSlice<T>, KernelError> {
        let stream = &self.inner.stream;
        // SAFETY: the element is never read: the slice made from it below has length 0.
        let one = unsafe { stream.alloc::<T>(1) }.map_err(driver("cuMemAllocAsync"))?;
        let ptr = one.leak();
        guard("empty buffer", || {
            // SAFETY: `ptr` is a live allocation of one T on `stream` whose ownership `leak`
            // just gave up; the new slice takes it over (and frees it on drop) and claims 0
            // elements, which needs no space.
            Ok(unsafe { stream.upgrade_device_ptr::<T>(ptr, 0) })
        })
    }

    /// Device-to-device copy of `src` into `dst` (same length).
    pub fn copy<T: DeviceRepr, S: DevicePtr<T>, D: DevicePtrMut<T>>(
        &self,
        src: &S,
        dst: &mut D,
    ) -> Result<(), KernelError> {
        const OP: &str = "Gpu::copy";
        self.check_owner(OP, src)?;
        self.check_owner(OP, dst)?;
        if src.len() != dst.len() {
            return Err(KernelError::shape(
                OP,
                format!("src has {} elements, dst {}", src.len(), dst.len()),
            ));
        }
        if src.len() == 0 {
            return Ok(());
        }
        self.inner
            .stream
            .memcpy_dtod(src, dst)
            .map_err(driver("cuMemcpyDtoDAsync"))
    }

    fn check_owner<T, S: DeviceSlice<T>>(
        &self,
        op: &'static str,
        s: &S,
    ) -> Result<(), KernelError> {
        if **s.stream().context() != *self.inner.device.ctx {
            return Err(KernelError::invalid(
                op,
                format!(
                    "a buffer belongs to another CUDA context than device {}",
                    self.inner.device.ordinal
                ),
            ));
        }
        Ok(())
    }

    /// The loaded module `m`, compiling it on first use.
    fn module(&self, m: Module) -> Result<Arc<LoadedModule>, KernelError> {
        let mut modules = lock(&self.inner.device.modules);
        if let Some(loaded) = &modules[m as usize] {
            return Ok(loaded.clone());
        }
        let source = m.source();
        let (major, minor) = self.inner.device.compute_capability;
        let image = compiled_image(source, major, minor)?;
        let loaded = guard("load module", || {
            let ptx = match &image.0 {
                CompileTarget::Cubin(_) => Ptx::from_binary(image.1.as_ref().clone()),
                CompileTarget::Ptx(_) => {
                    Ptx::from_src(String::from_utf8_lossy(&image.1).into_owned())
                }
            };
            let module = self
                .inner
                .device
                .ctx
                .load_module(ptx)
                .map_err(driver("cuModuleLoadData"))?;
            let mut functions = HashMap::new();
            for &entry in source.entry_points {
                let f = module
                    .load_function(entry)
                    .map_err(driver("cuModuleGetFunction"))?;
                functions.insert(entry, f);
            }
            Ok(Arc::new(LoadedModule {
                _module: module,
                functions,
            }))
        })?;
        modules[m as usize] = Some(loaded.clone());
        Ok(loaded)
    }

    fn function(&self, m: Module, entry: &'static str) -> Result<CudaFunction, KernelError> {
        let loaded = self.module(m)?;
        loaded.functions.get(entry).cloned().ok_or_else(|| {
            KernelError::invalid(
                "load function",
                format!("{entry} is not in {}", m.source().name),
            )
        })
    }

    /// Grid for the column-walk kernels: at least `units` threads (one per column unit), about
    /// one thread per `units * rows` element group, at most two waves of full occupancy.
    fn column_walk_config(&self, units: usize, rows: usize, shared: u32) -> LaunchConfig {
        let block = BLOCK as usize;
        let min_blocks = units.div_ceil(block);
        let want = units.saturating_mul(rows).div_ceil(block);
        let max_blocks = self.inner.device.sm_count as usize * 16;
        let blocks = want.min(max_blocks).max(min_blocks).max(1);
        LaunchConfig {
            // `units <= i32::MAX`, so `min_blocks` and `blocks` fit in u32.
            grid_dim: (u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: shared,
        }
    }

    /// Grid for the one-block-per-row kernels.
    fn row_config(&self, rows: usize, cols: usize, shared: u32) -> LaunchConfig {
        let threads = cols.next_multiple_of(32).clamp(32, BLOCK as usize) as u32;
        let max_blocks = self.inner.device.sm_count as usize * 32;
        let blocks = rows.min(max_blocks).max(1);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: shared,
        }
    }

    // ---------------------------------------------------------------------------------------
    // bias + activation
    // ---------------------------------------------------------------------------------------

    /// In place on `y` (`[rows, cols]`): `y = act(y + bias)`, with `bias` `[cols]`; without a
    /// bias, `y = act(y)`. The fused GEMM epilogue. CPU twin: [`crate::cpu::bias_act_f32`].
    pub fn bias_act<T: GpuFloat, Y: DevicePtrMut<T>, B: DevicePtr<T>>(
        &self,
        y: &mut Y,
        bias: Option<&B>,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), KernelError> {
        let op: &'static str = T::BIAS_ACT_ENTRY;
        check_len(op, "y", y.len(), rows, cols)?;
        self.check_owner(op, y)?;
        if let Some(b) = bias {
            check_len(op, "bias", b.len(), 1, cols)?;
            self.check_owner(op, b)?;
        }
        let cols_i = to_i32(op, "cols", cols)?;
        let rows_i = to_i64(op, "rows", rows)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let func = self.function(Module::BiasAct, T::BIAS_ACT_ENTRY)?;
        let stream = &self.inner.stream;
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        let (b_ptr, _b_sync) = match bias {
            Some(b) => {
                let (p, s) = b.device_ptr(stream);
                (p, Some(s))
            }
            None => (0, None),
        };
        let vec = cols % 4 == 0 && y_ptr % T::VEC_ALIGN == 0 && b_ptr % T::VEC_ALIGN == 0;
        let units = if vec { cols / 4 } else { cols };
        let cfg = self.column_walk_config(units, rows, 0);
        let act_code = act.code();
        let vec_i = i32::from(vec);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&y_ptr)
            .arg(&b_ptr)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&act_code)
            .arg(&vec_i);
        // SAFETY: the arguments match `bias_act_f32(float*, const float*, long long, int, int,
        // int)` / `bias_act_f16(unsigned short*, const unsigned short*, ...)` in
        // src/cuda/bias_act.cu, with T's device layout equal to the kernel's element type (f32 /
        // IEEE binary16). `y` holds exactly rows * cols elements and `bias` (or null) cols, both
        // checked above, and the kernel touches no other memory; `vec` is set only when cols % 4
        // == 0 and both pointers have the alignment of 4 elements. The guards `_y_sync` /
        // `_b_sync` keep the buffers' stream synchronisation alive until after the launch.
        unsafe { launch.launch(cfg) }.map_err(driver("launch bias_act"))?;
        Ok(())
    }

    /// [`Gpu::bias_act`] for f32.
    pub fn bias_act_f32<Y: DevicePtrMut<f32>, B: DevicePtr<f32>>(
        &self,
        y: &mut Y,
        bias: Option<&B>,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), KernelError> {
        self.bias_act(y, bias, rows, cols, act)
    }

    /// [`Gpu::bias_act`] for f16 (computes in f32, rounds once).
    pub fn bias_act_f16<Y: DevicePtrMut<f16>, B: DevicePtr<f16>>(
        &self,
        y: &mut Y,
        bias: Option<&B>,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), KernelError> {
        self.bias_act(y, bias, rows, cols, act)
    }

    /// In place `y = act(y)` (no bias), `y` `[rows, cols]`.
    pub fn activate<T: GpuFloat, Y: DevicePtrMut<T>>(
        &self,
        y: &mut Y,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), KernelError> {
        self.bias_act::<T, Y, CudaSlice<T>>(y, None, rows, cols, act)
    }

    // ---------------------------------------------------------------------------------------
    // softmax, top-k
    // ---------------------------------------------------------------------------------------

    /// Row-wise softmax of `x` into `y`, both `[rows, cols]`. CPU twin:
    /// [`crate::cpu::softmax_rows_f32`].
    pub fn softmax_rows_f32<X: DevicePtr<f32>, Y: DevicePtrMut<f32>>(
        &self,
        x: &X,
        y: &mut Y,
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        const OP: &str = "softmax_rows_f32";
        check_len(OP, "x", x.len(), rows, cols)?;
        check_len(OP, "y", y.len(), rows, cols)?;
        self.check_owner(OP, x)?;
        self.check_owner(OP, y)?;
        let rows_i = to_i32(OP, "rows", rows)?;
        let cols_i = to_i32(OP, "cols", cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let func = self.function(Module::Softmax, OP)?;
        let stream = &self.inner.stream;
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        let row_bytes = cols * std::mem::size_of::<f32>();
        // The kernel's static `scratch[32]` floats share the default 48 KiB with the cache.
        let cached = row_bytes + 32 * 4 <= MAX_DEFAULT_SHARED;
        let vec = cached && cols % 4 == 0 && x_ptr % 16 == 0 && y_ptr % 16 == 0;
        let units = if vec { cols / 4 } else { cols };
        let shared = if cached { row_bytes as u32 } else { 0 };
        let cfg = self.row_config(rows, units, shared);
        let (cached_i, vec_i) = (i32::from(cached), i32::from(vec));
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x_ptr)
            .arg(&y_ptr)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&cached_i)
            .arg(&vec_i);
        // SAFETY: the arguments match `softmax_rows_f32(const float*, float*, int, int, int,
        // int)` in src/cuda/softmax.cu; `x` and `y` hold exactly rows * cols f32 (checked
        // above), the kernel reads/writes only rows < `rows` and columns < `cols`; the block
        // size is a multiple of 32 and at most 256 as the kernel's reductions require. With
        // `cached` the launch provides exactly cols * 4 bytes (<= 48 KiB) of dynamic shared
        // memory; `vec` only when cols % 4 == 0 and both pointers are 16-byte aligned.
        unsafe { launch.launch(cfg) }.map_err(driver("launch softmax_rows_f32"))?;
        Ok(())
    }

    /// Row-wise top-k of `x` (`[rows, cols]`): per row the `min(k, cols)` largest values in
    /// descending order (ties: lower index first; NaN last) and their column indices, in new
    /// device buffers. CPU twin: [`crate::cpu::topk_rows_f32`].
    pub fn topk_rows_f32<X: DevicePtr<f32>>(
        &self,
        x: &X,
        rows: usize,
        cols: usize,
        k: usize,
    ) -> Result<DeviceTopK, KernelError> {
        let k = k.min(cols);
        let n = elements("topk_rows_f32", rows, k)?;
        let mut values = self.zeros::<f32>(n)?;
        let mut indices = self.zeros::<u32>(n)?;
        self.topk_rows_f32_into(x, &mut values, &mut indices, rows, cols, k)?;
        Ok(DeviceTopK {
            rows,
            k,
            values,
            indices,
        })
    }

    /// [`Gpu::topk_rows_f32`] into caller-provided buffers `values` / `indices` of
    /// `[rows, min(k, cols)]` elements (every element is written). Returns the effective k.
    pub fn topk_rows_f32_into<X: DevicePtr<f32>, V: DevicePtrMut<f32>, I: DevicePtrMut<u32>>(
        &self,
        x: &X,
        values: &mut V,
        indices: &mut I,
        rows: usize,
        cols: usize,
        k: usize,
    ) -> Result<usize, KernelError> {
        const OP: &str = "topk_rows_f32";
        check_len(OP, "x", x.len(), rows, cols)?;
        let k = k.min(cols);
        check_len(OP, "values", values.len(), rows, k)?;
        check_len(OP, "indices", indices.len(), rows, k)?;
        self.check_owner(OP, x)?;
        self.check_owner(OP, values)?;
        self.check_owner(OP, indices)?;
        let rows_i = to_i32(OP, "rows", rows)?;
        let cols_i = to_i32(OP, "cols", cols)?;
        let k_i = to_i32(OP, "k", k)?;
        if rows == 0 || k == 0 {
            return Ok(k);
        }
        let stream = &self.inner.stream;
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (v_ptr, _v_sync) = values.device_ptr_mut(stream);
        let (i_ptr, _i_sync) = indices.device_ptr_mut(stream);
        if k <= TOPK_WARP_MAX_K && cols <= i32::MAX as usize - 256 {
            let entry = match k {
                0..=8 => "topk_rows_warp8_f32",
                9..=16 => "topk_rows_warp16_f32",
                _ => "topk_rows_warp32_f32",
            };
            let func = self.function(Module::TopK, entry)?;
            let warps_per_block = (BLOCK / 32) as usize;
            let max_blocks = self.inner.device.sm_count as usize * 64;
            let blocks = rows.div_ceil(warps_per_block).clamp(1, max_blocks);
            let cfg = LaunchConfig {
                // `blocks <= sm_count * 64` fits in u32.
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(&x_ptr)
                .arg(&v_ptr)
                .arg(&i_ptr)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&k_i);
            // SAFETY: the arguments match `topk_rows_warp{8,16,32}_f32(const float*, float*,
            // unsigned int*, int, int, int)` in src/cuda/topk.cu, and the entry point's list
            // length is >= k. `x` holds rows * cols f32 and `values` / `indices` rows * k
            // elements with 1 <= k <= min(cols, 32) (checked above); each warp writes slots 0..k
            // of its rows only. The block size is a multiple of 32, as the
            // kernel's full-warp shuffles require, and cols <= i32::MAX - 256 keeps the kernel's
            // column counter from overflowing.
            unsafe { launch.launch(cfg) }.map_err(driver("launch topk_rows_warp_f32"))?;
            return Ok(k);
        }
        let func = self.function(Module::TopK, OP)?;
        let row_bytes = cols * std::mem::size_of::<f32>();
        let use_shared = row_bytes <= MAX_DEFAULT_SHARED;
        let shared = if use_shared { row_bytes as u32 } else { 0 };
        let use_shared_i = i32::from(use_shared);
        let cfg = self.row_config(rows, cols, shared);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x_ptr)
            .arg(&v_ptr)
            .arg(&i_ptr)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&k_i)
            .arg(&use_shared_i);
        // SAFETY: the arguments match `topk_rows_f32(const float*, float*, unsigned int*, int,
        // int, int, int)` in src/cuda/topk.cu. `x` holds rows * cols f32 and `values` /
        // `indices` rows * k elements with k <= cols (checked above); the kernel writes slot
        // `rank < k` of each row only. With `use_shared` the launch provides exactly cols * 4
        // bytes of dynamic shared memory (<= 48 KiB).
        unsafe { launch.launch(cfg) }.map_err(driver("launch topk_rows_f32"))?;
        Ok(k)
    }

    /// Copies a [`DeviceTopK`] to the host.
    pub fn download_topk(&self, t: &DeviceTopK) -> Result<TopK, KernelError> {
        Ok(TopK {
            rows: t.rows,
            k: t.k,
            values: self.download(&t.values)?,
            indices: self.download(&t.indices)?,
        })
    }

    // ---------------------------------------------------------------------------------------
    // standardisation, histograms
    // ---------------------------------------------------------------------------------------

    /// `y = (x - mean) / std` per feature; `x`, `y` `[rows, cols]`, `mean`, `std` `[cols]`. CPU
    /// twin: [`crate::cpu::standardize_f32`] (bit-identical).
    #[allow(clippy::too_many_arguments)]
    pub fn standardize_f32<
        X: DevicePtr<f32>,
        M: DevicePtr<f32>,
        S: DevicePtr<f32>,
        Y: DevicePtrMut<f32>,
    >(
        &self,
        x: &X,
        mean: &M,
        std: &S,
        y: &mut Y,
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        const OP: &str = "standardize_f32";
        check_len(OP, "x", x.len(), rows, cols)?;
        check_len(OP, "mean", mean.len(), 1, cols)?;
        check_len(OP, "std", std.len(), 1, cols)?;
        check_len(OP, "y", y.len(), rows, cols)?;
        self.check_owner(OP, x)?;
        self.check_owner(OP, mean)?;
        self.check_owner(OP, std)?;
        self.check_owner(OP, y)?;
        let rows_i = to_i64(OP, "rows", rows)?;
        let cols_i = to_i32(OP, "cols", cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let func = self.function(Module::Standardize, OP)?;
        let stream = &self.inner.stream;
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (m_ptr, _m_sync) = mean.device_ptr(stream);
        let (s_ptr, _s_sync) = std.device_ptr(stream);
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        let vec = cols % 4 == 0 && [x_ptr, m_ptr, s_ptr, y_ptr].iter().all(|p| p % 16 == 0);
        let units = if vec { cols / 4 } else { cols };
        let cfg = self.column_walk_config(units, rows, 0);
        let vec_i = i32::from(vec);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x_ptr)
            .arg(&m_ptr)
            .arg(&s_ptr)
            .arg(&y_ptr)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&vec_i);
        // SAFETY: the arguments match `standardize_f32(const float*, const float*, const float*,
        // float*, long long, int, int)` in src/cuda/standardize.cu. `x`/`y` hold rows * cols and
        // `mean`/`std` cols f32 (checked above); `vec` only when cols % 4 == 0 and all four
        // pointers are 16-byte aligned.
        unsafe { launch.launch(cfg) }.map_err(driver("launch standardize_f32"))?;
        Ok(())
    }

    /// Uploads validated histogram edges.
    pub fn upload_histogram_edges(
        &self,
        edges: &HistogramEdges,
    ) -> Result<DeviceHistogramEdges, KernelError> {
        Ok(DeviceHistogramEdges {
            edges: self.upload(edges.as_slice())?,
            features: edges.features(),
            edges_per_feature: edges.edges_per_feature(),
        })
    }

    /// Adds the per-feature histogram counts of `x` (`[rows, cols]`) to `counts`
    /// (`[cols, edges.slots()]`). CPU twin: [`crate::cpu::histogram_f32`].
    pub fn histogram_f32<X: DevicePtr<f32>, C: DevicePtrMut<u32>>(
        &self,
        x: &X,
        rows: usize,
        cols: usize,
        edges: &DeviceHistogramEdges,
        counts: &mut C,
    ) -> Result<(), KernelError> {
        const OP: &str = "histogram_f32";
        check_len(OP, "x", x.len(), rows, cols)?;
        if edges.features != cols {
            return Err(KernelError::shape(
                OP,
                format!("edges are for {} features, x has {cols}", edges.features),
            ));
        }
        check_len(OP, "counts", counts.len(), cols, edges.slots())?;
        self.check_owner(OP, x)?;
        self.check_owner(OP, &edges.edges)?;
        self.check_owner(OP, counts)?;
        let rows_i = to_i64(OP, "rows", rows)?;
        let cols_i = to_i32(OP, "cols", cols)?;
        let n_edges_i = to_i32(OP, "edges per feature", edges.edges_per_feature)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let func = self.function(Module::Histogram, OP)?;
        let stream = &self.inner.stream;
        let counts_bytes = edges
            .counts_len()
            .saturating_mul(std::mem::size_of::<u32>());
        let edges_bytes = edges.edges.len().saturating_mul(std::mem::size_of::<f32>());
        // Counts in shared memory first (they save the global atomics), then the edges too when
        // both fit.
        let shared_counts = counts_bytes <= MAX_DEFAULT_SHARED;
        let shared_edges = if shared_counts {
            counts_bytes + edges_bytes <= MAX_DEFAULT_SHARED
        } else {
            edges_bytes <= MAX_DEFAULT_SHARED
        };
        let shared =
            usize::from(shared_counts) * counts_bytes + usize::from(shared_edges) * edges_bytes;
        let shared_mode = i32::from(shared_counts) | (i32::from(shared_edges) << 1);
        // Few, large blocks: with per-block counts every block ends with one global atomic per
        // slot, so about four resident blocks per SM, each walking many rows.
        let block = HISTOGRAM_BLOCK as usize;
        let min_blocks = cols.div_ceil(block);
        let want = cols.saturating_mul(rows).div_ceil(block * 4);
        let max_blocks = self.inner.device.sm_count as usize * 4;
        let blocks = want.min(max_blocks).max(min_blocks).max(1);
        let cfg = LaunchConfig {
            // `cols <= i32::MAX`, so `min_blocks` and `blocks` fit in u32.
            grid_dim: (u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1),
            block_dim: (HISTOGRAM_BLOCK, 1, 1),
            // At most 48 KiB.
            shared_mem_bytes: shared as u32,
        };
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (e_ptr, _e_sync) = edges.edges.device_ptr(stream);
        let (c_ptr, _c_sync) = counts.device_ptr_mut(stream);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&x_ptr)
            .arg(&e_ptr)
            .arg(&c_ptr)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&n_edges_i)
            .arg(&shared_mode);
        // SAFETY: the arguments match `histogram_f32(const float*, const float*, unsigned int*,
        // long long, int, int, int)` in src/cuda/histogram.cu. `x` holds rows * cols f32,
        // `edges` cols * n_edges validated edges (sorted, finite, n_edges >= 2, by
        // `HistogramEdges::new`) and `counts` cols * (n_edges + 2) u32 (checked above); the slot
        // function returns an index < n_edges + 2. The launch provides exactly the dynamic
        // shared memory `shared_mode` asks for: cols * (n_edges + 2) * 4 bytes for the counts
        // (bit 0) plus cols * n_edges * 4 for the edges (bit 1), at most 48 KiB in all; the
        // grid has at least `cols` threads.
        unsafe { launch.launch(cfg) }.map_err(driver("launch histogram_f32"))?;
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // GEMM (cuBLAS)
    // ---------------------------------------------------------------------------------------

    /// `y = x · wᵀ` through cuBLAS (`cublasGemmEx`, f32 accumulation, no TF32): `x`
    /// `[batch, in_features]`, `w` `[out_features, in_features]` (PyTorch `nn.Linear` layout),
    /// `y` `[batch, out_features]`, all row-major. CPU twin: [`crate::cpu::gemm_f32`].
    pub fn gemm<T: GpuFloat, X: DevicePtr<T>, W: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        x: &X,
        w: &W,
        y: &mut Y,
        batch: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<(), KernelError> {
        const OP: &str = "gemm";
        check_len(OP, "x", x.len(), batch, in_features)?;
        check_len(OP, "w", w.len(), out_features, in_features)?;
        check_len(OP, "y", y.len(), batch, out_features)?;
        self.check_owner(OP, x)?;
        self.check_owner(OP, w)?;
        self.check_owner(OP, y)?;
        let m = to_i32(OP, "out_features", out_features)?;
        let n = to_i32(OP, "batch", batch)?;
        let k = to_i32(OP, "in_features", in_features)?;
        if batch == 0 || out_features == 0 {
            return Ok(());
        }
        if in_features == 0 {
            // An empty sum: cuBLAS would leave y untouched with k == 0 only when beta == 1.
            let stream = &self.inner.stream;
            return stream.memset_zeros(y).map_err(driver("cuMemsetD8Async"));
        }
        let mut blas_slot = lock(&self.inner.blas);
        if blas_slot.is_none() {
            if !cublas_present() {
                return Err(KernelError::NoCublas);
            }
            let stream = self.inner.stream.clone();
            let blas = guard("cublasCreate", || {
                CudaBlas::new(stream).map_err(|source| KernelError::Cublas {
                    op: "cublasCreate",
                    source,
                })
            })?;
            *blas_slot = Some(blas);
        }
        let Some(blas) = blas_slot.as_ref() else {
            return Err(KernelError::NoCublas);
        };
        // cuBLAS works in the calling thread's current context.
        self.inner
            .device
            .ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let stream = &self.inner.stream;
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        let alpha: f32 = 1.0;
        let beta: f32 = 0.0;
        // Column-major view: yᵀ [out, batch] = op(A) · B with A = w viewed as [in, out]
        // (ld = in, transposed) and B = x viewed as [in, batch] (ld = in).
        // SAFETY: `x`, `w`, `y` hold exactly batch * in, out * in and batch * out elements of T
        // (checked above), which is what m = out, n = batch, k = in with lda = ldb = in and
        // ldc = out address; alpha/beta point to f32 as CUBLAS_COMPUTE_32F requires and live
        // until the call returns; the handle is bound to this handle's stream.
        unsafe {
            cublas_result::gemm_ex(
                *blas.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                w_ptr as *const std::ffi::c_void,
                T::CUDA_DATA_TYPE,
                k,
                x_ptr as *const std::ffi::c_void,
                T::CUDA_DATA_TYPE,
                k,
                (&beta as *const f32).cast(),
                y_ptr as *mut std::ffi::c_void,
                T::CUDA_DATA_TYPE,
                m,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|source| KernelError::Cublas {
            op: "cublasGemmEx",
            source,
        })
    }
}

/// Compiled image for `source` on a device of compute capability `major.minor`, from the
/// process cache or NVRTC: CUBIN for `sm_{major}{minor}`, or PTX for `compute_75` when this NVRTC
/// does not know the architecture.
fn compiled_image(
    source: &'static crate::KernelSource,
    major: i32,
    minor: i32,
) -> Result<(CompileTarget, Arc<Vec<u8>>), KernelError> {
    let mut images = lock(&IMAGES);
    for target in [
        CompileTarget::cubin_for(major, minor),
        CompileTarget::Ptx("compute_75".into()),
    ] {
        if let Some((_, image)) = images
            .iter()
            .find(|((name, t), _)| *name == source.name && *t == target)
        {
            return Ok((target, image.clone()));
        }
    }
    let target = CompileTarget::cubin_for(major, minor);
    let compiled = match compile(source, &target) {
        Ok(c) => c,
        Err(KernelError::Compile { status, .. }) if status.contains("INVALID_OPTION") => {
            compile(source, &CompileTarget::Ptx("compute_75".into()))?
        }
        Err(e) => return Err(e),
    };
    let image = Arc::new(compiled.image);
    images.push(((source.name, compiled.target.clone()), image.clone()));
    Ok((compiled.target, image))
}

/// How [`Linear::forward`] applies the bias and the activation after the GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// cuBLAS GEMM, then this crate's fused bias + activation kernel (one extra pass over `y`).
    /// Every activation.
    Kernel,
    /// cuBLASLt GEMM with the bias and the activation in its own epilogue (no extra pass).
    /// Identity and ReLU only (cuBLASLt's GELU is the tanh approximation); other activations
    /// use [`Epilogue::Kernel`].
    CublasLt,
}

/// A fully connected layer on the device: `y = act(x · wᵀ + b)`, the GEMM through cuBLAS and
/// the bias + activation through this crate's fused epilogue kernel, or both in one cuBLASLt
/// call ([`Epilogue`]). Weights are `[out_features, in_features]` (PyTorch layout), bias
/// `[out_features]`.
#[derive(Debug)]
pub struct Linear<T: GpuFloat> {
    weight: CudaSlice<T>,
    bias: Option<CudaSlice<T>>,
    in_features: usize,
    out_features: usize,
    act: Activation,
    epilogue: Epilogue,
    /// cuBLASLt descriptors by batch size (used with [`Epilogue::CublasLt`]).
    lt_plans: lt::LtPlans,
}

impl<T: GpuFloat> Linear<T> {
    /// Uploads the weights (`[out_features, in_features]`) and bias (`[out_features]`). The
    /// epilogue is [`Epilogue::Kernel`]; see [`Linear::with_epilogue`].
    pub fn new(
        gpu: &Gpu,
        weight: &[T],
        bias: Option<&[T]>,
        in_features: usize,
        out_features: usize,
        act: Activation,
    ) -> Result<Self, KernelError> {
        const OP: &str = "Linear::new";
        check_len(OP, "weight", weight.len(), out_features, in_features)?;
        if let Some(b) = bias {
            check_len(OP, "bias", b.len(), 1, out_features)?;
        }
        Ok(Linear {
            weight: gpu.upload(weight)?,
            bias: bias.map(|b| gpu.upload(b)).transpose()?,
            in_features,
            out_features,
            act,
            epilogue: Epilogue::Kernel,
            lt_plans: lt::LtPlans::default(),
        })
    }

    /// Chooses how [`Linear::forward`] applies bias + activation. [`Epilogue::CublasLt`] is kept
    /// only where cuBLASLt computes this layer's activation exactly (identity, ReLU); otherwise
    /// the layer stays on [`Epilogue::Kernel`]. See [`Linear::epilogue`].
    pub fn with_epilogue(mut self, epilogue: Epilogue) -> Self {
        self.epilogue = match epilogue {
            Epilogue::CublasLt if lt::lt_epilogue(self.act, self.bias.is_some()).is_some() => {
                Epilogue::CublasLt
            }
            _ => Epilogue::Kernel,
        };
        self
    }

    /// The epilogue [`Linear::forward`] uses.
    pub fn epilogue(&self) -> Epilogue {
        self.epilogue
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn activation(&self) -> Activation {
        self.act
    }

    /// `y = act(x · wᵀ + b)` with the layer's [`Epilogue`]: one GEMM and one elementwise pass,
    /// or one cuBLASLt call. `x` `[batch, in_features]`, `y` `[batch, out_features]`.
    pub fn forward<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        gpu: &Gpu,
        x: &X,
        y: &mut Y,
        batch: usize,
    ) -> Result<(), KernelError> {
        match self.epilogue {
            Epilogue::Kernel => self.forward_kernel(gpu, x, y, batch),
            Epilogue::CublasLt => self.forward_lt(gpu, x, y, batch),
        }
    }

    /// [`Linear::forward`] with [`Epilogue::CublasLt`]: the bias and the activation in
    /// cuBLASLt's epilogue. An [`KernelError::InvalidArgument`] for activations other than
    /// identity and ReLU.
    pub fn forward_lt<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        gpu: &Gpu,
        x: &X,
        y: &mut Y,
        batch: usize,
    ) -> Result<(), KernelError> {
        gpu.lt_linear(
            &self.lt_plans,
            x,
            &self.weight,
            self.bias.as_ref(),
            y,
            (batch, self.in_features, self.out_features),
            self.act,
        )
    }

    /// [`Linear::forward`] with [`Epilogue::Kernel`]: cuBLAS GEMM, then the fused bias +
    /// activation kernel.
    pub fn forward_kernel<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        gpu: &Gpu,
        x: &X,
        y: &mut Y,
        batch: usize,
    ) -> Result<(), KernelError> {
        gpu.gemm(
            x,
            &self.weight,
            y,
            batch,
            self.in_features,
            self.out_features,
        )?;
        if self.bias.is_none() && self.act == Activation::Identity {
            return Ok(());
        }
        gpu.bias_act(y, self.bias.as_ref(), batch, self.out_features, self.act)
    }

    /// The same result without fusion, for comparison: GEMM, then a bias-add pass, then an
    /// activation pass (each a separate launch over `y`).
    pub fn forward_unfused<X: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        gpu: &Gpu,
        x: &X,
        y: &mut Y,
        batch: usize,
    ) -> Result<(), KernelError> {
        gpu.gemm(
            x,
            &self.weight,
            y,
            batch,
            self.in_features,
            self.out_features,
        )?;
        if let Some(b) = &self.bias {
            gpu.bias_act(y, Some(b), batch, self.out_features, Activation::Identity)?;
        }
        if self.act != Activation::Identity {
            gpu.activate(y, batch, self.out_features, self.act)?;
        }
        Ok(())
    }
}
