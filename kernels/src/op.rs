//! Descriptions of the operations shared by the CPU references and the GPU wrappers: the
//! activation functions, validated histogram edges, top-k results, and the shape checks both
//! sides use. Pure data, no unsafe, no CUDA.

use crate::KernelError;

/// Activation applied by the fused bias + activation epilogue.
///
/// The codes are the `NEREID_ACT_*` constants of `src/cuda/prelude.cuh`; [`Activation::apply`]
/// is the CPU twin of the device function `nereid_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `v`
    Identity,
    /// `v < 0 ? 0 : v` (NaN stays NaN, -0 stays -0).
    Relu,
    /// Exact GELU, `0.5 * v * erfc(-v / sqrt(2))` (PyTorch's default `approximate='none'`).
    Gelu,
    /// `1 / (1 + exp(-v))`
    Sigmoid,
    /// `tanh(v)`
    Tanh,
}

impl Activation {
    /// Every activation, for tests and benchmarks.
    pub const ALL: [Activation; 5] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Gelu,
        Activation::Sigmoid,
        Activation::Tanh,
    ];

    /// The code passed to the kernels (`NEREID_ACT_*`).
    pub fn code(self) -> i32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
            Activation::Sigmoid => 3,
            Activation::Tanh => 4,
        }
    }

    /// Lower-case name (`"relu"`, ...), as used in configs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }

    /// Parses [`Activation::name`]; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The activation in f32, with the same formula as the kernels.
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => {
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            }
            Activation::Gelu => 0.5 * v * libm::erfcf(-v * std::f32::consts::FRAC_1_SQRT_2),
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Activation::Tanh => v.tanh(),
        }
    }
}

/// Per-feature histogram bin edges, validated: every feature has the same number of edges
/// (at least 2), all finite and strictly increasing. Row-major `[features, edges_per_feature]`.
///
/// Counts for feature `c` are laid out as [`HistogramEdges::slots`] consecutive `u32`s:
/// `bins` bin counts, then underflow, overflow and NaN (see `src/cuda/histogram.cu`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramEdges {
    features: usize,
    edges_per_feature: usize,
    edges: Vec<f32>,
}

impl HistogramEdges {
    /// Validates and wraps `edges`, row-major `[features, edges_per_feature]`.
    pub fn new(
        features: usize,
        edges_per_feature: usize,
        edges: Vec<f32>,
    ) -> Result<Self, KernelError> {
        const OP: &str = "HistogramEdges::new";
        if edges_per_feature < 2 {
            return Err(KernelError::invalid(
                OP,
                format!("need at least 2 edges per feature (1 bin), got {edges_per_feature}"),
            ));
        }
        check_len(OP, "edges", edges.len(), features, edges_per_feature)?;
        if edges_per_feature > i32::MAX as usize - 3 {
            return Err(KernelError::invalid(OP, "too many edges per feature"));
        }
        for (feature, row) in edges.chunks_exact(edges_per_feature).enumerate() {
            if let Some(bad) = row.iter().position(|e| !e.is_finite()) {
                return Err(KernelError::invalid(
                    OP,
                    format!(
                        "feature {feature}: edge {bad} is {} (must be finite)",
                        row[bad]
                    ),
                ));
            }
            if let Some(i) = row.windows(2).position(|w| w[0] >= w[1]) {
                return Err(KernelError::invalid(
                    OP,
                    format!(
                        "feature {feature}: edges must be strictly increasing, but edge {i} = {} \
                         and edge {} = {}",
                        row[i],
                        i + 1,
                        row[i + 1]
                    ),
                ));
            }
        }
        Ok(HistogramEdges {
            features,
            edges_per_feature,
            edges,
        })
    }

    /// The same edges for every one of `features` features.
    pub fn uniform(features: usize, edges: &[f32]) -> Result<Self, KernelError> {
        let all = edges
            .iter()
            .copied()
            .cycle()
            .take(edges.len() * features)
            .collect();
        HistogramEdges::new(features, edges.len(), all)
    }

    /// Number of features (columns of the input).
    pub fn features(&self) -> usize {
        self.features
    }

    /// Number of edges per feature (`bins() + 1`).
    pub fn edges_per_feature(&self) -> usize {
        self.edges_per_feature
    }

    /// Number of bins per feature.
    pub fn bins(&self) -> usize {
        self.edges_per_feature - 1
    }

    /// Count slots per feature: the bins, then underflow, overflow, NaN.
    pub fn slots(&self) -> usize {
        self.bins() + 3
    }

    /// Length of the counts buffer: `features * slots`.
    pub fn counts_len(&self) -> usize {
        self.features * self.slots()
    }

    /// Index of the underflow slot within a feature's slots.
    pub fn underflow_slot(&self) -> usize {
        self.bins()
    }

    /// Index of the overflow slot within a feature's slots.
    pub fn overflow_slot(&self) -> usize {
        self.bins() + 1
    }

    /// Index of the NaN slot within a feature's slots.
    pub fn nan_slot(&self) -> usize {
        self.bins() + 2
    }

    /// The edges of feature `c`.
    pub fn feature_edges(&self, c: usize) -> &[f32] {
        &self.edges[c * self.edges_per_feature..(c + 1) * self.edges_per_feature]
    }

    /// All edges, row-major `[features, edges_per_feature]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.edges
    }

    /// The slot that `v` counts in for feature `c`; the CPU twin of `histogram_slot` in
    /// `src/cuda/histogram.cu`.
    pub fn slot(&self, c: usize, v: f32) -> usize {
        let e = self.feature_edges(c);
        let bins = e.len() - 1;
        if v.is_nan() {
            return bins + 2;
        }
        if v < e[0] {
            return bins;
        }
        let last = e[bins];
        if v > last {
            return bins + 1;
        }
        if v == last {
            return bins - 1;
        }
        // e[0] <= v < last: the last edge <= v starts the bin.
        e.partition_point(|&edge| edge <= v) - 1
    }
}

/// Result of a row-wise top-k on the host: `k` is the effective k (`min(k, cols)`), `values` and
/// `indices` are row-major `[rows, k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    pub rows: usize,
    pub k: usize,
    pub values: Vec<f32>,
    pub indices: Vec<u32>,
}

/// `rows * cols`, or a shape error when it overflows `usize`.
pub(crate) fn elements(op: &'static str, rows: usize, cols: usize) -> Result<usize, KernelError> {
    rows.checked_mul(cols)
        .ok_or_else(|| KernelError::shape(op, format!("{rows} x {cols} overflows usize")))
}

/// Checks that buffer `name` has exactly `rows * cols` elements.
pub(crate) fn check_len(
    op: &'static str,
    name: &str,
    len: usize,
    rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    let want = elements(op, rows, cols)?;
    if len != want {
        return Err(KernelError::shape(
            op,
            format!("{name} has {len} elements, expected {rows} x {cols} = {want}"),
        ));
    }
    Ok(())
}

/// Ordering used by top-k: `Less` when `(a, ia)` comes first. Larger value first, NaN last, ties
/// (including -0 == +0 and NaN == NaN) by lower index. The CPU twin of `topk_before`.
pub(crate) fn topk_order(a: f32, ia: usize, b: f32, ib: usize) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => ia.cmp(&ib),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => {
            if a > b {
                Ordering::Less
            } else if a < b {
                Ordering::Greater
            } else {
                ia.cmp(&ib)
            }
        }
    }
}
