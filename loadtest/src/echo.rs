//! A minimal KServe v2 server for one model that answers every inference with a canned
//! response, built only to measure the transport ceiling: what hyper (HTTP/1.1) and tonic
//! (gRPC) cost with no request parsing, validation, scheduling or model behind them.
//!
//! It serves just enough for the load generator (and perf_analyzer) to run: health, server and
//! model metadata, model readiness, statistics (a request counter, so that server CPU time per
//! inference can be computed the same way as for a real server) and infer. Infer bodies are
//! read to the end and dropped; the only thing looked at is whether the HTTP request used the
//! binary extension (the `Inference-Header-Content-Length` header), to answer in kind.
//!
//! Concurrency: one task per HTTP connection (hyper), tonic's own tasks for gRPC; the canned
//! responses are built once and shared (`Bytes` clones). Sockets get `TCP_NODELAY`, as a
//! latency-minded server's should.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nereid_protocol::grpc::response_to_grpc;
use nereid_protocol::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use nereid_protocol::inference::model_metadata_response::TensorMetadata;
use nereid_protocol::inference::*;
use nereid_protocol::rest::{render_response, HEADER_CONTENT_LENGTH};
use nereid_protocol::{DataType, InferResponse, Tensor};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// The one model the echo server pretends to serve.
#[derive(Debug, Clone)]
pub struct EchoModel {
    pub name: String,
    pub input: String,
    pub output: String,
    pub datatype: DataType,
    /// Dims without the batch dimension (metadata shows a leading -1).
    pub dims: Vec<i64>,
}

impl Default for EchoModel {
    /// The contract of `model-repo/identity_fp32`.
    fn default() -> Self {
        EchoModel {
            name: "identity_fp32".into(),
            input: "INPUT0".into(),
            output: "OUTPUT0".into(),
            datatype: DataType::Fp32,
            dims: vec![16],
        }
    }
}

/// Everything a response needs, built once.
struct Canned {
    model: EchoModel,
    http_json: Bytes,
    http_binary: Bytes,
    http_binary_header: usize,
    metadata_json: Bytes,
    metadata: ModelMetadataResponse,
    infer: ModelInferResponse,
    /// Inference requests answered, for the statistics endpoint.
    count: AtomicU64,
}

impl Canned {
    fn new(model: EchoModel) -> Result<Canned, String> {
        let size = model
            .datatype
            .element_size()
            .ok_or("the echo server serves fixed-size datatypes only")?;
        let mut shape = vec![1];
        shape.extend(&model.dims);
        let count: i64 = shape.iter().product();
        if count < 0 {
            return Err("dims must be non-negative".into());
        }
        let response = InferResponse {
            model_name: model.name.clone(),
            model_version: "1".into(),
            outputs: vec![Tensor::new(
                model.output.clone(),
                model.datatype,
                shape,
                Bytes::from(vec![0u8; count as usize * size]),
            )],
            ..Default::default()
        };
        let json = render_response(&response, |_| false);
        let binary = render_response(&response, |_| true);
        let mut declared = vec![-1];
        declared.extend(&model.dims);
        let tensor = |name: &str| TensorMetadata {
            name: name.into(),
            datatype: model.datatype.as_str().into(),
            shape: declared.clone(),
        };
        let metadata = ModelMetadataResponse {
            name: model.name.clone(),
            versions: vec!["1".into()],
            platform: "echo".into(),
            inputs: vec![tensor(&model.input)],
            outputs: vec![tensor(&model.output)],
        };
        let metadata_json = serde_json::json!({
            "name": metadata.name,
            "versions": metadata.versions,
            "platform": metadata.platform,
            "inputs": [{"name": model.input, "datatype": model.datatype.as_str(), "shape": declared}],
            "outputs": [{"name": model.output, "datatype": model.datatype.as_str(), "shape": declared}],
        });
        Ok(Canned {
            http_json: Bytes::from(json.body),
            http_binary_header: binary
                .header_length
                .expect("a binary rendering has a header length. This is a bug."),
            http_binary: Bytes::from(binary.body),
            metadata_json: Bytes::from(metadata_json.to_string()),
            metadata,
            infer: response_to_grpc(response),
            count: AtomicU64::new(0),
            model,
        })
    }

