//! The commands that talk to a server, built on [`Client`]: `nereid infer` (one inference),
//! `nereid health`, `nereid stats` and `nereid repo index|load|unload`.
//!
//! The `nereid` binary owns the command tree; it embeds these argument structs as subcommands
//! and calls their `run_*` functions. Every command takes the same [`ConnectArgs`]: URL, protocol,
//! extra headers (a restricted API's header, auth tokens) and a timeout. `infer` reads inputs
//! from NumPy `.npy` files, JSON files or inline JSON, or a whole v2 request body; outputs are
//! printed as v2 response JSON or saved as `.npy` files.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nereid_protocol::inference::ModelMetadataResponse;
use nereid_protocol::{
    element_count, DataType, InferRequest, InferResponse, RequestedOutput, Tensor,
};

use crate::tensor_json::JsonTensor;
use crate::{npy, Client, ClientOptions, Protocol};

/// Send one inference request and print (or save) the outputs.
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// Name of the model to run.
    pub model: String,

    #[command(flatten)]
    pub server: ConnectArgs,

    /// Model version; empty means the server's choice (usually the latest).
    #[arg(long, default_value = "")]
    pub model_version: String,

    /// An input, `NAME=VALUE`, repeatable. VALUE is `@file.npy`, `@file.json`, or inline JSON:
    /// a nested array (`[[1,2],[3,4]]`; its nesting gives the shape) or a v2 tensor object
    /// (`{"shape":[1,2],"datatype":"FP32","data":[1,2]}`). Missing datatypes come from the
    /// model's metadata, and a tensor one dimension short of a batched model's input gets a
    /// batch of one.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,

    /// Send this v2 JSON request body (`{"inputs": [...]}`) instead of --input values.
    #[arg(long, value_name = "FILE.json", conflicts_with = "inputs")]
    pub request: Option<PathBuf>,

    /// Shape of an input, `NAME=D0,D1,...`, overriding what its value implies (the element
    /// count must match).
    #[arg(long = "shape", value_name = "NAME=DIMS")]
    pub shapes: Vec<String>,

    /// Output to return, repeatable; without any, the server returns all outputs.
    #[arg(long = "output", short = 'o', value_name = "NAME")]
    pub outputs: Vec<String>,

    /// Return the top K classes of each --output instead of the tensor (classification
    /// extension).
    #[arg(long, value_name = "K", requires = "outputs")]
    pub classification: Option<u32>,

    /// HTTP only: send and receive tensors as JSON arrays instead of binary sections. Binary is
    /// faster and exact; JSON is what servers without the binary extension need.
    #[arg(long)]
    pub json: bool,

    /// Save each output as DIR/<output>.npy instead of printing the response.
    #[arg(long, value_name = "DIR")]
    pub save_dir: Option<PathBuf>,
}

/// How to reach a server: shared by every command that calls one.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Server URL. Nereid and Triton serve HTTP on port 8000 and gRPC on 8001.
    #[arg(long, env = "NEREID_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// Wire protocol; gRPC needs the gRPC port in --url.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,

    /// A header to send with every call, `NAME:VALUE`, repeatable: an auth token, or the header
    /// of a restricted API (`--http-restricted-api`; over gRPC, Triton's clients and Nereid's
    /// server name it `triton-grpc-protocol-<header>`).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,

    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

impl ConnectArgs {
    /// `url` and `protocol` with no extra headers and a 60 s timeout.
    pub fn new(url: impl Into<String>, protocol: Protocol) -> Self {
        ConnectArgs {
            url: url.into(),
            protocol,
            headers: Vec::new(),
            timeout_secs: 60,
        }
    }

