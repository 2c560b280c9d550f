//! Test harness shared by the HTTP and gRPC integration tests: starts a real server on
//! ephemeral ports, builds temporary model repositories, and wraps HTTP calls so that a test
//! reads as "request, then status, headers and body".
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid_server::{RunningServer, ServeConfig};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The checked-in model repository (identity_fp32, identity_bytes, iris_classifier).
pub const MODEL_REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../model-repo");

/// Triton's header naming the JSON part of a binary-framed body.
pub const HEADER_LENGTH: &str = nereid_protocol::rest::HEADER_CONTENT_LENGTH;

/// A running server plus an HTTP client for it. Dropping it without [`TestServer::shutdown`]
/// leaves the server to die with the test's runtime.
pub struct TestServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    running: Option<RunningServer>,
    _repo: Option<Repo>,
}

impl TestServer {
    /// A server over [`base_repo`]: the checked-in `identity_fp32`, `identity_bytes` and
    /// `iris_classifier` (copied, so that other models added to the checked-in repository do
    /// not change what these tests count).
    pub async fn start_default() -> Self {
        Self::start_repo(base_repo()).await
    }

    /// A server over a temporary repository (kept alive as long as the server).
    pub async fn start_repo(repo: Repo) -> Self {
        let config = ServeConfig::for_tests(repo.path());
        Self::start_with(config, Some(repo)).await
    }

    pub async fn start_with(config: ServeConfig, repo: Option<Repo>) -> Self {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let running = nereid_server::start(config, async move {
            let _ = stop_rx.await;
        })
        .await
        .expect("server starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client builds");
        TestServer {
            http: running.http,
            grpc: running.grpc,
            metrics: running.metrics,
            client,
            stop: Some(stop_tx),
            running: Some(running),
            _repo: repo,
        }
    }

    /// Signals shutdown without waiting for it.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.signal_shutdown();
        let running = self.running.take().expect("server not yet waited for");
        tokio::time::timeout(std::time::Duration::from_secs(60), running.wait())
            .await
            .expect("server stops within 60 s")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        url: String,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut builder = self.client.request(method, url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let response = builder.send().await.expect("HTTP request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("HTTP body is read").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(reqwest::Method::GET, self.url(path), &[], None)
            .await
    }

    pub async fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Reply {
        self.request(
            reqwest::Method::POST,
            self.url(path),
            &[],
            Some(body.into()),
        )
        .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        self.request(
            reqwest::Method::POST,
            self.url(path),
            headers,
            Some(body.into()),
        )
        .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, body.to_string()).await
    }

    /// POSTs a JSON inference request to `/v2/models/{model}/infer`.
    pub async fn infer_json(&self, model: &str, body: &Value) -> Reply {
        self.post_json(&format!("/v2/models/{model}/infer"), body)
            .await
    }

    /// POSTs a binary-framed inference request: the JSON header, then `tensors` in order.
    pub async fn infer_binary(&self, model: &str, header: &Value, tensors: &[&[u8]]) -> Reply {
        let (body, length) = binary_body(header, tensors);
        self.post_with(
            &format!("/v2/models/{model}/infer"),
            &[(HEADER_LENGTH, &length.to_string())],
            body,
        )
        .await
    }

    /// GET on the metrics port.
    pub async fn metrics_text(&self) -> String {
        let reply = self
            .request(
                reqwest::Method::GET,
                format!("http://{}/metrics", self.metrics),
                &[],
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    }

    /// Proves the server still answers correctly: live, and a well-formed inference on
    /// `identity_fp32` echoes its input (every repository used by the tests has that model).
    pub async fn assert_serving(&self) {
        let live = self.get("/v2/health/live").await;
        assert_eq!(live.status, 200, "server is no longer live");
        let values = ramp(16, 0.5);
        let reply = self
            .infer_json("identity_fp32", &fp32_request("INPUT0", &[1, 16], &values))
            .await;
        assert_eq!(
            reply.status,
            200,
            "follow-up inference failed: {}",
            reply.text()
        );
        let json = reply.json();
        assert_eq!(json["outputs"][0]["name"], "OUTPUT0");
        assert_eq!(json["outputs"][0]["shape"], json!([1, 16]));
        assert_eq!(f32_values(&json["outputs"][0]["data"]), values);
    }

    pub async fn grpc_client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("gRPC connects")
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub async fn grpc_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("valid URI")
            .connect()
            .await
            .expect("gRPC connects")
    }
}

