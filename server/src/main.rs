//! `nereid`: the command line. It parses flags, builds the config and wires the crates together.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nereid_server::restrict::Restriction;
use nereid_server::{http, ControlMode, ModelRegistry, ServeConfig};

#[derive(Parser)]
#[command(
    name = "nereid",
    version,
    about = "A Triton-compatible inference server with the model lifecycle built in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model repository over HTTP (KServe v2), gRPC (Triton's GRPCInferenceService) and
    /// Prometheus metrics.
    Serve(Box<ServeArgs>),
    /// Run one inference against a server (KServe v2 over HTTP or gRPC), with tensors from
    /// JSON or `.npy` files, or inline.
    Infer(nereid_client::cli::InferArgs),
    /// Whether a server (or one model) is live and ready; exits 1 when not ready.
    Health(nereid_client::cli::HealthArgs),
    /// A server's statistics extension (per model and version), as JSON.
    Stats(nereid_client::cli::StatsArgs),
    /// Feature store: ingest, versions, show, diff, verify, join.
    #[command(subcommand)]
    Features(nereid_pipeline::cli::FeaturesCommand),
    /// Train a classifier from a dataset version (a tracked run).
    Train(nereid_pipeline::cli::TrainArgs),
    /// Run pipeline files (ingest -> validate -> train -> evaluate -> gate -> publish) and
    /// inspect their runs.
    #[command(subcommand)]
    Pipeline(nereid_pipeline::cli::PipelineCommand),
    /// Work with a model repository without serving it.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Drift monitoring: reference profiles, prediction-log export, drift reports.
    #[command(subcommand)]
    Monitor(nereid_pipeline::monitoring::MonitorCommand),
    /// Retraining triggers: a server's triggers and firings, manual firing, file checks.
    #[command(subcommand)]
    Triggers(nereid_pipeline::triggers::cli::TriggersCommand),
    /// Where a prediction came from: request -> model version -> pipeline run -> trigger
    /// firing -> dataset versions -> their sources.
    Lineage(nereid_pipeline::lineage::LineageArgs),
}

