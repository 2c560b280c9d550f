//! `nereid-client`: an async client for KServe v2 / Triton inference servers, over both
//! protocols, and the `nereid infer` command built on it.
//!
//! What it owns:
//! - [`HttpClient`] (REST over HTTP/1.1, JSON or the binary tensor extension) and [`GrpcClient`]
//!   (`inference.GRPCInferenceService`), with the same methods: health, server and model
//!   metadata, model config, infer, statistics and the repository API (index, load, unload).
//! - [`Client`]: either of them behind one type, for code that takes the protocol as a setting
//!   (the load generator, the CLI).
//! - [`ClientError`]: the server's message kept verbatim (HTTP status + `{"error"}` text, gRPC
//!   code + message), apart from transport failures, timeouts and malformed answers.
//! - [`npy`]: NumPy `.npy` files to and from tensors; [`cli`]: `nereid infer`.
//!
//! Data flow: callers build protocol-neutral values from `nereid_protocol` ([`InferRequest`] of
//! [`Tensor`]s); a client encodes them (`rest_body` for HTTP, `grpc::request_to_grpc` for gRPC),
//! sends them and decodes the answer into an [`InferResponse`]. Every other call returns the
//! prost message of the gRPC API (`nereid_protocol::inference::*`); on HTTP the JSON payload is
//! read into that same message by reflection (`json_message`), so results do not depend on the
//! protocol. For repeated sends, `prepare_infer` encodes once and `infer_prepared` only sends.
#![forbid(unsafe_code)]

pub mod cli;
mod error;
pub mod grpc;
pub mod http;
mod json_message;
pub mod npy;
pub mod rest_body;
pub mod tensor_json;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use error::{grpc_code_name, ClientError, Result};
pub use grpc::{GrpcClient, PreparedGrpcInfer};
pub use http::{HttpClient, PreparedHttpInfer};
pub use nereid_protocol::inference::{
    ModelConfig, ModelMetadataResponse, ModelStatisticsResponse, RepositoryIndexResponse,
    ServerMetadataResponse,
};
pub use nereid_protocol::{DataType, InferRequest, InferResponse, RequestedOutput, Tensor};

/// Checks that a tensor's buffer holds exactly the elements its shape and datatype say, so
/// that a malformed tensor is refused before it is sent (and a malformed answer is reported as
/// such). Kept here rather than borrowed from the server's validation, whose messages are
/// worded for requests it receives.
pub fn check_tensor(tensor: &Tensor) -> std::result::Result<(), String> {
    let count =
        nereid_protocol::element_count(&tensor.name, &tensor.shape).map_err(|e| e.message)?;
    match tensor.datatype.element_size() {
        Some(size) => {
            let expected = count
                .checked_mul(size)
                .ok_or_else(|| format!("the byte size of '{}' overflows", tensor.name))?;
            if tensor.data.len() != expected {
                return Err(format!(
                    "'{}' has {} bytes of data but its shape {} of {} needs {expected}",
                    tensor.name,
                    tensor.data.len(),
                    nereid_protocol::shape_string(&tensor.shape),
                    tensor.datatype
                ));
            }
        }
        None => match nereid_protocol::count_bytes_elements(&tensor.data) {
            Some(found) if found == count => {}
            Some(found) => {
                return Err(format!(
                    "'{}' has {found} BYTES elements but its shape {} needs {count}",
                    tensor.name,
                    nereid_protocol::shape_string(&tensor.shape)
                ))
            }
            None => {
                return Err(format!(
                    "'{}' is a malformed BYTES buffer (an element length runs past its end)",
                    tensor.name
                ))
            }
        },
    }
    Ok(())
}

/// Which wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(Protocol::Http),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(format!("unknown protocol '{other}': expected http or grpc")),
        }
    }
}

/// Settings shared by both clients.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Limit on one whole call (send, server time, receive); `None` waits as long as it takes.
    pub timeout: Option<Duration>,
    /// Limit on opening a connection.
    pub connect_timeout: Duration,
    /// HTTP only: send input tensors in binary sections rather than JSON `data` arrays (inputs
    /// that JSON cannot carry, FP16/BF16 and non-UTF-8 BYTES, are binary either way).
    pub http_binary_inputs: bool,
    /// Sent with every call, as HTTP headers or gRPC metadata: auth tokens, or the header of a
    /// restricted API (which Triton's gRPC front end, like Nereid's, reads as metadata named
    /// `triton-grpc-protocol-<header>`).
    pub headers: Vec<(String, String)>,
}