/// One HTTP response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }

    /// The message of a Triton error body, checking that the body is exactly
    /// `{"error":"<string>"}` and served as JSON.
    pub fn error_message(&self) -> String {
        assert_eq!(
            self.content_type(),
            "application/json",
            "error bodies are JSON: {}",
            self.text()
        );
        let json = self.json();
        let object = json.as_object().expect("error body is an object");
        assert_eq!(object.len(), 1, "error body has only 'error': {json}");
        object["error"]
            .as_str()
            .unwrap_or_else(|| panic!("'error' is a string: {json}"))
            .to_string()
    }

    /// Asserts status and the exact error message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "status for body {}", self.text());
        assert_eq!(self.error_message(), message);
    }

    /// Asserts status and that the error message contains `needle`.
    #[track_caller]
    pub fn assert_error_contains(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "status for body {}", self.text());
        let message = self.error_message();
        assert!(
            message.contains(needle),
            "error {message:?} does not contain {needle:?}"
        );
    }

    /// Splits a binary-framed inference response into its JSON header and the binary section
    /// of each output that has `parameters.binary_data_size` (by output name).
    pub fn binary_outputs(&self) -> (Value, BTreeMap<String, Vec<u8>>) {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.content_type(), "application/octet-stream");
        let length: usize = self
            .header(HEADER_LENGTH)
            .expect("binary responses carry Inference-Header-Content-Length")
            .parse()
            .expect("numeric header length");
        split_binary(&self.body, length)
    }
}

/// Splits `body` at `length` and slices the binary outputs named in the JSON header.
pub fn split_binary(body: &[u8], length: usize) -> (Value, BTreeMap<String, Vec<u8>>) {
    let header: Value = serde_json::from_slice(&body[..length]).expect("JSON header");
    let mut offset = length;
    let mut sections = BTreeMap::new();
    for output in header["outputs"].as_array().expect("outputs") {
        if let Some(size) = output["parameters"]["binary_data_size"].as_u64() {
            assert!(
                output.get("data").is_none(),
                "a binary output has no data: {output}"
            );
            let end = offset + size as usize;
            sections.insert(
                output["name"].as_str().unwrap().to_string(),
                body[offset..end].to_vec(),
            );
            offset = end;
        }
    }
    assert_eq!(offset, body.len(), "binary sections fill the body exactly");
    (header, sections)
}

/// A binary-framed request body and its JSON header length.
pub fn binary_body(header: &Value, tensors: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    for tensor in tensors {
        body.extend_from_slice(tensor);
    }
    (body, length)
}

/// `n` distinct FP32 values starting at `start`.
pub fn ramp(n: usize, start: f32) -> Vec<f32> {
    (0..n).map(|i| start + i as f32 * 0.25).collect()
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0, "FP32 buffer length");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A JSON array of numbers as f32.
pub fn f32_values(data: &Value) -> Vec<f32> {
    data.as_array()
        .unwrap_or_else(|| panic!("data is an array: {data}"))
        .iter()
        .map(|v| v.as_f64().expect("numeric element") as f32)
        .collect()
}

/// The length-prefixed BYTES layout of `elements`.
pub fn bytes_tensor<S: AsRef<[u8]>>(elements: &[S]) -> Vec<u8> {
    nereid_protocol::encode_bytes_elements(elements.iter().map(AsRef::as_ref)).to_vec()
}

/// A JSON request with one FP32 input (flat data) and no outputs listed.
pub fn fp32_request(name: &str, shape: &[u64], values: &[f32]) -> Value {
    json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": values}]})
}

/// A temporary model repository.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Default for Repo {
    fn default() -> Self {
        Self::new()
    }
}

impl Repo {
    /// An empty repository that already holds a copy of `identity_fp32` (which
    /// [`TestServer::assert_serving`] uses).
    pub fn new() -> Self {
        let repo = Repo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        repo.copy_model("identity_fp32")
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes `<model>/config.pbtxt` and an empty folder per version.
    pub fn model(self, name: &str, config: &str, versions: &[u64]) -> Self {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("model dir");
        std::fs::write(dir.join("config.pbtxt"), config).expect("config written");
        for version in versions {
            std::fs::create_dir_all(dir.join(version.to_string())).expect("version dir");
        }
        self
    }

    /// Writes a file under the repository (parents created).
    pub fn file(self, relative: &str, contents: &[u8]) -> Self {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("parent dir");
        std::fs::write(path, contents).expect("file written");
        self
    }

    /// Copies a model folder of the checked-in repository.
    pub fn copy_model(self, name: &str) -> Self {
        copy_dir(
            &Path::new(MODEL_REPO).join(name),
            &self.dir.path().join(name),
        );
        self
    }
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir created");
    for entry in std::fs::read_dir(from).expect("dir readable") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("file copied");
        }
    }
}

