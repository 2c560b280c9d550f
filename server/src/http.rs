//! The KServe v2 / Triton HTTP front end (port 8000).
//!
//! A thin adapter: it routes by hand (so that unknown paths get Triton's 404 `{"error":"Not
//! Found"}` and wrong methods its 405), reads and decompresses bodies within the size limit,
//! decodes them with `nereid_protocol::rest`, calls [`Infer`], and maps errors with the one
//! `Code -> HTTP status` mapping.

use std::io::Read;
use std::path::Path;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use nereid_protocol::inference::ModelStatisticsResponse;
use nereid_protocol::{config, element_count, rest, Error, InferRequest, Tensor};
use percent_encoding::percent_decode_str;

use crate::infer::Infer;
use crate::model::ModelVersion;
use crate::registry::LoadOverride;
use crate::restrict::{Api, Restrictions};
use std::sync::Arc;

/// Triton's default `--http-max-input-size` (64 MiB).
pub const DEFAULT_MAX_INPUT_SIZE: usize = 1 << 26;

/// Time a client has to send a request body, unless `--http-body-timeout-secs` says otherwise.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
pub struct HttpState {
    pub infer: Infer,
    pub max_input_size: usize,
    /// A body that takes longer to arrive is refused (a client trickling bytes holds nothing).
    pub body_timeout: std::time::Duration,
    pub restrictions: Arc<Restrictions>,
}

