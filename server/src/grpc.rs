//! The `inference.GRPCInferenceService` front end (port 8001), plus `grpc.health.v1.Health`.
//!
//! A thin adapter over [`Infer`]: decode with `nereid_protocol::grpc`, call, map errors with the
//! one `Code -> tonic::Status` mapping. Message size limits are Triton's (`INT32_MAX`).

use std::pin::Pin;

use nereid_protocol::grpc::{request_from_grpc, response_to_grpc};
use nereid_protocol::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use nereid_protocol::inference::*;
use nereid_protocol::{config, Error};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::infer::Infer;
use crate::registry::LoadOverride;
use crate::restrict::{Api, Restrictions};

/// Requests of one `ModelStreamInfer` stream running at once; the next waits for a slot.
const STREAM_MAX_IN_FLIGHT: usize = 1024;
/// Responses of one stream ready but not yet taken by the transport.
const STREAM_RESPONSE_BUFFER: usize = 64;

/// One stream request's reply: its response, or its error in the stream (the stream stays open).
/// Both carry the request's id and Triton's `triton_final_response` flag.
async fn stream_reply(infer: &Infer, message: ModelInferRequest) -> ModelStreamInferResponse {
    let (id, model_name, model_version) = (
        message.id.clone(),
        message.model_name.clone(),
        message.model_version.clone(),
    );
    let outcome = async {
        let (name, version, request) = request_from_grpc(message)?;
        infer.infer(&name, &version, request).await
    }
    .await;
    let (error_message, mut response) = match outcome {
        Ok(response) => (String::new(), response_to_grpc(response)),
        Err(err) => (
            err.message,
            ModelInferResponse {
                model_name,
                model_version,
                id,
                ..Default::default()
            },
        ),
    };
    response.parameters.insert(
        nereid_protocol::grpc::FINAL_RESPONSE_PARAMETER.to_string(),
        InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::BoolParam(true)),
        },
    );
    ModelStreamInferResponse {
        error_message,
        infer_response: Some(response),
    }
}

/// Triton's gRPC message size limit, for both directions.
pub const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

pub struct GrpcService {
    infer: Infer,
    restrictions: Restrictions,
}

