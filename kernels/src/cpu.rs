//! CPU reference implementations: the test oracle for every GPU kernel, and the CPU path of the
//! same operations. Each function documents the semantics it shares with its `.cu` twin; shapes
//! are row-major and checked (a wrong length is a [`KernelError::Shape`], never a panic).
//!
//! Always built, no unsafe, no CUDA.

#![forbid(unsafe_code)]

use half::f16;

use crate::op::{check_len, elements, topk_order};
use crate::{Activation, HistogramEdges, KernelError, TopK};

/// In place: `y[r, c] = act(y[r, c] + bias[c])`, or `act(y[r, c])` without a bias.
/// `y` is `[rows, cols]`, `bias` is `[cols]`. Twin of `bias_act_f32` in `src/cuda/bias_act.cu`.
pub fn bias_act_f32(
    y: &mut [f32],
    bias: Option<&[f32]>,
    rows: usize,
    cols: usize,
    act: Activation,
) -> Result<(), KernelError> {
    const OP: &str = "cpu::bias_act_f32";
    check_len(OP, "y", y.len(), rows, cols)?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), 1, cols)?;
    }
    if cols == 0 {
        return Ok(());
    }
    for row in y.chunks_exact_mut(cols) {
        match bias {
            Some(b) => {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = act.apply(*v + b);
                }
            }
            None => {
                for v in row.iter_mut() {
                    *v = act.apply(*v);
                }
            }
        }
    }
    Ok(())
}

/// The f16 variant of [`bias_act_f32`]: widen (exact), compute in f32, round to nearest-even
/// once. Twin of `bias_act_f16`.
pub fn bias_act_f16(
    y: &mut [f16],
    bias: Option<&[f16]>,
    rows: usize,
    cols: usize,
    act: Activation,
) -> Result<(), KernelError> {
    const OP: &str = "cpu::bias_act_f16";
    check_len(OP, "y", y.len(), rows, cols)?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), 1, cols)?;
    }
    if cols == 0 {
        return Ok(());
    }
    for row in y.chunks_exact_mut(cols) {
        for (c, v) in row.iter_mut().enumerate() {
            let mut x = v.to_f32();
            if let Some(b) = bias {
                x += b[c].to_f32();
            }
            *v = f16::from_f32(act.apply(x));
        }
    }
    Ok(())
}

/// Row-wise softmax `y[r, c] = exp(x[r, c] - m) / sum exp(x[r, .] - m)`, `m` the row maximum
/// ignoring NaN, evaluated in IEEE arithmetic as written: a NaN or +Inf in a row, or a row of
/// only -Inf, gives a row of NaN; -Inf entries get 0. Twin of `softmax_rows_f32` (which sums by
/// a tree in f32; this sums in f64, so results agree to a few f32 ulps).
pub fn softmax_rows_f32(
    x: &[f32],
    y: &mut [f32],
    rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    const OP: &str = "cpu::softmax_rows_f32";
    check_len(OP, "x", x.len(), rows, cols)?;
    check_len(OP, "y", y.len(), rows, cols)?;
    if cols == 0 {
        return Ok(());
    }
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Each exp in f32 like the kernel; the sum in f64 (rounded once), so the oracle does not
        // carry the O(cols) error of a sequential f32 sum that the kernel's tree reduction avoids.
        let s = xr.iter().map(|&v| (v - m).exp() as f64).sum::<f64>() as f32;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - m).exp() / s;
        }
    }
    Ok(())
}

/// Row-wise top-k of `x` (`[rows, cols]`): per row the `min(k, cols)` first elements in the order
/// "larger value first, ties by lower index, NaN last". Twin of `topk_rows_f32`.
pub fn topk_rows_f32(x: &[f32], rows: usize, cols: usize, k: usize) -> Result<TopK, KernelError> {
    const OP: &str = "cpu::topk_rows_f32";
    check_len(OP, "x", x.len(), rows, cols)?;
    if cols > u32::MAX as usize {
        return Err(KernelError::invalid(OP, "rows longer than u32::MAX"));
    }
    let k = k.min(cols);
    let n = elements(OP, rows, k)?;
    let mut values = Vec::with_capacity(n);
    let mut indices = Vec::with_capacity(n);
    if k > 0 {
        let mut order: Vec<usize> = Vec::with_capacity(cols);
        for xr in x.chunks_exact(cols) {
            order.clear();
            order.extend(0..cols);
            order.sort_unstable_by(|&a, &b| topk_order(xr[a], a, xr[b], b));
            for &i in &order[..k] {
                values.push(xr[i]);
                // `cols <= u32::MAX` was checked above.
                indices.push(i as u32);
            }
        }
    }
    Ok(TopK {
        rows,
        k,
        values,
        indices,
    })
}