pub fn router(state: HttpState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<HttpState>, request: Request<Body>) -> Response {
    match route(&state, request).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

fn error_response(err: &Error) -> Response {
    let status = StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, err.to_json_body())
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

fn not_found() -> Error {
    Error::not_found("Not Found")
}

/// A path matched a route but not its method.
struct WrongMethod;

/// The routed operation, with percent-decoded model names.
enum Route {
    ServerMetadata,
    Live,
    Ready,
    AllStats,
    ModelMetadata(String, String),
    ModelReady(String, String),
    ModelConfig(String, String),
    ModelStats(String, String),
    ModelInfer(String, String),
    ModelDrift(String, String),
    ModelDriftPage(String, String),
    ModelFeedback(String, String),
    ModelLineage(String, String),
    RequestLineage(String),
    Triggers,
    Trigger(String),
    TriggerFire(String),
    RepositoryIndex,
    RepositoryLoad(String),
    RepositoryUnload(String),
    NamedRepository,
    /// System shared memory: the region name (`None`: all), for status and unregister.
    SharedMemoryStatus(Option<String>),
    SharedMemoryRegister(Option<String>),
    SharedMemoryUnregister(Option<String>),
    CudaSharedMemoryStatus(Option<String>),
    CudaSharedMemoryRegister(Option<String>),
    CudaSharedMemoryUnregister,
    /// The logging extension: `update` is false to read the settings, true to change them.
    Logging {
        update: bool,
    },
    /// The trace extension, globally or for one model.
    TraceSetting {
        model: Option<String>,
        update: bool,
    },
}

impl Route {
    /// The API group a route belongs to, for `--http-restricted-api`.
    fn api(&self) -> Api {
        match self {
            Route::Live | Route::Ready | Route::ModelReady(..) => Api::Health,
            Route::ServerMetadata
            | Route::ModelMetadata(..)
            | Route::ModelLineage(..)
            | Route::RequestLineage(_) => Api::Metadata,
            Route::ModelConfig(..) => Api::ModelConfig,
            Route::AllStats
            | Route::ModelStats(..)
            | Route::ModelDrift(..)
            | Route::ModelDriftPage(..)
            | Route::Triggers
            | Route::Trigger(_) => Api::Statistics,
            Route::ModelInfer(..) | Route::ModelFeedback(..) => Api::Inference,
            Route::RepositoryIndex
            | Route::RepositoryLoad(_)
            | Route::RepositoryUnload(_)
            | Route::NamedRepository
            | Route::TriggerFire(_) => Api::ModelRepository,
            Route::SharedMemoryStatus(_)
            | Route::SharedMemoryRegister(_)
            | Route::SharedMemoryUnregister(_)
            | Route::CudaSharedMemoryStatus(_)
            | Route::CudaSharedMemoryRegister(_)
            | Route::CudaSharedMemoryUnregister => Api::SharedMemory,
            Route::Logging { .. } => Api::Logging,
            Route::TraceSetting { .. } => Api::Trace,
        }
    }
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn parse_route(method: &Method, path: &str) -> Result<Option<Route>, WrongMethod> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = |route: Route| {
        if method == Method::GET {
            Ok(Some(route))
        } else {
            Err(WrongMethod)
        }
    };
    let post = |route: Route| {
        if method == Method::POST {
            Ok(Some(route))
        } else {
            Err(WrongMethod)
        }
    };
    // A settings endpoint: GET reads them, POST changes them.
    let read_or_change = |route: &dyn Fn(bool) -> Route| match *method {
        Method::GET => Ok(Some(route(false))),
        Method::POST => Ok(Some(route(true))),
        _ => Err(WrongMethod),
    };
    let model = |segments: &[&str]| -> Option<(String, String, Option<String>)> {
        // [m] | [m, op] | [m, versions, v] | [m, versions, v, op]
        let name = decode(segments.first()?);
        match segments[1..] {
            [] => Some((name, String::new(), None)),
            [op] => Some((name, String::new(), Some(op.to_string()))),
            ["versions", v] if is_version(v) => Some((name, v.to_string(), None)),
            ["versions", v, op] if is_version(v) => {
                Some((name, v.to_string(), Some(op.to_string())))
            }
            _ => None,
        }
    };
    match segments.as_slice() {
        ["v2"] => get(Route::ServerMetadata),
        ["v2", "health", "live"] => get(Route::Live),
        ["v2", "health", "ready"] => get(Route::Ready),
        ["v2", "models", "stats"] => get(Route::AllStats),
        ["v2", "lineage", id] if !id.is_empty() => get(Route::RequestLineage(decode(id))),
        ["v2", "triggers"] => get(Route::Triggers),
        ["v2", "triggers", id] if !id.is_empty() => get(Route::Trigger(decode(id))),
        ["v2", "triggers", id, "fire"] if !id.is_empty() => post(Route::TriggerFire(decode(id))),
        ["v2", "repository", "index"] => post(Route::RepositoryIndex),
        ["v2", "repository", "models", m, "load"] => post(Route::RepositoryLoad(decode(m))),
        ["v2", "repository", "models", m, "unload"] => post(Route::RepositoryUnload(decode(m))),
        ["v2", "systemsharedmemory", "status"] => get(Route::SharedMemoryStatus(None)),
        ["v2", "systemsharedmemory", "register"] => post(Route::SharedMemoryRegister(None)),
        ["v2", "systemsharedmemory", "unregister"] => post(Route::SharedMemoryUnregister(None)),
        ["v2", "systemsharedmemory", "region", r, action] if !r.is_empty() => {
            let region = Some(decode(r));
            match *action {
                "status" => get(Route::SharedMemoryStatus(region)),
                "register" => post(Route::SharedMemoryRegister(region)),
                "unregister" => post(Route::SharedMemoryUnregister(region)),
                _ => Ok(None),
            }
        }
        ["v2", "trace", "setting"] => read_or_change(&|update| Route::TraceSetting {
            model: None,
            update,
        }),
        ["v2", "models", m, "trace", "setting"] if !m.is_empty() => {
            let model = Some(decode(m));
            read_or_change(&|update| Route::TraceSetting {
                model: model.clone(),
                update,
            })
        }
        ["v2", "logging"] => read_or_change(&|update| Route::Logging { update }),
        ["v2", "cudasharedmemory", "status"] => get(Route::CudaSharedMemoryStatus(None)),
        ["v2", "cudasharedmemory", "register"] => post(Route::CudaSharedMemoryRegister(None)),
        ["v2", "cudasharedmemory", "unregister"] => post(Route::CudaSharedMemoryUnregister),
        ["v2", "cudasharedmemory", "region", r, action] if !r.is_empty() => {
            let region = Some(decode(r));
            match *action {
                "status" => get(Route::CudaSharedMemoryStatus(region)),
                "register" => post(Route::CudaSharedMemoryRegister(region)),
                "unregister" => post(Route::CudaSharedMemoryUnregister),
                _ => Ok(None),
            }
        }
        ["v2", "repository", _, "index"]
        | ["v2", "repository", _, "models", _, "load" | "unload"] => post(Route::NamedRepository),
        ["v2", "models", rest @ ..] if !rest.is_empty() && !rest[0].is_empty() => match model(rest)
        {
            Some((m, v, None)) => get(Route::ModelMetadata(m, v)),
            Some((m, v, Some(op))) => match op.as_str() {
                "ready" => get(Route::ModelReady(m, v)),
                "config" => get(Route::ModelConfig(m, v)),
                "stats" => get(Route::ModelStats(m, v)),
                "infer" => post(Route::ModelInfer(m, v)),
                "drift" => get(Route::ModelDrift(m, v)),
                "drift.html" => get(Route::ModelDriftPage(m, v)),
                "feedback" => post(Route::ModelFeedback(m, v)),
                "lineage" => get(Route::ModelLineage(m, v)),
                _ => Ok(None),
            },
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

fn is_version(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
}

async fn route(state: &HttpState, request: Request<Body>) -> Result<Response, Error> {
    let route = match parse_route(request.method(), request.uri().path()) {
        Ok(Some(route)) => route,
        Ok(None) => return Err(not_found()),
        Err(WrongMethod) => {
            return Ok(json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                Error::invalid_arg("Method Not Allowed").to_json_body(),
            ))
        }
    };
    if let Err(header) = state.restrictions.check(route.api(), |name| {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    }) {
        return Ok(json_response(
            StatusCode::FORBIDDEN,
            Error::invalid_arg(format!(
                "This API is restricted, expecting header '{header}'"
            ))
            .to_json_body(),
        ));
    }
    let infer = &state.infer;
    Ok(match route {
        Route::Live => empty(if infer.is_live() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }),
        Route::Ready => empty(if infer.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }),
        Route::ServerMetadata => {
            let metadata = infer.server_metadata();
            json_response(
                StatusCode::OK,
                config::message_to_json(&metadata, "inference.ServerMetadataResponse"),
            )
        }
        Route::ModelMetadata(m, v) => {
            let model = infer.model(&m, &v)?;
            let metadata = model.metadata(infer.registry().ready_versions(&m));
            json_response(
                StatusCode::OK,
                config::message_to_json(&metadata, "inference.ModelMetadataResponse"),
            )
        }
        Route::ModelReady(m, v) => {
            if infer.model_ready(&m, &v) {
                empty(StatusCode::OK)
            } else {
                json_response(
                    StatusCode::BAD_REQUEST,
                    Error::invalid_arg("Model version not ready").to_json_body(),
                )
            }
        }
        Route::ModelConfig(m, v) => {
            let model = infer.model(&m, &v)?;
            json_response(StatusCode::OK, config::to_json(&model.config))
        }
        Route::AllStats => stats_response(&infer.statistics("", "")?),
        Route::ModelStats(m, v) => stats_response(&infer.statistics(&m, &v)?),
        Route::RepositoryIndex => {
            let body = read_body(request, state.max_input_size, state.body_timeout).await?;
            repository_index(infer, &body)?
        }
        Route::RepositoryLoad(m) => {
            let body = read_body(request, state.max_input_size, state.body_timeout).await?;
            let overrides = load_overrides(&m, &body)?;
            infer.load_model(&m, overrides).await?;
            empty(StatusCode::OK)
        }
        Route::RepositoryUnload(m) => {
            let body = read_body(request, state.max_input_size, state.body_timeout).await?;
            let parameters = request_parameters(&body)?;
            let dependents = match parameters.get("unload_dependents") {
                None => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(Error::invalid_arg(
                        "parameter 'unload_dependents' must be a boolean",
                    ))
                }
            };
            infer.unload_model(&m, dependents).await?;
            empty(StatusCode::OK)
        }
        Route::NamedRepository => {
            return Err(Error::unsupported(
                "'repository_name' specification is not supported",
            ))
        }
        Route::ModelInfer(m, v) => infer_route(state, &m, &v, request).await?,
        Route::SharedMemoryStatus(region) => {
            let regions: Vec<serde_json::Value> = infer
                .shared_memory()
                .status(region.as_deref())?
                .into_iter()
                .map(|r| {
                    serde_json::json!({"name": r.name, "key": r.key, "offset": r.offset,
                                       "byte_size": r.byte_size})
                })
                .collect();
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&regions).unwrap_or_default(),
            )
        }
        Route::SharedMemoryRegister(region) => {
            let body = read_body(request, state.max_input_size, state.body_timeout).await?;
            let Some(region) = region else {
                return Err(Error::invalid_arg(
                    "'region name' is necessary to register system shared memory region",
                ));
            };
            let (key, offset, byte_size) = register_request(&body)?;
            infer
                .shared_memory()
                .register(&region, &key, offset, byte_size)?;
            empty(StatusCode::OK)
        }
        Route::SharedMemoryUnregister(region) => {
            infer.shared_memory().unregister(region.as_deref());
            empty(StatusCode::OK)
        }
        Route::CudaSharedMemoryStatus(region) => {
            infer.shared_memory().cuda_status(region.as_deref())?;
            json_response(StatusCode::OK, b"[]".to_vec())
        }
        Route::CudaSharedMemoryRegister(region) => {
            infer
                .shared_memory()
                .cuda_register(region.as_deref().unwrap_or(""))?;
            empty(StatusCode::OK)
        }
        // Nothing can be registered, so there is nothing to unregister (NVIDIA's clients
        // unregister both kinds when they finish).
        Route::CudaSharedMemoryUnregister => empty(StatusCode::OK),
        Route::TraceSetting { model, update } => {
            if let Some(m) = &model {
                if !infer.model_ready(m, "") {
                    return Err(Error::invalid_arg(format!(
                        "Request for unknown model : {m}"
                    )));
                }
            }
            let tracer = infer.tracer();
            let settings = if update {
                let body = read_body(request, state.max_input_size, state.body_timeout).await?;
                tracer.update(model.as_deref(), &trace_update(&body)?)?
            } else {
                tracer.settings(model.as_deref())
            };
            let mut body = serde_json::Map::new();
            for (name, values) in crate::trace::report(&settings) {
                let value = if name == "trace_level" {
                    serde_json::json!(values)
                } else {
                    serde_json::json!(values.into_iter().next().unwrap_or_default())
                };
                body.insert(name.into(), value);
            }
            json_response(StatusCode::OK, serde_json::Value::Object(body).to_string())
        }
        Route::Logging { update } => {
            let control = infer.log_control();
            let settings = if update {
                let body = read_body(request, state.max_input_size, state.body_timeout).await?;
                control.update(&log_update(&body)?)?
            } else {
                control.settings()
            };
            let body = serde_json::json!({
                "log_file": "",
                "log_info": settings.info,
                "log_warning": settings.warning,
                "log_error": settings.error,
                "log_verbose_level": settings.verbose_level,
                "log_format": settings.format,
            });
            json_response(StatusCode::OK, body.to_string())
        }
        Route::ModelDrift(m, v) => {
            let body = crate::lifecycle::page::drift_json(&*infer.monitored(&m, &v)?);
            json_response(StatusCode::OK, body)
        }
        Route::ModelDriftPage(m, v) => {
            let page = crate::lifecycle::page::drift_html(&*infer.monitored(&m, &v)?);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                page,
            )
                .into_response()
        }
        Route::ModelLineage(m, v) => {
            let model = infer.model(&m, &v)?;
            let doc = lineage(infer, &model.name, model.version, None).await?;
            json_response(StatusCode::OK, to_json(&doc)?)
        }
        Route::RequestLineage(id) => {
            let models = infer.registry().all_ready();
            let log_dir = infer.registry().prediction_log_dir().map(Path::to_path_buf);
            let wanted = id.clone();
            // Loaded versions first (their index is in memory), then the logs on disk, which
            // also hold versions since unloaded.
            let found = tokio::task::spawn_blocking(move || {
                models
                    .iter()
                    .find_map(|m| {
                        let time = m.monitor.as_ref()?.served_at(&wanted)?;
                        Some((m.name.clone(), m.version, time))
                    })
                    .map(Ok)
                    .or_else(|| {
                        log_dir.and_then(|dir| {
                            nereid_monitor::log::find_request(&dir, &wanted).transpose()
                        })
                    })
                    .transpose()
            })
            .await
            .map_err(|e| Error::internal(format!("lineage lookup panicked: {e}")))?
            .map_err(|e| Error::internal(format!("reading the prediction log: {e}")))?;
            let (model, version, time_ms) = found.ok_or_else(|| {
                Error::invalid_arg(format!(
                    "request '{id}' is not in the prediction log (only sampled requests of monitored versions are kept, within the log's retention)"
                ))
            })?;
            let request = serde_json::json!({
                "id": id,
                "model": model,
                "version": version.to_string(),
                "time": i64::try_from(time_ms)
                    .ok()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            });
            let doc = lineage(infer, &model, version, Some(request)).await?;
            json_response(StatusCode::OK, to_json(&doc)?)
        }
        Route::Triggers => json_response(StatusCode::OK, to_json(&infer.triggers()?.status())?),
        Route::Trigger(id) => {
            let status = infer.triggers()?.status();
            let trigger = status
                .triggers
                .iter()
                .find(|t| t.id == id)
                .ok_or_else(|| Error::invalid_arg(format!("unknown trigger '{id}'")))?;
            let firings: Vec<_> = status.firings.iter().filter(|f| f.trigger == id).collect();
            json_response(
                StatusCode::OK,
                to_json(&serde_json::json!({"trigger": trigger, "firings": firings}))?,
            )
        }
        Route::TriggerFire(id) => {
            let triggers = infer.triggers()?.clone();
            let firing = tokio::task::spawn_blocking(move || triggers.fire(&id))
                .await
                .map_err(|e| Error::internal(format!("firing panicked: {e}")))?
                .map_err(|e| match e {
                    nereid_pipeline::triggers::FireError::Unknown(_) => {
                        Error::invalid_arg(e.to_string())
                    }
                    nereid_pipeline::triggers::FireError::Record(_) => {
                        Error::internal(e.to_string())
                    }
                })?;
            json_response(StatusCode::OK, to_json(&firing)?)
        }
        Route::ModelFeedback(m, v) => {
            let monitor = infer.monitored(&m, &v)?;
            let body = read_body(request, state.max_input_size, state.body_timeout).await?;
            let items = nereid_monitor::feedback::parse_body(&body).map_err(Error::invalid_arg)?;
            let ids = items.len();
            let rows = tokio::task::spawn_blocking(move || monitor.apply_feedback(&items))
                .await
                .map_err(|e| Error::internal(format!("feedback panicked: {e}")))??;
            json_response(
                StatusCode::OK,
                serde_json::json!({"accepted": ids, "rows": rows}).to_string(),
            )
        }
    })
}

