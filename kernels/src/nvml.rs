//! GPU utilisation and memory from NVML (`libnvidia-ml.so.1`, shipped with the NVIDIA driver),
//! for the server's `nv_gpu_*` metrics. Loaded at run time like everything CUDA here: on a
//! machine without the driver, [`sample`] returns `None` and [`unavailable_reason`] says why;
//! nothing panics and nothing fails a caller.
//!
//! NVML is initialised once per process, on the first call, and never shut down (the handles
//! stay valid for the life of the process). NVML is thread-safe; [`sample`] may be called from
//! any thread, for example on every metrics scrape (a few NVML queries per GPU, well under a
//! millisecond each).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

/// One GPU as NVML sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    /// NVML's device index (not necessarily the CUDA ordinal when `CUDA_VISIBLE_DEVICES` is set).
    pub index: u32,
    /// `GPU-xxxxxxxx-xxxx-...`, Triton's `gpu_uuid` label.
    pub uuid: String,
    /// Share of the last sample period during which a kernel ran, in [0, 1].
    pub utilization: f64,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

type Device = *mut c_void;
/// `nvmlReturn_t`: 0 is success.
type Ret = c_int;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

/// The NVML entry points used here, resolved once.
struct Nvml {
    /// Keeps the library loaded (the function pointers below point into it).
    _lib: libloading::Library,
    device_count: unsafe extern "C" fn(*mut c_uint) -> Ret,
    device_handle: unsafe extern "C" fn(c_uint, *mut Device) -> Ret,
    device_uuid: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> Ret,
    memory: unsafe extern "C" fn(Device, *mut Memory) -> Ret,
}

// SAFETY: NVML's API is thread-safe and the struct only holds the library handle and plain
// function pointers into it.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

const LIBRARY_NAMES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

fn load() -> Result<Nvml, String> {
    let mut errors = Vec::new();
    let mut lib = None;
    for name in LIBRARY_NAMES {
        // SAFETY: loading the NVIDIA management library runs its initialisers, which only set up
        // internal state; the handle is kept for the life of the process.
        match unsafe { libloading::Library::new(name) } {
            Ok(l) => {
                lib = Some(l);
                break;
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    let lib = lib.ok_or_else(|| format!("NVML not found ({})", errors.join("; ")))?;
    // SAFETY: each symbol is looked up with the C signature NVML documents for it (nvml.h);
    // the pointers are copied out and `lib` is moved into the returned struct, so they never
    // outlive the library.
    unsafe {
        let sym = |name: &str| format!("NVML lacks {name}");
        let init: unsafe extern "C" fn() -> Ret = *lib
            .get::<unsafe extern "C" fn() -> Ret>(b"nvmlInit_v2\0")
            .map_err(|_| sym("nvmlInit_v2"))?;
        let nvml = Nvml {
            device_count: *lib
                .get(b"nvmlDeviceGetCount_v2\0")
                .map_err(|_| sym("nvmlDeviceGetCount_v2"))?,
            device_handle: *lib
                .get(b"nvmlDeviceGetHandleByIndex_v2\0")
                .map_err(|_| sym("nvmlDeviceGetHandleByIndex_v2"))?,
            device_uuid: *lib
                .get(b"nvmlDeviceGetUUID\0")
                .map_err(|_| sym("nvmlDeviceGetUUID"))?,
            utilization: *lib
                .get(b"nvmlDeviceGetUtilizationRates\0")
                .map_err(|_| sym("nvmlDeviceGetUtilizationRates"))?,
            memory: *lib
                .get(b"nvmlDeviceGetMemoryInfo\0")
                .map_err(|_| sym("nvmlDeviceGetMemoryInfo"))?,
            _lib: lib,
        };
        let r = init();
        if r != 0 {
            return Err(format!("nvmlInit_v2 failed (nvmlReturn_t {r})"));
        }
        Ok(nvml)
    }
}

fn nvml() -> Result<&'static Nvml, &'static str> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(load).as_ref().map_err(String::as_str)
}

/// Why [`sample`] returns `None`, or `None` when NVML is loaded.
pub fn unavailable_reason() -> Option<String> {
    nvml().err().map(str::to_string)
}

/// Utilisation and memory of every GPU NVML lists; `None` without NVML. A device whose queries
/// fail is left out.
pub fn sample() -> Option<Vec<GpuSample>> {
    let nvml = nvml().ok()?;
    let mut count: c_uint = 0;
    // SAFETY: `count` is valid for one write.
    if unsafe { (nvml.device_count)(&mut count) } != 0 {
        return Some(Vec::new());
    }
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let mut device: Device = std::ptr::null_mut();
        let mut uuid = [0 as c_char; 96];
        let mut util = Utilization::default();
        let mut mem = Memory::default();
        // SAFETY: every out-pointer is valid for the write NVML makes; the UUID buffer's length
        // is passed with it (NVML writes a NUL-terminated string of at most 80 bytes); `device`
        // is used only after NVML returned success for it.
        let ok = unsafe {
            (nvml.device_handle)(index, &mut device) == 0
                && (nvml.device_uuid)(device, uuid.as_mut_ptr(), uuid.len() as c_uint) == 0
                && (nvml.utilization)(device, &mut util) == 0
                && (nvml.memory)(device, &mut mem) == 0
        };
        if !ok {
            continue;
        }
        let bytes: Vec<u8> = uuid
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        gpus.push(GpuSample {
            index,
            uuid: String::from_utf8_lossy(&bytes).into_owned(),
            utilization: f64::from(util.gpu.min(100)) / 100.0,
            memory_total_bytes: mem.total,
            memory_used_bytes: mem.used,
        });
    }
    Some(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_never_panics_and_says_why_not() {
        match sample() {
            Some(gpus) => {
                for g in &gpus {
                    assert!(g.uuid.starts_with("GPU-"), "{g:?}");
                    assert!((0.0..=1.0).contains(&g.utilization), "{g:?}");
                    assert!(g.memory_used_bytes <= g.memory_total_bytes, "{g:?}");
                }
                println!("NVML: {gpus:?}");
            }
            None => {
                let why = unavailable_reason().expect("a reason when there is no sample");
                assert!(why.contains("NVML"), "{why}");
                nereid_testkit::skip(&nereid_testkit::GPU, why);
            }
        }
    }
}
