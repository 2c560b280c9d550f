//! Mirroring training runs to a real MLflow tracking server.
//!
//! The server comes from `pipeline/ci/mlflow-venv.sh`, which installs the pinned `mlflow` package
//! into `pipeline/.venv-mlflow` (about a minute the first time), and is started here with a
//! SQLite backend on a free loopback port, in its own process group so that its workers are
//! stopped with it. The only skip, printed as `SKIPPED: MLflow mirroring: <reason>`, is a machine
//! without Python 3.11+/pip to install it with, and it fails instead under CI (nereid-testkit);
//! any other installation failure fails the test.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nereid_pipeline::mlflow::{mirror_run, MlflowClient};
use nereid_pipeline::runner::{run_pipeline_file, PipelineStatus, RunOptions, StepOutput};
use nereid_pipeline::store::{FeatureStore, IngestOptions};
use nereid_pipeline::tracking::{RunStatus, Tracker};
use nereid_pipeline::training::{train_from_dataset, TrackingOptions, TrainSpec};

/// `Ok(path of the mlflow executable)` or `Err(reason to skip)`.
fn install() -> Result<PathBuf, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/mlflow-venv.sh");
    nereid_testkit::run_installer(&script)
        .map(PathBuf::from)
        .map_err(|reason| format!("no Python/pip to install MLflow: {reason}"))
}

/// A tracking server in its own process group, stopped on drop.
struct Server {
    child: Child,
    uri: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(mlflow: &Path) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        // MLflow needs a port number up front: take a free one from the kernel.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log");
        let child = Command::new(mlflow)
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                dir.path().join("mlflow.db").display()
            ))
            .arg("--default-artifact-root")
            .arg(dir.path().join("artifacts"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start mlflow server");
        let mut server = Server {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&mut self) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mlflow server exited ({status}):\n{}", self.log_text());
            }
            if client
                .get(format!("{}/health", self.uri))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "mlflow server not healthy after 180 s:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole group: the server process and the workers it forked.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn iris_store(dir: &Path) -> FeatureStore {
    let data = linfa_datasets::iris();
    let species = ["setosa", "versicolor", "virginica"];
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width,species\n");
    for (row, &t) in data.records.outer_iter().zip(data.targets.iter()) {
        let v: Vec<String> = row.iter().map(|x| x.to_string()).collect();
        csv.push_str(&format!("{},{}\n", v.join(","), species[t]));
    }
    std::fs::write(dir.join("iris.csv"), csv).expect("csv");
    let store = FeatureStore::open_or_create(dir.join("store")).expect("store");
    store
        .ingest(&dir.join("iris.csv"), &IngestOptions::new("iris"))
        .expect("ingest");
    store
}