/// The lineage chain of a model version, with the request that led to it and, when this server
/// runs the trigger that started the version's pipeline run, that firing in full.
async fn lineage(
    infer: &Infer,
    model: &str,
    version: u64,
    request: Option<serde_json::Value>,
) -> Result<serde_json::Value, Error> {
    let repository = infer.registry().repository().to_path_buf();
    let name = model.to_string();
    let mut doc = tokio::task::spawn_blocking(move || {
        nereid_pipeline::lineage::version_lineage(&repository, &name, version)
    })
    .await
    .map_err(|e| Error::internal(format!("lineage panicked: {e}")))?
    .map_err(|e| Error::invalid_arg(format!("{e:#}")))?;
    if let (Some(firing), Ok(triggers)) = (doc["trigger_firing"].as_str(), infer.triggers()) {
        if let Some(f) = triggers
            .status()
            .firings
            .into_iter()
            .find(|f| f.id == firing)
        {
            doc["trigger_firing"] = serde_json::to_value(f).unwrap_or_default();
        }
    }
    if let Some(request) = request {
        doc["request"] = request;
    }
    Ok(doc)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))
}

/// A request body that may be empty (then an empty object) or else must be JSON.
fn optional_json(body: &[u8]) -> Result<serde_json::Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid_arg(format!("failed to parse the request JSON buffer: {e}")))
}