/// Parses a `NAME:VALUE` header argument.
pub fn parse_header(text: &str) -> std::result::Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("header '{text}' is not NAME:VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("header '{text}' has no name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Some(Duration::from_secs(60)),
            connect_timeout: Duration::from_secs(10),
            http_binary_inputs: true,
            headers: Vec::new(),
        }
    }
}

/// An HTTP or gRPC client behind one type.
#[derive(Clone)]
pub enum Client {
    Http(HttpClient),
    Grpc(GrpcClient),
}

/// An inference request encoded for one protocol; see [`Client::prepare_infer`].
#[derive(Debug, Clone)]
pub enum PreparedInfer {
    Http(PreparedHttpInfer),
    Grpc(PreparedGrpcInfer),
}

impl PreparedInfer {
    /// Bytes of tensor data (gRPC) or of the whole body (HTTP) sent per request.
    pub fn body_len(&self) -> usize {
        match self {
            PreparedInfer::Http(p) => p.body_len(),
            PreparedInfer::Grpc(p) => p.body_len(),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            Client::Http($c) => $call,
            Client::Grpc($c) => $call,
        }
    };
}

impl Client {
    /// Connects with `protocol`. HTTP connects lazily (on the first call); gRPC connects now.
    pub async fn connect(url: &str, protocol: Protocol, options: ClientOptions) -> Result<Self> {
        Ok(match protocol {
            Protocol::Http => Client::Http(HttpClient::new(url, options)?),
            Protocol::Grpc => Client::Grpc(GrpcClient::connect(url, options).await?),
        })
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Client::Http(_) => Protocol::Http,
            Client::Grpc(_) => Protocol::Grpc,
        }
    }

    pub async fn server_live(&self) -> Result<bool> {
        dispatch!(self, c => c.server_live().await)
    }

    pub async fn server_ready(&self) -> Result<bool> {
        dispatch!(self, c => c.server_ready().await)
    }

    pub async fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        dispatch!(self, c => c.model_ready(name, version).await)
    }

    pub async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        dispatch!(self, c => c.server_metadata().await)
    }

    pub async fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadataResponse> {
        dispatch!(self, c => c.model_metadata(name, version).await)
    }

    pub async fn model_config(&self, name: &str, version: &str) -> Result<ModelConfig> {
        dispatch!(self, c => c.model_config(name, version).await)
    }

    pub async fn model_statistics(
        &self,
        name: &str,
        version: &str,
    ) -> Result<ModelStatisticsResponse> {
        dispatch!(self, c => c.model_statistics(name, version).await)
    }

    pub async fn repository_index(&self, ready_only: bool) -> Result<RepositoryIndexResponse> {
        dispatch!(self, c => c.repository_index(ready_only).await)
    }

    pub async fn load_model(&self, name: &str, config: Option<&str>) -> Result<()> {
        dispatch!(self, c => c.load_model(name, config).await)
    }

    pub async fn unload_model(&self, name: &str) -> Result<()> {
        dispatch!(self, c => c.unload_model(name).await)
    }

    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        request: &InferRequest,
    ) -> Result<InferResponse> {
        dispatch!(self, c => c.infer(name, version, request).await)
    }

    /// Encodes a request once for this client's protocol.
    pub fn prepare_infer(
        &self,
        name: &str,
        version: &str,
        request: &InferRequest,
    ) -> Result<PreparedInfer> {
        Ok(match self {
            Client::Http(c) => PreparedInfer::Http(c.prepare_infer(name, version, request)?),
            Client::Grpc(c) => PreparedInfer::Grpc(c.prepare_infer(name, version, request)?),
        })
    }

    /// Sends a prepared request; it must have been prepared for this client's protocol.
    pub async fn infer_prepared(&self, prepared: &PreparedInfer) -> Result<InferResponse> {
        match (self, prepared) {
            (Client::Http(c), PreparedInfer::Http(p)) => c.infer_prepared(p).await,
            (Client::Grpc(c), PreparedInfer::Grpc(p)) => c.infer_prepared(p).await,
            _ => Err(ClientError::InvalidArgument(
                "request was prepared for the other protocol".into(),
            )),
        }
    }
}
