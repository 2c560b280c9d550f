//! Offline simulations of a monitor on synthetic traffic, for the sensitivity and false-alarm
//! figures in BENCHMARKS.md (`cargo run --release -p nereid-monitor --example simulate`) and
//! their tests.
//!
//! Traffic is drawn from a reference itself: each feature independently from its recorded
//! distribution (exact value counts, or the quantile sketch), one row per request, as FP32
//! tensors of the model's single input. A *shift* adds `k` reference standard deviations to
//! one feature from some request on. The server samples every `1 / sample_rate`-th request, so
//! a simulation feeds the monitor the sampled requests only and counts requests as samples
//! divided by the rate.

use nereid_protocol::Tensor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::MonitorConfig;
use crate::distribution::NumericReference;
use crate::monitor::{Layout, Monitor, Sample, TensorInfo};
use crate::reference::Reference;
use crate::stattest::Method;

/// Draws feature rows from a reference's distributions.
pub struct ReferenceSampler {
    /// Per feature: points and cumulative weights.
    columns: Vec<(Vec<f64>, Vec<f64>)>,
    /// Per feature: the reference standard deviation.
    pub std: Vec<f64>,
    pub names: Vec<String>,
    pub input: String,
}

impl ReferenceSampler {
    /// For a reference whose single input holds numeric features.
    pub fn new(reference: &Reference) -> Result<ReferenceSampler, String> {
        let inputs = reference.input_columns();
        let [input] = inputs.as_slice() else {
            return Err("simulations need a reference with one input".into());
        };
        let mut columns = Vec::new();
        let mut std = Vec::new();
        for name in &input.columns {
            let stats = reference
                .column(name)
                .and_then(|c| c.numeric.as_ref())
                .ok_or_else(|| format!("column '{name}' is not numeric"))?;
            let r = NumericReference::from_stats(stats)
                .ok_or_else(|| format!("column '{name}' has no values"))?;
            let mut total = 0.0;
            let cumulative = r
                .weights
                .iter()
                .map(|w| {
                    total += w;
                    total
                })
                .collect();
            columns.push((r.points, cumulative));
            std.push(r.std);
        }
        Ok(ReferenceSampler {
            columns,
            std,
            names: input.columns.clone(),
            input: input.name.clone(),
        })
    }

    pub fn row(&self, rng: &mut SmallRng) -> Vec<f32> {
        self.columns
            .iter()
            .map(|(points, cumulative)| {
                let total = cumulative.last().copied().unwrap_or(1.0);
                let u = rng.random::<f64>() * total;
                let i = cumulative
                    .partition_point(|c| *c <= u)
                    .min(points.len() - 1);
                points[i] as f32
            })
            .collect()
    }

    /// A one-input, no-output layout of the sampler's features.
    pub fn layout(&self) -> Layout {
        Layout {
            inputs: vec![TensorInfo {
                name: self.input.clone(),
                datatype: nereid_protocol::DataType::Fp32,
                per_row: Some(self.columns.len()),
            }],
            outputs: Vec::new(),
            batched: true,
            labels: Default::default(),
        }
    }
}

/// The reference without its prediction and label: simulations send features only.
fn features_only(reference: &Reference) -> Reference {
    Reference {
        prediction: None,
        label: String::new(),
        ..reference.clone()
    }
}

fn request(input: &str, row: &[f32]) -> Tensor {
    Tensor::from_f32(input, vec![1, row.len() as i64], row)
}

/// How many requests after a `sigmas`-standard-deviation shift of `feature` the monitor first
/// reports drift on that feature (`None`: not within `limit` requests), at `config`'s sample
/// rate. The shift starts after a uniformly random number (0 to one window) of stationary
/// samples, so windows do not line up with it.
pub fn detection_delay(
    reference: &Reference,
    sampler: &ReferenceSampler,
    config: &MonitorConfig,
    feature: usize,
    sigmas: f64,
    seed: u64,
    limit: u64,
) -> Result<Option<u64>, String> {
    let mut monitor = Monitor::new(
        "sim",
        1,
        &features_only(reference),
        config,
        &sampler.layout(),
    )
    .map_err(|e| e.to_string())?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let window = match config.window {
        crate::config::WindowSpec::Rows { size, .. } => size,
        crate::config::WindowSpec::Time { .. } => return Err("count windows only".into()),
    };
    let lead = rng.random_range(0..window);
    let shift = (sigmas * sampler.std[feature]) as f32;
    let name = &sampler.names[feature];
    let limit = (limit as f64 * config.sample_rate).ceil() as u64;
    for i in 0..lead + limit {
        let mut row = sampler.row(&mut rng);
        if i >= lead {
            row[feature] += shift;
        }
        let tensor = [request(&sampler.input, &row)];
        let observed = monitor.observe(&Sample {
            inputs: &tensor,
            outputs: &[],
            time_ms: i,
        });
        for report in observed.reports {
            let hit = report.columns.iter().any(|c| &c.name == name && c.drift());
            if hit && i >= lead {
                return Ok(Some(
                    ((i + 1 - lead) as f64 / config.sample_rate).round() as u64
                ));
            }
        }
    }
    Ok(None)
}

/// Per-window alarm counts of stationary traffic.
#[derive(Debug, Clone, Default)]
pub struct FalseAlarms {
    pub requests: u64,
    /// The sampled ones, which the monitor saw.
    pub samples: u64,
    pub windows: u64,
    /// Windows that reported dataset drift.
    pub dataset_drift: u64,
    /// Per feature: windows whose test reported drift.
    pub column_alarms: Vec<u64>,
}

/// Runs `requests` stationary requests (their sampled share) through a monitor configured by
/// `config` (with `method` for every column when given) and counts alarms.
pub fn false_alarms(
    reference: &Reference,
    sampler: &ReferenceSampler,
    config: &MonitorConfig,
    method: Option<Method>,
    requests: u64,
    seed: u64,
) -> Result<FalseAlarms, String> {
    let mut config = config.clone();
    config.test = method.or(config.test);
    let mut monitor = Monitor::new(
        "sim",
        1,
        &features_only(reference),
        &config,
        &sampler.layout(),
    )
    .map_err(|e| e.to_string())?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = FalseAlarms {
        column_alarms: vec![0; sampler.names.len()],
        ..FalseAlarms::default()
    };
    let samples = (requests as f64 * config.sample_rate).round() as u64;
    out.requests = requests;
    out.samples = samples;
    for i in 0..samples {
        let row = sampler.row(&mut rng);
        let tensor = [request(&sampler.input, &row)];
        for report in monitor
            .observe(&Sample {
                inputs: &tensor,
                outputs: &[],
                time_ms: i,
            })
            .reports
        {
            out.windows += 1;
            out.dataset_drift += u64::from(report.dataset_drift.drift);
            for (k, c) in report.columns.iter().enumerate() {
                if k < out.column_alarms.len() && c.drift() {
                    out.column_alarms[k] += 1;
                }
            }
        }
    }
    Ok(out)
}
