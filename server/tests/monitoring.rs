//! Drift monitors, feedback and the prediction log through the real server: the default Iris
//! classifier with its reference (the training data's profile), traffic drawn from Fisher's
//! data, then the same traffic with one feature shifted.

mod common;

use std::time::{Duration, Instant};

use common::{iris, iris_with, send_rows, Picker, Repo, TestServer, EVERY_REQUEST};
use nereid_server::ServeConfig;
use serde_json::{json, Value};

/// Polls the drift report until `windows` windows have closed (the monitor thread works off
/// the request path, so a window closes shortly after its last request is answered).
async fn drift_after(server: &TestServer, path: &str, windows: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let doc = reply.json();
        if doc["windows"].as_u64() >= Some(windows) {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "no window {windows} in 30 s: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn column<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["columns"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no column {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_feature_shows_as_drift_in_json_metrics_and_page() {
    let server = TestServer::start_repo(iris_with(EVERY_REQUEST)).await;
    let mut picker = Picker(0x1215);

    // Window 1: rows drawn from the training data itself.
    send_rows(&server, 1000, &mut picker, None).await;
    let doc = drift_after(&server, "/v2/models/iris_classifier/drift", 1).await;
    let report = &doc["latest"];
    assert_eq!(report["window"]["index"], 1);
    assert_eq!(report["window"]["rows"], 1000);
    assert_eq!(report["dataset_drift"]["drift"], false, "{report}");
    assert_eq!(report["dataset_drift"]["drifted"], 0, "{report}");
    assert_eq!(report["prediction_drift"], false, "{report}");
    for name in ["sepal_length", "sepal_width", "petal_length", "petal_width"] {
        let c = column(report, name);
        // Evidently's choice for a 150-row numeric reference: KS at p <= 0.05.
        assert_eq!(c["test"]["method"], "ks", "{c}");
        assert_eq!(c["test"]["threshold"], 0.05);
        assert_eq!(c["quality"]["out_of_range"]["count"], 0, "{c}");
    }
    assert_eq!(
        column(report, "PROBABILITIES")["test"]["method"],
        "chisquare"
    );
    assert_eq!(column(report, "PROBABILITIES")["role"], "prediction");

    // Window 2: petal length 1.5 cm longer (about 0.85 standard deviations).
    send_rows(&server, 1000, &mut picker, Some((2, 1.5))).await;
    let doc = drift_after(&server, "/v2/models/iris_classifier/drift", 2).await;
    let report = &doc["latest"];
    assert_eq!(report["window"]["index"], 2);
    let petal = column(report, "petal_length");
    assert_eq!(petal["test"]["drift"], true, "{petal}");
    assert!(
        petal["test"]["score"].as_f64().expect("score") < 1e-6,
        "{petal}"
    );
    assert_eq!(petal["quality"]["out_of_range"]["failed"], true, "{petal}");
    for name in ["sepal_length", "sepal_width", "petal_width"] {
        assert_eq!(column(report, name)["test"]["drift"], false, "{name}");
    }
    assert_eq!(report["prediction_drift"], true, "{report}");
    // One feature of four does not make dataset drift (Evidently's drift_share 0.5).
    assert_eq!(report["dataset_drift"]["drifted"], 1);
    assert_eq!(report["dataset_drift"]["drift"], false);
    assert_eq!(doc["samples"], 40);
    assert_eq!(doc["dropped"], 0);
    assert_eq!(doc["history"].as_array().map(Vec::len), Some(2));

    // The same verdicts in /metrics.
    let metrics = server.metrics_text().await;
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .to_string()
    };
    assert!(line(
        "nereid_drift_detected{feature=\"petal_length\",model=\"iris_classifier\",version=\"1\"}"
    )
    .ends_with(" 1"));
    assert!(line(
        "nereid_drift_detected{feature=\"sepal_width\",model=\"iris_classifier\",version=\"1\"}"
    )
    .ends_with(" 0"));
    assert!(line(
        "nereid_drift_detected{feature=\"PROBABILITIES\",model=\"iris_classifier\",version=\"1\"}"
    )
    .ends_with(" 1"));
    let score: f64 = line("nereid_drift_score{feature=\"petal_length\",method=\"ks\",model=\"iris_classifier\",version=\"1\"}")
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(score < 1e-6, "{score}");
    assert!(line("nereid_dataset_drift{model=\"iris_classifier\",version=\"1\"}").ends_with(" 0"));
    assert!(
        line("nereid_monitor_samples_total{model=\"iris_classifier\",version=\"1\"}")
            .ends_with(" 40")
    );
    assert!(
        line("nereid_monitor_samples_dropped_total{model=\"iris_classifier\",version=\"1\"}")
            .ends_with(" 0")
    );
    assert!(
        line("nereid_data_quality_failed{check=\"out_of_range\",feature=\"petal_length\"")
            .ends_with(" 1")
    );

    // And on the page.
    let page = server.get("/v2/models/iris_classifier/drift.html").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type(), "text/html; charset=utf-8");
    let html = page.text();
    let section = html
        .split("<div class=\"column\" id=\"column-petal_length\">")
        .nth(1)
        .expect("petal_length section");
    let section = section
        .split("<div class=\"column\"")
        .next()
        .expect("section");
    assert!(
        section.contains("<span class=\"badge drift\">drift</span>"),
        "{section}"
    );
    assert!(section.contains("<svg class=\"bars\""), "{section}");
    assert!(html.contains("1 of 4 features drifted"), "{html}");
    server.shutdown().await.expect("clean shutdown");
}

