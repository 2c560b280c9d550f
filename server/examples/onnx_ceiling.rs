//! The in-process compute ceiling of an ONNX model: rows per second, and CPU time per row, when
//! ONNX Runtime runs it at a given batch size on one intra-op thread with no server around it.
//! `bench/onnx.sh` compares the server's throughput with this at the batch sizes the server's
//! batcher formed.
//!
//! ```text
//! NEREID_ONNXRUNTIME_LIB=.../libonnxruntime.so.1.22.1 \
//!     cargo run --release -p nereid-server --example onnx_ceiling -- model.onnx 64 3
//! ```
//! Arguments: the ONNX file (one FP32 input `[batch, features]`), batch size, seconds to measure
//! (after one second of warm-up). Prints one line of JSON.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::Tensor;

/// CPU time this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, batch, seconds] = args.as_slice() else {
        eprintln!("usage: onnx_ceiling MODEL.onnx BATCH SECONDS");
        return ExitCode::FAILURE;
    };
    let (Ok(batch), Ok(seconds)) = (batch.parse::<usize>(), seconds.parse::<f64>()) else {
        eprintln!("BATCH must be an integer and SECONDS a number");
        return ExitCode::FAILURE;
    };
    let run = || -> Result<String, Box<dyn std::error::Error>> {
        let library = std::env::var("NEREID_ONNXRUNTIME_LIB")
            .map_err(|_| "set NEREID_ONNXRUNTIME_LIB to ONNX Runtime's library")?;
        let env = ort::init_from(library)?.with_telemetry(false).build()?;
        let mut session = Session::builder(&env)?
            .with_intra_threads(1)
            .map_err(|e| e.to_string())?
            .with_inter_threads(1)
            .map_err(|e| e.to_string())?
            .commit_from_file(file)?;
        let input = session.inputs()[0].name().to_string();
        let features = session.inputs()[0]
            .dtype()
            .tensor_shape()
            .and_then(|s| s.last().copied())
            .filter(|d| *d > 0)
            .ok_or("the input's last dimension must be fixed")? as usize;
        let values: Vec<f32> = (0..batch * features)
            .map(|i| (i % 7) as f32 * 0.5)
            .collect();
        let mut step = || -> ort::Result<()> {
            // As the server does per batch: build the input value, run, read the outputs back.
            let x = Tensor::from_array(([batch, features], values.clone()))?;
            let outputs = session.run(ort::inputs![input.as_str() => x])?;
            let (_, data) = outputs[0].try_extract_tensor::<f32>()?;
            std::hint::black_box(data.to_vec());
            Ok(())
        };
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_secs(1) {
            step()?;
        }
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let mut rows = 0usize;
        while started.elapsed().as_secs_f64() < seconds {
            step()?;
            rows += batch;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        Ok(format!(
            "{{\"model\": {file:?}, \"batch\": {batch}, \"rows_per_s\": {:.1}, \"cpu_us_per_row\": {:.3}}}",
            rows as f64 / elapsed,
            cpu * 1e6 / rows as f64
        ))
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onnx_ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}
