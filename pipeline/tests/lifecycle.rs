//! The lifecycle end to end: pipelines run from TOML (reproducibility and caching, the gate,
//! validation failures, retries and the server load request), tracked training from the CLI,
//! the feature-store CLI, and the Iris pipeline reproducing the default repository's model.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use clap::{Parser, Subcommand};
use nereid_pipeline::cli::{
    run_features, run_pipeline, run_train, FeaturesCommand, PipelineCommand, TrainArgs,
};
use nereid_pipeline::gate::{Lineage, Reference, LINEAGE_FILE, REFERENCE_FILE};
use nereid_pipeline::runner::{
    run_pipeline_file, PipelineStatus, RunOptions, StepOutput, StepStatus,
};
use nereid_pipeline::store::{FeatureStore, IngestOptions};
use nereid_pipeline::tracking::{RunStatus, Tracker};
use nereid_pipeline::{model_versions, ArchitectureSpec, DenseModel};

const SPECIES: [&str; 3] = ["setosa", "versicolor", "virginica"];
const FEATURES: &str = r#"["sepal_length", "sepal_width", "petal_length", "petal_width"]"#;

/// Fisher's Iris data from linfa-datasets as CSV (the same as `examples/export_iris.rs`).
fn write_iris_csv(path: &Path) {
    let data = linfa_datasets::iris();
    let mut columns: Vec<(&str, ArrayRef)> =
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let v: Vec<f64> = data.records.column(j).iter().copied().collect();
                (*name, Arc::new(Float64Array::from(v)) as ArrayRef)
            })
            .collect();
    let species: Vec<&str> = data.targets.iter().map(|&t| SPECIES[t]).collect();
    columns.push(("species", Arc::new(StringArray::from(species))));
    let batch = RecordBatch::try_from_iter(columns).expect("batch");
    let file = std::fs::File::create(path).expect("create csv");
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    w.write(&batch).expect("write csv");
}

struct Workspace {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Pipelines name the repository by its `file://` URL, so that they publish through the
    /// object-store code (marker, uploads) into the same folder.
    remote_repository: bool,
}

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        write_iris_csv(&dir.join("iris.csv"));
        Workspace {
            _tmp: tmp,
            dir,
            remote_repository: false,
        }
    }

    fn repository(&self) -> String {
        let path = self.path("repo").display().to_string();
        if self.remote_repository {
            format!("file://{path}")
        } else {
            path
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// A pipeline file with absolute paths into this workspace.
    fn pipeline(&self, name: &str, body: &str) -> PathBuf {
        let head = format!(
            "name = \"{name}\"\nmodel = \"iris\"\nstore = {:?}\nruns = {:?}\nrepository = {:?}\n",
            self.path("store"),
            self.path("runs"),
            self.repository(),
        );
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, format!("{head}{body}")).expect("write pipeline");
        path
    }

    fn ingest_step(&self) -> String {
        format!(
            "[[step]]\nname = \"ingest\"\nkind = \"ingest\"\nsource = {:?}\ndataset = \"iris\"\n\n",
            self.path("iris.csv")
        )
    }
}

fn train_step(extra: &str) -> String {
    format!(
        "[[step]]\nname = \"train\"\nkind = \"train\"\nneeds = [\"ingest\"]\nfeatures = {FEATURES}\nlabel = \"species\"\n{extra}\n\n"
    )
}

const EVAL_GATE_PUBLISH: &str = r#"
[[step]]
name = "evaluate"
kind = "evaluate"
needs = ["train"]

[[step]]
name = "gate"
kind = "gate"
needs = ["evaluate"]
metric = "accuracy"
min_improvement = 0.0

[[step]]
name = "publish"
kind = "publish"
needs = ["gate"]
"#;

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..RunOptions::default()
    }
}

fn model_output(run: &nereid_pipeline::runner::PipelineRun) -> (String, PathBuf) {
    match run.step("train").and_then(|s| s.output.clone()) {
        Some(StepOutput::Model {
            weights_sha256,
            dir,
            ..
        }) => (weights_sha256, dir),
        other => panic!("train output {other:?}"),
    }
}