    /// Connects, with HTTP inputs sent as binary sections unless `json_inputs`.
    pub async fn connect(&self, json_inputs: bool) -> anyhow::Result<Client> {
        let headers = self
            .headers
            .iter()
            .map(|h| crate::parse_header(h).map_err(|e| anyhow!("--header: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let options = ClientOptions {
            timeout: Some(Duration::from_secs(self.timeout_secs)),
            http_binary_inputs: !json_inputs,
            headers,
            ..Default::default()
        };
        Client::connect(&self.url, self.protocol, options)
            .await
            .with_context(|| format!("cannot connect to {}", self.url))
    }
}

/// Is the server (or a model) live and ready? Exits 1 when not ready.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub server: ConnectArgs,
    /// Ask about this model's readiness instead of the server's.
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: the version (empty: the server's choice).
    #[arg(long, default_value = "", requires = "model")]
    pub model_version: String,
}

/// Runs `nereid health`, writing what it prints to `out`: whether it is ready.
pub async fn run_health_to(args: HealthArgs, out: &mut impl Write) -> anyhow::Result<bool> {
    let client = args.server.connect(false).await?;
    let ready = match &args.model {
        Some(model) => {
            let ready = client.model_ready(model, &args.model_version).await?;
            let version = if args.model_version.is_empty() {
                String::new()
            } else {
                format!(" version {}", args.model_version)
            };
            writeln!(out, "model {model}{version} ready: {ready}")?;
            ready
        }
        None => {
            let live = client.server_live().await?;
            let ready = client.server_ready().await?;
            writeln!(out, "live: {live}\nready: {ready}")?;
            live && ready
        }
    };
    Ok(ready)
}

/// The statistics extension: per model and version counts and cumulative times, as JSON.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub server: ConnectArgs,
    /// One model (default: every model).
    pub model: Option<String>,
    /// With a model: the version (empty: every loaded version).
    #[arg(long, default_value = "")]
    pub model_version: String,
}

/// Runs `nereid stats`, writing the statistics JSON (Triton's form) to `out`.
pub async fn run_stats_to(args: StatsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let client = args.server.connect(false).await?;
    let model = args.model.as_deref().unwrap_or("");
    let stats = client
        .model_statistics(model, &args.model_version)
        .await
        .context("cannot read the statistics")?;
    let json =
        nereid_protocol::config::message_to_json(&stats, "inference.ModelStatisticsResponse");
    let value: serde_json::Value = serde_json::from_str(&json)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    Ok(())
}

/// The repository index: every model the server knows, its versions, states and reasons.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub server: ConnectArgs,
    /// Only models that are ready.
    #[arg(long)]
    pub ready: bool,
    /// Print JSON rows instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `nereid repo index`, writing a table (or JSON) to `out`.
pub async fn run_index_to(args: IndexArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let client = args.server.connect(false).await?;
    let index = client
        .repository_index(args.ready)
        .await
        .context("cannot read the repository index")?;
    if args.json {
        let rows: Vec<serde_json::Value> = index
            .models
            .iter()
            .map(|m| {
                serde_json::json!({"name": m.name, "version": m.version, "state": m.state,
                                   "reason": m.reason})
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<8} {:<12} REASON",
        "MODEL", "VERSION", "STATE"
    )?;
    for m in &index.models {
        writeln!(
            out,
            "{:<24} {:<8} {:<12} {}",
            m.name, m.version, m.state, m.reason
        )?;
    }
    Ok(())
}

/// Load (or reload) a model through the repository API (explicit model control).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    pub model: String,
    #[command(flatten)]
    pub server: ConnectArgs,
    /// A config (Triton's JSON form of `ModelConfig`) to load the model with instead of its
    /// `config.pbtxt`.
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
}

/// Runs `nereid repo load`.
pub async fn run_load_to(args: LoadArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let client = args.server.connect(false).await?;
    client
        .load_model(&args.model, config.as_deref())
        .await
        .with_context(|| format!("cannot load model '{}'", args.model))?;
    writeln!(out, "loaded {}", args.model)?;
    Ok(())
}

/// Unload a model through the repository API; requests in flight finish first.
#[derive(Debug, Clone, clap::Args)]
pub struct UnloadArgs {
    pub model: String,
    #[command(flatten)]
    pub server: ConnectArgs,
}

/// Runs `nereid repo unload`.
pub async fn run_unload_to(args: UnloadArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let client = args.server.connect(false).await?;
    client
        .unload_model(&args.model)
        .await
        .with_context(|| format!("cannot unload model '{}'", args.model))?;
    writeln!(out, "unloaded {}", args.model)?;
    Ok(())
}

/// Runs `nereid infer`, printing to stdout.
pub async fn run_infer(args: InferArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    run_infer_to(args, &mut stdout.lock()).await
}

/// Runs `nereid infer`, writing what it prints to `out`.
pub async fn run_infer_to(args: InferArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let client = args.server.connect(args.json).await?;
    let request = build_request(&client, &args).await?;
    let response = client
        .infer(&args.model, &args.model_version, &request)
        .await
        .with_context(|| format!("inference on model '{}' failed", args.model))?;
    match &args.save_dir {
        Some(dir) => save_outputs(&response, dir, out),
        None => print_response(&response, out),
    }
}

async fn build_request(client: &Client, args: &InferArgs) -> anyhow::Result<InferRequest> {
    let mut request = if let Some(path) = &args.request {
        let body =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        nereid_protocol::rest::parse_request(&body, None, &args.model)
            .map_err(|e| anyhow!("{}: {}", path.display(), e.message))?
    } else {
        if args.inputs.is_empty() {
            bail!("no inputs: pass --input NAME=VALUE (repeatable) or --request FILE.json");
        }
        let shapes = parse_shapes(&args.shapes)?;
        let metadata = client
            .model_metadata(&args.model, &args.model_version)
            .await
            .with_context(|| format!("cannot read the metadata of model '{}'", args.model))?;
        let mut request = InferRequest::default();
        for spec in &args.inputs {
            let (name, value) = spec
                .split_once('=')
                .ok_or_else(|| anyhow!("--input '{spec}' is not NAME=VALUE"))?;
            let tensor = input_tensor(name, value, shapes.get(name), &metadata)
                .with_context(|| format!("input '{name}'"))?;
            request.inputs.push(tensor);
        }
        request
    };
    let binary = !args.json && client.protocol() == Protocol::Http;
    request.binary_data_output = binary;
    for name in &args.outputs {
        request.outputs.push(RequestedOutput {
            name: name.clone(),
            classification: args.classification,
            binary,
            ..Default::default()
        });
    }
    Ok(request)
}

fn parse_shapes(specs: &[String]) -> anyhow::Result<HashMap<String, Vec<i64>>> {
    specs
        .iter()
        .map(|spec| {
            let (name, dims) = spec
                .split_once('=')
                .ok_or_else(|| anyhow!("--shape '{spec}' is not NAME=D0,D1,..."))?;
            Ok((name.to_string(), parse_dims(dims)?))
        })
        .collect()
}

/// `1,16` -> `[1, 16]`; an empty string is a scalar.
pub fn parse_dims(text: &str) -> anyhow::Result<Vec<i64>> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|d| {
            d.trim()
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| anyhow!("'{d}' is not a dimension (a non-negative integer)"))
        })
        .collect()
}