/// Per-feature standardisation `y[r, c] = (x[r, c] - mean[c]) / std[c]` in f32 (IEEE-rounded
/// subtraction then division; bit-identical to the GPU). Twin of `standardize_f32`.
pub fn standardize_f32(
    x: &[f32],
    mean: &[f32],
    std: &[f32],
    y: &mut [f32],
    rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    const OP: &str = "cpu::standardize_f32";
    check_len(OP, "x", x.len(), rows, cols)?;
    check_len(OP, "mean", mean.len(), 1, cols)?;
    check_len(OP, "std", std.len(), 1, cols)?;
    check_len(OP, "y", y.len(), rows, cols)?;
    if cols == 0 {
        return Ok(());
    }
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        for c in 0..cols {
            yr[c] = (xr[c] - mean[c]) / std[c];
        }
    }
    Ok(())
}

/// Adds the per-feature histogram counts of `x` (`[rows, cols]`, `cols == edges.features()`) to
/// `counts` (`[cols, edges.slots()]`: bins, underflow, overflow, NaN). See [`HistogramEdges`] for
/// the bin rule. Twin of `histogram_f32`.
pub fn histogram_f32(
    x: &[f32],
    rows: usize,
    cols: usize,
    edges: &HistogramEdges,
    counts: &mut [u32],
) -> Result<(), KernelError> {
    const OP: &str = "cpu::histogram_f32";
    check_len(OP, "x", x.len(), rows, cols)?;
    if edges.features() != cols {
        return Err(KernelError::shape(
            OP,
            format!("edges are for {} features, x has {cols}", edges.features()),
        ));
    }
    check_len(OP, "counts", counts.len(), cols, edges.slots())?;
    if cols == 0 {
        return Ok(());
    }
    let slots = edges.slots();
    for xr in x.chunks_exact(cols) {
        for (c, &v) in xr.iter().enumerate() {
            let slot = &mut counts[c * slots + edges.slot(c, v)];
            *slot = slot.wrapping_add(1);
        }
    }
    Ok(())
}

/// `y = x · wᵀ` with `x` `[batch, in_features]`, `w` `[out_features, in_features]` (PyTorch's
/// `nn.Linear` layout) and `y` `[batch, out_features]`; dot products accumulated in f64 and
/// rounded to f32 once (a more accurate oracle than any f32 GEMM).
pub fn gemm_f32(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    batch: usize,
    in_features: usize,
    out_features: usize,
) -> Result<(), KernelError> {
    const OP: &str = "cpu::gemm_f32";
    check_len(OP, "x", x.len(), batch, in_features)?;
    check_len(OP, "w", w.len(), out_features, in_features)?;
    check_len(OP, "y", y.len(), batch, out_features)?;
    if out_features == 0 {
        return Ok(());
    }
    for (b, yr) in y.chunks_exact_mut(out_features).enumerate() {
        let xr = &x[b * in_features..(b + 1) * in_features];
        for (o, out) in yr.iter_mut().enumerate() {
            let wr = &w[o * in_features..(o + 1) * in_features];
            let dot: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            *out = dot as f32;
        }
    }
    Ok(())
}

/// `Linear` in f32: [`gemm_f32`] then [`bias_act_f32`].
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    batch: usize,
    in_features: usize,
    out_features: usize,
    act: Activation,
) -> Result<(), KernelError> {
    gemm_f32(x, w, y, batch, in_features, out_features)?;
    bias_act_f32(y, bias, batch, out_features, act)
}