fn get_json(uri: &str, path: &str) -> serde_json::Value {
    let text = reqwest::blocking::get(format!("{uri}{path}"))
        .and_then(|r| r.text())
        .expect("GET");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

#[test]
fn runs_are_mirrored_to_a_real_mlflow_server() {
    let mlflow = match install() {
        Ok(path) => path,
        Err(reason) => {
            nereid_testkit::skip(&nereid_testkit::MLFLOW, reason);
            return;
        }
    };
    let server = Server::start(&mlflow);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = iris_store(tmp.path());
    let tracking = TrackingOptions {
        tracker: Tracker::new(tmp.path().join("runs")),
        experiment: "nereid-test".into(),
        mlflow_uri: Some(server.uri.clone()),
        code_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        tags: [("team".to_string(), "lifecycle".to_string())].into(),
        progress: false,
    };
    let mut spec = TrainSpec::new(
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
            .map(String::from)
            .to_vec(),
        "species",
    );
    spec.hidden = vec![4];
    spec.epochs = 25;
    spec.patience = None;
    spec.seed = 11;

    let outcome = train_from_dataset(&store, "iris", &spec, &tracking).expect("train");
    let record = &outcome.record;
    let mirror = record.mlflow.clone().expect("mirrored");
    assert_eq!(mirror.error, None);
    let run_id = mirror.run_id.clone().expect("mlflow run id");
    // The local record says where it went, durably.
    let stored = Tracker::new(tmp.path().join("runs"))
        .get(&record.id)
        .expect("record");
    assert_eq!(
        stored.mlflow.as_ref().and_then(|m| m.run_id.clone()),
        Some(run_id.clone())
    );

    let client = MlflowClient::new(&server.uri).expect("client");
    let run = client.get_run(&run_id).expect("get run");
    let info = &run["run"]["info"];
    assert_eq!(info["status"], "FINISHED", "{run}");
    assert_eq!(
        info["experiment_id"].as_str(),
        mirror.experiment_id.as_deref()
    );
    assert_eq!(info["run_name"], record.id.as_str());
    assert!(
        info["end_time"].as_i64().unwrap_or(0) >= info["start_time"].as_i64().unwrap_or(i64::MAX)
    );
    let data = &run["run"]["data"];
    let kv = |list: &serde_json::Value, key: &str| -> Option<serde_json::Value> {
        list.as_array()?
            .iter()
            .find(|e| e["key"] == key)
            .map(|e| e["value"].clone())
    };
    assert_eq!(kv(&data["params"], "hidden"), Some("[4]".into()));
    assert_eq!(kv(&data["params"], "seed"), Some("11".into()));
    assert_eq!(kv(&data["params"], "label"), Some("species".into()));
    let accuracy = kv(&data["metrics"], "test_accuracy")
        .and_then(|v| v.as_f64())
        .expect("test_accuracy");
    assert!((accuracy - record.metrics["test_accuracy"]).abs() < 1e-9);
    assert_eq!(
        kv(&data["tags"], "nereid.dataset_version"),
        record.dataset_version.clone().map(Into::into)
    );
    assert_eq!(
        kv(&data["tags"], "nereid.run_id"),
        Some(record.id.clone().into())
    );
    assert_eq!(kv(&data["tags"], "team"), Some("lifecycle".into()));
    if let Some(commit) = &record.code.commit {
        assert_eq!(
            kv(&data["tags"], "mlflow.source.git.commit"),
            Some(commit.clone().into())
        );
    }
    assert!(kv(&data["tags"], "nereid.artifact.model.safetensors").is_some());
    // Per-epoch metrics: one point per epoch, steps 1..=25.
    let history = get_json(
        &server.uri,
        &format!("/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=epoch_train_loss"),
    );
    let steps: Vec<i64> = history["metrics"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|m| m["step"].as_i64())
        .collect();
    assert_eq!(steps, (1..=25).collect::<Vec<_>>());

    // A failed run is mirrored as FAILED, into the same experiment.
    let mut bad = spec.clone();
    bad.features.push("nope".into());
    let err = train_from_dataset(&store, "iris", &bad, &tracking).expect_err("missing column");
    assert!(err.to_string().contains("nope"), "{err}");
    let failed = Tracker::new(tmp.path().join("runs"))
        .list()
        .expect("runs")
        .into_iter()
        .find(|r| r.status == RunStatus::Failed)
        .expect("failed run");
    let failed_mirror = failed.mlflow.expect("mirrored");
    assert_eq!(failed_mirror.experiment_id, mirror.experiment_id);
    let run = client
        .get_run(&failed_mirror.run_id.expect("id"))
        .expect("get failed run");
    assert_eq!(run["run"]["info"]["status"], "FAILED");

    // Called the way the `nereid` binary calls the pipeline: on a blocking thread of a runtime.
    let uri = server.uri.clone();
    let record = outcome.record.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mirrored = rt
        .block_on(
            async move { tokio::task::spawn_blocking(move || mirror_run(&uri, &record)).await },
        )
        .expect("join")
        .expect("mirror from spawn_blocking");
    assert_eq!(Some(mirrored.experiment_id), mirror.experiment_id);

    // A pipeline's training step mirrors too (experiment = the pipeline's name).
    let file = tmp.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"mirrored\"\nstore = {:?}\nruns = {:?}\n[[step]]\nname = \"data\"\nkind = \"dataset\"\ndataset = \"iris\"\n[[step]]\nname = \"train\"\nkind = \"train\"\nneeds = [\"data\"]\nfeatures = [\"petal_length\", \"petal_width\"]\nlabel = \"species\"\nepochs = 5\n",
            tmp.path().join("store"),
            tmp.path().join("runs")
        ),
    )
    .expect("pipeline");
    let options = RunOptions {
        mlflow_uri: Some(server.uri.clone()),
        quiet: true,
        ..RunOptions::default()
    };
    let run = run_pipeline_file(&file, &options).expect("pipeline");
    assert_eq!(run.status, PipelineStatus::Succeeded, "{run:#?}");
    let Some(StepOutput::Model { run_id, .. }) = run.step("train").and_then(|s| s.output.clone())
    else {
        panic!("no model output");
    };
    let tracked = Tracker::new(tmp.path().join("runs"))
        .get(&run_id)
        .expect("record");
    let mlflow_run = client
        .get_run(&tracked.mlflow.and_then(|m| m.run_id).expect("mirrored"))
        .expect("get");
    let experiment = get_json(
        &server.uri,
        &format!(
            "/api/2.0/mlflow/experiments/get?experiment_id={}",
            mlflow_run["run"]["info"]["experiment_id"]
                .as_str()
                .expect("id")
        ),
    );
    assert_eq!(experiment["experiment"]["name"], "mirrored");

    // An unreachable server does not fail training; the record says why it was not mirrored.
    let mut unreachable = tracking.clone();
    unreachable.mlflow_uri = Some("http://127.0.0.1:9".into());
    let outcome = train_from_dataset(&store, "iris", &spec, &unreachable).expect("train anyway");
    let m = outcome.record.mlflow.expect("attempted");
    assert!(m.run_id.is_none() && m.error.is_some());
    drop(server);
}