/// The `parameters` object of a repository request body (empty body: no parameters).
fn request_parameters(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    let serde_json::Value::Object(mut value) = optional_json(body)? else {
        return Err(Error::invalid_arg("the request body must be a JSON object"));
    };
    match value.remove("parameters") {
        None => Ok(Default::default()),
        Some(serde_json::Value::Object(map)) => Ok(map),
        Some(_) => Err(Error::invalid_arg("'parameters' must be an object")),
    }
}

/// The load API's `config` (ModelConfig JSON as a string) and `file:<path>` (base64) parameters.
fn load_overrides(model: &str, body: &[u8]) -> Result<Option<LoadOverride>, Error> {
    use base64::Engine;
    let parameters = request_parameters(body)?;
    if parameters.is_empty() {
        return Ok(None);
    }
    let mut overrides = LoadOverride::default();
    for (key, value) in parameters {
        if key == "config" {
            let json = value.as_str().ok_or_else(|| {
                Error::invalid_arg(
                    "parameter 'config' must be a string holding the model configuration as JSON",
                )
            })?;
            overrides.config = Some(config::from_json(json)?);
        } else if let Some(path) = key.strip_prefix("file:") {
            let encoded = value.as_str().ok_or_else(|| {
                Error::invalid_arg(format!("parameter '{key}' must be a base64 string"))
            })?;
            let contents = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| {
                    Error::invalid_arg(format!(
                        "failed to load '{model}': parameter '{key}' is not valid base64: {e}"
                    ))
                })?;
            overrides.files.push((path.to_string(), contents));
        }
    }
    Ok(Some(overrides))
}

