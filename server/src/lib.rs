//! Nereid's serving core: KServe v2 / Triton inference over HTTP and gRPC from a Triton-layout
//! model repository.
//!
//! Data flow: `http` and `grpc` decode requests (with `nereid_protocol`) and call the one
//! [`Infer`] handle; it resolves the model version in the [`ModelRegistry`], validates the
//! request against the config (`model`), and queues it on that version's `scheduler`, whose
//! instance threads run the `backend`. Results come back the same way; `stats` counts every
//! step and feeds the statistics extension and `/metrics`.
//!
//! [`start`] binds every listener, then serves until its shutdown future completes; shutdown
//! stops new work, turns readiness off and lets in-flight requests finish within the exit
//! timeout.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod backend;
pub mod batcher;
pub mod cache;
pub mod connections;
pub mod ensemble;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod lifecycle;
pub mod logging;
mod metrics;
pub mod model;
pub mod registry;
pub mod remote;
pub mod repository;
pub mod restrict;
pub mod scheduler;
pub mod sequence;
pub mod shared_memory;
pub mod stats;
pub mod tls;
pub mod trace;
mod warmup;

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use infer::Infer;
pub use registry::{ControlMode, ModelRegistry};

/// Everything `serve` needs, validated from the command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_repository: PathBuf,
    pub host: IpAddr,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub http_max_input_size: usize,
    pub exit_timeout: Duration,
    pub strict_readiness: bool,
    /// Written (atomically) with the bound ports once every listener is up.
    pub port_file: Option<PathBuf>,
    pub model_control_mode: ControlMode,
    /// Models to load at start in explicit mode (`*`: all).
    pub load_models: Vec<String>,
    /// Poll mode's rescan interval.
    pub repository_poll: Duration,
    pub http_restricted: Vec<restrict::Restriction>,
    pub grpc_restricted: Vec<restrict::Restriction>,
    /// Prediction log location and retention for monitored versions.
    pub monitoring: lifecycle::MonitorSettings,
    /// Open HTTP connections at most, and the time a client has to send a request header.
    pub http_limits: connections::HttpLimits,
    /// The time a client has to send a request body.
    pub http_body_timeout: Duration,
    /// Open gRPC connections at most, handshake and keep-alive times, unary message deadline.
    pub grpc_limits: connections::GrpcLimits,
    /// Size of the response cache in bytes (`--cache-config local,size=N`); `None`: no cache.
    pub response_cache_bytes: Option<u64>,
    /// The log settings at start, and the hook that changes the process's log filter (the
    /// logging extension); without a hook the settings are reported but change nothing.
    pub log_settings: logging::LogSettings,
    pub log_hook: Option<logging::LogHook>,
    /// The trace extension's settings at start (`--trace-config`).
    pub trace: trace::TraceSettings,
    /// Which front ends run (`--allow-http`, `--allow-grpc`, `--allow-metrics`).
    pub front_ends: FrontEnds,
    /// Addresses of the front ends' listeners that differ from `host` (`--http-address` ...).
    pub http_address: Option<IpAddr>,
    pub grpc_address: Option<IpAddr>,
    pub metrics_address: Option<IpAddr>,
    /// Largest gRPC message, received or sent, in bytes.
    pub grpc_max_message_bytes: usize,
    /// Logs every HTTP and gRPC request (`--access-log`).
    pub access_log: bool,
    /// Model versions loaded at once at start (`--model-load-thread-count`).
    pub model_load_threads: usize,
    /// TLS of the HTTP and gRPC front ends (none: plain text).
    pub http_tls: Option<tls::TlsFiles>,
    pub grpc_tls: Option<tls::TlsFiles>,
    /// Admission limit on a request's expected wait in a model's queue (`None`: only the queue
    /// size limits); see [`model::VersionSettings::max_queue_wait`].
    pub max_queue_wait: Option<Duration>,
    /// Retraining triggers (`--triggers FILE`).
    pub triggers: Option<nereid_pipeline::triggers::TriggerSettings>,
}

