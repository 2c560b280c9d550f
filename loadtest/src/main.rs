//! `nereid-loadtest`: flags -> [`LoadConfig`] -> [`nereid_loadtest::run`] -> table, CSV, JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nereid_client::Protocol;
use nereid_loadtest::config::{parse_levels, parse_rates};
use nereid_loadtest::{data, Format, InputData, LoadConfig, Mode, Report};

/// Load generator for KServe v2 / Triton inference servers (Nereid, Triton, MLServer, ...).
///
/// Closed loop sweeps concurrency levels and shows capacity; open loop sends at fixed rates
/// with Poisson arrivals and shows latency without coordinated omission. Each level runs a
/// warm-up, then measurement windows until throughput and latency are stable. Latency
/// percentiles cover successful requests only; errors are counted by kind.
#[derive(Parser)]
#[command(name = "nereid-loadtest", version)]
struct Args {
    /// Server URL: HTTP (e.g. http://127.0.0.1:8000) or gRPC (e.g. http://127.0.0.1:8001).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,

    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,

    /// HTTP tensor encoding: binary (the binary tensor extension) or json. gRPC always sends
    /// raw bytes.
    #[arg(long, value_enum, default_value_t = Format::Binary)]
    format: Format,

    /// Model to load.
    #[arg(long, short = 'm')]
    model: String,

    #[arg(long, default_value = "")]
    model_version: String,

    /// Closed loop: concurrency levels, as `1,2,4`, `1:64` (powers of two) or `8:32:8`.
    #[arg(long, default_value = "1", conflicts_with = "rate")]
    concurrency: String,

    /// Open loop: request rates per second (Poisson arrivals), as `100,200`.
    #[arg(long)]
    rate: Option<String>,

    /// Open loop: most requests in flight; a send that would exceed it waits (and its latency
    /// still counts from the scheduled time).
    #[arg(long, default_value_t = 1024)]
    max_outstanding: usize,

    /// Input values: `random`, `zero`, or a file (JSON in perf_analyzer's form, or `.npy`
    /// for a single-input model).
    #[arg(long, default_value = "random")]
    input_data: String,

    /// Full wire shape of an input with variable dimensions, `NAME=D0,D1,...` (repeatable).
    #[arg(long = "shape", value_name = "NAME=DIMS")]
    shapes: Vec<String>,

    /// Replaces a leading -1 (batch) dimension.
    #[arg(long, short = 'b', default_value_t = 1)]
    batch_size: i64,

    /// Length of random BYTES elements.
    #[arg(long, default_value_t = 16)]
    string_length: usize,

    /// Warm-up before each level's measurement, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,

    /// Length of one measurement window, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    window_ms: u64,

    /// Windows that must agree for a level to count as stable.
    #[arg(long, default_value_t = 3)]
    stable_windows: usize,

    /// Most windows per level; a level that is not stable by then is reported as unstable.
    #[arg(long, default_value_t = 10)]
    max_windows: usize,

    /// Allowed deviation of throughput and mean latency across the stable windows, in percent.
    #[arg(long, default_value_t = 10.0)]
    stability_percent: f64,

    /// Bound on the whole run, in seconds; levels not reached by then are skipped.
    #[arg(long, default_value_t = 600)]
    max_duration_s: u64,

    /// Bound on one request, in milliseconds; a request past it counts as a timeout error.
    #[arg(long, default_value_t = 30_000)]
    request_timeout_ms: u64,

    /// A header to send with every request, `NAME:VALUE`, repeatable (as perf_analyzer's -H).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    headers: Vec<String>,

    /// Connections to spread the load over (default: one per worker in closed loop, one in
    /// open loop; HTTP opens more as outstanding requests need them).
    #[arg(long)]
    connections: Option<usize>,

    /// PID of the server, to report its CPU time (utime + stime, with child processes) per
    /// inference.
    #[arg(long)]
    server_pid: Option<u32>,

    /// Do not query the statistics extension.
    #[arg(long)]
    no_server_stats: bool,

    /// Seed of random inputs and arrival times.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Runtime worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,

    /// A label carried into the outputs.
    #[arg(long, default_value = "")]
    label: String,

    /// Append rows to this CSV file (the header is written when the file is new).
    #[arg(long)]
    csv: Option<PathBuf>,

    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    fn config(&self) -> anyhow::Result<LoadConfig> {
        let mode = match &self.rate {
            Some(rates) => Mode::Open {
                rates: parse_rates(rates).map_err(anyhow::Error::msg)?,
                max_outstanding: self.max_outstanding,
            },
            None => Mode::Closed {
                concurrency: parse_levels(&self.concurrency).map_err(anyhow::Error::msg)?,
            },
        };
        let input_data = match self.input_data.as_str() {
            "random" => InputData::Random,
            "zero" | "zeros" => InputData::Zero,
            path => InputData::File(PathBuf::from(path)),
        };
        let mut config = LoadConfig::new(&self.url, self.protocol, &self.model);
        config.format = self.format;
        config.model_version = self.model_version.clone();
        config.mode = mode;
        config.input_data = input_data;
        config.shapes = data::parse_shape_flags(&self.shapes).map_err(anyhow::Error::msg)?;
        config.batch_size = self.batch_size;
        config.string_length = self.string_length;
        config.warmup = Duration::from_millis(self.warmup_ms);
        config.window = Duration::from_millis(self.window_ms);
        config.stable_windows = self.stable_windows;
        config.max_windows = self.max_windows;
        config.stability = self.stability_percent / 100.0;
        config.max_duration = Duration::from_secs(self.max_duration_s);
        config.request_timeout = Duration::from_millis(self.request_timeout_ms);
        config.connections = self.connections;
        config.server_pid = self.server_pid;
        config.server_stats = !self.no_server_stats;
        config.seed = self.seed;
        config.label = self.label.clone();
        config.headers = self
            .headers
            .iter()
            .map(|h| nereid_client::parse_header(h).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        config.validate()?;
        Ok(config)
    }
}

fn write_outputs(args: &Args, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.csv {
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if new {
            writeln!(file, "{}", Report::CSV_HEADER)?;
        }
        file.write_all(report.csv_rows().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    // One thread: a current-thread runtime, with no work-stealing machinery to pay for.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(nereid_loadtest::run(&config)) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Err(err) = write_outputs(&args, &report) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