/// The config of an `identity` model with one input and one output of the same type.
/// `config_type` is the config enum (`TYPE_INT32`), dims exclude the batch dimension.
pub fn identity_config(name: &str, config_type: &str, dims: &[i64], max_batch_size: u32) -> String {
    let dims: Vec<String> = dims.iter().map(i64::to_string).collect();
    let dims = dims.join(", ");
    format!(
        r#"name: "{name}"
backend: "identity"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {config_type} dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT0" data_type: {config_type} dims: [ {dims} ] }} ]
"#
    )
}

/// Copies of the checked-in `identity_fp32`, `identity_bytes` and `iris_classifier`.
pub fn base_repo() -> Repo {
    Repo::new()
        .copy_model("identity_bytes")
        .copy_model("iris_classifier")
}

/// Identity models of every datatype the tests send, without a batch dimension.
pub const TYPED_MODELS: [(&str, &str); 9] = [
    ("id_bool", "TYPE_BOOL"),
    ("id_uint8", "TYPE_UINT8"),
    ("id_int8", "TYPE_INT8"),
    ("id_int32", "TYPE_INT32"),
    ("id_int64", "TYPE_INT64"),
    ("id_uint64", "TYPE_UINT64"),
    ("id_fp16", "TYPE_FP16"),
    ("id_fp64", "TYPE_FP64"),
    ("id_string", "TYPE_STRING"),
];

const TWO_IO: &str = r#"name: "two_io"
backend: "identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 4 ] } ]
"#;

/// A repository with every healthy model the tests need:
/// - the checked-in `identity_fp32`, `identity_bytes` and `iris_classifier`;
/// - `two_io` (FP32 [4] and INT32 [4] in and out, max_batch_size 8);
/// - `raw_bytes` (BYTES with dims [1], max_batch_size 8) for raw binary bodies;
/// - `fp32_2d` (FP32 with dims [-1, -1], max_batch_size 0);
/// - [`TYPED_MODELS`] (dims [-1], max_batch_size 0);
/// - `big` (FP32 dims [-1], max_batch_size 0) for large messages;
/// - `multi` (versions 1, 2, 3, policy all) and `latest` (versions 1, 2, default policy),
///   both FP32 [2] with max_batch_size 4.
pub fn rich_repo() -> Repo {
    let mut repo = base_repo()
        .model("two_io", TWO_IO, &[1])
        .model(
            "raw_bytes",
            &identity_config("raw_bytes", "TYPE_STRING", &[1], 8),
            &[1],
        )
        .model(
            "fp32_2d",
            &identity_config("fp32_2d", "TYPE_FP32", &[-1, -1], 0),
            &[1],
        )
        .model("big", &identity_config("big", "TYPE_FP32", &[-1], 0), &[1])
        .model(
            "multi",
            &format!(
                "{}version_policy: {{ all {{ }} }}\n",
                identity_config("multi", "TYPE_FP32", &[2], 4)
            ),
            &[1, 2, 3],
        )
        .model(
            "latest",
            &identity_config("latest", "TYPE_FP32", &[2], 4),
            &[1, 2],
        );
    for (name, config_type) in TYPED_MODELS {
        repo = repo.model(name, &identity_config(name, config_type, &[-1], 0), &[1]);
    }
    repo
}

/// A repository where some models cannot serve, next to a healthy `identity_fp32`:
/// - `broken`: a `config.pbtxt` that does not parse;
/// - `partial`: the iris classifier with versions 1 (no weights: UNAVAILABLE) and 2 (READY),
///   policy all.
pub fn faulty_repo() -> Repo {
    let iris = Path::new(MODEL_REPO).join("iris_classifier");
    let config = std::fs::read_to_string(iris.join("config.pbtxt"))
        .expect("iris config")
        .replace("name: \"iris_classifier\"", "name: \"partial\"");
    let config = format!("{config}\nversion_policy: {{ all {{ }} }}\n");
    let weights = std::fs::read(iris.join("1/model.safetensors")).expect("iris weights");
    let labels = std::fs::read(iris.join("labels.txt")).expect("iris labels");
    Repo::new()
        .model("broken", "name: \"broken\"\ninput [ { name: ", &[1])
        // A decoupled model: Nereid answers each request once, so it must not load.
        .model(
            "decoupled",
            "name: \"decoupled\"\nbackend: \"identity\"\nmax_batch_size: 4\n\
             input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 1 ] } ]\n\
             output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 1 ] } ]\n\
             model_transaction_policy { decoupled: true }\n",
            &[1],
        )
        .model("partial", &config, &[1, 2])
        .file("partial/2/model.safetensors", &weights)
        .file("partial/labels.txt", &labels)
}

