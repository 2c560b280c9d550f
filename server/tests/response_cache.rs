//! The response cache (`--cache-config local,size=N`, `response_cache { enable: true }`): a
//! repeated request is answered without running the model (over HTTP and gRPC alike), counted
//! as a hit in the statistics extension and in Triton's `nv_cache_*` metrics; different inputs
//! miss; a reload of the same version starts with nothing cached; least recently used entries
//! make room within the cache's size; models without the setting never use it.

mod common;

use common::{f32_bytes, f32_from_bytes, f32_values, Repo, TestServer};
use nereid_protocol::inference::model_infer_request::InferInputTensor;
use nereid_protocol::inference::ModelInferRequest;
use nereid_server::registry::ControlMode;
use nereid_server::ServeConfig;
use serde_json::{json, Value};

const CACHED: &str = "name: \"cached\"\nbackend: \"identity\"\nmax_batch_size: 0\n\
    input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
    output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
    response_cache { enable: true }\n";

fn request(values: [f32; 4]) -> Value {
    json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": values}]})
}

/// (successes, executions, cache hits, cache misses) of `model`.
async fn counts(server: &TestServer, model: &str) -> (u64, u64, u64, u64) {
    let stats = server
        .get(&format!("/v2/models/{model}/stats"))
        .await
        .json();
    let m = &stats["model_stats"][0];
    let count = |what: &str| m["inference_stats"][what]["count"].as_u64().expect("count");
    (
        count("success"),
        m["execution_count"].as_u64().expect("executions"),
        count("cache_hit"),
        count("cache_miss"),
    )
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_are_answered_from_the_cache() {
    let repo = Repo::new().model("cached", CACHED, &[1]);
    let repo_path = repo.path();
    let config = ServeConfig {
        // Four responses of 16 bytes.
        response_cache_bytes: Some(64),
        model_control_mode: ControlMode::Explicit,
        load_models: vec!["*".into()],
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;

    let a = [1.0, 2.0, 3.0, 4.0];
    for _ in 0..2 {
        let reply = server.infer_json("cached", &request(a)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(f32_values(&reply.json()["outputs"][0]["data"]), a);
    }
    assert_eq!(
        counts(&server, "cached").await,
        (2, 1, 1, 1),
        "one run, one hit"
    );

    // The same request over gRPC is the same entry.
    let mut client = server.grpc_client().await;
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "cached".into(),
            inputs: vec![InferInputTensor {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![4],
                ..Default::default()
            }],
            raw_input_contents: vec![f32_bytes(&a).into()],
            ..Default::default()
        })
        .await
        .expect("gRPC inference")
        .into_inner();
    assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), a);
    assert_eq!(counts(&server, "cached").await, (3, 1, 2, 1));

    // Other inputs miss.
    let b = [5.0, 6.0, 7.0, 8.0];
    let reply = server.infer_json("cached", &request(b)).await;
    assert_eq!(f32_values(&reply.json()["outputs"][0]["data"]), b);
    assert_eq!(counts(&server, "cached").await, (4, 2, 2, 2));

    // A reload of the same version number with changed files (here its config) starts empty:
    // the next `a` runs the model.
    std::fs::write(
        repo_path.join("cached/config.pbtxt"),
        format!("{CACHED}parameters {{ key: \"release\" value: {{ string_value: \"2\" }} }}\n"),
    )
    .expect("rewrite the config");
    let reply = server
        .post("/v2/repository/models/cached/load", Vec::new())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    server.infer_json("cached", &request(a)).await;
    assert_eq!(
        counts(&server, "cached").await,
        (1, 1, 0, 1),
        "a fresh load"
    );

    // Six distinct requests in a cache of four entries: the oldest are evicted, the newest hit.
    for i in 0..6 {
        server
            .infer_json("cached", &request([i as f32, 0.0, 0.0, 0.0]))
            .await;
    }
    server
        .infer_json("cached", &request([5.0, 0.0, 0.0, 0.0]))
        .await;
    let (_, executions, hits, _) = counts(&server, "cached").await;
    assert_eq!((executions, hits), (7, 1));
    server
        .infer_json("cached", &request([0.0, 0.0, 0.0, 0.0]))
        .await;
    assert_eq!(counts(&server, "cached").await.1, 8, "evicted, so it ran");

    let text = server.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "nv_cache_num_hits_per_model{model=\"cached\",version=\"1\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "nv_cache_num_entries"), Some(4.0), "{text}");
    assert!(
        metric(&text, "nv_cache_num_evictions").is_some_and(|e| e >= 3.0),
        "{text}"
    );
    assert_eq!(metric(&text, "nereid_cache_capacity_bytes"), Some(64.0));

    // identity_fp32 has no response_cache setting: it never uses the cache.
    for _ in 0..2 {
        server.assert_serving().await;
    }
    let (success, executions, hits, misses) = counts(&server, "identity_fp32").await;
    assert_eq!((success, executions, hits, misses), (2, 2, 0, 0));
    server.shutdown().await.expect("clean shutdown");
}