/// `Linear` in f16 with the GPU's rounding points: the GEMM accumulates in higher precision and
/// rounds to f16 once (cuBLAS with f32 compute), then [`bias_act_f16`] widens, adds, activates and
/// rounds again.
#[allow(clippy::too_many_arguments)]
pub fn linear_f16(
    x: &[f16],
    w: &[f16],
    bias: Option<&[f16]>,
    y: &mut [f16],
    batch: usize,
    in_features: usize,
    out_features: usize,
    act: Activation,
) -> Result<(), KernelError> {
    const OP: &str = "cpu::linear_f16";
    check_len(OP, "x", x.len(), batch, in_features)?;
    check_len(OP, "w", w.len(), out_features, in_features)?;
    check_len(OP, "y", y.len(), batch, out_features)?;
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let mut yf = vec![0.0f32; y.len()];
    gemm_f32(&xf, &wf, &mut yf, batch, in_features, out_features)?;
    for (o, v) in y.iter_mut().zip(&yf) {
        *o = f16::from_f32(*v);
    }
    bias_act_f16(y, bias, batch, out_features, act)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> f16 {
        f16::from_f32(v)
    }

    #[test]
    fn bias_act_applies_bias_per_column_then_activation() {
        let mut y = vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0];
        bias_act_f32(&mut y, Some(&[0.5, 0.5, -10.0]), 2, 3, Activation::Relu).unwrap();
        assert_eq!(y, vec![1.5, 0.0, 0.0, 0.0, 5.5, 0.0]);
    }

    #[test]
    fn bias_act_without_bias_keeps_negative_zero_and_nan() {
        let mut y = vec![-0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        bias_act_f32(&mut y, None, 1, 4, Activation::Relu).unwrap();
        assert!(y[0] == 0.0 && y[0].is_sign_negative());
        assert!(y[1].is_nan());
        assert_eq!(y[2], f32::INFINITY);
        assert_eq!(y[3], 0.0);
    }

    #[test]
    fn activations_match_their_formulas_at_known_points() {
        assert_eq!(Activation::Identity.apply(-3.5), -3.5);
        assert_eq!(Activation::Sigmoid.apply(0.0), 0.5);
        assert_eq!(Activation::Sigmoid.apply(f32::NEG_INFINITY), 0.0);
        assert_eq!(Activation::Sigmoid.apply(f32::INFINITY), 1.0);
        assert_eq!(Activation::Tanh.apply(f32::INFINITY), 1.0);
        assert_eq!(Activation::Gelu.apply(0.0), 0.0);
        // GELU(1) = 0.8413447460685429 (Φ(1) = 0.8413447...)
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_8).abs() < 1e-7);
        // Deep negative tail keeps relative accuracy: GELU(-5) = -5 * Φ(-5) = -1.43325786e-6.
        let g = Activation::Gelu.apply(-5.0);
        assert!((g - -1.433_257_9e-6).abs() < 1e-12, "{g}");
        assert_eq!(Activation::Gelu.apply(f32::INFINITY), f32::INFINITY);
        for a in Activation::ALL {
            assert!(a.apply(f32::NAN).is_nan(), "{a:?}");
            assert_eq!(Activation::from_name(a.name()), Some(a));
        }
    }

    #[test]
    fn bias_act_f16_rounds_once_to_nearest_even() {
        // 1 + 2^-11 is exactly half-way between 1 and the next f16 (1 + 2^-10): ties to even -> 1.
        let mut y = vec![h(1.0)];
        bias_act_f16(
            &mut y,
            Some(&[h(0.000_488_281_25)]),
            1,
            1,
            Activation::Identity,
        )
        .unwrap();
        assert_eq!(y[0], h(1.0));
        // 1 + 3 * 2^-11 lies half-way between 1 + 2^-10 and 1 + 2^-9: ties to even -> 1 + 2^-9.
        let mut y = vec![h(1.0)];
        bias_act_f16(
            &mut y,
            Some(&[h(0.001_464_843_8)]),
            1,
            1,
            Activation::Identity,
        )
        .unwrap();
        assert_eq!(y[0].to_f32(), 1.0 + 2.0f32.powi(-9));
        // Overflow rounds to +Inf; relu of a negative is +0.
        let mut y = vec![h(60000.0), h(-1.0)];
        bias_act_f16(&mut y, Some(&[h(10000.0), h(0.0)]), 1, 2, Activation::Relu).unwrap();
        assert_eq!(y[0], f16::INFINITY);
        assert_eq!(y[1], h(0.0));
    }

    #[test]
    fn shape_mismatches_are_errors_not_panics() {
        let mut y = vec![0.0; 5];
        let e = bias_act_f32(&mut y, None, 2, 3, Activation::Relu).unwrap_err();
        assert!(matches!(e, KernelError::Shape { .. }), "{e}");
        let e = bias_act_f32(&mut [0.0; 6], Some(&[1.0]), 2, 3, Activation::Relu).unwrap_err();
        assert!(e.to_string().contains("bias has 1 elements"), "{e}");
        let e = softmax_rows_f32(&[0.0; 4], &mut [0.0; 3], 2, 2).unwrap_err();
        assert!(matches!(e, KernelError::Shape { .. }));
        let e = topk_rows_f32(&[0.0; 3], usize::MAX, 2, 1).unwrap_err();
        assert!(matches!(e, KernelError::Shape { .. }), "{e}");
        let e = gemm_f32(&[0.0; 4], &[0.0; 4], &mut [0.0; 3], 2, 2, 2).unwrap_err();
        assert!(matches!(e, KernelError::Shape { .. }));
    }

    #[test]
    fn empty_shapes_are_fine() {
        let mut y: Vec<f32> = vec![];
        bias_act_f32(&mut y, None, 0, 7, Activation::Gelu).unwrap();
        bias_act_f32(&mut y, Some(&[]), 3, 0, Activation::Gelu).unwrap();
        softmax_rows_f32(&[], &mut [], 4, 0).unwrap();
        softmax_rows_f32(&[], &mut [], 0, 4).unwrap();
        let t = topk_rows_f32(&[], 3, 0, 5).unwrap();
        assert_eq!((t.rows, t.k, t.values.len()), (3, 0, 0));
        standardize_f32(&[], &[], &[], &mut [], 5, 0).unwrap();
        let edges = HistogramEdges::uniform(0, &[0.0, 1.0]).unwrap();
        histogram_f32(&[], 9, 0, &edges, &mut []).unwrap();
    }

    #[test]
    fn softmax_rows_sum_to_one_and_handle_special_values() {
        let x = [1.0, 2.0, 3.0, 1000.0, 1000.0, f32::NEG_INFINITY];
        let mut y = [0.0; 6];
        softmax_rows_f32(&x, &mut y, 2, 3).unwrap();
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0).exp()).collect();
        let s: f64 = e.iter().sum();
        for c in 0..3 {
            assert!((y[c] as f64 - e[c] / s).abs() < 1e-7);
        }
        // Large equal logits do not overflow; -Inf gets exactly 0.
        assert_eq!(&y[3..], &[0.5, 0.5, 0.0]);

        let specials = [
            [f32::NAN, 1.0, 2.0],
            [f32::INFINITY, 1.0, 2.0],
            [f32::NEG_INFINITY; 3],
        ];
        for row in specials {
            let mut y = [0.0; 3];
            softmax_rows_f32(&row, &mut y, 1, 3).unwrap();
            assert!(y.iter().all(|v| v.is_nan()), "{row:?} -> {y:?}");
        }
    }

    #[test]
    fn topk_orders_by_value_then_index_with_nan_last() {
        let x = [
            3.0,
            f32::NAN,
            3.0,
            -0.0,
            0.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
        ];
        let t = topk_rows_f32(&x, 1, 8, 100).unwrap();
        assert_eq!(t.k, 8, "k clamps to the row length");
        assert_eq!(t.indices, vec![6, 0, 2, 3, 4, 5, 1, 7]);
        assert_eq!(
            t.values[..6],
            [f32::INFINITY, 3.0, 3.0, -0.0, 0.0, f32::NEG_INFINITY]
        );
        assert!(t.values[6].is_nan() && t.values[7].is_nan());

        let t = topk_rows_f32(&[1.0, 5.0, 2.0, 9.0, 9.0, 0.0], 2, 3, 2).unwrap();
        assert_eq!(t.indices, vec![1, 2, 0, 1]);
        assert_eq!(t.values, vec![5.0, 2.0, 9.0, 9.0]);

        let t = topk_rows_f32(&[1.0, 2.0], 1, 2, 0).unwrap();
        assert_eq!((t.k, t.values.len()), (0, 0));
    }

    #[test]
    fn standardize_is_exact_ieee() {
        let x = [1.0, 10.0, 3.0, f32::NAN];
        let mut y = [0.0; 4];
        standardize_f32(&x, &[1.0, 2.0], &[2.0, 0.0], &mut y, 2, 2).unwrap();
        assert_eq!(y[0], 0.0);
        assert_eq!(y[1], f32::INFINITY, "std 0 follows IEEE");
        assert_eq!(y[2], 1.0);
        assert!(y[3].is_nan());
    }

    #[test]
    fn histogram_bins_edges_underflow_overflow_nan() {
        let edges = HistogramEdges::new(2, 3, vec![0.0, 1.0, 2.0, -1.0, 0.0, 1.0]).unwrap();
        assert_eq!((edges.bins(), edges.slots()), (2, 5));
        // Rows of (feature 0, feature 1).
        #[rustfmt::skip]
        let x = [
            0.0, -1.0, // the first edge opens the first bin
            0.999, 0.5, //
            1.0, 1.0, // feature 0: e_1 opens bin 1; feature 1: the last edge closes the last bin
            2.0, -1.5, //
            2.5, f32::INFINITY, //
            -0.1, f32::NEG_INFINITY, //
            f32::NAN, f32::NAN,
        ];
        let mut counts = vec![0u32; 10];
        histogram_f32(&x, 7, 2, &edges, &mut counts).unwrap();
        // feature 0 saw 0, 0.999, 1, 2, 2.5, -0.1, NaN
        assert_eq!(&counts[..5], &[2, 2, 1, 1, 1]);
        // feature 1 saw -1, 0.5, 1, -1.5, Inf, -Inf, NaN
        assert_eq!(&counts[5..], &[1, 2, 2, 1, 1]);
        // Counts accumulate.
        histogram_f32(&x, 7, 2, &edges, &mut counts).unwrap();
        assert_eq!(&counts[..5], &[4, 4, 2, 2, 2]);
    }

    #[test]
    fn histogram_edges_are_validated() {
        assert!(HistogramEdges::new(1, 1, vec![0.0]).is_err());
        assert!(HistogramEdges::new(1, 3, vec![0.0, 1.0, 1.0]).is_err());
        assert!(HistogramEdges::new(1, 3, vec![0.0, 2.0, 1.0]).is_err());
        assert!(HistogramEdges::new(1, 2, vec![0.0, f32::INFINITY]).is_err());
        assert!(HistogramEdges::new(1, 2, vec![f32::NAN, 1.0]).is_err());
        assert!(HistogramEdges::new(2, 2, vec![0.0, 1.0]).is_err());
        let e = HistogramEdges::uniform(3, &[0.0, 0.5, 1.0]).unwrap();
        assert_eq!(e.feature_edges(2), &[0.0, 0.5, 1.0]);
        assert_eq!(e.counts_len(), 15);
    }

    #[test]
    fn linear_is_gemm_then_bias_act() {
        // x [2, 3], w [2, 3]
        let x = [1.0, 2.0, 3.0, -1.0, 0.0, 1.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut y = [0.0; 4];
        linear_f32(
            &x,
            &w,
            Some(&[1.0, -10.0]),
            &mut y,
            2,
            3,
            2,
            Activation::Relu,
        )
        .unwrap();
        assert_eq!(y, [0.0, 0.0, 0.0, 0.0]);
        linear_f32(
            &x,
            &w,
            Some(&[1.0, 0.0]),
            &mut y,
            2,
            3,
            2,
            Activation::Identity,
        )
        .unwrap();
        assert_eq!(y, [-1.0, 3.0, -1.0, 0.0]);
        let xh: Vec<f16> = x.iter().map(|&v| h(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| h(v)).collect();
        let mut yh = vec![f16::ZERO; 4];
        linear_f16(
            &xh,
            &wh,
            Some(&[h(1.0), h(0.0)]),
            &mut yh,
            2,
            3,
            2,
            Activation::Identity,
        )
        .unwrap();
        assert_eq!(yh, vec![h(-1.0), h(3.0), h(-1.0), h(0.0)]);
    }
}