impl ServeConfig {
    /// Defaults for a repository, on loopback with ephemeral ports (used by tests).
    pub fn for_tests(model_repository: impl Into<PathBuf>) -> Self {
        ServeConfig {
            model_repository: model_repository.into(),
            host: IpAddr::from([127, 0, 0, 1]),
            http_port: 0,
            grpc_port: 0,
            metrics_port: 0,
            http_max_input_size: http::DEFAULT_MAX_INPUT_SIZE,
            exit_timeout: Duration::from_secs(30),
            strict_readiness: true,
            port_file: None,
            model_control_mode: ControlMode::None,
            load_models: Vec::new(),
            repository_poll: Duration::from_secs(15),
            http_restricted: Vec::new(),
            grpc_restricted: Vec::new(),
            monitoring: lifecycle::MonitorSettings::default(),
            max_queue_wait: Some(model::DEFAULT_MAX_QUEUE_WAIT),
            http_limits: connections::HttpLimits::default(),
            http_body_timeout: http::DEFAULT_BODY_TIMEOUT,
            grpc_limits: connections::GrpcLimits::default(),
            response_cache_bytes: None,
            log_settings: logging::LogSettings::default(),
            log_hook: None,
            trace: trace::TraceSettings::default(),
            front_ends: FrontEnds::default(),
            http_address: None,
            grpc_address: None,
            metrics_address: None,
            grpc_max_message_bytes: grpc::MAX_MESSAGE_SIZE,
            access_log: false,
            model_load_threads: 4,
            http_tls: None,
            grpc_tls: None,
            triggers: None,
        }
    }
}

/// Which front ends a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontEnds {
    pub http: bool,
    pub grpc: bool,
    pub metrics: bool,
}

impl Default for FrontEnds {
    fn default() -> Self {
        FrontEnds {
            http: true,
            grpc: true,
            metrics: true,
        }
    }
}

/// A server whose listeners are bound. The address of a front end that does not run is the
/// unspecified address with port 0.
pub struct RunningServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub infer: Infer,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Waits until the server has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task failed")?
    }
}