#[derive(Subcommand)]
enum RepoCommand {
    /// A server's repository index: every model and version, its state and the reason.
    Index(nereid_client::cli::IndexArgs),
    /// Load or reload a model on a server (explicit model control).
    Load(nereid_client::cli::LoadArgs),
    /// Unload a model from a server; requests in flight finish first.
    Unload(nereid_client::cli::UnloadArgs),
    /// Publish a folder as the next version of a model, atomically: it is written under a
    /// hidden staging name, fsynced, then renamed into place, so a polling server never loads
    /// it half-written (in an object store, the version folder carries a marker object until
    /// its last file is uploaded). A config.pbtxt at the top of the folder replaces the model's
    /// config.
    Publish {
        /// The model repository: a directory, or s3://, gs://, az://, file:// URL.
        #[arg(long)]
        repository: String,
        /// The model to publish a version of (created if new).
        #[arg(long)]
        model: String,
        /// The folder holding the version's files.
        #[arg(long = "from")]
        from: PathBuf,
    },
    /// Write a version's dense model (`model.safetensors` and the config's architecture) as
    /// `model.onnx` next to it, for ONNX Runtime, Triton's ONNX backend or any ONNX tool.
    ExportOnnx {
        /// The model repository.
        #[arg(long)]
        repository: PathBuf,
        #[arg(long)]
        model: String,
        /// The version (default: the newest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Load every model of a repository as `serve` would, report each, and exit non-zero if
    /// any model or version cannot be served.
    Validate {
        /// The model repository.
        repository: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Triton-layout model repository: `<model>/config.pbtxt` and numeric version folders.
    #[arg(long, env = "NEREID_MODEL_REPOSITORY", default_value = "model-repo")]
    model_repository: PathBuf,

    /// Address to listen on. 0.0.0.0 exposes the server to the network; keep 127.0.0.1 for
    /// local use.
    #[arg(long, env = "NEREID_HOST", default_value = "0.0.0.0")]
    host: IpAddr,

    /// HTTP/REST port (KServe v2 and Triton extensions). 0 picks a free port.
    #[arg(long, env = "NEREID_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,

    /// gRPC port (inference.GRPCInferenceService and grpc.health.v1). 0 picks a free port.
    #[arg(long, env = "NEREID_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,

    /// Prometheus metrics port (`/metrics`). 0 picks a free port.
    #[arg(long, env = "NEREID_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,

    /// Largest accepted HTTP request body in bytes (after decompression). Larger tensors need a
    /// larger limit; every accepted byte may be held in memory while the request runs.
    #[arg(long, env = "NEREID_HTTP_MAX_INPUT_SIZE", default_value_t = http::DEFAULT_MAX_INPUT_SIZE)]
    http_max_input_size: usize,

    /// Most HTTP connections open at once; further clients wait in the kernel's accept queue
    /// until one closes.
    #[arg(long, env = "NEREID_HTTP_MAX_CONNECTIONS", default_value_t = nereid_server::connections::DEFAULT_MAX_CONNECTIONS)]
    http_max_connections: usize,

    /// Seconds an HTTP client has to send a request's header (idle keep-alive time included)
    /// before its connection is closed.
    #[arg(long, env = "NEREID_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    http_header_timeout_secs: u64,

    /// Seconds an HTTP client has to send a request's body before the request is refused.
    #[arg(long, env = "NEREID_HTTP_BODY_TIMEOUT_SECS", default_value_t = 60)]
    http_body_timeout_secs: u64,

    /// Most gRPC connections open at once; further clients wait in the kernel's accept queue
    /// until one closes.
    #[arg(long, env = "NEREID_GRPC_MAX_CONNECTIONS", default_value_t = nereid_server::connections::DEFAULT_MAX_CONNECTIONS)]
    grpc_max_connections: usize,

    /// Seconds a gRPC client has to send HTTP/2's connection preface before it is closed.
    #[arg(long, env = "NEREID_GRPC_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    grpc_handshake_timeout_secs: u64,

    /// Milliseconds of quiet after which the server pings a gRPC connection (Triton's flag;
    /// Triton's default is two hours).
    #[arg(long, env = "NEREID_GRPC_KEEPALIVE_TIME", default_value_t = 30_000)]
    grpc_keepalive_time: u64,

    /// Milliseconds a gRPC client has to acknowledge a ping before its connection is closed
    /// (Triton's flag and default).
    #[arg(long, env = "NEREID_GRPC_KEEPALIVE_TIMEOUT", default_value_t = 20_000)]
    grpc_keepalive_timeout: u64,

    /// Seconds a gRPC client has to send a unary call's request message after its headers
    /// (DEADLINE_EXCEEDED otherwise). Streaming calls are exempt.
    #[arg(long, env = "NEREID_GRPC_BODY_TIMEOUT_SECS", default_value_t = 60)]
    grpc_body_timeout_secs: u64,

    /// The response cache, Triton's spelling: `local,size=BYTES` (one cache shared by every
    /// model whose config has `response_cache { enable: true }`; least recently used entries
    /// make room). Without it nothing is cached.
    #[arg(long = "cache-config", env = "NEREID_CACHE_CONFIG", value_name = "local,size=BYTES",
          value_parser = nereid_server::cache::parse_cache_setting)]
    cache_config: Option<u64>,

