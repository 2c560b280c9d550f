//! GPU kernels against their CPU references, on fresh random data (the seed is printed; set
//! `NEREID_TEST_SEED` to replay) with the edge cases each kernel documents: empty shapes, NaN and
//! Inf inputs, ties, k larger than the row, misaligned views, both shared-memory and global
//! paths. Each test is written once as `fn t_*(gpu, rng)` and runs on every CUDA device.
//!
//! Without a driver, device or NVRTC each test prints `SKIPPED: GPU tests: GPU kernel tests:
//! <reason>` and passes, so `cargo test` stays green on CPU-only machines and CI;
//! `NEREID_REQUIRE_SUITES=gpu` turns that into a failure on a machine that should have a GPU.

use nereid_kernels::half::f16;
use nereid_kernels::testing::{check_close, check_exact, seed, Rng};
use nereid_kernels::{
    cpu, Activation, CudaSlice, Epilogue, Gpu, HistogramEdges, KernelError, Linear, PinnedPurpose,
};

/// Runs `t` once per CUDA device, or prints why it cannot.
fn on_every_device(name: &str, t: fn(&Gpu, &mut Rng)) {
    let gpus = match Gpu::new(0) {
        Err(e) if e.is_unavailable() => {
            nereid_testkit::skip(&nereid_testkit::GPU, format!("GPU kernel tests: {e}"));
            return;
        }
        Err(e) => panic!("opening CUDA device 0: {e}"),
        Ok(_) => Gpu::all().unwrap_or_else(|e| panic!("opening the CUDA devices: {e}")),
    };
    for gpu in &gpus {
        let s = seed();
        let (major, minor) = gpu.compute_capability();
        println!(
            "{name}: device {} ({}, sm_{major}{minor}), NEREID_TEST_SEED={s}",
            gpu.ordinal(),
            gpu.name()
        );
        t(gpu, &mut Rng::new(s));
    }
}

