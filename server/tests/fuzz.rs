//! Fuzzing the server's request path end to end (nereid-testkit::fuzz): mutated REST bodies,
//! with and without binary tensor framing (`Inference-Header-Content-Length`, itself mutated),
//! sent over real HTTP to an in-process server serving the default models; and mutated gRPC
//! messages sent as they are, bytes on the wire. Every request must be answered (a result or
//! Triton's JSON error / a gRPC status, never a dropped connection or an internal panic), and
//! the server must serve normally afterwards.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use common::TestServer;
use nereid_testkit::fuzz;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const MODELS: [&str; 3] = ["identity_fp32", "identity_bytes", "iris_classifier"];

/// A runtime for the test's blocking calls, and the default models served on it.
fn serving() -> (tokio::runtime::Runtime, TestServer) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(TestServer::start_default());
    (runtime, server)
}

#[test]
fn http_infer_bodies() {
    let (runtime, server) = serving();
    let seeds = fuzz::seeds_from(&Path::new(ROOT).join("fuzz/corpus/rest"));
    let statuses = Mutex::new(BTreeMap::<u16, u64>::new());
    fuzz::run("http_infer_bodies", fuzz::mutated(seeds), |input| {
        // [header length, u16 LE][body]; the model by the input's length.
        let model = MODELS[input.len() % MODELS.len()];
        let (header, body) = match input.get(..2) {
            Some(len) => (
                Some(u16::from_le_bytes([len[0], len[1]])),
                input[2..].to_vec(),
            ),
            None => (None, input.clone()),
        };
        let header = header
            .filter(|&h| usize::from(h) < body.len())
            .map(|h| h.to_string());
        let mut headers = vec![("content-type", "application/octet-stream")];
        if let Some(h) = &header {
            headers.push((nereid_protocol::rest::HEADER_CONTENT_LENGTH, h.as_str()));
        }
        let reply = runtime.block_on(server.post_with(
            &format!("/v2/models/{model}/infer"),
            &headers,
            body,
        ));
        *statuses
            .lock()
            .expect("counts")
            .entry(reply.status)
            .or_default() += 1;
        match reply.status {
            200 => {}
            400 | 404 | 413 | 415 | 503 => {
                let doc = reply.json();
                assert!(
                    doc["error"].is_string(),
                    "{} without an error body: {doc}",
                    reply.status
                );
            }
            // Triton's answer to a negative dimension (qa/L0_http/http_test.py asserts it).
            500 if reply.json()["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("Unable to parse 'shape'")) => {}
            other => panic!("unexpected status {other}: {}", reply.text()),
        }
    });
    println!("statuses: {:?}", statuses.into_inner().expect("counts"));
    runtime.block_on(server.assert_serving());
    runtime.block_on(server.shutdown()).expect("clean shutdown");
}

/// Sends a gRPC message's bytes as they are, and reads the reply's bytes as they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[test]
fn grpc_infer_messages() {
    use nereid_protocol::inference::model_infer_request::InferInputTensor;
    use nereid_protocol::inference::ModelInferRequest;
    use prost::Message as _;

    let (runtime, server) = serving();
    let channel = runtime
        .block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
                .expect("endpoint")
                .connect(),
        )
        .expect("gRPC connects");
    let tensor = |name: &str, datatype: &str, shape: &[i64]| InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    };
    let seeds: Vec<Vec<u8>> = [
        ModelInferRequest {
            model_name: "identity_fp32".into(),
            inputs: vec![tensor("INPUT0", "FP32", &[1, 16])],
            raw_input_contents: vec![vec![0u8; 64].into()],
            ..Default::default()
        },
        ModelInferRequest {
            model_name: "identity_bytes".into(),
            inputs: vec![tensor("INPUT0", "BYTES", &[1, 2])],
            raw_input_contents: vec![vec![1, 0, 0, 0, b'a', 2, 0, 0, 0, b'b', b'c'].into()],
            ..Default::default()
        },
        ModelInferRequest {
            model_name: "iris_classifier".into(),
            inputs: vec![tensor("INPUT", "FP32", &[1, 4])],
            raw_input_contents: vec![[5.1f32, 3.5, 1.4, 0.2]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into()],
            ..Default::default()
        },
    ]
    .iter()
    .map(|m| m.encode_to_vec())
    .collect();
    let codes = Mutex::new(BTreeMap::<String, u64>::new());
    fuzz::run("grpc_infer_messages", fuzz::mutated(seeds), |input| {
        let mut client = tonic::client::Grpc::new(channel.clone());
        let result = runtime.block_on(async {
            client.ready().await.expect("channel ready");
            client
                .unary(
                    tonic::Request::new(input),
                    tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/inference.GRPCInferenceService/ModelInfer",
                    ),
                    RawCodec,
                )
                .await
        });
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            // gRPC's answer to bytes that are not a ModelInferRequest; any other internal error
            // is a bug.
            Err(status) if status.code() == tonic::Code::Internal => {
                assert!(
                    status
                        .message()
                        .contains("failed to decode Protobuf message"),
                    "internal error: {status:?}"
                );
                tonic::Code::Internal
            }
            Err(status) => status.code(),
        };
        assert!(
            matches!(
                code,
                tonic::Code::Ok
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::Unavailable
                    | tonic::Code::Internal
            ),
            "unexpected gRPC code {code:?}"
        );
        *codes
            .lock()
            .expect("counts")
            .entry(format!("{code:?}"))
            .or_default() += 1;
    });
    println!("codes: {:?}", codes.into_inner().expect("counts"));
    runtime.block_on(server.assert_serving());
    runtime.block_on(server.shutdown()).expect("clean shutdown");
}
