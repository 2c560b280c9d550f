//! The system shared-memory extension over HTTP and gRPC: regions registered, listed and
//! unregistered; inputs read from and outputs written to a POSIX shared-memory object the test
//! creates (as a client's `shm_open` + `ftruncate` would); Triton's errors for unknown regions,
//! out-of-bounds windows and outputs too large for their window; the server serves on.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use common::{f32_bytes, f32_from_bytes, ramp, TestServer};
use nereid_protocol::inference::infer_parameter::ParameterChoice;
use nereid_protocol::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use nereid_protocol::inference::*;
use serde_json::{json, Value};

/// A shared-memory object of `size` bytes under /dev/shm, removed when dropped.
struct Object {
    key: String,
    file: File,
}

impl Object {
    fn new(tag: &str, size: u64) -> Object {
        let key = format!("nereid-shm-test-{tag}-{}", std::process::id());
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(format!("/dev/shm/{key}"))
            .expect("create the shared-memory object");
        file.set_len(size).expect("size it");
        Object { key, file }
    }

    fn read(&self, offset: u64, length: usize) -> Vec<u8> {
        let mut data = vec![0u8; length];
        self.file.read_exact_at(&mut data, offset).expect("read");
        data
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.key));
    }
}

fn shm(region: &str, offset: u64, byte_size: u64) -> Value {
    json!({"shared_memory_region": region, "shared_memory_offset": offset,
           "shared_memory_byte_size": byte_size})
}

fn int64(v: i64) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(v)),
    }
}

fn shm_params(region: &str, offset: i64, byte_size: i64) -> HashMap<String, InferParameter> {
    HashMap::from([
        (
            "shared_memory_region".to_string(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam(region.into())),
            },
        ),
        ("shared_memory_offset".to_string(), int64(offset)),
        ("shared_memory_byte_size".to_string(), int64(byte_size)),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_outputs_travel_through_system_shared_memory() {
    let server = TestServer::start_default().await;
    let object = Object::new("io", 256);
    let key = format!("/{}", object.key);
    let values = ramp(16, 0.5);
    object
        .file
        .write_all_at(&f32_bytes(&values), 0)
        .expect("write input");

    // Register over HTTP; a second registration of the name is refused.
    let register = json!({"key": key, "offset": 0, "byte_size": 256});
    let reply = server
        .post_json("/v2/systemsharedmemory/region/io/register", &register)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    server
        .post_json("/v2/systemsharedmemory/region/io/register", &register)
        .await
        .assert_error(400, "shared memory region 'io' already in manager");
    server
        .post_json(
            "/v2/systemsharedmemory/region/far/register",
            &json!({"key": key, "offset": 200, "byte_size": 100}),
        )
        .await
        .assert_error(
            400,
            "failed to register shared memory region 'far': invalid args",
        );
    let status = server.get("/v2/systemsharedmemory/status").await.json();
    assert_eq!(
        status,
        json!([{"name": "io", "key": key, "offset": 0, "byte_size": 256}])
    );

    // Input from bytes 0..64, output into bytes 128..192, over HTTP: the response names the
    // output without data.
    let request = json!({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                    "parameters": shm("io", 0, 64)}],
        "outputs": [{"name": "OUTPUT0", "parameters": shm("io", 128, 64)}]});
    let reply = server.infer_json("identity_fp32", &request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["outputs"][0]["name"], "OUTPUT0");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 16]));
    assert!(body["outputs"][0].get("data").is_none(), "{body}");
    assert_eq!(f32_from_bytes(&object.read(128, 64)), values);

    // Triton's errors; the server serves on after each.
    let with = |input: Value, output: Value| {
        json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                           "parameters": input}],
               "outputs": [{"name": "OUTPUT0", "parameters": output}]})
    };
    server
        .infer_json(
            "identity_fp32",
            &with(shm("nope", 0, 64), shm("io", 128, 64)),
        )
        .await
        .assert_error(404, "Unable to find shared memory region: 'nope'");
    server
        .infer_json(
            "identity_fp32",
            &with(shm("io", 256, 64), shm("io", 128, 64)),
        )
        .await
        .assert_error(400, "Invalid offset for shared memory region: 'io'");
    server
        .infer_json(
            "identity_fp32",
            &with(shm("io", 224, 64), shm("io", 128, 64)),
        )
        .await
        .assert_error(
            400,
            "Invalid offset + byte size for shared memory region: 'io'",
        );
    server
        .infer_json("identity_fp32", &with(shm("io", 0, 64), shm("io", 128, 32)))
        .await
        .assert_error(
            500,
            "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at least 64 bytes to hold the results",
        );
    server
        .infer_json(
            "identity_fp32",
            &with(json!({"shared_memory_region": "io"}), shm("io", 128, 64)),
        )
        .await
        .assert_error(
            400,
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor 'INPUT0'",
        );
    let mut both = shm("io", 128, 64);
    both["binary_data"] = json!(true);
    server
        .infer_json("identity_fp32", &with(shm("io", 0, 64), both))
        .await
        .assert_error(
            400,
            "Output can't set both 'shared_memory_region' and 'binary_data'",
        );
    // A window that is not the input's size is the usual byte-size error.
    server
        .infer_json("identity_fp32", &with(shm("io", 0, 60), shm("io", 128, 64)))
        .await
        .assert_error_contains(400, "INPUT0");
    server.assert_serving().await;

    // gRPC: register a second window of the same object, infer through it, list and
    // unregister everything.
    let mut client = server.grpc_client().await;
    client
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
            name: "upper".into(),
            key: key.clone(),
            offset: 128,
            byte_size: 128,
        })
        .await
        .expect("register over gRPC");
    object
        .file
        .write_all_at(&f32_bytes(&ramp(16, 9.0)), 128)
        .expect("write input");
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "identity_fp32".into(),
            inputs: vec![InferInputTensor {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![1, 16],
                parameters: shm_params("upper", 0, 64),
                contents: None,
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: "OUTPUT0".into(),
                parameters: shm_params("upper", 64, 64),
            }],
            ..Default::default()
        })
        .await
        .expect("infer through shared memory")
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![1, 16]);
    assert_eq!(response.raw_output_contents.len(), 1);
    assert!(response.raw_output_contents[0].is_empty());
    assert_eq!(f32_from_bytes(&object.read(192, 64)), ramp(16, 9.0));

    let status = client
        .system_shared_memory_status(SystemSharedMemoryStatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.regions.len(), 2);
    assert_eq!(status.regions["upper"].offset, 128);
    let missing = client
        .system_shared_memory_status(SystemSharedMemoryStatusRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(
        missing.message(),
        "Unable to find system shared memory region: 'nope'"
    );
    client
        .system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest::default())
        .await
        .expect("unregister all");
    assert_eq!(
        server.get("/v2/systemsharedmemory/status").await.json(),
        json!([])
    );
    let metadata = server.get("/v2").await.json();
    assert!(
        metadata["extensions"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("system_shared_memory"))),
        "{metadata}"
    );
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}
