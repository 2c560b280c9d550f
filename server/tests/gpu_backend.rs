//! The `cuda` backend through the real server, against the `candle` (CPU) backend with the same
//! weights, and instance placement by `instance_group.kind`.
//!
//! - `kind_gpu_and_kind_auto`: runs everywhere. Without a usable GPU, a `KIND_GPU` model fails to
//!   load with a message saying why, while the other models of the repository serve and a
//!   `KIND_AUTO` model serves on the CPU; with one, both serve from the GPU and agree with the
//!   CPU model.
//! - `gpu_outputs_match_cpu`: several architectures (MLP with normalisation and softmax, MLP with
//!   tanh and sigmoid on odd widths, linear, logistic), two GPU instances each, over HTTP and
//!   gRPC, batch sizes 1 to `max_batch_size`, concurrent requests. Prints
//!   `SKIPPED: GPU tests: GPU backend tests: <reason>` and passes without a GPU (fails instead
//!   under `NEREID_REQUIRE_SUITES=gpu`).
//! - `gpu_ensemble_keeps_tensors_on_the_device`: an ensemble of two GPU models (encoder ->
//!   head) against the same ensemble of CPU models, one request at a time and concurrently
//!   (batched); the head must have read its input from device memory
//!   (`nereid_device_resident_inputs`), never from the host. Skips without a GPU.
//! - `external_server_gpu_matches_cpu`: for the GPU check script (`kernels/gpu-check.sh`), which
//!   starts the release `nereid` binary and names it in `NEREID_GPU_CHECK_HTTP` /
//!   `NEREID_GPU_CHECK_GRPC`, with `NEREID_GPU_CHECK_PAIRS=gpu_model=cpu_model,...`: compares the
//!   pairs over HTTP and gRPC (tonic, so the GPU machine needs no Python gRPC) and prints a
//!   latency/throughput line per model. Skips, saying so, when the variables are unset.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor as CandleTensor};
use common::*;
use nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid_protocol::inference::model_infer_request::InferInputTensor;
use nereid_protocol::inference::ModelInferRequest;
use serde_json::{json, Value};
use tonic::transport::Channel;

/// `Some(reason)` when this machine cannot run the `cuda` backend on GPU 0.
fn no_gpu_reason() -> Option<String> {
    match nereid_kernels::Gpu::new(0) {
        Err(e) if e.is_unavailable() => Some(e.to_string()),
        Err(e) => panic!("opening CUDA device 0: {e}"),
        Ok(_) if !nereid_kernels::cublas_present() => {
            Some(nereid_kernels::KernelError::NoCublas.to_string())
        }
        Ok(_) => None,
    }
}

/// Deterministic test data (SplitMix64), uniform in [lo, hi).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
}

/// `|got - want| <= 1e-5 + 1e-4 * |want|` elementwise (f32 GEMMs summing in another order).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
            "{what}: element {i}: GPU {g} vs CPU {w}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// model repositories
// ------------------------------------------------------------------------------------------

const IRIS: &str = "iris_classifier";

/// The checked-in model repository: `NEREID_MODEL_REPO` when set (the GPU check bundle carries
/// a copy, since the compile-time path does not exist on the GPU machine), else this checkout's.
fn model_repo() -> String {
    std::env::var("NEREID_MODEL_REPO").unwrap_or_else(|_| MODEL_REPO.to_string())
}

fn iris_file(relative: &str) -> Vec<u8> {
    let path = format!("{}/{IRIS}/{relative}", model_repo());
    std::fs::read(&path).unwrap_or_else(|e| panic!("checked-in iris model {path}: {e}"))
}

/// A temporary model repository with `identity_fp32` (which `TestServer::assert_serving`
/// uses), written here rather than copied so that nothing depends on the checkout's path.
struct LocalRepo {
    dir: tempfile::TempDir,
}

impl LocalRepo {
    fn new() -> Self {
        let repo = LocalRepo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        repo.file(
            "identity_fp32/config.pbtxt",
            identity_config("identity_fp32", "TYPE_FP32", &[16], 8).as_bytes(),
        );
        std::fs::create_dir_all(repo.dir.path().join("identity_fp32/1")).expect("version dir");
        repo
    }

    fn file(&self, relative: &str, contents: &[u8]) -> &Self {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("parent dir");
        std::fs::write(path, contents).expect("file written");
        self
    }

