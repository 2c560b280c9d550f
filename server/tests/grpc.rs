//! The `inference.GRPCInferenceService` front end and `grpc.health.v1` over a real channel:
//! every RPC, raw and typed tensor contents, streaming with per-request errors, statistics,
//! error status codes (each followed by a request that must still succeed) and messages larger
//! than tonic's default 4 MiB. Expected behaviour is Triton's (TRITON-PROTOCOL.md §2).

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid_protocol::inference::infer_parameter::ParameterChoice;
use nereid_protocol::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use nereid_protocol::inference::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

type Client = GrpcInferenceServiceClient<Channel>;

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn output(name: &str) -> InferRequestedOutputTensor {
    InferRequestedOutputTensor {
        name: name.into(),
        ..Default::default()
    }
}

fn int64_param(value: i64) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(value)),
    }
}

/// A request for `identity_fp32` with FP32 data in `raw_input_contents`.
fn fp32_raw_request(batch: i64, values: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "identity_fp32".into(),
        inputs: vec![input("INPUT0", "FP32", &[batch, 16])],
        raw_input_contents: vec![f32_bytes(values).into()],
        ..Default::default()
    }
}

/// A well-formed inference must still succeed and echo its input.
async fn assert_grpc_serving(client: &mut Client) {
    let values = ramp(16, 0.75);
    let response = client
        .model_infer(fp32_raw_request(1, &values))
        .await
        .expect("follow-up inference succeeds")
        .into_inner();
    assert_eq!(response.outputs[0].name, "OUTPUT0");
    assert_eq!(response.outputs[0].shape, vec![1, 16]);
    assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), values);
}

