//! Trains the Iris classifier served from the default model repository and publishes it.
//!
//! ```text
//! cargo run --release -p nereid-pipeline --example train_iris -- --out model-repo --seed 42
//! ```
//!
//! MLP 4 -> 16 -> 3 (ReLU, softmax output) on standardised inputs, stratified 60/20/20 split,
//! written as `iris_classifier` version `--version` (default 1). Inputs are sepal length, sepal
//! width, petal length, petal width in cm; outputs are the probabilities of setosa, versicolor
//! and virginica.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nereid_pipeline::{train_classifier, write_model_version, Activation, TrainConfig};

/// Train the Iris MLP and publish it into a model repository.
#[derive(Debug, Parser)]
struct Args {
    /// Model repository to publish into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the split, the initial weights and everything else random.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Model version to write; an existing version is never overwritten.
    #[arg(long, default_value_t = 1)]
    version: u64,
}

const MODEL_NAME: &str = "iris_classifier";

/// linfa's iris targets are 0, 1, 2 for these species (Fisher's data in its usual order).
const LABELS: [&str; 3] = ["setosa", "versicolor", "virginica"];

/// The feature order the published model expects, as linfa names its columns.
const FEATURE_NAMES: [&str; 4] = ["sepal length", "sepal width", "petal length", "petal width"];

const CONFIG_BODY: &str = r#"name: "iris_classifier"
backend: "candle"
max_batch_size: 64
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
parameters { key: "nereid.architecture" value: { string_value: "mlp" } }
parameters { key: "nereid.activation" value: { string_value: "relu" } }
parameters { key: "nereid.output_activation" value: { string_value: "softmax" } }
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { }
"#;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let dataset = linfa_datasets::iris();
    // The published config promises this input order; fail rather than publish a model that
    // silently reads its inputs in another order.
    if dataset.feature_names() != FEATURE_NAMES {
        return Err(format!(
            "linfa's iris features are {:?}, expected {FEATURE_NAMES:?}",
            dataset.feature_names()
        )
        .into());
    }
    // `iter` walks an ndarray in logical row-major order whatever its memory layout.
    let features: Vec<f32> = dataset.records.iter().map(|&v| v as f32).collect();
    let labels = dataset
        .targets
        .iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < LABELS.len())
        })
        .collect::<Option<Vec<u32>>>()
        .ok_or("iris targets outside 0..3")?;

    let cfg = TrainConfig {
        hidden: vec![16],
        activation: Activation::Relu,
        epochs: 1000,
        learning_rate: 0.01,
        patience: Some(100),
        seed: args.seed,
        validation_fraction: 0.2,
        test_fraction: 0.2,
        standardize: true,
        ..TrainConfig::default()
    };
    let model = train_classifier(&features, FEATURE_NAMES.len(), &labels, LABELS.len(), &cfg)?;

    let m = &model.metrics;
    let test = m.test.ok_or("empty test split")?;
    let validation = m.validation.ok_or("empty validation split")?;
    let accuracy = |s: &nereid_pipeline::SplitMetrics| s.accuracy().unwrap_or(f32::NAN);
    println!(
        "epochs run: {} (best epoch {})",
        model.epochs_run, model.best_epoch
    );
    println!(
        "train      accuracy {:.4} ({} rows, loss {:.4})",
        accuracy(&m.train),
        m.train.rows,
        m.train.loss
    );
    println!(
        "validation accuracy {:.4} ({} rows, loss {:.4})",
        accuracy(&validation),
        validation.rows,
        validation.loss
    );
    println!(
        "test       accuracy {:.4} ({} rows, loss {:.4})",
        accuracy(&test),
        test.rows,
        test.loss
    );

    let command = format!(
        "cargo run --release -p nereid-pipeline --example train_iris -- --out {} --seed {}{}",
        args.out.display(),
        args.seed,
        if args.version == 1 {
            String::new()
        } else {
            format!(" --version {}", args.version)
        }
    );
    let config = format!(
        "# Produced by `{command}` (test accuracy {:.4} on {} rows).\n{CONFIG_BODY}",
        accuracy(&test),
        test.rows
    );
    let labels: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
    let dir = write_model_version(
        &args.out,
        MODEL_NAME,
        &config,
        &labels,
        &model,
        args.version,
    )?;
    println!("published {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's promise: `cmp` finds this run's weights identical to the checked-in ones,
    /// with its stated accuracy (test 0.9667 = 29 of 30 rows).
    #[test]
    fn reproduces_the_checked_in_model_byte_for_byte() {
        let out = std::env::temp_dir().join(format!("nereid-train-iris-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let args = Args {
            out: out.clone(),
            seed: 42,
            version: 1,
        };
        run(&args).expect("training");
        let checked_in =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model-repo/iris_classifier");
        let ours = std::fs::read(out.join("iris_classifier/1/model.safetensors")).expect("ours");
        let theirs = std::fs::read(checked_in.join("1/model.safetensors")).expect("checked in");
        let config =
            std::fs::read_to_string(out.join("iris_classifier/config.pbtxt")).expect("config");
        let _ = std::fs::remove_dir_all(&out);
        assert!(
            ours == theirs,
            "the weights differ from the checked-in model.safetensors"
        );
        assert!(
            config.contains("(test accuracy 0.9667 on 30 rows)"),
            "{config}"
        );
    }
}
