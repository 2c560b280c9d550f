//! The trace extension: `--trace-config` settings (here the config's `trace`), reading and
//! changing them globally and per model over HTTP and gRPC, Triton's refusals, and the trace
//! files: sampled at the rate, limited by the count, indexed by the log frequency, the rest
//! written at shutdown, each trace with its timestamps in order.

mod common;

use common::TestServer;
use nereid_protocol::inference::{trace_setting_request, TraceSettingRequest};
use nereid_server::trace::TraceSettings;
use nereid_server::ServeConfig;
use serde_json::{json, Value};

fn read(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice::<Value>(&text)
        .expect("a JSON array")
        .as_array()
        .expect("array")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_to_tritons_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("trace.json");
    let repo = common::Repo::new().copy_model("identity_bytes");
    let config = ServeConfig {
        trace: TraceSettings {
            timestamps: true,
            rate: 2,
            count: -1,
            log_frequency: 0,
            file: file.display().to_string(),
        },
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;
    let settings = server.get("/v2/trace/setting").await.json();
    assert_eq!(
        settings,
        json!({"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "-1",
               "log_frequency": "0", "trace_file": file.display().to_string(),
               "trace_mode": "triton"})
    );

    // identity_bytes gets its own settings: every request, two at most, one per file.
    let reply = server
        .post_json(
            "/v2/models/identity_bytes/trace/setting",
            &json!({"trace_rate": "1", "trace_count": "2", "log_frequency": "1"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["trace_count"], "2");
    // The global ones are unchanged.
    assert_eq!(
        server.get("/v2/trace/setting").await.json()["trace_rate"],
        "2"
    );

    // Six requests to identity_fp32 at rate 2: three traces, written at shutdown.
    for _ in 0..6 {
        server.assert_serving().await;
    }
    for _ in 0..3 {
        let body = json!({"id": "b", "inputs": [{"name": "INPUT0", "datatype": "BYTES",
                                                  "shape": [1, 1], "data": ["x"]}]});
        assert_eq!(server.infer_json("identity_bytes", &body).await.status, 200);
    }
    let per_model: Vec<Vec<Value>> = (0..2)
        .map(|i| read(&dir.path().join(format!("trace.json.{i}"))))
        .collect();
    for entries in &per_model {
        assert_eq!(entries.len(), 2, "one trace per file: {entries:?}");
        assert_eq!(entries[0]["model_name"], "identity_bytes");
        assert_eq!(entries[0]["request_id"], "b");
    }
    assert!(
        !dir.path().join("trace.json.2").exists(),
        "the count stopped at 2"
    );
    assert_eq!(
        server
            .get("/v2/models/identity_bytes/trace/setting")
            .await
            .json()["trace_count"],
        "0"
    );

    // Refusals, Triton's way.
    server
        .post_json(
            "/v2/trace/setting",
            &json!({"trace_file": "/tmp/elsewhere.json"}),
        )
        .await
        .assert_error(
            501,
            "trace file location can not be updated through network protocol",
        );
    server
        .post_json("/v2/trace/setting", &json!({"trace_rate": "often"}))
        .await
        .assert_error(400, "Unable to parse 'trace_rate', got: often");
    server
        .post_json(
            "/v2/trace/setting",
            &json!({"trace_level": ["OFF", "TIMESTAMPS"]}),
        )
        .await
        .assert_error(400, "Expect only one trace level 'OFF' is specified");
    server
        .get("/v2/models/nope/trace/setting")
        .await
        .assert_error(400, "Request for unknown model : nope");

    // gRPC: the same settings; clearing a model's rate returns it to the global one.
    let mut client = server.grpc_client().await;
    let response = client
        .trace_setting(TraceSettingRequest {
            settings: [(
                "trace_rate".to_string(),
                trace_setting_request::SettingValue { value: vec![] },
            )]
            .into(),
            model_name: "identity_bytes".into(),
        })
        .await
        .expect("TraceSetting")
        .into_inner();
    assert_eq!(response.settings["trace_rate"].value, ["2"]);
    assert_eq!(response.settings["trace_level"].value, ["TIMESTAMPS"]);

    server.shutdown().await.expect("clean shutdown");
    let entries = read(&file);
    assert_eq!(entries.len(), 6, "three traces of identity_fp32");
    let mut ids = std::collections::BTreeSet::new();
    for pair in entries.chunks(2) {
        assert_eq!(pair[0]["model_name"], "identity_fp32");
        assert_eq!(pair[0]["model_version"], 1);
        assert_eq!(pair[0]["id"], pair[1]["id"]);
        ids.insert(pair[0]["id"].as_u64().expect("id"));
        let stamps = pair[1]["timestamps"].as_array().expect("timestamps");
        let names: Vec<&str> = stamps.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names.first(), Some(&"REQUEST_START"));
        assert_eq!(names.last(), Some(&"REQUEST_END"));
        assert!(names.contains(&"COMPUTE_START"), "{names:?}");
        let ns: Vec<u64> = stamps.iter().map(|t| t["ns"].as_u64().unwrap()).collect();
        assert!(ns.windows(2).all(|w| w[0] <= w[1]), "in order: {ns:?}");
    }
    assert_eq!(ids.len(), 3);
}
