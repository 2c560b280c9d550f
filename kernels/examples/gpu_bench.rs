//! GPU benchmark of nereid-kernels, run by `gpu-check.sh` on the GPU machine.
//!
//! ```text
//! gpu_bench [--out DIR] [--print]
//! ```
//!
//! Measures, with CUDA events (best of several timed batches after a warm-up):
//! - the device-to-device copy bandwidth (the bound for memory-bound kernels);
//! - each kernel's achieved bandwidth, as a share of that copy bandwidth;
//! - the Linear epilogue fused (one bias + activation pass) vs unfused (bias pass, then
//!   activation pass) vs in cuBLASLt's own epilogue, all against the bare cuBLAS GEMM (the
//!   cuBLAS bound);
//! - an MLP forward (two 4096 -> 4096 ReLU layers, batch 1/32/256/1024, f32 and f16), with the
//!   kernel epilogue (compared with PyTorch by torch_mlp.py) and with cuBLASLt's (`mlp-lt` rows).
//!
//! Writes `DIR/bench.json` (every row), `DIR/bench.txt` (the table), and the MLP's weights,
//! input and outputs as raw little-endian f32 (`mlp_*.bin`), which `torch_mlp.py` loads to time
//! PyTorch eager on the same GPU with the same weights and to compare outputs. `--print` also
//! prints the table (gpu-check.sh prints the merged table from torch_mlp.py instead).
//! Without a usable GPU it prints `SKIPPED: GPU benchmark: <reason>` and exits 0.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nereid_kernels::cudarc::driver::sys::CUevent_flags;
use nereid_kernels::half::f16;
use nereid_kernels::testing::Rng;
use nereid_kernels::{
    Activation, CudaSlice, Epilogue, Gpu, GpuFloat, HistogramEdges, KernelError, Linear,
};

const HIDDEN: usize = 4096;
const MLP_LAYERS: usize = 2;
const MLP_BATCHES: [usize; 4] = [1, 32, 256, 1024];
/// Rows of the MLP output written for the PyTorch comparison.
const CHECK_ROWS: usize = 32;
const WARMUP: usize = 3;
const ITERS: usize = 20;
const REPEATS: usize = 5;

type Result<T> = std::result::Result<T, KernelError>;

struct Row {
    section: &'static str,
    case: String,
    dtype: &'static str,
    time_us: f64,
    throughput: String,
    versus: String,
}