/// Monitor settings that sample every request, in tumbling windows of 1,000 rows (tests that
/// count rows and windows).
pub const EVERY_REQUEST: &[(&str, &str)] = &[
    ("nereid.monitor.sample_rate", "1"),
    ("nereid.monitor.window", "1000"),
];

/// The Iris classifier's config with extra `nereid.monitor.*` parameters.
pub fn iris_with(parameters: &[(&str, &str)]) -> Repo {
    let config = std::fs::read_to_string(format!("{}/iris_classifier/config.pbtxt", MODEL_REPO))
        .expect("config");
    let mut config = config;
    for (k, v) in parameters {
        config.push_str(&format!(
            "parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n"
        ));
    }
    Repo::new()
        .copy_model("iris_classifier")
        .file("iris_classifier/config.pbtxt", config.as_bytes())
}

/// Fisher's Iris rows (features in cm) and their species names.
pub fn iris() -> Vec<([f32; 4], &'static str)> {
    const SPECIES: [&str; 3] = ["setosa", "versicolor", "virginica"];
    let data = linfa_datasets::iris();
    (0..data.records.nrows())
        .map(|i| {
            let r = data.records.row(i);
            (
                [r[0] as f32, r[1] as f32, r[2] as f32, r[3] as f32],
                SPECIES[data.targets[i]],
            )
        })
        .collect()
}

/// A small deterministic generator (xorshift) for picking rows.
pub struct Picker(pub u64);

impl Picker {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A batch of `rows` Iris rows drawn with replacement, `shift` cm added to feature `feature`.
pub fn batch(
    rows: usize,
    picker: &mut Picker,
    data: &[([f32; 4], &str)],
    shift: Option<(usize, f32)>,
) -> Value {
    let mut values = Vec::with_capacity(rows * 4);
    for _ in 0..rows {
        let (mut x, _) = data[picker.next(data.len())];
        if let Some((f, by)) = shift {
            x[f] += by;
        }
        values.extend(x);
    }
    json!({"inputs": [{"name": "INPUT", "shape": [rows, 4], "datatype": "FP32", "data": values}]})
}

pub async fn send_rows(
    server: &TestServer,
    rows: usize,
    picker: &mut Picker,
    shift: Option<(usize, f32)>,
) {
    let data = iris();
    for _ in 0..rows / 50 {
        let reply = server
            .infer_json("iris_classifier", &batch(50, picker, &data, shift))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

/// Runs the `nereid` binary with `args`: (success, stdout, stderr).
pub fn nereid(args: &[&str]) -> (bool, String, String) {
    let (code, stdout, stderr) = nereid_output(args, &[], None);
    (code == 0, stdout, stderr)
}

/// Runs the `nereid` binary with `args`, the environment variables `env` added, in `dir` (or
/// here): (exit code, -1 when killed by a signal; stdout; stderr).
pub fn nereid_output(
    args: &[&str],
    env: &[(&str, String)],
    dir: Option<&Path>,
) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_nereid"));
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("NEREID_LOG", "warn");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().expect("nereid runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nereid serve` started as a user would, on loopback with ports 0, killed when dropped.
pub struct ServedBinary {
    pub http: u16,
    pub grpc: u16,
    pub metrics: u16,
    pub child: ChildGuard,
}

impl ServedBinary {
    /// Starts `nereid serve` with `args` (after the listener flags) and the environment
    /// variables `env` added, writing its port file, prediction log and stderr (`nereid.log`)
    /// in `scratch`; returns once the port file names the bound ports.
    pub async fn start(
        scratch: &Path,
        args: &[&std::ffi::OsStr],
        env: &[(&str, String)],
    ) -> ServedBinary {
        let port_file = scratch.join("ports.json");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--http-port",
                "0",
                "--grpc-port",
                "0",
            ])
            .args(["--metrics-port", "0", "--port-file"])
            .arg(&port_file)
            .arg("--prediction-log-dir")
            .arg(scratch.join("prediction-log"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NEREID_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(scratch.join("nereid.log")).expect("log file"))
            .spawn()
            .expect("nereid serve starts");
        let child = ChildGuard(child);
        let doc = wait_for(
            "the port file",
            std::time::Duration::from_secs(60),
            async || serde_json::from_slice::<Value>(&std::fs::read(&port_file).ok()?).ok(),
        )
        .await;
        let port = |name: &str| {
            doc[name]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or_else(|| panic!("no {name} port in {doc}"))
        };
        ServedBinary {
            http: port("http"),
            grpc: port("grpc"),
            metrics: port("metrics"),
            child,
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T>(
    what: &str,
    limit: std::time::Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A child process that is killed and reaped when this goes out of scope (also when a test
/// fails), so that no server outlives its test.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
