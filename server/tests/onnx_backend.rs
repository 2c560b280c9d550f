//! ONNX models served through ONNX Runtime (the `onnxruntime` backend), by the `nereid` binary
//! as users run it: models built with the `onnx` package's graph helpers
//! (tests/onnx/make_models.py), outputs compared with what ONNX Runtime gives in Python for the
//! same inputs, every datatype through gRPC's raw contents, auto-complete, dynamic batching, and
//! broken models that fail to load (or one request) with a clear reason while the rest serve.
//!
//! ONNX Runtime and `onnx` come from PyPI (server/ci/onnx-venv.sh); where they cannot be
//! installed the test skips, or fails where the suite is required (CI; see nereid-testkit).

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{wait_for, ServedBinary};
use nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid_protocol::inference::model_infer_request::InferInputTensor;
use nereid_protocol::inference::ModelInferRequest;
use serde_json::{json, Value};

/// Every model make_models.py writes, and whether it must load.
const MODELS: &[(&str, bool)] = &[
    ("accumulate", true),
    ("bad_reshape", false),
    ("double", true),
    ("double_then_pick", true),
    ("future_opset", false),
    ("iris_classifier", true),
    ("iris_onnx", true),
    ("linear_classifier", true),
    ("mlp_gelu_none", true),
    ("mlp_relu_softmax", true),
    ("mlp_sigmoid_softmax", true),
    ("mlp_tanh_sigmoid", true),
    ("lookup", true),
    ("lower", true),
    ("not_onnx", false),
    ("pick", true),
    ("sum_rows", true),
    ("truncated", false),
    ("types", true),
    ("wrong_input", false),
];

struct Served {
    http: String,
    grpc: String,
    _server: ServedBinary,
}

/// `nereid serve` over `repo` with ONNX Runtime's library at `library`.
async fn serve(repo: &Path, library: &str, scratch: &Path) -> Served {
    let args = [
        OsStr::new("--model-repository"),
        repo.as_os_str(),
        OsStr::new("--strict-readiness"),
        OsStr::new("false"),
    ];
    let server = ServedBinary::start(
        scratch,
        &args,
        &[("NEREID_ONNXRUNTIME_LIB", library.to_string())],
    )
    .await;
    Served {
        http: format!("http://127.0.0.1:{}", server.http),
        grpc: format!("http://127.0.0.1:{}", server.grpc),
        _server: server,
    }
}

/// POSTs `body` to the model's infer endpoint: (status, JSON body).
async fn infer(
    client: &reqwest::Client,
    served: &Served,
    model: &str,
    body: &Value,
) -> (u16, Value) {
    let reply = client
        .post(format!("{}/v2/models/{model}/infer", served.http))
        .json(body)
        .send()
        .await
        .expect("infer");
    let status = reply.status().as_u16();
    (status, reply.json().await.expect("a JSON body"))
}

/// The repository index once every model has settled (ready or failed), by name.
async fn settled_index(client: &reqwest::Client, http: &str) -> serde_json::Map<String, Value> {
    wait_for(
        "every model to load or fail",
        Duration::from_secs(120),
        async || {
            let rows: Value = client
                .post(format!("{http}/v2/repository/index"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let rows = rows.as_array()?;
            let settled = rows.len() == MODELS.len()
                && rows
                    .iter()
                    .all(|r| r["state"] == "READY" || r["state"] == "UNAVAILABLE");
            settled.then(|| {
                rows.iter()
                    .map(|r| {
                        (
                            r["name"].as_str().unwrap_or_default().to_string(),
                            r.clone(),
                        )
                    })
                    .collect()
            })
        },
    )
    .await
}

/// Outputs equal to ONNX Runtime's in Python: integers and strings exactly, floating point
/// within 1e-6 relative (the same library computes both, so they normally agree bit for bit).
fn assert_same_outputs(model: &str, got: &Value, want: &Value) {
    let got = got["outputs"].as_array().expect("outputs");
    for expected in want.as_array().expect("expected outputs") {
        let output = got
            .iter()
            .find(|o| o["name"] == expected["name"])
            .unwrap_or_else(|| panic!("{model}: no output {}", expected["name"]));
        assert_eq!(output["datatype"], expected["datatype"], "{model}");
        assert_eq!(output["shape"], expected["shape"], "{model}");
        let (a, b) = (
            output["data"].as_array().expect("data"),
            expected["data"].as_array().expect("data"),
        );
        assert_eq!(a.len(), b.len(), "{model}");
        for (x, y) in a.iter().zip(b) {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y))
                    if expected["datatype"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("FP")) =>
                {
                    let tolerance = 1e-6 * y.abs().max(1e-30);
                    assert!((x - y).abs() <= tolerance, "{model}: {x} vs {y}");
                }
                _ => assert_eq!(x, y, "{model}"),
            }
        }
    }
}

