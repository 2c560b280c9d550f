//! Fuzzing the lifecycle's parsers of outside input (nereid-testkit::fuzz): `triggers.toml`
//! (with its cron expressions, time zones and durations) and the weights files a model version
//! ships (`model.safetensors`, headers included). Every input must give a value or an error,
//! never a panic; a model that loads must also run.

use std::path::Path;

use candle_core::{Device, Tensor};
use nereid_pipeline::model::{Activation, ArchitectureSpec, DenseModel, OutputActivation};
use nereid_pipeline::triggers::config::TriggersFile;
use nereid_testkit::fuzz;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn trigger_files() {
    let seeds = fuzz::seeds_from(&Path::new(ROOT).join("fuzz/corpus/triggers"));
    fuzz::run("trigger_files", fuzz::mutated(seeds), |input| {
        let text = String::from_utf8_lossy(&input);
        let _ = TriggersFile::parse(&text, Path::new("triggers.toml"));
    });
}

#[test]
fn safetensors_weights() {
    let seeds =
        vec![
            std::fs::read(Path::new(ROOT).join("model-repo/iris_classifier/1/model.safetensors"))
                .expect("the default classifier's weights"),
        ];
    let spec = ArchitectureSpec::mlp(Activation::Relu, OutputActivation::Softmax);
    fuzz::run("safetensors_weights", fuzz::mutated(seeds), |input| {
        let loaded = DenseModel::from_safetensors(
            &input,
            Path::new("model.safetensors"),
            spec,
            &Device::Cpu,
        );
        if let Ok(model) = loaded {
            let x = Tensor::zeros(
                (2, model.input_features()),
                candle_core::DType::F32,
                &Device::Cpu,
            )
            .expect("input");
            let _ = model.forward(&x);
            let _ = model.to_onnx("INPUT", "OUTPUT");
        }
    });
}