    fn statistics(&self) -> ModelStatisticsResponse {
        let n = self.count.load(Ordering::Relaxed);
        ModelStatisticsResponse {
            model_stats: vec![ModelStatistics {
                name: self.model.name.clone(),
                version: "1".into(),
                inference_count: n,
                execution_count: n,
                inference_stats: Some(InferStatistics {
                    success: Some(StatisticDuration { count: n, ns: 0 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }
}

pub struct EchoServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds both listeners (port 0 picks a free port) and serves until [`Self::stop`].
    pub async fn start(
        model: EchoModel,
        host: IpAddr,
        http_port: u16,
        grpc_port: u16,
    ) -> std::io::Result<EchoServer> {
        let canned = Arc::new(
            Canned::new(model)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        );
        let http_listener = TcpListener::bind((host, http_port)).await?;
        let grpc_listener = TcpListener::bind((host, grpc_port)).await?;
        let (http, grpc) = (http_listener.local_addr()?, grpc_listener.local_addr()?);
        let (stop, stopped) = watch::channel(false);

        let http_task = {
            let canned = Arc::clone(&canned);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        accepted = http_listener.accept() => accepted,
                        _ = stopped.wait_for(|s| *s) => break,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let canned = Arc::clone(&canned);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            handle_http(Arc::clone(&canned), request)
                        });
                        // A client that goes away mid-request is not the server's problem.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        let grpc_task = {
            let service = GrpcInferenceServiceServer::new(EchoGrpc {
                canned: Arc::clone(&canned),
            })
            .max_decoding_message_size(i32::MAX as usize)
            .max_encoding_message_size(i32::MAX as usize);
            let incoming =
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener).map(|stream| {
                    if let Ok(stream) = &stream {
                        let _ = stream.set_nodelay(true);
                    }
                    stream
                });
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(err) = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    eprintln!("echo-server: gRPC server failed: {err}");
                }
            })
        };
        Ok(EchoServer {
            http,
            grpc,
            stop,
            tasks: vec![http_task, grpc_task],
        })
    }

    /// Stops accepting and waits for the listeners to close.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, "application/json", Bytes::from(body))
}

async fn handle_http(
    canned: Arc<Canned>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let model_op = path
        .strip_prefix("/v2/models/")
        .map(|rest| rest.split_once('/').unwrap_or((rest, "")));
    let ok = || respond(StatusCode::OK, "application/json", Bytes::new());
    Ok(match (method, path.as_str(), model_op) {
        (Method::GET, "/v2/health/live" | "/v2/health/ready", _) => ok(),
        (Method::GET, "/v2", _) => respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(
                serde_json::json!({"name": "echo-server", "version": "0", "extensions": ["binary_tensor_data", "statistics"]})
                    .to_string(),
            ),
        ),
        (method, _, Some((model, op))) if model == canned.model.name => match (method, op) {
            (Method::POST, "infer") => {
                let binary = request.headers().contains_key(HEADER_CONTENT_LENGTH);
                // Read the request to the end (the client waits for that), but do not parse it.
                if request.into_body().collect().await.is_err() {
                    return Ok(error(StatusCode::BAD_REQUEST, "failed to read the request body"));
                }
                canned.count.fetch_add(1, Ordering::Relaxed);
                if binary {
                    let mut response = respond(
                        StatusCode::OK,
                        "application/octet-stream",
                        canned.http_binary.clone(),
                    );
                    response
                        .headers_mut()
                        .insert(HEADER_CONTENT_LENGTH, canned.http_binary_header.into());
                    response
                } else {
                    respond(StatusCode::OK, "application/json", canned.http_json.clone())
                }
            }
            (Method::GET, "") => respond(
                StatusCode::OK,
                "application/json",
                canned.metadata_json.clone(),
            ),
            (Method::GET, "ready") => ok(),
            (Method::GET, "stats") => respond(
                StatusCode::OK,
                "application/json",
                Bytes::from(nereid_protocol::config::message_to_json(
                    &canned.statistics(),
                    "inference.ModelStatisticsResponse",
                )),
            ),
            _ => error(StatusCode::NOT_FOUND, "Not Found"),
        },
        (_, _, Some((model, _))) => error(
            StatusCode::NOT_FOUND,
            &format!("Request for unknown model: '{model}' is not found"),
        ),
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    })
}

struct EchoGrpc {
    canned: Arc<Canned>,
}

impl EchoGrpc {
    fn check_model(&self, name: &str) -> Result<(), Status> {
        if name == self.canned.model.name {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "Request for unknown model: '{name}' is not found"
            )))
        }
    }
}

fn unimplemented<T>(rpc: &str) -> Result<GrpcResponse<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented by the echo server"
    )))
}