#[test]
fn same_pipeline_twice_gives_identical_weights_and_a_full_cache_hit() {
    let ws = Workspace::new();
    let body = format!(
        "{}{}{EVAL_GATE_PUBLISH}",
        ws.ingest_step(),
        train_step("hidden = [8]\nepochs = 150\nlearning_rate = 0.05\npatience = 20\nseed = 7\nbatch_size = 32")
    );
    let file = ws.pipeline("repro", &body);

    let first = run_pipeline_file(&file, &quiet()).expect("first run");
    assert_eq!(first.status, PipelineStatus::Succeeded, "{first:#?}");
    assert!(first
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Succeeded));
    let (weights, dir) = model_output(&first);
    assert_eq!(
        model_versions(&ws.path("repo"), "iris").expect("versions"),
        [1]
    );

    let second = run_pipeline_file(&file, &quiet()).expect("second run");
    assert_eq!(second.status, PipelineStatus::Succeeded);
    assert!(second.fully_cached(), "{:#?}", second.steps);
    assert!(
        second.outcome.contains("nothing to do"),
        "{}",
        second.outcome
    );
    assert_eq!(model_output(&second).0, weights);
    // No new training run, no new version.
    assert_eq!(Tracker::new(ws.path("runs")).list().expect("runs").len(), 1);
    assert_eq!(
        model_versions(&ws.path("repo"), "iris").expect("versions"),
        [1]
    );

    // A fresh workspace, same inputs: bit-identical weights, file for file.
    let other = Workspace::new();
    let file2 = other.pipeline(
        "repro",
        &body.replace(
            &ws.path("iris.csv").display().to_string(),
            &other.path("iris.csv").display().to_string(),
        ),
    );
    let third = run_pipeline_file(&file2, &quiet()).expect("fresh run");
    let (weights3, dir3) = model_output(&third);
    assert_eq!(weights3, weights);
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("a"),
        std::fs::read(dir3.join("model.safetensors")).expect("b")
    );
    // The same dataset version id in both stores.
    let id = |run: &nereid_pipeline::runner::PipelineRun| match run
        .step("ingest")
        .and_then(|s| s.output.clone())
    {
        Some(StepOutput::Dataset { id, .. }) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(id(&first), id(&third));

    // Forcing a re-run trains again (a new run) and still gets the same weights.
    let forced = run_pipeline_file(
        &file,
        &RunOptions {
            no_cache: true,
            quiet: true,
            ..RunOptions::default()
        },
    )
    .expect("forced");
    assert_eq!(model_output(&forced).0, weights);
    assert_ne!(model_output(&forced).1, dir);

    // The run record is readable through `pipeline show` / `list`.
    let runs = ws.path("runs").display().to_string();
    cli(&[
        "nereid",
        "pipeline",
        "show",
        &second.id[..second.id.len() - 2],
        "--runs-dir",
        &runs,
    ])
    .expect("show");
    let ambiguous =
        cli(&["nereid", "pipeline", "show", "2", "--runs-dir", &runs]).expect_err("ambiguous");
    assert!(ambiguous.to_string().contains("ambiguous"), "{ambiguous}");
    cli(&[
        "nereid",
        "pipeline",
        "show",
        "latest",
        "--runs-dir",
        &runs,
        "--json",
    ])
    .expect("show json");
    cli(&["nereid", "pipeline", "list", "--runs-dir", &runs]).expect("list");
    assert!(cli(&["nereid", "pipeline", "show", "nope", "--runs-dir", &runs]).is_err());
}

#[test]
fn the_gate_publishes_only_a_better_candidate_with_reference_and_lineage() {
    gate_and_publish(Workspace::new());
}

/// The same into a repository on object storage (a `file://` URL): the baseline and the serving
/// config are read from it, the version is uploaded under the publisher's marker, and what lands
/// is exactly what a local publish writes.
#[test]
fn the_gate_publishes_into_a_remote_repository() {
    gate_and_publish(Workspace {
        remote_repository: true,
        ..Workspace::new()
    });
}