fn stats_response(message: &ModelStatisticsResponse) -> Response {
    json_response(
        StatusCode::OK,
        config::message_to_json(message, "inference.ModelStatisticsResponse"),
    )
}

fn repository_index(infer: &Infer, body: &[u8]) -> Result<Response, Error> {
    let ready_only = {
        let value = optional_json(body)?;
        match value.get("ready") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Error::invalid_arg(
                    "Invalid value for 'ready': expected a boolean",
                ))
            }
        }
    };
    let rows: Vec<serde_json::Value> = infer
        .registry()
        .index(ready_only)
        .into_iter()
        .map(|row| {
            let mut entry = serde_json::Map::new();
            entry.insert("name".into(), row.name.into());
            if !row.version.is_empty() {
                entry.insert("version".into(), row.version.into());
            }
            entry.insert("state".into(), row.state.into());
            // As Triton's index: a reason only where there is one.
            if !row.reason.is_empty() {
                entry.insert("reason".into(), row.reason.into());
            }
            serde_json::Value::Object(entry)
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&rows).map_err(|e| Error::internal(e.to_string()))?,
    ))
}

/// Reads the whole body within `limit`, undoing `Content-Encoding: gzip|deflate`.
async fn read_body(
    request: Request<Body>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Error> {
    let (parts, body) = request.into_parts();
    let too_large = |size: String| {
        Error::invalid_arg(format!("request JSON size of {size} bytes exceeds the maximum allowed input size of {limit} bytes. Use --http-max-input-size to increase the limit."))
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|d| *d > limit as u64) {
        return Err(too_large(declared.to_string()));
    }
    let raw = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            Error::invalid_arg(format!(
                "timed out reading the request body: it did not arrive within {} s",
                timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| {
            let source = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            if source.contains("length limit") || e.to_string().contains("length limit") {
                too_large(format!("more than {limit}"))
            } else {
                Error::invalid_arg(format!("failed to read the request body: {e}"))
            }
        })?;
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    let decoded = match encoding.as_deref() {
        None | Some("") | Some("identity") => return Ok(raw),
        Some("gzip") => inflate(GzDecoder::new(&raw[..]), limit),
        Some("deflate") => inflate(ZlibDecoder::new(&raw[..]), limit),
        Some(other) => {
            return Err(Error::unsupported(format!(
                "Unsupported compression type '{other}'"
            )))
        }
    }?;
    Ok(Bytes::from(decoded))
}

fn inflate(reader: impl Read, limit: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid_arg(format!("failed to decompress the request body: {e}")))?;
    if out.len() > limit {
        return Err(Error::invalid_arg(format!("request JSON size of more than {limit} bytes (decompressed) exceeds the maximum allowed input size of {limit} bytes. Use --http-max-input-size to increase the limit.")));
    }
    Ok(out)
}

async fn infer_route(
    state: &HttpState,
    name: &str,
    version: &str,
    request: Request<Body>,
) -> Result<Response, Error> {
    let model = state.infer.model(name, version)?;
    // Overload is refused before the body is read: refusing must cost less than serving.
    if let Err(refused) = model.admits() {
        model.stats.record_failure(
            std::time::Duration::ZERO,
            crate::stats::FailureReason::Rejected,
        );
        return Err(refused);
    }
    let headers = request.headers().clone();
    let body = read_body(request, state.max_input_size, state.body_timeout).await?;
    let header_length = headers
        .get(rest::HEADER_CONTENT_LENGTH)
        .map(|v| {
            v.to_str().map_err(|_| {
                Error::invalid_arg(
                    "Unable to parse Inference-Header-Content-Length, got: a non-ASCII value",
                )
            })
        })
        .transpose()?;
    let request = match rest::split_body(&body, header_length)? {
        Some((json, binary)) => rest::parse_request(&json, binary, name)?,
        None => raw_request(&model, body)?,
    };
    let outputs = request.outputs.clone();
    let binary_default = request.binary_data_output;
    let response = state.infer.infer_on(&model, request).await?;
    let wants = InferRequest {
        outputs,
        binary_data_output: binary_default,
        ..Default::default()
    };
    let rendered = rest::render_response_with(&response, |n| wants.output_form(n));
    let mut builder = Response::builder().status(StatusCode::OK);
    builder = match rendered.header_length {
        Some(length) => builder
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(rest::HEADER_CONTENT_LENGTH, length),
        None => builder.header(header::CONTENT_TYPE, "application/json"),
    };
    let (body, encoding) = compress(&headers, rendered.body);
    if let Some(encoding) = encoding {
        builder = builder.header(header::CONTENT_ENCODING, encoding);
    }
    builder
        .body(Body::from(body))
        .map_err(|e| Error::internal(format!("failed to build the response: {e}")))
}

/// A trace extension request body: settings as strings (`trace_level` as an array of them),
/// `null` returning a model's setting to the global value.
fn trace_update(body: &[u8]) -> Result<crate::trace::TraceUpdate, Error> {
    let json = optional_json(body)?;
    let levels = match json.get("trace_level") {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::Array(levels)) => Some(Some(
            levels
                .iter()
                .map(|l| {
                    l.as_str().map(str::to_string).ok_or_else(|| {
                        Error::invalid_arg("Unable to parse 'trace_level', expecting strings")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Some(_) => {
            return Err(Error::invalid_arg(
                "Unable to parse 'trace_level', expecting an array of strings",
            ))
        }
    };
    crate::trace::update_from(
        |name| match json.get(name) {
            None => Ok(None),
            Some(serde_json::Value::Null) => Ok(Some(None)),
            Some(serde_json::Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(_) => Err(Error::invalid_arg(format!(
                "Unable to parse '{name}', expecting a string"
            ))),
        },
        levels,
    )
}

/// A logging extension request body: each known setting optional, `null` meaning unchanged.
fn log_update(body: &[u8]) -> Result<crate::logging::LogUpdate, Error> {
    let json = optional_json(body)?;
    let field = |name: &str| json.get(name).filter(|v| !v.is_null());
    let flag = |name: &str| {
        field(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Error::invalid_arg(format!("'{name}' must be a boolean")))
            })
            .transpose()
    };
    let text = |name: &str| {
        field(name)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid_arg(format!("'{name}' must be a string")))
            })
            .transpose()
    };
    Ok(crate::logging::LogUpdate {
        file: text("log_file")?,
        info: flag("log_info")?,
        warning: flag("log_warning")?,
        error: flag("log_error")?,
        verbose_level: field("log_verbose_level")
            .map(|v| {
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| {
                        Error::invalid_arg("'log_verbose_level' must be a non-negative integer")
                    })
            })
            .transpose()?,
        format: text("log_format")?,
    })
}

/// The body of a shared-memory register request: `key`, `byte_size` and an optional `offset`.
fn register_request(body: &[u8]) -> Result<(String, u64, u64), Error> {
    let json = optional_json(body)?;
    let key = match json.get("key") {
        None => {
            return Err(Error::invalid_arg(
                "Shared memory register request has no 'key' field",
            ))
        }
        Some(key) => key
            .as_str()
            .ok_or_else(|| Error::invalid_arg("'key' must be a string"))?
            .to_string(),
    };
    let number = |field: &str| -> Result<Option<u64>, Error> {
        json.get(field)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    Error::invalid_arg(format!("'{field}' must be a non-negative integer"))
                })
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let byte_size = number("byte_size")?.ok_or_else(|| {
        Error::invalid_arg("Shared memory register request has no 'byte_size' field")
    })?;
    Ok((key, offset, byte_size))
}