    /// Adds the checked-in iris classifier as `name` with `instance_group [ group ]` (`None`: no
    /// `instance_group`, i.e. KIND_AUTO).
    fn iris(&self, name: &str, group: Option<&str>) -> &Self {
        self.file(
            &format!("{name}/config.pbtxt"),
            iris_config(name, group).as_bytes(),
        )
        .file(&format!("{name}/labels.txt"), &iris_file("labels.txt"))
        .file(
            &format!("{name}/1/model.safetensors"),
            &iris_file("1/model.safetensors"),
        )
    }

    /// A server over this repository; `self` must outlive it.
    async fn serve(&self) -> TestServer {
        let config = nereid_server::ServeConfig::for_tests(self.dir.path());
        TestServer::start_with(config, None).await
    }
}

/// The checked-in iris classifier's config under another name and instance group.
fn iris_config(name: &str, group: Option<&str>) -> String {
    let config = String::from_utf8(iris_file("config.pbtxt")).expect("UTF-8 config");
    let renamed = config.replace(&format!("name: \"{IRIS}\""), &format!("name: \"{name}\""));
    let mut out: String = renamed
        .lines()
        .filter(|l| !l.starts_with("instance_group"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(group) = group {
        out.push_str(&format!("instance_group [ {group} ]\n"));
    }
    out
}

/// A dense model for the comparison: sizes, architecture parameters, normalisation.
struct Dense {
    name: &'static str,
    sizes: &'static [usize],
    params: &'static [(&'static str, &'static str)],
    normalize: bool,
    max_batch: usize,
}

const DENSE: [Dense; 4] = [
    Dense {
        name: "mlp_gelu_softmax",
        sizes: &[32, 128, 64, 10],
        params: &[
            ("nereid.architecture", "mlp"),
            ("nereid.activation", "gelu"),
            ("nereid.output_activation", "softmax"),
        ],
        normalize: true,
        max_batch: 64,
    },
    Dense {
        name: "mlp_tanh_sigmoid",
        sizes: &[13, 47, 5],
        params: &[
            ("nereid.architecture", "mlp"),
            ("nereid.activation", "tanh"),
            ("nereid.output_activation", "sigmoid"),
        ],
        normalize: false,
        max_batch: 16,
    },
    Dense {
        name: "linear",
        sizes: &[20, 3],
        params: &[("nereid.architecture", "linear")],
        normalize: true,
        max_batch: 8,
    },
    Dense {
        name: "logistic",
        sizes: &[7, 1],
        params: &[("nereid.architecture", "logistic")],
        normalize: false,
        max_batch: 8,
    },
];

fn dense_safetensors(d: &Dense, rng: &mut Rng) -> Vec<u8> {
    let t = |v: Vec<f32>, shape: &[usize]| {
        CandleTensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    };
    let mut tensors = HashMap::new();
    for (i, pair) in d.sizes.windows(2).enumerate() {
        let (inp, out) = (pair[0], pair[1]);
        let bound = 1.0 / (inp as f32).sqrt();
        tensors.insert(
            format!("layers.{i}.weight"),
            t(rng.vec(out * inp, -bound, bound), &[out, inp]),
        );
        tensors.insert(
            format!("layers.{i}.bias"),
            t(rng.vec(out, -bound, bound), &[out]),
        );
    }
    if d.normalize {
        let f = d.sizes[0];
        tensors.insert("normalize.mean".into(), t(rng.vec(f, -1.0, 1.0), &[f]));
        tensors.insert("normalize.std".into(), t(rng.vec(f, 0.5, 2.0), &[f]));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).expect("safetensors written");
    std::fs::read(&path).expect("safetensors read")
}

fn dense_config(d: &Dense, name: &str, group: &str) -> String {
    let params: String = d
        .params
        .iter()
        .map(|(k, v)| format!("parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n"))
        .collect();
    format!(
        "name: \"{name}\"\nbackend: \"candle\"\nmax_batch_size: {}\n\
         input [ {{ name: \"X\" data_type: TYPE_FP32 dims: [ {} ] }} ]\n\
         output [ {{ name: \"Y\" data_type: TYPE_FP32 dims: [ {} ] }} ]\n\
         {params}instance_group [ {group} ]\ndynamic_batching {{ }}\n",
        d.max_batch,
        d.sizes[0],
        d.sizes[d.sizes.len() - 1]
    )
}

// ------------------------------------------------------------------------------------------
// clients
// ------------------------------------------------------------------------------------------

/// HTTP JSON inference: `[batch, features]` FP32 in, the first output's data out.
async fn http_infer(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    input: &str,
    batch: usize,
    x: &[f32],
) -> Result<Vec<f32>, String> {
    let features = x.len() / batch.max(1);
    let body = json!({"inputs": [{"name": input, "shape": [batch, features], "datatype": "FP32", "data": x}]});
    let response = client
        .post(format!("{base}/v2/models/{model}/infer"))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("HTTP request to {model}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{model}: HTTP {status}: {text}"));
    }
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok(f32_values(&json["outputs"][0]["data"]))
}