fn gate_and_publish(ws: Workspace) {
    let weak = "epochs = 1\nlearning_rate = 0.001\npatience = 1\nseed = 3";
    let strong = "hidden = [16]\nepochs = 300\nlearning_rate = 0.02\npatience = 50\nseed = 3";

    // 1. A weak first model: nothing to compare with, so it is published as version 1.
    let file = ws.pipeline(
        "weak",
        &format!(
            "{}{}{EVAL_GATE_PUBLISH}",
            ws.ingest_step(),
            train_step(weak)
        ),
    );
    let run = run_pipeline_file(&file, &quiet()).expect("weak");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    assert_eq!(model_versions(&ws.path("repo"), "iris").expect("v"), [1]);

    // The operator tunes how the model is served; publishing must keep it.
    let config_path = ws.path("repo/iris/config.pbtxt");
    let tuned = std::fs::read_to_string(&config_path)
        .expect("config")
        .replace(
            "instance_group [ { count: 1 kind: KIND_CPU } ]",
            "instance_group [ { count: 2 kind: KIND_CPU } ]",
        )
        .replace(
            "dynamic_batching { }",
            "dynamic_batching { max_queue_delay_microseconds: 500 }",
        )
        + "parameters { key: \"nereid.monitor.sample_rate\" value: { string_value: \"0.5\" } }\n"
        + "version_policy { latest { num_versions: 1 } }\n";
    std::fs::write(&config_path, &tuned).expect("tune");

    // 2. A strong candidate beats it on the same test rows: version 2.
    let file = ws.pipeline(
        "strong",
        &format!(
            "{}{}{EVAL_GATE_PUBLISH}",
            ws.ingest_step(),
            train_step(strong)
        ),
    );
    let run = run_pipeline_file(&file, &quiet()).expect("strong");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    assert_eq!(model_versions(&ws.path("repo"), "iris").expect("v"), [1, 2]);
    let gate = match run.step("gate").and_then(|s| s.output.clone()) {
        Some(StepOutput::Gate(g)) => g,
        other => panic!("{other:?}"),
    };
    assert!(gate.passed, "{gate:?}");
    assert_eq!(gate.baseline_version, Some(1));
    match run.step("publish").and_then(|s| s.output.clone()) {
        Some(StepOutput::Publish {
            published: Some(p), ..
        }) => assert_eq!(p.location, format!("{}/iris/2", ws.repository())),
        other => panic!("publish output {other:?}"),
    }
    let text = std::fs::read_to_string(&config_path).expect("config");
    let published = nereid_protocol::config::parse_pbtxt(&text, "published").expect("parses");
    assert_eq!(published.instance_group.len(), 1);
    assert_eq!(published.instance_group[0].count, 2, "{text}");
    assert_eq!(
        published
            .dynamic_batching()
            .map(|d| d.max_queue_delay_microseconds),
        Some(500),
        "{text}"
    );
    assert!(published.version_policy.is_some(), "{text}");
    assert_eq!(
        published.parameters["nereid.monitor.sample_rate"].string_value,
        "0.5"
    );
    assert_eq!(
        published.parameters["nereid.architecture"].string_value,
        "mlp"
    );
    assert_eq!(published.input[0].dims, [4]);
    assert!(
        text.starts_with("# Published by the nereid pipeline"),
        "{text}"
    );
    assert!(gate.improvement.expect("improvement") > 0.0);
    let (weights, _) = model_output(&run);

    // Version 2 is complete: weights, reference.json, lineage.json; no staging leftovers.
    let v2 = ws.path("repo/iris/2");
    let mut files: Vec<String> = std::fs::read_dir(&v2)
        .expect("v2")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "lineage.json",
            "model.onnx",
            "model.safetensors",
            "reference.json"
        ]
    );
    // The ONNX copy is the same model (it is run by ONNX Runtime in the server's ONNX tests);
    // here: its boundary is the published config's.
    let onnx = std::fs::read(v2.join("model.onnx")).expect("model.onnx");
    let boundary = <nereid_protocol::onnx::ModelBoundary as prost::Message>::decode(&onnx[..])
        .expect("an ONNX model");
    let graph = boundary.graph.expect("graph");
    assert_eq!(
        (graph.input[0].name.as_str(), graph.output[0].name.as_str()),
        ("INPUT", "PROBABILITIES")
    );
    let hidden: Vec<String> = std::fs::read_dir(ws.path("repo/iris"))
        .expect("model dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    let lineage: Lineage =
        serde_json::from_slice(&std::fs::read(v2.join(LINEAGE_FILE)).expect("lineage"))
            .expect("json");
    let store = FeatureStore::open(ws.path("store")).expect("store");
    let dataset = store.resolve("iris").expect("iris");
    assert_eq!(lineage.dataset_version, dataset.id);
    assert_eq!(lineage.weights_sha256, weights);
    assert_eq!(lineage.pipeline_run.as_deref(), Some(run.id.as_str()));
    assert_eq!(lineage.gate.as_ref().map(|g| g.passed), Some(true));
    assert!(lineage.training_metrics.contains_key("test_accuracy"));
    let train_run = Tracker::new(ws.path("runs"))
        .get(&lineage.training_run)
        .expect("training run");
    assert_eq!(
        train_run.dataset_version.as_deref(),
        Some(dataset.id.as_str())
    );
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(v2.join(REFERENCE_FILE)).expect("reference"))
            .expect("json");
    assert_eq!(reference.dataset_version, dataset.id);
    assert_eq!(reference.classes, SPECIES);
    let cols: Vec<&str> = reference
        .profile
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "sepal_length",
            "sepal_width",
            "petal_length",
            "petal_width",
            "species",
            "prediction"
        ]
    );
    assert!(
        reference.profile.columns[0]
            .numeric
            .as_ref()
            .expect("numeric")
            .histogram
            .counts
            .len()
            > 1
    );
    // Format 2: exact distributions for the drift tests, and the model's own predictions on
    // the reference rows (class names) next to the label.
    assert_eq!(reference.format, 2);
    reference.check().expect("a consistent reference");
    assert!(matches!(
        reference.profile.columns[0]
            .numeric
            .as_ref()
            .and_then(|n| n.distribution.as_ref()),
        Some(nereid_monitor::profile::Distribution::Exact { .. })
    ));
    let prediction = reference.prediction.as_ref().expect("prediction reference");
    assert_eq!(prediction.output, "PROBABILITIES");
    let predicted = reference
        .column(&prediction.column)
        .expect("prediction column");
    let shares = &predicted
        .categorical
        .as_ref()
        .expect("class names")
        .frequencies;
    assert!(shares
        .iter()
        .all(|(class, _)| SPECIES.contains(&class.as_str())));
    assert_eq!(shares.iter().map(|(_, n)| n).sum::<u64>(), 150);

    // The config it wrote parses as a Triton config, and version 2 loads as the server would.
    let pbtxt = std::fs::read_to_string(ws.path("repo/iris/config.pbtxt")).expect("config");
    let config =
        nereid_protocol::config::parse_pbtxt(&pbtxt, "config.pbtxt").expect("parse config");
    let spec = ArchitectureSpec::from_parameters(|k| {
        config.parameters.get(k).map(|p| p.string_value.clone())
    })
    .expect("spec");
    let model = DenseModel::load(
        &v2.join("model.safetensors"),
        spec,
        &candle_core::Device::Cpu,
    )
    .expect("load");
    assert_eq!((model.input_features(), model.output_features()), (4, 3));
    assert_eq!(
        std::fs::read_to_string(ws.path("repo/iris/labels.txt")).expect("labels"),
        "setosa\nversicolor\nvirginica\n"
    );

    // 3. A worse candidate is not published; the run still succeeds and says why.
    let file = ws.pipeline(
        "weak_again",
        &format!(
            "{}{}{EVAL_GATE_PUBLISH}",
            ws.ingest_step(),
            train_step(&weak.replace("seed = 3", "seed = 4"))
        ),
    );
    let before = std::fs::read(ws.path("repo/iris/config.pbtxt")).expect("config");
    let run = run_pipeline_file(&file, &quiet()).expect("weak again");
    assert_eq!(run.status, PipelineStatus::Succeeded);
    assert!(run.outcome.contains("not published"), "{}", run.outcome);
    assert_eq!(model_versions(&ws.path("repo"), "iris").expect("v"), [1, 2]);
    assert_eq!(
        std::fs::read(ws.path("repo/iris/config.pbtxt")).expect("config"),
        before
    );
    match run.step("gate").and_then(|s| s.output.clone()) {
        Some(StepOutput::Gate(g)) => {
            assert!(!g.passed);
            assert_eq!(g.baseline_version, Some(2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_validation_stops_the_run_with_a_report() {
    let ws = Workspace::new();
    let body = format!(
        "retries = 2\nretry_delay_ms = 1\n{}{}{}",
        ws.ingest_step(),
        r#"[[step]]
name = "validate"
kind = "validate"
needs = ["ingest"]
schema = ["sepal_length:float64", "species:int64", "colour:utf8"]
min_rows = 1000
max_null_fraction = 0.0
ranges = { petal_length = { min = 0.0, max = 5.0 } }
allowed_values = { species = ["setosa", "versicolor"] }

"#,
        train_step("epochs = 5").replace("needs = [\"ingest\"]", "needs = [\"validate\"]"),
    );
    // Retries are global here, yet a validation failure is not retried.
    let file = ws.pipeline("validation", &body);
    let err = cli(&["nereid", "pipeline", "run", &file.display().to_string()]).expect_err("fails");
    assert!(err.to_string().contains("failed"), "{err}");
    let runs = nereid_pipeline::runner::list_runs(&ws.path("runs")).expect("runs");
    let run = runs.last().expect("a run");
    assert_eq!(run.status, PipelineStatus::Failed);
    let v = run.step("validate").expect("validate");
    assert_eq!(v.status, StepStatus::Failed);
    assert_eq!(v.attempts, 1);
    let report = v.error.as_deref().expect("error");
    for expected in [
        "column `species` is Utf8, expected Int64",
        "missing column `colour`",
        "150 rows, at least 1000 required",
        "column `petal_length`: ",
        "outside [0, 5]",
        "\"virginica\" (50)",
    ] {
        assert!(
            report.contains(expected),
            "report lacks `{expected}`:\n{report}"
        );
    }
    assert_eq!(
        run.step("train").expect("train").status,
        StepStatus::Skipped
    );
    assert!(Tracker::new(ws.path("runs"))
        .list()
        .expect("runs")
        .is_empty());
}

/// A one-shot HTTP server answering the given statuses in turn; records request lines.
fn fake_server(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for status in statuses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            // Read the head and the (small) body announced by Content-Length.
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            log.lock()
                .expect("lock")
                .push(text.lines().next().unwrap_or("").to_string());
            let body = if status == 200 {
                ""
            } else {
                "{\"error\":\"not ready\"}"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn a_failing_server_load_is_retried_and_publishing_stays_idempotent() {
    let ws = Workspace::new();
    let (url, seen) = fake_server(vec![503, 200]);
    let body = format!(
        "retry_delay_ms = 10\n{}{}{}",
        ws.ingest_step(),
        train_step("epochs = 30\nseed = 1"),
        EVAL_GATE_PUBLISH.replace(
            "needs = [\"gate\"]",
            &format!("needs = [\"gate\"]\nretries = 2\nserver_url = {url:?}")
        ),
    );
    let file = ws.pipeline("load", &body);
    let run = run_pipeline_file(&file, &quiet()).expect("run");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    let publish = run.step("publish").expect("publish");
    assert_eq!(publish.attempts, 2);
    assert!(
        publish
            .log
            .iter()
            .any(|l| l.contains("attempt 1 failed") && l.contains("503")),
        "{:?}",
        publish.log
    );
    match &publish.output {
        Some(StepOutput::Publish {
            published: Some(p), ..
        }) => {
            assert!(p.server_loaded);
            assert_eq!(p.version, 1);
        }
        other => panic!("{other:?}"),
    }
    // Published once, although the step ran twice.
    assert_eq!(model_versions(&ws.path("repo"), "iris").expect("v"), [1]);
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|r| r.starts_with("POST /v2/repository/models/iris/load ")),
        "{requests:?}"
    );
}

// ---- the CLI ----------------------------------------------------------------------------------

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(subcommand)]
    Features(FeaturesCommand),
    Train(TrainArgs),
    #[command(subcommand)]
    Pipeline(PipelineCommand),
}

fn cli(args: &[&str]) -> anyhow::Result<()> {
    match Cli::try_parse_from(args)?.command {
        Command::Features(c) => run_features(c),
        Command::Train(a) => run_train(a),
        Command::Pipeline(c) => run_pipeline(c),
    }
}

#[test]
fn cli_definitions_are_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn features_and_train_commands_work_end_to_end() {
    let ws = Workspace::new();
    let store = ws.path("store").display().to_string();
    let runs = ws.path("runs").display().to_string();
    let csv = ws.path("iris.csv").display().to_string();
    let s = store.as_str();
    cli(&["nereid", "features", "ingest", &csv, "--store", s]).expect("ingest");
    cli(&["nereid", "features", "ingest", &csv, "--store", s, "--json"]).expect("ingest again");
    cli(&["nereid", "features", "versions", "--store", s]).expect("datasets");
    cli(&["nereid", "features", "versions", "iris", "--store", s]).expect("versions");
    cli(&["nereid", "features", "show", "iris", "--store", s]).expect("show");
    cli(&[
        "nereid", "features", "show", "iris@1", "--store", s, "--json",
    ])
    .expect("show json");
    cli(&["nereid", "features", "verify", "--store", s]).expect("verify");
    // A second version with a subset of rows, then a diff.
    let text = std::fs::read_to_string(ws.path("iris.csv")).expect("csv");
    let half: String = text.lines().take(76).map(|l| format!("{l}\n")).collect();
    std::fs::write(ws.path("half.csv"), half).expect("half");
    let half = ws.path("half.csv").display().to_string();
    cli(&[
        "nereid", "features", "ingest", &half, "--name", "iris", "--store", s, "--parent", "iris@1",
    ])
    .expect("v2");
    cli(&[
        "nereid", "features", "diff", "iris@1", "iris@2", "--store", s,
    ])
    .expect("diff");
    let fs = FeatureStore::open(ws.path("store")).expect("store");
    assert_eq!(
        fs.resolve("iris@2").expect("v2").parents,
        vec![fs.resolve("iris@1").expect("v1").id]
    );
    assert!(cli(&["nereid", "features", "show", "nope", "--store", s]).is_err());
    assert!(cli(&[
        "nereid",
        "features",
        "versions",
        "--store",
        &ws.path("nowhere").display().to_string()
    ])
    .is_err());

    // The same commands with the store behind a URL (object storage; `file://` here).
    let url = format!("file://{}", ws.path("object-store").display());
    cli(&["nereid", "features", "ingest", &csv, "--store", &url]).expect("ingest to a URL");
    cli(&["nereid", "features", "versions", "iris", "--store", &url]).expect("versions at a URL");
    cli(&["nereid", "features", "verify", "--store", &url]).expect("verify at a URL");
    let remote = FeatureStore::open_at(&url).expect("open the URL store");
    assert_eq!(
        remote.resolve("iris").expect("iris").id,
        fs.resolve("iris@1").expect("v1").id,
        "same content, same id, wherever the store is"
    );
    let err = cli(&["nereid", "features", "versions", "--store", "ftp://host/x"])
        .expect_err("unsupported scheme");
    assert!(
        format!("{err:#}").contains("unsupported URL scheme 'ftp://'"),
        "{err:#}"
    );

    // Tracked training from the CLI.
    let train = |extra: &[&str]| {
        let mut args = vec![
            "nereid",
            "train",
            "--store",
            s,
            "--runs-dir",
            &runs,
            "--dataset",
            "iris@1",
            "--epochs",
            "20",
            "--seed",
            "5",
            "--experiment",
            "cli",
        ];
        if !extra.contains(&"--label") {
            args.extend_from_slice(&["--label", "species"]);
        }
        args.extend_from_slice(extra);
        cli(&args)
    };
    train(&[
        "--features",
        "sepal_length,sepal_width,petal_length,petal_width",
        "--hidden",
        "4",
    ])
    .expect("train");
    let tracker = Tracker::new(ws.path("runs"));
    let recorded = tracker.list().expect("runs");
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.status, RunStatus::Finished);
    assert_eq!(r.experiment, "cli");
    assert_eq!(r.seed, 5);
    assert_eq!(r.params.get("hidden").map(String::as_str), Some("[4]"));
    assert_eq!(r.params.get("epochs").map(String::as_str), Some("20"));
    assert_eq!(
        r.dataset_version,
        Some(fs.resolve("iris@1").expect("v1").id)
    );
    assert!(
        r.history
            .iter()
            .filter(|p| p.key == "epoch_train_loss")
            .count()
            >= 1
    );
    assert!(r.metrics.contains_key("test_accuracy") && r.metrics.contains_key("validation_loss"));
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.safetensors",
            "model.onnx",
            "labels.txt",
            "model.json"
        ]
    );
    assert!(r.ended_at.is_some());
    // The code revision is recorded when there is a git checkout, and its absence tolerated.
    assert!(r.code.commit.is_some() || r.code.note.is_some());

    // A missing column is a clear error, and the run is recorded as failed.
    let err = train(&["--features", "sepal_length,nope"]).expect_err("missing column");
    assert!(format!("{err:#}").contains("no column `nope`"), "{err:#}");
    let failed = tracker.list().expect("runs");
    assert_eq!(failed.len(), 2);
    assert!(failed
        .iter()
        .any(|r| r.status == RunStatus::Failed
            && r.error.as_deref().is_some_and(|e| e.contains("nope"))));
    // A string feature is refused with advice.
    let err = train(&[
        "--features",
        "species,sepal_length",
        "--label",
        "petal_width",
    ])
    .expect_err("string feature");
    assert!(format!("{err:#}").contains("numeric"), "{err:#}");

    // Regression from the CLI: petal width from the other measurements.
    train(&[
        "--task",
        "regression",
        "--features",
        "sepal_length,sepal_width,petal_length",
        "--label",
        "petal_width",
    ])
    .expect("train a regressor");
    let latest = tracker.list().expect("runs");
    let r = latest
        .iter()
        .find(|r| r.params.get("task").map(String::as_str) == Some("regression"))
        .expect("regression run");
    assert_eq!(r.status, RunStatus::Finished);
    assert!(r.metrics.contains_key("test_rmse") && r.metrics.contains_key("test_r2"));
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(names, ["model.safetensors", "model.onnx", "model.json"]);
    // A string target is refused for regression, with the reason.
    let err = train(&[
        "--task",
        "regression",
        "--features",
        "sepal_length",
        "--label",
        "species",
    ])
    .expect_err("string target");
    assert!(
        format!("{err:#}").contains("regression needs a numeric target"),
        "{err:#}"
    );
}