/// Best time per call of `f`, in seconds.
fn time(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let ctx = gpu.context();
    let driver = |op| move |source| KernelError::Driver { op, source };
    for _ in 0..WARMUP {
        f()?;
    }
    gpu.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..REPEATS {
        let start = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("cuEventCreate"))?;
        let end = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("cuEventCreate"))?;
        start
            .record(gpu.stream())
            .map_err(driver("cuEventRecord"))?;
        for _ in 0..ITERS {
            f()?;
        }
        end.record(gpu.stream()).map_err(driver("cuEventRecord"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(driver("cuEventElapsedTime"))?;
        best = best.min(ms as f64 / 1e3 / ITERS as f64);
    }
    Ok(best)
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn tflops(flops: f64, secs: f64) -> f64 {
    flops / secs / 1e12
}

fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn kernel_rows(gpu: &Gpu, rng: &mut Rng, rows: &mut Vec<Row>) -> Result<f64> {
    // Device-to-device copy: the bandwidth bound (bytes read + written).
    let n = 64 << 20; // 256 MiB of f32
    let src = gpu.upload(&rng.vec(n, -1.0, 1.0))?;
    let mut dst = gpu.zeros::<f32>(n)?;
    let t = time(gpu, || gpu.copy(&src, &mut dst))?;
    let copy = gbps(2 * n * 4, t);
    rows.push(Row {
        section: "bandwidth",
        case: "d2d copy 256 MiB (read+write)".into(),
        dtype: "-",
        time_us: t * 1e6,
        throughput: format!("{copy:.0} GB/s"),
        versus: "bound".into(),
    });
    drop((src, dst));
    let mut bw_row = |case: String, dtype: &'static str, bytes: usize, t: f64| {
        let g = gbps(bytes, t);
        rows.push(Row {
            section: "kernel",
            case,
            dtype,
            time_us: t * 1e6,
            throughput: format!("{g:.0} GB/s"),
            versus: format!("{:.0}% of copy", 100.0 * g / copy),
        });
    };

    let (r, c) = (16384, 4096);
    let n = r * c;
    let x = rng.vec(n, -4.0, 4.0);
    let bias = rng.vec(c, -1.0, 1.0);
    let mut y = gpu.upload(&x)?;
    let b = gpu.upload(&bias)?;
    for act in [Activation::Relu, Activation::Gelu] {
        let t = time(gpu, || gpu.bias_act_f32(&mut y, Some(&b), r, c, act))?;
        bw_row(
            format!("bias+{} {r}x{c}", act.name()),
            "f32",
            2 * n * 4 + c * 4,
            t,
        );
    }
    {
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let bh: Vec<f16> = bias.iter().map(|&v| f16::from_f32(v)).collect();
        let mut yh = gpu.upload(&xh)?;
        let bh = gpu.upload(&bh)?;
        let t = time(gpu, || {
            gpu.bias_act_f16(&mut yh, Some(&bh), r, c, Activation::Relu)
        })?;
        bw_row(format!("bias+relu {r}x{c}"), "f16", 2 * n * 2 + c * 2, t);
    }
    let dx = gpu.upload(&x)?;
    let t = time(gpu, || gpu.softmax_rows_f32(&dx, &mut y, r, c))?;
    bw_row(format!("softmax rows {r}x{c}"), "f32", 2 * n * 4, t);

    let mean = gpu.upload(&rng.vec(c, -1.0, 1.0))?;
    let std = gpu.upload(&rng.vec(c, 0.5, 2.0))?;
    let t = time(gpu, || gpu.standardize_f32(&dx, &mean, &std, &mut y, r, c))?;
    bw_row(
        format!("standardize {r}x{c}"),
        "f32",
        2 * n * 4 + 2 * c * 4,
        t,
    );
    drop((dx, y, b, mean, std));

    let (tr, tc, k) = (16384, 1000, 5);
    let tx = gpu.upload(&rng.vec(tr * tc, -1.0, 1.0))?;
    let mut values = gpu.zeros::<f32>(tr * k)?;
    let mut indices = gpu.zeros::<u32>(tr * k)?;
    let t = time(gpu, || {
        gpu.topk_rows_f32_into(&tx, &mut values, &mut indices, tr, tc, k)
            .map(drop)
    })?;
    bw_row(
        format!("top-{k} rows {tr}x{tc}"),
        "f32",
        tr * tc * 4 + tr * k * 8,
        t,
    );
    drop(tx);

    let (hr, hc) = (1 << 20, 64);
    let edges = HistogramEdges::uniform(
        hc,
        &(0..17).map(|i| -4.0 + 0.5 * i as f32).collect::<Vec<_>>(),
    )?;
    let de = gpu.upload_histogram_edges(&edges)?;
    let hx = gpu.upload(&rng.vec(hr * hc, -5.0, 5.0))?;
    let mut counts = gpu.zeros::<u32>(de.counts_len())?;
    let t = time(gpu, || gpu.histogram_f32(&hx, hr, hc, &de, &mut counts))?;
    bw_row(
        format!("histogram 16 bins {hr}x{hc}"),
        "f32",
        hr * hc * 4,
        t,
    );
    Ok(copy)
}

/// Linear 4096 -> 4096 + ReLU: bare GEMM (the cuBLAS bound), fused and unfused epilogue.
fn epilogue_rows<T: GpuFloat>(gpu: &Gpu, rng: &mut Rng, rows: &mut Vec<Row>) -> Result<()> {
    let w: Vec<T> = rng
        .vec(HIDDEN * HIDDEN, -0.015, 0.015)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let b: Vec<T> = rng
        .vec(HIDDEN, -0.015, 0.015)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let layer = Linear::new(gpu, &w, Some(&b), HIDDEN, HIDDEN, Activation::Relu)?;
    let layer_lt = Linear::new(gpu, &w, Some(&b), HIDDEN, HIDDEN, Activation::Relu)?
        .with_epilogue(Epilogue::CublasLt);
    let dw = gpu.upload(&w)?;
    for batch in [256, 1024] {
        let x: Vec<T> = rng
            .vec(batch * HIDDEN, -1.0, 1.0)
            .into_iter()
            .map(T::from_f32)
            .collect();
        let dx = gpu.upload(&x)?;
        let mut y: CudaSlice<T> = gpu.zeros(batch * HIDDEN)?;
        let flops = 2.0 * (batch * HIDDEN * HIDDEN) as f64;
        let t_gemm = time(gpu, || gpu.gemm(&dx, &dw, &mut y, batch, HIDDEN, HIDDEN))?;
        let t_fused = time(gpu, || layer.forward(gpu, &dx, &mut y, batch))?;
        let t_unfused = time(gpu, || layer.forward_unfused(gpu, &dx, &mut y, batch))?;
        let t_lt = time(gpu, || layer_lt.forward(gpu, &dx, &mut y, batch))?;
        let case = |what: &str| format!("Linear {HIDDEN}->{HIDDEN} relu b={batch}: {what}");
        let bound = tflops(flops, t_gemm);
        rows.push(Row {
            section: "epilogue",
            case: case("GEMM only"),
            dtype: T::NAME,
            time_us: t_gemm * 1e6,
            throughput: format!("{bound:.1} TFLOP/s"),
            versus: "cuBLAS bound".into(),
        });
        for (what, t) in [
            ("GEMM + fused bias+act", t_fused),
            ("GEMM + bias, + act", t_unfused),
            ("cuBLASLt bias+act epilogue", t_lt),
        ] {
            let tf = tflops(flops, t);
            rows.push(Row {
                section: "epilogue",
                case: case(what),
                dtype: T::NAME,
                time_us: t * 1e6,
                throughput: format!("{tf:.1} TFLOP/s"),
                versus: format!(
                    "{:.0}% of bound, epilogue +{:.1} us",
                    100.0 * tf / bound,
                    (t - t_gemm) * 1e6
                ),
            });
        }
    }
    Ok(())
}

