//! The HTTP/REST front end (KServe v2 + Triton extensions) over real sockets: every endpoint,
//! the binary tensor extension, compression, statistics, metrics, each error case (status code
//! and `{"error": ...}` body, followed by a request that must still succeed) and graceful
//! shutdown. Expected behaviour is Triton's (see TRITON-PROTOCOL.md §1-§3).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use nereid_server::ServeConfig;
use serde_json::{json, Value};

const INFER: &str = "/v2/models/identity_fp32/infer";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

fn unzlib(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ZlibDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

/// A raw HTTP/1.1 exchange on a fresh connection, for what reqwest cannot send: hand-made
/// chunked bodies. Returns the status and the body.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> (u16, Vec<u8>) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(&request).unwrap();
        read_response(&mut stream)
    })
    .await
    .unwrap()
}

/// Reads one complete HTTP/1.1 response (with a Content-Length) and returns status and body.
fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..split]).to_string();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head}"));
            if response.len() >= split + 4 + length {
                return (status, response[split + 4..split + 4 + length].to_vec());
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => panic!(
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&response)
            ),
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(e) => panic!(
                "reading the response ({e}) after {:?}",
                String::from_utf8_lossy(&response)
            ),
        }
    }
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        out.extend(format!("{:X}\r\n", piece.len()).into_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let server = TestServer::start_default().await;
    for path in ["/v2/health/live", "/v2/health/ready"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.body.is_empty(), "{path} answers with an empty body");
    }

    let reply = server.get("/v2").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type(), "application/json");
    let metadata = reply.json();
    assert!(
        metadata["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{metadata}"
    );
    let version = metadata["version"].as_str().expect("version is a string");
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );
    let extensions: BTreeSet<&str> = metadata["extensions"]
        .as_array()
        .expect("extensions is an array")
        .iter()
        .map(|e| e.as_str().expect("extension names are strings"))
        .collect();
    for required in [
        "statistics",
        "binary_tensor_data",
        "classification",
        "model_configuration",
    ] {
        assert!(
            extensions.contains(required),
            "{required} in {extensions:?}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_readiness() {
    let server = TestServer::start_default().await;
    let expected = json!({
        "name": "identity_fp32",
        "versions": ["1"],
        "platform": "identity",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]}],
    });
    for path in [
        "/v2/models/identity_fp32",
        "/v2/models/identity_fp32/versions/1",
        // Model names are percent-decoded (tritonclient URL-quotes them).
        "/v2/models/identity%5Ffp32",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.content_type(), "application/json");
        assert_eq!(reply.json(), expected, "{path}");
    }

    let bytes = server.get("/v2/models/identity_bytes").await.json();
    assert_eq!(bytes["inputs"][0]["datatype"], "BYTES");
    assert_eq!(bytes["inputs"][0]["shape"], json!([-1, -1]));
    let iris = server.get("/v2/models/iris_classifier").await.json();
    assert_eq!(iris["platform"], "candle");
    assert_eq!(
        iris["inputs"],
        json!([{"name": "INPUT", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        iris["outputs"],
        json!([{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 3]}])
    );

    let unknown = server.get("/v2/models/nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.text(),
        r#"{"error":"Request for unknown model: 'nope' is not found"}"#
    );
    server
        .get("/v2/models/identity_fp32/versions/9")
        .await
        .assert_error(
            404,
            "Request for unknown model: 'identity_fp32' version 9 is not found",
        );
    // A version segment that is not a number is not a route.
    server
        .get("/v2/models/identity_fp32/versions/x")
        .await
        .assert_error(404, "Not Found");

    for path in [
        "/v2/models/identity_fp32/ready",
        "/v2/models/identity_fp32/versions/1/ready",
        "/v2/models/iris_classifier/ready",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.body.is_empty(), "{path} answers with an empty body");
    }
    for path in [
        "/v2/models/nope/ready",
        "/v2/models/identity_fp32/versions/9/ready",
    ] {
        assert_eq!(server.get(path).await.status, 400, "{path}");
    }
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_json() {
    let server = TestServer::start_default().await;
    for path in [
        "/v2/models/identity_fp32/config",
        "/v2/models/identity_fp32/versions/1/config",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.content_type(), "application/json");
        let config = reply.json();
        assert_eq!(config["name"], "identity_fp32");
        assert_eq!(config["backend"], "identity");
        assert_eq!(config["platform"], "");
        assert!(config["max_batch_size"].is_number(), "{config}");
        assert_eq!(config["max_batch_size"], 8);
        let input = &config["input"][0];
        assert_eq!(input["name"], "INPUT0");
        assert_eq!(input["data_type"], "TYPE_FP32");
        assert_eq!(input["dims"], json!([16]), "dims are JSON numbers");
        // Defaults are printed, as Triton does.
        assert_eq!(input["is_shape_tensor"], false);
        assert_eq!(input["optional"], false);
        assert_eq!(input["format"], "FORMAT_NONE");
        let output = &config["output"][0];
        assert_eq!(output["name"], "OUTPUT0");
        assert_eq!(output["data_type"], "TYPE_FP32");
        assert_eq!(output["dims"], json!([16]));
        assert_eq!(config["instance_group"][0]["kind"], "KIND_CPU");
        assert_eq!(config["instance_group"][0]["count"], 1);
    }
    let bytes = server.get("/v2/models/identity_bytes/config").await.json();
    assert_eq!(bytes["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(bytes["input"][0]["dims"], json!([-1]));
    let iris = server.get("/v2/models/iris_classifier/config").await.json();
    assert_eq!(iris["max_batch_size"], 64);
    assert_eq!(iris["output"][0]["label_filename"], "labels.txt");
    assert_eq!(
        iris["parameters"]["nereid.architecture"]["string_value"],
        "mlp"
    );

    server
        .get("/v2/models/nope/config")
        .await
        .assert_error(404, "Request for unknown model: 'nope' is not found");
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_json_flat_and_nested_with_request_id() {
    let server = TestServer::start_default().await;

    let values = ramp(16, -2.0);
    let reply = server
        .infer_json("identity_fp32", &fp32_request("INPUT0", &[1, 16], &values))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/json");
    assert!(reply.header(HEADER_LENGTH).is_none());
    let json = reply.json();
    assert!(
        json.get("id").is_none(),
        "no id without a request id: {json}"
    );
    assert_eq!(json["model_name"], "identity_fp32");
    assert_eq!(json["model_version"], "1");
    let output = &json["outputs"][0];
    assert_eq!(output["name"], "OUTPUT0");
    assert_eq!(output["datatype"], "FP32");
    assert_eq!(output["shape"], json!([1, 16]));
    assert_eq!(f32_values(&output["data"]), values);

    // Nested data, batch of 3, an explicit version, a request id and a listed output.
    let rows: Vec<Vec<f32>> = (0..3).map(|r| ramp(16, r as f32 * 10.0)).collect();
    let request = json!({
        "id": "req-42",
        "inputs": [{"name": "INPUT0", "shape": [3, 16], "datatype": "FP32", "data": rows}],
        "outputs": [{"name": "OUTPUT0"}],
    });
    let reply = server
        .post_json("/v2/models/identity_fp32/versions/1/infer", &request)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["id"], "req-42");
    assert_eq!(json["model_version"], "1");
    assert_eq!(json["outputs"][0]["shape"], json!([3, 16]));
    assert_eq!(
        f32_values(&json["outputs"][0]["data"]),
        rows.concat(),
        "nested data comes back flat, row-major"
    );

    // Integer literals are accepted for FP32.
    let request = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
        "data": (0..16).collect::<Vec<i32>>()}]});
    let reply = server.infer_json("identity_fp32", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        f32_values(&reply.json()["outputs"][0]["data"]),
        (0..16).map(|i| i as f32).collect::<Vec<_>>()
    );

    // The C++ client sends Inference-Header-Content-Length even with no binary data.
    let body = fp32_request("INPUT0", &[1, 16], &values).to_string();
    let reply = server
        .post_with(INFER, &[(HEADER_LENGTH, &body.len().to_string())], body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/json");
    assert_eq!(f32_values(&reply.json()["outputs"][0]["data"]), values);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_binary_tensor_extension() {
    let server = TestServer::start_repo(rich_repo()).await;
    let values = ramp(32, 1.0);
    let input = f32_bytes(&values);

    // Binary in, binary out.
    let header = json!({
        "inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "FP32",
                    "parameters": {"binary_data_size": input.len()}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}],
    });
    let reply = server
        .infer_binary("identity_fp32", &header, &[&input])
        .await;
    let (json, sections) = reply.binary_outputs();
    assert_eq!(json["outputs"][0]["shape"], json!([2, 16]));
    assert_eq!(json["outputs"][0]["datatype"], "FP32");
    assert_eq!(
        json["outputs"][0]["parameters"]["binary_data_size"],
        input.len()
    );
    assert_eq!(sections["OUTPUT0"], input);

    // Binary in, JSON out (the output is listed without binary_data).
    let header = json!({
        "inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "FP32",
                    "parameters": {"binary_data_size": input.len()}}],
        "outputs": [{"name": "OUTPUT0"}],
    });
    let reply = server
        .infer_binary("identity_fp32", &header, &[&input])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/json");
    assert!(reply.header(HEADER_LENGTH).is_none());
    assert_eq!(f32_values(&reply.json()["outputs"][0]["data"]), values);

    // binary_data_output sets the default for outputs that are not listed...
    let mut request = fp32_request("INPUT0", &[2, 16], &values);
    request["parameters"] = json!({"binary_data_output": true});
    let (_, sections) = server
        .infer_json("identity_fp32", &request)
        .await
        .binary_outputs();
    assert_eq!(sections["OUTPUT0"], input);
    // ...but a listed output without binary_data stays JSON.
    request["outputs"] = json!([{"name": "OUTPUT0"}]);
    let reply = server.infer_json("identity_fp32", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/json");
    assert_eq!(f32_values(&reply.json()["outputs"][0]["data"]), values);

    // Two binary inputs in order; one output binary, the other JSON.
    let floats = [0.5f32, 1.5, 2.5, 3.5];
    let ints = [-7i32, 0, 7, i32::MAX];
    let int_bytes: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
             "parameters": {"binary_data_size": 16}},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "INT32",
             "parameters": {"binary_data_size": 16}},
        ],
        "outputs": [
            {"name": "OUTPUT0", "parameters": {"binary_data": true}},
            {"name": "OUTPUT1", "parameters": {"binary_data": false}},
        ],
    });
    let reply = server
        .infer_binary("two_io", &header, &[&f32_bytes(&floats), &int_bytes])
        .await;
    let (json, sections) = reply.binary_outputs();
    assert_eq!(sections.len(), 1, "only OUTPUT0 is binary");
    assert_eq!(f32_from_bytes(&sections["OUTPUT0"]), floats);
    let output1 = json["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "OUTPUT1")
        .expect("OUTPUT1 in the response");
    assert_eq!(output1["datatype"], "INT32");
    assert_eq!(output1["data"], json!(ints));
    assert!(output1.get("parameters").is_none(), "{output1}");

    // Only the requested output is returned.
    let header = json!({
        "inputs": [
            {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": floats},
            {"name": "INPUT1", "shape": [1, 4], "datatype": "INT32", "data": ints},
        ],
        "outputs": [{"name": "OUTPUT1"}],
    });
    let json = server.infer_json("two_io", &header).await.json();
    assert_eq!(json["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(json["outputs"][0]["name"], "OUTPUT1");
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_raw_binary_body() {
    let server = TestServer::start_repo(rich_repo()).await;
    // Inference-Header-Content-Length: 0 makes the whole body the only input, batch 1, and
    // every output comes back binary.
    let values = ramp(16, 3.0);
    let reply = server
        .post_with(INFER, &[(HEADER_LENGTH, "0")], f32_bytes(&values))
        .await;
    let (json, sections) = reply.binary_outputs();
    assert_eq!(json["outputs"][0]["name"], "OUTPUT0");
    assert_eq!(json["outputs"][0]["shape"], json!([1, 16]));
    assert_eq!(f32_from_bytes(&sections["OUTPUT0"]), values);

    // With one variable dimension, it is deduced from the body size.
    let values = ramp(6, 0.0);
    let reply = server
        .post_with(
            "/v2/models/big/infer",
            &[(HEADER_LENGTH, "0")],
            f32_bytes(&values),
        )
        .await;
    let (json, sections) = reply.binary_outputs();
    assert_eq!(json["outputs"][0]["shape"], json!([6]));
    assert_eq!(f32_from_bytes(&sections["OUTPUT0"]), values);

    // A hand-chunked raw body (Transfer-Encoding: chunked) works the same.
    let values = ramp(16, 9.0);
    let body = f32_bytes(&values);
    let mut request = format!(
        "POST {INFER} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Inference-Header-Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    request.extend(chunked(&body, 24));
    let (status, response) = raw_exchange(server.http, request).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&response));
    assert!(response.ends_with(&body), "the output is the raw input");

    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_raw_binary_bytes_input() {
    // Triton treats a raw body for a BYTES input (dims [1]) as one element and prepends its
    // 4-byte length itself (S qa/L0_http/http_test.py test_byte).
    let server = TestServer::start_repo(rich_repo()).await;
    let reply = server
        .post_with("/v2/models/raw_bytes/infer", &[(HEADER_LENGTH, "0")], "427")
        .await;
    let (json, sections) = reply.binary_outputs();
    assert_eq!(json["outputs"][0]["datatype"], "BYTES");
    assert_eq!(json["outputs"][0]["shape"], json!([1, 1]));
    assert_eq!(sections["OUTPUT0"], bytes_tensor(&["427"]));
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

// Raw binary rejections, as S qa/L0_http/http_test.py asserts them (one test per case).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_binary_bytes_input_needs_shape_1() {
    // test_byte_too_many_elements: identity_bytes has dims [-1].
    let server = TestServer::start_default().await;
    server
        .post_with(
            "/v2/models/identity_bytes/infer",
            &[(HEADER_LENGTH, "0")],
            "427",
        )
        .await
        .assert_error_contains(
            400,
            "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_binary_needs_a_single_input_model() {
    // test_multi_inputs.
    let server = TestServer::start_repo(rich_repo()).await;
    server
        .post_with(
            "/v2/models/two_io/infer",
            &[(HEADER_LENGTH, "0")],
            vec![0u8; 32],
        )
        .await
        .assert_error_contains(
            400,
            "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_binary_needs_at_most_one_variable_dimension() {
    // test_multi_variable_dimensions.
    let server = TestServer::start_repo(rich_repo()).await;
    server
        .post_with(
            "/v2/models/fp32_2d/infer",
            &[(HEADER_LENGTH, "0")],
            vec![0u8; 16],
        )
        .await
        .assert_error_contains(
            400,
            "The shape of the raw input 'INPUT0' can not be deduced because there are more than one variable-sized dimension",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_bytes_json_and_binary() {
    let server = TestServer::start_default().await;
    let strings = ["hello", "", "wörld", "a\"quote"];

    let request = json!({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "BYTES",
        "data": strings}]});
    let reply = server.infer_json("identity_bytes", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let output = &reply.json()["outputs"][0];
    assert_eq!(output["datatype"], "BYTES");
    assert_eq!(output["shape"], json!([1, 4]));
    assert_eq!(output["data"], json!(strings));

    let request = json!({"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "BYTES",
        "data": [["a", "b"], ["c", "d"]]}]});
    let reply = server.infer_json("identity_bytes", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["outputs"][0]["data"],
        json!(["a", "b", "c", "d"])
    );

    // Binary: each element is a 4-byte little-endian length and the bytes.
    let tensor = bytes_tensor(&strings);
    assert_eq!(&tensor[..9], b"\x05\x00\x00\x00hello");
    let header = json!({
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "BYTES",
                    "parameters": {"binary_data_size": tensor.len()}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}],
    });
    let (json, sections) = server
        .infer_binary("identity_bytes", &header, &[&tensor])
        .await
        .binary_outputs();
    assert_eq!(json["outputs"][0]["shape"], json!([1, 4]));
    assert_eq!(sections["OUTPUT0"], tensor);
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_every_datatype() {
    let server = TestServer::start_repo(rich_repo()).await;
    let cases = [
        ("id_bool", "BOOL", json!([true, false, true])),
        ("id_uint8", "UINT8", json!([0, 7, 255])),
        ("id_int8", "INT8", json!([-128, 0, 127])),
        ("id_int32", "INT32", json!([i32::MIN, 0, i32::MAX])),
        ("id_int64", "INT64", json!([i64::MIN, -1, i64::MAX])),
        ("id_uint64", "UINT64", json!([0u64, 1u64, u64::MAX])),
        ("id_fp64", "FP64", json!([1.5, -2.25, 1e300])),
        ("id_string", "BYTES", json!(["x", "yy", "zzz"])),
    ];
    for (model, datatype, data) in cases {
        let request = json!({"inputs": [{"name": "INPUT0", "shape": [3], "datatype": datatype,
            "data": data}]});
        let reply = server.infer_json(model, &request).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
        let output = &reply.json()["outputs"][0];
        assert_eq!(output["datatype"], datatype, "{model}");
        assert_eq!(output["shape"], json!([3]), "{model}");
        assert_eq!(output["data"], data, "{model}");
    }

    // Without a batch dimension, metadata shows the dims as they are.
    let metadata = server.get("/v2/models/id_int32").await.json();
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "INPUT0", "datatype": "INT32", "shape": [-1]}])
    );

    // FP16 travels only in binary form.
    let halves: Vec<u8> = [1.0f32, -2.5, 65504.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP16",
                    "parameters": {"binary_data_size": halves.len()}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}],
    });
    let (json, sections) = server
        .infer_binary("id_fp16", &header, &[&halves])
        .await
        .binary_outputs();
    assert_eq!(json["outputs"][0]["datatype"], "FP16");
    assert_eq!(sections["OUTPUT0"], halves);
    let request = json!({"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP16",
        "data": [1.0, 2.0, 3.0]}]});
    server.infer_json("id_fp16", &request).await.assert_error(
        400,
        "receiving FP16 data via JSON is not supported. Please use the binary data format for input INPUT0",
    );
    server.assert_serving().await;

    // A value out of the datatype's range.
    let request = json!({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "UINT8",
        "data": [256]}]});
    let reply = server.infer_json("id_uint8", &request).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(!reply.error_message().is_empty());
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