/// Little-endian bytes of a 2x2 tensor of `datatype` holding 0, 1, 2, 3 (BYTES: "s0".."s3",
/// length-prefixed; BOOL: alternating).
fn raw_values(datatype: &str) -> Vec<u8> {
    let ints = 0..4u8;
    match datatype {
        "BOOL" => vec![0, 1, 0, 1],
        "UINT8" | "INT8" => ints.collect(),
        "UINT16" | "INT16" => ints.flat_map(|v| u16::from(v).to_le_bytes()).collect(),
        "UINT32" | "INT32" => ints.flat_map(|v| u32::from(v).to_le_bytes()).collect(),
        "UINT64" | "INT64" => ints.flat_map(|v| u64::from(v).to_le_bytes()).collect(),
        "FP16" => ints
            .flat_map(|v| half::f16::from_f32(f32::from(v) / 2.0).to_le_bytes())
            .collect(),
        "BF16" => ints
            .flat_map(|v| half::bf16::from_f32(f32::from(v) / 2.0).to_le_bytes())
            .collect(),
        "FP32" => ints
            .flat_map(|v| (f32::from(v) / 2.0).to_le_bytes())
            .collect(),
        "FP64" => ints
            .flat_map(|v| (f64::from(v) / 2.0).to_le_bytes())
            .collect(),
        "BYTES" => ints
            .flat_map(|v| {
                let s = format!("s{v}");
                let mut e = (s.len() as u32).to_le_bytes().to_vec();
                e.extend_from_slice(s.as_bytes());
                e
            })
            .collect(),
        other => panic!("no test values for {other}"),
    }
}

const TYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "BF16", "FP32", "FP64", "BYTES",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_models_serve_as_onnx_runtime_computes_them() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/onnx-venv.sh");
    let installed = match nereid_testkit::run_installer(Path::new(script)) {
        Ok(lines) => lines,
        Err(reason) => {
            nereid_testkit::skip(&nereid_testkit::ONNX_RUNTIME, reason);
            return;
        }
    };
    let mut lines = installed.lines();
    let (python, library) = (
        lines.next().expect("python").to_string(),
        lines.next().expect("library").to_string(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, cases) = (dir.path().join("repo"), dir.path().join("cases.json"));
    let made = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/onnx/make_models.py"
        ))
        .arg(&repo)
        .arg(&cases)
        .output()
        .expect("python runs");
    assert!(
        made.status.success(),
        "make_models.py failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&cases).expect("cases")).expect("cases json");
    // The default classifier as Nereid serves it (candle), and its ONNX export.
    common::copy_dir(
        &Path::new(common::MODEL_REPO).join("iris_classifier"),
        &repo.join("iris_classifier"),
    );
    let exported = export_iris_classifier();
    std::fs::create_dir_all(repo.join("iris_onnx/1")).expect("mkdir");
    std::fs::write(repo.join("iris_onnx/1/model.onnx"), exported).expect("write");
    let exports = mlp_exports();
    for (name, model, _) in &exports {
        std::fs::create_dir_all(repo.join(name).join("1")).expect("mkdir");
        let onnx = model.to_onnx("X", "Y").expect("export");
        std::fs::write(repo.join(name).join("1/model.onnx"), onnx).expect("write");
    }
    // Only the batch size: inputs and outputs are completed from the graph.
    std::fs::write(
        repo.join("iris_onnx/config.pbtxt"),
        "backend: \"onnxruntime\"\nmax_batch_size: 64\n",
    )
    .expect("write");

    let served = serve(&repo, &library, dir.path()).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let index = settled_index(&client, &served.http).await;
    for (model, loads) in MODELS {
        let state = &index[*model]["state"];
        assert_eq!(state == "READY", *loads, "{model}: {}", index[*model]);
    }
    let reason = |model: &str| {
        index[model]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (model, says) in [
        ("truncated", "not a valid ONNX model"),
        ("not_onnx", "not a valid ONNX model"),
        ("future_opset", "Opset 99"),
        (
            "wrong_input",
            "declares input 'INPUT', but the ONNX graph's inputs are ['X']",
        ),
        ("bad_reshape", "cannot be reshaped to the requested shape"),
    ] {
        assert!(reason(model).contains(says), "{model}: {}", reason(model));
    }

    // Auto-complete: `double` has no config.pbtxt.
    let config: Value = client
        .get(format!("{}/v2/models/double/config", served.http))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["backend"], "onnxruntime");
    assert_eq!(config["max_batch_size"], 4);
    assert_eq!(config["input"][0]["name"], "X");
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["input"][0]["dims"], json!([3]));
    assert_eq!(config["output"][0]["dims"], json!([3]));
    assert!(config["dynamic_batching"].is_object(), "{config}");

    // Each case as ONNX Runtime in Python computed it.
    for case in &cases {
        let model = case["model"].as_str().expect("model");
        let (status, body) =
            infer(&client, &served, model, &json!({"inputs": case["inputs"]})).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_same_outputs(model, &body, &case["outputs"]);
    }

    // An ensemble mixing backends: ONNX, then argmax.
    let (_, reply) = infer(
        &client,
        &served,
        "double_then_pick",
        &json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3],
                                  "data": [1.0, 5.0, 2.0, -1.0, -3.0, -0.5]}]}),
    )
    .await;
    let output = |name: &str| {
        reply["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == name))
            .map(|o| o["data"].clone())
    };
    assert_eq!(
        output("DOUBLED"),
        Some(json!([2.0, 10.0, 4.0, -2.0, -6.0, -1.0])),
        "{reply}"
    );
    assert_eq!(output("INDEX"), Some(json!([1, 2])), "{reply}");

    sequences_carry_their_state(&client, &served).await;

    // The ONNX export computes what the candle model computes, on every Iris row.
    let rows = common::iris();
    let mut worst = 0f64;
    for chunk in rows.chunks(50) {
        let data: Vec<f32> = chunk.iter().flat_map(|(x, _)| *x).collect();
        let body = json!({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                      "shape": [chunk.len(), 4], "data": data}]});
        let mut answers = Vec::new();
        for model in ["iris_classifier", "iris_onnx"] {
            let (_, reply) = infer(&client, &served, model, &body).await;
            let values: Vec<f64> = reply["outputs"][0]["data"]
                .as_array()
                .unwrap_or_else(|| panic!("{model}: {reply}"))
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            assert_eq!(values.len(), chunk.len() * 3, "{model}: {reply}");
            answers.push(values);
        }
        for (a, b) in answers[0].iter().zip(&answers[1]) {
            worst = worst.max((a - b).abs());
        }
    }
    println!("iris: candle vs ONNX Runtime, largest difference {worst:e}");
    assert!(worst <= 1e-5, "the ONNX export differs by {worst}");

    // Every activation the exporter writes, against candle's forward pass.
    for (name, model, rows) in &exports {
        let x = candle_core::Tensor::from_vec(
            rows.clone(),
            (rows.len() / 5, 5),
            &candle_core::Device::Cpu,
        )
        .expect("rows");
        let want: Vec<f32> = model
            .forward(&x)
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1())
            .expect("forward");
        let (_, reply) = infer(
            &client,
            &served,
            name,
            &json!({"inputs": [{"name": "X", "datatype": "FP32",
                                      "shape": [rows.len() / 5, 5], "data": rows}]}),
        )
        .await;
        let got: Vec<f64> = reply["outputs"][0]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {reply}"))
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - f64::from(*w)).abs() <= 1e-5, "{name}: {g} vs {w}");
        }
    }

    // A request that fails inside ONNX Runtime fails alone, with Triton's wording.
    let (status, body) = infer(
        &client,
        &served,
        "lookup",
        &json!({"inputs": [{"name": "INDEX", "datatype": "INT64", "shape": [1], "data": [7]}]}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("onnx runtime error 2: "), "{error}");
    let lookup = cases
        .iter()
        .find(|c| c["model"] == "lookup")
        .expect("lookup case");
    let (status, _) = infer(
        &client,
        &served,
        "lookup",
        &json!({"inputs": lookup["inputs"]}),
    )
    .await;
    assert_eq!(status, 200, "the model serves on");

    // Every datatype, through gRPC's raw contents.
    let mut grpc = GrpcInferenceServiceClient::connect(served.grpc.clone())
        .await
        .expect("gRPC connects");
    let request = ModelInferRequest {
        model_name: "types".into(),
        inputs: TYPES
            .iter()
            .map(|t| InferInputTensor {
                name: format!("IN_{t}"),
                datatype: t.to_string(),
                shape: vec![2, 2],
                ..Default::default()
            })
            .collect(),
        raw_input_contents: TYPES.iter().map(|t| raw_values(t).into()).collect(),
        ..Default::default()
    };
    let response = grpc.model_infer(request).await.expect("types").into_inner();
    for t in TYPES {
        let position = response
            .outputs
            .iter()
            .position(|o| o.name == format!("OUT_{t}"))
            .unwrap_or_else(|| panic!("no OUT_{t}"));
        let output = &response.outputs[position];
        assert_eq!(
            (output.datatype.as_str(), &output.shape[..]),
            (t, &[2, 2][..])
        );
        assert_eq!(
            response.raw_output_contents[position].to_vec(),
            raw_values(t),
            "{t} comes back as sent"
        );
    }

    // Bytes that are not UTF-8 cannot become an ONNX string: refused, not altered.
    let refused = grpc
        .model_infer(ModelInferRequest {
            model_name: "lower".into(),
            inputs: vec![InferInputTensor {
                name: "TEXT".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![2, 0, 0, 0, 0xff, 0xfe].into()],
            ..Default::default()
        })
        .await
        .expect_err("not UTF-8");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("not UTF-8"), "{refused:?}");

    // Dynamic batching (auto-completed): concurrent single rows come back each its own.
    let requests = (0..24).map(|i| {
        let (client, url) = (client.clone(), format!("{}/v2/models/double/infer", served.http));
        async move {
            let x = [i as f32, -(i as f32), 0.5];
            let body: Value = client
                .post(url)
                .json(&json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": x}]}))
                .send()
                .await
                .expect("infer")
                .json()
                .await
                .expect("json");
            assert_eq!(
                body["outputs"][0]["data"],
                json!([2.0 * x[0], 2.0 * x[1], 1.0]),
                "row {i}"
            );
        }
    });
    futures_util::future::join_all(requests).await;
    let stats: Value = client
        .get(format!("{}/v2/models/double/stats", served.http))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let stats = &stats["model_stats"][0];
    println!(
        "double: {} inferences in {} executions",
        stats["inference_count"], stats["execution_count"]
    );
    assert!(stats["inference_count"].as_u64() >= Some(24), "{stats}");

    // NVIDIA's tritonclient against the same server, over HTTP (binary and JSON) and gRPC.
    nereid_testkit::run_python_suite(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        &nereid_testkit::TRITONCLIENT,
        Some("clients/python/onnx"),
        &[
            ("NEREID_HTTP_URL", served.http.as_ref()),
            ("NEREID_GRPC_URL", served.grpc.as_ref()),
        ],
    );

    // Without the library: the same repository serves nothing, saying how to install it.
    let scratch = dir.path().join("without");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let without = serve(&repo, "/nonexistent/libonnxruntime.so", &scratch).await;
    let index = settled_index(&client, &without.http).await;
    let reason = index["double"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ONNX Runtime could not be loaded")
            && reason.contains("pip install onnxruntime"),
        "{reason}"
    );
}

/// The checked-in Iris classifier's newest version as ONNX, through the pipeline's exporter.
fn export_iris_classifier() -> Vec<u8> {
    let dir = Path::new(common::MODEL_REPO).join("iris_classifier");
    let text = std::fs::read_to_string(dir.join("config.pbtxt")).expect("config");
    let config = nereid_protocol::config::parse_pbtxt(&text, "config.pbtxt").expect("parses");
    let spec = nereid_pipeline::ArchitectureSpec::from_parameters(|k| {
        config.parameters.get(k).map(|p| p.string_value.clone())
    })
    .expect("spec");
    let model = nereid_pipeline::DenseModel::load(
        &dir.join("1/model.safetensors"),
        spec,
        &candle_core::Device::Cpu,
    )
    .expect("weights");
    model.to_onnx("INPUT", "PROBABILITIES").expect("export")
}

/// Small MLPs, one per hidden and output activation the exporter writes, with input
/// standardisation and seeded weights, and four rows of five features for each.
fn mlp_exports() -> Vec<(String, nereid_pipeline::DenseModel, Vec<f32>)> {
    use nereid_pipeline::{Activation, ArchitectureSpec, DenseModel, OutputActivation};
    let device = candle_core::Device::Cpu;
    // A fixed pseudo-random sequence (xorshift), so that the weights are the same every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut tensor = |dims: &[usize]| {
        let n = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| next()).collect();
        candle_core::Tensor::from_vec(values, dims, &device).expect("tensor")
    };
    let specs = [
        (Activation::Relu, OutputActivation::Softmax),
        (Activation::Gelu, OutputActivation::None),
        (Activation::Tanh, OutputActivation::Sigmoid),
        (Activation::Sigmoid, OutputActivation::Softmax),
    ];
    specs
        .into_iter()
        .map(|(hidden, output)| {
            let mut tensors = std::collections::HashMap::new();
            tensors.insert("normalize.mean".to_string(), tensor(&[5]));
            let std = tensor(&[5]).abs().expect("abs") + 0.5;
            tensors.insert("normalize.std".to_string(), std.expect("std"));
            for (i, (out, inp)) in [(8, 5), (6, 8), (3, 6)].into_iter().enumerate() {
                tensors.insert(format!("layers.{i}.weight"), tensor(&[out, inp]));
                tensors.insert(format!("layers.{i}.bias"), tensor(&[out]));
            }
            let model = DenseModel::from_tensors(tensors, ArchitectureSpec::mlp(hidden, output))
                .expect("model");
            let rows: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            (format!("mlp_{hidden}_{output}"), model, rows)
        })
        .collect()
}

