//! Every client call against a real Nereid server (in-process, ephemeral ports), over both
//! protocols, including how the server's errors reach the caller.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use nereid_client::cli::{run_infer_to, ConnectArgs, InferArgs};
use nereid_client::{
    npy, Client, ClientError, ClientOptions, DataType, InferRequest, Protocol, RequestedOutput,
    Tensor,
};
use nereid_protocol::encode_bytes_elements;
use tokio::sync::oneshot;

struct TestServer {
    http: String,
    grpc: String,
    _stop: oneshot::Sender<()>,
    _repo: tempfile::TempDir,
}

impl TestServer {
    fn url(&self, protocol: Protocol) -> &str {
        match protocol {
            Protocol::Http => &self.http,
            Protocol::Grpc => &self.grpc,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A server over a copy of the repository's two identity models, so that other models being
/// added to `model-repo/` cannot change what these tests see.
async fn start_server() -> TestServer {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model-repo");
    let repo = tempfile::tempdir().unwrap();
    for model in ["identity_fp32", "identity_bytes"] {
        copy_dir(&source.join(model), &repo.path().join(model));
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let server = nereid_server::start(
        nereid_server::ServeConfig::for_tests(repo.path()),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("server starts");
    TestServer {
        http: format!("http://{}", server.http),
        grpc: format!("http://{}", server.grpc),
        _stop: stop,
        _repo: repo,
    }
}

async fn clients(server: &TestServer) -> Vec<Client> {
    let mut out = Vec::new();
    for protocol in [Protocol::Http, Protocol::Grpc] {
        out.push(
            Client::connect(server.url(protocol), protocol, ClientOptions::default())
                .await
                .unwrap(),
        );
    }
    // HTTP with JSON tensors as well.
    out.push(
        Client::connect(
            &server.http,
            Protocol::Http,
            ClientOptions {
                http_binary_inputs: false,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    out
}

fn fp32_request(batch: usize, binary_outputs: bool) -> (InferRequest, Vec<f32>) {
    let values: Vec<f32> = (0..batch * 16).map(|i| i as f32 * 0.5 - 3.0).collect();
    let request = InferRequest {
        id: "req-1".into(),
        inputs: vec![Tensor::from_f32("INPUT0", vec![batch as i64, 16], &values)],
        binary_data_output: binary_outputs,
        ..Default::default()
    };
    (request, values)
}

#[tokio::test]
async fn health_and_metadata() {
    let server = start_server().await;
    for client in clients(&server).await {
        let p = client.protocol();
        assert!(client.server_live().await.unwrap(), "{p}");
        assert!(client.server_ready().await.unwrap(), "{p}");
        assert!(
            client.model_ready("identity_fp32", "").await.unwrap(),
            "{p}"
        );
        assert!(
            client.model_ready("identity_fp32", "1").await.unwrap(),
            "{p}"
        );
        assert!(
            !client.model_ready("identity_fp32", "9").await.unwrap(),
            "{p}"
        );
        assert!(
            !client.model_ready("no_such_model", "").await.unwrap(),
            "{p}"
        );

        let server_md = client.server_metadata().await.unwrap();
        assert_eq!(server_md.name, "nereid", "{p}");
        assert!(
            server_md
                .extensions
                .iter()
                .any(|e| e == "binary_tensor_data"),
            "{p}: {:?}",
            server_md.extensions
        );

        let md = client.model_metadata("identity_fp32", "").await.unwrap();
        assert_eq!(md.name, "identity_fp32", "{p}");
        assert_eq!(md.versions, vec!["1".to_string()], "{p}");
        assert_eq!(md.inputs.len(), 1, "{p}");
        assert_eq!(md.inputs[0].name, "INPUT0", "{p}");
        assert_eq!(md.inputs[0].datatype, "FP32", "{p}");
        assert_eq!(md.inputs[0].shape, vec![-1, 16], "{p}");
        assert_eq!(md.outputs[0].name, "OUTPUT0", "{p}");

        let config = client.model_config("identity_fp32", "1").await.unwrap();
        assert_eq!(config.name, "identity_fp32", "{p}");
        assert_eq!(config.backend, "identity", "{p}");
        assert_eq!(config.max_batch_size, 8, "{p}");
        assert_eq!(config.input[0].dims, vec![16], "{p}");
    }
}

#[tokio::test]
async fn infer_over_every_encoding() {
    let server = start_server().await;
    for client in clients(&server).await {
        for binary_outputs in [false, true] {
            let (request, values) = fp32_request(3, binary_outputs);
            let response = client.infer("identity_fp32", "", &request).await.unwrap();
            assert_eq!(response.model_name, "identity_fp32");
            assert_eq!(response.model_version, "1");
            assert_eq!(response.id, "req-1");
            assert_eq!(response.outputs.len(), 1);
            let out = &response.outputs[0];
            assert_eq!(
                (out.name.as_str(), out.datatype, out.shape.clone()),
                ("OUTPUT0", DataType::Fp32, vec![3, 16])
            );
            assert_eq!(out.to_vec::<f32>(), values);
        }

        // Requested outputs, a prepared request sent twice, and BYTES.
        let (mut request, values) = fp32_request(1, false);
        request.outputs.push(RequestedOutput {
            name: "OUTPUT0".into(),
            binary: true,
            ..Default::default()
        });
        let prepared = client
            .prepare_infer("identity_fp32", "1", &request)
            .unwrap();
        for _ in 0..2 {
            let response = client.infer_prepared(&prepared).await.unwrap();
            assert_eq!(response.outputs[0].to_vec::<f32>(), values);
        }
        let strings = Tensor::new(
            "INPUT0",
            DataType::Bytes,
            vec![1, 3],
            encode_bytes_elements(["a", "", "héllo"]),
        );
        let request = InferRequest {
            inputs: vec![strings.clone()],
            ..Default::default()
        };
        let response = client.infer("identity_bytes", "", &request).await.unwrap();
        assert_eq!(response.outputs[0].data, strings.data);
        assert_eq!(response.outputs[0].shape, vec![1, 3]);
    }
}

#[tokio::test]
async fn classification_extension() {
    let server = start_server().await;
    for client in clients(&server).await {
        let (mut request, _) = fp32_request(1, false);
        request.outputs.push(RequestedOutput {
            name: "OUTPUT0".into(),
            classification: Some(2),
            binary: false,
            ..Default::default()
        });
        let response = client.infer("identity_fp32", "", &request).await.unwrap();
        let out = &response.outputs[0];
        assert_eq!(out.datatype, DataType::Bytes, "{}", client.protocol());
        assert_eq!(out.shape, vec![1, 2]);
        let classes: Vec<String> = nereid_protocol::bytes_elements(&out.data)
            .map(|e| String::from_utf8(e.unwrap().to_vec()).unwrap())
            .collect();
        // The largest of 0.5*i - 3 is at index 15 (4.5), then 14 (4.0).
        assert_eq!(classes, vec!["4.500000:15", "4.000000:14"]);
    }
}

#[tokio::test]
async fn server_errors_reach_the_caller_verbatim() {
    let server = start_server().await;
    let http = Client::connect(&server.http, Protocol::Http, ClientOptions::default())
        .await
        .unwrap();
    let grpc = Client::connect(&server.grpc, Protocol::Grpc, ClientOptions::default())
        .await
        .unwrap();

    // Unknown model: 404 / NOT_FOUND, the same message on both.
    let h = http.model_metadata("no_such_model", "").await.unwrap_err();
    let g = grpc.model_metadata("no_such_model", "").await.unwrap_err();
    let ClientError::Http {
        status: 404,
        message,
    } = &h
    else {
        panic!("{h:?}")
    };
    assert!(message.contains("no_such_model"), "{message}");
    assert_eq!(
        g,
        ClientError::Grpc {
            code: tonic::Code::NotFound,
            message: message.clone()
        }
    );
    assert_eq!(h.kind(), "http_404");
    assert_eq!(g.kind(), "grpc_not_found");
    for client in [&http, &grpc] {
        assert!(client.model_config("no_such_model", "").await.is_err());
        assert!(client.model_statistics("no_such_model", "").await.is_err());
        assert!(client
            .infer("no_such_model", "", &fp32_request(1, false).0)
            .await
            .is_err());
    }

    // A request the model refuses: 400 / INVALID_ARGUMENT, the same message.
    let bad = InferRequest {
        inputs: vec![Tensor::from_f32("INPUT0", vec![1, 15], &[0.0; 15])],
        ..Default::default()
    };
    let h = http.infer("identity_fp32", "", &bad).await.unwrap_err();
    let g = grpc.infer("identity_fp32", "", &bad).await.unwrap_err();
    let ClientError::Http {
        status: 400,
        message,
    } = &h
    else {
        panic!("{h:?}")
    };
    assert!(message.contains("INPUT0"), "{message}");
    assert_eq!(
        g,
        ClientError::Grpc {
            code: tonic::Code::InvalidArgument,
            message: message.clone()
        }
    );
    assert_eq!(h.to_string(), format!("HTTP 400: {message}"));

    // A request the client refuses before sending: data that does not fit the shape.
    let inconsistent = InferRequest {
        inputs: vec![Tensor::new(
            "INPUT0",
            DataType::Fp32,
            vec![1, 16],
            Bytes::from_static(&[0; 8]),
        )],
        ..Default::default()
    };
    for client in [&http, &grpc] {
        let err = client
            .infer("identity_fp32", "", &inconsistent)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err:?}");
    }
}

#[tokio::test]
async fn statistics_count_what_was_sent() {
    let server = start_server().await;
    for (i, client) in clients(&server).await.into_iter().enumerate() {
        let before = client.model_statistics("identity_fp32", "").await.unwrap();
        let success = |s: &nereid_client::ModelStatisticsResponse| {
            s.model_stats[0]
                .inference_stats
                .as_ref()
                .and_then(|x| x.success.as_ref())
                .map_or(0, |d| d.count)
        };
        assert_eq!(before.model_stats.len(), 1);
        assert_eq!(before.model_stats[0].name, "identity_fp32");
        assert_eq!(before.model_stats[0].version, "1");
        assert_eq!(success(&before), 5 * i as u64);
        for _ in 0..5 {
            client
                .infer("identity_fp32", "", &fp32_request(2, true).0)
                .await
                .unwrap();
        }
        let after = client.model_statistics("identity_fp32", "1").await.unwrap();
        assert_eq!(success(&after), 5 * (i as u64 + 1));
        assert_eq!(
            after.model_stats[0].inference_count - before.model_stats[0].inference_count,
            10,
            "batch items are counted"
        );
        let all = client.model_statistics("", "").await.unwrap();
        let mut names: Vec<&str> = all.model_stats.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["identity_bytes", "identity_fp32"]);
    }
}

#[tokio::test]
async fn repository_api() {
    let server = start_server().await;
    for client in clients(&server).await {
        let p = client.protocol();
        for ready_only in [false, true] {
            let index = client.repository_index(ready_only).await.unwrap();
            let mut rows: Vec<(&str, &str, &str)> = index
                .models
                .iter()
                .map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str()))
                .collect();
            rows.sort();
            assert_eq!(
                rows,
                vec![
                    ("identity_bytes", "1", "READY"),
                    ("identity_fp32", "1", "READY")
                ],
                "{p}"
            );
        }
        // The test server runs without explicit model control, so the server refuses load and
        // unload; its refusal must arrive with Triton's status and text.
        for result in [
            client.load_model("identity_fp32", None).await,
            client
                .load_model("identity_fp32", Some(r#"{"max_batch_size": 4}"#))
                .await,
            client.unload_model("identity_fp32").await,
        ] {
            let err = result.unwrap_err();
            match (&err, p) {
                (
                    ClientError::Http {
                        status: 503,
                        message,
                    },
                    Protocol::Http,
                )
                | (
                    ClientError::Grpc {
                        code: tonic::Code::Unavailable,
                        message,
                    },
                    Protocol::Grpc,
                ) => assert!(
                    message.contains("explicit model load / unload is not allowed"),
                    "{message}"
                ),
                _ => panic!("{p}: {err:?}"),
            }
        }
        assert!(client.model_ready("identity_fp32", "").await.unwrap());
    }
}

#[tokio::test]
async fn transport_failures_and_timeouts_are_not_server_errors() {
    // A port nobody listens on: bind, note the port, close.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let options = ClientOptions {
        timeout: Some(Duration::from_millis(300)),
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let http = Client::connect(&format!("http://{closed}"), Protocol::Http, options.clone())
        .await
        .unwrap();
    let err = http.server_live().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
    assert_eq!(err.kind(), "transport");
    let err = Client::connect(&closed.to_string(), Protocol::Grpc, options.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");

    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let http = Client::connect(
        &format!("http://{address}"),
        Protocol::Http,
        options.clone(),
    )
    .await
    .unwrap();
    let err = http.server_ready().await.unwrap_err();
    assert_eq!(err, ClientError::Timeout(Duration::from_millis(300)));
    holder.abort();

    assert!(matches!(
        Client::connect("https://127.0.0.1:1", Protocol::Http, options).await,
        Err(ClientError::InvalidArgument(_))
    ));
}

fn infer_args(url: &str, protocol: Protocol, model: &str) -> InferArgs {
    InferArgs {
        model: model.into(),
        server: ConnectArgs::new(url, protocol),
        model_version: String::new(),
        inputs: Vec::new(),
        request: None,
        shapes: Vec::new(),
        outputs: Vec::new(),
        classification: None,
        json: false,
        save_dir: None,
    }
}

#[tokio::test]
async fn cli_infer_prints_and_saves() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let input = dir.path().join("in.npy");
    std::fs::write(
        &input,
        npy::write_npy(&Tensor::from_f32("x", vec![1, 16], &values)).unwrap(),
    )
    .unwrap();

    for protocol in [Protocol::Http, Protocol::Grpc] {
        for json in [false, true] {
            // Inline JSON, printed.
            let mut args = infer_args(server.url(protocol), protocol, "identity_fp32");
            args.inputs = vec![format!("INPUT0={values:?}")];
            args.json = json;
            let mut out = Vec::new();
            run_infer_to(args, &mut out).await.unwrap();
            let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(printed["model_name"], "identity_fp32");
            assert_eq!(printed["outputs"][0]["shape"], serde_json::json!([1, 16]));
            assert_eq!(printed["outputs"][0]["data"][15], serde_json::json!(15.0));

            // From .npy, saved as .npy.
            let mut args = infer_args(server.url(protocol), protocol, "identity_fp32");
            args.inputs = vec![format!("INPUT0=@{}", input.display())];
            args.outputs = vec!["OUTPUT0".into()];
            args.json = json;
            let saved = dir.path().join(format!("out-{protocol}-{json}"));
            args.save_dir = Some(saved.clone());
            let mut out = Vec::new();
            run_infer_to(args, &mut out).await.unwrap();
            assert!(String::from_utf8(out)
                .unwrap()
                .starts_with("OUTPUT0 FP32 [1,16] -> "));
            let back =
                npy::read_npy(&std::fs::read(saved.join("OUTPUT0.npy")).unwrap(), "o").unwrap();
            assert_eq!(back.to_vec::<f32>(), values);
        }
    }

    // A whole request body, and a server error surfacing with its message.
    let body = dir.path().join("request.json");
    std::fs::write(
        &body,
        r#"{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"BYTES","data":["a","b"]}]}"#,
    )
    .unwrap();
    let mut args = infer_args(&server.http, Protocol::Http, "identity_bytes");
    args.request = Some(body);
    let mut out = Vec::new();
    run_infer_to(args, &mut out).await.unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(printed["outputs"][0]["data"], serde_json::json!(["a", "b"]));

    let mut args = infer_args(&server.grpc, Protocol::Grpc, "identity_fp32");
    args.inputs = vec!["INPUT0=[1,2,3]".into()];
    let err = run_infer_to(args, &mut Vec::new()).await.unwrap_err();
    let chain = format!("{err:#}");
    assert!(chain.contains("gRPC invalid_argument"), "{chain}");
}
