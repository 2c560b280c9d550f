//! A model's monitor settings: `config.pbtxt` parameters under `nereid.monitor.`, so that
//! Triton can still read the file.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `enabled` | on when the version has `reference.json` | `true` / `false` |
//! | `sample_rate` | `0.1` | share of requests sampled (0 to 1), every 1/r-th request |
//! | `window` | `200` | rows (`200`) or time (`10m`, `30s`) per window |
//! | `window_step` | `100` with the default window, else the window | a smaller step makes windows slide |
//! | `drift_share` | `0.5` | share of drifted features that makes dataset drift |
//! | `categorical` | none | comma-separated columns compared as categories |
//! | `test`, `test.<column>` | Evidently's choice | a test for all columns, or one column |
//! | `threshold`, `threshold.<column>` | the test's default | its threshold |
//! | `prediction` | the only output, or the reference's | output the prediction is read from |
//! | `queue_size` | `4096` | samples waiting for the monitor before new ones are dropped |
//! | `max_window_rows` | `100000` | rows kept per time window (a uniform sample beyond) |
//! | `performance_window` | `500` | labelled predictions per live-performance window |
//! | `log` | `true` | keep sampled requests in the prediction log |
//! | `delay_per_sample_us` | none | testing aid: the monitor sleeps this long per sample, to exercise a monitor that falls behind |
//!
//! Unknown keys under the prefix are refused, so a typo does not silently change nothing.
//!
//! The defaults (a tenth of requests; windows of 200 sampled rows, about 2,000 requests,
//! tested every 100 rows) keep the monitor's cost within a few percent of serving's (see
//! BENCHMARKS.md) and still find a half-standard-deviation shift of one Iris feature within
//! about 1,500 requests. Set `sample_rate` to 1 to log, and take feedback for, every request.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::stattest::Method;

pub const PREFIX: &str = "nereid.monitor.";

/// How rows are grouped into windows: a window spans `size`, a new one is evaluated every
/// `step` (equal for tumbling windows). `size` is a whole number of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Rows { size: u64, step: u64 },
    Time { size: Duration, step: Duration },
}

impl WindowSpec {
    /// Steps per window.
    pub fn panes(&self) -> u64 {
        match *self {
            WindowSpec::Rows { size, step } => size / step,
            WindowSpec::Time { size, step } => (size.as_millis() / step.as_millis()) as u64,
        }
    }

    pub fn describe(&self) -> String {
        let (size, step) = match self {
            WindowSpec::Rows { size, step } => (format!("{size} rows"), format!("{step} rows")),
            WindowSpec::Time { size, step } => (
                humantime::format_duration(*size).to_string(),
                humantime::format_duration(*step).to_string(),
            ),
        };
        if size == step {
            format!("tumbling, {size}")
        } else {
            format!("sliding, {size} every {step}")
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// `None`: on exactly when a reference exists.
    pub enabled: Option<bool>,
    pub sample_rate: f64,
    pub window: WindowSpec,
    pub drift_share: f64,
    pub categorical: Vec<String>,
    pub test: Option<Method>,
    pub threshold: Option<f64>,
    pub column_tests: BTreeMap<String, Method>,
    pub column_thresholds: BTreeMap<String, f64>,
    pub prediction: Option<String>,
    pub queue_size: usize,
    pub max_window_rows: usize,
    pub performance_window: u64,
    pub log: bool,
    pub delay_per_sample: Option<Duration>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            enabled: None,
            sample_rate: 0.1,
            window: WindowSpec::Rows {
                size: 200,
                step: 100,
            },
            drift_share: 0.5,
            categorical: Vec::new(),
            test: None,
            threshold: None,
            column_tests: BTreeMap::new(),
            column_thresholds: BTreeMap::new(),
            prediction: None,
            queue_size: 4096,
            max_window_rows: 100_000,
            performance_window: 500,
            log: true,
            delay_per_sample: None,
        }
    }
}

