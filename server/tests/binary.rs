//! The `nereid` binary as users run it, without Python: `serve` configured only by its
//! `NEREID_*` environment variables (ports, port file, body limit, control mode, restricted
//! APIs), SIGTERM with requests in flight, and the repository, feature-store and pipeline
//! commands with their exit codes and messages, bad arguments included.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{copy_dir, wait_for, ChildGuard, ServedBinary, MODEL_REPO};
use serde_json::{json, Value};

const NEREID: &str = env!("CARGO_BIN_EXE_nereid");

/// `nereid ARGS` in `dir`: (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    common::nereid_output(args, &[], Some(dir))
}

/// The ports a server wrote to `file`, once it has.
async fn ports(file: &Path) -> Value {
    wait_for("the port file", Duration::from_secs(60), async || {
        serde_json::from_slice::<Value>(&std::fs::read(file).ok()?).ok()
    })
    .await
}

/// An HTTP client, once the server on `http` (a port on loopback) answers ready.
async fn ready_client(http: u64) -> reqwest::Client {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    wait_for("ready", Duration::from_secs(60), async || {
        let r = client
            .get(format!("http://127.0.0.1:{http}/v2/health/ready"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    client
}

fn identity_request(values: usize) -> Value {
    json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, values],
                       "data": vec![1.0; values]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_every_setting_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    for model in ["identity_fp32", "identity_bytes"] {
        copy_dir(&Path::new(MODEL_REPO).join(model), &repo.join(model));
    }
    let port_file = dir.path().join("ports.json");
    let child = Command::new(NEREID)
        .arg("serve")
        .env("NEREID_MODEL_REPOSITORY", &repo)
        .env("NEREID_HOST", "127.0.0.1")
        .env("NEREID_HTTP_PORT", "0")
        .env("NEREID_GRPC_PORT", "0")
        .env("NEREID_METRICS_PORT", "0")
        .env("NEREID_PORT_FILE", &port_file)
        .env("NEREID_HTTP_MAX_INPUT_SIZE", "2048")
        .env("NEREID_MODEL_CONTROL_MODE", "explicit")
        .env("NEREID_LOAD_MODEL", "identity_fp32")
        .env(
            "NEREID_HTTP_RESTRICTED_API",
            "model-repository:admin-key=s3cret",
        )
        .env("NEREID_PREDICTION_LOG_DIR", dir.path().join("log"))
        .env("NEREID_TRIGGER_RECORD_DIR", dir.path().join("record"))
        .env("NEREID_LOG", "warn")
        .env("NEREID_HTTP_HEADER_TIMEOUT_SECS", "1")
        .env("NEREID_GRPC_HANDSHAKE_TIMEOUT_SECS", "1")
        .env("NEREID_GRPC_KEEPALIVE_TIME", "500")
        .env("NEREID_GRPC_KEEPALIVE_TIMEOUT", "500")
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let _server = ChildGuard(child);
    let doc = ports(&port_file).await;
    let port = |name: &str| doc[name].as_u64().filter(|p| *p > 0).expect("a bound port");
    let (http, grpc, metrics) = (port("http"), port("grpc"), port("metrics"));
    let client = ready_client(http).await;
    let url = |path: &str| format!("http://127.0.0.1:{http}{path}");

    // Explicit control: only the model named in NEREID_LOAD_MODEL is loaded (the index is
    // part of the restricted repository API).
    let index: Value = client
        .post(url("/v2/repository/index"))
        .header("admin-key", "s3cret")
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    let state = |name: &str| {
        index
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .map(|r| r["state"].clone())
    };
    assert_eq!(state("identity_fp32"), Some(json!("READY")), "{index}");
    assert_eq!(
        state("identity_bytes"),
        Some(json!("")),
        "not loaded: {index}"
    );

    // The body limit: 16 values fit in 2048 bytes of JSON, 1,000 do not.
    let small = client
        .post(url("/v2/models/identity_fp32/infer"))
        .json(&identity_request(16))
        .send()
        .await
        .expect("infer");
    assert_eq!(small.status(), 200);
    let large = client
        .post(url("/v2/models/identity_fp32/infer"))
        .json(
            &json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                                  "data": vec![1.0; 16]}], "padding": "x".repeat(4096)}),
        )
        .send()
        .await
        .expect("infer");
    assert_eq!(large.status(), 400);
    let body: Value = large.json().await.expect("json");
    assert!(body["error"].is_string(), "{body}");

    // The restricted repository API.
    let load = |header: Option<&'static str>| {
        let mut request = client.post(url("/v2/repository/models/identity_bytes/load"));
        if let Some(value) = header {
            request = request.header("admin-key", value);
        }
        request.send()
    };
    assert_eq!(load(None).await.expect("load").status(), 403);
    assert_eq!(load(Some("wrong")).await.expect("load").status(), 403);
    assert_eq!(load(Some("s3cret")).await.expect("load").status(), 200);

    // The other two listeners answer on their ports.
    let text = client
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("nv_inference_request_success"), "{text}");
    let mut grpc_client = nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await
    .expect("gRPC connects");
    let live = grpc_client
        .server_live(nereid_protocol::inference::ServerLiveRequest {})
        .await
        .expect("live")
        .into_inner();
    assert!(live.live);

    // The connection timeouts: a connection that sends nothing is closed after a second on both
    // front ends; one that opens HTTP/2 and then ignores pings, after the keep-alive time and
    // timeout.
    for (port, opening) in [
        (http, &b""[..]),
        (grpc, &b""[..]),
        (
            grpc,
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"[..],
        ),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut idle = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect");
        idle.write_all(opening).await.expect("write");
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut sink))
            .await
            .unwrap_or_else(|_| panic!("port {port} kept an idle connection open"))
            .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_operates_a_protected_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    for model in ["identity_fp32", "identity_bytes"] {
        copy_dir(&Path::new(MODEL_REPO).join(model), &repo.join(model));
    }
    let server = ServedBinary::start(
        dir.path(),
        &[
            OsStr::new("--model-repository"),
            repo.as_os_str(),
            OsStr::new("--model-control-mode"),
            OsStr::new("explicit"),
            OsStr::new("--load-model"),
            OsStr::new("identity_fp32"),
            OsStr::new("--http-restricted-api"),
            OsStr::new("model-repository:admin-key=s3cret"),
            OsStr::new("--grpc-restricted-api"),
            OsStr::new("model-repository:admin-key=s3cret"),
        ],
        &[],
    )
    .await;
    let http = format!("http://127.0.0.1:{}", server.http);
    let grpc = format!("http://127.0.0.1:{}", server.grpc);
    let here = dir.path();
    wait_for("ready", Duration::from_secs(60), async || {
        (run(here, &["health", "--url", &http]).0 == 0).then_some(())
    })
    .await;
    let (code, out, _) = run(here, &["health", "--url", &http]);
    assert_eq!((code, out.as_str()), (0, "live: true\nready: true\n"));

    // identity_bytes is not loaded: its health says so and exits 1.
    let (code, out, err) = run(
        here,
        &["health", "--url", &http, "--model", "identity_bytes"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, "model identity_bytes ready: false\n");
    assert!(err.contains("model 'identity_bytes' is not ready"), "{err}");

    // The repository API needs the header, over HTTP and gRPC alike.
    let (code, _, err) = run(here, &["repo", "index", "--url", &http]);
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = run(
        here,
        &["repo", "index", "--protocol", "grpc", "--url", &grpc],
    );
    assert_eq!(code, 1);
    assert!(err.contains("triton-grpc-protocol-admin-key"), "{err}");
    let http_key = ["--url", &http, "-H", "admin-key:s3cret"];
    let grpc_key = [
        "--protocol",
        "grpc",
        "--url",
        &grpc,
        "--header",
        "triton-grpc-protocol-admin-key: s3cret",
    ];
    let with = |command: &[&str], key: &[&str]| {
        let args: Vec<&str> = command.iter().chain(key).copied().collect();
        let (code, out, err) = run(here, &args);
        assert_eq!(code, 0, "nereid {args:?}: {out}{err}");
        out
    };
    let index = with(&["repo", "index"], &http_key);
    assert!(
        index
            .lines()
            .any(|l| l.starts_with("identity_fp32") && l.contains("READY")),
        "{index}"
    );
    // The logging extension changes the running process's filter: this server started with
    // NEREID_LOG=warn, so its "loaded" info line for identity_fp32 was not written; with
    // log_info switched on, loading identity_bytes is.
    let log = || std::fs::read_to_string(here.join("nereid.log")).unwrap_or_default();
    assert!(!log().contains("loaded"), "{}", log());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let settings: Value = client
        .post(format!("{http}/v2/logging"))
        .body(r#"{"log_info": true}"#)
        .send()
        .await
        .expect("logging")
        .json()
        .await
        .expect("JSON");
    assert_eq!(settings["log_info"], true, "{settings}");
    assert_eq!(
        with(&["repo", "load", "identity_bytes"], &grpc_key),
        "loaded identity_bytes\n"
    );
    let text = log();
    assert!(
        text.lines()
            .any(|l| l.contains("loaded") && l.contains("identity_bytes")),
        "{text}"
    );
    assert!(!text.contains("identity_fp32"), "{text}");
    let (code, _, _) = run(
        here,
        &["health", "--url", &http, "--model", "identity_bytes"],
    );
    assert_eq!(code, 0);
    let rows: Value =
        serde_json::from_str(&with(&["repo", "index", "--json", "--ready"], &grpc_key))
            .expect("JSON rows");
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    assert_eq!(
        with(&["repo", "unload", "identity_bytes"], &http_key),
        "unloaded identity_bytes\n"
    );
    let index = with(&["repo", "index"], &grpc_key);
    assert!(
        index
            .lines()
            .any(|l| l.starts_with("identity_bytes") && l.contains("UNAVAILABLE")),
        "{index}"
    );

    // Statistics (not restricted here) as Triton's JSON, over both protocols.
    for key in [
        &["--url", &http][..],
        &["--protocol", "grpc", "--url", &grpc][..],
    ] {
        let stats: Value =
            serde_json::from_str(&with(&["stats", "identity_fp32"], key)).expect("statistics JSON");
        assert_eq!(stats["model_stats"][0]["name"], "identity_fp32", "{stats}");
    }
    // A malformed header is refused before anything is sent.
    let (code, _, err) = run(here, &["repo", "index", "--url", &http, "-H", "no-colon"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not NAME:VALUE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_ends_addresses_and_logging_follow_tritons_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    for model in ["identity_fp32", "identity_bytes"] {
        copy_dir(&Path::new(MODEL_REPO).join(model), &repo.join(model));
    }
    let port_file = dir.path().join("ports.json");
    let log = dir.path().join("nereid.log");
    let child = Command::new(NEREID)
        .args(["serve", "--host", "0.0.0.0", "--http-address", "127.0.0.1"])
        .args([
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .args(["--allow-grpc", "false", "--allow-metrics", "false"])
        .args(["--access-log", "--log-format", "json", "--log-verbose", "1"])
        .args(["--model-load-thread-count", "2"])
        .arg("--model-repository")
        .arg(&repo)
        .arg("--port-file")
        .arg(&port_file)
        .arg("--prediction-log-dir")
        .arg(dir.path().join("log"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("serve");
    let _server = ChildGuard(child);
    let doc = ports(&port_file).await;
    assert!(doc["grpc"].is_null() && doc["metrics"].is_null(), "{doc}");
    let http = doc["http"].as_u64().expect("an HTTP port");
    let client = ready_client(http).await;
    let url = |path: &str| format!("http://127.0.0.1:{http}{path}");
    // Both models loaded (two at a time); --log-verbose 1 is the logging extension's level 1.
    let index: Value = client
        .post(url("/v2/repository/index"))
        .send()
        .await
        .expect("index")
        .json()
        .await
        .expect("json");
    assert_eq!(
        index
            .as_array()
            .map(|rows| rows.iter().filter(|r| r["state"] == "READY").count()),
        Some(2),
        "{index}"
    );
    let logging: Value = client
        .get(url("/v2/logging"))
        .send()
        .await
        .expect("logging")
        .json()
        .await
        .expect("json");
    assert_eq!(logging["log_verbose_level"], 1, "{logging}");
    assert_eq!(logging["log_format"], "json", "{logging}");
    // Every log line is a JSON object, and the access log names each request.
    let text = wait_for("the access log line", Duration::from_secs(10), async || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("/v2/repository/index").then_some(text)
    })
    .await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["target"] == "nereid::access" && l["path"] == "/v2/repository/index")
        .unwrap_or_else(|| panic!("no access line in {text}"));
    assert_eq!(access["method"], "POST");
    assert_eq!(access["status"], 200);
    assert_eq!(access["protocol"], "http");

    // Nothing to serve inference with is refused.
    let (code, _, err) = run(
        dir.path(),
        &[
            "serve",
            "--allow-http",
            "false",
            "--allow-grpc",
            "false",
            "--model-repository",
            repo.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("nothing would serve inference"), "{err}");
    // TLS without its files is refused, naming the flag (tests/tls.rs serves over TLS).
    let (code, _, err) = run(
        dir.path(),
        &[
            "serve",
            "--grpc-use-ssl",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--model-repository",
            repo.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--grpc-server-cert is required with TLS"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    // Requests wait in the queue for up to 1.5 s to form a batch of 8: in flight at SIGTERM.
    std::fs::create_dir_all(repo.join("slow/1")).expect("mkdir");
    std::fs::write(repo.join("slow/1/README"), "identity").expect("write");
    std::fs::write(
        repo.join("slow/config.pbtxt"),
        "name: \"slow\"\nbackend: \"identity\"\nmax_batch_size: 8\n\
         input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 1 ] } ]\n\
         output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 1 ] } ]\n\
         dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 1500000 }\n",
    )
    .expect("config");
    let mut server = ServedBinary::start(
        dir.path(),
        &[OsStr::new("--model-repository"), repo.as_os_str()],
        &[],
    )
    .await;
    let (http, metrics) = (server.http, server.metrics);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let infer_url = format!("http://127.0.0.1:{http}/v2/models/slow/infer");
    wait_for("ready", Duration::from_secs(60), async || {
        let r = client
            .get(format!("http://127.0.0.1:{http}/v2/health/ready"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let (client, url) = (client.clone(), infer_url.clone());
            tokio::spawn(async move {
                let body = json!({"inputs": [{"name": "INPUT0", "datatype": "FP32",
                                              "shape": [1, 1], "data": [i as f32]}]});
                let reply = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("in-flight request");
                (
                    reply.status().as_u16(),
                    reply.json::<Value>().await.expect("json"),
                )
            })
        })
        .collect();
    // Signal only once the three wait in the model's queue.
    wait_for(
        "three queued requests",
        Duration::from_secs(30),
        async || {
            let text = client
                .get(format!("http://127.0.0.1:{metrics}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .any(|l| l.starts_with("nv_inference_pending_request_count{") && l.ends_with(" 3"))
                .then_some(())
        },
    )
    .await;
    let signalled = Command::new("kill")
        .args(["-TERM", &server.child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    for (i, request) in in_flight.into_iter().enumerate() {
        let (status, body) = request.await.expect("task");
        assert_eq!(status, 200, "request {i} in flight at SIGTERM: {body}");
        assert_eq!(body["outputs"][0]["data"], json!([i as f32]));
    }
    let status = tokio::task::spawn_blocking(move || server.child.0.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    // Gone: a new request finds nobody listening.
    let after = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(&infer_url)
        .json(&identity_request(1))
        .send()
        .await;
    assert!(
        after.is_err_and(|e| e.is_connect()),
        "a request after exit was answered"
    );
}

#[test]
fn repository_feature_store_and_pipeline_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path();
    let repo = here.join("repo");
    copy_dir(
        &Path::new(MODEL_REPO).join("identity_fp32"),
        &repo.join("identity_fp32"),
    );

    let (code, out, err) = run(here, &["repo", "validate", "repo"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("identity_fp32"), "{out}");
    std::fs::create_dir_all(here.join("v2")).expect("mkdir");
    std::fs::write(here.join("v2/README"), "identity").expect("write");
    let (code, out, err) = run(
        here,
        &[
            "repo",
            "publish",
            "--repository",
            "repo",
            "--model",
            "identity_fp32",
            "--from",
            "v2",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("published identity_fp32 version 2 at "),
        "{out}"
    );
    // A broken config: validate says which model and why, and fails.
    copy_dir(
        &Path::new(MODEL_REPO).join("identity_fp32"),
        &repo.join("broken"),
    );
    std::fs::write(
        repo.join("broken/config.pbtxt"),
        "name: \"broken\"\nmax_batch_size: -1\n",
    )
    .expect("write");
    let (code, out, err) = run(here, &["repo", "validate", "repo"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("broken"), "{out}{err}");

    std::fs::write(here.join("a.csv"), "id,x\n1,2.5\n2,3.5\n").expect("csv");
    std::fs::write(here.join("b.csv"), "id,x\n1,9.5\n").expect("csv");
    for file in ["a.csv", "b.csv"] {
        let (code, out, err) = run(
            here,
            &[
                "features",
                "ingest",
                file,
                "--name",
                "customers",
                "--store",
                "fs",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = run(
        here,
        &[
            "features",
            "diff",
            "customers@1",
            "customers@2",
            "--store",
            "fs",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rows: 2 -> 1"), "{out}");
    let (code, out, err) = run(here, &["features", "verify", "--store", "fs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 dataset version(s) verified"), "{out}");
    // Tampering with a stored file is caught, and fails the command.
    let objects = here.join("fs/objects");
    let first = std::fs::read_dir(&objects)
        .expect("objects")
        .next()
        .expect("one")
        .expect("entry");
    std::fs::write(first.path().join("data.parquet"), "not parquet any more").expect("tamper");
    let (code, out, err) = run(here, &["features", "verify", "--store", "fs"]);
    assert_ne!(code, 0, "{out}{err}");

    let (code, out, err) = run(here, &["pipeline", "list", "--runs-dir", "runs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no pipeline runs"), "{out}");

    // Bad arguments: clap's usage errors (exit 2), naming what is wrong.
    let (code, _, err) = run(here, &["serve", "--http-port", "eighty"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'eighty'"), "{err}");
    let (code, _, err) = run(here, &["frobnicate"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unrecognized subcommand 'frobnicate'"),
        "{err}"
    );
    let (code, _, err) = run(here, &["serve", "--model-control-mode", "sometimes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sometimes"), "{err}");
    // A repository that does not exist: a plain error, exit 1.
    let (code, _, err) = run(
        here,
        &[
            "serve",
            "--model-repository",
            "missing",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing"), "{err}");
}
