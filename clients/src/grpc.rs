//! [`GrpcClient`]: Triton's `inference.GRPCInferenceService` over tonic.
//!
//! Concurrency: a cheap `Clone` over one tonic `Channel`, i.e. one HTTP/2 connection on which
//! concurrent calls are multiplexed; make several clients for several connections. Message size
//! limits are lifted in both directions (tonic's 4 MiB default is too small for tensors), and
//! tensor data always travels in `raw_input_contents` / `raw_output_contents`.

use std::sync::Arc;

use nereid_protocol::grpc::{parameter_to_grpc, response_from_grpc};
use nereid_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid_protocol::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use nereid_protocol::inference::model_repository_parameter::ParameterChoice;
use nereid_protocol::inference::*;
use nereid_protocol::{InferRequest, InferResponse, Parameter};
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, Result};
use crate::ClientOptions;

#[derive(Clone)]
pub struct GrpcClient {
    client: GrpcInferenceServiceClient<Channel>,
    /// What the user asked to connect to, for error messages.
    target: Arc<str>,
    options: Arc<ClientOptions>,
    /// `options.headers` as metadata, checked and ready to send.
    metadata: Arc<tonic::metadata::MetadataMap>,
}

/// A request converted once and sent many times (the load generator's hot path). Cloning it
/// per call copies names and shapes; tensor bytes are shared.
#[derive(Debug, Clone)]
pub struct PreparedGrpcInfer {
    message: ModelInferRequest,
}

impl PreparedGrpcInfer {
    /// Tensor bytes sent per request.
    pub fn body_len(&self) -> usize {
        self.message
            .raw_input_contents
            .iter()
            .map(|b| b.len())
            .sum()
    }
}

impl GrpcClient {
    /// Connects to `url` (`http://host:port` or `host:port`); fails now if nothing listens.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Self> {
        let url = url.trim();
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        if !with_scheme.starts_with("http://") {
            return Err(ClientError::InvalidArgument(format!(
                "unsupported URL '{url}': only plain http:// (h2c) gRPC is supported"
            )));
        }
        let endpoint = Endpoint::from_shared(with_scheme)
            .map_err(|e| ClientError::InvalidArgument(format!("invalid URL '{url}': {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(options.connect_timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::transport(url, &e))?;
        let client = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &options.headers {
            let key =
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| {
                        ClientError::InvalidArgument(format!("invalid metadata name '{name}': {e}"))
                    })?;
            let value = value.parse().map_err(|e| {
                ClientError::InvalidArgument(format!("invalid value for metadata '{name}': {e}"))
            })?;
            metadata.append(key, value);
        }
        Ok(GrpcClient {
            client,
            target: url.into(),
            options: Arc::new(options),
            metadata: Arc::new(metadata),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if !self.metadata.is_empty() {
            *request.metadata_mut() = (*self.metadata).clone();
        }
        if let Some(limit) = self.options.timeout {
            // Sent as `grpc-timeout`, so that the server can give up too.
            request.set_timeout(limit);
        }
        request
    }

    /// Runs one call with the client's timeout and error mapping. The generated methods take
    /// `&mut self`; cloning the client per call is how tonic intends them to be shared.
    async fn call<F, Fut, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(GrpcInferenceServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        let outcome = match self.options.timeout {
            Some(limit) => tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| ClientError::Timeout(limit))?,
            None => fut.await,
        };
        outcome
            .map(tonic::Response::into_inner)
            .map_err(|status| self.status_error(status))
    }

    fn status_error(&self, status: tonic::Status) -> ClientError {
        // A status tonic made up for a broken connection carries the transport error as its
        // source; the server's own statuses have none.
        if let Some(source) = std::error::Error::source(&status) {
            if source.is::<tonic::transport::Error>() || source.is::<std::io::Error>() {
                return ClientError::transport(&self.target, source);
            }
        }
        ClientError::Grpc {
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub async fn server_live(&self) -> Result<bool> {
        let request = self.request(ServerLiveRequest {});
        let r = self
            .call(|mut c| async move { c.server_live(request).await })
            .await?;
        Ok(r.live)
    }

    pub async fn server_ready(&self) -> Result<bool> {
        let request = self.request(ServerReadyRequest {});
        let r = self
            .call(|mut c| async move { c.server_ready(request).await })
            .await?;
        Ok(r.ready)
    }

    pub async fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        let request = self.request(ModelReadyRequest {
            name: name.into(),
            version: version.into(),
        });
        let r = self
            .call(|mut c| async move { c.model_ready(request).await })
            .await?;
        Ok(r.ready)
    }

    pub async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        let request = self.request(ServerMetadataRequest {});
        self.call(|mut c| async move { c.server_metadata(request).await })
            .await
    }

    pub async fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadataResponse> {
        let request = self.request(ModelMetadataRequest {
            name: name.into(),
            version: version.into(),
        });
        self.call(|mut c| async move { c.model_metadata(request).await })
            .await
    }

    pub async fn model_config(&self, name: &str, version: &str) -> Result<ModelConfig> {
        let request = self.request(ModelConfigRequest {
            name: name.into(),
            version: version.into(),
        });
        let r = self
            .call(|mut c| async move { c.model_config(request).await })
            .await?;
        r.config.ok_or_else(|| {
            ClientError::InvalidResponse("ModelConfigResponse without config".into())
        })
    }

    /// Statistics of one model (all its versions when `version` is empty), or of every model
    /// when `name` is empty.
    pub async fn model_statistics(
        &self,
        name: &str,
        version: &str,
    ) -> Result<ModelStatisticsResponse> {
        let request = self.request(ModelStatisticsRequest {
            name: name.into(),
            version: version.into(),
        });
        self.call(|mut c| async move { c.model_statistics(request).await })
            .await
    }

    pub async fn repository_index(&self, ready_only: bool) -> Result<RepositoryIndexResponse> {
        let request = self.request(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: ready_only,
        });
        self.call(|mut c| async move { c.repository_index(request).await })
            .await
    }

    /// Loads (or reloads) a model; `config` is an optional model configuration in Triton's JSON
    /// form that overrides `config.pbtxt`.
    pub async fn load_model(&self, name: &str, config: Option<&str>) -> Result<()> {
        let mut parameters = std::collections::HashMap::new();
        if let Some(config) = config {
            parameters.insert(
                "config".to_string(),
                ModelRepositoryParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(config.to_string())),
                },
            );
        }
        let request = self.request(RepositoryModelLoadRequest {
            repository_name: String::new(),
            model_name: name.into(),
            parameters,
        });
        self.call(|mut c| async move { c.repository_model_load(request).await })
            .await
            .map(drop)
    }

    pub async fn unload_model(&self, name: &str) -> Result<()> {
        let request = self.request(RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: name.into(),
            parameters: Default::default(),
        });
        self.call(|mut c| async move { c.repository_model_unload(request).await })
            .await
            .map(drop)
    }

    /// Converts a request once, for [`Self::infer_prepared`].
    pub fn prepare_infer(
        &self,
        name: &str,
        version: &str,
        request: &InferRequest,
    ) -> Result<PreparedGrpcInfer> {
        Ok(PreparedGrpcInfer {
            message: request_to_grpc(name, version, request)?,
        })
    }

    pub async fn infer_prepared(&self, prepared: &PreparedGrpcInfer) -> Result<InferResponse> {
        let request = self.request(prepared.message.clone());
        let message = self
            .call(|mut c| async move { c.model_infer(request).await })
            .await?;
        response_from_grpc(raw_outputs(message)?)
            .map_err(|e| ClientError::InvalidResponse(e.message))
    }

    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        request: &InferRequest,
    ) -> Result<InferResponse> {
        let prepared = self.prepare_infer(name, version, request)?;
        self.infer_prepared(&prepared).await
    }
}