/// Loads the repository, binds every listener and starts serving until `shutdown` completes.
pub async fn start(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    if config.model_control_mode != ControlMode::Explicit && !config.load_models.is_empty() {
        anyhow::bail!("--load-model requires --model-control-mode explicit");
    }
    if config.load_models.iter().any(|m| m == "*") && config.load_models.len() > 1 {
        anyhow::bail!("--load-model '*' must be the only --load-model");
    }
    let http_restrictions = restrict::Restrictions::new(&config.http_restricted)
        .map_err(|e| anyhow::anyhow!("--http-restricted-api: {e}"))?;
    let grpc_restrictions = restrict::Restrictions::new(&config.grpc_restricted)
        .map_err(|e| anyhow::anyhow!("--grpc-restricted-api: {e}"))?;
    // A remote repository (s3://, gs://, az://, file://) is mirrored into a local cache, which
    // is then served like any local repository; poll mode and the load API re-sync it first.
    let location = remote::RepositoryLocation::parse(&config.model_repository.to_string_lossy())
        .context("invalid --model-repository")?;
    let (repository, remote) = match location {
        remote::RepositoryLocation::Local(path) => (path, None),
        remote::RepositoryLocation::Remote(mut remote) => {
            let summary = remote
                .sync()
                .await
                .context("failed to sync the remote model repository")?;
            tracing::info!(url = %remote.url(), cache = %remote.cache_dir().display(), %summary, "synced remote model repository");
            (
                remote.cache_dir().to_path_buf(),
                Some(Arc::new(tokio::sync::Mutex::new(remote))),
            )
        }
    };
    let (mode, startup) = (config.model_control_mode, config.load_models.clone());
    let local = repository.clone();
    let response_cache = config
        .response_cache_bytes
        .map(|bytes| Arc::new(cache::ResponseCache::new(bytes)));
    let settings = model::VersionSettings {
        monitoring: config.monitoring.clone(),
        max_queue_wait: config.max_queue_wait,
        response_cache: response_cache.clone(),
        load_threads: config.model_load_threads,
    };
    let registry =
        tokio::task::spawn_blocking(move || ModelRegistry::open(&local, mode, &startup, settings))
            .await
            .context("model loading panicked")?
            .with_context(|| format!("failed to read model repository {}", repository.display()))?;
    let registry = Arc::new(registry);
    let triggers = match config.triggers.clone() {
        Some(settings) => {
            let triggers = tokio::task::spawn_blocking(move || {
                nereid_pipeline::triggers::Triggers::open(settings)
            })
            .await
            .context("reading the triggers panicked")?
            .context("invalid --triggers")?;
            Some(Arc::new(lifecycle::triggers::start(
                triggers,
                Arc::clone(&registry),
            )?))
        }
        None => None,
    };
    let infer = Infer::new(registry, config.strict_readiness)
        .with_response_cache(response_cache)
        .with_tracer(Arc::new(trace::Tracer::new(config.trace.clone())))
        .with_log_control(Arc::new(logging::LogControl::new(
            config.log_settings,
            config.log_hook.clone(),
        )))
        .with_remote(remote)
        .with_triggers(triggers);

    let bind = |allowed: bool, address: Option<IpAddr>, port: u16, what: &'static str| {
        let address = SocketAddr::new(address.unwrap_or(config.host), port);
        async move {
            if !allowed {
                return Ok(None);
            }
            TcpListener::bind(address)
                .await
                .map(Some)
                .with_context(|| format!("failed to bind the {what} listener on {address}"))
        }
    };
    let allow = config.front_ends;
    if !(allow.http || allow.grpc) {
        anyhow::bail!(
            "--allow-http and --allow-grpc are both false: nothing would serve inference"
        );
    }
    let http_listener = bind(allow.http, config.http_address, config.http_port, "HTTP").await?;
    let grpc_listener = bind(allow.grpc, config.grpc_address, config.grpc_port, "gRPC").await?;
    let metrics_listener = bind(
        allow.metrics,
        config.metrics_address,
        config.metrics_port,
        "metrics",
    )
    .await?;
    let address_of = |listener: &Option<TcpListener>| -> std::io::Result<SocketAddr> {
        match listener {
            Some(l) => l.local_addr(),
            None => Ok(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)),
        }
    };
    let (http, grpc, metrics) = (
        address_of(&http_listener)?,
        address_of(&grpc_listener)?,
        address_of(&metrics_listener)?,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<nereid_protocol::inference::grpc_inference_service_server::GrpcInferenceServiceServer<grpc::GrpcService>>()
        .await;

    let http_tls = config
        .http_tls
        .as_ref()
        .map(|files| tls::http_config(files, "http"))
        .transpose()
        .map_err(|e| anyhow::anyhow!("HTTP TLS: {e}"))?;
    let grpc_tls = config
        .grpc_tls
        .as_ref()
        .map(tls::grpc_config)
        .transpose()
        .map_err(|e| anyhow::anyhow!("gRPC TLS: {e}"))?;
    let http_server = http_listener.map(|listener| {
        let mut router = http::router(http::HttpState {
            infer: infer.clone(),
            max_input_size: config.http_max_input_size,
            body_timeout: config.http_body_timeout,
            restrictions: Arc::new(http_restrictions),
        });
        // Only when asked: the layer boxes every response future.
        if config.access_log {
            router = router.layer(access_log::AccessLogLayer {
                enabled: true,
                protocol: "http",
            });
        }
        connections::serve(listener, router, config.http_limits, http_tls, stopped())
    });
    let grpc_limits = config.grpc_limits;
    let mut grpc_builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc_tls {
        grpc_builder = grpc_builder
            .tls_config(tls.timeout(grpc_limits.handshake_timeout))
            .context("gRPC TLS")?;
    }
    let grpc_server = grpc_listener.map(|listener| {
        grpc_builder
            .http2_keepalive_interval(Some(grpc_limits.keepalive_time))
            .http2_keepalive_timeout(Some(grpc_limits.keepalive_timeout))
            .layer(connections::UnaryBodyDeadlineLayer {
                limit: grpc_limits.body_timeout,
            })
            .layer(access_log::AccessLogLayer {
                enabled: config.access_log,
                protocol: "grpc",
            })
            .add_service(health_service)
            .add_service(grpc::service(
                infer.clone(),
                grpc_restrictions,
                config.grpc_max_message_bytes,
            ))
            .serve_with_incoming_shutdown(
                connections::grpc_incoming(listener, grpc_limits),
                stopped(),
            )
    });
    let metrics_server = metrics_listener.map(|listener| {
        axum::serve(listener, metrics::router(infer.clone())).with_graceful_shutdown(stopped())
    });
    if config.model_control_mode == ControlMode::Poll {
        tokio::spawn(poll_repository(
            infer.clone(),
            config.repository_poll,
            stopped(),
        ));
    }

    if let Some(path) = &config.port_file {
        write_port_file(path, http, grpc, metrics)?;
    }
    tracing::info!(%http, %grpc, %metrics, "serving");

    let exit_timeout = config.exit_timeout;
    let draining = infer.clone();
    let task = tokio::spawn(async move {
        let servers = tokio::spawn(async move {
            let http = async {
                if let Some(server) = http_server {
                    server.await;
                }
            };
            let grpc = async {
                match grpc_server {
                    Some(server) => server.await,
                    None => Ok(()),
                }
            };
            let metrics = async {
                match metrics_server {
                    Some(server) => server.into_future().await,
                    None => Ok(()),
                }
            };
            let ((), g, m) = tokio::join!(http, grpc, metrics);
            g.context("gRPC server failed")?;
            m.context("metrics server failed")?;
            Ok::<_, anyhow::Error>(())
        });
        shutdown.await;
        tracing::info!("shutting down: waiting for in-flight requests to complete");
        draining.stop_accepting();
        draining.stop_triggers();
        health_reporter
            .set_not_serving::<nereid_protocol::inference::grpc_inference_service_server::GrpcInferenceServiceServer<grpc::GrpcService>>()
            .await;
        let _ = stop_tx.send(true);
        let finished = tokio::time::timeout(exit_timeout, servers).await;
        // Traces not written yet go to their files now.
        draining.flush_traces();
        match finished {
            Ok(joined) => joined.context("server task panicked")?,
            Err(_) => {
                tracing::warn!(
                    timeout_secs = exit_timeout.as_secs(),
                    "exit timeout reached with requests still in flight"
                );
                Ok(())
            }
        }
    });
    Ok(RunningServer {
        http,
        grpc,
        metrics,
        infer,
        task,
    })
}