#[test]
fn join_command_builds_a_training_set() {
    let ws = Workspace::new();
    let s = ws.path("store").display().to_string();
    std::fs::write(
        ws.path("labels.csv"),
        "user,ts,y\n1,2024-01-02T00:00:00,1\n2,2024-01-02T00:00:00,0\n",
    )
    .expect("labels");
    std::fs::write(
        ws.path("feats.csv"),
        "user,ts,x\n1,2024-01-01T00:00:00,0.5\n2,2024-01-03T00:00:00,0.7\n",
    )
    .expect("feats");
    for (f, n) in [("labels.csv", "labels"), ("feats.csv", "feats")] {
        cli(&[
            "nereid",
            "features",
            "ingest",
            &ws.path(f).display().to_string(),
            "--store",
            &s,
            "--name",
            n,
        ])
        .expect("ingest");
    }
    cli(&[
        "nereid",
        "features",
        "join",
        "--store",
        &s,
        "--name",
        "train",
        "--labels",
        "labels",
        "--label-timestamp",
        "ts",
        "--features",
        "feats",
        "--entity",
        "user",
        "--feature-timestamp",
        "ts",
        "--ttl",
        "2d",
    ])
    .expect("join");
    let store = FeatureStore::open(ws.path("store")).expect("store");
    let v = store.resolve("train").expect("train");
    assert_eq!(v.rows, 2);
    assert_eq!(v.parents.len(), 2);
    // User 2's only feature row is after its label time: null, not leaked.
    let x = v.profile.columns.iter().find(|c| c.name == "x").expect("x");
    assert_eq!((x.count, x.nulls), (1, 1));
}