/// gRPC inference with raw contents.
async fn grpc_infer(
    client: &mut GrpcInferenceServiceClient<Channel>,
    model: &str,
    input: &str,
    batch: usize,
    x: &[f32],
) -> Result<Vec<f32>, String> {
    let features = x.len() / batch.max(1);
    let request = ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: vec![batch as i64, features as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![f32_bytes(x).into()],
        ..Default::default()
    };
    let response = client
        .model_infer(request)
        .await
        .map_err(|s| format!("{model}: gRPC {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let raw = response
        .raw_output_contents
        .first()
        .ok_or_else(|| format!("{model}: no raw output"))?;
    Ok(f32_from_bytes(raw))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client builds")
}

// ------------------------------------------------------------------------------------------
// tests
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_gpu_and_kind_auto() {
    let repo = LocalRepo::new();
    repo.iris(IRIS, Some("{ count: 1 kind: KIND_CPU }"))
        .iris("iris_gpu", Some("{ count: 1 kind: KIND_GPU }"))
        .iris("iris_auto", None);
    let server = repo.serve().await;
    let no_gpu = no_gpu_reason();
    let x = [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3, 5.9, 2.8, 4.4, 1.3];
    let infer = |model: &'static str| {
        let server = &server;
        async move {
            server
                .infer_json(model, &fp32_request("INPUT", &[3, 4], &x))
                .await
        }
    };
    let cpu = infer(IRIS).await;
    assert_eq!(cpu.status, 200, "{}", cpu.text());
    let cpu = f32_values(&cpu.json()["outputs"][0]["data"]);

    let index = server.post("/v2/repository/index", "").await.json();
    let row = |name: &str| -> Value {
        index
            .as_array()
            .expect("index is a list")
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in the index: {index}"))
            .clone()
    };
    match &no_gpu {
        Some(reason) => {
            println!("no GPU here ({reason}): checking that KIND_GPU fails alone");
            let gpu = row("iris_gpu");
            assert_eq!(gpu["state"], "UNAVAILABLE", "{gpu}");
            let why = gpu["reason"].as_str().expect("reason");
            assert!(
                why.contains("model 'iris_gpu' asks for KIND_GPU but no CUDA GPU is available: ")
                    && why.contains(reason.as_str()),
                "reason: {why}"
            );
            let reply = infer("iris_gpu").await;
            assert_ne!(reply.status, 200, "{}", reply.text());
            // KIND_AUTO ran on the CPU: the very same backend as the KIND_CPU model.
            let auto = infer("iris_auto").await;
            assert_eq!(auto.status, 200, "{}", auto.text());
            assert_eq!(f32_values(&auto.json()["outputs"][0]["data"]), cpu);
        }
        None => {
            for model in ["iris_gpu", "iris_auto"] {
                assert_eq!(row(model)["state"], "READY", "{}", row(model));
                let reply = infer(model).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                assert_close(
                    model,
                    &f32_values(&reply.json()["outputs"][0]["data"]),
                    &cpu,
                );
            }
        }
    }
    assert_eq!(row(IRIS)["state"], "READY");
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_outputs_match_cpu() {
    if let Some(reason) = no_gpu_reason() {
        nereid_testkit::skip(&nereid_testkit::GPU, format!("GPU backend tests: {reason}"));
        return;
    }
    let mut rng = Rng(0x6e65_7265_6964);
    let repo = LocalRepo::new();
    for d in &DENSE {
        let weights = dense_safetensors(d, &mut rng);
        for (suffix, group) in [
            ("cpu", "{ count: 1 kind: KIND_CPU }"),
            ("gpu", "{ count: 2 kind: KIND_GPU gpus: [ 0 ] }"),
        ] {
            let name = format!("{}_{suffix}", d.name);
            repo.file(
                &format!("{name}/config.pbtxt"),
                dense_config(d, &name, group).as_bytes(),
            )
            .file(&format!("{name}/1/model.safetensors"), &weights);
        }
    }
    let server = repo.serve().await;
    let http = http_client();
    let base = server.url("");
    let mut grpc = server.grpc_client().await;
    for d in &DENSE {
        let (cpu, gpu) = (format!("{}_cpu", d.name), format!("{}_gpu", d.name));
        let features = d.sizes[0];
        for batch in [1, 3, d.max_batch / 2 + 1, d.max_batch] {
            let x = rng.vec(batch * features, -3.0, 3.0);
            let want = http_infer(&http, &base, &cpu, "X", batch, &x)
                .await
                .unwrap();
            let got = http_infer(&http, &base, &gpu, "X", batch, &x)
                .await
                .unwrap();
            assert_close(&format!("{gpu} b={batch} HTTP"), &got, &want);
            let got_grpc = grpc_infer(&mut grpc, &gpu, "X", batch, &x).await.unwrap();
            assert_eq!(
                got_grpc, got,
                "{gpu} b={batch}: gRPC and HTTP agree exactly"
            );
        }
        // Concurrent requests: the dynamic batcher merges them and two instances (two
        // streams) run at once; every caller gets its own rows back.
        let inputs: Vec<Vec<f32>> = (0..24).map(|_| rng.vec(features, -3.0, 3.0)).collect();
        let calls = inputs.iter().map(|x| {
            let (http, base, gpu) = (&http, &base, &gpu);
            async move { http_infer(http, base, gpu, "X", 1, x).await }
        });
        let results = futures_util::future::join_all(calls).await;
        for (x, got) in inputs.iter().zip(results) {
            let want = http_infer(&http, &base, &cpu, "X", 1, x).await.unwrap();
            assert_close(&format!("{gpu} concurrent"), &got.unwrap(), &want);
        }
        println!(
            "{gpu}: matches {cpu} (HTTP, gRPC, batch 1..{})",
            d.max_batch
        );
    }
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

/// `encoder` (32 -> 64 -> 24, GELU, raw outputs) then `head` (24 -> 48 -> 6, softmax).
const ENCODER: Dense = Dense {
    name: "encoder",
    sizes: &[32, 64, 24],
    params: &[
        ("nereid.architecture", "mlp"),
        ("nereid.activation", "gelu"),
        ("nereid.output_activation", "none"),
    ],
    normalize: true,
    max_batch: 16,
};
const HEAD: Dense = Dense {
    name: "head",
    sizes: &[24, 48, 6],
    params: &[
        ("nereid.architecture", "mlp"),
        ("nereid.activation", "relu"),
        ("nereid.output_activation", "softmax"),
    ],
    normalize: false,
    max_batch: 16,
};

/// `encoder` then `head`; with `expose_embedding` the intermediate tensor is also an output of
/// the ensemble, which makes it travel through the host (the comparison for device passing).
fn pipeline_config(name: &str, encoder: &str, head: &str, expose_embedding: bool) -> String {
    let embedding = if expose_embedding {
        r#", { name: "embedding" data_type: TYPE_FP32 dims: [ 24 ] }"#
    } else {
        ""
    };
    format!(
        r#"name: "{name}"
platform: "ensemble"
max_batch_size: 16
input [ {{ name: "FEATURES" data_type: TYPE_FP32 dims: [ 32 ] }} ]
output [ {{ name: "SCORES" data_type: TYPE_FP32 dims: [ 6 ] }}{embedding} ]
ensemble_scheduling {{ step [
  {{ model_name: "{encoder}" model_version: -1 input_map {{ key: "X" value: "FEATURES" }} output_map {{ key: "Y" value: "embedding" }} }},
  {{ model_name: "{head}" model_version: -1 input_map {{ key: "X" value: "embedding" }} output_map {{ key: "Y" value: "SCORES" }} }}
] }}
"#
    )
}

/// The value of `family{model="model",...}` in a Prometheus text page (0 when absent).
fn metric_value(page: &str, family: &str, model: &str) -> f64 {
    let prefix = format!("{family}{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&format!("model=\"{model}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_ensemble_keeps_tensors_on_the_device() {
    if let Some(reason) = no_gpu_reason() {
        nereid_testkit::skip(&nereid_testkit::GPU, format!("GPU backend tests: {reason}"));
        return;
    }
    let mut rng = Rng(0x656e_7365_6d62);
    let repo = LocalRepo::new();
    for d in [&ENCODER, &HEAD] {
        let weights = dense_safetensors(d, &mut rng);
        for (suffix, group) in [
            ("cpu", "{ count: 1 kind: KIND_CPU }"),
            ("gpu", "{ count: 2 kind: KIND_GPU gpus: [ 0 ] }"),
        ] {
            let name = format!("{}_{suffix}", d.name);
            repo.file(
                &format!("{name}/config.pbtxt"),
                dense_config(d, &name, group).as_bytes(),
            )
            .file(&format!("{name}/1/model.safetensors"), &weights);
        }
    }
    for (name, suffix, expose) in [
        ("pipeline_cpu", "cpu", false),
        ("pipeline_gpu", "gpu", false),
        ("pipeline_host_gpu", "gpu", true),
    ] {
        let config = pipeline_config(
            name,
            &format!("encoder_{suffix}"),
            &format!("head_{suffix}"),
            expose,
        );
        repo.file(&format!("{name}/config.pbtxt"), config.as_bytes());
        std::fs::create_dir_all(repo.dir.path().join(name).join("1")).expect("version dir");
    }
    let server = repo.serve().await;
    let http = http_client();
    let base = server.url("");
    let mut grpc = server.grpc_client().await;
    for batch in [1, 3, 16] {
        let x = rng.vec(batch * 32, -3.0, 3.0);
        let want = http_infer(&http, &base, "pipeline_cpu", "FEATURES", batch, &x)
            .await
            .unwrap();
        let got = http_infer(&http, &base, "pipeline_gpu", "FEATURES", batch, &x)
            .await
            .unwrap();
        assert_close(&format!("pipeline_gpu b={batch}"), &got, &want);
        let got_grpc = grpc_infer(&mut grpc, "pipeline_gpu", "FEATURES", batch, &x)
            .await
            .unwrap();
        assert_eq!(got_grpc, got, "b={batch}: gRPC and HTTP agree exactly");
    }
    // Concurrent requests: the head's batcher joins device tensors of several requests.
    let inputs: Vec<Vec<f32>> = (0..32).map(|_| rng.vec(32, -3.0, 3.0)).collect();
    let calls = inputs.iter().map(|x| {
        let (http, base) = (&http, &base);
        async move { http_infer(http, base, "pipeline_gpu", "FEATURES", 1, x).await }
    });
    let results = futures_util::future::join_all(calls).await;
    for (x, got) in inputs.iter().zip(results) {
        let want = http_infer(&http, &base, "pipeline_cpu", "FEATURES", 1, x)
            .await
            .unwrap();
        assert_close("pipeline_gpu concurrent", &got.unwrap(), &want);
    }
    // Every head execution read its input from device memory; the encoder's came from the host.
    let page = server.metrics_text().await;
    let head_execs = metric_value(&page, "nv_inference_exec_count", "head_gpu");
    let head_resident = metric_value(&page, "nereid_device_resident_inputs", "head_gpu");
    let encoder_resident = metric_value(&page, "nereid_device_resident_inputs", "encoder_gpu");
    println!(
        "pipeline_gpu: matches pipeline_cpu; head_gpu executions {head_execs}, inputs read from \
         device memory {head_resident}; encoder_gpu {encoder_resident}"
    );
    assert!(head_execs > 0.0);
    assert_eq!(
        head_resident, head_execs,
        "every head batch read device memory"
    );
    assert_eq!(encoder_resident, 0.0);
    // A CPU head never sees device memory.
    assert_eq!(
        metric_value(&page, "nereid_device_resident_inputs", "head_cpu"),
        0.0
    );
    // The same GPU models with the embedding passed through the host agree too.
    let x = rng.vec(3 * 32, -3.0, 3.0);
    let via_host = http_infer(&http, &base, "pipeline_host_gpu", "FEATURES", 3, &x)
        .await
        .unwrap();
    let on_device = http_infer(&http, &base, "pipeline_gpu", "FEATURES", 3, &x)
        .await
        .unwrap();
    assert_eq!(via_host, on_device, "device and host passing agree exactly");
    // Latency and throughput (printed for BENCHMARKS.md, never asserted): device passing, the
    // same GPU models through the host, and the CPU models.
    for model in ["pipeline_gpu", "pipeline_host_gpu", "pipeline_cpu"] {
        println!(
            "{}",
            measure(&grpc, model, "FEATURES", 32, 400, 8).await.unwrap()
        );
    }
    server.assert_serving().await;
    server.shutdown().await.expect("clean shutdown");
}

/// Latency and throughput of `model` over gRPC: `requests` sequential batch-1 calls, then the
/// same number from `concurrency` concurrent callers.
async fn measure(
    client: &GrpcInferenceServiceClient<Channel>,
    model: &str,
    input: &str,
    features: usize,
    requests: usize,
    concurrency: usize,
) -> Result<String, String> {
    let x: Vec<f32> = Rng(7).vec(features, -1.0, 1.0);
    let mut c = client.clone();
    for _ in 0..20 {
        grpc_infer(&mut c, model, input, 1, &x).await?;
    }
    let mut latencies = Vec::with_capacity(requests);
    let start = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        grpc_infer(&mut c, model, input, 1, &x).await?;
        latencies.push(t.elapsed());
    }
    let sequential = requests as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let start = Instant::now();
    let per_caller = requests / concurrency;
    let callers = (0..concurrency).map(|_| {
        let mut c = client.clone();
        let x = x.clone();
        async move {
            for _ in 0..per_caller {
                grpc_infer(&mut c, model, input, 1, &x).await?;
            }
            Ok::<(), String>(())
        }
    });
    for r in futures_util::future::join_all(callers).await {
        r?;
    }
    let concurrent = (per_caller * concurrency) as f64 / start.elapsed().as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(format!(
        "{model:<24} sequential b=1: {sequential:>8.0} req/s, p50 {:>7.0} us, p99 {:>7.0} us; \
         {concurrency} concurrent callers: {concurrent:>8.0} req/s",
        us(pct(0.5)),
        us(pct(0.99))
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_server_gpu_matches_cpu() {
    let (Ok(http_addr), Ok(grpc_addr), Ok(pairs)) = (
        std::env::var("NEREID_GPU_CHECK_HTTP"),
        std::env::var("NEREID_GPU_CHECK_GRPC"),
        std::env::var("NEREID_GPU_CHECK_PAIRS"),
    ) else {
        println!(
            "SKIPPED: external server check: set NEREID_GPU_CHECK_HTTP, NEREID_GPU_CHECK_GRPC \
             and NEREID_GPU_CHECK_PAIRS (kernels/gpu-check.sh does)"
        );
        return;
    };
    let http = http_client();
    let base = format!("http://{http_addr}");
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("gRPC connects");
    let mut rng = Rng(42);
    let mut lines = Vec::new();
    for pair in pairs.split(',').filter(|p| !p.is_empty()) {
        let (gpu, cpu) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("pair {pair:?} is not gpu_model=cpu_model"));
        let meta: Value = http
            .get(format!("{base}/v2/models/{gpu}"))
            .send()
            .await
            .expect("metadata")
            .json()
            .await
            .expect("metadata JSON");
        let input = meta["inputs"][0]["name"]
            .as_str()
            .expect("input name")
            .to_string();
        let features = meta["inputs"][0]["shape"][1].as_u64().expect("features") as usize;
        let config: Value = http
            .get(format!("{base}/v2/models/{gpu}/config"))
            .send()
            .await
            .expect("config")
            .json()
            .await
            .expect("config JSON");
        let max_batch = config["max_batch_size"].as_u64().unwrap_or(1).max(1) as usize;
        for batch in [1, 7.min(max_batch), max_batch] {
            let x = rng.vec(batch * features, -3.0, 3.0);
            let want = http_infer(&http, &base, cpu, &input, batch, &x)
                .await
                .unwrap();
            let got = http_infer(&http, &base, gpu, &input, batch, &x)
                .await
                .unwrap();
            assert_close(&format!("{gpu} vs {cpu} b={batch} HTTP"), &got, &want);
            let want_grpc = grpc_infer(&mut grpc, cpu, &input, batch, &x).await.unwrap();
            let got_grpc = grpc_infer(&mut grpc, gpu, &input, batch, &x).await.unwrap();
            assert_close(
                &format!("{gpu} vs {cpu} b={batch} gRPC"),
                &got_grpc,
                &want_grpc,
            );
            assert_eq!(
                got_grpc, got,
                "{gpu} b={batch}: gRPC and HTTP agree exactly"
            );
        }
        println!("{gpu} matches {cpu} over HTTP and gRPC (batch 1..{max_batch})");
        for model in [gpu, cpu] {
            let line = measure(&grpc, model, &input, features, 2000, 16)
                .await
                .unwrap();
            println!("{line}");
            lines.push(line);
        }
    }
    if let Ok(path) = std::env::var("NEREID_GPU_CHECK_REPORT") {
        std::fs::write(&path, lines.join("\n") + "\n").expect("report written");
    }
}
