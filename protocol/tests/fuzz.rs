//! Fuzzing the protocol's parsers of outside input (nereid-testkit::fuzz): the REST body (JSON,
//! binary tensor framing), gRPC `ModelInferRequest` messages as they arrive on the wire,
//! `config.pbtxt` and ONNX model boundaries. Every input must give a value or an error, never a
//! panic; what parses is then used the way the server uses it.

use std::path::Path;

use nereid_protocol::inference::model_infer_request::InferInputTensor;
use nereid_protocol::inference::{InferParameter, ModelInferRequest};
use nereid_protocol::{config, grpc, onnx, rest, InferRequest};
use nereid_testkit::fuzz;
use prost::Message;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Uses every tensor of a parsed request the way the server does before computing.
fn exercise(request: &InferRequest) {
    for tensor in &request.inputs {
        let _ = tensor.element_count();
        let _ = tensor.expected_byte_size("m");
        if tensor.check_byte_size("m").is_ok() && tensor.datatype.element_size() == Some(4) {
            let _ = tensor.to_vec::<f32>();
        }
    }
}

#[test]
fn rest_bodies() {
    let seeds = fuzz::seeds_from(&Path::new(ROOT).join("fuzz/corpus/rest"));
    // A seed is [JSON length, u16 LE][JSON][binary data], as a request body with
    // Inference-Header-Content-Length would split it.
    fuzz::run("rest_bodies", fuzz::mutated(seeds), |input| {
        let (json, binary) = match input.get(..2) {
            Some(len) => {
                let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
                let body = &input[2..];
                let split = len.min(body.len());
                let binary =
                    (split < body.len()).then(|| bytes::Bytes::copy_from_slice(&body[split..]));
                (&body[..split], binary)
            }
            None => (&input[..], None),
        };
        if let Ok(request) = rest::parse_request(json, binary, "m") {
            exercise(&request);
        }
    });
}

#[test]
fn grpc_messages() {
    let tensor = |name: &str, datatype: &str, shape: &[i64]| InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    };
    let mut with_parameters = ModelInferRequest {
        model_name: "identity_fp32".into(),
        id: "p".into(),
        inputs: vec![tensor("INPUT0", "FP32", &[1, 4])],
        raw_input_contents: vec![vec![0u8; 16].into()],
        ..Default::default()
    };
    with_parameters.parameters.insert(
        "priority".into(),
        InferParameter {
            parameter_choice: Some(
                nereid_protocol::inference::infer_parameter::ParameterChoice::Int64Param(1),
            ),
        },
    );
    let seeds: Vec<Vec<u8>> = [
        with_parameters,
        ModelInferRequest {
            model_name: "identity_bytes".into(),
            inputs: vec![tensor("INPUT0", "BYTES", &[2])],
            raw_input_contents: vec![vec![1, 0, 0, 0, b'a', 0, 0, 0, 0].into()],
            ..Default::default()
        },
        ModelInferRequest {
            model_name: "types".into(),
            inputs: vec![
                tensor("A", "INT64", &[2]),
                tensor("B", "FP16", &[-1]),
                tensor("C", "BOOL", &[1, 1]),
            ],
            raw_input_contents: vec![vec![7u8; 16].into(), vec![0, 60].into(), vec![1].into()],
            ..Default::default()
        },
    ]
    .iter()
    .map(Message::encode_to_vec)
    .collect();
    fuzz::run("grpc_messages", fuzz::mutated(seeds), |input| {
        if let Ok(message) = ModelInferRequest::decode(&input[..]) {
            if let Ok((_, _, request)) = grpc::request_from_grpc(message) {
                exercise(&request);
            }
        }
    });
}

#[test]
fn model_configs() {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("model-repo")).expect("model-repo") {
        let path = entry.expect("entry").path().join("config.pbtxt");
        if let Ok(text) = std::fs::read(&path) {
            seeds.push(text);
        }
    }
    seeds.sort();
    fuzz::run("model_configs", fuzz::mutated(seeds), |input| {
        let text = String::from_utf8_lossy(&input);
        if let Ok(parsed) = config::parse_pbtxt(&text, "config.pbtxt") {
            // What the server does with a config: serve it as JSON, write it back as text.
            let json = config::to_json(&parsed);
            let _ = config::from_json(&json);
            let _ = config::parse_pbtxt(&config::to_pbtxt(&parsed), "round trip");
        }
    });
}

#[test]
fn onnx_boundaries() {
    let value = onnx::ValueInfo::tensor("X", onnx::ELEM_FLOAT, &[None, Some(4)], "N");
    let seeds = vec![onnx::ModelProto {
        ir_version: 8,
        graph: Some(onnx::GraphProto {
            initializer: vec![onnx::TensorProto::f32("w", &[4], &[1.0, 2.0, 3.0, 4.0])],
            input: vec![value.clone()],
            output: vec![onnx::ValueInfo {
                name: "Y".into(),
                ..value
            }],
            ..Default::default()
        }),
        opset_import: vec![onnx::OperatorSetId {
            domain: String::new(),
            version: 17,
        }],
        ..Default::default()
    }
    .encode_to_vec()];
    fuzz::run("onnx_boundaries", fuzz::mutated(seeds), |input| {
        if let Ok(model) = onnx::ModelBoundary::decode(&input[..]) {
            for v in model
                .graph
                .iter()
                .flat_map(|g| g.input.iter().chain(&g.output))
            {
                let t = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
                let _ = t.map(|t| onnx::datatype(t.elem_type));
            }
        }
    });
}
