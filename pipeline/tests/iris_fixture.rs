//! The Iris model checked into the default model repository loads under the architecture its
//! config names and classifies a typical flower of each species correctly.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use nereid_pipeline::{ArchitectureSpec, DenseModel};

#[test]
fn checked_in_iris_model_classifies_typical_flowers() {
    let model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model-repo/iris_classifier");
    let config = std::fs::read_to_string(model_dir.join("config.pbtxt")).expect("config.pbtxt");
    // The three parameters as the config states them (the full pbtxt parser lives in protocol).
    let param = |key: &str| {
        let prefix = format!("parameters {{ key: \"{key}\" value: {{ string_value: \"");
        config
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };
    let spec = ArchitectureSpec::from_parameters(param).expect("spec from config");
    let model = DenseModel::load(&model_dir.join("1/model.safetensors"), spec, &Device::Cpu)
        .expect("load iris model");
    assert_eq!((model.input_features(), model.output_features()), (4, 3));
    assert!(model.normalizes_input());

    let labels = std::fs::read_to_string(model_dir.join("labels.txt")).expect("labels.txt");
    assert_eq!(
        labels.lines().collect::<Vec<_>>(),
        ["setosa", "versicolor", "virginica"]
    );

    // Sepal length, sepal width, petal length, petal width (cm): rows 1, 51 and 101 of Fisher's data.
    let x = Tensor::from_slice(
        &[
            5.1f32, 3.5, 1.4, 0.2, 7.0, 3.2, 4.7, 1.4, 6.3, 3.3, 6.0, 2.5,
        ],
        (3, 4),
        &Device::Cpu,
    )
    .expect("input");
    let probabilities = model
        .forward(&x)
        .and_then(|y| y.to_vec2::<f32>())
        .expect("forward");
    for (class, row) in probabilities.iter().enumerate() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        assert!(row[class] > 0.8, "class {class}: {row:?}");
    }
}
