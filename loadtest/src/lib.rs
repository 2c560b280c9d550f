//! `nereid-loadtest`: a load generator for any KServe v2 / Triton server, and an echo server
//! that gives the transport ceiling to compare a real server with.
//!
//! What it owns:
//! - [`config`]: the run's settings ([`LoadConfig`]): closed loop (a concurrency sweep) or open
//!   loop (Poisson arrivals at fixed rates, latency from the scheduled send time), HTTP or gRPC,
//!   JSON or binary tensors, input data (random, zeros or a file), warm-up and windows.
//! - [`data`]: input tensors from the model's metadata (names, datatypes, shapes; -1 filled
//!   from `--shape`/the batch size), so no knowledge of the server is needed.
//! - [`runner`]: the load itself; [`recorder`]: outcomes per window (hdrhistogram latencies of
//!   successes, errors by kind, never mixed); [`server_stats`] and [`procstat`]: the server's
//!   side of each window (statistics-extension deltas: queue vs. compute; CPU time per
//!   inference from `/proc`).
//! - [`report`]: table, CSV and JSON; [`echo`]: the canned-response server.
//!
//! Data flow: metadata -> requests built and encoded once (`nereid_client` prepared requests)
//! -> per step: warm-up, then windows (each: swap the recorder, sample server statistics and
//! CPU) until throughput and latency are stable or the window bound is hit -> the stable
//! windows merged into a [`report::StepReport`]. Every run is bounded in time
//! (`max_duration`, request timeouts) and sends only to the configured URL.
#![forbid(unsafe_code)]

pub mod config;
pub mod data;
pub mod echo;
pub mod procstat;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod server_stats;

pub use config::{Format, InputData, LoadConfig, Mode};
pub use report::{Report, StepReport};
pub use runner::run;

use nereid_client::ClientError;

/// Why a run could not start or go on. Failed requests are not errors of the run: they are
/// counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: ClientError },
    #[error("cannot read the metadata of model '{model}': {source}")]
    Metadata { model: String, source: ClientError },
    #[error("cannot encode the request: {0}")]
    Prepare(ClientError),
    #[error("cannot read the CPU time of process {pid}: {source}")]
    ProcessCpu { pid: u32, source: std::io::Error },
}