    /// Request tracing, Triton's spelling, repeatable: `triton,file=PATH` (where traces are
    /// written; required to trace), `triton,log-frequency=N`, `level=OFF|TIMESTAMPS`, `rate=N`,
    /// `count=N` (see the trace extension in the README).
    #[arg(long = "trace-config", env = "NEREID_TRACE_CONFIG", value_name = "[triton,]KEY=VALUE",
          value_parser = check_trace_config)]
    trace_config: Vec<String>,

    /// Serve HTTP/REST (Triton's flag; `--allow-http false` turns it off).
    #[arg(long, env = "NEREID_ALLOW_HTTP", default_value_t = true, action = clap::ArgAction::Set)]
    allow_http: bool,

    /// Serve gRPC.
    #[arg(long, env = "NEREID_ALLOW_GRPC", default_value_t = true, action = clap::ArgAction::Set)]
    allow_grpc: bool,

    /// Serve Prometheus metrics.
    #[arg(long, env = "NEREID_ALLOW_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    allow_metrics: bool,

    /// Address of the HTTP listener (default: --host).
    #[arg(long, env = "NEREID_HTTP_ADDRESS")]
    http_address: Option<IpAddr>,

    /// Address of the gRPC listener (default: --host).
    #[arg(long, env = "NEREID_GRPC_ADDRESS")]
    grpc_address: Option<IpAddr>,

    /// Address of the metrics listener (default: --host).
    #[arg(long, env = "NEREID_METRICS_ADDRESS")]
    metrics_address: Option<IpAddr>,

    /// Largest gRPC message received or sent, in bytes (Triton's limit by default).
    #[arg(long, env = "NEREID_GRPC_MAX_MESSAGE_BYTES", default_value_t = nereid_server::grpc::MAX_MESSAGE_SIZE)]
    grpc_max_message_bytes: usize,

    /// Log every HTTP and gRPC request (method, path, status, time) at info level.
    #[arg(long, env = "NEREID_ACCESS_LOG")]
    access_log: bool,

    /// Model versions loaded at once at start (Triton's flag).
    #[arg(long, env = "NEREID_MODEL_LOAD_THREAD_COUNT", default_value_t = 4)]
    model_load_thread_count: usize,

    /// Verbose logging (Triton's flag): 1 adds debug messages, 2 and more trace messages.
    /// Overrides NEREID_LOG.
    #[arg(long, env = "NEREID_LOG_VERBOSE", default_value_t = 0)]
    log_verbose: u32,

    /// Log line form: `default` and `ISO8601` are text lines with ISO 8601 timestamps, `json` one
    /// JSON object per line (for log shippers).
    #[arg(long, env = "NEREID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Default)]
    log_format: LogFormat,

    /// Serve gRPC over TLS (Triton's flag), with --grpc-server-cert and --grpc-server-key.
    #[arg(long, env = "NEREID_GRPC_USE_SSL")]
    grpc_use_ssl: bool,

    /// Require client certificates signed by --grpc-root-cert (mutual TLS; Triton's flag).
    #[arg(long, env = "NEREID_GRPC_USE_SSL_MUTUAL")]
    grpc_use_ssl_mutual: bool,

    /// The gRPC server's certificate chain (PEM).
    #[arg(long, env = "NEREID_GRPC_SERVER_CERT")]
    grpc_server_cert: Option<PathBuf>,

    /// The gRPC server's private key (PEM).
    #[arg(long, env = "NEREID_GRPC_SERVER_KEY")]
    grpc_server_key: Option<PathBuf>,

    /// The CA that signs client certificates (PEM), for --grpc-use-ssl-mutual.
    #[arg(long, env = "NEREID_GRPC_ROOT_CERT")]
    grpc_root_cert: Option<PathBuf>,

    /// Serve HTTP over TLS (HTTPS), with --http-server-cert and --http-server-key.
    #[arg(long, env = "NEREID_HTTP_USE_SSL")]
    http_use_ssl: bool,

    /// Require client certificates signed by --http-root-cert (mutual TLS).
    #[arg(long, env = "NEREID_HTTP_USE_SSL_MUTUAL")]
    http_use_ssl_mutual: bool,

    /// The HTTP server's certificate chain (PEM).
    #[arg(long, env = "NEREID_HTTP_SERVER_CERT")]
    http_server_cert: Option<PathBuf>,

    /// The HTTP server's private key (PEM).
    #[arg(long, env = "NEREID_HTTP_SERVER_KEY")]
    http_server_key: Option<PathBuf>,

    /// The CA that signs client certificates (PEM), for --http-use-ssl-mutual.
    #[arg(long, env = "NEREID_HTTP_ROOT_CERT")]
    http_root_cert: Option<PathBuf>,

    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM before exiting anyway.
    #[arg(long, env = "NEREID_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    exit_timeout_secs: u64,

    /// Report ready only when every model in the repository loaded. With false, the server is
    /// ready as soon as it serves, even if some models are unavailable.
    #[arg(long, env = "NEREID_STRICT_READINESS", default_value_t = true, action = clap::ArgAction::Set)]
    strict_readiness: bool,

    /// Write `{"http": PORT, "grpc": PORT, "metrics": PORT}` here once every listener is bound
    /// (useful with port 0).
    #[arg(long, env = "NEREID_PORT_FILE")]
    port_file: Option<PathBuf>,

    /// `none`: load everything at start and ignore later changes. `poll`: also rescan the
    /// repository every --repository-poll-secs and follow it (added, changed, removed models).
    /// `explicit`: load only --load-model at start, then follow the load/unload API.
    #[arg(
        long,
        env = "NEREID_MODEL_CONTROL_MODE",
        value_enum,
        default_value = "none"
    )]
    model_control_mode: ControlMode,

    /// A model to load at start in explicit mode (repeatable); `*` loads every model.
    #[arg(long = "load-model", env = "NEREID_LOAD_MODEL", value_delimiter = ',')]
    load_models: Vec<String>,

    /// Restrict HTTP API groups to requests carrying a header:
    /// `<api>[,<api>...]:<header>=<value>` (repeatable). Groups: health, metadata, inference,
    /// shared-memory, model-config, model-repository, statistics, trace, logging. Others get
    /// 403. Use it to protect model-repository (load/unload) on a shared network.
    #[arg(long = "http-restricted-api", env = "NEREID_HTTP_RESTRICTED_API")]
    http_restricted_api: Vec<Restriction>,

    /// As --http-restricted-api for gRPC; the header is sent as metadata
    /// `triton-grpc-protocol-<header>`, and others get UNAVAILABLE.
    #[arg(long = "grpc-restricted-api", env = "NEREID_GRPC_RESTRICTED_API")]
    grpc_restricted_api: Vec<Restriction>,

    /// Seconds between repository scans in poll mode. A version folder is loaded once two
    /// consecutive scans see it unchanged, so a copy in progress is never loaded half-written.
    #[arg(long, env = "NEREID_REPOSITORY_POLL_SECS", default_value_t = 15)]
    repository_poll_secs: u64,

    /// Where monitored model versions log their sampled requests and feedback
    /// (`<dir>/<model>/<version>/*.seg`), which feedback joins and `nereid monitor export` reads.
    #[arg(
        long,
        env = "NEREID_PREDICTION_LOG_DIR",
        default_value = "prediction-log"
    )]
    prediction_log_dir: PathBuf,

    /// Most bytes of prediction log kept per model version; the oldest segments go first.
    #[arg(long, env = "NEREID_PREDICTION_LOG_MAX_BYTES", default_value_t = 1 << 30)]
    prediction_log_max_bytes: u64,

    /// Oldest prediction log segment kept, in seconds (default: 7 days).
    #[arg(long, env = "NEREID_PREDICTION_LOG_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    prediction_log_max_age_secs: u64,

    /// Size at which a prediction log segment is closed and a new one started.
    #[arg(long, env = "NEREID_PREDICTION_LOG_SEGMENT_BYTES", default_value_t = 64 << 20)]
    prediction_log_segment_bytes: u64,

    /// Refuse a request (503 / UNAVAILABLE, "Exceeds maximum queue size") when the requests
    /// queued ahead of it in its model would take longer than this many milliseconds to clear at
    /// the model's measured cost per request, so that overload is answered at once instead of
    /// queued; 0 turns it off. A model's config parameter `nereid.max_queue_wait_ms` overrides it.
    #[arg(long, env = "NEREID_MAX_QUEUE_WAIT_MS", default_value_t = 2000)]
    max_queue_wait_ms: u64,

    /// Retraining triggers (`triggers.toml`): drift, schedule, new data or live metrics start a
    /// pipeline run, a webhook or an Airflow DAG run. Reloaded when it changes.
    #[arg(long, env = "NEREID_TRIGGERS")]
    triggers: Option<PathBuf>,

    /// Where trigger firings are recorded (append-only), with the triggers' state and the
    /// output of the pipeline runs they start.
    #[arg(
        long,
        env = "NEREID_TRIGGER_RECORD_DIR",
        default_value = "trigger-record"
    )]
    trigger_record_dir: PathBuf,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Default,
    #[value(name = "ISO8601")]
    Iso8601,
    Json,
}

