//! The CUDA C sources embedded in the crate, one [`KernelSource`] per `.cu` file, and what each
//! one must export. NVRTC compiles [`KernelSource::full_source`] (the shared prelude followed by
//! the file) at first use; `tests/nvrtc_compile.rs` compiles all of them in CI.

/// Shared device helpers (f16 conversion by PTX, activations, the column walk) prepended to every
/// kernel, since NVRTC gets no include path.
pub const PRELUDE: &str = include_str!("cuda/prelude.cuh");

/// One embedded `.cu` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// File name, used as the NVRTC program name (it appears in compiler messages).
    pub name: &'static str,
    /// The file's text (without the prelude).
    pub source: &'static str,
    /// The `extern "C"` entry points the file defines.
    pub entry_points: &'static [&'static str],
}

impl KernelSource {
    /// Prelude + a `#line` directive + the file, so compiler messages point into the right file.
    pub fn full_source(&self) -> String {
        format!(
            "#line 1 \"prelude.cuh\"\n{PRELUDE}\n#line 1 \"{}\"\n{}",
            self.name, self.source
        )
    }
}

/// Index of each source in [`KERNEL_SOURCES`], used by the per-device module cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Module {
    BiasAct = 0,
    Softmax = 1,
    TopK = 2,
    Standardize = 3,
    Histogram = 4,
}

impl Module {
    pub(crate) fn source(self) -> &'static KernelSource {
        &KERNEL_SOURCES[self as usize]
    }
}

/// Every kernel source of the crate.
pub static KERNEL_SOURCES: [KernelSource; 5] = [
    KernelSource {
        name: "bias_act.cu",
        source: include_str!("cuda/bias_act.cu"),
        entry_points: &["bias_act_f32", "bias_act_f16"],
    },
    KernelSource {
        name: "softmax.cu",
        source: include_str!("cuda/softmax.cu"),
        entry_points: &["softmax_rows_f32"],
    },
    KernelSource {
        name: "topk.cu",
        source: include_str!("cuda/topk.cu"),
        entry_points: &[
            "topk_rows_warp8_f32",
            "topk_rows_warp16_f32",
            "topk_rows_warp32_f32",
            "topk_rows_f32",
        ],
    },
    KernelSource {
        name: "standardize.cu",
        source: include_str!("cuda/standardize.cu"),
        entry_points: &["standardize_f32"],
    },
    KernelSource {
        name: "histogram.cu",
        source: include_str!("cuda/histogram.cu"),
        entry_points: &["histogram_f32"],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_indices_match_the_table() {
        let modules = [
            (Module::BiasAct, "bias_act.cu"),
            (Module::Softmax, "softmax.cu"),
            (Module::TopK, "topk.cu"),
            (Module::Standardize, "standardize.cu"),
            (Module::Histogram, "histogram.cu"),
        ];
        assert_eq!(modules.len(), KERNEL_SOURCES.len());
        for (m, name) in modules {
            assert_eq!(m.source().name, name);
        }
    }

    #[test]
    fn every_entry_point_is_an_extern_c_global_in_its_file() {
        for src in &KERNEL_SOURCES {
            for entry in src.entry_points {
                let decl = format!("extern \"C\" __global__ void {entry}(");
                assert!(src.source.contains(&decl), "{}: no `{decl}`", src.name);
            }
        }
    }

    #[test]
    fn every_pointer_parameter_has_a_shape_comment() {
        // STYLE 11: every pointer parameter (all are declared `__restrict__`) carries a
        // `// [shape]` comment on its line.
        for src in &KERNEL_SOURCES {
            for line in src.source.lines().filter(|l| l.contains("__restrict__")) {
                assert!(
                    line.contains("// ["),
                    "{}: pointer parameter without a shape comment: {line}",
                    src.name
                );
            }
        }
    }

    #[test]
    fn activation_codes_match_the_prelude() {
        for a in crate::Activation::ALL {
            let define = format!(
                "#define NEREID_ACT_{} {}",
                a.name().to_uppercase(),
                a.code()
            );
            assert!(PRELUDE.contains(&define), "prelude lacks `{define}`");
        }
    }
}