/// Moves typed `contents` of outputs into `raw_output_contents`. Triton and Nereid always answer
/// raw; other servers (MLServer, KServe's Python server) may answer in typed fields.
fn raw_outputs(mut message: ModelInferResponse) -> Result<ModelInferResponse> {
    if !message.raw_output_contents.is_empty() {
        return Ok(message);
    }
    for output in &mut message.outputs {
        let contents = output.contents.take().unwrap_or_default();
        let raw = typed_to_raw(&output.name, &output.datatype, contents)?;
        message.raw_output_contents.push(raw);
    }
    Ok(message)
}

fn typed_to_raw(name: &str, datatype: &str, c: InferTensorContents) -> Result<bytes::Bytes> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        name: &str,
        values: &[S],
        mut push: impl FnMut(T),
    ) -> Result<()> {
        for &v in values {
            push(T::try_from(v).map_err(|_| {
                ClientError::InvalidResponse(format!("output '{name}': value {v} is out of range"))
            })?);
        }
        Ok(())
    }
    use nereid_protocol::DataType as D;
    let datatype = D::from_wire(datatype).ok_or_else(|| {
        ClientError::InvalidResponse(format!("unknown datatype '{datatype}' for output '{name}'"))
    })?;
    let mut out: Vec<u8> = Vec::new();
    match datatype {
        D::Bool => out.extend(c.bool_contents.iter().map(|b| u8::from(*b))),
        D::Uint8 => narrow(name, &c.uint_contents, |v: u8| out.push(v))?,
        D::Uint16 => narrow(name, &c.uint_contents, |v: u16| out.extend(v.to_le_bytes()))?,
        D::Uint32 => out.extend(c.uint_contents.iter().flat_map(|v| v.to_le_bytes())),
        D::Uint64 => out.extend(c.uint64_contents.iter().flat_map(|v| v.to_le_bytes())),
        D::Int8 => narrow(name, &c.int_contents, |v: i8| out.extend(v.to_le_bytes()))?,
        D::Int16 => narrow(name, &c.int_contents, |v: i16| out.extend(v.to_le_bytes()))?,
        D::Int32 => out.extend(c.int_contents.iter().flat_map(|v| v.to_le_bytes())),
        D::Int64 => out.extend(c.int64_contents.iter().flat_map(|v| v.to_le_bytes())),
        D::Fp32 => out.extend(c.fp32_contents.iter().flat_map(|v| v.to_le_bytes())),
        D::Fp64 => out.extend(c.fp64_contents.iter().flat_map(|v| v.to_le_bytes())),
        D::Bytes => return Ok(nereid_protocol::encode_bytes_elements(&c.bytes_contents)),
        D::Fp16 | D::Bf16 => {
            return Err(ClientError::InvalidResponse(format!(
                "output '{name}' is {datatype} but has no raw_output_contents"
            )))
        }
    }
    Ok(bytes::Bytes::from(out))
}

