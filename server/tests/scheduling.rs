//! Scheduling over real HTTP/gRPC: which batch sizes the dynamic batcher executes (read back
//! through the statistics extension), queue limits and timeouts, ensembles, and exact metrics.

mod common;

use std::time::{Duration, Instant};

use common::{f32_values, fp32_request, identity_config, Repo, TestServer};
use serde_json::{json, Value};

/// Identity FP32 [4], max batch 8, preferred 4, a long delay so that only a preferred size (or
/// the delay) sends a batch.
fn batched_config(extra: &str) -> String {
    format!(
        "{}dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 2000000 {extra} }}\n",
        identity_config("batched", "TYPE_FP32", &[4], 8)
    )
}

fn request(batch: usize) -> Value {
    fp32_request("INPUT0", &[batch as u64, 4], &vec![1.0; batch * 4])
}

/// Batch size -> number of executions, from the statistics extension.
async fn executed_batches(server: &TestServer, model: &str) -> Vec<(u64, u64)> {
    let stats = server
        .get(&format!("/v2/models/{model}/stats"))
        .await
        .json();
    let model_stats = &stats["model_stats"][0];
    model_stats["batch_stats"]
        .as_array()
        .expect("batch_stats array")
        .iter()
        .map(|b| {
            (
                b["batch_size"].as_u64().expect("numeric batch_size"),
                b["compute_infer"]["count"].as_u64().expect("numeric count"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_size_executes_at_once() {
    let server =
        TestServer::start_repo(Repo::new().model("batched", &batched_config(""), &[1])).await;
    let started = Instant::now();
    let reply = server.infer_json("batched", &request(4)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The 2 s queue delay did not apply: a preferred batch goes at once.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(executed_batches(&server, "batched").await, vec![(4, 1)]);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_that_sum_to_a_preferred_size_execute_as_one_batch() {
    let server =
        TestServer::start_repo(Repo::new().model("batched", &batched_config(""), &[1])).await;
    let first = request(1);
    let (a, b) = tokio::join!(server.infer_json("batched", &first), async {
        // Arrive second, while the first is waiting for company.
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.infer_json("batched", &request(3)).await
    });
    assert_eq!(
        (a.status, b.status),
        (200, 200),
        "{} {}",
        a.text(),
        b.text()
    );
    assert_eq!(a.json()["outputs"][0]["shape"], json!([1, 4]));
    assert_eq!(b.json()["outputs"][0]["shape"], json!([3, 4]));
    assert_eq!(executed_batches(&server, "batched").await, vec![(4, 1)]);

    let stats = server.get("/v2/models/batched/stats").await.json();
    let s = &stats["model_stats"][0];
    assert_eq!(s["inference_count"], 4);
    assert_eq!(s["execution_count"], 1);
    assert_eq!(s["inference_stats"]["success"]["count"], 2);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_small_request_waits_for_the_delay_then_runs() {
    let config = format!(
        "{}dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 300000 }}\n",
        identity_config("batched", "TYPE_FP32", &[4], 8)
    );
    let server = TestServer::start_repo(Repo::new().model("batched", &config, &[1])).await;
    let started = Instant::now();
    let reply = server.infer_json("batched", &request(2)).await;
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(executed_batches(&server, "batched").await, vec![(2, 1)]);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_rejects_exactly_the_excess() {
    // Requests wait for the 2 s delay (no preferred size can form from batches of 1 below 4),
    // so the queue of 2 fills up.
    let config = batched_config("default_queue_policy { max_queue_size: 2 }");
    let server = TestServer::start_repo(Repo::new().model("batched", &config, &[1])).await;
    let mut replies = Vec::new();
    let sends = (0..5).map(|i| {
        let server = &server;
        async move {
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            server.infer_json("batched", &request(1)).await
        }
    });
    for reply in futures_util::future::join_all(sends).await {
        replies.push(reply);
    }
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let rejected: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        (ok, rejected.len()),
        (2, 3),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in rejected {
        reply.assert_error(503, "Exceeds maximum queue size");
    }
    assert_eq!(executed_batches(&server, "batched").await, vec![(2, 1)]);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(
            r#"nv_inference_request_failure{model="batched",reason="REJECTED",version="1"} 3"#
        ),
        "{metrics}"
    );
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeouts_reject_with_tritons_message() {
    let config = batched_config("default_queue_policy { default_timeout_microseconds: 100000 allow_timeout_override: true }");
    let server = TestServer::start_repo(Repo::new().model("batched", &config, &[1])).await;
    let reply = server.infer_json("batched", &request(1)).await;
    reply.assert_error(503, "Request timeout expired");
    // A request may lower its timeout with the `timeout` parameter (microseconds).
    let mut lowered = request(1);
    lowered["parameters"] = json!({"timeout": 1000});
    let started = Instant::now();
    server
        .infer_json("batched", &lowered)
        .await
        .assert_error(503, "Request timeout expired");
    assert!(started.elapsed() < Duration::from_millis(1000));
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

fn iris_repo() -> Repo {
    Repo::new()
        .copy_model("iris_classifier")
        .copy_model("iris_features")
        .copy_model("iris_label")
        .copy_model("iris_pipeline")
}

const SAMPLES: [[f32; 4]; 3] = [
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.1, 5.6, 2.4],
    [5.9, 3.0, 4.2, 1.5],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_output_equals_the_steps_run_by_hand() {
    let server = TestServer::start_repo(iris_repo()).await;
    let column = |i: usize| SAMPLES.iter().map(|s| s[i]).collect::<Vec<f32>>();
    let names = ["SEPAL_LENGTH", "SEPAL_WIDTH", "PETAL_LENGTH", "PETAL_WIDTH"];
    let inputs: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"name": n, "shape": [3, 1], "datatype": "FP32", "data": column(i)}))
        .collect();
    let reply = server
        .infer_json("iris_pipeline", &json!({"inputs": inputs}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let output = |name: &str| {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        output("LABEL")["data"],
        json!(["setosa", "virginica", "versicolor"])
    );

    // By hand: features -> classifier -> label.
    let features = server
        .infer_json("iris_features", &json!({"inputs": inputs}))
        .await
        .json();
    let features = f32_values(&features["outputs"][0]["data"]);
    assert_eq!(features, SAMPLES.concat());
    let classifier = server
        .infer_json(
            "iris_classifier",
            &fp32_request("INPUT", &[3, 4], &features),
        )
        .await
        .json();
    let probabilities = f32_values(&classifier["outputs"][0]["data"]);
    assert_eq!(f32_values(&output("PROBABILITIES")["data"]), probabilities);
    let label = server
        .infer_json(
            "iris_label",
            &fp32_request("PROBABILITIES", &[3, 3], &probabilities),
        )
        .await
        .json();
    let label_output = label["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "LABEL")
        .cloned()
        .unwrap();
    assert_eq!(label_output["data"], output("LABEL")["data"]);

    // The ensemble is served like any model: metadata, config, statistics.
    let metadata = server.get("/v2/models/iris_pipeline").await.json();
    assert_eq!(metadata["platform"], "ensemble");
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 1]));
    let config = server.get("/v2/models/iris_pipeline/config").await.json();
    assert_eq!(
        config["ensemble_scheduling"]["step"][1]["model_name"],
        "iris_classifier"
    );
    assert_eq!(
        config["ensemble_scheduling"]["step"][1]["model_version"],
        -1
    );
    let stats = server.get("/v2/models/iris_pipeline/stats").await.json();
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        1
    );
    // Each composing model ran once for the ensemble (and once more by hand).
    let stats = server.get("/v2/models/iris_classifier/stats").await.json();
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        2
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensembles_over_grpc() {
    use nereid_protocol::inference::{model_infer_request::InferInputTensor, ModelInferRequest};
    let server = TestServer::start_repo(iris_repo()).await;
    let mut client = server.grpc_client().await;
    let names = ["SEPAL_LENGTH", "SEPAL_WIDTH", "PETAL_LENGTH", "PETAL_WIDTH"];
    let request = ModelInferRequest {
        model_name: "iris_pipeline".into(),
        inputs: names
            .iter()
            .map(|n| InferInputTensor {
                name: n.to_string(),
                datatype: "FP32".into(),
                shape: vec![1, 1],
                ..Default::default()
            })
            .collect(),
        raw_input_contents: SAMPLES[1]
            .iter()
            .map(|v| bytes::Bytes::copy_from_slice(&v.to_le_bytes()))
            .collect(),
        ..Default::default()
    };
    let response = client
        .model_infer(request)
        .await
        .expect("ensemble infers")
        .into_inner();
    let response =
        nereid_protocol::grpc::response_from_grpc(response).expect("well-formed response");
    let label = response
        .outputs
        .iter()
        .find(|o| o.name == "LABEL")
        .expect("LABEL output");
    let labels: Vec<&[u8]> = nereid_protocol::bytes_elements(&label.data)
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(labels, vec![&b"virginica"[..]]);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_is_reported_with_the_ensemble_prefix() {
    // An ensemble that forwards a variable-length vector to the classifier, which needs 4.
    let forward = identity_config("forward", "TYPE_FP32", &[-1], 8);
    let ensemble = r#"name: "loose"
platform: "ensemble"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "P" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling { step [
  { model_name: "forward" model_version: -1 input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "x" } },
  { model_name: "iris_classifier" model_version: -1 input_map { key: "INPUT" value: "x" } output_map { key: "PROBABILITIES" value: "P" } }
] }
"#;
    let repo = Repo::new()
        .copy_model("iris_classifier")
        .model("forward", &forward, &[1])
        .model("loose", ensemble, &[1]);
    let server = TestServer::start_repo(repo).await;
    let reply = server
        .infer_json("loose", &fp32_request("X", &[1, 3], &[1.0, 2.0, 3.0]))
        .await;
    reply.assert_error(
        400,
        "in ensemble 'loose', [request id: <id_unknown>] unexpected shape for input 'INPUT' for model 'iris_classifier'. Expected [-1,4], got [1,3]. NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size.",
    );
    let ok = server
        .infer_json("loose", &fp32_request("X", &[1, 4], &[5.1, 3.5, 1.4, 0.2]))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_without_its_composing_models_is_unavailable() {
    let ensemble = r#"name: "orphan"
platform: "ensemble"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "missing" model_version: -1 input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ] }
"#;
    let server = TestServer::start_repo(Repo::new().model("orphan", ensemble, &[1])).await;
    let index = server.post("/v2/repository/index", "").await.json();
    let orphan = index
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "orphan")
        .cloned()
        .unwrap();
    assert_eq!(orphan["state"], "UNAVAILABLE");
    assert_eq!(
        orphan["reason"],
        "ensemble orphan contains models that are not available or ambiguous: missing"
    );
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_traffic_sent() {
    let server = TestServer::start_default().await;
    for batch in [1usize, 2, 3] {
        let reply = server
            .infer_json(
                "identity_fp32",
                &fp32_request("INPUT0", &[batch as u64, 16], &vec![0.5; batch * 16]),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    // One request that fails validation.
    server
        .infer_json(
            "identity_fp32",
            &fp32_request("INPUT0", &[1, 15], &[0.0; 15]),
        )
        .await
        .assert_error_contains(400, "unexpected shape");

    let metrics = server.metrics_text().await;
    let line = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
    };
    let labels = r#"{model="identity_fp32",version="1"}"#;
    assert_eq!(line(&format!("nv_inference_request_success{labels}")), 3.0);
    assert_eq!(line(&format!("nv_inference_count{labels}")), 6.0);
    assert_eq!(line(&format!("nv_inference_exec_count{labels}")), 3.0);
    assert_eq!(
        line(r#"nv_inference_request_failure{model="identity_fp32",reason="OTHER",version="1"}"#),
        1.0
    );
    assert_eq!(
        line(
            r#"nv_inference_request_failure{model="identity_fp32",reason="REJECTED",version="1"}"#
        ),
        0.0
    );
    assert_eq!(
        line(&format!("nv_inference_pending_request_count{labels}")),
        0.0
    );
    assert_eq!(
        line(&format!("nv_inference_request_summary_us_count{labels}")),
        3.0
    );
    assert_eq!(line(&format!("nereid_batch_size_count{labels}")), 3.0);
    assert_eq!(line(&format!("nereid_batch_size_sum{labels}")), 6.0);
    assert_eq!(
        line(r#"nereid_batch_size_bucket{model="identity_fp32",version="1",le="2"}"#),
        2.0
    );
    assert!(
        line(
            r#"nv_inference_request_summary_us{model="identity_fp32",version="1",quantile="0.99"}"#
        ) > 0.0
    );
    // The summary and the counter agree.
    assert_eq!(
        line(&format!("nv_inference_request_summary_us_sum{labels}")),
        line(&format!("nv_inference_request_duration_us{labels}"))
    );
    assert!(line("nv_cpu_memory_total_bytes") > 0.0);
    let utilization = line("nv_cpu_utilization");
    assert!((0.0..=1.0).contains(&utilization));
    assert!(line(&format!("nv_model_load_duration_secs{labels}")) >= 0.0);
    server.shutdown().await.expect("clean shutdown");
}