fn input_tensor(
    name: &str,
    value: &str,
    shape_override: Option<&Vec<i64>>,
    metadata: &ModelMetadataResponse,
) -> anyhow::Result<Tensor> {
    let spec = metadata.inputs.iter().find(|i| i.name == name);
    let mut tensor = if let Some(path) = value.strip_prefix('@') {
        let path = Path::new(path);
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        {
            npy::read_npy(&bytes, name).with_context(|| path.display().to_string())?
        } else {
            let text = std::str::from_utf8(&bytes)
                .with_context(|| format!("{} is not UTF-8 JSON", path.display()))?;
            json_tensor(name, text, spec).with_context(|| path.display().to_string())?
        }
    } else {
        json_tensor(name, value, spec)?
    };
    if let Some(shape) = shape_override {
        let had = element_count(name, &tensor.shape).map_err(|e| anyhow!(e.message))?;
        let wants = element_count(name, shape).map_err(|e| anyhow!(e.message))?;
        if had != wants {
            bail!(
                "--shape {:?} has {wants} elements but the value has {had}",
                shape
            );
        }
        tensor.shape = shape.clone();
    }
    crate::check_tensor(&tensor).map_err(|e| anyhow!(e))?;
    Ok(tensor)
}

fn json_tensor(
    name: &str,
    text: &str,
    spec: Option<&nereid_protocol::inference::model_metadata_response::TensorMetadata>,
) -> anyhow::Result<Tensor> {
    let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
    let parsed = JsonTensor::parse(&value).map_err(|e| anyhow!(e))?;
    let datatype = match (parsed.datatype, spec) {
        (Some(dt), _) => dt,
        (None, Some(spec)) => DataType::from_wire(&spec.datatype).ok_or_else(|| {
            anyhow!("the model declares unknown datatype '{}'", spec.datatype)
        })?,
        (None, None) => bail!(
            "the model has no input named '{name}', so its datatype is unknown; give it as {{\"datatype\":...,\"data\":...}}"
        ),
    };
    let mut shape = parsed.shape().to_vec();
    // A tensor one dimension short of a batched input (declared shape [-1, ...]) is one item.
    if let Some(spec) = spec {
        let fits_without_batch = parsed.shape.is_none()
            && spec.shape.first() == Some(&-1)
            && spec.shape.len() == shape.len() + 1
            && spec.shape[1..]
                .iter()
                .zip(&shape)
                .all(|(want, got)| *want == -1 || want == got);
        if fits_without_batch {
            shape.insert(0, 1);
        }
    }
    parsed
        .to_tensor(name, datatype, shape)
        .map_err(|e| anyhow!(e))
}

fn print_response(response: &InferResponse, out: &mut impl Write) -> anyhow::Result<()> {
    let rendered = nereid_protocol::rest::render_response(response, |_| false);
    let value: serde_json::Value =
        serde_json::from_slice(&rendered.body).context("cannot render the response")?;
    serde_json::to_writer_pretty(&mut *out, &value)?;
    writeln!(out)?;
    Ok(())
}