/// Splits a classification string `"<value>:<index>[:<label>]"`, checking the `%f` format.
fn parse_class(entry: &Value) -> (f64, usize, String) {
    let text = entry.as_str().expect("classification entries are strings");
    let parts: Vec<&str> = text.split(':').collect();
    assert_eq!(parts.len(), 3, "value:index:label in {text:?}");
    let decimals = parts[0].split_once('.').map(|(_, d)| d.len());
    assert_eq!(decimals, Some(6), "printf %f formatting in {text:?}");
    (
        parts[0].parse().unwrap(),
        parts[1].parse().unwrap(),
        parts[2].to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_top_k_with_labels() {
    let server = TestServer::start_default().await;
    let rows = json!([[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 5.6, 2.4]]);
    let plain = json!({"inputs": [{"name": "INPUT", "shape": [2, 4], "datatype": "FP32",
        "data": rows}]});
    let reply = server.infer_json("iris_classifier", &plain).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let probabilities = f32_values(&reply.json()["outputs"][0]["data"]);
    assert_eq!(probabilities.len(), 6);

    let mut request = plain.clone();
    request["outputs"] = json!([{"name": "PROBABILITIES", "parameters": {"classification": 2}}]);
    let reply = server.infer_json("iris_classifier", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let output = &reply.json()["outputs"][0];
    assert_eq!(output["name"], "PROBABILITIES");
    assert_eq!(output["datatype"], "BYTES");
    assert_eq!(output["shape"], json!([2, 2]));
    let classes: Vec<_> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(parse_class)
        .collect();
    assert_eq!(classes.len(), 4);
    let labels = ["setosa", "versicolor", "virginica"];
    for (row, expected_top) in [(0usize, 0usize), (1, 2)] {
        let (top, second) = (&classes[row * 2], &classes[row * 2 + 1]);
        assert_eq!(top.1, expected_top, "row {row}: {classes:?}");
        assert!(top.0 >= second.0, "descending: {classes:?}");
        for (value, index, label) in [top, second] {
            assert_eq!(label, labels[*index]);
            assert_eq!(
                format!("{:.6}", probabilities[row * 3 + index]),
                format!("{value:.6}"),
                "the value is the probability"
            );
        }
    }

    // Binary classification output: length-prefixed strings.
    request["outputs"][0]["parameters"]["binary_data"] = json!(true);
    let (json, sections) = server
        .infer_json("iris_classifier", &request)
        .await
        .binary_outputs();
    assert_eq!(json["outputs"][0]["datatype"], "BYTES");
    let strings: Vec<String> = classes
        .iter()
        .map(|(v, i, l)| format!("{v:.6}:{i}:{l}"))
        .collect();
    assert_eq!(sections["PROBABILITIES"], bytes_tensor(&strings));
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_of_bytes_output_uses_tritons_text() {
    // S qa/L0_parameters class_count tests: "class result not available for output due to
    // unsupported type 'BYTES'".
    let server = TestServer::start_default().await;
    let request = json!({
        "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 1}}],
    });
    server
        .infer_json("identity_bytes", &request)
        .await
        .assert_error(
            400,
            "class result not available for output due to unsupported type 'BYTES'",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_request_bodies() {
    let server = TestServer::start_default().await;
    let values = ramp(16, 4.0);
    let body = fp32_request("INPUT0", &[1, 16], &values).to_string();
    for (encoding, encoded) in [
        ("gzip", gzip(body.as_bytes())),
        ("deflate", zlib(body.as_bytes())),
        ("identity", body.clone().into_bytes()),
    ] {
        let reply = server
            .post_with(INFER, &[("content-encoding", encoding)], encoded)
            .await;
        assert_eq!(reply.status, 200, "{encoding}: {}", reply.text());
        assert_eq!(
            f32_values(&reply.json()["outputs"][0]["data"]),
            values,
            "{encoding}"
        );
    }

    // A compressed binary body: the header length counts the uncompressed JSON.
    let header = json!({
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                    "parameters": {"binary_data_size": 64}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}],
    });
    let (framed, length) = binary_body(&header, &[&f32_bytes(&values)]);
    let reply = server
        .post_with(
            INFER,
            &[
                ("content-encoding", "gzip"),
                (HEADER_LENGTH, &length.to_string()),
            ],
            gzip(&framed),
        )
        .await;
    let (_, sections) = reply.binary_outputs();
    assert_eq!(f32_from_bytes(&sections["OUTPUT0"]), values);

    let reply = server
        .post_with(INFER, &[("content-encoding", "br")], body.clone())
        .await;
    reply.assert_error_contains(501, "Unsupported compression type");
    server.assert_serving().await;

    // A body that claims gzip but is not.
    let reply = server
        .post_with(INFER, &[("content-encoding", "gzip")], body)
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(!reply.error_message().is_empty());
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_responses() {
    let server = TestServer::start_default().await;
    let values = ramp(16, 5.0);
    let body = fp32_request("INPUT0", &[1, 16], &values).to_string();
    for (encoding, decode) in [
        ("gzip", gunzip as fn(&[u8]) -> Vec<u8>),
        ("deflate", unzlib as fn(&[u8]) -> Vec<u8>),
    ] {
        let reply = server
            .post_with(INFER, &[("accept-encoding", encoding)], body.clone())
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-encoding").as_deref(), Some(encoding));
        assert_eq!(reply.content_type(), "application/json");
        let json: Value = serde_json::from_slice(&decode(&reply.body)).unwrap();
        assert_eq!(
            f32_values(&json["outputs"][0]["data"]),
            values,
            "{encoding}"
        );
    }

    // Binary output, compressed: the header length refers to the uncompressed body.
    let mut request = fp32_request("INPUT0", &[1, 16], &values);
    request["parameters"] = json!({"binary_data_output": true});
    let reply = server
        .post_with(INFER, &[("accept-encoding", "gzip")], request.to_string())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(reply.content_type(), "application/octet-stream");
    let length: usize = reply.header(HEADER_LENGTH).unwrap().parse().unwrap();
    let (_, sections) = split_binary(&gunzip(&reply.body), length);
    assert_eq!(f32_from_bytes(&sections["OUTPUT0"]), values);

    // No Accept-Encoding: no compression.
    let reply = server.post(INFER, body).await;
    assert!(reply.header("content-encoding").is_none());
    server.shutdown().await.unwrap();
}

/// Every field of a `model_stats` entry that perf_analyzer reads is a JSON number.
fn assert_stats_numeric(stat: &Value) {
    for field in ["last_inference", "inference_count", "execution_count"] {
        assert!(stat[field].is_u64(), "{field} is a number in {stat}");
    }
    let version = stat["version"].as_str().expect("version is a string");
    assert!(version.parse::<u64>().is_ok(), "numeric version {version}");
    for phase in [
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ] {
        for field in ["count", "ns"] {
            assert!(
                stat["inference_stats"][phase][field].is_u64(),
                "inference_stats.{phase}.{field} is a number in {stat}"
            );
        }
    }
    for batch in stat["batch_stats"].as_array().expect("batch_stats array") {
        assert!(batch["batch_size"].is_u64(), "{batch}");
        for phase in ["compute_input", "compute_infer", "compute_output"] {
            for field in ["count", "ns"] {
                assert!(batch[phase][field].is_u64(), "{phase}.{field} in {batch}");
            }
        }
    }
}

fn find_stat<'a>(stats: &'a Value, model: &str, version: &str) -> &'a Value {
    stats["model_stats"]
        .as_array()
        .expect("model_stats array")
        .iter()
        .find(|s| s["name"] == model && s["version"] == version)
        .unwrap_or_else(|| panic!("{model} v{version} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_exactly() {
    let server = TestServer::start_default().await;
    // Known traffic: identity_fp32 batches 1, 1 and 3; one failing request; iris batch 2.
    for batch in [1u64, 1, 3] {
        let values = ramp(16 * batch as usize, 0.0);
        let reply = server
            .infer_json(
                "identity_fp32",
                &fp32_request("INPUT0", &[batch, 16], &values),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let bad = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
        "data": vec![0; 16]}]});
    assert_eq!(server.infer_json("identity_fp32", &bad).await.status, 400);
    let iris = json!({"inputs": [{"name": "INPUT", "shape": [2, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 5.6, 2.4]]}]});
    assert_eq!(
        server.infer_json("iris_classifier", &iris).await.status,
        200
    );

    let reply = server.get("/v2/models/stats").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type(), "application/json");
    let all = reply.json();
    let names: BTreeSet<&str> = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["identity_bytes", "identity_fp32", "iris_classifier"])
    );
    for stat in all["model_stats"].as_array().unwrap() {
        assert_stats_numeric(stat);
    }

    let identity = find_stat(&all, "identity_fp32", "1");
    assert_eq!(identity["inference_stats"]["success"]["count"], 3);
    assert_eq!(identity["inference_stats"]["queue"]["count"], 3);
    assert_eq!(identity["inference_stats"]["compute_infer"]["count"], 3);
    assert_eq!(identity["inference_count"], 5, "sum of batch sizes");
    assert_eq!(identity["execution_count"], 3);
    assert!(identity["last_inference"].as_u64().unwrap() > 0);
    let batches: Vec<(u64, u64)> = identity["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["batch_size"].as_u64().unwrap(),
                b["compute_infer"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(batches, vec![(1, 2), (3, 1)]);

    let iris_stat = find_stat(&all, "iris_classifier", "1");
    assert_eq!(iris_stat["inference_stats"]["success"]["count"], 1);
    assert_eq!(iris_stat["inference_count"], 2);
    assert_eq!(iris_stat["execution_count"], 1);
    let unused = find_stat(&all, "identity_bytes", "1");
    assert_eq!(unused["inference_stats"]["success"]["count"], 0);
    assert_eq!(unused["inference_count"], 0);
    assert_eq!(unused["last_inference"], 0);
    assert_eq!(unused["batch_stats"], json!([]));

    for path in [
        "/v2/models/identity_fp32/stats",
        "/v2/models/identity_fp32/versions/1/stats",
    ] {
        let one = server.get(path).await.json();
        assert_eq!(one["model_stats"].as_array().unwrap().len(), 1, "{path}");
        assert_eq!(
            &one["model_stats"][0]["inference_stats"]["success"],
            &identity["inference_stats"]["success"],
            "{path}"
        );
        assert_eq!(one["model_stats"][0]["inference_count"], 5);
    }
    server
        .get("/v2/models/nope/stats")
        .await
        .assert_error(404, "Request for unknown model: 'nope' is not found");
    server
        .get("/v2/models/identity_fp32/versions/9/stats")
        .await
        .assert_error(
            404,
            "Request for unknown model: 'identity_fp32' version 9 is not found",
        );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_versions_and_version_policies() {
    let server = TestServer::start_repo(rich_repo()).await;
    let metadata = server.get("/v2/models/multi").await.json();
    assert_eq!(metadata["versions"], json!(["1", "2", "3"]));
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 2]));

    let request = fp32_request("INPUT0", &[1, 2], &[1.0, 2.0]);
    let reply = server.infer_json("multi", &request).await;
    assert_eq!(reply.json()["model_version"], "3", "latest by default");
    for version in ["1", "3"] {
        let reply = server
            .post_json(
                &format!("/v2/models/multi/versions/{version}/infer"),
                &request,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["model_version"], version);
    }
    let stats = server.get("/v2/models/multi/stats").await.json();
    assert_eq!(stats["model_stats"].as_array().unwrap().len(), 3);
    for (version, count) in [("1", 1), ("2", 0), ("3", 2)] {
        assert_eq!(
            find_stat(&stats, "multi", version)["inference_stats"]["success"]["count"],
            count,
            "version {version}"
        );
    }
    let stats = server.get("/v2/models/multi/versions/2/stats").await.json();
    assert_eq!(stats["model_stats"].as_array().unwrap().len(), 1);
    assert_eq!(stats["model_stats"][0]["version"], "2");

    // The default policy serves only the latest version.
    let latest = server.get("/v2/models/latest").await.json();
    assert_eq!(latest["versions"], json!(["2"]));
    server
        .get("/v2/models/latest/versions/1")
        .await
        .assert_error(
            404,
            "Request for unknown model: 'latest' version 1 is not found",
        );
    assert_eq!(
        server
            .get("/v2/models/latest/versions/1/ready")
            .await
            .status,
        400
    );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