// ---- the default model ------------------------------------------------------------------------

#[test]
fn the_iris_pipeline_reproduces_the_default_repository_model() {
    let ws = Workspace::new();
    let store = FeatureStore::open_or_create(ws.path("store")).expect("store");
    store
        .ingest(&ws.path("iris.csv"), &IngestOptions::new("iris"))
        .expect("ingest");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let options = RunOptions {
        store: Some(ws.path("store").display().to_string()),
        runs: Some(ws.path("runs")),
        repository: Some(ws.path("repo").display().to_string()),
        quiet: true,
        ..RunOptions::default()
    };
    let run =
        run_pipeline_file(&manifest.join("examples/iris.toml"), &options).expect("iris pipeline");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    let published = ws.path("repo/iris_classifier/1");
    assert!(published.join(REFERENCE_FILE).is_file() && published.join(LINEAGE_FILE).is_file());

    // Same data, split, architecture, hyperparameters and seed as the checked-in model.
    let checked_in = manifest.join("../model-repo/iris_classifier");
    let strip_comments = |t: String| {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_comments(
            std::fs::read_to_string(ws.path("repo/iris_classifier/config.pbtxt")).expect("ours")
        ),
        strip_comments(
            std::fs::read_to_string(checked_in.join("config.pbtxt")).expect("checked in")
        ),
    );
    assert_eq!(
        std::fs::read(ws.path("repo/iris_classifier/labels.txt")).expect("ours"),
        std::fs::read(checked_in.join("labels.txt")).expect("checked in")
    );
    let ours = candle_core::safetensors::load(
        published.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("ours");
    let theirs = candle_core::safetensors::load(
        checked_in.join("1/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("theirs");
    let mut names: Vec<&String> = ours.keys().collect();
    names.sort();
    assert_eq!(names.len(), theirs.len());
    // The README promises bit-identical weights on this machine (x86-64, the toolchain and
    // crate versions of Cargo.lock); other CPUs' SIMD kernels may differ in the last bits.
    for name in names {
        let a = ours[name]
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("a");
        let b = theirs[name]
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("b");
        assert_eq!(a, b, "{name} differs from the checked-in model");
    }

    // The README's figures: test accuracy 0.9667 (29 of 30), validation 0.9333, train 1.0000.
    let lineage: Lineage =
        serde_json::from_slice(&std::fs::read(published.join(LINEAGE_FILE)).expect("lineage"))
            .expect("json");
    let metric = |key: &str| lineage.training_metrics[key];
    assert_eq!(metric("test_rows"), 30.0);
    assert!((metric("test_accuracy") - 29.0 / 30.0).abs() < 1e-6);
    assert!((metric("validation_accuracy") - 28.0 / 30.0).abs() < 1e-6);
    assert_eq!(metric("train_accuracy"), 1.0);
}

/// `y = 40 x1 - 25 x2 + 12 x1 x3 + 300` plus small noise: a linear model misses the interaction,
/// an MLP finds it.
fn write_regression_csv(path: &Path) {
    let mut rng = nereid_pipeline::train::SplitMix64::new(17);
    let mut text = String::from("x1,x2,x3,y\n");
    for _ in 0..400 {
        let mut u = || rng.next_f32() * 4.0 - 2.0;
        let (x1, x2, x3, noise) = (u(), u(), u(), u());
        let y = 40.0 * x1 - 25.0 * x2 + 12.0 * x1 * x3 + 300.0 + noise;
        text.push_str(&format!("{x1},{x2},{x3},{y}\n"));
    }
    std::fs::write(path, text).expect("write csv");
}

#[test]
fn a_regression_pipeline_gates_on_rmse_and_publishes_a_servable_model() {
    let ws = Workspace::new();
    write_regression_csv(&ws.path("reg.csv"));
    let pipeline = |name: &str, train: &str, gate: &str| {
        let text = format!(
            r#"name = "{name}"
model = "price"
store = {store:?}
runs = {runs:?}
repository = {repo:?}

[[step]]
name = "ingest"
kind = "ingest"
source = {source:?}
dataset = "reg"

[[step]]
name = "train"
kind = "train"
needs = ["ingest"]
task = "regression"
features = ["x1", "x2", "x3"]
label = "y"
seed = 5
{train}

[[step]]
name = "evaluate"
kind = "evaluate"
needs = ["train"]

[[step]]
name = "gate"
kind = "gate"
needs = ["evaluate"]
{gate}

[[step]]
name = "publish"
kind = "publish"
needs = ["gate"]
"#,
            store = ws.path("store"),
            runs = ws.path("runs"),
            repo = ws.path("repo"),
            source = ws.path("reg.csv"),
        );
        let path = ws.path(&format!("{name}.toml"));
        std::fs::write(&path, text).expect("write pipeline");
        path
    };
    let gate_of = |run: &nereid_pipeline::runner::PipelineRun| match run
        .step("gate")
        .and_then(|s| s.output.clone())
    {
        Some(StepOutput::Gate(g)) => g,
        other => panic!("{other:?}"),
    };
    let linear = "epochs = 300\nlearning_rate = 0.05";
    let mlp = "hidden = [32, 32]\nepochs = 400\nlearning_rate = 0.01\nbatch_size = 64";

    // 1. Linear regression first: published as version 1 (nothing to compare with).
    let run = run_pipeline_file(&pipeline("linear", linear, ""), &quiet()).expect("linear");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    assert_eq!(model_versions(&ws.path("repo"), "price").expect("v"), [1]);
    assert_eq!(gate_of(&run).metric, "rmse");
    match run.step("train").and_then(|s| s.output.clone()) {
        Some(StepOutput::Model { metrics, .. }) => {
            for key in ["test_rmse", "test_mae", "test_r2", "test_loss"] {
                assert!(metrics.contains_key(key), "{key} in {metrics:?}");
            }
            assert!(!metrics.contains_key("test_accuracy"));
        }
        other => panic!("{other:?}"),
    }

    // 2. The MLP beats it on RMSE over the same test rows: version 2.
    let run = run_pipeline_file(&pipeline("mlp", mlp, ""), &quiet()).expect("mlp");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    let gate = gate_of(&run);
    assert!(gate.passed, "{gate:?}");
    assert_eq!(gate.baseline_version, Some(1));
    assert!(
        gate.candidate < gate.baseline.expect("baseline") / 2.0,
        "{gate:?}"
    );
    assert_eq!(
        model_versions(&ws.path("repo"), "price").expect("v"),
        [1, 2]
    );

    // The published config: FP32 [3] in, FP32 [1] `PREDICTION` out, no labels file.
    let pbtxt = std::fs::read_to_string(ws.path("repo/price/config.pbtxt")).expect("config");
    let config =
        nereid_protocol::config::parse_pbtxt(&pbtxt, "config.pbtxt").expect("parse config");
    assert_eq!(config.output[0].name, "PREDICTION");
    assert_eq!(config.output[0].dims, [1]);
    assert!(config.output[0].label_filename.is_empty());
    assert!(!ws.path("repo/price/labels.txt").exists());
    let lineage: Lineage = serde_json::from_slice(
        &std::fs::read(ws.path("repo/price/2").join(LINEAGE_FILE)).expect("lineage"),
    )
    .expect("json");
    assert_eq!(lineage.task, nereid_pipeline::Task::Regression);
    assert!(lineage.classes.is_empty());

    // It loads as the server loads it and predicts in the target's units.
    let spec = ArchitectureSpec::from_parameters(|k| {
        config.parameters.get(k).map(|p| p.string_value.clone())
    })
    .expect("spec");
    let model = DenseModel::load(
        &ws.path("repo/price/2/model.safetensors"),
        spec,
        &candle_core::Device::Cpu,
    )
    .expect("load");
    let x =
        candle_core::Tensor::from_slice(&[1.0f32, -1.0, 1.0], (1, 3), &candle_core::Device::Cpu)
            .expect("x");
    let y = model
        .forward(&x)
        .expect("forward")
        .to_vec2::<f32>()
        .expect("y");
    let expected = 40.0 + 25.0 + 12.0 + 300.0;
    assert!((y[0][0] - expected).abs() < 10.0, "{y:?} vs {expected}");

    // 3. Linear again (another seed) loses to the MLP: not published.
    let run = run_pipeline_file(
        &pipeline(
            "linear_again",
            &format!("{linear}\nvalidation_fraction = 0.25"),
            "",
        ),
        &quiet(),
    )
    .expect("linear again");
    assert_eq!(run.status, PipelineStatus::Succeeded);
    assert!(!gate_of(&run).passed);
    assert_eq!(
        model_versions(&ws.path("repo"), "price").expect("v"),
        [1, 2]
    );

    // 4. A classification metric on a regression model is a clear configuration error.
    let run = run_pipeline_file(
        &pipeline("bad_metric", linear, "metric = \"accuracy\""),
        &quiet(),
    )
    .expect("run");
    assert_eq!(run.status, PipelineStatus::Failed);
    let error = run
        .step("gate")
        .and_then(|s| s.error.clone())
        .unwrap_or_default();
    assert!(
        error.contains(
            "gate metric `accuracy` does not apply to a regression model: use loss, rmse, mae, r2"
        ),
        "{error}"
    );
}