/// Checks one `--trace-config` value when the arguments are parsed.
fn check_trace_config(value: &str) -> Result<String, String> {
    nereid_server::trace::apply_trace_config(&mut Default::default(), value)?;
    Ok(value.to_string())
}

impl From<ServeArgs> for ServeConfig {
    fn from(a: ServeArgs) -> Self {
        ServeConfig {
            model_repository: a.model_repository,
            host: a.host,
            http_port: a.http_port,
            grpc_port: a.grpc_port,
            metrics_port: a.metrics_port,
            http_max_input_size: a.http_max_input_size,
            exit_timeout: Duration::from_secs(a.exit_timeout_secs),
            strict_readiness: a.strict_readiness,
            port_file: a.port_file,
            model_control_mode: a.model_control_mode,
            load_models: a.load_models,
            repository_poll: Duration::from_secs(a.repository_poll_secs),
            http_restricted: a.http_restricted_api,
            grpc_restricted: a.grpc_restricted_api,
            monitoring: nereid_server::lifecycle::MonitorSettings {
                log_dir: Some(a.prediction_log_dir),
                log: nereid_monitor::log::LogSettings {
                    segment_bytes: a.prediction_log_segment_bytes.max(4096),
                    max_bytes: a.prediction_log_max_bytes,
                    max_age: Duration::from_secs(a.prediction_log_max_age_secs),
                },
            },
            http_limits: nereid_server::connections::HttpLimits {
                max_connections: a.http_max_connections.max(1),
                header_timeout: Duration::from_secs(a.http_header_timeout_secs.max(1)),
            },
            http_body_timeout: Duration::from_secs(a.http_body_timeout_secs.max(1)),
            response_cache_bytes: a.cache_config.filter(|bytes| *bytes > 0),
            trace: {
                let mut trace = nereid_server::trace::TraceSettings::default();
                for value in &a.trace_config {
                    // Each value was checked when the arguments were parsed.
                    if let Err(err) = nereid_server::trace::apply_trace_config(&mut trace, value) {
                        tracing::warn!(%err, "ignored a --trace-config value");
                    }
                }
                trace
            },
            front_ends: nereid_server::FrontEnds {
                http: a.allow_http,
                grpc: a.allow_grpc,
                metrics: a.allow_metrics,
            },
            http_address: a.http_address,
            grpc_address: a.grpc_address,
            metrics_address: a.metrics_address,
            grpc_max_message_bytes: a.grpc_max_message_bytes.max(1),
            access_log: a.access_log,
            model_load_threads: a.model_load_thread_count.max(1),
            // A missing file is reported when the server starts.
            http_tls: (a.http_use_ssl || a.http_use_ssl_mutual).then(|| {
                nereid_server::tls::TlsFiles {
                    cert: a.http_server_cert.clone().unwrap_or_default(),
                    key: a.http_server_key.clone().unwrap_or_default(),
                    client_ca: a
                        .http_use_ssl_mutual
                        .then(|| a.http_root_cert.clone().unwrap_or_default()),
                }
            }),
            grpc_tls: (a.grpc_use_ssl || a.grpc_use_ssl_mutual).then(|| {
                nereid_server::tls::TlsFiles {
                    cert: a.grpc_server_cert.clone().unwrap_or_default(),
                    key: a.grpc_server_key.clone().unwrap_or_default(),
                    client_ca: a
                        .grpc_use_ssl_mutual
                        .then(|| a.grpc_root_cert.clone().unwrap_or_default()),
                }
            }),
            // Set by `main`, which owns the process's log subscriber.
            log_settings: nereid_server::logging::LogSettings::default(),
            log_hook: None,
            grpc_limits: nereid_server::connections::GrpcLimits {
                max_connections: a.grpc_max_connections.max(1),
                handshake_timeout: Duration::from_secs(a.grpc_handshake_timeout_secs.max(1)),
                keepalive_time: Duration::from_millis(a.grpc_keepalive_time.max(1)),
                keepalive_timeout: Duration::from_millis(a.grpc_keepalive_timeout.max(1)),
                body_timeout: Duration::from_secs(a.grpc_body_timeout_secs.max(1)),
            },
            max_queue_wait: (a.max_queue_wait_ms > 0)
                .then(|| Duration::from_millis(a.max_queue_wait_ms)),
            triggers: a.triggers.map(|file| {
                nereid_pipeline::triggers::TriggerSettings::new(
                    file,
                    a.trigger_record_dir,
                    // Pipeline actions run this same binary.
                    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nereid")),
                )
            }),
        }
    }
}