/// The sequence batcher on `accumulate` (a running sum in implicit state, and the correlation
/// id echoed): interleaved sequences keep their own sums, requests of one sequence sent at once
/// still run one after another, and Triton's errors for a missing START, a missing correlation
/// id, an ended sequence and an idle one.
async fn sequences_carry_their_state(client: &reqwest::Client, served: &Served) {
    let step = |id: Value, value: f32, start: bool, end: bool| {
        json!({"parameters": {"sequence_id": id, "sequence_start": start, "sequence_end": end},
               "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1],
                           "data": [value]}]})
    };
    let send = |body: Value| async move { infer(client, served, "accumulate", &body).await };
    let output = |reply: &Value, name: &str| {
        reply["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == name))
            .map(|o| o["data"][0].clone())
            .unwrap_or_else(|| panic!("no {name} in {reply}"))
    };
    for (id, value, start, end, sum) in [
        (11, 1.0, true, false, 1.0),
        (12, 10.0, true, false, 10.0),
        (11, 2.0, false, false, 3.0),
        (12, 20.0, false, false, 30.0),
        (11, 3.0, false, true, 6.0),
    ] {
        let (status, reply) = send(step(json!(id), value, start, end)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(output(&reply, "OUTPUT"), json!(sum), "{reply}");
        assert_eq!(output(&reply, "CORRID_OUT"), json!(id), "{reply}");
        let names: Vec<&Value> = reply["outputs"]
            .as_array()
            .map(|o| o.iter().map(|o| &o["name"]).collect())
            .unwrap_or_default();
        assert_eq!(names.len(), 2, "the state output is not returned: {reply}");
    }
    // Four requests of sequence 12 at once: each still sees the one before.
    let replies =
        futures_util::future::join_all((0..4).map(|_| send(step(json!(12), 1.0, false, false))))
            .await;
    let mut sums: Vec<f64> = replies
        .iter()
        .map(|(status, reply)| {
            assert_eq!(*status, 200, "{reply}");
            output(reply, "OUTPUT").as_f64().expect("a number")
        })
        .collect();
    sums.sort_by(f64::total_cmp);
    assert_eq!(sums, [31.0, 32.0, 33.0, 34.0]);

    let error = |reply: &Value| reply["error"].as_str().unwrap_or_default().to_string();
    let (status, reply) = send(step(json!(11), 1.0, false, false)).await;
    assert_eq!(status, 400);
    assert_eq!(
        error(&reply),
        "inference request for sequence 11 to model 'accumulate' must specify the START flag on the first request of the sequence"
    );
    let (status, reply) = send(json!({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                                   "shape": [1, 1], "data": [1.0]}]}))
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error(&reply),
        "inference request to model 'accumulate' must specify a non-zero or non-empty correlation ID"
    );
    // A string correlation id, and a sequence that goes idle (300 ms) ends.
    let (status, reply) = send(step(json!("user-7"), 5.0, true, false)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(output(&reply, "OUTPUT"), json!(5.0));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, reply) = send(step(json!("user-7"), 5.0, false, false)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(error(&reply).contains("sequence user-7"), "{reply}");
}