/// A file name for an output: path separators and other awkward characters become `_`.
fn file_name(output: &str) -> String {
    let cleaned: String = output
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => "output".to_string(),
        name => name.to_string(),
    }
}

fn save_outputs(response: &InferResponse, dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for tensor in &response.outputs {
        let path = dir.join(format!("{}.npy", file_name(&tensor.name)));
        let bytes = npy::write_npy(tensor).with_context(|| format!("output '{}'", tensor.name))?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(
            out,
            "{} {} {} -> {}",
            tensor.name,
            tensor.datatype,
            nereid_protocol::shape_string(&tensor.shape),
            path.display()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::inference::model_metadata_response::TensorMetadata;

    fn metadata() -> ModelMetadataResponse {
        ModelMetadataResponse {
            name: "m".into(),
            inputs: vec![TensorMetadata {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn inline_arrays_take_datatype_from_metadata_and_get_a_batch_of_one() {
        let t = input_tensor("INPUT0", "[1, 2, 3.5, 4]", None, &metadata()).unwrap();
        assert_eq!((t.datatype, t.shape.clone()), (DataType::Fp32, vec![1, 4]));
        assert_eq!(t.to_vec::<f32>(), vec![1.0, 2.0, 3.5, 4.0]);
        let t = input_tensor("INPUT0", "[[1,2,3,4],[5,6,7,8]]", None, &metadata()).unwrap();
        assert_eq!(t.shape, vec![2, 4]);
    }

    #[test]
    fn tensor_objects_and_shape_overrides() {
        let t = input_tensor(
            "X",
            r#"{"datatype":"INT16","shape":[2,2],"data":[1,2,3,-4]}"#,
            None,
            &metadata(),
        )
        .unwrap();
        assert_eq!(t.to_vec::<i16>(), vec![1, 2, 3, -4]);
        let t = input_tensor("INPUT0", "[1,2,3,4]", Some(&vec![2, 2]), &metadata()).unwrap();
        assert_eq!(t.shape, vec![2, 2]);
        let err = input_tensor("INPUT0", "[1,2,3,4]", Some(&vec![3]), &metadata()).unwrap_err();
        assert!(err.to_string().contains("has 3 elements"), "{err}");
        let t = input_tensor(
            "H",
            r#"{"datatype":"FP16","data":[1.0]}"#,
            None,
            &metadata(),
        )
        .unwrap();
        assert_eq!(&t.data[..], &[0x00, 0x3c]);
    }

    #[test]
    fn refuses_bad_inline_values() {
        for bad in [
            "[[1,2],[3]]",
            "[[1,2],3]",
            "[1,[2]]",
            "not json",
            r#"{"shape":[1]}"#,
            r#"{"datatype":"NOPE","data":[1]}"#,
        ] {
            assert!(
                input_tensor("INPUT0", bad, None, &metadata()).is_err(),
                "{bad} was accepted"
            );
        }
        let err = input_tensor("OTHER", "[1]", None, &metadata()).unwrap_err();
        assert!(err.to_string().contains("no input named"), "{err}");
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let npy_path = dir.path().join("x.npy");
        let source = Tensor::from_f32("ignored", vec![1, 4], &[1.0, 2.0, 3.0, 4.0]);
        std::fs::write(&npy_path, npy::write_npy(&source).unwrap()).unwrap();
        let t = input_tensor(
            "INPUT0",
            &format!("@{}", npy_path.display()),
            None,
            &metadata(),
        )
        .unwrap();
        assert_eq!((t.name.as_str(), t.data.clone()), ("INPUT0", source.data));
        let json_path = dir.path().join("x.json");
        std::fs::write(&json_path, "[[0,0,0,1]]").unwrap();
        let t = input_tensor(
            "INPUT0",
            &format!("@{}", json_path.display()),
            None,
            &metadata(),
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 4]);
        assert!(input_tensor("INPUT0", "@/nonexistent.npy", None, &metadata()).is_err());
    }

    #[test]
    fn dims_and_file_names() {
        assert_eq!(parse_dims("1,16").unwrap(), vec![1, 16]);
        assert_eq!(parse_dims("[2, 3]").unwrap(), vec![2, 3]);
        assert_eq!(parse_dims("").unwrap(), Vec::<i64>::new());
        assert!(parse_dims("1,-1").is_err());
        assert!(parse_dims("a").is_err());
        assert_eq!(file_name("../x/y"), "_x_y");
        assert_eq!(file_name(".."), "output");
        assert_eq!(file_name("OUTPUT0"), "OUTPUT0");
    }
}