async fn infer_row(server: &TestServer, id: Option<&str>, row: [f32; 4]) -> Value {
    let mut body =
        json!({"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": row}]});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let reply = server.infer_json("iris_classifier", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_joins_labels_and_bad_feedback_changes_nothing() {
    let server = TestServer::start_repo(iris_with(EVERY_REQUEST)).await;
    // Typical flowers (rows 1, 51 and 101 of Fisher's data) and a setosa-like one labelled
    // virginica below: three right, one wrong.
    let setosa = [5.1, 3.5, 1.4, 0.2];
    let versicolor = [7.0, 3.2, 4.7, 1.4];
    let virginica = [6.3, 3.3, 6.0, 2.5];
    assert_eq!(
        infer_row(&server, Some("r-setosa"), setosa).await["id"],
        "r-setosa"
    );
    infer_row(&server, Some("r-versicolor"), versicolor).await;
    infer_row(&server, Some("r-virginica"), virginica).await;
    // Without an id, the server assigns one and returns it.
    let assigned = infer_row(&server, None, setosa).await["id"]
        .as_str()
        .expect("an id is assigned")
        .to_string();
    assert_eq!(assigned.len(), 16, "{assigned}");

    let feedback = |items: Value| json!({"feedback": items});
    let path = "/v2/models/iris_classifier/feedback";
    // Refused batches, each with one good item: nothing is applied.
    for (body, needle) in [
        (
            feedback(
                json!([{"id": "r-setosa", "truth": "setosa"}, {"id": "nobody", "truth": "setosa"}]),
            ),
            "unknown request id 'nobody'",
        ),
        (
            feedback(
                json!([{"id": "r-setosa", "truth": "setosa"}, {"id": "r-versicolor", "truth": true}]),
            ),
            "class name or index",
        ),
        (
            feedback(
                json!([{"id": "r-setosa", "truth": "setosa"}, {"id": "r-virginica", "truth": "orchid"}]),
            ),
            "'orchid' is not a class",
        ),
        (
            feedback(
                json!([{"id": "r-setosa", "truth": "setosa"}, {"id": "r-setosa", "truth": "setosa"}]),
            ),
            "more than once",
        ),
        (
            feedback(json!([{"id": "r-setosa", "truth": [0, 1]}])),
            "1 rows, but 2 truths",
        ),
        (json!({"labels": []}), "failed to parse the feedback JSON"),
    ] {
        server
            .post_json(path, &body)
            .await
            .assert_error_contains(400, needle);
    }
    let doc = server.get("/v2/models/iris_classifier/drift").await.json();
    assert_eq!(doc["performance"]["total"]["labelled"], 0, "{doc}");

    let reply = server
        .post_json(
            path,
            &feedback(json!([
                {"id": "r-setosa", "truth": "setosa"},
                {"id": "r-versicolor", "truth": 1},
                {"id": "r-virginica", "truth": "virginica"},
                {"id": assigned, "truth": "virginica"}
            ])),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"accepted": 4, "rows": 4}));
    // Labels are never replaced.
    server
        .post_json(
            path,
            &feedback(json!([{"id": "r-setosa", "truth": "virginica"}])),
        )
        .await
        .assert_error_contains(400, "already has feedback");

    let total =
        &server.get("/v2/models/iris_classifier/drift").await.json()["performance"]["total"];
    assert_eq!(total["labelled"], 4);
    assert_eq!(total["accuracy"], 0.75);
    // setosa: predicted twice, right once -> precision 0.5, recall 1; virginica: recall 0.5.
    let class = |name: &str| {
        total["classes"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["class"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {total}"))
    };
    assert_eq!(class("setosa")["precision"], 0.5);
    assert_eq!(class("setosa")["recall"], 1.0);
    assert_eq!(class("virginica")["recall"], 0.5);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(
            "nereid_live_metric{metric=\"accuracy\",model=\"iris_classifier\",version=\"1\"} 0.75"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("nereid_feedback_labels_total{model=\"iris_classifier\",version=\"1\"} 4")
    );

    // A model without a reference is not monitored, and says how to change that.
    server
        .post_json(
            "/v2/models/identity_fp32/feedback",
            &feedback(json!([{"id": "x", "truth": 1}])),
        )
        .await
        .assert_error_contains(400, "not monitored");
    server
        .get("/v2/models/identity_fp32/drift")
        .await
        .assert_error_contains(400, "nereid monitor reference");
    server
        .get("/v2/models/nonexistent/drift")
        .await
        .assert_error_contains(404, "unknown model");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_monitor_drops_samples_and_never_holds_requests() {
    // 50 ms per sample and room for 4: were requests to wait for the monitor, 200 of them
    // would take at least 9.8 s.
    let server = TestServer::start_repo(iris_with(&[
        ("nereid.monitor.sample_rate", "1"),
        ("nereid.monitor.delay_per_sample_us", "50000"),
        ("nereid.monitor.queue_size", "4"),
    ]))
    .await;
    let row = json!({"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let started = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let reply = server.infer_json("iris_classifier", &row).await;
        assert_eq!(reply.status, 200);
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let doc = server.get("/v2/models/iris_classifier/drift").await.json();
    let (samples, dropped) = (
        doc["samples"].as_u64().expect("samples"),
        doc["dropped"].as_u64().expect("dropped"),
    );
    assert_eq!(samples + dropped, 200, "{doc}");
    assert!(
        dropped >= 150,
        "a monitor taking 50 ms per sample kept {samples} of 200: {doc}"
    );
    assert!(
        elapsed < Duration::from_millis(9_800) / 2,
        "200 requests took {elapsed:?}: requests waited for the monitor"
    );
    // No single request waited for a sample to be processed.
    assert!(
        latencies[199] < Duration::from_millis(50),
        "slowest request {:?}",
        latencies[199]
    );
    let metrics = server.metrics_text().await;
    assert!(metrics.contains(&format!(
        "nereid_monitor_samples_dropped_total{{model=\"iris_classifier\",version=\"1\"}} {dropped}"
    )));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_monitor_settings_and_references_fail_the_load_with_the_reason() {
    let mismatched = std::fs::read_to_string(format!(
        "{}/iris_classifier/1/reference.json",
        common::MODEL_REPO
    ))
    .expect("reference")
    .replacen(
        "\"petal_width\"\n  ],",
        "\"petal_width\",\n    \"species\"\n  ],",
        1,
    );
    let repo = iris_with(&[("nereid.monitor.windw", "100")])
        .copy_model("identity_bytes")
        .file("identity_bytes/1/reference.json", b"{not json")
        .file("iris_copy/1/reference.json", mismatched.as_bytes());
    let repo = repo.file(
        "iris_copy/config.pbtxt",
        std::fs::read_to_string(format!(
            "{}/iris_classifier/config.pbtxt",
            common::MODEL_REPO
        ))
        .expect("config")
        .replace("name: \"iris_classifier\"", "name: \"iris_copy\"")
        .as_bytes(),
    );
    std::fs::copy(
        format!("{}/iris_classifier/1/model.safetensors", common::MODEL_REPO),
        repo.path().join("iris_copy/1/model.safetensors"),
    )
    .expect("weights");
    std::fs::copy(
        format!("{}/iris_classifier/labels.txt", common::MODEL_REPO),
        repo.path().join("iris_copy/labels.txt"),
    )
    .expect("labels");
    let mut config = ServeConfig::for_tests(repo.path());
    config.strict_readiness = false;
    let server = TestServer::start_with(config, Some(repo)).await;
    let index = server.post("/v2/repository/index", "").await.json();
    let reason = |model: &str| {
        index
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == model))
            .map(|r| r["reason"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{model} not in {index}"))
    };
    assert!(
        reason("iris_classifier").contains("unknown parameter 'nereid.monitor.windw'"),
        "{index}"
    );
    assert!(
        reason("identity_bytes").contains("reference.json is not a valid reference profile"),
        "{index}"
    );
    assert!(
        reason("iris_copy").contains("maps 5 columns to input 'INPUT', whose rows have 4 elements"),
        "{index}"
    );
    // The rest of the repository serves.
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_a_restart_and_exports_as_a_dataset_version() {
    let logs = tempfile::tempdir().expect("log dir");
    let repo = iris_with(EVERY_REQUEST);
    let repo_path = repo.path();
    let start = |repo: Option<Repo>| {
        let mut config = ServeConfig::for_tests(&repo_path);
        config.monitoring.log_dir = Some(logs.path().to_path_buf());
        TestServer::start_with(config, repo)
    };
    let server = start(None).await;
    let data = iris();
    for (i, (row, _)) in data.iter().enumerate().take(30) {
        infer_row(&server, Some(&format!("req-{i}")), *row).await;
    }
    let labels: Vec<Value> = data
        .iter()
        .enumerate()
        .take(10)
        .map(|(i, (_, species))| json!({"id": format!("req-{i}"), "truth": species}))
        .collect();
    let reply = server
        .post_json(
            "/v2/models/iris_classifier/feedback",
            &json!({"feedback": labels}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    server.shutdown().await.expect("clean shutdown");

    // A new process finds the labels and the predictions they refer to.
    let server = start(None).await;
    let doc = server.get("/v2/models/iris_classifier/drift").await.json();
    assert_eq!(doc["performance"]["total"]["labelled"], 10, "{doc}");
    assert_eq!(doc["performance"]["total"]["accuracy"], 1.0, "{doc}");
    server
        .post_json(
            "/v2/models/iris_classifier/feedback",
            &json!({"feedback": [{"id": "req-3", "truth": "setosa"}]}),
        )
        .await
        .assert_error_contains(400, "already has feedback");
    let reply = server
        .post_json(
            "/v2/models/iris_classifier/feedback",
            &json!({"feedback": [{"id": "req-20", "truth": data[20].1}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    server.shutdown().await.expect("clean shutdown");

    // The log as a dataset version: one row per request row, labels where feedback came.
    let store_dir = tempfile::tempdir().expect("store");
    let store =
        nereid_pipeline::store::FeatureStore::open_or_create(store_dir.path()).expect("store");
    let config_text =
        std::fs::read_to_string(repo_path.join("iris_classifier/config.pbtxt")).expect("config");
    let config =
        nereid_protocol::config::parse_pbtxt(&config_text, "config.pbtxt").expect("config");
    let reference =
        nereid_monitor::Reference::read(&repo_path.join("iris_classifier/1/reference.json"))
            .expect("reference");
    let exported = nereid_pipeline::monitoring::export_log(
        &store,
        &nereid_pipeline::monitoring::ExportSpec {
            log_dir: logs.path().join("iris_classifier/1"),
            model: "iris_classifier".into(),
            version: 1,
            config,
            reference: Some(reference),
            since_ms: None,
            until_ms: None,
            labelled_only: false,
            name: "iris-production".into(),
            labels: Default::default(),
        },
    )
    .expect("export");
    assert_eq!((exported.rows, exported.labelled), (30, 11));
    let version = exported.committed.version;
    let names: Vec<&str> = version.schema.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "request_id",
            "row",
            "timestamp",
            "model_version",
            "sepal_length",
            "sepal_width",
            "petal_length",
            "petal_width",
            "prediction",
            "species"
        ]
    );
    let batch = store.read(&version).expect("read back");
    let species = batch
        .column_by_name("species")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        .expect("species");
    let predicted = batch
        .column_by_name("prediction")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        .expect("prediction");
    let ids = batch
        .column_by_name("request_id")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        .expect("ids");
    let row3 = (0..batch.num_rows())
        .find(|&r| ids.value(r) == "req-3")
        .expect("req-3");
    assert_eq!(
        (species.value(row3), predicted.value(row3)),
        ("setosa", "setosa")
    );
    let row25 = (0..batch.num_rows())
        .find(|&r| ids.value(r) == "req-25")
        .expect("req-25");
    assert!(arrow::array::Array::is_null(species, row25));
    let length = batch
        .column_by_name("sepal_length")
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Float64Array>())
        .expect("sepal_length");
    assert_eq!(length.value(row3), f64::from(data[3].0[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_tenth_of_requests_is_sampled_and_given_an_id() {
    let server = TestServer::start_repo(Repo::new().copy_model("iris_classifier")).await;
    let mut with_id = 0;
    for _ in 0..100 {
        let doc = infer_row(&server, None, [5.1, 3.5, 1.4, 0.2]).await;
        with_id += usize::from(doc.get("id").is_some());
    }
    assert_eq!(with_id, 10);
    // A request that names itself keeps its id whether sampled or not.
    assert_eq!(
        infer_row(&server, Some("mine"), [5.1, 3.5, 1.4, 0.2]).await["id"],
        "mine"
    );
    let doc = server.get("/v2/models/iris_classifier/drift").await.json();
    assert_eq!(doc["monitoring"]["sample_rate"], 0.1);
    assert_eq!(
        doc["monitoring"]["window"],
        "sliding, 200 rows every 100 rows"
    );
    assert_eq!(
        doc["samples"].as_u64().expect("samples") + doc["dropped"].as_u64().expect("dropped"),
        10
    );
    server.shutdown().await.expect("clean shutdown");
}