struct MlpResult {
    dtype: &'static str,
    batch: usize,
    us: f64,
}

/// Two Linear(4096, 4096) + ReLU layers with the given f32 weights (converted to T).
fn mlp<T: GpuFloat>(
    gpu: &Gpu,
    weights: &[(Vec<f32>, Vec<f32>)],
    x_all: &[f32],
    out: &Path,
    results: &mut Vec<MlpResult>,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let conv = |v: &[f32]| -> Vec<T> { v.iter().map(|&x| T::from_f32(x)).collect() };
    let layers = weights
        .iter()
        .map(|(w, b)| {
            Linear::new(
                gpu,
                &conv(w),
                Some(&conv(b)),
                HIDDEN,
                HIDDEN,
                Activation::Relu,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for batch in MLP_BATCHES {
        let dx = gpu.upload(&conv(&x_all[..batch * HIDDEN]))?;
        let mut h: CudaSlice<T> = gpu.zeros(batch * HIDDEN)?;
        let mut y: CudaSlice<T> = gpu.zeros(batch * HIDDEN)?;
        let mut forward = || -> Result<()> {
            layers[0].forward(gpu, &dx, &mut h, batch)?;
            layers[1].forward(gpu, &h, &mut y, batch)
        };
        let t = time(gpu, &mut forward)?;
        let flops = 2.0 * (MLP_LAYERS * batch * HIDDEN * HIDDEN) as f64;
        rows.push(Row {
            section: "mlp",
            case: format!("MLP {MLP_LAYERS}x{HIDDEN} relu b={batch}"),
            dtype: T::NAME,
            time_us: t * 1e6,
            throughput: format!("{:.1} TFLOP/s", tflops(flops, t)),
            versus: String::new(),
        });
        results.push(MlpResult {
            dtype: T::NAME,
            batch,
            us: t * 1e6,
        });
        if batch == CHECK_ROWS {
            forward()?;
            let got: Vec<f32> = gpu.download(&y)?.into_iter().map(T::to_f32).collect();
            let path = out.join(format!("mlp_y_{}_b{CHECK_ROWS}.bin", T::NAME));
            write_f32(&path, &got).map_err(|e| io_err(&path, e))?;
        }
    }
    // The same MLP with the bias + ReLU in cuBLASLt's epilogue, against the kernel epilogue.
    let layers_lt = weights
        .iter()
        .map(|(w, b)| {
            Linear::new(
                gpu,
                &conv(w),
                Some(&conv(b)),
                HIDDEN,
                HIDDEN,
                Activation::Relu,
            )
            .map(|l| l.with_epilogue(Epilogue::CublasLt))
        })
        .collect::<Result<Vec<_>>>()?;
    for batch in MLP_BATCHES {
        let dx = gpu.upload(&conv(&x_all[..batch * HIDDEN]))?;
        let mut h: CudaSlice<T> = gpu.zeros(batch * HIDDEN)?;
        let mut y: CudaSlice<T> = gpu.zeros(batch * HIDDEN)?;
        let t = time(gpu, || {
            layers_lt[0].forward(gpu, &dx, &mut h, batch)?;
            layers_lt[1].forward(gpu, &h, &mut y, batch)
        })?;
        let kernel_us = results
            .iter()
            .find(|r| r.dtype == T::NAME && r.batch == batch)
            .map_or(f64::NAN, |r| r.us);
        let flops = 2.0 * (MLP_LAYERS * batch * HIDDEN * HIDDEN) as f64;
        rows.push(Row {
            section: "mlp-lt",
            case: format!("MLP {MLP_LAYERS}x{HIDDEN} relu b={batch}, cuBLASLt epilogue"),
            dtype: T::NAME,
            time_us: t * 1e6,
            throughput: format!("{:.1} TFLOP/s", tflops(flops, t)),
            versus: format!(
                "kernel epilogue {kernel_us:.1} us: cuBLASLt {:.2}x",
                kernel_us / (t * 1e6)
            ),
        });
    }
    Ok(())
}

fn io_err(path: &Path, e: std::io::Error) -> KernelError {
    KernelError::InvalidArgument {
        op: "gpu_bench",
        detail: format!("writing {}: {e}", path.display()),
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<9} {:<48} {:<5} {:>10} {:>14}  vs",
        "section", "case", "dtype", "time (us)", "throughput"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<9} {:<48} {:<5} {:>10.1} {:>14}  {}",
            r.section, r.case, r.dtype, r.time_us, r.throughput, r.versus
        );
    }
    s
}