/// Builds a `ModelInferRequest` with every tensor in `raw_input_contents`. The HTTP-only
/// `binary` output flags have no gRPC meaning and are dropped.
pub fn request_to_grpc(
    name: &str,
    version: &str,
    request: &InferRequest,
) -> Result<ModelInferRequest> {
    let mut message = ModelInferRequest {
        model_name: name.into(),
        model_version: version.into(),
        id: request.id.clone(),
        parameters: request
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), parameter_to_grpc(v)))
            .collect(),
        inputs: Vec::with_capacity(request.inputs.len()),
        outputs: Vec::with_capacity(request.outputs.len()),
        raw_input_contents: Vec::with_capacity(request.inputs.len()),
    };
    for tensor in &request.inputs {
        crate::check_tensor(tensor)
            .map_err(|e| ClientError::InvalidArgument(format!("input {e}")))?;
        message.inputs.push(InferInputTensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype.as_str().into(),
            shape: tensor.shape.clone(),
            parameters: Default::default(),
            contents: None,
        });
        message.raw_input_contents.push(tensor.data.clone());
    }
    for output in &request.outputs {
        let mut parameters = std::collections::HashMap::new();
        if let Some(k) = output.classification {
            parameters.insert(
                "classification".to_string(),
                parameter_to_grpc(&Parameter::Int(i64::from(k))),
            );
        }
        message.outputs.push(InferRequestedOutputTensor {
            name: output.name.clone(),
            parameters,
        });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::grpc::request_from_grpc;
    use nereid_protocol::inference::model_infer_response::InferOutputTensor;
    use nereid_protocol::{RequestedOutput, Tensor};

    #[test]
    fn typed_output_contents_are_read() {
        let output =
            |name: &str, datatype: &str, contents: InferTensorContents| InferOutputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape: vec![2],
                parameters: Default::default(),
                contents: Some(contents),
            };
        let message = ModelInferResponse {
            model_name: "m".into(),
            outputs: vec![
                output(
                    "F",
                    "FP32",
                    InferTensorContents {
                        fp32_contents: vec![1.5, -2.0],
                        ..Default::default()
                    },
                ),
                output(
                    "I",
                    "INT8",
                    InferTensorContents {
                        int_contents: vec![-1, 7],
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let response = response_from_grpc(raw_outputs(message).unwrap()).unwrap();
        assert_eq!(response.outputs[0].to_vec::<f32>(), vec![1.5, -2.0]);
        assert_eq!(&response.outputs[1].data[..], &[0xff, 7]);
        let bad = ModelInferResponse {
            outputs: vec![output(
                "I",
                "INT8",
                InferTensorContents {
                    int_contents: vec![300, 0],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        assert!(raw_outputs(bad).is_err());
    }

    /// The server's converter is the oracle.
    #[test]
    fn server_reads_what_we_send() {
        let mut request = InferRequest {
            id: "7".into(),
            inputs: vec![Tensor::from_f32("A", vec![1, 2], &[1.0, 2.0])],
            outputs: vec![RequestedOutput {
                name: "O".into(),
                classification: Some(3),
                binary: false,
                ..Default::default()
            }],
            ..Default::default()
        };
        request
            .parameters
            .insert("priority".into(), Parameter::Uint(2));
        let message = request_to_grpc("m", "1", &request).unwrap();
        let (name, version, back) = request_from_grpc(message).unwrap();
        assert_eq!((name.as_str(), version.as_str()), ("m", "1"));
        assert_eq!(back.inputs, request.inputs);
        assert_eq!(back.outputs, request.outputs);
        assert_eq!(back.parameters, request.parameters);
    }
}
