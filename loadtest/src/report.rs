//! [`Report`]: the result of a run, printed as a table and written as CSV or JSON.
//!
//! Latencies are microseconds of successful requests only; errors are listed by kind beside
//! them, never folded into the latency figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use nereid_client::Protocol;
use serde::Serialize;

use crate::config::Format;
use crate::recorder::Latency;
use crate::server_stats::ServerSide;

/// Request counts over a whole step or run, warm-up and drain included: every request sent
/// ends up succeeded or failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.sent += o.sent;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Closed loop: workers.
    pub concurrency: Option<usize>,
    /// Open loop: requested arrivals per second.
    pub rate: Option<f64>,
    /// Windows run (the last `stable_windows` of them are reported).
    pub windows: usize,
    /// Whether the reported windows agreed within the tolerance.
    pub stable: bool,
    /// False when the run's time bound cut the step short.
    pub completed: bool,
    pub measured_s: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Requests sent per second.
    pub offered_rate: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub latency_us: Latency,
    /// Open loop: delay of sends past their scheduled times (the generator falling behind).
    pub send_lag_us: Option<Latency>,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
    /// How long the failed requests took to fail, when any failed.
    pub error_latency_us: Option<Latency>,
    /// Open loop: the same from each failed request's actual send, without the generator's lag.
    pub error_service_latency_us: Option<Latency>,
    /// The server's statistics over the reported windows.
    pub server: Option<ServerSide>,
    /// Requests that completed while the statistics samples at the two ends of the reported
    /// windows were in flight. The server's request count differs from `succeeded + failed` by at
    /// most this plus the requests in flight.
    pub stats_edge_requests: u64,
    /// Server CPU time (utime + stime) per inference the server counted, in microseconds.
    pub server_cpu_us_per_inference: Option<f64>,
    /// Server CPU seconds per wall-clock second (1.0 = one core busy).
    pub server_cpu_utilisation: Option<f64>,
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub url: String,
    pub protocol: Protocol,
    pub format: Format,
    pub model: String,
    pub mode: &'static str,
    /// Bytes of the first request's body (HTTP) or tensor data (gRPC).
    pub request_bytes: usize,
    pub server_pid: Option<u32>,
    /// Why server-side statistics are missing, when they are.
    pub stats_note: Option<String>,
    pub steps: Vec<StepReport>,
    pub totals: Totals,
    /// Requests the server counted between the first and the last sample of the run.
    pub server_totals: Option<ServerSide>,
    pub elapsed_s: f64,
    /// Whether the time bound stopped the run before every step completed.
    pub truncated: bool,
}

fn opt(v: Option<f64>, precision: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.precision$}"))
}

impl Report {
    pub fn title(&self) -> String {
        let format = match self.protocol {
            Protocol::Http => format!("{:?}", self.format).to_lowercase(),
            Protocol::Grpc => "raw".into(),
        };
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!("[{}] ", self.label)
        };
        format!(
            "{label}{} loop, {} {format}, model '{}' at {} ({} B/request)",
            self.mode, self.protocol, self.model, self.url, self.request_bytes
        )
    }

    /// A fixed-width table, one row per step, then errors and notes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title());
        let open = self.mode == "open";
        let _ = writeln!(
            out,
            "{:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>6}",
            if open { "rate" } else { "conc" },
            "infer/s",
            "p50us",
            "p90us",
            "p95us",
            "p99us",
            "p99.9us",
            "max_us",
            if open { "lag_p99" } else { "sent/s" },
            "errors",
            "srv_queue",
            "srv_comp",
            "cpu_us/i",
            "stable",
        );
        for s in &self.steps {
            let l = &s.latency_us;
            let _ = writeln!(
                out,
                "{:>8} {:>10.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>6}",
                s.concurrency
                    .map_or_else(|| format!("{:.0}", s.rate.unwrap_or(0.0)), |c| c.to_string()),
                s.throughput,
                l.p50,
                l.p90,
                l.p95,
                l.p99,
                l.p999,
                l.max,
                match &s.send_lag_us {
                    Some(lag) => lag.p99.to_string(),
                    None => format!("{:.0}", s.offered_rate),
                },
                s.failed,
                opt(s.server.map(|v| v.queue_us), 1),
                opt(s.server.map(|v| v.compute_us()), 1),
                opt(s.server_cpu_us_per_inference, 1),
                match (s.stable, s.completed) {
                    (true, _) => format!("{}w", s.windows),
                    (false, true) => format!("no/{}", s.windows),
                    (false, false) => "cut".into(),
                },
            );
        }
        for s in &self.steps {
            for (kind, count) in &s.errors {
                let example = s.error_examples.get(kind).map_or("", String::as_str);
                let step = s.concurrency.map_or_else(
                    || format!("rate {:.0}", s.rate.unwrap_or(0.0)),
                    |c| format!("concurrency {c}"),
                );
                let _ = writeln!(out, "errors at {step}: {count} x {kind} (e.g. {example})");
            }
            if let Some(l) = &s.error_latency_us {
                let _ = writeln!(
                    out,
                    "failures took p50 {} us, p99 {} us, max {} us",
                    l.p50, l.p99, l.max
                );
            }
            if let Some(l) = &s.error_service_latency_us {
                let _ = writeln!(
                    out,
                    "  from their actual send (without the generator's lag): p50 {} us, p99 {} us",
                    l.p50, l.p99
                );
            }
        }
        if let Some(note) = &self.stats_note {
            let _ = writeln!(out, "note: {note}");
        }
        if self.truncated {
            let _ = writeln!(out, "note: the run's time bound cut it short");
        }
        out
    }

    pub const CSV_HEADER: &'static str = "label,protocol,format,mode,concurrency,rate,throughput,offered_rate,succeeded,failed,p50_us,p90_us,p95_us,p99_us,p999_us,max_us,mean_us,send_lag_p99_us,server_queue_us,server_compute_us,server_request_us,server_cpu_us_per_inference,server_cpu_utilisation,windows,stable";

    /// One CSV row per step (no header; see [`Self::CSV_HEADER`]).
    pub fn csv_rows(&self) -> String {
        let mut out = String::new();
        let format = match self.protocol {
            Protocol::Http => format!("{:?}", self.format).to_lowercase(),
            Protocol::Grpc => "raw".into(),
        };
        for s in &self.steps {
            let l = &s.latency_us;
            let label = self.label.replace([',', '"', '\n'], " ");
            let _ = writeln!(
                out,
                "{label},{},{format},{},{},{},{:.2},{:.2},{},{},{},{},{},{},{},{},{:.1},{},{},{},{},{},{},{},{}",
                self.protocol,
                self.mode,
                s.concurrency.map_or_else(String::new, |c| c.to_string()),
                s.rate.map_or_else(String::new, |r| r.to_string()),
                s.throughput,
                s.offered_rate,
                s.succeeded,
                s.failed,
                l.p50,
                l.p90,
                l.p95,
                l.p99,
                l.p999,
                l.max,
                l.mean,
                s.send_lag_us.map_or_else(String::new, |x| x.p99.to_string()),
                s.server.map_or_else(String::new, |v| format!("{:.2}", v.queue_us)),
                s.server.map_or_else(String::new, |v| format!("{:.2}", v.compute_us())),
                s.server.map_or_else(String::new, |v| format!("{:.2}", v.request_us)),
                s.server_cpu_us_per_inference.map_or_else(String::new, |v| format!("{v:.2}")),
                s.server_cpu_utilisation.map_or_else(String::new, |v| format!("{v:.3}")),
                s.windows,
                s.stable,
            );
        }
        out
    }
}