/// A body that is one raw tensor (`Inference-Header-Content-Length: 0`): it feeds the model's
/// only input as a batch of one, and every output is returned binary.
fn raw_request(model: &ModelVersion, body: Bytes) -> Result<InferRequest, Error> {
    let [spec] = model.inputs.as_slice() else {
        return Err(Error::invalid_arg(format!(
            "Raw request must only have 1 input (found 1) to be deduced but got {} inputs in '{}' model configuration",
            model.inputs.len(),
            model.name
        )));
    };
    let mut dims = spec.dims.clone();
    let mut body = body;
    match spec.datatype.element_size() {
        None => {
            // One string element: the body is its bytes, without a length prefix.
            if dims.iter().product::<i64>() != 1 || dims.iter().any(|d| *d < 0) {
                return Err(Error::invalid_arg(format!(
                    "For BYTE datatype raw input '{}', the model must have input shape [1]",
                    spec.name
                )));
            }
            body = nereid_protocol::encode_bytes_elements([&body[..]]);
        }
        Some(size) => {
            let variable: Vec<usize> = dims
                .iter()
                .enumerate()
                .filter(|(_, d)| **d == -1)
                .map(|(i, _)| i)
                .collect();
            if variable.len() > 1 {
                return Err(Error::invalid_arg(format!(
                    "The shape of the raw input '{}' can not be deduced because there are more than one variable-sized dimension",
                    spec.name
                )));
            }
            if let [index] = variable[..] {
                let fixed: i64 = dims.iter().filter(|d| **d != -1).product();
                let elements = body.len() / size;
                if fixed == 0 || elements as i64 % fixed != 0 {
                    return Err(Error::invalid_arg(format!(
                        "raw binary request body of {} bytes does not fit input '{}'",
                        body.len(),
                        spec.name
                    )));
                }
                dims[index] = elements as i64 / fixed;
            }
        }
    }
    let mut shape = Vec::with_capacity(dims.len() + 1);
    if model.config.max_batch_size > 0 {
        shape.push(1);
    }
    shape.extend(dims);
    element_count(&spec.name, &shape)?;
    let tensor = Tensor::new(spec.name.clone(), spec.datatype, shape, body);
    tensor.check_byte_size(&model.name)?;
    Ok(InferRequest {
        inputs: vec![tensor],
        binary_data_output: true,
        ..Default::default()
    })
}