/// Asserts a failed call's code and exact message.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), code, "code of {status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_readiness_and_server_metadata() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    for (name, version, ready) in [
        ("identity_fp32", "", true),
        ("identity_fp32", "1", true),
        ("iris_classifier", "", true),
        // Unknown models are "not ready", not an error (L0_lifecycle).
        ("nope", "", false),
        ("identity_fp32", "9", false),
    ] {
        let reply = client
            .model_ready(ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("ModelReady {name} {version}: {s:?}"))
            .into_inner();
        assert_eq!(reply.ready, ready, "{name} {version}");
    }

    let metadata = client
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!metadata.name.is_empty());
    assert!(metadata.version.starts_with(|c: char| c.is_ascii_digit()));
    let extensions: BTreeSet<&str> = metadata.extensions.iter().map(String::as_str).collect();
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

    // grpc.health.v1: SERVING for the whole server and for the inference service.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(server.grpc_channel().await);
    for service in ["", "inference.GRPCInferenceService"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            reply.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_config() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    for version in ["", "1"] {
        let metadata = client
            .model_metadata(ModelMetadataRequest {
                name: "identity_fp32".into(),
                version: version.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(metadata.name, "identity_fp32");
        assert_eq!(metadata.versions, vec!["1"]);
        assert_eq!(metadata.platform, "identity");
        assert_eq!(metadata.inputs.len(), 1);
        assert_eq!(metadata.inputs[0].name, "INPUT0");
        assert_eq!(metadata.inputs[0].datatype, "FP32");
        assert_eq!(metadata.inputs[0].shape, vec![-1, 16]);
        assert_eq!(metadata.outputs[0].name, "OUTPUT0");
        assert_eq!(metadata.outputs[0].shape, vec![-1, 16]);
    }
    assert_status(
        client
            .model_metadata(ModelMetadataRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await,
        Code::NotFound,
        "Request for unknown model: 'nope' is not found",
    );
    assert_status(
        client
            .model_metadata(ModelMetadataRequest {
                name: "identity_fp32".into(),
                version: "9".into(),
            })
            .await,
        Code::NotFound,
        "Request for unknown model: 'identity_fp32' version 9 is not found",
    );

    let config = client
        .model_config(ModelConfigRequest {
            name: "identity_fp32".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .expect("a config");
    assert_eq!(config.name, "identity_fp32");
    assert_eq!(config.backend, "identity");
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(config.input[0].name, "INPUT0");
    assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(config.input[0].dims, vec![16]);
    assert_eq!(config.output[0].dims, vec![16]);
    let iris = client
        .model_config(ModelConfigRequest {
            name: "iris_classifier".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(iris.output[0].label_filename, "labels.txt");
    assert_status(
        client
            .model_config(ModelConfigRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await,
        Code::NotFound,
        "Request for unknown model: 'nope' is not found",
    );
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_with_raw_contents() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;

    let values = ramp(48, -1.0);
    let mut request = fp32_raw_request(3, &values);
    request.id = "grpc-7".into();
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(response.model_name, "identity_fp32");
    assert_eq!(response.model_version, "1");
    assert_eq!(response.id, "grpc-7");
    assert_eq!(response.outputs.len(), 1);
    let out = &response.outputs[0];
    assert_eq!(
        (out.name.as_str(), out.datatype.as_str()),
        ("OUTPUT0", "FP32")
    );
    assert_eq!(out.shape, vec![3, 16]);
    assert!(
        out.contents.is_none(),
        "data travels in raw_output_contents"
    );
    assert_eq!(response.raw_output_contents.len(), 1);
    assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), values);

    // The protocol crate's conversion reads the same response.
    let converted = nereid_protocol::grpc::response_from_grpc(response).unwrap();
    assert_eq!(converted.outputs[0].to_vec::<f32>(), values);

    // BYTES in raw form: length-prefixed elements, both ways.
    let strings = bytes_tensor(&["raw", "", "bytes"]);
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "identity_bytes".into(),
            inputs: vec![input("INPUT0", "BYTES", &[1, 3])],
            raw_input_contents: vec![strings.clone().into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].datatype, "BYTES");
    assert_eq!(response.outputs[0].shape, vec![1, 3]);
    assert_eq!(response.raw_output_contents[0].as_ref(), strings.as_slice());

    // Classification: output parameter `classification` as int64_param.
    let rows = [5.1f32, 3.5, 1.4, 0.2, 6.7, 3.1, 5.6, 2.4];
    let mut classify = output("PROBABILITIES");
    classify
        .parameters
        .insert("classification".into(), int64_param(1));
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "iris_classifier".into(),
            inputs: vec![input("INPUT", "FP32", &[2, 4])],
            outputs: vec![classify],
            raw_input_contents: vec![f32_bytes(&rows).into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].datatype, "BYTES");
    assert_eq!(response.outputs[0].shape, vec![2, 1]);
    let classes: Vec<String> = nereid_protocol::bytes_elements(&response.raw_output_contents[0])
        .map(|e| String::from_utf8(e.unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(classes.len(), 2);
    assert!(classes[0].ends_with(":0:setosa"), "{classes:?}");
    assert!(classes[1].ends_with(":2:virginica"), "{classes:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_with_typed_contents() {
    let server = TestServer::start_repo(rich_repo()).await;
    let mut client = server.grpc_client().await;
    let typed = |model: &str, datatype: &str, count: i64, contents: InferTensorContents| {
        let mut tensor = input("INPUT0", datatype, &[count]);
        tensor.contents = Some(contents);
        ModelInferRequest {
            model_name: model.into(),
            inputs: vec![tensor],
            ..Default::default()
        }
    };

    let values = ramp(16, 2.0);
    let mut tensor = input("INPUT0", "FP32", &[1, 16]);
    tensor.contents = Some(InferTensorContents {
        fp32_contents: values.clone(),
        ..Default::default()
    });
    let request = ModelInferRequest {
        model_name: "identity_fp32".into(),
        inputs: vec![tensor],
        ..Default::default()
    };
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert!(response.outputs[0].contents.is_none());
    assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), values);

    let cases: Vec<(&str, &str, i64, InferTensorContents, Vec<u8>)> = vec![
        (
            "id_int32",
            "INT32",
            3,
            InferTensorContents {
                int_contents: vec![i32::MIN, 0, i32::MAX],
                ..Default::default()
            },
            [i32::MIN, 0, i32::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "id_int64",
            "INT64",
            2,
            InferTensorContents {
                int64_contents: vec![i64::MIN, i64::MAX],
                ..Default::default()
            },
            [i64::MIN, i64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "id_uint8",
            "UINT8",
            3,
            InferTensorContents {
                uint_contents: vec![0, 1, 255],
                ..Default::default()
            },
            vec![0, 1, 255],
        ),
        (
            "id_uint64",
            "UINT64",
            1,
            InferTensorContents {
                uint64_contents: vec![u64::MAX],
                ..Default::default()
            },
            u64::MAX.to_le_bytes().to_vec(),
        ),
        (
            "id_bool",
            "BOOL",
            3,
            InferTensorContents {
                bool_contents: vec![true, false, true],
                ..Default::default()
            },
            vec![1, 0, 1],
        ),
        (
            "id_fp64",
            "FP64",
            2,
            InferTensorContents {
                fp64_contents: vec![1.5, -1e300],
                ..Default::default()
            },
            [1.5f64, -1e300]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "id_string",
            "BYTES",
            2,
            InferTensorContents {
                bytes_contents: vec![b"typed".to_vec(), b"".to_vec()],
                ..Default::default()
            },
            bytes_tensor(&["typed", ""]),
        ),
    ];
    for (model, datatype, count, contents, expected) in cases {
        let response = client
            .model_infer(typed(model, datatype, count, contents))
            .await
            .unwrap_or_else(|s| panic!("{model}: {s:?}"))
            .into_inner();
        let out = &response.outputs[0];
        assert_eq!(out.datatype, datatype, "{model}");
        assert_eq!(out.shape, vec![count], "{model}");
        assert!(out.contents.is_none(), "{model}: raw output only");
        assert_eq!(
            response.raw_output_contents[0].as_ref(),
            expected.as_slice(),
            "{model}"
        );
    }

    // BYTES through typed contents on a batching model.
    let mut tensor = input("INPUT0", "BYTES", &[2, 1]);
    tensor.contents = Some(InferTensorContents {
        bytes_contents: vec![b"x".to_vec(), b"yz".to_vec()],
        ..Default::default()
    });
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "identity_bytes".into(),
            inputs: vec![tensor],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![2, 1]);
    assert_eq!(
        response.raw_output_contents[0].as_ref(),
        bytes_tensor(&["x", "yz"]).as_slice()
    );
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_errors_map_to_status_codes() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    let sixteen = ramp(16, 0.0);

    let mut request = fp32_raw_request(1, &sixteen);
    request.model_name = "nope".into();
    assert_status(
        client.model_infer(request).await,
        Code::NotFound,
        "Request for unknown model: 'nope' is not found",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request.model_version = "9".into();
    assert_status(
        client.model_infer(request).await,
        Code::NotFound,
        "Request for unknown model: 'identity_fp32' version 9 is not found",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request.inputs[0].datatype = "INT32".into();
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "[request id: <id_unknown>] inference input 'INPUT0' data-type is 'INT32', but model 'identity_fp32' expects 'FP32'",
    );
    assert_grpc_serving(&mut client).await;

    // Raw and typed contents mixed.
    let mut request = fp32_raw_request(1, &sixteen);
    request.inputs[0].contents = Some(InferTensorContents {
        fp32_contents: sixteen.clone(),
        ..Default::default()
    });
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'identity_fp32'",
    );
    assert_grpc_serving(&mut client).await;

    // No data at all.
    let request = ModelInferRequest {
        model_name: "identity_fp32".into(),
        inputs: vec![input("INPUT0", "FP32", &[1, 16])],
        ..Default::default()
    };
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "unable to find data for input tensor 'INPUT0' for model 'identity_fp32' in request.",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &ramp(15, 0.0));
    request.inputs[0].shape = vec![1, 15];
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'identity_fp32'. Expected [-1,16], got [1,15]. NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size.",
    );
    assert_grpc_serving(&mut client).await;

    assert_status(
        client
            .model_infer(fp32_raw_request(9, &ramp(144, 0.0)))
            .await,
        Code::InvalidArgument,
        "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'identity_fp32'",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request.outputs = vec![output("NOPE")];
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "unexpected inference output 'NOPE' for model 'identity_fp32'",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request.outputs = vec![output("OUTPUT0"), output("OUTPUT0")];
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "output 'OUTPUT0' already exists in request",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request.inputs[0].name = "NOPE".into();
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "unexpected inference input 'NOPE' for model 'identity_fp32'",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request
        .parameters
        .insert("triton_anything".into(), int64_param(1));
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting with 'triton_' are allowed: triton_enable_empty_final_response",
    );
    assert_grpc_serving(&mut client).await;

    // What NVIDIA's clients send is accepted, with Triton's type check.
    let mut request = fp32_raw_request(1, &sixteen);
    request.parameters.insert(
        "triton_enable_empty_final_response".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(true)),
        },
    );
    assert!(client.model_infer(request).await.is_ok());
    let mut request = fp32_raw_request(1, &sixteen);
    request
        .parameters
        .insert("triton_enable_empty_final_response".into(), int64_param(1));
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "invalid value type for 'triton_enable_empty_final_response' parameter, expected bool_param.",
    );
    assert_grpc_serving(&mut client).await;

    let mut request = fp32_raw_request(1, &sixteen);
    request.inputs[0].datatype = "FP99".into();
    let status = client.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_content_size_mismatch_uses_tritons_text() {
    // Core's byte-size check (S qa/L0_input_validation input_validation_test.py).
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    let mut request = fp32_raw_request(1, &ramp(16, 0.0));
    request.raw_input_contents = vec![vec![0u8; 60].into()];
    assert_status(
        client.model_infer(request).await,
        Code::InvalidArgument,
        "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 64, got 60",
    );
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_infer_reports_errors_in_band_and_stays_open() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<ModelInferRequest>(4);
    let mut responses = client
        .model_stream_infer(ReceiverStream::new(receiver))
        .await
        .expect("stream opens")
        .into_inner();

    let first = ramp(16, 1.0);
    let mut good = fp32_raw_request(1, &first);
    good.id = "one".into();
    sender.send(good).await.unwrap();
    let mut bad = fp32_raw_request(1, &first);
    bad.model_name = "nope".into();
    bad.id = "two".into();
    sender.send(bad).await.unwrap();

    // Requests run concurrently, so the replies come in either order; each names its request
    // and is marked final, as Triton marks stream responses.
    let mut replies = HashMap::new();
    for _ in 0..2 {
        let reply = responses.message().await.unwrap().expect("a reply");
        let response = reply
            .infer_response
            .clone()
            .expect("a response in every reply");
        assert_eq!(
            response.parameters["triton_final_response"].parameter_choice,
            Some(ParameterChoice::BoolParam(true))
        );
        replies.insert(response.id.clone(), reply);
    }
    let one = &replies["one"];
    assert_eq!(one.error_message, "");
    let response = one.infer_response.as_ref().unwrap();
    assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), first);
    let two = &replies["two"];
    assert_eq!(
        two.error_message,
        "Request for unknown model: 'nope' is not found"
    );
    assert_eq!(two.infer_response.as_ref().unwrap().model_name, "nope");

    // The stream is still open: a third request is answered on it.
    let third = ramp(32, 9.0);
    let mut again = fp32_raw_request(2, &third);
    again.id = "three".into();
    sender.send(again).await.unwrap();
    let reply = responses.message().await.unwrap().expect("third reply");
    assert_eq!(reply.error_message, "");
    let response = reply.infer_response.unwrap();
    assert_eq!(response.id, "three");
    assert_eq!(response.outputs[0].shape, vec![2, 16]);
    assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), third);

    // Closing the request side ends the response stream cleanly.
    drop(sender);
    assert!(responses.message().await.unwrap().is_none());
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_requests_run_concurrently() {
    // A model that batches up to 8 and waits up to 30 s for a full batch: eight requests on one
    // stream form one batch only if the stream does not wait for each reply before the next.
    let repo = Repo::new().model(
        "gather",
        "name: \"gather\"\nbackend: \"identity\"\nmax_batch_size: 8\n\
         input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 1 ] } ]\n\
         output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 1 ] } ]\n\
         dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 30000000 }\n",
        &[1],
    );
    let server = TestServer::start_repo(repo).await;
    let mut client = server.grpc_client().await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<ModelInferRequest>(8);
    let mut responses = client
        .model_stream_infer(ReceiverStream::new(receiver))
        .await
        .expect("stream opens")
        .into_inner();
    for i in 0..8 {
        let mut request = fp32_raw_request(1, &[i as f32]);
        request.model_name = "gather".into();
        request.inputs[0].shape = vec![1, 1];
        request.id = format!("r{i}");
        sender.send(request).await.unwrap();
    }
    let mut ids = BTreeSet::new();
    for _ in 0..8 {
        let reply = tokio::time::timeout(std::time::Duration::from_secs(20), responses.message())
            .await
            .expect("a full batch runs at once")
            .unwrap()
            .expect("a reply");
        assert_eq!(reply.error_message, "");
        let response = reply.infer_response.unwrap();
        let i: usize = response.id[1..].parse().unwrap();
        assert_eq!(f32_from_bytes(&response.raw_output_contents[0]), [i as f32]);
        ids.insert(response.id);
    }
    assert_eq!(ids.len(), 8);
    let stats = client
        .model_statistics(ModelStatisticsRequest {
            name: "gather".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let stats = &stats.model_stats[0];
    assert_eq!((stats.inference_count, stats.execution_count), (8, 1));
    drop(sender);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_exactly() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    for batch in [2i64, 1] {
        let values = ramp(16 * batch as usize, 0.0);
        client
            .model_infer(fp32_raw_request(batch, &values))
            .await
            .unwrap();
    }
    let mut bad = fp32_raw_request(1, &ramp(16, 0.0));
    bad.inputs[0].datatype = "INT32".into();
    assert!(client.model_infer(bad).await.is_err());

    let stats = |name: &str, version: &str| ModelStatisticsRequest {
        name: name.into(),
        version: version.into(),
    };
    let all = client
        .model_statistics(stats("", ""))
        .await
        .unwrap()
        .into_inner();
    let names: BTreeSet<&str> = all.model_stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["identity_bytes", "identity_fp32", "iris_classifier"])
    );
    for request in [stats("identity_fp32", ""), stats("identity_fp32", "1")] {
        let reply = client.model_statistics(request).await.unwrap().into_inner();
        assert_eq!(reply.model_stats.len(), 1);
        let stat = &reply.model_stats[0];
        assert_eq!(stat.version, "1");
        let inference = stat.inference_stats.as_ref().expect("inference_stats");
        assert_eq!(inference.success.as_ref().unwrap().count, 2);
        assert_eq!(inference.queue.as_ref().unwrap().count, 2);
        assert_eq!(stat.inference_count, 3);
        assert_eq!(stat.execution_count, 2);
        assert!(stat.last_inference > 0);
        let batches: Vec<(u64, u64)> = stat
            .batch_stats
            .iter()
            .map(|b| (b.batch_size, b.compute_infer.as_ref().unwrap().count))
            .collect();
        assert_eq!(batches, vec![(1, 1), (2, 1)]);
    }
    assert_status(
        client.model_statistics(stats("nope", "")).await,
        Code::NotFound,
        "Request for unknown model: 'nope' is not found",
    );
    assert_status(
        client.model_statistics(stats("identity_fp32", "9")).await,
        Code::NotFound,
        "Request for unknown model: 'identity_fp32' version 9 is not found",
    );
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_and_model_control() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    for ready in [false, true] {
        let index = client
            .repository_index(RepositoryIndexRequest {
                repository_name: String::new(),
                ready,
            })
            .await
            .unwrap()
            .into_inner();
        let mut rows: Vec<(String, String, String, String)> = index
            .models
            .into_iter()
            .map(|m| (m.name, m.version, m.state, m.reason))
            .collect();
        rows.sort();
        let expected: Vec<(String, String, String, String)> =
            ["identity_bytes", "identity_fp32", "iris_classifier"]
                .iter()
                .map(|n| (n.to_string(), "1".into(), "READY".into(), String::new()))
                .collect();
        assert_eq!(rows, expected, "ready={ready}");
    }
    assert_status(
        client
            .repository_index(RepositoryIndexRequest {
                repository_name: "foo".into(),
                ready: false,
            })
            .await,
        Code::Unimplemented,
        "'repository_name' specification is not supported",
    );

    assert_status(
        client
            .repository_model_load(RepositoryModelLoadRequest {
                model_name: "identity_fp32".into(),
                ..Default::default()
            })
            .await,
        Code::Unavailable,
        "explicit model load / unload is not allowed if polling is enabled",
    );
    assert_grpc_serving(&mut client).await;
    let mut parameters = HashMap::new();
    parameters.insert(
        "unload_dependents".to_string(),
        ModelRepositoryParameter {
            parameter_choice: Some(model_repository_parameter::ParameterChoice::BoolParam(
                false,
            )),
        },
    );
    assert_status(
        client
            .repository_model_unload(RepositoryModelUnloadRequest {
                model_name: "identity_fp32".into(),
                parameters,
                ..Default::default()
            })
            .await,
        Code::Unavailable,
        "explicit model load / unload is not allowed if polling is enabled",
    );
    // Nothing was unloaded.
    assert!(
        client
            .model_ready(ModelReadyRequest {
                name: "identity_fp32".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_extension_calls_say_why() {
    let server = TestServer::start_default().await;
    let mut client = server.grpc_client().await;
    // An unnamed system shared-memory region is refused as Triton refuses it.
    let status = client
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // CUDA shared memory cannot be registered (no CUDA IPC), and says so.
    let status = client
        .cuda_shared_memory_register(CudaSharedMemoryRegisterRequest {
            name: "gpu".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status
        .message()
        .contains("CUDA shared memory is not supported"));
    // Tracing needs a trace file from --trace-config.
    let status = client
        .trace_setting(TraceSettingRequest {
            settings: [(
                "trace_level".to_string(),
                trace_setting_request::SettingValue {
                    value: vec!["TIMESTAMPS".into()],
                },
            )]
            .into(),
            model_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("trace file is not set"),
        "{status:?}"
    );
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_models_over_grpc() {
    let server = TestServer::start_repo(faulty_repo()).await;
    let mut client = server.grpc_client().await;
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        !client
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        "strict readiness: a model failed to load"
    );
    for (name, version, ready) in [
        ("partial", "1", false),
        ("partial", "2", true),
        ("partial", "", true),
        ("broken", "", false),
    ] {
        let reply = client
            .model_ready(ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.ready, ready, "{name} {version}");
    }
    let index = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let broken = index
        .models
        .iter()
        .find(|m| m.name == "broken")
        .expect("broken in the index");
    assert_eq!(broken.state, "UNAVAILABLE");
    assert!(!broken.reason.is_empty());

    let request = ModelInferRequest {
        model_name: "partial".into(),
        model_version: "1".into(),
        inputs: vec![input("INPUT", "FP32", &[1, 4])],
        raw_input_contents: vec![f32_bytes(&[5.1, 3.5, 1.4, 0.2]).into()],
        ..Default::default()
    };
    assert_status(
        client.model_infer(request.clone()).await,
        Code::Unavailable,
        "Request for unknown model: 'partial' version 1 is not at ready state",
    );
    assert_grpc_serving(&mut client).await;
    let response = client
        .model_infer(ModelInferRequest {
            model_version: String::new(),
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.model_version, "2");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_four_mib() {
    let server = TestServer::start_repo(rich_repo()).await;
    let mut client = server.grpc_client().await;
    // 20 MiB of FP32 each way, far above tonic's 4 MiB default.
    let count = 5 * 1024 * 1024;
    let data: Vec<u8> = (0..count as u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "big".into(),
            inputs: vec![input("INPUT0", "FP32", &[count])],
            raw_input_contents: vec![data.clone().into()],
            ..Default::default()
        })
        .await
        .expect("a 20 MiB request is accepted")
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![count]);
    assert_eq!(response.raw_output_contents[0].len(), data.len());
    assert!(response.raw_output_contents[0].as_ref() == data.as_slice());

    // Large BYTES elements through typed contents.
    let element = vec![b'z'; 6 * 1024 * 1024];
    let mut tensor = input("INPUT0", "BYTES", &[1, 1]);
    tensor.contents = Some(InferTensorContents {
        bytes_contents: vec![element.clone()],
        ..Default::default()
    });
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "identity_bytes".into(),
            inputs: vec![tensor],
            ..Default::default()
        })
        .await
        .expect("a 6 MiB string is accepted")
        .into_inner();
    let raw = &response.raw_output_contents[0];
    assert_eq!(raw.len(), element.len() + 4);
    assert_eq!(&raw[..4], (element.len() as u32).to_le_bytes().as_slice());
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_beyond_the_configured_size_are_refused() {
    let repo = Repo::new();
    let config = nereid_server::ServeConfig {
        grpc_max_message_bytes: 1024,
        ..nereid_server::ServeConfig::for_tests(repo.path())
    };
    let server = TestServer::start_with(config, Some(repo)).await;
    let mut client = server.grpc_client().await;
    // 8 x 16 floats: 512 bytes of tensor, within the limit.
    assert!(client
        .model_infer(fp32_raw_request(8, &ramp(128, 0.0)))
        .await
        .is_ok());
    let mut big = fp32_raw_request(8, &ramp(128, 0.0));
    big.id = "x".repeat(2048);
    let status = client.model_infer(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_grpc_serving(&mut client).await;
    server.shutdown().await.unwrap();
}
