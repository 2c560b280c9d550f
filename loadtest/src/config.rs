//! [`LoadConfig`]: everything one run needs, validated. The binary builds it from flags; tests
//! build it directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use nereid_client::Protocol;

use crate::LoadError;

/// How requests are issued.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Each of `concurrency` workers sends its next request when the previous one completes;
    /// one step per level. Shows capacity.
    Closed { concurrency: Vec<usize> },
    /// Requests are sent at Poisson-distributed times averaging `rate` per second, whether or
    /// not earlier ones have completed; one step per rate. Latency runs from the scheduled send
    /// time, so a server (or generator) that falls behind shows it as latency instead of hiding
    /// it by sending less (coordinated omission). At most `max_outstanding` requests are in
    /// flight; a send that waits for a slot keeps its scheduled time.
    Open {
        rates: Vec<f64>,
        max_outstanding: usize,
    },
}

/// Tensor encoding on HTTP (gRPC always sends raw bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON `data` arrays.
    Json,
    /// The binary tensor extension, for inputs and outputs.
    Binary,
}

/// Where input tensors come from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    Random,
    Zero,
    /// A JSON file (perf_analyzer's `{"data": [{"INPUT0": [...]}, ...]}` or one
    /// `{"INPUT0": [...]}` object) or, for a single-input model, a `.npy` file.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: String,
    pub protocol: Protocol,
    pub format: Format,
    pub model: String,
    pub model_version: String,
    pub mode: Mode,
    pub input_data: InputData,
    /// Full wire shapes by input name, for inputs with variable dimensions.
    pub shapes: HashMap<String, Vec<i64>>,
    /// Replaces a leading -1 (batch) dimension of inputs without an explicit shape.
    pub batch_size: i64,
    /// Length of random BYTES elements.
    pub string_length: usize,
    pub warmup: Duration,
    pub window: Duration,
    /// Windows whose throughput (and mean latency) must agree for a step to be stable.
    pub stable_windows: usize,
    /// Bound on windows per step, stable or not.
    pub max_windows: usize,
    /// Allowed deviation from the mean across the stable windows, as a fraction (0.1 = 10%).
    pub stability: f64,
    /// Bound on the whole run; steps not reached by then are skipped.
    pub max_duration: Duration,
    pub request_timeout: Duration,
    /// Connections (clients) to spread workers over; `None`: one per worker in closed loop,
    /// one in open loop (HTTP still opens a connection per outstanding request).
    pub connections: Option<usize>,
    /// Read utime+stime of this process (and its descendants) around each window.
    pub server_pid: Option<u32>,
    /// Query the statistics extension around each window for the server-side split.
    pub server_stats: bool,
    /// Seeds random inputs and open-loop arrival times.
    pub seed: u64,
    /// Free text carried into the report (e.g. "nereid" or "echo").
    pub label: String,
    /// Sent with every request (HTTP headers or gRPC metadata): auth tokens, a restricted
    /// API's header.
    pub headers: Vec<(String, String)>,
}

impl LoadConfig {
    /// A config with the defaults of the command line.
    pub fn new(url: impl Into<String>, protocol: Protocol, model: impl Into<String>) -> Self {
        LoadConfig {
            url: url.into(),
            protocol,
            format: Format::Binary,
            model: model.into(),
            model_version: String::new(),
            mode: Mode::Closed {
                concurrency: vec![1],
            },
            input_data: InputData::Random,
            shapes: HashMap::new(),
            batch_size: 1,
            string_length: 16,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(2),
            stable_windows: 3,
            max_windows: 10,
            stability: 0.10,
            max_duration: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
            connections: None,
            server_pid: None,
            server_stats: true,
            seed: 1,
            label: String::new(),
            headers: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        match &self.mode {
            Mode::Closed { concurrency } => {
                if concurrency.is_empty() || concurrency.contains(&0) {
                    return bad("concurrency levels must be positive".into());
                }
                if concurrency.iter().any(|c| *c > 10_000) {
                    return bad("concurrency above 10000 is not supported".into());
                }
            }
            Mode::Open {
                rates,
                max_outstanding,
            } => {
                if rates.is_empty() || rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
                    return bad("request rates must be positive numbers".into());
                }
                if *max_outstanding == 0 {
                    return bad("max outstanding requests must be positive".into());
                }
            }
        }
        if self.window.is_zero() {
            return bad("the measurement window must be positive".into());
        }
        if self.stable_windows == 0 || self.max_windows < self.stable_windows {
            return bad(format!(
                "need 1 <= stable windows ({}) <= max windows ({})",
                self.stable_windows, self.max_windows
            ));
        }
        if !(self.stability > 0.0 && self.stability.is_finite()) {
            return bad("the stability tolerance must be positive".into());
        }
        if self.batch_size < 1 {
            return bad("the batch size must be at least 1".into());
        }
        if self.connections == Some(0) {
            return bad("connections must be positive".into());
        }
        Ok(())
    }
}

/// `1,2,4` or `1:64` (powers of two from 1 to 64) or `8:32:8` (start:end:step).
pub fn parse_levels(text: &str) -> Result<Vec<usize>, String> {
    let parts: Vec<&str> = text.split(':').map(str::trim).collect();
    let number = |s: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("'{s}' is not a positive integer"))
    };
    match parts.as_slice() {
        [list] => list.split(',').map(|s| number(s.trim())).collect(),
        [start, end] => {
            let (start, end) = (number(start)?, number(end)?);
            let mut levels = Vec::new();
            let mut level = start;
            while level <= end {
                levels.push(level);
                level = level.checked_mul(2).ok_or("range overflows")?;
            }
            if levels.last() != Some(&end) && end > start {
                levels.push(end);
            }
            Ok(levels)
        }
        [start, end, step] => {
            let (start, end, step) = (number(start)?, number(end)?, number(step)?);
            Ok((start..=end).step_by(step).collect())
        }
        _ => Err(format!("cannot read levels '{text}'")),
    }
}

/// `100,200.5` -> rates per second.
pub fn parse_rates(text: &str) -> Result<Vec<f64>, String> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| format!("'{s}' is not a positive rate"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_levels("1,2,4").unwrap(), vec![1, 2, 4]);
        assert_eq!(parse_levels("1:64").unwrap(), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(parse_levels("1:48").unwrap(), vec![1, 2, 4, 8, 16, 32, 48]);
        assert_eq!(parse_levels("8:32:8").unwrap(), vec![8, 16, 24, 32]);
        assert!(parse_levels("0,1").is_err());
        assert!(parse_levels("a").is_err());
        assert!(parse_levels("1:2:3:4").is_err());
        assert_eq!(parse_rates("100, 2.5").unwrap(), vec![100.0, 2.5]);
        assert!(parse_rates("-1").is_err());
        assert!(parse_rates("inf").is_err());
    }

    #[test]
    fn validation() {
        let mut c = LoadConfig::new("127.0.0.1:8000", Protocol::Http, "m");
        c.validate().unwrap();
        c.max_windows = 2;
        assert!(c.validate().is_err());
        c.max_windows = 10;
        c.mode = Mode::Open {
            rates: vec![0.0],
            max_outstanding: 10,
        };
        assert!(c.validate().is_err());
    }
}