/// Compresses a response body when the client accepts gzip or deflate.
fn compress(headers: &HeaderMap, body: Vec<u8>) -> (Vec<u8>, Option<HeaderValue>) {
    use std::io::Write;
    let accepted = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let wants = |name: &str| {
        accepted
            .split(',')
            .any(|part| part.split(';').next().map(str::trim) == Some(name))
    };
    let encoded = if wants("gzip") {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .ok()
            .map(|b| (b, "gzip"))
    } else if wants("deflate") {
        let mut encoder = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .ok()
            .map(|b| (b, "deflate"))
    } else {
        None
    };
    match encoded {
        Some((compressed, name)) => (compressed, Some(HeaderValue::from_static(name))),
        None => (body, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(method: Method, path: &str) -> Result<Option<&'static str>, ()> {
        parse_route(&method, path)
            .map(|r| {
                r.map(|r| match r {
                    Route::ServerMetadata => "server",
                    Route::Live => "live",
                    Route::Ready => "ready",
                    Route::AllStats => "allstats",
                    Route::ModelMetadata(..) => "metadata",
                    Route::ModelReady(..) => "modelready",
                    Route::ModelConfig(..) => "config",
                    Route::ModelStats(..) => "stats",
                    Route::ModelInfer(..) => "infer",
                    Route::ModelDrift(..) => "drift",
                    Route::ModelDriftPage(..) => "page",
                    Route::ModelFeedback(..) => "feedback",
                    Route::RepositoryIndex => "index",
                    Route::RepositoryLoad(_) | Route::RepositoryUnload(_) => "control",
                    Route::NamedRepository => "named",
                    Route::Triggers => "triggers",
                    Route::Trigger(_) => "trigger",
                    Route::TriggerFire(_) => "fire",
                    Route::ModelLineage(..) => "lineage",
                    Route::RequestLineage(_) => "request-lineage",
                    Route::SharedMemoryStatus(_) => "shm-status",
                    Route::SharedMemoryRegister(_) => "shm-register",
                    Route::SharedMemoryUnregister(_) => "shm-unregister",
                    Route::CudaSharedMemoryStatus(_)
                    | Route::CudaSharedMemoryRegister(_)
                    | Route::CudaSharedMemoryUnregister => "cuda-shm",
                    Route::Logging { .. } => "logging",
                    Route::TraceSetting { .. } => "trace",
                })
            })
            .map_err(|_| ())
    }

    #[test]
    fn routes_like_triton() {
        assert_eq!(routed(Method::GET, "/v2"), Ok(Some("server")));
        assert_eq!(
            routed(Method::GET, "/v2/systemsharedmemory/region/r%20x/status"),
            Ok(Some("shm-status"))
        );
        assert_eq!(
            routed(Method::POST, "/v2/systemsharedmemory/unregister"),
            Ok(Some("shm-unregister"))
        );
        assert_eq!(
            routed(Method::GET, "/v2/systemsharedmemory/region/r/register"),
            Err(())
        );
        assert_eq!(
            routed(Method::POST, "/v2/cudasharedmemory/region/r/unregister"),
            Ok(Some("cuda-shm"))
        );
        assert_eq!(
            routed(Method::GET, "/v2/models/m/versions/3/config"),
            Ok(Some("config"))
        );
        assert_eq!(
            routed(Method::POST, "/v2/models/m/infer"),
            Ok(Some("infer"))
        );
        assert_eq!(
            routed(Method::GET, "/v2/models/stats"),
            Ok(Some("allstats"))
        );
        assert_eq!(routed(Method::GET, "/v2/models/m/versions/x"), Ok(None));
        assert_eq!(routed(Method::GET, "/v2/models/m/bogus"), Ok(None));
        assert_eq!(
            routed(Method::GET, "/v2/models/m/versions/2/drift"),
            Ok(Some("drift"))
        );
        assert_eq!(
            routed(Method::GET, "/v2/models/m/drift.html"),
            Ok(Some("page"))
        );
        assert_eq!(
            routed(Method::POST, "/v2/models/m/feedback"),
            Ok(Some("feedback"))
        );
        assert_eq!(routed(Method::GET, "/v2/models/m/feedback"), Err(()));
        assert_eq!(routed(Method::GET, "/v2/triggers"), Ok(Some("triggers")));
        assert_eq!(
            routed(Method::GET, "/v2/models/m/versions/2/lineage"),
            Ok(Some("lineage"))
        );
        assert_eq!(
            routed(Method::GET, "/v2/lineage/abc"),
            Ok(Some("request-lineage"))
        );
        assert_eq!(routed(Method::GET, "/v2/triggers/t-1"), Ok(Some("trigger")));
        assert_eq!(
            routed(Method::POST, "/v2/triggers/t-1/fire"),
            Ok(Some("fire"))
        );
        assert_eq!(routed(Method::GET, "/v2/triggers/t-1/fire"), Err(()));
        assert_eq!(routed(Method::POST, "/v2/triggers"), Err(()));
        assert_eq!(routed(Method::GET, "/v2/models/m/infer"), Err(()));
        assert_eq!(routed(Method::POST, "/v2/health/live"), Err(()));
        assert_eq!(
            routed(Method::POST, "/v2/repository/other/index"),
            Ok(Some("named"))
        );
        assert_eq!(routed(Method::GET, "/nope"), Ok(None));
        match parse_route(&Method::GET, "/v2/models/my%20model/versions/2") {
            Ok(Some(Route::ModelMetadata(m, v))) => {
                assert_eq!((m.as_str(), v.as_str()), ("my model", "2"))
            }
            _ => panic!("expected model metadata"),
        }
    }
}
