//! `nereid monitor ...` as a user runs it: the binary against a real server, its prediction log
//! and a feature store, with exit codes and messages.

mod common;

use common::{iris_with, nereid, TestServer, EVERY_REQUEST};
use nereid_server::ServeConfig;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_commands_report_export_and_write_references() {
    let logs = tempfile::tempdir().expect("logs");
    let repo = iris_with(EVERY_REQUEST);
    let repo_path = repo.path();
    let mut config = ServeConfig::for_tests(repo.path());
    config.monitoring.log_dir = Some(logs.path().to_path_buf());
    // The repository outlives the server: the commands below read it after shutdown.
    let server = TestServer::start_with(config, None).await;
    let url = format!("http://{}", server.http);

    let (ok, out, err) = nereid(&[
        "monitor",
        "report",
        "--url",
        &url,
        "--model",
        "iris_classifier",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("no window has closed yet"), "{out}");

    let rows = [
        [5.1f32, 3.5, 1.4, 0.2],
        [7.0, 3.2, 4.7, 1.4],
        [6.3, 3.3, 6.0, 2.5],
        [5.8, 2.7, 5.1, 1.9],
    ];
    for i in 0..25 {
        let data: Vec<f32> = (0..40).flat_map(|k| rows[(i + k) % 4]).collect();
        let body = json!({"id": format!("batch-{i}"), "inputs": [{"name": "INPUT", "shape": [40, 4], "datatype": "FP32", "data": data}]});
        assert_eq!(
            server.infer_json("iris_classifier", &body).await.status,
            200
        );
    }
    let truth: Vec<&str> = (0..40)
        .map(|k| ["setosa", "versicolor", "virginica", "virginica"][k % 4])
        .collect();
    let reply = server
        .post_json(
            "/v2/models/iris_classifier/feedback",
            &json!({"feedback": [{"id": "batch-0", "truth": truth}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.get("/v2/models/iris_classifier/drift").await.json()["windows"] != 1 {
        assert!(std::time::Instant::now() < deadline, "no window closed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (ok, out, err) = nereid(&[
        "monitor",
        "report",
        "--url",
        &url,
        "--model",
        "iris_classifier",
        "--version",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("window 1 (1000 rows)"), "{out}");
    for column in [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
        "PROBABILITIES",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(column)),
            "{column} in\n{out}"
        );
    }
    assert!(out.contains("live performance: 40 labelled"), "{out}");
    let (ok, out, _) = nereid(&[
        "monitor",
        "report",
        "--url",
        &url,
        "--model",
        "iris_classifier",
        "--json",
    ]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).expect("json")["windows"],
        1
    );
    let (ok, _, err) = nereid(&["monitor", "report", "--url", &url, "--model", "nosuch"]);
    assert!(!ok);
    assert!(err.contains("unknown model: 'nosuch'"), "{err}");
    server.shutdown().await.expect("clean shutdown");

    // The log of version 1 as a dataset version.
    let store = tempfile::tempdir().expect("store");
    let store_arg = store.path().join("fs");
    let (repo_s, logs_s, store_s) = (
        repo_path.display().to_string(),
        logs.path().display().to_string(),
        store_arg.display().to_string(),
    );
    // `nereid monitor export|reference` on this log, repository and store, with `args` added.
    let export = |args: &[&str]| {
        let mut all = vec!["monitor", "export", "--log-dir", &logs_s];
        all.extend_from_slice(&["--repository", &repo_s, "--store", &store_s]);
        all.extend_from_slice(args);
        nereid(&all)
    };
    let reference = |args: &[&str]| {
        let mut all = vec![
            "monitor",
            "reference",
            "--repository",
            &repo_s,
            "--store",
            &store_s,
        ];
        all.extend_from_slice(args);
        nereid(&all)
    };
    let (ok, out, err) = export(&["--model", "iris_classifier", "--since", "1h"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("stored iris_classifier-predictions@1"),
        "{out}"
    );
    assert!(out.contains("(1000 rows, 40 labelled)"), "{out}");
    let (ok, out, err) = export(&[
        "--model",
        "iris_classifier",
        "--labelled-only",
        "--name",
        "labelled",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("(40 rows, 40 labelled)"), "{out}");
    let (ok, _, err) = export(&["--model", "iris_classifier", "--since", "yesterday-ish"]);
    assert!(!ok && err.contains("neither an RFC 3339 time"), "{err}");
    let (ok, _, err) = export(&["--model", "identity_fp32"]);
    assert!(
        !ok && err.contains("no prediction log for model 'identity_fp32'"),
        "{err}"
    );

    // A reference for identity_fp32 from that dataset's first columns? It has 16 elements per
    // row; the export has 4 features, so the mapping is refused with the reason.
    let (ok, _, err) = reference(&[
        "--dataset",
        "iris_classifier-predictions",
        "--model",
        "identity_fp32",
        "--version",
        "1",
    ]);
    assert!(!ok && err.contains("16 elements per row"), "{err}");
    // And for the classifier itself, from the production data, with the label.
    let (ok, out, err) = reference(&[
        "--dataset",
        "labelled@1",
        "--model",
        "iris_classifier",
        "--version",
        "1",
        "--features",
        "sepal_length,sepal_width,petal_length,petal_width",
        "--label",
        "species",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("40 rows"), "{out}");
    let written =
        nereid_monitor::Reference::read(&repo_path.join("iris_classifier/1/reference.json"))
            .expect("reference");
    assert_eq!(written.profile.rows, 40);
}