fn run(out: &Path, print: bool) -> Result<()> {
    let gpu = Gpu::new(0)?;
    let (major, minor) = gpu.compute_capability();
    eprintln!(
        "gpu_bench: {} (sm_{major}{minor}, {} SMs); results in {}",
        gpu.name(),
        gpu.sm_count(),
        out.display()
    );
    gpu.warm_up()?;
    let mut rng = Rng::new(0x6e65_7265_6964); // fixed: the MLP weights are shared with PyTorch
    let mut rows = Vec::new();
    let copy = kernel_rows(&gpu, &mut rng, &mut rows)?;
    eprintln!("gpu_bench: kernels done");
    epilogue_rows::<f32>(&gpu, &mut rng, &mut rows)?;
    epilogue_rows::<f16>(&gpu, &mut rng, &mut rows)?;
    eprintln!("gpu_bench: epilogues done");

    // MLP weights like nn.Linear's default init: U(-1/sqrt(in), 1/sqrt(in)).
    let bound = 1.0 / (HIDDEN as f32).sqrt();
    let weights: Vec<(Vec<f32>, Vec<f32>)> = (0..MLP_LAYERS)
        .map(|_| {
            (
                rng.vec(HIDDEN * HIDDEN, -bound, bound),
                rng.vec(HIDDEN, -bound, bound),
            )
        })
        .collect();
    let max_batch = MLP_BATCHES.iter().copied().max().unwrap_or(1);
    let x_all = rng.vec(max_batch * HIDDEN, -1.0, 1.0);
    for (i, (w, b)) in weights.iter().enumerate() {
        for (name, v) in [
            (format!("mlp_w{}.bin", i + 1), w),
            (format!("mlp_b{}.bin", i + 1), b),
        ] {
            let path = out.join(name);
            write_f32(&path, v).map_err(|e| io_err(&path, e))?;
        }
    }
    let path = out.join("mlp_x.bin");
    write_f32(&path, &x_all).map_err(|e| io_err(&path, e))?;
    let mut results = Vec::new();
    mlp::<f32>(&gpu, &weights, &x_all, out, &mut results, &mut rows)?;
    mlp::<f16>(&gpu, &weights, &x_all, out, &mut results, &mut rows)?;
    eprintln!("gpu_bench: MLP done");

    let mut json = String::new();
    let _ = write!(
        json,
        "{{\"device\": {}, \"copy_gbps\": {copy:.1}, \"rows\": [",
        json_str(gpu.name())
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            json,
            "{}\n  {{\"section\": {}, \"case\": {}, \"dtype\": {}, \"time_us\": {:.3}, \
             \"throughput\": {}, \"vs\": {}}}",
            if i == 0 { "" } else { "," },
            json_str(r.section),
            json_str(&r.case),
            json_str(r.dtype),
            r.time_us,
            json_str(&r.throughput),
            json_str(&r.versus)
        );
    }
    let _ = write!(
        json,
        "\n], \"mlp\": {{\"hidden\": {HIDDEN}, \"layers\": {MLP_LAYERS}, \"check_rows\": \
         {CHECK_ROWS}, \"max_batch\": {max_batch}, \"warmup\": {WARMUP}, \"iters\": {ITERS}, \
         \"repeats\": {REPEATS}, \"results\": ["
    );
    for (i, m) in results.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"dtype\": {}, \"batch\": {}, \"nereid_us\": {:.3}}}",
            if i == 0 { "" } else { ", " },
            json_str(m.dtype),
            m.batch,
            m.us
        );
    }
    json.push_str("]}}\n");
    let path = out.join("bench.json");
    std::fs::write(&path, json).map_err(|e| io_err(&path, e))?;
    let text = table(&rows);
    let path = out.join("bench.txt");
    std::fs::write(&path, &text).map_err(|e| io_err(&path, e))?;
    if print {
        print!("{text}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut out = std::env::temp_dir().join("nereid-gpu-bench");
    let mut print = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => match args.next() {
                Some(d) => out = PathBuf::from(d),
                None => {
                    eprintln!("--out needs a directory");
                    return ExitCode::from(2);
                }
            },
            "--print" => print = true,
            other => {
                eprintln!("unknown argument {other}; usage: gpu_bench [--out DIR] [--print]");
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    match run(&out, print) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_unavailable() => {
            println!("SKIPPED: GPU benchmark: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gpu_bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
