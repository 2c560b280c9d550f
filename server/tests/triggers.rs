//! Retraining triggers through the real server: drift and live accuracy firing webhooks once per
//! episode, manual firings, the record across a restart, new data starting a pipeline run in a
//! child process, Airflow and failing receivers, and the `nereid triggers` commands.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use common::{iris, iris_with, nereid, send_rows, Picker, TestServer, EVERY_REQUEST, MODEL_REPO};
use nereid_pipeline::triggers::TriggerSettings;
use nereid_server::ServeConfig;
use serde_json::{json, Value};

const NEREID: &str = env!("CARGO_BIN_EXE_nereid");

/// One request a receiver saw.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// A local HTTP server that records every request and answers `status` with
    /// `{"dag_run_id": <the request's dag_run_id>}`.
    async fn start(status: u16) -> Receiver {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let state = (Arc::clone(&seen), status);
        let app = axum::Router::new()
            .fallback(
                |State((seen, status)): State<(Arc<Mutex<Vec<Received>>>, u16)>,
                 request: Request| async move {
                    let (parts, body) = request.into_parts();
                    let bytes = axum::body::to_bytes(body, 1 << 20)
                        .await
                        .unwrap_or_default();
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let reply = json!({"dag_run_id": body["dag_run_id"]});
                    seen.lock().expect("lock").push(Received {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_string())
                            })
                            .collect(),
                        body,
                    });
                    let status = axum::http::StatusCode::from_u16(status).expect("status");
                    (status, Body::from(reply.to_string())).into_response()
                },
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, seen }
    }

    fn requests(&self) -> Vec<Received> {
        self.seen.lock().expect("lock").clone()
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

/// Polls `check` until it returns `Some`, for at most 60 s.
async fn wait_for<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    common::wait_for(what, Duration::from_secs(60), check).await
}

fn settings(dir: &Path) -> TriggerSettings {
    let mut s = TriggerSettings::new(
        dir.join("triggers.toml"),
        dir.join("record"),
        PathBuf::from(NEREID),
    );
    s.poll = Duration::from_millis(50);
    s.dataset_poll = Duration::from_millis(100);
    s
}