/// The service, accepting and sending messages of up to `max_message_bytes`
/// (`--grpc-max-message-bytes`; Triton's limit, `INT32_MAX`, by default).
pub fn service(
    infer: Infer,
    restrictions: Restrictions,
    max_message_bytes: usize,
) -> GrpcInferenceServiceServer<GrpcService> {
    GrpcInferenceServiceServer::new(GrpcService {
        infer,
        restrictions,
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes)
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Health, request.metadata())?;
        Ok(Response::new(ServerLiveResponse {
            live: self.infer.is_live(),
        }))
    }

    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Health, request.metadata())?;
        Ok(Response::new(ServerReadyResponse {
            ready: self.infer.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Health, request.metadata())?;
        let r = request.into_inner();
        // Unknown models are "not ready", not an error, as Triton has long answered.
        Ok(Response::new(ModelReadyResponse {
            ready: self.infer.model_ready(&r.name, &r.version),
        }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Metadata, request.metadata())?;
        Ok(Response::new(self.infer.server_metadata()))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Metadata, request.metadata())?;
        let r = request.into_inner();
        let model = self.infer.model(&r.name, &r.version)?;
        Ok(Response::new(
            model.metadata(self.infer.registry().ready_versions(&r.name)),
        ))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Inference, request.metadata())?;
        let (name, version, request) = request_from_grpc(request.into_inner())?;
        let response = self.infer.infer(&name, &version, request).await?;
        Ok(Response::new(response_to_grpc(response)))
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        self.restrictions
            .check_grpc(Api::Inference, request.metadata())?;
        let infer = self.infer.clone();
        let mut incoming = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_RESPONSE_BUFFER);
        tokio::spawn(async move {
            // Requests of one stream run concurrently, as Triton runs them; each response
            // carries its request's id and goes out when it is ready.
            let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(STREAM_MAX_IN_FLIGHT));
            while let Some(message) = incoming.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        break;
                    }
                };
                let Ok(permit) = std::sync::Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let (infer, sender) = (infer.clone(), sender.clone());
                tokio::spawn(async move {
                    let reply = stream_reply(&infer, message).await;
                    let _ = sender.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        self.restrictions
            .check_grpc(Api::ModelConfig, request.metadata())?;
        let r = request.into_inner();
        let model = self.infer.model(&r.name, &r.version)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some((*model.config).clone()),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Statistics, request.metadata())?;
        let r = request.into_inner();
        Ok(Response::new(self.infer.statistics(&r.name, &r.version)?))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.restrictions
            .check_grpc(Api::ModelRepository, request.metadata())?;
        let r = request.into_inner();
        if !r.repository_name.is_empty() {
            return Err(
                Error::unsupported("'repository_name' specification is not supported").into(),
            );
        }
        let models = self
            .infer
            .registry()
            .index(r.ready)
            .into_iter()
            .map(|row| repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.to_string(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.restrictions
            .check_grpc(Api::ModelRepository, request.metadata())?;
        let r = request.into_inner();
        if !r.repository_name.is_empty() {
            return Err(
                Error::unsupported("'repository_name' specification is not supported").into(),
            );
        }
        let overrides = if r.parameters.is_empty() {
            None
        } else {
            let mut overrides = LoadOverride::default();
            for (key, value) in r.parameters {
                use model_repository_parameter::ParameterChoice;
                match (key.as_str(), value.parameter_choice) {
                    ("config", Some(ParameterChoice::StringParam(json))) => {
                        overrides.config = Some(config::from_json(&json)?);
                    }
                    ("config", _) => {
                        return Err(Error::invalid_arg("parameter 'config' must be a string_param holding the model configuration as JSON").into())
                    }
                    (file, Some(ParameterChoice::BytesParam(contents))) if file.starts_with("file:") => {
                        overrides.files.push((file["file:".len()..].to_string(), contents));
                    }
                    (file, _) if file.starts_with("file:") => {
                        return Err(Error::invalid_arg(format!("parameter '{file}' must be a bytes_param")).into())
                    }
                    _ => {}
                }
            }
            Some(overrides)
        };
        self.infer.load_model(&r.model_name, overrides).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.restrictions
            .check_grpc(Api::ModelRepository, request.metadata())?;
        let r = request.into_inner();
        if !r.repository_name.is_empty() {
            return Err(
                Error::unsupported("'repository_name' specification is not supported").into(),
            );
        }
        let dependents = match r
            .parameters
            .get("unload_dependents")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => false,
            Some(model_repository_parameter::ParameterChoice::BoolParam(b)) => *b,
            Some(_) => {
                return Err(Error::invalid_arg(
                    "parameter 'unload_dependents' must be a bool_param",
                )
                .into())
            }
        };
        self.infer.unload_model(&r.model_name, dependents).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        self.restrictions
            .check_grpc(Api::SharedMemory, request.metadata())?;
        let name = request.into_inner().name;
        let regions = self
            .infer
            .shared_memory()
            .status((!name.is_empty()).then_some(name.as_str()))?
            .into_iter()
            .map(|r| {
                (
                    r.name.clone(),
                    system_shared_memory_status_response::RegionStatus {
                        name: r.name,
                        key: r.key,
                        offset: r.offset,
                        byte_size: r.byte_size,
                    },
                )
            })
            .collect();
        Ok(Response::new(SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        self.restrictions
            .check_grpc(Api::SharedMemory, request.metadata())?;
        let r = request.into_inner();
        self.infer
            .shared_memory()
            .register(&r.name, &r.key, r.offset, r.byte_size)?;
        Ok(Response::new(SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        self.restrictions
            .check_grpc(Api::SharedMemory, request.metadata())?;
        let name = request.into_inner().name;
        self.infer
            .shared_memory()
            .unregister((!name.is_empty()).then_some(name.as_str()));
        Ok(Response::new(SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        request: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        self.restrictions
            .check_grpc(Api::SharedMemory, request.metadata())?;
        let name = request.into_inner().name;
        self.infer
            .shared_memory()
            .cuda_status((!name.is_empty()).then_some(name.as_str()))?;
        Ok(Response::new(CudaSharedMemoryStatusResponse::default()))
    }

    async fn cuda_shared_memory_register(
        &self,
        request: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        self.restrictions
            .check_grpc(Api::SharedMemory, request.metadata())?;
        let name = request.into_inner().name;
        self.infer.shared_memory().cuda_register(&name)?;
        Ok(Response::new(CudaSharedMemoryRegisterResponse {}))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        self.restrictions
            .check_grpc(Api::SharedMemory, request.metadata())?;
        // Nothing can be registered, so there is nothing to unregister (NVIDIA's clients
        // unregister both kinds when they finish).
        Ok(Response::new(CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(
        &self,
        request: Request<TraceSettingRequest>,
    ) -> Result<Response<TraceSettingResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Trace, request.metadata())?;
        let r = request.into_inner();
        let model = (!r.model_name.is_empty()).then_some(r.model_name.as_str());
        if let Some(m) = model {
            if !self.infer.model_ready(m, "") {
                return Err(Error::invalid_arg(format!("Request for unknown model : {m}")).into());
            }
        }
        // No values: back to the global setting.
        let update = crate::trace::update_from(
            |name| Ok(r.settings.get(name).map(|v| v.value.first().cloned())),
            r.settings
                .get("trace_level")
                .map(|v| (!v.value.is_empty()).then(|| v.value.clone())),
        )?;
        let tracer = self.infer.tracer();
        let settings = if r.settings.is_empty() {
            tracer.settings(model)
        } else {
            tracer.update(model, &update)?
        };
        let settings = crate::trace::report(&settings)
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    trace_setting_response::SettingValue { value },
                )
            })
            .collect();
        Ok(Response::new(TraceSettingResponse { settings }))
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        self.restrictions
            .check_grpc(Api::Logging, request.metadata())?;
        use log_settings_request::setting_value::ParameterChoice as In;
        use log_settings_response::setting_value::ParameterChoice as Out;
        let settings = request.into_inner().settings;
        let value = |name: &str| settings.get(name).and_then(|v| v.parameter_choice.clone());
        let flag = |name: &str| match value(name) {
            None => Ok(None),
            Some(In::BoolParam(b)) => Ok(Some(b)),
            Some(_) => Err(Error::invalid_arg(format!("'{name}' must be a bool_param"))),
        };
        let text = |name: &str| match value(name) {
            None => Ok(None),
            Some(In::StringParam(s)) => Ok(Some(s)),
            Some(_) => Err(Error::invalid_arg(format!(
                "'{name}' must be a string_param"
            ))),
        };
        let update = crate::logging::LogUpdate {
            file: text("log_file")?,
            info: flag("log_info")?,
            warning: flag("log_warning")?,
            error: flag("log_error")?,
            verbose_level: match value("log_verbose_level") {
                None => None,
                Some(In::Uint32Param(level)) => Some(level),
                Some(_) => {
                    return Err(
                        Error::invalid_arg("'log_verbose_level' must be a uint32_param").into(),
                    )
                }
            },
            format: text("log_format")?,
        };
        let control = self.infer.log_control();
        let now = if settings.is_empty() {
            control.settings()
        } else {
            control.update(&update)?
        };
        let setting = |choice: Out| log_settings_response::SettingValue {
            parameter_choice: Some(choice),
        };
        let settings = [
            ("log_file", setting(Out::StringParam(String::new()))),
            ("log_info", setting(Out::BoolParam(now.info))),
            ("log_warning", setting(Out::BoolParam(now.warning))),
            ("log_error", setting(Out::BoolParam(now.error))),
            (
                "log_verbose_level",
                setting(Out::Uint32Param(now.verbose_level)),
            ),
            ("log_format", setting(Out::StringParam(now.format.into()))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Response::new(LogSettingsResponse { settings }))
    }
}
