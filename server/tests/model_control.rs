//! Model management over real HTTP/gRPC: control modes, the load/unload API, hot reloads under
//! traffic (every request succeeds, on a version that was ready when it was sent), versions
//! copied in slowly, and broken new versions that must not replace working ones.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fp32_request, identity_config, Repo, TestServer, MODEL_REPO};
use nereid_server::{ControlMode, ServeConfig};
use serde_json::{json, Value};

fn config(repo: &Repo, mode: ControlMode) -> ServeConfig {
    ServeConfig {
        model_control_mode: mode,
        repository_poll: Duration::from_millis(100),
        ..ServeConfig::for_tests(repo.path())
    }
}

async fn index(server: &TestServer) -> Vec<Value> {
    server
        .post("/v2/repository/index", "")
        .await
        .json()
        .as_array()
        .cloned()
        .expect("index is a list")
}

fn row<'a>(rows: &'a [Value], name: &str, version: &str) -> Option<&'a Value> {
    rows.iter().find(|r| {
        r["name"] == name && r.get("version").and_then(Value::as_str).unwrap_or("") == version
    })
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

fn identity_request() -> Value {
    fp32_request("INPUT0", &[1, 16], &[1.0; 16])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_refuses_load_and_unload() {
    let repo = Repo::new();
    let server = TestServer::start_with(config(&repo, ControlMode::None), Some(repo)).await;
    let message = "explicit model load / unload is not allowed if polling is enabled";
    server
        .post("/v2/repository/models/identity_fp32/load", "")
        .await
        .assert_error(503, message);
    server
        .post("/v2/repository/models/identity_fp32/unload", "")
        .await
        .assert_error(503, message);
    let mut client = server.grpc_client().await;
    let status = client
        .repository_model_load(nereid_protocol::inference::RepositoryModelLoadRequest {
            model_name: "identity_fp32".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unavailable, message)
    );
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_follows_the_api() {
    let repo = Repo::new().copy_model("iris_classifier");
    let mut cfg = config(&repo, ControlMode::Explicit);
    cfg.load_models = vec!["identity_fp32".into()];
    let server = TestServer::start_with(cfg, Some(repo)).await;

    let rows = index(&server).await;
    assert_eq!(
        row(&rows, "identity_fp32", "1").expect("loaded")["state"],
        "READY"
    );
    let iris = rows
        .iter()
        .find(|r| r["name"] == "iris_classifier")
        .expect("listed");
    assert_eq!(iris["state"], "", "in the repository, never loaded: {iris}");
    assert_eq!(
        server.get("/v2/models/iris_classifier/ready").await.status,
        400
    );

    // Load (synchronous), then it serves.
    let reply = server
        .post("/v2/repository/models/iris_classifier/load", "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        server.get("/v2/models/iris_classifier/ready").await.status,
        200
    );

    // Unload: not ready, reported as unloaded; unloading again or an unknown model succeeds.
    let reply = server
        .post_json(
            "/v2/repository/models/iris_classifier/unload",
            &json!({"parameters": {"unload_dependents": false}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        server.get("/v2/models/iris_classifier/ready").await.status,
        400
    );
    let rows = index(&server).await;
    let unloaded = row(&rows, "iris_classifier", "1").expect("still listed");
    assert_eq!(
        (unloaded["state"].as_str(), unloaded["reason"].as_str()),
        (Some("UNAVAILABLE"), Some("unloaded"))
    );
    server
        .infer_json(
            "iris_classifier",
            &fp32_request("INPUT", &[1, 4], &[1.0; 4]),
        )
        .await
        .assert_error(
            404,
            "Request for unknown model: 'iris_classifier' has no available versions",
        );
    assert_eq!(
        server
            .post("/v2/repository/models/iris_classifier/unload", "")
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .post("/v2/repository/models/nope/unload", "")
            .await
            .status,
        200
    );

    // Loading what the repository does not have.
    server
        .post("/v2/repository/models/nope/load", "")
        .await
        .assert_error(
            500,
            "failed to load 'nope', failed to poll from model repository",
        );
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_config_and_file_overrides() {
    use base64::Engine;
    let repo = Repo::new();
    let server = TestServer::start_with(config(&repo, ControlMode::Explicit), Some(repo)).await;
    assert!(
        index(&server).await.iter().all(|r| r["state"] != "READY"),
        "explicit mode loads nothing by default"
    );

    // A config override for a model of the repository.
    let mut override_config: Value =
        server_config_json(&identity_config("identity_fp32", "TYPE_FP32", &[16], 2));
    override_config["name"] = json!("identity_fp32");
    let body = json!({"parameters": {"config": override_config.to_string()}});
    let reply = server
        .post_json("/v2/repository/models/identity_fp32/load", &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        server.get("/v2/models/identity_fp32/config").await.json()["max_batch_size"],
        2
    );

    // A model that exists only in the request: config plus files.
    let config = server_config_json(&identity_config("posted", "TYPE_FP32", &[3], 4));
    let file = base64::engine::general_purpose::STANDARD.encode(b"identity needs no weights");
    let body = json!({"parameters": {"config": config.to_string(), "file:1/README": file}});
    let reply = server
        .post_json("/v2/repository/models/posted/load", &body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let out = server
        .infer_json("posted", &fp32_request("INPUT0", &[1, 3], &[1.0, 2.0, 3.0]))
        .await;
    assert_eq!(out.status, 200, "{}", out.text());

    // Bad overrides are refused with a reason, and change nothing.
    server
        .post_json(
            "/v2/repository/models/posted/load",
            &json!({"parameters": {"config": "{\"bogus_field\": 1}"}}),
        )
        .await
        .assert_error_contains(400, "bogus_field");
    server
        .post_json(
            "/v2/repository/models/posted/load",
            &json!({"parameters": {"file:1/x": "AAAA"}}),
        )
        .await
        .assert_error_contains(400, "require a 'config'");
    let traversal = json!({"parameters": {"config": config.to_string(), "file:../escape": "AAAA"}});
    server
        .post_json("/v2/repository/models/posted/load", &traversal)
        .await
        .assert_error_contains(400, "invalid file path");
    assert_eq!(
        server
            .infer_json("posted", &fp32_request("INPUT0", &[1, 3], &[1.0, 2.0, 3.0]))
            .await
            .status,
        200
    );

    // gRPC load with a config override, unload with dependents.
    use nereid_protocol::inference::{
        model_repository_parameter::ParameterChoice, ModelRepositoryParameter,
        RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
    };
    let mut client = server.grpc_client().await;
    let mut parameters = std::collections::HashMap::new();
    parameters.insert(
        "config".to_string(),
        ModelRepositoryParameter {
            parameter_choice: Some(ParameterChoice::StringParam(override_config.to_string())),
        },
    );
    client
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: "identity_fp32".into(),
            parameters,
            ..Default::default()
        })
        .await
        .expect("gRPC load");
    let mut parameters = std::collections::HashMap::new();
    parameters.insert(
        "unload_dependents".to_string(),
        ModelRepositoryParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(true)),
        },
    );
    client
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "posted".into(),
            parameters,
            ..Default::default()
        })
        .await
        .expect("gRPC unload");
    assert_eq!(server.get("/v2/models/posted/ready").await.status, 400);
    server.shutdown().await.expect("clean shutdown");
}