fn ok<T>(what: &str, r: Result<T, KernelError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn expect(r: Result<(), String>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn to_f32(v: &[f16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

// ------------------------------------------------------------------------------------------
// bias + activation
// ------------------------------------------------------------------------------------------

const ELEMENTWISE_SHAPES: [(usize, usize); 9] = [
    (0, 5),
    (4, 0),
    (1, 1),
    (3, 7),
    (17, 12),
    (64, 4096),
    (1000, 3),
    (257, 1000),
    (3, 1026),
];

fn t_bias_act_f32(gpu: &Gpu, rng: &mut Rng) {
    for (rows, cols) in ELEMENTWISE_SHAPES {
        for act in Activation::ALL {
            for with_bias in [true, false] {
                let mut y = rng.vec(rows * cols, -6.0, 6.0);
                rng.sprinkle_specials(&mut y, 0.02);
                let bias = rng.vec(cols, -2.0, 2.0);
                let mut want = y.clone();
                ok(
                    "cpu",
                    cpu::bias_act_f32(&mut want, with_bias.then_some(&bias[..]), rows, cols, act),
                );
                let mut dy = ok("upload", gpu.upload(&y));
                let db = ok("upload", gpu.upload(&bias));
                ok(
                    "bias_act_f32",
                    gpu.bias_act_f32(&mut dy, with_bias.then_some(&db), rows, cols, act),
                );
                let got = ok("download", gpu.download(&dy));
                expect(check_close(
                    &format!("bias_act_f32 {act:?} bias={with_bias} {rows}x{cols}"),
                    &got,
                    &want,
                    1e-5,
                    1e-7,
                ));
            }
        }
    }

    // A view that starts one element in is not 16-byte aligned: the scalar path must take it.
    let (rows, cols) = (9, 16);
    let y = rng.vec(rows * cols + 1, -3.0, 3.0);
    let bias = rng.vec(cols, -1.0, 1.0);
    let mut want = y.clone();
    ok(
        "cpu",
        cpu::bias_act_f32(&mut want[1..], Some(&bias), rows, cols, Activation::Gelu),
    );
    let mut dy = ok("upload", gpu.upload(&y));
    let db = ok("upload", gpu.upload(&bias));
    {
        let mut view = dy.slice_mut(1..);
        ok(
            "bias_act_f32 (view)",
            gpu.bias_act_f32(&mut view, Some(&db), rows, cols, Activation::Gelu),
        );
    }
    let got = ok("download", gpu.download(&dy));
    expect(check_close(
        "bias_act_f32 misaligned view",
        &got,
        &want,
        1e-5,
        1e-7,
    ));
}

fn t_bias_act_f16(gpu: &Gpu, rng: &mut Rng) {
    for (rows, cols) in ELEMENTWISE_SHAPES {
        for act in Activation::ALL {
            for with_bias in [true, false] {
                let mut yf = rng.vec(rows * cols, -6.0, 6.0);
                rng.sprinkle_specials(&mut yf, 0.02);
                let y = to_f16(&yf);
                let bias = to_f16(&rng.vec(cols, -2.0, 2.0));
                let mut want = y.clone();
                ok(
                    "cpu",
                    cpu::bias_act_f16(&mut want, with_bias.then_some(&bias[..]), rows, cols, act),
                );
                let mut dy = ok("upload", gpu.upload(&y));
                let db = ok("upload", gpu.upload(&bias));
                ok(
                    "bias_act_f16",
                    gpu.bias_act_f16(&mut dy, with_bias.then_some(&db), rows, cols, act),
                );
                let got = ok("download", gpu.download(&dy));
                expect(check_close(
                    &format!("bias_act_f16 {act:?} bias={with_bias} {rows}x{cols}"),
                    &to_f32(&got),
                    &to_f32(&want),
                    1e-2,
                    1e-4,
                ));
            }
        }
    }
    // Odd offset view: 2-byte aligned only, scalar path.
    let (rows, cols) = (5, 8);
    let y = to_f16(&rng.vec(rows * cols + 1, -3.0, 3.0));
    let mut want = y.clone();
    ok(
        "cpu",
        cpu::bias_act_f16(&mut want[1..], None, rows, cols, Activation::Sigmoid),
    );
    let mut dy = ok("upload", gpu.upload(&y));
    {
        let mut view = dy.slice_mut(1..);
        ok(
            "activate (view)",
            gpu.activate(&mut view, rows, cols, Activation::Sigmoid),
        );
    }
    let got = ok("download", gpu.download(&dy));
    expect(check_close(
        "bias_act_f16 misaligned view",
        &to_f32(&got),
        &to_f32(&want),
        1e-2,
        1e-4,
    ));
}

// ------------------------------------------------------------------------------------------
// softmax, top-k
// ------------------------------------------------------------------------------------------

fn t_softmax(gpu: &Gpu, rng: &mut Rng) {
    for (rows, cols) in [
        (0, 4),
        (4, 0),
        (1, 1),
        (5, 1000),
        (33, 4096),
        (1000, 10),
        (2, 70000),
        // The shared-memory row cache: largest cached row (vectorised), one more (uncached),
        // cached but not a multiple of 4 (scalar).
        (3, 12288),
        (3, 12289),
        (4, 4097),
    ] {
        let x = rng.vec(rows * cols, -20.0, 20.0);
        let mut want = vec![0.0; x.len()];
        ok("cpu", cpu::softmax_rows_f32(&x, &mut want, rows, cols));
        let dx = ok("upload", gpu.upload(&x));
        let mut dy = ok("zeros", gpu.zeros::<f32>(x.len()));
        ok("softmax", gpu.softmax_rows_f32(&dx, &mut dy, rows, cols));
        let got = ok("download", gpu.download(&dy));
        expect(check_close(
            &format!("softmax {rows}x{cols}"),
            &got,
            &want,
            1e-5,
            1e-6,
        ));
    }

    // Special rows: NaN, +Inf, all -Inf, some -Inf, huge equal logits, one element.
    let cols = 5;
    let inf = f32::INFINITY;
    #[rustfmt::skip]
    let x = [
        1.0, f32::NAN, 2.0, 3.0, 4.0,
        1.0, inf, 2.0, 3.0, 4.0,
        -inf, -inf, -inf, -inf, -inf,
        -inf, 0.0, -inf, 1.0, -inf,
        1e30, 1e30, -1e30, 1e30, 1e30,
        -0.0, 0.0, 0.0, -0.0, 0.0,
    ];
    let rows = x.len() / cols;
    let mut want = vec![0.0; x.len()];
    ok("cpu", cpu::softmax_rows_f32(&x, &mut want, rows, cols));
    let dx = ok("upload", gpu.upload(&x));
    let mut dy = ok("zeros", gpu.zeros::<f32>(x.len()));
    ok("softmax", gpu.softmax_rows_f32(&dx, &mut dy, rows, cols));
    let got = ok("download", gpu.download(&dy));
    expect(check_close("softmax special rows", &got, &want, 1e-5, 1e-6));
    assert!(
        got[..15].iter().all(|v| v.is_nan()),
        "NaN/+Inf/-Inf rows: {got:?}"
    );
    assert_eq!(got[15], 0.0, "-Inf entries get 0");

    // Views one element in are not 16-byte aligned: the cached path must not vectorise.
    let (rows, cols) = (7, 64);
    let x = rng.vec(rows * cols + 1, -5.0, 5.0);
    let mut want = vec![0.0; rows * cols];
    ok("cpu", cpu::softmax_rows_f32(&x[1..], &mut want, rows, cols));
    let dx = ok("upload", gpu.upload(&x));
    let mut dy = ok("zeros", gpu.zeros::<f32>(rows * cols + 1));
    {
        let mut view = dy.slice_mut(1..);
        ok(
            "softmax (views)",
            gpu.softmax_rows_f32(&dx.slice(1..), &mut view, rows, cols),
        );
    }
    let got = ok("download", gpu.download(&dy));
    expect(check_close(
        "softmax misaligned views",
        &got[1..],
        &want,
        1e-5,
        1e-6,
    ));
}

fn t_topk(gpu: &Gpu, rng: &mut Rng) {
    // k <= 32 takes the one-warp-per-row kernel (lists of 8, 16 or 32), larger k the rank one.
    let shapes: [(usize, usize, usize); 17] = [
        (50, 1000, 32),
        (5, 129, 33),
        (7, 97, 17),
        (9, 64, 16),
        (6, 31, 9),
        (3, 2000, 8),
        (0, 5, 3),
        (3, 0, 2),
        (1, 1, 1),
        (4, 10, 3),
        (64, 1000, 5),
        (5, 7, 100),
        (6, 9, 0),
        (8, 20000, 10),
        (40, 12000, 1),
        (2, 12289, 3),
        (3, 300, 300),
    ];
    for (rows, cols, k) in shapes {
        for kind in ["uniform", "ties", "specials"] {
            let x: Vec<f32> = match kind {
                "uniform" => rng.vec(rows * cols, -1.0, 1.0),
                "ties" => (0..rows * cols).map(|_| rng.below(5) as f32).collect(),
                _ => {
                    let mut x: Vec<f32> = (0..rows * cols).map(|_| rng.below(4) as f32).collect();
                    rng.sprinkle_specials(&mut x, 0.2);
                    x
                }
            };
            let want = ok("cpu", cpu::topk_rows_f32(&x, rows, cols, k));
            let dx = ok("upload", gpu.upload(&x));
            let dt = ok("topk", gpu.topk_rows_f32(&dx, rows, cols, k));
            let got = ok("download", gpu.download_topk(&dt));
            let what = format!("topk {kind} {rows}x{cols} k={k}");
            assert_eq!((got.rows, got.k), (want.rows, want.k), "{what}: shape");
            assert_eq!(got.indices, want.indices, "{what}: indices");
            expect(check_exact(&what, &got.values, &want.values));
        }
    }
}

// ------------------------------------------------------------------------------------------
// standardisation, histograms
// ------------------------------------------------------------------------------------------

fn t_standardize(gpu: &Gpu, rng: &mut Rng) {
    for (rows, cols) in [
        (0, 3),
        (5, 0),
        (1, 1),
        (7, 3),
        (100, 64),
        (1000, 13),
        (4096, 256),
    ] {
        let mut x = rng.vec(rows * cols, -100.0, 100.0);
        rng.sprinkle_specials(&mut x, 0.02);
        let mean = rng.vec(cols, -5.0, 5.0);
        let mut std = rng.vec(cols, 0.1, 10.0);
        if cols > 2 {
            std[1] = 0.0; // IEEE: ±Inf or NaN
        }
        let mut want = vec![0.0; x.len()];
        ok(
            "cpu",
            cpu::standardize_f32(&x, &mean, &std, &mut want, rows, cols),
        );
        let dx = ok("upload", gpu.upload(&x));
        let dm = ok("upload", gpu.upload(&mean));
        let ds = ok("upload", gpu.upload(&std));
        let mut dy = ok("zeros", gpu.zeros::<f32>(x.len()));
        ok(
            "standardize",
            gpu.standardize_f32(&dx, &dm, &ds, &mut dy, rows, cols),
        );
        let got = ok("download", gpu.download(&dy));
        expect(check_exact(
            &format!("standardize {rows}x{cols}"),
            &got,
            &want,
        ));
    }

    // Misaligned input view (scalar path).
    let (rows, cols) = (6, 8);
    let x = rng.vec(rows * cols + 1, -10.0, 10.0);
    let mean = rng.vec(cols, -1.0, 1.0);
    let std = rng.vec(cols, 0.5, 2.0);
    let mut want = vec![0.0; rows * cols];
    ok(
        "cpu",
        cpu::standardize_f32(&x[1..], &mean, &std, &mut want, rows, cols),
    );
    let dx = ok("upload", gpu.upload(&x));
    let dm = ok("upload", gpu.upload(&mean));
    let ds = ok("upload", gpu.upload(&std));
    let mut dy = ok("zeros", gpu.zeros::<f32>(rows * cols));
    ok(
        "standardize (view)",
        gpu.standardize_f32(&dx.slice(1..), &dm, &ds, &mut dy, rows, cols),
    );
    let got = ok("download", gpu.download(&dy));
    expect(check_exact("standardize misaligned view", &got, &want));
}

/// Strictly increasing random edges for `features` features.
fn random_edges(rng: &mut Rng, features: usize, n_edges: usize) -> HistogramEdges {
    let mut all = Vec::with_capacity(features * n_edges);
    for _ in 0..features {
        let mut e = rng.uniform(-3.0, -1.0);
        for _ in 0..n_edges {
            all.push(e);
            e += rng.uniform(0.05, 0.5);
        }
    }
    ok("edges", HistogramEdges::new(features, n_edges, all))
}

fn t_histogram(gpu: &Gpu, rng: &mut Rng) {
    // (rows, cols, edges per feature): shared-memory path up to 48 KiB of counts, global above.
    for (rows, cols, n_edges) in [
        (0, 3, 5),
        (1, 1, 2),
        (1000, 7, 11),
        (100_000, 64, 17),
        (3000, 1000, 20),
        // Counts in shared memory, edges not (45.6 KB + 40.8 KB > 48 KB).
        (2000, 600, 17),
        // Counts global (56 KB), edges in shared memory (40 KB).
        (500, 2000, 5),
    ] {
        let edges = random_edges(rng, cols, n_edges);
        let mut x = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            for c in 0..cols {
                let v = match rng.below(10) {
                    // exactly on an edge: first, last or inner
                    0 => edges.feature_edges(c)[rng.below(n_edges)],
                    _ => rng.uniform(-5.0, 5.0),
                };
                x.push(v);
            }
        }
        rng.sprinkle_specials(&mut x, 0.01);
        // Start from non-zero counts: the kernel accumulates.
        let start: Vec<u32> = (0..edges.counts_len())
            .map(|_| rng.below(3) as u32)
            .collect();
        let mut want = start.clone();
        for _ in 0..2 {
            ok("cpu", cpu::histogram_f32(&x, rows, cols, &edges, &mut want));
        }
        let dx = ok("upload", gpu.upload(&x));
        let de = ok("upload edges", gpu.upload_histogram_edges(&edges));
        let mut dc = ok("upload", gpu.upload(&start));
        for _ in 0..2 {
            ok(
                "histogram",
                gpu.histogram_f32(&dx, rows, cols, &de, &mut dc),
            );
        }
        let got = ok("download", gpu.download(&dc));
        assert_eq!(got, want, "histogram {rows}x{cols} with {n_edges} edges");
    }
}

// ------------------------------------------------------------------------------------------
// GEMM, Linear
// ------------------------------------------------------------------------------------------

/// `|got - want| <= rel * |want| + acc * scale`, where `scale = sum |x||w| + |b|` bounds the
/// accumulation error of the dot product (times 1.2 for the activations' slopes).
#[allow(clippy::too_many_arguments)]
fn check_linear(
    what: &str,
    got: &[f32],
    want: &[f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (batch, inf, outf): (usize, usize, usize),
    rel: f32,
    acc: f32,
) {
    assert_eq!(got.len(), batch * outf, "{what}: length");
    for b in 0..batch {
        for o in 0..outf {
            let scale: f32 = (0..inf)
                .map(|i| (x[b * inf + i] * w[o * inf + i]).abs())
                .sum::<f32>()
                + bias.map_or(0.0, |bb| bb[o].abs());
            let (g, t) = (got[b * outf + o], want[b * outf + o]);
            let tol = rel * t.abs() + 1.2 * acc * scale + 1e-7;
            assert!(
                (g - t).abs() <= tol,
                "{what}: y[{b}, {o}] = {g:e}, want {t:e} (tolerance {tol:e})"
            );
        }
    }
}

const LINEAR_SHAPES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (3, 5, 7),
    (32, 256, 128),
    (0, 4, 4),
    (4, 0, 3),
    (17, 64, 33),
];

fn t_linear_f32(gpu: &Gpu, rng: &mut Rng) {
    for (batch, inf, outf) in LINEAR_SHAPES {
        let x = rng.vec(batch * inf, -1.0, 1.0);
        let w = rng.vec(outf * inf, -1.0, 1.0);
        let bias = rng.vec(outf, -1.0, 1.0);
        let dx = ok("upload", gpu.upload(&x));

        // Plain GEMM.
        let mut want = vec![0.0; batch * outf];
        ok("cpu", cpu::gemm_f32(&x, &w, &mut want, batch, inf, outf));
        let dw = ok("upload", gpu.upload(&w));
        let mut dy = ok("zeros", gpu.zeros::<f32>(batch * outf));
        ok("gemm", gpu.gemm(&dx, &dw, &mut dy, batch, inf, outf));
        let got = ok("download", gpu.download(&dy));
        check_linear(
            "gemm f32",
            &got,
            &want,
            &x,
            &w,
            None,
            (batch, inf, outf),
            1e-5,
            1e-5,
        );

        for act in Activation::ALL {
            for with_bias in [true, false] {
                let b = with_bias.then_some(&bias[..]);
                let mut want = vec![0.0; batch * outf];
                ok(
                    "cpu",
                    cpu::linear_f32(&x, &w, b, &mut want, batch, inf, outf, act),
                );
                let layer = ok("Linear::new", Linear::new(gpu, &w, b, inf, outf, act));
                let mut fused = ok("zeros", gpu.zeros::<f32>(batch * outf));
                ok("forward", layer.forward(gpu, &dx, &mut fused, batch));
                let mut unfused = ok("zeros", gpu.zeros::<f32>(batch * outf));
                ok(
                    "forward_unfused",
                    layer.forward_unfused(gpu, &dx, &mut unfused, batch),
                );
                let fused = ok("download", gpu.download(&fused));
                let unfused = ok("download", gpu.download(&unfused));
                let what = format!("linear f32 {act:?} bias={with_bias} {batch}x{inf}->{outf}");
                check_linear(
                    &what,
                    &fused,
                    &want,
                    &x,
                    &w,
                    b,
                    (batch, inf, outf),
                    1e-5,
                    1e-5,
                );
                // In f32 the unfused sequence rounds at the same points: identical bits.
                expect(check_exact(
                    &format!("{what}: fused vs unfused"),
                    &fused,
                    &unfused,
                ));
            }
        }
    }
}

fn t_linear_f16(gpu: &Gpu, rng: &mut Rng) {
    for (batch, inf, outf) in [(16, 64, 48), (1, 4096, 8), (3, 5, 7), (0, 8, 8)] {
        let x = to_f16(&rng.vec(batch * inf, -1.0, 1.0));
        let w = to_f16(&rng.vec(outf * inf, -0.1, 0.1));
        let bias = to_f16(&rng.vec(outf, -1.0, 1.0));
        let (xf, wf, bf) = (to_f32(&x), to_f32(&w), to_f32(&bias));
        let dx = ok("upload", gpu.upload(&x));
        for act in [Activation::Identity, Activation::Relu, Activation::Gelu] {
            let mut want = vec![f16::ZERO; batch * outf];
            ok(
                "cpu",
                cpu::linear_f16(&x, &w, Some(&bias), &mut want, batch, inf, outf, act),
            );
            let layer = ok(
                "Linear::new",
                Linear::new(gpu, &w, Some(&bias), inf, outf, act),
            );
            let mut fused: CudaSlice<f16> = ok("zeros", gpu.zeros(batch * outf));
            ok("forward", layer.forward(gpu, &dx, &mut fused, batch));
            let mut unfused: CudaSlice<f16> = ok("zeros", gpu.zeros(batch * outf));
            ok(
                "forward_unfused",
                layer.forward_unfused(gpu, &dx, &mut unfused, batch),
            );
            let what = format!("linear f16 {act:?} {batch}x{inf}->{outf}");
            let dims = (batch, inf, outf);
            let want = to_f32(&want);
            let fused = to_f32(&ok("download", gpu.download(&fused)));
            let unfused = to_f32(&ok("download", gpu.download(&unfused)));
            check_linear(&what, &fused, &want, &xf, &wf, Some(&bf), dims, 1e-2, 1e-3);
            check_linear(
                &format!("{what} unfused"),
                &unfused,
                &want,
                &xf,
                &wf,
                Some(&bf),
                dims,
                1e-2,
                1e-3,
            );
        }
    }
}

fn t_linear_cublaslt(gpu: &Gpu, rng: &mut Rng) {
    let mut shapes = LINEAR_SHAPES.to_vec();
    shapes.push((256, 512, 384));
    for (batch, inf, outf) in shapes {
        let x = rng.vec(batch * inf, -1.0, 1.0);
        let w = rng.vec(outf * inf, -1.0, 1.0);
        let bias = rng.vec(outf, -1.0, 1.0);
        let dx = ok("upload", gpu.upload(&x));
        for act in [Activation::Identity, Activation::Relu] {
            for with_bias in [true, false] {
                let b = with_bias.then_some(&bias[..]);
                let mut want = vec![0.0; batch * outf];
                ok(
                    "cpu",
                    cpu::linear_f32(&x, &w, b, &mut want, batch, inf, outf, act),
                );
                let layer = ok("Linear::new", Linear::new(gpu, &w, b, inf, outf, act))
                    .with_epilogue(Epilogue::CublasLt);
                assert_eq!(layer.epilogue(), Epilogue::CublasLt);
                let what = format!("cuBLASLt f32 {act:?} bias={with_bias} {batch}x{inf}->{outf}");
                // Twice: the second call reuses the cached plan.
                for round in 0..2 {
                    let mut y = ok("zeros", gpu.zeros::<f32>(batch * outf));
                    ok(&what, layer.forward(gpu, &dx, &mut y, batch));
                    let got = ok("download", gpu.download(&y));
                    check_linear(
                        &format!("{what} (call {round})"),
                        &got,
                        &want,
                        &x,
                        &w,
                        b,
                        (batch, inf, outf),
                        1e-5,
                        1e-5,
                    );
                }
            }
        }
    }
    for (batch, inf, outf) in [(16, 64, 48), (1, 4096, 8), (3, 5, 7)] {
        let x = to_f16(&rng.vec(batch * inf, -1.0, 1.0));
        let w = to_f16(&rng.vec(outf * inf, -0.1, 0.1));
        let bias = to_f16(&rng.vec(outf, -1.0, 1.0));
        let (xf, wf, bf) = (to_f32(&x), to_f32(&w), to_f32(&bias));
        let dx = ok("upload", gpu.upload(&x));
        for act in [Activation::Identity, Activation::Relu] {
            let mut want = vec![f16::ZERO; batch * outf];
            ok(
                "cpu",
                cpu::linear_f16(&x, &w, Some(&bias), &mut want, batch, inf, outf, act),
            );
            let layer = ok(
                "Linear::new",
                Linear::new(gpu, &w, Some(&bias), inf, outf, act),
            )
            .with_epilogue(Epilogue::CublasLt);
            let mut y: CudaSlice<f16> = ok("zeros", gpu.zeros(batch * outf));
            let what = format!("cuBLASLt f16 {act:?} {batch}x{inf}->{outf}");
            ok(&what, layer.forward(gpu, &dx, &mut y, batch));
            let got = to_f32(&ok("download", gpu.download(&y)));
            check_linear(
                &what,
                &got,
                &to_f32(&want),
                &xf,
                &wf,
                Some(&bf),
                (batch, inf, outf),
                1e-2,
                1e-3,
            );
        }
    }
    // A view that does not start on a 256-byte boundary takes the kernel path: same values.
    let (batch, inf, outf) = (5, 16, 12);
    let x = rng.vec(batch * inf + 1, -1.0, 1.0);
    let w = rng.vec(outf * inf, -1.0, 1.0);
    let bias = rng.vec(outf, -1.0, 1.0);
    let mut want = vec![0.0; batch * outf];
    ok(
        "cpu",
        cpu::linear_f32(
            &x[1..],
            &w,
            Some(&bias),
            &mut want,
            batch,
            inf,
            outf,
            Activation::Relu,
        ),
    );
    let layer = ok(
        "Linear::new",
        Linear::new(gpu, &w, Some(&bias), inf, outf, Activation::Relu),
    )
    .with_epilogue(Epilogue::CublasLt);
    let dx = ok("upload", gpu.upload(&x));
    let mut y = ok("zeros", gpu.zeros::<f32>(batch * outf));
    ok(
        "cuBLASLt misaligned view",
        layer.forward(gpu, &dx.slice(1..), &mut y, batch),
    );
    check_linear(
        "cuBLASLt misaligned view",
        &ok("download", gpu.download(&y)),
        &want,
        &x[1..],
        &w,
        Some(&bias),
        (batch, inf, outf),
        1e-5,
        1e-5,
    );

    // Activations cuBLASLt has no exact epilogue for stay on the kernel.
    let w = rng.vec(12, -1.0, 1.0);
    for act in [Activation::Gelu, Activation::Sigmoid, Activation::Tanh] {
        let layer = ok("Linear::new", Linear::new(gpu, &w, None, 4, 3, act))
            .with_epilogue(Epilogue::CublasLt);
        assert_eq!(layer.epilogue(), Epilogue::Kernel, "{act:?}");
        let x = ok("zeros", gpu.zeros::<f32>(8));
        let mut y = ok("zeros", gpu.zeros::<f32>(6));
        match layer.forward_lt(gpu, &x, &mut y, 2) {
            Err(KernelError::InvalidArgument { .. }) => {}
            other => panic!("forward_lt with {act:?}: expected InvalidArgument, got {other:?}"),
        }
    }
}

fn t_streams_and_pinned(gpu: &Gpu, rng: &mut Rng) {
    let (rows, cols) = (300, 37);
    let n = rows * cols;
    let inputs: Vec<Vec<f32>> = (0..2).map(|_| rng.vec(n, -8.0, 8.0)).collect();
    // Two handles with their own streams, driven from two threads at once, each through pinned
    // staging buffers; several rounds so that uploads overlap with earlier work.
    std::thread::scope(|scope| {
        for x in &inputs {
            let h = ok("new_stream", gpu.new_stream());
            scope.spawn(move || {
                let mut up = ok(
                    "alloc_pinned",
                    h.alloc_pinned::<f32>(n + 5, PinnedPurpose::Upload),
                );
                let mut down = ok(
                    "alloc_pinned",
                    h.alloc_pinned::<f32>(n + 5, PinnedPurpose::Download),
                );
                assert_eq!(up.len(), n + 5);
                assert!(
                    ok("as_slice", up.as_slice()).iter().all(|&v| v == 0.0),
                    "zeroed"
                );
                let mut dx = ok("zeros", h.zeros::<f32>(n));
                let mut dy = ok("zeros", h.zeros::<f32>(n));
                let mut want = vec![0.0; n];
                for round in 0..4 {
                    // Fewer rows each round: the transfers use a prefix of the pinned buffers.
                    let r = rows - round * 50;
                    let m = r * cols;
                    ok("as_mut_slice", up.as_mut_slice())[..m].copy_from_slice(&x[..m]);
                    ok(
                        "upload_pinned",
                        h.upload_pinned(&mut up, &mut dx.slice_mut(..m)),
                    );
                    ok(
                        "softmax",
                        h.softmax_rows_f32(&dx.slice(..m), &mut dy.slice_mut(..m), r, cols),
                    );
                    ok(
                        "download_pinned",
                        h.download_pinned(&dy.slice(..m), &mut down),
                    );
                    ok(
                        "cpu",
                        cpu::softmax_rows_f32(&x[..m], &mut want[..m], r, cols),
                    );
                    let got = ok("as_slice", down.as_slice());
                    expect(check_close(
                        &format!("pinned round {round}"),
                        &got[..m],
                        &want[..m],
                        1e-5,
                        1e-6,
                    ));
                }
                // A transfer longer than the pinned buffer is a shape error.
                let mut big = ok("zeros", h.zeros::<f32>(n + 6));
                match h.upload_pinned(&mut up, &mut big) {
                    Err(KernelError::Shape { .. }) => {}
                    other => panic!("oversized upload: expected a shape error, got {other:?}"),
                }
            });
        }
    });
    // A buffer written on one stream and read on another: cudarc orders them with events.
    let a = ok("new_stream", gpu.new_stream());
    let b = ok("new_stream", gpu.new_stream());
    let x = &inputs[0];
    let da = ok("upload", a.upload(x));
    let mut db = ok("zeros", b.zeros::<f32>(n));
    ok("softmax on b", b.softmax_rows_f32(&da, &mut db, rows, cols));
    let mut want = vec![0.0; n];
    ok("cpu", cpu::softmax_rows_f32(x, &mut want, rows, cols));
    expect(check_close(
        "cross-stream",
        &ok("download", b.download(&db)),
        &want,
        1e-5,
        1e-6,
    ));
}

// ------------------------------------------------------------------------------------------
// errors, module cache
// ------------------------------------------------------------------------------------------

fn t_wrong_shapes_are_errors(gpu: &Gpu, _rng: &mut Rng) {
    let shape_err = |r: Result<(), KernelError>, what: &str| match r {
        Err(KernelError::Shape { .. }) => {}
        other => panic!("{what}: expected a shape error, got {other:?}"),
    };
    let mut y = ok("zeros", gpu.zeros::<f32>(10));
    let b = ok("zeros", gpu.zeros::<f32>(3));
    shape_err(
        gpu.bias_act_f32(&mut y, Some(&b), 2, 4, Activation::Relu),
        "y too long",
    );
    shape_err(
        gpu.bias_act_f32(&mut y, Some(&b), 2, 5, Activation::Relu),
        "bias too short",
    );
    let x = ok("zeros", gpu.zeros::<f32>(12));
    shape_err(gpu.softmax_rows_f32(&x, &mut y, 3, 4), "softmax y");
    match gpu.topk_rows_f32(&x, 5, 5, 1) {
        Err(KernelError::Shape { .. }) => {}
        other => panic!("topk: expected a shape error, got {other:?}"),
    }
    let w = ok("zeros", gpu.zeros::<f32>(6));
    shape_err(gpu.gemm(&x, &w, &mut y, 4, 3, 2), "gemm y");
    let edges = ok("edges", HistogramEdges::uniform(4, &[0.0, 1.0]));
    let de = ok("upload", gpu.upload_histogram_edges(&edges));
    let mut counts = ok("zeros", gpu.zeros::<u32>(de.counts_len()));
    shape_err(
        gpu.histogram_f32(&x, 4, 3, &de, &mut counts),
        "histogram features",
    );
}

fn t_warm_up_compiles_every_module_once(gpu: &Gpu, _rng: &mut Rng) {
    let t0 = std::time::Instant::now();
    ok("warm_up", gpu.warm_up());
    let first = t0.elapsed();
    let again = ok("Gpu::new", Gpu::new(gpu.ordinal()));
    let t1 = std::time::Instant::now();
    ok("warm_up again", again.warm_up());
    println!(
        "warm-up: {:.1} ms, on a second handle {:.1} ms (compiled images are cached)",
        first.as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
}

#[test]
fn bias_act_f32_matches_cpu() {
    on_every_device("bias_act_f32", t_bias_act_f32);
}

#[test]
fn bias_act_f16_matches_cpu() {
    on_every_device("bias_act_f16", t_bias_act_f16);
}

#[test]
fn softmax_matches_cpu() {
    on_every_device("softmax", t_softmax);
}

#[test]
fn topk_matches_cpu() {
    on_every_device("topk", t_topk);
}

#[test]
fn standardize_matches_cpu_bit_for_bit() {
    on_every_device("standardize", t_standardize);
}

#[test]
fn histogram_matches_cpu() {
    on_every_device("histogram", t_histogram);
}

#[test]
fn linear_f32_matches_cpu_and_fused_equals_unfused() {
    on_every_device("linear_f32", t_linear_f32);
}

#[test]
fn linear_f16_matches_cpu() {
    on_every_device("linear_f16", t_linear_f16);
}

#[test]
fn linear_cublaslt_epilogue_matches_cpu() {
    on_every_device("linear_cublaslt", t_linear_cublaslt);
}

#[test]
fn streams_and_pinned_buffers() {
    on_every_device("streams_and_pinned", t_streams_and_pinned);
}

#[test]
fn wrong_shapes_are_errors() {
    on_every_device("wrong_shapes", t_wrong_shapes_are_errors);
}

#[test]
fn warm_up_compiles_every_module() {
    on_every_device("warm_up", t_warm_up_compiles_every_module_once);
}

#[test]
fn no_device_is_an_error_not_a_panic() {
    // On any machine: an absurd ordinal is a typed error.
    match Gpu::new(4096) {
        Err(KernelError::NoDevice { ordinal: 4096, .. })
        | Err(KernelError::NoDriver)
        | Err(KernelError::NoNvrtc) => {}
        other => panic!("expected NoDevice/NoDriver, got {other:?}"),
    }
}
