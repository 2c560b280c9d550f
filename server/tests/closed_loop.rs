//! The closed loop through the real server and the real `nereid` binary: the default classifier
//! serves traffic whose petal length drifts, with ground truth fed back; a drift trigger starts
//! a pipeline run in a child process, which trains on the labelled production data, passes the
//! gate and publishes version 2; the server loads it (hot swap) and the drift clears on it. No
//! request fails on the way.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{copy_dir, iris, iris_with, wait_for, Picker, TestServer, EVERY_REQUEST};
use nereid_pipeline::triggers::TriggerSettings;
use nereid_server::{ControlMode, ServeConfig};
use serde_json::{json, Value};

/// Batches of 50 Fisher rows with petal length 1.5 cm longer, each followed by its labels,
/// until `stop`; counts requests and failures.
async fn traffic(
    server: Arc<TestServer>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let data = iris();
    let mut picker = Picker(11);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let rows: Vec<usize> = (0..50).map(|_| picker.next(data.len())).collect();
        let values: Vec<f32> = rows
            .iter()
            .flat_map(|&r| {
                let mut x = data[r].0;
                x[2] += 1.5;
                x
            })
            .collect();
        let id = format!("loop-{i}");
        let body = json!({"id": id, "inputs": [{"name": "INPUT", "shape": [50, 4], "datatype": "FP32", "data": values}]});
        let reply = server.infer_json("iris_classifier", &body).await;
        sent.fetch_add(1, Ordering::Relaxed);
        if reply.status != 200 {
            failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("request {id} failed: {} {}", reply.status, reply.text());
            continue;
        }
        let version = reply.json()["model_version"]
            .as_str()
            .unwrap_or("1")
            .to_string();
        let truth: Vec<&str> = rows.iter().map(|&r| data[r].1).collect();
        // Labels go to the version that answered (it may be swapped out in between, which
        // loses those labels, not requests).
        let _ = server
            .post_json(
                &format!("/v2/models/iris_classifier/versions/{version}/feedback"),
                &json!({"feedback": [{"id": id, "truth": truth}]}),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrains_publishes_and_hot_swaps_without_a_failed_request() {
    // The demo's own trigger and pipeline files (examples/closed-loop), in a folder laid out as
    // they expect: repo/, store/, prediction-log/.
    let dir = tempfile::tempdir().expect("dir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/closed-loop");
    for file in ["triggers.toml", "retrain.toml"] {
        std::fs::copy(format!("{example}/{file}"), dir.path().join(file)).expect("copy");
    }
    let repo_path = dir.path().join("repo");
    let served = iris_with(EVERY_REQUEST);
    copy_dir(&served.path(), &repo_path);
    let logs = dir.path().join("prediction-log");

    // The training data of version 1, in the feature store.
    let store = nereid_pipeline::store::FeatureStore::open_or_create(dir.path().join("store"))
        .expect("store");
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width,species\n");
    for (x, species) in iris() {
        csv.push_str(&format!("{},{},{},{},{species}\n", x[0], x[1], x[2], x[3]));
    }
    std::fs::write(dir.path().join("iris.csv"), csv).expect("csv");
    store
        .ingest(
            &dir.path().join("iris.csv"),
            &nereid_pipeline::store::IngestOptions::new("iris"),
        )
        .expect("ingest");

    let mut config = ServeConfig::for_tests(&repo_path);
    config.model_control_mode = ControlMode::Explicit;
    config.load_models = vec!["*".into()];
    config.monitoring.log_dir = Some(logs.clone());
    let mut settings = TriggerSettings::new(
        dir.path().join("triggers.toml"),
        dir.path().join("record"),
        PathBuf::from(env!("CARGO_BIN_EXE_nereid")),
    );
    settings.poll = Duration::from_millis(100);
    config.triggers = Some(settings);
    let server = Arc::new(TestServer::start_with(config, None).await);
    // The pipeline file is read when the trigger runs it: its publish step (the last) can now
    // name the server.
    let mut pipeline = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("retrain.toml"))
        .expect("pipeline file");
    writeln!(pipeline, "server_url = \"http://{}\"", server.http).expect("append");
    drop(pipeline);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn(traffic(
        Arc::clone(&server),
        Arc::clone(&stop),
        Arc::clone(&sent),
        Arc::clone(&failed),
    ));

    // Drift on version 1 fires the trigger once; its pipeline run publishes version 2, which
    // the server loads.
    let firing = wait_for("the trigger to fire", Duration::from_secs(60), async || {
        let doc = server.get("/v2/triggers/petal-drift").await.json();
        doc["firings"].as_array()?.first().cloned()
    })
    .await;
    let fired_after = started.elapsed();
    assert_eq!(firing["status"], "fired", "{firing}");
    assert_eq!(firing["reason"]["details"]["version"], 1);
    assert!(
        firing["reason"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("drift on petal_length in 3 consecutive windows (1..3)")),
        "{firing}"
    );
    wait_for("version 2 to serve", Duration::from_secs(240), async || {
        (server
            .get("/v2/models/iris_classifier/versions/2/ready")
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
    let serving_after = started.elapsed();
    let outcome = wait_for("the run's outcome", Duration::from_secs(60), async || {
        let doc = server.get("/v2/triggers/petal-drift").await.json();
        let outcome = doc["firings"][0]["outcome"].clone();
        outcome.is_object().then_some(outcome)
    })
    .await;
    assert_eq!(outcome["succeeded"], true, "{outcome}");
    let run_id = outcome["run_id"].as_str().expect("run id").to_string();

    // Version 2 sees the same shifted traffic as its own data: no drift on petal length.
    let report = wait_for(
        "a window of version 2",
        Duration::from_secs(60),
        async || {
            let doc = server
                .get("/v2/models/iris_classifier/versions/2/drift")
                .await
                .json();
            (doc["windows"].as_u64() >= Some(1)).then_some(doc)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("traffic");
    let petal = report["latest"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .find(|c| c["name"] == "petal_length")
        .cloned()
        .expect("petal_length");
    assert_eq!(petal["test"]["drift"], false, "{petal}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    let total = sent.load(Ordering::Relaxed);
    println!(
        "closed loop: trigger fired {:.1} s and version 2 served {:.1} s after the shifted traffic started; {total} requests, 0 failed",
        fired_after.as_secs_f64(),
        serving_after.as_secs_f64()
    );

    // The trigger fired once; the run is recorded with its steps, and the new version's lineage
    // leads to the run and to the production data it trained on.
    let doc = server.get("/v2/triggers/petal-drift").await.json();
    let fired: Vec<&Value> = doc["firings"]
        .as_array()
        .expect("firings")
        .iter()
        .filter(|f| f["status"] == "fired")
        .collect();
    assert_eq!(fired.len(), 1, "{doc}");
    let run: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("runs/pipeline/{run_id}.json"))).expect("run"),
    )
    .expect("run json");
    assert_eq!(run["status"], "succeeded", "{run}");
    let lineage: Value = serde_json::from_slice(
        &std::fs::read(repo_path.join("iris_classifier/2/lineage.json")).expect("lineage"),
    )
    .expect("lineage json");
    assert_eq!(lineage["pipeline_run"], run_id.as_str());
    let trained_on = store
        .get(lineage["dataset_version"].as_str().expect("dataset"))
        .expect("dataset version");
    assert_eq!(trained_on.name, "iris_classifier-retraining");
    let production = store.get(&trained_on.parents[1]).expect("production data");
    assert_eq!(production.name, "iris_classifier-production");
    // A request's lineage: the one before the swap leads to version 1 (no run recorded for
    // the checked-in model); one after it to version 2, its run, the firing and the data.
    let before = server.get("/v2/lineage/loop-1").await;
    assert_eq!(before.status, 200, "{}", before.text());
    assert_eq!(before.json()["request"]["version"], "1");
    let last = format!("loop-{}", sent.load(Ordering::Relaxed));
    let after = server.get(&format!("/v2/lineage/{last}")).await;
    assert_eq!(after.status, 200, "{}", after.text());
    let chain = after.json();
    assert_eq!(chain["request"]["version"], "2", "{chain}");
    assert_eq!(chain["pipeline_run"]["id"], run_id.as_str(), "{chain}");
    assert_eq!(chain["pipeline_run"]["status"], "succeeded");
    assert_eq!(chain["trigger_firing"]["trigger"], "petal-drift", "{chain}");
    assert_eq!(chain["trigger_firing"]["id"], firing["id"]);
    let names: Vec<&str> = chain["datasets"]
        .as_array()
        .expect("datasets")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "iris_classifier-retraining",
            "iris",
            "iris_classifier-production"
        ],
        "{chain}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args([
            "lineage",
            &last,
            "--url",
            &format!("http://{}", server.http),
        ])
        .output()
        .expect("nereid lineage");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", before.text());
    println!("{text}");
    assert!(
        text.contains(&format!("<- pipeline run {run_id} (retrain, succeeded)")),
        "{text}"
    );
    assert!(text.contains("<- trigger petal-drift firing"), "{text}");
    assert!(
        text.contains("<- dataset iris_classifier-production"),
        "{text}"
    );
    server
        .get("/v2/lineage/nosuch")
        .await
        .assert_error_contains(400, "request 'nosuch' is not in the prediction log");

    // The serving configuration survived the publish.
    let config =
        std::fs::read_to_string(repo_path.join("iris_classifier/config.pbtxt")).expect("config");
    assert!(config.contains("nereid.monitor.sample_rate"), "{config}");

    Arc::into_inner(server)
        .expect("sole owner")
        .shutdown()
        .await
        .expect("clean shutdown");
}