/// Triton's JSON form of a config.pbtxt, as the load API takes it.
fn server_config_json(pbtxt: &str) -> Value {
    let config = nereid_protocol::config::parse_pbtxt(pbtxt, "test").expect("valid config");
    serde_json::from_str(&nereid_protocol::config::to_json(&config)).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_an_ensemble_loads_its_models_and_unloading_one_unloads_the_ensemble() {
    let repo = Repo::new()
        .copy_model("iris_classifier")
        .copy_model("iris_features")
        .copy_model("iris_label")
        .copy_model("iris_pipeline");
    let server = TestServer::start_with(config(&repo, ControlMode::Explicit), Some(repo)).await;
    let reply = server
        .post("/v2/repository/models/iris_pipeline/load", "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    for model in [
        "iris_pipeline",
        "iris_classifier",
        "iris_features",
        "iris_label",
    ] {
        assert_eq!(
            server
                .get(&format!("/v2/models/{model}/ready"))
                .await
                .status,
            200,
            "{model}"
        );
    }
    assert_eq!(
        server
            .post("/v2/repository/models/iris_label/unload", "")
            .await
            .status,
        200
    );
    assert_eq!(
        server.get("/v2/models/iris_pipeline/ready").await.status,
        400,
        "the ensemble went with its step"
    );
    assert_eq!(
        server.get("/v2/models/iris_classifier/ready").await.status,
        200
    );

    // unload_dependents: the composing models loaded along with the ensemble go too.
    assert_eq!(
        server
            .post("/v2/repository/models/iris_pipeline/load", "")
            .await
            .status,
        200
    );
    let reply = server
        .post_json(
            "/v2/repository/models/iris_pipeline/unload",
            &json!({"parameters": {"unload_dependents": true}}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        server.get("/v2/models/iris_label/ready").await.status,
        400,
        "loaded with the ensemble, unloaded with it"
    );
    assert_eq!(
        server.get("/v2/models/iris_classifier/ready").await.status,
        200,
        "was loaded before the ensemble"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_follows_the_repository() {
    let repo = Repo::new();
    let path = repo.path();
    let server = TestServer::start_with(config(&repo, ControlMode::Poll), Some(repo)).await;
    server
        .post("/v2/repository/models/identity_fp32/load", "")
        .await
        .assert_error(
            503,
            "explicit model load / unload is not allowed if polling is enabled",
        );

    // A new model appears.
    write_model(
        &path,
        "added",
        &identity_config("added", "TYPE_FP32", &[2], 4),
        &[1],
    );
    eventually("the added model serves", async || {
        server.get("/v2/models/added/ready").await.status == 200
    })
    .await;

    // Its config changes.
    std::fs::write(
        path.join("added/config.pbtxt"),
        identity_config("added", "TYPE_FP32", &[2], 3),
    )
    .unwrap();
    eventually("the config change is loaded", async || {
        server.get("/v2/models/added/config").await.json()["max_batch_size"] == 3
    })
    .await;

    // A new version is added; the policy (latest 1) moves to it.
    std::fs::create_dir_all(path.join("added/2")).unwrap();
    std::fs::write(path.join("added/2/README"), "v2").unwrap();
    eventually("version 2 serves", async || {
        server.get("/v2/models/added").await.json()["versions"] == json!(["2"])
    })
    .await;

    // The model is removed.
    std::fs::remove_dir_all(path.join("added")).unwrap();
    eventually("the removed model is unloaded", async || {
        server.get("/v2/models/added/ready").await.status == 400
    })
    .await;
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

fn write_model(repo: &Path, name: &str, config: &str, versions: &[u64]) {
    // Written aside and renamed in, so that the poller sees the whole model at once.
    let staging = repo.join(format!(".{name}.tmp"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("config.pbtxt"), config).unwrap();
    for v in versions {
        std::fs::create_dir_all(staging.join(v.to_string())).unwrap();
        std::fs::write(staging.join(format!("{v}/README")), "identity").unwrap();
    }
    std::fs::rename(staging, repo.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_copied_in_slowly_is_not_loaded_until_complete() {
    let repo = Repo::new().copy_model("iris_classifier");
    let path = repo.path();
    let mut cfg = config(&repo, ControlMode::Poll);
    // Pieces arrive every ~40 ms; a version is loaded only after two scans a poll interval
    // apart see it unchanged, so a pause of a whole second between two pieces (a machine far
    // busier than CI's) would be needed to load a half-written file.
    cfg.repository_poll = Duration::from_secs(1);
    let server = TestServer::start_with(cfg, Some(repo)).await;
    let weights =
        std::fs::read(Path::new(MODEL_REPO).join("iris_classifier/1/model.safetensors")).unwrap();

    // Write version 2 in small pieces, each within one poll interval of the last, as a slow
    // `cp` would. A half-written safetensors file would fail to load, and show in the index.
    let version_dir = path.join("iris_classifier/2");
    std::fs::create_dir_all(&version_dir).unwrap();
    let target = version_dir.join("model.safetensors");
    let pieces: Vec<&[u8]> = weights.chunks(weights.len().div_ceil(16)).collect();
    for piece in pieces {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)
            .unwrap();
        file.write_all(piece).unwrap();
        drop(file);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let rows = index(&server).await;
        assert!(
            row(&rows, "iris_classifier", "2").is_none(),
            "version 2 was looked at while being written: {rows:?}"
        );
        assert_eq!(
            server.get("/v2/models/iris_classifier").await.json()["versions"],
            json!(["1"])
        );
    }
    eventually("the complete version 2 serves", async || {
        server.get("/v2/models/iris_classifier").await.json()["versions"] == json!(["2"])
    })
    .await;
    let reply = server
        .infer_json(
            "iris_classifier",
            &fp32_request("INPUT", &[1, 4], &[5.1, 3.5, 1.4, 0.2]),
        )
        .await;
    assert_eq!(reply.json()["model_version"], "2");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_version_never_replaces_a_working_one() {
    // Through the API: a config that does not parse.
    let repo = Repo::new().copy_model("iris_classifier");
    let path = repo.path();
    let mut cfg = config(&repo, ControlMode::Explicit);
    cfg.load_models = vec!["*".into()];
    let server = TestServer::start_with(cfg, Some(repo)).await;
    let sample = fp32_request("INPUT", &[1, 4], &[5.1, 3.5, 1.4, 0.2]);
    std::fs::write(
        path.join("iris_classifier/config.pbtxt"),
        "input [ { name: ",
    )
    .unwrap();
    let reply = server
        .post("/v2/repository/models/iris_classifier/load", "")
        .await;
    reply.assert_error_contains(400, "load failed for model 'iris_classifier'");
    assert_eq!(
        server.infer_json("iris_classifier", &sample).await.status,
        200,
        "the old version still serves"
    );
    let rows = index(&server).await;
    let kept = row(&rows, "iris_classifier", "1").expect("listed");
    assert_eq!(kept["state"], "READY");
    assert!(
        kept["reason"]
            .as_str()
            .unwrap()
            .starts_with("reload failed: "),
        "{kept}"
    );
    server.shutdown().await.expect("clean shutdown");

    // Through polling: corrupt weights as version 2.
    let repo = Repo::new().copy_model("iris_classifier");
    let path = repo.path();
    let server = TestServer::start_with(config(&repo, ControlMode::Poll), Some(repo)).await;
    std::fs::create_dir_all(path.join("iris_classifier/.v2")).unwrap();
    std::fs::write(
        path.join("iris_classifier/.v2/model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"broken\": tru",
    )
    .unwrap();
    std::fs::rename(
        path.join("iris_classifier/.v2"),
        path.join("iris_classifier/2"),
    )
    .unwrap();
    eventually("the failed reload is reported", async || {
        let rows = index(&server).await;
        row(&rows, "iris_classifier", "1").is_some_and(|r| {
            r["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("reload failed")
        })
    })
    .await;
    let reply = server.infer_json("iris_classifier", &sample).await;
    assert_eq!(
        (reply.status, reply.json()["model_version"].clone()),
        (200, json!("1"))
    );
    server.shutdown().await.expect("clean shutdown");
}

/// Sends requests from `clients` tasks until `stop`; each checks that its response came from a
/// version at least as new as the one ready when it was sent. Returns the number of requests.
async fn traffic(
    server: Arc<TestServer>,
    clients: usize,
    ready: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (server, ready, stop) = (server.clone(), ready.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                // Bounded: at most 10,000 requests per client.
                while !stop.load(Ordering::SeqCst) && sent < 10_000 {
                    let floor = ready.load(Ordering::SeqCst);
                    let reply = server.infer_json("identity_fp32", &identity_request()).await;
                    assert_eq!(reply.status, 200, "request {sent} failed during reloads: {}", reply.text());
                    let version: u64 = reply.json()["model_version"].as_str().unwrap().parse().unwrap();
                    assert!(version >= floor, "served by version {version}, but {floor} was ready when the request was sent");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("client task");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_through_the_api_under_traffic_drop_nothing() {
    let repo = Repo::new();
    let path = repo.path();
    let mut cfg = config(&repo, ControlMode::Explicit);
    cfg.load_models = vec!["identity_fp32".into()];
    let server = Arc::new(TestServer::start_with(cfg, Some(repo)).await);
    let (ready, stop) = (
        Arc::new(AtomicU64::new(1)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = tokio::spawn(traffic(server.clone(), 8, ready.clone(), stop.clone()));
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "identity").unwrap();
    for round in 0..20 {
        let (version, _) =
            nereid_pipeline::publish_directory(&path, "identity_fp32", source.path()).unwrap();
        assert_eq!(version, round + 2);
        let reply = server
            .post("/v2/repository/models/identity_fp32/load", "")
            .await;
        assert_eq!(reply.status, 200, "reload {round}: {}", reply.text());
        ready.store(version, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("traffic");
    assert!(
        sent > 20,
        "traffic ran during the reloads ({sent} requests)"
    );
    println!("{sent} requests succeeded across 20 reloads");
    let stats = server.get("/v2/models/identity_fp32/stats").await.json();
    assert_eq!(stats["model_stats"][0]["version"], "21");
    Arc::into_inner(server)
        .expect("sole owner")
        .shutdown()
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_through_polling_under_traffic_drop_nothing() {
    let repo = Repo::new();
    let path = repo.path();
    let mut cfg = config(&repo, ControlMode::Poll);
    cfg.repository_poll = Duration::from_millis(30);
    let server = Arc::new(TestServer::start_with(cfg, Some(repo)).await);
    let (ready, stop) = (
        Arc::new(AtomicU64::new(1)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = tokio::spawn(traffic(server.clone(), 8, ready.clone(), stop.clone()));
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "identity").unwrap();
    for _ in 0..20 {
        let (version, _) =
            nereid_pipeline::publish_directory(&path, "identity_fp32", source.path()).unwrap();
        let expected = json!([version.to_string()]);
        eventually("the published version serves", async || {
            server.get("/v2/models/identity_fp32").await.json()["versions"] == expected
        })
        .await;
        ready.store(version, Ordering::SeqCst);
    }
    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("traffic");
    assert!(
        sent > 20,
        "traffic ran during the reloads ({sent} requests)"
    );
    println!("{sent} requests succeeded across 20 reloads");
    Arc::into_inner(server)
        .expect("sole owner")
        .shutdown()
        .await
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_apis_need_their_header() {
    let repo = Repo::new();
    let mut cfg = config(&repo, ControlMode::Explicit);
    cfg.load_models = vec!["*".into()];
    cfg.http_restricted = vec!["model-repository:admin-key=secret".parse().unwrap()];
    cfg.grpc_restricted = vec!["model-repository,statistics:admin-key=secret"
        .parse()
        .unwrap()];
    let server = TestServer::start_with(cfg, Some(repo)).await;

    let url = server.url("/v2/repository/models/identity_fp32/unload");
    server
        .request(reqwest::Method::POST, url.clone(), &[], Some(Vec::new()))
        .await
        .assert_error(403, "This API is restricted, expecting header 'admin-key'");
    server
        .request(
            reqwest::Method::POST,
            url.clone(),
            &[("admin-key", "wrong")],
            Some(Vec::new()),
        )
        .await
        .assert_error(403, "This API is restricted, expecting header 'admin-key'");
    server
        .post("/v2/repository/index", "")
        .await
        .assert_error(403, "This API is restricted, expecting header 'admin-key'");
    assert_eq!(
        server.get("/v2/models/identity_fp32/stats").await.status,
        200,
        "statistics are open over HTTP"
    );
    server.assert_serving().await;
    let reply = server
        .request(
            reqwest::Method::POST,
            server.url("/v2/repository/models/identity_fp32/load"),
            &[("admin-key", "secret")],
            Some(Vec::new()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    use nereid_protocol::inference::{ModelStatisticsRequest, RepositoryIndexRequest};
    let mut client = server.grpc_client().await;
    let status = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
    );
    assert!(client
        .model_statistics(ModelStatisticsRequest::default())
        .await
        .is_err());
    let mut request = tonic::Request::new(RepositoryIndexRequest::default());
    request
        .metadata_mut()
        .insert("triton-grpc-protocol-admin-key", "secret".parse().unwrap());
    assert!(client.repository_index(request).await.is_ok());
    server.shutdown().await.expect("clean shutdown");
}

/// A second version of `identity_fp32`: a copy of the first.
fn add_version_2(repo: &Path) {
    let from = repo.join("identity_fp32/1");
    let to = repo.join("identity_fp32/2");
    std::fs::create_dir_all(&to).expect("version folder");
    for entry in std::fs::read_dir(&from).expect("version 1") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_tells_restricted_explicit_servers_and_waits_on_polling_ones() {
    use nereid_pipeline::gate::notify_server;
    let notify = |url: String, header: Option<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            notify_server(&url, "identity_fp32", 2, header.as_ref())
        })
    };

    // Explicit mode with the repository API behind a header.
    let repo = Repo::new().copy_model("identity_fp32");
    let path = repo.path();
    let mut cfg = config(&repo, ControlMode::Explicit);
    cfg.load_models = vec!["*".into()];
    cfg.http_restricted = vec!["model-repository:admin-key=secret".parse().unwrap()];
    let server = TestServer::start_with(cfg, Some(repo)).await;
    add_version_2(&path);
    let err = notify(server.url(""), None)
        .await
        .expect("join")
        .expect_err("no header");
    assert!(err.contains("expecting header 'admin-key'"), "{err}");
    notify(
        server.url(""),
        Some(("admin-key".to_string(), "secret".to_string())),
    )
    .await
    .expect("join")
    .expect("loaded with the header");
    assert_eq!(
        server
            .get("/v2/models/identity_fp32/versions/2/ready")
            .await
            .status,
        200
    );
    server.shutdown().await.expect("clean shutdown");

    // Poll mode refuses the load API: the publisher waits until the version is ready instead.
    let repo = Repo::new().copy_model("identity_fp32");
    let path = repo.path();
    let server = TestServer::start_with(config(&repo, ControlMode::Poll), Some(repo)).await;
    assert_eq!(
        server
            .get("/v2/models/identity_fp32/versions/2/ready")
            .await
            .status,
        400
    );
    add_version_2(&path);
    notify(server.url(""), None)
        .await
        .expect("join")
        .expect("ready once the poller loaded it");
    assert_eq!(
        server
            .get("/v2/models/identity_fp32/versions/2/ready")
            .await
            .status,
        200
    );
    server.shutdown().await.expect("clean shutdown");
}

/// Publishing into a remote repository (`file://` here, through the same object-store code as
/// S3's) that a polling server follows: every published version is served with traffic running
/// and no request fails, and a version whose upload has not finished (its folder still holds
/// the publisher's marker) is not loaded, even by the polls that load a new model next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_publishes_under_traffic_never_expose_a_half_uploaded_version() {
    use nereid_pipeline::repository::{ModelRepository, PUBLISHING_MARKER};
    let repo = Repo::new();
    let root = repo.path();
    let url = format!("file://{}", root.display());
    let cfg = ServeConfig {
        model_control_mode: ControlMode::Poll,
        repository_poll: Duration::from_millis(30),
        ..ServeConfig::for_tests(&url)
    };
    let server = Arc::new(TestServer::start_with(cfg, Some(repo)).await);
    let (ready, stop) = (
        Arc::new(AtomicU64::new(1)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = tokio::spawn(traffic(server.clone(), 4, ready.clone(), stop.clone()));
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("README"), "identity").unwrap();
    let publish = |model: &'static str, source: std::path::PathBuf| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                ModelRepository::open(&url)
                    .and_then(|r| r.publish_directory(model, &source))
                    .expect("remote publish")
            })
            .await
            .expect("publisher thread")
        }
    };
    let served = async |model: &str| {
        server.get(&format!("/v2/models/{model}")).await.json()["versions"].clone()
    };

    let mut latest = 1;
    for _ in 0..5 {
        let (version, at) = publish("identity_fp32", source.path().to_path_buf()).await;
        assert_eq!(at, format!("{url}/identity_fp32/{version}"));
        let expected = json!([version.to_string()]);
        eventually("the published version serves", async || {
            served("identity_fp32").await == expected
        })
        .await;
        ready.store(version, Ordering::SeqCst);
        latest = version;
    }

    // A publisher stalled halfway through the next version.
    let stalled = root.join("identity_fp32").join((latest + 1).to_string());
    std::fs::create_dir_all(&stalled).unwrap();
    std::fs::write(stalled.join(PUBLISHING_MARKER), "{}").unwrap();
    std::fs::write(stalled.join("README"), "ident").unwrap();
    // Meanwhile a new model's first version, with its config, lands completely.
    let bytes_source = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(MODEL_REPO).join("identity_bytes/config.pbtxt"),
        bytes_source.path().join("config.pbtxt"),
    )
    .unwrap();
    std::fs::write(bytes_source.path().join("README"), "identity").unwrap();
    let (bytes_version, _) = publish("identity_bytes", bytes_source.path().to_path_buf()).await;
    assert_eq!(bytes_version, 1);
    eventually("the new model serves", async || {
        served("identity_bytes").await == json!(["1"])
    })
    .await;
    assert_eq!(
        served("identity_fp32").await,
        json!([latest.to_string()]),
        "a version folder under upload was loaded"
    );
    // The upload completes.
    std::fs::write(stalled.join("README"), "identity").unwrap();
    std::fs::remove_file(stalled.join(PUBLISHING_MARKER)).unwrap();
    let expected = json!([(latest + 1).to_string()]);
    eventually("the completed version serves", async || {
        served("identity_fp32").await == expected
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let sent = load.await.expect("traffic");
    assert!(
        sent > 5,
        "traffic ran during the publishes ({sent} requests)"
    );
    Arc::into_inner(server)
        .expect("sole owner")
        .shutdown()
        .await
        .expect("clean shutdown");
}