/// Poll mode: rescans the repository every `interval` until `stop` completes.
async fn poll_repository(infer: Infer, interval: Duration, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        if let Err(err) = infer.sync_remote().await {
            tracing::error!(%err, "remote repository sync failed; polling the last synced copy");
        }
        let registry = infer.registry_handle();
        match tokio::task::spawn_blocking(move || registry.poll()).await {
            Ok(Ok(report)) => {
                if !(report.loaded.is_empty()
                    && report.unloaded.is_empty()
                    && report.failed.is_empty())
                {
                    tracing::info!(loaded = ?report.loaded, unloaded = ?report.unloaded, failed = ?report.failed, "repository poll");
                }
            }
            Ok(Err(err)) => tracing::error!(%err, "repository poll failed"),
            Err(err) => tracing::error!(%err, "repository poll panicked"),
        }
    }
}

fn write_port_file(
    path: &std::path::Path,
    http: SocketAddr,
    grpc: SocketAddr,
    metrics: SocketAddr,
) -> anyhow::Result<()> {
    // A front end that does not run has no port (null).
    let port = |address: SocketAddr| (address.port() != 0).then_some(address.port());
    let body =
        serde_json::json!({"http": port(http), "grpc": port(grpc), "metrics": port(metrics)});
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, body.to_string())
        .with_context(|| format!("failed to write {}", staging.display()))?;
    std::fs::rename(&staging, path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGTERM; only SIGINT stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