type StreamResponse = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl GrpcInferenceService for EchoGrpc {
    async fn server_live(
        &self,
        _: GrpcRequest<ServerLiveRequest>,
    ) -> Result<GrpcResponse<ServerLiveResponse>, Status> {
        Ok(GrpcResponse::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: GrpcRequest<ServerReadyRequest>,
    ) -> Result<GrpcResponse<ServerReadyResponse>, Status> {
        Ok(GrpcResponse::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: GrpcRequest<ModelReadyRequest>,
    ) -> Result<GrpcResponse<ModelReadyResponse>, Status> {
        Ok(GrpcResponse::new(ModelReadyResponse {
            ready: request.get_ref().name == self.canned.model.name,
        }))
    }

    async fn server_metadata(
        &self,
        _: GrpcRequest<ServerMetadataRequest>,
    ) -> Result<GrpcResponse<ServerMetadataResponse>, Status> {
        Ok(GrpcResponse::new(ServerMetadataResponse {
            name: "echo-server".into(),
            version: "0".into(),
            extensions: vec!["statistics".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: GrpcRequest<ModelMetadataRequest>,
    ) -> Result<GrpcResponse<ModelMetadataResponse>, Status> {
        self.check_model(&request.get_ref().name)?;
        Ok(GrpcResponse::new(self.canned.metadata.clone()))
    }

    async fn model_infer(
        &self,
        _: GrpcRequest<ModelInferRequest>,
    ) -> Result<GrpcResponse<ModelInferResponse>, Status> {
        // No check of the request at all: this is the ceiling.
        self.canned.count.fetch_add(1, Ordering::Relaxed);
        Ok(GrpcResponse::new(self.canned.infer.clone()))
    }

    type ModelStreamInferStream = StreamResponse;

    async fn model_stream_infer(
        &self,
        _: GrpcRequest<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<GrpcResponse<Self::ModelStreamInferStream>, Status> {
        unimplemented("ModelStreamInfer")
    }

    async fn model_config(
        &self,
        _: GrpcRequest<ModelConfigRequest>,
    ) -> Result<GrpcResponse<ModelConfigResponse>, Status> {
        unimplemented("ModelConfig")
    }

    async fn model_statistics(
        &self,
        request: GrpcRequest<ModelStatisticsRequest>,
    ) -> Result<GrpcResponse<ModelStatisticsResponse>, Status> {
        let name = &request.get_ref().name;
        if !name.is_empty() {
            self.check_model(name)?;
        }
        Ok(GrpcResponse::new(self.canned.statistics()))
    }

    async fn repository_index(
        &self,
        _: GrpcRequest<RepositoryIndexRequest>,
    ) -> Result<GrpcResponse<RepositoryIndexResponse>, Status> {
        unimplemented("RepositoryIndex")
    }

    async fn repository_model_load(
        &self,
        _: GrpcRequest<RepositoryModelLoadRequest>,
    ) -> Result<GrpcResponse<RepositoryModelLoadResponse>, Status> {
        unimplemented("RepositoryModelLoad")
    }

    async fn repository_model_unload(
        &self,
        _: GrpcRequest<RepositoryModelUnloadRequest>,
    ) -> Result<GrpcResponse<RepositoryModelUnloadResponse>, Status> {
        unimplemented("RepositoryModelUnload")
    }

    async fn system_shared_memory_status(
        &self,
        _: GrpcRequest<SystemSharedMemoryStatusRequest>,
    ) -> Result<GrpcResponse<SystemSharedMemoryStatusResponse>, Status> {
        unimplemented("SystemSharedMemoryStatus")
    }

    async fn system_shared_memory_register(
        &self,
        _: GrpcRequest<SystemSharedMemoryRegisterRequest>,
    ) -> Result<GrpcResponse<SystemSharedMemoryRegisterResponse>, Status> {
        unimplemented("SystemSharedMemoryRegister")
    }

    async fn system_shared_memory_unregister(
        &self,
        _: GrpcRequest<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<GrpcResponse<SystemSharedMemoryUnregisterResponse>, Status> {
        unimplemented("SystemSharedMemoryUnregister")
    }

    async fn cuda_shared_memory_status(
        &self,
        _: GrpcRequest<CudaSharedMemoryStatusRequest>,
    ) -> Result<GrpcResponse<CudaSharedMemoryStatusResponse>, Status> {
        unimplemented("CudaSharedMemoryStatus")
    }

    async fn cuda_shared_memory_register(
        &self,
        _: GrpcRequest<CudaSharedMemoryRegisterRequest>,
    ) -> Result<GrpcResponse<CudaSharedMemoryRegisterResponse>, Status> {
        unimplemented("CudaSharedMemoryRegister")
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: GrpcRequest<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<GrpcResponse<CudaSharedMemoryUnregisterResponse>, Status> {
        unimplemented("CudaSharedMemoryUnregister")
    }

    async fn trace_setting(
        &self,
        _: GrpcRequest<TraceSettingRequest>,
    ) -> Result<GrpcResponse<TraceSettingResponse>, Status> {
        unimplemented("TraceSetting")
    }

    async fn log_settings(
        &self,
        _: GrpcRequest<LogSettingsRequest>,
    ) -> Result<GrpcResponse<LogSettingsResponse>, Status> {
        unimplemented("LogSettings")
    }
}
