//! `nereid monitor reference` and `report` as library calls: references for a single-input
//! model (features by name or in order) and a multi-input model (inputs matched to columns by
//! name), refusals that say what is wrong, and the terminal table of a drift report.

use std::path::Path;

use nereid_monitor::Task;
use nereid_pipeline::monitoring::{reference_from_dataset, render_report, ReferenceOptions};
use nereid_pipeline::store::{FeatureStore, IngestOptions};
use nereid_protocol::config::parse_pbtxt;
use serde_json::json;

fn iris_store(dir: &Path) -> FeatureStore {
    let data = linfa_datasets::iris();
    let species = ["setosa", "versicolor", "virginica"];
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width,species\n");
    for i in 0..data.records.nrows() {
        let r = data.records.row(i);
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            r[0], r[1], r[2], r[3], species[data.targets[i]]
        ));
    }
    let path = dir.join("iris.csv");
    std::fs::write(&path, csv).expect("csv");
    let store = FeatureStore::open_or_create(dir.join("store")).expect("store");
    store
        .ingest(&path, &IngestOptions::new("iris"))
        .expect("ingest");
    store
}

fn config(name: &str) -> nereid_protocol::inference::ModelConfig {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../model-repo/{name}/config.pbtxt"));
    parse_pbtxt(
        &std::fs::read_to_string(&path).expect("config"),
        "config.pbtxt",
    )
    .expect("parse")
}

#[test]
fn references_map_datasets_onto_model_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = iris_store(dir.path());

    // One input of four elements: the first four columns, the label and its classes.
    let r = reference_from_dataset(
        &store,
        "iris@1",
        &config("iris_classifier"),
        &ReferenceOptions {
            label: Some("species".into()),
            ..ReferenceOptions::default()
        },
    )
    .expect("reference");
    assert_eq!(r.input_name, "INPUT");
    assert_eq!(
        r.features,
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    );
    assert_eq!(r.classes, ["setosa", "versicolor", "virginica"]);
    assert_eq!(r.profile.rows, 150);
    assert_eq!(
        r.prediction_column().map(|c| c.name.as_str()),
        Some("species")
    );
    r.check().expect("consistent");

    // Named features in another order.
    let r = reference_from_dataset(
        &store,
        "iris",
        &config("iris_classifier"),
        &ReferenceOptions {
            features: vec![
                "petal_width".into(),
                "petal_length".into(),
                "sepal_width".into(),
                "sepal_length".into(),
            ],
            ..ReferenceOptions::default()
        },
    )
    .expect("reference");
    assert_eq!(r.features[0], "petal_width");

    // Several inputs of one element: matched to columns by name, case aside.
    let r = reference_from_dataset(
        &store,
        "iris",
        &config("iris_pipeline"),
        &ReferenceOptions {
            task: Task::Classification,
            ..ReferenceOptions::default()
        },
    )
    .expect("reference");
    let inputs: Vec<(String, Vec<String>)> = r
        .input_columns()
        .into_iter()
        .map(|i| (i.name, i.columns))
        .collect();
    assert_eq!(inputs.len(), 4);
    assert!(
        inputs.contains(&("PETAL_LENGTH".to_string(), vec!["petal_length".to_string()])),
        "{inputs:?}"
    );

    // Refusals name the problem.
    for (options, model, needle) in [
        (
            ReferenceOptions {
                features: vec!["sepal_length".into()],
                ..ReferenceOptions::default()
            },
            "iris_classifier",
            "4 elements per row but 1 columns",
        ),
        (
            ReferenceOptions {
                features: vec!["a".into(), "b".into(), "c".into(), "d".into()],
                ..ReferenceOptions::default()
            },
            "iris_classifier",
            "has no column 'a'",
        ),
        (
            ReferenceOptions {
                label: Some("kind".into()),
                ..ReferenceOptions::default()
            },
            "iris_classifier",
            "has no column 'kind'",
        ),
    ] {
        let err =
            reference_from_dataset(&store, "iris", &config(model), &options).expect_err(needle);
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = reference_from_dataset(
        &store,
        "nosuch@1",
        &config("iris_classifier"),
        &ReferenceOptions::default(),
    )
    .expect_err("unknown dataset");
    assert!(err.to_string().contains("nosuch"), "{err}");
}

#[test]
fn reports_print_as_a_table() {
    let doc = json!({
        "model": "iris_classifier", "version": "1", "samples": 2000, "dropped": 3,
        "monitoring": {"window": "tumbling, 1000 rows", "sample_rate": 1.0},
        "latest": {
            "window": {"index": 2, "rows": 1000},
            "dataset_drift": {"drift": false, "drifted": 1, "columns": 4, "share": 0.25, "drift_share": 0.5},
            "prediction_drift": true,
            "columns": [
                {"name": "petal_length", "role": "feature", "test": {"method": "ks", "score": 2.2e-13, "threshold": 0.05, "drift": true},
                 "quality": {"out_of_range": {"failed": true}, "missing": {"failed": false}}},
                {"name": "PROBABILITIES", "role": "prediction", "error": "no values in this window", "quality": {}}
            ]
        },
        "performance": {"total": {"labelled": 600, "accuracy": 0.8583}}
    });
    let text = render_report(&doc).expect("renders");
    assert!(
        text.starts_with("iris_classifier version 1 · tumbling, 1000 rows"),
        "{text}"
    );
    assert!(
        text.contains(
            "dataset drift no (1 of 4 features, share 0.2500 vs 0.5000) · prediction drift YES"
        ),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains("petal_length"))
        .expect("row");
    assert!(
        row.contains("ks")
            && row.contains("2.200e-13")
            && row.contains("DRIFT")
            && row.contains("out_of_range"),
        "{row}"
    );
    assert!(text.contains("no values in this window"), "{text}");
    assert!(
        text.contains("live performance: 600 labelled · accuracy 0.8583"),
        "{text}"
    );
    let empty = render_report(&json!({"model": "m", "version": "1", "latest": null, "performance": {"total": {"labelled": 0}}})).expect("renders");
    assert!(
        empty.contains("no window has closed yet") && empty.contains("no feedback yet"),
        "{empty}"
    );
}