/// A window size: a row count, or a duration with a unit.
enum Span {
    Rows(u64),
    Time(Duration),
}

fn parse_span(key: &str, value: &str) -> Result<Span, String> {
    let value = value.trim();
    if let Ok(rows) = value.parse::<u64>() {
        return if rows == 0 {
            Err(format!("'{PREFIX}{key}' must be at least 1 row"))
        } else {
            Ok(Span::Rows(rows))
        };
    }
    match humantime::parse_duration(value) {
        Ok(d) if d.as_millis() >= 1 => Ok(Span::Time(d)),
        _ => Err(format!(
            "'{PREFIX}{key}' must be a row count (e.g. 1000) or a duration (e.g. 10m, 30s), got '{value}'"
        )),
    }
}

impl MonitorConfig {
    /// Reads the `nereid.monitor.*` entries of a model's parameters (others are ignored).
    pub fn from_parameters<'a>(
        parameters: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<MonitorConfig, String> {
        let mut config = MonitorConfig::default();
        let (mut window, mut step) = (None, None);
        let number = |key: &str, value: &str| -> Result<f64, String> {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("'{PREFIX}{key}' must be a number, got '{value}'"))
        };
        let count = |key: &str, value: &str| -> Result<u64, String> {
            value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("'{PREFIX}{key}' must be a positive integer, got '{value}'"))
        };
        let method = |key: &str, value: &str| -> Result<Method, String> {
            Method::parse(value).ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "'{PREFIX}{key}': unknown test '{value}' (one of {})",
                    names.join(", ")
                )
            })
        };
        for (key, value) in parameters {
            let Some(key) = key.strip_prefix(PREFIX) else {
                continue;
            };
            match key {
                "enabled" => {
                    config.enabled = Some(match value.trim() {
                        "true" | "1" | "on" => true,
                        "false" | "0" | "off" => false,
                        other => {
                            return Err(format!(
                                "'{PREFIX}enabled' must be true or false, got '{other}'"
                            ))
                        }
                    })
                }
                "log" => {
                    config.log = match value.trim() {
                        "true" | "1" | "on" => true,
                        "false" | "0" | "off" => false,
                        other => {
                            return Err(format!(
                                "'{PREFIX}log' must be true or false, got '{other}'"
                            ))
                        }
                    }
                }
                "sample_rate" => {
                    let rate = number(key, value)?;
                    if !(rate > 0.0 && rate <= 1.0) {
                        return Err(format!(
                            "'{PREFIX}sample_rate' must be in (0, 1], got {rate}"
                        ));
                    }
                    config.sample_rate = rate;
                }
                "window" => window = Some(parse_span(key, value)?),
                "window_step" => step = Some(parse_span(key, value)?),
                "drift_share" => {
                    let share = number(key, value)?;
                    if !(share > 0.0 && share <= 1.0) {
                        return Err(format!(
                            "'{PREFIX}drift_share' must be in (0, 1], got {share}"
                        ));
                    }
                    config.drift_share = share;
                }
                "categorical" => {
                    config.categorical = value
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "test" => config.test = Some(method(key, value)?),
                "threshold" => config.threshold = Some(number(key, value)?),
                "prediction" => config.prediction = Some(value.trim().to_string()),
                "queue_size" => config.queue_size = count(key, value)? as usize,
                "max_window_rows" => config.max_window_rows = count(key, value)? as usize,
                "performance_window" => config.performance_window = count(key, value)?,
                "delay_per_sample_us" => {
                    config.delay_per_sample = Some(Duration::from_micros(count(key, value)?))
                }
                other => {
                    if let Some(column) = other.strip_prefix("test.") {
                        config
                            .column_tests
                            .insert(column.to_string(), method(other, value)?);
                    } else if let Some(column) = other.strip_prefix("threshold.") {
                        config
                            .column_thresholds
                            .insert(column.to_string(), number(other, value)?);
                    } else {
                        return Err(format!(
                            "unknown parameter '{PREFIX}{other}' (see the monitor settings in the README)"
                        ));
                    }
                }
            }
        }
        config.window = match (window, step) {
            (None, None) => config.window,
            (Some(Span::Rows(size)), None) => WindowSpec::Rows { size, step: size },
            (Some(Span::Time(size)), None) => WindowSpec::Time { size, step: size },
            (Some(Span::Rows(size)), Some(Span::Rows(step))) => {
                if step > size || size % step != 0 {
                    return Err(format!(
                        "'{PREFIX}window_step' ({step} rows) must divide '{PREFIX}window' ({size} rows)"
                    ));
                }
                WindowSpec::Rows { size, step }
            }
            (Some(Span::Time(size)), Some(Span::Time(step))) => {
                if step > size || size.as_millis() % step.as_millis() != 0 {
                    return Err(format!(
                        "'{PREFIX}window_step' must divide '{PREFIX}window' (both in whole milliseconds)"
                    ));
                }
                WindowSpec::Time { size, step }
            }
            (None, Some(_)) => {
                return Err(format!("'{PREFIX}window_step' needs '{PREFIX}window'"));
            }
            _ => {
                return Err(format!(
                    "'{PREFIX}window' and '{PREFIX}window_step' must both be row counts or both durations"
                ))
            }
        };
        Ok(config)
    }

    /// The test and threshold for a column: its own, else the model-wide one, else `None`
    /// (Evidently's choice and default).
    pub fn test_for(&self, column: &str) -> (Option<Method>, Option<f64>) {
        (
            self.column_tests.get(column).copied().or(self.test),
            self.column_thresholds
                .get(column)
                .copied()
                .or(self.threshold),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<MonitorConfig, String> {
        MonitorConfig::from_parameters(pairs.iter().copied())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse(&[("nereid.architecture", "mlp")]).expect("defaults");
        assert_eq!(c, MonitorConfig::default());
        let c = parse(&[
            ("nereid.monitor.window", "10m"),
            ("nereid.monitor.window_step", "1m"),
            ("nereid.monitor.sample_rate", "0.25"),
            ("nereid.monitor.test", "psi"),
            ("nereid.monitor.test.petal_width", "wasserstein"),
            ("nereid.monitor.threshold.petal_width", "0.2"),
            ("nereid.monitor.categorical", "color, size"),
        ])
        .expect("parses");
        assert_eq!(
            c.window,
            WindowSpec::Time {
                size: Duration::from_secs(600),
                step: Duration::from_secs(60)
            }
        );
        assert_eq!(c.window.panes(), 10);
        assert_eq!(c.sample_rate, 0.25);
        assert_eq!(
            c.test_for("petal_width"),
            (Some(Method::Wasserstein), Some(0.2))
        );
        assert_eq!(c.test_for("sepal_width"), (Some(Method::Psi), None));
        assert_eq!(c.categorical, vec!["color", "size"]);
    }

    #[test]
    fn bad_settings_are_refused_with_the_key() {
        for (pairs, needle) in [
            (vec![("nereid.monitor.sample_rate", "2")], "sample_rate"),
            (vec![("nereid.monitor.window", "soon")], "window"),
            (
                vec![
                    ("nereid.monitor.window", "1000"),
                    ("nereid.monitor.window_step", "300"),
                ],
                "divide",
            ),
            (
                vec![
                    ("nereid.monitor.window", "1000"),
                    ("nereid.monitor.window_step", "1m"),
                ],
                "both",
            ),
            (vec![("nereid.monitor.test", "magic")], "unknown test"),
            (vec![("nereid.monitor.windw", "5")], "unknown parameter"),
            (vec![("nereid.monitor.enabled", "yes please")], "enabled"),
        ] {
            let err = parse(&pairs).expect_err("refused");
            assert!(err.contains(needle), "{err}");
        }
    }
}