fn firings_of<'a>(status: &'a Value, trigger: &str) -> Vec<&'a Value> {
    status["firings"]
        .as_array()
        .expect("firings")
        .iter()
        .filter(|f| f["trigger"] == trigger)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_and_live_accuracy_fire_once_per_episode_and_firings_survive_a_restart() {
    let hook = Receiver::start(200).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("triggers.toml"),
        format!(
            r#"
[[trigger]]
id = "iris-drift"
on = "drift"
model = "iris_classifier"
windows = 2
features = ["petal_length"]
cooldown = "1h"
action = {{ kind = "webhook", url = "http://{hook}/hooks/retrain" }}

[[trigger]]
id = "iris-accuracy"
on = "metric"
model = "iris_classifier"
metric = "accuracy"
below = 0.9
min_labels = 40
action = {{ kind = "webhook", url = "http://{hook}/hooks/accuracy" }}
"#,
            hook = hook.addr
        ),
    )
    .expect("triggers file");
    let repo = iris_with(EVERY_REQUEST);
    let logs = tempfile::tempdir().expect("logs");
    let mut config = ServeConfig::for_tests(repo.path());
    config.monitoring.log_dir = Some(logs.path().to_path_buf());
    config.triggers = Some(settings(dir.path()));
    let server = TestServer::start_with(config.clone(), None).await;

    let status = server.get("/v2/triggers").await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["triggers"].as_array().map(Vec::len), Some(2));
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(r#"nereid_trigger_fired_total{reason="drift",trigger="iris-drift"} 0"#),
        "{metrics}"
    );

    // One window of Fisher's data, then three with petal length 1.5 cm longer: drift on it in
    // windows 2, 3 and 4 is one episode, which fires once, at window 3.
    let mut picker = Picker(7);
    send_rows(&server, 1000, &mut picker, None).await;
    send_rows(&server, 3000, &mut picker, Some((2, 1.5))).await;
    wait_for("the trigger to see window 4", async || {
        let doc = server.get("/v2/triggers/iris-drift").await.json();
        (doc["trigger"]["last_window"] == 4).then_some(())
    })
    .await;
    let posts = wait_for("the drift webhook", async || {
        let posts = hook.on("/hooks/retrain");
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    let post = &posts[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.headers["content-type"], "application/json");
    assert_eq!(post.headers["x-nereid-trigger"], "iris-drift");
    assert_eq!(post.body["trigger"], "iris-drift");
    assert_eq!(
        post.headers["idempotency-key"],
        post.body["firing"].as_str().expect("id")
    );
    let reason = &post.body["reason"];
    assert_eq!(reason["kind"], "drift");
    assert!(
        reason["summary"].as_str().is_some_and(
            |s| s.contains("in 2 consecutive windows (2..3)") && s.contains("petal_length")
        ),
        "{reason}"
    );
    let windows = reason["details"]["windows"].as_array().expect("windows");
    assert_eq!(windows.len(), 2);
    assert_eq!(windows[1]["window"], 3);
    assert!(post.body["data_window_ms"][0].as_u64() <= post.body["data_window_ms"][1].as_u64());
    let seen = wait_for("the webhook's outcome", async || {
        let doc = server.get("/v2/triggers/iris-drift").await.json();
        doc["firings"][0]["outcome"].is_object().then_some(doc)
    })
    .await;
    let drift_firings = firings_of(&seen, "iris-drift");
    assert_eq!(drift_firings.len(), 1, "{seen}");
    assert_eq!(drift_firings[0]["status"], "fired");
    assert_eq!(drift_firings[0]["outcome"]["succeeded"], true, "{seen}");
    assert_eq!(drift_firings[0]["outcome"]["detail"], "delivered");

    // Live accuracy: 45 labelled predictions, a third of them right.
    let data = iris();
    let rows: Vec<f32> = (0..45).flat_map(|i| data[(i % 3) * 50].0).collect();
    let reply = server
        .infer_json(
            "iris_classifier",
            &json!({"id": "labelled-1", "inputs": [{"name": "INPUT", "shape": [45, 4], "datatype": "FP32", "data": rows}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = server
        .post_json(
            "/v2/models/iris_classifier/feedback",
            &json!({"feedback": [{"id": "labelled-1", "truth": vec!["setosa"; 45]}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let posts = wait_for("the accuracy webhook", async || {
        let posts = hook.on("/hooks/accuracy");
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    let summary = posts[0].body["reason"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(
        summary.contains("live accuracy 0.3333 below 0.9 over 45 labelled predictions"),
        "{summary}"
    );

    // By hand: the cooldown does not apply; an unknown id is refused.
    let fired = server.post("/v2/triggers/iris-drift/fire", "").await;
    assert_eq!(fired.status, 200, "{}", fired.text());
    assert_eq!(fired.json()["status"], "fired");
    assert_eq!(fired.json()["reason"]["kind"], "manual");
    server
        .post("/v2/triggers/nosuch/fire", "")
        .await
        .assert_error(400, "unknown trigger 'nosuch'");
    wait_for("the manual webhook", async || {
        (hook.on("/hooks/retrain").len() == 2).then_some(())
    })
    .await;
    let metrics = server.metrics_text().await;
    for line in [
        r#"nereid_trigger_fired_total{reason="drift",trigger="iris-drift"} 1"#,
        r#"nereid_trigger_fired_total{reason="manual",trigger="iris-drift"} 1"#,
        r#"nereid_trigger_fired_total{reason="metric",trigger="iris-accuracy"} 1"#,
        r#"nereid_trigger_suppressed_total{trigger="iris-drift"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("nereid_trigger_last_fired_timestamp_seconds{trigger=\"iris-drift\"}"));
    wait_for("every outcome", async || {
        let doc = server.get("/v2/triggers").await.json();
        doc["firings"]
            .as_array()
            .is_some_and(|f| f.iter().all(|f| f["outcome"].is_object()))
            .then_some(())
    })
    .await;
    server.shutdown().await.expect("clean shutdown");

    // A restart keeps the firings, the counts and the cooldown.
    let server = TestServer::start_with(config, Some(repo)).await;
    // The live accuracy is still low after the restart (labels are replayed from the log): that
    // episode is recorded as suppressed by the cooldown, and nothing fires again.
    let doc = wait_for("the replayed accuracy to be seen", async || {
        let doc = server.get("/v2/triggers").await.json();
        (doc["firings"].as_array().map(Vec::len) == Some(4)).then_some(doc)
    })
    .await;
    let firings = doc["firings"].as_array().expect("firings");
    assert_eq!(
        firings.iter().filter(|f| f["status"] == "fired").count(),
        3,
        "{doc}"
    );
    let suppressed = &firings[0];
    assert_eq!(suppressed["trigger"], "iris-accuracy");
    assert_eq!(suppressed["status"], "suppressed");
    assert!(
        suppressed["suppressed_because"]
            .as_str()
            .is_some_and(|w| w.starts_with("cooldown: fired")),
        "{suppressed}"
    );
    assert!(doc["triggers"][0]["last_fired"].is_string(), "{doc}");
    let metrics = server.metrics_text().await;
    for line in [
        r#"nereid_trigger_fired_total{reason="drift",trigger="iris-drift"} 1"#,
        r#"nereid_trigger_suppressed_total{trigger="iris-accuracy"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(hook.requests().len(), 3, "nothing more was sent");
    server.shutdown().await.expect("clean shutdown");
}

/// Rows of Fisher's data as a CSV file.
fn write_iris_csv(path: &Path, rows: usize) {
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width\n");
    for (x, _) in iris().iter().take(rows) {
        csv.push_str(&format!("{},{},{},{}\n", x[0], x[1], x[2], x[3]));
    }
    std::fs::write(path, csv).expect("csv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_data_starts_a_pipeline_run_in_a_child_process_and_a_bad_file_keeps_the_old_triggers() {
    let dir = tempfile::tempdir().expect("dir");
    let store = dir.path().join("store");
    let fs = nereid_pipeline::store::FeatureStore::open_or_create(&store).expect("store");
    write_iris_csv(&dir.path().join("v1.csv"), 100);
    fs.ingest(
        &dir.path().join("v1.csv"),
        &nereid_pipeline::store::IngestOptions::new("iris"),
    )
    .expect("ingest");
    std::fs::write(
        dir.path().join("check.toml"),
        "name = \"check\"\nstore = \"store\"\n\n[[step]]\nname = \"data\"\nkind = \"dataset\"\ndataset = \"iris\"\n",
    )
    .expect("pipeline file");
    let triggers = "[[trigger]]\nid = \"fresh\"\non = \"new_data\"\ndataset = \"iris\"\nstore = \"store\"\naction = { kind = \"pipeline\", file = \"check.toml\" }\n";
    std::fs::write(dir.path().join("triggers.toml"), triggers).expect("triggers");
    let mut config = ServeConfig::for_tests(MODEL_REPO);
    config.triggers = Some(settings(dir.path()));
    let server = TestServer::start_with(config, None).await;

    // The version there at start is the baseline; a new one fires.
    write_iris_csv(&dir.path().join("v2.csv"), 120);
    fs.ingest(
        &dir.path().join("v2.csv"),
        &nereid_pipeline::store::IngestOptions::new("iris"),
    )
    .expect("ingest");
    let firing = wait_for("the pipeline run to finish", async || {
        let doc = server.get("/v2/triggers/fresh").await.json();
        doc["firings"]
            .as_array()
            .and_then(|f| f.first().cloned())
            .filter(|f| f["outcome"].is_object())
    })
    .await;
    assert_eq!(firing["reason"]["kind"], "new_data");
    assert!(
        firing["reason"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("iris@2")),
        "{firing}"
    );
    let outcome = &firing["outcome"];
    assert_eq!(outcome["succeeded"], true, "{firing}");
    let run_id = outcome["run_id"].as_str().expect("run id");
    let run = dir.path().join(format!("runs/pipeline/{run_id}.json"));
    assert!(run.is_file(), "{} exists", run.display());
    let log = outcome["log"].as_str().expect("log");
    assert!(Path::new(log).is_file());

    // A broken edit is refused and the triggers in force stay; a fixed one is taken.
    std::fs::write(
        dir.path().join("triggers.toml"),
        "[[trigger]]\nid = \"x\"\n",
    )
    .expect("write");
    let doc = wait_for("the refused file", async || {
        let doc = server.get("/v2/triggers").await.json();
        doc["file_error"].is_string().then_some(doc)
    })
    .await;
    assert!(
        doc["file_error"]
            .as_str()
            .is_some_and(|e| e.contains("missing field")),
        "{doc}"
    );
    assert_eq!(doc["triggers"][0]["id"], "fresh");
    std::fs::write(
        dir.path().join("triggers.toml"),
        triggers.replace("id = \"fresh\"", "id = \"renamed\""),
    )
    .expect("write");
    wait_for("the fixed file", async || {
        let doc = server.get("/v2/triggers").await.json();
        (doc["triggers"][0]["id"] == "renamed" && doc["file_error"].is_null()).then_some(())
    })
    .await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_and_failing_webhooks_from_the_binary_with_credentials_from_the_environment() {
    let airflow = Receiver::start(200).await;
    let broken = Receiver::start(503).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("triggers.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[trigger]]
id = "to-airflow"
on = "new_data"
dataset = "nothing-yet"
action = {{ kind = "airflow", url = "http://{airflow}", dag_id = "retrain_iris", username_env = "TEST_AIRFLOW_USER", password_env = "TEST_AIRFLOW_PASSWORD" }}

[[trigger]]
id = "flaky"
on = "new_data"
dataset = "nothing-yet"
action = {{ kind = "webhook", url = "http://{broken}/hook", token_env = "TEST_HOOK_TOKEN", retries = 2, retry_delay = "10ms" }}
"#,
            airflow = airflow.addr,
            broken = broken.addr
        ),
    )
    .expect("triggers");
    let (ok, out, err) = nereid(&["triggers", "check", &file.display().to_string()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 triggers") && out.contains("airflow DAG retrain_iris"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[trigger]]\nid = \"a\"\non = \"rain\"\naction = { kind = \"pipeline\", file = \"p.toml\" }\n",
    )
    .expect("bad");
    let (ok, _, err) = nereid(&[
        "triggers",
        "check",
        &dir.path().join("bad.toml").display().to_string(),
    ]);
    assert!(!ok && err.contains("unknown kind on = \"rain\""), "{err}");

    let record = dir.path().join("record");
    let args = [
        OsStr::new("--model-repository"),
        OsStr::new(MODEL_REPO),
        OsStr::new("--triggers"),
        file.as_os_str(),
        OsStr::new("--trigger-record-dir"),
        record.as_os_str(),
    ];
    let env = [
        ("TEST_AIRFLOW_USER", "nereid".to_string()),
        ("TEST_AIRFLOW_PASSWORD", "s3cret".to_string()),
        ("TEST_HOOK_TOKEN", "tok-123".to_string()),
    ];
    let served = common::ServedBinary::start(dir.path(), &args, &env).await;
    let http = served.http;
    let url = format!("http://127.0.0.1:{http}");

    let (ok, out, err) = nereid(&["triggers", "fire", "to-airflow", "--url", &url]);
    assert!(ok, "{err}");
    assert!(out.starts_with("fired to-airflow: firing "), "{out}");
    let firing_id = out["fired to-airflow: firing ".len()..]
        .split_whitespace()
        .next()
        .expect("id")
        .to_string();
    let posts = wait_for("the DAG run request", async || {
        let posts = airflow.requests();
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    let post = &posts[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/api/v2/dags/retrain_iris/dagRuns");
    // base64("nereid:s3cret")
    assert_eq!(post.headers["authorization"], "Basic bmVyZWlkOnMzY3JldA==");
    assert_eq!(post.body["dag_run_id"], format!("nereid-{firing_id}"));
    assert!(post.body["logical_date"].is_null());
    assert_eq!(post.body["conf"]["trigger"], "to-airflow");
    assert_eq!(post.body["conf"]["reason"]["kind"], "manual");

    let (ok, _, err) = nereid(&["triggers", "fire", "flaky", "--url", &url]);
    assert!(ok, "{err}");
    let shown = wait_for("the failed outcome", async || {
        let (ok, out, _) = nereid(&["triggers", "show", "flaky", "--url", &url, "--json"]);
        let doc: Value = serde_json::from_str(&out).ok()?;
        (ok && doc["firings"][0]["outcome"].is_object()).then_some(doc)
    })
    .await;
    let outcome = &shown["firings"][0]["outcome"];
    assert_eq!(outcome["succeeded"], false);
    assert_eq!(outcome["attempts"], 3);
    assert!(
        outcome["detail"]
            .as_str()
            .is_some_and(|d| d.contains("503") && d.contains("after 3 attempts")),
        "{outcome}"
    );
    let tries = broken.requests();
    assert_eq!(tries.len(), 3);
    assert!(tries
        .iter()
        .all(|t| t.headers["authorization"] == "Bearer tok-123"));

    wait_for("the DAG run's outcome", async || {
        let (_, out, _) = nereid(&["triggers", "show", "to-airflow", "--url", &url, "--json"]);
        let doc: Value = serde_json::from_str(&out).ok()?;
        (doc["firings"][0]["outcome"]["run_id"] == format!("nereid-{firing_id}").as_str())
            .then_some(())
    })
    .await;
    let (ok, out, err) = nereid(&["triggers", "list", "--url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("to-airflow") && out.contains("flaky"), "{out}");
    assert!(
        out.contains("failed") && out.contains("HTTP") || out.contains("503"),
        "{out}"
    );
    let (ok, _, err) = nereid(&["triggers", "show", "nosuch", "--url", &url]);
    assert!(!ok && err.contains("unknown trigger 'nosuch'"), "{err}");
}
