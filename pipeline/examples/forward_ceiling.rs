//! The in-process compute ceiling of a dense model: how many rows per second its forward pass
//! runs at a given batch size on one thread, with no server around it. The batching benchmark
//! (`bench/batching.sh`) compares the server's throughput with this.
//!
//! ```text
//! cargo run --release -p nereid-pipeline --example forward_ceiling -- \
//!     model-repo/iris_classifier 64 3
//! ```
//! Arguments: model folder (with config.pbtxt parameters and `1/model.safetensors`), batch
//! size, seconds to measure (after one second of warm-up). Prints one line of JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use nereid_pipeline::model::{ArchitectureSpec, DenseModel};

fn parameter(config: &str, key: &str) -> Option<String> {
    // The three `nereid.*` parameters are single-line `parameters { key: "k" value: { string_value: "v" } }`.
    config
        .lines()
        .find(|l| l.contains(&format!("\"{key}\"")))
        .and_then(|line| {
            let value = line.split("string_value:").nth(1)?;
            Some(
                value
                    .trim()
                    .trim_start_matches('"')
                    .split('"')
                    .next()?
                    .to_string(),
            )
        })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, batch, seconds] = args.as_slice() else {
        eprintln!("usage: forward_ceiling MODEL_DIR BATCH SECONDS");
        return ExitCode::FAILURE;
    };
    let (Ok(batch), Ok(seconds)) = (batch.parse::<usize>(), seconds.parse::<f64>()) else {
        eprintln!("BATCH must be an integer and SECONDS a number");
        return ExitCode::FAILURE;
    };
    let dir = PathBuf::from(dir);
    let run = || -> Result<(f64, usize), Box<dyn std::error::Error>> {
        let config = std::fs::read_to_string(dir.join("config.pbtxt"))?;
        let spec = ArchitectureSpec::from_parameters(|k| parameter(&config, k))?;
        let model = DenseModel::load(&dir.join("1/model.safetensors"), spec, &Device::Cpu)?;
        let features = model.input_features();
        let input: Vec<f32> = (0..batch * features)
            .map(|i| (i % 7) as f32 * 0.5)
            .collect();
        let step = || -> candle_core::Result<()> {
            // As the server does per batch: build the input tensor, forward, read back.
            let x = Tensor::from_vec(input.clone(), (batch, features), &Device::Cpu)?;
            let _ = model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(())
        };
        let warm_until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < warm_until {
            step()?;
        }
        let start = Instant::now();
        let mut batches = 0usize;
        while start.elapsed().as_secs_f64() < seconds {
            step()?;
            batches += 1;
        }
        Ok((start.elapsed().as_secs_f64(), batches))
    };
    match run() {
        Ok((elapsed, batches)) => {
            let rows = (batches * batch) as f64 / elapsed;
            println!(
                "{{\"batch\":{batch},\"batches\":{batches},\"seconds\":{elapsed:.3},\"rows_per_s\":{rows:.1},\"us_per_batch\":{:.2}}}",
                elapsed * 1e6 / batches as f64
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
