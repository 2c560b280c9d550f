//! Compiling the embedded kernel sources with NVRTC. Needs the NVRTC library but no device, so
//! CI compiles every kernel (tests/nvrtc_compile.rs) on machines without a GPU.
//!
//! On a device the crate compiles to CUBIN for the device's exact architecture (`sm_90` on an
//! H100): a CUBIN from an NVRTC newer than the driver within the same major version still loads,
//! where PTX of a too-new ISA version would not. PTX (`compute_XY`) is the fallback when NVRTC
//! does not know the device's architecture, and what the CI compile test checks entry points in.

use std::ffi::{c_char, CString};

use cudarc::nvrtc::{result, sys};

use super::libs::{guard, nvrtc_present};
use crate::source::KernelSource;
use crate::KernelError;

/// What NVRTC produces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CompileTarget {
    /// PTX for a virtual architecture, e.g. `compute_75`; JIT-compiled by the driver at load.
    Ptx(String),
    /// Machine code for a real architecture, e.g. `sm_90`.
    Cubin(String),
}

impl CompileTarget {
    /// The `--gpu-architecture` value.
    pub fn arch(&self) -> &str {
        match self {
            CompileTarget::Ptx(a) | CompileTarget::Cubin(a) => a,
        }
    }

    /// CUBIN for compute capability `major.minor` (`sm_{major}{minor}`).
    pub fn cubin_for(major: i32, minor: i32) -> Self {
        CompileTarget::Cubin(format!("sm_{major}{minor}"))
    }
}

impl std::fmt::Display for CompileTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileTarget::Ptx(a) => write!(f, "PTX {a}"),
            CompileTarget::Cubin(a) => write!(f, "CUBIN {a}"),
        }
    }
}

/// One compiled kernel source.
#[derive(Debug, Clone)]
pub struct CompiledModule {
    /// The source's file name.
    pub name: &'static str,
    pub target: CompileTarget,
    /// PTX text (no trailing NUL) or CUBIN bytes.
    pub image: Vec<u8>,
    /// NVRTC's log (warnings), possibly empty.
    pub log: String,
}

impl CompiledModule {
    /// The PTX text, when this is PTX.
    pub fn ptx(&self) -> Option<&str> {
        match self.target {
            CompileTarget::Ptx(_) => std::str::from_utf8(&self.image).ok(),
            CompileTarget::Cubin(_) => None,
        }
    }
}

/// Options passed to NVRTC for every kernel (besides the architecture). No fast-math: the
/// kernels must agree with the CPU references within tight tolerances.
pub const NVRTC_OPTIONS: [&str; 1] = ["--std=c++17"];

fn require_nvrtc() -> Result<(), KernelError> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(KernelError::NoNvrtc)
    }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), KernelError> {
    require_nvrtc()?;
    guard("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid for writes of one c_int for the duration of the call.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| KernelError::Nvrtc {
                op: "nvrtcVersion",
                message: format!("{e:?}"),
            })?;
        Ok((major, minor))
    })
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Owns an `nvrtcProgram` and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `create_program` and is destroyed exactly once, here.
        // A failure to destroy only leaks the program; nothing to report it to.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles one kernel source (prelude included) for `target`.
pub fn compile(
    source: &KernelSource,
    target: &CompileTarget,
) -> Result<CompiledModule, KernelError> {
    require_nvrtc()?;
    guard("NVRTC compile", || compile_inner(source, target))
}

fn compile_inner(
    source: &KernelSource,
    target: &CompileTarget,
) -> Result<CompiledModule, KernelError> {
    let nvrtc_err = |op: &'static str| {
        move |e: result::NvrtcError| KernelError::Nvrtc {
            op,
            message: format!("{e:?}"),
        }
    };
    let src = CString::new(source.full_source()).map_err(|_| KernelError::Nvrtc {
        op: "nvrtcCreateProgram",
        message: format!("{} contains a NUL byte", source.name),
    })?;
    let name = CString::new(source.name).map_err(|_| KernelError::Nvrtc {
        op: "nvrtcCreateProgram",
        message: "program name contains a NUL byte".into(),
    })?;
    let prog = Program(
        result::create_program(&src, Some(name.as_c_str()))
            .map_err(nvrtc_err("nvrtcCreateProgram"))?,
    );

    let mut options: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={}", target.arch()));

    // SAFETY: `prog.0` is a live program created above (destroyed only when `prog` drops), and
    // `src` / `name`, which it may reference, outlive it.
    let compiled = unsafe { result::compile_program(prog.0, &options) };
    // SAFETY: as above; the log is available whether or not compilation succeeded.
    let log = unsafe { result::get_program_log(prog.0) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(KernelError::Compile {
            module: source.name,
            target: target.to_string(),
            status: format!("{e:?}"),
            log,
        });
    }

    let image = match target {
        CompileTarget::Ptx(_) => {
            // SAFETY: `prog.0` is live and compiled successfully.
            let ptx = unsafe { result::get_ptx(prog.0) }.map_err(nvrtc_err("nvrtcGetPTX"))?;
            c_chars_to_string(&ptx).into_bytes()
        }
        CompileTarget::Cubin(_) => {
            let mut size = 0usize;
            // SAFETY: `prog.0` is live and compiled for a real architecture; `size` is valid for
            // one write.
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(nvrtc_err("nvrtcGetCUBINSize"))?;
            let mut cubin = vec![0u8; size];
            // SAFETY: `cubin` has exactly the `size` bytes NVRTC said the CUBIN needs.
            unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast::<c_char>()) }
                .result()
                .map_err(nvrtc_err("nvrtcGetCUBIN"))?;
            cubin
        }
    };
    Ok(CompiledModule {
        name: source.name,
        target: target.clone(),
        image,
        log,
    })
}

/// Compiles every source of [`crate::KERNEL_SOURCES`] for `target`, stopping at the first error.
pub fn compile_all(target: &CompileTarget) -> Result<Vec<CompiledModule>, KernelError> {
    crate::KERNEL_SOURCES
        .iter()
        .map(|s| compile(s, target))
        .collect()
}

/// The PTX entry names (`.entry NAME(`) defined in `ptx`.
pub fn ptx_entry_points(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix(".visible .entry ")?;
            Some(rest.split('(').next()?.trim().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_are_read_from_ptx() {
        let ptx = ".version 9.0\n.visible .entry bias_act_f32(\n\t.param .u64 a\n)\n\
                   .func helper(\n.visible .entry softmax_rows_f32(";
        assert_eq!(ptx_entry_points(ptx), ["bias_act_f32", "softmax_rows_f32"]);
    }

    #[test]
    fn targets_name_their_architecture() {
        assert_eq!(CompileTarget::cubin_for(9, 0).arch(), "sm_90");
        assert_eq!(
            CompileTarget::Ptx("compute_75".into()).to_string(),
            "PTX compute_75"
        );
    }
}