/// Index rows as (name, version, state), and the reasons by (name, version).
fn index_rows(index: &Value) -> Vec<(String, String, String)> {
    index
        .as_array()
        .unwrap_or_else(|| panic!("the index is an array: {index}"))
        .iter()
        .map(|row| {
            assert!(row.get("reason").is_none_or(Value::is_string), "{row}");
            (
                row["name"].as_str().unwrap().to_string(),
                row["version"].as_str().unwrap_or("").to_string(),
                row["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_models_are_reported_while_others_serve() {
    let server = TestServer::start_repo(faulty_repo()).await;
    assert_eq!(server.get("/v2/health/live").await.status, 200);
    // Strict readiness: not every model is ready.
    let ready = server.get("/v2/health/ready").await;
    assert_eq!(ready.status, 400);
    assert!(ready.body.is_empty());

    let index = server.post("/v2/repository/index", "").await.json();
    let rows = index_rows(&index);
    let state = |name: &str, version: &str| {
        rows.iter()
            .find(|(n, v, _)| n == name && (version.is_empty() || v == version))
            .map(|(_, _, s)| s.clone())
            .unwrap_or_else(|| panic!("{name} {version} in {index}"))
    };
    assert_eq!(state("identity_fp32", "1"), "READY");
    assert_eq!(state("broken", ""), "UNAVAILABLE");
    assert_eq!(state("partial", "1"), "UNAVAILABLE");
    assert_eq!(state("partial", "2"), "READY");
    for row in index.as_array().unwrap() {
        let reason = row["reason"].as_str().unwrap_or("");
        if row["state"] == "UNAVAILABLE" {
            assert!(
                !reason.is_empty(),
                "an unavailable model has a reason: {row}"
            );
        } else {
            assert_eq!(reason, "", "{row}");
        }
    }
    let broken_reason = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "broken")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(broken_reason.contains("config.pbtxt"), "{broken_reason}");
    assert_eq!(state("decoupled", ""), "UNAVAILABLE");
    let decoupled_reason = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "decoupled")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        decoupled_reason
            .contains("config field 'model_transaction_policy.decoupled' is not supported"),
        "{decoupled_reason}"
    );

    let ready_only = server
        .post_json("/v2/repository/index", &json!({"ready": true}))
        .await
        .json();
    let mut ready_rows = index_rows(&ready_only);
    ready_rows.sort();
    assert_eq!(
        ready_rows,
        vec![
            ("identity_fp32".into(), "1".into(), "READY".into()),
            ("partial".into(), "2".into(), "READY".into()),
        ]
    );

    let reply = server.get("/v2/models/broken").await;
    reply.assert_error_contains(404, "Request for unknown model: 'broken'");
    assert_eq!(server.get("/v2/models/broken/ready").await.status, 400);
    server.assert_serving().await;

    let request = json!({"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32",
        "data": [5.1, 3.5, 1.4, 0.2]}]});
    server
        .post_json("/v2/models/partial/versions/1/infer", &request)
        .await
        .assert_error(
            503,
            "Request for unknown model: 'partial' version 1 is not at ready state",
        );
    server.assert_serving().await;
    let reply = server.infer_json("partial", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["model_version"], "2");
    let metadata = server.get("/v2/models/partial").await.json();
    assert_eq!(metadata["versions"], json!(["2"]));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_endpoints() {
    let server = TestServer::start_default().await;
    let expected = vec![
        (
            "identity_bytes".to_string(),
            "1".to_string(),
            "READY".to_string(),
        ),
        (
            "identity_fp32".to_string(),
            "1".to_string(),
            "READY".to_string(),
        ),
        (
            "iris_classifier".to_string(),
            "1".to_string(),
            "READY".to_string(),
        ),
    ];
    for body in ["", r#"{"ready":true}"#, r#"{"ready":false}"#, "{}"] {
        let reply = server.post("/v2/repository/index", body).await;
        assert_eq!(reply.status, 200, "{body}: {}", reply.text());
        assert_eq!(reply.content_type(), "application/json");
        let mut rows = index_rows(&reply.json());
        rows.sort();
        assert_eq!(rows, expected, "{body}");
    }
    server
        .post("/v2/repository/index", r#"{"ready":"x"}"#)
        .await
        .assert_error(400, "Invalid value for 'ready': expected a boolean");
    server.assert_serving().await;
    let reply = server.post("/v2/repository/index", "{not json").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(!reply.error_message().is_empty());
    server.assert_serving().await;
    server
        .get("/v2/repository/index")
        .await
        .assert_error(405, "Method Not Allowed");

    for (path, body) in [
        ("/v2/repository/models/identity_fp32/load", ""),
        ("/v2/repository/models/identity_fp32/unload", ""),
        (
            "/v2/repository/models/identity_fp32/unload",
            r#"{"parameters":{"unload_dependents":false}}"#,
        ),
        ("/v2/repository/models/not_there/load", ""),
    ] {
        server.post(path, body).await.assert_error(
            503,
            "explicit model load / unload is not allowed if polling is enabled",
        );
        server.assert_serving().await;
    }
    for path in [
        "/v2/repository/foo/index",
        "/v2/repository/foo/models/identity_fp32/load",
    ] {
        server
            .post(path, "")
            .await
            .assert_error(501, "'repository_name' specification is not supported");
    }
    // Nothing was unloaded.
    assert_eq!(
        server.get("/v2/models/identity_fp32/ready").await.status,
        200
    );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors() {
    let server = TestServer::start_default().await;
    for path in [
        "/nope",
        "/v2/nope",
        "/v2/models/identity_fp32/bogus",
        "/v2/models/identity_fp32/versions/x/config",
        "/v2/models/identity_fp32/versions/1/trace/setting/extra",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.text(), r#"{"error":"Not Found"}"#, "{path}");
        server.assert_serving().await;
    }
    for (method, path) in [
        (reqwest::Method::GET, INFER),
        (reqwest::Method::POST, "/v2/health/live"),
        (reqwest::Method::POST, "/v2/health/ready"),
        (reqwest::Method::DELETE, "/v2"),
        (reqwest::Method::PUT, "/v2/models/identity_fp32"),
        (reqwest::Method::POST, "/v2/models/stats"),
    ] {
        let reply = server
            .request(method.clone(), server.url(path), &[], None)
            .await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(
            reply.text(),
            r#"{"error":"Method Not Allowed"}"#,
            "{method} {path}"
        );
        server.assert_serving().await;
    }
    let values = ramp(16, 0.0);
    server
        .infer_json("nope", &fp32_request("INPUT0", &[1, 16], &values))
        .await
        .assert_error(404, "Request for unknown model: 'nope' is not found");
    server.assert_serving().await;
    server
        .post_json(
            "/v2/models/identity_fp32/versions/9/infer",
            &fp32_request("INPUT0", &[1, 16], &values),
        )
        .await
        .assert_error(
            404,
            "Request for unknown model: 'identity_fp32' version 9 is not found",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_bodies() {
    let server = TestServer::start_default().await;
    let sixteen = ramp(16, 0.0);

    let reply = server.post(INFER, r#"{"inputs": ["#).await;
    reply.assert_error_contains(400, "failed to parse the request JSON buffer");
    server.assert_serving().await;
    let reply = server.post(INFER, "").await;
    assert_eq!(reply.status, 400, "empty body: {}", reply.text());
    assert!(!reply.error_message().is_empty());
    server.assert_serving().await;

    let no_data = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]});
    server.infer_json("identity_fp32", &no_data).await.assert_error(
        400,
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But no field is set",
    );
    server.assert_serving().await;
    let both = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
        "data": sixteen, "parameters": {"binary_data_size": 64}}]});
    server.infer_json("identity_fp32", &both).await.assert_error(
        400,
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But set 'data' 'binary_data_size'",
    );
    server.assert_serving().await;

    // Fewer and more elements than the shape says.
    server
        .infer_json(
            "identity_fp32",
            &fp32_request("INPUT0", &[1, 16], &ramp(15, 0.0)),
        )
        .await
        .assert_error(
            400,
            "Failed to parse 'data' field: shape does not match true shape",
        );
    server.assert_serving().await;
    server
        .infer_json(
            "identity_fp32",
            &fp32_request("INPUT0", &[1, 16], &ramp(17, 0.0)),
        )
        .await
        .assert_error(
            400,
            "Unable to parse 'data': Shape does not match true shape of 'data' field",
        );
    server.assert_serving().await;

    // Elements of the wrong JSON type.
    let strings = json!({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32",
        "data": ["a", "b"]}]});
    server
        .infer_json("identity_fp32", &strings)
        .await
        .assert_error_contains(400, "Unable to parse 'data'");
    server.assert_serving().await;

    let reserved = json!({"parameters": {"triton_enable_empty_final_response": true},
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": sixteen}]});
    server.infer_json("identity_fp32", &reserved).await.assert_error(
        400,
        "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
    );
    server.assert_serving().await;

    let bad_datatype = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP99",
        "data": sixteen}]});
    let reply = server.infer_json("identity_fp32", &bad_datatype).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(!reply.error_message().is_empty());
    server.assert_serving().await;

    // Element count overflow (S qa/L0_http/http_test.py test_buffer_size_overflow).
    let overflow = json!({"inputs": [{"name": "INPUT0", "shape": [16u64, (1u64 << 60) + 2],
        "datatype": "FP32", "data": [1.0]}]});
    server
        .infer_json("identity_fp32", &overflow)
        .await
        .assert_error_contains(400, "causes total element count to exceed maximum size of");
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_size_overflow_is_reported() {
    // S qa/L0_http/http_test.py test_buffer_size_overflow: the element count fits in i64 but
    // the byte size does not.
    let server = TestServer::start_default().await;
    let overflow = json!({"inputs": [{"name": "INPUT0", "shape": [4u64, (1u64 << 60) + 2],
        "datatype": "FP32", "data": [1.0]}]});
    server
        .infer_json("identity_fp32", &overflow)
        .await
        .assert_error_contains(400, "byte size overflow for input");
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_shape_dimension_uses_tritons_answer() {
    // S qa/L0_http/http_test.py test_negative_dimensions asserts 500 and this text.
    let server = TestServer::start_default().await;
    let request = json!({"inputs": [{"name": "INPUT0", "shape": [2, -5], "datatype": "FP32",
        "data": [1.0]}]});
    server
        .infer_json("identity_fp32", &request)
        .await
        .assert_error_contains(
        500,
        "Unable to parse 'shape': attempt to access JSON non-unsigned-integer as unsigned-integer",
    );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_framing_errors() {
    let server = TestServer::start_default().await;
    let input = f32_bytes(&ramp(16, 0.0));
    let header = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
        "parameters": {"binary_data_size": 64}}]});

    // Truncated binary section.
    server
        .infer_binary("identity_fp32", &header, &[&input[..60]])
        .await
        .assert_error(
            400,
            "unexpected size for input 'INPUT0', expecting 4 additional bytes for model 'identity_fp32'",
        );
    server.assert_serving().await;
    // Leftover bytes.
    server
        .infer_binary("identity_fp32", &header, &[&input, &[1, 2, 3, 4]])
        .await
        .assert_error(
            400,
            "unexpected additional input data for model 'identity_fp32'",
        );
    server.assert_serving().await;

    let (body, length) = binary_body(&header, &[&input]);
    server
        .post_with(INFER, &[(HEADER_LENGTH, "abc")], body.clone())
        .await
        .assert_error(
            400,
            "Unable to parse Inference-Header-Content-Length, got: abc",
        );
    server.assert_serving().await;
    let too_long = (body.len() + 10).to_string();
    server
        .post_with(INFER, &[(HEADER_LENGTH, &too_long)], body.clone())
        .await
        .assert_error(
            400,
            &format!(
                "inference header size should be in range (0, {}), got: {too_long}",
                body.len()
            ),
        );
    server.assert_serving().await;
    for value in ["-5", "2147483648", "99999999999999999999"] {
        let reply = server
            .post_with(INFER, &[(HEADER_LENGTH, value)], body.clone())
            .await;
        assert_eq!(reply.status, 400, "{value}: {}", reply.text());
        assert!(!reply.error_message().is_empty(), "{value}");
        server.assert_serving().await;
    }
    // A header length that cuts the JSON.
    let reply = server
        .post_with(
            INFER,
            &[(HEADER_LENGTH, &(length - 3).to_string())],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    server.assert_serving().await;

    // A binary input in a request without the header (the body is the JSON alone).
    server.post(INFER, header.to_string()).await.assert_error(
        400,
        "must specify valid 'Infer-Header-Content-Length' in request header and 'binary_data_size' when passing inputs in binary data format",
    );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_validation_errors() {
    let server = TestServer::start_default().await;
    let sixteen = ramp(16, 0.0);

    let int32 = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
        "data": vec![1; 16]}]});
    server
        .infer_json("identity_fp32", &int32)
        .await
        .assert_error(
        400,
        "[request id: <id_unknown>] inference input 'INPUT0' data-type is 'INT32', but model 'identity_fp32' expects 'FP32'",
    );
    server.assert_serving().await;
    server
        .infer_json("identity_fp32", &fp32_request("INPUT0", &[1, 15], &ramp(15, 0.0)))
        .await
        .assert_error(
            400,
            "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'identity_fp32'. Expected [-1,16], got [1,15]. NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size.",
        );
    server.assert_serving().await;
    server
        .infer_json(
            "identity_fp32",
            &fp32_request("INPUT0", &[9, 16], &ramp(144, 0.0)),
        )
        .await
        .assert_error(
            400,
            "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'identity_fp32'",
        );
    server.assert_serving().await;
    server
        .infer_json("identity_fp32", &fp32_request("NOPE", &[1, 16], &sixteen))
        .await
        .assert_error(
            400,
            "unexpected inference input 'NOPE' for model 'identity_fp32'",
        );
    server.assert_serving().await;

    let mut request = fp32_request("INPUT0", &[1, 16], &sixteen);
    request["outputs"] = json!([{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]);
    server
        .infer_json("identity_fp32", &request)
        .await
        .assert_error(400, "output 'OUTPUT0' already exists in request");
    server.assert_serving().await;
    request["outputs"] = json!([{"name": "NOPE"}]);
    server
        .infer_json("identity_fp32", &request)
        .await
        .assert_error(
            400,
            "unexpected inference output 'NOPE' for model 'identity_fp32'",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_input_uses_tritons_text() {
    // S qa/L0_input_validation/input_validation_test.py asserts this text.
    let server = TestServer::start_default().await;
    server
        .infer_json("identity_fp32", &json!({"inputs": []}))
        .await
        .assert_error(
            400,
            "[request id: <id_unknown>] expected 1 inputs but got 0 inputs for model 'identity_fp32'. Got input(s) [], but missing required input(s) ['INPUT0']. Please provide all required input(s).",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_size_mismatch_uses_tritons_text() {
    // Core's byte-size check (S qa/L0_input_validation, L0_shared_memory).
    let server = TestServer::start_default().await;
    let header = json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
        "parameters": {"binary_data_size": 60}}]});
    server
        .infer_binary("identity_fp32", &header, &[&[0u8; 60]])
        .await
        .assert_error(
            400,
            "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 64, got 60",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_count_mismatches_use_tritons_text() {
    // Core's BYTES element count check (S qa/L0_input_validation
    // test_input_string_shape_validation): too few, then too many elements.
    let server = TestServer::start_default().await;
    let two = bytes_tensor(&["a", "b"]);
    let header = json!({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES",
        "parameters": {"binary_data_size": two.len()}}]});
    server
        .infer_binary("identity_bytes", &header, &[&two])
        .await
        .assert_error_contains(
            400,
            "expected 3 string elements for inference input 'INPUT0' for model 'identity_bytes', got 2",
        );
    server.assert_serving().await;
    let five = bytes_tensor(&["a", "b", "c", "d", "e"]);
    let header = json!({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES",
        "parameters": {"binary_data_size": five.len()}}]});
    server
        .infer_binary("identity_bytes", &header, &[&five])
        .await
        .assert_error_contains(
            400,
            "unexpected number of string elements 4 for inference input 'INPUT0' for model 'identity_bytes', expecting 3",
        );
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_rejected() {
    let repo = base_repo();
    let config = ServeConfig {
        http_max_input_size: 1024,
        ..ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;

    let mut request = fp32_request("INPUT0", &[1, 16], &ramp(16, 0.0));
    request["id"] = json!("x".repeat(2000));
    let body = request.to_string();
    server.post(INFER, body.clone()).await.assert_error(
        400,
        &format!(
            "request JSON size of {} bytes exceeds the maximum allowed input size of 1024 bytes. Use --http-max-input-size to increase the limit.",
            body.len()
        ),
    );
    server.assert_serving().await;

    // Small on the wire, too large once decompressed.
    let compressed = gzip(body.as_bytes());
    assert!(compressed.len() < 1024);
    server
        .post_with(INFER, &[("content-encoding", "gzip")], compressed)
        .await
        .assert_error_contains(400, "exceeds the maximum allowed input size of 1024 bytes");
    server.assert_serving().await;

    // No Content-Length: a chunked body is refused once it passes the limit. Only the chunks
    // up to the one that crosses it are sent, so that the server reads all that was sent.
    let mut raw =
        format!("POST {INFER} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for piece in body.as_bytes()[..1124].chunks(256) {
        raw.extend(format!("{:X}\r\n", piece.len()).into_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    let (status, response) = raw_exchange(server.http, raw).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&response));
    let error: Value = serde_json::from_slice(&response).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum allowed input size of 1024 bytes"),
        "{error}"
    );
    server.assert_serving().await;

    server
        .post(
            "/v2/repository/index",
            format!("{{\"ready\":true,\"pad\":\"{}\"}}", "x".repeat(2000)),
        )
        .await
        .assert_error_contains(400, "exceeds the maximum allowed input size of 1024 bytes");
    server.assert_serving().await;
    server.shutdown().await.unwrap();
}

fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nesting_depth_limit() {
    // S qa/L0_http/http_test.py test_json_recursion_depth_limit.
    let server = TestServer::start_default().await;
    let body = |depth: usize| {
        format!(
            r#"{{"inputs":[{{"name":"INPUT0","datatype":"BYTES","shape":[1,1],"data":{}}}]}}"#,
            nested(depth, "\"hello\"")
        )
    };
    server
        .post("/v2/models/identity_bytes/infer", body(120))
        .await
        .assert_error_contains(
            400,
            "JSON nesting depth exceeds maximum allowed limit (100)",
        );
    server.assert_serving().await;
    let reply = server
        .post("/v2/models/identity_bytes/infer", body(50))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["outputs"][0]["data"], json!(["hello"]));
    server.shutdown().await.unwrap();
}

/// The value of one sample line (`name{labels} value`) of a Prometheus text page.
fn sample(text: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{series} in\n{text}"));
    line[prefix.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("numeric sample: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_traffic() {
    let server = TestServer::start_default().await;
    let text = server.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            r#"nv_inference_request_success{model="identity_fp32",version="1"}"#
        ),
        0
    );
    for batch in [1u64, 2, 1] {
        let reply = server
            .infer_json(
                "identity_fp32",
                &fp32_request("INPUT0", &[batch, 16], &ramp(16 * batch as usize, 0.0)),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let bad = fp32_request("INPUT0", &[1, 15], &ramp(15, 0.0));
    assert_eq!(server.infer_json("identity_fp32", &bad).await.status, 400);

    let reply = server
        .request(
            reqwest::Method::GET,
            format!("http://{}/metrics", server.metrics),
            &[],
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type(), "text/plain; charset=utf-8");
    let text = reply.text();
    assert!(text.contains("# TYPE nv_inference_request_success counter"));
    assert!(text.contains("# HELP nv_inference_count "));
    let labels = r#"{model="identity_fp32",version="1"}"#;
    assert_eq!(
        sample(&text, &format!("nv_inference_request_success{labels}")),
        3
    );
    assert_eq!(sample(&text, &format!("nv_inference_count{labels}")), 4);
    assert_eq!(
        sample(&text, &format!("nv_inference_exec_count{labels}")),
        3
    );
    assert_eq!(
        sample(
            &text,
            r#"nv_inference_request_success{model="identity_bytes",version="1"}"#
        ),
        0
    );
    for reason in ["BACKEND", "CANCELED", "OTHER", "REJECTED"] {
        sample(
            &text,
            &format!(
                r#"nv_inference_request_failure{{model="identity_fp32",reason="{reason}",version="1"}}"#
            ),
        );
    }

    let other = server
        .request(
            reqwest::Method::GET,
            format!("http://{}/other", server.metrics),
            &[],
            None,
        )
        .await;
    assert_eq!(other.status, 404);
    let post = server
        .request(
            reqwest::Method::POST,
            format!("http://{}/metrics", server.metrics),
            &[],
            Some(Vec::new()),
        )
        .await;
    assert_eq!(post.status, 405);
    server.shutdown().await.unwrap();
}

/// Opens a connection and sends the head of an inference request with `Expect: 100-continue`,
/// returning once the server answered `100 Continue` (its handler is reading the body).
fn start_request_in_flight(addr: SocketAddr, body_len: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {body_len}\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        assert!(interim.len() < 1024, "interim response too long");
        stream.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim).to_string();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_completes_in_flight_requests() {
    let mut server = TestServer::start_default().await;
    server.assert_serving().await;
    let (http, grpc) = (server.http, server.grpc);
    let values = ramp(16, 7.0);
    let body = fp32_request("INPUT0", &[1, 16], &values).to_string();

    // One request whose handler is already running (waiting for its body).
    let length = body.len();
    let stream = tokio::task::spawn_blocking(move || start_request_in_flight(http, length))
        .await
        .unwrap();

    // More requests racing with the shutdown signal.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let racing: Vec<_> = (0..8)
        .map(|_| {
            let (client, body, url) = (client.clone(), body.clone(), server.url(INFER));
            tokio::spawn(async move {
                let response = client.post(url).body(body).send().await?;
                let status = response.status().as_u16();
                let bytes = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes))
            })
        })
        .collect();
    server.signal_shutdown();

    let (status, response) = tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        stream.write_all(body.as_bytes()).unwrap();
        read_response(&mut stream)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&response));
    let json: Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(f32_values(&json["outputs"][0]["data"]), values);

    for handle in racing {
        // A request the server accepted must succeed; one that raced the closing listener may
        // fail to connect, but never gets a wrong answer.
        if let Ok((status, bytes)) = handle.await.unwrap() {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(f32_values(&json["outputs"][0]["data"]), values);
        }
    }

    server.shutdown().await.expect("clean shutdown");
    for addr in [http, grpc] {
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err(),
            "{addr} no longer accepts connections"
        );
    }
}
