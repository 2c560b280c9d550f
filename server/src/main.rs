//! `nereid`: the command line. It parses flags, builds the config and wires the crates together.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nereid_server::{http, ControlMode, ServeConfig};

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
    Serve(ServeArgs),
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

    /// Seconds between repository scans in poll mode. A version folder is loaded once two
    /// consecutive scans see it unchanged, so a copy in progress is never loaded half-written.
    #[arg(long, env = "NEREID_REPOSITORY_POLL_SECS", default_value_t = 15)]
    repository_poll_secs: u64,
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
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEREID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
                let server =
                    nereid_server::start(args.into(), nereid_server::shutdown_signal()).await?;
                server.wait().await
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