async fn blocking(
    work: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(work).await?
}

/// Loads the repository off to the side and prints one line per model version.
async fn validate(repository: PathBuf) -> anyhow::Result<()> {
    let path = repository.clone();
    let registry = tokio::task::spawn_blocking(move || {
        ModelRegistry::open(&path, ControlMode::None, &[], Default::default())
    })
    .await??;
    let rows = registry.index(false);
    let mut failures = 0;
    for row in &rows {
        let version = if row.version.is_empty() {
            "-"
        } else {
            row.version.as_str()
        };
        if row.state == "READY" {
            println!("ok      {} {version}", row.name);
        } else {
            failures += 1;
            println!("FAILED  {} {version}: {}", row.name, row.reason);
        }
    }
    if failures > 0 {
        anyhow::bail!(
            "{failures} of {} model versions in {} cannot be served",
            rows.len(),
            repository.display()
        );
    }
    println!(
        "{} model versions in {} can be served",
        rows.len(),
        repository.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // Each model instance is its own thread; candle's CPU ops would otherwise also fan out to a
    // thread pool per operation, which costs far more than it saves for batch-sized work (about
    // 70 us against 2 us per small MLP batch here). Set RAYON_NUM_THREADS to choose otherwise.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    // `serve`'s logging flags decide the log's level and form; other commands log as NEREID_LOG
    // says.
    let (verbose, json) = match &cli.command {
        Command::Serve(args) => (args.log_verbose, args.log_format == LogFormat::Json),
        _ => (0, false),
    };
    let level = match verbose {
        0 => std::env::var("NEREID_LOG").unwrap_or_else(|_| "info".to_string()),
        1 => "debug".to_string(),
        _ => "trace".to_string(),
    };
    // The filter sits behind a reload layer, so that the logging extension can change it while
    // the server runs.
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(
        tracing_subscriber::EnvFilter::try_new(&level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
        let lines = json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(text)
            .with(lines)
            .init();
    }
    let log_hook = nereid_server::logging::LogHook(std::sync::Arc::new(move |directive: &str| {
        filter_handle
            .reload(tracing_subscriber::EnvFilter::new(directive))
            .map_err(|e| e.to_string())
    }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let mut config: nereid_server::ServeConfig = (*args).into();
                config.log_settings =
                    nereid_server::logging::LogSettings::from_level(&level).unwrap_or_default();
                if json {
                    config.log_settings.format = "json";
                }
                config.log_hook = Some(log_hook);
                let server = nereid_server::start(config, nereid_server::shutdown_signal()).await?;
                server.wait().await
            }
            Command::Repo(RepoCommand::Publish {
                repository,
                model,
                from,
            }) => {
                blocking(move || {
                    let repository =
                        nereid_pipeline::repository::ModelRepository::open(&repository)?;
                    let (version, at) = repository.publish_directory(&model, &from)?;
                    println!("published {model} version {version} at {at}");
                    Ok(())
                })
                .await
            }
            Command::Repo(RepoCommand::Validate { repository }) => validate(repository).await,
            Command::Repo(RepoCommand::ExportOnnx {
                repository,
                model,
                version,
            }) => {
                blocking(move || {
                    let version = match version {
                        Some(v) => v,
                        None => *nereid_pipeline::model_versions(&repository, &model)?
                            .last()
                            .ok_or_else(|| {
                                anyhow::anyhow!(
                                    "model '{model}' has no versions in {}",
                                    repository.display()
                                )
                            })?,
                    };
                    let path = nereid_pipeline::gate::export_version_onnx(
                        &repository.join(&model),
                        version,
                    )?;
                    println!("wrote {}", path.display());
                    Ok(())
                })
                .await
            }
            Command::Infer(args) => nereid_client::cli::run_infer(args).await,
            Command::Health(args) => {
                let what = args.model.clone();
                let ready = nereid_client::cli::run_health_to(args, &mut std::io::stdout()).await?;
                match (ready, what) {
                    (true, _) => Ok(()),
                    (false, Some(model)) => Err(anyhow::anyhow!("model '{model}' is not ready")),
                    (false, None) => Err(anyhow::anyhow!("the server is not ready")),
                }
            }
            Command::Stats(args) => {
                nereid_client::cli::run_stats_to(args, &mut std::io::stdout()).await
            }
            Command::Repo(RepoCommand::Index(args)) => {
                nereid_client::cli::run_index_to(args, &mut std::io::stdout()).await
            }
            Command::Repo(RepoCommand::Load(args)) => {
                nereid_client::cli::run_load_to(args, &mut std::io::stdout()).await
            }
            Command::Repo(RepoCommand::Unload(args)) => {
                nereid_client::cli::run_unload_to(args, &mut std::io::stdout()).await
            }
            // The lifecycle commands are blocking (files, training): off the async threads.
            Command::Features(cmd) => {
                blocking(move || nereid_pipeline::cli::run_features(cmd)).await
            }
            Command::Train(args) => blocking(move || nereid_pipeline::cli::run_train(args)).await,
            Command::Pipeline(cmd) => {
                blocking(move || nereid_pipeline::cli::run_pipeline(cmd)).await
            }
            Command::Monitor(cmd) => {
                blocking(move || nereid_pipeline::monitoring::run_monitor(cmd)).await
            }
            Command::Triggers(cmd) => {
                blocking(move || nereid_pipeline::triggers::cli::run_triggers(cmd)).await
            }
            Command::Lineage(args) => {
                blocking(move || nereid_pipeline::lineage::run_lineage(args)).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
